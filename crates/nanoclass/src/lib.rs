//! nanoclass: transfer learning for small image datasets.
//!
//! Take an ImageNet-pretrained backbone (torchvision ResNet-18/34/50 or EfficientNet-Lite0),
//! replace its classification head by one with `N` outputs for the user's `N` categories,
//! fine-tune it on a few dozen images per category, then evaluate and predict.
//!
//! Layout:
//! - [`data`]: image decoding, ImageFolder / DLI dataset scanning, splits, train/eval presets,
//!   parallel batch loading.
//! - [`model`]: backbones in torchvision state-dict naming, the replaceable head, weight loading
//!   and the pretrained-weights registry.
//! - [`train`]: the training loop (frozen, full and finetune modes).
//! - [`eval`]: held-out metrics, confusion matrix, predictions.
//! - [`export`]: ONNX, PyTorch `.pth` and safetensors exports of a trained run.
//! - [`run`]: the run directory that holds everything a trained model needs.

pub mod bench;
pub mod camera;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod export;
pub mod instant;
pub mod live;
pub mod model;
pub mod quantize;
pub mod run;
pub mod train;

pub use error::{Error, Result};
