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
//!   images (temperature scaling, Guo et al. 2017), so the scores read as probabilities, then
//!   lowered where needed so the mean leave-one-out top-1 probability is at most
//!   `(k + 1) / (n + 2)` for `k` of `n` right (never above what the images support);
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

mod pretrained;
mod solve;
#[cfg(test)]
mod tests;

use serde::Serialize;

pub use pretrained::{PRETRAINED_CLASSES, PretrainedHead};

use crate::infer::scorer::softmax;
use crate::{Error, Result};
use solve::{dot, prepare, stratified_subset};

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

/// Most images the temperature fit, the leave-out check and the linear head see: beyond it a
/// class-stratified subset is used ([`InstantModel::fit`]), so a refit costs about the same at
/// 300 images as at 5000 (their cost grows with the square of the images). The prototypes
/// always use every image (their cost grows linearly). Measured on EfficientNet-Lite0 features
/// in the studio: a whole update at 244 images took under 30 ms.
pub const MAX_FIT_IMAGES: usize = 256;

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
        // The Gram-matrix work (temperature, leave-out, linear head) runs on at most
        // MAX_FIT_IMAGES rows; the prototypes below use every row.
        let subset = stratified_subset(labels, k, MAX_FIT_IMAGES);
        let (x_all, labels_all, n_all) = (x, labels, n);
        let gathered: Option<(Vec<f32>, Vec<usize>)> = subset.as_ref().map(|idx| {
            let xs: Vec<f32> = idx
                .iter()
                .flat_map(|&i| &x[i * dim..(i + 1) * dim])
                .copied()
                .collect();
            let ls: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            (xs, ls)
        });
        let (x, labels) = match &gathered {
            Some((xs, ls)) => (xs.as_slice(), ls.as_slice()),
            None => (x, labels),
        };
        let n = labels.len();
        let mut sub_counts = vec![0usize; k];
        for &l in labels {
            sub_counts[l] += 1;
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
        let (_, scale_p, prep_p) = prepare(&zp, dim, &cp, labels, k);
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
        let temperature = prep_p.temperature(&sub_counts);
        // The linear head starts from its own rows' prototypes, at their own temperature.
        let start = || f64::from(prep_l.temperature(&sub_counts));
        let min_count = sub_counts.iter().copied().min().unwrap_or(0);
        let (kind, leave_out) = match choice {
            HeadChoice::Prototypes => (HeadKind::Prototypes, None),
            HeadChoice::Linear => (HeadKind::Linear, None),
            HeadChoice::Auto if min_count >= MIN_PER_CLASS_LINEAR => {
                let lo = prep_p.leave_out(&prep_l, &sub_counts, start());
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
                // p̂_c = normalise(Σ x̃_j / |x̃_j|) over every row: x̃_j / |x̃_j| is the unit
                // vector of z_j − m whatever the scale, so the subset is not needed here.
                let mut norm_sum = 0.0f64;
                let mut u = vec![0.0f32; dim];
                for (j, row) in x_all.chunks_exact(dim).enumerate() {
                    for ((o, v), (f, m)) in u.iter_mut().zip(row).zip(factors.iter().zip(&cp)) {
                        *o = v * f - m;
                    }
                    let norm = f64::from(dot(&u, &u)).sqrt();
                    norm_sum += norm;
                    let w = (1.0 / norm.max(1e-12)) as f32;
                    let c = labels_all[j];
                    for (a, v) in weight[c * dim..(c + 1) * dim].iter_mut().zip(&u) {
                        *a += w * v;
                    }
                }
                for row in weight.chunks_exact_mut(dim) {
                    let norm = dot(row, row).sqrt().max(1e-12);
                    row.iter_mut().for_each(|v| *v /= norm);
                }
                let scale = match subset {
                    Some(_) => (norm_sum / n_all as f64).max(1e-12),
                    None => scale_p,
                };
                (factors, cp, scale)
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
