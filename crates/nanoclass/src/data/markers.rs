//! A point-regression dataset made from real photos: a small coloured disc (the marker) is pasted
//! at a seeded random position in each photo, and the photo is saved in the DLI course layout
//! `<split>/<category>/<x>_<y>_<uuid>.jpg` with the marker's centre as the target.
//!
//! No public set of photos with clicked points was at hand, so this is the test set of the
//! regression task: the model has to find the marker, and its error is measurable exactly.
//!
//! - Each photo is decoded with the one decoder ([`crate::data::decode`]), its shorter side
//!   resized to `size` (bilinear, aspect kept) and centre-cropped to `size x size`.
//! - A marker is a filled disc of radius [`MarkerSet::radius`] pixels in its category's colour,
//!   with a 2-pixel dark ring (RGB 20, 20, 20) around it. Its centre `(x, y)` is a whole number
//!   in continuous pixel coordinates (pixel `i` covers `[i, i + 1)`), drawn uniformly with the
//!   whole marker (radius + ring) inside the image; a pixel belongs to the disc when its centre
//!   `(i + 0.5, j + 0.5)` is within the radius, so the marker is symmetric about `(x, y)` and its
//!   mirror image is centred on `(size - x, y)`.
//! - With several categories every photo gets one marker per category (at least two outer radii
//!   apart) and is saved in one category's folder (photo `i` in category `i mod K`), named by that
//!   category's marker: the model must find the marker of the right colour.
//! - Names: `<x>_<y>_<uuid>.jpg` where the uuid is a seeded random UUID v4 (it contains `-`);
//!   every third name has its `-` replaced by `_`, so parsers meet both.
//! - Train and held-out photos are different photos: the sources are shuffled with the seed and
//!   the first `train` go to `train/`, the next `val` to `val/`.
//!
//! Everything depends only on the source photos and the seed.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::data::decode::{DecodeOptions, decode_file, is_image_extension};
use crate::fs::write_atomic;
use crate::{Error, Result};

/// Colour of the ring around each marker disc.
pub const RING: [u8; 3] = [20, 20, 20];
/// Width of the dark ring, in pixels.
pub const RING_WIDTH: f32 = 2.0;

/// The categories and colours used by [`MarkerSet::categories`]: up to three, in this order.
pub const CATEGORIES: [(&str, [u8; 3]); 3] = [
    ("magenta", [255, 0, 255]),
    ("cyan", [0, 255, 255]),
    ("yellow", [255, 255, 0]),
];

/// How to build a marker set.
#[derive(Debug, Clone)]
pub struct MarkerSet {
    /// Folder of source photos, searched recursively (hidden entries skipped).
    pub source: PathBuf,
    /// Output folder; `train/` and `val/` are written inside it.
    pub out: PathBuf,
    /// Side of the saved square images, in pixels.
    pub size: u32,
    /// Disc radius in pixels (the ring adds [`RING_WIDTH`]).
    pub radius: f32,
    /// Number of categories, 1 to 3. With 1 the category is called `marker` (magenta disc);
    /// otherwise the names of [`CATEGORIES`].
    pub categories: usize,
    /// Training images to write.
    pub train: usize,
    /// Held-out images to write.
    pub val: usize,
    /// Seed of the photo order, the marker positions and the UUIDs.
    pub seed: u64,
}

/// One written image.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerImage {
    /// The file written.
    pub path: PathBuf,
    /// The photo it was made from.
    pub source: PathBuf,
    /// Category index (folder), `0..categories`.
    pub category: usize,
    /// The target: the centre of that category's marker, in pixels of the saved image.
    pub point: [u32; 2],
}

/// The category names of a set with `k` categories.
pub fn category_names(k: usize) -> Vec<String> {
    if k == 1 {
        vec!["marker".to_string()]
    } else {
        CATEGORIES[..k].iter().map(|(n, _)| n.to_string()).collect()
    }
}

/// Draws a marker centred on `(cx, cy)` (continuous pixel coordinates): the disc of `radius` in
/// `colour`, the dark ring out to `radius + RING_WIDTH`.
pub fn draw_marker(img: &mut RgbImage, cx: f32, cy: f32, radius: f32, colour: [u8; 3]) {
    let outer = radius + RING_WIDTH;
    let x0 = (cx - outer).floor().max(0.0) as u32;
    let y0 = (cy - outer).floor().max(0.0) as u32;
    let x1 = ((cx + outer).ceil() as u32).min(img.width());
    let y1 = ((cy + outer).ceil() as u32).min(img.height());
    for j in y0..y1 {
        for i in x0..x1 {
            let d = ((i as f32 + 0.5 - cx).powi(2) + (j as f32 + 0.5 - cy).powi(2)).sqrt();
            if d <= radius {
                img.put_pixel(i, j, Rgb(colour));
            } else if d <= outer {
                img.put_pixel(i, j, Rgb(RING));
            }
        }
    }
}

fn list_photos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_photos(&p, out)?;
        } else if is_image_extension(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Shorter side to `size` (bilinear, aspect kept), then the centre `size x size` square.
fn square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (nw, nh) = if w <= h {
        (
            size,
            ((u64::from(h) * u64::from(size)) / u64::from(w)).max(1) as u32,
        )
    } else {
        (
            ((u64::from(w) * u64::from(size)) / u64::from(h)).max(1) as u32,
            size,
        )
    };
    let resized = imageops::resize(img, nw.max(size), nh.max(size), FilterType::Triangle);
    let left = (resized.width() - size) / 2;
    let top = (resized.height() - size) / 2;
    imageops::crop_imm(&resized, left, top, size, size).to_image()
}

fn uuid_name(rng: &mut ChaCha12Rng, underscores: bool) -> String {
    let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let s = id.hyphenated().to_string();
    if underscores { s.replace('-', "_") } else { s }
}

impl MarkerSet {
    /// Writes the set: `out/train/<category>/...` and `out/val/<category>/...`. Returns the
    /// images written, training ones first. A source photo that cannot be decoded is passed over.
    ///
    /// # Errors
    /// [`Error::Dataset`] when `categories` is not 1..=3, the marker does not fit in `size`, or
    /// the source folder has fewer usable photos than `train + val`; [`Error::Io`] when a file
    /// cannot be written.
    pub fn write(&self) -> Result<Vec<MarkerImage>> {
        let bad = |reason: String| Error::Dataset {
            path: self.source.clone(),
            reason,
        };
        if !(1..=CATEGORIES.len()).contains(&self.categories) {
            return Err(bad(format!(
                "categories must be 1 to {}, got {}",
                CATEGORIES.len(),
                self.categories
            )));
        }
        let outer = self.radius + RING_WIDTH;
        if !(self.radius > 0.0 && 4.0 * outer < self.size as f32) {
            return Err(bad(format!(
                "a marker of radius {} does not fit in {} px",
                self.radius, self.size
            )));
        }
        let mut photos = Vec::new();
        list_photos(&self.source, &mut photos)?;
        let mut rng = ChaCha12Rng::seed_from_u64(self.seed);
        photos.shuffle(&mut rng);
        let names = category_names(self.categories);
        let colours: Vec<[u8; 3]> = if self.categories == 1 {
            vec![CATEGORIES[0].1]
        } else {
            CATEGORIES[..self.categories].iter().map(|c| c.1).collect()
        };
        let wanted = self.train + self.val;
        let mut written = Vec::with_capacity(wanted);
        let margin = outer.ceil() as u32;
        for source in photos {
            if written.len() == wanted {
                break;
            }
            let Ok(photo) = decode_file(&source, &DecodeOptions::default()) else {
                continue;
            };
            let mut img = square(&photo, self.size);
            // One centre per category, kept apart so that markers never overlap.
            let mut centres: Vec<[u32; 2]> = Vec::new();
            while centres.len() < self.categories {
                let c = [
                    rng.random_range(margin..=self.size - margin),
                    rng.random_range(margin..=self.size - margin),
                ];
                let apart = centres.iter().all(|o| {
                    let (dx, dy) = (c[0] as f32 - o[0] as f32, c[1] as f32 - o[1] as f32);
                    (dx * dx + dy * dy).sqrt() >= 2.0 * outer + 2.0
                });
                if apart {
                    centres.push(c);
                }
            }
            for (c, colour) in centres.iter().zip(&colours) {
                draw_marker(&mut img, c[0] as f32, c[1] as f32, self.radius, *colour);
            }
            let i = written.len();
            let split = if i < self.train { "train" } else { "val" };
            let category = i % self.categories;
            let point = centres[category];
            let name = format!(
                "{}_{}_{}.jpg",
                point[0],
                point[1],
                uuid_name(&mut rng, i % 3 == 2)
            );
            let dir = self.out.join(split).join(&names[category]);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let path = dir.join(name);
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
                .encode_image(&img)
                .map_err(|e| Error::Other(format!("{}: JPEG encoding: {e}", path.display())))?;
            write_atomic(&path, &bytes)?;
            written.push(MarkerImage {
                path,
                source,
                category,
                point,
            });
        }
        if written.len() < wanted {
            return Err(bad(format!(
                "{} usable photos, {} needed ({} train + {} held-out)",
                written.len(),
                wanted,
                self.train,
                self.val
            )));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_symmetric_about_its_centre() {
        let mut img = RgbImage::new(40, 30);
        draw_marker(&mut img, 12.0, 10.0, 6.0, [255, 0, 255]);
        let mut flipped = img.clone();
        imageops::flip_horizontal_in_place(&mut flipped);
        let mut expected = RgbImage::new(40, 30);
        draw_marker(&mut expected, 40.0 - 12.0, 10.0, 6.0, [255, 0, 255]);
        assert_eq!(flipped, expected);
        // Centre pixel coloured, a pixel 7 px right of the centre is ring, 9 px is untouched.
        assert_eq!(img.get_pixel(12, 10).0, [255, 0, 255]);
        assert_eq!(img.get_pixel(19, 9).0, RING);
        assert_eq!(img.get_pixel(21, 9).0, [0, 0, 0]);
    }
}
