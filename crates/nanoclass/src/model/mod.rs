//! Backbones, the replaceable head, weight loading and the weights registry.
//!
//! A [`Net`] is a backbone whose `features()` give `[N, C]` plus a linear head (`fc` for the
//! ResNets, `_fc` for EfficientNet-Lite0, the names of their reference state dicts). Replacing
//! the head for the user's `N` categories is [`Net::with_fresh_head`].

pub mod efficientnet;
pub mod registry;
pub mod resnet;
pub mod weights;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::presets::Normalization;
use efficientnet::EfficientNetLite;
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

    /// Backbone features: `[N, 3, H, W]` (RGB, f32, normalised per [`Arch::normalization`]) ->
    /// `[N, C]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Net::ResNet(m) => m.features(x),
            Net::EfficientNetLite(m) => m.features(x),
        }
    }

    /// Logits: `[N, 3, H, W]` -> `[N, outputs]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head().forward(self.features(x))
    }

    /// The linear head.
    pub fn head(&self) -> &Linear {
        match self {
            Net::ResNet(m) => &m.fc,
            Net::EfficientNetLite(m) => &m._fc,
        }
    }

    /// Number of head outputs.
    pub fn num_outputs(&self) -> usize {
        self.head().weight.dims()[1]
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
        let head = self.head().clone();
        let frozen = self.freeze();
        frozen.with_head(head)
    }
}
