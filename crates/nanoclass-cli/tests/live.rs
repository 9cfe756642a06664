//! `nanoclass live` through the real binary on real photos (../shared/data/hymenoptera): the
//! per-frame top-1 over a folder source equals `nanoclass predict` on the same files, annotated
//! frames are written, and camera faults are reported by device.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nanoclass"))
}

fn hymenoptera() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/hymenoptera");
    assert!(
        dir.is_dir(),
        "real image data not found at {} (clone the repository beside shared/)",
        dir.display()
    );
    dir
}

fn ok(out: Output, what: &str) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// The first `n` images (by name) of `src`, copied to `dst`.
fn copy_first(src: &Path, dst: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dst).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .take(n)
        .map(|f| {
            let to = dst.join(f.file_name().unwrap());
            std::fs::copy(&f, &to).unwrap();
            to
        })
        .collect()
}

/// A frozen EfficientNet-Lite0 run on 15 + 15 real training photos.
fn small_run(tmp: &Path) -> PathBuf {
    let data = hymenoptera();
    let set = tmp.join("data");
    for class in ["ants", "bees"] {
        copy_first(
            &data.join("train").join(class),
            &set.join("train").join(class),
            15,
        );
        copy_first(
            &data.join("val").join(class),
            &set.join("val").join(class),
            5,
        );
    }
    let run = tmp.join("run");
    let out = bin()
        .arg("train")
        .arg(&set)
        .args([
            "--arch",
            "efficientnet_lite0",
            "--mode",
            "frozen",
            "--epochs",
            "5",
        ])
        .args(["--no-feature-cache", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    ok(out, "train");
    run
}

#[test]
fn live_over_a_folder_agrees_with_predict_and_writes_annotated_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let run = small_run(tmp.path());

    // 12 held-out photos of each class, played as a camera; names sort ants first.
    let frames = tmp.path().join("frames");
    let data = hymenoptera();
    let mut files = Vec::new();
    for class in ["ants", "bees"] {
        for f in copy_first(&data.join("val").join(class), &tmp.path().join(class), 12) {
            let to = frames.join(format!(
                "{class}-{}",
                f.file_name().unwrap().to_string_lossy()
            ));
            std::fs::create_dir_all(&frames).unwrap();
            std::fs::rename(&f, &to).unwrap();
            files.push(to);
        }
    }
    files.sort();

    let out = bin()
        .arg("predict")
        .arg(&run)
        .args(&files)
        .arg("--json")
        .output()
        .unwrap();
    let (stdout, _) = ok(out, "predict");
    let predicted: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["top"][0]["label"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(predicted.len(), 24);

    let annotated = tmp.path().join("annotated");
    let out = bin()
        .arg("live")
        .arg(&run)
        .arg("--source")
        .arg(format!("file://{}?loop=0", frames.display()))
        .args(["--json", "--top-k", "2", "--output"])
        .arg(&annotated)
        .output()
        .unwrap();
    let (stdout, stderr) = ok(out, "live");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 24, "{stderr}");
    let live: Vec<String> = rows
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(live, predicted, "live and predict disagree");
    // Each row names the file it scored, in the folder's name order.
    let named: Vec<PathBuf> = rows
        .iter()
        .map(|r| PathBuf::from(r["file"].as_str().unwrap()))
        .collect();
    assert_eq!(named, files);
    // A frozen head on 30 photos already separates most held-out ants from bees.
    let right = files
        .iter()
        .zip(&live)
        .filter(|(f, l)| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(l.as_str())
        })
        .count();
    assert!(right >= 18, "only {right} of 24 frames right");
    for r in &rows {
        let p: f64 = r["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["prob"].as_f64().unwrap())
            .sum();
        assert!(
            (p - 1.0).abs() < 1e-4,
            "two classes' probabilities sum to {p}"
        );
        assert!(r["fps"].as_f64().unwrap() > 0.0);
    }
    assert!(stderr.contains("24 frames in"), "{stderr}");
    assert!(stderr.contains("FPS end to end"), "{stderr}");

    let mut written: Vec<_> = std::fs::read_dir(&annotated)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    written.sort();
    assert_eq!(written.len(), 24);
    let first = image::open(&written[0]).unwrap().to_rgb8();
    let source = image::open(&files[0]).unwrap().to_rgb8();
    assert_eq!(first.dimensions(), source.dimensions());

    // Smoothing and a threshold: with threshold 1.0 nothing is sure.
    let out = bin()
        .arg("live")
        .arg(&run)
        .arg("--source")
        .arg(format!("file://{}?loop=0", frames.display()))
        .args(["--frames", "3", "--smoothing", "0.5", "--threshold", "1.0"])
        .output()
        .unwrap();
    let (stdout, _) = ok(out, "live with a threshold");
    assert_eq!(stdout.lines().count(), 3);
    assert!(stdout.lines().all(|l| l.contains("(unsure)")), "{stdout}");

    // A folder of class subfolders (an ImageFolder's val/): every file is read, each line
    // names its file.
    let classes = tmp.path().join("classes");
    for class in ["ants", "bees"] {
        copy_first(&data.join("val").join(class), &classes.join(class), 3);
    }
    let out = bin()
        .arg("live")
        .arg(&run)
        .arg("--source")
        .arg(format!("file://{}?loop=0", classes.display()))
        .output()
        .unwrap();
    let (stdout, _) = ok(out, "live over class subfolders");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let class = if i < 3 { "ants" } else { "bees" };
        let dir = classes.join(class).display().to_string();
        assert!(
            line.contains(&dir),
            "line {i} names no file of {dir}: {line}"
        );
    }
}

#[test]
fn live_names_a_missing_camera_and_refuses_bad_options() {
    let tmp = tempfile::tempdir().unwrap();
    // The source is opened after the run, so the run must exist: use a folder as a stand-in
    // run that is not one, and check the run error first.
    let out = bin()
        .arg("live")
        .arg(tmp.path())
        .args(["--source", "v4l2:///dev/video97"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json"), "{stderr}");

    let run = small_run(tmp.path());
    let out = bin()
        .arg("live")
        .arg(&run)
        .args(["--source", "v4l2:///dev/video97"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/dev/video97"), "{stderr}");

    let out = bin()
        .arg("live")
        .arg(&run)
        .args(["--source", "/nonexistent", "--smoothing", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("smoothing"), "{stderr}");
}
