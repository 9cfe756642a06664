//! `nanoclass quantize RUN`: static post-training int8 quantization of a classification run for
//! live use, kept only when it costs at most a set drop in held-out top-1.
//!
//! 1. The run's fp32 ONNX export (the one the ONNX Runtime engine serves, [`crate::infer::engine`]).
//! 2. Calibration: up to `calibration` of the run's own training images (never held-out ones),
//!    spread evenly over the sorted list, preprocessed with the run's eval preset
//!    (`[N, 3, H, W]` f32 RGB, normalised).
//! 3. Quantization by ONNX Runtime's quantizer (`onnxruntime.quantization.quantize_static`, the
//!    field's maintained tool, run in Python: [`QUANTIZER`]): QDQ format, u8 activations,
//!    per-channel s8 weights, with each of [`CALIBRATION_METHODS`]; the one closest to fp32 on
//!    the calibration images is used. It knows every operator pattern ONNX Runtime
//!    fuses into int8 kernels (VNNI on x86); nanoclass has no quantizer of its own.
//! 4. Held-out top-1 of fp32 and int8 on the run's held-out images, and batch-1 model latency
//!    of both (median of [`LATENCY_RUNS`]) in ONNX Runtime.
//! 5. The int8 model is kept (`RUN/model.int8.onnx`) only when its top-1 is at most
//!    `max_drop_points` (default 1) percentage points below fp32; otherwise it is refused and
//!    any older int8 model of the run is removed. `RUN/quantize.json` records the figures and
//!    the SHA-256 of the model file they belong to, so retraining invalidates the int8 model.
//!
//! Where the engine is ONNX Runtime, `predict`, `eval` and `live` use the kept int8 model by
//! default ([`Precision::Auto`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::data::decode::DecodeOptions;
use crate::data::folder::Sample;
use crate::data::loader::decode_batches;
use crate::eval::heldout::EvalSplit;
use crate::fs::write_atomic;
use crate::infer::engine::EngineChoice;
use crate::infer::precision::{INT8_MODEL, Precision, QuantizeRecord, RECORD};
use crate::infer::predictor::Predictor;
use crate::model::registry::sha256_file;
use crate::run::{Run, Task};
use crate::{Error, Result};

/// Batch-1 runs timed per model (after 5 warm-up runs).
pub const LATENCY_RUNS: usize = 50;
/// The quantizer: the Python module that does the work, and how it is set.
pub const QUANTIZER: &str = "onnxruntime.quantization.quantize_static (QDQ, u8 activations, \
                             per-channel s8 weights)";

/// Activation-range calibrations tried: ONNX Runtime's MinMax (the full observed range) and
/// Percentile (99.999th percentile of |x|, which clips rare outliers). The one whose int8 model
/// follows fp32 most closely on the calibration images (mean KL divergence of the softmax) is
/// kept; held-out images only decide whether int8 is kept at all.
pub const CALIBRATION_METHODS: [&str; 2] = ["minmax", "percentile"];

/// Mean `KL(softmax(p) || softmax(q))` over rows.
fn mean_kl(p: &[Vec<f32>], q: &[Vec<f32>]) -> f64 {
    let sm = |r: &[f32]| -> Vec<f64> {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = r.iter().map(|v| f64::from(v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    };
    let total: f64 = p
        .iter()
        .zip(q)
        .map(|(a, b)| {
            let (a, b) = (sm(a), sm(b));
            a.iter()
                .zip(&b)
                .map(|(x, y)| {
                    if *x > 0.0 {
                        x * (x / y.max(1e-300)).ln()
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
        })
        .sum();
    total / p.len().max(1) as f64
}

/// Settings of [`quantize`].
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Most training images for calibration.
    pub calibration: usize,
    /// Python interpreter with `onnxruntime` and `numpy` installed.
    pub python: String,
    /// Largest held-out top-1 drop, in percentage points, that keeps the int8 model.
    pub max_drop_points: f64,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            calibration: 200,
            python: "python3".into(),
            max_drop_points: 1.0,
        }
    }
}

/// `n` items spread evenly over `v` (all of them when `n >= v.len()`).
fn spread<T: Clone>(v: &[T], n: usize) -> Vec<T> {
    if n >= v.len() {
        return v.to_vec();
    }
    (0..n).map(|i| v[i * v.len() / n].clone()).collect()
}

/// Held-out top-1 (0 when no held-out image could be decoded).
fn top1(p: &Predictor, samples: &[Sample]) -> Result<f64> {
    Ok(p.evaluate(samples, 32)?.0.top1.unwrap_or(0.0))
}

/// Median batch-1 latency of `p` on `pixels` (one preprocessed image), in milliseconds.
fn latency_ms(p: &Predictor, pixels: &[f32]) -> Result<f64> {
    for _ in 0..5 {
        p.logits(pixels.to_vec(), 1)?;
    }
    let mut t = Vec::with_capacity(LATENCY_RUNS);
    for _ in 0..LATENCY_RUNS {
        let s = Instant::now();
        p.logits(pixels.to_vec(), 1)?;
        t.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Quantizes the classification run in `run_dir` (see the module docs); `info` receives
/// progress lines.
///
/// # Errors
/// A regression run; ONNX Runtime not available; no training or held-out images; the Python
/// quantizer missing or failing (its message, with how to install it); files that cannot be
/// written.
pub fn quantize(
    run_dir: &Path,
    opts: &QuantizeOptions,
    info: &mut dyn FnMut(String),
) -> Result<QuantizeRecord> {
    let t0 = Instant::now();
    let run = Run::open(run_dir)?;
    if run.config.task != Task::Classification {
        return Err(Error::Run {
            path: run_dir.to_path_buf(),
            reason: format!(
                "is a {} run: quantize measures held-out top-1, which needs a classification run",
                run.config.task
            ),
        });
    }
    let fp32 = Predictor::open_full(run_dir, EngineChoice::Ort, Precision::Fp32)?;
    let fp32_onnx = fp32
        .onnx_path()
        .ok_or_else(|| Error::Other("the fp32 model is not on ONNX Runtime".into()))?
        .to_path_buf();
    let model_sha256 = sha256_file(&run.model_path())?;
    let data = run.config.data.clone();
    let (heldout, heldout_from) = fp32.run.held_out(&data, EvalSplit::Val)?;
    if heldout.is_empty() {
        return Err(Error::Dataset {
            path: data,
            reason: "no held-out images: quantize needs them to measure the int8 drop".into(),
        });
    }
    let train = fp32.run.training_images()?;
    let calib = spread(&train, opts.calibration);
    if calib.is_empty() {
        return Err(Error::Dataset {
            path: data,
            reason: "no training images to calibrate on".into(),
        });
    }
    let preset = run.config.eval_preset;
    let size = preset.crop as usize;
    let mut pixels: Vec<f32> = Vec::with_capacity(calib.len() * 3 * size * size);
    let mut n = 0;
    let dec = DecodeOptions {
        min_side: Some(preset.decode_min_side()),
    };
    let paths: Vec<PathBuf> = calib.iter().map(|s| s.path.clone()).collect();
    for (batch, _skipped) in decode_batches(paths, 32, dec, move |img| preset.apply(img)) {
        n += batch.n;
        pixels.extend(batch.pixels);
    }
    info(format!(
        "calibrating on {n} training images, scoring on {} held-out images ({heldout_from})",
        heldout.len()
    ));
    let tmp = tempfile::tempdir_in(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let calib_file = tmp.path().join("calibration.f32");
    let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&calib_file, bytes).map_err(|e| Error::io(&calib_file, e))?;
    let script = tmp.path().join("quantize_ort.py");
    std::fs::write(&script, include_str!("quantize_ort.py")).map_err(|e| Error::io(&script, e))?;
    let int8_tmp = tmp.path().join(INT8_MODEL);
    let version = Command::new(&opts.python)
        .args(["-c", "import onnxruntime; print(onnxruntime.__version__)"])
        .output();
    let version = match version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            return Err(Error::Other(format!(
                "{}: no onnxruntime module ({}); install it with `{} -m pip install \
                 onnxruntime==1.31.1`",
                opts.python,
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or(""),
                opts.python
            )));
        }
        Err(e) => {
            return Err(Error::Other(format!(
                "{}: cannot run it ({e}); quantize needs Python with onnxruntime",
                opts.python
            )));
        }
    };
    info(format!(
        "quantizing with onnxruntime {version} in {}",
        opts.python
    ));
    // Each calibration method, scored by how closely the int8 model follows fp32 on the
    // calibration images themselves (no labels, no held-out image).
    let reference = fp32.logits(pixels.clone(), n)?;
    let mut best: Option<(f64, &str, PathBuf)> = None;
    for method in CALIBRATION_METHODS {
        let out_path = tmp.path().join(format!("{method}.onnx"));
        let out = Command::new(&opts.python)
            .arg(&script)
            .arg(&fp32_onnx)
            .arg(&calib_file)
            .arg(n.to_string())
            .arg(size.to_string())
            .arg(&out_path)
            .arg(method)
            .output()
            .map_err(|e| Error::Other(format!("{}: {e}", opts.python)))?;
        if !out.status.success() || !out_path.is_file() {
            // One method failing (e.g. out of memory) leaves the others.
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(6).collect();
            info(format!(
                "{method} calibration failed ({}):\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
            continue;
        }
        let q = Predictor::open_onnx(run_dir, &out_path)?;
        let kl = mean_kl(&reference, &q.logits(pixels.clone(), n)?);
        info(format!(
            "{method} calibration: mean KL(fp32 || int8) {kl:.5} on the calibration images"
        ));
        if best.as_ref().is_none_or(|b| kl < b.0) {
            best = Some((kl, method, out_path));
        }
    }
    let (fidelity_kl, method, chosen) = best.ok_or_else(|| {
        Error::Other(format!(
            "the quantizer failed with every calibration method ({})",
            CALIBRATION_METHODS.join(", ")
        ))
    })?;
    std::fs::rename(&chosen, &int8_tmp).map_err(|e| Error::io(&int8_tmp, e))?;
    let int8 = Predictor::open_onnx(run_dir, &int8_tmp)?;
    let fp32_top1 = top1(&fp32, &heldout)?;
    let int8_top1 = top1(&int8, &heldout)?;
    let one = &pixels[..3 * size * size];
    let fp32_ms = latency_ms(&fp32, one)?;
    let int8_ms = latency_ms(&int8, one)?;
    let drop_points = 100.0 * (fp32_top1 - int8_top1);
    let kept = drop_points <= opts.max_drop_points;
    let final_path = run_dir.join(INT8_MODEL);
    drop(int8);
    if kept {
        std::fs::rename(&int8_tmp, &final_path).map_err(|e| Error::io(&final_path, e))?;
    } else if final_path.exists() {
        std::fs::remove_file(&final_path).map_err(|e| Error::io(&final_path, e))?;
    }
    let record = QuantizeRecord {
        model_sha256,
        kept,
        fp32_top1,
        int8_top1,
        drop_points,
        max_drop_points: opts.max_drop_points,
        heldout_images: heldout.len(),
        heldout_from,
        calibration_images: n,
        fp32_ms,
        int8_ms,
        speedup: fp32_ms / int8_ms.max(1e-9),
        quantizer: format!("onnxruntime {version}: {QUANTIZER}"),
        calibration_method: method.to_string(),
        fidelity_kl,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&record).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&run_dir.join(RECORD), format!("{json}\n").as_bytes())?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_evenly_and_all_when_short() {
        let v: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&v, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(&v, 20), v);
        assert_eq!(spread(&v, 0), Vec::<usize>::new());
    }
}
