//! Parallel decoding and batch preparation, overlapped with the model's compute.
//!
//! Decoding runs on rayon's pool; batches are prepared by a producer thread into a bounded
//! channel, so the next batch is being decoded while the model works on the current one. A file
//! that cannot be decoded is skipped and reported by path with its reason; it never stops a run.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

use image::RgbImage;
use rayon::prelude::*;

use super::decode::{DecodeOptions, decode_file};
use super::folder::Sample;

/// A file left out of a run, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be used (decoder message).
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {}: {}", self.path.display(), self.reason)
    }
}

/// Decodes every sample in parallel with the one decoder ([`decode_file`]). Returns the samples
/// that decoded, with their images, in input order, and the skipped files.
pub fn decode_samples(
    samples: &[Sample],
    opts: &DecodeOptions,
) -> (Vec<(Sample, RgbImage)>, Vec<Skipped>) {
    let results: Vec<_> = samples
        .par_iter()
        .map(|s| (s, decode_file(&s.path, opts)))
        .collect();
    let mut ok = Vec::with_capacity(results.len());
    let mut skipped = Vec::new();
    for (s, r) in results {
        match r {
            Ok(img) => ok.push((s.clone(), img)),
            Err(e) => skipped.push(Skipped {
                path: s.path.clone(),
                reason: decode_reason(&e),
            }),
        }
    }
    (ok, skipped)
}

fn decode_reason(e: &crate::Error) -> String {
    match e {
        crate::Error::Decode { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// One prepared batch: `[n, 3, size, size]` pixels flattened (row-major, RGB, normalised), and
/// the indices of its items in the producer's input.
#[derive(Debug)]
pub struct Batch<T> {
    /// Flattened pixel data, `n * 3 * size * size` values.
    pub pixels: Vec<f32>,
    /// Number of images in the batch.
    pub n: usize,
    /// Per-item payload (label, index, ...), in batch order.
    pub items: Vec<T>,
}

/// Runs `prepare` over `chunks` on a producer thread, `depth` batches ahead of the consumer.
///
/// `prepare` turns one chunk into a [`Batch`] (typically decoding and transforming its images
/// in parallel with rayon). The returned iterator yields batches in order; dropping it stops the
/// producer after at most `depth` more batches.
pub fn prefetch<C, T, F>(chunks: Vec<C>, depth: usize, prepare: F) -> impl Iterator<Item = Batch<T>>
where
    C: Send + 'static,
    T: Send + 'static,
    F: Fn(C) -> Batch<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(depth.max(1));
    thread::spawn(move || {
        for c in chunks {
            if tx.send(prepare(c)).is_err() {
                break;
            }
        }
    });
    rx.into_iter()
}

/// Decodes and preprocesses files in parallel, batch by batch, overlapped with the consumer.
///
/// Each item of the iterator is a batch of the files that decoded, `(pixels, indices into
/// paths)`, plus the files of that batch that were skipped. `transform` maps a decoded image to
/// its `3 * size * size` tensor (the run's eval preset).
pub fn decode_batches<F>(
    paths: Vec<PathBuf>,
    batch_size: usize,
    opts: DecodeOptions,
    transform: F,
) -> impl Iterator<Item = (Batch<usize>, Vec<Skipped>)>
where
    F: Fn(&RgbImage) -> Vec<f32> + Send + Sync + 'static,
{
    let chunks: Vec<Vec<(usize, PathBuf)>> = paths
        .into_iter()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    let (tx, rx) = mpsc::sync_channel(2);
    thread::spawn(move || {
        for chunk in chunks {
            let decoded: Vec<(usize, std::result::Result<Vec<f32>, Skipped>)> = chunk
                .par_iter()
                .map(|(i, p)| {
                    let r = decode_file(p, &opts)
                        .map(|img| transform(&img))
                        .map_err(|e| Skipped {
                            path: p.clone(),
                            reason: decode_reason(&e),
                        });
                    (*i, r)
                })
                .collect();
            let mut pixels = Vec::new();
            let mut items = Vec::new();
            let mut skipped = Vec::new();
            for (i, r) in decoded {
                match r {
                    Ok(t) => {
                        pixels.extend_from_slice(&t);
                        items.push(i);
                    }
                    Err(s) => skipped.push(s),
                }
            }
            let batch = Batch {
                pixels,
                n: items.len(),
                items,
            };
            if tx.send((batch, skipped)).is_err() {
                break;
            }
        }
    });
    rx.into_iter()
}
