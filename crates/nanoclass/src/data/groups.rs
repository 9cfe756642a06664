//! Capture groups: images of one class that are near-copies of one another (a burst of frames
//! from holding the capture button, the same photo saved twice, consecutive frames of a still
//! scene). A held-out image whose near-copy is in training measures memory, not recognition, so
//! the generated split ([`crate::data::split::grouped_split`]) keeps every group on one side,
//! and `train`/`eval` report near-copies across `train/`, `val/` and `test/` folders.
//!
//! Two images of the same class are in one group when they are linked by a chain of:
//!
//! - **capture time**: both names carry a capture time and the two captures are at most
//!   [`GroupRules::burst_gap_ms`] apart (1 s: hold-to-record sends frames at the camera's
//!   rate, a few per second, while separate clicks are seconds apart; the DLI course's clocks
//!   set has 1-12 s between clicks). Names that carry a capture time: the studio's captures
//!   (`<unix ms, 13 digits>-<counter>.<ext>`) and the DLI course's files (`<uuid1>.jpg`,
//!   `<x>_<y>_<uuid1>.jpg`: a version-1 UUID holds its creation time).
//! - **appearance**: the 64-bit gradient hash (dHash: 9x8 grey thumbnail, one bit per pair of
//!   horizontal neighbours; `image_hasher`'s `HashAlg::Gradient`, of the image decoded small) of
//!   the two images differ in at most [`GroupRules::max_hash_distance`] bits (4 of 64).
//!   Measured with this hash on the shared sets: a photo re-encoded brighter is 0-1 bits from
//!   its original, resized to 90% 0-4 bits; no photo of hymenoptera's 397 is within 9 bits of
//!   another; 126 of clocks' 623 webcam frames (consecutive frames of a still scene) have a
//!   neighbour within 4 bits, which makes 520 groups, the largest of 9 frames; flowers5_128px
//!   holds exact copies (0 bits), one of them across `train/` and `val/`.
//!
//! Groups never span classes: the split is per class.

use std::path::Path;

use image::RgbImage;
use image_hasher::{HashAlg, HasherConfig};
use rayon::prelude::*;

use crate::data::decode::{DecodeOptions, decode_file};
use crate::data::folder::Sample;

/// When two images of one class belong to one capture group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupRules {
    /// Captures at most this many milliseconds apart are one burst.
    pub burst_gap_ms: u64,
    /// Images whose gradient hashes differ in at most this many of 64 bits are near-copies.
    pub max_hash_distance: u32,
}

impl Default for GroupRules {
    fn default() -> Self {
        GroupRules {
            burst_gap_ms: 1000,
            max_hash_distance: 4,
        }
    }
}

/// What the grouping needs to know of one image: its capture time (from its name) and its
/// gradient hash (`None` when the file does not decode; such a file is reported and skipped
/// later, here it only groups by time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fingerprint {
    /// Capture time in Unix milliseconds, from the file name.
    pub time_ms: Option<u64>,
    /// 64-bit gradient hash.
    pub hash: Option<u64>,
}

/// The capture time a file name carries, in Unix milliseconds: the studio's
/// `<13-digit unix ms>-<counter>` stems, and version-1 UUIDs (`<uuid1>` or the DLI regression
/// name `<x>_<y>_<uuid1>`). Other names carry none.
pub fn capture_time_ms(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    if let Some((ms, counter)) = stem.split_once('-')
        && ms.len() == 13
        && ms.bytes().all(|b| b.is_ascii_digit())
        && !counter.is_empty()
        && counter.bytes().all(|b| b.is_ascii_digit())
    {
        return ms.parse().ok();
    }
    let uuid = stem.rsplit('_').next()?;
    let uuid = uuid::Uuid::try_parse(uuid).ok()?;
    if uuid.get_version_num() != 1 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// The 64-bit gradient hash of an image (see the module documentation).
pub fn gradient_hash(img: &RgbImage) -> u64 {
    let hasher = HasherConfig::new()
        .hash_alg(HashAlg::Gradient)
        .hash_size(8, 8)
        .to_hasher();
    let dynamic = image::DynamicImage::ImageRgb8(img.clone());
    let bytes = hasher.hash_image(&dynamic).as_bytes().to_vec();
    let mut word = [0u8; 8];
    for (w, b) in word.iter_mut().zip(bytes) {
        *w = b;
    }
    u64::from_le_bytes(word)
}

/// Fingerprints of `samples`, in their order: the name's capture time, and the gradient hash
/// of the image decoded small (a JPEG at 1/8 in the DCT domain), in parallel.
pub fn fingerprints(samples: &[Sample]) -> Vec<Fingerprint> {
    let opts = DecodeOptions { min_side: Some(32) };
    samples
        .par_iter()
        .map(|s| Fingerprint {
            time_ms: capture_time_ms(&s.path),
            hash: decode_file(&s.path, &opts)
                .ok()
                .map(|img| gradient_hash(&img)),
        })
        .collect()
}

fn near(a: &Fingerprint, b: &Fingerprint, rules: &GroupRules) -> bool {
    let by_time =
        matches!((a.time_ms, b.time_ms), (Some(x), Some(y)) if x.abs_diff(y) <= rules.burst_gap_ms);
    let by_look = matches!((a.hash, b.hash), (Some(x), Some(y)) if (x ^ y).count_ones() <= rules.max_hash_distance);
    by_time || by_look
}

/// Union-find over sample indices.
struct Sets(Vec<usize>);

impl Sets {
    fn root(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
    fn join(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// The capture group of every sample: `groups[i]` is the index of the first sample (in input
/// order) of sample `i`'s group. Only samples of the same class are joined.
pub fn capture_groups(
    samples: &[Sample],
    prints: &[Fingerprint],
    rules: &GroupRules,
) -> Vec<usize> {
    assert_eq!(samples.len(), prints.len(), "one fingerprint per sample");
    let mut sets = Sets((0..samples.len()).collect());
    for i in 0..samples.len() {
        for j in i + 1..samples.len() {
            if samples[i].label == samples[j].label && near(&prints[i], &prints[j], rules) {
                sets.join(i, j);
            }
        }
    }
    (0..samples.len()).map(|i| sets.root(i)).collect()
}

/// A held-out image with a near-copy among the training images.
#[derive(Clone, Debug, PartialEq)]
pub struct NearCopy {
    /// Index into the held-out samples.
    pub held_out: usize,
    /// Index into the training samples.
    pub train: usize,
    /// Bits in which their gradient hashes differ.
    pub distance: u32,
}

/// Held-out images whose gradient hash is within `rules.max_hash_distance` bits of a training
/// image's (whatever the classes: a copy filed under two classes is reported too), each with its
/// nearest training image.
pub fn near_copies(
    train: &[Fingerprint],
    held_out: &[Fingerprint],
    rules: &GroupRules,
) -> Vec<NearCopy> {
    held_out
        .par_iter()
        .enumerate()
        .filter_map(|(v, p)| {
            let h = p.hash?;
            train
                .iter()
                .enumerate()
                .filter_map(|(t, q)| Some((t, (q.hash? ^ h).count_ones())))
                .min_by_key(|&(_, d)| d)
                .filter(|&(_, d)| d <= rules.max_hash_distance)
                .map(|(t, distance)| NearCopy {
                    held_out: v,
                    train: t,
                    distance,
                })
        })
        .collect()
}

/// The warning `train` and `eval` print when held-out images (`what`: `val/`, `test/`, the
/// held-out split) have near-copies among the training images ([`near_copies`]): the held-out
/// figure then measures memory more than recognition. `None` when there are none. Paths are
/// shown relative to `root`.
pub fn near_copy_warning(
    root: &Path,
    train: &[Sample],
    held_out: &[Sample],
    what: &str,
) -> Option<String> {
    if held_out.is_empty() || train.is_empty() {
        return None;
    }
    let rules = GroupRules::default();
    let copies = near_copies(&fingerprints(train), &fingerprints(held_out), &rules);
    let first = copies.first()?;
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    Some(format!(
        "{} of {} {what} images have a near-copy among the training images (e.g. {} ~ {}, {} of 64 hash bits apart): the held-out figure overstates how well new images are recognised",
        copies.len(),
        held_out.len(),
        rel(&held_out[first.held_out].path),
        rel(&train[first.train].path),
        first.distance
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(name: &str, label: usize) -> Sample {
        Sample {
            path: PathBuf::from(format!("{label}/{name}")),
            label,
            point: None,
        }
    }

    #[test]
    fn capture_times_come_from_studio_and_uuid1_names() {
        assert_eq!(
            capture_time_ms(Path::new("a/1733500000123-000004.jpg")),
            Some(1_733_500_000_123)
        );
        // A clocks file: uuid1 01ba1e00-1d5b-11ed-bf54-ec2e98451a5b was made on 2022-08-16.
        let t = capture_time_ms(Path::new("03/01ba1e00-1d5b-11ed-bf54-ec2e98451a5b.jpg"))
            .expect("uuid1 carries its time");
        assert!((1_660_600_000_000..1_660_700_000_000).contains(&t), "{t}");
        // The regression name keeps the uuid after the point.
        assert_eq!(
            capture_time_ms(Path::new(
                "nose/120_88_01ba1e00-1d5b-11ed-bf54-ec2e98451a5b.jpg"
            )),
            Some(t)
        );
        // Random (v4) UUIDs, photos and short numbers carry no time.
        assert_eq!(
            capture_time_ms(Path::new("x/9b2e4c1a-6f0d-4d7e-8a3b-2c1d0e9f8a7b.jpg")),
            None
        );
        assert_eq!(capture_time_ms(Path::new("x/IMG_0001.JPG")), None);
        assert_eq!(capture_time_ms(Path::new("x/2024-01.jpg")), None);
    }

    #[test]
    fn bursts_and_near_copies_join_and_classes_never_do() {
        let rules = GroupRules::default();
        let samples = vec![
            sample("1733500000000-000001.jpg", 0),
            sample("1733500000300-000002.jpg", 0), // 0.3 s after: same burst
            sample("1733500000900-000003.jpg", 0), // 0.6 s after that: chained into it
            sample("1733500005000-000004.jpg", 0), // 4.1 s later: new group
            sample("photo.jpg", 0),                // no time, hash 1 bit from the previous
            sample("1733500000100-000005.jpg", 1), // in the burst's time, but another class
            sample("other.jpg", 0),                // far in hash
        ];
        let prints = [
            (Some(1_733_500_000_000), 0x0000_0000_0000_0000),
            (Some(1_733_500_000_300), 0xffff_0000_0000_0000),
            (Some(1_733_500_000_900), 0x00ff_00ff_00ff_00ff),
            (Some(1_733_500_005_000), 0x0f0f_0f0f_0f0f_0f0f),
            (None, 0x0f0f_0f0f_0f0f_0f0e),
            (Some(1_733_500_000_100), 0x0000_0000_0000_0000),
            (None, 0xf0f0_f0f0_f0f0_f0f0),
        ]
        .map(|(time_ms, h)| Fingerprint {
            time_ms,
            hash: Some(h),
        });
        let g = capture_groups(&samples, &prints, &rules);
        assert_eq!(g, [0, 0, 0, 3, 3, 5, 6]);
    }

    #[test]
    fn near_copies_name_the_nearest_training_image() {
        let rules = GroupRules::default();
        let fp = |h: u64| Fingerprint {
            time_ms: None,
            hash: Some(h),
        };
        let train = [fp(0xff), fp(0xf0f0), fp(0xfff0)];
        let held = [fp(0xfff1), fp(0x00ff_0000), fp(0xfe)];
        assert_eq!(
            near_copies(&train, &held, &rules),
            [
                NearCopy {
                    held_out: 0,
                    train: 2,
                    distance: 1
                },
                NearCopy {
                    held_out: 2,
                    train: 0,
                    distance: 1
                }
            ]
        );
    }

    #[test]
    fn the_gradient_hash_sees_copies_and_tells_scenes_apart() {
        let scene = |flip: bool| {
            RgbImage::from_fn(96, 64, |x, y| {
                let v = if flip { 95 - x } else { x } as u8 * 2 + (y as u8 / 8) * 3;
                image::Rgb([v, v / 2, 255 - v])
            })
        };
        let a = scene(false);
        let mut a_noisy = a.clone();
        for (i, p) in a_noisy.pixels_mut().enumerate() {
            p.0[0] = p.0[0].saturating_add((i % 3) as u8);
        }
        let b = scene(true);
        let d = |x: &RgbImage, y: &RgbImage| (gradient_hash(x) ^ gradient_hash(y)).count_ones();
        assert!(d(&a, &a_noisy) <= 2, "{}", d(&a, &a_noisy));
        assert!(d(&a, &b) > 16, "{}", d(&a, &b));
    }
}
