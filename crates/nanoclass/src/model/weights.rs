//! Loading and saving state dicts.
//!
//! Accepted files:
//! - torchvision / PyTorch `.pth` in the zip format (`torch.save` since 1.6) and the legacy
//!   pickle format (file starts with `0x80 0x02`), including tensors saved from a GPU (the
//!   storage location tag is ignored: everything loads on the CPU);
//! - `.safetensors` in PyTorch layout (`[out, in]` linear weights, BatchNorm `weight`/`bias`);
//! - checkpoint dicts holding the state dict under one key (`{"state_dict": ..., "epoch": 3}`)
//!   and a uniform `module.` prefix (`nn.DataParallel`).
//!
//! Every tensor of the model must be loaded from the file, except the head when the file's head
//! has another output count: then the head is rebuilt fresh and [`LoadReport::head`] says so.
//! Tensors of the file that the model does not use are an error naming them, except
//! BatchNorm's `num_batches_tracked` counters (burn's BatchNorm uses a fixed momentum and has
//! no counter). Nothing is ever loaded partially in silence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::prelude::*;
use burn::store::pytorch_reader::PytorchReader;
use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};

use super::point::PointHead;
use super::registry::{WeightsFormat, detect_format};
use super::{Arch, Net};
use crate::{Error, Result};

/// Key remapping rules between the reference state-dict names and nanoclass's modules, one
/// place for all of them. Each pair is `(reference regex, nanoclass name)`.
///
/// - torchvision ResNet's projection shortcut is an `nn.Sequential`: index 0 is the 1x1
///   convolution, index 1 its BatchNorm. Here they are named fields `conv` and `bn`.
const TORCHVISION_TO_NANOCLASS: [(&str, &str); 2] = [
    (r"downsample\.0\.", "downsample.conv."),
    (r"downsample\.1\.", "downsample.bn."),
];

/// The inverse of [`TORCHVISION_TO_NANOCLASS`], applied when saving so a saved model is a
/// torchvision state dict.
const NANOCLASS_TO_TORCHVISION: [(&str, &str); 2] = [
    (r"downsample\.conv\.", "downsample.0."),
    (r"downsample\.bn\.", "downsample.1."),
];

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
        if !self.ignored.is_empty() {
            write!(f, ", {} num_batches_tracked ignored", self.ignored.len())?;
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

/// Keys and shapes of a weights file, without reading tensor data.
#[derive(Debug, Clone)]
pub struct FileIndex {
    /// The file's format.
    pub format: WeightsFormat,
    /// Every tensor key with its shape in PyTorch layout.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// String metadata (safetensors `__metadata__`; empty for `.pth`).
    pub metadata: BTreeMap<String, String>,
}

fn werr(path: &Path, reason: impl Into<String>) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads the keys, shapes and metadata of a weights file.
///
/// Errors: the file is missing, is not a weights file, or is a legacy `.pth` the reader cannot
/// parse (the message then asks to re-save it with `torch.save` from torch >= 1.6).
pub fn index_file(path: &Path) -> Result<FileIndex> {
    let format = detect_format(path)?;
    match format {
        WeightsFormat::Safetensors => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| werr(path, format!("not a valid safetensors file: {e}")))?;
            let shapes = meta
                .tensors()
                .into_iter()
                .map(|(k, info)| (k, info.shape.clone()))
                .collect();
            let metadata = meta
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            Ok(FileIndex {
                format,
                shapes,
                metadata,
            })
        }
        WeightsFormat::TorchZip | WeightsFormat::TorchLegacy => {
            let reader = PytorchReader::new(path).map_err(|e| {
                if format == WeightsFormat::TorchLegacy {
                    werr(
                        path,
                        format!(
                            "legacy PyTorch format could not be read ({e}); re-save it with torch >= 1.6: \
                             torch.save(torch.load(f), f)"
                        ),
                    )
                } else {
                    werr(path, format!("not a readable PyTorch file: {e}"))
                }
            })?;
            let shapes = reader
                .tensors()
                .iter()
                .map(|(k, t)| (k.clone(), t.shape().to_vec()))
                .collect();
            Ok(FileIndex {
                format,
                shapes,
                metadata: BTreeMap::new(),
            })
        }
    }
}

/// The key every state dict of `arch` has: the stem convolution.
fn anchor_key(arch: Arch) -> &'static str {
    match arch {
        Arch::EfficientnetLite0 => "_conv_stem.weight",
        _ => "conv1.weight",
    }
}

/// Finds the prefix in front of the state dict (`""`, `module.`, `state_dict.`,
/// `state_dict.module.`, ...) from the stem convolution's key.
fn find_prefix(index: &FileIndex, arch: Arch, path: &Path) -> Result<String> {
    let anchor = anchor_key(arch);
    let mut prefixes: Vec<&str> = index
        .shapes
        .keys()
        .filter_map(|k| k.strip_suffix(anchor))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    prefixes.sort_by_key(|p| p.len());
    match prefixes.first() {
        Some(p) => Ok(p.to_string()),
        None => {
            let first: Vec<&String> = index.shapes.keys().take(5).collect();
            Err(werr(
                path,
                format!("not a {arch} state dict: no `{anchor}` tensor (first keys: {first:?})"),
            ))
        }
    }
}

/// Builds an `arch` network with `num_outputs` head outputs from a weights file.
///
/// The backbone must load completely. When the file's head has another output count (ImageNet's
/// 1000 against the dataset's `N`), the head is replaced by a fresh `C -> N` layer and the report
/// says so. When the file carries nanoclass labels metadata (a trained model) and `labels` is
/// given, the two label lists must agree, else the error states both ("checkpoint: 2 classes
/// [a, b]; dataset: 3 [a, b, c]").
pub fn load_net(
    arch: Arch,
    path: &Path,
    num_outputs: usize,
    labels: Option<&[String]>,
    device: &Device,
) -> Result<(Net, LoadReport)> {
    let index = index_file(path)?;
    let prefix = find_prefix(&index, arch, path)?;
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
    let (applied, ignored) = apply_file(&mut net, path, &index, &prefix)?;
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

/// Copies every tensor of the file into `net`; returns (applied count, ignored keys).
fn apply_file(
    net: &mut Net,
    path: &Path,
    index: &FileIndex,
    prefix: &str,
) -> Result<(usize, Vec<String>)> {
    let result = match index.format {
        WeightsFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remapper(prefix, None)?)
                .skip_enum_variants(true)
                .allow_partial(true)
                .validate(true);
            net.load_from(&mut store)
                .map_err(|e| werr(path, format!("{e}")))?
        }
        WeightsFormat::TorchZip | WeightsFormat::TorchLegacy => {
            // A checkpoint dict keeps the state dict under one top-level key; read only that.
            let top = prefix
                .split('.')
                .next()
                .filter(|t| {
                    !t.is_empty()
                        && *t != "module"
                        && index.shapes.keys().any(|k| !k.starts_with(prefix))
                })
                .map(str::to_string);
            let mut store = match &top {
                Some(t) => PytorchStore::from_file(path).with_top_level_key(t.clone()),
                None => PytorchStore::from_file(path),
            }
            .remap(remapper(prefix, top.as_deref())?)
            .skip_enum_variants(true)
            .allow_partial(true)
            .validate(true);
            net.load_from(&mut store)
                .map_err(|e| werr(path, format!("{e}")))?
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
/// (torchvision's `downsample.0/1`), plus string `metadata` (e.g. labels as JSON). The write is
/// atomic: a scratch file beside `path`, renamed into place.
pub fn save_net(net: &Net, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
    let pairs: Vec<(&str, &str)> = NANOCLASS_TO_TORCHVISION.to_vec();
    let remap = KeyRemapper::from_patterns(pairs)
        .map_err(|e| Error::Other(format!("key remapping rule: {e}")))?;
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remap)
        .skip_enum_variants(true)
        .overwrite(true);
    for (k, v) in metadata {
        store = store.metadata(k.clone(), v.clone());
    }
    net.save_into(&mut store)
        .map_err(|e| werr(path, format!("could not save: {e}")))?;
    crate::fs::make_readable(path)
}
