//! Point regression: the one coordinate convention, the error figures of `nanoclass eval` and
//! the PNG of predicted against true points.
//!
//! # Coordinates
//!
//! Points are continuous pixel coordinates: `x` from 0 at the left edge to `W` at the right edge
//! of an image `W` pixels wide (pixel `i` covers `[i, i + 1)`), `y` likewise from the top; the
//! `<x>_<y>_<uuid>.jpg` file names of the DLI course give `x` and `y` in pixels of the saved
//! image. The model sees the eval preset's view of an image (shorter side resized to the input
//! size, centre square) and learns the point normalised to `[-1, 1]` over that view, exactly as
//! the course's `XYDataset` does (`x = 2.0 * (x / width - 0.5)`):
//!
//! ```text
//! x_n = 2 x / W - 1        x = (x_n + 1) W / 2
//! y_n = 2 y / H - 1        y = (y_n + 1) H / 2
//! ```
//!
//! so `-1` is the left (top) edge, `0` the centre, `+1` the right (bottom) edge, and a
//! left-right mirror of the view is `x_n -> -x_n` (`x -> W - x`). [`normalise`] and
//! [`denormalise`] are the only implementation: training targets (after augmentation), `predict`
//! (back to pixels of the input image), `eval` (errors in pixels of the model input) and live use
//! all go through them.

use std::path::Path;

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::fs::write_atomic;

/// Pixel point -> normalised point: `[2 x / width - 1, 2 y / height - 1]` (see the module
/// documentation). `width`, `height` > 0, in pixels.
pub fn normalise(point: [f32; 2], width: f32, height: f32) -> [f32; 2] {
    [2.0 * point[0] / width - 1.0, 2.0 * point[1] / height - 1.0]
}

/// Normalised point -> pixel point: `[(x_n + 1) width / 2, (y_n + 1) height / 2]`, the inverse
/// of [`normalise`].
pub fn denormalise(point: [f32; 2], width: f32, height: f32) -> [f32; 2] {
    [
        (point[0] + 1.0) * width / 2.0,
        (point[1] + 1.0) * height / 2.0,
    ]
}

/// Splits one row of a regression head's `2K` outputs into `K` normalised points: category `k`
/// is `[row[2k], row[2k + 1]]`.
pub fn output_points(row: &[f32]) -> Vec<[f32; 2]> {
    row.chunks_exact(2).map(|p| [p[0], p[1]]).collect()
}

/// The part of a `width x height` image that a point model sees, in that image's pixels: its
/// centre square (the regression eval preset, [`crate::data::presets::regression_presets`],
/// resizes the shorter side to the input size and keeps the centre square). A point outside
/// it can be neither learned nor predicted: the studio refuses such clicks and marks the view.
pub fn view_box(width: u32, height: u32) -> crate::data::presets::Crop {
    let side = width.min(height).max(1);
    crate::data::presets::EvalPreset {
        resize: side,
        crop: side,
        norm: crate::data::presets::Normalization::IMAGENET,
    }
    .crop_box(width, height)
}

/// True when a point of a `size x size` view lies inside it (`0 <= x, y <= size`).
pub fn in_view(p: [f32; 2], size: u32) -> bool {
    let s = size as f32;
    (0.0..=s).contains(&p[0]) && (0.0..=s).contains(&p[1])
}

/// Euclidean distance between two points, in their units.
pub fn distance(a: [f32; 2], b: [f32; 2]) -> f64 {
    let (dx, dy) = (f64::from(a[0] - b[0]), f64::from(a[1] - b[1]));
    (dx * dx + dy * dy).sqrt()
}

/// The `q`-quantile (`q` in `[0, 1]`) of `values` with linear interpolation between the two
/// nearest ranks (NumPy's default `percentile` method): position `q * (n - 1)` in the sorted
/// values. None for no values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Error figures of one category (or of all of them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PointErrors {
    /// Category name (`all` for the overall figures).
    pub category: String,
    /// Number of scored images.
    pub n: usize,
    /// Mean distance between predicted and true point, in pixels (see
    /// [`RegressionReport::pixel_space`]); None without images.
    pub mean_px: Option<f64>,
    /// 90th percentile of the distance ([`quantile`] 0.9), in pixels.
    pub p90_px: Option<f64>,
    /// Largest distance, in pixels.
    pub max_px: Option<f64>,
}

impl PointErrors {
    /// Figures of a list of distances in pixels.
    pub fn from_distances(category: &str, d: &[f64]) -> PointErrors {
        PointErrors {
            category: category.to_string(),
            n: d.len(),
            mean_px: (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64),
            p90_px: quantile(d, 0.9),
            max_px: d.iter().copied().reduce(f64::max),
        }
    }
}

/// What `nanoclass eval` reports for a regression run and saves as `eval.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RegressionReport {
    /// The task (`regression`), so the file says what it holds.
    pub task: String,
    /// The pixels the errors are measured in, e.g. `pixels of the 224x224 model input (the
    /// eval preset's view: shorter side resized to 224, centre 224x224 square)`.
    pub pixel_space: String,
    /// Side of the model input, in pixels.
    pub input_size: u32,
    /// Overall figures.
    pub overall: PointErrors,
    /// Figures per category, in label order.
    pub per_category: Vec<PointErrors>,
    /// Images whose true point lies outside the model's view (not scored).
    pub out_of_view: usize,
}

impl RegressionReport {
    /// Builds the report from `(category index, distance in pixels)` pairs.
    pub fn new(labels: &[String], input_size: u32, errors: &[(usize, f64)]) -> Self {
        let all: Vec<f64> = errors.iter().map(|e| e.1).collect();
        let per_category = labels
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let d: Vec<f64> = errors.iter().filter(|e| e.0 == k).map(|e| e.1).collect();
                PointErrors::from_distances(name, &d)
            })
            .collect();
        RegressionReport {
            task: "regression".into(),
            pixel_space: format!(
                "pixels of the {input_size}x{input_size} model input (the eval preset's view: \
                 shorter side resized to {input_size}, centre square)"
            ),
            input_size,
            overall: PointErrors::from_distances("all", &all),
            per_category,
            out_of_view: 0,
        }
    }

    /// The report for the terminal: one line per category and one for all, with n, mean, 90th
    /// percentile and largest error.
    pub fn to_text(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let w = self
            .per_category
            .iter()
            .map(|c| c.category.chars().count())
            .max()
            .unwrap_or(0)
            .max("category".len());
        let mut out = format!(
            "point error in {}\n{:<w$} {:>6} {:>9} {:>9} {:>9}\n",
            self.pixel_space, "category", "images", "mean px", "p90 px", "max px"
        );
        let rows = self
            .per_category
            .iter()
            .chain((self.per_category.len() > 1).then_some(&self.overall));
        for c in rows {
            out.push_str(&format!(
                "{:<w$} {:>6} {:>9} {:>9} {:>9}\n",
                c.category,
                c.n,
                f(c.mean_px),
                f(c.p90_px),
                f(c.max_px)
            ));
        }
        if self.out_of_view > 0 {
            out.push_str(&format!(
                "{} image(s) not scored: their point is outside the model's view\n",
                self.out_of_view
            ));
        }
        out
    }

    /// Writes the report as pretty-printed JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| crate::Error::Other(format!("{}: {e}", path.display())))?;
        write_atomic(path, json.as_bytes())
    }
}

/// One tile of the points PNG: the model's view of a held-out image with its true and
/// predicted points, in pixels of that view.
#[derive(Clone, Debug)]
pub struct PointTile {
    /// The eval preset's view of the image (before normalisation).
    pub view: RgbImage,
    /// True points (one per category shown), in view pixels.
    pub truth: Vec<[f32; 2]>,
    /// Predicted points, in view pixels, same order.
    pub pred: Vec<[f32; 2]>,
}

/// Colour of the true points in the PNG (green).
pub const TRUTH_COLOUR: [u8; 3] = [0, 230, 0];
/// Colour of the predicted points in the PNG (red).
pub const PRED_COLOUR: [u8; 3] = [255, 30, 30];

fn put(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// A ring of radius `r` (2 px thick) centred on `p`.
fn ring(img: &mut RgbImage, p: [f32; 2], r: f32, c: [u8; 3]) {
    let (cx, cy) = (p[0], p[1]);
    let reach = (r + 2.0).ceil() as i64;
    for dy in -reach..=reach {
        for dx in -reach..=reach {
            let (x, y) = (cx.floor() as i64 + dx, cy.floor() as i64 + dy);
            let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
            if (d - r).abs() <= 1.0 {
                put(img, x, y, c);
            }
        }
    }
}

/// A diagonal cross of half-size `r` (3 px thick) centred on `p`.
fn cross(img: &mut RgbImage, p: [f32; 2], r: i64, c: [u8; 3]) {
    let (cx, cy) = (p[0].floor() as i64, p[1].floor() as i64);
    for t in -r..=r {
        for w in -1..=1 {
            put(img, cx + t + w, cy + t, c);
            put(img, cx + t + w, cy - t, c);
        }
    }
}

/// Writes the tiles side by side (4 per row, 4 px gaps on a dark background) as a PNG: each true
/// point a green ring ([`TRUTH_COLOUR`]), each prediction a red cross ([`PRED_COLOUR`]).
pub fn write_points_png(path: &Path, tiles: &[PointTile]) -> Result<()> {
    let size = tiles
        .iter()
        .map(|t| t.view.width().max(t.view.height()))
        .max();
    let Some(size) = size else {
        return Err(crate::Error::Other(format!(
            "{}: no image to draw",
            path.display()
        )));
    };
    let cols = tiles.len().min(4) as u32;
    let rows = (tiles.len() as u32).div_ceil(4);
    let gap = 4;
    let mut canvas = RgbImage::from_pixel(
        cols * (size + gap) + gap,
        rows * (size + gap) + gap,
        Rgb([32, 32, 32]),
    );
    for (i, t) in tiles.iter().enumerate() {
        let mut v = t.view.clone();
        for p in &t.truth {
            ring(&mut v, *p, 7.0, TRUTH_COLOUR);
        }
        for p in &t.pred {
            cross(&mut v, *p, 5, PRED_COLOUR);
        }
        let (c, r) = (i as u32 % 4, i as u32 / 4);
        image::imageops::replace(
            &mut canvas,
            &v,
            i64::from(gap + c * (size + gap)),
            i64::from(gap + r * (size + gap)),
        );
    }
    let mut bytes = Vec::new();
    canvas
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| crate::Error::Other(format!("{}: PNG encoding: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_is_the_course_formula() {
        // The course: x = 2.0 * (x / width - 0.5).
        assert_eq!(normalise([0.0, 224.0], 224.0, 224.0), [-1.0, 1.0]);
        assert_eq!(normalise([112.0, 56.0], 224.0, 224.0), [0.0, -0.5]);
        assert_eq!(normalise([160.0, 120.0], 640.0, 480.0), [-0.5, -0.5]);
        let p = [37.0, 201.0];
        let back = denormalise(normalise(p, 224.0, 224.0), 224.0, 224.0);
        assert!(distance(p, back) < 1e-4);
        // A mirror of the view negates x_n: x -> W - x.
        let n = normalise([37.0, 5.0], 224.0, 224.0);
        assert!(distance(denormalise([-n[0], n[1]], 224.0, 224.0), [187.0, 5.0]) < 1e-4);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], 90) = 7.6
        let q = quantile(&[10.0, 1.0, 3.0, 2.0, 4.0], 0.9).unwrap();
        assert!((q - 7.6).abs() < 1e-12, "{q}");
        assert_eq!(quantile(&[5.0], 0.9), Some(5.0));
        assert_eq!(quantile(&[], 0.9), None);
    }

    #[test]
    fn report_per_category() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let r = RegressionReport::new(&labels, 224, &[(0, 1.0), (0, 3.0), (1, 10.0)]);
        assert_eq!(r.per_category[0].mean_px, Some(2.0));
        assert_eq!(r.per_category[1].n, 1);
        assert_eq!(r.overall.n, 3);
        assert!((r.overall.mean_px.unwrap() - 14.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.overall.max_px, Some(10.0));
        assert!(r.to_text().contains("all"), "{}", r.to_text());
    }

    #[test]
    fn output_pairs() {
        assert_eq!(
            output_points(&[0.1, 0.2, -0.3, 0.4]),
            vec![[0.1, 0.2], [-0.3, 0.4]]
        );
    }
}
