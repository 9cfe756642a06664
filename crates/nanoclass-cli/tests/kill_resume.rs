//! A run killed (SIGKILL) at random moments, over and over, then continued with `--resume`,
//! ends with the same `metrics.jsonl` as a run that was never interrupted: the kills fall in
//! feature extraction, in epochs and in checkpoint writes alike; for partial fine-tuning, in
//! the activation cache build, its epochs and their checkpoints.
//!
//! `NANOCLASS_KILLS` sets how many kills land (default 6; the acceptance run uses 30 or more);
//! when a run completes before that, another starts in a fresh folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, shared_data};

/// An ImageFolder with `n` training and 3 held-out hymenoptera photos per class.
fn dataset(root: &Path, n: usize) -> PathBuf {
    let src = shared_data().join("hymenoptera");
    let data = root.join("data");
    for (split, count) in [("train", n), ("val", 3)] {
        for class in ["ants", "bees"] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(src.join(split).join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let dir = data.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for f in files.iter().take(count) {
                std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    data
}

/// finetune: feature extraction, 3 head epochs on cached features, then 2 full epochs with
/// checkpoints of the whole network.
const FINETUNE: &[&str] = &[
    "--mode",
    "finetune",
    "--head-epochs",
    "3",
    "--epochs",
    "2",
    "--batch-size",
    "4",
];

/// partial: the activation cache build (2 views per training image), then 4 epochs of the
/// host step on the cached activations.
const PARTIAL: &[&str] = &[
    "--mode",
    "partial",
    "--views",
    "2",
    "--epochs",
    "4",
    "--patience",
    "100",
    "--batch-size",
    "8",
];

/// `train` with `mode` (one of the settings above) and seed 5.
fn train(data: &Path, out: &Path, features: &Path, mode: &[&str]) -> Command {
    let mut c = bin();
    c.args(["train"])
        .arg(data)
        .args(mode)
        .args(["--seed", "5", "--out"])
        .arg(out)
        .env("NANOCLASS_FEATURE_CACHE", features)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn resume(out: &Path, features: &Path) -> Command {
    let mut c = bin();
    c.args(["train", "--resume"])
        .arg(out)
        .env("NANOCLASS_FEATURE_CACHE", features)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The metrics lines without their wall times, which differ between any two runs.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// A deterministic stream of numbers in [0, 1).
fn uniform(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn kills_at_random_moments_then_resume_give_the_uninterrupted_metrics() {
    kills_then_resume(FINETUNE, 5);
}

#[test]
fn partial_killed_in_its_cache_build_and_epochs_resumes_to_the_uninterrupted_metrics() {
    kills_then_resume(PARTIAL, 4);
}

/// A `mode` run of `epochs` epochs, killed at random moments and resumed, against the same run
/// never interrupted.
fn kills_then_resume(mode: &[&str], epochs: usize) {
    let kills: usize = std::env::var("NANOCLASS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 8);

    // The reference, never interrupted, with its own empty feature cache.
    let reference = tmp.path().join("reference");
    let t0 = Instant::now();
    let status = train(&data, &reference, &tmp.path().join("features-a"), mode)
        .status()
        .unwrap();
    assert!(status.success(), "uninterrupted run failed");
    let whole = t0.elapsed();
    let want = metrics(&reference);
    assert_eq!(want.len(), epochs, "{want:?}");

    // The same run, killed at random moments within the uninterrupted run's length (the first
    // attempt starts it, later ones resume it), with a cache of its own, then resumed to its end;
    // again in a fresh folder (cache kept) until `kills` kills have landed.
    let features = tmp.path().join("features-b");
    let mut rng = 0x5eed_u64;
    let (mut landed, mut completed_early) = (0, 0);
    let mut cycle = 0;
    while landed < kills {
        let run = tmp.path().join(format!("killed-{cycle}"));
        cycle += 1;
        for k in 0..kills - landed {
            let mut cmd = if committed(&run) {
                resume(&run, &features)
            } else {
                train(&data, &run, &features, mode)
            };
            let mut child = cmd.spawn().unwrap();
            let wait = whole.mul_f64(uniform(&mut rng));
            let deadline = Instant::now() + wait;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    // It finished (or refused: every epoch already done) before the kill.
                    completed_early += 1;
                    assert!(
                        status.success() || run.join("metrics.jsonl").exists(),
                        "attempt {k} failed on its own"
                    );
                    break;
                }
                if Instant::now() >= deadline {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    landed += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if metrics_complete(&run, epochs) {
                break;
            }
        }
        // Then resume until it is done.
        for _ in 0..3 {
            if metrics_complete(&run, epochs) {
                break;
            }
            let status = if committed(&run) {
                resume(&run, &features).status().unwrap()
            } else {
                train(&data, &run, &features, mode).status().unwrap()
            };
            assert!(status.success(), "the final resume failed");
        }
        assert_eq!(
            metrics(&run),
            want,
            "cycle {cycle}: {landed} kills so far, {completed_early} attempts ended before their kill"
        );
        // Nothing half-written is left behind in the run, its checkpoint or the caches.
        let mut dirs = vec![run.clone(), run.join("checkpoint")];
        for e in std::fs::read_dir(&features).unwrap() {
            dirs.push(e.unwrap().path());
        }
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(".nanoclass-tmp-"),
                    "{}/{name} left",
                    dir.display()
                );
            }
        }
    }
    println!(
        "{landed} kills over {cycle} runs ({completed_early} attempts ended before their kill): \
         every run's metrics equal the uninterrupted run's"
    );
}

/// Whether the run has committed an epoch: then it is continued with `--resume`; a run killed
/// before its first commit is started again with the same command (it kept nothing to continue).
fn committed(run: &Path) -> bool {
    let checkpoint = run.join("checkpoint");
    checkpoint.join("CURRENT").is_file() || checkpoint.join("state.json").is_file()
}

fn metrics_complete(run: &Path, epochs: usize) -> bool {
    run.join("metrics.jsonl").exists() && metrics(run).len() == epochs
}

/// Sends SIGINT (what Ctrl-C sends) to `child`.
fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -INT failed");
}

/// Reads the child's stderr on a thread until a line satisfies `ready`; returns what it read
/// then, and the thread that keeps reading to the end.
fn stderr_until(
    child: &mut std::process::Child,
    ready: impl Fn(&str) -> bool + Send + 'static,
) -> std::thread::JoinHandle<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && ready(&line) {
                let _ = tx.send(());
                sent = true;
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(600))
        .expect("the awaited line never came");
    reader
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_training_and_says_how_to_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path(), 8);
    let features = tmp.path().join("features");

    // Ctrl-C after the first committed epoch: the epochs are kept, and the command that
    // continues the run is printed; that command finishes it.
    let run = tmp.path().join("run");
    let mut cmd = train(&data, &run, &features, FINETUNE);
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let rest = stderr_until(&mut child, |l| l.starts_with("epoch   1 "));
    interrupt(&child);
    let status = child.wait().unwrap();
    let stderr = rest.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "continue it with: nanoclass train --resume {}",
            run.display()
        )),
        "{stderr}"
    );
    let kept = metrics(&run).len();
    assert!((1..5).contains(&kept), "{kept} epochs kept:\n{stderr}");
    let status = resume(&run, &features).status().unwrap();
    assert!(status.success());
    assert_eq!(metrics(&run).len(), 5);

    // Ctrl-C before any epoch ends (full mode: each step is a whole forward and backward
    // pass, so the first epoch takes seconds): nothing is kept, and it says to start over
    // (the same command), since --resume has nothing to continue.
    let early = tmp.path().join("early");
    let mut cmd = bin();
    cmd.arg("train")
        .arg(&data)
        .args([
            "--mode",
            "full",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
        ])
        .arg(&early)
        .env("NANOCLASS_FEATURE_CACHE", &features)
        .stdout(Stdio::null());
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let rest = stderr_until(&mut child, |l| l.contains("training and"));
    interrupt(&child);
    let status = child.wait().unwrap();
    let stderr = rest.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("no epoch was completed"), "{stderr}");
    assert!(
        stderr.contains("same `nanoclass train` command"),
        "{stderr}"
    );
    assert!(!early.join("config.json").exists(), "{stderr}");

    // --resume on it names --force.
    let out = resume(&early, &features)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no training state to resume"), "{err}");
    assert!(err.contains("--force"), "{err}");
}
