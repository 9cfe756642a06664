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
