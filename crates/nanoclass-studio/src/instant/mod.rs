//! Instant mode: live preview scores while the user is still capturing.
//!
//! As soon as every category of a classification task has an image, an
//! [`nanoclass::instant::InstantModel`] is fitted on the frozen features of the task's images
//! (EfficientNet-Lite0 with its ImageNet weights, the studio's default backbone) and the live
//! view can score frames with it, labelled as a preview with the number of images it rests on.
//!
//! - Each capture, upload, import or delete calls [`InstantHub::refresh`]: only images without
//!   features are embedded (through the on-disk feature cache, keyed by content), then the head
//!   is refitted. Its timings (`embed_ms` for the new images, `update_ms` for everything else:
//!   listing, refit, bookkeeping) are reported by `GET /api/tasks/{task}/instant`.
//! - The refit after an upload is bounded: the leave-out check that chooses between the
//!   prototypes and the linear head ([`HeadChoice::Auto`]) is the costly part (six fits on up to
//!   [`nanoclass::instant::MAX_FIT_IMAGES`] images). Up to [`SYNC_CHECK_IMAGES`] images it runs
//!   with every refit. Beyond, a refit fits the head the last check chose, and the check runs
//!   again on a background thread once the images have grown or shrunk by a quarter since it
//!   last ran ([`CHECK_GROWTH`]); its model replaces the preview when the images have not changed
//!   meanwhile. So an upload's answer costs one fit whatever the number of images.
//! - While a class has fewer than [`FEW_IMAGES`] images, the features are centred on the mean of
//!   the training features *and* the recent camera frames ([`FRAME_POOL`] of them), refitted
//!   every [`RECENTRE_FRAMES`] new frames: few images estimate the scene's mean feature poorly,
//!   and the frames add what the camera sees. A frame equal to that mean keeps its direction
//!   (it only shortens), so a static camera does not blind the model.
//! - Recent frames are pooled (one every [`POOL_INTERVAL`]); "label these next" lists those the
//!   instant model is least sure of (smallest margin between its top two classes), and one
//!   request files such a frame into a category.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use image::RgbImage;
use nanoclass::infer::calibration::UnknownRule;
use nanoclass::infer::embed::Embedder;
use nanoclass::infer::engine::EngineChoice;
use nanoclass::infer::scorer::{confident, ema, margin, top_k};

/// "Label these next" lists a frame the preview is unsure of only when the gap between its top
/// two probabilities is below this (two classes: a top-1 under 75%).
pub const UNSURE_MARGIN: f32 = 0.5;
use nanoclass::instant::{Features, HeadChoice, InstantModel};
use nanoclass::live::LiveOptions;
use nanoclass::model::Arch;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::store::{Store, image_files};

mod check;
#[cfg(test)]
mod tests;

pub use check::{CHECK_GROWTH, SYNC_CHECK_IMAGES};
use check::{CheckJob, Checked, choice_of};

/// Below this many images in some class, features are also centred on recent frames.
pub const FEW_IMAGES: usize = 10;
/// Recent frames kept for centring and for "label these next".
pub const FRAME_POOL: usize = 40;
/// At most one frame per this interval goes into the pool.
pub const POOL_INTERVAL: Duration = Duration::from_millis(250);
/// New pooled frames after which a model centred on frames is refitted.
pub const RECENTRE_FRAMES: usize = 8;

/// The backbone of instant models.
pub const ARCH: Arch = Arch::EfficientnetLite0;

struct PooledFrame {
    id: u64,
    jpeg: Bytes,
    features: Vec<f32>,
}

/// Timings of the last refresh that changed the model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Update {
    /// Images newly embedded.
    pub embedded: usize,
    /// Time embedding them, in milliseconds.
    pub embed_ms: f64,
    /// Everything else (listing the folders, refitting, bookkeeping), in milliseconds.
    pub update_ms: f64,
    /// Of which the refit, in milliseconds.
    pub fit_ms: f64,
}

#[derive(Default)]
struct TaskState {
    features: HashMap<PathBuf, Vec<f32>>,
    labels: Vec<String>,
    counts: Vec<usize>,
    model: Option<Arc<InstantModel>>,
    /// The preview's "none of these" rule on the backbone features (prototypes, threshold from
    /// the images' leave-one-out distances; [`UnknownRule`]).
    unknown: Option<Arc<UnknownRule>>,
    note: Option<String>,
    version: u64,
    centred_on_frames: usize,
    pool: VecDeque<PooledFrame>,
    pooled_at: Option<Instant>,
    pooled_since_fit: usize,
    update: Option<Update>,
    browser_smoothed: Option<Vec<f32>>,
    checked: Option<Checked>,
    /// A background leave-out check is running.
    checking: bool,
}

impl TaskState {
    fn few_images(&self) -> bool {
        self.counts.iter().any(|&c| c < FEW_IMAGES)
    }

    /// Whether a model centred on frames has seen enough new frames to be refitted.
    fn wants_recentre(&self) -> bool {
        self.model.is_some() && self.few_images() && self.pooled_since_fit >= RECENTRE_FRAMES
    }

    /// Refits from the current features; `listing` is every image with its class. Returns the
    /// leave-out check to run in the background, if one is due.
    fn refit(&mut self, listing: &[(PathBuf, usize)]) -> Option<CheckJob> {
        self.pooled_since_fit = 0;
        let k = self.labels.len();
        let mut counts = vec![0usize; k];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for (p, c) in listing {
            if let Some(f) = self.features.get(p) {
                x.extend_from_slice(f);
                y.push(*c);
                counts[*c] += 1;
            }
        }
        self.counts = counts;
        self.version += 1;
        self.model = None;
        self.unknown = None;
        if k < 2 {
            self.note = Some("add a second category: the preview needs two or more".into());
            return None;
        }
        if let Some(c) = self.counts.iter().position(|&n| n == 0) {
            self.note = Some(format!(
                "capture an image of {:?}: the preview starts when every category has one",
                self.labels[c]
            ));
            return None;
        }
        // Rows are the backbone's features, followed by its pretrained classifier's logits when
        // the weights carry one (`Embedder::dim`).
        let dim = x.len() / y.len();
        let split = (dim > ARCH.feature_dim()).then(|| ARCH.feature_dim());
        let centre = if self.few_images() && !self.pool.is_empty() {
            let n = y.len() + self.pool.len();
            let mut m = vec![0.0f64; dim];
            for row in x
                .chunks_exact(dim)
                .chain(self.pool.iter().map(|f| &f.features[..]))
            {
                for (a, v) in m.iter_mut().zip(row) {
                    *a += f64::from(*v);
                }
            }
            self.centred_on_frames = self.pool.len();
            Some(
                m.iter()
                    .map(|v| (*v / n as f64) as f32)
                    .collect::<Vec<f32>>(),
            )
        } else {
            self.centred_on_frames = 0;
            None
        };
        let data = Features {
            x: &x,
            split,
            labels: &y,
            dim,
            classes: k,
        };
        let n = y.len();
        let checked = self.checked.filter(|c| c.holds_for(n, k));
        let (choice, due) = match (checked, self.checked) {
            (Some(c), _) => (choice_of(c.kind), false),
            (None, _) if n <= SYNC_CHECK_IMAGES => (HeadChoice::Auto, false),
            (None, last) => (
                last.map_or(HeadChoice::Prototypes, |c| choice_of(c.kind)),
                !self.checking,
            ),
        };
        match InstantModel::fit(data, centre.as_deref(), choice) {
            Ok(mut m) => {
                if choice == HeadChoice::Auto {
                    self.checked = Some(Checked {
                        images: n,
                        classes: k,
                        kind: m.kind,
                        leave_out: m.leave_out,
                    });
                } else if let Some(c) = checked {
                    m.leave_out = c.leave_out;
                }
                self.model = Some(Arc::new(m));
                self.note = None;
                let fdim = split.unwrap_or(dim);
                let rows: Vec<Vec<f32>> = x.chunks_exact(dim).map(|r| r[..fdim].to_vec()).collect();
                self.unknown = UnknownRule::fit(&rows, &y, k, &[]).map(Arc::new);
            }
            Err(e) => {
                self.note = Some(e.to_string());
                return None;
            }
        }
        due.then(|| {
            self.checking = true;
            CheckJob {
                x,
                y,
                dim,
                split,
                classes: k,
                centre,
                version: self.version,
            }
        })
    }

    /// Takes in a background check's answer: the head choice for the next refits, and its
    /// model when the images are still those it was fitted on.
    fn checked_in(&mut self, job: &CheckJob, result: nanoclass::Result<InstantModel>) {
        self.checking = false;
        let Ok(m) = result else { return };
        self.checked = Some(Checked {
            images: job.y.len(),
            classes: job.classes,
            kind: m.kind,
            leave_out: m.leave_out,
        });
        if self.version == job.version {
            self.model = Some(Arc::new(m));
            self.browser_smoothed = None;
        }
    }

    fn status(&self) -> Value {
        let m = self.model.as_deref();
        json!({
            "ready": m.is_some(),
            "note": self.note,
            "labels": self.labels,
            "counts": self.counts,
            "images": self.counts.iter().sum::<usize>(),
            "head": m.map(|m| m.kind),
            "temperature": m.map(|m| m.temperature),
            "leave_out": m.and_then(|m| m.leave_out),
            "leave_out_images": self.checked.map(|c| c.images),
            "checking": self.checking,
            "centred_on_frames": self.centred_on_frames,
            "version": self.version,
            "update": self.update,
            "pooled_frames": self.pool.len(),
        })
    }

    /// Scores of one frame's features, as the live view shows them.
    fn scores(
        &self,
        features: &[f32],
        opts: &LiveOptions,
        smoothed: &mut Option<Vec<f32>>,
        ms: f64,
    ) -> Value {
        let Some(m) = self.model.as_deref() else {
            *smoothed = None;
            return json!({"type": "waiting", "preview": true, "message": self.note});
        };
        let p = m.probs(features);
        if smoothed.as_ref().is_some_and(|s| s.len() != p.len()) {
            *smoothed = None;
        }
        let p = ema(smoothed.as_deref(), p, opts.score.smoothing);
        *smoothed = Some(p.clone());
        let top = top_k(&p, p.len());
        let unknown = opts.unknown && self.is_unknown(features);
        let label = confident(&top, opts.score.threshold)
            .filter(|_| !unknown)
            .map(|i| self.labels[i].clone());
        json!({
            "type": "scores",
            "preview": true,
            "run": null,
            "labels": self.labels,
            "probs": p,
            "label": label,
            "unknown": unknown,
            "top": top.first(),
            "ms": ms,
            "images": m.images(),
            "head": m.kind,
            "version": self.version,
        })
    }

    /// Whether a frame's features (backbone features first, as the rows) are farther from
    /// every class than the preview's unknown rule allows.
    fn is_unknown(&self, features: &[f32]) -> bool {
        self.unknown.as_deref().is_some_and(|u| {
            let fdim = features.len().min(ARCH.feature_dim());
            u.is_unknown(u.distance(&features[..fdim]))
        })
    }

    fn pool_frame(&mut self, id: u64, jpeg: Bytes, features: Vec<f32>) {
        let due = self.pooled_at.is_none_or(|t| t.elapsed() >= POOL_INTERVAL);
        if !due {
            return;
        }
        self.pooled_at = Some(Instant::now());
        self.pool.push_back(PooledFrame { id, jpeg, features });
        while self.pool.len() > FRAME_POOL {
            self.pool.pop_front();
        }
        self.pooled_since_fit += 1;
    }
}

/// The instant models of every task, and the backbone they share.
pub struct InstantHub {
    weights: String,
    cache_root: Option<PathBuf>,
    embedder: Mutex<Option<Arc<Mutex<Embedder>>>>,
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
    next_id: AtomicU64,
}

/// A task's state, and a lock that serialises its refreshes (scoring only takes `state`, so it
/// goes on while new images are embedded).
#[derive(Default)]
struct TaskEntry {
    refreshing: Mutex<()>,
    state: Mutex<TaskState>,
}

impl std::fmt::Debug for InstantHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstantHub")
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

fn poisoned() -> ApiError {
    ApiError::internal("instant model lock poisoned")
}

impl InstantHub {
    /// A hub whose backbone is [`ARCH`] with `weights` (a registry name or file), loaded on
    /// first use; image features are cached under `cache_root`.
    pub fn new(weights: impl Into<String>, cache_root: Option<PathBuf>) -> InstantHub {
        InstantHub {
            weights: weights.into(),
            cache_root,
            embedder: Mutex::new(None),
            tasks: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn embedder(&self) -> ApiResult<Arc<Mutex<Embedder>>> {
        let mut e = self.embedder.lock().map_err(|_| poisoned())?;
        if let Some(e) = e.as_ref() {
            return Ok(e.clone());
        }
        let loaded = Embedder::open(
            ARCH,
            &self.weights,
            self.cache_root.as_deref(),
            EngineChoice::from_env(),
        )
        .map_err(|err| ApiError::conflict(format!("the instant preview's backbone: {err}")))?;
        let loaded = Arc::new(Mutex::new(loaded));
        *e = Some(loaded.clone());
        Ok(loaded)
    }

    fn entry(&self, task: &str) -> ApiResult<Arc<TaskEntry>> {
        let mut tasks = self.tasks.lock().map_err(|_| poisoned())?;
        Ok(tasks.entry(task.to_string()).or_default().clone())
    }

    fn with_state<T>(&self, task: &str, f: impl FnOnce(&mut TaskState) -> T) -> ApiResult<T> {
        let entry = self.entry(task)?;
        let mut s = entry.state.lock().map_err(|_| poisoned())?;
        Ok(f(&mut s))
    }

    /// Forgets a deleted task.
    pub fn forget(&self, task: &str) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.remove(task);
        }
    }

    /// Brings the task's instant model up to date with its folders: embeds images that have no
    /// features yet, drops deleted ones, and refits when anything changed (or when a model
    /// centred on frames has seen [`RECENTRE_FRAMES`] new ones). Returns the status.
    pub fn refresh(&self, store: &Store, task: &str) -> ApiResult<Value> {
        let t0 = Instant::now();
        let labels = store.category_names(task)?;
        let mut listing = Vec::new();
        for (c, name) in labels.iter().enumerate() {
            for p in image_files(&store.category_dir(task, name)?)? {
                listing.push((p, c));
            }
        }
        let entry = self.entry(task)?;
        let _one_at_a_time = entry.refreshing.lock().map_err(|_| poisoned())?;
        let state = &entry.state;
        let missing: Vec<PathBuf> = {
            let s = state.lock().map_err(|_| poisoned())?;
            listing
                .iter()
                .filter(|(p, _)| !s.features.contains_key(p))
                .map(|(p, _)| p.clone())
                .collect()
        };
        let te = Instant::now();
        let mut new = Vec::new();
        if !missing.is_empty() {
            let emb = self.embedder()?;
            let emb = emb.lock().map_err(|_| poisoned())?;
            let (feats, _skipped) = emb.files(&missing)?;
            // A file that cannot be decoded is left out (training skips it too).
            for (p, f) in missing.iter().zip(feats) {
                if let Some(f) = f {
                    new.push((p.clone(), f));
                }
            }
        }
        let embed_ms = te.elapsed().as_secs_f64() * 1000.0;
        let mut s = state.lock().map_err(|_| poisoned())?;
        let embedded = new.len();
        for (p, f) in new {
            s.features.insert(p, f);
        }
        let before = s.features.len();
        let keep: std::collections::HashSet<&PathBuf> = listing.iter().map(|(p, _)| p).collect();
        s.features.retain(|p, _| keep.contains(p));
        let removed = before != s.features.len();
        let relabelled = s.labels != labels;
        let recentre = s.wants_recentre();
        if embedded > 0 || removed || relabelled || recentre || s.version == 0 {
            s.labels = labels;
            let tf = Instant::now();
            let job = s.refit(&listing);
            let fit_ms = tf.elapsed().as_secs_f64() * 1000.0;
            if let Some(job) = job {
                let entry = entry.clone();
                std::thread::spawn(move || {
                    let result = job.run();
                    if let Ok(mut s) = entry.state.lock() {
                        s.checked_in(&job, result);
                    }
                });
            }
            let total_ms = t0.elapsed().as_secs_f64() * 1000.0;
            s.update = Some(Update {
                embedded,
                embed_ms,
                update_ms: total_ms - embed_ms,
                fit_ms,
            });
            s.browser_smoothed = None;
        }
        Ok(s.status())
    }

    /// The task's status without refreshing.
    pub fn status(&self, task: &str) -> ApiResult<Value> {
        self.with_state(task, |s| s.status())
    }

    /// Embeds one frame, pools it, and scores it with the current instant model (server-side
    /// smoothing state `smoothed`; None: the task's browser-camera state).
    pub fn score_frame(
        &self,
        task: &str,
        image: &RgbImage,
        jpeg: Bytes,
        opts: &LiveOptions,
        smoothed: Option<&mut Option<Vec<f32>>>,
    ) -> ApiResult<Value> {
        let t0 = Instant::now();
        let features = {
            let emb = self.embedder()?;
            let emb = emb.lock().map_err(|_| poisoned())?;
            emb.frames(std::slice::from_ref(image))?
                .pop()
                .ok_or_else(|| ApiError::internal("the backbone returned no features"))?
        };
        let entry = self.entry(task)?;
        let mut s = entry.state.lock().map_err(|_| poisoned())?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let v = match smoothed {
            Some(sm) => s.scores(&features, opts, sm, ms),
            None => {
                let mut sm = s.browser_smoothed.take();
                let v = s.scores(&features, opts, &mut sm, ms);
                s.browser_smoothed = sm;
                v
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        s.pool_frame(id, jpeg, features);
        Ok(v)
    }

    /// Whether a model centred on frames is due for a refit.
    pub fn wants_recentre(&self, task: &str) -> bool {
        self.with_state(task, |s| s.wants_recentre())
            .unwrap_or(false)
    }

    /// Up to `n` pooled frames that need a label: those the preview's unknown rule calls none
    /// of the categories, then those whose top two probabilities are closer than
    /// [`UNSURE_MARGIN`], smallest margin first. Frames it is sure of are not listed.
    pub fn uncertain(&self, task: &str, n: usize) -> ApiResult<Value> {
        let entry = self.entry(task)?;
        let s = entry.state.lock().map_err(|_| poisoned())?;
        let Some(m) = s.model.as_deref() else {
            return Ok(json!([]));
        };
        let mut rows: Vec<(f32, u64, usize, f32, bool)> = s
            .pool
            .iter()
            .map(|f| {
                let p = m.probs(&f.features);
                let top = top_k(&p, 1)[0];
                (margin(&p), f.id, top.0, top.1, s.is_unknown(&f.features))
            })
            .filter(|r| r.0 < UNSURE_MARGIN || r.4)
            .collect();
        // Unknown frames first (the preview has no class for them), then the least sure.
        rows.sort_by(|a, b| b.4.cmp(&a.4).then(a.0.total_cmp(&b.0)));
        Ok(json!(
            rows.iter()
                .take(n)
                .map(|(mg, id, top, p, unknown)| json!({
                    "id": id,
                    "margin": mg,
                    "top1": s.labels[*top],
                    "probability": p,
                    "unknown": unknown,
                }))
                .collect::<Vec<_>>()
        ))
    }

    /// A pooled frame's JPEG.
    pub fn frame(&self, task: &str, id: u64) -> ApiResult<Bytes> {
        self.with_state(task, |s| {
            s.pool
                .iter()
                .find(|f| f.id == id)
                .map(|f| f.jpeg.clone())
                .ok_or_else(|| gone(id))
        })?
    }

    /// Takes a pooled frame out of the pool (to be filed into a category).
    pub fn take_frame(&self, task: &str, id: u64) -> ApiResult<Bytes> {
        self.with_state(task, |s| {
            let i = s
                .pool
                .iter()
                .position(|f| f.id == id)
                .ok_or_else(|| gone(id))?;
            Ok(s.pool.remove(i).map(|f| f.jpeg).unwrap_or_default())
        })?
    }
}

fn gone(id: u64) -> ApiError {
    ApiError::not_found(format!(
        "frame {id} is no longer among the recent frames (the pool keeps the last {FRAME_POOL})"
    ))
}
