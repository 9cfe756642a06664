//! Live scoring with [`nanoclass::live::Live`] (the same path as `nanoclass live`).
//!
//! Loaded models are cached by run directory *and* by the size and modification time of its
//! `model.safetensors`, so a retrained or still-training run is reloaded, never served stale.
//! The caller checks that the run's labels are still categories ([`crate::store::staleness`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nanoclass::infer::scorer::ScoreOptions;
use nanoclass::live::{Live, LiveOptions, LiveResult};
use nanoclass::run::files;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};

/// Live settings from the page (query string).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct LiveQuery {
    /// Exponential moving average factor in `[0, 1)` over frames (0: none).
    pub smoothing: Option<f32>,
    /// Top-1 probability in `[0, 1]` below which no label is given.
    pub threshold: Option<f32>,
    /// Answer "unknown" for a frame far from every class (the run's unknown rule,
    /// [`nanoclass::infer::calibration`]); ignored for a run without one.
    pub unknown: Option<bool>,
}

impl LiveQuery {
    /// The options for [`Live::open`]: every class listed (`top_k` = all).
    pub fn options(&self) -> ApiResult<LiveOptions> {
        let smoothing = self.smoothing.unwrap_or(0.0);
        if !(0.0..1.0).contains(&smoothing) {
            return Err(ApiError::bad_request(format!(
                "smoothing must be in [0, 1), got {smoothing}"
            )));
        }
        if let Some(t) = self.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(ApiError::bad_request(format!(
                "threshold must be in [0, 1], got {t}"
            )));
        }
        Ok(LiveOptions {
            score: ScoreOptions {
                top_k: usize::MAX,
                threshold: self.threshold.filter(|t| *t > 0.0),
                smoothing,
            },
            unknown: self.unknown.unwrap_or(false),
            ..LiveOptions::default()
        })
    }
}

/// Scores of one frame, as sent to the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Run number of the model.
    pub run: u32,
    /// `classification` or `regression`: what the model predicts.
    pub task: &'static str,
    /// Labels, index order.
    pub labels: Vec<String>,
    /// Probabilities per label (after smoothing), sum 1; empty for regression.
    pub probs: Vec<f32>,
    /// Regression: the predicted point of each label (index order), `[x, y]` in continuous
    /// pixel coordinates of the frame (0 at the left/top edge, `size` at the right/bottom),
    /// smoothed like the probabilities; None for classification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<[f32; 2]>>,
    /// The frame's `[width, height]` in pixels (the space of `points`).
    pub size: [u32; 2],
    /// Top-1 label, None below the threshold or when unknown.
    pub label: Option<String>,
    /// "None of these": the frame is farther from every class than the run's unknown rule
    /// allows (only with `unknown=true`).
    pub unknown: bool,
    /// Whether the probabilities are calibrated (the run's fitted temperature).
    pub calibrated: bool,
    /// Top-1 index and probability (even below the threshold).
    pub top: Option<(usize, f32)>,
    /// Model time for the frame in milliseconds.
    pub ms: f64,
    /// Camera frame number (device source only).
    pub frame: Option<u64>,
}

impl Scores {
    /// From a [`LiveResult`] of `live` on a frame of `size` = `(width, height)` pixels.
    pub fn new(
        run: u32,
        live: &Live,
        r: LiveResult,
        frame: Option<u64>,
        size: (u32, u32),
    ) -> Scores {
        Scores {
            run,
            task: live.predictor().task().name(),
            labels: live.labels().to_vec(),
            probs: r.scores.probs,
            points: r.points,
            size: [size.0, size.1],
            label: r.label,
            unknown: r.scores.unknown,
            calibrated: live.scorer().temperature() != 1.0,
            top: r.scores.top.first().copied(),
            ms: r.ms,
            frame,
        }
    }
}

type Key = (
    PathBuf,
    Option<SystemTime>,
    u64,
    u32,
    u32,
    bool,
    Option<SystemTime>,
);

/// Loaded models, most recently used last; at most [`ModelCache::CAPACITY`].
#[derive(Debug, Default)]
pub struct ModelCache {
    entries: Mutex<Vec<(Key, Arc<Mutex<Live>>)>>,
}

fn key(run_dir: &Path, opts: &LiveOptions) -> Key {
    let meta = std::fs::metadata(run_dir.join(files::MODEL)).ok();
    (
        run_dir.to_path_buf(),
        meta.as_ref().and_then(|m| m.modified().ok()),
        meta.map_or(0, |m| m.len()),
        opts.score.smoothing.to_bits(),
        opts.score.threshold.unwrap_or(-1.0).to_bits(),
        opts.unknown,
        // Calibration is written when training ends, after the model.
        std::fs::metadata(run_dir.join(nanoclass::infer::calibration::FILE))
            .and_then(|m| m.modified())
            .ok(),
    )
}

impl ModelCache {
    /// Models kept loaded.
    pub const CAPACITY: usize = 4;

    /// The loaded model of `run_dir` with `opts`, loading it (blocking) when needed.
    pub fn get(&self, run_dir: &Path, opts: LiveOptions) -> ApiResult<Arc<Mutex<Live>>> {
        let k = key(run_dir, &opts);
        {
            let mut entries = self
                .entries
                .lock()
                .map_err(|_| ApiError::internal("model cache poisoned"))?;
            if let Some(i) = entries.iter().position(|(ek, _)| *ek == k) {
                let e = entries.remove(i);
                let live = e.1.clone();
                entries.push(e);
                return Ok(live);
            }
            // Older versions of the same run are dropped.
            entries.retain(|(ek, _)| ek.0 != k.0 || (ek.3, ek.4, ek.5) != (k.3, k.4, k.5));
        }
        let live = Arc::new(Mutex::new(open(run_dir, opts)?));
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| ApiError::internal("model cache poisoned"))?;
        entries.push((k, live.clone()));
        while entries.len() > Self::CAPACITY {
            entries.remove(0);
        }
        Ok(live)
    }
}

/// Loads a run for live use; a run without a model yet is 409. The unknown answer is asked
/// for only where the run has a rule for its current model.
pub fn open(run_dir: &Path, mut opts: LiveOptions) -> ApiResult<Live> {
    if !run_dir.join(files::MODEL).is_file() {
        return Err(ApiError::conflict(format!(
            "run {} has no model yet: training has not finished an epoch",
            run_dir.display()
        )));
    }
    if opts.unknown {
        opts.unknown = nanoclass::run::Run::open(run_dir)
            .ok()
            .and_then(|run| nanoclass::infer::calibration::Calibration::load(&run))
            .is_some_and(|c| c.unknown.is_some());
    }
    Live::open(run_dir, opts).map_err(ApiError::from)
}
