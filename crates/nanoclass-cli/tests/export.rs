//! `nanoclass export` through the real binary: a run trained by the binary on ten real photos
//! (ResNet-18 from random init, one frozen epoch) exported in the three formats, and the
//! requests it refuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nanoclass"))
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn fails(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// Two classes of 5 real photos (hymenoptera ants and bees) in folders named `красный` and
/// `red apple`: the names must survive into labels.txt and the model's metadata exactly.
fn make_data(root: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/hymenoptera/train");
    assert!(
        src.is_dir(),
        "real image data not found at {}",
        src.display()
    );
    let data = root.join("data");
    for (from, to) in [("ants", "красный"), ("bees", "red apple")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(src.join(from))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let dir = data.join(to);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files.iter().take(5) {
            std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    data
}

fn train(root: &Path) -> PathBuf {
    let data = make_data(root);
    let run = root.join("run");
    let out = bin()
        .arg("train")
        .arg(&data)
        .args([
            "--arch",
            "resnet18",
            "--weights",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--no-feature-cache",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    ok(out, "train");
    run
}

#[test]
fn export_writes_each_format_with_labels_beside_it_and_refuses_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path());

    // Default path: RUN/export/model.onnx, opset 17, labels.txt beside it.
    let stdout = ok(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "onnx"])
            .output()
            .unwrap(),
        "export onnx",
    );
    let onnx = run.join("export/model.onnx");
    assert!(
        stdout.contains(&format!("wrote {}", onnx.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("ONNX opset 17: input_0 [batch, 3, 224, 224] -> output_0 [batch, 2]"),
        "{stdout}"
    );
    let labels = std::fs::read_to_string(run.join("export/labels.txt")).unwrap();
    assert_eq!(labels, "red apple\nкрасный\n");
    let bytes = std::fs::read(&onnx).unwrap();
    // The labels metadata holds the names as they are (JSON, UTF-8).
    let needle = r#"["red apple","красный"]"#.as_bytes();
    assert!(bytes.windows(needle.len()).any(|w| w == needle));

    // --out as a file name, --softmax, --opset 13.
    let out_dir = tmp.path().join("deploy");
    let onnx2 = out_dir.join("classifier.onnx");
    let stdout = ok(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "onnx", "--softmax", "--opset", "13", "--out"])
            .arg(&onnx2)
            .output()
            .unwrap(),
        "export onnx --softmax",
    );
    assert!(
        stdout.contains("ONNX opset 13") && stdout.contains("(softmax)"),
        "{stdout}"
    );
    assert!(onnx2.is_file() && out_dir.join("labels.txt").is_file());

    // .pth and safetensors into an existing folder.
    for (format, file, tensors) in [
        ("pth", "model.pth", "122 tensors"),
        ("safetensors", "model.safetensors", "102 tensors"),
    ] {
        let stdout = ok(
            bin()
                .arg("export")
                .arg(&run)
                .args(["--format", format, "--out"])
                .arg(&out_dir)
                .output()
                .unwrap(),
            format,
        );
        assert!(stdout.contains(tensors), "{format}: {stdout}");
        assert!(out_dir.join(file).is_file(), "{format}");
    }
    let pth = std::fs::read(out_dir.join("model.pth")).unwrap();
    assert_eq!(&pth[..2], b"PK");

    // Refusals name the reason.
    let e = fails(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "onnx", "--opset", "9"])
            .output()
            .unwrap(),
        "opset 9",
    );
    assert!(
        e.contains("--opset 9 is not supported") && e.contains("13 to 21"),
        "{e}"
    );
    let e = fails(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "pth", "--softmax"])
            .output()
            .unwrap(),
        "pth --softmax",
    );
    assert!(e.contains("--softmax applies to ONNX only"), "{e}");
    let e = fails(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "safetensors", "--out"])
            .arg(run.join("model.safetensors"))
            .output()
            .unwrap(),
        "over the run's model",
    );
    assert!(e.contains("run's own model file"), "{e}");
    let missing = tmp.path().join("no-such-run");
    let e = fails(
        bin()
            .arg("export")
            .arg(&missing)
            .args(["--format", "onnx"])
            .output()
            .unwrap(),
        "missing run",
    );
    assert!(
        e.contains("does not exist") && e.contains("no-such-run"),
        "{e}"
    );
}
