//! Instant models: a classifier fitted in milliseconds on frozen backbone features, so scores
//! can be shown while the user is still capturing (the studio's preview) and a usable run can be
//! written in seconds (`nanoclass train --mode instant`).
//!
//! **Embedding.** A feature `f` is the backbone's pooled output (`[C]`: 1280 for
//! EfficientNet-Lite0, 512 for ResNet-18), computed in eval mode from the run's eval preset.
//! When the pretrained weights carry their ImageNet classifier ([`PretrainedHead`],
//! `[C] -> [1000]`), its logits `l = A f + a` are appended: the instant model sees
//! `z = [f / s_f, l / s_l]`, where `s_f` and `s_l` are the mean norms of `f` and `l` over the
//! training images, so both halves weigh the same. The classifier's logits are what ImageNet
//! training made linearly separable, the pooled features keep what it did not need. Measured
//! with EfficientNet-Lite0, prototypes, 100 seeded draws (5 / 10 images per class): hymenoptera
//! 0.9216 / 0.9347 on `f` alone, 0.9258 / 0.9393 on `z`; clocks 0.3848 / 0.4390 and
//! 0.3859 / 0.4413; flowers5 (128 px photos) 0.4858 / 0.5237 and 0.4676 / 0.5126. `l` is linear
//! in `f`, so the fitted model still folds into one linear layer on `f`
//! ([`PretrainedHead::fold`]). The embedding is optionally centred on a mean `m` (the studio
//! centres on recent camera frames while it has few images):
//!
//! - **Prototypes** (nearest class mean, cosine). `x̂ = (z − m) / |z − m|`; each class's
//!   prototype is `p̂_c = normalise(Σ_{i∈c} x̂_i)`; `logits_c = T · p̂_c · x̂` (with centring,
//!   SimpleShot's "CL2N", Wang et al. 2019, arXiv:1911.04623). The temperature
//!   `T` is chosen from [`TEMPERATURES`] by the leave-one-out log-likelihood of the training
//!   images (temperature scaling, Guo et al. 2017), so the scores read as probabilities;
//!   [`DEFAULT_TEMPERATURE`] while a class has a single image.
//! - **Linear head**. Softmax regression on `x̃ = (z − m) / s`, where `s` is the mean of
//!   `|z_i − m|` over the training images: cross-entropy plus `λ/2 · |W|²` ([`WEIGHT_DECAY`]),
//!   started from the prototypes (`W = T · p̂`, `b = 0`) and minimised by [`ITERATIONS`] steps of
//!   Nesterov-accelerated gradient descent with step `1/L`, `L = ½ (max_i |x̃_i|² + 1) + λ` (the
//!   softmax Hessian's eigenvalues are at most ½). `W` stays in the span of the training
//!   features, so it is kept as `W = Aᵀ X̃` and each step costs `n² K` on the Gram matrix
//!   instead of `n C K`.
//! - **Choice** ([`HeadChoice::Auto`]): with at least [`MIN_PER_CLASS_LINEAR`] images in every
//!   class, both are scored by stratified k-fold cross-validation (`k = min(5, smallest class)`)
//!   on the training images, and the linear head is used when it gets at least
//!   [`LINEAR_LEAD`] more held-out images right; otherwise the prototypes.
//!
//! Both are one linear layer on the embedding ([`InstantModel::linear_layer`]), and so on the
//! raw features, which is how an instant run is saved, exported and served: exactly for the
//! linear head; for prototypes with the same top-1 and with probabilities computed as if
//! `|z − m|` were `s`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use serde::Serialize;

use crate::data::loader::Skipped;
use crate::data::presets::{EvalPreset, presets};
use crate::engine::{EngineChoice, OrtModel, backbone_model, resolve};
use crate::eval::metrics::softmax;
use crate::model::{Arch, Net};
use crate::train::features::FeatureCache;
use crate::train::{default_device, extract_features, initial_net};
use crate::{Error, Result};

/// Prototype temperature while some class has only one image (no leave-one-out estimate):
/// a cosine gap of 0.1 between two classes gives odds of `e^1` ≈ 2.7 : 1.
pub const DEFAULT_TEMPERATURE: f32 = 10.0;

/// Temperatures tried by the leave-one-out fit.
pub const TEMPERATURES: [f32; 12] = [
    2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 14.0, 20.0, 28.0, 40.0, 56.0, 80.0,
];

/// L2 weight decay `λ` of the linear head (a small ridge, so the optimum exists when the
/// classes are separable, as they are with few images).
pub const WEIGHT_DECAY: f64 = 1e-3;

/// Gradient steps of the linear head fit.
pub const ITERATIONS: usize = 300;

/// Images per class from which the linear head is considered.
pub const MIN_PER_CLASS_LINEAR: usize = 3;

/// Held-out images the linear head must get right beyond the prototypes' for
/// [`HeadChoice::Auto`] to pick it: a lead of one image is within the noise of a check on a
/// few images (EfficientNet-Lite0, hymenoptera, 5 images per class, 10 seeded draws: picking
/// the linear head on a one-image lead, as it did in 3 draws, gave 0.9170 mean val top-1
/// against 0.9248 for prototypes alone).
pub const LINEAR_LEAD: usize = 2;

/// Most folds of the leave-out check.
pub const MAX_FOLDS: usize = 5;

/// Which instant head to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadChoice {
    /// The linear head when the leave-out check says it is better, else prototypes.
    #[default]
    Auto,
    /// Class prototypes (cosine nearest class mean).
    Prototypes,
    /// The linear head (needs 2 or more images in some class).
    Linear,
}

/// The head an [`InstantModel`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Class prototypes.
    Prototypes,
    /// Linear head.
    Linear,
}

impl HeadKind {
    /// `prototypes` or `linear`.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Prototypes => "prototypes",
            HeadKind::Linear => "linear",
        }
    }
}

/// The leave-out check behind [`HeadChoice::Auto`]: top-1 of each head on held-out folds of the
/// training images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LeaveOut {
    /// Folds (stratified).
    pub folds: usize,
    /// Held-out top-1 of the prototypes, in `[0, 1]`.
    pub prototypes: f64,
    /// Held-out top-1 of the linear head, in `[0, 1]`.
    pub linear: f64,
}

/// Features to fit on: `n` rows of `dim` values, with a class index per row.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    /// `[n, dim]`, row-major.
    pub x: &'a [f32],
    /// Where the row splits into two blocks (`[f, l]`, see [`PretrainedHead::extend`]), each
    /// scaled by the inverse of its mean norm over the rows; None: one block, unscaled.
    pub split: Option<usize>,
    /// `[n]`, each in `0..classes`.
    pub labels: &'a [usize],
    /// Feature length `C`.
    pub dim: usize,
    /// Number of classes `K`.
    pub classes: usize,
}

/// A fitted instant model. See the module docs for the maths.
#[derive(Debug, Clone)]
pub struct InstantModel {
    /// The head in use.
    pub kind: HeadKind,
    /// Prototype temperature `T`.
    pub temperature: f32,
    /// Training images per class.
    pub counts: Vec<usize>,
    /// The leave-out check, when it ran.
    pub leave_out: Option<LeaveOut>,
    dim: usize,
    /// `[C]`: per-value factor of the block scaling (`1 / s_f`, `1 / s_l`, or 1).
    factors: Vec<f32>,
    /// `[C]`, in scaled units.
    centre: Vec<f32>,
    scale: f32,
    /// `[K, C]`: unit prototypes `p̂`, or the linear head's `W` (on `x̃`).
    weight: Vec<f32>,
    /// `[K]`: zero for prototypes.
    bias: Vec<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((a, x), y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

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

/// The Gram matrix `X Xᵀ` of `n` rows of length `dim`, in f64.
fn gram(x: &[f32], n: usize, dim: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let rows: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * dim..(i + 1) * dim];
            (0..=i)
                .map(|j| f64::from(dot(xi, &x[j * dim..(j + 1) * dim])))
                .collect()
        })
        .collect();
    let mut g = vec![0.0; n * n];
    for (i, row) in rows.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
    g
}

/// Everything the fits need, computed once from the features: the Gram matrix of the scaled
/// centred features `x̃` and their norms.
struct Prepared {
    n: usize,
    k: usize,
    labels: Vec<usize>,
    /// `[n, n]`: `x̃_i · x̃_j`.
    g: Vec<f64>,
    /// `|x̃_i|` (never 0).
    r: Vec<f64>,
}

impl Prepared {
    /// Cosine between the unit features of `i` and `j`.
    fn cos(&self, i: usize, j: usize) -> f64 {
        self.g[i * self.n + j] / (self.r[i] * self.r[j])
    }

    /// Per class: `|Σ_{j∈c∩train} x̂_j|` (0 for a class with no training image).
    fn proto_norms(&self, train: &[usize]) -> Vec<f64> {
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
    fn proto_cosines(&self, i: usize, train: &[usize], norms: &[f64]) -> Vec<f64> {
        let mut s = vec![0.0; self.k];
        for &j in train {
            s[self.labels[j]] += self.cos(i, j);
        }
        s.iter()
            .zip(norms)
            .map(|(v, q)| if *q > 0.0 { v / q } else { -1.0 })
            .collect()
    }

    /// The leave-one-out prototype temperature over all images.
    fn temperature(&self, counts: &[usize]) -> f32 {
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
        TEMPERATURES
            .iter()
            .map(|&t| (t, nll(t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(DEFAULT_TEMPERATURE, |(t, _)| t)
    }

    /// Fits the linear head on the images `train`: returns `A` (`[K, train.len()]`, so that
    /// `W = A X̃_train`) and `b`.
    fn fit_linear(&self, train: &[usize], temperature: f64) -> (Vec<f64>, Vec<f64>) {
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
        let mut z = vec![0.0; m * k];
        for _ in 0..ITERATIONS {
            // Logits at the look-ahead point: z = G y_A + y_b.
            for (gi, zi) in gsub.chunks_exact(m).zip(z.chunks_exact_mut(k)) {
                for ((zc, ac), bc) in zi.iter_mut().zip(ya.chunks_exact(m)).zip(&yb) {
                    *zc = bc + dot64(gi, ac);
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
    fn linear_predict(&self, i: usize, train: &[usize], a: &[f64], b: &[f64]) -> usize {
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
    fn leave_out(&self, lin: &Prepared, counts: &[usize], start: f64) -> LeaveOut {
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
fn prepare(
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

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

impl InstantModel {
    /// Fits an instant model on `data`, centred on `centre` (`[C]`, in the units of
    /// `data.x`; None: not centred).
    ///
    /// # Errors
    /// [`Error::Train`] when there are fewer than 2 classes, a class has no image, a label is
    /// out of range, the shapes disagree, or a feature is not finite.
    pub fn fit(data: Features<'_>, centre: Option<&[f32]>, choice: HeadChoice) -> Result<Self> {
        let Features {
            x,
            split,
            labels,
            dim,
            classes: k,
        } = data;
        let n = labels.len();
        let bad = |m: String| Err(Error::Train(m));
        if k < 2 {
            return bad(format!(
                "an instant model needs at least 2 classes, got {k}"
            ));
        }
        if dim == 0 || x.len() != n * dim {
            return bad(format!(
                "features: {} values for {n} images of {dim}",
                x.len()
            ));
        }
        if let Some(c) = centre
            && c.len() != dim
        {
            return bad(format!("centre: {} values, features have {dim}", c.len()));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return bad("features are not all finite".into());
        }
        if let Some(at) = split
            && (at == 0 || at >= dim)
        {
            return bad(format!("split {at}: must be inside 1..{dim}"));
        }
        let mut counts = vec![0usize; k];
        for &l in labels {
            if l >= k {
                return bad(format!("label {l} out of range for {k} classes"));
            }
            counts[l] += 1;
        }
        if let Some(c) = counts.iter().position(|&c| c == 0) {
            return bad(format!(
                "class {c} has no image: every class needs at least one"
            ));
        }
        // Prototypes: rows with each block divided by its mean norm over the training rows,
        // centred on `centre` (scaled alike) or not at all.
        let mut factors = vec![1.0f32; dim];
        if let Some(at) = split {
            for (lo, hi) in [(0, at), (at, dim)] {
                let mean = x
                    .chunks_exact(dim)
                    .map(|r| f64::from(dot(&r[lo..hi], &r[lo..hi])).sqrt())
                    .sum::<f64>()
                    / n as f64;
                let f = if mean > 0.0 { (1.0 / mean) as f32 } else { 1.0 };
                factors[lo..hi].iter_mut().for_each(|v| *v = f);
            }
        }
        let zp: Vec<f32> = x
            .chunks_exact(dim)
            .flat_map(|r| r.iter().zip(&factors).map(|(v, f)| v * f))
            .collect();
        let cp: Vec<f32> = match centre {
            Some(c) => c.iter().zip(&factors).map(|(v, f)| v * f).collect(),
            None => vec![0.0; dim],
        };
        let (sp, scale_p, prep_p) = prepare(&zp, dim, &cp, labels, k);
        // Linear head: the first block alone (the backbone's features), centred on `centre` or
        // on the training mean.
        let dl = split.unwrap_or(dim);
        let xl: Vec<f32> = x
            .chunks_exact(dim)
            .flat_map(|r| &r[..dl])
            .copied()
            .collect();
        let cl: Vec<f32> = match centre {
            Some(c) => c[..dl].to_vec(),
            None => {
                let mut m = vec![0.0f64; dl];
                for row in xl.chunks_exact(dl) {
                    for (a, v) in m.iter_mut().zip(row) {
                        *a += f64::from(*v);
                    }
                }
                m.iter().map(|v| (*v / n as f64) as f32).collect()
            }
        };
        let (sl, scale_l, prep_l) = prepare(&xl, dl, &cl, labels, k);
        let temperature = prep_p.temperature(&counts);
        // The linear head starts from its own rows' prototypes, at their own temperature.
        let start = || f64::from(prep_l.temperature(&counts));
        let min_count = counts.iter().copied().min().unwrap_or(0);
        let (kind, leave_out) = match choice {
            HeadChoice::Prototypes => (HeadKind::Prototypes, None),
            HeadChoice::Linear => (HeadKind::Linear, None),
            HeadChoice::Auto if min_count >= MIN_PER_CLASS_LINEAR => {
                let lo = prep_p.leave_out(&prep_l, &counts, start());
                let lead = ((lo.linear - lo.prototypes) * n as f64).round();
                let kind = if lead >= LINEAR_LEAD as f64 {
                    HeadKind::Linear
                } else {
                    HeadKind::Prototypes
                };
                (kind, Some(lo))
            }
            HeadChoice::Auto => (HeadKind::Prototypes, None),
        };
        let all: Vec<usize> = (0..n).collect();
        let mut weight = vec![0.0f32; k * dim];
        let mut bias = vec![0.0f32; k];
        let (factors, centre, scale) = match kind {
            HeadKind::Prototypes => {
                // p̂_c = normalise(Σ x̃_j / r_j)
                for (j, row) in sp.chunks_exact(dim).enumerate() {
                    let c = labels[j];
                    let w = (1.0 / prep_p.r[j]) as f32;
                    for (a, v) in weight[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                        *a += w * v;
                    }
                }
                for row in weight.chunks_exact_mut(dim) {
                    let norm = dot(row, row).sqrt().max(1e-12);
                    row.iter_mut().for_each(|v| *v /= norm);
                }
                (factors, cp, scale_p)
            }
            HeadKind::Linear => {
                // Zero weight on the second block.
                let (a, b) = prep_l.fit_linear(&all, start());
                for (j, row) in sl.chunks_exact(dl).enumerate() {
                    for (c, w_row) in weight.chunks_exact_mut(dim).enumerate() {
                        let w = a[c * n + j] as f32;
                        if w != 0.0 {
                            for (o, v) in w_row.iter_mut().zip(row) {
                                *o += w * v;
                            }
                        }
                    }
                }
                bias = b.iter().map(|v| *v as f32).collect();
                let mut centre = cl;
                centre.resize(dim, 0.0);
                (vec![1.0; dim], centre, scale_l)
            }
        };
        Ok(InstantModel {
            kind,
            temperature,
            counts,
            leave_out,
            dim,
            factors,
            centre,
            scale: scale as f32,
            weight,
            bias,
        })
    }

    /// Feature length `C`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of classes `K`.
    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    /// Training images the model rests on.
    pub fn images(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Logits of one feature vector (`[C]` → `[K]`).
    pub fn logits(&self, f: &[f32]) -> Vec<f32> {
        let x: Vec<f32> = f
            .iter()
            .zip(&self.factors)
            .zip(&self.centre)
            .map(|((v, s), m)| v * s - m)
            .collect();
        match self.kind {
            HeadKind::Prototypes => {
                let norm = dot(&x, &x).sqrt().max(1e-12);
                self.weight
                    .chunks_exact(self.dim)
                    .map(|p| self.temperature * dot(p, &x) / norm)
                    .collect()
            }
            HeadKind::Linear => self
                .weight
                .chunks_exact(self.dim)
                .zip(&self.bias)
                .map(|(w, b)| dot(w, &x) / self.scale + b)
                .collect(),
        }
    }

    /// Softmax probabilities of one feature vector.
    pub fn probs(&self, f: &[f32]) -> Vec<f32> {
        softmax(&self.logits(f))
    }

    /// The model as one linear layer on raw features: `logits = W f + b` with `W` `[K, C]`
    /// (row-major, the PyTorch `nn.Linear.weight` layout) and `b` `[K]`. Exact for the linear
    /// head; for prototypes the top-1 is the same and the probabilities are those of a feature
    /// with `|f − m| = s`.
    pub fn linear_layer(&self) -> (Vec<f32>, Vec<f32>) {
        let factor = match self.kind {
            HeadKind::Prototypes => self.temperature / self.scale,
            HeadKind::Linear => 1.0 / self.scale,
        };
        let mut w: Vec<f32> = self.weight.iter().map(|v| v * factor).collect();
        let b = w
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(row, b)| b - dot(row, &self.centre))
            .collect();
        for row in w.chunks_exact_mut(self.dim) {
            row.iter_mut().zip(&self.factors).for_each(|(v, s)| *v *= s);
        }
        (w, b)
    }
}

/// The pretrained weights' own classifier (ImageNet's 1000 classes for torchvision's and the
/// EfficientNet-Lite0 package's weights): `l = A f + a`, `A` `[M, C]`, `a` `[M]`. Its logits are
/// appended to the features of instant models (see the module docs).
#[derive(Debug, Clone)]
pub struct PretrainedHead {
    linear: burn::nn::Linear,
    /// `[M, C]`, row-major (PyTorch's `nn.Linear.weight` layout).
    weight: Vec<f32>,
    bias: Vec<f32>,
    dim: usize,
}

/// Output count a weights file's head must have to be used as a [`PretrainedHead`]: the
/// ImageNet-1k classes.
pub const PRETRAINED_CLASSES: usize = 1000;

impl PretrainedHead {
    /// From a loaded head (burn layout, weight `[C, M]`); None unless it has
    /// [`PRETRAINED_CLASSES`] outputs.
    pub fn from_linear(linear: &burn::nn::Linear) -> Option<PretrainedHead> {
        let [dim, m] = linear.weight.val().dims();
        if m != PRETRAINED_CLASSES {
            return None;
        }
        let wt: Vec<f32> = linear
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .ok()?;
        let bias: Vec<f32> = match &linear.bias {
            Some(b) => b
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .ok()?,
            None => vec![0.0; m],
        };
        let mut weight = vec![0.0f32; m * dim];
        for c in 0..dim {
            for o in 0..m {
                weight[o * dim + c] = wt[c * m + o];
            }
        }
        Some(PretrainedHead {
            linear: linear.clone(),
            weight,
            bias,
            dim,
        })
    }

    /// Feature length `C` it reads.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Logits it writes (`M`).
    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// `[n, C]` features to `[n, C + M]` rows `[f, A f + a]` (on `device`).
    pub fn extend(&self, x: &[f32], device: &Device) -> Vec<f32> {
        let (c, m) = (self.dim, self.outputs());
        let n = x.len() / c;
        if n == 0 {
            return Vec::new();
        }
        let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, c]), device);
        let l: Vec<f32> = self
            .linear
            .forward(t)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(n * (c + m));
        for (f, l) in x.chunks_exact(c).zip(l.chunks_exact(m)) {
            out.extend_from_slice(f);
            out.extend_from_slice(l);
        }
        out
    }

    /// A layer on `[f, l]` (`w` `[K, C + M]`, `b` `[K]`) as one layer on `f`:
    /// `W_f = w_f + w_l A`, `b_f = b + w_l a`.
    pub fn fold(&self, w: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (c, m) = (self.dim, self.outputs());
        let mut wf = Vec::with_capacity(b.len() * c);
        let mut bf = Vec::with_capacity(b.len());
        for (row, bk) in w.chunks_exact(c + m).zip(b) {
            let (rf, rl) = row.split_at(c);
            let mut out: Vec<f64> = rf.iter().map(|v| f64::from(*v)).collect();
            let mut bias = f64::from(*bk);
            for (o, &wl) in rl.iter().enumerate() {
                if wl == 0.0 {
                    continue;
                }
                let wl = f64::from(wl);
                for (acc, a) in out.iter_mut().zip(&self.weight[o * c..(o + 1) * c]) {
                    *acc += wl * f64::from(*a);
                }
                bias += wl * f64::from(self.bias[o]);
            }
            wf.extend(out.iter().map(|v| *v as f32));
            bf.push(bias as f32);
        }
        (wf, bf)
    }
}

/// A pretrained backbone that turns images into features for instant models: the eval preset of
/// its architecture (`[N, 3, 224, 224]`, RGB, f32, normalised per [`Arch::normalization`]), then
/// `features()` (`[N, C]`) in eval mode. Image files' features go through the on-disk
/// [`FeatureCache`], keyed by content, like frozen training's.
#[derive(Debug)]
pub struct Embedder {
    net: Net,
    arch: Arch,
    preset: EvalPreset,
    device: Device,
    cache: Option<FeatureCache>,
    pretrained: Option<PretrainedHead>,
    /// The backbone in ONNX Runtime, when the engine ([`EngineChoice::from_env`]) allows it.
    ort: Option<OrtModel>,
}

impl Embedder {
    /// Loads `arch` with the pretrained weights `weights` (a registry name or a file, as
    /// `--weights`), with the feature cache under `cache_root` (None: none).
    ///
    /// # Errors
    /// Those of [`initial_net`] (unknown name, file missing or not loadable).
    pub fn open(arch: Arch, weights: &str, cache_root: Option<&Path>) -> Result<Embedder> {
        let device = default_device();
        let (net, report) = initial_net(arch, weights, &[], 1, &device)?;
        let preset = presets(arch.normalization(), arch.input_size()).1;
        let pretrained = report
            .as_ref()
            .and_then(|r| r.file_head.as_ref())
            .and_then(PretrainedHead::from_linear);
        let ort = match &report {
            None => None,
            Some(r) => resolve(EngineChoice::from_env(), || {
                backbone_model(&net, arch, &r.path, preset.crop as usize)
            })?,
        };
        let cache = match (cache_root, report) {
            (Some(root), Some(r)) => {
                FeatureCache::open(root, arch, &r.path, &preset, arch.feature_dim()).ok()
            }
            _ => None,
        };
        Ok(Embedder {
            ort,
            // Eval mode: BatchNorm uses its running statistics.
            net: net.valid(),
            arch,
            preset,
            device,
            cache,
            pretrained,
        })
    }

    /// The backbone.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Row length: `C`, plus `M` with a [`PretrainedHead`].
    pub fn dim(&self) -> usize {
        self.arch.feature_dim() + self.pretrained.as_ref().map_or(0, PretrainedHead::outputs)
    }

    /// Where rows split into features and pretrained logits ([`Features::split`]).
    pub fn split(&self) -> Option<usize> {
        self.pretrained.as_ref().map(|_| self.arch.feature_dim())
    }

    /// The pretrained classifier whose logits extend the rows.
    pub fn pretrained(&self) -> Option<&PretrainedHead> {
        self.pretrained.as_ref()
    }

    fn extend(&self, f: Vec<f32>) -> Vec<f32> {
        match &self.pretrained {
            Some(p) => p.extend(&f, &self.device),
            None => f,
        }
    }

    /// Rows of decoded frames (any size; RGB), one `[dim()]` row each: features, then
    /// pretrained logits.
    pub fn frames(&self, frames: &[RgbImage]) -> Vec<Vec<f32>> {
        if frames.is_empty() {
            return Vec::new();
        }
        let crop = self.preset.crop as usize;
        let mut pixels = Vec::with_capacity(frames.len() * 3 * crop * crop);
        for f in frames {
            pixels.extend(self.preset.apply(f));
        }
        let ran = self
            .ort
            .as_ref()
            .and_then(|m| m.run(pixels.clone(), frames.len(), crop).ok());
        let v: Vec<f32> = match ran {
            Some((v, _)) => v,
            None => {
                let x = Tensor::<4>::from_data(
                    TensorData::new(pixels, [frames.len(), 3, crop, crop]),
                    &self.device,
                );
                self.net
                    .features(x)
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default()
            }
        };
        let d = self.dim();
        self.extend(v).chunks(d).map(<[f32]>::to_vec).collect()
    }

    /// Rows of image files (None for a file that cannot be decoded, listed in the
    /// skipped files), their features from the cache where present.
    pub fn files(&self, paths: &[PathBuf]) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
        let (f, skipped, _) = extract_features(
            (&self.net, &|| self.ort.as_ref()),
            paths,
            &self.preset,
            16,
            &self.device,
            self.cache.as_ref(),
            |_, _| {},
        );
        let present: Vec<f32> = f.iter().flatten().flatten().copied().collect();
        let mut rows = self.extend(present).into_iter();
        let d = self.dim();
        let f = f
            .into_iter()
            .map(|r| r.map(|_| rows.by_ref().take(d).collect()))
            .collect();
        (f, skipped)
    }
}

/// Margin between the two highest probabilities (`1` when there is one class): small means
/// unsure.
pub fn margin(probs: &[f32]) -> f32 {
    let mut s: Vec<f32> = probs.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    match s.as_slice() {
        [a, b, ..] => a - b,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn margin_is_the_gap_between_the_top_two() {
        assert!((margin(&[0.1, 0.6, 0.3]) - 0.3).abs() < 1e-6);
        assert_eq!(margin(&[1.0]), 1.0);
    }

    /// A random 16 -> 1000 classifier standing in for ImageNet's.
    fn pretrained() -> PretrainedHead {
        let device = crate::train::default_device();
        let linear = burn::nn::LinearConfig::new(16, PRETRAINED_CLASSES).init(&device);
        PretrainedHead::from_linear(&linear).unwrap()
    }

    #[test]
    fn a_model_on_features_and_pretrained_logits_folds_into_one_layer_on_the_features() {
        let p = pretrained();
        let device = crate::train::default_device();
        let (x, y) = clusters(5, 1.5);
        let rows = p.extend(&x, &device);
        assert_eq!(rows.len(), 10 * (16 + 1000));
        // Each row is [f, A f + a].
        let l0: f32 = p.bias[0] + dot(&p.weight[..16], &x[..16]);
        assert!((rows[16] - l0).abs() < 1e-4, "{} vs {l0}", rows[16]);
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
        assert_eq!(ma.temperature, mb.temperature);
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
}
