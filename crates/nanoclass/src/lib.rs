//! nanoclass: transfer learning for small image datasets.
//!
//! Take an ImageNet-pretrained backbone (torchvision ResNet-18/34/50 or EfficientNet-Lite0),
//! replace its classification head by one with `N` outputs for the user's `N` categories,
//! fine-tune it on a few dozen images per category, then evaluate, predict and run it live.
//!
//! Modules, from the ground up:
//! - [`error`]: the library's error type; [`fs`]: atomic file writes.
//! - [`data`]: image decoding, ImageFolder / DLI dataset scanning, splits, the train/eval
//!   presets, parallel batch loading.
//! - [`model`]: backbones in torchvision state-dict naming, the replaceable head, weight
//!   loading and the pretrained-weights registry.
//! - [`run`]: the run directory that holds everything a trained model needs.
//! - [`infer`]: forward-only work: the ONNX Runtime / burn engine, the predictor, backbone
//!   features, scoring, int8 quantization.
//! - [`instant`]: heads fitted in one go on frozen features (class prototypes, a linear head).
//! - [`train`]: training as phases (head on cached features, the last blocks on cached
//!   activations, full network, instant fit) run by one epoch loop, with checkpoints for resume.
//! - [`eval`]: held-out metrics, confusion matrix, point errors.
//! - [`export`]: ONNX, PyTorch `.pth` and safetensors exports of a trained run.
//! - [`camera`]: frame sources (V4L2, video files, MJPEG over HTTP, image folders).
//! - [`live`]: scores on camera frames, and the annotated frame.
//! - [`bench`]: timings behind `nanoclass bench`.

pub mod bench;
pub mod camera;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod fs;
pub mod infer;
pub mod instant;
pub mod live;
pub mod memory;
pub mod model;
pub mod run;
pub mod train;

pub use error::{Error, Result};
