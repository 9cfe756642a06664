//! The main job, `scripts/hymenoptera.sh`, as a user runs it: twice in a row (the second run
//! trains into a fresh folder), with `--force` (replaces the run), and on a machine without
//! `../shared/data`, where it downloads the tutorial's archive, here from a local HTTP server
//! (`python3 -m http.server` on 127.0.0.1) serving an archive built from the shared photos.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::shared_data;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/hymenoptera.sh")
}

/// `bash scripts/hymenoptera.sh ARGS` with the binary under test and a short training.
fn job(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .args(["--epochs", "2"])
        .env("NANOCLASS_BIN", env!("CARGO_BIN_EXE_nanoclass"))
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The job's own checks: training reported, eval scored the 153 held-out photos, predict
/// classified the two photos.
fn assert_job_done(out: &Output, what: &str) {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    assert!(stdout.contains("best held-out top-1"), "{what}:\n{stdout}");
    assert!(stdout.contains("153 samples, top-1"), "{what}:\n{stdout}");
    assert!(
        stdout.contains("val/ants/10308379_1b6c72e180.jpg\tants"),
        "{what}:\n{stdout}"
    );
}

#[test]
fn the_main_job_runs_twice_and_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let run_arg = run.to_str().unwrap();

    let first = job(&[run_arg]);
    assert_job_done(&first, "first run");
    assert!(run.join("model.safetensors").is_file());

    let second = job(&[run_arg]);
    assert_job_done(&second, "second run");
    let (_, stderr) = text(&second);
    let fresh = tmp.path().join("run-2");
    assert!(
        stderr.contains(&format!("training into {}", fresh.display())),
        "{stderr}"
    );
    assert!(fresh.join("model.safetensors").is_file());

    let forced = job(&["--force", run_arg]);
    assert_job_done(&forced, "run with --force");
    assert!(
        !tmp.path().join("run-3").exists(),
        "--force made a new folder"
    );
}

/// Writes a zip of the shared photos under `hymenoptera_data/` (as the tutorial's archive
/// holds them), plus the archive's placeholder GIF; `tamper` changes one byte of one photo.
fn make_archive(zip: &Path, tamper: Option<&str>) {
    let script = r#"
import os, sys, zipfile
src, out, tamper = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(out, "w") as z:
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            d = os.path.join(src, split, cls)
            for name in sorted(os.listdir(d)):
                rel = f"{split}/{cls}/{name}"
                data = open(os.path.join(d, name), "rb").read()
                if rel == tamper:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                z.writestr("hymenoptera_data/" + rel, data)
    z.writestr("hymenoptera_data/train/ants/imageNotFound.gif", b"GIF89a placeholder")
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(shared_data().join("hymenoptera"))
        .arg(zip)
        .arg(tamper.unwrap_or(""))
        .status()
        .unwrap();
    assert!(status.success(), "building {}", zip.display());
}

/// `python3 -m http.server` on 127.0.0.1, a free port, serving `dir`; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server { child, port }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

#[test]
fn without_shared_data_the_archive_is_downloaded_checked_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    std::fs::create_dir(&srv).unwrap();
    make_archive(&srv.join("good.zip"), None);
    let bad_photo = "train/bees/1092977343_cb42b38d62.jpg";
    make_archive(&srv.join("tampered.zip"), Some(bad_photo));
    let server = Server::start(&srv);

    let no_shared = tmp.path().join("no-shared-data");
    let store = tmp.path().join("store");
    let data = store.join("hymenoptera");
    let run = tmp.path().join("run");
    let run_arg = run.to_str().unwrap();
    let env = |url: &str, zip_sha: Option<&str>| {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg(run_arg)
            .args(["--epochs", "2"])
            .env("NANOCLASS_BIN", env!("CARGO_BIN_EXE_nanoclass"))
            .env("NANOCLASS_SHARED_DATA", &no_shared)
            .env("NANOCLASS_DATA_DIR", &store)
            .env("HYMENOPTERA_URL", url);
        match zip_sha {
            Some(h) => cmd.env("HYMENOPTERA_ZIP_SHA256", h),
            None => cmd.env_remove("HYMENOPTERA_ZIP_SHA256"),
        };
        cmd.output().unwrap()
    };

    // An archive whose own SHA-256 is not the one asked for: refused, nothing kept.
    let out = env(&server.url("good.zip"), Some(&"0".repeat(64)));
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is not the expected archive"), "{stderr}");
    assert!(!data.exists());

    // A photo that differs from the pinned list: refused, naming the photo; nothing kept.
    let out = env(&server.url("tampered.zip"), None);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("{bad_photo}: FAILED")), "{stderr}");
    assert!(!data.exists());
    assert!(!run.exists(), "trained on a refused download");

    // The right archive (and its right SHA-256): downloaded, the 397 photos kept without the
    // placeholder GIF, and the job runs on them.
    let good_sha = sha256(&srv.join("good.zip"));
    let out = env(&server.url("good.zip"), Some(&good_sha));
    assert_job_done(&out, "download run");
    let (_, stderr) = text(&out);
    assert!(stderr.contains("downloading"), "{stderr}");
    assert_eq!(count_files(&data), 397);
    assert!(!data.join("train/ants/imageNotFound.gif").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "hymenoptera")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?} left in the store");

    // Again: the kept photos are used, nothing is downloaded (the server is gone).
    drop(server);
    let out = env("http://127.0.0.1:9/gone.zip", None);
    assert_job_done(&out, "second download-path run");
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("downloading"), "{stderr}");
    assert!(tmp.path().join("run-2/model.safetensors").is_file());
}
