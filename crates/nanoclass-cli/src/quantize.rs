//! `nanoclass quantize`: an int8 model of a run for live use, kept only when held-out top-1
//! drops by at most `--max-drop` points.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use nanoclass::infer::quantize::{QuantizeOptions, quantize};

/// Flags of `nanoclass quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Run directory of a classification run.
    run: PathBuf,
    /// Most training images to calibrate the activation ranges on.
    #[arg(long, default_value_t = 200)]
    calibration: usize,
    /// Largest held-out top-1 drop, in percentage points, that keeps the int8 model.
    #[arg(long, default_value_t = 1.0)]
    max_drop: f64,
    /// Python interpreter with ONNX Runtime's quantizer (`pip install onnxruntime`).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Print the record (RUN/quantize.json) as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `nanoclass quantize`.
pub fn run(a: QuantizeArgs) -> Result<ExitCode> {
    let opts = QuantizeOptions {
        calibration: a.calibration.max(1),
        python: a.python,
        max_drop_points: a.max_drop,
    };
    let r = quantize(&a.run, &opts, &mut |line| eprintln!("{line}"))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    }
    let verdict = if r.kept {
        format!(
            "kept {}: int8 {:.4} vs fp32 {:.4} held-out top-1 ({:+.2} points), {:.2} ms vs {:.2} ms \
             per image ({:.2}x)",
            a.run
                .join(nanoclass::infer::precision::INT8_MODEL)
                .display(),
            r.int8_top1,
            r.fp32_top1,
            -r.drop_points,
            r.int8_ms,
            r.fp32_ms,
            r.speedup
        )
    } else {
        format!(
            "refused: int8 held-out top-1 {:.4} is {:.2} points below fp32 {:.4} (at most {} \
             allowed); fp32 stays ({:.2} ms vs {:.2} ms per image, {:.2}x)",
            r.int8_top1,
            r.drop_points,
            r.fp32_top1,
            r.max_drop_points,
            r.int8_ms,
            r.fp32_ms,
            r.speedup
        )
    };
    eprintln!("{verdict}");
    Ok(ExitCode::SUCCESS)
}
