//! `nanoclass live`: a run's model over a camera source, without a browser.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use nanoclass::camera::{self, CameraError, Frame};
use nanoclass::infer::scorer::ScoreOptions;
use nanoclass::live::{Live, LiveOptions, annotate};

/// Flags of `nanoclass live`.
#[derive(Args, Debug)]
pub struct LiveArgs {
    /// Run directory written by `nanoclass train`.
    run: PathBuf,
    /// Camera source: `v4l2:///dev/video0`, a folder of images (its files and those of its
    /// subfolders one level down, such as `DATA/val` with class folders; each line names the
    /// file) or a video file (`file:///path`, optional `?fps=N&loop=0`).
    #[arg(long)]
    source: String,
    /// Classes listed per frame.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// A top-1 probability below this (0..1) prints `(unsure)` instead of the label.
    #[arg(long)]
    threshold: Option<f32>,
    /// Exponential moving average of the scores over frames, 0 (off) to <1 (0.8 averages
    /// about the last 5 frames).
    #[arg(long, default_value_t = 0.0)]
    smoothing: f32,
    /// Write annotated frames: a directory (`frame-000000.jpg`, ...) or `-` for an MJPEG
    /// stream on stdout (results then go to stderr).
    #[arg(long)]
    output: Option<String>,
    /// One JSON object per frame instead of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many frames (default: until the source ends).
    #[arg(long)]
    frames: Option<u64>,
    /// The most frames already waiting that are scored in one forward pass. A camera slower
    /// than the model always gives batches of 1 (latency stays one frame); with a folder or
    /// video source, 8 raises ResNet-18 throughput on the CPU (EfficientNet-Lite0 is fastest
    /// at 1).
    #[arg(long, default_value_t = MAX_BATCH)]
    max_batch: usize,
    /// Inference engine: ort (ONNX Runtime, from ORT_DYLIB_PATH, the config file or a
    /// pip-installed onnxruntime), burn (pure Rust), or auto (ort when its library loads).
    #[arg(long, default_value_t = nanoclass::infer::engine::EngineChoice::from_env())]
    engine: nanoclass::infer::engine::EngineChoice,
    /// Model precision on ONNX Runtime: auto (the int8 model `nanoclass quantize` kept, if
    /// any), fp32 or int8.
    #[arg(long, default_value_t = nanoclass::infer::precision::Precision::from_env())]
    precision: nanoclass::infer::precision::Precision,
    /// Answer "unknown" (none of these) for a frame far from every class: the run's rule,
    /// fitted on its held-out images when training ended (`nanoclass calibrate` for an older
    /// run). Serves the fp32 model.
    #[arg(long)]
    unknown: bool,
}

/// Frames the reader thread may decode ahead of the model.
const READ_AHEAD: usize = 8;
/// Default of `--max-batch`: one frame per forward pass, the lowest latency.
const MAX_BATCH: usize = 1;

enum Sink {
    None,
    Dir(PathBuf),
    Stdout,
}

/// Runs `nanoclass live`.
pub fn cmd_live(a: LiveArgs) -> Result<std::process::ExitCode> {
    let opts = LiveOptions {
        score: ScoreOptions {
            top_k: a.top_k.max(1),
            threshold: a.threshold,
            smoothing: a.smoothing,
        },
        engine: a.engine,
        precision: a.precision,
        unknown: a.unknown,
    };
    let mut live = Live::open(&a.run, opts)?;
    let mut source = camera::open(&a.source)?;
    let described = source.describe();
    let sink = match a.output.as_deref() {
        None => Sink::None,
        Some("-") => Sink::Stdout,
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the output folder {}", dir.display()))?;
            Sink::Dir(dir)
        }
    };
    eprintln!(
        "live: {} ({} labels) on {described}",
        a.run.display(),
        live.labels().len()
    );

    // The source decodes on its own thread, READ_AHEAD frames ahead of the model.
    let limit = a.frames.unwrap_or(u64::MAX);
    let (tx, rx) = mpsc::sync_channel::<std::result::Result<Frame, CameraError>>(READ_AHEAD);
    let reader = std::thread::spawn(move || {
        // Read-ahead yields to the model on a busy machine.
        nanoclass::camera::lower_thread_priority(10);
        let mut sent = 0u64;
        while sent < limit {
            let next = source.next_frame();
            let stop = next.is_err();
            if tx.send(next).is_err() || stop {
                break;
            }
            sent += 1;
        }
        source.dropped()
    });

    let mut results: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(std::io::stderr().lock()),
        _ => Box::new(std::io::stdout().lock()),
    };
    let start = Instant::now();
    let (mut frames, mut model_ms, mut preprocess_ms) = (0u64, 0.0f64, 0.0f64);
    let mut failure = None;
    let mut ended = false;
    while !ended {
        // Every frame already waiting goes into one forward pass (up to --max-batch).
        let mut batch: Vec<Frame> = Vec::new();
        let mut next = rx.recv().ok();
        while let Some(item) = next.take() {
            match item {
                Ok(frame) => batch.push(frame),
                Err(CameraError::Ended { .. }) => ended = true,
                Err(e) => {
                    failure = Some(e);
                    ended = true;
                }
            }
            if !ended && batch.len() < a.max_batch.max(1) {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            break;
        }
        let images: Vec<image::RgbImage> = batch.iter().map(|f| f.image.clone()).collect();
        let scored = live.process_batch(&images)?;
        for (frame, r) in batch.into_iter().zip(scored) {
            frames += 1;
            model_ms += r.ms;
            preprocess_ms += r.preprocess_ms;
            let fps = frames as f64 / start.elapsed().as_secs_f64();
            let labels = live.labels();
            // A folder source names the file each frame was read from.
            let file = frame.path.as_ref().map(|p| p.display().to_string());
            let shown = file
                .as_deref()
                .map(|f| format!("{f}  "))
                .unwrap_or_default();
            if a.json {
                let top: Vec<_> = r
                    .scores
                    .top
                    .iter()
                    .map(|&(i, p)| serde_json::json!({"index": i, "label": labels[i], "prob": p}))
                    .collect();
                let points: Option<Vec<_>> = r.points.as_ref().map(|pts| {
                    pts.iter()
                        .zip(labels)
                        .map(|(&[x, y], l)| serde_json::json!({"label": l, "x": x, "y": y}))
                        .collect()
                });
                let line = serde_json::json!({
                    "frame": frame.index,
                    "file": file,
                    "points": points,
                    "timestamp_ms": frame.timestamp.as_secs_f64() * 1000.0,
                    "label": r.label,
                    "unknown": r.scores.unknown,
                    "top": top,
                    "model_ms": r.ms,
                    "preprocess_ms": r.preprocess_ms,
                    "fps": fps,
                });
                writeln!(results, "{line}")?;
            } else if let Some(points) = &r.points {
                let pts = points
                    .iter()
                    .zip(labels)
                    .map(|(&[x, y], l)| format!("{l} ({x:.1}, {y:.1})"))
                    .collect::<Vec<_>>()
                    .join("  ");
                writeln!(results, "{:>6}  {shown}{pts} | {fps:.1} FPS", frame.index)?;
            } else {
                let best = r
                    .scores
                    .top
                    .iter()
                    .map(|&(i, p)| format!("{} {:.3}", labels[i], p))
                    .collect::<Vec<_>>()
                    .join("  ");
                let label = match (&r.label, r.scores.unknown) {
                    (_, true) => "(unknown)",
                    (Some(l), false) => l.as_str(),
                    (None, false) => "(unsure)",
                };
                writeln!(
                    results,
                    "{:>6}  {shown}{label:<16} | {best} | {fps:.1} FPS",
                    frame.index
                )?;
            }
            match &sink {
                Sink::None => {}
                Sink::Dir(dir) => {
                    let img = annotate(&frame.image, &r, labels, Some(fps))?;
                    let path = dir.join(format!("frame-{:06}.jpg", frame.index));
                    nanoclass::fs::write_atomic(&path, &jpeg(&img)?)?;
                }
                Sink::Stdout => {
                    let img = annotate(&frame.image, &r, labels, Some(fps))?;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&jpeg(&img)?)?;
                    out.flush()?;
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let dropped = reader.join().unwrap_or(0);
    drop(results);
    eprintln!(
        "live: {frames} frames in {seconds:.2} s: {:.1} FPS end to end, model {:.1} ms/frame \
         (forward pass), preprocessing {:.1} ms/frame; {dropped} bad frames dropped by the source",
        frames as f64 / seconds.max(1e-9),
        model_ms / frames.max(1) as f64,
        preprocess_ms / frames.max(1) as f64,
    );
    if let Some(e) = failure {
        bail!("{e}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// JPEG at quality 90.
fn jpeg(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(img)
        .context("encoding an annotated frame")?;
    Ok(bytes)
}
