//! The loss of a batch and its score, for both tasks, and the running figures of an epoch.
//!
//! - Classification: cross-entropy of the logits against the labels (torch's
//!   `CrossEntropyLoss`, mean over the batch); the score is the number of correct top-1
//!   predictions.
//! - Regression: the course's `mean((outputs[i][2k:2k+2] - xy[i])**2)`, i.e. the squared error
//!   of each image's own category pair, summed and divided by `2B`; the other categories'
//!   outputs get no gradient from that image. The score is the sum of the distances between
//!   predicted and true points in pixels of the `size x size` model input.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;

use crate::Result;
use crate::eval::regression::{denormalise, distance};
use crate::infer::device::{read_f32, read_i64};
use crate::run::{EpochMetrics, Task};

/// What one image is scored against: its class (classification), or its category and its point
/// normalised over the model's view (regression, [`crate::eval::regression::normalise`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Class (classification) or category (regression) index.
    pub label: usize,
    /// Regression: the point in normalised coordinates of the model's view; unused otherwise.
    pub point: [f32; 2],
}

/// The loss of a batch (a one-element tensor, differentiable) and its score (see the module
/// docs).
///
/// # Errors
/// The outputs cannot be read back from the device.
pub fn batch_loss(
    task: Task,
    out: Tensor<2>,
    targets: &[Target],
    size: usize,
    device: &Device,
) -> Result<(Tensor<1>, f64)> {
    match task {
        Task::Classification => {
            let pred = read_i64(out.clone().argmax(1).flatten::<1>(0, 1))?;
            let correct = pred
                .iter()
                .zip(targets)
                .filter(|(p, t)| **p as usize == t.label)
                .count();
            let labels: Vec<i64> = targets.iter().map(|t| t.label as i64).collect();
            let labels =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [targets.len()]), device);
            let loss = CrossEntropyLossConfig::new()
                .init(device)
                .forward(out, labels);
            Ok((loss, correct as f64))
        }
        Task::Regression => {
            let [b, k2] = out.dims();
            let mut mask = vec![0.0f32; b * k2];
            let mut want = vec![0.0f32; b * k2];
            for (i, t) in targets.iter().enumerate() {
                let j = i * k2 + 2 * t.label;
                mask[j] = 1.0;
                mask[j + 1] = 1.0;
                want[j] = t.point[0];
                want[j + 1] = t.point[1];
            }
            let values = read_f32(out.clone())?;
            let sz = size as f32;
            let err: f64 = targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let j = i * k2 + 2 * t.label;
                    let pred = [
                        values.get(j).copied().unwrap_or(f32::NAN),
                        values.get(j + 1).copied().unwrap_or(f32::NAN),
                    ];
                    distance(denormalise(pred, sz, sz), denormalise(t.point, sz, sz))
                })
                .sum();
            let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, k2]), device);
            let want = Tensor::<2>::from_data(TensorData::new(want, [b, k2]), device);
            let diff = (out - want) * mask;
            let loss = (diff.clone() * diff)
                .sum()
                .div_scalar((2 * b.max(1)) as f32);
            Ok((loss, err))
        }
    }
}

/// Running training loss and score (top-1, or mean point error in pixels) of one epoch.
#[derive(Debug, Clone)]
pub struct EpochStats {
    task: Task,
    loss_sum: f64,
    score: f64,
    seen: usize,
    /// Learning rate of the last step.
    pub lr: f64,
}

impl EpochStats {
    /// Nothing seen yet.
    pub fn new(task: Task, lr: f64) -> Self {
        EpochStats {
            task,
            loss_sum: 0.0,
            score: 0.0,
            seen: 0,
            lr,
        }
    }

    /// Adds a batch of `n` images: its mean loss and its score (see [`batch_loss`]).
    pub fn add(&mut self, loss: f64, score: f64, n: usize) {
        self.loss_sum += loss * n as f64;
        self.score += score;
        self.seen += n;
    }

    /// Mean loss so far (NaN before any image).
    pub fn loss(&self) -> f64 {
        if self.seen == 0 {
            return f64::NAN;
        }
        self.loss_sum / self.seen as f64
    }

    /// (top-1, mean point error in pixels), the one of the task set.
    pub fn figures(&self) -> (Option<f64>, Option<f64>) {
        if self.seen == 0 {
            return (None, None);
        }
        let mean = self.score / self.seen as f64;
        match self.task {
            Task::Classification => (Some(mean), None),
            Task::Regression => (None, Some(mean)),
        }
    }

    /// The epoch's metrics line; `val` is (held-out loss, held-out top-1 or mean point error).
    pub fn metrics(
        &self,
        epoch: usize,
        phase: &str,
        val: Option<(f64, f64)>,
        seconds: f64,
    ) -> EpochMetrics {
        let (train_top1, train_error_px) = self.figures();
        let regression = self.task == Task::Regression;
        EpochMetrics {
            epoch,
            phase: phase.into(),
            train_loss: self.loss(),
            train_top1,
            val_loss: val.map(|v| v.0),
            val_top1: val.filter(|_| !regression).map(|v| v.1),
            train_error_px,
            val_error_px: val.filter(|_| regression).map(|v| v.1),
            lr: self.lr,
            seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::device::{default_device, read_scalar};

    #[test]
    fn classification_loss_is_cross_entropy_and_the_score_counts_correct_top1() {
        let d = default_device();
        // logits [ln 3, 0] for class 0 (p = 0.75) and [0, 0] for class 1 (p = 0.5, argmax 0)
        let out =
            Tensor::<2>::from_data(TensorData::new(vec![3f32.ln(), 0.0, 0.0, 0.0], [2, 2]), &d);
        let t = [
            Target {
                label: 0,
                point: [0.0; 2],
            },
            Target {
                label: 1,
                point: [0.0; 2],
            },
        ];
        let (loss, correct) = batch_loss(Task::Classification, out, &t, 224, &d).unwrap();
        let want = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((read_scalar(loss).unwrap() - want).abs() < 1e-5);
        assert_eq!(correct, 1.0);
    }

    #[test]
    fn regression_loss_counts_only_each_images_own_category() {
        let d = default_device();
        // two categories; image 0 of category 1 at normalised (0.5, -0.5)
        let out = Tensor::<2>::from_data(TensorData::new(vec![9.0f32, 9.0, 0.5, 0.0], [1, 4]), &d);
        let t = [Target {
            label: 1,
            point: [0.5, -0.5],
        }];
        let (loss, err) = batch_loss(Task::Regression, out, &t, 224, &d).unwrap();
        // (0.5 - 0.5)^2 + (0 + 0.5)^2 over 2B = 2
        assert!((read_scalar(loss).unwrap() - 0.125).abs() < 1e-6);
        // 0.5 normalised = 56 px of 224
        assert!((err - 56.0).abs() < 1e-3, "{err}");
    }
}
