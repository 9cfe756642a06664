//! Held-out evaluation: which images are scored ([`heldout`]), the scoring itself
//! ([`evaluate`]: top-1, per-class precision/recall/F1, confusion matrix, loss; point errors),
//! the metrics and their PNG ([`metrics`]), and the point convention of the regression task
//! ([`regression`]).

pub mod evaluate;
pub mod heldout;
pub mod metrics;
pub mod regression;
