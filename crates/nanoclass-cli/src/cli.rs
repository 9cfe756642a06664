//! The command line: the subcommands and where each is run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Train(crate::train::TrainArgs),
    /// Held-out top-1, per-class precision/recall/F1 and the confusion matrix of a run; for a
    /// regression run, the mean and 90th-percentile point error per category and points.png.
    Eval(crate::eval::EvalArgs),
    /// Classify image files or folders with a run's model; for a regression run, print each
    /// category's point in pixels of each image.
    Predict(crate::predict::PredictArgs),
    /// Fit a classification run's calibration on its held-out images: the temperature of its
    /// probabilities and the threshold of its "unknown" answer (training does this when it
    /// ends; calibration.json in the run).
    Calibrate(crate::calibrate::CalibrateArgs),
    /// Pretrained weights: list the registry, download, or add a file you have.
    #[command(subcommand)]
    Weights(crate::weights::WeightsCommand),
    /// Export a run's model as ONNX (input_0 / output_0, labels.txt beside it, as
    /// jetson-inference's imagenet reads), a PyTorch .pth state dict, safetensors, a Triton
    /// model repository or a DeepStream nvinfer config; ONNX exports carry a parity kit
    /// (golden/) for `nanoclass verify`.
    Export(crate::export::ExportArgs),
    /// Run an export's parity kit (golden/: held-out images and nanoclass's outputs) in ONNX
    /// Runtime, tract or a running Triton server; exit code 1 when an output differs beyond
    /// tolerance or top-1 changes.
    Verify(crate::verify::VerifyArgs),
    /// Quantize a classification run to int8 (ONNX Runtime's static quantizer, calibrated on
    /// the run's training images) and keep it only when held-out top-1 drops by at most 1
    /// point; predict, eval and live then use it on ONNX Runtime.
    Quantize(crate::quantize::QuantizeArgs),
    /// Serve the studio web page: collect images per category from a camera or uploads,
    /// train, and watch live scores (docs/studio.md).
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
        arch: crate::train::ArchArg,
        /// Timed repetitions per measurement.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Batch size of the two training-step rows (the forward rows use 1 and 16).
        #[arg(long, default_value_t = 16)]
        train_batch: usize,
        /// Only the training-step rows.
        #[arg(long)]
        train_only: bool,
        /// Where burn runs: cpu, or a GPU (wgpu, cuda) in a build with that feature. The ONNX
        /// Runtime rows are measured on the CPU only.
        #[arg(long, default_value_t = nanoclass::infer::device::DeviceChoice::from_env())]
        device: nanoclass::infer::device::DeviceChoice,
        /// Float type of the full training step: fp32, or mixed precision fp16 / bf16 as
        /// `train --precision` runs it.
        #[arg(long, default_value = "fp32")]
        precision: nanoclass::train::precision::TrainPrecision,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => crate::train::cmd_train(a),
        Command::Eval(a) => crate::eval::cmd_eval(a),
        Command::Predict(a) => crate::predict::cmd_predict(a),
        Command::Calibrate(a) => crate::calibrate::run(a),
        Command::Weights(w) => crate::weights::cmd_weights(w),
        Command::Export(a) => crate::export::run(a),
        Command::Verify(a) => crate::verify::run(a),
        Command::Quantize(a) => crate::quantize::run(a),
        Command::Studio(a) => crate::studio::run(a),
        Command::Capture(a) => crate::capture::run(a),
        Command::Live(a) => crate::live::cmd_live(a),
        Command::Bench {
            arch,
            runs,
            train_batch,
            train_only,
            device,
            precision,
        } => {
            let r = nanoclass::bench::run(
                arch.into(),
                2,
                runs,
                train_batch.max(2),
                train_only,
                device,
                precision,
            )?;
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string(&r)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
