//! `train --mode partial` on real photos: a clocks subset (12 hours, categories ImageNet has no
//! class for) where training the last blocks must beat the frozen backbone's head, and the
//! result is an ordinary run (`eval` reads it; a second run reuses the activation cache).

mod common;

use std::path::Path;

use common::{bin, clocks_subset, eval_json, ok};

/// Best held-out top-1 in the run's metrics.jsonl, and the phases it ran.
fn best_top1(run: &Path) -> (f64, Vec<String>) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let best = lines
        .iter()
        .filter_map(|m| m["val_top1"].as_f64())
        .fold(0.0, f64::max);
    let phases = lines
        .iter()
        .map(|m| m["phase"].as_str().unwrap().to_string())
        .collect();
    (best, phases)
}

#[test]
fn partial_beats_frozen_on_clock_hours_and_is_an_ordinary_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = clocks_subset(tmp.path(), 16, 5);
    let cache = tmp.path().join("cache");
    let train = |mode: &str, extra: &[&str]| {
        let out = tmp.path().join(mode);
        let o = bin()
            .arg("train")
            .arg(&data)
            .args(["--mode", mode, "--out"])
            .arg(&out)
            .args(extra)
            .env("NANOCLASS_FEATURE_CACHE", &cache)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        ok(o, mode);
        (out, stderr)
    };
    let (frozen, _) = train("frozen", &["--epochs", "15"]);
    let (partial, log) = train("partial", &["--epochs", "4", "--views", "3"]);
    let (f, _) = best_top1(&frozen);
    let (p, phases) = best_top1(&partial);
    eprintln!("held-out top-1 on the clocks subset: frozen {f:.4}, partial {p:.4}");
    assert!(phases.iter().all(|ph| ph == "partial"), "{phases:?}");
    assert!(
        p > f,
        "partial {p} does not beat frozen {f} on clock hours\n{log}"
    );
    assert!(log.contains("views to compute"), "{log}");

    // An ordinary run: eval scores its published model on the held-out images with the
    // figure training reported, within one image (training scored f16-rounded cached
    // activations, eval runs the whole network on the pixels).
    let report = eval_json(&partial, &[]);
    let top1 = report["top1"].as_f64().unwrap();
    assert!(
        (top1 - p).abs() <= 1.0 / 60.0 + 1e-9,
        "eval {top1} vs training {p}"
    );

    // Calibration read the run's images from the activation cache (only the tail ran) and
    // fitted what the whole network on the pixels gives (`calibrate` with no cache).
    let cached: usize = log
        .split("images from the activation cache")
        .next()
        .and_then(|head| head.rsplit("; ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        cached,
        (16 + 5) * 12,
        "every image of the subset from the cache\n{log}"
    );
    let temperature = |text: &str| -> f64 {
        let after = text.split("temperature ").nth(1).expect(text);
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    let t_cached = temperature(&log);
    let o = bin()
        .args(["calibrate"])
        .arg(&partial)
        .env("NANOCLASS_FEATURE_CACHE", tmp.path().join("no-cache"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    ok(o, "calibrate");
    let t_whole = temperature(&out);
    assert!(
        (t_cached - t_whole).abs() <= 0.02 * t_whole,
        "temperature from cached activations {t_cached} vs the whole network {t_whole}"
    );

    // A second run finds every view in the cache and computes none.
    let (_, again) = train("partial", &["--epochs", "1", "--views", "3", "--force"]);
    assert!(again.contains("0 computed"), "{again}");
}
