//! Helpers shared by the binary's end-to-end tests.

// Each test crate uses only some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `nanoclass` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nanoclass"))
}

/// `../shared/data` beside the repository (real photos).
pub fn shared_data() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        dir.join("hymenoptera").is_dir(),
        "real image data not found at {} (clone the repository beside shared/)",
        dir.display()
    );
    dir
}

/// Stdout of a run that must succeed (its stderr in the failure message).
pub fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The report of `nanoclass eval RUN --json` with `extra` arguments.
pub fn eval_json(run: &Path, extra: &[&str]) -> serde_json::Value {
    let out = bin()
        .args(["eval"])
        .arg(run)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    serde_json::from_str(&ok(out, "eval")).unwrap()
}

/// The first `n` training and `v` held-out images of every clocks class.
pub fn clocks_subset(root: &Path, n: usize, v: usize) -> PathBuf {
    let src = shared_data().join("clocks");
    let data = root.join("clocks");
    for (split, count) in [("train", n), ("val", v)] {
        let mut classes: Vec<PathBuf> = std::fs::read_dir(src.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        classes.sort();
        for class in classes {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&class)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let dir = data.join(split).join(class.file_name().unwrap());
            std::fs::create_dir_all(&dir).unwrap();
            for f in files.iter().take(count) {
                std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    data
}
