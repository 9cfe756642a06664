//! Partial fine-tuning's cut: the last `K` residual blocks of the backbone and the head train,
//! everything before them stays as pretrained.
//!
//! The network is split into a frozen body and a trained tail:
//!
//! - EfficientNet-Lite0: `_conv_stem`, `_bn0` and `_blocks.0 .. _blocks.{15 - K}` are the body;
//!   `_blocks.{16 - K} .. _blocks.15`, `_conv_head`, `_bn1` and `_fc` the tail (`K` in 0..=16;
//!   with `K = 0` the tail is the 1x1 head convolution `_conv_head` (320 -> 1280), `_bn1` and
//!   `_fc`, on the cached `[320, 7, 7]` output of the last block).
//! - ResNet-18/34/50: `conv1`, `bn1`, the max-pool and every residual block but the last `K` are
//!   the body; the last `K` blocks, counted from the end of `layer4` (and on into `layer3`, ...
//!   when `K` exceeds `layer4`'s 2 or 3 blocks), and `fc` the tail (`K` in 0..=8 for ResNet-18,
//!   0..=16 for ResNet-34/50; with `K = 0` only `fc` trains, on the cached last map).
//!
//! [`Net::forward_until`] runs the body, [`Net::forward_from`] the tail; in eval mode
//! `forward_from(forward_until(x))` equals `forward(x)` exactly (the same operations in the same
//! order). The body runs once per image and view, its activations are cached, and only the tail
//! runs in training.
//!
//! # Training only the tail
//!
//! The whole [`Net`] is what trains and what is saved: on an autodiff device, a loss computed
//! from [`Net::forward_from`] reaches only the tail's parameters, and
//! `GradientsParams::from_grads` keeps only parameters that received a gradient, so an
//! optimizer step leaves the body's parameters and BatchNorm statistics bit-identical (tested
//! below). The saved model is the ordinary whole network.
//!
//! # BatchNorm of the trained blocks
//!
//! burn 0.22 decides per BatchNorm layer: it uses batch statistics (and updates its running
//! statistics with its momentum) when the input is on an autodiff device *and* the layer's
//! `training` flag is enabled; otherwise it normalises with its running statistics. `valid()`
//! turns every flag off for evaluation; `freeze()` turns flags off and stops gradients.
//! [`Net::with_tail_batch_norm`] sets the flags of the tail's BatchNorm layers
//! ([`TailBatchNorm`]); their `gamma` and `beta` train in both modes.
//!
//! # Regression
//!
//! The point head ([`crate::model::point`]) reads the stride-8 map (`_blocks.4` / `layer2`).
//! Every block a cut can train lies after that map, so no cut trains anything a regression
//! model uses: [`Net::check_cut`] refuses point-head models.

use burn::nn::BatchNorm;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::efficientnet::{EfficientNetLite, MbConvBlock};
use super::resnet::{Block, ResNet, ResNetDepth};
use super::{Arch, Net};

/// Where partial fine-tuning cuts the network: the last `blocks` residual blocks (MBConv blocks
/// of EfficientNet-Lite0, BasicBlocks / Bottlenecks of the ResNets) and the head train.
/// Build it with [`Cut::new`], which checks `blocks` against the architecture.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cut {
    /// Trained residual blocks, counted from the end of the backbone (0: only what follows the
    /// last block trains).
    pub blocks: usize,
}

/// A cut that does not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutError {
    /// The number of trained blocks is more than the backbone has.
    #[error(
        "{arch} has {max} residual blocks; the number of blocks to train must be 0 to {max}, not {blocks}"
    )]
    OutOfRange {
        /// The architecture.
        arch: Arch,
        /// The number asked for.
        blocks: usize,
        /// The backbone's residual blocks.
        max: usize,
    },
    /// The model has a point head (regression), which reads a map before every block a cut
    /// trains.
    #[error(
        "partial fine-tuning does not apply to regression models: their point head reads {tap}, before every block it would train"
    )]
    PointHead {
        /// The layer the point head reads (`_blocks.4`, `layer2`).
        tap: &'static str,
    },
}

impl From<CutError> for crate::Error {
    fn from(e: CutError) -> Self {
        crate::Error::Train(e.to_string())
    }
}

impl Cut {
    /// The cut training the last `blocks` residual blocks of `arch`.
    ///
    /// # Errors
    /// [`CutError::OutOfRange`] unless `blocks <= Cut::max_blocks(arch)`.
    pub fn new(arch: Arch, blocks: usize) -> Result<Cut, CutError> {
        let max = Self::max_blocks(arch);
        if blocks <= max {
            Ok(Cut { blocks })
        } else {
            Err(CutError::OutOfRange { arch, blocks, max })
        }
    }

    /// The default cut: for EfficientNet-Lite0 no MBConv block, so its 1x1 head convolution
    /// (`_conv_head`, 320 -> 1280 channels at 7x7), `_bn1` and `_fc` train on the last block's
    /// cached output; for the ResNets the whole of `layer4` (2 blocks for ResNet-18/34, 3 for
    /// ResNet-50).
    ///
    /// EfficientNet-Lite0's was chosen by measurement on clocks (PyTorch,
    /// `scripts/partial_reference.py`, 4 views, 2 threads): the last 2 blocks reach held-out
    /// top-1 0.9750 in 2 epochs of 0.17 s steps, the head convolution alone 0.9750 in 5 epochs
    /// of 0.033 s steps (batch 32), in half the time; on burn the steps take 0.68 s and 0.14 s,
    /// 85 s against 45 s (docs/training.md, "Partial fine-tuning").
    pub fn default_for(arch: Arch) -> Cut {
        let blocks = match arch {
            Arch::EfficientnetLite0 => 0,
            Arch::Resnet18 => ResNetDepth::R18.blocks()[3],
            Arch::Resnet34 => ResNetDepth::R34.blocks()[3],
            Arch::Resnet50 => ResNetDepth::R50.blocks()[3],
        };
        Cut { blocks }
    }

    /// Residual blocks of `arch`: 16 for EfficientNet-Lite0 (its block table), 8 for ResNet-18,
    /// 16 for ResNet-34/50 (torchvision's `[2, 2, 2, 2]` and `[3, 4, 6, 3]`).
    pub fn max_blocks(arch: Arch) -> usize {
        match arch {
            Arch::EfficientnetLite0 => EfficientNetLite::BLOCKS,
            Arch::Resnet18 => ResNetDepth::R18.blocks().iter().sum(),
            Arch::Resnet34 => ResNetDepth::R34.blocks().iter().sum(),
            Arch::Resnet50 => ResNetDepth::R50.blocks().iter().sum(),
        }
    }

    /// State-dict prefixes of the layers that train, in forward order, e.g.
    /// `["_blocks.14", "_blocks.15", "_conv_head", "_bn1", "_fc"]` or
    /// `["layer4.0", "layer4.1", "fc"]`.
    pub fn trained_layers(self, arch: Arch) -> Vec<String> {
        let max = Self::max_blocks(arch);
        let first = max.saturating_sub(self.blocks);
        let mut names: Vec<String> = match arch {
            Arch::EfficientnetLite0 => (first..max).map(|i| format!("_blocks.{i}")).collect(),
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => {
                let depth = match arch {
                    Arch::Resnet18 => ResNetDepth::R18,
                    Arch::Resnet34 => ResNetDepth::R34,
                    _ => ResNetDepth::R50,
                };
                let all: Vec<String> = depth
                    .blocks()
                    .iter()
                    .enumerate()
                    .flat_map(|(s, &n)| (0..n).map(move |i| format!("layer{}.{i}", s + 1)))
                    .collect();
                all[first..].to_vec()
            }
        };
        match arch {
            Arch::EfficientnetLite0 => {
                names.extend(["_conv_head", "_bn1", "_fc"].map(String::from))
            }
            _ => names.push("fc".into()),
        }
        names
    }
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.blocks {
            0 => write!(f, "layers after the last block"),
            1 => write!(f, "last block"),
            n => write!(f, "last {n} blocks"),
        }
    }
}

/// BatchNorm of the trained blocks during partial fine-tuning (the body's BatchNorm always uses
/// its running statistics: it runs in eval mode, once).
///
/// The default, batch statistics, was chosen by measurement: the partial recipe on the clocks
/// data set (EfficientNet-Lite0, last 2 blocks, 4 views, `scripts/partial_reference.py
/// --variants train,frozen`) reached held-out top-1 0.6167, 0.9750, 0.9917 in epochs 1-3 with
/// batch statistics, and 0.7333, 0.9417, 0.9500, 0.9667, 0.9917 in epochs 1-5 with frozen
/// ones.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TailBatchNorm {
    /// Batch statistics in training, running statistics updated with the layer's momentum
    /// (PyTorch's `model.train()`).
    #[default]
    Batch,
    /// The pretrained running statistics, never updated (PyTorch's `bn.eval()` while its
    /// `weight` and `bias` keep training).
    Frozen,
}

impl Net {
    /// Residual blocks of this backbone (see [`Cut::max_blocks`]).
    pub fn block_count(&self) -> usize {
        match self {
            Net::ResNet(m) => m.blocks().count(),
            Net::EfficientNetLite(m) => m._blocks.len(),
        }
    }

    /// Checks that `cut` fits this model.
    ///
    /// # Errors
    /// [`CutError::PointHead`] for a regression model, [`CutError::OutOfRange`] when the model
    /// has fewer blocks than `cut.blocks`.
    pub fn check_cut(&self, cut: Cut) -> Result<(), CutError> {
        let arch = self.arch();
        if self.point_head().is_some() {
            return Err(CutError::PointHead {
                tap: arch.point_tap(),
            });
        }
        Cut::new(arch, cut.blocks).map(|_| ())
    }

    /// The architecture of this backbone, read from its structure.
    pub fn arch(&self) -> Arch {
        match self {
            Net::EfficientNetLite(_) => Arch::EfficientnetLite0,
            Net::ResNet(m) if m.layer1.first().is_some_and(|b| b.conv3.is_some()) => Arch::Resnet50,
            Net::ResNet(m) if m.layer1.len() == ResNetDepth::R18.blocks()[0] => Arch::Resnet18,
            Net::ResNet(_) => Arch::Resnet34,
        }
    }

    /// Index of the first trained block in forward order.
    ///
    /// # Panics
    /// If `cut` does not fit ([`Net::check_cut`]): a programming error.
    fn first_trained(&self, cut: Cut) -> usize {
        let n = self.block_count();
        assert!(
            cut.blocks <= n,
            "cut of {} blocks on a backbone of {n}",
            cut.blocks
        );
        n - cut.blocks
    }

    /// The frozen body: `[N, 3, S, S]` (RGB, f32, normalised per [`Arch::normalization`]) ->
    /// the input of the first trained block, `[N, C, h, w]` ([`Net::activation_shape`]).
    /// BatchNorm follows the module's mode; run it on a plain device or after `valid()` for
    /// running statistics.
    ///
    /// # Panics
    /// If `cut` does not fit ([`Net::check_cut`]) or the input is not 3-channel.
    pub fn forward_until(&self, cut: Cut, x: Tensor<4>) -> Tensor<4> {
        let first = self.first_trained(cut);
        match self {
            Net::ResNet(m) => m.forward_until(first, x),
            Net::EfficientNetLite(m) => m.forward_until(first, x),
        }
    }

    /// The trained tail: `[N, C, h, w]` activations of [`Net::forward_until`] -> `[N, outputs]`
    /// logits, through the last `cut.blocks` blocks, global average pooling and the linear
    /// head.
    ///
    /// # Panics
    /// If `cut` does not fit ([`Net::check_cut`]: regression models are refused) or the
    /// activation's channels are not the first trained block's input channels.
    pub fn forward_from(&self, cut: Cut, act: Tensor<4>) -> Tensor<2> {
        self.head().forward(self.features_from(cut, act))
    }

    /// The tail up to the head: `[N, C, h, w]` activations of [`Net::forward_until`] -> `[N, F]`
    /// pooled features, what the linear head reads ([`Arch::feature_dim`]: 1280 for
    /// EfficientNet-Lite0, 512 for ResNet-18).
    ///
    /// # Panics
    /// As [`Net::forward_from`].
    pub fn features_from(&self, cut: Cut, act: Tensor<4>) -> Tensor<2> {
        let first = self.first_trained(cut);
        assert!(
            self.point_head().is_none(),
            "forward_from on a model with a point head"
        );
        match self {
            Net::ResNet(m) => m.features_from(first, act),
            Net::EfficientNetLite(m) => m.features_from(first, act),
        }
    }

    /// Shape `[C, h, w]` of one image's activation at `cut` for `size x size` inputs: the first
    /// trained block's input channels, and `size` halved (rounding up) by the stem (twice for
    /// the ResNets: `conv1` and the max-pool) and by every stride-2 block of the body.
    ///
    /// # Panics
    /// If `cut` does not fit ([`Net::check_cut`]).
    pub fn activation_shape(&self, cut: Cut, size: usize) -> [usize; 3] {
        let first = self.first_trained(cut);
        let halve = |side: usize, stride: usize| side.div_ceil(stride);
        match self {
            Net::EfficientNetLite(m) => {
                let side = m._blocks[..first]
                    .iter()
                    .fold(halve(size, 2), |s, b| halve(s, mbconv_stride(b)));
                // After the last block: the head convolution's input channels.
                let channels = m
                    ._blocks
                    .get(first)
                    .map_or(m._conv_head.weight.dims()[1], mbconv_channels_in);
                [channels, side, side]
            }
            Net::ResNet(m) => {
                let side = m
                    .blocks()
                    .take(first)
                    .fold(halve(halve(size, 2), 2), |s, b| halve(s, block_stride(b)));
                // After the last block: the features `fc` reads (burn's weight is [in, out]).
                let channels = m
                    .blocks()
                    .nth(first)
                    .map_or(m.fc.weight.dims()[0], |b| b.conv1.weight.dims()[1]);
                [channels, side, side]
            }
        }
    }

    /// Sets the BatchNorm mode of the trained blocks (and of EfficientNet-Lite0's `_bn1`) for
    /// training on an autodiff device (see the module docs); the body's BatchNorm layers are
    /// left as they are. `valid()` still gives running statistics everywhere for evaluation,
    /// and the flags are not part of the saved model.
    ///
    /// # Panics
    /// If `cut` does not fit ([`Net::check_cut`]).
    pub fn with_tail_batch_norm(self, cut: Cut, mode: TailBatchNorm) -> Net {
        let first = self.first_trained(cut);
        let on = mode == TailBatchNorm::Batch;
        match self {
            Net::EfficientNetLite(mut m) => {
                m._blocks = m
                    ._blocks
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| if i >= first { mbconv_bn(b, on) } else { b })
                    .collect();
                m._bn1 = bn_training(m._bn1, on);
                Net::EfficientNetLite(m)
            }
            Net::ResNet(m) => Net::ResNet(resnet_tail_bn(m, first, on)),
        }
    }
}

fn mbconv_stride(b: &MbConvBlock) -> usize {
    b._depthwise_conv.stride[0]
}

fn mbconv_channels_in(b: &MbConvBlock) -> usize {
    match &b._expand_conv {
        Some(conv) => conv.weight.dims()[1],
        // No expansion: the depthwise convolution sees the block's input.
        None => b._depthwise_conv.weight.dims()[0],
    }
}

/// A residual block's stride: its projection shortcut's (stride-1 blocks that change the width,
/// like ResNet-50's `layer1.0`, have a stride-1 projection; blocks without one keep the size).
fn block_stride(b: &Block) -> usize {
    b.downsample.as_ref().map_or(1, |d| d.conv.stride[0])
}

fn bn_training(bn: BatchNorm, on: bool) -> BatchNorm {
    BatchNorm {
        training: bn.training.with_value(on),
        ..bn
    }
}

fn mbconv_bn(b: MbConvBlock, on: bool) -> MbConvBlock {
    MbConvBlock {
        _bn0: b._bn0.map(|bn| bn_training(bn, on)),
        _bn1: bn_training(b._bn1, on),
        _bn2: bn_training(b._bn2, on),
        ..b
    }
}

fn block_bn(b: Block, on: bool) -> Block {
    Block {
        bn1: bn_training(b.bn1, on),
        bn2: bn_training(b.bn2, on),
        bn3: b.bn3.map(|bn| bn_training(bn, on)),
        downsample: b.downsample.map(|mut d| {
            d.bn = bn_training(d.bn, on);
            d
        }),
        ..b
    }
}

fn resnet_tail_bn(mut m: ResNet, first: usize, on: bool) -> ResNet {
    let mut index = 0;
    let mut stage = |blocks: Vec<Block>| -> Vec<Block> {
        blocks
            .into_iter()
            .map(|b| {
                let trained = index >= first;
                index += 1;
                if trained { block_bn(b, on) } else { b }
            })
            .collect()
    };
    m.layer1 = stage(std::mem::take(&mut m.layer1));
    m.layer2 = stage(std::mem::take(&mut m.layer2));
    m.layer3 = stage(std::mem::take(&mut m.layer3));
    m.layer4 = stage(std::mem::take(&mut m.layer4));
    m
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use burn::module::{Module, ModuleVisitor, Param};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
    use burn::tensor::Distribution;

    use super::*;
    use crate::model::point::PointHead;

    fn device() -> Device {
        Device::flex()
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    #[test]
    fn cuts_are_checked_per_architecture() {
        assert_eq!(Cut::max_blocks(Arch::EfficientnetLite0), 16);
        assert_eq!(Cut::max_blocks(Arch::Resnet18), 8);
        assert_eq!(Cut::max_blocks(Arch::Resnet34), 16);
        assert_eq!(Cut::max_blocks(Arch::Resnet50), 16);
        assert_eq!(Cut::new(Arch::Resnet18, 8), Ok(Cut { blocks: 8 }));
        assert_eq!(
            Cut::new(Arch::Resnet18, 9),
            Err(CutError::OutOfRange {
                arch: Arch::Resnet18,
                blocks: 9,
                max: 8
            })
        );
        assert_eq!(Cut::new(Arch::EfficientnetLite0, 0), Ok(Cut { blocks: 0 }));
        let err = Cut::new(Arch::EfficientnetLite0, 17)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "efficientnet_lite0 has 16 residual blocks; the number of blocks to train must be 0 to 16, not 17"
        );
        for arch in Arch::ALL {
            let d = Cut::default_for(arch);
            assert_eq!(Cut::new(arch, d.blocks), Ok(d));
        }
        assert_eq!(Cut::default_for(Arch::EfficientnetLite0).blocks, 0);
        assert_eq!(Cut::default_for(Arch::Resnet50).blocks, 3);
        // Serialised as the run's config stores it.
        let json = serde_json::to_string(&Cut { blocks: 2 }).unwrap();
        assert_eq!(json, r#"{"blocks":2}"#);
        assert_eq!(
            serde_json::to_string(&TailBatchNorm::Frozen).unwrap(),
            r#""frozen""#
        );
    }

    #[test]
    fn trained_layers_are_named_like_the_state_dict() {
        assert_eq!(
            Cut { blocks: 2 }.trained_layers(Arch::EfficientnetLite0),
            ["_blocks.14", "_blocks.15", "_conv_head", "_bn1", "_fc"]
        );
        // ResNet-18: layer4 has 2 blocks, so 3 reaches into layer3.
        assert_eq!(
            Cut { blocks: 3 }.trained_layers(Arch::Resnet18),
            ["layer3.1", "layer4.0", "layer4.1", "fc"]
        );
        assert_eq!(
            Cut { blocks: 4 }.trained_layers(Arch::Resnet50),
            ["layer3.5", "layer4.0", "layer4.1", "layer4.2", "fc"]
        );
        assert_eq!(
            Cut { blocks: 0 }.trained_layers(Arch::EfficientnetLite0),
            ["_conv_head", "_bn1", "_fc"]
        );
        assert_eq!(Cut { blocks: 0 }.trained_layers(Arch::Resnet18), ["fc"]);
    }

    #[test]
    fn the_architecture_is_read_from_the_structure() {
        for arch in Arch::ALL {
            let net = Net::new(arch, 3, &device());
            assert_eq!(net.arch(), arch);
            assert_eq!(net.block_count(), Cut::max_blocks(arch));
        }
    }

    /// `forward_from(forward_until(x))` against `forward(x)`, bit for bit, in eval mode.
    fn assert_split_is_exact(arch: Arch, cuts: &[usize], size: usize) {
        let device = device();
        let net = Net::new(arch, 5, &device).valid();
        let x = Tensor::<4>::random([2, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let whole = values(net.forward(x.clone()));
        for &k in cuts {
            let cut = Cut::new(arch, k).unwrap();
            let act = net.forward_until(cut, x.clone());
            let [c, h, w] = net.activation_shape(cut, size);
            assert_eq!(act.dims(), [2, c, h, w], "{arch} {cut}");
            assert_eq!(values(net.forward_from(cut, act)), whole, "{arch} {cut}");
        }
    }

    #[test]
    fn efficientnet_split_equals_the_whole_forward() {
        assert_split_is_exact(Arch::EfficientnetLite0, &[0, 1, 2, 11, 12, 16], 64);
    }

    #[test]
    fn resnet18_split_equals_the_whole_forward() {
        assert_split_is_exact(Arch::Resnet18, &[0, 1, 2, 3, 8], 64);
    }

    #[test]
    fn resnet50_split_equals_the_whole_forward() {
        assert_split_is_exact(Arch::Resnet50, &[0, 3, 4, 16], 64);
    }

    #[test]
    fn activation_shapes_at_224_and_an_odd_size() {
        let device = device();
        let lite = Net::new(Arch::EfficientnetLite0, 2, &device);
        // In front of _blocks.14 (stage 6, 192 channels, stride 32) and of _blocks.0 (the
        // stem's 32 channels at stride 2); 97 -> 49 -> 25 -> 13 -> 7 -> 4.
        assert_eq!(lite.activation_shape(Cut { blocks: 2 }, 224), [192, 7, 7]);
        assert_eq!(
            lite.activation_shape(Cut { blocks: 16 }, 224),
            [32, 112, 112]
        );
        assert_eq!(lite.activation_shape(Cut { blocks: 2 }, 97), [192, 4, 4]);
        // After the last block: `_conv_head`'s input, 320 channels at stride 32.
        assert_eq!(lite.activation_shape(Cut { blocks: 0 }, 224), [320, 7, 7]);
        let r18 = Net::new(Arch::Resnet18, 2, &device);
        // layer4.0's input is layer3's output: 256 channels at stride 16.
        assert_eq!(r18.activation_shape(Cut { blocks: 2 }, 224), [256, 14, 14]);
        assert_eq!(r18.activation_shape(Cut { blocks: 1 }, 224), [512, 7, 7]);
        assert_eq!(r18.activation_shape(Cut { blocks: 8 }, 224), [64, 56, 56]);
        assert_eq!(r18.activation_shape(Cut { blocks: 0 }, 224), [512, 7, 7]);
        let r50 = Net::new(Arch::Resnet50, 2, &device);
        assert_eq!(r50.activation_shape(Cut { blocks: 3 }, 224), [1024, 14, 14]);
        assert_eq!(r50.activation_shape(Cut { blocks: 16 }, 97), [64, 25, 25]);
        assert_eq!(r50.activation_shape(Cut { blocks: 0 }, 224), [2048, 7, 7]);
        for (net, k) in [
            (&lite, 0),
            (&lite, 2),
            (&lite, 12),
            (&r18, 0),
            (&r18, 3),
            (&r50, 16),
        ] {
            let cut = Cut { blocks: k };
            let act = net
                .valid()
                .forward_until(cut, Tensor::<4>::zeros([1, 3, 97, 97], &device));
            let [c, h, w] = net.activation_shape(cut, 97);
            assert_eq!(act.dims(), [1, c, h, w], "{} {cut}", net.arch());
        }
    }

    #[test]
    fn regression_models_are_refused() {
        let device = device();
        let net = Net::new(Arch::EfficientnetLite0, 2, &device)
            .with_point_head(Some(PointHead::new(40, 1, &device)));
        let err = net.check_cut(Cut { blocks: 2 }).unwrap_err();
        assert_eq!(err, CutError::PointHead { tap: "_blocks.4" });
        assert!(err.to_string().contains("regression"), "{err}");
        let r18 = Net::new(Arch::Resnet18, 2, &device);
        assert!(r18.check_cut(Cut { blocks: 8 }).is_ok());
        assert!(matches!(
            r18.check_cut(Cut { blocks: 9 }),
            Err(CutError::OutOfRange { max: 8, .. })
        ));
    }

    /// Every float tensor of a module (parameters and BatchNorm running statistics) by path.
    struct Snapshot {
        path: Vec<String>,
        tensors: BTreeMap<String, Vec<f32>>,
    }

    impl ModuleVisitor for Snapshot {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.tensors
                .insert(self.path.join("."), values(param.val()));
        }
    }

    fn snapshot(net: &Net) -> BTreeMap<String, Vec<f32>> {
        let mut s = Snapshot {
            path: vec![],
            tensors: BTreeMap::new(),
        };
        net.visit(&mut s);
        s.tensors
    }

    /// One Adam step on a loss of `forward_from`: the body is bit-identical afterwards, every
    /// trained weight moved, and the tail's running statistics moved only in batch mode.
    fn assert_step_trains_only_the_tail(arch: Arch, k: usize, mode: TailBatchNorm, tensors: usize) {
        let ad = device().autodiff();
        let cut = Cut::new(arch, k).unwrap();
        let net = Net::new(arch, 3, &ad).with_tail_batch_norm(cut, mode);
        let before = snapshot(&net);
        let [c, h, w] = net.activation_shape(cut, 64);
        let act = Tensor::<4>::random([4, c, h, w], Distribution::Normal(0.0, 1.0), &ad);
        let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 0], &ad);
        let loss = CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(net.forward_from(cut, act), labels);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let mut optim: ModuleOptimizer = AdamConfig::new().init();
        let net = optim.step(1e-2, net, grads);
        // burn keeps a BatchNorm's running-statistics update pending until the next read that
        // synchronises it; `valid()` does.
        let after = snapshot(&net.valid());
        assert_eq!(before.len(), after.len());
        let trained = cut.trained_layers(arch);
        // Paths start with the enum variant's name, then the state-dict path.
        let in_tail = |path: &str| {
            let rel = path.split_once('.').map_or(path, |(_, rest)| rest);
            trained.iter().any(|t| rel.starts_with(&format!("{t}.")))
        };
        let (mut body, mut tail) = (0, 0);
        for (path, old) in &before {
            let new = &after[path];
            let statistic = path.contains("running_");
            if !in_tail(path) {
                body += 1;
                assert!(old == new, "{arch} {cut}: body tensor {path} changed");
            } else if statistic {
                tail += 1;
                let moved = old != new;
                assert_eq!(
                    moved,
                    mode == TailBatchNorm::Batch,
                    "{arch} {cut} {mode:?}: {path} moved: {moved}"
                );
            } else {
                tail += 1;
                assert!(
                    old != new,
                    "{arch} {cut}: trained tensor {path} did not move"
                );
            }
        }
        assert_eq!(tail, tensors, "{arch} {cut}: tail tensors");
        assert_eq!(body + tail, before.len());
    }

    #[test]
    fn a_step_through_forward_from_trains_only_the_efficientnet_tail() {
        // Per block: 3 convolutions and 3 BatchNorms of 4 tensors; `_conv_head`, `_bn1` (4) and
        // `_fc` (2): 2 * 15 + 1 + 4 + 2.
        let tensors = 37;
        assert_step_trains_only_the_tail(Arch::EfficientnetLite0, 2, TailBatchNorm::Batch, tensors);
        assert_step_trains_only_the_tail(
            Arch::EfficientnetLite0,
            2,
            TailBatchNorm::Frozen,
            tensors,
        );
        // No block: `_conv_head` (1), `_bn1` (4), `_fc` (2).
        assert_step_trains_only_the_tail(Arch::EfficientnetLite0, 0, TailBatchNorm::Batch, 7);
    }

    #[test]
    fn a_step_through_forward_from_trains_only_the_resnet_tail() {
        // layer3.1 and layer4.1: 2 convolutions + 2 BatchNorms (10 tensors); layer4.0 also its
        // projection (15); fc (2).
        let tensors = 10 + 15 + 10 + 2;
        assert_step_trains_only_the_tail(Arch::Resnet18, 3, TailBatchNorm::Batch, tensors);
        assert_step_trains_only_the_tail(Arch::Resnet18, 3, TailBatchNorm::Frozen, tensors);
        assert_step_trains_only_the_tail(Arch::Resnet18, 0, TailBatchNorm::Batch, 2);
    }
}
