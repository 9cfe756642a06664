//! `verify`: runs an export's parity kit (`golden/`, see [`super::golden`]) in a target runtime
//! and compares its outputs with nanoclass's.

use std::path::{Path, PathBuf};

use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor as TractTensor, tract_ndarray,
    tvec,
};

use super::golden::{self, Manifest};
use crate::infer::ort::OrtModel;
use crate::{Error, Result};

/// The default tolerance on the largest absolute output difference (the one the ONNX export
/// is tested to: tract and ONNX Runtime against burn).
pub const DEFAULT_TOLERANCE: f32 = 1e-4;

/// The runtime that runs the exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// ONNX Runtime (`libonnxruntime`, found as [`crate::infer::ort::find_ort_library`] says).
    OnnxRuntime,
    /// tract (pure Rust, built in).
    Tract,
}

impl Runtime {
    /// The name on the command line: `onnxruntime`, `tract`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::OnnxRuntime => "onnxruntime",
            Runtime::Tract => "tract",
        }
    }
}

/// One input whose top-1 class differs from nanoclass's.
#[derive(Debug, Clone, PartialEq)]
pub struct Top1Change {
    /// The input file in `golden/`.
    pub input: String,
    /// nanoclass's top-1 label.
    pub expected: String,
    /// The runtime's top-1 label.
    pub got: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// The model file run.
    pub model: PathBuf,
    /// The runtime.
    pub runtime: Runtime,
    /// Inputs compared.
    pub samples: usize,
    /// The largest absolute difference over every output value.
    pub max_abs_diff: f32,
    /// The input where it occurred.
    pub worst_input: String,
    /// Inputs whose top-1 class changed (classification only).
    pub top1_changes: Vec<Top1Change>,
    /// The tolerance applied.
    pub tolerance: f32,
}

impl VerifyReport {
    /// Within tolerance and no top-1 change. A NaN difference never passes.
    pub fn passed(&self) -> bool {
        !self.max_abs_diff.is_nan()
            && self.max_abs_diff <= self.tolerance
            && self.top1_changes.is_empty()
    }
}

/// The folder holding `golden/`: `path` itself, or the folder of a model file given instead.
fn export_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    } else {
        path.to_path_buf()
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Runs every input of the kit of `path` (an export folder, or its model file) in `runtime`,
/// one at a time (batch 1), and compares with the expected outputs.
///
/// # Errors
/// No readable `golden/manifest.json`, a missing or mis-sized input file, the model does not
/// load or run in the runtime (ONNX Runtime: `libonnxruntime` not found), or an output of the
/// wrong width.
pub fn verify(path: &Path, runtime: Runtime, tolerance: f32) -> Result<VerifyReport> {
    let dir = export_dir(path);
    let manifest: Manifest = golden::read_manifest(&dir)?;
    let model = dir.join(&manifest.model);
    let [_, _, s, _] = manifest.input_shape;
    let run: Box<dyn Fn(Vec<f32>) -> Result<Vec<f32>>> = match runtime {
        Runtime::Tract => {
            let plan = tract_onnx::onnx()
                .model_for_path(&model)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(|e| Error::Other(format!("{}: tract: {e}", model.display())))?;
            let model = model.clone();
            Box::new(move |x: Vec<f32>| {
                let t: TractTensor = tract_ndarray::Array4::from_shape_vec((1, 3, s, s), x)
                    .map_err(|e| Error::Other(format!("input tensor: {e}")))?
                    .into();
                let out = plan
                    .run(tvec!(t.into_tvalue()))
                    .map_err(|e| Error::Other(format!("{}: tract: {e}", model.display())))?;
                let view = out[0]
                    .to_plain_array_view::<f32>()
                    .map_err(|e| Error::Other(format!("{}: tract: {e}", model.display())))?;
                Ok(view.iter().copied().collect())
            })
        }
        Runtime::OnnxRuntime => {
            let m = OrtModel::open(&model)?;
            Box::new(move |x: Vec<f32>| Ok(m.run(x, 1, s)?.0))
        }
    };
    let classify = manifest.output != "points";
    let label = |i: usize| manifest.labels.get(i).cloned().unwrap_or(i.to_string());
    let mut report = VerifyReport {
        model: model.clone(),
        runtime,
        samples: manifest.samples.len(),
        max_abs_diff: 0.0,
        worst_input: String::new(),
        top1_changes: Vec::new(),
        tolerance,
    };
    for sample in &manifest.samples {
        let x = golden::read_input(&dir, &sample.input, manifest.input_shape)?;
        let got = run(x)?;
        if got.len() != sample.expected.len() {
            return Err(Error::Other(format!(
                "{}: {} gives {} outputs for {}, the kit expects {}",
                model.display(),
                runtime.name(),
                got.len(),
                sample.input,
                sample.expected.len()
            )));
        }
        for (a, b) in got.iter().zip(&sample.expected) {
            let d = (a - b).abs();
            // A NaN output is the worst difference there is.
            if d.is_nan() || d > report.max_abs_diff || report.worst_input.is_empty() {
                report.max_abs_diff = d;
                report.worst_input = sample.input.clone();
            }
        }
        if classify {
            let (want, have) = (argmax(&sample.expected), argmax(&got));
            if want != have {
                report.top1_changes.push(Top1Change {
                    input: sample.input.clone(),
                    expected: label(want),
                    got: label(have),
                });
            }
        }
    }
    Ok(report)
}
