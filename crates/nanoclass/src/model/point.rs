//! The regression task's point head: a spatial soft-argmax over a stride-8 feature map.
//!
//! A global-average-pooled feature vector carries almost no position: on frozen
//! EfficientNet-Lite0 features of 224 x 224 photos with a marker at a random place, a linear
//! head on the pooled 1280 features was no better than always answering the mean point (about
//! 83 px mean error), while this head on the stride-8 map reached about 1.4 px (the figures and
//! the command are in docs/regression.md). The head reads the backbone where the
//! map still has 28 x 28 cells at 224 x 224 ([`crate::model::Arch::point_tap`]):
//!
//! ```text
//! map [N, C, H, W] -> Conv 3x3 (C -> 64, pad 1) -> ReLU -> h
//! h -> Conv 1x1 (64 -> K)  -> heatmap logits -> softmax over the H * W cells: p [N, K, cells]
//! h -> Conv 1x1 (64 -> 2K) -> * (2 / W, 2 / H): a per-cell offset (ox, oy) in cell widths,
//!                             started at zero
//! x = sum p * (gx + ox), y = sum p * (gy + oy)
//!   -> [N, 2K] = (x_0, y_0, x_1, y_1, ...), normalised coordinates in [-1, 1]
//! ```
//!
//! `gx_j = (2 j + 1) / W - 1` and `gy_i = (2 i + 1) / H - 1` are the centres of the map's cells in
//! the same normalised coordinates as the targets ([`crate::eval::regression::normalise`]: a
//! stride-8 cell `j` covers input pixels `8 j .. 8 j + 8`, whose centre `8 j + 4` normalises to
//! `(2 j + 1) / W - 1` when `W = size / 8`). The expectation over the cells is the spatial
//! soft-argmax ("DSNT", Nibali et al., 2018, <https://arxiv.org/abs/1801.07372>). Trained with
//! the point loss alone, its heatmaps concentrate on one cell, which puts every point on a cell
//! centre (8 px apart at 224 px) and stops the gradient that would move it. The offsets (the
//! sub-cell refinement of keypoint detectors such as CenterNet, Zhou et al., 2019,
//! <https://arxiv.org/abs/1904.07850>) move each cell's vote, so a point can lie anywhere, and
//! their gradient does not vanish when the heatmap is peaked. They are linear in `h`: a bounded
//! offset (`tanh`) saturates at the peak cell, whose activations are large, and its votes then
//! land on the neighbouring cell centres instead (measured: 108 of 120 held-out coordinates on a
//! cell centre, 2.76 px mean, as without offsets).
//! The outputs keep the layout of the course's linear head (one pair per category), so the loss,
//! the metrics and every reader of the outputs are the same for both heads.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};

/// Hidden channels of the 3x3 convolution.
pub const HIDDEN: usize = 64;

/// The point head (see the module docs). State-dict names: `point.conv1.{weight,bias}` (`[64, C,
/// 3, 3]`, `[64]`), `point.conv2.{weight,bias}` (`[K, 64, 1, 1]`, `[K]`) and
/// `point.offset.{weight,bias}` (`[2K, 64, 1, 1]`, `[2K]`; channel `2k` is category `k`'s x
/// offset, `2k + 1` its y offset).
#[derive(Module, Debug)]
pub struct PointHead {
    /// 3x3 convolution, `C -> 64`, padding 1, with bias.
    pub conv1: Conv2d,
    /// 1x1 convolution, `64 -> K` heatmap logits, with bias.
    pub conv2: Conv2d,
    /// 1x1 convolution, `64 -> 2K` offsets in cell widths, with bias; initialised to zero.
    pub offset: Conv2d,
}

impl PointHead {
    /// A freshly initialised head reading `channels` map channels, for `categories` points.
    pub fn new(channels: usize, categories: usize, device: &Device) -> PointHead {
        PointHead {
            conv1: Conv2dConfig::new([channels, HIDDEN], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            conv2: Conv2dConfig::new([HIDDEN, categories], [1, 1]).init(device),
            offset: Conv2dConfig::new([HIDDEN, 2 * categories], [1, 1])
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
        }
    }

    /// Map channels `C` the head reads.
    pub fn channels(&self) -> usize {
        self.conv1.weight.dims()[1]
    }

    /// Number of categories `K` (points).
    pub fn categories(&self) -> usize {
        self.conv2.weight.dims()[0]
    }

    /// Points: `[N, C, H, W]` -> `[N, 2K]`, `(x, y)` per category in normalised coordinates.
    pub fn forward(&self, map: Tensor<4>) -> Tensor<2> {
        let h = relu(self.conv1.forward(map));
        let logits = self.conv2.forward(h.clone());
        let [n, k, hh, ww] = logits.dims();
        let cells = hh * ww;
        let device = logits.device();
        let p = softmax(logits.reshape([n, k, cells]), 2).reshape([n, k, 1, cells]);
        let (gx, gy) = grid(hh, ww);
        let centres =
            Tensor::<1>::from_data(TensorData::new([gx, gy].concat(), [2 * cells]), &device)
                .reshape([1, 1, 2, cells]);
        let reach = vec![2.0 / ww as f32, 2.0 / hh as f32];
        let reach =
            Tensor::<1>::from_data(TensorData::new(reach, [2]), &device).reshape([1, 1, 2, 1]);
        let offsets = self.offset.forward(h).reshape([n, k, 2, cells]) * reach;
        ((centres + offsets) * p).sum_dim(3).reshape([n, 2 * k])
    }

    /// [`Self::forward`] on a map flattened to `[N, C * H * W]` (what the frozen path caches),
    /// with `H = W = side`.
    ///
    /// # Panics
    /// When the row length is not `C * side * side` (a programming error: the cache key holds
    /// the map's shape).
    pub fn forward_flat(&self, flat: Tensor<2>, side: usize) -> Tensor<2> {
        let [n, len] = flat.dims();
        let c = self.channels();
        assert_eq!(
            len,
            c * side * side,
            "point head: rows of {len}, map {c}x{side}x{side}"
        );
        self.forward(flat.reshape([n, c, side, side]))
    }
}

/// The normalised centres of an `h x w` map's cells in row-major order: `(gx, gy)`, each
/// `h * w` long, `gx[i * w + j] = (2 j + 1) / w - 1`, `gy[i * w + j] = (2 i + 1) / h - 1`.
pub fn grid(h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let mut gx = Vec::with_capacity(h * w);
    let mut gy = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            gx.push((2 * j + 1) as f32 / w as f32 - 1.0);
            gy.push((2 * i + 1) as f32 / h as f32 - 1.0);
        }
    }
    (gx, gy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_centres_are_the_normalised_pixel_centres_of_stride_8_cells() {
        let (gx, gy) = grid(28, 28);
        // cell (i=2, j=5) covers pixels 40..48 x 16..24 of a 224 x 224 input
        let at = 2 * 28 + 5;
        let px = crate::eval::regression::normalise([44.0, 20.0], 224.0, 224.0);
        assert!((gx[at] - px[0]).abs() < 1e-6, "{} vs {}", gx[at], px[0]);
        assert!((gy[at] - px[1]).abs() < 1e-6, "{} vs {}", gy[at], px[1]);
        assert_eq!((gx[0], gx[27]), (-1.0 + 1.0 / 28.0, 1.0 - 1.0 / 28.0));
    }

    #[test]
    fn a_peaked_heatmap_gives_its_cell_offset_by_its_vote() {
        let device = Device::flex();
        let mut head = PointHead::new(1, 2, &device);
        // conv1's channel 0 passes the map through, conv2 scales it by 50 for category 0 and
        // by 0 for category 1: category 0's heatmap peaks at the map's one high cell.
        let mut w1 = vec![0.0f32; HIDDEN * 9];
        w1[4] = 1.0; // centre tap of output channel 0
        head.conv1.weight = burn::module::Param::from_tensor(Tensor::<4>::from_data(
            TensorData::new(w1, [HIDDEN, 1, 3, 3]),
            &device,
        ));
        head.conv1.bias = Some(burn::module::Param::from_tensor(Tensor::<1>::zeros(
            [HIDDEN],
            &device,
        )));
        let mut w2 = vec![0.0f32; 2 * HIDDEN];
        w2[0] = 50.0;
        head.conv2.weight = burn::module::Param::from_tensor(Tensor::<4>::from_data(
            TensorData::new(w2, [2, HIDDEN, 1, 1]),
            &device,
        ));
        head.conv2.bias = Some(burn::module::Param::from_tensor(Tensor::<1>::zeros(
            [2],
            &device,
        )));
        // no offsets but category 0's y: one cell width down
        head.offset.weight =
            burn::module::Param::from_tensor(Tensor::<4>::zeros([4, HIDDEN, 1, 1], &device));
        head.offset.bias = Some(burn::module::Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 0.0, 0.0], [4]),
            &device,
        )));
        let mut map = vec![0.0f32; 8 * 8];
        map[3 * 8 + 6] = 1.0; // row 3, column 6
        let out = head.forward(Tensor::<4>::from_data(
            TensorData::new(map, [1, 1, 8, 8]),
            &device,
        ));
        let v: Vec<f32> = out.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v.len(), 4);
        let (gx, gy) = grid(8, 8);
        assert!((v[0] - gx[3 * 8 + 6]).abs() < 1e-3, "x {v:?}");
        assert!((v[1] - (gy[3 * 8 + 6] + 2.0 / 8.0)).abs() < 1e-3, "y {v:?}");
        // category 1 has all-zero logits: the uniform mean, the centre of the map
        assert!(v[2].abs() < 1e-5 && v[3].abs() < 1e-5, "{v:?}");
    }
}
