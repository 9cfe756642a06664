//! ResNet-18/34/50 in torchvision's layout (He et al., "Deep Residual Learning for Image
//! Recognition", 2015; torchvision `models/resnet.py`).
//!
//! Field names equal torchvision's state-dict names (`conv1`, `bn1`, `layer1`..`layer4`, `fc`), so
//! a torchvision `.pth` loads with one remapping rule set, kept in [`crate::model::weights`]:
//! torchvision's `downsample.0` / `downsample.1` (an `nn.Sequential`) are `downsample.conv` /
//! `downsample.bn` here.
//!
//! BatchNorm: `eps = 1e-5`, `momentum = 0.1` (torchvision defaults). Whether BatchNorm uses batch
//! statistics (train) or running statistics (eval) follows burn's module mode: `model.valid()`
//! is eval mode; a module on an autodiff device is in train mode unless frozen.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::mixed::batch_norm_f32;
use burn::tensor::activation::relu;

use super::point::PointHead;

/// The torchvision ResNet depths nanoclass builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResNetDepth {
    /// ResNet-18: basic blocks `[2, 2, 2, 2]`, 512 features.
    R18,
    /// ResNet-34: basic blocks `[3, 4, 6, 3]`, 512 features.
    R34,
    /// ResNet-50: bottleneck blocks `[3, 4, 6, 3]`, 2048 features.
    R50,
}

impl ResNetDepth {
    /// Blocks per stage (torchvision `resnet18/34/50`).
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetDepth::R18 => [2, 2, 2, 2],
            ResNetDepth::R34 | ResNetDepth::R50 => [3, 4, 6, 3],
        }
    }

    /// Whether the stages use bottleneck blocks (expansion 4) instead of basic blocks.
    pub fn bottleneck(self) -> bool {
        matches!(self, ResNetDepth::R50)
    }

    /// Width of the feature vector fed to `fc`: 512 (basic) or 2048 (bottleneck).
    pub fn features(self) -> usize {
        if self.bottleneck() { 2048 } else { 512 }
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, d: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(d)
}

fn bn(c: usize, d: &Device) -> BatchNorm {
    // torchvision: nn.BatchNorm2d(c) -> eps 1e-5, momentum 0.1
    BatchNormConfig::new(c)
        .with_epsilon(1e-5)
        .with_momentum(0.1)
        .init(d)
}

/// The projection shortcut: 1x1 conv (stride of the block) + BatchNorm.
/// torchvision keys `downsample.0.*` / `downsample.1.*`.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 convolution, no bias.
    pub conv: Conv2d,
    /// BatchNorm after the convolution.
    pub bn: BatchNorm,
}

/// One residual block. A basic block (ResNet-18/34) has `conv1`/`conv2` (3x3, 3x3); a bottleneck
/// block (ResNet-50) also has `conv3` (1x1, 3x3 with the stride, 1x1 expanding by 4), as in
/// torchvision v1.5 (stride on the 3x3 convolution).
#[derive(Module, Debug)]
pub struct Block {
    /// First convolution (3x3 basic, 1x1 bottleneck).
    pub conv1: Conv2d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm,
    /// Second convolution (3x3 in both kinds).
    pub conv2: Conv2d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm,
    /// Third convolution (bottleneck only, 1x1 expanding by 4).
    pub conv3: Option<Conv2d>,
    /// BatchNorm after `conv3` (bottleneck only).
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut when the stride or the width changes.
    pub downsample: Option<Downsample>,
}

impl Block {
    fn basic(cin: usize, cout: usize, stride: usize, d: &Device) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, 0, d),
            bn: bn(cout, d),
        });
        Self {
            conv1: conv(cin, cout, 3, stride, 1, d),
            bn1: bn(cout, d),
            conv2: conv(cout, cout, 3, 1, 1, d),
            bn2: bn(cout, d),
            conv3: None,
            bn3: None,
            downsample,
        }
    }

    fn bottleneck(cin: usize, width: usize, stride: usize, d: &Device) -> Self {
        let cout = width * 4;
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, 0, d),
            bn: bn(cout, d),
        });
        Self {
            conv1: conv(cin, width, 1, 1, 0, d),
            bn1: bn(width, d),
            conv2: conv(width, width, 3, stride, 1, d),
            bn2: bn(width, d),
            conv3: Some(conv(width, cout, 1, 1, 0, d)),
            bn3: Some(bn(cout, d)),
            downsample,
        }
    }

    /// `[N, Cin, H, W]` -> `[N, Cout, H / stride, W / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(batch_norm_f32(&self.bn1, self.conv1.forward(x.clone())));
        let y = batch_norm_f32(&self.bn2, self.conv2.forward(y));
        let y = match (&self.conv3, &self.bn3) {
            (Some(c3), Some(b3)) => batch_norm_f32(b3, c3.forward(relu(y))),
            _ => y,
        };
        let shortcut = match &self.downsample {
            Some(ds) => batch_norm_f32(&ds.bn, ds.conv.forward(x)),
            None => x,
        };
        relu(y + shortcut)
    }
}

/// ResNet with a replaceable linear head `fc`.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem: 7x7 convolution, stride 2, 64 channels.
    pub conv1: Conv2d,
    /// BatchNorm after the stem.
    pub bn1: BatchNorm,
    /// 3x3 max-pool, stride 2, padding 1.
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 1, width 64).
    pub layer1: Vec<Block>,
    /// Stage 2 (stride 2, width 128).
    pub layer2: Vec<Block>,
    /// Stage 3 (stride 2, width 256).
    pub layer3: Vec<Block>,
    /// Stage 4 (stride 2, width 512).
    pub layer4: Vec<Block>,
    /// The head: `features -> num_outputs`.
    pub fc: Linear,
    /// The regression task's point head on `layer2`'s map (see [`crate::model::point`]); when
    /// present it is the model's head and `fc` is unused.
    pub point: Option<PointHead>,
}

impl ResNet {
    /// A randomly initialised ResNet of the given depth with `num_outputs` head outputs.
    pub fn new(depth: ResNetDepth, num_outputs: usize, d: &Device) -> Self {
        let blocks = depth.blocks();
        let mut cin = 64;
        let mut stage = |width: usize, n: usize, stride: usize| -> Vec<Block> {
            (0..n)
                .map(|i| {
                    let s = if i == 0 { stride } else { 1 };
                    if depth.bottleneck() {
                        let b = Block::bottleneck(cin, width, s, d);
                        cin = width * 4;
                        b
                    } else {
                        let b = Block::basic(cin, width, s, d);
                        cin = width;
                        b
                    }
                })
                .collect()
        };
        let layer1 = stage(64, blocks[0], 1);
        let layer2 = stage(128, blocks[1], 2);
        let layer3 = stage(256, blocks[2], 2);
        let layer4 = stage(512, blocks[3], 2);
        Self {
            conv1: conv(3, 64, 7, 2, 3, d),
            bn1: bn(64, d),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: LinearConfig::new(depth.features(), num_outputs).init(d),
            point: None,
        }
    }

    /// Backbone output: `[N, 3, H, W]` (RGB, f32, normalised) -> `[N, C]` after global average
    /// pooling; `C` = 512 (ResNet-18/34) or 2048 (ResNet-50).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let tap = self.tap_blocks();
        self.features_from(tap, self.forward_until(tap, x))
    }

    /// The stride-8 map the point head reads: `[N, 3, H, W]` -> `layer2`'s output
    /// `[N, C, ceil(H / 8), ceil(W / 8)]`, `C` = 128 (ResNet-18/34) or 512 (ResNet-50).
    pub fn tap(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_until(self.tap_blocks(), x)
    }

    /// Blocks of `layer1` and `layer2`, whose output the point head reads.
    fn tap_blocks(&self) -> usize {
        self.layer1.len() + self.layer2.len()
    }

    /// The residual blocks in order, `layer1.0` first: 8 (ResNet-18) or 16 (ResNet-34/50).
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
    }

    /// The stem (`conv1`, `bn1`, ReLU, max-pool) and the first `first` residual blocks of
    /// [`Self::blocks`]: `[N, 3, H, W]` -> the input of block `first`.
    pub fn forward_until(&self, first: usize, x: Tensor<4>) -> Tensor<4> {
        let x = self
            .maxpool
            .forward(relu(batch_norm_f32(&self.bn1, self.conv1.forward(x))));
        self.blocks().take(first).fold(x, |x, b| b.forward(x))
    }

    /// The residual blocks from number `first` of [`Self::blocks`] on and the global average:
    /// the input of block `first` (what [`Self::forward_until`] gives) -> `[N, C]` features.
    ///
    /// # Panics
    /// If the activation's channels are not block `first`'s input channels.
    pub fn features_from(&self, first: usize, x: Tensor<4>) -> Tensor<2> {
        let x = self.blocks().skip(first).fold(x, |x, b| b.forward(x));
        // global average pool over H, W: [N, C, H, W] -> [N, C]
        x.mean_dim(3).mean_dim(2).flatten(1, 3)
    }
}
