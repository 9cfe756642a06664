//! The float type of training's forward and backward passes ([`TrainPrecision`]) and the loss
//! scaling that fp16 needs ([`LossScale`]).
//!
//! fp16 and bf16 are mixed precision, as PyTorch's automatic mixed precision does it: the
//! optimizer keeps and updates f32 weights (and its f32 state); each step computes with a copy
//! cast to fp16 or bf16 ([`crate::model::mixed::compute_copy`]), BatchNorm in f32, and the loss
//! in f32 from logits cast back to f32. They apply to the phases that run the backbone or its
//! last blocks on burn: the full phase (the `full` and `finetune` modes) and the `partial` mode.
//! The head phase (`frozen`, `finetune`'s first epochs) trains a `[N, F] x [F, C]` product and
//! stays f32.
//!
//! fp16 keeps 11 significant bits but its smallest normal value is 2^-14 (6.1e-5), so small
//! gradients would become zero: the loss is multiplied by a scale before the backward pass and
//! the gradients divided by it after, in f32. The scale starts at 2^16 and halves whenever a
//! gradient comes out infinite or NaN (that optimizer step is skipped), and doubles after 2000
//! clean steps in a row (PyTorch's `GradScaler` defaults: `init_scale=2**16`,
//! `growth_factor=2.0`, `backoff_factor=0.5`, `growth_interval=2000`). bf16 has f32's exponent
//! range (8 significant bits) and needs no scale.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType, Gradients};
use serde::{Deserialize, Serialize};

use crate::infer::device::{DeviceChoice, read_scalar};
use crate::train::Mode;
use crate::{Error, Result};

/// The environment variable naming the default training precision (`fp32`, `fp16`, `bf16`).
pub const PRECISION_ENV: &str = "NANOCLASS_TRAIN_PRECISION";

/// The float type a training step computes in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainPrecision {
    /// f32 throughout.
    #[default]
    Fp32,
    /// Forward and backward in IEEE half precision, f32 weights, dynamic loss scaling.
    Fp16,
    /// Forward and backward in bfloat16, f32 weights.
    Bf16,
}

impl TrainPrecision {
    /// `fp32`, `fp16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            TrainPrecision::Fp32 => "fp32",
            TrainPrecision::Fp16 => "fp16",
            TrainPrecision::Bf16 => "bf16",
        }
    }

    /// Parses `fp32` (`f32`), `fp16` (`f16`, `half`) or `bf16`, in any case.
    pub fn parse(s: &str) -> Option<TrainPrecision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Some(TrainPrecision::Fp32),
            "fp16" | "f16" | "half" => Some(TrainPrecision::Fp16),
            "bf16" => Some(TrainPrecision::Bf16),
            _ => None,
        }
    }

    /// `$NANOCLASS_TRAIN_PRECISION` when set to a known name, else [`TrainPrecision::Fp32`].
    pub fn from_env() -> TrainPrecision {
        std::env::var(PRECISION_ENV)
            .ok()
            .and_then(|v| TrainPrecision::parse(&v))
            .unwrap_or_default()
    }

    /// The default of a job in `mode`: [`TrainPrecision::from_env`] where the mode has steps
    /// through the backbone (full, finetune, partial), fp32 in the head-only modes (which
    /// refuse any other precision asked for by name).
    pub fn default_for(mode: Mode) -> TrainPrecision {
        if Self::applies_to(mode) {
            Self::from_env()
        } else {
            TrainPrecision::Fp32
        }
    }

    /// Whether `mode` has training steps through the backbone, where the precision applies.
    pub fn applies_to(mode: Mode) -> bool {
        matches!(mode, Mode::Full | Mode::Finetune | Mode::Partial)
    }

    /// burn's float type of the computing copy.
    pub fn dtype(self) -> FloatDType {
        match self {
            TrainPrecision::Fp32 => FloatDType::F32,
            TrainPrecision::Fp16 => FloatDType::F16,
            TrainPrecision::Bf16 => FloatDType::BF16,
        }
    }

    /// Checks that `device` (of `choice`) computes in this type.
    ///
    /// # Errors
    /// [`Error::Train`] naming the device and the precisions to use instead. WGSL, the shader
    /// language of wgpu, has no bf16; fp16 on wgpu needs the adapter's `shader-f16` feature.
    pub fn check(self, choice: DeviceChoice, device: &Device) -> Result<()> {
        if self == TrainPrecision::Fp32 || device.supports_dtype(DType::from(self.dtype())) {
            return Ok(());
        }
        let hint = match (self, choice) {
            (TrainPrecision::Bf16, DeviceChoice::Wgpu) => {
                "wgpu's shaders (WGSL) have no bf16; use --precision fp16 (where the GPU has \
                 shader-f16) or the cuda device"
            }
            (TrainPrecision::Fp16, DeviceChoice::Wgpu) => {
                "this GPU's wgpu adapter lacks shader-f16; use --precision fp32"
            }
            _ => "use --precision fp32",
        };
        Err(Error::Train(format!(
            "{} training is not available on {choice}: {hint}",
            self.name()
        )))
    }
}

impl std::fmt::Display for TrainPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TrainPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        TrainPrecision::parse(s)
            .ok_or_else(|| format!("unknown precision {s:?}: fp32, fp16 or bf16"))
    }
}

/// fp16's starting loss scale, 2^16 (PyTorch's `GradScaler(init_scale=2**16)`).
pub const INITIAL_SCALE: f32 = 65536.0;
/// Clean steps in a row after which the scale doubles (`growth_interval=2000`).
pub const GROWTH_INTERVAL: usize = 2000;

/// Dynamic loss scaling (see the module docs); a scale of 1 for fp32 and bf16, where it does
/// nothing.
#[derive(Debug, Clone)]
pub(crate) struct LossScale {
    scale: f32,
    clean_steps: usize,
    dynamic: bool,
    /// Steps skipped because a gradient overflowed.
    pub(crate) skipped: usize,
}

impl LossScale {
    /// The scaling of `precision`: dynamic from [`INITIAL_SCALE`] for fp16, none otherwise.
    pub(crate) fn new(precision: TrainPrecision) -> LossScale {
        let dynamic = precision == TrainPrecision::Fp16;
        LossScale {
            scale: if dynamic { INITIAL_SCALE } else { 1.0 },
            clean_steps: 0,
            dynamic,
            skipped: 0,
        }
    }

    /// The current scale.
    pub(crate) fn scale(&self) -> f32 {
        self.scale
    }

    /// The gradients of `loss` times the scale.
    pub(crate) fn backward(&self, loss: Tensor<1>) -> Gradients {
        if self.dynamic {
            loss.mul_scalar(self.scale).backward()
        } else {
            loss.backward()
        }
    }

    /// `grads` of `model`'s parameters divided by the scale, or None when one of them is
    /// infinite or NaN: the step is then to be skipped, and the scale has halved.
    ///
    /// # Errors
    /// The gradients' check could not be read back from the device.
    pub(crate) fn unscale<M: Module>(
        &mut self,
        model: &M,
        mut grads: Gradients,
    ) -> Result<Option<Gradients>> {
        if !self.dynamic {
            return Ok(Some(grads));
        }
        let mut visitor = Unscale {
            grads: &mut grads,
            factor: 1.0 / self.scale,
            total: None,
        };
        model.visit(&mut visitor);
        let total = match visitor.total {
            Some(t) => read_scalar(t)?,
            None => 0.0,
        };
        if total.is_finite() {
            self.clean_steps += 1;
            if self.clean_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
            Ok(Some(grads))
        } else {
            // Never below 1: a gradient that overflows at scale 1 overflows in f16 anyway.
            self.scale = (self.scale * 0.5).max(1.0);
            self.clean_steps = 0;
            self.skipped += 1;
            Ok(None)
        }
    }
}

/// Divides each parameter's gradient by the scale and sums them all into one value, which is
/// finite exactly when every gradient is.
struct Unscale<'g> {
    grads: &'g mut Gradients,
    factor: f32,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for Unscale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let tensor = param.val();
        let Some(grad) = tensor.grad_remove(self.grads) else {
            return;
        };
        let grad = grad.mul_scalar(self.factor);
        let sum = grad.clone().sum();
        self.total = Some(match self.total.take() {
            Some(t) => t + sum,
            None => sum,
        });
        tensor.grad_replace(self.grads, grad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::device::{default_device, read_f32};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for p in [
            TrainPrecision::Fp32,
            TrainPrecision::Fp16,
            TrainPrecision::Bf16,
        ] {
            assert_eq!(TrainPrecision::parse(p.name()), Some(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
        assert_eq!(TrainPrecision::parse(" F16 "), Some(TrainPrecision::Fp16));
        assert_eq!(TrainPrecision::parse("int8"), None);
        assert!(
            "fp8"
                .parse::<TrainPrecision>()
                .unwrap_err()
                .contains("fp16")
        );
    }

    /// A linear layer and a loss whose gradients are known: `loss = sum(W x + b)` gives
    /// `dW[i][j] = x[j]` and `db[i] = 1`.
    fn layer_and_loss(x: [f32; 2]) -> (Linear, Tensor<1>) {
        let ad = default_device().autodiff();
        let layer = LinearConfig::new(2, 3).init(&ad);
        let input = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [1, 2]), &ad);
        let loss = layer.forward(input).sum();
        (layer, loss)
    }

    #[test]
    fn fp16_gradients_come_back_divided_by_the_scale() {
        let (layer, loss) = layer_and_loss([0.5, -2.0]);
        let mut scale = LossScale::new(TrainPrecision::Fp16);
        assert_eq!(scale.scale(), INITIAL_SCALE);
        let grads = scale.backward(loss);
        let grads = scale.unscale(&layer, grads).unwrap().expect("finite");
        let mut grads = GradientsParams::from_grads(grads, &layer);
        let dw = read_f32(grads.remove::<2>(layer.weight.id).unwrap()).unwrap();
        // burn's Linear weight is [in, out]: row j holds x[j] for every output.
        assert_eq!(dw, vec![0.5, 0.5, 0.5, -2.0, -2.0, -2.0]);
        let db = read_f32(grads.remove::<1>(layer.bias.as_ref().unwrap().id).unwrap()).unwrap();
        assert_eq!(db, vec![1.0, 1.0, 1.0]);
        assert_eq!((scale.scale(), scale.skipped), (INITIAL_SCALE, 0));
    }

    #[test]
    fn an_overflowing_gradient_skips_the_step_and_halves_the_scale() {
        // x = 1e36: the scaled gradient 1e36 * 65536 is beyond f32's range.
        let (layer, loss) = layer_and_loss([1e36, 1.0]);
        let mut scale = LossScale::new(TrainPrecision::Fp16);
        let grads = scale.backward(loss);
        assert!(scale.unscale(&layer, grads).unwrap().is_none());
        assert_eq!((scale.scale(), scale.skipped), (INITIAL_SCALE / 2.0, 1));
    }

    #[test]
    fn the_scale_doubles_after_the_growth_interval_of_clean_steps() {
        let mut scale = LossScale::new(TrainPrecision::Fp16);
        for k in 0..GROWTH_INTERVAL {
            assert_eq!(scale.scale(), INITIAL_SCALE, "step {k}");
            let (layer, loss) = layer_and_loss([1.0, 1.0]);
            let grads = scale.backward(loss);
            assert!(scale.unscale(&layer, grads).unwrap().is_some());
        }
        assert_eq!(scale.scale(), INITIAL_SCALE * 2.0);
    }

    #[test]
    fn fp32_and_bf16_do_not_scale() {
        for p in [TrainPrecision::Fp32, TrainPrecision::Bf16] {
            let (layer, loss) = layer_and_loss([3.0, 1e36]);
            let mut scale = LossScale::new(p);
            let grads = scale.backward(loss);
            let grads = scale.unscale(&layer, grads).unwrap().expect("no check");
            let mut grads = GradientsParams::from_grads(grads, &layer);
            let dw = read_f32(grads.remove::<2>(layer.weight.id).unwrap()).unwrap();
            assert_eq!(dw[0], 3.0);
            assert_eq!(scale.scale(), 1.0);
        }
    }
}
