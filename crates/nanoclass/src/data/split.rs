//! Stratified, seeded train/validation split for datasets that come without a `val/` folder.
//!
//! Randomness: `rand_chacha::ChaCha12Rng` (the generator behind rand 0.9's `StdRng`, named
//! explicitly so that a split does not change if rand's `StdRng` is ever switched), seeded with
//! `seed_from_u64(seed)`, one ChaCha stream per class (`set_stream(class index)`). So the split
//! of one class depends only on the seed, the class index and that class's samples: adding
//! images to one class leaves the split of every other class unchanged. The shuffle is rand's
//! `SliceRandom::shuffle` (Fisher-Yates); rand and rand_chacha are pinned in Cargo.lock.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha12Rng;

use crate::data::folder::Sample;

/// How many of a class's `n` samples go to validation: `round(val_fraction * n)`, at least 1
/// when `n >= 2` and `val_fraction > 0`, and at most `n - 1` (every class keeps a training image).
/// A class with fewer than 2 samples keeps them all for training.
pub fn val_count(n: usize, val_fraction: f32) -> usize {
    if n < 2 || val_fraction.is_nan() || val_fraction <= 0.0 {
        return 0;
    }
    let k = (f64::from(val_fraction.min(1.0)) * n as f64).round() as usize;
    k.clamp(1, n - 1)
}

/// Splits `samples` into `(train, val)` class by class: per class, the samples (in their input
/// order) are shuffled with the seeded generator described in the module documentation, and the
/// first [`val_count`]`(n_c, val_fraction)` of them move to `val`. Both outputs keep the input
/// order. The same inputs and seed always give the same split.
///
/// Samples whose `label >= n_classes` stay in `train`.
pub fn stratified_split(
    samples: &[Sample],
    n_classes: usize,
    val_fraction: f32,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, sample) in samples.iter().enumerate() {
        if let Some(members) = by_class.get_mut(sample.label) {
            members.push(i);
        }
    }
    let mut to_val = vec![false; samples.len()];
    for (class, mut members) in by_class.into_iter().enumerate() {
        let k = val_count(members.len(), val_fraction);
        if k == 0 {
            continue;
        }
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        rng.set_stream(class as u64);
        members.shuffle(&mut rng);
        for &i in &members[..k] {
            to_val[i] = true;
        }
    }
    let mut train = Vec::with_capacity(samples.len());
    let mut val = Vec::new();
    for (sample, goes_to_val) in samples.iter().zip(to_val) {
        if goes_to_val {
            val.push(sample.clone());
        } else {
            train.push(sample.clone());
        }
    }
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn samples(counts: &[usize]) -> Vec<Sample> {
        let mut out = Vec::new();
        for (label, &n) in counts.iter().enumerate() {
            for i in 0..n {
                out.push(Sample {
                    path: PathBuf::from(format!("{label}/{i}.jpg")),
                    label,
                    point: None,
                });
            }
        }
        out
    }

    #[test]
    fn counts_per_class() {
        assert_eq!(val_count(10, 0.2), 2);
        assert_eq!(val_count(11, 0.2), 2); // 2.2 rounds to 2
        assert_eq!(val_count(13, 0.2), 3); // 2.6 rounds to 3
        assert_eq!(val_count(2, 0.2), 1); // at least one
        assert_eq!(val_count(1, 0.5), 0); // a single image stays in train
        assert_eq!(val_count(3, 1.0), 2); // train keeps one
        assert_eq!(val_count(10, 0.0), 0);
    }

    #[test]
    fn stratified_and_deterministic() {
        let all = samples(&[10, 5, 2, 1]);
        let (train, val) = stratified_split(&all, 4, 0.2, 42);
        let count = |v: &[Sample], c| v.iter().filter(|s| s.label == c).count();
        assert_eq!(
            [
                count(&val, 0),
                count(&val, 1),
                count(&val, 2),
                count(&val, 3)
            ],
            [2, 1, 1, 0]
        );
        assert_eq!(train.len() + val.len(), all.len());
        assert!(val.iter().all(|s| !train.contains(s)));
        // Same seed, same split; outputs keep input order.
        assert_eq!(
            stratified_split(&all, 4, 0.2, 42),
            (train.clone(), val.clone())
        );
        let pos = |s: &Sample| all.iter().position(|a| a == s).expect("from input");
        assert!(val.windows(2).all(|w| pos(&w[0]) < pos(&w[1])));
        // Another seed picks other validation images of class 0 (10 choose 2 = 45 options).
        let picks = |seed| {
            let (_, v) = stratified_split(&all, 4, 0.2, seed);
            v.into_iter()
                .filter(|s| s.label == 0)
                .map(|s| s.path)
                .collect::<Vec<_>>()
        };
        assert!((1..6).any(|seed| picks(seed) != picks(42)));
    }

    #[test]
    fn one_class_does_not_move_another() {
        let before = samples(&[10, 5]);
        let after = samples(&[10, 9]);
        let val_of_class0 = |all: &[Sample]| {
            let (_, v) = stratified_split(all, 2, 0.3, 7);
            v.into_iter().filter(|s| s.label == 0).collect::<Vec<_>>()
        };
        assert_eq!(val_of_class0(&before), val_of_class0(&after));
    }
}
