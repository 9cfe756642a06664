//! `train --precision fp16|bf16` on real photos: the partial recipe on a clocks subset (12
//! hours) trained in mixed precision scores on the held-out images like the same run in fp32,
//! and the run records its precision; the modes that train only a head refuse it.

mod common;

use std::path::Path;

use common::{bin, clocks_subset, ok};

/// Held-out top-1 and loss of the last epoch in the run's metrics.jsonl.
fn last_epoch(run: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    (
        last["val_top1"].as_f64().unwrap(),
        last["val_loss"].as_f64().unwrap(),
    )
}

#[test]
fn mixed_precision_partial_runs_score_like_fp32_and_record_their_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_per_class, val_per_class) = (12, 5);
    let data = clocks_subset(tmp.path(), train_per_class, val_per_class);
    let cache = tmp.path().join("cache");
    let train = |precision: &str| {
        let out = tmp.path().join(precision);
        let o = bin()
            .arg("train")
            .arg(&data)
            .args(["--mode", "partial", "--epochs", "3", "--views", "2"])
            .args(["--precision", precision, "--out"])
            .arg(&out)
            .env("NANOCLASS_FEATURE_CACHE", &cache)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        ok(o, precision);
        (out, stderr)
    };
    let (fp32, _) = train("fp32");
    let (reference, reference_loss) = last_epoch(&fp32);
    let held_out = (12 * val_per_class) as f64;
    // Well above chance (1/12): the comparison below is between runs that learned.
    assert!(reference > 0.4, "fp32 held-out top-1 {reference}");
    for precision in ["fp16", "bf16"] {
        let (run, log) = train(precision);
        assert!(
            log.contains(&format!(
                "training steps through the backbone in {precision}"
            )),
            "{log}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["precision"], precision);
        let (top1, loss) = last_epoch(&run);
        eprintln!(
            "held-out top-1 / loss on the clocks subset: fp32 {reference:.4} / \
             {reference_loss:.5}, {precision} {top1:.4} / {loss:.5}"
        );
        // The steps computed in half precision: the trained weights differ from fp32's.
        assert_ne!(loss, reference_loss, "{precision}");
        // Within 3 of the 60 held-out images of the fp32 run.
        assert!(
            (top1 - reference).abs() <= 3.0 / held_out + 1e-9,
            "{precision} {top1} vs fp32 {reference}\n{log}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fp32.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["precision"], "fp32");

    // The head-only modes train in fp32 and say so rather than ignore the flag.
    let o = bin()
        .arg("train")
        .arg(&data)
        .args(["--mode", "frozen", "--precision", "fp16", "--out"])
        .arg(tmp.path().join("frozen"))
        .env("NANOCLASS_FEATURE_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(
        stderr.contains("--precision fp16 applies to the steps through the backbone"),
        "{stderr}"
    );
}
