//! Backbones, the replaceable head, weight loading and the weights registry.
//!
//! A [`Net`] is a backbone whose `features()` give `[N, C]` plus a linear head (`fc` for the
//! ResNets, `_fc` for EfficientNet-Lite0, the names of their reference state dicts). Replacing
//! the head for the user's `N` categories is [`Net::with_fresh_head`]. Regression models have a
//! point head on the stride-8 map instead ([`point`], [`Net::with_point_head`]).

pub mod batch_counters;
pub mod cut;
pub mod efficientnet;
pub mod mixed;
mod names;
pub mod point;
pub mod registry;
pub mod resnet;
pub mod start;
mod state_dict;
pub mod weights;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::presets::Normalization;
use efficientnet::EfficientNetLite;
use point::PointHead;
use resnet::{ResNet, ResNetDepth};

/// The backbones nanoclass can fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// torchvision ResNet-18 (11.7 M parameters, 512 features).
    Resnet18,
    /// torchvision ResNet-34 (21.8 M parameters, 512 features).
    Resnet34,
    /// torchvision ResNet-50 (25.6 M parameters, 2048 features).
    Resnet50,
    /// EfficientNet-Lite0 (4.7 M parameters, 1280 features), the TensorFlow Lite variant of
    /// EfficientNet-B0 (no squeeze-excite, ReLU6).
    EfficientnetLite0,
}

impl Arch {
    /// Every architecture, in the order the CLI lists them.
    pub const ALL: [Arch; 4] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::EfficientnetLite0,
    ];

    /// The name used on the command line, in `config.json` and in the weights registry.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::EfficientnetLite0 => "efficientnet_lite0",
        }
    }

    /// Parses a CLI name (`resnet18`, `resnet34`, `resnet50`, `efficientnet_lite0`).
    pub fn parse(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Width `C` of the backbone's feature vector `[N, C]`.
    pub fn feature_dim(self) -> usize {
        match self {
            Arch::Resnet18 => ResNetDepth::R18.features(),
            Arch::Resnet34 => ResNetDepth::R34.features(),
            Arch::Resnet50 => ResNetDepth::R50.features(),
            Arch::EfficientnetLite0 => EfficientNetLite::FEATURES,
        }
    }

    /// Input normalisation the pretrained weights expect: ImageNet mean/std for the torchvision
    /// ResNets; `(pixel - 127) / 128` for EfficientNet-Lite0 (the TensorFlow Lite convention of
    /// the released weights).
    pub fn normalization(self) -> Normalization {
        match self {
            Arch::EfficientnetLite0 => Normalization::EFFICIENTNET_LITE,
            _ => Normalization::IMAGENET,
        }
    }

    /// Square input size in pixels the weights were trained at: 224 for all four.
    pub fn input_size(self) -> u32 {
        224
    }

    /// Channels of the stride-8 map the regression point head reads
    /// ([`crate::model::point`]): ResNet-18/34 `layer2` 128, ResNet-50 `layer2` 512,
    /// EfficientNet-Lite0 `_blocks.4` 40.
    pub fn point_channels(self) -> usize {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => 128,
            Arch::Resnet50 => 512,
            Arch::EfficientnetLite0 => 40,
        }
    }

    /// Name of the layer whose output the point head reads (`layer2` or `_blocks.4`).
    pub fn point_tap(self) -> &'static str {
        match self {
            Arch::EfficientnetLite0 => "_blocks.4",
            _ => "layer2",
        }
    }

    /// State-dict key prefix of the head (`fc` or `_fc`).
    pub fn head_key(self) -> &'static str {
        match self {
            Arch::EfficientnetLite0 => "_fc",
            _ => "fc",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backbone with its head. Saved and loaded without the variant name in tensor paths, so its
/// state dict has exactly the reference names (`conv1.weight`, `fc.bias`, `_blocks.3._bn1.weight`).
// One `Net` exists per model; the size gap between the variants costs nothing, and boxing a
// variant would add a level to the module tree that the saved state-dict names would show.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net {
    /// A torchvision ResNet.
    ResNet(ResNet),
    /// EfficientNet-Lite0.
    EfficientNetLite(EfficientNetLite),
}

impl Net {
    /// A randomly initialised network with `num_outputs` head outputs.
    pub fn new(arch: Arch, num_outputs: usize, device: &Device) -> Net {
        match arch {
            Arch::Resnet18 => Net::ResNet(ResNet::new(ResNetDepth::R18, num_outputs, device)),
            Arch::Resnet34 => Net::ResNet(ResNet::new(ResNetDepth::R34, num_outputs, device)),
            Arch::Resnet50 => Net::ResNet(ResNet::new(ResNetDepth::R50, num_outputs, device)),
            Arch::EfficientnetLite0 => {
                Net::EfficientNetLite(EfficientNetLite::lite0(num_outputs, device))
            }
        }
    }

    /// What the head reads, one row per image: `[N, 3, H, W]` (RGB, f32, normalised per
    /// [`Arch::normalization`]) -> `[N, C]` pooled backbone features, or with a point head the
    /// stride-8 map flattened, `[N, C * ceil(H / 8) * ceil(W / 8)]` (what frozen training
    /// caches).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        if self.point_head().is_some() {
            return self.tap(x).flatten(1, 3);
        }
        match self {
            Net::ResNet(m) => m.features(x),
            Net::EfficientNetLite(m) => m.features(x),
        }
    }

    /// The stride-8 map the point head reads, `[N, C, ceil(H / 8), ceil(W / 8)]`
    /// ([`Arch::point_tap`]).
    pub fn tap(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Net::ResNet(m) => m.tap(x),
            Net::EfficientNetLite(m) => m.tap(x),
        }
    }

    /// Logits (classification) or normalised points (regression): `[N, 3, H, W]` ->
    /// `[N, outputs]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self.point_head() {
            Some(p) => p.forward(self.tap(x)),
            None => self.head().forward(self.features(x)),
        }
    }

    /// Length of one row of [`Self::features`] for `size x size` inputs.
    pub fn feature_len(&self, size: usize) -> usize {
        match self.point_head() {
            Some(p) => {
                let side = point_side(size);
                p.channels() * side * side
            }
            None => self.head().weight.dims()[0],
        }
    }

    /// The point head, when the model has one (regression runs).
    pub fn point_head(&self) -> Option<&PointHead> {
        match self {
            Net::ResNet(m) => m.point.as_ref(),
            Net::EfficientNetLite(m) => m.point.as_ref(),
        }
    }

    /// Sets (or removes) the point head.
    pub fn with_point_head(self, point: Option<PointHead>) -> Net {
        match self {
            Net::ResNet(mut m) => {
                m.point = point;
                Net::ResNet(m)
            }
            Net::EfficientNetLite(mut m) => {
                m.point = point;
                Net::EfficientNetLite(m)
            }
        }
    }

    /// The trainable head as one module: the point head when there is one, else the linear
    /// head.
    pub fn head_module(&self) -> Head {
        match self.point_head() {
            Some(p) => Head::Point(p.clone()),
            None => Head::Linear(self.head().clone()),
        }
    }

    /// Replaces the head by `head` (the inverse of [`Self::head_module`]).
    pub fn with_head_module(self, head: Head) -> Net {
        match head {
            Head::Linear(l) => self.with_head(l),
            Head::Point(p) => self.with_point_head(Some(p)),
        }
    }

    /// The linear head (`fc` / `_fc`); unused when the model has a point head.
    pub fn head(&self) -> &Linear {
        match self {
            Net::ResNet(m) => &m.fc,
            Net::EfficientNetLite(m) => &m._fc,
        }
    }

    /// Number of head outputs (`2K` with a point head).
    pub fn num_outputs(&self) -> usize {
        match self.point_head() {
            Some(p) => 2 * p.categories(),
            None => self.head().weight.dims()[1],
        }
    }

    /// Replaces the head.
    pub fn with_head(self, head: Linear) -> Net {
        match self {
            Net::ResNet(mut m) => {
                m.fc = head;
                Net::ResNet(m)
            }
            Net::EfficientNetLite(mut m) => {
                m._fc = head;
                Net::EfficientNetLite(m)
            }
        }
    }

    /// Replaces the head by a freshly initialised `C -> num_outputs` linear layer (burn's
    /// default init, Kaiming-uniform like torch's `nn.Linear`).
    pub fn with_fresh_head(self, num_outputs: usize, device: &Device) -> Net {
        let c = self.head().weight.dims()[0];
        self.with_head(LinearConfig::new(c, num_outputs).init(device))
    }

    /// Freezes every backbone parameter (no gradients, BatchNorm in eval mode: running
    /// statistics); the head stays trainable.
    pub fn freeze_backbone(self) -> Net {
        let head = self.head_module();
        let frozen = self.freeze();
        frozen.with_head_module(head)
    }
}

/// Side of the stride-8 map for `size x size` inputs: three halvings rounding up (the stem's
/// stride-2 convolution and two more stride-2 stages, in both families).
pub fn point_side(size: usize) -> usize {
    size.div_ceil(2).div_ceil(2).div_ceil(2)
}

/// A model's trainable head, as the frozen training loop holds it.
// Boxing the point head would add a level to its module path; one Head exists per training run.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Head {
    /// The linear head on pooled features.
    Linear(Linear),
    /// The point head on the flattened stride-8 map.
    Point(PointHead),
}

impl Head {
    /// `[N, F]` rows of [`Net::features`] -> `[N, outputs]`.
    ///
    /// # Panics
    /// When a point head's rows are not a square map of its channels (a programming error).
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        match self {
            Head::Linear(l) => l.forward(features),
            Head::Point(p) => {
                let cells = features.dims()[1] / p.channels();
                let side = (cells as f64).sqrt().round() as usize;
                p.forward_flat(features, side)
            }
        }
    }
}
