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
/// order. The same inputs and seed always give the same split. Equal to [`grouped_split`] with
/// every sample in a group of its own.
///
/// Samples whose `label >= n_classes` stay in `train`.
pub fn stratified_split(
    samples: &[Sample],
    n_classes: usize,
    val_fraction: f32,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let own: Vec<usize> = (0..samples.len()).collect();
    let split = grouped_split(samples, &own, n_classes, val_fraction, seed);
    (split.train, split.val)
}

/// A split that kept capture groups whole ([`grouped_split`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupedSplit {
    /// Training samples, in input order.
    pub train: Vec<Sample>,
    /// Held-out samples, in input order.
    pub val: Vec<Sample>,
    /// Classes (indices) whose images form a single capture group: their held-out images
    /// were drawn from inside that group, so they have near-copies in training.
    pub unsplittable: Vec<usize>,
}

/// Splits `samples` into train and held-out class by class, keeping each capture group
/// (`groups[i]`, see [`crate::data::groups::capture_groups`]) on one side: per class the groups
/// (in order of their first sample) are shuffled with the seeded generator of the module
/// documentation, and each group that still fits into the class's
/// [`val_count`]`(n_c, val_fraction)` held-out places moves to `val`, in that order; when no
/// group fits (every group is larger), the first smallest group moves, provided the class keeps
/// a training image. With every sample in its own group this is exactly [`stratified_split`]. A class whose images all form one group is split image by image as
/// [`stratified_split`] would, and listed in [`GroupedSplit::unsplittable`].
///
/// Samples whose `label >= n_classes` stay in `train`.
pub fn grouped_split(
    samples: &[Sample],
    groups: &[usize],
    n_classes: usize,
    val_fraction: f32,
    seed: u64,
) -> GroupedSplit {
    assert_eq!(samples.len(), groups.len(), "one group per sample");
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, sample) in samples.iter().enumerate() {
        if let Some(members) = by_class.get_mut(sample.label) {
            members.push(i);
        }
    }
    let mut to_val = vec![false; samples.len()];
    let mut unsplittable = Vec::new();
    for (class, members) in by_class.into_iter().enumerate() {
        let n = members.len();
        let k = val_count(n, val_fraction);
        if k == 0 {
            continue;
        }
        // The class's groups in order of their first member.
        let mut class_groups: Vec<Vec<usize>> = Vec::new();
        let mut slot = std::collections::HashMap::new();
        for &i in &members {
            let g = *slot.entry(groups[i]).or_insert_with(|| {
                class_groups.push(Vec::new());
                class_groups.len() - 1
            });
            class_groups[g].push(i);
        }
        if class_groups.len() == 1 {
            unsplittable.push(class);
            class_groups = members.iter().map(|&i| vec![i]).collect();
        }
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        rng.set_stream(class as u64);
        class_groups.shuffle(&mut rng);
        // Whole groups that fit into the k held-out places, in shuffled order; when none fits
        // (every group is larger than k) the first smallest group that leaves training images.
        let mut held = 0;
        for g in &class_groups {
            if held + g.len() <= k {
                for &i in g {
                    to_val[i] = true;
                }
                held += g.len();
            }
            if held == k {
                break;
            }
        }
        if held == 0
            && let Some(g) = class_groups
                .iter()
                .filter(|g| g.len() < n)
                .min_by_key(|g| g.len())
        {
            for &i in g {
                to_val[i] = true;
            }
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
    GroupedSplit {
        train,
        val,
        unsplittable,
    }
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

    #[test]
    fn groups_stay_on_one_side() {
        // Class 0: bursts of 4, 3, 1, 1, 1 images (10); class 1: one burst of 5.
        let all = samples(&[10, 5]);
        let groups = [0, 0, 0, 0, 4, 4, 4, 7, 8, 9, 10, 10, 10, 10, 10];
        for seed in 0..20 {
            let split = grouped_split(&all, &groups, 2, 0.3, seed);
            let side = |i: usize| split.val.contains(&all[i]);
            for (i, &g) in groups.iter().enumerate() {
                if g != 10 {
                    assert_eq!(
                        side(i),
                        side(g),
                        "seed {seed}: sample {i} left its group {g}"
                    );
                }
            }
            let val0 = split.val.iter().filter(|s| s.label == 0).count();
            // round(0.3 * 10) = 3 held out, whole groups only (the 4-image burst never fits).
            assert_eq!(val0, 3, "seed {seed}");
            assert!(
                !side(0),
                "seed {seed}: the 4-image burst does not fit into 3 places"
            );
            // Class 1 is one group: split image by image and reported.
            assert_eq!(split.unsplittable, [1]);
            assert_eq!(split.val.iter().filter(|s| s.label == 1).count(), 2);
        }
        // The 3-image burst goes to val with some seeds and to train with others.
        let burst_held = |seed| {
            grouped_split(&all, &groups, 2, 0.3, seed)
                .val
                .contains(&all[4])
        };
        assert!((0..20).any(burst_held) && !(0..20).all(burst_held));
        // Every group larger than the 2 places of a 7-image class: the smallest goes.
        let seven = samples(&[7]);
        let split = grouped_split(&seven, &[0, 0, 0, 0, 4, 4, 4], 1, 0.3, 3);
        assert_eq!(split.val, seven[4..].to_vec());
    }

    #[test]
    fn singleton_groups_split_like_a_shuffle_of_the_images() {
        // The split before capture groups existed: shuffle each class's images, hold out the
        // first k. Runs and figures made with it are reproduced.
        let all = samples(&[10, 5, 2, 1]);
        let mut expected_val = Vec::new();
        for class in 0..4 {
            let mut members: Vec<usize> =
                (0..all.len()).filter(|&i| all[i].label == class).collect();
            let mut rng = ChaCha12Rng::seed_from_u64(42);
            rng.set_stream(class as u64);
            members.shuffle(&mut rng);
            expected_val.extend_from_slice(&members[..val_count(members.len(), 0.2)]);
        }
        expected_val.sort();
        let own: Vec<usize> = (0..all.len()).collect();
        let g = grouped_split(&all, &own, 4, 0.2, 42);
        let val: Vec<usize> = g
            .val
            .iter()
            .map(|s| all.iter().position(|a| a == s).unwrap())
            .collect();
        assert_eq!(val, expected_val);
        assert!(g.unsplittable.is_empty());
    }
}
