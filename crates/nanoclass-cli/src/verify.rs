//! `nanoclass verify`: runs an export's parity kit (`golden/`) in ONNX Runtime, tract or a
//! running Triton server and compares with nanoclass's outputs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use nanoclass::export::verify::{DEFAULT_TOLERANCE, Runtime, verify};

/// Flags of `nanoclass verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The export folder holding golden/ (for Triton: REPO/NAME), its model file, or the zip
    /// the studio's Download button gives.
    export: PathBuf,
    /// The runtime to run the model in: `onnxruntime` (libonnxruntime: $ORT_DYLIB_PATH, or a
    /// pip-installed onnxruntime), `tract` (built in), or `triton-url URL`: a Triton server
    /// serving the export at URL (e.g. http://localhost:8000, its HTTP port).
    #[arg(long, num_args = 1..=2, value_names = ["RUNTIME", "URL"], default_value = "onnxruntime")]
    runtime: Vec<String>,
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
    let runtime = match a.runtime.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["onnxruntime"] => Runtime::OnnxRuntime,
        ["tract"] => Runtime::Tract,
        ["triton-url", url] if url.starts_with("http://") || url.starts_with("https://") => {
            Runtime::Triton(url.to_string())
        }
        ["triton-url", url] => {
            anyhow::bail!("--runtime triton-url takes the server's http:// URL, got {url:?}")
        }
        ["triton-url"] => anyhow::bail!(
            "--runtime triton-url needs the server's URL: --runtime triton-url http://HOST:8000"
        ),
        [name, ..] if matches!(name, "onnxruntime" | "tract") => {
            anyhow::bail!("--runtime {name} takes no URL")
        }
        [name, ..] => {
            anyhow::bail!("unknown --runtime {name:?}: onnxruntime, tract, or triton-url URL")
        }
        [] => Runtime::OnnxRuntime,
    };
    let r = verify(&a.export, runtime, a.tolerance)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} on {}: {} inputs, largest difference {:.3e} (at {}), tolerance {:.1e}, {} top-1 changes, {:.1} ms per input (median)",
        r.model.display(),
        r.runtime.name(),
        r.samples,
        r.max_abs_diff,
        r.worst_input,
        r.tolerance,
        r.top1_changes.len(),
        r.median_ms
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
