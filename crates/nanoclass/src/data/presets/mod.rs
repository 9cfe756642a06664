//! The one preprocessing definition: the training preset and the evaluation preset side by side,
//! after torchvision's `references/classification/presets.py`.
//!
//! Both turn a decoded RGB image ([`crate::data::decode`]) into the model input of one image:
//! a `Vec<f32>` of length `3 * crop * crop` in CHW order (`[3, crop, crop]`, channels R, G, B),
//! normalised as `x = (pixel / 255 - mean[c]) / std[c]` (torchvision `ToTensor` + `Normalize`).
//! A batch is these vectors stacked to `[N, 3, crop, crop]`.
//!
//! - [`EvalPreset`] (evaluation, prediction, export, live camera): resize the shorter side to
//!   `resize` (aspect ratio kept), centre-crop `crop x crop`. torchvision `Resize(256)` +
//!   `CenterCrop(224)`.
//! - [`TrainPreset`]: torchvision `RandomResizedCrop(crop, scale, ratio)` +
//!   `RandomHorizontalFlip(p)` + `ColorJitter(brightness, contrast, saturation, hue)` (the DLI
//!   course's jitter, 0.2 each).
//!
//! Resizing is bilinear with antialiasing when shrinking: the `image` crate's
//! `imageops::resize` with `FilterType::Triangle` (a triangle kernel widened by the scale factor
//! when downscaling, like Pillow's `BILINEAR`, which torchvision uses on PIL images).
//! Policy 5: an image smaller than the target is upscaled by the same rule (the shorter side goes
//! to `resize`, then the centre crop; `RandomResizedCrop` always resizes its box to
//! `crop x crop`), so no padding ever appears.
//!
//! The colour jitter works on f32 values in 0..=1 with the definitions of torchvision's tensor
//! functional (`_blend`, `rgb_to_grayscale`, `_rgb2hsv`, `_hsv2rgb`), in a random order of the four
//! operations, like `ColorJitter.forward`.

mod augment;
mod color;

pub use augment::*;
pub use color::*;

use image::RgbImage;
use image::imageops::{self, FilterType};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Per-channel normalisation: `x = (pixel / 255 - mean[c]) / std[c]`, channels in RGB order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Per-channel mean of `pixel / 255` (R, G, B), in 0..=1.
    pub mean: [f32; 3],
    /// Per-channel standard deviation of `pixel / 255` (R, G, B), > 0.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics used by every torchvision classification model (ResNet-18/34/50):
    /// mean `[0.485, 0.456, 0.406]`, std `[0.229, 0.224, 0.225]`.
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// EfficientNet-Lite: `x = (pixel - 127) / 128` (TensorFlow's `efficientnet_lite` builder:
    /// MEAN_RGB = 127.0, STDDEV_RGB = 128.0), written as mean `127/255`, std `128/255` on
    /// `pixel / 255`.
    pub const EFFICIENTNET_LITE: Self = Self {
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };

    /// Normalises one value already scaled to 0..=1, for channel `c` (0 = R, 1 = G, 2 = B).
    #[inline]
    pub fn apply(&self, c: usize, value: f32) -> f32 {
        (value - self.mean[c]) / self.std[c]
    }
}

/// The box a preset took from the source image, so that a regression target (a point) can be
/// moved the same way as the pixels. Coordinates are continuous pixel coordinates of the decoded
/// source image (`0..width`, `0..height`; pixel `i` covers `[i, i + 1)`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    /// Left edge of the box, in source pixels.
    pub x: f32,
    /// Top edge of the box, in source pixels.
    pub y: f32,
    /// Width of the box, in source pixels.
    pub w: f32,
    /// Height of the box, in source pixels.
    pub h: f32,
    /// The output was mirrored left-right after resizing.
    pub flipped: bool,
}

impl Crop {
    /// Maps a point `[x, y]` of the source image (continuous pixel coordinates) into the
    /// `out_size x out_size` model input: `x' = (x - self.x) * out_size / self.w` (then
    /// `out_size - x'` when flipped), `y' = (y - self.y) * out_size / self.h`. Points outside the
    /// box map outside `0..out_size`.
    pub fn map_point(&self, point: [f32; 2], out_size: u32) -> [f32; 2] {
        let size = out_size as f32;
        let mut x = (point[0] - self.x) * size / self.w;
        let y = (point[1] - self.y) * size / self.h;
        if self.flipped {
            x = size - x;
        }
        [x, y]
    }

    /// The inverse of [`Crop::map_point`]: a point of the `out_size x out_size` model input back
    /// to continuous pixel coordinates of the source image.
    pub fn unmap_point(&self, point: [f32; 2], out_size: u32) -> [f32; 2] {
        let size = out_size as f32;
        let x = if self.flipped {
            size - point[0]
        } else {
            point[0]
        };
        [
            self.x + x * self.w / size,
            self.y + point[1] * self.h / size,
        ]
    }
}

/// The evaluation transform: resize the shorter side to `resize` (bilinear, aspect kept, small
/// images are upscaled), centre-crop `crop x crop`, normalise. Default: 256 / 224 with ImageNet
/// statistics (torchvision's ImageNet evaluation preset).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct EvalPreset {
    /// Target of the shorter side, in pixels, before the crop (256 for a 224 input). If it is
    /// smaller than `crop`, `crop` is used instead (no padding).
    pub resize: u32,
    /// Side of the square model input, in pixels (224 for ResNet and EfficientNet-Lite0).
    pub crop: u32,
    /// Normalisation of the model.
    pub norm: Normalization,
}

impl Default for EvalPreset {
    fn default() -> Self {
        EvalPreset {
            resize: 256,
            crop: 224,
            norm: Normalization::IMAGENET,
        }
    }
}

/// torchvision `Resize(size)` with an int size: the shorter side becomes `size`, the longer side
/// `int(size * long / short)` (truncated). Returns (new width, new height).
fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let long_of = |long: u32, short: u32| {
        ((u64::from(size) * u64::from(long)) / u64::from(short.max(1))).max(1) as u32
    };
    if width <= height {
        (size, long_of(height, width))
    } else {
        (long_of(width, height), size)
    }
}

/// Python's `round()`: to the nearest integer, ties to even (torchvision computes crop offsets and
/// box sizes with it).
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 {
        2.0 * (v / 2.0).round()
    } else {
        r
    }
}

fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.width() == width && img.height() == height {
        img.clone()
    } else {
        imageops::resize(img, width, height, FilterType::Triangle)
    }
}

impl EvalPreset {
    /// The evaluation transform of one image: `[3, crop, crop]` CHW, RGB, normalised, as a
    /// `Vec<f32>` of length `3 * crop * crop`. An empty image (never returned by the decoder)
    /// gives the normalised value of black everywhere.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let crop = self.crop;
        if img.width() == 0 || img.height() == 0 {
            return black(crop, &self.norm);
        }
        let target = self.resize.max(crop);
        let (w, h) = shorter_side_size(img.width(), img.height(), target);
        let resized = resize(img, w, h);
        let (left, top) = centre_offsets(w, h, crop);
        to_chw(&resized, left, top, crop, &self.norm)
    }

    /// The view [`EvalPreset::apply`] normalises: the resized, centre-cropped `crop x crop` RGB
    /// image (for drawing points on what the model saw).
    pub fn view(&self, img: &RgbImage) -> RgbImage {
        if img.width() == 0 || img.height() == 0 {
            return RgbImage::new(self.crop, self.crop);
        }
        let target = self.resize.max(self.crop);
        let (w, h) = shorter_side_size(img.width(), img.height(), target);
        let resized = resize(img, w, h);
        let (left, top) = centre_offsets(w, h, self.crop);
        imageops::crop_imm(&resized, left, top, self.crop, self.crop).to_image()
    }

    /// The shorter side to ask of the decoder ([`crate::data::decode::DecodeOptions::min_side`]):
    /// `max(resize, crop)`, so that a JPEG decoded at reduced size is still only ever shrunk.
    pub fn decode_min_side(&self) -> u32 {
        self.resize.max(self.crop)
    }

    /// The box of a `width x height` source image that [`EvalPreset::apply`] keeps, in source
    /// pixels (never flipped), for moving regression targets.
    pub fn crop_box(&self, width: u32, height: u32) -> Crop {
        let target = self.resize.max(self.crop);
        let (w, h) = shorter_side_size(width, height, target);
        let (left, top) = centre_offsets(w, h, self.crop);
        let (sx, sy) = (
            w as f32 / width.max(1) as f32,
            h as f32 / height.max(1) as f32,
        );
        Crop {
            x: left as f32 / sx,
            y: top as f32 / sy,
            w: self.crop as f32 / sx,
            h: self.crop as f32 / sy,
            flipped: false,
        }
    }
}

/// torchvision `CenterCrop`: `top = round((h - crop) / 2)`, `left = round((w - crop) / 2)`.
fn centre_offsets(w: u32, h: u32, crop: u32) -> (u32, u32) {
    let offset = |len: u32| round_half_even(f64::from(len.saturating_sub(crop)) / 2.0) as u32;
    (offset(w), offset(h))
}

fn black(crop: u32, norm: &Normalization) -> Vec<f32> {
    let plane = (crop * crop) as usize;
    (0..3)
        .flat_map(|c| std::iter::repeat_n(norm.apply(c, 0.0), plane))
        .collect()
}

/// `crop x crop` pixels of `img` from `(left, top)`, as normalised CHW f32.
fn to_chw(img: &RgbImage, left: u32, top: u32, crop: u32, norm: &Normalization) -> Vec<f32> {
    let plane = (crop * crop) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for y in 0..crop {
        for x in 0..crop {
            let px = img.get_pixel(left + x, top + y).0;
            let i = (y * crop + x) as usize;
            for c in 0..3 {
                out[c * plane + i] = norm.apply(c, f32::from(px[c]) / 255.0);
            }
        }
    }
    out
}

/// The training transform (torchvision's ImageNet training preset, with the course's jitter):
/// `RandomResizedCrop(crop, scale, ratio)`, `RandomHorizontalFlip(hflip)`, `ColorJitter`,
/// normalise.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct TrainPreset {
    /// Side of the square model input, in pixels.
    pub crop: u32,
    /// Range of the crop box area as a fraction of the image area (torchvision: `[0.08, 1.0]`).
    pub scale: [f32; 2],
    /// Range of the crop box aspect ratio w/h, drawn log-uniformly (torchvision:
    /// `[3/4, 4/3]`).
    pub ratio: [f32; 2],
    /// Probability of a left-right mirror (torchvision: 0.5). 0 for tasks where left and right
    /// differ.
    pub hflip: f32,
    /// Colour jitter strengths.
    pub jitter: ColorJitter,
    /// Normalisation of the model.
    pub norm: Normalization,
}

impl TrainPreset {
    /// One random training view of `img`: `[3, crop, crop]` CHW, RGB, normalised
    /// (`Vec<f32>` of length `3 * crop * crop`).
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> Vec<f32> {
        self.apply_with_flip(img, rng).0
    }

    /// Like [`TrainPreset::apply`], also returning the source box and whether the view was
    /// mirrored, so that a regression target can be moved with [`Crop::map_point`].
    pub fn apply_with_flip(&self, img: &RgbImage, rng: &mut impl Rng) -> (Vec<f32>, Crop) {
        self.apply_in_box(img, None, rng)
    }

    /// Like [`TrainPreset::apply_with_flip`] for a regression target: the crop box is drawn
    /// (up to 10 times, torchvision's count of tries) until it holds `point` (continuous pixel
    /// coordinates of `img`) at least [`KEEP_MARGIN`] of the box's width and height inside its
    /// edges; when no draw does, the box is the centre square (the eval view). So the target
    /// is always in view and moves with the pixels ([`Crop::map_point`]).
    pub fn apply_keeping(
        &self,
        img: &RgbImage,
        point: [f32; 2],
        rng: &mut impl Rng,
    ) -> (Vec<f32>, Crop) {
        self.apply_in_box(img, Some(point), rng)
    }

    fn apply_in_box(
        &self,
        img: &RgbImage,
        keep: Option<[f32; 2]>,
        rng: &mut impl Rng,
    ) -> (Vec<f32>, Crop) {
        let crop = self.crop;
        if img.width() == 0 || img.height() == 0 {
            let none = Crop {
                x: 0.0,
                y: 0.0,
                w: 0.0,
                h: 0.0,
                flipped: false,
            };
            return (black(crop, &self.norm), none);
        }
        let (iw, ih) = (img.width(), img.height());
        let (x, y, w, h) = match keep {
            None => random_resized_crop_box(iw, ih, self.scale, self.ratio, rng),
            Some(p) => {
                let holds = |&(x, y, w, h): &(u32, u32, u32, u32)| {
                    let (mx, my) = (w as f32 * KEEP_MARGIN, h as f32 * KEEP_MARGIN);
                    p[0] >= x as f32 + mx
                        && p[0] <= (x + w) as f32 - mx
                        && p[1] >= y as f32 + my
                        && p[1] <= (y + h) as f32 - my
                };
                let drawn = (0..10)
                    .map(|_| random_resized_crop_box(iw, ih, self.scale, self.ratio, rng))
                    .find(holds);
                // The centre square: torchvision's fallback box for ratio 1.
                drawn.unwrap_or_else(|| random_resized_crop_box(iw, ih, [1.0; 2], [1.0; 2], rng))
            }
        };
        let region = imageops::crop_imm(img, x, y, w, h).to_image();
        let mut view = resize(&region, crop, crop);
        let flipped = self.hflip > 0.0 && rng.random::<f32>() < self.hflip;
        if flipped {
            imageops::flip_horizontal_in_place(&mut view);
        }
        let plane = (crop * crop) as usize;
        let mut chw = vec![0.0f32; 3 * plane];
        for (i, px) in view.pixels().enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = f32::from(px.0[c]) / 255.0;
            }
        }
        let ops = draw_color_ops(&self.jitter, rng);
        apply_color_ops(&mut chw, &ops);
        for (c, channel) in chw.chunks_mut(plane).enumerate() {
            for v in channel {
                *v = self.norm.apply(c, *v);
            }
        }
        let box_ = Crop {
            x: x as f32,
            y: y as f32,
            w: w as f32,
            h: h as f32,
            flipped,
        };
        (chw, box_)
    }

    /// The shorter side to ask of the decoder: large enough that even the smallest crop box
    /// (area `scale[0]` of a square image, aspect ratio at the end of `ratio`) still has `crop`
    /// pixels on its shorter side: `ceil(crop * sqrt(max(ratio[1], 1 / ratio[0]) / scale[0]))`.
    /// 915 for the defaults (224, 0.08, 3/4..4/3).
    pub fn decode_min_side(&self) -> u32 {
        let smallest = self.scale[0].clamp(1e-4, 1.0);
        let widest = self.ratio[1].max(1.0 / self.ratio[0].max(1e-4)).max(1.0);
        (self.crop as f32 * (widest / smallest).sqrt()).ceil() as u32
    }
}

/// torchvision `RandomResizedCrop.get_params`: up to 10 tries of a box with area fraction
/// uniform in `scale` and aspect ratio log-uniform in `ratio` (sizes rounded like Python's
/// `round`) that fits the image, placed uniformly; otherwise the centre crop clamped to `ratio`.
/// Returns `(x, y, w, h)` in pixels.
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: [f32; 2],
    ratio: [f32; 2],
    rng: &mut impl Rng,
) -> (u32, u32, u32, u32) {
    let area = f64::from(width) * f64::from(height);
    let (s0, s1) = (
        f64::from(scale[0].min(scale[1])),
        f64::from(scale[0].max(scale[1])),
    );
    let (r0, r1) = (
        f64::from(ratio[0].min(ratio[1])),
        f64::from(ratio[0].max(ratio[1])),
    );
    let valid = s0.is_finite() && s1.is_finite() && s0 >= 0.0 && r0 > 0.0 && r1.is_finite();
    if valid {
        let (l0, l1) = (r0.ln(), r1.ln());
        for _ in 0..10 {
            let target_area = area * rng.random_range(s0..=s1);
            let aspect = rng.random_range(l0..=l1).exp();
            let w = round_half_even((target_area * aspect).sqrt());
            let h = round_half_even((target_area / aspect).sqrt());
            if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
                let (w, h) = (w as u32, h as u32);
                let y = rng.random_range(0..=height - h);
                let x = rng.random_range(0..=width - w);
                return (x, y, w, h);
            }
        }
    }
    // Fallback: the whole image, clamped to the ratio range, centred.
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if valid && in_ratio < r0 {
        (
            width,
            (round_half_even(f64::from(width) / r0) as u32).clamp(1, height),
        )
    } else if valid && in_ratio > r1 {
        (
            (round_half_even(f64::from(height) * r1) as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// The training and evaluation presets for a model with a square input of `input_size` pixels:
/// training = `RandomResizedCrop(input_size, scale=(0.08, 1), ratio=(3/4, 4/3))`, flip 0.5,
/// `ColorJitter(0.2, 0.2, 0.2, 0.2)`; evaluation = resize to `round(input_size * 256 / 224)`
/// (256 for 224, torchvision's ratio), centre crop `input_size`. Both use `norm`.
pub fn presets(norm: Normalization, input_size: u32) -> (TrainPreset, EvalPreset) {
    let train = TrainPreset {
        crop: input_size,
        scale: [0.08, 1.0],
        ratio: [3.0 / 4.0, 4.0 / 3.0],
        hflip: 0.5,
        jitter: ColorJitter::COURSE,
        norm,
    };
    let resize = ((u64::from(input_size) * 256 + 112) / 224) as u32;
    (
        train,
        EvalPreset {
            resize,
            crop: input_size,
            norm,
        },
    )
}

/// How far inside its crop box a regression target must be ([`TrainPreset::apply_keeping`]),
/// as a fraction of the box's width and height: 1/16, 14 pixels of a 224-pixel view, so that
/// what was clicked is seen with some of its surroundings.
pub const KEEP_MARGIN: f32 = 1.0 / 16.0;

/// Resizes `img` so that its shorter side is `size` (bilinear with antialiasing, aspect kept,
/// the longer side truncated as torchvision's `Resize(size)` does); the first step of
/// [`EvalPreset::apply`] when `resize <= crop`. Returns the image unchanged when it already has
/// that size.
pub fn resize_shorter_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = shorter_side_size(img.width(), img.height(), size);
    resize(img, w, h)
}

/// The presets of the regression task (points must stay in view and move with the pixels), for
/// a model with a square input of `input_size` pixels:
///
/// - evaluation: resize the shorter side to `input_size` and take the centre square (no margin
///   is cut off a square image, unlike the 256/224 classification preset, so a point near the
///   border stays in view);
/// - training: a mild `RandomResizedCrop` (area 50-100 % of the image, aspect ratio 3/4 to
///   4/3) whose box must hold the point ([`TrainPreset::apply_keeping`]: redrawn up to 10
///   times, else the centre square), so no crop cuts the point out of view and the target is
///   moved and scaled with the pixels; horizontal flip p = 0.5 (x mirrored with the pixels,
///   as the course's `XYDataset` does with `random_hflip`); the course's
///   `ColorJitter(0.2, 0.2, 0.2, 0.2)`. The course itself resizes to 224x224 and applies only
///   the jitter and the flip; the crops add the translation and scale variety that a few
///   hundred images lack.
pub fn regression_presets(norm: Normalization, input_size: u32) -> (TrainPreset, EvalPreset) {
    let train = TrainPreset {
        crop: input_size,
        scale: [0.5, 1.0],
        ratio: [3.0 / 4.0, 4.0 / 3.0],
        hflip: 0.5,
        jitter: ColorJitter::COURSE,
        norm,
    };
    (
        train,
        EvalPreset {
            resize: input_size,
            crop: input_size,
            norm,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha12Rng;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(2.6), 3.0);
        assert_eq!(round_half_even(-0.5), 0.0);
    }

    #[test]
    fn resize_sizes_follow_torchvision() {
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_size(8, 8, 256), (256, 256));
        // CenterCrop offsets: (341 - 224) / 2 = 58.5 rounds to 58 (ties to even).
        assert_eq!(centre_offsets(341, 256, 224), (58, 16));
    }

    #[test]
    fn preset_sizes() {
        let (train, eval) = presets(Normalization::IMAGENET, 224);
        assert_eq!((eval.resize, eval.crop), (256, 224));
        assert_eq!(eval, EvalPreset::default());
        assert_eq!(train.decode_min_side(), 915);
        assert_eq!(presets(Normalization::IMAGENET, 320).1.resize, 366);
    }

    #[test]
    fn normalisation_constants() {
        let n = Normalization::EFFICIENTNET_LITE;
        // (pixel - 127) / 128 for pixel 255 and 0.
        assert!((n.apply(0, 1.0) - 1.0).abs() < 1e-6);
        assert!((n.apply(2, 0.0) + 127.0 / 128.0).abs() < 1e-6);
        let i = Normalization::IMAGENET;
        assert!((i.apply(1, 0.456) - 0.0).abs() < 1e-7);
    }

    #[test]
    fn eval_upscales_small_images_and_keeps_layout() {
        // 8x4 image: left half red, right half blue. Shorter side to 256 -> 512x256, crop 224
        // from x = 144: columns 0..112 red, 112..224 blue.
        let img = RgbImage::from_fn(8, 4, |x, _| {
            if x < 4 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let eval = EvalPreset {
            resize: 256,
            crop: 224,
            norm: Normalization {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        };
        let out = eval.apply(&img);
        assert_eq!(out.len(), 3 * 224 * 224);
        let at = |c: usize, y: usize, x: usize| out[c * 224 * 224 + y * 224 + x];
        assert_eq!((at(0, 100, 10), at(2, 100, 10)), (1.0, 0.0));
        assert_eq!((at(0, 100, 210), at(2, 100, 210)), (0.0, 1.0));
        let b = eval.crop_box(8, 4);
        assert_eq!((b.x, b.y, b.w, b.h), (144.0 / 64.0, 16.0 / 64.0, 3.5, 3.5));
    }

    #[test]
    fn crop_box_within_image_and_ratio() {
        let mut rng = ChaCha12Rng::seed_from_u64(3);
        for _ in 0..500 {
            let (x, y, w, h) =
                random_resized_crop_box(500, 375, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            assert!(w >= 1 && h >= 1 && x + w <= 500 && y + h <= 375);
            let area = f64::from(w * h) / (500.0 * 375.0);
            assert!((0.07..=1.0).contains(&area), "area fraction {area}");
        }
        // A 1000x10 strip cannot hold a 3/4..4/3 box of >= 8% area: centre crop 13x10.
        assert_eq!(
            random_resized_crop_box(1000, 10, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng),
            (493, 0, 13, 10)
        );
    }

    #[test]
    fn train_flip_and_map_point() {
        // With scale = ratio = 1 on a square image the box is the whole image; flip always.
        let img = RgbImage::from_fn(4, 4, |x, _| {
            if x < 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let preset = TrainPreset {
            crop: 8,
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
            hflip: 1.0,
            jitter: ColorJitter::NONE,
            norm: Normalization {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
        };
        let mut rng = ChaCha12Rng::seed_from_u64(0);
        let (out, b) = preset.apply_with_flip(&img, &mut rng);
        assert_eq!(
            b,
            Crop {
                x: 0.0,
                y: 0.0,
                w: 4.0,
                h: 4.0,
                flipped: true
            }
        );
        // Mirrored: blue on the left, red on the right.
        assert_eq!((out[0], out[2 * 64]), (0.0, 1.0));
        assert_eq!((out[7], out[2 * 64 + 7]), (1.0, 0.0));
        assert_eq!(b.map_point([1.0, 2.0], 8), [6.0, 4.0]);
    }

    #[test]
    fn color_ops_follow_torchvision_definitions() {
        // One pixel (0.2, 0.4, 0.6) and one (1, 1, 1).
        let base = vec![0.2f32, 1.0, 0.4, 1.0, 0.6, 1.0];
        let run = |op| {
            let mut v = base.clone();
            apply_color_ops(&mut v, &[op]);
            v
        };
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(
            &run(ColorOp::Brightness(1.5)),
            &[0.3, 1.0, 0.6, 1.0, 0.9, 1.0]
        ));
        // gray(0.2,0.4,0.6) = 0.36298, gray(1,1,1) = 0.9999; mean = 0.68604
        let mean = (0.36298f32 + 0.9999) / 2.0;
        let want: Vec<f32> = base
            .iter()
            .map(|&v| (0.5 * v + 0.5 * mean).clamp(0.0, 1.0))
            .collect();
        assert!(close(&run(ColorOp::Contrast(0.5)), &want));
        let sat = run(ColorOp::Saturation(0.0));
        assert!(close(
            &sat,
            &[0.36298, 0.9999, 0.36298, 0.9999, 0.36298, 0.9999]
        ));
        // Hue +1/3 turns (0.2, 0.4, 0.6) (h = 7/12) into h = 11/12: (0.6, 0.2, 0.4).
        assert!(close(
            &run(ColorOp::Hue(1.0 / 3.0)),
            &[0.6, 1.0, 0.2, 1.0, 0.4, 1.0]
        ));
        // Half a turn either way is the same colour.
        assert!(close(&run(ColorOp::Hue(0.5)), &run(ColorOp::Hue(-0.5))));
    }

    #[test]
    fn drawn_factors_stay_in_range() {
        let mut rng = ChaCha12Rng::seed_from_u64(9);
        for _ in 0..200 {
            let ops = draw_color_ops(&ColorJitter::COURSE, &mut rng);
            assert_eq!(ops.len(), 4);
            for op in ops {
                match op {
                    ColorOp::Brightness(f) | ColorOp::Contrast(f) | ColorOp::Saturation(f) => {
                        assert!((0.8..=1.2).contains(&f));
                    }
                    ColorOp::Hue(f) => assert!((-0.2..=0.2).contains(&f)),
                }
            }
        }
        assert!(draw_color_ops(&ColorJitter::NONE, &mut rng).is_empty());
    }

    #[test]
    fn augmentation_defaults_keep_the_existing_presets() {
        let (train, _) = presets(Normalization::IMAGENET, 224);
        assert_eq!(train.with_augmentation(&Augmentation::default()), train);
        // A run written before the settings existed, or with some of them, reads as the
        // defaults for what is missing.
        let old: Augmentation = serde_json::from_str("{}").unwrap();
        assert_eq!(old, Augmentation::default());
        let some: Augmentation = serde_json::from_str(r#"{"hflip": false}"#).unwrap();
        assert_eq!(
            some,
            Augmentation {
                hflip: false,
                ..Augmentation::default()
            }
        );
    }

    #[test]
    fn augmentation_sets_the_preset_and_is_validated() {
        let (train, _) = presets(Normalization::EFFICIENTNET_LITE, 224);
        let p = train.with_augmentation(&Augmentation::PARTIAL);
        assert_eq!(
            (p.scale, p.hflip, p.jitter),
            ([0.35, 1.0], 0.0, ColorJitter::COURSE)
        );
        assert_eq!(
            (p.crop, p.ratio, p.norm),
            (train.crop, train.ratio, train.norm)
        );
        // torchvision's hue strength is at most 0.5.
        let strong = Augmentation {
            jitter: 0.8,
            ..Augmentation::PARTIAL
        };
        let j = train.with_augmentation(&strong).jitter;
        assert_eq!((j.brightness, j.saturation, j.hue), (0.8, 0.8, 0.5));
        assert_eq!(Augmentation::PARTIAL.validate(), Ok(()));
        let bad = |scale: [f32; 2], jitter: f32| {
            Augmentation {
                scale,
                jitter,
                hflip: false,
            }
            .validate()
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            bad([0.6, 0.4], 0.2),
            "crop scale 0.6..0.4 is not a range within 0 (excluded) to 1 of the image area"
        );
        bad([0.0, 1.0], 0.2);
        bad([0.5, 1.5], 0.2);
        bad([f32::NAN, 1.0], 0.2);
        assert_eq!(
            bad([0.5, 1.0], -0.1),
            "colour jitter strength -0.1 is not a number >= 0"
        );
        bad([0.5, 1.0], f32::INFINITY);
    }

    #[test]
    fn view_seed_is_the_documented_sha256() {
        // hashlib.sha256(b"nanoclass view" + (7).to_bytes(8, "little") + (64).to_bytes(8,
        // "little") + b"0f" * 32 + (3).to_bytes(4, "little")).hexdigest()
        let key = "0f".repeat(32);
        assert_eq!(
            hex::encode(view_seed(7, &key, 3)),
            "8ce5dc8e5076dcbab9d7a7481b6d212278b0d4556b5cd6b9e6c2464f39087439"
        );
    }

    #[test]
    fn view_zero_is_the_eval_view_and_the_others_are_mirrored_train_views() {
        // 4x4, left half red, right half blue. The train preset takes the whole image
        // (scale = ratio = 1) and always mirrors; the eval preset only resizes (8 / 8).
        let img = RgbImage::from_fn(4, 4, |x, _| {
            if x < 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let norm = Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let train = TrainPreset {
            crop: 8,
            scale: [1.0, 1.0],
            ratio: [1.0, 1.0],
            hflip: 1.0,
            jitter: ColorJitter::NONE,
            norm,
        };
        let eval = EvalPreset {
            resize: 8,
            crop: 8,
            norm,
        };
        let v0 = view(&train, &eval, &img, 1, "k", 0);
        assert_eq!(v0, eval.apply(&img));
        // Red at column 0, blue at column 7 (R plane, then B plane at offset 2 * 64).
        assert_eq!(
            (v0[0], v0[2 * 64], v0[7], v0[2 * 64 + 7]),
            (1.0, 0.0, 0.0, 1.0)
        );
        let v1 = view(&train, &eval, &img, 1, "k", 1);
        assert_eq!(
            (v1[0], v1[2 * 64], v1[7], v1[2 * 64 + 7]),
            (0.0, 1.0, 1.0, 0.0)
        );
    }

    #[test]
    fn views_are_reproducible_from_seed_key_and_index() {
        // A 40x30 gradient, so that different crops and jitters give different values.
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
        });
        let (train, eval) = presets(Normalization::EFFICIENTNET_LITE, 16);
        let train = train.with_augmentation(&Augmentation::PARTIAL);
        let v = |seed: u64, key: &str, i: u32| view(&train, &eval, &img, seed, key, i);
        let a = v(0, "aa", 3);
        assert_eq!(a.len(), 3 * 16 * 16);
        assert_eq!(a, v(0, "aa", 3));
        assert_eq!(a, train.apply(&img, &mut view_rng(0, "aa", 3)));
        assert_ne!(a, v(0, "aa", 2));
        assert_ne!(a, v(0, "ab", 3));
        assert_ne!(a, v(1, "aa", 3));
        assert_ne!(a, v(0, "aa", 0));
        assert_eq!(v(5, "zz", 0), eval.apply(&img));
        // ceil(224 * sqrt((4/3) / 0.35)) = ceil(437.2) for the train views, above the eval
        // preset's 256.
        let (t224, e224) = presets(Normalization::EFFICIENTNET_LITE, 224);
        let t224 = t224.with_augmentation(&Augmentation::PARTIAL);
        assert_eq!(views_decode_min_side(&t224, &e224), 438);
    }
}
