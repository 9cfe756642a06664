//! Colour jitter as torchvision draws and applies it: brightness, contrast, saturation and hue in a random order, on `[3, S, S]` tensors.

use super::*;

/// Colour jitter strengths (torchvision `ColorJitter`). Each is drawn per image: brightness,
/// contrast and saturation factors uniformly from `[max(0, 1 - v), 1 + v]`, the hue shift
/// uniformly from `[-hue, hue]` (a fraction of the hue circle; `hue <= 0.5`). 0 turns an
/// operation off. The DLI course uses 0.2 for all four.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    /// Brightness strength, >= 0.
    pub brightness: f32,
    /// Contrast strength, >= 0.
    pub contrast: f32,
    /// Saturation strength, >= 0.
    pub saturation: f32,
    /// Hue strength, in 0..=0.5.
    pub hue: f32,
}

impl ColorJitter {
    /// The DLI course's `ColorJitter(0.2, 0.2, 0.2, 0.2)`.
    pub const COURSE: Self = Self {
        brightness: 0.2,
        contrast: 0.2,
        saturation: 0.2,
        hue: 0.2,
    };
    /// No jitter.
    pub const NONE: Self = Self {
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
    };
}

/// One colour operation of [`ColorJitter`] with its drawn factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColorOp {
    /// Multiply by the factor (torchvision `adjust_brightness`).
    Brightness(f32),
    /// Blend with the mean gray level of the image (`adjust_contrast`).
    Contrast(f32),
    /// Blend with the per-pixel gray level (`adjust_saturation`).
    Saturation(f32),
    /// Rotate the hue by this fraction of the circle, in -0.5..=0.5 (`adjust_hue`).
    Hue(f32),
}

/// Draws the jitter operations for one image: a random order of the four operations (like
/// torchvision's `randperm(4)`), each with its factor; disabled operations are left out.
pub fn draw_color_ops(jitter: &ColorJitter, rng: &mut impl Rng) -> Vec<ColorOp> {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let mut factor = |strength: f32| {
        let s = if strength.is_finite() {
            strength.max(0.0)
        } else {
            0.0
        };
        (s > 0.0).then(|| rng.random_range((1.0 - s).max(0.0)..=1.0 + s))
    };
    let brightness = factor(jitter.brightness);
    let contrast = factor(jitter.contrast);
    let saturation = factor(jitter.saturation);
    let hue_strength = if jitter.hue.is_finite() {
        jitter.hue.clamp(0.0, 0.5)
    } else {
        0.0
    };
    let hue = (hue_strength > 0.0).then(|| rng.random_range(-hue_strength..=hue_strength));
    order
        .iter()
        .filter_map(|&op| match op {
            0 => brightness.map(ColorOp::Brightness),
            1 => contrast.map(ColorOp::Contrast),
            2 => saturation.map(ColorOp::Saturation),
            _ => hue.map(ColorOp::Hue),
        })
        .collect()
}

/// Gray level of torchvision `rgb_to_grayscale`: `0.2989 R + 0.587 G + 0.114 B`.
#[inline]
pub(super) fn gray(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// Applies colour operations in order to a CHW image (`[3, H*W]` planes, values in 0..=1,
/// results clamped to 0..=1), with torchvision's tensor definitions:
/// brightness `clamp(f * x)`; contrast `clamp(f * x + (1 - f) * mean(gray(image)))`;
/// saturation `clamp(f * x + (1 - f) * gray(pixel))`; hue: RGB -> HSV, `h = (h + f) mod 1`,
/// back to RGB.
pub fn apply_color_ops(chw: &mut [f32], ops: &[ColorOp]) {
    let plane = chw.len() / 3;
    if plane == 0 {
        return;
    }
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let b = &mut b[..plane];
    for op in ops {
        match *op {
            ColorOp::Brightness(f) => {
                for v in r.iter_mut().chain(g.iter_mut()).chain(b.iter_mut()) {
                    *v = (f * *v).clamp(0.0, 1.0);
                }
            }
            ColorOp::Contrast(f) => {
                let sum: f64 = (0..plane).map(|i| f64::from(gray(r[i], g[i], b[i]))).sum();
                let mean = (sum / plane as f64) as f32;
                for v in r.iter_mut().chain(g.iter_mut()).chain(b.iter_mut()) {
                    *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0);
                }
            }
            ColorOp::Saturation(f) => {
                for i in 0..plane {
                    let l = gray(r[i], g[i], b[i]);
                    r[i] = (f * r[i] + (1.0 - f) * l).clamp(0.0, 1.0);
                    g[i] = (f * g[i] + (1.0 - f) * l).clamp(0.0, 1.0);
                    b[i] = (f * b[i] + (1.0 - f) * l).clamp(0.0, 1.0);
                }
            }
            ColorOp::Hue(f) => {
                for i in 0..plane {
                    let [h, s, v] = rgb_to_hsv(r[i], g[i], b[i]);
                    let h = (h + f).rem_euclid(1.0);
                    [r[i], g[i], b[i]] = hsv_to_rgb(h, s, v);
                }
            }
        }
    }
}

/// torchvision `_rgb2hsv` for one pixel; h, s, v in 0..=1.
pub(super) fn rgb_to_hsv(r: f32, g: f32, b: f32) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    [(h / 6.0 + 1.0) % 1.0, s, maxc]
}

/// torchvision `_hsv2rgb` for one pixel.
pub(super) fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}
