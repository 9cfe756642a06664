//! Training: a run is a sequence of phases ([`phases`]) run by one epoch loop ([`epoch`]).
//!
//! | mode | phases |
//! |---|---|
//! | frozen | head on cached backbone features (eval-mode BatchNorm, eval preset) |
//! | full | every layer on augmented images (batch statistics, train preset) |
//! | finetune | `head_epochs` head epochs, then every layer with the backbone at `lr * body_lr_factor` |
//! | instant | one fit of class prototypes or a linear head on the cached features |
//! | partial | the last residual blocks and the head on cached activations of several views |
//!
//! The settings are one [`Hyperparams`] ([`hyper`]); the loss of each task is in [`loss`], the
//! learning rate in [`schedule`], the best-model choice and early stopping in [`early_stop`].
//! After each epoch the held-out loss and top-1 (or point error) are measured with the eval
//! preset, and the epoch is committed in one step ([`checkpoint`]): `metrics.jsonl` has one line
//! per epoch, `model.safetensors` is the best model and `last.safetensors` the latest, and
//! `--resume` after a kill at any moment continues exactly where an uninterrupted run would be.
//!
//! The regression task ([`Task::Regression`], the course's second project) goes through the same
//! phases: the head has `2K` outputs for `K` categories (a point head on the stride-8 map,
//! [`crate::model::point`]), augmentation moves the target with the pixels, and the best model
//! is the one with the lowest mean held-out error in pixels. Regression images are decoded at
//! full size (the file name's point is in pixels of the file) and their shorter side resized to
//! the input size once, before training.

mod options;

pub use options::*;

pub mod activations;
pub mod checkpoint;
pub(crate) mod data;
pub mod early_stop;
pub(crate) mod epoch;
pub mod estimate;
pub(crate) mod host_tail;
pub mod hyper;
pub mod loss;
pub(crate) mod phases;
pub mod precision;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rayon::prelude::*;

use crate::data::decode::DecodeOptions;
use crate::data::folder::Sample;
use crate::data::loader::{Skipped, decode_samples};
use crate::data::presets::{EvalPreset, TrainPreset, presets, regression_presets};
use crate::fs::clean_stale_temp_files;
use crate::infer::cache;
use crate::infer::device::DeviceChoice;
use crate::infer::engine::EngineChoice;
use crate::instant::PretrainedHead;
use crate::model::Arch;
use crate::model::batch_counters::BatchCounters;
use crate::model::cut::Cut;
use crate::model::point::PointHead;
use crate::model::start::initial_net;
use crate::model::weights::load_net;
use crate::run::{EpochMetrics, Run, RunConfig, SplitRecord, Task, WeightsRecord, files};
use crate::train::precision::TrainPrecision;
use crate::{Error, Result};

pub use hyper::{HyperError, Hyperparams, Mode, OptimizerKind, Schedule};

use checkpoint::TrainState;
use data::{Data, check_classes, eval_target, prepare_data, regression_images};
use early_stop::Tracker;
use epoch::{RunCtx, run_phase};
use loss::Target;
use phases::features::feature_rows;
use phases::full::FullPhase;
use phases::head::HeadPhase;
use phases::instant::InstantPhase;
use phases::partial::{PartialInputs, PartialPhase};

/// Trains a model as `opts` says and writes the run directory. See the module docs.
///
/// A run directory that already holds a run is refused unless `opts.resume` (continue it) or
/// `opts.force` (replace it); a folder whose run never committed an epoch (it was killed
/// early) is replaced. When training fails before its first epoch is committed, the files this
/// call created are removed again, so no half-made run is left behind.
///
/// # Errors
/// Settings out of range; a dataset that cannot train; weights that cannot be loaded; a failed
/// engine; a non-finite loss; a stop request; files that cannot be written.
pub fn train(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<TrainSummary> {
    let t0 = Instant::now();
    opts.validate()?;
    let config_path = opts.out.join(files::CONFIG);
    let has_run = config_path.exists();
    let committed = has_run && checkpoint::has_committed_epoch(&opts.out);
    if has_run && !opts.resume {
        if committed && !opts.force {
            return Err(Error::Run {
                path: opts.out.clone(),
                reason: "already holds a run: continue it (--resume), replace it (--force), or \
                         write to another folder (--out)"
                    .into(),
            });
        }
        if !committed {
            on_event(Event::Info(format!(
                "{} holds a run that never completed an epoch; it is replaced",
                opts.out.display()
            )));
        }
        clear_run(&opts.out)?;
    }
    let fresh = !opts.out.join(files::CONFIG).exists() || !opts.resume;
    let result = train_run(opts, on_event);
    if result.is_err() && fresh && !checkpoint::has_committed_epoch(&opts.out) {
        clear_run(&opts.out)?;
        // Only removes the folder when nothing else is in it.
        let _ = std::fs::remove_dir(&opts.out);
    }
    let mut summary = result?;
    if opts.task == Task::Classification && summary.val_images > 0 {
        calibrate(opts, &summary, on_event);
    }
    summary.measured.total_seconds = t0.elapsed().as_secs_f64();
    if let Some(root) = &opts.feature_cache
        && let Err(e) = estimate::record(root, &estimate::RateKey::of(opts), &summary.measured)
    {
        on_event(Event::Warn(format!("training time not recorded: {e}")));
    }
    Ok(summary)
}

/// Fits the run's calibration ([`crate::infer::calibration`]) and says what it found; a failure
/// is a warning (the run stays usable, with uncalibrated probabilities).
fn calibrate(opts: &TrainOptions, summary: &TrainSummary, on_event: &mut dyn FnMut(Event)) {
    use crate::infer::calibration::calibrate_run;
    let t0 = Instant::now();
    match calibrate_run(
        &summary.run_dir,
        opts.engine,
        opts.feature_cache.as_deref(),
        opts.hyper.batch_size,
        |_, _| {},
    ) {
        Ok(fitted) => {
            let cal = &fitted.calibration;
            let t = &cal.temperature;
            on_event(Event::Info(format!(
                "calibrated on {} held-out images: temperature {:.3} (held-out NLL {:.4} -> \
                 {:.4}, ECE {:.3} -> {:.3}, mean top-1 probability {:.3}, at most {:.3}){}",
                t.held_out,
                t.temperature,
                t.nll_before,
                t.nll_after,
                t.ece_before,
                t.ece_after,
                t.mean_confidence,
                t.confidence_cap,
                match fitted.from_activation_cache {
                    0 => String::new(),
                    k => format!("; {k} images from the activation cache"),
                },
            )));
            if let Some(u) = &cal.unknown {
                on_event(Event::Info(format!(
                    "unknown rule: distance to the nearest class prototype above {:.4} \
                     (`--unknown`; {:.1} s)",
                    u.threshold,
                    t0.elapsed().as_secs_f64()
                )));
            }
        }
        Err(e) => on_event(Event::Warn(format!(
            "probabilities are not calibrated: {e}"
        ))),
    }
}

/// Removes what a run writes into its directory, leaving anything else there alone.
fn clear_run(dir: &Path) -> Result<()> {
    for f in [
        files::CONFIG,
        files::LABELS,
        files::MODEL,
        files::LAST,
        files::METRICS,
        phases::instant::RECORD,
        crate::infer::calibration::FILE,
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
    clean_stale_temp_files(dir);
    Ok(())
}

/// Where a resumed run stands.
struct Resumed {
    state: TrainState,
    run: Run,
}

fn train_run(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let h = &opts.hyper;
    let data = prepare_data(opts, on_event)?;
    let n_classes = data.labels.len();
    if opts.device.is_gpu() {
        use crate::infer::device::{gpu_cache_file, gpu_cache_warm};
        // Said before the device is made: a cold start spends its first minute compiling
        // and tuning kernels.
        let tuning = if !gpu_cache_warm() {
            format!(
                "compiling GPU kernels and timing their choices: the first run on this machine \
                 keeps the choices in {}; its first epoch is slow",
                gpu_cache_file().display()
            )
        } else if opts.device == DeviceChoice::Cuda {
            format!(
                "tuned and compiled kernels from {}",
                gpu_cache_file().display()
            )
        } else {
            format!(
                "tuned kernel choices from {}; kernels compile at each start (WGSL)",
                gpu_cache_file().display()
            )
        };
        on_event(Event::Info(format!(
            "training on the GPU ({}): {tuning}",
            opts.device
        )));
    }
    let device = opts.device.device()?;
    opts.precision.check(opts.device, &device)?;
    if opts.precision != TrainPrecision::Fp32 {
        on_event(Event::Info(format!(
            "training steps through the backbone in {0} (mixed precision: f32 weights and \
             optimizer, {0} forward and backward, BatchNorm and loss in f32{1})",
            opts.precision,
            if opts.precision == TrainPrecision::Fp16 {
                format!(", loss scale from {}", precision::INITIAL_SCALE)
            } else {
                String::new()
            }
        )));
        if !opts.device.is_gpu() {
            on_event(Event::Warn(format!(
                "{} on the CPU is slower than fp32 (CPUs lack the GPUs' fast half-precision \
                 arithmetic); it is there to check a GPU run's precision",
                opts.precision
            )));
        }
    }
    let ad = device.clone().autodiff();
    // The fresh head's initial weights come from the backend's generator.
    device.seed(h.seed);
    ad.seed(h.seed);
    let resumed = if opts.resume {
        // A run killed before its first commit starts again from its stored settings.
        match checkpoint::recover(&opts.out)? {
            Some(state) => Some(Resumed {
                state,
                run: Run::open(&opts.out)?,
            }),
            None => None,
        }
    } else {
        None
    };
    let outputs = opts.task.outputs(n_classes);
    let (net, report) = match &resumed {
        Some(r) => {
            let last = opts.out.join(files::LAST);
            let (net, report) = load_net(opts.arch, &last, outputs, Some(&data.labels), &ad)?;
            on_event(Event::Info(format!(
                "resuming {} after epoch {} ({} phase)",
                opts.out.display(),
                r.state.epoch,
                r.state.phase
            )));
            (net, Some(report))
        }
        None => initial_net(opts.arch, &opts.weights, &data.labels, outputs, &ad)?,
    };
    // Regression reads the stride-8 map through a point head (`crate::model::point`); a fresh
    // one is added unless the starting model (a regression run) has its own.
    let net = if opts.task == Task::Regression && net.point_head().is_none() {
        let head = PointHead::new(opts.arch.point_channels(), n_classes, &ad);
        net.with_point_head(Some(head))
    } else {
        net
    };
    // `num_batches_tracked` of every BatchNorm: the starting file's counts (0 for new layers).
    let known: BTreeMap<String, i64> = report
        .iter()
        .flat_map(|r| r.batch_counters.iter())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let batch_counters = BatchCounters::for_net(&net, &known)?;
    match &report {
        Some(r) => on_event(Event::Info(r.to_string())),
        None => on_event(Event::Warn(format!(
            "weights none: {} starts from random weights; expect much lower accuracy than with \
             pretrained weights",
            opts.arch
        ))),
    }
    let (train_preset, eval_preset) = run_presets(opts);
    // Partial fine-tuning's cut, checked before anything is written.
    let cut = match partial_cut(opts)? {
        Some(cut) => {
            net.check_cut(cut)?;
            Some(cut)
        }
        None => None,
    };
    // The pretrained weights file the backbone came from (the key of the feature cache).
    let pretrained: Option<PathBuf> = match &resumed {
        Some(r) => r.run.config.weights.path.clone(),
        None => report.as_ref().map(|r| r.path.clone()),
    };
    let pretrained_head = match report.as_ref().and_then(|r| r.file_head.as_ref()) {
        Some(l) if resumed.is_none() => PretrainedHead::from_linear(l)?,
        _ => None,
    };
    let data_root = std::fs::canonicalize(&opts.data).map_err(|e| Error::io(&opts.data, e))?;
    let mut hyper = h.clone();
    if hyper.mode != Mode::Finetune {
        hyper.head_epochs = 0;
    }
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
        hyper,
        split: data.split.clone(),
        device: opts.device,
        precision: opts.precision,
    };
    let done = resumed.as_ref().map_or(0, |r| r.state.epoch);
    let planned = h.planned_epochs();
    if resumed.is_some() && done >= planned {
        return Err(Error::Run {
            path: opts.out.clone(),
            reason: format!(
                "{done} epoch{} already trained (of {planned} planned): give a larger number \
                 of epochs to train further",
                if done == 1 { " is" } else { "s are" }
            ),
        });
    }
    let run = Run::create(&opts.out, config)?;
    let Data { train, val, .. } = data;
    on_event(Event::Info(format!(
        "{} {}, {} training and {} held-out images; run directory {}",
        n_classes,
        match opts.task {
            Task::Classification => "classes",
            Task::Regression => "regression categories",
        },
        train.len(),
        val.len(),
        run.dir.display()
    )));
    let tracker = Tracker::new(
        opts.task,
        h.patience,
        resumed
            .as_ref()
            .map(|r| r.state.tracker.clone())
            .unwrap_or_default(),
    );
    let mut ctx = RunCtx {
        opts,
        run: &run,
        device: device.clone(),
        ad: ad.clone(),
        tracker,
        on_event,
        size: eval_preset.crop as usize,
        batch_counters,
        measured: estimate::Measured::default(),
    };
    let state = resumed.as_ref().map(|r| &r.state);
    let mut skipped = Vec::new();
    let mut train_samples = train;
    let mut val_samples = val;
    // Regression: every image decoded once at full size and brought to the input size, its
    // point moved with it; the held-out target is the point in the eval preset's view.
    let mut reg = None;
    let mut eval_targets = HashMap::new();
    if opts.task == Task::Regression {
        let on_event = &mut *ctx.on_event;
        let train_imgs = regression_images(&train_samples, &eval_preset, &mut skipped, on_event);
        let val_imgs = regression_images(&val_samples, &eval_preset, &mut skipped, on_event);
        for (s, img) in train_imgs.iter().chain(&val_imgs) {
            eval_targets.insert(s.path.clone(), eval_target(s, img, &eval_preset));
        }
        train_samples = train_imgs.iter().map(|(s, _)| s.clone()).collect();
        val_samples = val_imgs.iter().map(|(s, _)| s.clone()).collect();
        check_classes(&run.config.labels, &train_samples, &opts.data)?;
        reg = Some((train_imgs, val_imgs));
    }
    let target_of = |s: &Sample| -> Target {
        eval_targets.get(&s.path).copied().unwrap_or(Target {
            label: s.label,
            point: [0.0; 2],
        })
    };

    let head_epochs = match h.mode {
        Mode::Frozen => h.epochs,
        Mode::Finetune => h.head_epochs,
        Mode::Instant => 1,
        Mode::Full | Mode::Partial => 0,
    };
    let mut net = net;
    if head_epochs > done {
        let rows = feature_rows(
            &mut ctx,
            &net,
            pretrained.as_deref(),
            &eval_preset,
            (&train_samples, &val_samples),
            &target_of,
        )?;
        skipped.extend(rows.skipped.iter().cloned());
        train_samples = rows.train_samples.clone();
        val_samples = rows.val_samples.clone();
        check_classes(&run.config.labels, &train_samples, &opts.data)?;
        if h.mode == Mode::Instant {
            let mut phase =
                InstantPhase::new(net, pretrained_head, rows, h.instant_head, n_classes);
            run_phase(&mut phase, &mut ctx, 1, 1, done)?;
            return Ok(summary(
                &mut ctx,
                skipped,
                (train_samples.len(), val_samples.len()),
                t0,
            ));
        }
        let resume = state
            .filter(|s| s.phase == "head")
            .map(|s| (s, run.dir.as_path()));
        let batching = phases::Batching::for_device(opts.device);
        let mut phase = HeadPhase::new(net.clone(), rows, h, head_epochs, batching, resume)?;
        run_phase(&mut phase, &mut ctx, 1, head_epochs, done)?;
        // The full phase trains from the head just trained.
        net = epoch::Phase::net(&phase);
    }

    if let Some(cut) = cut {
        let resume = state
            .filter(|s| s.phase == "partial")
            .map(|s| (s, run.dir.as_path()));
        let inputs = PartialInputs {
            train: &train_samples,
            val: &val_samples,
            train_preset,
            eval_preset,
            pretrained: pretrained.as_deref(),
        };
        let (mut phase, kept) = PartialPhase::new(&mut ctx, net, cut, inputs, h, h.epochs, resume)?;
        skipped.extend(kept.skipped);
        train_samples = kept.train;
        val_samples = kept.val;
        check_classes(&run.config.labels, &train_samples, &opts.data)?;
        run_phase(&mut phase, &mut ctx, 1, h.epochs, done)?;
        return Ok(summary(
            &mut ctx,
            skipped,
            (train_samples.len(), val_samples.len()),
            t0,
        ));
    }

    let full_epochs = match h.mode {
        Mode::Frozen | Mode::Instant | Mode::Partial => 0,
        Mode::Full | Mode::Finetune => h.epochs,
    };
    if full_epochs > 0 {
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
        ctx.event(Event::Info(format!(
            "decoded {} images in {:.1} s",
            train_imgs.len() + val_imgs.len(),
            td.elapsed().as_secs_f64()
        )));
        for s in skip_t.iter().chain(&skip_v) {
            ctx.event(Event::Warn(s.to_string()));
        }
        if head_epochs == 0 {
            skipped.extend(skip_t);
            skipped.extend(skip_v);
        }
        let kept: Vec<Sample> = train_imgs.iter().map(|(s, _)| s.clone()).collect();
        check_classes(&run.config.labels, &kept, &opts.data)?;
        let val_tensors: Vec<(Vec<f32>, Target)> = val_imgs
            .par_iter()
            .map(|(s, img)| (eval_preset.apply(img), target_of(s)))
            .collect();
        drop(val_imgs);
        train_samples = kept;
        let body_lr_factor = if h.mode == Mode::Finetune {
            h.body_lr_factor
        } else {
            1.0
        };
        let resume = state
            .filter(|s| s.phase == "full")
            .map(|s| (s, run.dir.as_path()));
        let mut phase = FullPhase::new(
            net,
            train_imgs,
            val_tensors,
            train_preset,
            h,
            body_lr_factor,
            full_epochs,
            phases::Batching::for_device(opts.device),
            opts.precision,
            resume,
        )?;
        let full_done = done.saturating_sub(head_epochs);
        run_phase(
            &mut phase,
            &mut ctx,
            head_epochs + 1,
            full_epochs,
            full_done,
        )?;
    }
    Ok(summary(
        &mut ctx,
        skipped,
        (train_samples.len(), val_samples.len()),
        t0,
    ))
}

/// The train and eval presets of a run: the task's, at the backbone's input size and
/// normalisation, with the user's augmentation (or the mode's own) replacing the train
/// preset's. The run stores both.
pub(crate) fn run_presets(opts: &TrainOptions) -> (TrainPreset, EvalPreset) {
    let (train, eval) = match opts.task {
        Task::Classification => presets(opts.arch.normalization(), opts.arch.input_size()),
        Task::Regression => regression_presets(opts.arch.normalization(), opts.arch.input_size()),
    };
    let train = match opts.hyper.augmentation() {
        Some(a) => train.with_augmentation(&a),
        None => train,
    };
    (train, eval)
}

/// Partial fine-tuning's cut (`--train-blocks`, else the backbone's default); None in other
/// modes.
///
/// # Errors
/// The number of blocks does not fit the backbone.
pub(crate) fn partial_cut(opts: &TrainOptions) -> Result<Option<Cut>> {
    match opts.hyper.mode {
        Mode::Partial => {
            let default = Cut::default_for(opts.arch).blocks;
            Ok(Some(Cut::new(
                opts.arch,
                opts.hyper.train_blocks.unwrap_or(default),
            )?))
        }
        _ => Ok(None),
    }
}

/// The outcome of a finished run.
fn summary(
    ctx: &mut RunCtx<'_>,
    skipped: Vec<Skipped>,
    (train_images, val_images): (usize, usize),
    t0: Instant,
) -> TrainSummary {
    if !skipped.is_empty() {
        let n = skipped.len();
        ctx.event(Event::Warn(format!(
            "{n} {} skipped",
            if n == 1 { "file" } else { "files" }
        )));
    }
    TrainSummary {
        run_dir: ctx.run.dir.clone(),
        best_val_top1: ctx.tracker.best_top1(),
        best_val_error_px: ctx.tracker.best_error_px(),
        best_epoch: ctx.tracker.state.best_epoch,
        skipped,
        train_images,
        val_images,
        seconds: t0.elapsed().as_secs_f64(),
        measured: ctx.measured,
    }
}
