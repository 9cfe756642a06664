//! On-disk cache of the frozen body's activations for partial fine-tuning: the body
//! ([`crate::model::Net::forward_until`]) runs once per image and view, and every epoch reads
//! the activations back, a batch at a time.
//!
//! # Layout
//!
//! One folder per [`ActivationSpec`] under the cache root: its name is the SHA-256 of the
//! spec's JSON (architecture, SHA-256 of the pretrained weights file, cut, both presets with
//! the augmentation settings, the decode size, the view seed, the activation shape) and of
//! [`FORMAT`]; `spec.json` inside it says what it holds. The number of views is not part of
//! the key: view `v` depends only on (seed, image, `v`) ([`crate::data::presets::view`]), so
//! asking for more views later keeps the ones already computed.
//!
//! Inside it, one file per (image, view), named `<SHA-256 of the image file's bytes>.<view>`:
//! a 16-byte header (`NCAC`, the value type: 1 = f16, 2 = f32, three zero bytes, the number of
//! values as u32 LE, the CRC-32 of the payload as u32 LE) and the `[C, h, w]` activation as
//! little-endian values.
//!
//! # f16
//!
//! Activations are stored as IEEE half floats (11 significant bits, relative rounding error at
//! most 2^-11 ~ 4.9e-4), half the disk and read traffic of f32; an entry with a value
//! outside f16's range (|x| > 65504) is stored as f32. On the clocks data set, the partial
//! recipe trained on f16-rounded activations gave the held-out top-1 of f32 ones at every one
//! of 5 epochs (0.6167, 0.9750, 0.9917, 0.9917, 0.9917; `scripts/partial_reference.py
//! ../shared/data/clocks --recipe partial --variants train,train-f16`).
//!
//! # Crashes
//!
//! An entry is written to a temporary file in the folder and renamed into place, so a killed
//! process never leaves a partial entry under an entry's name. Entries are not flushed to the
//! disk one by one (that costs milliseconds each); after a power loss an entry whose data did
//! not reach the disk fails its length or checksum test and reads as missing. Temporary files
//! left by a killed process are removed when the folder is next opened, once they are an hour
//! old.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::presets::{EvalPreset, TrainPreset};
use crate::fs::write_atomic;
use crate::model::Arch;
use crate::model::cut::Cut;
use crate::model::registry::sha256_file;
use crate::{Error, Result};

/// Version of the folder key and entry format; a change starts new folders.
pub const FORMAT: u32 = 1;

const MAGIC: &[u8; 4] = b"NCAC";
const HEADER: usize = 16;
const F16: u8 = 1;
const F32: u8 = 2;
/// Prefix of the temporary files entries are written to.
const TEMP_PREFIX: &str = ".tmp-";
/// Age after which a temporary file is taken for the leftover of a killed process.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Where the activation caches live: `activations/` in the feature cache folder
/// ([`crate::infer::cache::default_dir`]), one folder per [`ActivationSpec`].
pub fn root(feature_cache: &Path) -> PathBuf {
    feature_cache.join("activations")
}

/// Everything one folder's activations depend on.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ActivationSpec {
    /// Backbone.
    pub arch: Arch,
    /// SHA-256 (hex) of the pretrained weights file the body comes from.
    pub weights_sha256: String,
    /// Where the network is cut.
    pub cut: Cut,
    /// The eval preset (view 0, and the input size).
    pub eval: EvalPreset,
    /// The train preset with the user's augmentation (views 1 and on).
    pub train: TrainPreset,
    /// Shorter side images are decoded at ([`crate::data::presets::views_decode_min_side`]).
    pub decode_min_side: u32,
    /// Seed of the views ([`crate::data::presets::view_rng`]).
    pub seed: u64,
    /// One activation's shape `[C, h, w]` ([`crate::model::Net::activation_shape`]).
    pub shape: [usize; 3],
}

impl ActivationSpec {
    /// The spec of `arch` with the pretrained weights file `weights` (hashed here).
    ///
    /// # Errors
    /// The weights file cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arch: Arch,
        weights: &Path,
        cut: Cut,
        eval: EvalPreset,
        train: TrainPreset,
        decode_min_side: u32,
        seed: u64,
        shape: [usize; 3],
    ) -> Result<ActivationSpec> {
        Ok(ActivationSpec {
            arch,
            weights_sha256: sha256_file(weights)?,
            cut,
            eval,
            train,
            decode_min_side,
            seed,
            shape,
        })
    }

    /// Name of this spec's folder: SHA-256 (hex) of [`FORMAT`] and the spec's JSON.
    pub fn folder_name(&self) -> Result<String> {
        let json = serde_json::to_string(self).map_err(|e| Error::Other(e.to_string()))?;
        let mut h = Sha256::new();
        h.update(FORMAT.to_le_bytes());
        h.update(json.as_bytes());
        Ok(hex::encode(h.finalize()))
    }
}

/// The activations of one [`ActivationSpec`].
#[derive(Debug, Clone)]
pub struct ActivationCache {
    dir: PathBuf,
    values: usize,
}

/// A batch of cached activations, `[n, C, h, w]` flattened, with each entry's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationBatch<T> {
    /// `n * C * h * w` values, entry after entry.
    pub data: Vec<f32>,
    /// Number of entries.
    pub n: usize,
    /// Per-entry payload (label, index, ...), in batch order.
    pub items: Vec<T>,
}

impl ActivationCache {
    /// Opens (creating) the folder of `spec` under `root`, writes its `spec.json` when missing
    /// and removes temporary files a killed process left there.
    ///
    /// # Errors
    /// The folder or `spec.json` cannot be created.
    pub fn open(root: &Path, spec: &ActivationSpec) -> Result<ActivationCache> {
        let dir = root.join(spec.folder_name()?);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let spec_path = dir.join("spec.json");
        if !spec_path.exists() {
            let json =
                serde_json::to_string_pretty(spec).map_err(|e| Error::Other(e.to_string()))?;
            write_atomic(&spec_path, json.as_bytes())?;
        }
        remove_stale_temps(&dir);
        Ok(ActivationCache {
            dir,
            values: spec.shape.iter().product(),
        })
    }

    /// The cache of `spec` under `root` when its folder exists (nothing is created).
    pub fn open_existing(root: &Path, spec: &ActivationSpec) -> Option<ActivationCache> {
        let dir = root.join(spec.folder_name().ok()?);
        dir.is_dir().then(|| ActivationCache {
            dir,
            values: spec.shape.iter().product(),
        })
    }

    /// The folder holding this spec's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Values in one entry, `C * h * w`.
    pub fn values_per_entry(&self) -> usize {
        self.values
    }

    /// SHA-256 of an image file's bytes, the key of its entries.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn key(path: &Path) -> Result<String> {
        sha256_file(path)
    }

    fn path(&self, key: &str, view: u32) -> Result<PathBuf> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Other(format!(
                "activation cache key {key:?} is not a hexadecimal content hash"
            )));
        }
        Ok(self.dir.join(format!("{key}.{view}")))
    }

    /// Whether an entry of the right size is stored for (`key`, `view`); its checksum is
    /// tested when it is read.
    pub fn contains(&self, key: &str, view: u32) -> bool {
        let Ok(path) = self.path(key, view) else {
            return false;
        };
        let Ok(mut file) = File::open(&path) else {
            return false;
        };
        let mut header = [0u8; HEADER];
        if file.read_exact(&mut header).is_err() {
            return false;
        }
        let Ok(meta) = file.metadata() else {
            return false;
        };
        header_size(&header, self.values) == Some(meta.len() as usize)
    }

    /// The activation of (`key`, `view`), `C * h * w` values, if stored whole (right size,
    /// right checksum).
    pub fn get(&self, key: &str, view: u32) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(key, view).ok()?).ok()?;
        let mut out = vec![0f32; self.values];
        decode(&bytes, &mut out).then_some(out)
    }

    /// Stores the activation of (`key`, `view`), replacing any entry there.
    ///
    /// # Errors
    /// `activation` does not have [`Self::values_per_entry`] values or holds NaN or infinity,
    /// `key` is not hexadecimal, or the file cannot be written.
    pub fn put(&self, key: &str, view: u32, activation: &[f32]) -> Result<()> {
        let path = self.path(key, view)?;
        if activation.len() != self.values {
            return Err(Error::Other(format!(
                "activation for {} has {} values, the cache holds {}",
                path.display(),
                activation.len(),
                self.values
            )));
        }
        if activation.iter().any(|v| !v.is_finite()) {
            return Err(Error::Other(format!(
                "activation for {} holds NaN or infinity",
                path.display()
            )));
        }
        let bytes = encode(activation);
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        tmp.write_all(&bytes)
            .map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }

    /// Reads the entries `(key, view)` into one `[n, C, h, w]` buffer.
    ///
    /// # Errors
    /// An entry is missing, short or fails its checksum (the error names its file; opening
    /// the cache again and storing it anew repairs it).
    pub fn read_batch<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let mut bytes = Vec::new();
        for (key, view) in entries {
            let path = self.path(key, view)?;
            bytes.clear();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| Error::io(&path, e))?;
            let start = out.len();
            out.resize(start + self.values, 0.0);
            if !decode(&bytes, &mut out[start..]) {
                return Err(Error::Other(format!(
                    "{}: activation cache entry is damaged (size or checksum)",
                    path.display()
                )));
            }
        }
        Ok(out)
    }

    /// Streams `entries` (key, view, payload) in batches of `batch_size`, in the given order,
    /// read by a background thread at most two batches ahead of the consumer, so memory holds
    /// a few batches whatever the number of entries. The first error ends the stream.
    pub fn batches<T: Send + 'static>(
        &self,
        entries: Vec<(String, u32, T)>,
        batch_size: usize,
    ) -> impl Iterator<Item = Result<ActivationBatch<T>>> + use<T> {
        let cache = self.clone();
        let (tx, rx) = mpsc::sync_channel(2);
        let batch_size = batch_size.max(1);
        std::thread::spawn(move || {
            let mut entries = entries.into_iter().peekable();
            while entries.peek().is_some() {
                let chunk: Vec<(String, u32, T)> = entries.by_ref().take(batch_size).collect();
                let n = chunk.len();
                let data = cache.read_batch(chunk.iter().map(|(k, v, _)| (k.as_str(), *v)));
                let failed = data.is_err();
                let batch = data.map(|data| ActivationBatch {
                    data,
                    n,
                    items: chunk.into_iter().map(|(_, _, t)| t).collect(),
                });
                // A receiver gone means the consumer stopped early.
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        rx.into_iter()
    }
}

/// Header plus payload of one entry: f16 when every value fits, else f32.
fn encode(values: &[f32]) -> Vec<u8> {
    let fits = values.iter().all(|v| v.abs() <= f16::MAX.to_f32());
    let payload: Vec<u8> = if fits {
        let mut half = vec![f16::ZERO; values.len()];
        half.convert_from_f32_slice(values);
        half.iter().flat_map(|h| h.to_le_bytes()).collect()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[if fits { F16 } else { F32 }, 0, 0, 0]);
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Total size of an entry whose header is `header`, if the header is valid for `values`
/// values.
fn header_size(header: &[u8], values: usize) -> Option<usize> {
    if header.len() < HEADER || &header[..4] != MAGIC || header[5..8] != [0, 0, 0] {
        return None;
    }
    let count = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let width = match header[4] {
        F16 => 2,
        F32 => 4,
        _ => return None,
    };
    (count == values).then_some(HEADER + width * values)
}

/// Decodes a whole entry into `out`; false when it is short, long, of another size or fails
/// its checksum.
fn decode(bytes: &[u8], out: &mut [f32]) -> bool {
    if header_size(bytes, out.len()) != Some(bytes.len()) {
        return false;
    }
    let payload = &bytes[HEADER..];
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32fast::hash(payload) != crc {
        return false;
    }
    if bytes[4] == F16 {
        let half: Vec<f16> = payload
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect();
        half.convert_to_f32_slice(out);
    } else {
        for (o, b) in out.iter_mut().zip(payload.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    true
}

/// Removes temporary entry files older than [`STALE_TEMP`] (a killed process's leftovers; a
/// live writer renames its file within milliseconds).
fn remove_stale_temps(dir: &Path) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in listing.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP);
        if stale {
            // Best effort: a leftover that cannot be removed only takes disk space.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::presets::{Augmentation, Normalization, presets};

    fn spec() -> ActivationSpec {
        let (train, eval) = presets(Normalization::EFFICIENTNET_LITE, 224);
        ActivationSpec {
            arch: Arch::EfficientnetLite0,
            weights_sha256: "ab".repeat(32),
            cut: Cut { blocks: 2 },
            eval,
            train: train.with_augmentation(&Augmentation::PARTIAL),
            decode_min_side: 438,
            seed: 0,
            shape: [3, 2, 2],
        }
    }

    const KEY: &str = "0123456789abcdef";

    /// 12 values of a `[3, 2, 2]` activation, spread over f16's range.
    fn activation(scale: f32) -> Vec<f32> {
        (0..12).map(|i| (i as f32 - 5.5) * 0.731 * scale).collect()
    }

    #[test]
    fn entries_round_trip_as_f16_or_f32_when_out_of_range() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ActivationCache::open(tmp.path(), &spec()).unwrap();
        assert_eq!(cache.values_per_entry(), 12);
        assert!(!cache.contains(KEY, 1));
        assert_eq!(cache.get(KEY, 1), None);
        let a = activation(1.0);
        cache.put(KEY, 1, &a).unwrap();
        assert!(cache.contains(KEY, 1));
        assert!(!cache.contains(KEY, 2));
        let back = cache.get(KEY, 1).unwrap();
        let rounded: Vec<f32> = a.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(back, rounded);
        // f16 keeps 11 significant bits: relative error at most 2^-11.
        for (x, r) in a.iter().zip(&back) {
            assert!((x - r).abs() <= x.abs() * 2f32.powi(-11), "{x} -> {r}");
        }
        // -4.0205 is not a f16 value, so the entry really went through f16.
        assert_ne!(back, a);
        assert_eq!(
            std::fs::metadata(cache.dir().join(format!("{KEY}.1")))
                .unwrap()
                .len(),
            16 + 2 * 12
        );
        // 1e5 is beyond f16's 65504: the entry is stored as f32, exactly.
        let big = activation(1e5);
        cache.put(KEY, 2, &big).unwrap();
        assert_eq!(cache.get(KEY, 2).unwrap(), big);
        // A replaced entry reads as the new one.
        cache.put(KEY, 1, &big).unwrap();
        assert_eq!(cache.get(KEY, 1).unwrap(), big);
        // The same spec opens the same folder, with its entries.
        let again = ActivationCache::open(tmp.path(), &spec()).unwrap();
        assert_eq!(again.dir(), cache.dir());
        assert_eq!(again.get(KEY, 2).unwrap(), big);
        assert!(cache.dir().join("spec.json").exists());
    }

    #[test]
    fn torn_and_damaged_entries_read_as_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ActivationCache::open(tmp.path(), &spec()).unwrap();
        cache.put(KEY, 0, &activation(1.0)).unwrap();
        let path = cache.dir().join(format!("{KEY}.0"));
        let whole = std::fs::read(&path).unwrap();
        // Cut short (inside the payload, inside the header, empty).
        for len in [whole.len() - 1, 10, 0] {
            std::fs::write(&path, &whole[..len]).unwrap();
            assert!(!cache.contains(KEY, 0), "{len} bytes");
            assert_eq!(cache.get(KEY, 0), None, "{len} bytes");
        }
        // Whole length, zeroed payload (data lost after a power cut): the checksum fails.
        let mut zeroed = whole.clone();
        zeroed[HEADER..].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        assert_eq!(cache.get(KEY, 0), None);
        let err = cache.read_batch([(KEY, 0)]).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{KEY}.0")) && err.contains("damaged"),
            "{err}"
        );
        // Trailing bytes.
        let mut long = whole.clone();
        long.push(0);
        std::fs::write(&path, &long).unwrap();
        assert_eq!(cache.get(KEY, 0), None);
        std::fs::write(&path, &whole).unwrap();
        assert!(cache.get(KEY, 0).is_some());
        // A missing entry in a batch names its file.
        let err = cache
            .read_batch([(KEY, 0), (KEY, 7)])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{KEY}.7")), "{err}");
    }

    #[test]
    fn temporary_files_are_never_entries_and_stale_ones_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ActivationCache::open(tmp.path(), &spec()).unwrap();
        // What a process killed while writing leaves: a temporary file, never the entry name.
        let stale = cache.dir().join(".tmp-killed");
        let fresh = cache.dir().join(".tmp-writing");
        std::fs::write(&stale, encode(&activation(1.0))).unwrap();
        std::fs::write(&fresh, b"NCAC").unwrap();
        let old = SystemTime::now() - 2 * STALE_TEMP;
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(!cache.contains(KEY, 0));
        ActivationCache::open(tmp.path(), &spec()).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn bad_entries_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ActivationCache::open(tmp.path(), &spec()).unwrap();
        let err = cache.put(KEY, 0, &[1.0; 11]).unwrap_err().to_string();
        assert!(err.contains("11 values") && err.contains("12"), "{err}");
        let mut nan = activation(1.0);
        nan[3] = f32::NAN;
        assert!(cache.put(KEY, 0, &nan).is_err());
        let err = cache
            .put("../escape", 0, &activation(1.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a hexadecimal"), "{err}");
        assert!(!cache.contains(KEY, 0));
    }

    #[test]
    fn every_key_ingredient_changes_the_folder() {
        let base = spec().folder_name().unwrap();
        assert_eq!(base, spec().folder_name().unwrap());
        assert_eq!(base.len(), 64);
        type Change = (&'static str, fn(&mut ActivationSpec));
        let changes: [Change; 12] = [
            ("arch", |s| s.arch = Arch::Resnet18),
            ("weights", |s| s.weights_sha256 = "cd".repeat(32)),
            ("cut", |s| s.cut = Cut { blocks: 3 }),
            ("eval preset", |s| s.eval.resize = 240),
            ("input size", |s| s.eval.crop = 192),
            ("crop scale", |s| s.train.scale = [0.5, 1.0]),
            ("flip", |s| s.train.hflip = 0.5),
            ("jitter", |s| s.train.jitter.hue = 0.1),
            ("normalisation", |s| s.train.norm = Normalization::IMAGENET),
            ("decode size", |s| s.decode_min_side = 256),
            ("seed", |s| s.seed = 1),
            ("shape", |s| s.shape = [3, 4, 1]),
        ];
        let mut seen = std::collections::BTreeSet::from([base]);
        for (what, change) in changes {
            let mut s = spec();
            change(&mut s);
            assert!(
                seen.insert(s.folder_name().unwrap()),
                "{what} kept the folder"
            );
        }
    }

    #[test]
    fn batches_stream_in_order_with_their_items() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ActivationCache::open(tmp.path(), &spec()).unwrap();
        let keys = ["aa", "bb", "cc"];
        let mut entries = vec![];
        for (i, k) in keys.iter().enumerate() {
            for view in 0..2u32 {
                cache
                    .put(k, view, &activation(i as f32 + view as f32 + 1.0))
                    .unwrap();
                entries.push((k.to_string(), view, (i, view)));
            }
        }
        let batches: Vec<_> = cache
            .batches(entries.clone(), 4)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!((batches[0].n, batches[1].n), (4, 2));
        let items: Vec<_> = batches.iter().flat_map(|b| b.items.clone()).collect();
        assert_eq!(items, entries.iter().map(|e| e.2).collect::<Vec<_>>());
        let data: Vec<f32> = batches.iter().flat_map(|b| b.data.clone()).collect();
        let want: Vec<f32> = entries
            .iter()
            .flat_map(|(k, v, _)| cache.get(k, *v).unwrap())
            .collect();
        assert_eq!(data, want);
        // A missing entry ends the stream with its error.
        entries.insert(1, ("dd".into(), 0, (9, 9)));
        let out: Vec<_> = cache.batches(entries, 4).collect();
        assert_eq!(out.len(), 1);
        assert!(out[0].as_ref().unwrap_err().to_string().contains("dd.0"));
    }
}
