//! Command-line flags and the commands they run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use nanoclass::data::decode::is_image_extension;
use nanoclass::data::loader::Skipped;
use nanoclass::eval::metrics::{softmax, top_k};
use nanoclass::eval::predict::{EvalSplit, Predictor};
use nanoclass::eval::regression::write_points_png;
use nanoclass::instant::HeadChoice;
use nanoclass::model::{Arch, registry};
use nanoclass::run::{Mode, OptimizerKind, Schedule, Task};
use nanoclass::train::{Event, TrainOptions, resume_options, train};

/// Transfer learning for image classification: fine-tune an ImageNet-pretrained backbone on
/// a folder of labelled images, then evaluate and predict.
#[derive(Parser, Debug)]
#[command(name = "nanoclass", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune a backbone on an ImageFolder dataset (`DATA/<class>/<image>`, optional
    /// `train/ val/ test/`) and write a run directory.
    Train(TrainArgs),
    /// Held-out top-1, per-class precision/recall/F1 and the confusion matrix of a run; for a
    /// regression run, the mean and 90th-percentile point error per category and points.png.
    Eval(EvalArgs),
    /// Classify image files or folders with a run's model; for a regression run, print each
    /// category's point in pixels of each image.
    Predict(PredictArgs),
    /// Pretrained weights: list the registry, download, or add a file you have.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Export a run's model as ONNX (input_0 / output_0, labels.txt beside it, as
    /// jetson-inference's imagenet reads), a PyTorch .pth state dict, or safetensors.
    Export(crate::export::ExportArgs),
    /// Quantize a classification run to int8 (ONNX Runtime's static quantizer, calibrated on
    /// the run's training images) and keep it only when held-out top-1 drops by at most 1
    /// point; predict, eval and live then use it on ONNX Runtime.
    Quantize(crate::quantize::QuantizeArgs),
    /// Serve the studio web page: collect images per category from a camera or uploads,
    /// train, and watch live scores (see the README's "Studio" section).
    Studio(crate::studio::StudioArgs),
    /// Save frames from a camera (V4L2), a folder of images or a video file into
    /// DATA/<category>/ of an ImageFolder dataset.
    Capture(crate::capture::CaptureArgs),
    /// Run a trained model live over a camera (V4L2), a folder of images or a video file,
    /// printing per-frame scores and FPS.
    Live(crate::live::LiveArgs),
    /// Time inference and training steps on random 224x224 inputs (JSON on stdout); used by
    /// scripts/bench.py to compare with PyTorch.
    #[command(hide = true)]
    Bench {
        /// Backbone.
        #[arg(long, value_enum, default_value = "resnet18")]
        arch: ArchArg,
        /// Timed repetitions per measurement.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Batch size of the two training-step rows (the forward rows use 1 and 16).
        #[arg(long, default_value_t = 16)]
        train_batch: usize,
        /// Only the training-step rows.
        #[arg(long)]
        train_only: bool,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ArchArg {
    Resnet18,
    Resnet34,
    Resnet50,
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

#[derive(Args, Debug)]
struct TrainArgs {
    /// Dataset root: ImageFolder (`<class>/<image>` or `train/ val/` splits) or a DLI course
    /// folder. Not given with --resume (the run's own dataset is used).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    data: Option<PathBuf>,
    /// classification: one class per image (class folders); regression: one (x, y) point per
    /// image, from DLI course names `<category>/<x>_<y>_<uuid>.jpg` (head of 2 outputs per
    /// category, squared-error loss, flips mirror the point).
    #[arg(long, value_enum, default_value = "classification")]
    task: TaskArg,
    /// Backbone.
    #[arg(long, value_enum, default_value = "resnet18")]
    arch: ArchArg,
    /// Starting weights: a registry name (see `nanoclass weights list`), a .pth/.safetensors
    /// path, or `none` for random init. Default: the registry entry named like --arch.
    #[arg(long)]
    weights: Option<String>,
    /// frozen: train the head on cached backbone features; full: train every layer;
    /// finetune: head first, then every layer with a lower backbone learning rate;
    /// instant: no gradient training, a head fitted in one go on the backbone features (class
    /// prototypes, or a linear head when a leave-out check prefers it), in seconds.
    #[arg(long, value_enum, default_value = "frozen")]
    mode: ModeArg,
    /// --mode instant: auto (the leave-out check chooses, from 3 images per class), prototypes
    /// or linear.
    #[arg(long, value_enum, default_value = "auto")]
    instant_head: InstantHeadArg,
    /// Engine of the backbone's forward pass in frozen and instant modes (features): ort
    /// (ONNX Runtime), burn, or auto (ort when its library loads). Training steps always run
    /// on burn.
    #[arg(long, default_value_t = nanoclass::engine::EngineChoice::from_env())]
    engine: nanoclass::engine::EngineChoice,
    /// Epochs (finetune: full-network epochs after the head epochs). Default: 30 frozen, 10
    /// full, 5 finetune.
    #[arg(long)]
    epochs: Option<usize>,
    /// Head-only epochs before the full phase in finetune mode.
    #[arg(long, default_value_t = 10)]
    head_epochs: usize,
    /// Images per batch (at least 2).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
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
    /// Do not read or write the frozen-feature cache ($NANOCLASS_FEATURE_CACHE, else
    /// ~/.cache/nanoclass/features).
    #[arg(long)]
    no_feature_cache: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Run directory written by `nanoclass train`.
    run: PathBuf,
    /// Dataset to evaluate on (default: the run's dataset). An ImageFolder with `val/` or
    /// `test/`, or a plain `<class>/<image>` folder; its classes must be known to the model.
    data: Option<PathBuf>,
    /// val: the held-out set training reported on (`val/`, the recorded split, or all images
    /// of a plain folder the run did not train on); test: the `test/` folder; all: every image.
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Folder for confusion.png and eval.json (default: RUN/eval).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Inference engine: ort (ONNX Runtime, from ORT_DYLIB_PATH, the config file or a
    /// pip-installed onnxruntime), burn (pure Rust), or auto (ort when its library loads).
    #[arg(long, default_value_t = nanoclass::engine::EngineChoice::from_env())]
    engine: nanoclass::engine::EngineChoice,
    /// Model precision on ONNX Runtime: auto (the int8 model `nanoclass quantize` kept, if
    /// any), fp32 or int8.
    #[arg(long, default_value_t = nanoclass::quantize::Precision::from_env())]
    precision: nanoclass::quantize::Precision,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum SplitArg {
    Val,
    Test,
    All,
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// Run directory written by `nanoclass train`.
    run: PathBuf,
    /// Image files or folders (searched recursively; hidden entries are skipped).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Classes to show per image (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    top_k: u16,
    /// JSON lines on stdout: path, top-k labels with probabilities, and the logits (regression:
    /// path, width, height and one {category, x, y} per category, in pixels of the image).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV on stdout: path,rank,label,probability (regression: path,category,x,y).
    #[arg(long)]
    csv: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Inference engine: ort (ONNX Runtime, from ORT_DYLIB_PATH, the config file or a
    /// pip-installed onnxruntime), burn (pure Rust), or auto (ort when its library loads).
    #[arg(long, default_value_t = nanoclass::engine::EngineChoice::from_env())]
    engine: nanoclass::engine::EngineChoice,
    /// Model precision on ONNX Runtime: auto (the int8 model `nanoclass quantize` kept, if
    /// any), fp32 or int8.
    #[arg(long, default_value_t = nanoclass::quantize::Precision::from_env())]
    precision: nanoclass::quantize::Precision,
}

#[derive(Subcommand, Debug)]
enum WeightsCommand {
    /// The registry: name, architecture, file, format, source, and whether it is cached.
    List,
    /// Download NAME into the cache (verified by SHA-256, written atomically).
    Fetch {
        /// Registry name, e.g. resnet18.
        name: String,
        /// Download from this URL instead of the registry's (a mirror); the hash is still checked.
        #[arg(long)]
        url: Option<String>,
    },
    /// Put a weights file you already have into the cache, after checking its SHA-256 against
    /// the registry.
    Add {
        /// The file.
        file: PathBuf,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Predict(a) => cmd_predict(a),
        Command::Weights(w) => cmd_weights(w),
        Command::Export(a) => crate::export::run(a),
        Command::Quantize(a) => crate::quantize::run(a),
        Command::Studio(a) => crate::studio::run(a),
        Command::Capture(a) => crate::capture::run(a),
        Command::Live(a) => crate::live::cmd_live(a),
        Command::Bench {
            arch,
            runs,
            train_batch,
            train_only,
        } => {
            let r = nanoclass::bench::run(arch.into(), 2, runs, train_batch.max(2), train_only);
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&r)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_train(a: TrainArgs) -> Result<ExitCode> {
    let opts = match &a.resume {
        Some(dir) => resume_options(dir, a.epochs)?,
        None => train_options(a)?,
    };
    run_training(&opts)
}

fn train_options(a: TrainArgs) -> Result<TrainOptions> {
    let Some(data) = a.data else {
        bail!("DATA is required unless --resume is given");
    };
    let arch: Arch = a.arch.into();
    let mode = match a.mode {
        ModeArg::Frozen => Mode::Frozen,
        ModeArg::Full => Mode::Full,
        ModeArg::Finetune => Mode::Finetune,
        ModeArg::Instant => Mode::Instant,
    };
    let optimizer = match a.optimizer {
        OptimizerArg::Adam => OptimizerKind::Adam,
        OptimizerArg::Sgd => OptimizerKind::Sgd,
    };
    let epochs = a.epochs.unwrap_or(match mode {
        Mode::Frozen => 30,
        Mode::Full => 10,
        Mode::Finetune => 5,
        Mode::Instant => 1,
    });
    let lr = a.lr.unwrap_or(match optimizer {
        OptimizerKind::Adam => 1e-3,
        OptimizerKind::Sgd => 1e-2,
    });
    let name = data
        .canonicalize()
        .with_context(|| format!("dataset {}", data.display()))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{name}-{arch}-{}", mode_name(mode)))
    });
    Ok(TrainOptions {
        data,
        task: match a.task {
            TaskArg::Classification => Task::Classification,
            TaskArg::Regression => Task::Regression,
        },
        arch,
        weights: a.weights.unwrap_or_else(|| arch.name().to_string()),
        mode,
        epochs,
        head_epochs: a.head_epochs,
        batch_size: a.batch_size,
        lr,
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
        out,
        resume: false,
        force: a.force,
        feature_cache: if a.no_feature_cache {
            None
        } else {
            nanoclass::train::features::default_dir()
        },
        stop: None,
        instant_head: match a.instant_head {
            InstantHeadArg::Auto => HeadChoice::Auto,
            InstantHeadArg::Prototypes => HeadChoice::Prototypes,
            InstantHeadArg::Linear => HeadChoice::Linear,
        },
        engine: a.engine,
    })
}

fn run_training(opts: &TrainOptions) -> Result<ExitCode> {
    let mut bar: Option<ProgressBar> = None;
    let mut on_event = |ev: Event| match ev {
        Event::Info(s) => eprintln!("{s}"),
        Event::Warn(s) => eprintln!("warning: {s}"),
        Event::Features { done, total } => {
            let b = bar.get_or_insert_with(|| new_bar(total as u64, "features"));
            b.set_position(done as u64);
            if done >= total {
                b.finish_and_clear();
                bar = None;
            }
        }
        Event::Phase {
            phase,
            epochs,
            steps,
        } => {
            eprintln!("{phase} phase: {epochs} epochs of {steps} steps");
        }
        Event::Step {
            epoch,
            step,
            steps,
            loss,
            top1,
            error_px,
        } => {
            let b = bar.get_or_insert_with(|| new_bar(steps as u64, &format!("epoch {epoch}")));
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
            if let Some(b) = bar.take() {
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
            eprintln!(
                "epoch {:>3} [{}] train loss {:.4}{} | {} | lr {:.2e} | {:.1} s",
                m.epoch, m.phase, m.train_loss, train_figure, val, m.lr, m.seconds
            );
        }
    };
    let summary = train(opts, &mut on_event)?;
    if let Some(e) = summary.best_val_error_px {
        println!(
            "best mean held-out point error {:.2} px (pixels of the {} px model input) at epoch {} \
             ({} held-out images); run {} ({:.1} s)",
            e,
            opts.arch.input_size(),
            summary.best_epoch,
            summary.val_images,
            summary.run_dir.display(),
            summary.seconds
        );
        return Ok(ExitCode::SUCCESS);
    }
    match summary.best_val_top1 {
        Some(t) => println!(
            "best held-out top-1 {:.4} at epoch {} ({} held-out images); run {} ({:.1} s)",
            t,
            summary.best_epoch,
            summary.val_images,
            summary.run_dir.display(),
            summary.seconds
        ),
        None => println!(
            "trained without a held-out set; run {} ({:.1} s)",
            summary.run_dir.display(),
            summary.seconds
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Frozen => "frozen",
        Mode::Full => "full",
        Mode::Finetune => "finetune",
        Mode::Instant => "instant",
    }
}

fn new_bar(len: u64, prefix: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix(prefix.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

fn cmd_eval(a: EvalArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let predictor = Predictor::open_full(&a.run, a.engine, a.precision)?;
    let data = a
        .data
        .clone()
        .unwrap_or_else(|| predictor.run.config.data.clone());
    let split = match a.split {
        SplitArg::Val => EvalSplit::Val,
        SplitArg::Test => EvalSplit::Test,
        SplitArg::All => EvalSplit::All,
    };
    let (samples, from) = predictor.held_out(&data, split)?;
    if samples.is_empty() {
        bail!(
            "{}: no held-out images (no val/ folder, and no split recorded for this dataset): \
             no accuracy figure can be given; `--split test` scores a test/ folder, `--split all` every image",
            data.display()
        );
    }
    eprintln!(
        "evaluating on {} images of {} ({from})",
        samples.len(),
        data.display()
    );
    if predictor.task() == Task::Regression {
        return eval_regression(&predictor, &samples, &a);
    }
    let (report, skipped) = predictor.evaluate(&samples, a.batch_size);
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    let out_dir = a.out.clone().unwrap_or_else(|| a.run.join("eval"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let png = out_dir.join("confusion.png");
    report.confusion.write_png(
        &png,
        &format!(
            "{} on {} held-out images: top-1 {}",
            predictor.run.config.arch,
            report.n,
            report.top1.map(|t| format!("{t:.4}")).unwrap_or("-".into())
        ),
    )?;
    report.write_json(&out_dir.join("eval.json"))?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(out, "{}", report.to_text())?;
        writeln!(out, "confusion matrix PNG: {}", png.display())?;
    }
    if !skipped.is_empty() {
        eprintln!("{} files skipped", skipped.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval` of a regression run: point errors per category in pixels of the model input, and
/// `points.png` with predicted (red cross) against true (green ring) points on held-out images.
fn eval_regression(
    predictor: &Predictor,
    samples: &[nanoclass::data::folder::Sample],
    a: &EvalArgs,
) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let (report, tiles, skipped) = predictor.evaluate_regression(samples, a.batch_size, 16)?;
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    if report.overall.n == 0 {
        bail!("no held-out image could be scored");
    }
    let out_dir = a.out.clone().unwrap_or_else(|| a.run.join("eval"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let png = out_dir.join("points.png");
    write_points_png(&png, &tiles)?;
    report.write_json(&out_dir.join("eval.json"))?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.to_text())?;
        writeln!(
            out,
            "points PNG (green ring: true point, red cross: prediction): {}",
            png.display()
        )?;
    }
    if !skipped.is_empty() {
        eprintln!("{} files skipped", skipped.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).with_context(|| format!("reading {}", p.display()))?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image_extension(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn cmd_predict(a: PredictArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let predictor = Predictor::open_full(&a.run, a.engine, a.precision)?;
    let files = collect_images(&a.paths)?;
    if predictor.task() == Task::Regression {
        return predict_points(&predictor, &files, &a);
    }
    let (rows, skipped) = predictor.logits_for_files(&files, a.batch_size);
    let labels = predictor.labels();
    let k = usize::from(a.top_k).min(labels.len());
    if a.csv {
        writeln!(out, "path,rank,label,probability")?;
    }
    for r in &rows {
        let probs = softmax(&r.logits);
        let top = top_k(&probs, k);
        if a.json {
            let top: Vec<_> = top
                .iter()
                .map(
                    |(i, p)| serde_json::json!({"index": i, "label": labels[*i], "probability": p}),
                )
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({"path": r.path, "top": top, "logits": r.logits})
            )?;
        } else if a.csv {
            for (rank, (i, p)) in top.iter().enumerate() {
                writeln!(
                    out,
                    "{},{},{},{:.6}",
                    csv_field(&r.path.display().to_string()),
                    rank + 1,
                    csv_field(&labels[*i]),
                    p
                )?;
            }
        } else {
            let shown: Vec<String> = top
                .iter()
                .map(|(i, p)| format!("{} {:.3}", labels[*i], p))
                .collect();
            writeln!(out, "{}\t{}", r.path.display(), shown.join("\t"))?;
        }
    }
    report_skipped(&mut out, &skipped, a.json)?;
    if rows.is_empty() {
        bail!("no image could be classified");
    }
    Ok(ExitCode::SUCCESS)
}

/// `predict` with a regression run: every category's point in pixels of each input image
/// (continuous coordinates, origin at the top-left corner).
fn predict_points(predictor: &Predictor, files: &[PathBuf], a: &PredictArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let (rows, skipped) = predictor.points_for_files(files, a.batch_size)?;
    let labels = predictor.labels();
    if a.csv {
        writeln!(out, "path,category,x,y")?;
    }
    for r in &rows {
        if a.json {
            let points: Vec<_> = labels
                .iter()
                .zip(&r.points)
                .map(|(l, p)| serde_json::json!({"category": l, "x": p[0], "y": p[1]}))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "path": r.path,
                    "width": r.width,
                    "height": r.height,
                    "points": points
                })
            )?;
        } else if a.csv {
            for (l, p) in labels.iter().zip(&r.points) {
                writeln!(
                    out,
                    "{},{},{:.2},{:.2}",
                    csv_field(&r.path.display().to_string()),
                    csv_field(l),
                    p[0],
                    p[1]
                )?;
            }
        } else {
            let shown: Vec<String> = labels
                .iter()
                .zip(&r.points)
                .map(|(l, p)| format!("{l} {:.1} {:.1}", p[0], p[1]))
                .collect();
            writeln!(out, "{}\t{}", r.path.display(), shown.join("\t"))?;
        }
    }
    report_skipped(&mut out, &skipped, a.json)?;
    if rows.is_empty() {
        bail!("no image could be predicted");
    }
    Ok(ExitCode::SUCCESS)
}

/// Warns about every file `predict` could not read, with a count; with `--json` each also gets
/// an `{"path", "error"}` record, so there is one record per input and a script can match
/// outputs to inputs.
fn report_skipped(out: &mut impl Write, skipped: &[Skipped], json: bool) -> Result<()> {
    for s in skipped {
        eprintln!("warning: {s}");
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"path": s.path, "error": s.reason})
            )?;
        }
    }
    if !skipped.is_empty() {
        eprintln!("{} files skipped", skipped.len());
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn cmd_weights(w: WeightsCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match w {
        WeightsCommand::List => {
            let cache = registry::cache_dir()?;
            writeln!(out, "cache: {}", cache.display())?;
            for e in registry::registry() {
                let cached = registry::cached_path(e)
                    .map(|p| p.exists())
                    .unwrap_or(false);
                writeln!(
                    out,
                    "{:<20} {:<20} {:<36} {:<12} {}\n{:<20} source: {}",
                    e.name,
                    e.arch,
                    e.file_name,
                    e.format.as_str(),
                    if cached { "cached" } else { "not cached" },
                    "",
                    e.url
                )?;
            }
        }
        WeightsCommand::Fetch { name, url } => {
            let entry = registry::find(&name).with_context(|| {
                let names: Vec<&str> = registry::registry().iter().map(|e| e.name).collect();
                format!("no registry entry `{name}` (known: {})", names.join(", "))
            })?;
            let path = registry::fetch(entry, url.as_deref())?;
            writeln!(out, "{}", path.display())?;
        }
        WeightsCommand::Add { file } => {
            let (entry, path) = registry::add(&file)?;
            writeln!(
                out,
                "added {} as {} -> {}",
                file.display(),
                entry.name,
                path.display()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
