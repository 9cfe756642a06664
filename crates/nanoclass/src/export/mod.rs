//! Exporting a trained run so that other runtimes predict exactly what nanoclass predicts.
//!
//! Three formats, all read from the run's `model.safetensors` and all written atomically
//! (a temporary file beside the target, then a rename), each with `labels.txt` beside it:
//!
//! - **ONNX** ([`onnx`]): the network as an ONNX graph that nanoclass writes itself. Input
//!   `input_0` `[batch, 3, H, W]` (f32, RGB, normalised like the run's eval preset, `batch`
//!   symbolic, `H = W =` the run's crop size), output `output_0` `[batch, K]`: the logits
//!   (classification, `K` = classes; with `softmax` the probabilities) or the `2K` point
//!   coordinates of a regression run. These are the names jetson-inference's `imagenet` expects.
//!   Labels, normalisation, input size, channel order, the eval resize/crop, task and
//!   architecture go in the model's metadata properties ([`metadata`]).
//! - **PyTorch `.pth`** ([`torch`]): a plain state dict in the zip format of `torch.save`, that
//!   the reference architecture loads with `load_state_dict(sd, strict=True)`: torchvision
//!   `resnet18/34/50(num_classes=K)`, or `EfficientNet.from_name("efficientnet-lite0",
//!   num_classes=K)` of the `efficientnet-lite-pytorch` package.
//! - **safetensors**: the same tensors (PyTorch layout, reference names) as
//!   [`crate::model::weights::save_net`] writes, with the metadata of [`metadata`].
//!
//! For deployment past one machine ([`deploy`]): a Triton Inference Server model repository
//! ([`triton`], [`export_triton`]) and a DeepStream `nvinfer` configuration ([`deepstream`],
//! [`export_deepstream`]). Every ONNX export carries a parity kit, `golden/` ([`golden`]), that
//! [`verify`] runs in ONNX Runtime, tract or a Triton server. [`bundle`] puts an export, its kit
//! and a README in one zip (the studio's download).
//!
//! Every exported tensor is checked to be finite first: a model holding NaN or infinity is
//! refused, never exported.

mod artifact;
pub mod bundle;
pub mod deepstream;
mod deploy;
pub mod golden;
pub mod onnx;
pub mod pbtxt;
pub mod torch;
pub mod triton;
pub mod verify;

pub use artifact::{Golden, load_run_model, metadata};
pub use deploy::{
    DeepStreamOptions, DeepStreamSummary, TritonOptions, TritonSummary, export_deepstream,
    export_triton,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::labels::write_labels;
use crate::model::batch_counters;
use crate::model::weights::saved_batch_counters;
use crate::run::{Run, Task, files};
use crate::{Error, Result};
use artifact::{run_err, write_onnx};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// ONNX graph (`.onnx`).
    Onnx,
    /// PyTorch state dict in `torch.save`'s zip format (`.pth`).
    Pth,
    /// safetensors state dict (`.safetensors`).
    Safetensors,
}

impl ExportFormat {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [ExportFormat; 3] = [
        ExportFormat::Onnx,
        ExportFormat::Pth,
        ExportFormat::Safetensors,
    ];

    /// The name on the command line: `onnx`, `pth`, `safetensors`.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Onnx => "onnx",
            ExportFormat::Pth => "pth",
            ExportFormat::Safetensors => "safetensors",
        }
    }

    /// The file extension, without the dot (equal to [`Self::name`]).
    pub fn extension(self) -> &'static str {
        self.name()
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to export and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The format.
    pub format: ExportFormat,
    /// The model file to write, or an existing folder to write `model.<ext>` into. Default:
    /// `RUN/export/model.<ext>`. A file name must end in the format's extension.
    pub out: Option<PathBuf>,
    /// ONNX only, classification only: append a Softmax over axis 1, so `output_0` holds
    /// probabilities instead of logits.
    pub softmax: bool,
    /// ONNX only: the opset version to declare, within [`onnx::OPSETS`]; default
    /// [`onnx::DEFAULT_OPSET`].
    pub opset: Option<i64>,
}

impl ExportOptions {
    /// Options for `format` with every default: the default path, logits, the default opset.
    pub fn new(format: ExportFormat) -> Self {
        ExportOptions {
            format,
            out: None,
            softmax: false,
            opset: None,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The format written.
    pub format: ExportFormat,
    /// The model file.
    pub model: PathBuf,
    /// `labels.txt` beside it.
    pub labels: PathBuf,
    /// Size of the model file in bytes.
    pub bytes: u64,
    /// Width `K` of the output (`[batch, K]`): classes, or `2 x` points for regression.
    pub outputs: usize,
    /// Side of the square input in pixels (the run's eval crop).
    pub input_size: u32,
    /// Number of tensors written (ONNX: initializers after BatchNorm folding; state dicts: every
    /// entry, `num_batches_tracked` included for `.pth`).
    pub tensors: usize,
    /// The ONNX opset declared (ONNX only).
    pub opset: Option<i64>,
    /// The parity kit (ONNX only).
    pub golden: Golden,
}

/// Where the model file goes: `out` as given (a file path ending in the format's extension, or
/// an existing folder that gets `model.<ext>`), else `RUN/export/model.<ext>`.
fn target_path(run: &Run, opts: &ExportOptions) -> Result<PathBuf> {
    let ext = opts.format.extension();
    let default_name = format!("model.{ext}");
    let path = match &opts.out {
        None => run.dir.join("export").join(default_name),
        Some(p) if p.is_dir() => p.join(default_name),
        Some(p) => {
            let ok = p
                .extension()
                .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext));
            if !ok {
                return Err(Error::Other(format!(
                    "{}: an {} export is written to a file ending in .{ext} (or into an existing folder)",
                    p.display(),
                    opts.format
                )));
            }
            p.clone()
        }
    };
    // The run's own model files are never replaced by an export.
    let protected = [files::MODEL, files::LAST];
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let same_dir = std::fs::canonicalize(parent).ok() == std::fs::canonicalize(&run.dir).ok();
        if same_dir && protected.iter().any(|p| name == *p) {
            return Err(Error::Other(format!(
                "{}: this is the run's own model file; export to another path",
                path.display()
            )));
        }
    }
    Ok(path)
}

/// Exports the best model of the run in `run_dir` (see the module docs).
///
/// # Errors
/// - the run cannot be opened or its model does not load ([`load_run_model`]);
/// - `softmax` for a regression run or for a state-dict format; `opset` for a state-dict
///   format or outside [`onnx::OPSETS`];
/// - `out` names a file without the format's extension, or the run's own model file;
/// - a tensor of the model is NaN or infinite;
/// - writing fails (nothing is left half-written: each file is renamed into place whole).
pub fn export(run_dir: &Path, opts: &ExportOptions) -> Result<ExportSummary> {
    if opts.format != ExportFormat::Onnx {
        if opts.softmax {
            return Err(Error::Other(format!(
                "--softmax applies to ONNX only; a {} file holds the weights, not the graph",
                opts.format
            )));
        }
        if let Some(opset) = opts.opset {
            return Err(Error::Other(format!(
                "--opset {opset} applies to ONNX only, not to {}",
                opts.format
            )));
        }
    }
    let opset = match opts.format {
        ExportFormat::Onnx => Some(onnx::check_opset(
            opts.opset.unwrap_or(onnx::DEFAULT_OPSET),
        )?),
        _ => None,
    };
    let run = Run::open(run_dir)?;
    if opts.softmax && run.config.task != Task::Classification {
        return Err(run_err(
            run_dir,
            format!(
                "is a {} run: its outputs are point coordinates, so --softmax does not apply",
                run.config.task
            ),
        ));
    }
    let path = target_path(&run, opts)?;
    let (run, net) = load_run_model(run_dir)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // What a killed earlier run left half-written there.
    crate::fs::clean_stale_temp_files(&dir);
    let meta = metadata(&run, opts.softmax);
    let input_size = run.config.eval_preset.crop;
    let mut kit = Golden::NotApplicable;
    let tensors = match opts.format {
        ExportFormat::Onnx => {
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let (count, g) = write_onnx(
                &run,
                &net,
                &path,
                (&dir, &name),
                opts.softmax,
                opset.unwrap_or(onnx::DEFAULT_OPSET),
            )?;
            kit = g;
            count
        }
        ExportFormat::Pth => {
            let counters = saved_batch_counters(&run.model_path(), &net)?;
            let (_scratch, file) = torch::save_to_scratch(&net, &dir, &BTreeMap::new())?;
            let state = torch::read_state_dict(&file, Some(&counters))?;
            torch::write_pth(&path, &state)?;
            state.len()
        }
        ExportFormat::Safetensors => {
            let mut meta = meta.clone();
            let counters = saved_batch_counters(&run.model_path(), &net)?;
            meta.insert(batch_counters::METADATA_KEY.into(), counters.to_metadata());
            let (_scratch, file) = torch::save_to_scratch(&net, &dir, &meta)?;
            // Read back to refuse NaN or infinity, like the other formats.
            let state = torch::read_state_dict(&file, None)?;
            std::fs::rename(&file, &path).map_err(|e| Error::io(&path, e))?;
            state.len()
        }
    };
    let labels = dir.join(files::LABELS);
    write_labels(&labels, &run.config.labels)?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    Ok(ExportSummary {
        format: opts.format,
        model: path,
        labels,
        bytes,
        outputs: net.num_outputs(),
        input_size,
        tensors,
        opset,
        golden: kit,
    })
}
