//! ResNet parity with torchvision: weights written by `scripts/make_fixtures.py` (Debian's
//! python3-torch / python3-torchvision) in every file form nanoclass reads, logits compared with
//! PyTorch's within 1e-4 (bug cases B20a, B21a, B22, B23).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use burn::module::Module;
use burn::prelude::*;
use nanoclass::model::weights::{HeadLoad, load_net};
use nanoclass::model::{Arch, Net};

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
