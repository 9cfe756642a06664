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
//! Every exported tensor is checked to be finite first: a model holding NaN or infinity is
//! refused, never exported.

pub mod onnx;
pub mod torch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::data::labels::write_labels;
use crate::infer::device::default_device;
use crate::model::weights::{HeadLoad, index_file, load_net, saved_batch_counters};
use crate::model::{Net, batch_counters};
use crate::run::{Run, Task, files};
use crate::{Error, Result};

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
}

fn run_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Run {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens a run and loads its best model in eval mode (BatchNorm running statistics), with the
/// head size stored in the file: `K` logits for classification, `2K` values for regression.
///
/// # Errors
/// The run cannot be opened, has no `model.safetensors`, the file does not load, or the head
/// size disagrees with the run's task and labels.
pub fn load_run_model(run_dir: &Path) -> Result<(Run, Net)> {
    let run = Run::open(run_dir)?;
    let path = run.model_path();
    if !path.exists() {
        return Err(run_err(
            run_dir,
            "no model.safetensors: training did not finish an epoch",
        ));
    }
    let arch = run.config.arch;
    let index = index_file(&path)?;
    let head_key = format!("{}.weight", arch.head_key());
    let outputs = match index.shapes.get(&head_key).map(Vec::as_slice) {
        Some([outputs, _]) => *outputs,
        _ => {
            return Err(Error::Weights {
                path,
                reason: format!("no 2-D head tensor `{head_key}`: not a {arch} model of a run"),
            });
        }
    };
    let want = run.config.task.outputs(run.config.labels.len());
    if outputs != want {
        return Err(Error::Weights {
            path,
            reason: format!(
                "the model has {outputs} outputs but a {} run with {} labels needs {want}",
                run.config.task,
                run.config.labels.len()
            ),
        });
    }
    let device = default_device();
    let labels = run.config.labels.clone();
    let (net, report) = load_net(arch, &path, outputs, Some(&labels), &device)?;
    debug_assert_eq!(report.head, HeadLoad::Loaded);
    Ok((run, net.valid()))
}

/// The metadata stored in an exported model (ONNX `metadata_props`, safetensors
/// `__metadata__`), every value a string:
///
/// | key | value |
/// |---|---|
/// | `producer`, `nanoclass_version` | `nanoclass`, the version of the exporting build |
/// | `task`, `arch` | `classification` or `regression`; `resnet18`, ..., `efficientnet_lite0` |
/// | `labels` | JSON list of the class names, index = output index (regression: point `k` is outputs `2k, 2k + 1`) |
/// | `input_name`, `output_name` | `input_0`, `output_0` |
/// | `input_size` | the square input side in pixels, e.g. `224` |
/// | `input_layout`, `channel_order` | `NCHW`, `RGB` |
/// | `normalization` | `(pixel / 255 - mean) / std` |
/// | `mean`, `std` | JSON lists of 3 numbers (R, G, B), applied to `pixel / 255` |
/// | `resize`, `crop` | the eval preset: shorter side to `resize` (bilinear, aspect kept), centre crop `crop` |
/// | `eval_preset` | the eval preset as stored in the run's `config.json` |
/// | `output` | `logits`, `probabilities` (softmax appended) or `points` |
/// | `head` | `linear` (classification) or `point <layer>` (regression: the point head of [`crate::model::point`] on that layer's stride-8 map; its tensors are `point.conv1.*`, `point.conv2.*`) |
pub fn metadata(run: &Run, softmax: bool) -> BTreeMap<String, String> {
    let c = &run.config;
    let preset = &c.eval_preset;
    let mut m = run.model_metadata();
    let json = |v: &[f32]| serde_json::to_string(v).unwrap_or_default();
    let entries = [
        ("producer", "nanoclass".to_string()),
        ("nanoclass_version", env!("CARGO_PKG_VERSION").to_string()),
        ("task", c.task.name().to_string()),
        ("arch", c.arch.name().to_string()),
        ("input_name", onnx::INPUT_NAME.to_string()),
        ("output_name", onnx::OUTPUT_NAME.to_string()),
        ("input_size", preset.crop.to_string()),
        ("input_layout", "NCHW".to_string()),
        ("channel_order", "RGB".to_string()),
        ("normalization", "(pixel / 255 - mean) / std".to_string()),
        ("mean", json(&preset.norm.mean)),
        ("std", json(&preset.norm.std)),
        ("resize", preset.resize.max(preset.crop).to_string()),
        ("crop", preset.crop.to_string()),
        (
            "head",
            match c.task {
                Task::Classification => "linear".to_string(),
                Task::Regression => format!("point {}", c.arch.point_tap()),
            },
        ),
        (
            "output",
            match (c.task, softmax) {
                (Task::Classification, false) => "logits",
                (Task::Classification, true) => "probabilities",
                _ => "points",
            }
            .to_string(),
        ),
    ];
    for (k, v) in entries {
        m.insert(k.to_string(), v);
    }
    m
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
    let tensors = match opts.format {
        ExportFormat::Onnx => {
            let model = onnx::model_proto(
                &net,
                input_size as usize,
                opts.softmax,
                opset.unwrap_or(onnx::DEFAULT_OPSET),
                &meta,
            )?;
            let count = model.graph.as_ref().map_or(0, |g| g.initializer.len());
            crate::fs::write_atomic(&path, &onnx::encode(&model))?;
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
    })
}
