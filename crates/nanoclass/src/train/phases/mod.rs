//! The phases a run is made of, each run by the one epoch loop
//! ([`crate::train::epoch::run_phase`]):
//!
//! - [`head`]: the head trained on cached backbone features (frozen mode, and the first phase
//!   of finetune);
//! - [`full`]: every layer trained on augmented images (full mode, and finetune's second phase
//!   with the backbone at a lower rate);
//! - [`instant`]: a head fitted in one go on the cached features (instant mode);
//! - [`partial`]: the last residual blocks and the head trained on cached activations of the
//!   frozen body for several views per image (partial mode).
//!
//! [`features`] computes the cached feature rows the head and instant phases read.

pub(crate) mod features;
pub(crate) mod full;
pub(crate) mod head;
pub(crate) mod instant;
pub(crate) mod partial;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// The random stream of one epoch: shuffling and augmentation depend only on the seed and the
/// epoch number, so a resumed run draws what an uninterrupted one would.
pub(crate) fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// How many batches [`epoch_batches`] makes of `n` items.
pub(crate) fn batch_count(n: usize, batch: usize) -> usize {
    let chunks = n.div_ceil(batch.max(1));
    if chunks > 1 && n % batch.max(1) == 1 {
        chunks - 1
    } else {
        chunks
    }
}

/// Batches of indices for one epoch, shuffled; a final batch of one is dropped (BatchNorm needs
/// two values per channel in train mode).
pub(crate) fn epoch_batches(n: usize, batch: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let mut out: Vec<Vec<usize>> = idx.chunks(batch.max(1)).map(|c| c.to_vec()).collect();
    if out.len() > 1 && out.last().is_some_and(|b| b.len() == 1) {
        out.pop();
    }
    debug_assert_eq!(out.len(), batch_count(n, batch));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_batch_of_one_is_dropped_and_every_other_image_is_used_once() {
        let mut rng = epoch_rng(0, 1);
        let b = epoch_batches(9, 8, &mut rng);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 8);
        let b = epoch_batches(10, 4, &mut rng);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_count(9, 8), 1);
        assert_eq!(batch_count(1, 8), 1);
        // The same epoch draws the same order; another epoch another one.
        assert_eq!(
            epoch_batches(20, 5, &mut epoch_rng(3, 2)),
            epoch_batches(20, 5, &mut epoch_rng(3, 2))
        );
        assert_ne!(
            epoch_batches(20, 5, &mut epoch_rng(3, 2)),
            epoch_batches(20, 5, &mut epoch_rng(3, 3))
        );
    }
}
