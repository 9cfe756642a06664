//! The arithmetic of instant models: dot products, the Gram matrix of the scaled rows, the
//! prototype temperature fit, the linear head's accelerated gradient descent in the dual, and
//! the stratified leave-out check (see the parent module's docs for the maths).

use super::{DEFAULT_TEMPERATURE, ITERATIONS, LeaveOut, MAX_FOLDS, TEMPERATURES, WEIGHT_DECAY};
pub(super) use crate::infer::host_linear::dot;
use crate::infer::scorer::{argmax, softmax};

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `lhs · rhsᵀ` for row-major `lhs` (`[m, k]`) and `rhs` (`[n, k]`): a row-major `[m, n]`,
/// on gemm's kernels (`parallel`: on rayon's threads).
pub(super) fn matmul_nt<T: Real>(
    lhs: &[T],
    rhs: &[T],
    (m, k, n): (usize, usize, usize),
    parallel: bool,
) -> Vec<T> {
    assert!(
        lhs.len() == m * k && rhs.len() == n * k,
        "matmul_nt: shapes"
    );
    let mut out = vec![T::default(); m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the strides describe `lhs` as `[m, k]` and `rhs` as `[n, k]` read as its transpose
    // `[k, n]` (element (p, j) at `j * k + p`), both row-major and inside their slices (checked
    // above), and `out` as a row-major `[m, n]` of its own; gemm reads `lhs`/`rhs` only.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            T::default(),
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
    out
}

/// The element types of [`matmul_nt`].
pub(super) trait Real: 'static + Copy + Default {
    const ONE: Self;
}

impl Real for f32 {
    const ONE: f32 = 1.0;
}

impl Real for f64 {
    const ONE: f64 = 1.0;
}

/// The Gram matrix `X Xᵀ` of `n` rows of length `dim` (products in f32, kept in f64), exactly
/// symmetric.
fn gram(x: &[f32], n: usize, dim: usize) -> Vec<f64> {
    let p = matmul_nt(x, x, (n, dim, n), true);
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = f64::from(p[i * n + j]);
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
    g
}

/// Everything the fits need, computed once from the features: the Gram matrix of the scaled
/// centred features `x̃` and their norms.
pub(super) struct Prepared {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) labels: Vec<usize>,
    /// `[n, n]`: `x̃_i · x̃_j`.
    pub(super) g: Vec<f64>,
    /// `|x̃_i|` (never 0).
    pub(super) r: Vec<f64>,
}

impl Prepared {
    /// Cosine between the unit features of `i` and `j`.
    pub(super) fn cos(&self, i: usize, j: usize) -> f64 {
        self.g[i * self.n + j] / (self.r[i] * self.r[j])
    }

    /// Per class: `|Σ_{j∈c∩train} x̂_j|` (0 for a class with no training image).
    pub(super) fn proto_norms(&self, train: &[usize]) -> Vec<f64> {
        let mut q = vec![0.0; self.k];
        for &a in train {
            for &b in train {
                if self.labels[a] == self.labels[b] {
                    q[self.labels[a]] += self.cos(a, b);
                }
            }
        }
        q.iter().map(|v| v.max(0.0).sqrt()).collect()
    }

    /// Cosines between image `i` and each class prototype built from `train`.
    pub(super) fn proto_cosines(&self, i: usize, train: &[usize], norms: &[f64]) -> Vec<f64> {
        let mut s = vec![0.0; self.k];
        for &j in train {
            s[self.labels[j]] += self.cos(i, j);
        }
        s.iter()
            .zip(norms)
            .map(|(v, q)| if *q > 0.0 { v / q } else { -1.0 })
            .collect()
    }

    /// The leave-one-out prototype temperature over all images: the one of [`TEMPERATURES`]
    /// with the least leave-one-out NLL, lowered when needed so that the mean leave-one-out
    /// top-1 probability is at most `(k + 1) / (n + 2)` (`k` of `n` right).
    pub(super) fn temperature(&self, counts: &[usize]) -> f32 {
        if counts.iter().any(|&c| c < 2) {
            return DEFAULT_TEMPERATURE;
        }
        let all: Vec<usize> = (0..self.n).collect();
        let mut q2 = vec![0.0; self.k];
        for (c, q) in self.proto_norms(&all).iter().enumerate() {
            q2[c] = q * q;
        }
        // Leave-one-out cosines: the own class's prototype without the image itself.
        let rows: Vec<(usize, Vec<f64>)> = (0..self.n)
            .map(|i| {
                let mut s = vec![0.0; self.k];
                for j in 0..self.n {
                    s[self.labels[j]] += self.cos(i, j);
                }
                let own = self.labels[i];
                let cos = (0..self.k)
                    .map(|c| {
                        if c == own {
                            let num = s[c] - 1.0;
                            let den = (q2[c] - 2.0 * s[c] + 1.0).max(1e-12).sqrt();
                            num / den
                        } else {
                            s[c] / q2[c].sqrt()
                        }
                    })
                    .collect();
                (own, cos)
            })
            .collect();
        let nll = |t: f32| -> f64 {
            rows.iter()
                .map(|(own, cos)| {
                    let z: Vec<f32> = cos.iter().map(|c| t * *c as f32).collect();
                    -f64::from(softmax(&z)[*own].max(1e-30)).ln()
                })
                .sum()
        };
        let best = TEMPERATURES
            .iter()
            .map(|&t| (t, nll(t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(DEFAULT_TEMPERATURE, |(t, _)| t);
        // Never above what the data supports (as for trained runs,
        // crate::infer::calibration): the mean leave-one-out top-1 probability is held at most
        // at (k + 1) / (n + 2) for k of the n images right; it grows with t.
        let right = rows.iter().filter(|(own, cos)| argmax(cos) == *own).count();
        let cap = (right + 1) as f64 / (rows.len() + 2) as f64;
        let confidence = |t: f32| -> f64 {
            rows.iter()
                .map(|(_, cos)| {
                    let z: Vec<f32> = cos.iter().map(|c| t * *c as f32).collect();
                    f64::from(softmax(&z).into_iter().fold(0.0, f32::max))
                })
                .sum::<f64>()
                / rows.len().max(1) as f64
        };
        if confidence(best) <= cap {
            return best;
        }
        let (mut lo, mut hi) = (0.0f32, best);
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if confidence(mid) > cap {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        lo
    }

    /// Fits the linear head on the images `train`: returns `A` (`[K, train.len()]`, so that
    /// `W = A X̃_train`) and `b`.
    pub(super) fn fit_linear(&self, train: &[usize], temperature: f64) -> (Vec<f64>, Vec<f64>) {
        let (m, k) = (train.len(), self.k);
        let norms = self.proto_norms(train);
        // Start: W = T p̂_c = T Σ_{j∈c} x̃_j / (r_j |S_c|).
        let mut a0 = vec![0.0; k * m];
        for (jj, &j) in train.iter().enumerate() {
            let c = self.labels[j];
            if norms[c] > 0.0 {
                a0[c * m + jj] = temperature / (self.r[j] * norms[c]);
            }
        }
        let b0 = vec![0.0; k];
        let lambda = WEIGHT_DECAY;
        let max_r2 = train.iter().map(|&j| self.r[j].powi(2)).fold(0.0, f64::max);
        let step = 1.0 / (0.5 * (max_r2 + 1.0) + lambda);
        let gsub: Vec<f64> = train
            .iter()
            .flat_map(|&i| train.iter().map(move |&j| (i, j)))
            .map(|(i, j)| self.g[i * self.n + j])
            .collect();
        let (mut a_prev, mut b_prev) = (a0.clone(), b0.clone());
        let mut t = 1.0f64;
        let (mut ya, mut yb) = (a0, b0);
        let mut z: Vec<f64>;
        for _ in 0..ITERATIONS {
            // Logits at the look-ahead point: z = G y_Aᵀ + y_b (`[m, K]`).
            z = matmul_nt(&gsub, &ya, (m, m, k), false);
            for zi in z.chunks_exact_mut(k) {
                for (zc, bc) in zi.iter_mut().zip(&yb) {
                    *zc += bc;
                }
            }
            // Residual R = (softmax(z) − Y) / m; gradient in A: R + λ y_A; in b: Σ R.
            let mut gb = vec![0.0; k];
            for i in 0..m {
                let zi = &mut z[i * k..(i + 1) * k];
                let mx = zi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for v in zi.iter_mut() {
                    *v = (*v - mx).exp();
                    sum += *v;
                }
                for v in zi.iter_mut() {
                    *v /= sum;
                }
                zi[self.labels[train[i]]] -= 1.0;
                for (c, v) in zi.iter_mut().enumerate() {
                    *v /= m as f64;
                    gb[c] += *v;
                }
            }
            let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
            let mu = (t - 1.0) / t_next;
            for (idx, (y, prev)) in ya.iter_mut().zip(a_prev.iter_mut()).enumerate() {
                let (c, j) = (idx / m, idx % m);
                let next = *y - step * (z[j * k + c] + lambda * *y);
                *y = next + mu * (next - *prev);
                *prev = next;
            }
            for ((y, prev), g) in yb.iter_mut().zip(b_prev.iter_mut()).zip(&gb) {
                let next = *y - step * g;
                *y = next + mu * (next - *prev);
                *prev = next;
            }
            t = t_next;
        }
        (a_prev, b_prev)
    }

    /// Top-1 of the linear head fitted on `train`, for image `i`.
    pub(super) fn linear_predict(&self, i: usize, train: &[usize], a: &[f64], b: &[f64]) -> usize {
        let g: Vec<f64> = train.iter().map(|&j| self.g[i * self.n + j]).collect();
        let z: Vec<f64> = a
            .chunks_exact(train.len())
            .zip(b)
            .map(|(ac, bc)| bc + dot64(&g, ac))
            .collect();
        argmax(&z)
    }

    /// Stratified k-fold top-1 of the prototypes on these rows and of the linear head on
    /// `lin`'s (the same images).
    /// `start` is the temperature of the linear head's starting point.
    pub(super) fn leave_out(&self, lin: &Prepared, counts: &[usize], start: f64) -> LeaveOut {
        let folds = counts
            .iter()
            .copied()
            .min()
            .unwrap_or(0)
            .clamp(2, MAX_FOLDS);
        // Within each class, images go to folds in turn.
        let mut seen = vec![0usize; self.k];
        let fold_of: Vec<usize> = self
            .labels
            .iter()
            .map(|&c| {
                seen[c] += 1;
                (seen[c] - 1) % folds
            })
            .collect();
        use rayon::prelude::*;
        // Folds are independent: fitted in parallel.
        let (proto_ok, linear_ok) = (0..folds)
            .into_par_iter()
            .map(|f| {
                let train: Vec<usize> = (0..self.n).filter(|&i| fold_of[i] != f).collect();
                let test: Vec<usize> = (0..self.n).filter(|&i| fold_of[i] == f).collect();
                let norms = self.proto_norms(&train);
                let (a, b) = lin.fit_linear(&train, start);
                let (mut p, mut l) = (0usize, 0usize);
                for &i in &test {
                    let want = self.labels[i];
                    if argmax(&self.proto_cosines(i, &train, &norms)) == want {
                        p += 1;
                    }
                    if lin.linear_predict(i, &train, &a, &b) == want {
                        l += 1;
                    }
                }
                (p, l)
            })
            .reduce(|| (0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
        LeaveOut {
            folds,
            prototypes: proto_ok as f64 / self.n as f64,
            linear: linear_ok as f64 / self.n as f64,
        }
    }
}

/// Rows `x` (`[n, dim]`) centred on `centre` and divided by their mean norm `s`: the scaled
/// rows, `s`, and their Gram matrix.
pub(super) fn prepare(
    x: &[f32],
    dim: usize,
    centre: &[f32],
    labels: &[usize],
    k: usize,
) -> (Vec<f32>, f64, Prepared) {
    let n = labels.len();
    let centred: Vec<f32> = x
        .chunks_exact(dim)
        .flat_map(|row| row.iter().zip(centre).map(|(v, m)| v - m))
        .collect();
    let scale = (centred
        .chunks_exact(dim)
        .map(|r| f64::from(dot(r, r)).sqrt())
        .sum::<f64>()
        / n as f64)
        .max(1e-12);
    let scaled: Vec<f32> = centred
        .iter()
        .map(|v| (f64::from(*v) / scale) as f32)
        .collect();
    let g = gram(&scaled, n, dim);
    let r: Vec<f64> = (0..n).map(|i| g[i * n + i].sqrt().max(1e-12)).collect();
    let prep = Prepared {
        n,
        k,
        labels: labels.to_vec(),
        g,
        r,
    };
    (scaled, scale, prep)
}

/// At most `cap` row indices (ascending), stratified by class: every class keeps
/// `min(count, share)` rows spread evenly over its rows, where the share is as large as the
/// cap allows once the smaller classes are whole (water-filling). None when `labels` has at most
/// `cap` rows (all of them are used).
pub(super) fn stratified_subset(labels: &[usize], k: usize, cap: usize) -> Option<Vec<usize>> {
    if labels.len() <= cap {
        return None;
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| by_class[c].len());
    let mut left = cap;
    let mut keep = vec![0usize; k];
    for (done, &c) in order.iter().enumerate() {
        let share = left / (k - done).max(1);
        keep[c] = by_class[c].len().min(share.max(1));
        left = left.saturating_sub(keep[c]);
    }
    let mut out: Vec<usize> = Vec::with_capacity(cap);
    for (c, rows) in by_class.iter().enumerate() {
        let m = keep[c];
        out.extend((0..m).map(|j| rows[j * rows.len() / m]));
    }
    out.sort_unstable();
    Some(out)
}
