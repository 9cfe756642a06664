//! `verify`: runs an export's parity kit (`golden/`, see [`super::golden`]) in a target runtime
//! (ONNX Runtime, tract, or a running Triton server over its HTTP API) and compares its outputs
//! with nanoclass's. The export may be a folder, its model file, or a bundle zip
//! ([`super::bundle`]).

use std::path::{Path, PathBuf};

use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor as TractTensor, tract_ndarray,
    tvec,
};

use super::golden::{self, Manifest};
use crate::infer::ort::OrtModel;
use crate::infer::scorer::argmax;
use crate::{Error, Result};

/// The default tolerance on the largest absolute output difference (the one the ONNX export
/// is tested to: tract and ONNX Runtime against burn).
pub const DEFAULT_TOLERANCE: f32 = 1e-4;

/// How long a Triton server may take to answer one request (the first may load the model).
const TRITON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The runtime that runs the exported model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// ONNX Runtime (`libonnxruntime`, found as [`crate::infer::ort::find_ort_library`] says).
    OnnxRuntime,
    /// tract (pure Rust, built in).
    Tract,
    /// A Triton Inference Server serving the exported model, at this base URL
    /// (`http://HOST:8000`): each input goes to `POST URL/v2/models/NAME/infer` (the KServe v2
    /// HTTP/REST protocol), NAME being the `name` of the export's `config.pbtxt`.
    Triton(String),
}

impl Runtime {
    /// The name in reports: `onnxruntime`, `tract`, `triton`.
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::OnnxRuntime => "onnxruntime",
            Runtime::Tract => "tract",
            Runtime::Triton(_) => "triton",
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
    /// The median wall time of one input through the runtime, in milliseconds (for Triton: one
    /// HTTP request and its answer).
    pub median_ms: f64,
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

/// Whether `path` is a zip file (by its first bytes, whatever its name).
fn is_zip(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && magic == *b"PK\x03\x04"
}

/// The folders under `root` (itself included, up to 4 levels down) that hold a parity kit.
fn kits_under(root: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if root.join(golden::DIR).join(golden::MANIFEST).is_file() {
        found.push(root.to_path_buf());
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != golden::DIR))
        .collect();
    dirs.sort();
    for d in dirs {
        kits_under(&d, depth - 1, found);
    }
}

/// Runs every input of the kit of `path` (an export folder, its model file, or a bundle zip
/// holding one export) in `runtime`, one at a time (batch 1), and compares with the expected
/// outputs.
///
/// # Errors
/// No readable `golden/manifest.json` (in a zip: none, or more than one), a kit of a PyTorch
/// state dict (checked in PyTorch, not here), a missing or mis-sized input file, the model does
/// not load or run in the runtime (ONNX Runtime: `libonnxruntime` not found; Triton: the server
/// does not answer or refuses the request), or an output of the wrong width.
pub fn verify(path: &Path, runtime: Runtime, tolerance: f32) -> Result<VerifyReport> {
    if !is_zip(path) {
        return verify_dir(&export_dir(path), None, runtime, tolerance);
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: zip::result::ZipError| Error::Other(format!("{}: {e}", path.display()));
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    archive.extract(tmp.path()).map_err(bad)?;
    let mut kits = Vec::new();
    kits_under(tmp.path(), 4, &mut kits);
    let rel = |p: &Path| p.strip_prefix(tmp.path()).unwrap_or(p).to_path_buf();
    match kits.as_slice() {
        [dir] => verify_dir(dir, Some((path, &rel(dir))), runtime, tolerance),
        [] => Err(Error::Other(format!(
            "{}: no parity kit (golden/manifest.json) in this zip",
            path.display()
        ))),
        many => Err(Error::Other(format!(
            "{}: {} parity kits in this zip ({}); unzip it and verify one folder",
            path.display(),
            many.len(),
            many.iter()
                .map(|d| rel(d).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The model name in `dir/config.pbtxt` (a Triton model folder).
fn triton_model_name(dir: &Path) -> Result<String> {
    let path = dir.join(super::triton::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Other(format!(
            "{}: {e}; --runtime triton-url needs the Triton model folder (REPO/NAME) that \
             `nanoclass export --format triton` wrote",
            path.display()
        ))
    })?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("name:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .find(|n| !n.is_empty())
        .ok_or_else(|| Error::Other(format!("{}: no `name:` field", path.display())))
}

/// One input `x` of shape `[1, 3, s, s]` sent to a Triton server; its `output` row back.
fn triton_infer(
    agent: &ureq::Agent,
    url: &str,
    x: Vec<f32>,
    s: usize,
    output: &str,
) -> Result<Vec<f32>> {
    let body = serde_json::json!({
        "inputs": [{
            "name": super::onnx::INPUT_NAME,
            "shape": [1, 3, s, s],
            "datatype": "FP32",
            "data": x,
        }],
        "outputs": [{ "name": output }],
    });
    let err = |e: String| Error::Other(format!("Triton at {url}: {e}"));
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| err(e.to_string()))?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(err(format!("HTTP {}: {why}", status.as_u16())));
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("answer is not JSON: {e}")))?;
    let out = v["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == output))
        .ok_or_else(|| err(format!("the answer holds no output {output:?}")))?;
    out["data"]
        .as_array()
        .ok_or_else(|| err(format!("output {output:?} has no data")))?
        .iter()
        .map(|d| {
            d.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| err(format!("output {output:?} holds a non-number: {d}")))
        })
        .collect()
}

/// [`verify`] on an export folder; `zip`: the zip it was unpacked from and its path inside,
/// for the report.
fn verify_dir(
    dir: &Path,
    zip: Option<(&Path, &Path)>,
    runtime: Runtime,
    tolerance: f32,
) -> Result<VerifyReport> {
    let manifest: Manifest = golden::read_manifest(dir)?;
    let model = dir.join(&manifest.model);
    let shown = match zip {
        Some((file, inside)) => file.join(inside).join(&manifest.model),
        None => model.clone(),
    };
    if !manifest.model.ends_with(".onnx") {
        return Err(Error::Other(format!(
            "{}: this kit checks a PyTorch state dict, which nanoclass verify does not run (it \
             runs ONNX models); check it in PyTorch as the export's README.txt shows",
            shown.display()
        )));
    }
    let [_, _, s, _] = manifest.input_shape;
    let run: Box<dyn Fn(Vec<f32>) -> Result<Vec<f32>>> = match &runtime {
        Runtime::Triton(base) => {
            let name = triton_model_name(dir)?;
            let url = format!("{}/v2/models/{name}/infer", base.trim_end_matches('/'));
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(TRITON_TIMEOUT))
                .build();
            let agent = ureq::Agent::new_with_config(config);
            let output = manifest.output_name.clone();
            Box::new(move |x: Vec<f32>| triton_infer(&agent, &url, x, s, &output))
        }
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
        model: shown.clone(),
        runtime: runtime.clone(),
        samples: manifest.samples.len(),
        max_abs_diff: 0.0,
        worst_input: String::new(),
        top1_changes: Vec::new(),
        tolerance,
        median_ms: 0.0,
    };
    let mut times = Vec::new();
    for sample in &manifest.samples {
        let x = golden::read_input(dir, &sample.input, manifest.input_shape)?;
        let start = std::time::Instant::now();
        let got = run(x)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if got.len() != sample.expected.len() {
            return Err(Error::Other(format!(
                "{}: {} gives {} outputs for {}, the kit expects {}",
                shown.display(),
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
    times.sort_by(f64::total_cmp);
    report.median_ms = times.get(times.len() / 2).copied().unwrap_or(0.0);
    Ok(report)
}
