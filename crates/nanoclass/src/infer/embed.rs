//! Backbone features of images: what frozen training trains its head on and what instant models
//! are fitted on. Image files are decoded in parallel ahead of the engine and their features go
//! through the on-disk [`FeatureCache`], so only new images are computed.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use crate::data::decode::DecodeOptions;
use crate::data::loader::{Skipped, decode_batches};
use crate::data::presets::{EvalPreset, presets};
use crate::infer::cache::FeatureCache;
use crate::infer::device::default_device;
use crate::infer::engine::{Engine, EngineChoice, Graph};
use crate::infer::ort::backbone_model;
use crate::instant::PretrainedHead;
use crate::model::start::initial_net;
use crate::model::{Arch, Net};
use crate::{Error, Result};

/// Per file: its feature row, or None when it was skipped.
pub type FileRows = Vec<Option<Vec<f32>>>;

/// Where [`extract_features`] gets its engine: one already open, or a way to open one, called
/// only when some file is not in the cache.
pub enum EngineSource<'a> {
    /// An open engine.
    Ready(&'a Engine),
    /// Opens the engine when needed.
    Lazy(Box<dyn FnOnce() -> Result<Engine> + 'a>),
}

/// Features of image files, by the engine's features graph (`[N, C]`, eval mode), batch by
/// batch, decoding in parallel ahead of the engine. Returns `[C]` features per file (None when
/// the file was skipped), the skipped files, and how many came from `cache`; newly computed
/// features are added to it (a cache that cannot be written only costs speed next time).
/// `progress(done, total)` is called after each batch.
///
/// # Errors
/// The engine cannot be opened, or fails ([`Engine::run`]).
pub fn extract_features(
    engine: EngineSource<'_>,
    paths: &[PathBuf],
    preset: &EvalPreset,
    batch_size: usize,
    cache: Option<&FeatureCache>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(FileRows, Vec<Skipped>, usize)> {
    let mut out: FileRows = vec![None; paths.len()];
    let keys: Vec<Option<String>> = match cache {
        Some(_) => paths
            .par_iter()
            .map(|p| FeatureCache::key(p).ok())
            .collect(),
        None => vec![None; paths.len()],
    };
    let mut todo = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match (cache, k) {
            (Some(c), Some(k)) if let Some(f) = c.get(k) => out[i] = Some(f),
            _ => todo.push(i),
        }
    }
    let hits = paths.len() - todo.len();
    let mut done = hits;
    progress(done, paths.len());
    if todo.is_empty() {
        return Ok((out, Vec::new(), hits));
    }
    let opened;
    let engine = match engine {
        EngineSource::Ready(e) => e,
        EngineSource::Lazy(open) => {
            opened = open()?;
            &opened
        }
    };
    let p = *preset;
    let opts = DecodeOptions {
        min_side: Some(preset.decode_min_side()),
    };
    let mut skipped = Vec::new();
    let todo_paths: Vec<PathBuf> = todo.iter().map(|&i| paths[i].clone()).collect();
    for (batch, skip) in decode_batches(todo_paths, batch_size, opts, move |img| p.apply(img)) {
        done += batch.n + skip.len();
        skipped.extend(skip);
        if batch.n > 0 {
            let rows = engine.run(batch.pixels, batch.n)?;
            let c = rows.width;
            for (j, &t) in batch.items.iter().enumerate() {
                let i = todo[t];
                let f = rows.data[j * c..(j + 1) * c].to_vec();
                if let (Some(cache), Some(k)) = (cache, &keys[i]) {
                    let _ = cache.put(k, &f);
                }
                out[i] = Some(f);
            }
        }
        progress(done, paths.len());
    }
    Ok((out, skipped, hits))
}

/// The features engine of a backbone loaded from the weights file `weights`: ONNX Runtime's
/// cached export ([`backbone_model`]) or burn, by [`Engine::open`]'s rule.
///
/// # Errors
/// Those of [`Engine::open`].
pub fn backbone_engine(
    choice: EngineChoice,
    net: &Net,
    arch: Arch,
    weights: &Path,
    size: usize,
) -> Result<Engine> {
    let device = default_device();
    Engine::open(choice, net.clone(), Graph::Features, &device, size, |net| {
        backbone_model(net, arch, weights, size)
    })
}

/// A pretrained backbone that turns images into rows for instant models: the eval preset of its
/// architecture (`[N, 3, 224, 224]`, RGB, f32, normalised per [`Arch::normalization`]), then
/// its pooled features (`[N, C]`, eval mode), extended by the pretrained ImageNet classifier's
/// logits when the weights carry it ([`PretrainedHead`]). Image files' features go through the
/// on-disk [`FeatureCache`], keyed by content, like frozen training's.
#[derive(Debug)]
pub struct Embedder {
    engine: Engine,
    arch: Arch,
    preset: EvalPreset,
    cache: Option<FeatureCache>,
    pretrained: Option<PretrainedHead>,
}

impl Embedder {
    /// Loads `arch` with the pretrained weights `weights` (a registry name or a file), with the
    /// feature cache under `cache_root` (None: none), on the engine `choice`.
    ///
    /// # Errors
    /// Those of [`initial_net`] (unknown name, file missing or not loadable); `weights` is
    /// `none` (an embedder needs pretrained weights); those of [`Engine::open`].
    pub fn open(
        arch: Arch,
        weights: &str,
        cache_root: Option<&Path>,
        choice: EngineChoice,
    ) -> Result<Embedder> {
        let device = default_device();
        let (net, report) = initial_net(arch, weights, &[], 1, &device)?;
        let report = report.ok_or_else(|| {
            Error::Other("an embedder needs pretrained weights, not `none`".into())
        })?;
        let preset = presets(arch.normalization(), arch.input_size()).1;
        let pretrained = match report.file_head.as_ref() {
            Some(l) => PretrainedHead::from_linear(l)?,
            None => None,
        };
        let engine = backbone_engine(choice, &net, arch, &report.path, preset.crop as usize)?;
        let cache = cache_root.and_then(|root| {
            FeatureCache::open(root, arch, &report.path, &preset, arch.feature_dim()).ok()
        });
        Ok(Embedder {
            engine,
            arch,
            preset,
            cache,
            pretrained,
        })
    }

    /// The backbone.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// `ort` or `burn`.
    pub fn engine(&self) -> &'static str {
        self.engine.name()
    }

    /// Row length: `C`, plus `M` with a [`PretrainedHead`].
    pub fn dim(&self) -> usize {
        self.arch.feature_dim() + self.pretrained.as_ref().map_or(0, PretrainedHead::outputs)
    }

    /// Where rows split into features and pretrained logits
    /// ([`crate::instant::Features::split`]).
    pub fn split(&self) -> Option<usize> {
        self.pretrained.as_ref().map(|_| self.arch.feature_dim())
    }

    /// The pretrained classifier whose logits extend the rows.
    pub fn pretrained(&self) -> Option<&PretrainedHead> {
        self.pretrained.as_ref()
    }

    fn extend(&self, f: Vec<f32>) -> Vec<f32> {
        match &self.pretrained {
            Some(p) => p.extend(&f),
            None => f,
        }
    }

    /// Rows of decoded frames (any size; RGB), one `[dim()]` row each: features, then
    /// pretrained logits.
    ///
    /// # Errors
    /// The engine fails.
    pub fn frames(&self, frames: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let crop = self.preset.crop as usize;
        let mut pixels = Vec::with_capacity(frames.len() * 3 * crop * crop);
        for f in frames {
            pixels.extend(self.preset.apply(f));
        }
        let rows = self.engine.run(pixels, frames.len())?;
        let d = self.dim();
        Ok(self
            .extend(rows.data)
            .chunks(d)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Rows of image files (None for a file that cannot be decoded, listed in the skipped
    /// files), their features from the cache where present.
    ///
    /// # Errors
    /// The engine fails.
    pub fn files(&self, paths: &[PathBuf]) -> Result<(FileRows, Vec<Skipped>)> {
        let (f, skipped, _) = extract_features(
            EngineSource::Ready(&self.engine),
            paths,
            &self.preset,
            16,
            self.cache.as_ref(),
            |_, _| {},
        )?;
        let present: Vec<f32> = f.iter().flatten().flatten().copied().collect();
        let mut rows = self.extend(present).into_iter();
        let d = self.dim();
        let f = f
            .into_iter()
            .map(|r| r.map(|_| rows.by_ref().take(d).collect()))
            .collect();
        Ok((f, skipped))
    }
}
