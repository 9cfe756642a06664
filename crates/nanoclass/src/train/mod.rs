//! Training: the frozen, full and finetune modes.
//!
//! - **frozen**: the backbone runs once per image in eval mode (BatchNorm running statistics,
//!   eval preset); its `[N, C]` features are kept and only the head is trained on them, so an
//!   epoch takes milliseconds.
//! - **full**: every layer is trained with the train preset (the course's recipe); BatchNorm
//!   uses batch statistics.
//! - **finetune**: `head_epochs` head-only epochs on cached features, then every layer with the
//!   backbone at `lr * body_lr_factor`.
//!
//! After each epoch the held-out loss and top-1 are measured with the eval preset and written to
//! `metrics.jsonl`; the best model (highest held-out top-1, then lowest loss) is
//! `model.safetensors` and the latest is `last.safetensors`. A non-finite loss stops training
//! at once with the step and learning rate, before anything is saved, so the best checkpoint
//! stays intact. A final training batch of one image is dropped (BatchNorm needs two values per
//! channel in train mode).

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
use crate::data::folder::{Sample, scan_image_folder};
use crate::data::loader::{Batch, Skipped, decode_batches, decode_samples, prefetch};
use crate::data::presets::{EvalPreset, presets};
use crate::data::split::stratified_split;
use crate::model::weights::{LoadReport, load_net, save_net};
use crate::model::{Arch, Net, registry};
use crate::run::{
    EpochMetrics, Mode, OptimizerKind, Run, RunConfig, Schedule, SplitRecord, Task, WeightsRecord,
    files,
};
use crate::{Error, Result};

pub mod checkpoint;
pub mod features;

use checkpoint::TrainState;
use features::FeatureCache;

/// Everything `nanoclass train` needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset root (ImageFolder or DLI layout).
    pub data: PathBuf,
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
        /// Running training top-1 of the epoch.
        top1: f64,
    },
    /// An epoch finished (after validation).
    Epoch(EpochMetrics),
}

/// The outcome of a training run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Run directory.
    pub run_dir: PathBuf,
    /// Best held-out top-1 (None without a held-out set).
    pub best_val_top1: Option<f64>,
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

/// Builds the starting network for `arch` with `n` outputs from a weights spec.
///
/// `spec` is `none` (random init), an existing file path, or a registry name resolved through
/// [`registry::resolve`] (cache, then installed package); an unknown name is an error listing the
/// registry.
pub fn initial_net(
    arch: Arch,
    spec: &str,
    labels: &[String],
    device: &Device,
) -> Result<(Net, Option<LoadReport>)> {
    if spec == "none" {
        return Ok((Net::new(arch, labels.len(), device), None));
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
    let (net, report) = load_net(arch, &path, labels.len(), Some(labels), device)?;
    Ok((net, Some(report)))
}

struct Data {
    labels: Vec<String>,
    train: Vec<Sample>,
    val: Vec<Sample>,
    split: SplitRecord,
}

fn prepare_data(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<Data> {
    let ds = scan_image_folder(&opts.data)?;
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
/// parallel ahead of the compute. Returns `[C]` features per file (None when skipped) and how
/// many came from `cache`; newly computed features are added to it.
pub fn extract_features(
    net: &Net,
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
    for (batch, skip) in decode_batches(todo_paths, batch_size, opts, move |img| p.apply(img)) {
        done += batch.n + skip.len();
        skipped.extend(skip);
        if batch.n > 0 {
            let x = Tensor::<4>::from_data(
                TensorData::new(batch.pixels, [batch.n, 3, crop, crop]),
                device,
            );
            let f = eval_net.features(x);
            let c = f.dims()[1];
            let v: Vec<f32> = f.into_data().try_to_vec::<f32>().unwrap_or_default();
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

/// Held-out evaluation of a head on cached features: (loss, top-1).
fn eval_head(
    head: &Linear,
    feats: &[f32],
    labels: &[usize],
    c: usize,
    device: &Device,
) -> Option<(f64, f64)> {
    if labels.is_empty() {
        return None;
    }
    let x = Tensor::<2>::from_data(TensorData::new(feats.to_vec(), [labels.len(), c]), device);
    let (loss, correct) = loss_and_correct(head.forward(x), labels, device);
    Some((scalar(loss), correct as f64 / labels.len() as f64))
}

/// Held-out evaluation of the whole network on preprocessed tensors: (loss, top-1).
fn eval_net(
    net: &Net,
    val: &[(Vec<f32>, usize)],
    crop: usize,
    batch: usize,
    device: &Device,
) -> Option<(f64, f64)> {
    if val.is_empty() {
        return None;
    }
    let eval = net.valid();
    let mut loss_sum = 0.0;
    let mut correct = 0;
    for chunk in val.chunks(batch.max(1)) {
        let mut px = Vec::with_capacity(chunk.len() * 3 * crop * crop);
        for (t, _) in chunk {
            px.extend_from_slice(t);
        }
        let labels: Vec<usize> = chunk.iter().map(|(_, l)| *l).collect();
        let x = Tensor::<4>::from_data(TensorData::new(px, [chunk.len(), 3, crop, crop]), device);
        let (loss, c) = loss_and_correct(eval.forward(x), &labels, device);
        loss_sum += scalar(loss) * chunk.len() as f64;
        correct += c;
    }
    Some((
        loss_sum / val.len() as f64,
        correct as f64 / val.len() as f64,
    ))
}

fn head_is_finite(net: &Net) -> bool {
    let w: Vec<f32> = net
        .head()
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    w.iter().all(|v| v.is_finite())
}

/// Running training loss and top-1 of one epoch.
#[derive(Default)]
struct EpochStats {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl EpochStats {
    fn add(&mut self, loss: f64, correct: usize, n: usize) {
        self.loss_sum += loss * n as f64;
        self.correct += correct;
        self.seen += n;
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn top1(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }

    fn step_event(&self, epoch: usize, step: usize, steps: usize) -> Event {
        Event::Step {
            epoch,
            step,
            steps,
            loss: self.loss(),
            top1: self.top1(),
        }
    }

    /// The epoch's metrics line; `val` is (held-out loss, held-out top-1).
    fn metrics(
        &self,
        epoch: usize,
        phase: &str,
        val: Option<(f64, f64)>,
        lr: f64,
        seconds: f64,
    ) -> EpochMetrics {
        EpochMetrics {
            epoch,
            phase: phase.into(),
            train_loss: self.loss(),
            train_top1: self.top1(),
            val_loss: val.map(|v| v.0),
            val_top1: val.map(|v| v.1),
            lr,
            seconds,
        }
    }
}

struct Tracker {
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
        let score = m.val_top1.map(|t| (t, -m.val_loss.unwrap_or(0.0)));
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
            let (net, report) =
                load_net(opts.arch, &last, data.labels.len(), Some(&data.labels), &ad)?;
            on_event(Event::Info(format!(
                "resuming {} after epoch {} ({} phase)",
                opts.out.display(),
                st.epoch,
                st.phase
            )));
            (net, Some(report))
        }
        None => initial_net(opts.arch, &opts.weights, &data.labels, &ad)?,
    };
    match &report {
        Some(r) => on_event(Event::Info(r.to_string())),
        None => on_event(Event::Warn(format!(
            "--weights none: {} starts from random weights; expect much lower accuracy than with pretrained weights",
            opts.arch
        ))),
    }
    let (train_preset, eval_preset) = presets(opts.arch.normalization(), opts.arch.input_size());
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
        task: Task::Classification,
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
        "{} classes, {} training and {} held-out images; run directory {}",
        n_classes,
        data.train.len(),
        data.val.len(),
        run.dir.display()
    )));

    let mut tracker = Tracker {
        best: state.as_ref().and_then(|s| s.best),
        best_epoch: state.as_ref().map_or(0, |s| s.best_epoch),
    };
    let mut skipped = Vec::new();
    let mut epoch_no;

    // Head phase on cached features (frozen, and the first phase of finetune).
    let head_epochs = match opts.mode {
        Mode::Frozen => opts.epochs,
        Mode::Finetune => opts.head_epochs,
        Mode::Full => 0,
    };
    let mut net = net;
    let mut train_samples = data.train.clone();
    let mut val_samples = data.val.clone();
    if head_epochs > done {
        let c = opts.arch.feature_dim();
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
        let (feats, skip, hits) = extract_features(
            &net,
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
                tl.push(train_samples[i].label);
                kept_train.push(train_samples[i].clone());
            } else {
                vf.extend(f);
                vl.push(val_samples[i - n_train].label);
                kept_val.push(val_samples[i - n_train].clone());
            }
        }
        train_samples = kept_train;
        val_samples = kept_val;
        check_classes(&data.labels, &train_samples, &opts.data)?;
        let mut head = net.head().clone().train();
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
            let mut stats = EpochStats::default();
            let mut lr = opts.lr;
            for (k, b) in batches.iter().enumerate() {
                lr = scheduled_lr(opts.lr, opts.schedule, step_global, total, head_epochs);
                step_global += 1;
                let mut x = Vec::with_capacity(b.len() * c);
                for &i in b {
                    x.extend_from_slice(&tf[i * c..(i + 1) * c]);
                }
                let y: Vec<usize> = b.iter().map(|&i| tl[i]).collect();
                let x = Tensor::<2>::from_data(TensorData::new(x, [b.len(), c]), &ad);
                let (loss, corr) = loss_and_correct(head.forward(x), &y, &ad);
                let lv = scalar(loss.clone());
                if !lv.is_finite() {
                    return Err(non_finite(epoch_no, k + 1, lr));
                }
                let grads = GradientsParams::from_grads(loss.backward(), &head);
                head = optim.step(lr, head, grads);
                stats.add(lv, corr, b.len());
                on_event(stats.step_event(epoch_no, k + 1, batches.len()));
            }
            let val = eval_head(&head.valid(), &vf, &vl, c, &device);
            net = net.with_head(head.clone());
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
        Mode::Frozen => 0,
        Mode::Full | Mode::Finetune => opts.epochs,
    };
    if full_epochs > 0 {
        let crop = train_preset.crop as usize;
        let decode = DecodeOptions {
            min_side: Some(eval_preset.decode_min_side()),
        };
        let td = Instant::now();
        let (train_imgs, skip_t) = decode_samples(&train_samples, &decode);
        let (val_imgs, skip_v) = decode_samples(&val_samples, &decode);
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
        let val_tensors: Vec<(Vec<f32>, usize)> = val_imgs
            .par_iter()
            .map(|(s, img)| (eval_preset.apply(img), s.label))
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
            let stream = prefetch(chunks, 2, move |(b, seed): (Vec<usize>, u64)| {
                let tensors: Vec<Vec<f32>> = b
                    .par_iter()
                    .enumerate()
                    .map(|(j, &i)| {
                        let mut r = StdRng::seed_from_u64(seed.wrapping_add(j as u64));
                        tp.apply(&imgs[i].1, &mut r)
                    })
                    .collect();
                let labels: Vec<usize> = b.iter().map(|&i| imgs[i].0.label).collect();
                Batch {
                    pixels: tensors.concat(),
                    n: labels.len(),
                    items: labels,
                }
            });
            let mut stats = EpochStats::default();
            let mut lr = opts.lr;
            for (k, batch) in stream.enumerate() {
                lr = scheduled_lr(opts.lr, opts.schedule, step_global, total, full_epochs);
                step_global += 1;
                let x = Tensor::<4>::from_data(
                    TensorData::new(batch.pixels, [batch.n, 3, crop, crop]),
                    &ad,
                );
                let (loss, corr) = loss_and_correct(model.forward(x), &batch.items, &ad);
                let lv = scalar(loss.clone());
                if !lv.is_finite() {
                    return Err(non_finite(epoch_no, k + 1, lr));
                }
                let mut grads = loss.backward();
                if body_lr_factor != 1.0 {
                    let head_grads = GradientsParams::from_module(&mut grads, model.head());
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
            let val = eval_net(&model, &val_tensors, crop, 32, &device);
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
    if !skipped.is_empty() {
        on_event(Event::Warn(format!("{} files skipped", skipped.len())));
    }
    Ok(TrainSummary {
        run_dir: run.dir.clone(),
        best_val_top1: tracker.best.map(|b| b.0),
        best_epoch: tracker.best_epoch,
        skipped,
        train_images: train_samples.len(),
        val_images: val_samples.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
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
