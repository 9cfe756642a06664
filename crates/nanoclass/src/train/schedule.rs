//! The optimizer and the learning rate at each step.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};

use crate::train::hyper::{Hyperparams, OptimizerKind, Schedule};

/// The optimizer of `h`: Adam (betas 0.9 / 0.999, eps 1e-8, torch's defaults) or SGD with
/// momentum (no dampening, torch's default), each with L2 weight decay when set.
pub fn make_optimizer(h: &Hyperparams) -> ModuleOptimizer {
    let wd = (h.weight_decay > 0.0).then(|| WeightDecayConfig::new(h.weight_decay as f32));
    match h.optimizer {
        OptimizerKind::Adam => AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(wd)
            .init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(wd)
            .with_momentum((h.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(h.momentum)
                    .with_dampening(0.0)
            }))
            .init(),
    }
}

/// Learning rate at `step` of `total` steps (0-based) in a phase of `epochs` epochs.
pub fn scheduled_lr(
    base: f64,
    schedule: Schedule,
    step: usize,
    total: usize,
    epochs: usize,
) -> f64 {
    match schedule {
        Schedule::None => base,
        Schedule::Cosine => {
            let t = step as f64 / total.max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step => {
            let steps_per_epoch = (total / epochs.max(1)).max(1);
            let epoch = step / steps_per_epoch;
            let size = epochs.div_ceil(3).max(1);
            base * 0.1f64.powi((epoch / size) as i32)
        }
    }
}

/// The learning rates of one phase: `base` over `epochs` epochs of `steps_per_epoch` steps.
#[derive(Debug, Clone, Copy)]
pub struct PhaseLr {
    /// Base learning rate.
    pub base: f64,
    /// Schedule.
    pub schedule: Schedule,
    /// Epochs in the phase.
    pub epochs: usize,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: usize,
}

impl PhaseLr {
    /// The rate at step `step` (0-based) of epoch `epoch` (0-based within the phase).
    pub fn at(&self, epoch: usize, step: usize) -> f64 {
        let total = self.steps_per_epoch * self.epochs;
        scheduled_lr(
            self.base,
            self.schedule,
            epoch * self.steps_per_epoch + step,
            total,
            self.epochs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_runs_from_the_base_to_zero_and_step_divides_by_ten() {
        assert_eq!(scheduled_lr(1.0, Schedule::Cosine, 0, 100, 10), 1.0);
        assert!((scheduled_lr(1.0, Schedule::Cosine, 50, 100, 10) - 0.5).abs() < 1e-12);
        assert!(scheduled_lr(1.0, Schedule::Cosine, 100, 100, 10).abs() < 1e-12);
        // 9 epochs of 10 steps: x0.1 every 3 epochs
        assert_eq!(scheduled_lr(1.0, Schedule::Step, 29, 90, 9), 1.0);
        assert!((scheduled_lr(1.0, Schedule::Step, 30, 90, 9) - 0.1).abs() < 1e-12);
        assert!((scheduled_lr(1.0, Schedule::Step, 89, 90, 9) - 0.01).abs() < 1e-12);
        assert_eq!(scheduled_lr(0.3, Schedule::None, 7, 90, 9), 0.3);
        let p = PhaseLr {
            base: 1.0,
            schedule: Schedule::Cosine,
            epochs: 2,
            steps_per_epoch: 5,
        };
        assert!((p.at(1, 0) - 0.5).abs() < 1e-12);
    }
}
