//! Reading what a weights file holds before loading it: every key with its shape and element
//! type, the BatchNorm counters, the metadata ([`index_file`]), and where the state dict sits
//! inside the file (a checkpoint dict's key, a `module.` prefix), checked to be consistent.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::pytorch_reader::{self, PytorchReader};

use super::Arch;
use super::batch_counters::{self, BatchCounters, COUNTER_SUFFIX};
use super::registry::{WeightsFormat, detect_format};
use crate::{Error, Result};

/// The state-dict key prefix of DataParallel (`nn.DataParallel` and
/// `DistributedDataParallel` keep the model as their attribute `module`).
const DATA_PARALLEL: &str = "module.";

/// Keys named when a message lists offending keys: the first few are enough to find them.
const KEYS_SHOWN: usize = 5;

/// Element type of a tensor in a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileDtype {
    /// 64-bit float (`torch.float64`).
    F64,
    /// 32-bit float (`torch.float32`), what nanoclass computes in.
    F32,
    /// 16-bit IEEE float (`torch.float16`, "half").
    F16,
    /// bfloat16 (`torch.bfloat16`): f32's exponent with a 7-bit mantissa.
    BF16,
    /// 64-bit signed integer (`torch.int64`), e.g. `num_batches_tracked`.
    I64,
    /// Any other type (other integers, bool, 8-bit floats).
    Other,
}

impl FileDtype {
    /// Whether this is one of the float types nanoclass loads (converting to f32).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            FileDtype::F64 | FileDtype::F32 | FileDtype::F16 | FileDtype::BF16
        )
    }

    fn of_safetensors(dtype: safetensors::Dtype) -> Self {
        match dtype {
            safetensors::Dtype::F64 => FileDtype::F64,
            safetensors::Dtype::F32 => FileDtype::F32,
            safetensors::Dtype::F16 => FileDtype::F16,
            safetensors::Dtype::BF16 => FileDtype::BF16,
            safetensors::Dtype::I64 => FileDtype::I64,
            _ => FileDtype::Other,
        }
    }

    fn of_torch(dtype: pytorch_reader::DType) -> Self {
        match dtype {
            pytorch_reader::DType::F64 => FileDtype::F64,
            pytorch_reader::DType::F32 => FileDtype::F32,
            pytorch_reader::DType::F16 => FileDtype::F16,
            pytorch_reader::DType::BF16 => FileDtype::BF16,
            pytorch_reader::DType::I64 => FileDtype::I64,
            _ => FileDtype::Other,
        }
    }
}

impl std::fmt::Display for FileDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileDtype::F64 => "f64",
            FileDtype::F32 => "f32",
            FileDtype::F16 => "f16",
            FileDtype::BF16 => "bf16",
            FileDtype::I64 => "i64",
            FileDtype::Other => "another type",
        })
    }
}

/// Keys and shapes of a weights file, without reading tensor data.
#[derive(Debug, Clone)]
pub struct FileIndex {
    /// The file's format.
    pub format: WeightsFormat,
    /// Every tensor key with its shape in PyTorch layout.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Every tensor key with its element type.
    pub dtypes: BTreeMap<String, FileDtype>,
    /// The value of every int64 scalar named `*.num_batches_tracked`, by its full key.
    pub counters: BTreeMap<String, i64>,
    /// String metadata (safetensors `__metadata__`; empty for `.pth`).
    pub metadata: BTreeMap<String, String>,
}

pub(crate) fn werr(path: &Path, reason: impl Into<String>) -> Error {
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
            let infos = meta.tensors();
            let shapes = infos
                .iter()
                .map(|(k, info)| (k.clone(), info.shape.clone()))
                .collect();
            let dtypes = infos
                .iter()
                .map(|(k, info)| (k.clone(), FileDtype::of_safetensors(info.dtype)))
                .collect();
            let metadata = meta
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let tensors = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| werr(path, format!("not a valid safetensors file: {e}")))?;
            let mut counters = BTreeMap::new();
            for (key, view) in tensors.iter() {
                if let Some(v) =
                    counter_value(key, view.dtype() == safetensors::Dtype::I64, view.data())
                {
                    counters.insert(key.to_string(), v);
                }
            }
            Ok(FileIndex {
                format,
                shapes,
                dtypes,
                counters,
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
            let dtypes = reader
                .tensors()
                .iter()
                .map(|(k, t)| (k.clone(), FileDtype::of_torch(t.dtype())))
                .collect();
            let mut counters = BTreeMap::new();
            for (key, t) in reader.tensors() {
                let int64 = t.dtype() == pytorch_reader::DType::I64;
                if key.ends_with(COUNTER_SUFFIX) && int64 && t.num_elements() == 1 {
                    let bytes = t
                        .read()
                        .map_err(|e| werr(path, format!("{key} could not be read: {e}")))?;
                    if let Some(v) = counter_value(key, int64, &bytes) {
                        counters.insert(key.clone(), v);
                    }
                }
            }
            Ok(FileIndex {
                format,
                shapes,
                dtypes,
                counters,
                metadata: BTreeMap::new(),
            })
        }
    }
}

/// The value of a BatchNorm counter: `key` ends in `.num_batches_tracked` and `data` is one
/// little-endian int64.
fn counter_value(key: &str, int64: bool, data: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = data.try_into().ok()?;
    (int64 && key.ends_with(COUNTER_SUFFIX)).then(|| i64::from_le_bytes(bytes))
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
pub(crate) fn find_prefix(index: &FileIndex, arch: Arch, path: &Path) -> Result<String> {
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

/// The top-level key of a checkpoint dict holding the state dict (`state_dict` for
/// `{"state_dict": {...}, "epoch": 3}`), read from the front of `prefix`: set when some key of
/// the file lies outside `prefix`, and never `module` (a DataParallel state dict is the model).
pub(crate) fn top_level_key(index: &FileIndex, prefix: &str) -> Option<String> {
    prefix
        .split('.')
        .next()
        .filter(|t| {
            !t.is_empty()
                && format!("{t}.") != DATA_PARALLEL
                && index.shapes.keys().any(|k| !k.starts_with(prefix))
        })
        .map(str::to_string)
}

/// Refuses a state dict whose keys carry a prefix inconsistently: `prefix` (found on the stem
/// convolution) missing from some keys, or `module.` on some keys but not on the stem. Keys
/// outside the checkpoint's `top` key (an optimizer state, say) are not part of the state dict
/// and are not looked at. The message counts both kinds and names the first few of each.
pub(crate) fn check_prefix(
    index: &FileIndex,
    prefix: &str,
    top: Option<&str>,
    path: &Path,
) -> Result<()> {
    let scope = match top {
        Some(t) => format!("{t}."),
        None => String::new(),
    };
    let rest = prefix.strip_prefix(&scope).unwrap_or(prefix);
    let keys: Vec<&str> = index
        .shapes
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with(&scope))
        .collect();
    let (odd, prefixed): (Vec<&str>, Vec<&str>) = if rest.is_empty() {
        // No prefix on the stem: is there a DataParallel one on other keys?
        let extra = format!("{prefix}{DATA_PARALLEL}");
        let (with, without) = keys.iter().partition(|k| k.starts_with(&extra));
        (with, without)
    } else {
        let (with, without) = keys.iter().partition(|k| k.starts_with(prefix));
        (without, with)
    };
    if odd.is_empty() {
        return Ok(());
    }
    let named = if rest.is_empty() { DATA_PARALLEL } else { rest };
    let (with, without) = if rest.is_empty() {
        (&odd, &prefixed)
    } else {
        (&prefixed, &odd)
    };
    Err(werr(
        path,
        format!(
            "the key prefix `{named}` is on {} of the state dict's {} tensors, not on all of them \
             (with it: {}; without it: {}). A state dict saved from a wrapped model \
             (nn.DataParallel) has it on every key: strip it from all keys or from none",
            with.len(),
            keys.len(),
            shown(with),
            shown(without)
        ),
    ))
}

/// The first [`KEYS_SHOWN`] keys, and how many more there are.
fn shown(keys: &[&str]) -> String {
    let mut text = keys[..keys.len().min(KEYS_SHOWN)].join(", ");
    if keys.len() > KEYS_SHOWN {
        text.push_str(&format!(" and {} more", keys.len() - KEYS_SHOWN));
    }
    text
}

/// The file's BatchNorm counters by layer (reference name): its `num_batches_tracked` tensors
/// under `prefix`, else the counters a saved nanoclass model keeps in its metadata.
pub(crate) fn file_counters(
    index: &FileIndex,
    prefix: &str,
    path: &Path,
) -> Result<BTreeMap<String, i64>> {
    let mut known = match index.metadata.get(batch_counters::METADATA_KEY) {
        Some(v) => BatchCounters::from_metadata(v)
            .map_err(|e| werr(path, e))?
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        None => BTreeMap::new(),
    };
    for (key, &v) in &index.counters {
        if let Some(layer) = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_suffix(COUNTER_SUFFIX))
        {
            known.insert(layer.to_string(), v);
        }
    }
    Ok(known)
}
