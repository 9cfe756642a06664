//! PyTorch `.pth` state dicts, in the zip format `torch.save` writes (torch >= 1.6).
//!
//! burn 0.22.1 reads `.pth` files (`PytorchStore`) but cannot write them (its `collect_from`
//! answers "Saving to PyTorch format is not yet supported"), and no maintained Rust crate writes
//! torch's container, so nanoclass writes it here. The container is small and documented by
//! torch's own reader (`torch/serialization.py`, `caffe2/serialize/inline_container.cc`):
//!
//! - a zip archive with uncompressed (stored) entries, all under one folder (`archive/`), the
//!   first entry being the pickle, data entries aligned to 64 bytes as torch aligns them:
//!   - `archive/data.pkl`: a pickle (protocol 2) of an `collections.OrderedDict` mapping each
//!     key to `torch._utils._rebuild_tensor_v2(storage, offset 0, size, stride, False,
//!     OrderedDict())`, where `storage` is a persistent id
//!     `("storage", torch.FloatStorage | torch.LongStorage, "<n>", "cpu", numel)`;
//!   - `archive/data/<n>`: the raw little-endian bytes of storage `n`, one per tensor;
//!   - `archive/version`: `3`, and `archive/byteorder`: `little`.
//!
//! Only globals that `torch.load(..., weights_only=True)` allows are used.
//!
//! The tensors come from [`crate::model::weights::save_net`] (PyTorch layout, reference
//! names, f32), to which the BatchNorm counters `num_batches_tracked` (int64 scalars) are added
//! so that `load_state_dict(sd, strict=True)` finds every key. Their values are the model's
//! [`BatchCounters`]: the pretrained file's own count plus the train-mode batches of the run's
//! full phase, i.e. what PyTorch's BatchNorm would have counted had it run the same training
//! (see [`crate::model::batch_counters`]; PyTorch reads the counter only when `momentum=None`).

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use crate::model::Net;
use crate::model::batch_counters::{BatchCounters, COUNTER_SUFFIX};
use crate::model::weights::save_net;
use crate::{Error, Result};

/// Element type of a state-dict tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float (`torch.float32`).
    F32,
    /// 64-bit signed integer (`torch.int64`), for `num_batches_tracked`.
    I64,
}

impl DType {
    fn storage_class(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::I64 => "LongStorage",
        }
    }

    fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// One entry of a state dict: a contiguous row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor {
    /// Key, e.g. `layer1.0.bn1.running_mean`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Little-endian bytes, `numel * dtype size` of them.
    pub data: Vec<u8>,
}

impl StateTensor {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Saves `net` with [`save_net`] into a scratch folder inside `dir` (so a later rename into
/// `dir` stays on one file system). The folder is removed when the returned guard is dropped.
pub fn save_to_scratch(
    net: &Net,
    dir: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(tempfile::TempDir, PathBuf)> {
    let scratch = tempfile::Builder::new()
        .prefix(".nanoclass-export")
        .tempdir_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let file = scratch.path().join("model.safetensors");
    save_net(net, &file, metadata)?;
    Ok((scratch, file))
}

/// Reads a safetensors state dict written by [`save_net`], in file order (sorted keys). With
/// `batch_counters`, adds beside every BatchNorm's `running_var` a `num_batches_tracked` int64
/// scalar holding that layer's count, as PyTorch's `BatchNorm2d` has one.
///
/// # Errors
/// The file cannot be read, holds a tensor that is not f32, or a value that is NaN or infinite
/// (the message names the tensor: such a model is not exported); `batch_counters` has no count
/// for one of its BatchNorm layers.
pub fn read_state_dict(
    path: &Path,
    batch_counters: Option<&BatchCounters>,
) -> Result<Vec<StateTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Weights {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file: {e}"),
    })?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len() * 2);
    for name in names {
        let view = st.tensor(&name).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            reason: format!("{name}: {e}"),
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                reason: format!("{name} is {:?}, expected F32", view.dtype()),
            });
        }
        let data = view.data().to_vec();
        if let Some((i, v)) = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(Error::Other(format!(
                "tensor {name} holds {v} at index {i}: the model is not usable and is not exported \
                 (train it again with a lower learning rate)"
            )));
        }
        let layer = name.strip_suffix(".running_var").map(str::to_string);
        out.push(StateTensor {
            name,
            dtype: DType::F32,
            shape: view.shape().to_vec(),
            data,
        });
        if let (Some(counters), Some(layer)) = (batch_counters, layer) {
            let count = counters.get(&layer).ok_or_else(|| Error::Weights {
                path: path.to_path_buf(),
                reason: format!("no num_batches_tracked count for the BatchNorm `{layer}`"),
            })?;
            out.push(StateTensor {
                name: format!("{layer}{COUNTER_SUFFIX}"),
                dtype: DType::I64,
                shape: vec![],
                data: count.to_le_bytes().to_vec(),
            });
        }
    }
    Ok(out)
}

/// Writes `tensors` as a `torch.save` zip file of an `OrderedDict` (see the module docs),
/// atomically (temp file, then rename). The output depends only on the tensors: entries carry
/// the fixed zip time 1980-01-01 00:00, so the same model gives the same bytes.
///
/// # Errors
/// A tensor whose byte count does not match its shape and type, or an I/O error.
pub fn write_pth(path: &Path, tensors: &[StateTensor]) -> Result<()> {
    for t in tensors {
        if t.data.len() != t.numel() * t.dtype.size() {
            return Err(Error::Other(format!(
                "tensor {} has {} bytes, expected {} for shape {:?}",
                t.name,
                t.data.len(),
                t.numel() * t.dtype.size(),
                t.shape
            )));
        }
    }
    let zip_err = |e: zip::result::ZipError| Error::Other(format!("{}: {e}", path.display()));
    let io_err = |e: std::io::Error| Error::io(path, e);
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .with_alignment(64);
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // The reader takes the archive's folder name from the first entry.
    zip.start_file("archive/data.pkl", options)
        .map_err(zip_err)?;
    zip.write_all(&pickle_state_dict(tensors)).map_err(io_err)?;
    zip.start_file("archive/byteorder", options)
        .map_err(zip_err)?;
    zip.write_all(b"little").map_err(io_err)?;
    for (i, t) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), options)
            .map_err(zip_err)?;
        zip.write_all(&t.data).map_err(io_err)?;
    }
    zip.start_file("archive/version", options)
        .map_err(zip_err)?;
    zip.write_all(b"3\n").map_err(io_err)?;
    let bytes = zip.finish().map_err(zip_err)?.into_inner();
    crate::fs::write_atomic(path, &bytes)
}

/// Pickle opcodes used (protocol 2, Python's `pickle.py` names).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const REDUCE: u8 = b'R';
    pub const SETITEMS: u8 = b'u';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const STOP: u8 = b'.';
}

/// The pickle of `OrderedDict([(name, tensor), ...])` with storage `i` for tensor `i`.
fn pickle_state_dict(tensors: &[StateTensor]) -> Vec<u8> {
    let mut p = Pickle::default();
    p.bytes.extend([op::PROTO, 2]);
    p.ordered_dict();
    p.bytes.push(op::MARK);
    for (i, t) in tensors.iter().enumerate() {
        p.string(&t.name);
        p.tensor(t, i);
    }
    p.bytes.extend([op::SETITEMS, op::STOP]);
    p.bytes
}

#[derive(Default)]
struct Pickle {
    bytes: Vec<u8>,
}

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.bytes.push(op::GLOBAL);
        self.bytes.extend(format!("{module}\n{name}\n").as_bytes());
    }

    fn string(&mut self, s: &str) {
        self.bytes.push(op::BINUNICODE);
        self.bytes.extend((s.len() as u32).to_le_bytes());
        self.bytes.extend(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        // Sizes, strides and element counts of these models fit an i32 by far.
        self.bytes.push(op::BININT);
        self.bytes.extend((v as i32).to_le_bytes());
    }

    fn int_tuple(&mut self, values: &[usize]) {
        if values.is_empty() {
            self.bytes.push(op::EMPTY_TUPLE);
            return;
        }
        self.bytes.push(op::MARK);
        for &v in values {
            self.int(v);
        }
        self.bytes.push(op::TUPLE);
    }

    /// `collections.OrderedDict()`.
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.bytes.extend([op::EMPTY_TUPLE, op::REDUCE]);
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, t: &StateTensor, storage: usize) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.bytes.push(op::MARK);
        // The persistent id of the storage, resolved by torch's loader to `data/<storage>`.
        self.bytes.push(op::MARK);
        self.string("storage");
        self.global("torch", t.dtype.storage_class());
        self.string(&storage.to_string());
        self.string("cpu");
        self.int(t.numel());
        self.bytes.extend([op::TUPLE, op::BINPERSID]);
        self.int(0);
        self.int_tuple(&t.shape);
        self.int_tuple(&contiguous_strides(&t.shape));
        self.bytes.push(op::NEWFALSE);
        self.ordered_dict();
        self.bytes.extend([op::TUPLE, op::REDUCE]);
    }
}

/// Row-major strides in elements: `[6, 3, 1]` for shape `[2, 2, 3]`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 2, 3]), [6, 3, 1]);
        assert_eq!(contiguous_strides(&[64, 3, 7, 7]), [147, 49, 7, 1]);
        assert!(contiguous_strides(&[]).is_empty());
    }

    #[test]
    fn written_pth_reads_back_with_burns_pytorch_reader() {
        // burn's reader is an independent implementation of torch's format: keys, shapes and
        // values must come back as written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sd.pth");
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let tensors = vec![
            StateTensor {
                name: "fc.weight".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
                data: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
            StateTensor {
                name: "bn.num_batches_tracked".into(),
                dtype: DType::I64,
                shape: vec![],
                data: 7i64.to_le_bytes().to_vec(),
            },
        ];
        write_pth(&path, &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..2], b"PK");
        let reader = burn::store::pytorch_reader::PytorchReader::new(&path).unwrap();
        let read = reader.tensors();
        assert_eq!(read.len(), 2);
        let fc = &read["fc.weight"];
        assert_eq!(fc.shape(), [2, 3]);
        assert_eq!(fc.read().unwrap(), tensors[0].data);
        let counter = &read["bn.num_batches_tracked"];
        assert!(counter.shape().is_empty());
        assert_eq!(counter.read().unwrap(), 7i64.to_le_bytes());
        // The same tensors give the same bytes.
        let again = dir.path().join("again.pth");
        write_pth(&again, &tensors).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn a_tensor_whose_bytes_do_not_fit_its_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = StateTensor {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![2],
            data: vec![0; 4],
        };
        let err = write_pth(&dir.path().join("x.pth"), &[bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("w has 4 bytes, expected 8"), "{err}");
    }
}
