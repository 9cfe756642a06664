//! Held-out evaluation and inference: top-1, per-class precision/recall/F1, the confusion
//! matrix, and the one file -> logits path shared by `eval` and `predict`.

pub mod metrics;
pub mod predict;
