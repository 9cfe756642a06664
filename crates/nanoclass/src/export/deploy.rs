//! Deployment exports: a Triton Inference Server model repository ([`super::triton`]) and a
//! DeepStream `nvinfer` configuration ([`super::deepstream`]), each with the ONNX graph and its
//! parity kit.

use std::path::{Path, PathBuf};

use super::artifact::{Golden, load_run_model, run_err, write_onnx, write_onnx_with};
use super::{deepstream, onnx, triton};
use crate::data::labels::write_labels;
use crate::run::{Run, Task, files};
use crate::{Error, Result};

/// What to write for Triton Inference Server ([`triton`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TritonOptions {
    /// The model repository folder. Default: `RUN/export/triton`.
    pub repo: Option<PathBuf>,
    /// The model name (the folder under the repository). Default: the run folder's name with
    /// every character outside `A-Z a-z 0-9 _ -` replaced by `_`.
    pub name: Option<String>,
    /// `max_batch_size`, at least 1.
    pub max_batch: u32,
    /// Where Triton runs the instances.
    pub kind: triton::InstanceKind,
    /// The ONNX opset, within [`onnx::OPSETS`]; default [`onnx::DEFAULT_OPSET`].
    pub opset: Option<i64>,
}

impl Default for TritonOptions {
    fn default() -> Self {
        TritonOptions {
            repo: None,
            name: None,
            max_batch: triton::DEFAULT_MAX_BATCH,
            kind: triton::InstanceKind::Gpu,
            opset: None,
        }
    }
}

/// What a Triton export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct TritonSummary {
    /// `REPO/NAME`: the model's folder.
    pub model_dir: PathBuf,
    /// `REPO/NAME/config.pbtxt`.
    pub config: PathBuf,
    /// `REPO/NAME/1/model.onnx`.
    pub model: PathBuf,
    /// The configuration written.
    pub triton: triton::TritonConfig,
    /// The parity kit, `REPO/NAME/golden/`.
    pub golden: Golden,
}

/// Exports the run in `run_dir` as a Triton model repository (see [`triton`]): the ONNX graph
/// with probabilities (a softmax appended) for classification, the points for regression.
///
/// # Errors
/// Those of [`export`] for ONNX; an invalid model name or `max_batch` of 0.
pub fn export_triton(run_dir: &Path, opts: &TritonOptions) -> Result<TritonSummary> {
    let opset = onnx::check_opset(opts.opset.unwrap_or(onnx::DEFAULT_OPSET))?;
    let run = Run::open(run_dir)?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => {
            let dir = std::fs::canonicalize(&run.dir).unwrap_or(run.dir.clone());
            triton::sanitize_name(&dir.file_name().unwrap_or_default().to_string_lossy())
        }
    };
    let classify = run.config.task == Task::Classification;
    let config = triton::TritonConfig {
        name: name.clone(),
        max_batch: opts.max_batch,
        kind: opts.kind,
        input_size: run.config.eval_preset.crop,
        outputs: run.config.task.outputs(run.config.labels.len()),
        labels: classify,
    };
    // Checks the name and batch size before anything is written.
    let text = config.to_pbtxt()?;
    let repo = opts
        .repo
        .clone()
        .unwrap_or_else(|| run.dir.join("export").join("triton"));
    let model_dir = repo.join(&name);
    let version = model_dir.join(triton::VERSION);
    std::fs::create_dir_all(&version).map_err(|e| Error::io(&version, e))?;
    crate::fs::clean_stale_temp_files(&version);
    crate::fs::clean_stale_temp_files(&model_dir);
    let (run, net) = load_run_model(run_dir)?;
    let model = version.join(triton::MODEL_FILE);
    let rel = format!("{}/{}", triton::VERSION, triton::MODEL_FILE);
    let (_, golden) = write_onnx(&run, &net, &model, (&model_dir, &rel), classify, opset)?;
    write_labels(&model_dir.join(files::LABELS), &run.config.labels)?;
    let config_path = model_dir.join(triton::CONFIG_FILE);
    crate::fs::write_atomic(&config_path, text.as_bytes())?;
    Ok(TritonSummary {
        model_dir,
        config: config_path,
        model,
        triton: config,
        golden,
    })
}

/// What to write for DeepStream ([`deepstream`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepStreamOptions {
    /// The folder to write into. Default: `RUN/export/deepstream`.
    pub out: Option<PathBuf>,
    /// `classifier-threshold`: the least probability nvinfer reports a class at, in 0..=1.
    pub threshold: f32,
    /// The ONNX opset, within [`onnx::OPSETS`]; default [`onnx::DEFAULT_OPSET`].
    pub opset: Option<i64>,
}

impl Default for DeepStreamOptions {
    fn default() -> Self {
        DeepStreamOptions {
            out: None,
            threshold: 0.5,
            opset: None,
        }
    }
}

/// What a DeepStream export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepStreamSummary {
    /// The nvinfer configuration.
    pub config: PathBuf,
    /// The ONNX model (probabilities; the input scale folded in where needed).
    pub model: PathBuf,
    /// The normalisation nvinfer applies.
    pub input: deepstream::DeepStreamInput,
    /// The parity kit (its inputs as nvinfer computes them).
    pub golden: Golden,
}

/// Exports a classification run for DeepStream's `nvinfer` (see [`deepstream`]): `OUT/model.onnx`
/// (softmax appended), `OUT/labels.txt`, `OUT/labels_deepstream.txt`,
/// `OUT/config_infer_primary.txt` and `OUT/golden/`.
///
/// # Errors
/// A regression run (nvinfer's classifier reads class scores); a label holding `;`; a
/// threshold outside 0..=1; those of [`export`] for ONNX.
pub fn export_deepstream(run_dir: &Path, opts: &DeepStreamOptions) -> Result<DeepStreamSummary> {
    let opset = onnx::check_opset(opts.opset.unwrap_or(onnx::DEFAULT_OPSET))?;
    if !(0.0..=1.0).contains(&opts.threshold) {
        return Err(Error::Other(format!(
            "classifier threshold {} is outside 0..=1",
            opts.threshold
        )));
    }
    let run = Run::open(run_dir)?;
    if run.config.task != Task::Classification {
        return Err(run_err(
            run_dir,
            "is a regression run: nvinfer's classifier reads class scores, not points",
        ));
    }
    let line = deepstream::label_line(&run.config.labels)?;
    let dir = opts
        .out
        .clone()
        .unwrap_or_else(|| run.dir.join("export").join("deepstream"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    crate::fs::clean_stale_temp_files(&dir);
    let (run, net) = load_run_model(run_dir)?;
    let input = deepstream::DeepStreamInput::for_norm(&run.config.eval_preset.norm);
    let model_name = "model.onnx";
    let model = dir.join(model_name);
    let (_, golden) = write_onnx_with(
        &run,
        &net,
        &model,
        (&dir, model_name),
        true,
        opset,
        Some(input),
    )?;
    write_labels(&dir.join(files::LABELS), &run.config.labels)?;
    crate::fs::write_atomic(&dir.join(deepstream::LABEL_FILE), line.as_bytes())?;
    let text = deepstream::config_text(
        &input,
        model_name,
        deepstream::LABEL_FILE,
        run.config.eval_preset.crop,
        opts.threshold,
    );
    let config = dir.join(deepstream::CONFIG_FILE);
    crate::fs::write_atomic(&config, text.as_bytes())?;
    Ok(DeepStreamSummary {
        config,
        model,
        input,
        golden,
    })
}
