//! `nanoclass export`: a run's model as ONNX, PyTorch `.pth` or safetensors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use nanoclass::export::{ExportFormat, ExportOptions, export, onnx};

#[derive(Copy, Clone, Debug, ValueEnum)]
enum FormatArg {
    /// ONNX graph: input `input_0` [batch, 3, S, S], output `output_0` [batch, K].
    Onnx,
    /// PyTorch state dict (torch.save zip) for the reference architecture.
    Pth,
    /// safetensors state dict (PyTorch layout, reference names).
    Safetensors,
}

/// Flags of `nanoclass export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directory written by `nanoclass train`.
    run: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The model file to write (ending in .onnx / .pth / .safetensors), or an existing folder.
    /// labels.txt is written beside it. Default: RUN/export/model.<format>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// ONNX, classification only: append Softmax over the classes, so output_0 holds
    /// probabilities instead of logits.
    #[arg(long)]
    softmax: bool,
    /// ONNX only: the opset to declare (13 to 21; 13 for older TensorRT such as JetPack 4).
    /// Default: 17.
    #[arg(long)]
    opset: Option<i64>,
}

/// Runs `nanoclass export`: writes the model and labels.txt, prints what was written.
pub fn run(a: ExportArgs) -> Result<ExitCode> {
    let format = match a.format {
        FormatArg::Onnx => ExportFormat::Onnx,
        FormatArg::Pth => ExportFormat::Pth,
        FormatArg::Safetensors => ExportFormat::Safetensors,
    };
    let opts = ExportOptions {
        format,
        out: a.out,
        softmax: a.softmax,
        opset: a.opset,
    };
    let s = export(&a.run, &opts)?;
    let mut out = std::io::stdout().lock();
    let what = match s.opset {
        Some(opset) => format!(
            "ONNX opset {opset}: {} [batch, 3, {n}, {n}] -> {} [batch, {}]{}",
            onnx::INPUT_NAME,
            onnx::OUTPUT_NAME,
            s.outputs,
            if opts.softmax { " (softmax)" } else { "" },
            n = s.input_size,
        ),
        None => format!(
            "{} state dict, {} tensors, input [batch, 3, {n}, {n}], {} outputs",
            s.format,
            s.tensors,
            s.outputs,
            n = s.input_size
        ),
    };
    writeln!(
        out,
        "wrote {} ({:.1} MB): {what}",
        s.model.display(),
        s.bytes as f64 / 1e6
    )?;
    writeln!(out, "wrote {}", s.labels.display())?;
    Ok(ExitCode::SUCCESS)
}
