//! Which epoch's model is kept, and when training stops early.
//!
//! - **The best model** (`model.safetensors`) is the epoch with the highest held-out top-1, ties
//!   broken by the lower held-out loss (classification), or the lowest mean held-out point error,
//!   then loss (regression). Without a held-out set the latest epoch is kept.
//! - **Early stopping** (when a patience is set and there is a held-out set): training stops
//!   once the monitored figure has not improved for `patience` epochs in a row. The figure is the
//!   held-out loss for classification (it moves before top-1 does on small held-out sets) and
//!   the mean held-out point error for regression. The best model is the one kept, so stopping
//!   restores it.

use serde::{Deserialize, Serialize};

use crate::run::{EpochMetrics, Task};

/// The tracker's state, saved with each checkpoint so a resumed run decides as an
/// uninterrupted one would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerState {
    /// The best model's score: (held-out top-1, -held-out loss) for classification,
    /// (-mean held-out point error, -held-out loss) for regression; higher is better.
    pub best: Option<(f64, f64)>,
    /// Epoch of the best model (1-based, 0 before any).
    pub best_epoch: usize,
    /// The lowest monitored figure so far (see the module docs).
    #[serde(default)]
    pub best_monitored: Option<f64>,
    /// Epochs since the monitored figure last improved.
    #[serde(default)]
    pub since_improved: usize,
}

/// Tracks the best epoch and decides early stopping (see the module docs).
#[derive(Debug, Clone)]
pub struct Tracker {
    task: Task,
    patience: Option<usize>,
    /// The state.
    pub state: TrackerState,
}

impl Tracker {
    /// A tracker for `task`; `patience` None never stops early.
    pub fn new(task: Task, patience: Option<usize>, state: TrackerState) -> Tracker {
        Tracker {
            task,
            patience,
            state,
        }
    }

    /// Takes an epoch's metrics into account; true when its model is the best so far.
    pub fn observe(&mut self, m: &EpochMetrics) -> bool {
        let loss = m.val_loss.unwrap_or(0.0);
        let (score, monitored) = match self.task {
            Task::Classification => (m.val_top1.map(|t| (t, -loss)), m.val_loss),
            Task::Regression => (m.val_error_px.map(|e| (-e, -loss)), m.val_error_px),
        };
        let s = &mut self.state;
        let better = match (score, s.best) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            // no held-out set: the latest model is the one kept
            (None, _) => true,
        };
        if better {
            s.best = score;
            s.best_epoch = m.epoch;
        }
        match (monitored, s.best_monitored) {
            (Some(v), Some(b)) if v < b => {
                s.best_monitored = Some(v);
                s.since_improved = 0;
            }
            (Some(_), Some(_)) => s.since_improved += 1,
            (Some(v), None) => {
                s.best_monitored = Some(v);
                s.since_improved = 0;
            }
            (None, _) => {}
        }
        better
    }

    /// Whether training should stop now (after the epoch last observed).
    pub fn should_stop(&self) -> bool {
        self.patience
            .is_some_and(|p| self.state.best_monitored.is_some() && self.state.since_improved >= p)
    }

    /// Held-out top-1 of the best model (classification).
    pub fn best_top1(&self) -> Option<f64> {
        self.state
            .best
            .filter(|_| self.task == Task::Classification)
            .map(|b| b.0)
    }

    /// Mean held-out point error of the best model, pixels (regression).
    pub fn best_error_px(&self) -> Option<f64> {
        self.state
            .best
            .filter(|_| self.task == Task::Regression)
            .map(|b| -b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, loss: f64, top1: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            phase: "head".into(),
            train_loss: 1.0,
            train_top1: None,
            val_loss: Some(loss),
            val_top1: Some(top1),
            train_error_px: None,
            val_error_px: None,
            lr: 0.1,
            seconds: 0.0,
        }
    }

    #[test]
    fn the_best_is_top1_then_loss_and_patience_counts_epochs_without_a_lower_loss() {
        let mut t = Tracker::new(Task::Classification, Some(2), TrackerState::default());
        assert!(t.observe(&epoch(1, 0.9, 0.8)));
        assert!(t.observe(&epoch(2, 0.7, 0.8))); // same top-1, lower loss
        assert!(!t.observe(&epoch(3, 0.6, 0.7))); // lower loss, lower top-1: not kept
        assert!(!t.should_stop());
        assert!(!t.observe(&epoch(4, 0.65, 0.75)));
        assert!(!t.should_stop(), "one epoch without improvement");
        assert!(!t.observe(&epoch(5, 0.61, 0.75)));
        assert!(t.should_stop(), "two epochs without a lower loss");
        assert_eq!(t.state.best_epoch, 2);
        assert_eq!(t.best_top1(), Some(0.8));
        // without a patience it never stops
        let mut t = Tracker::new(Task::Classification, None, TrackerState::default());
        for e in 1..10 {
            t.observe(&epoch(e, 1.0 + e as f64, 0.5));
        }
        assert!(!t.should_stop());
    }

    #[test]
    fn regression_keeps_the_lowest_point_error() {
        let mut t = Tracker::new(Task::Regression, Some(1), TrackerState::default());
        let m = |e, px| EpochMetrics {
            val_top1: None,
            val_error_px: Some(px),
            ..epoch(e, 0.1, 0.0)
        };
        assert!(t.observe(&m(1, 5.0)));
        assert!(t.observe(&m(2, 3.0)));
        assert!(!t.observe(&m(3, 4.0)));
        assert!(t.should_stop());
        assert_eq!(t.best_error_px(), Some(3.0));
    }
}
