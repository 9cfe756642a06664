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

/// How the items of an epoch are cut into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batching {
    /// Batches of the batch size, and a smaller last one (the CPU).
    Chunks,
    /// `ceil(n / batch)` batches, their sizes within one of each other (a GPU). The GPU
    /// backends tune their kernels for each batch size they meet, rounded up to a power of two
    /// (cubecl's autotune keys), and a first run on a machine pays that tuning per size: 244
    /// images at batch 16 are 15 and 16 (one size to tune) instead of 16 and 4 (two).
    Even,
}

impl Batching {
    /// [`Batching::Even`] on a GPU, [`Batching::Chunks`] on the CPU.
    pub(crate) fn for_device(device: crate::infer::device::DeviceChoice) -> Batching {
        if device.is_gpu() {
            Batching::Even
        } else {
            Batching::Chunks
        }
    }

    /// The sizes of the batches of all `n` items in order (forward passes: every item counts).
    pub(crate) fn sizes_of_all(self, n: usize, batch: usize) -> Vec<usize> {
        let batch = batch.max(1);
        let count = n.div_ceil(batch);
        match self {
            Batching::Chunks => (0..count).map(|i| batch.min(n - i * batch)).collect(),
            Batching::Even => (0..count)
                .map(|i| n / count + usize::from(i < n % count))
                .collect(),
        }
    }

    /// The sizes of the training batches of `n` items in order: [`Batching::sizes_of_all`]
    /// less a final batch of one (BatchNorm needs two values per channel in train mode) unless
    /// it is the only one.
    pub(crate) fn sizes(self, n: usize, batch: usize) -> Vec<usize> {
        let mut sizes = self.sizes_of_all(n, batch);
        if sizes.len() > 1 && sizes.last() == Some(&1) {
            sizes.pop();
        }
        sizes
    }
}

/// How many batches [`epoch_batches`] makes of `n` items.
pub(crate) fn batch_count(n: usize, batch: usize, batching: Batching) -> usize {
    batching.sizes(n, batch).len()
}

/// Batches of indices for one epoch, shuffled, cut as `batching` says.
pub(crate) fn epoch_batches(
    n: usize,
    batch: usize,
    batching: Batching,
    rng: &mut StdRng,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let mut out = Vec::new();
    let mut start = 0;
    for size in batching.sizes(n, batch) {
        out.push(idx[start..start + size].to_vec());
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_batch_of_one_is_dropped_and_every_other_image_is_used_once() {
        let mut rng = epoch_rng(0, 1);
        let b = epoch_batches(9, 8, Batching::Chunks, &mut rng);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 8);
        let b = epoch_batches(10, 4, Batching::Chunks, &mut rng);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_count(9, 8, Batching::Chunks), 1);
        assert_eq!(batch_count(1, 8, Batching::Chunks), 1);
        // The same epoch draws the same order; another epoch another one.
        assert_eq!(
            epoch_batches(20, 5, Batching::Chunks, &mut epoch_rng(3, 2)),
            epoch_batches(20, 5, Batching::Chunks, &mut epoch_rng(3, 2))
        );
        assert_ne!(
            epoch_batches(20, 5, Batching::Chunks, &mut epoch_rng(3, 2)),
            epoch_batches(20, 5, Batching::Chunks, &mut epoch_rng(3, 3))
        );
    }

    /// The power of two cubecl's autotune rounds a batch size up to (its keys' anchor).
    fn tuned_as(size: usize) -> usize {
        size.next_power_of_two()
    }

    #[test]
    fn even_batches_are_within_one_of_each_other_so_a_gpu_tunes_one_size() {
        for (n, batch) in [
            (244, 16),
            (503, 16),
            (623, 16),
            (100, 32),
            (37, 8),
            (17, 16),
        ] {
            let even = Batching::Even.sizes(n, batch);
            assert_eq!(even.len(), n.div_ceil(batch), "{n} at {batch}");
            assert_eq!(even.iter().sum::<usize>(), n, "{n} at {batch}");
            let (lo, hi) = (*even.iter().min().unwrap(), *even.iter().max().unwrap());
            assert!(hi - lo <= 1 && hi <= batch, "{n} at {batch}: {even:?}");
            // Every image once, shuffled.
            let mut all = epoch_batches(n, batch, Batching::Even, &mut epoch_rng(1, 1)).concat();
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
        // hymenoptera's 244 training images at batch 16: chunks make a last batch of 4, a
        // second size for the GPU to tune; even batches of 15 and 16 are tuned as one.
        let sizes = |b: Batching| {
            let mut s: Vec<usize> = b.sizes(244, 16).into_iter().map(tuned_as).collect();
            s.dedup();
            s
        };
        assert_eq!(sizes(Batching::Chunks), vec![16, 4]);
        assert_eq!(sizes(Batching::Even), vec![16]);
        assert_eq!(Batching::Even.sizes(244, 16)[..4], [16, 16, 16, 16]);
        assert_eq!(Batching::Even.sizes(244, 16)[4..], [15; 12]);
        // A last batch of one is still dropped where even sizes make one (batch 2).
        assert_eq!(Batching::Even.sizes(5, 2), vec![2, 2]);
        assert_eq!(Batching::Chunks.sizes(5, 2), vec![2, 2]);
        assert_eq!(Batching::Even.sizes(1, 8), vec![1]);
        // 17 at batch 16: chunks drop the 17th image (a batch of one), even batches keep it.
        assert_eq!(Batching::Chunks.sizes(17, 16), vec![16]);
        assert_eq!(Batching::Even.sizes(17, 16), vec![9, 8]);
        // Forward passes keep every item.
        assert_eq!(Batching::Even.sizes_of_all(5, 2), vec![2, 2, 1]);
        assert_eq!(Batching::Chunks.sizes_of_all(33, 32), vec![32, 1]);
        assert_eq!(
            Batching::for_device(crate::infer::device::DeviceChoice::Cpu),
            Batching::Chunks
        );
        assert_eq!(
            Batching::for_device(crate::infer::device::DeviceChoice::Wgpu),
            Batching::Even
        );
    }
}
