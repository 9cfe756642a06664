//! Mixed-precision training's side of the model: a copy of a network whose weights compute in
//! f16 or bf16 while its f32 weights stay the ones the optimizer updates, and BatchNorm that
//! computes in f32 whatever its input's float type.
//!
//! The copy's weights are casts of the f32 parameters inside the autodiff graph, so the
//! backward pass of a loss computed with the copy gives each f32 parameter its gradient (the
//! f16 or bf16 gradient cast back to f32). BatchNorm layers are not cast: their `gamma`,
//! `beta` and running statistics stay f32 and their input is cast to f32 and back
//! ([`batch_norm_f32`]), as PyTorch's autocast keeps BatchNorm's statistics in f32.

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

/// `bn` on `x` in f32: an f16 or bf16 input is cast to f32 and the output back to its type
/// (an f32 input goes straight through, with no cast). The running statistics a training-mode
/// layer updates stay f32.
pub fn batch_norm_f32<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return bn.forward(x);
    }
    bn.forward(x.cast(FloatDType::F32)).cast(dtype)
}

/// The network `net` computing in `dtype`: every parameter outside BatchNorm layers cast to
/// it (see the module docs). `net` itself is unchanged; with `dtype` f32 the copy is `net`.
pub fn compute_copy<M: Module>(net: &M, dtype: FloatDType) -> M {
    if dtype == FloatDType::F32 {
        return net.clone();
    }
    net.clone().map(&mut CastOutsideBatchNorm {
        dtype,
        inside_batch_norm: 0,
    })
}

/// Casts float parameters to `dtype`, except inside BatchNorm layers (whose running statistics
/// are shared with the original network: a mapper writes them in place).
struct CastOutsideBatchNorm {
    dtype: FloatDType,
    inside_batch_norm: usize,
}

const BATCH_NORM: &str = "Struct:BatchNorm";

impl ModuleMapper for CastOutsideBatchNorm {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if container_type == BATCH_NORM {
            self.inside_batch_norm += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type == BATCH_NORM {
            self.inside_batch_norm -= 1;
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.inside_batch_norm > 0 {
            return param;
        }
        let dtype = self.dtype;
        param.map(|t| t.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::device::{default_device, read_f32};
    use crate::model::{Arch, Net};
    use burn::module::ModuleVisitor;
    use burn::optim::GradientsParams;

    /// Every parameter gradient of `net`, in visiting order, flattened, and how many
    /// parameters had one.
    fn flat_grads(net: &Net, grads: &GradientsParams) -> (Vec<f32>, usize) {
        struct Collect<'a> {
            grads: &'a GradientsParams,
            out: Vec<f32>,
            count: usize,
        }
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.grads.get::<D>(param.id) {
                    self.out.extend(read_f32(g).unwrap());
                    self.count += 1;
                }
            }
        }
        let mut c = Collect {
            grads,
            out: vec![],
            count: 0,
        };
        net.visit(&mut c);
        (c.out, c.count)
    }

    /// One training-mode step of `net` computing in `dtype` (cross-entropy on fixed labels):
    /// the gradients, the logits' float type, and the float type of the stem's BatchNorm
    /// running mean afterwards.
    fn step(net: &Net, dtype: FloatDType, x: &Tensor<4>) -> ((Vec<f32>, usize), DType, DType) {
        let logits = compute_copy(net, dtype).forward(x.clone().cast(dtype));
        let logits_dtype = logits.dtype();
        let labels =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3, 1, 4], [4]), &x.device());
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&x.device())
            .forward(logits.cast(FloatDType::F32), labels);
        let grads = GradientsParams::from_grads(loss.backward(), net);
        let running = match net {
            Net::ResNet(m) => m.bn1.running_mean.value().dtype(),
            Net::EfficientNetLite(m) => m._bn0.running_mean.value().dtype(),
        };
        (flat_grads(net, &grads), logits_dtype, running)
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn half_precision_gradients_reach_every_f32_weight() {
        let ad = default_device().autodiff();
        for arch in [Arch::Resnet18, Arch::EfficientnetLite0] {
            ad.seed(7);
            let net = Net::new(arch, 5, &ad).train();
            let x = Tensor::<4>::random(
                [4, 3, 64, 64],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &ad,
            );
            let ((reference, params), dt, _) = step(&net, FloatDType::F32, &x);
            assert_eq!(dt, DType::F32);
            let mut errors = vec![];
            for dtype in [FloatDType::F16, FloatDType::BF16] {
                let ((grads, count), logits, running) = step(&net, dtype, &x);
                assert_eq!(
                    logits,
                    DType::from(dtype),
                    "{arch}: the copy computed in {dtype:?}"
                );
                assert_eq!(running, DType::F32, "{arch}: running statistics stay f32");
                // Every f32 parameter got its gradient through the casts, a finite one.
                assert_eq!(
                    (count, grads.len()),
                    (params, reference.len()),
                    "{arch} {dtype:?}"
                );
                assert!(grads.iter().all(|g| g.is_finite()), "{arch} {dtype:?}");
                let diff: Vec<f32> = grads.iter().zip(&reference).map(|(a, b)| a - b).collect();
                let relative = norm(&diff) / norm(&reference);
                eprintln!("{arch} {dtype:?}: relative gradient error {relative:.4}");
                assert!(relative > 0.0, "{arch} {dtype:?}: no rounding at all");
                errors.push(relative);
            }
            // bf16 keeps 8 significant bits to fp16's 11: its gradients are further from f32.
            assert!(errors[1] > errors[0], "{arch}: {errors:?}");
            if arch == Arch::Resnet18 {
                // A random network at batch 4 and 64x64 pixels: batch-statistics BatchNorm
                // over 16 values per channel in the last stage magnifies rounding (measured
                // 0.12 and 0.36; EfficientNet-Lite0's depthwise layers, 0.47 and 1.09). What
                // counts, held-out accuracy after training, is checked on real photos in the
                // CLI's `precision` test.
                assert!(errors[0] < 0.2 && errors[1] < 0.5, "{arch}: {errors:?}");
            }
        }
    }

    #[test]
    fn f32_batch_norm_takes_half_inputs_and_gives_their_type_back() {
        let device = default_device();
        let bn = burn::nn::BatchNormConfig::new(2).init(&device);
        let x = Tensor::<4>::from_data(
            TensorData::new(
                vec![1.0f32, 2.0, 3.0, 4.0, -1.0, 0.5, 8.0, 2.0],
                [1, 2, 2, 2],
            ),
            &device,
        );
        let want = read_f32(bn.forward(x.clone())).unwrap();
        for dtype in [FloatDType::F16, FloatDType::BF16] {
            let out = batch_norm_f32(&bn, x.clone().cast(dtype));
            assert_eq!(out.dtype(), DType::from(dtype));
            let got = read_f32(out.cast(FloatDType::F32)).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 0.01 * w.abs().max(1.0),
                    "{dtype:?}: {g} vs {w}"
                );
            }
        }
    }
}
