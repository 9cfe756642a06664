//! The mutation fuzzer of `tests/fuzz.rs` at any size:
//!
//! ```text
//! cargo run --release -p nanoclass --example fuzz -- \
//!     [--images 10000] [--weights 1000] [--configs 1000] [--full-models] \
//!     [--seed 0] [--start 0] [--failures DIR]
//! ```
//!
//! Prints one line per kind of input (counts, failures, the slowest input) and the peak RSS of
//! the process, and exits with 1 when any input failed (panicked out of the library, or took
//! more than 5 s) or the peak RSS reached 1 GB. `--full-models` adds complete EfficientNet-Lite0
//! weights files (19 MB) to the weights seeds. `--failures DIR` writes each failing input there,
//! and the input being tried to `DIR/last-input` before each try (the input of an abort).

#[path = "../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::path::PathBuf;
use std::process::ExitCode;

use fuzz_support::{Options, Report, peak_rss, run_configs, run_images, run_weights};

/// The peak RSS a run must stay under: 1 GB.
const RSS_LIMIT: u64 = 1_000_000_000;

struct Args {
    images: u64,
    weights: u64,
    configs: u64,
    full_models: bool,
    seed: u64,
    start: u64,
    failures: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        images: 10_000,
        weights: 1_000,
        configs: 1_000,
        full_models: false,
        seed: 0,
        start: 0,
        failures: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--full-models" {
            args.full_models = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--images" => args.images = number()?,
            "--weights" => args.weights = number()?,
            "--configs" => args.configs = number()?,
            "--seed" => args.seed = number()?,
            "--start" => args.start = number()?,
            "--failures" => args.failures = Some(PathBuf::from(&value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

fn save_failures(report: &Report, kind: &str, dir: &Option<PathBuf>) {
    for f in &report.failures {
        println!(
            "  FAIL {kind} #{} from {}: {}",
            f.index, f.seed_name, f.what
        );
        if let Some(dir) = dir {
            let path = dir.join(format!("{kind}-{}-{}", f.index, f.seed_name));
            if let Err(e) = std::fs::write(&path, &f.bytes) {
                eprintln!("{}: {e}", path.display());
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.failures
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let opts = |count| Options {
        seed: args.seed,
        start: args.start,
        count,
        last_input: args.failures.as_ref().map(|d| d.join("last-input")),
    };
    let mut failed = false;
    let runs: [(&str, u64); 3] = [
        ("images", args.images),
        ("weights", args.weights),
        ("configs", args.configs),
    ];
    for (kind, count) in runs {
        if count == 0 {
            continue;
        }
        let report = match kind {
            "images" => run_images(&opts(count)),
            "weights" => run_weights(&opts(count), args.full_models),
            _ => run_configs(&opts(count)),
        };
        println!("{}", report.summary(kind));
        let seeds: Vec<String> = report
            .per_seed
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!("  inputs per seed: {}", seeds.join(", "));
        save_failures(&report, kind, &args.failures);
        failed |= !report.failures.is_empty();
    }
    match peak_rss() {
        Some(rss) => {
            println!("peak RSS {:.1} MB", rss as f64 / 1e6);
            failed |= rss >= RSS_LIMIT;
        }
        None => println!("peak RSS not available on this system"),
    }
    if failed {
        println!("FAILED");
        ExitCode::FAILURE
    } else {
        println!("ok");
        ExitCode::SUCCESS
    }
}
