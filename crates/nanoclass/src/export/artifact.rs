//! What every graph export shares: loading a run's model, the metadata stored in an exported
//! model, and writing the ONNX graph with its parity kit ([`super::golden`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;

use super::{deepstream, golden, onnx};
use crate::infer::device::default_device;
use crate::model::Net;
use crate::model::weights::{HeadLoad, index_file, load_net};
use crate::run::{Run, Task};
use crate::{Error, Result};

/// The parity kit of an export ([`golden`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Golden {
    /// `golden/` written, with this many inputs.
    Written(usize),
    /// Not written, for this reason (the run's dataset is gone or unreadable); the model was
    /// exported all the same.
    Skipped(String),
    /// The format holds weights, not a graph that a runtime could check.
    NotApplicable,
}

pub(super) fn run_err(dir: &Path, reason: impl Into<String>) -> Error {
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
/// | `temperature` | classification runs calibrated when training ended ([`crate::infer::calibration`]): `T` of `softmax(logits / T)` |
/// | `unknown_rule` | with a calibration's unknown rule: JSON `{"distance": ..., "threshold": t, "prototypes": [[...]]}`; an image is "unknown" when `1 - max_c cos(f, p_c) > t`, `f` the `[C]` features the head reads (its input) |
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
    if c.task == Task::Classification
        && let Some(cal) = crate::infer::calibration::Calibration::load(run)
    {
        m.insert(
            "temperature".into(),
            cal.temperature.temperature.to_string(),
        );
        if let Some(u) = &cal.unknown {
            let rule = serde_json::json!({
                "distance": "1 - max_c cos(f, p_c), f = the features the head reads",
                "threshold": u.threshold,
                "prototypes": u.prototypes,
            });
            m.insert("unknown_rule".into(), rule.to_string());
        }
    }
    m
}

/// Writes the ONNX graph of `net` to `path` and the parity kit beside it in `kit_dir`
/// (`model_rel` the model's path relative to `kit_dir`). Returns the initializer count and
/// the kit's state.
pub(super) fn write_onnx(
    run: &Run,
    net: &Net,
    path: &Path,
    kit: (&Path, &str),
    softmax: bool,
    opset: i64,
) -> Result<(usize, Golden)> {
    write_onnx_with(run, net, path, kit, softmax, opset, None)
}

/// [`write_onnx`], for DeepStream's input ([`deepstream`]) when `ds` is given: the input scale
/// folded into the first convolution where needed, the kit's inputs as nvinfer computes them.
pub(super) fn write_onnx_with(
    run: &Run,
    net: &Net,
    path: &Path,
    kit: (&Path, &str),
    softmax: bool,
    opset: i64,
    ds: Option<deepstream::DeepStreamInput>,
) -> Result<(usize, Golden)> {
    let mut meta = metadata(run, softmax);
    let preset = run.config.eval_preset;
    if let Some(d) = &ds {
        meta.insert(
            "normalization".into(),
            format!(
                "net-scale-factor * (pixel - offsets), net-scale-factor {}, offsets {:?}{}",
                d.scale,
                d.offsets,
                if d.fold.is_some() {
                    "; 1/std folded into the first convolution"
                } else {
                    ""
                }
            ),
        );
    }
    let mut model = onnx::model_proto(net, preset.crop as usize, softmax, opset, &meta)?;
    if let Some(factors) = ds.and_then(|d| d.fold) {
        deepstream::fold_input_scale(&mut model, onnx::INPUT_NAME, factors)?;
    }
    let count = model.graph.as_ref().map_or(0, |g| g.initializer.len());
    crate::fs::write_atomic(path, &onnx::encode(&model))?;
    let output = meta.get("output").map_or("logits", String::as_str);
    let to_input = ds.map(|d| move |img: &image::RgbImage| d.apply(&preset.view(img)));
    let to_input = to_input.as_ref().map(|f| f as golden::ModelInput<'_>);
    let golden = match golden::write_golden(run, net, kit.0, kit.1, softmax, output, to_input) {
        Ok(n) => Golden::Written(n),
        Err(e) => Golden::Skipped(e.to_string()),
    };
    Ok((count, golden))
}
