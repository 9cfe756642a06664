//! `nanoclass export`: a run's model as ONNX, PyTorch `.pth` or safetensors, or as a Triton
//! model repository.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use nanoclass::export::triton::InstanceKind;
use nanoclass::export::{
    DeepStreamOptions, ExportFormat, ExportOptions, Golden, TritonOptions, export,
    export_deepstream, export_triton, onnx,
};

#[derive(Copy, Clone, Debug, ValueEnum)]
enum FormatArg {
    /// ONNX graph: input `input_0` [batch, 3, S, S], output `output_0` [batch, K].
    Onnx,
    /// PyTorch state dict (torch.save zip) for the reference architecture.
    Pth,
    /// safetensors state dict (PyTorch layout, reference names).
    Safetensors,
    /// Triton Inference Server model repository: REPO/NAME/{config.pbtxt, labels.txt,
    /// 1/model.onnx} (probabilities for classification, points for regression).
    Triton,
    /// DeepStream nvinfer: OUT/{config_infer_primary.txt, model.onnx, labels.txt,
    /// labels_deepstream.txt} (classification; probabilities).
    Deepstream,
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
    /// labels.txt is written beside it. Default: RUN/export/model.<format>. Triton: the model
    /// repository folder (default RUN/export/triton).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Triton: the model name, the folder under the repository (letters, digits, _ - .).
    /// Default: the run folder's name.
    #[arg(long)]
    name: Option<String>,
    /// Triton: max_batch_size, the largest batch Triton's dynamic batcher forms. Default: 8.
    #[arg(long)]
    max_batch: Option<u32>,
    /// Triton: run the model's instance on the GPU (the default).
    #[arg(long, conflicts_with = "cpu")]
    gpu: bool,
    /// Triton: run the model's instance on the CPU.
    #[arg(long)]
    cpu: bool,
    /// DeepStream: classifier-threshold, the least probability nvinfer reports a class at.
    /// Default: 0.5.
    #[arg(long)]
    threshold: Option<f32>,
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
    let deploy_only = [
        (a.name.is_some(), "--name", "triton"),
        (a.gpu, "--gpu", "triton"),
        (a.cpu, "--cpu", "triton"),
        (a.max_batch.is_some(), "--max-batch", "triton"),
        (a.threshold.is_some(), "--threshold", "deepstream"),
    ];
    let format = match a.format {
        FormatArg::Onnx => ExportFormat::Onnx,
        FormatArg::Pth => ExportFormat::Pth,
        FormatArg::Safetensors => ExportFormat::Safetensors,
        FormatArg::Triton => return run_triton(a),
        FormatArg::Deepstream => return run_deepstream(a),
    };
    if let Some((_, flag, only)) = deploy_only.iter().find(|(set, ..)| *set) {
        anyhow::bail!("{flag} applies to --format {only} only");
    }
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
    print_golden(&mut out, &s.golden, s.model.parent())?;
    Ok(ExitCode::SUCCESS)
}

fn print_golden(
    out: &mut impl Write,
    golden: &Golden,
    dir: Option<&std::path::Path>,
) -> Result<()> {
    let dir = dir.unwrap_or(std::path::Path::new("."));
    match golden {
        Golden::Written(n) => writeln!(
            out,
            "wrote {} ({n} held-out images and their expected outputs; check with `nanoclass verify {}`)",
            dir.join(nanoclass::export::golden::DIR).display(),
            dir.display()
        )?,
        Golden::Skipped(why) => writeln!(out, "parity kit not written: {why}")?,
        Golden::NotApplicable => {}
    }
    Ok(())
}

fn run_deepstream(a: ExportArgs) -> Result<ExitCode> {
    let flags = [
        (a.name.is_some(), "--name"),
        (a.gpu, "--gpu"),
        (a.cpu, "--cpu"),
        (a.max_batch.is_some(), "--max-batch"),
        (a.softmax, "--softmax"),
    ];
    if let Some((_, flag)) = flags.iter().find(|(set, _)| *set) {
        anyhow::bail!(
            "{flag} does not apply to --format deepstream (its model always outputs probabilities)"
        );
    }
    let opts = DeepStreamOptions {
        out: a.out,
        threshold: a
            .threshold
            .unwrap_or(DeepStreamOptions::default().threshold),
        opset: a.opset,
    };
    let s = export_deepstream(&a.run, &opts)?;
    let mut out = std::io::stdout().lock();
    let i = &s.input;
    writeln!(
        out,
        "wrote {}: net-scale-factor {}, offsets {:?}{}",
        s.config.display(),
        i.scale,
        i.offsets,
        if i.fold.is_some() {
            " (1/std folded into the first convolution of the model)"
        } else {
            ""
        }
    )?;
    writeln!(out, "wrote {}", s.model.display())?;
    print_golden(&mut out, &s.golden, s.model.parent())?;
    Ok(ExitCode::SUCCESS)
}

fn run_triton(a: ExportArgs) -> Result<ExitCode> {
    if a.threshold.is_some() {
        anyhow::bail!("--threshold applies to --format deepstream only");
    }
    if a.softmax {
        anyhow::bail!(
            "--softmax is implied by --format triton for classification (the output holds probabilities)"
        );
    }
    let opts = TritonOptions {
        repo: a.out,
        name: a.name,
        max_batch: a
            .max_batch
            .unwrap_or(nanoclass::export::triton::DEFAULT_MAX_BATCH),
        kind: if a.cpu {
            InstanceKind::Cpu
        } else {
            InstanceKind::Gpu
        },
        opset: a.opset,
    };
    let s = export_triton(&a.run, &opts)?;
    let mut out = std::io::stdout().lock();
    let t = &s.triton;
    writeln!(
        out,
        "wrote Triton model `{}`: {} (onnxruntime_onnx, max_batch_size {}, {}, {} [3, {n}, {n}] -> {} [{}]{})",
        t.name,
        s.model_dir.display(),
        t.max_batch,
        t.kind.name(),
        onnx::INPUT_NAME,
        onnx::OUTPUT_NAME,
        t.outputs,
        if t.labels {
            " probabilities, labels.txt"
        } else {
            " points"
        },
        n = t.input_size,
    )?;
    writeln!(out, "wrote {}", s.config.display())?;
    writeln!(out, "wrote {}", s.model.display())?;
    print_golden(&mut out, &s.golden, Some(&s.model_dir))?;
    Ok(ExitCode::SUCCESS)
}
