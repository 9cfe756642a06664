//! Micro-benchmarks of the model paths, for `scripts/bench.py` to compare against PyTorch.
//!
//! Timings are medians over repeated runs after warm-up, in milliseconds, on random inputs of
//! `[N, 3, 224, 224]`. Nothing here is used by training or inference; it measures them.

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::{Distribution, FloatDType};
use serde::Serialize;

use crate::Result;
use crate::infer::device::DeviceChoice;
use crate::model::mixed::compute_copy;
use crate::model::{Arch, Net};
use crate::train::precision::{LossScale, TrainPrecision};

/// Medians in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Architecture measured.
    pub arch: String,
    /// Where burn ran (`cpu`, `wgpu`, `cuda`).
    pub device: String,
    /// The float type of the full training step (`fp32`, `fp16`, `bf16`).
    pub precision: String,
    /// Eval-mode forward, batch 1.
    pub infer_b1_ms: f64,
    /// Eval-mode forward, batch 16.
    pub infer_b16_ms: f64,
    /// Training-step batch size.
    pub train_batch: usize,
    /// Full training step at batch `train_batch`: forward (BatchNorm batch statistics), cross-entropy,
    /// backward, Adam update of every parameter.
    pub train_full_b16_ms: f64,
    /// Frozen-backbone training step at batch `train_batch`: forward through the frozen backbone
    /// (BatchNorm running statistics), backward and Adam update of the head only.
    pub train_frozen_b16_ms: f64,
    /// The same eval-mode forward on the ONNX Runtime engine (the model's ONNX export), batch 1
    /// and 16; None when ONNX Runtime is not available.
    pub ort_infer_b1_ms: Option<f64>,
    /// See `ort_infer_b1_ms`.
    pub ort_infer_b16_ms: Option<f64>,
    /// Why there are no ONNX Runtime figures, when there are none.
    pub ort_unavailable: Option<String>,
}

/// Batch 1 and 16 forward medians of `net`'s ONNX export on ONNX Runtime.
fn ort_times(net: &Net, runs: usize) -> std::result::Result<(f64, f64), String> {
    crate::infer::ort::ort_environment()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("bench.onnx");
    let model = crate::export::onnx::model_proto(
        net,
        224,
        false,
        crate::export::onnx::DEFAULT_OPSET,
        &Default::default(),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(&path, crate::export::onnx::encode(&model)).map_err(|e| e.to_string())?;
    let m = crate::infer::ort::OrtModel::open(&path).map_err(|e| e.to_string())?;
    let one = vec![0.5f32; 3 * 224 * 224];
    let sixteen = vec![0.5f32; 16 * 3 * 224 * 224];
    let b1 = time(3, runs * 3, || {
        let _ = m.run(one.clone(), 1, 224);
    });
    let b16 = time(2, runs, || {
        let _ = m.run(sixteen.clone(), 16, 224);
    });
    Ok((b1, b16))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn time<F: FnMut()>(warm: usize, runs: usize, mut f: F) -> f64 {
    let mut t = Vec::with_capacity(runs);
    for i in 0..warm + runs {
        let s = Instant::now();
        f();
        if i >= warm {
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(t)
}

/// Runs the measurements for `arch` with `classes` head outputs, `runs` timed repetitions
/// each (after 2 warm-up runs; 3 for batch 1), on burn's `device`; the training steps at batch
/// `train_batch`. `train_only` skips the forward rows (reported as NaN); the ONNX Runtime rows
/// are measured on the CPU device only. Each timed run reads its result back to the host, so
/// a GPU's queued work is inside the time. The full training step computes in `precision`
/// (fp16/bf16: mixed precision as training runs it, [`crate::train::precision`]).
///
/// # Errors
/// The device is not compiled into this build or cannot be opened, or does not compute in
/// `precision`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    arch: Arch,
    classes: usize,
    runs: usize,
    train_batch: usize,
    train_only: bool,
    device: DeviceChoice,
    precision: TrainPrecision,
) -> Result<BenchResult> {
    let dev = device.device()?;
    precision.check(device, &dev)?;
    let ad = dev.clone().autodiff();
    let net = Net::new(arch, classes, &ad);
    let eval = net.valid();
    let x1 = Tensor::<4>::random([1, 3, 224, 224], Distribution::Normal(0.0, 1.0), &dev);
    let x16 = Tensor::<4>::random([16, 3, 224, 224], Distribution::Normal(0.0, 1.0), &dev);
    let (infer_b1_ms, infer_b16_ms) = if train_only {
        (f64::NAN, f64::NAN)
    } else {
        (
            time(3, runs * 3, || {
                let _ = eval.forward(x1.clone()).into_data();
            }),
            time(2, runs, || {
                let _ = eval.forward(x16.clone()).into_data();
            }),
        )
    };
    let b = train_batch;
    let labels: Vec<i64> = (0..b as i64).map(|i| i % classes as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), &ad);
    let x16a = Tensor::<4>::random([b, 3, 224, 224], Distribution::Normal(0.0, 1.0), &ad);
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut opt = AdamConfig::new().init();
    let mut m = net.clone().train();
    let (dtype, mut scale) = (precision.dtype(), LossScale::new(precision));
    let train_full_b16_ms = time(2, runs, || {
        let logits = compute_copy(&m, dtype)
            .forward(x16a.clone().cast(dtype))
            .cast(FloatDType::F32);
        let loss = loss_fn.forward(logits, y.clone());
        let grads = scale.backward(loss);
        if let Ok(Some(grads)) = scale.unscale(&m, grads) {
            let g = GradientsParams::from_grads(grads, &m);
            m = opt.step(1e-4, m.clone(), g);
        }
        let _ = m.head().weight.val().into_data();
    });
    let mut opt = AdamConfig::new().init();
    let mut f = net.freeze_backbone();
    let train_frozen_b16_ms = time(2, runs, || {
        let loss = loss_fn.forward(f.forward(x16a.clone()), y.clone());
        let g = GradientsParams::from_grads(loss.backward(), &f);
        f = opt.step(1e-4, f.clone(), g);
        let _ = f.head().weight.val().into_data();
    });
    let ort = if train_only {
        Err("not measured (--train-only)".to_string())
    } else if device.is_gpu() {
        Err(format!(
            "not measured on {device} (ONNX Runtime rows are CPU rows)"
        ))
    } else {
        ort_times(&eval, runs)
    };
    Ok(BenchResult {
        device: device.name().to_string(),
        precision: precision.name().to_string(),
        arch: arch.name().to_string(),
        infer_b1_ms,
        infer_b16_ms,
        train_batch: b,
        train_full_b16_ms,
        train_frozen_b16_ms,
        ort_infer_b1_ms: ort.as_ref().ok().map(|t| t.0),
        ort_infer_b16_ms: ort.as_ref().ok().map(|t| t.1),
        ort_unavailable: ort.err(),
    })
}
