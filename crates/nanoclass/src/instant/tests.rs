//! Tests of the instant models' maths.

use super::*;
use crate::infer::scorer::argmax;

/// Two Gaussian-ish clusters in 16 dimensions with a deterministic pseudo-random spread.
fn clusters(per: usize, spread: f32) -> (Vec<f32>, Vec<usize>) {
    let dim = 16;
    let mut state = 12345u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for c in 0..2 {
        for _ in 0..per {
            for d in 0..dim {
                let mean = if d == c { 3.0 } else { 1.0 };
                x.push(mean + spread * rnd());
            }
            y.push(c);
        }
    }
    (x, y)
}

#[test]
fn prototypes_classify_their_own_clusters_and_match_the_folded_layer() {
    let (x, y) = clusters(6, 0.5);
    let data = Features {
        split: None,
        x: &x,
        labels: &y,
        dim: 16,
        classes: 2,
    };
    let m = InstantModel::fit(data, None, HeadChoice::Prototypes).unwrap();
    assert_eq!(m.kind, HeadKind::Prototypes);
    assert_eq!(m.counts, vec![6, 6]);
    let (w, b) = m.linear_layer();
    for (i, row) in x.chunks_exact(16).enumerate() {
        let p = m.probs(row);
        assert_eq!(
            argmax(&p.iter().map(|v| f64::from(*v)).collect::<Vec<_>>()),
            y[i]
        );
        let folded: Vec<f64> = w
            .chunks_exact(16)
            .zip(&b)
            .map(|(r, b)| f64::from(dot(r, row) + b))
            .collect();
        assert_eq!(argmax(&folded), y[i], "folded layer top-1 of image {i}");
    }
}

#[test]
fn linear_layer_equals_the_linear_head_exactly() {
    let (x, y) = clusters(5, 1.5);
    let data = Features {
        split: None,
        x: &x,
        labels: &y,
        dim: 16,
        classes: 2,
    };
    let m = InstantModel::fit(data, None, HeadChoice::Linear).unwrap();
    let (w, b) = m.linear_layer();
    for row in x.chunks_exact(16) {
        let direct = m.logits(row);
        for (c, r) in w.chunks_exact(16).enumerate() {
            let folded = dot(r, row) + b[c];
            assert!(
                (folded - direct[c]).abs() < 1e-3,
                "{folded} vs {}",
                direct[c]
            );
        }
    }
}

/// A tight class 0 and a spread class 1 three times as large: the nearest class mean's
/// boundary passes through the overall mean, which lies inside class 1 and cuts it; a
/// linear head with a bias moves the boundary to the gap.
fn unbalanced(per: usize) -> (Vec<f32>, Vec<usize>) {
    let dim = 16;
    let mut state = 987654321u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..4 * per {
        let c = usize::from(i % 4 != 0);
        let mut row: Vec<f32> = (0..dim).map(|_| 0.05 * rnd()).collect();
        if c == 1 {
            row[0] += 1.0 + rnd();
        }
        x.extend(row);
        y.push(c);
    }
    (x, y)
}

fn top1(m: &InstantModel, x: &[f32], y: &[usize]) -> f64 {
    let ok = x
        .chunks_exact(m.dim())
        .zip(y)
        .filter(|(r, c)| {
            let p: Vec<f64> = m.logits(r).iter().map(|v| f64::from(*v)).collect();
            argmax(&p) == **c
        })
        .count();
    ok as f64 / y.len() as f64
}

#[test]
fn the_linear_head_separates_what_prototypes_confuse_and_auto_picks_it() {
    let (x, y) = unbalanced(8);
    let data = Features {
        split: None,
        x: &x,
        labels: &y,
        dim: 16,
        classes: 2,
    };
    // Centred on the mean of all rows, as the studio centres on its frames.
    let mut mean = [0.0f32; 16];
    for r in x.chunks_exact(16) {
        mean.iter_mut()
            .zip(r)
            .for_each(|(m, v)| *m += v / y.len() as f32);
    }
    let centre = Some(&mean[..]);
    let p = InstantModel::fit(data, centre, HeadChoice::Prototypes).unwrap();
    let l = InstantModel::fit(data, centre, HeadChoice::Linear).unwrap();
    let (tp, tl) = (top1(&p, &x, &y), top1(&l, &x, &y));
    assert!(tp < 0.85, "prototypes {tp}");
    assert!(tl >= 0.95, "linear {tl}");
    let auto = InstantModel::fit(data, centre, HeadChoice::Auto).unwrap();
    let lo = auto.leave_out.unwrap();
    assert_eq!(lo.folds, 5);
    assert!(lo.linear > lo.prototypes, "{lo:?}");
    assert_eq!(auto.kind, HeadKind::Linear);
}

#[test]
fn auto_runs_the_leave_out_check_from_three_images_per_class() {
    let (x, y) = clusters(3, 0.5);
    let data = Features {
        split: None,
        x: &x,
        labels: &y,
        dim: 16,
        classes: 2,
    };
    let m = InstantModel::fit(data, None, HeadChoice::Auto).unwrap();
    let lo = m.leave_out.expect("leave-out check");
    assert_eq!(lo.folds, 3);
    assert_eq!(lo.prototypes, 1.0);
    // Ties keep the prototypes.
    assert_eq!(m.kind, HeadKind::Prototypes);
    let (x2, y2) = clusters(2, 0.5);
    let few = InstantModel::fit(
        Features {
            split: None,
            x: &x2,
            labels: &y2,
            dim: 16,
            classes: 2,
        },
        None,
        HeadChoice::Auto,
    )
    .unwrap();
    assert!(few.leave_out.is_none());
    assert_eq!(few.kind, HeadKind::Prototypes);
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let x = vec![0.0f32; 32];
    let e = InstantModel::fit(
        Features {
            split: None,
            x: &x,
            labels: &[0, 0],
            dim: 16,
            classes: 2,
        },
        None,
        HeadChoice::Auto,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("class 1 has no image"), "{e}");
    let e = InstantModel::fit(
        Features {
            split: None,
            x: &x,
            labels: &[0],
            dim: 16,
            classes: 2,
        },
        None,
        HeadChoice::Auto,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("32 values for 1 images"), "{e}");
}

/// A random 16 -> 1000 classifier standing in for ImageNet's, and the burn layer it came from.
fn pretrained() -> (PretrainedHead, burn::nn::Linear) {
    let device = crate::infer::device::default_device();
    let linear = burn::nn::LinearConfig::new(16, PRETRAINED_CLASSES).init(&device);
    (
        PretrainedHead::from_linear(&linear).unwrap().unwrap(),
        linear,
    )
}

#[test]
fn a_model_on_features_and_pretrained_logits_folds_into_one_layer_on_the_features() {
    use burn::prelude::*;
    let (p, linear) = pretrained();
    let device = crate::infer::device::default_device();
    let (x, y) = clusters(5, 1.5);
    let rows = p.extend(&x);
    assert_eq!(rows.len(), 10 * (16 + 1000));
    // Each row is [f, A f + a], with A and a as the burn layer holds them (its weight is the
    // transpose, [C, M]).
    let t = Tensor::<2>::from_data(TensorData::new(x.clone(), [10, 16]), &device);
    let burn_logits = crate::infer::device::read_f32(linear.forward(t)).unwrap();
    for (row, l) in rows.chunks_exact(1016).zip(burn_logits.chunks_exact(1000)) {
        for (a, b) in row[16..].iter().zip(l) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
    assert_eq!(&rows[..16], &x[..16]);
    for choice in [HeadChoice::Linear, HeadChoice::Prototypes] {
        let data = Features {
            split: Some(16),
            x: &rows,
            labels: &y,
            dim: 16 + 1000,
            classes: 2,
        };
        let m = InstantModel::fit(data, None, choice).unwrap();
        let (w, b) = m.linear_layer();
        let (wf, bf) = p.fold(&w, &b);
        assert_eq!((wf.len(), bf.len()), (2 * 16, 2));
        for (f, row) in x.chunks_exact(16).zip(rows.chunks_exact(1016)) {
            let on_rows: Vec<f32> = w
                .chunks_exact(1016)
                .zip(&b)
                .map(|(r, b)| dot(r, row) + b)
                .collect();
            let on_f: Vec<f32> = wf
                .chunks_exact(16)
                .zip(&bf)
                .map(|(r, b)| dot(r, f) + b)
                .collect();
            for (a, b) in on_rows.iter().zip(&on_f) {
                assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
            }
            if choice == HeadChoice::Linear {
                let direct = m.logits(row);
                for (a, b) in direct.iter().zip(&on_f) {
                    assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn each_block_is_scaled_to_its_mean_norm() {
    // The first block is large noise, the second carries the classes. Multiplying the
    // second block by 1000 changes nothing once blocks are scaled; unscaled, it turns the
    // noise-dominated rows into class-dominated ones.
    let (x, y) = clusters(6, 0.5);
    let noise: Vec<f32> = (0..x.len() / 16 * 4)
        .map(|i| ((i * 7919) % 13) as f32 * 3.0)
        .collect();
    let build = |gain: f32| -> Vec<f32> {
        noise
            .chunks_exact(4)
            .zip(x.chunks_exact(16))
            .flat_map(|(a, f)| a.iter().copied().chain(f.iter().map(|v| v * gain)))
            .collect::<Vec<f32>>()
    };
    let (a, b) = (build(1.0), build(1000.0));
    let fit = |rows: &[f32], split| {
        InstantModel::fit(
            Features {
                split,
                x: rows,
                labels: &y,
                dim: 20,
                classes: 2,
            },
            None,
            HeadChoice::Prototypes,
        )
        .unwrap()
    };
    let (ma, mb) = (fit(&a, Some(4)), fit(&b, Some(4)));
    // Equal up to rounding: scaling a block by 1000 and back is exact in real numbers, not
    // in f32 (the last bits depend on the CPU's vector kernels: equal on one x86 machine,
    // 1.5e-6 apart on another). A block left unscaled moves it by orders of magnitude.
    let rel = (ma.temperature - mb.temperature).abs() / ma.temperature.abs();
    assert!(
        rel < 1e-5,
        "temperatures {} and {}",
        ma.temperature,
        mb.temperature
    );
    for (ra, rb) in a.chunks_exact(20).zip(b.chunks_exact(20)) {
        for (p, q) in ma.probs(ra).iter().zip(mb.probs(rb)) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }
    // Without the split the gained block dominates: the probabilities differ.
    let (ua, ub) = (fit(&a, None), fit(&b, None));
    let differ = a
        .chunks_exact(20)
        .zip(b.chunks_exact(20))
        .any(|(ra, rb)| (ua.probs(ra)[0] - ub.probs(rb)[0]).abs() > 1e-2);
    assert!(differ, "unscaled blocks should not be gain-invariant");
}

#[test]
fn a_split_outside_the_row_is_refused() {
    let (x, y) = clusters(2, 0.5);
    let e = InstantModel::fit(
        Features {
            split: Some(16),
            x: &x,
            labels: &y,
            dim: 16,
            classes: 2,
        },
        None,
        HeadChoice::Auto,
    )
    .unwrap_err();
    assert!(e.to_string().contains("split 16"), "{e}");
}

#[test]
fn a_stratified_subset_keeps_every_class_and_respects_the_cap() {
    // 3 classes of 10, 100 and 400 rows, cap 60: the small class whole, the others 25 each.
    let labels: Vec<usize> = (0..510)
        .map(|i| match i {
            0..10 => 0,
            10..110 => 1,
            _ => 2,
        })
        .collect();
    let idx = solve::stratified_subset(&labels, 3, 60).unwrap();
    assert_eq!(idx.len(), 60);
    let per: Vec<usize> = (0..3)
        .map(|c| idx.iter().filter(|&&i| labels[i] == c).count())
        .collect();
    assert_eq!(per, vec![10, 25, 25]);
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
    assert!(solve::stratified_subset(&labels, 3, 510).is_none());
}

#[test]
fn beyond_the_cap_the_prototypes_still_use_every_image() {
    let (x, y) = clusters(300, 1.5);
    assert!(y.len() > MAX_FIT_IMAGES);
    let data = Features {
        split: None,
        x: &x,
        labels: &y,
        dim: 16,
        classes: 2,
    };
    let m = InstantModel::fit(data, None, HeadChoice::Prototypes).unwrap();
    assert_eq!(m.counts, vec![300, 300]);
    // The prototype of class 0 computed by hand over all 300 of its rows.
    let mut p = vec![0.0f32; 16];
    for row in x.chunks_exact(16).take(300) {
        let n = dot(row, row).sqrt();
        p.iter_mut().zip(row).for_each(|(a, v)| *a += v / n);
    }
    let n = dot(&p, &p).sqrt();
    p.iter_mut().for_each(|v| *v /= n);
    let probe = &x[..16];
    let want = m.temperature * dot(&p, probe) / dot(probe, probe).sqrt();
    let got = m.logits(probe)[0];
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    // Auto still runs its leave-out check, on the subset.
    let auto = InstantModel::fit(data, None, HeadChoice::Auto).unwrap();
    assert!(auto.leave_out.is_some());
}

#[test]
fn the_matrix_product_equals_the_sums_it_stands_for() {
    use super::solve::matmul_nt;
    // Odd sizes, so no kernel tile fits exactly; f64 and f32.
    let (m, k, n) = (37, 53, 11);
    let lhs: Vec<f64> = (0..m * k)
        .map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0)
        .collect();
    let rhs: Vec<f64> = (0..n * k)
        .map(|i| ((i * 104729) % 97) as f64 / 48.0 - 1.0)
        .collect();
    for parallel in [false, true] {
        let got = matmul_nt(&lhs, &rhs, (m, k, n), parallel);
        let got32 = matmul_nt(
            &lhs.iter().map(|v| *v as f32).collect::<Vec<_>>(),
            &rhs.iter().map(|v| *v as f32).collect::<Vec<_>>(),
            (m, k, n),
            parallel,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| lhs[i * k + p] * rhs[j * k + p]).sum();
                assert!((got[i * n + j] - want).abs() < 1e-12, "f64 ({i}, {j})");
                assert!(
                    (f64::from(got32[i * n + j]) - want).abs() < 1e-4,
                    "f32 ({i}, {j})"
                );
            }
        }
    }
}
