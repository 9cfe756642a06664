//! The export bundle: one zip file holding an export, `labels.txt`, its parity kit
//! (`golden/`) and a `README.txt` saying what the model takes and gives and how to check it on
//! the target. The studio's Download button serves it; `nanoclass verify` takes the zip as it
//! is ([`super::verify`]).
//!
//! Every entry lies under one top folder, the bundle's name:
//! - `onnx`: `NAME/model.onnx` (logits, or the points of a regression run), `labels.txt`,
//!   `golden/`, `README.txt`;
//! - `triton`: `NAME/model_repository/NAME/{config.pbtxt, labels.txt, 1/model.onnx, golden/}`
//!   and `NAME/README.txt` (see [`super::triton`]);
//! - `pth`: `NAME/model.pth` (the state dict the reference architecture loads strictly),
//!   `labels.txt`, `golden/` (classification runs) and `README.txt`.
//!
//! Entries are stored uncompressed (model weights barely compress) with a fixed timestamp, so
//! the same export gives the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use super::artifact::{Golden, load_run_model};
use super::{ExportFormat, ExportOptions, TritonOptions, export, export_triton, golden, metadata};
use crate::run::{Run, Task};
use crate::{Error, Result};

/// The ONNX check that `README.txt` shows (ONNX Runtime in Python, reading `golden/`).
pub const CHECK_ONNX_PY: &str = include_str!("check_onnx.py");
/// The PyTorch check that a `pth` bundle's `README.txt` shows.
pub const CHECK_PTH_PY: &str = include_str!("check_pth.py");
/// The README's file name in the bundle.
pub const README: &str = "README.txt";

/// What a bundle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// The ONNX graph.
    Onnx,
    /// A Triton Inference Server model repository.
    Triton,
    /// The PyTorch state dict.
    Pth,
}

impl BundleFormat {
    /// Every format, in the order the studio offers them.
    pub const ALL: [BundleFormat; 3] =
        [BundleFormat::Onnx, BundleFormat::Triton, BundleFormat::Pth];

    /// The name in requests and file names: `onnx`, `triton`, `pth`.
    pub fn name(self) -> &'static str {
        match self {
            BundleFormat::Onnx => "onnx",
            BundleFormat::Triton => "triton",
            BundleFormat::Pth => "pth",
        }
    }

    /// The format named `name` (as [`Self::name`] gives it).
    ///
    /// # Errors
    /// An unknown name; the message lists the known ones.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                Error::Other(format!(
                    "unknown export format {name:?}: one of {}",
                    known.join(", ")
                ))
            })
    }
}

/// What [`write_bundle`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The zip file.
    pub zip: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Every entry, in the order written (folders end in `/`).
    pub entries: Vec<String>,
    /// The parity kit's state.
    pub golden: Golden,
}

/// Writes the run in `run_dir` as a bundle of `format` to `zip_path` (atomically: nothing is
/// there until the whole zip is), its entries under the folder `name` (letters, digits, `_`,
/// `-`, `.`; for Triton also the model's name).
///
/// # Errors
/// Those of the export ([`export`], [`export_triton`]); an invalid `name`; writing fails.
pub fn write_bundle(
    run_dir: &Path,
    format: BundleFormat,
    name: &str,
    zip_path: &Path,
) -> Result<Bundle> {
    super::triton::check_name(name)?;
    let parent = match zip_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    crate::fs::clean_stale_temp_files(&parent);
    // The export is staged in a temporary folder beside the zip, removed when done.
    let stage = tempfile::Builder::new()
        .prefix(&crate::fs::temp_dir_name("bundle"))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let top = stage.path().join(name);
    std::fs::create_dir_all(&top).map_err(|e| Error::io(&top, e))?;
    let run = Run::open(run_dir)?;
    let (golden, readme) = match format {
        BundleFormat::Onnx => {
            let s = export(
                run_dir,
                &ExportOptions {
                    out: Some(top.join("model.onnx")),
                    ..ExportOptions::new(ExportFormat::Onnx)
                },
            )?;
            (s.golden, readme_onnx(&run, name))
        }
        BundleFormat::Triton => {
            let repo = top.join("model_repository");
            let s = export_triton(
                run_dir,
                &TritonOptions {
                    repo: Some(repo),
                    name: Some(name.to_string()),
                    ..TritonOptions::default()
                },
            )?;
            (s.golden, readme_triton(&run, name))
        }
        BundleFormat::Pth => {
            export(
                run_dir,
                &ExportOptions {
                    out: Some(top.join("model.pth")),
                    ..ExportOptions::new(ExportFormat::Pth)
                },
            )?;
            let kit = if run.config.task == Task::Classification {
                let (run, net) = load_run_model(run_dir)?;
                match golden::write_golden(&run, &net, &top, "model.pth", false, "logits", None) {
                    Ok(n) => Golden::Written(n),
                    Err(e) => Golden::Skipped(e.to_string()),
                }
            } else {
                Golden::NotApplicable
            };
            (kit, readme_pth(&run, name))
        }
    };
    crate::fs::write_atomic(&top.join(README), readme.as_bytes())?;
    let mut entries = Vec::new();
    crate::fs::write_atomic_with(zip_path, |file| {
        let mut zip = zip::ZipWriter::new(file);
        let opts = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .large_file(true)
            .unix_permissions(0o644);
        add_tree(&mut zip, stage.path(), &top, opts, &mut entries)?;
        zip.finish()?;
        Ok(())
    })?;
    let bytes = std::fs::metadata(zip_path)
        .map_err(|e| Error::io(zip_path, e))?
        .len();
    Ok(Bundle {
        zip: zip_path.to_path_buf(),
        bytes,
        entries,
        golden,
    })
}

/// Adds `dir` and everything under it, named relative to `base`, sorted by name.
fn add_tree<W: Write + std::io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    base: &Path,
    dir: &Path,
    opts: SimpleFileOptions,
    entries: &mut Vec<String>,
) -> std::io::Result<()> {
    let rel = |p: &Path| {
        p.strip_prefix(base)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let folder = format!("{}/", rel(dir));
    zip.add_directory(folder.as_str(), opts.unix_permissions(0o755))?;
    entries.push(folder);
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    children.sort();
    for path in children {
        if path.is_dir() {
            add_tree(zip, base, &path, opts, entries)?;
        } else {
            let name = rel(&path);
            zip.start_file(name.as_str(), opts)?;
            std::io::copy(&mut std::fs::File::open(&path)?, zip)?;
            entries.push(name);
        }
    }
    Ok(())
}

/// The model's input and output, as `README.txt` states them.
fn io_text(run: &Run, output: &str) -> String {
    let m = metadata(run, false);
    let get = |k: &str| m.get(k).cloned().unwrap_or_default();
    let c = &run.config;
    let k = c.labels.len();
    let out = match c.task {
        Task::Classification => format!(
            "[batch, {k}] {output}, index i = line i + 1 of labels.txt: {}",
            c.labels.join(", ")
        ),
        Task::Regression => format!(
            "[batch, {}] points: (x, y) of category k at outputs 2k and 2k + 1, in -1..1 over the \
             {s} x {s} input (-1 = left/top edge); categories in labels.txt: {}",
            2 * k,
            c.labels.join(", "),
            s = c.eval_preset.crop
        ),
    };
    format!(
        "Model: {arch}, {task}, trained by nanoclass {ver}.\n\
         Input: `{inp}`, [batch, 3, {s}, {s}] float32, NCHW, RGB. From an image: resize so the\n\
         shorter side is {resize} px (bilinear), take the centre {s} x {s} square, scale to 0..1\n\
         (pixel / 255), then per channel (x - mean) / std with mean {mean} and std {std}.\n\
         Output: `{outp}`, {out}.\n",
        arch = get("arch"),
        task = get("task"),
        ver = get("nanoclass_version"),
        inp = get("input_name"),
        outp = get("output_name"),
        s = c.eval_preset.crop,
        resize = get("resize"),
        mean = get("mean"),
        std = get("std"),
    )
}

const KIT_TEXT: &str = "golden/ is the parity kit: a few of the run's own held-out images as the \
model's exact input tensors (<i>.bin, [1, 3, S, S] float32 little-endian, no header) and, in \
manifest.json, the outputs nanoclass computed for them. A runtime that reproduces them within \
1e-4 predicts what nanoclass predicts.";

fn verify_text(target: &str) -> String {
    format!(
        "Check it where it will run, with nanoclass:\n\n    nanoclass verify {target} \
         --runtime onnxruntime    (or --runtime tract)\n\n\
         (the zip file itself is accepted too), or without nanoclass, in Python \
         (pip install onnxruntime numpy), saved as check.py and run as `python3 check.py {target}`:\n\n{}",
        indent(CHECK_ONNX_PY)
    )
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
}

fn readme_onnx(run: &Run, name: &str) -> String {
    format!(
        "{name}: an ONNX model exported by nanoclass\n\n{}\n\
         Files: model.onnx (ONNX opset {}, batch size free), labels.txt, golden/, README.txt.\n\n\
         {KIT_TEXT}\n\n{}",
        io_text(run, "logits (softmax gives probabilities)"),
        super::onnx::DEFAULT_OPSET,
        verify_text(name)
    )
}

fn readme_triton(run: &Run, name: &str) -> String {
    format!(
        "{name}: a Triton Inference Server model repository exported by nanoclass\n\n{}\n\
         Files: model_repository/{name}/config.pbtxt (platform onnxruntime_onnx, dynamic batching,\n\
         one GPU instance; change instance_group's kind to KIND_CPU for a CPU server),\n\
         model_repository/{name}/labels.txt, model_repository/{name}/1/model.onnx,\n\
         model_repository/{name}/golden/.\n\n\
         Serve it:\n\n    tritonserver --model-repository $PWD/model_repository\n\n\
         then ask for the top classes over HTTP (KServe v2 protocol, Triton's classification\n\
         extension):\n\n    POST http://HOST:8000/v2/models/{name}/infer\n    \
         {{\"inputs\": [{{\"name\": \"input_0\", \"shape\": [1, 3, {s}, {s}], \"datatype\": \"FP32\", \"data\": [...]}}],\n     \
         \"outputs\": [{{\"name\": \"output_0\", \"parameters\": {{\"classification\": 3}}}}]}}\n\n\
         {KIT_TEXT}\n\nCheck the served model with nanoclass:\n\n    \
         nanoclass verify model_repository/{name} --runtime triton-url http://HOST:8000\n\n{}",
        io_text(run, "probabilities (softmax included)"),
        verify_text(&format!("model_repository/{name}")),
        s = run.config.eval_preset.crop
    )
}

fn readme_pth(run: &Run, name: &str) -> String {
    let arch = run.config.arch.name();
    let k = run.config.labels.len();
    let reference = match run.config.arch {
        crate::model::Arch::EfficientnetLite0 => format!(
            "EfficientNet.from_name(\"efficientnet-lite0\", num_classes={k}) of PyPI\n\
             efficientnet-lite-pytorch==0.1.0"
        ),
        _ => format!("torchvision.models.{arch}(num_classes={k})"),
    };
    let check = match run.config.task {
        Task::Classification => format!(
            "{KIT_TEXT}\n\nCheck it in PyTorch, saved as check.py and run as \
             `python3 check.py {name}`:\n\n{}",
            indent(CHECK_PTH_PY)
        ),
        Task::Regression => "The state dict also holds the point head (point.*), which is not \
            part of torchvision: build it as nanoclass's scripts/pth_roundtrip.py does."
            .to_string(),
    };
    format!(
        "{name}: a PyTorch state dict exported by nanoclass\n\n{}\n\
         Files: model.pth (torch.save zip format, tensors only: load it with\n\
         torch.load(path, weights_only=True)), labels.txt, README.txt.\n\
         It loads with load_state_dict(sd, strict=True) into {reference}.\n\n{check}",
        io_text(run, "logits (softmax gives probabilities)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_and_unknown_names_list_the_known_ones() {
        for f in BundleFormat::ALL {
            assert_eq!(BundleFormat::parse(f.name()).unwrap(), f);
        }
        let e = BundleFormat::parse("tflite").unwrap_err().to_string();
        assert!(
            e.contains("\"tflite\"") && e.contains("onnx, triton, pth"),
            "{e}"
        );
    }
}
