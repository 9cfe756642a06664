//! `nanoclass eval`: held-out top-1, per-class precision/recall/F1 and the confusion matrix of a
//! run (regression: point errors and points.png).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use nanoclass::data::groups::near_copy_warning;
use nanoclass::eval::heldout::EvalSplit;
use nanoclass::eval::regression::write_points_png;
use nanoclass::infer::engine::EngineChoice;
use nanoclass::infer::precision::Precision;
use nanoclass::infer::predictor::Predictor;
use nanoclass::run::Task;

/// Flags of `nanoclass eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
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
    #[arg(long, default_value_t = EngineChoice::from_env())]
    engine: EngineChoice,
    /// Model precision on ONNX Runtime: auto (the int8 model `nanoclass quantize` kept, if
    /// any), fp32 or int8.
    #[arg(long, default_value_t = Precision::from_env())]
    precision: Precision,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum SplitArg {
    Val,
    Test,
    All,
}

/// Runs `nanoclass eval`.
pub fn cmd_eval(a: EvalArgs) -> Result<ExitCode> {
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
    let (samples, from) = predictor.run.held_out(&data, split)?;
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
    if !matches!(a.split, SplitArg::All)
        && let Ok(train) = predictor.run.training_images()
        && let Some(w) = near_copy_warning(&data, &train, &samples, "held-out")
    {
        eprintln!("warning: {w}");
    }
    if predictor.task() == Task::Regression {
        return eval_regression(&predictor, &samples, &a);
    }
    let (report, skipped) = predictor.evaluate(&samples, a.batch_size)?;
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
    crate::predict::say_skipped(skipped.len());
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
    crate::predict::say_skipped(skipped.len());
    Ok(ExitCode::SUCCESS)
}
