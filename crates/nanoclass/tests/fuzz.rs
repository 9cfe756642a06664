//! Mutated images, weights files and run configurations must never take the process down:
//! a bounded, deterministic run of the fuzzer in `fuzz_support` (sized for CI; the
//! `fuzz` example runs it at any size), and the replay of every input that once crashed,
//! hung or blew up memory (`fixtures/fuzz/corpus`).
//!
//! Sizes: `NANOCLASS_FUZZ_IMAGES`, `NANOCLASS_FUZZ_WEIGHTS`, `NANOCLASS_FUZZ_CONFIGS`
//! (inputs of each kind; defaults 15 000, 1 000 with the complete EfficientNet-Lite0 files among
//! the seeds, 2 000: about a minute together in the test profile), `NANOCLASS_FUZZ_SEED`
//! (default 0).

mod fuzz_support;

use std::path::{Path, PathBuf};

use fuzz_support::{Options, Report, SLOW, peak_rss, run_configs, run_images, run_weights};
use nanoclass::data::decode::{DecodeOptions, decode_bytes};
use nanoclass::run::Run;

/// Peak RSS of the whole test process, every run included: under 1 GB.
const RSS_LIMIT: u64 = 1_000_000_000;

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options(count_var: &str, default: u64) -> Options {
    Options {
        seed: env_count("NANOCLASS_FUZZ_SEED", 0),
        start: 0,
        count: env_count(count_var, default),
        last_input: None,
    }
}

fn assert_clean(report: &Report, kind: &str) {
    println!("{}", report.summary(kind));
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|f| format!("#{} from {}: {}", f.index, f.seed_name, f.what))
        .collect();
    assert!(failures.is_empty(), "{kind}: {failures:#?}");
    assert!(report.inputs > 0);
    // The runs reach past the headers: some inputs are accepted, some refused.
    assert!(
        report.accepted > 0 && report.refused > 0,
        "{}",
        report.summary(kind)
    );
    if let Some(rss) = peak_rss() {
        println!(
            "peak RSS of the test process so far: {:.1} MB",
            rss as f64 / 1e6
        );
        assert!(rss < RSS_LIMIT, "peak RSS {rss} bytes");
    }
}

#[test]
fn mutated_images_never_abort_panic_or_hang() {
    let report = run_images(&options("NANOCLASS_FUZZ_IMAGES", 15_000));
    assert_clean(&report, "images");
    // Every seed format was drawn.
    for ext in ["jpg", "png", "gif", "bmp", "webp", "tiff"] {
        assert!(
            report.per_seed.keys().any(|k| k.ends_with(ext)),
            "no {ext} input in {:?}",
            report.per_seed
        );
    }
}

#[test]
fn mutated_weights_files_never_abort_panic_or_hang() {
    let report = run_weights(&options("NANOCLASS_FUZZ_WEIGHTS", 1000), true);
    assert_clean(&report, "weights");
}

#[test]
fn mutated_run_configs_never_abort_panic_or_hang() {
    let report = run_configs(&options("NANOCLASS_FUZZ_CONFIGS", 2000));
    assert_clean(&report, "configs");
}

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = fuzz_support::seeds::fixtures()
        .join("fuzz/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("list corpus").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

fn timed<T>(path: &Path, body: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let out = body();
    assert!(t.elapsed() < SLOW, "{}: {:?}", path.display(), t.elapsed());
    out
}

/// Every image that aborted the process (or hung) is now refused, with a reason that is not a
/// caught panic, at full size and at the eval preset's `min_side`.
#[test]
fn crashing_images_are_refused() {
    for path in corpus("images") {
        let bytes = std::fs::read(&path).expect("read corpus file");
        for min_side in [None, Some(256)] {
            let err = timed(&path, || {
                decode_bytes(&bytes, &path, &DecodeOptions { min_side })
            })
            .expect_err("a forged image is refused");
            let text = err.to_string();
            assert!(text.starts_with(&path.display().to_string()), "{text}");
            assert!(!text.contains("(panic:"), "{text}");
        }
    }
}

/// Every `config.json` that aborted a command (or held gigabytes for minutes) through the sizes
/// it holds is now refused by `Run::open`, naming the file and the field.
#[test]
fn crashing_run_configs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("labels.txt"), "ants\nbees\n").expect("labels");
    for path in corpus("configs") {
        std::fs::copy(&path, dir.path().join("config.json")).expect("copy config");
        let err = timed(&path, || Run::open(dir.path()))
            .err()
            .unwrap_or_else(|| panic!("{} opened", path.display()));
        let text = err.to_string();
        assert!(
            text.contains("config.json: ") && text.contains(" is outside the allowed range "),
            "{}: {text}",
            path.display()
        );
    }
}
