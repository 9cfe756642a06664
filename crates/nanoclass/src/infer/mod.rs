//! Forward-only work: everything that runs a model without training it.
//!
//! - [`device`]: burn's compute device, and reading tensors back to the host.
//! - [`engine`]: one [`engine::Engine`] on ONNX Runtime or burn, picked by one rule with one
//!   failure policy ([`engine::resolve`]).
//! - [`ort`]: ONNX Runtime's library, sessions, and the cache of exported graphs.
//! - [`predictor`]: a trained run's model, from images to logits or points (`predict`, `eval`,
//!   `live`, the studio).
//! - [`embed`]: backbone features of images (frozen training, instant models) with the feature
//!   [`cache`].
//! - [`calibration`]: the temperature and the unknown rule fitted on a run's held-out images.
//! - [`scorer`]: from logits to probabilities, top-k, label and margin, for every front end.
//! - [`precision`] and [`quantize`]: int8 models by ONNX Runtime's quantizer, and which model
//!   file is served.

pub mod cache;
pub mod calibration;
pub mod device;
pub mod embed;
pub mod engine;
pub mod host_linear;
pub mod ort;
pub mod precision;
pub mod predictor;
pub mod quantize;
pub mod scorer;
