//! Background training jobs. `nanoclass::train::train` runs on its own OS thread (never on the
//! async workers); its events become JSON objects kept in the job's history, which any number of
//! event streams replay and follow.
//!
//! Events (`type` field):
//! - `info`, `warn`: `{message}`;
//! - `features`: `{done, total}` images embedded by the backbone;
//! - `phase`: `{phase, epochs, steps}`;
//! - `step`: `{epoch, step, steps, loss}` (at most about 4 a second);
//! - `epoch`: `{epoch, phase, train_loss, val_loss, val_top1, val_error_px, lr, seconds}`;
//!   `val_*` are held-out figures (None without a held-out set; `val_top1` for classification,
//!   `val_error_px` for regression: the mean point error in pixels of the model input),
//!   training accuracy is not sent;
//! - `done`: `{run, task, best_val_top1, best_val_top1_interval, held_out_warning,
//!   best_val_error_px, best_epoch, train_images, val_images, seconds, eval}`, with
//!   `best_val_top1_interval` the 95% Wilson interval `[low, high]` of the top-1,
//!   `held_out_warning` the text shown when that interval is wider than ±10 points (too few
//!   held-out images to tell), and `eval` the held-out confusion matrix and per-class
//!   figures (classification) or the point errors per category (regression);
//! - `stopped`: `{run, message, kept}` (`kept`: a model of the completed epochs exists);
//! - `error`: `{message}`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nanoclass::data::presets::Augmentation;
use nanoclass::eval::heldout::EvalSplit;
use nanoclass::eval::metrics::{too_few_to_tell, top1_interval};
use nanoclass::fs::write_atomic;
use nanoclass::infer::device::DeviceChoice;
use nanoclass::infer::predictor::Predictor;
use nanoclass::model::Arch;
use nanoclass::run::{Task, files};
use nanoclass::train::precision::TrainPrecision;
use nanoclass::train::{Event, Hyperparams, Mode, TrainOptions, train};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult};
use crate::store::{RunEval, TaskKind};

/// Training settings from the page. Missing fields take the `nanoclass train` defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// Backbone: `resnet18`, `resnet34`, `resnet50`, `efficientnet_lite0` (default
    /// `efficientnet_lite0`).
    pub arch: Option<String>,
    /// Pretrained weights: a registry name (default: the one named like `arch`) or `none`.
    pub weights: Option<String>,
    /// `frozen` (default), `full`, `finetune`, `instant` or `partial`.
    pub mode: Option<String>,
    /// `partial`: residual blocks trained, counted from the end (default: the backbone's).
    pub train_blocks: Option<usize>,
    /// `partial`: views cached per training image, 1..=64 (default 4).
    pub views: Option<usize>,
    /// Augmentation: the random crop's area range `[min, max]`, `0 < min <= max <= 1`.
    pub crop_scale: Option<[f32; 2]>,
    /// Augmentation: colour jitter strength, `>= 0`.
    pub jitter: Option<f32>,
    /// Augmentation: random horizontal flip (off for classes that mirroring changes).
    pub flip: Option<bool>,
    /// Early stopping after this many epochs without a lower held-out loss (default: 2 in
    /// `partial`, off otherwise).
    pub patience: Option<usize>,
    /// Epochs (default 30 frozen, 10 full, 5 finetune, 6 partial); 1..=10000.
    pub epochs: Option<usize>,
    /// Head-only epochs before the full phase in `finetune` (default 10).
    pub head_epochs: Option<usize>,
    /// Images per batch, 2..=4096 (default 16).
    pub batch_size: Option<usize>,
    /// Learning rate, a positive number (default 1e-3).
    pub lr: Option<f64>,
    /// Seed (default 0).
    pub seed: Option<u64>,
    /// Where to train: `cpu` (default), or `wgpu` / `cuda` in a build with that GPU backend.
    pub device: Option<String>,
    /// Float type of the steps through the backbone: `fp32` (default), or mixed precision
    /// `fp16` / `bf16` where the device computes in it (full, finetune and partial modes).
    pub precision: Option<String>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Training.
    Running,
    /// Finished every epoch.
    Done,
    /// Stopped on request.
    Stopped,
    /// Failed with an error.
    Failed,
}

/// One training of one task.
#[derive(Debug)]
pub struct Job {
    /// Task name.
    pub task: String,
    /// Run number (`runs/<run>`).
    pub run: u32,
    stop: Arc<AtomicBool>,
    log: Mutex<Log>,
    notify: watch::Sender<usize>,
}

/// A job's events and state, under one lock so a reader never sees the final state without
/// the final event.
#[derive(Debug)]
struct Log {
    events: Vec<Value>,
    state: JobState,
}

/// What an event stream reader gets next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Event `i`.
    Event(Value),
    /// No event yet; the job runs.
    Wait,
    /// The job has ended and every event was read.
    End,
}

impl Job {
    /// Current state.
    pub fn state(&self) -> JobState {
        self.log.lock().map(|l| l.state).unwrap_or(JobState::Failed)
    }

    /// Events so far.
    pub fn history(&self) -> Vec<Value> {
        self.log
            .lock()
            .map(|l| l.events.clone())
            .unwrap_or_default()
    }

    /// Event number `i`, or whether to wait or stop.
    pub fn next(&self, i: usize) -> Next {
        match self.log.lock() {
            Ok(l) => match l.events.get(i) {
                Some(e) => Next::Event(e.clone()),
                None if l.state == JobState::Running => Next::Wait,
                None => Next::End,
            },
            Err(_) => Next::End,
        }
    }

    /// Wakes when events are added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.notify.subscribe()
    }

    /// Asks the job to stop before its next optimizer step.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn push(&self, ev: Value) {
        self.append(ev, None);
    }

    fn finish(&self, state: JobState, ev: Value) {
        self.append(ev, Some(state));
    }

    fn append(&self, ev: Value, state: Option<JobState>) {
        let n = match self.log.lock() {
            Ok(mut l) => {
                l.events.push(ev);
                if let Some(s) = state {
                    l.state = s;
                }
                l.events.len()
            }
            Err(_) => return,
        };
        self.notify.send_replace(n);
    }

    /// A JSON summary: task, run, state, events.
    pub fn snapshot(&self) -> Value {
        json!({
            "task": self.task,
            "run": self.run,
            "state": self.state(),
            "events": self.history(),
        })
    }
}

/// The jobs of every task: one running job at a time in the whole studio (training uses every
/// core), and the latest job of each task kept for its status.
#[derive(Debug, Default)]
pub struct Trainer {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

fn parse_mode(s: &str) -> ApiResult<Mode> {
    Mode::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        ApiError::bad_request(format!("mode {s:?}: expected one of {}", known.join(", ")))
    })
}

/// The request's augmentation fields over the mode's own augmentation; None when it has none.
fn augmentation(req: &TrainRequest, defaults: &Hyperparams) -> Option<Augmentation> {
    if req.crop_scale.is_none() && req.jitter.is_none() && req.flip.is_none() {
        return None;
    }
    let base = defaults.augmentation().unwrap_or_default();
    Some(Augmentation {
        scale: req.crop_scale.unwrap_or(base.scale),
        jitter: req.jitter.unwrap_or(base.jitter),
        hflip: req.flip.unwrap_or(base.hflip),
    })
}

/// Turns a request into training options for a task of `kind` on `data` → `out`, checking
/// every range.
pub fn options(
    req: &TrainRequest,
    kind: TaskKind,
    data: PathBuf,
    out: PathBuf,
    feature_cache: Option<PathBuf>,
) -> ApiResult<TrainOptions> {
    let arch_name = req.arch.as_deref().unwrap_or("efficientnet_lite0");
    let arch = Arch::parse(arch_name).ok_or_else(|| {
        let known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
        ApiError::bad_request(format!(
            "backbone {arch_name:?}: expected one of {}",
            known.join(", ")
        ))
    })?;
    let mode = parse_mode(req.mode.as_deref().unwrap_or("frozen"))?;
    let defaults = Hyperparams::for_task(kind.run_task(), mode);
    let hyper = Hyperparams {
        epochs: req.epochs.unwrap_or(defaults.epochs),
        head_epochs: req.head_epochs.unwrap_or(10),
        batch_size: req.batch_size.unwrap_or(defaults.batch_size),
        lr: req.lr.unwrap_or(defaults.lr),
        seed: req.seed.unwrap_or(0),
        train_blocks: req.train_blocks,
        views: req.views.unwrap_or(defaults.views),
        augmentation: augmentation(req, &defaults),
        patience: req.patience.or(defaults.patience),
        ..defaults.clone()
    };
    hyper
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let device = match req.device.as_deref() {
        None => DeviceChoice::from_env(),
        Some(name) => DeviceChoice::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!("device {name:?}: expected cpu, wgpu or cuda"))
        })?,
    };
    if !device.compiled() {
        return Err(ApiError::bad_request(format!(
            "this studio was built without the {device} backend: choose cpu"
        )));
    }
    let precision = match req.precision.as_deref() {
        None => TrainPrecision::default_for(hyper.mode),
        Some(name) => TrainPrecision::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!("precision {name:?}: expected fp32, fp16 or bf16"))
        })?,
    };
    let mut opts = TrainOptions::new(data, out);
    opts.device = device;
    opts.precision = precision;
    opts.task = kind.run_task();
    opts.arch = arch;
    opts.weights = req
        .weights
        .clone()
        .unwrap_or_else(|| arch.name().to_string());
    opts.hyper = hyper;
    opts.feature_cache = feature_cache;
    // What only the whole job can refuse (fp16 in a head-only mode, ...), refused now.
    opts.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    weights_on_device(&opts.weights)?;
    Ok(opts)
}

/// 409 when `weights` names a registry entry whose file is not on the device, worded for the
/// page: what is missing and the command that gets it, to run in a terminal on the device.
fn weights_on_device(weights: &str) -> ApiResult<()> {
    use nanoclass::model::registry::{self, Availability};
    let Some(entry) = registry::find(weights) else {
        return Ok(());
    };
    let problem = match registry::availability(entry) {
        Availability::Ready(_) => return Ok(()),
        Availability::Absent => format!(
            "the pretrained weights of {} ({}) are not on this device",
            entry.name, entry.file_name
        ),
        Availability::Unusable(why) => format!(
            "the pretrained weights of {} cannot be used: {why}",
            entry.name
        ),
    };
    Err(ApiError::conflict(format!(
        "{problem}. To get them, run `{}` in a terminal on the device, then train again; or \
         choose a backbone the list offers",
        entry.get_command()
    )))
}

fn event_json(ev: Event) -> Value {
    match ev {
        Event::Info(m) => json!({"type": "info", "message": m}),
        Event::Warn(m) => json!({"type": "warn", "message": m}),
        Event::Features { done, total } => {
            json!({"type": "features", "done": done, "total": total})
        }
        Event::Phase {
            phase,
            epochs,
            steps,
        } => json!({"type": "phase", "phase": phase, "epochs": epochs, "steps": steps}),
        Event::Step {
            epoch,
            step,
            steps,
            loss,
            ..
        } => json!({"type": "step", "epoch": epoch, "step": step, "steps": steps, "loss": loss}),
        Event::Epoch(m) => json!({
            "type": "epoch",
            "epoch": m.epoch,
            "phase": m.phase,
            "train_loss": m.train_loss,
            "val_loss": m.val_loss,
            "val_top1": m.val_top1,
            "val_error_px": m.val_error_px,
            "lr": m.lr,
            "seconds": m.seconds,
        }),
    }
}

impl Trainer {
    /// The latest job of `task`.
    pub fn job(&self, task: &str) -> Option<Arc<Job>> {
        self.jobs.lock().ok().and_then(|j| j.get(task).cloned())
    }

    /// True while any job runs.
    pub fn busy(&self) -> Option<Arc<Job>> {
        self.jobs.lock().ok().and_then(|j| {
            j.values()
                .find(|job| job.state() == JobState::Running)
                .cloned()
        })
    }

    /// True while a job of `task` runs.
    pub fn running(&self, task: &str) -> bool {
        self.job(task)
            .is_some_and(|j| j.state() == JobState::Running)
    }

    /// Starts training `task` with `opts` into run `run` on a new thread; 409 while another
    /// job runs.
    pub fn start(&self, task: &str, run: u32, mut opts: TrainOptions) -> ApiResult<Arc<Job>> {
        let mut jobs = self
            .jobs
            .lock()
            .map_err(|_| ApiError::internal("trainer state poisoned"))?;
        if let Some(j) = jobs.values().find(|j| j.state() == JobState::Running) {
            return Err(ApiError::conflict(format!(
                "task {:?} is training (run {}); stop it or wait for it to finish",
                j.task, j.run
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        opts.stop = Some(stop.clone());
        let job = Arc::new(Job {
            task: task.to_string(),
            run,
            stop,
            log: Mutex::new(Log {
                events: Vec::new(),
                state: JobState::Running,
            }),
            notify: watch::channel(0).0,
        });
        let j = job.clone();
        std::thread::Builder::new()
            .name(format!("studio-train-{run}"))
            .spawn(move || {
                run_job(&j, &opts);
                // The training's tensors are freed by now: hand their pages back to the
                // system, so the studio returns near its idle memory between trainings.
                nanoclass::memory::return_freed_heap();
            })
            .map_err(|e| ApiError::internal(format!("cannot start the training thread: {e}")))?;
        jobs.insert(task.to_string(), job.clone());
        Ok(job)
    }
}

fn run_job(job: &Job, opts: &TrainOptions) {
    let t0 = Instant::now();
    let mut last_step = Instant::now() - std::time::Duration::from_secs(1);
    let mut last_features = last_step;
    let mut on_event = |ev: Event| {
        let now = Instant::now();
        match &ev {
            Event::Step { step, steps, .. }
                if step != steps && now.duration_since(last_step).as_millis() < 250 =>
            {
                return;
            }
            Event::Step { .. } => last_step = now,
            Event::Features { done, total }
                if done != total && now.duration_since(last_features).as_millis() < 250 =>
            {
                return;
            }
            Event::Features { .. } => last_features = now,
            _ => {}
        }
        job.push(event_json(ev));
    };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(opts, &mut on_event)));
    let kept = opts.out.join(files::MODEL).is_file();
    match result {
        Ok(Ok(summary)) => {
            let eval = evaluate(&summary.run_dir, &opts.data, opts.task);
            let eval = match eval {
                Ok(r) => Some(r),
                Err(e) => {
                    job.push(json!({"type": "warn", "message": format!("held-out evaluation failed: {e}")}));
                    None
                }
            };
            // The held-out figure's 95% interval, and the warning when it rests on too few
            // images ([`nanoclass::eval::metrics::too_few_to_tell`]).
            let interval = summary
                .best_val_top1
                .and_then(|t| top1_interval(t, summary.val_images));
            let held_out_warning = too_few_to_tell(summary.val_images, interval);
            job.finish(
                JobState::Done,
                json!({
                    "type": "done",
                    "best_val_top1_interval": interval,
                    "held_out_warning": held_out_warning,
                    "run": job.run,
                    "task": opts.task.name(),
                    "best_val_top1": summary.best_val_top1,
                    "best_val_error_px": summary.best_val_error_px,
                    "best_epoch": summary.best_epoch,
                    "train_images": summary.train_images,
                    "val_images": summary.val_images,
                    "skipped": summary.skipped.len(),
                    "seconds": t0.elapsed().as_secs_f64(),
                    "eval": eval,
                }),
            );
        }
        Ok(Err(e)) if job.stop.load(Ordering::Relaxed) => job.finish(
            JobState::Stopped,
            json!({"type": "stopped", "run": job.run, "message": e.to_string(), "kept": kept}),
        ),
        Ok(Err(e)) => job.finish(
            JobState::Failed,
            json!({"type": "error", "message": e.to_string()}),
        ),
        Err(_) => job.finish(
            JobState::Failed,
            json!({"type": "error", "message": "training failed unexpectedly (a panic in the training thread)"}),
        ),
    }
}

/// The held-out evaluation of a finished run (the split recorded at training time), written
/// to `RUN/eval/eval.json` and returned: top-1, per-class figures and the confusion matrix for
/// classification; the point errors per category, in pixels of the model input, for
/// regression.
fn evaluate(
    run_dir: &std::path::Path,
    data: &std::path::Path,
    task: Task,
) -> nanoclass::Result<RunEval> {
    let report = match task {
        Task::Classification => {
            let p = Predictor::open(run_dir)?;
            let (samples, _) = p.run.held_out(data, EvalSplit::Val)?;
            RunEval::Classification(p.evaluate(&samples, 32)?.0)
        }
        Task::Regression => {
            let p = Predictor::open_regression(run_dir)?;
            let (samples, _) = p.run.held_out(data, EvalSplit::Val)?;
            RunEval::Regression(p.evaluate_regression(&samples, 32, 0)?.0)
        }
    };
    let dir = run_dir.join("eval");
    std::fs::create_dir_all(&dir).map_err(|e| nanoclass::Error::io(&dir, e))?;
    let bytes = serde_json::to_vec_pretty(&report)
        .map_err(|e| nanoclass::Error::Other(format!("eval.json: {e}")))?;
    write_atomic(&dir.join("eval.json"), &bytes)?;
    Ok(report)
}

#[cfg(test)]
mod precision_tests {
    use super::*;

    fn request(fields: serde_json::Value) -> TrainRequest {
        serde_json::from_value(fields).unwrap()
    }

    fn try_options(fields: serde_json::Value) -> ApiResult<TrainOptions> {
        options(
            &request(fields),
            TaskKind::Classification,
            PathBuf::from("data"),
            PathBuf::from("out"),
            None,
        )
    }

    #[test]
    fn the_train_form_sets_the_precision_and_refuses_what_cannot_use_it() {
        let opts = try_options(serde_json::json!({
            "mode": "full", "precision": "bf16", "weights": "none"
        }))
        .unwrap();
        assert_eq!(opts.precision, TrainPrecision::Bf16);
        let unknown = try_options(serde_json::json!({"mode": "full", "precision": "fp8"}));
        assert!(format!("{:?}", unknown.unwrap_err()).contains("expected fp32, fp16 or bf16"));
        let head_only = try_options(serde_json::json!({
            "mode": "frozen", "precision": "fp16", "weights": "none"
        }));
        assert!(format!("{:?}", head_only.unwrap_err()).contains("applies to the steps through"),);
    }
}
