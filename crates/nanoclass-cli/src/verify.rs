//! `nanoclass verify`: runs an export's parity kit (`golden/`) in ONNX Runtime or tract and
//! compares with nanoclass's outputs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use nanoclass::export::verify::{DEFAULT_TOLERANCE, Runtime, verify};

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RuntimeArg {
    /// ONNX Runtime (libonnxruntime: $ORT_DYLIB_PATH, or a pip-installed onnxruntime).
    Onnxruntime,
    /// tract, built into nanoclass.
    Tract,
}

/// Flags of `nanoclass verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The export folder holding golden/ (for Triton: REPO/NAME), or its model file.
    export: PathBuf,
    /// The runtime to run the model in.
    #[arg(long, value_enum, default_value = "onnxruntime")]
    runtime: RuntimeArg,
    /// The largest absolute output difference accepted.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    tolerance: f32,
}

/// Runs `nanoclass verify`: prints the largest difference and any top-1 change; exit code 1
/// beyond tolerance or on a top-1 change.
pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    if a.tolerance.is_nan() || a.tolerance < 0.0 {
        anyhow::bail!("--tolerance must be 0 or more, got {}", a.tolerance);
    }
    let runtime = match a.runtime {
        RuntimeArg::Onnxruntime => Runtime::OnnxRuntime,
        RuntimeArg::Tract => Runtime::Tract,
    };
    let r = verify(&a.export, runtime, a.tolerance)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {}: {} inputs, largest difference {:.3e} (at {}), tolerance {:.1e}, {} top-1 changes",
        r.model.display(),
        r.runtime.name(),
        r.samples,
        r.max_abs_diff,
        r.worst_input,
        r.tolerance,
        r.top1_changes.len()
    )?;
    for c in &r.top1_changes {
        writeln!(
            out,
            "  {}: top-1 {} in nanoclass, {} in {}",
            c.input,
            c.expected,
            c.got,
            r.runtime.name()
        )?;
    }
    if r.passed() {
        writeln!(out, "ok")?;
        return Ok(ExitCode::SUCCESS);
    }
    drop(out);
    eprintln!(
        "error: {} does not reproduce nanoclass's outputs on {}: largest difference {:.3e} > tolerance {:.1e}{}",
        r.model.display(),
        r.runtime.name(),
        r.max_abs_diff,
        r.tolerance,
        if r.top1_changes.is_empty() {
            String::new()
        } else {
            format!(
                ", top-1 changed on {} of {} inputs",
                r.top1_changes.len(),
                r.samples
            )
        }
    );
    Ok(ExitCode::FAILURE)
}
