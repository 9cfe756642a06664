//! `nanoclass predict`: top-k classes (or regression points) of image files and folders.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use nanoclass::data::decode::is_image_extension;
use nanoclass::data::loader::Skipped;
use nanoclass::infer::engine::EngineChoice;
use nanoclass::infer::precision::Precision;
use nanoclass::infer::predictor::Predictor;
use nanoclass::infer::scorer::{ScoreOptions, Scorer};
use nanoclass::run::Task;

/// Flags of `nanoclass predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
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
    #[arg(long, default_value_t = EngineChoice::from_env())]
    engine: EngineChoice,
    /// Model precision on ONNX Runtime: auto (the int8 model `nanoclass quantize` kept, if
    /// any), fp32 or int8.
    #[arg(long, default_value_t = Precision::from_env())]
    precision: Precision,
    /// Answer "unknown" (none of these) for an image farther from every class prototype than
    /// the run's threshold, both fitted on its held-out images when training ended
    /// (`calibration.json`; `nanoclass calibrate` fits them for an older run). Serves the fp32
    /// model.
    #[arg(long)]
    unknown: bool,
    /// Probabilities from the raw logits, leaving out the run's fitted temperature.
    #[arg(long)]
    no_calibration: bool,
}

/// A run's scorer for `predict` and `live`: its calibration unless `no_calibration`, and its
/// unknown rule with `unknown` (an error when the run has none).
pub fn run_scorer(
    predictor: &Predictor,
    opts: ScoreOptions,
    unknown: bool,
    no_calibration: bool,
) -> Result<Scorer> {
    let cal = predictor.calibration().filter(|_| !no_calibration);
    if unknown && cal.and_then(|c| c.unknown.as_ref()).is_none() {
        bail!(
            "{}: the run has no unknown rule for its current model (calibration.json is fitted \
             when training ends); run `nanoclass calibrate {}` first",
            predictor.run.dir.display(),
            predictor.run.dir.display()
        );
    }
    Ok(Scorer::new(opts)?.calibrated(cal, unknown))
}

pub fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
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

/// Runs `nanoclass predict`.
pub fn cmd_predict(a: PredictArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let predictor = Predictor::open_scoring(&a.run, a.engine, a.precision, a.unknown)?;
    let files = collect_images(&a.paths)?;
    if predictor.task() == Task::Regression {
        return predict_points(&predictor, &files, &a);
    }
    let labels = predictor.labels();
    let k = usize::from(a.top_k).min(labels.len());
    let opts = ScoreOptions {
        top_k: k,
        ..ScoreOptions::default()
    };
    let mut scorer = run_scorer(&predictor, opts, a.unknown, a.no_calibration)?;
    let (rows, skipped) = predictor.logits_for_files(&files, a.batch_size)?;
    if a.csv {
        writeln!(
            out,
            "path,rank,label,probability{}",
            if a.unknown { ",unknown" } else { "" }
        )?;
    }
    for r in &rows {
        let scores = scorer.logits_with_features(&r.logits, r.features.as_deref());
        let top = scores.top;
        if a.json {
            let top: Vec<_> = top
                .iter()
                .map(
                    |(i, p)| serde_json::json!({"index": i, "label": labels[*i], "probability": p}),
                )
                .collect();
            let mut line = serde_json::json!({
                "path": r.path,
                "top": top,
                "logits": r.logits,
                "temperature": scorer.temperature(),
            });
            if a.unknown {
                line["unknown"] = scores.unknown.into();
                line["distance"] = scores.distance.into();
            }
            writeln!(out, "{line}")?;
        } else if a.csv {
            for (rank, (i, p)) in top.iter().enumerate() {
                writeln!(
                    out,
                    "{},{},{},{:.6}{}",
                    csv_field(&r.path.display().to_string()),
                    rank + 1,
                    csv_field(&labels[*i]),
                    p,
                    if a.unknown {
                        if scores.unknown { ",1" } else { ",0" }
                    } else {
                        ""
                    }
                )?;
            }
        } else {
            let mut shown: Vec<String> = top
                .iter()
                .map(|(i, p)| format!("{} {:.3}", labels[*i], p))
                .collect();
            if scores.unknown {
                shown.insert(0, "unknown\tnearest:".to_string());
            }
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
    say_skipped(skipped.len());
    Ok(())
}

/// "1 file skipped" / "N files skipped" on stderr, nothing for none.
pub fn say_skipped(n: usize) {
    match n {
        0 => {}
        1 => eprintln!("1 file skipped"),
        n => eprintln!("{n} files skipped"),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
