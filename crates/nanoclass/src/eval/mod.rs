//! Held-out evaluation and inference: top-1, per-class precision/recall/F1, the confusion
//! matrix, the one file -> logits path shared by `eval` and `predict`, and the point errors of
//! the regression task.

pub mod metrics;
pub mod predict;
pub mod regression;
