//! Loading and saving state dicts.
//!
//! Accepted files:
//! - torchvision / PyTorch `.pth` in the zip format (`torch.save` since 1.6) and the legacy
//!   pickle format (file starts with `0x80 0x02`), including tensors saved from a GPU (the
//!   storage location tag is ignored: everything loads on the CPU);
//! - `.safetensors` in PyTorch layout (`[out, in]` linear weights, BatchNorm `weight`/`bias`);
//! - checkpoint dicts holding the state dict under one key (`{"state_dict": ..., "epoch": 3}`)
//!   and a `module.` prefix (`nn.DataParallel`) on every key. A prefix on some keys but not on
//!   others is refused, naming keys of both kinds: such a file is not one state dict.
//!
//! Float tensors may be f32, f16, bf16 or f64: every one is converted to f32 as it loads
//! (f16 and bf16 exactly, f64 rounded to the nearest f32), the only float type nanoclass
//! computes in, and [`LoadReport::converted`] counts them. Integer tensors keep their type.
//! Every model nanoclass saves ([`save_net`]) is f32.
//!
//! Every tensor of the model must be loaded from the file, except the head when the file's head
//! has another output count: then the head is rebuilt fresh and [`LoadReport::head`] says so.
//! Tensors of the file that the model does not use are an error naming them, except
//! BatchNorm's `num_batches_tracked` counters: burn's BatchNorm has none, so their values go to
//! [`LoadReport::batch_counters`] ([`super::batch_counters`]). Nothing is ever loaded partially
//! in silence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::prelude::*;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::pytorch_reader::PytorchReader;
use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore, bridge,
};
use burn::tensor::DType;

use super::batch_counters::BatchCounters;
use super::names::{TORCHVISION_TO_NANOCLASS, to_reference};
use super::point::PointHead;
use super::registry::WeightsFormat;
pub use super::state_dict::{FileDtype, FileIndex, index_file};
use super::state_dict::{check_prefix, file_counters, find_prefix, top_level_key, werr};
use super::{Arch, Net};
use crate::{Error, Result};

/// What happened to the head while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadLoad {
    /// The file's head had the requested output count and was loaded.
    Loaded,
    /// The file's head had `file_outputs` outputs; a fresh `in -> outputs` head was built.
    Fresh {
        /// Output count of the head in the file (1000 for ImageNet weights).
        file_outputs: usize,
        /// Output count of the new head.
        outputs: usize,
    },
}

/// What a load did, for the user to read.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The file loaded.
    pub path: PathBuf,
    /// Its format, found from its first bytes.
    pub format: WeightsFormat,
    /// Prefix stripped from every key (`state_dict.`, `module.`), if any.
    pub prefix: String,
    /// Number of tensors copied into the model.
    pub applied: usize,
    /// Tensors of the file that were deliberately not used (`num_batches_tracked`).
    pub ignored: Vec<String>,
    /// Float tensors converted to f32 while loading, counted by their type in the file
    /// (f16, bf16, f64). Empty for an all-f32 file.
    pub converted: BTreeMap<FileDtype, usize>,
    /// The `num_batches_tracked` count of every BatchNorm layer of the loaded model, taken
    /// from the file (0 where it has none).
    pub batch_counters: BatchCounters,
    /// The head's fate.
    pub head: HeadLoad,
    /// String metadata stored in the file (safetensors only), e.g. nanoclass's labels.
    pub metadata: BTreeMap<String, String>,
    /// The file's own head when a fresh one replaced it (for ImageNet weights, the
    /// 1000-class ImageNet classifier, `[C] -> [1000]`).
    pub file_head: Option<Linear>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} tensors from {} ({:?})",
            self.applied,
            self.path.display(),
            self.format
        )?;
        if !self.prefix.is_empty() {
            write!(f, ", key prefix `{}` stripped", self.prefix)?;
        }
        for (dtype, n) in &self.converted {
            write!(f, ", converted {n} tensors from {dtype} to f32")?;
        }
        if !self.ignored.is_empty() {
            write!(
                f,
                ", {} num_batches_tracked kept beside the model",
                self.ignored.len()
            )?;
        }
        if let HeadLoad::Fresh {
            file_outputs,
            outputs,
        } = self.head
        {
            write!(
                f,
                "; the file's head has {file_outputs} outputs, so a fresh head with {outputs} outputs was built"
            )?;
        }
        Ok(())
    }
}

/// The BatchNorm counters of `net` as the weights file at `path` records them (the file `net`
/// was loaded from: a run's model keeps them in its metadata); 0 for a layer it has none for,
/// as in a model saved by a build that did not record them.
///
/// # Errors
/// The file cannot be indexed ([`index_file`]) or its counters metadata is malformed.
pub fn saved_batch_counters(path: &Path, net: &Net) -> Result<BatchCounters> {
    let index = index_file(path)?;
    BatchCounters::for_net(net, &file_counters(&index, "", path)?)
}

/// Builds an `arch` network with `num_outputs` head outputs from a weights file.
///
/// The backbone must load completely. When the file's head has another output count (ImageNet's
/// 1000 against the dataset's `N`), the head is replaced by a fresh `C -> N` layer and the report
/// says so. When the file carries nanoclass labels metadata (a trained model) and `labels` is
/// given, the two label lists must agree, else the error states both ("checkpoint: 2 classes
/// [a, b]; dataset: 3 [a, b, c]"). Float tensors of any type load as f32 (see the module docs).
///
/// # Errors
/// [`Error::Weights`] naming the file: not a weights file, not an `arch` state dict, a key prefix
/// on some keys only, a tensor missing, of the wrong shape or unknown to the model, a label
/// list that differs from `labels`.
pub fn load_net(
    arch: Arch,
    path: &Path,
    num_outputs: usize,
    labels: Option<&[String]>,
    device: &Device,
) -> Result<(Net, LoadReport)> {
    let index = index_file(path)?;
    let prefix = find_prefix(&index, arch, path)?;
    let top = match index.format {
        WeightsFormat::Safetensors => None,
        WeightsFormat::TorchZip | WeightsFormat::TorchLegacy => top_level_key(&index, &prefix),
    };
    check_prefix(&index, &prefix, top.as_deref(), path)?;
    if let (Some(want), Some(have)) = (labels, index.metadata.get("labels")) {
        let have: Vec<String> = serde_json::from_str(have)
            .map_err(|e| werr(path, format!("labels metadata is not a JSON list: {e}")))?;
        if have != want {
            return Err(werr(
                path,
                format!(
                    "checkpoint: {} classes [{}]; dataset: {} [{}]",
                    have.len(),
                    have.join(", "),
                    want.len(),
                    want.join(", ")
                ),
            ));
        }
    }
    let head_key = format!("{prefix}{}.weight", arch.head_key());
    let file_outputs = match index.shapes.get(&head_key) {
        Some(shape) if shape.len() == 2 => shape[0],
        Some(shape) => {
            return Err(werr(
                path,
                format!("`{head_key}` has shape {shape:?}, expected [outputs, features]"),
            ));
        }
        None => {
            return Err(werr(
                path,
                format!("no head tensor `{head_key}`: not a complete {arch} state dict"),
            ));
        }
    };
    let mut net = Net::new(arch, file_outputs, device);
    // A trained regression model carries its point head (`point.conv1`, `point.conv2`).
    let point_key = format!("{prefix}point.conv2.weight");
    if let Some(shape) = index.shapes.get(&point_key) {
        let channels = index
            .shapes
            .get(&format!("{prefix}point.conv1.weight"))
            .and_then(|s| s.get(1).copied());
        let offsets = index
            .shapes
            .get(&format!("{prefix}point.offset.weight"))
            .and_then(|s| s.first().copied());
        if offsets.is_none() {
            return Err(werr(
                path,
                "a point head without its offsets (`point.offset.*`), written by an earlier \
                 build; train the run again"
                    .to_string(),
            ));
        }
        match (shape.first().copied(), channels) {
            (Some(k), Some(c))
                if 2 * k == num_outputs && c == arch.point_channels() && offsets == Some(2 * k) =>
            {
                net = net.with_point_head(Some(PointHead::new(c, k, device)));
            }
            (k, c) => {
                return Err(werr(
                    path,
                    format!(
                        "point head for {k:?} categories reading {c:?} channels; expected {} \
                         categories reading {} channels of {arch}'s {}",
                        num_outputs / 2,
                        arch.point_channels(),
                        arch.point_tap()
                    ),
                ));
            }
        }
    }
    let (applied, ignored) = apply_file(&mut net, path, &index, &prefix, top.as_deref())?;
    let mut converted = BTreeMap::new();
    for (_, &dtype) in index
        .dtypes
        .iter()
        .filter(|(k, d)| k.starts_with(&prefix) && d.is_float() && **d != FileDtype::F32)
    {
        *converted.entry(dtype).or_insert(0) += 1;
    }
    let batch_counters = BatchCounters::for_net(&net, &file_counters(&index, &prefix, path)?)?;
    let mut file_head = None;
    let head = if file_outputs == num_outputs {
        HeadLoad::Loaded
    } else {
        file_head = Some(net.head().clone());
        net = net.with_fresh_head(num_outputs, device);
        HeadLoad::Fresh {
            file_outputs,
            outputs: num_outputs,
        }
    };
    Ok((
        net,
        LoadReport {
            path: path.to_path_buf(),
            format: index.format,
            prefix,
            applied,
            ignored,
            converted,
            batch_counters,
            head,
            metadata: index.metadata,
            file_head,
        },
    ))
}

fn remapper(prefix: &str, top_level: Option<&str>) -> Result<KeyRemapper> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let rest = match top_level {
        Some(top) => prefix
            .strip_prefix(top)
            .unwrap_or(prefix)
            .trim_start_matches('.'),
        None => prefix,
    };
    if !rest.is_empty() {
        pairs.push((format!("^{}", regex_escape(rest)), String::new()));
    }
    for (from, to) in TORCHVISION_TO_NANOCLASS {
        pairs.push((from.to_string(), to.to_string()));
    }
    KeyRemapper::from_patterns(pairs).map_err(|e| Error::Other(format!("key remapping rule: {e}")))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// What loading does to each tensor: PyTorch layout to burn's, then every float to f32 (the
/// only float type nanoclass computes in; `f64` rounds to nearest, `f16`/`bf16` are exact).
fn from_file_adapter() -> impl ModuleAdapter {
    PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32))
}

/// Copies every tensor of the file into `net`; returns (applied count, ignored keys). `top` is
/// the checkpoint dict's key holding the state dict ([`top_level_key`]).
fn apply_file(
    net: &mut Net,
    path: &Path,
    index: &FileIndex,
    prefix: &str,
    top: Option<&str>,
) -> Result<(usize, Vec<String>)> {
    let result = match index.format {
        WeightsFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(from_file_adapter())
                .remap(remapper(prefix, None)?)
                .skip_enum_variants(true)
                .allow_partial(true)
                .validate(true);
            net.load_from(&mut store)
                .map_err(|e| werr(path, format!("{e}")))?
        }
        WeightsFormat::TorchZip | WeightsFormat::TorchLegacy => {
            // A checkpoint dict keeps the state dict under one top-level key; read only that.
            // burn's `PytorchStore` fixes its adapter to `PyTorchToBurnAdapter` (no f32 cast),
            // so the reader's tensors are applied here with the same adapter as safetensors.
            let reader = match top {
                Some(t) => PytorchReader::with_top_level_key(path, t),
                None => PytorchReader::new(path),
            }
            .map_err(|e| werr(path, format!("not a readable PyTorch file: {e}")))?;
            let tensors: Vec<PackTensor> = reader
                .into_tensors()
                .into_values()
                .map(bridge::from_pytorch)
                .collect();
            let (tensors, _) = remapper(prefix, top)?.remap(tensors);
            net.apply(tensors, None, Some(Box::new(from_file_adapter())), true)
        }
    };
    if !result.errors.is_empty() {
        let errs: Vec<String> = result.errors.iter().map(|e| format!("{e:?}")).collect();
        return Err(werr(
            path,
            format!("tensors do not fit the model: {}", errs.join("; ")),
        ));
    }
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(werr(
            path,
            format!(
                "{} model tensors missing from the file: {}",
                names.len(),
                names.join(", ")
            ),
        ));
    }
    let (ignored, unexpected): (Vec<String>, Vec<String>) = result
        .unused
        .into_iter()
        .partition(|k| k.ends_with("num_batches_tracked"));
    if !unexpected.is_empty() {
        return Err(werr(
            path,
            format!(
                "{} tensors in the file are not part of the model: {}",
                unexpected.len(),
                unexpected.join(", ")
            ),
        ));
    }
    Ok((result.applied.len(), ignored))
}

/// Saves `net` as a safetensors state dict in PyTorch layout with the reference key names
/// (torchvision's `downsample.0/1`), every tensor f32, plus string `metadata` (e.g. labels as
/// JSON). The write is atomic: a scratch file beside `path`, renamed into place.
pub fn save_net(net: &Net, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter.chain(FloatCastAdapter::to(DType::F32)))
        .remap(to_reference()?)
        .skip_enum_variants(true)
        .overwrite(true);
    for (k, v) in metadata {
        store = store.metadata(k.clone(), v.clone());
    }
    net.save_into(&mut store)
        .map_err(|e| werr(path, format!("could not save: {e}")))?;
    crate::fs::make_readable(path)
}
