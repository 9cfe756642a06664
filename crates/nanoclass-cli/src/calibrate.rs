//! `nanoclass calibrate`: fit a classification run's calibration (the temperature and the
//! unknown rule of `nanoclass::infer::calibration`) on its held-out images. Training does
//! this when it ends; this refits it, e.g. for a run trained by an older version.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use nanoclass::infer::calibration::calibrate_run;
use nanoclass::infer::engine::EngineChoice;

/// Flags of `nanoclass calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Run directory written by `nanoclass train` (classification).
    run: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Inference engine: ort (ONNX Runtime), burn (pure Rust), or auto (ort when its library
    /// loads).
    #[arg(long, default_value_t = EngineChoice::from_env())]
    engine: EngineChoice,
}

/// Runs `nanoclass calibrate`.
pub fn run(a: CalibrateArgs) -> Result<ExitCode> {
    let cache = nanoclass::infer::cache::default_dir();
    let fitted = calibrate_run(
        &a.run,
        a.engine,
        cache.as_deref(),
        a.batch_size,
        |done, total| {
            eprint!("\rimages {done}/{total}");
        },
    )?;
    eprintln!();
    if fitted.from_activation_cache > 0 {
        eprintln!(
            "{} images from the partial run's activation cache (only the trained layers ran)",
            fitted.from_activation_cache
        );
    }
    let cal = &fitted.calibration;
    let t = &cal.temperature;
    println!(
        "temperature {:.4} (NLL minimum at {:.4}), {} held-out images ({} right): NLL {:.4} -> \
         {:.4}, ECE {:.4} -> {:.4}, mean top-1 probability {:.4} (at most {:.4})",
        t.temperature,
        t.fitted,
        t.held_out,
        t.correct,
        t.nll_before,
        t.nll_after,
        t.ece_before,
        t.ece_after,
        t.mean_confidence,
        t.confidence_cap
    );
    match &cal.unknown {
        Some(u) => println!(
            "unknown rule: distance to the nearest of {} class prototypes above {:.4} \
             (chosen on {} held-out images, alpha {})",
            u.prototypes.len(),
            u.threshold,
            u.held_out,
            u.alpha
        ),
        None => println!("no unknown rule: a class has no training image"),
    }
    println!(
        "wrote {}",
        a.run.join(nanoclass::infer::calibration::FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}
