//! The parity kit written with every ONNX export: `golden/`, a few of the run's own held-out
//! images as the exact input tensors of the model and nanoclass's outputs for them, so that the
//! model can be checked on the target runtime ([`super::verify`], or ten lines of Python).
//!
//! Layout of `golden/`:
//! - `<i>.bin`: input `i`, `[1, 3, S, S]` f32, little-endian, C order (NCHW), RGB, normalised
//!   by the run's eval preset, no header (`S * S * 12` bytes; numpy:
//!   `np.fromfile(p, "<f4").reshape(1, 3, S, S)`);
//! - `manifest.json` ([`Manifest`]): the model file, input/output names and shapes, and per
//!   input its source image, label and expected output row.
//!
//! The images: the held-out files of the run's generated split, else its dataset's `val/`
//! folder, else (a run without validation) its training images; up to [`MAX_SAMPLES`], taken in
//! turn from each class so that several classes are covered. The expected outputs are burn's,
//! the engine nanoclass trained with.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::decode::{DecodeOptions, decode_file};
use crate::data::folder::{Sample, scan_image_folder, scan_regression_folder};
use crate::infer::device::default_device;
use crate::infer::engine::{Engine, Graph};
use crate::model::Net;
use crate::run::{Run, SplitRecord, Task};
use crate::{Error, Result};

/// The kit's folder name, beside the model (Triton: beside `config.pbtxt`).
pub const DIR: &str = "golden";
/// The manifest's file name inside [`DIR`].
pub const MANIFEST: &str = "manifest.json";
/// The most images a kit holds.
pub const MAX_SAMPLES: usize = 4;
/// The input encoding, as stated in the manifest.
pub const ENCODING: &str = "f32 little-endian, C order, no header";

/// The model file's input `[3, S, S]` for a decoded image, where it is not the eval preset's.
pub type ModelInput<'a> = &'a dyn Fn(&image::RgbImage) -> Vec<f32>;

/// `golden/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model file, relative to the export folder (the folder holding `golden/`).
    pub model: String,
    /// The run's architecture (`resnet18`, `efficientnet_lite0`, ...): what a `.pth` kit's
    /// state dict loads into. Empty in kits of earlier versions.
    #[serde(default)]
    pub arch: String,
    /// The ONNX input name (`input_0`).
    pub input_name: String,
    /// The ONNX output name (`output_0`).
    pub output_name: String,
    /// `[1, 3, S, S]`.
    pub input_shape: [usize; 4],
    /// [`ENCODING`].
    pub encoding: String,
    /// `logits`, `probabilities` or `points` (see [`super::metadata`]).
    pub output: String,
    /// The run's labels, index = output index (regression: point `k` is outputs `2k, 2k + 1`).
    pub labels: Vec<String>,
    /// One entry per input file.
    pub samples: Vec<GoldenSample>,
}

/// One input of the kit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenSample {
    /// The input tensor file, relative to `golden/`.
    pub input: String,
    /// The image it was made from, as recorded in the dataset.
    pub source: PathBuf,
    /// The image's label (its class or regression category).
    pub label: String,
    /// nanoclass's output row for it (width `K`, or `2K` for regression).
    pub expected: Vec<f32>,
}

/// Where the held-out images come from, and the images.
fn pick_images(run: &Run) -> Result<(Vec<Sample>, Vec<String>)> {
    let data = &run.config.data;
    let ds = match run.config.task {
        Task::Classification => scan_image_folder(data)?,
        Task::Regression => scan_regression_folder(data)?,
    };
    let samples = match (&ds.val, &run.config.split) {
        (Some(v), _) if !v.is_empty() => v.clone(),
        (_, SplitRecord::Generated { val_files, .. }) => {
            let held: std::collections::HashSet<PathBuf> =
                val_files.iter().map(|p| ds.root.join(p)).collect();
            ds.train
                .iter()
                .filter(|s| held.contains(&s.path))
                .cloned()
                .collect()
        }
        _ => ds.train.clone(),
    };
    // In turn from each class: the first of each, then the second of each, ...
    let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); ds.classes.len()];
    for s in samples {
        if let Some(v) = by_class.get_mut(s.label) {
            v.push(s);
        }
    }
    let mut picked = Vec::new();
    let mut round = 0;
    while picked.len() < MAX_SAMPLES && by_class.iter().any(|v| v.len() > round) {
        for v in &by_class {
            if let Some(s) = v.get(round).filter(|_| picked.len() < MAX_SAMPLES) {
                picked.push(s.clone());
            }
        }
        round += 1;
    }
    if picked.is_empty() {
        return Err(Error::Dataset {
            path: data.clone(),
            reason: "no image to put in the parity kit".into(),
        });
    }
    Ok((picked, ds.classes))
}

/// Writes `export_dir/golden/` for the model `net` of `run`, whose ONNX file is
/// `export_dir/model_rel`; `softmax`: the ONNX output is the softmax of the logits; `output`:
/// what the output holds (`logits`, `probabilities`, `points`); `model_input`: the model file's
/// input for a decoded image, when it is not the eval preset's (a DeepStream export's folded
/// graph). nanoclass's expected outputs are always computed on the eval preset's input.
/// Returns the number of inputs written.
///
/// # Errors
/// The run's dataset cannot be scanned or holds no image, an image does not decode, the model
/// fails, or writing fails.
pub fn write_golden(
    run: &Run,
    net: &Net,
    export_dir: &Path,
    model_rel: &str,
    softmax: bool,
    output: &str,
    model_input: Option<ModelInput<'_>>,
) -> Result<usize> {
    let (picked, classes) = pick_images(run)?;
    let preset = run.config.eval_preset;
    let size = preset.crop as usize;
    let opts = DecodeOptions {
        min_side: Some(preset.decode_min_side()),
    };
    let mut pixels = Vec::with_capacity(picked.len() * 3 * size * size);
    let mut inputs = Vec::new();
    for s in &picked {
        let img = decode_file(&s.path, &opts)?;
        pixels.extend(preset.apply(&img));
        if let Some(f) = model_input {
            inputs.extend(f(&img));
        }
    }
    if model_input.is_none() {
        inputs = pixels.clone();
    }
    let device = default_device();
    let engine = Engine::on_burn(net.clone(), Graph::Outputs, &device, size);
    let rows = engine.run(pixels, picked.len())?.into_rows();
    let dir = export_dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let len = 3 * size * size;
    let mut samples = Vec::new();
    for (i, (s, row)) in picked.iter().zip(rows).enumerate() {
        let input = format!("{i}.bin");
        let bytes: Vec<u8> = inputs[i * len..(i + 1) * len]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        crate::fs::write_atomic(&dir.join(&input), &bytes)?;
        let expected = if softmax { softmax_row(&row) } else { row };
        samples.push(GoldenSample {
            input,
            source: s
                .path
                .strip_prefix(&run.config.data)
                .unwrap_or(&s.path)
                .to_path_buf(),
            label: classes.get(s.label).cloned().unwrap_or_default(),
            expected,
        });
    }
    let manifest = Manifest {
        model: model_rel.to_string(),
        arch: run.config.arch.name().to_string(),
        input_name: super::onnx::INPUT_NAME.into(),
        output_name: super::onnx::OUTPUT_NAME.into(),
        input_shape: [1, 3, size, size],
        encoding: ENCODING.into(),
        output: output.to_string(),
        labels: run.config.labels.clone(),
        samples,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Other(format!("golden manifest: {e}")))?;
    crate::fs::write_atomic(&dir.join(MANIFEST), &json)?;
    Ok(picked.len())
}

/// Softmax of one row, computed in f64 from the largest value down (as ONNX's `Softmax`).
pub fn softmax_row(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Reads `export_dir/golden/manifest.json`.
///
/// # Errors
/// The file is missing or is not a manifest (the error names the file and the reason).
pub fn read_manifest(export_dir: &Path) -> Result<Manifest> {
    let path = export_dir.join(DIR).join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
}

/// Reads input file `name` of the kit: `[1, 3, S, S]` f32 little-endian.
///
/// # Errors
/// The file cannot be read or its size is not `4 x` the values of `shape`.
pub fn read_input(export_dir: &Path, name: &str, shape: [usize; 4]) -> Result<Vec<f32>> {
    let path = export_dir.join(DIR).join(name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let want = shape.iter().product::<usize>() * 4;
    if bytes.len() != want {
        return Err(Error::Other(format!(
            "{}: {} bytes, but an f32 tensor of shape {shape:?} has {want}",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
