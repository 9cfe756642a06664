//! The backbone's features of every training and held-out image, computed once (eval mode, the
//! eval preset) on the inference engine and kept in the on-disk feature cache: what the head and
//! instant phases train on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Result;
use crate::data::folder::Sample;
use crate::data::loader::Skipped;
use crate::data::presets::EvalPreset;
use crate::infer::cache::FeatureCache;
use crate::infer::embed::{EngineSource, backbone_engine, extract_features};
use crate::infer::engine::{Engine, EngineChoice, Graph};
use crate::model::Net;
use crate::train::Event;
use crate::train::epoch::RunCtx;
use crate::train::loss::Target;

/// Feature rows of the images that could be decoded: `[n, c]` flattened, with their targets and
/// samples, for the training and the held-out images.
pub(crate) struct FeatureRows {
    /// Row length.
    pub c: usize,
    /// Training rows.
    pub train: Vec<f32>,
    /// Their targets.
    pub train_targets: Vec<Target>,
    /// Their samples.
    pub train_samples: Vec<Sample>,
    /// Held-out rows.
    pub val: Vec<f32>,
    /// Their targets.
    pub val_targets: Vec<Target>,
    /// Their samples.
    pub val_samples: Vec<Sample>,
    /// Files that could not be decoded.
    pub skipped: Vec<Skipped>,
}

/// Computes (or reads from the cache) the features of `train` and `val` by `net`'s backbone.
/// `pretrained` is the weights file the backbone came from (the cache key, and the key of the
/// ONNX Runtime export); without one (random weights) nothing is cached and burn runs.
///
/// # Errors
/// The engine cannot be opened (engine `ort` asked for by name) or fails.
pub(crate) fn feature_rows(
    ctx: &mut RunCtx<'_>,
    net: &Net,
    pretrained: Option<&Path>,
    preset: &EvalPreset,
    (train, val): (&[Sample], &[Sample]),
    target_of: &dyn Fn(&Sample) -> Target,
) -> Result<FeatureRows> {
    let opts = ctx.opts;
    let size = preset.crop as usize;
    let c = net.feature_len(size);
    let all: Vec<PathBuf> = train.iter().chain(val).map(|s| s.path.clone()).collect();
    let t0 = Instant::now();
    let cache = match (&opts.feature_cache, pretrained) {
        (Some(root), Some(w)) => match FeatureCache::open(root, opts.arch, w, preset, c) {
            Ok(cache) => Some(cache),
            Err(e) => {
                ctx.event(Event::Warn(format!("feature cache not used: {e}")));
                None
            }
        },
        _ => None,
    };
    let device = ctx.device.clone();
    // On a GPU run the backbone runs on the GPU through burn unless ONNX Runtime was asked for
    // by name or this build has its GPU providers: its CPU path would be the slow one.
    let on_gpu =
        opts.device.is_gpu() && opts.engine == EngineChoice::Auto && !cfg!(feature = "ort-gpu");
    if on_gpu {
        ctx.event(Event::Info(format!(
            "backbone features on the GPU through burn ({})",
            opts.device
        )));
    }
    let open = move || -> Result<Engine> {
        match pretrained {
            Some(w) if !on_gpu => backbone_engine(opts.engine, net, opts.arch, w, size),
            _ => Ok(Engine::on_burn(net.clone(), Graph::Features, &device, size)),
        }
    };
    // Asked for by name, ONNX Runtime is opened before any work, so a failure ends training
    // at once; otherwise only when some image is not in the cache.
    let ready;
    let source = if opts.engine == EngineChoice::Ort {
        ready = open()?;
        EngineSource::Ready(&ready)
    } else {
        EngineSource::Lazy(Box::new(open))
    };
    let on_event = &mut *ctx.on_event;
    let (feats, skipped, hits) =
        extract_features(source, &all, preset, 32, cache.as_ref(), |done, total| {
            on_event(Event::Features { done, total })
        })?;
    ctx.measured.body_views += all.len() - hits;
    ctx.measured.body_seconds += t0.elapsed().as_secs_f64();
    ctx.event(Event::Info(format!(
        "backbone features of {} images: {} from the cache, {} computed, in {:.1} s",
        all.len(),
        hits,
        all.len() - hits,
        t0.elapsed().as_secs_f64()
    )));
    for s in &skipped {
        ctx.event(Event::Warn(s.to_string()));
    }
    let mut rows = FeatureRows {
        c,
        train: Vec::new(),
        train_targets: Vec::new(),
        train_samples: Vec::new(),
        val: Vec::new(),
        val_targets: Vec::new(),
        val_samples: Vec::new(),
        skipped,
    };
    let n_train = train.len();
    for (i, f) in feats.into_iter().enumerate() {
        let Some(f) = f else { continue };
        if i < n_train {
            rows.train.extend(f);
            rows.train_targets.push(target_of(&train[i]));
            rows.train_samples.push(train[i].clone());
        } else {
            rows.val.extend(f);
            rows.val_targets.push(target_of(&val[i - n_train]));
            rows.val_samples.push(val[i - n_train].clone());
        }
    }
    Ok(rows)
}
