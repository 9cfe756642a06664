//! On-disk cache of frozen-backbone features, so re-training, resuming or adding images only
//! embeds what is new.
//!
//! A cache folder belongs to one backbone state: its key is the SHA-256 of the architecture
//! name, the SHA-256 of the pretrained weights file, the eval preset (as JSON) and the row
//! length (pooled features, or the regression point head's flattened stride-8 map). Inside it, each
//! image's `[C]` features are stored under the SHA-256 of the image file's bytes, as `C`
//! little-endian f32 values. A renamed or copied image hits the cache; an edited one does not.
//! Files are written to a temporary name and renamed, so a crash never leaves a torn entry.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::data::presets::EvalPreset;
use crate::fs::write_atomic;
use crate::model::Arch;
use crate::model::registry::sha256_file;
use crate::{Error, Result};

/// Default location: `$NANOCLASS_FEATURE_CACHE`, else `<XDG cache>/nanoclass/features`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("NANOCLASS_FEATURE_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("nanoclass").join("features")))
}

/// The features of one backbone state.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
    dim: usize,
}

impl FeatureCache {
    /// Opens (creating) the cache folder under `root` for `arch` with pretrained weights
    /// `weights` and the eval preset `preset`; features are `dim` values long.
    pub fn open(
        root: &Path,
        arch: Arch,
        weights: &Path,
        preset: &EvalPreset,
        dim: usize,
    ) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(arch.name().as_bytes());
        h.update([0]);
        h.update(sha256_file(weights)?.as_bytes());
        h.update([0]);
        h.update(
            serde_json::to_string(preset)
                .map_err(|e| Error::Other(e.to_string()))?
                .as_bytes(),
        );
        // The row length tells pooled features from a point head's flattened map.
        h.update([0]);
        h.update((dim as u64).to_le_bytes());
        let dir = root.join(hex::encode(h.finalize()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // Entries a killed run was writing.
        crate::fs::clean_stale_temp_files(&dir);
        Ok(FeatureCache { dir, dim })
    }

    /// The folder holding this backbone state's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SHA-256 of an image file's bytes, the key of its entry.
    pub fn key(path: &Path) -> Result<String> {
        sha256_file(path)
    }

    /// Whether features of the right length are stored for content hash `key`.
    pub fn contains(&self, key: &str) -> bool {
        std::fs::metadata(self.dir.join(key)).is_ok_and(|m| m.len() == self.dim as u64 * 4)
    }

    /// The cached features of the image with content hash `key`, if present and whole.
    pub fn get(&self, key: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.dir.join(key)).ok()?;
        if bytes.len() != self.dim * 4 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Stores features for content hash `key` (atomically).
    pub fn put(&self, key: &str, features: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(&self.dir.join(key), &bytes)
    }
}
