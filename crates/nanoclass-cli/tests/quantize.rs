//! `nanoclass quantize` through the binary on a real run (EfficientNet-Lite0 instant run on
//! ../shared/data/hymenoptera): the record's figures are those `eval` gives for each model, the
//! int8 model is kept or refused by the drop, and `--precision` serves what was kept. Without
//! ONNX Runtime (CI's second pass) it is refused with the reason.

mod common;

use std::path::Path;

use common::{bin, eval_json, ok, shared_data};

fn eval_top1(run: &Path, precision: &str) -> f64 {
    eval_json(run, &["--engine", "ort", "--precision", precision])["top1"]
        .as_f64()
        .unwrap()
}

fn quantize(run: &Path, max_drop: &str) -> serde_json::Value {
    let out = bin()
        .args(["quantize"])
        .arg(run)
        .args(["--json", "--calibration", "40"])
        .arg(format!("--max-drop={max_drop}"))
        .output()
        .unwrap();
    serde_json::from_str(ok(out, "quantize").trim()).unwrap()
}

#[test]
fn quantize_keeps_or_refuses_by_the_drop_and_eval_serves_what_it_kept() {
    let data = shared_data().join("hymenoptera");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args(["--arch", "efficientnet_lite0", "--mode", "instant", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    ok(out, "train --mode instant");

    let probe = bin()
        .args(["eval"])
        .arg(&run)
        .args(["--json", "--engine", "ort"])
        .output()
        .unwrap();
    if !probe.status.success() {
        // No ONNX Runtime: quantize says so and writes nothing.
        let why = String::from_utf8_lossy(&probe.stderr).into_owned();
        assert!(
            std::env::var_os("NANOCLASS_REQUIRE_ORT").is_none(),
            "NANOCLASS_REQUIRE_ORT is set, but eval --engine ort failed:\n{why}"
        );
        assert!(why.contains("ONNX") || why.contains("onnxruntime"), "{why}");
        let out = bin().args(["quantize"]).arg(&run).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("onnxruntime"), "{err}");
        assert!(!run.join("quantize.json").exists());
        return;
    }

    // Any drop allowed: kept, and eval on the kept file gives the record's figures.
    let r = quantize(&run, "100");
    assert_eq!(r["kept"], true, "{r}");
    assert_eq!(r["calibration_images"], 40);
    assert_eq!(r["heldout_images"], 153);
    let (fp32, int8) = (
        r["fp32_top1"].as_f64().unwrap(),
        r["int8_top1"].as_f64().unwrap(),
    );
    assert!(
        (r["drop_points"].as_f64().unwrap() - 100.0 * (fp32 - int8)).abs() < 1e-9,
        "{r}"
    );
    assert!(run.join("model.int8.onnx").is_file());
    assert_eq!(eval_top1(&run, "fp32"), fp32);
    assert_eq!(eval_top1(&run, "int8"), int8);
    assert_eq!(
        eval_top1(&run, "auto"),
        int8,
        "auto serves the kept int8 model"
    );
    assert!(int8 > 0.85, "int8 held-out top-1 {int8}");

    // No drop allowed beyond -100 points: refused, the old int8 model removed, fp32 served.
    let r = quantize(&run, "-100");
    assert_eq!(r["kept"], false, "{r}");
    assert!(!run.join("model.int8.onnx").exists());
    assert_eq!(eval_top1(&run, "auto"), fp32);
    let out = bin()
        .args(["eval"])
        .arg(&run)
        .args(["--json", "--engine", "ort", "--precision", "int8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no int8 model"), "{err}");

    // A folder that is not a run is refused, naming it.
    let out = bin().args(["quantize"]).arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
}
