//! Calibration and the "unknown" answer end to end on real photos: a run trained on two flower
//! classes of ../shared/data/flowers5_128px (daisy, rose; EfficientNet-Lite0, frozen) is
//! calibrated when training ends; with `--unknown`, photos of a withheld third class (ants, of
//! ../shared/data/hymenoptera) come out unknown while the known classes' `val/` photos keep
//! their labels.

mod common;

use std::path::Path;

use common::{bin, ok, shared_data};

fn copy_class(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn predict_unknown(run: &Path, folder: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = bin()
        .args(["predict"])
        .arg(run)
        .arg(folder)
        .args(["--json"])
        .args(extra)
        .output()
        .unwrap();
    ok(out, "predict")
        .lines()
        .filter(|l| l.starts_with("{\"distance\"") || l.contains("\"top\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_withheld_class_comes_out_unknown_and_known_photos_keep_their_labels() {
    let flowers = shared_data().join("flowers5_128px");
    let tmp = tempfile::tempdir().unwrap();
    let (data, known) = (tmp.path().join("data"), tmp.path().join("known"));
    for c in ["daisy", "rose"] {
        copy_class(&flowers.join("train").join(c), &data.join(c));
        copy_class(&flowers.join("val").join(c), &known.join(c));
    }
    let run = tmp.path().join("run");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args(["--arch", "efficientnet_lite0", "--mode", "frozen", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out, "train");
    assert!(
        stderr.contains("calibrated on 32 held-out images"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown rule: distance"), "{stderr}");
    let cal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("calibration.json")).unwrap())
            .unwrap();
    // The mean held-out confidence never exceeds (k + 1) / (n + 2).
    let t = &cal["temperature"];
    let (k, n) = (
        t["correct"].as_f64().unwrap(),
        t["held_out"].as_f64().unwrap(),
    );
    assert!(t["mean_confidence"].as_f64().unwrap() <= (k + 1.0) / (n + 2.0) + 1e-6);

    // Known classes: top-1 with and without the rule; the rule may cost at most 2 points.
    let rows = predict_unknown(&run, &known, &["--unknown"]);
    assert_eq!(rows.len(), 40);
    let right = |r: &serde_json::Value| {
        let path = r["path"].as_str().unwrap();
        path.contains(&format!("/{}/", r["top"][0]["label"].as_str().unwrap()))
    };
    let correct = rows.iter().filter(|r| right(r)).count();
    let kept = rows
        .iter()
        .filter(|r| right(r) && r["unknown"] == false)
        .count();
    assert!(correct >= 34, "known top-1 {correct}/40");
    assert!(
        (correct - kept) as f64 / 40.0 <= 0.02,
        "the unknown rule took {} of {correct} right answers",
        correct - kept
    );
    // The withheld class: ants.
    let ants = shared_data().join("hymenoptera/val/ants");
    let rows = predict_unknown(&run, &ants, &["--unknown"]);
    let unknown = rows.iter().filter(|r| r["unknown"] == true).count();
    assert!(rows.len() >= 60);
    assert!(
        unknown as f64 >= 0.8 * rows.len() as f64,
        "{unknown} of {} withheld photos unknown",
        rows.len()
    );
    // Text output names them; without --unknown nothing is unknown.
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .arg(ants.join("10308379_1b6c72e180.jpg"))
        .arg("--unknown")
        .output()
        .unwrap();
    assert!(ok(out, "predict").contains("\tunknown"));
    let rows = predict_unknown(&run, &ants, &[]);
    assert!(rows.iter().all(|r| r.get("unknown").is_none()));

    // Retraining (a new model file) makes the old calibration stale: --unknown refuses it.
    let cal_path = run.join("calibration.json");
    let mut stale = cal.clone();
    stale["model_sha256"] = "0".repeat(64).into();
    std::fs::write(&cal_path, stale.to_string()).unwrap();
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .arg(&ants)
        .arg("--unknown")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nanoclass calibrate"));
    // `nanoclass calibrate` fits it again, to the same rule.
    let out = bin().args(["calibrate"]).arg(&run).output().unwrap();
    assert!(ok(out, "calibrate").contains("unknown rule"));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cal_path).unwrap()).unwrap();
    assert_eq!(again, cal);
}
