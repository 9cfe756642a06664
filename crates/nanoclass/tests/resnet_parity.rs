//! ResNet parity with torchvision: weights written by `scripts/make_fixtures.py` (Debian's
//! python3-torch / python3-torchvision) in every file form nanoclass reads, logits compared with
//! PyTorch's within 1e-4 (bug cases B20a, B21a, B22, B23). Also: f16, bf16 and f64 files load as
//! the f32 values PyTorch gives them, a `module.` prefix on some keys only is refused, and the
//! BatchNorm `num_batches_tracked` counts travel from the weights file through training into
//! the exported `.pth`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use burn::module::Module;
use burn::prelude::*;
use burn::store::pytorch_reader::{self, PytorchReader};
use nanoclass::export::{ExportFormat, ExportOptions, export};
use nanoclass::model::batch_counters::{BatchCounters, METADATA_KEY};
use nanoclass::model::weights::{FileDtype, HeadLoad, load_net, save_net};
use nanoclass::model::{Arch, Net};
use nanoclass::run::Task;
use nanoclass::train::{Event, Hyperparams, Mode, OptimizerKind, Schedule, TrainOptions, train};

const TOL: f32 = 1e-4;

/// Fixtures for all three ResNets (about 1.2 GB), generated once per run of the test binary into
/// one folder under Cargo's scratch space, replaced on the next run rather than left behind.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("resnet-fixtures");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clear the previous fixtures");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_fixtures.py");
        let out = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&dir)
            .args(["resnet18", "resnet34", "resnet50"])
            .output()
            .expect("running /usr/bin/python3 (install python3-torch and python3-torchvision)");
        assert!(
            out.status.success(),
            "make_fixtures.py failed (needs Debian python3-torch and python3-torchvision): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn logits(net: &Net, input: &[f32]) -> Vec<f32> {
    let dev = Device::flex();
    let n = input.len() / (3 * 224 * 224);
    let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), [n, 3, 224, 224]), &dev);
    net.valid()
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_arch(arch: Arch) {
    let dir = fixtures();
    let name = arch.name();
    let input = read_f32(&dir.join(format!("{name}.input.bin")));
    let want = read_f32(&dir.join(format!("{name}.logits.bin")));
    for form in [
        "zip.pth",
        "legacy.pth",
        "safetensors",
        "checkpoint.pth",
        "cuda.pth",
    ] {
        let path = dir.join(format!("{name}.{form}"));
        let (net, report) = load_net(arch, &path, 1000, None, &Device::flex())
            .unwrap_or_else(|e| panic!("{name}.{form}: {e}"));
        assert_eq!(report.head, HeadLoad::Loaded, "{form}");
        let d = max_diff(&logits(&net, &input), &want);
        assert!(d < TOL, "{name}.{form}: max |logit diff| {d:e} >= {TOL:e}");
    }
}

#[test]
fn resnet18_matches_torchvision_in_every_file_form() {
    check_arch(Arch::Resnet18);
}

#[test]
fn resnet34_matches_torchvision_in_every_file_form() {
    check_arch(Arch::Resnet34);
}

#[test]
fn resnet50_matches_torchvision_in_every_file_form() {
    check_arch(Arch::Resnet50);
}

#[test]
fn b22_every_key_is_consumed_and_only_num_batches_tracked_is_ignored() {
    let path = fixtures().join("resnet18.zip.pth");
    let (_, report) = load_net(Arch::Resnet18, &path, 1000, None, &Device::flex()).unwrap();
    assert_eq!(report.applied, 102);
    assert_eq!(report.ignored.len(), 20);
    assert!(
        report
            .ignored
            .iter()
            .all(|k| k.ends_with("num_batches_tracked"))
    );
}

#[test]
fn b20a_checkpoint_dict_with_module_prefix_loads_its_state_dict() {
    let path = fixtures().join("resnet18.checkpoint.pth");
    let (_, report) = load_net(Arch::Resnet18, &path, 1000, None, &Device::flex()).unwrap();
    assert_eq!(report.prefix, "state_dict.module.");
    assert_eq!(report.applied, 102);
}

#[test]
fn b21a_imagenet_head_is_replaced_for_three_classes_and_backbone_kept() {
    let dir = fixtures();
    let path = dir.join("resnet18.zip.pth");
    let dev = Device::flex();
    let (net3, report) = load_net(Arch::Resnet18, &path, 3, None, &dev).unwrap();
    assert_eq!(
        report.head,
        HeadLoad::Fresh {
            file_outputs: 1000,
            outputs: 3
        }
    );
    assert_eq!(report.applied, 102);
    assert_eq!(net3.num_outputs(), 3);
    let (net1000, _) = load_net(Arch::Resnet18, &path, 1000, None, &dev).unwrap();
    let input = read_f32(&dir.join("resnet18.input.bin"));
    let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, 224, 224]), &dev);
    let f3 = net3
        .valid()
        .features(x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let f1000 = net1000
        .valid()
        .features(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(f3.len(), 2 * 512);
    assert!(
        max_diff(&f3, &f1000) == 0.0,
        "backbone must be loaded whole"
    );
    assert!(report.to_string().contains("fresh head with 3 outputs"));
}

#[test]
fn wrong_architecture_names_the_missing_tensors() {
    let path = fixtures().join("resnet18.zip.pth");
    let err = load_net(Arch::Resnet34, &path, 1000, None, &Device::flex())
        .expect_err("a resnet18 file cannot fill a resnet34")
        .to_string();
    assert!(err.contains("missing"), "{err}");
    assert!(err.contains("layer1.2.conv1.weight"), "{err}");
}

#[test]
fn unexpected_tensors_are_named_not_dropped_silently() {
    let src = fixtures().join("resnet18.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let extra = vec![0u8; 16];
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().collect();
    views.push((
        "extra_branch.weight".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("extra.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let err = load_net(Arch::Resnet18, &path, 1000, None, &Device::flex())
        .expect_err("an unknown tensor must be reported")
        .to_string();
    assert!(err.contains("extra_branch.weight"), "{err}");
}

/// Every tensor of a safetensors file: key -> (dtype, little-endian bytes).
fn safetensors_tensors(path: &Path) -> BTreeMap<String, (safetensors::Dtype, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.data().to_vec())))
        .collect()
}

/// The metadata of a safetensors file.
fn safetensors_metadata(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// ResNet-18's 20 BatchNorm layers, torchvision names.
fn resnet18_batch_norms() -> Vec<String> {
    let mut layers = vec!["bn1".to_string()];
    for stage in 1..=4 {
        for block in 0..2 {
            layers.push(format!("layer{stage}.{block}.bn1"));
            layers.push(format!("layer{stage}.{block}.bn2"));
        }
        if stage > 1 {
            layers.push(format!("layer{stage}.0.downsample.1"));
        }
    }
    layers
}

#[test]
fn f16_bf16_and_f64_files_load_as_the_f32_values_pytorch_gives_and_save_as_f32() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::flex();
    for (dtype, name) in [
        (FileDtype::F16, "f16"),
        (FileDtype::BF16, "bf16"),
        (FileDtype::F64, "f64"),
    ] {
        // PyTorch's `tensor.float()` of each tensor: exact for f16 and bf16; for f64, the
        // values lie between two f32 numbers, so only round-to-nearest gives these bits.
        let expected =
            safetensors_tensors(&dir.join(format!("resnet18.{name}.expected.safetensors")));
        for form in ["zip.pth", "legacy.pth", "safetensors"] {
            let file = format!("resnet18.{name}.{form}");
            let (net, report) = load_net(Arch::Resnet18, &dir.join(&file), 1000, None, &dev)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            // 102 float tensors (the 20 num_batches_tracked stay int64 and are counted apart).
            assert_eq!(report.applied, 102, "{file}");
            assert_eq!(report.converted, BTreeMap::from([(dtype, 102)]), "{file}");
            let text = report.to_string();
            assert!(
                text.contains(&format!("converted 102 tensors from {name} to f32")),
                "{file}: {text}"
            );
            // The int64 counters (4: the fixture's calibration batches) are read, not lost.
            assert_eq!(report.batch_counters.len(), 20, "{file}");
            assert!(report.batch_counters.iter().all(|(_, c)| c == 4), "{file}");

            let saved = tmp.path().join(format!("{name}.{form}.safetensors"));
            save_net(&net, &saved, &BTreeMap::new()).unwrap();
            let got = safetensors_tensors(&saved);
            assert_eq!(got.len(), 102, "{file}");
            for (key, (dt, bytes)) in &got {
                assert_eq!(
                    *dt,
                    safetensors::Dtype::F32,
                    "{file}: saved {key} is {dt:?}"
                );
                let (want_dt, want) = &expected[key];
                assert_eq!(*want_dt, safetensors::Dtype::F32);
                assert!(
                    bytes == want,
                    "{file}: {key} differs from PyTorch's f32 values"
                );
            }
        }
    }
}

#[test]
fn f32_files_report_no_conversion() {
    let path = fixtures().join("resnet18.zip.pth");
    let (_, report) = load_net(Arch::Resnet18, &path, 1000, None, &Device::flex()).unwrap();
    assert!(report.converted.is_empty(), "{:?}", report.converted);
    assert!(!report.to_string().contains("converted"), "{report}");
}

#[test]
fn f16_resnet18_logits_match_pytorch_on_the_same_weights_in_f32() {
    // PyTorch's logits of the f16 weights held as f32 (`model.half().float()`), within 1e-4:
    // the conversion loses nothing, so only the summation order differs.
    let dir = fixtures();
    let input = read_f32(&dir.join("resnet18.input.bin"));
    let want = read_f32(&dir.join("resnet18.f16.logits.bin"));
    let f32_logits = read_f32(&dir.join("resnet18.logits.bin"));
    for form in ["zip.pth", "legacy.pth", "safetensors"] {
        let path = dir.join(format!("resnet18.f16.{form}"));
        let (net, _) = load_net(Arch::Resnet18, &path, 1000, None, &Device::flex()).unwrap();
        let got = logits(&net, &input);
        let d = max_diff(&got, &want);
        assert!(d < TOL, "f16.{form}: max |logit diff| {d:e} >= {TOL:e}");
        // Not the logits of the original f32 weights: f16 rounding moves them (by about 1e-3).
        assert!(max_diff(&got, &f32_logits) > 10.0 * TOL, "f16.{form}");
    }
}

#[test]
fn module_prefix_on_some_keys_only_is_refused_naming_keys_of_both_kinds() {
    let dir = fixtures();
    // From PyTorch: `module.` on the layer3, layer4 and fc keys only (the stem has none).
    let src = dir.join("resnet18.zip.pth");
    let reader = PytorchReader::new(&src).unwrap();
    let moved = reader
        .keys()
        .iter()
        .filter(|k| {
            ["layer3.", "layer4.", "fc."]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .count();
    assert!(moved > 0 && moved < 122);
    let err = load_net(
        Arch::Resnet18,
        &dir.join("resnet18.partial_module.pth"),
        1000,
        None,
        &Device::flex(),
    )
    .expect_err("a partly prefixed state dict must be refused")
    .to_string();
    assert!(
        err.contains(&format!(
            "`module.` is on {moved} of the state dict's 122 tensors"
        )),
        "{err}"
    );
    assert!(err.contains("module.layer3.0.bn1.bias"), "{err}");
    assert!(err.contains("bn1.bias"), "{err}");
    assert!(err.contains("resnet18.partial_module.pth"), "{err}");

    // The other way round: `module.` on the stem and everything else but the head.
    let bytes = std::fs::read(dir.join("resnet18.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rename = |all: bool| -> Vec<(String, safetensors::tensor::TensorView)> {
        st.tensors()
            .into_iter()
            .map(|(k, v)| match all || !k.starts_with("fc.") {
                true => (format!("module.{k}"), v),
                false => (k, v),
            })
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("partial.safetensors");
    safetensors::serialize_to_file(rename(false), None, &partial).unwrap();
    let err = load_net(Arch::Resnet18, &partial, 1000, None, &Device::flex())
        .expect_err("the head lacks the prefix")
        .to_string();
    assert!(
        err.contains("`module.` is on 120 of the state dict's 122 tensors"),
        "{err}"
    );
    assert!(err.contains("without it: fc.bias, fc.weight"), "{err}");

    // On every key: stripped, and said so.
    let whole = tmp.path().join("whole.safetensors");
    safetensors::serialize_to_file(rename(true), None, &whole).unwrap();
    let (_, report) = load_net(Arch::Resnet18, &whole, 1000, None, &Device::flex()).unwrap();
    assert_eq!(report.prefix, "module.");
    assert_eq!(report.applied, 102);
    assert!(
        report.to_string().contains("key prefix `module.` stripped"),
        "{report}"
    );
    assert!(report.batch_counters.iter().all(|(_, c)| c == 4));
}

/// An ImageFolder of the first `n` training photos of each hymenoptera class.
fn small_hymenoptera(root: &Path, n: usize) -> PathBuf {
    let src = common::shared_data().join("hymenoptera/train");
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

/// What a training run printed and how many optimizer steps its full phase took.
struct Trained {
    info: Vec<String>,
    full_steps: i64,
    best_epoch: usize,
}

fn train_from(weights: &Path, data: &Path, out: &Path, mode: Mode) -> Trained {
    let mut opts = TrainOptions::new(data, out);
    opts.task = Task::Classification;
    opts.arch = Arch::Resnet18;
    opts.weights = weights.display().to_string();
    opts.hyper = Hyperparams {
        epochs: 2,
        head_epochs: 1,
        batch_size: 4,
        lr: 1e-3,
        body_lr_factor: 0.1,
        optimizer: OptimizerKind::Adam,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: Schedule::None,
        seed: 5,
        val_fraction: 0.2,
        ..Hyperparams::for_mode(mode)
    };
    opts.force = true;
    opts.feature_cache = None;
    let mut info = Vec::new();
    let mut phase = "";
    let mut full_steps = 0;
    let summary = train(&opts, &mut |e| match e {
        Event::Info(line) => info.push(line),
        Event::Phase { phase: p, .. } => phase = p,
        Event::Step { .. } if phase == "full" => full_steps += 1,
        _ => {}
    })
    .unwrap_or_else(|e| panic!("training {mode:?} from {}: {e}", weights.display()));
    Trained {
        info,
        full_steps,
        best_epoch: summary.best_epoch,
    }
}

/// The model file's counters, which must cover the 20 BatchNorms all at `count`.
fn assert_counters(path: &Path, count: i64) {
    let meta = safetensors_metadata(path);
    let counters = BatchCounters::from_metadata(&meta[METADATA_KEY]).unwrap();
    let layers: Vec<&str> = counters.iter().map(|(l, _)| l).collect();
    let mut want = resnet18_batch_norms();
    want.sort();
    assert_eq!(layers, want, "{}", path.display());
    for (layer, c) in counters.iter() {
        assert_eq!(c, count, "{}: {layer}", path.display());
    }
}

fn assert_all_f32(path: &Path) {
    for (key, (dt, _)) in safetensors_tensors(path) {
        assert_eq!(dt, safetensors::Dtype::F32, "{}: {key}", path.display());
    }
}

#[test]
fn training_from_f16_weights_saves_f32_models_and_exports_the_batchnorm_counts() {
    let weights = fixtures().join("resnet18.f16.zip.pth");
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("resnet-f16-training");
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("clear the previous run");
    }
    let data = small_hymenoptera(&root, 5);

    // finetune: one head epoch (backbone in eval mode: no count), then two full epochs in
    // which every BatchNorm counts each training batch, on top of the file's 4.
    let run = root.join("finetune");
    let t = train_from(&weights, &data, &run, Mode::Finetune);
    assert!(
        t.info
            .iter()
            .any(|l| l.contains("converted 102 tensors from f16 to f32")),
        "{:?}",
        t.info
    );
    assert!(t.full_steps >= 2, "{} full-phase steps", t.full_steps);
    assert_all_f32(&run.join("model.safetensors"));
    assert_all_f32(&run.join("last.safetensors"));
    assert_counters(&run.join("last.safetensors"), 4 + t.full_steps);
    // The best model is that of `best_epoch`: the head epoch, or one of the two full epochs.
    let best_full_epochs = t.best_epoch as i64 - 1;
    let best_count = 4 + t.full_steps / 2 * best_full_epochs;
    assert_counters(&run.join("model.safetensors"), best_count);

    // The exported .pth holds those counts and f32 floats only.
    let pth = root.join("export/model.pth");
    export(
        &run,
        &ExportOptions {
            out: Some(pth.clone()),
            ..ExportOptions::new(ExportFormat::Pth)
        },
    )
    .unwrap();
    let reader = PytorchReader::new(&pth).unwrap();
    let mut counters = 0;
    for (key, t) in reader.tensors() {
        if key.ends_with(".num_batches_tracked") {
            assert_eq!(t.dtype(), pytorch_reader::DType::I64, "{key}");
            assert_eq!(t.read().unwrap(), best_count.to_le_bytes(), "{key}");
            counters += 1;
        } else {
            assert_eq!(t.dtype(), pytorch_reader::DType::F32, "{key}");
        }
    }
    assert_eq!(counters, 20);
    let st = root.join("export/model.safetensors");
    export(
        &run,
        &ExportOptions {
            out: Some(st.clone()),
            ..ExportOptions::new(ExportFormat::Safetensors)
        },
    )
    .unwrap();
    assert_all_f32(&st);
    assert_counters(&st, best_count);

    // frozen: the backbone never runs in train mode, so the file's counts stay.
    let frozen = root.join("frozen");
    let t = train_from(&weights, &data, &frozen, Mode::Frozen);
    assert_eq!(t.full_steps, 0);
    assert_all_f32(&frozen.join("model.safetensors"));
    assert_counters(&frozen.join("model.safetensors"), 4);
}
