//! One binary built with the `wgpu` feature trains on the CPU and on the GPU, as `--device`
//! says: the same command with `--device cpu` and `--device wgpu` (Mesa's software Vulkan,
//! lavapipe, on a machine without a GPU) both finish, say where they trained, and store the
//! device in the run; both models predict the held-out photos well above chance. The GPU's
//! tuned kernel choices land in `$NANOCLASS_GPU_CACHE`, and the second GPU run says it uses
//! them. (The backbone features come from the feature cache the CPU run filled, so the GPU runs
//! train the head only: software Vulkan is slow.)
//!
//! Built only with the `wgpu` feature (`.ci/run` builds the suite with it).
#![cfg(feature = "wgpu")]

mod common;

use std::path::{Path, PathBuf};

use common::{bin, eval_json, ok, shared_data};

/// 8 training photos per class of hymenoptera, and its whole `val/` split held out.
fn small_hymenoptera(root: &Path) -> PathBuf {
    let src = shared_data().join("hymenoptera");
    let data = root.join("data");
    for class in ["ants", "bees"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(src.join("train").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let dir = data.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files.iter().take(8) {
            std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let val = data.join("val").join(class);
        std::fs::create_dir_all(&val).unwrap();
        for e in std::fs::read_dir(src.join("val").join(class)).unwrap() {
            let f = e.unwrap().path();
            std::fs::copy(&f, val.join(f.file_name().unwrap())).unwrap();
        }
    }
    data
}

#[test]
fn one_binary_trains_on_cpu_and_on_wgpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_hymenoptera(tmp.path());
    let features = tmp.path().join("features");
    let gpu_cache = tmp.path().join("gpu-kernels");
    for (i, device) in ["cpu", "wgpu", "wgpu"].into_iter().enumerate() {
        let run = tmp.path().join(format!("run-{i}-{device}"));
        let out = bin()
            .arg("train")
            .arg(&data)
            .args([
                "--mode", "frozen", "--epochs", "5", "--device", device, "--out",
            ])
            .arg(&run)
            .env("NANOCLASS_FEATURE_CACHE", &features)
            .env("NANOCLASS_GPU_CACHE", &gpu_cache)
            // Autotune's least effort (it still times and keeps its choices): on software
            // Vulkan each candidate kernel is compiled by LLVM before it is timed.
            .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        ok(out, &format!("train --device {device}"));
        // Where it trained is said on stderr, with the progress.
        let out = stderr;
        let gpu_note = out.contains("training on the GPU (wgpu)");
        assert_eq!(gpu_note, device == "wgpu", "{device}: {out}");
        if device == "wgpu" {
            let first = i == 1;
            let said = if first {
                "compiling GPU kernels and timing their choices: the first run on this machine"
            } else {
                "tuned kernel choices from"
            };
            assert!(out.contains(said), "run {i}: {out}");
            assert!(out.contains(&gpu_cache.display().to_string()), "{out}");
            assert!(
                gpu_cache.join("default.db").is_file(),
                "no tuned kernels kept"
            );
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["device"], device, "{config}");
        // EfficientNet-Lite0 features with a head trained on 16 photos: far above the 0.5 of
        // chance on the 153 held-out photos, on either device.
        let report = eval_json(&run, &[]);
        let top1 = report["top1"].as_f64().unwrap();
        assert!(top1 > 0.8, "{device}: held-out top-1 {top1}");
    }
}
