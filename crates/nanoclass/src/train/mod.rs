//! Training: the frozen, full, finetune and instant modes.
//!
//! - **frozen**: the backbone runs once per image in eval mode (BatchNorm running statistics,
//!   eval preset); its `[N, C]` features are kept and only the head is trained on them, so an
//!   epoch takes milliseconds.
//! - **full**: every layer is trained with the train preset (the course's recipe); BatchNorm
//!   uses batch statistics.
//! - **finetune**: `head_epochs` head-only epochs on cached features, then every layer with the
//!   backbone at `lr * body_lr_factor`.
//! - **instant**: the head is fitted in one go on the cached features ([`crate::instant`]: class
//!   prototypes, or a linear head when a leave-out check prefers it) and saved as the usual
//!   linear layer, so the run serves `predict`, `eval`, `live` and `export` like any other.
//!
//! After each epoch the held-out loss and top-1 are measured with the eval preset and written to
//! `metrics.jsonl`; the best model (highest held-out top-1, then lowest loss) is
//! `model.safetensors` and the latest is `last.safetensors`. A non-finite loss stops training
//! at once with the step and learning rate, before anything is saved, so the best checkpoint
//! stays intact. A final training batch of one image is dropped (BatchNorm needs two values per
//! channel in train mode).
//!
//! The regression task ([`Task::Regression`], the course's second project) goes through the same
//! loop: the head has `2K` outputs for `K` categories, the loss is the mean squared error of each
//! image's own category pair (outputs `2k, 2k + 1`) against its point normalised by
//! [`crate::eval::regression::normalise`] over the model's view, geometric augmentation moves
//! the target with the pixels ([`crate::data::presets::regression_presets`]: a mirrored view
//! mirrors x), and the best model is the one with the lowest mean held-out error in pixels.
//! Regression images are decoded at full size (the file name's point is in pixels of the file)
//! and their shorter side resized to the input size once, before training.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::data::decode::DecodeOptions;
use crate::data::folder::{Sample, scan_image_folder, scan_regression_folder};
use crate::data::loader::{Batch, Skipped, decode_batches, decode_samples, prefetch};
use crate::data::presets::{EvalPreset, presets, regression_presets};
use crate::data::split::stratified_split;
use crate::engine::{EngineChoice, OrtModel, backbone_model, resolve};
use crate::eval::regression::{denormalise, distance, normalise};
use crate::instant::{Features, HeadChoice, InstantModel, PretrainedHead};
use crate::model::point::PointHead;
use crate::model::weights::{LoadReport, load_net, save_net};
use crate::model::{Arch, Head, Net, registry};
use crate::run::{
    EpochMetrics, Mode, OptimizerKind, Run, RunConfig, Schedule, SplitRecord, Task, WeightsRecord,
    files, write_atomic,
};
use crate::{Error, Result};

pub mod activations;
pub mod checkpoint;
pub mod features;

use checkpoint::TrainState;
use features::FeatureCache;

/// Everything `nanoclass train` needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset root (ImageFolder or DLI layout; for regression `<category>/<x>_<y>_<uuid>.jpg`).
    pub data: PathBuf,
    /// Classification (one label per image) or regression (one point per image).
    pub task: Task,
    /// Backbone.
    pub arch: Arch,
    /// Starting weights: a registry name, a file path, or `none` (random init).
    pub weights: String,
    /// Training mode.
    pub mode: Mode,
    /// Epochs (`finetune`: full-network epochs).
    pub epochs: usize,
    /// Head-only epochs before the full phase (`finetune` only).
    pub head_epochs: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Backbone learning-rate factor in the `finetune` full phase.
    pub body_lr_factor: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// LR schedule.
    pub schedule: Schedule,
    /// Seed.
    pub seed: u64,
    /// Held-out fraction when the dataset has no `val/` folder.
    pub val_fraction: f32,
    /// Run directory to write.
    pub out: PathBuf,
    /// Continue the run in `out` from its last completed epoch (see [`resume_options`]).
    pub resume: bool,
    /// Replace a run already in `out` (its models, metrics, checkpoint and eval results).
    pub force: bool,
    /// Root of the on-disk frozen-feature cache ([`features::default_dir`]); None disables it.
    pub feature_cache: Option<PathBuf>,
    /// Cancellation: when the flag becomes true, training stops before its next optimizer step
    /// (and after feature extraction) with [`Error::Train`] saying so. Epochs already completed
    /// stay saved, so a run stopped after its first epoch is a usable model.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// `instant` mode: which head to fit.
    pub instant_head: HeadChoice,
    /// Engine of forward-only work (frozen and instant modes' backbone features).
    pub engine: EngineChoice,
}

/// What the training loop reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// A line for the user.
    Info(String),
    /// A warning for the user.
    Warn(String),
    /// Feature extraction progress: `done` of `total` images.
    Features {
        /// Images embedded so far.
        done: usize,
        /// Images to embed.
        total: usize,
    },
    /// A phase begins.
    Phase {
        /// `head` or `full`.
        phase: &'static str,
        /// Epochs in the phase.
        epochs: usize,
        /// Optimizer steps per epoch.
        steps: usize,
    },
    /// One optimizer step finished.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step in the epoch.
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// Running mean training loss of the epoch.
        loss: f64,
        /// Running training top-1 of the epoch (classification).
        top1: Option<f64>,
        /// Running mean training point error of the epoch, in pixels of the model input
        /// (regression).
        error_px: Option<f64>,
    },
    /// An epoch finished (after validation).
    Epoch(EpochMetrics),
}

/// The outcome of a training run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Run directory.
    pub run_dir: PathBuf,
    /// Best held-out top-1 (None without a held-out set, and for regression).
    pub best_val_top1: Option<f64>,
    /// Regression: lowest mean held-out point error, in pixels of the model input (None without
    /// a held-out set, and for classification).
    pub best_val_error_px: Option<f64>,
    /// Epoch of the best model (1-based).
    pub best_epoch: usize,
    /// Files that could not be decoded.
    pub skipped: Vec<Skipped>,
    /// Training images used.
    pub train_images: usize,
    /// Held-out images used.
    pub val_images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The compute device: Flex (CPU) by default, CUDA or wgpu when built with those features.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    {
        Device::wgpu(Default::default())
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        Device::flex()
    }
}

/// Builds the starting network for `arch` with `outputs` head outputs (see [`Task::outputs`])
/// from a weights spec.
///
/// `spec` is `none` (random init), an existing file path, or a registry name resolved through
/// [`registry::resolve`] (cache, then installed package); an unknown name is an error listing the
/// registry.
pub fn initial_net(
    arch: Arch,
    spec: &str,
    labels: &[String],
    outputs: usize,
    device: &Device,
) -> Result<(Net, Option<LoadReport>)> {
    if spec == "none" {
        return Ok((Net::new(arch, outputs, device), None));
    }
    let path = if Path::new(spec).is_dir() && Path::new(spec).join(files::MODEL).is_file() {
        // A run directory: start from its best model.
        Path::new(spec).join(files::MODEL)
    } else if Path::new(spec).is_dir() {
        return Err(Error::Other(format!(
            "--weights {spec}: a folder without {}; give a weights file or a run directory",
            files::MODEL
        )));
    } else if Path::new(spec).exists() {
        PathBuf::from(spec)
    } else if registry::find(spec).is_some() {
        registry::resolve(spec).map_err(|e| {
            Error::Other(format!(
                "{e}\n(`nanoclass weights fetch {spec}` downloads it where there is internet; \
                 `--arch efficientnet_lite0` uses weights installed with pip; `--weights none` trains from scratch)"
            ))
        })?
    } else {
        let names: Vec<&str> = registry::registry().iter().map(|e| e.name).collect();
        return Err(Error::Other(format!(
            "--weights {spec}: no such file, and not a registry name (known: {}); use `none` for random init",
            names.join(", ")
        )));
    };
    let (net, report) = load_net(arch, &path, outputs, Some(labels), device)?;
    Ok((net, Some(report)))
}

struct Data {
    labels: Vec<String>,
    train: Vec<Sample>,
    val: Vec<Sample>,
    split: SplitRecord,
}

fn prepare_data(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<Data> {
    let ds = match opts.task {
        Task::Classification => scan_image_folder(&opts.data)?,
        Task::Regression => scan_regression_folder(&opts.data)?,
    };
    for w in &ds.warnings {
        on_event(Event::Warn(w.clone()));
    }
    let n = ds.classes.len();
    if let Some(test) = ds.test.as_ref().filter(|t| !t.is_empty()) {
        on_event(Event::Info(format!(
            "test/ ({} images) is never used in training; score it afterwards with `nanoclass eval RUN --split test`",
            test.len()
        )));
    }
    let (train, val, split) = match ds.val {
        Some(val) if !val.is_empty() => (ds.train, val, SplitRecord::Folder),
        Some(_) => {
            on_event(Event::Warn(
                "val/ has no images: training without a held-out set, no accuracy figure will be reported"
                    .into(),
            ));
            (ds.train, vec![], SplitRecord::NoValidation)
        }
        None if opts.val_fraction <= 0.0 => (ds.train, vec![], SplitRecord::NoValidation),
        None => {
            let (train, val) = stratified_split(&ds.train, n, opts.val_fraction, opts.seed);
            let val_files = val
                .iter()
                .map(|s| {
                    s.path
                        .strip_prefix(&ds.root)
                        .unwrap_or(&s.path)
                        .to_path_buf()
                })
                .collect();
            (
                train,
                val,
                SplitRecord::Generated {
                    val_fraction: opts.val_fraction,
                    seed: opts.seed,
                    val_files,
                },
            )
        }
    };
    if train.len() < 2 {
        return Err(Error::Dataset {
            path: opts.data.clone(),
            reason: format!(
                "{} training image(s): at least 2 are needed (BatchNorm needs two values per channel)",
                train.len()
            ),
        });
    }
    Ok(Data {
        labels: ds.classes,
        train,
        val,
        split,
    })
}

/// Runs the network's backbone (eval mode) over image files, batch by batch, decoding in
/// parallel ahead of the compute: on the ONNX Runtime model `ort()` gives (called once, and only
/// when some file is not in `cache`), else on burn. Returns `[C]` features per file (None when
/// skipped) and how many came from `cache`; newly computed features are added to it.
pub fn extract_features<'m>(
    (net, ort): (&Net, &dyn Fn() -> Option<&'m OrtModel>),
    paths: &[PathBuf],
    preset: &EvalPreset,
    batch_size: usize,
    device: &Device,
    cache: Option<&FeatureCache>,
    mut progress: impl FnMut(usize, usize),
) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>, usize) {
    let mut out: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
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
    let eval_net = net.valid();
    let crop = preset.crop as usize;
    let p = *preset;
    let opts = DecodeOptions {
        min_side: Some(preset.decode_min_side()),
    };
    let mut skipped = Vec::new();
    let todo_paths: Vec<PathBuf> = todo.iter().map(|&i| paths[i].clone()).collect();
    // The engine is opened only when something is left to compute.
    let ort = if todo.is_empty() { None } else { ort() };
    for (batch, skip) in decode_batches(todo_paths, batch_size, opts, move |img| p.apply(img)) {
        done += batch.n + skip.len();
        skipped.extend(skip);
        if batch.n > 0 {
            let ran = ort.map(|m| m.run(batch.pixels.clone(), batch.n, crop));
            let (v, c) = match ran {
                Some(Ok(vc)) => vc,
                // ONNX Runtime failing mid-run: the batch is computed by burn instead.
                _ => {
                    let x = Tensor::<4>::from_data(
                        TensorData::new(batch.pixels, [batch.n, 3, crop, crop]),
                        device,
                    );
                    let f = eval_net.features(x);
                    let c = f.dims()[1];
                    (f.into_data().try_to_vec::<f32>().unwrap_or_default(), c)
                }
            };
            for (j, &t) in batch.items.iter().enumerate() {
                let i = todo[t];
                let f = v[j * c..(j + 1) * c].to_vec();
                if let (Some(cache), Some(k)) = (cache, &keys[i]) {
                    // A cache that cannot be written only costs speed next time.
                    let _ = cache.put(k, &f);
                }
                out[i] = Some(f);
            }
        }
        progress(done, paths.len());
    }
    (out, skipped, hits)
}

fn make_optimizer(opts: &TrainOptions) -> ModuleOptimizer {
    let wd = (opts.weight_decay > 0.0).then(|| WeightDecayConfig::new(opts.weight_decay as f32));
    match opts.optimizer {
        OptimizerKind::Adam => AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(wd)
            .init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(wd)
            .with_momentum((opts.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(opts.momentum)
                    .with_dampening(0.0)
            }))
            .init(),
    }
}

/// Learning rate at `step` of `total` steps (0-based) in a phase of `epochs` epochs.
pub fn scheduled_lr(
    base: f64,
    schedule: Schedule,
    step: usize,
    total: usize,
    epochs: usize,
) -> f64 {
    match schedule {
        Schedule::None => base,
        Schedule::Cosine => {
            let t = step as f64 / total.max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step => {
            let steps_per_epoch = (total / epochs.max(1)).max(1);
            let epoch = step / steps_per_epoch;
            let size = epochs.div_ceil(3).max(1);
            base * 0.1f64.powi((epoch / size) as i32)
        }
    }
}

/// Err when `opts.stop` is set: the user asked training to stop, before step `step` of epoch
/// `epoch` (1-based).
fn check_stop(opts: &TrainOptions, epoch: usize, step: usize) -> Result<()> {
    match &opts.stop {
        Some(flag) if flag.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(Error::Train(format!(
                "training stopped on request before step {step} of epoch {epoch}; completed epochs are kept"
            )))
        }
        _ => Ok(()),
    }
}

fn non_finite(epoch: usize, step: usize, lr: f64) -> Error {
    Error::Train(format!(
        "the training loss became non-finite at epoch {epoch}, step {step} (learning rate {lr:.3e}); \
         training stopped and the saved checkpoints were left as they were. Lower the learning rate (--lr)."
    ))
}

fn labels_tensor(labels: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::<1, Int>::from_data(TensorData::new(v, [labels.len()]), device)
}

/// Loss and correct count of logits against labels, read back to the host.
fn loss_and_correct(logits: Tensor<2>, labels: &[usize], device: &Device) -> (Tensor<1>, usize) {
    let pred: Vec<i64> = logits
        .clone()
        .argmax(1)
        .flatten::<1>(0, 1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default();
    let correct = pred
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p as usize == **l)
        .count();
    let loss = CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, labels_tensor(labels, device));
    (loss, correct)
}

/// What one image is scored against: its class (classification), or its category and its point
/// normalised over the model's view (regression, [`crate::eval::regression::normalise`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Target {
    label: usize,
    point: [f32; 2],
}

/// The loss of a batch and its score: the number of correct top-1 predictions
/// (classification), or the sum of the distances between predicted and true points in pixels of
/// the `size x size` model input (regression).
///
/// Regression loss: the course's `mean((outputs[i][2k:2k+2] - xy[i])**2)` averaged over the
/// batch, i.e. the squared error of each image's own category pair, summed and divided by `2B`.
/// The other categories' outputs get no gradient from that image.
fn batch_loss(
    task: Task,
    out: Tensor<2>,
    targets: &[Target],
    size: usize,
    device: &Device,
) -> (Tensor<1>, f64) {
    match task {
        Task::Classification => {
            let labels: Vec<usize> = targets.iter().map(|t| t.label).collect();
            let (loss, correct) = loss_and_correct(out, &labels, device);
            (loss, correct as f64)
        }
        Task::Regression => {
            let [b, k2] = out.dims();
            let mut mask = vec![0.0f32; b * k2];
            let mut want = vec![0.0f32; b * k2];
            for (i, t) in targets.iter().enumerate() {
                let j = i * k2 + 2 * t.label;
                mask[j] = 1.0;
                mask[j + 1] = 1.0;
                want[j] = t.point[0];
                want[j + 1] = t.point[1];
            }
            let values: Vec<f32> = out
                .clone()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            let sz = size as f32;
            let err: f64 = targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let j = i * k2 + 2 * t.label;
                    let pred = [
                        values.get(j).copied().unwrap_or(f32::NAN),
                        values.get(j + 1).copied().unwrap_or(f32::NAN),
                    ];
                    distance(denormalise(pred, sz, sz), denormalise(t.point, sz, sz))
                })
                .sum();
            let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, k2]), device);
            let want = Tensor::<2>::from_data(TensorData::new(want, [b, k2]), device);
            let diff = (out - want) * mask;
            let loss = (diff.clone() * diff)
                .sum()
                .div_scalar((2 * b.max(1)) as f32);
            (loss, err)
        }
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .map(f64::from)
        .unwrap_or(f64::NAN)
}

/// The random stream of one epoch: shuffling and augmentation depend only on the seed and the
/// epoch number, so a resumed run draws what an uninterrupted one would.
fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Everything needed to continue the run in `run_dir`: its `config.json` settings, with
/// `epochs` raised when given (to train longer than first planned).
pub fn resume_options(run_dir: &Path, epochs: Option<usize>) -> Result<TrainOptions> {
    checkpoint::load_state(run_dir)?;
    let c = Run::open(run_dir)?.config;
    Ok(TrainOptions {
        data: c.data,
        task: c.task,
        arch: c.arch,
        weights: c.weights.spec,
        mode: c.mode,
        epochs: epochs.unwrap_or(c.epochs),
        head_epochs: c.head_epochs,
        batch_size: c.batch_size,
        lr: c.lr,
        body_lr_factor: c.body_lr_factor,
        optimizer: c.optimizer,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
        schedule: c.schedule,
        seed: c.seed,
        val_fraction: match c.split {
            SplitRecord::Generated { val_fraction, .. } => val_fraction,
            _ => 0.2,
        },
        out: run_dir.to_path_buf(),
        resume: true,
        force: false,
        feature_cache: features::default_dir(),
        stop: None,
        instant_head: HeadChoice::Auto,
        engine: EngineChoice::from_env(),
    })
}

/// How many batches [`epoch_batches`] makes of `n` items.
fn batch_count(n: usize, batch: usize) -> usize {
    let chunks = n.div_ceil(batch.max(1));
    if chunks > 1 && n % batch.max(1) == 1 {
        chunks - 1
    } else {
        chunks
    }
}

/// Batches of indices for one epoch, shuffled; a final batch of one is dropped.
fn epoch_batches(n: usize, batch: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let mut out: Vec<Vec<usize>> = idx.chunks(batch.max(1)).map(|c| c.to_vec()).collect();
    if out.len() > 1 && out.last().is_some_and(|b| b.len() == 1) {
        out.pop();
    }
    debug_assert_eq!(out.len(), batch_count(n, batch));
    out
}

/// Held-out evaluation of a head on cached features: (loss, top-1) for classification, (loss,
/// mean point error in pixels of the `size x size` input) for regression.
fn eval_head(
    task: Task,
    head: &Head,
    feats: &[f32],
    targets: &[Target],
    c: usize,
    size: usize,
    device: &Device,
) -> Option<(f64, f64)> {
    if targets.is_empty() {
        return None;
    }
    let x = Tensor::<2>::from_data(TensorData::new(feats.to_vec(), [targets.len(), c]), device);
    let (loss, score) = batch_loss(task, head.forward(x), targets, size, device);
    Some((scalar(loss), score / targets.len() as f64))
}

/// Held-out evaluation of the whole network on preprocessed `crop x crop` tensors: (loss,
/// top-1) or (loss, mean point error in pixels), as [`eval_head`].
fn eval_net(
    task: Task,
    net: &Net,
    val: &[(Vec<f32>, Target)],
    crop: usize,
    batch: usize,
    device: &Device,
) -> Option<(f64, f64)> {
    if val.is_empty() {
        return None;
    }
    let eval = net.valid();
    let mut loss_sum = 0.0;
    let mut score = 0.0;
    for chunk in val.chunks(batch.max(1)) {
        let mut px = Vec::with_capacity(chunk.len() * 3 * crop * crop);
        for (t, _) in chunk {
            px.extend_from_slice(t);
        }
        let targets: Vec<Target> = chunk.iter().map(|(_, t)| *t).collect();
        let x = Tensor::<4>::from_data(TensorData::new(px, [chunk.len(), 3, crop, crop]), device);
        let (loss, s) = batch_loss(task, eval.forward(x), &targets, crop, device);
        loss_sum += scalar(loss) * chunk.len() as f64;
        score += s;
    }
    Some((loss_sum / val.len() as f64, score / val.len() as f64))
}

fn head_is_finite(net: &Net) -> bool {
    let finite = |t: Tensor<4>| {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default()
            .iter()
            .all(|v| v.is_finite())
    };
    match net.point_head() {
        Some(p) => [&p.conv1, &p.conv2, &p.offset]
            .into_iter()
            .all(|c| finite(c.weight.val())),
        None => finite(net.head().weight.val().unsqueeze()),
    }
}

/// Running training loss and score (top-1, or mean point error in pixels) of one epoch.
struct EpochStats {
    task: Task,
    loss_sum: f64,
    score: f64,
    seen: usize,
}

impl EpochStats {
    fn new(task: Task) -> Self {
        EpochStats {
            task,
            loss_sum: 0.0,
            score: 0.0,
            seen: 0,
        }
    }

    /// Adds a batch of `n` images: its mean loss and its score (see [`batch_loss`]).
    fn add(&mut self, loss: f64, score: f64, n: usize) {
        self.loss_sum += loss * n as f64;
        self.score += score;
        self.seen += n;
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// (top-1, mean point error in pixels), the one of the task set.
    fn figures(&self) -> (Option<f64>, Option<f64>) {
        let mean = self.score / self.seen.max(1) as f64;
        match self.task {
            Task::Classification => (Some(mean), None),
            Task::Regression => (None, Some(mean)),
        }
    }

    fn step_event(&self, epoch: usize, step: usize, steps: usize) -> Event {
        let (top1, error_px) = self.figures();
        Event::Step {
            epoch,
            step,
            steps,
            loss: self.loss(),
            top1,
            error_px,
        }
    }

    /// The epoch's metrics line; `val` is (held-out loss, held-out top-1 or mean point error).
    fn metrics(
        &self,
        epoch: usize,
        phase: &str,
        val: Option<(f64, f64)>,
        lr: f64,
        seconds: f64,
    ) -> EpochMetrics {
        let (train_top1, train_error_px) = self.figures();
        let regression = self.task == Task::Regression;
        EpochMetrics {
            epoch,
            phase: phase.into(),
            train_loss: self.loss(),
            train_top1,
            val_loss: val.map(|v| v.0),
            val_top1: val.filter(|_| !regression).map(|v| v.1),
            train_error_px,
            val_error_px: val.filter(|_| regression).map(|v| v.1),
            lr,
            seconds,
        }
    }
}

/// The best epoch so far. Its score is (held-out top-1, -held-out loss) for classification and
/// (-mean held-out point error in pixels, -held-out loss) for regression: higher is better.
struct Tracker {
    task: Task,
    best: Option<(f64, f64)>,
    best_epoch: usize,
}

impl Tracker {
    /// Saves `last` and, when better, `model`; appends the metrics line.
    fn end_epoch(
        &mut self,
        run: &Run,
        net: &Net,
        m: EpochMetrics,
        optim: &ModuleOptimizer,
        param_ids: std::collections::BTreeMap<String, u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        if !head_is_finite(net) {
            return Err(Error::Train(format!(
                "the model's weights became non-finite in epoch {}; training stopped before saving \
                 that epoch, and the checkpoints of earlier epochs were left as they were. \
                 Lower the learning rate (--lr) or the momentum (--momentum).",
                m.epoch
            )));
        }
        let meta = run.model_metadata();
        let valid = net.valid();
        save_net(&valid, &run.dir.join(files::LAST), &meta)?;
        let score = match self.task {
            Task::Classification => m.val_top1.map(|t| (t, -m.val_loss.unwrap_or(0.0))),
            Task::Regression => m.val_error_px.map(|e| (-e, -m.val_loss.unwrap_or(0.0))),
        };
        let better = match (score, self.best) {
            (Some(s), Some(b)) => s > b,
            (Some(_), None) => true,
            // no held-out set: the latest model is the one kept
            (None, _) => true,
        };
        if better {
            self.best = score;
            self.best_epoch = m.epoch;
            save_net(&valid, &run.model_path(), &meta)?;
        }
        run.append_metrics(&m)?;
        checkpoint::save(
            &run.dir,
            &TrainState {
                epoch: m.epoch,
                phase: m.phase.clone(),
                best: self.best,
                best_epoch: self.best_epoch,
                param_ids,
            },
            optim,
        )?;
        on_event(Event::Epoch(m));
        Ok(())
    }
}

/// Trains a model as `opts` says and writes the run directory. See the module docs.
///
/// A run directory that already holds a run is refused unless `opts.resume` (continue it) or
/// `opts.force` (replace it). When training fails before its first epoch is saved, the files
/// this call created are removed again, so no half-made run is left behind.
pub fn train(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<TrainSummary> {
    validate(opts)?;
    let config_path = opts.out.join(files::CONFIG);
    let fresh = !config_path.exists();
    if !fresh && !opts.resume {
        if !opts.force {
            return Err(Error::Run {
                path: opts.out.clone(),
                reason: "already holds a run: continue it with --resume, replace it with --force, \
                         or choose another --out"
                    .into(),
            });
        }
        clear_run(&opts.out)?;
    }
    let result = train_run(opts, on_event);
    if result.is_err() && fresh && !opts.out.join(files::MODEL).exists() {
        clear_run(&opts.out)?;
        // Only removes the folder when nothing else is in it.
        let _ = std::fs::remove_dir(&opts.out);
    }
    result
}

/// Removes what a run writes into its directory, leaving anything else there alone.
fn clear_run(dir: &Path) -> Result<()> {
    for f in [
        files::CONFIG,
        files::LABELS,
        files::MODEL,
        files::LAST,
        files::METRICS,
        "instant.json",
    ] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    for d in [files::CHECKPOINT, "eval"] {
        let p = dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Settings that cannot train are refused before any work, each with its valid range.
fn validate(opts: &TrainOptions) -> Result<()> {
    let bad = |msg: String| Err(Error::Train(msg));
    if opts.batch_size < 2 {
        return bad(
            "--batch-size must be at least 2 (BatchNorm needs two values per channel)".into(),
        );
    }
    if opts.epochs == 0 {
        return bad("--epochs must be at least 1".into());
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return bad(format!("--lr must be a positive number, got {}", opts.lr));
    }
    if !(0.0..1.0).contains(&opts.momentum) {
        return bad(format!(
            "--momentum must be in [0, 1), got {}",
            opts.momentum
        ));
    }
    if !(opts.weight_decay.is_finite() && opts.weight_decay >= 0.0) {
        return bad(format!(
            "--weight-decay must be >= 0, got {}",
            opts.weight_decay
        ));
    }
    if !(opts.body_lr_factor.is_finite() && opts.body_lr_factor > 0.0) {
        return bad(format!(
            "--body-lr-factor must be positive, got {}",
            opts.body_lr_factor
        ));
    }
    if opts.mode == Mode::Instant && opts.task != Task::Classification {
        return bad(
            "--mode instant fits a classification head; train regression with --mode frozen, full or finetune".into(),
        );
    }
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return bad(format!(
            "--val-fraction must be in [0, 1), got {}",
            opts.val_fraction
        ));
    }
    Ok(())
}

fn train_run(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let data = prepare_data(opts, on_event)?;
    let n_classes = data.labels.len();
    let device = default_device();
    let ad = device.clone().autodiff();
    // The fresh head's initial weights come from the backend's generator.
    device.seed(opts.seed);
    ad.seed(opts.seed);
    let state = if opts.resume {
        Some(checkpoint::load_state(&opts.out)?)
    } else {
        None
    };
    let (net, report) = match &state {
        Some(st) => {
            let last = opts.out.join(files::LAST);
            let (net, report) = load_net(
                opts.arch,
                &last,
                opts.task.outputs(data.labels.len()),
                Some(&data.labels),
                &ad,
            )?;
            on_event(Event::Info(format!(
                "resuming {} after epoch {} ({} phase)",
                opts.out.display(),
                st.epoch,
                st.phase
            )));
            (net, Some(report))
        }
        None => initial_net(
            opts.arch,
            &opts.weights,
            &data.labels,
            opts.task.outputs(data.labels.len()),
            &ad,
        )?,
    };
    // Regression reads the stride-8 map through a point head (`crate::model::point`); a fresh
    // one is added unless the starting model (a regression run) has its own.
    let net = if opts.task == Task::Regression && net.point_head().is_none() {
        let head = PointHead::new(opts.arch.point_channels(), n_classes, &ad);
        net.with_point_head(Some(head))
    } else {
        net
    };
    match &report {
        Some(r) => on_event(Event::Info(r.to_string())),
        None => on_event(Event::Warn(format!(
            "--weights none: {} starts from random weights; expect much lower accuracy than with pretrained weights",
            opts.arch
        ))),
    }
    let (train_preset, eval_preset) = match opts.task {
        Task::Classification => presets(opts.arch.normalization(), opts.arch.input_size()),
        Task::Regression => regression_presets(opts.arch.normalization(), opts.arch.input_size()),
    };
    // The pretrained weights file the backbone came from (the key of the feature cache).
    // The run being resumed, read once: its weights record and its completed epochs.
    let prior = if opts.resume {
        Some(Run::open(&opts.out)?)
    } else {
        None
    };
    let pretrained: Option<PathBuf> = match &prior {
        Some(run) => run.config.weights.path.clone(),
        None => report.as_ref().map(|r| r.path.clone()),
    };
    let data_root = std::fs::canonicalize(&opts.data).map_err(|e| Error::io(&opts.data, e))?;
    let config = RunConfig {
        nanoclass_version: env!("CARGO_PKG_VERSION").to_string(),
        task: opts.task,
        arch: opts.arch,
        labels: data.labels.clone(),
        eval_preset,
        train_preset,
        data: data_root,
        weights: WeightsRecord {
            spec: opts.weights.clone(),
            path: pretrained.clone(),
        },
        mode: opts.mode,
        epochs: opts.epochs,
        head_epochs: if opts.mode == Mode::Finetune {
            opts.head_epochs
        } else {
            0
        },
        batch_size: opts.batch_size,
        lr: opts.lr,
        body_lr_factor: opts.body_lr_factor,
        optimizer: opts.optimizer,
        momentum: opts.momentum,
        weight_decay: opts.weight_decay,
        schedule: opts.schedule,
        seed: opts.seed,
        split: data.split.clone(),
    };
    let done = state.as_ref().map_or(0, |s| s.epoch);
    let planned = match opts.mode {
        Mode::Finetune => opts.head_epochs + opts.epochs,
        Mode::Frozen | Mode::Full => opts.epochs,
        Mode::Instant => 1,
    };
    if state.is_some() && done >= planned {
        return Err(Error::Run {
            path: opts.out.clone(),
            reason: format!(
                "{done} epochs are already trained (of {planned} planned): pass a larger --epochs to train further"
            ),
        });
    }
    let earlier = match &prior {
        Some(run) => run.read_metrics()?,
        None => vec![],
    };
    // A fresh run starts a new metrics file; a resumed one keeps the completed epochs.
    let metrics = opts.out.join(files::METRICS);
    if metrics.exists() {
        std::fs::remove_file(&metrics).map_err(|e| Error::io(&metrics, e))?;
    }
    let run = Run::create(&opts.out, config)?;
    for m in earlier.iter().filter(|m| m.epoch <= done) {
        run.append_metrics(m)?;
    }
    on_event(Event::Info(format!(
        "{} {}, {} training and {} held-out images; run directory {}",
        n_classes,
        match opts.task {
            Task::Classification => "classes",
            Task::Regression => "regression categories",
        },
        data.train.len(),
        data.val.len(),
        run.dir.display()
    )));

    let mut tracker = Tracker {
        task: opts.task,
        best: state.as_ref().and_then(|s| s.best),
        best_epoch: state.as_ref().map_or(0, |s| s.best_epoch),
    };
    let mut skipped = Vec::new();
    let mut epoch_no;

    // Head phase on cached features (frozen, and the first phase of finetune).
    let head_epochs = match opts.mode {
        Mode::Frozen => opts.epochs,
        Mode::Finetune => opts.head_epochs,
        Mode::Instant => 1,
        Mode::Full => 0,
    };
    let mut net = net;
    let mut train_samples = data.train.clone();
    let mut val_samples = data.val.clone();
    let size = eval_preset.crop as usize;
    // Regression: every image decoded once at full size and brought to the input size, its
    // point moved with it; the held-out target is the point in the eval preset's view.
    let mut reg = None;
    let mut eval_targets = std::collections::HashMap::new();
    if opts.task == Task::Regression {
        let train_imgs = regression_images(&train_samples, &eval_preset, &mut skipped, on_event);
        let val_imgs = regression_images(&val_samples, &eval_preset, &mut skipped, on_event);
        for (s, img) in train_imgs.iter().chain(&val_imgs) {
            eval_targets.insert(s.path.clone(), eval_target(s, img, &eval_preset));
        }
        train_samples = train_imgs.iter().map(|(s, _)| s.clone()).collect();
        val_samples = val_imgs.iter().map(|(s, _)| s.clone()).collect();
        check_classes(&data.labels, &train_samples, &opts.data)?;
        reg = Some((train_imgs, val_imgs));
    }
    let target_of = |s: &Sample| -> Target {
        eval_targets.get(&s.path).copied().unwrap_or(Target {
            label: s.label,
            point: [0.0; 2],
        })
    };
    if head_epochs > done {
        let c = net.feature_len(size);
        let all: Vec<PathBuf> = train_samples
            .iter()
            .chain(&val_samples)
            .map(|s| s.path.clone())
            .collect();
        let te = Instant::now();
        let cache = match (&opts.feature_cache, &pretrained) {
            (Some(root), Some(w)) => {
                match FeatureCache::open(root, opts.arch, w, &eval_preset, c) {
                    Ok(cache) => Some(cache),
                    Err(e) => {
                        on_event(Event::Warn(format!("feature cache not used: {e}")));
                        None
                    }
                }
            }
            _ => None,
        };
        // Forward-only: on ONNX Runtime when `engine::resolve` says so (with `auto`, opened
        // only when some image is not in the cache).
        let ort_cell = std::cell::OnceCell::new();
        let make_ort = || -> Result<Option<OrtModel>> {
            match &pretrained {
                None => Ok(None),
                Some(w) => resolve(opts.engine, || {
                    backbone_model(&net, opts.arch, w, eval_preset.crop as usize)
                }),
            }
        };
        let get_ort = || {
            ort_cell
                .get_or_init(|| make_ort().map_err(|e| e.to_string()))
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
        };
        if opts.engine == EngineChoice::Ort {
            // asked for by name: opened now, so that a failure ends training before any work
            get_ort();
            if let Some(Err(e)) = ort_cell.get() {
                return Err(Error::Other(e.clone()));
            }
        }
        let (feats, skip, hits) = extract_features(
            (&net, &get_ort),
            &all,
            &eval_preset,
            32,
            &device,
            cache.as_ref(),
            |done, total| on_event(Event::Features { done, total }),
        );
        on_event(Event::Info(format!(
            "backbone features of {} images: {} from the cache, {} computed, in {:.1} s",
            all.len(),
            hits,
            all.len() - hits,
            te.elapsed().as_secs_f64()
        )));
        for s in &skip {
            on_event(Event::Warn(s.to_string()));
        }
        skipped.extend(skip);
        let n_train = train_samples.len();
        let mut tf = Vec::new();
        let mut tl = Vec::new();
        let mut vf = Vec::new();
        let mut vl = Vec::new();
        let mut kept_train = Vec::new();
        let mut kept_val = Vec::new();
        for (i, f) in feats.into_iter().enumerate() {
            let Some(f) = f else { continue };
            if i < n_train {
                tf.extend(f);
                tl.push(target_of(&train_samples[i]));
                kept_train.push(train_samples[i].clone());
            } else {
                vf.extend(f);
                vl.push(target_of(&val_samples[i - n_train]));
                kept_val.push(val_samples[i - n_train].clone());
            }
        }
        train_samples = kept_train;
        val_samples = kept_val;
        check_classes(&data.labels, &train_samples, &opts.data)?;
        if opts.mode == Mode::Instant {
            let pretrained = report
                .as_ref()
                .and_then(|r| r.file_head.as_ref())
                .and_then(PretrainedHead::from_linear);
            fit_instant(
                opts,
                &run,
                net,
                pretrained.as_ref(),
                (&tf, &tl),
                (&vf, &vl),
                (c, n_classes, size),
                (&device, &ad),
                &mut tracker,
                on_event,
            )?;
            let (nt, nv) = (train_samples.len(), val_samples.len());
            return Ok(summary(
                opts,
                &run,
                &tracker,
                skipped,
                (nt, nv),
                t0,
                on_event,
            ));
        }
        let mut head = net.head_module().train();
        let mut optim = make_optimizer(opts);
        if let Some(st) = state.as_ref().filter(|s| s.phase == "head") {
            head = checkpoint::with_param_ids(head, &st.param_ids, &opts.out)?;
            optim = checkpoint::load_optimizer(&opts.out, optim)?;
        }
        let batches_per_epoch = batch_count(tl.len(), opts.batch_size);
        let total = batches_per_epoch * head_epochs;
        on_event(Event::Phase {
            phase: "head",
            epochs: head_epochs,
            steps: batches_per_epoch,
        });
        epoch_no = done;
        let mut step_global = done * batches_per_epoch;
        for _ in done..head_epochs {
            epoch_no += 1;
            let te = Instant::now();
            let batches = epoch_batches(
                tl.len(),
                opts.batch_size,
                &mut epoch_rng(opts.seed, epoch_no),
            );
            let mut stats = EpochStats::new(opts.task);
            let mut lr = opts.lr;
            for (k, b) in batches.iter().enumerate() {
                check_stop(opts, epoch_no, k + 1)?;
                lr = scheduled_lr(opts.lr, opts.schedule, step_global, total, head_epochs);
                step_global += 1;
                let mut x = Vec::with_capacity(b.len() * c);
                for &i in b {
                    x.extend_from_slice(&tf[i * c..(i + 1) * c]);
                }
                let y: Vec<Target> = b.iter().map(|&i| tl[i]).collect();
                let x = Tensor::<2>::from_data(TensorData::new(x, [b.len(), c]), &ad);
                let (loss, corr) = batch_loss(opts.task, head.forward(x), &y, size, &ad);
                let lv = scalar(loss.clone());
                if !lv.is_finite() {
                    return Err(non_finite(epoch_no, k + 1, lr));
                }
                let grads = GradientsParams::from_grads(loss.backward(), &head);
                head = optim.step(lr, head, grads);
                stats.add(lv, corr, b.len());
                on_event(stats.step_event(epoch_no, k + 1, batches.len()));
            }
            let val = eval_head(opts.task, &head.valid(), &vf, &vl, c, size, &device);
            net = net.with_head_module(head.clone());
            let ids = checkpoint::param_ids(&head);
            tracker.end_epoch(
                &run,
                &net,
                stats.metrics(epoch_no, "head", val, lr, te.elapsed().as_secs_f64()),
                &optim,
                ids,
                on_event,
            )?;
        }
    }

    // Full phase: every layer (full, and the second phase of finetune).
    let full_epochs = match opts.mode {
        Mode::Frozen | Mode::Instant => 0,
        Mode::Full | Mode::Finetune => opts.epochs,
    };
    if full_epochs > 0 {
        let crop = train_preset.crop as usize;
        let decode = DecodeOptions {
            min_side: Some(eval_preset.decode_min_side()),
        };
        let td = Instant::now();
        let ((train_imgs, skip_t), (val_imgs, skip_v)) = match reg.take() {
            Some((t, v)) => ((t, vec![]), (v, vec![])),
            None => (
                decode_samples(&train_samples, &decode),
                decode_samples(&val_samples, &decode),
            ),
        };
        on_event(Event::Info(format!(
            "decoded {} images in {:.1} s",
            train_imgs.len() + val_imgs.len(),
            td.elapsed().as_secs_f64()
        )));
        for s in skip_t.iter().chain(&skip_v) {
            on_event(Event::Warn(s.to_string()));
        }
        if head_epochs == 0 {
            skipped.extend(skip_t);
            skipped.extend(skip_v);
        }
        let kept: Vec<Sample> = train_imgs.iter().map(|(s, _)| s.clone()).collect();
        check_classes(&data.labels, &kept, &opts.data)?;
        let val_tensors: Vec<(Vec<f32>, Target)> = val_imgs
            .par_iter()
            .map(|(s, img)| (eval_preset.apply(img), target_of(s)))
            .collect();
        drop(val_imgs);
        let train_imgs = std::sync::Arc::new(train_imgs);
        let body_lr_factor = if opts.mode == Mode::Finetune {
            opts.body_lr_factor
        } else {
            1.0
        };
        let mut model = net.train();
        let mut optim = make_optimizer(opts);
        if let Some(st) = state.as_ref().filter(|s| s.phase == "full") {
            model = checkpoint::with_param_ids(model, &st.param_ids, &opts.out)?;
            optim = checkpoint::load_optimizer(&opts.out, optim)?;
        }
        let batches_per_epoch = batch_count(train_imgs.len(), opts.batch_size);
        let total = batches_per_epoch * full_epochs;
        on_event(Event::Phase {
            phase: "full",
            epochs: full_epochs,
            steps: batches_per_epoch,
        });
        let full_done = done.saturating_sub(head_epochs);
        epoch_no = head_epochs + full_done;
        let mut step_global = full_done * batches_per_epoch;
        for _ in full_done..full_epochs {
            epoch_no += 1;
            let te = Instant::now();
            let mut rng = epoch_rng(opts.seed, epoch_no);
            let batches = epoch_batches(train_imgs.len(), opts.batch_size, &mut rng);
            let nb = batches.len();
            // One seed per batch keeps augmentation reproducible while batches are prepared
            // in parallel on the producer thread.
            let chunks: Vec<(Vec<usize>, u64)> = batches
                .into_iter()
                .map(|b| (b, rand::Rng::random::<u64>(&mut rng)))
                .collect();
            let imgs = train_imgs.clone();
            let tp = train_preset;
            let task = opts.task;
            let stream = prefetch(chunks, 2, move |(b, seed): (Vec<usize>, u64)| {
                let views: Vec<(Vec<f32>, Target)> = b
                    .par_iter()
                    .enumerate()
                    .map(|(j, &i)| {
                        let mut r = StdRng::seed_from_u64(seed.wrapping_add(j as u64));
                        let s = &imgs[i].0;
                        let (pixels, view) = match (task, s.point) {
                            (Task::Regression, Some(p)) => tp.apply_keeping(&imgs[i].1, p, &mut r),
                            _ => tp.apply_with_flip(&imgs[i].1, &mut r),
                        };
                        // The target moves with the pixels: cropped, scaled and mirrored alike.
                        let point = match (task, s.point) {
                            (Task::Regression, Some(p)) => {
                                let size = tp.crop as f32;
                                normalise(view.map_point(p, tp.crop), size, size)
                            }
                            _ => [0.0; 2],
                        };
                        let target = Target {
                            label: s.label,
                            point,
                        };
                        (pixels, target)
                    })
                    .collect();
                let mut pixels = Vec::with_capacity(views.iter().map(|v| v.0.len()).sum());
                let mut items = Vec::with_capacity(views.len());
                for (p, t) in views {
                    pixels.extend(p);
                    items.push(t);
                }
                Batch {
                    pixels,
                    n: items.len(),
                    items,
                }
            });
            let mut stats = EpochStats::new(opts.task);
            let mut lr = opts.lr;
            for (k, batch) in stream.enumerate() {
                check_stop(opts, epoch_no, k + 1)?;
                lr = scheduled_lr(opts.lr, opts.schedule, step_global, total, full_epochs);
                step_global += 1;
                let x = Tensor::<4>::from_data(
                    TensorData::new(batch.pixels, [batch.n, 3, crop, crop]),
                    &ad,
                );
                let (loss, corr) = batch_loss(opts.task, model.forward(x), &batch.items, crop, &ad);
                let lv = scalar(loss.clone());
                if !lv.is_finite() {
                    return Err(non_finite(epoch_no, k + 1, lr));
                }
                let mut grads = loss.backward();
                if body_lr_factor != 1.0 {
                    let head_grads = match model.point_head() {
                        Some(p) => GradientsParams::from_module(&mut grads, p),
                        None => GradientsParams::from_module(&mut grads, model.head()),
                    };
                    let body_grads = GradientsParams::from_grads(grads, &model);
                    model = optim.step(lr * body_lr_factor, model, body_grads);
                    model = optim.step(lr, model, head_grads);
                } else {
                    let grads = GradientsParams::from_grads(grads, &model);
                    model = optim.step(lr, model, grads);
                }
                stats.add(lv, corr, batch.n);
                on_event(stats.step_event(epoch_no, k + 1, nb));
            }
            let val = eval_net(opts.task, &model, &val_tensors, crop, 32, &device);
            let ids = checkpoint::param_ids(&model);
            tracker.end_epoch(
                &run,
                &model,
                stats.metrics(epoch_no, "full", val, lr, te.elapsed().as_secs_f64()),
                &optim,
                ids,
                on_event,
            )?;
        }
    }
    let (nt, nv) = (train_samples.len(), val_samples.len());
    Ok(summary(
        opts,
        &run,
        &tracker,
        skipped,
        (nt, nv),
        t0,
        on_event,
    ))
}

/// The outcome of a finished run.
fn summary(
    opts: &TrainOptions,
    run: &Run,
    tracker: &Tracker,
    skipped: Vec<Skipped>,
    (train_images, val_images): (usize, usize),
    t0: Instant,
    on_event: &mut dyn FnMut(Event),
) -> TrainSummary {
    if !skipped.is_empty() {
        on_event(Event::Warn(format!("{} files skipped", skipped.len())));
    }
    TrainSummary {
        run_dir: run.dir.clone(),
        best_val_top1: tracker
            .best
            .filter(|_| opts.task == Task::Classification)
            .map(|b| b.0),
        best_val_error_px: tracker
            .best
            .filter(|_| opts.task == Task::Regression)
            .map(|b| -b.0),
        best_epoch: tracker.best_epoch,
        skipped,
        train_images,
        val_images,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// `instant` mode: fits the instant head on the training features, saves it as the network's
/// linear head with its held-out metrics (one "epoch" of phase `instant`), and writes the fit's
/// record to `instant.json`.
#[allow(clippy::too_many_arguments)]
fn fit_instant(
    opts: &TrainOptions,
    run: &Run,
    net: Net,
    pretrained: Option<&PretrainedHead>,
    (tf, tl): (&[f32], &[Target]),
    (vf, vl): (&[f32], &[Target]),
    (c, n_classes, size): (usize, usize, usize),
    (device, ad): (&Device, &Device),
    tracker: &mut Tracker,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    let te = Instant::now();
    let labels: Vec<usize> = tl.iter().map(|t| t.label).collect();
    // Rows [f, l]: the features and the pretrained classifier's logits (see `instant`).
    let rows = pretrained.map(|p| p.extend(tf, device));
    let model = InstantModel::fit(
        Features {
            x: rows.as_deref().unwrap_or(tf),
            split: pretrained.map(|_| c),
            labels: &labels,
            dim: c + pretrained.map_or(0, PretrainedHead::outputs),
            classes: n_classes,
        },
        None,
        opts.instant_head,
    )?;
    let fit_ms = te.elapsed().as_secs_f64() * 1000.0;
    let (w, b) = model.linear_layer();
    let (w, b) = match pretrained {
        Some(p) => p.fold(&w, &b),
        None => (w, b),
    };
    // burn's Linear weight is [d_input, d_output]: the transpose of PyTorch's [K, C].
    let mut wt = vec![0.0f32; c * n_classes];
    for k in 0..n_classes {
        for i in 0..c {
            wt[i * n_classes + k] = w[k * c + i];
        }
    }
    let head = Linear {
        weight: burn::module::Param::from_tensor(Tensor::<2>::from_data(
            TensorData::new(wt, [c, n_classes]),
            ad,
        )),
        bias: Some(burn::module::Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(b, [n_classes]),
            ad,
        ))),
    };
    let train = eval_head(
        opts.task,
        &Head::Linear(head.valid()),
        tf,
        tl,
        c,
        size,
        device,
    );
    let val = eval_head(
        opts.task,
        &Head::Linear(head.valid()),
        vf,
        vl,
        c,
        size,
        device,
    );
    let record = serde_json::json!({
        "head": model.kind,
        "temperature": model.temperature,
        "images_per_class": model.counts,
        "leave_out": model.leave_out,
        "pretrained_logits": pretrained.map_or(0, PretrainedHead::outputs),
        "fit_ms": fit_ms,
    });
    write_atomic(
        &run.dir.join("instant.json"),
        format!("{record:#}\n").as_bytes(),
    )?;
    on_event(Event::Info(format!(
        "instant head: {} (temperature {}){}, fitted on {} images in {:.1} ms",
        model.kind.name(),
        model.temperature,
        match model.leave_out {
            Some(lo) => format!(
                "; {}-fold leave-out top-1: prototypes {:.3}, linear {:.3}",
                lo.folds, lo.prototypes, lo.linear
            ),
            None => String::new(),
        },
        model.images(),
        fit_ms
    )));
    let metrics = EpochMetrics {
        epoch: 1,
        phase: "instant".into(),
        train_loss: train.map_or(f64::NAN, |t| t.0),
        train_top1: train.map(|t| t.1),
        val_loss: val.map(|v| v.0),
        val_top1: val.map(|v| v.1),
        train_error_px: None,
        val_error_px: None,
        lr: 0.0,
        seconds: te.elapsed().as_secs_f64(),
    };
    let net = net.with_head(head.clone());
    let ids = checkpoint::param_ids(&head);
    tracker.end_epoch(run, &net, metrics, &make_optimizer(opts), ids, on_event)
}

/// Regression samples decoded at full size (the file name's point is in pixels of the file as
/// displayed), their shorter side resized to the eval preset's input size, and their point
/// scaled alike. Undecodable files are reported and added to `skipped`; a sample whose point
/// falls outside the model's view (outside the image, or outside the centre square of a
/// non-square image) is left out with a warning, since no view of it shows the point.
fn regression_images(
    samples: &[Sample],
    eval: &EvalPreset,
    skipped: &mut Vec<Skipped>,
    on_event: &mut dyn FnMut(Event),
) -> Vec<(Sample, image::RgbImage)> {
    let (decoded, skip) = decode_samples(samples, &DecodeOptions::default());
    for s in &skip {
        on_event(Event::Warn(s.to_string()));
    }
    skipped.extend(skip);
    let resized: Vec<(Sample, image::RgbImage)> = decoded
        .into_par_iter()
        .map(|(mut s, img)| {
            let small = crate::data::presets::resize_shorter_side(&img, eval.crop);
            let (sx, sy) = (
                small.width() as f32 / img.width() as f32,
                small.height() as f32 / img.height() as f32,
            );
            s.point = s.point.map(|p| [p[0] * sx, p[1] * sy]);
            (s, small)
        })
        .collect();
    let mut kept = Vec::with_capacity(resized.len());
    let mut outside = Vec::new();
    for (s, img) in resized {
        let view = s.point.map(|p| {
            eval.crop_box(img.width(), img.height())
                .map_point(p, eval.crop)
        });
        match view {
            Some(v) if crate::eval::predict::in_view(v, eval.crop) => kept.push((s, img)),
            _ => outside.push(s.path),
        }
    }
    if let Some(first) = outside.first() {
        on_event(Event::Warn(format!(
            "{} image(s) left out: their point is outside the model's view (the centre square \
             of the image); first: {}",
            outside.len(),
            first.display()
        )));
    }
    kept
}

/// The held-out target of a regression sample whose image is already at the input size (see
/// [`regression_images`]): its point in the eval preset's view, normalised.
fn eval_target(s: &Sample, img: &image::RgbImage, eval: &EvalPreset) -> Target {
    let size = eval.crop as f32;
    let p = s.point.unwrap_or([0.0; 2]);
    let v = eval
        .crop_box(img.width(), img.height())
        .map_point(p, eval.crop);
    Target {
        label: s.label,
        point: normalise(v, size, size),
    }
}

/// Every class must keep at least one decodable training image (policy 4 of the bug cases).
fn check_classes(labels: &[String], train: &[Sample], root: &Path) -> Result<()> {
    let mut counts = vec![0usize; labels.len()];
    for s in train {
        counts[s.label] += 1;
    }
    let empty: Vec<&str> = labels
        .iter()
        .zip(&counts)
        .filter(|(_, c)| **c == 0)
        .map(|(l, _)| l.as_str())
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(Error::Dataset {
            path: root.to_path_buf(),
            reason: format!(
                "no usable training image in class folder(s): {}",
                empty.join(", ")
            ),
        })
    }
}
