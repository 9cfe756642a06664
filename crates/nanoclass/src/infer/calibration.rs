//! Calibrated probabilities and a "none of these" answer for a trained classifier, fitted on
//! the run's held-out images when training ends and kept in the run as `calibration.json`.
//! `predict`, `live`, the studio and the export metadata read the same file, so every front
//! end applies the same rule ([`crate::infer::scorer::Scorer::calibrated`]).
//!
//! **Temperature** (temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural
//! Networks"): probabilities are `softmax(logits / T)`. `T` minimises the negative
//! log-likelihood of the held-out images' labels; the NLL is convex in `1 / T`, so a
//! golden-section search over `1 / T` in `[1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE]` finds it.
//! **Never above what the data supports**: a few held-out images that are all right would let
//! the fit sharpen the probabilities towards 100%; so `T` is then raised until the mean top-1
//! probability over the held-out images is at most the accuracy those images support,
//! `(k + 1) / (n + 2)` for `k` of `n` right (Laplace's rule of succession: the expected
//! accuracy under a uniform prior). With 6 of 6 right that is 87.5%, with 145 of 153 right
//! 94.2%. (The lower end of the 95% Wilson interval was tried first: with 46 of 49 right it
//! held the mean confidence at 0.835 where the model was right on 94.1% of new images, and
//! doubled the held-out NLL.)
//!
//! **Unknown** (distance to the class prototypes): a feature is what the head reads (`[C]`,
//! the pooled backbone output: 1280 for EfficientNet-Lite0, 512 for ResNet-18). Each class's
//! prototype is the normalised mean of its training images' L2-normalised features (eval
//! view); an image's distance is `1 - max_c cos(f, p_c)`, in `[0, 2]`. The threshold is the
//! split-conformal quantile at `alpha` = [`UNKNOWN_ALPHA`] of `n` distances no prototype has
//! seen: the held-out images', and each training image's leave-one-out distance (its own
//! class's prototype made without it); it is the `ceil((n + 1)(1 - alpha))`-th smallest, or
//! the largest when `n` is too small for that (`n < 99`). So an image of a known class, drawn
//! like those, is called unknown with probability at most about `max(alpha, 1 / (n + 1))`.
//! The held-out images alone are too few to place it: EfficientNet-Lite0, frozen, daisy and
//! rose of flowers5 with 32 held-out images, the held-out maximum (0.441) called 3 of the 40
//! `val/` photos unknown; with the training images' leave-one-out distances it is 0 of 40.
//! An image farther than the threshold gets no label, whatever its probabilities.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::presets::views_decode_min_side;
use crate::eval::heldout::EvalSplit;
use crate::fs::write_atomic;
use crate::infer::cache::FeatureCache;
use crate::infer::device::{default_device, read_f32};
use crate::infer::host_linear::HostLinear;
use crate::infer::precision::Precision;
use crate::infer::predictor::{FileLogits, Predictor};
use crate::infer::scorer::argmax;
use crate::model::cut::Cut;
use crate::model::registry::sha256_file;
use crate::model::weights::load_net;
use crate::run::Run;
use crate::train::Mode;
use crate::train::activations::{self, ActivationCache, ActivationSpec};
use crate::{Error, Result};

/// The file in a run directory.
pub const FILE: &str = "calibration.json";

/// The smallest temperature the fit considers.
pub const MIN_TEMPERATURE: f64 = 0.05;
/// The largest temperature the fit (and the cap) considers.
pub const MAX_TEMPERATURE: f64 = 100.0;

/// The conformal level of the unknown threshold: the share of known-class images it may call
/// unknown (see the module docs).
pub const UNKNOWN_ALPHA: f64 = 0.01;

/// The fitted temperature and what it did on the held-out images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemperatureFit {
    /// The temperature `T` in use (`softmax(logits / T)`).
    pub temperature: f32,
    /// The NLL minimiser, before the cap.
    pub fitted: f32,
    /// Held-out images it was fitted on.
    pub held_out: usize,
    /// Of those, how many the model gets right (top-1).
    pub correct: usize,
    /// Mean NLL of the held-out labels at `T = 1` and at `temperature`, in nats.
    pub nll_before: f32,
    /// See `nll_before`.
    pub nll_after: f32,
    /// Expected calibration error (15 equal-width confidence bins) at `T = 1` and at
    /// `temperature`, in `[0, 1]`.
    pub ece_before: f32,
    /// See `ece_before`.
    pub ece_after: f32,
    /// Mean top-1 probability over the held-out images at `temperature`.
    pub mean_confidence: f32,
    /// `(k + 1) / (n + 2)` for `k` of `n` held-out images right: the most the mean confidence
    /// may be.
    pub confidence_cap: f32,
}

/// The "none of these" rule (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownRule {
    /// One unit-length prototype per class (label order), `[K][C]`.
    pub prototypes: Vec<Vec<f32>>,
    /// A distance above this gives no label.
    pub threshold: f32,
    /// The conformal level the threshold was chosen at.
    pub alpha: f32,
    /// Held-out images the threshold was chosen on (with the training images' leave-one-out
    /// distances).
    pub held_out: usize,
}

/// What `calibration.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// SHA-256 of the `model.safetensors` it was fitted for; another model file ignores it.
    pub model_sha256: String,
    /// The temperature.
    pub temperature: TemperatureFit,
    /// The unknown rule, when every class has training images.
    pub unknown: Option<UnknownRule>,
}

impl Calibration {
    /// Writes `calibration.json` into `run_dir` (a temporary file, then a rename).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&run_dir.join(FILE), text.as_bytes())
    }

    /// The run's calibration when it was fitted for its current model file; None when there is
    /// none, it is for another model file (training went on), or it cannot be read.
    pub fn load(run: &Run) -> Option<Calibration> {
        let text = std::fs::read_to_string(run.dir.join(FILE)).ok()?;
        let cal: Calibration = serde_json::from_str(&text).ok()?;
        (sha256_file(&run.model_path()).ok()? == cal.model_sha256).then_some(cal)
    }

    /// The probabilities of one row of logits: `softmax(logits / T)`.
    pub fn probs(&self, logits: &[f32]) -> Vec<f32> {
        let t = self.temperature.temperature;
        let scaled: Vec<f32> = logits.iter().map(|l| l / t).collect();
        crate::infer::scorer::softmax(&scaled)
    }
}

/// `log softmax(beta * l)` in f64. The sum of exponentials is `1 + rest` (the largest term
/// is 1), taken with `ln_1p` so that near-certain rows keep their tiny losses.
fn log_softmax(l: &[f32], beta: f64) -> Vec<f64> {
    let max = l
        .iter()
        .fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(*v)));
    let arg = l.iter().position(|v| f64::from(*v) == max).unwrap_or(0);
    let rest: f64 = l
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != arg)
        .map(|(_, v)| (beta * (f64::from(*v) - max)).exp())
        .sum();
    let lse = rest.ln_1p();
    l.iter()
        .map(|v| beta * (f64::from(*v) - max) - lse)
        .collect()
}

/// Mean NLL of `labels` under `softmax(beta * logits)`.
fn nll(logits: &[Vec<f32>], labels: &[usize], beta: f64) -> f64 {
    let s: f64 = logits
        .iter()
        .zip(labels)
        .map(|(l, &y)| -log_softmax(l, beta)[y])
        .sum();
    s / logits.len().max(1) as f64
}

/// Mean top-1 probability under `softmax(beta * logits)`; non-decreasing in `beta`.
fn mean_confidence(logits: &[Vec<f32>], beta: f64) -> f64 {
    let s: f64 = logits
        .iter()
        .map(|l| {
            log_softmax(l, beta)
                .into_iter()
                .fold(f64::NEG_INFINITY, f64::max)
                .exp()
        })
        .sum();
    s / logits.len().max(1) as f64
}

/// Expected calibration error with 15 equal-width bins of top-1 probability (Guo et al. 2017):
/// `sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|`.
pub fn expected_calibration_error(probs: &[Vec<f32>], labels: &[usize]) -> f64 {
    const BINS: usize = 15;
    let mut count = [0usize; BINS];
    let mut conf = [0f64; BINS];
    let mut right = [0f64; BINS];
    for (p, &y) in probs.iter().zip(labels) {
        let arg = argmax(p);
        let top = p.get(arg).copied().unwrap_or(0.0);
        let b = ((f64::from(top) * BINS as f64) as usize).min(BINS - 1);
        count[b] += 1;
        conf[b] += f64::from(top);
        right[b] += f64::from(u8::from(arg == y));
    }
    let n = probs.len().max(1) as f64;
    (0..BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| (right[b] - conf[b]).abs() / n)
        .sum()
}

/// Fits the temperature on held-out `logits` and their `labels` (see the module docs); None
/// without held-out images.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> Option<TemperatureFit> {
    if logits.is_empty() || logits.len() != labels.len() {
        return None;
    }
    // Golden-section search for the minimum of the convex NLL(beta), beta = 1 / T.
    let (mut a, mut b) = (1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (nll(logits, labels, c), nll(logits, labels, d));
    for _ in 0..80 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = nll(logits, labels, c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = nll(logits, labels, d);
        }
    }
    let fitted = (a + b) / 2.0;
    let n = logits.len();
    let correct = logits
        .iter()
        .zip(labels)
        .filter(|(l, y)| argmax(l) == **y)
        .count();
    let cap = (correct + 1) as f64 / (n + 2) as f64;
    // The cap: lower beta (raise T) until the mean confidence is at most `cap`. Confidence
    // falls to 1/K as beta goes to 0, so a cap below that is met by the largest T.
    let mut beta = fitted;
    if mean_confidence(logits, beta) > cap {
        let (mut lo, mut hi) = (1.0 / MAX_TEMPERATURE, beta);
        if mean_confidence(logits, lo) > cap {
            beta = lo;
        } else {
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if mean_confidence(logits, mid) > cap {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            beta = lo;
        }
    }
    let probs_at = |beta: f64| -> Vec<Vec<f32>> {
        logits
            .iter()
            .map(|l| {
                log_softmax(l, beta)
                    .into_iter()
                    .map(|v| v.exp() as f32)
                    .collect()
            })
            .collect()
    };
    Some(TemperatureFit {
        temperature: (1.0 / beta) as f32,
        fitted: (1.0 / fitted) as f32,
        held_out: n,
        correct,
        nll_before: nll(logits, labels, 1.0) as f32,
        nll_after: nll(logits, labels, beta) as f32,
        ece_before: expected_calibration_error(&probs_at(1.0), labels) as f32,
        ece_after: expected_calibration_error(&probs_at(beta), labels) as f32,
        mean_confidence: mean_confidence(logits, beta) as f32,
        confidence_cap: cap as f32,
    })
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

impl UnknownRule {
    /// Prototypes from the training images' `features` with their class `labels` (`classes`
    /// classes), threshold from the held-out images' features and the training images'
    /// leave-one-out distances (see the module docs; `held_out` may be empty). None when a
    /// class has no training image or there is no distance to place the threshold on.
    pub fn fit(
        features: &[Vec<f32>],
        labels: &[usize],
        classes: usize,
        held_out: &[Vec<f32>],
    ) -> Option<UnknownRule> {
        let dim = features.first()?.len();
        let mut sums = vec![vec![0f64; dim]; classes];
        let mut counts = vec![0usize; classes];
        for (f, &y) in features.iter().zip(labels) {
            if y >= classes || f.len() != dim {
                continue;
            }
            counts[y] += 1;
            for (s, v) in sums[y].iter_mut().zip(normalised(f)) {
                *s += f64::from(v);
            }
        }
        if counts.contains(&0) {
            return None;
        }
        let unit = |s: &[f64]| normalised(&s.iter().map(|v| *v as f32).collect::<Vec<_>>());
        let prototypes: Vec<Vec<f32>> = sums.iter().map(|s| unit(s)).collect();
        let mut rule = UnknownRule {
            prototypes,
            threshold: f32::INFINITY,
            alpha: UNKNOWN_ALPHA as f32,
            held_out: held_out.len(),
        };
        let mut d: Vec<f32> = held_out.iter().map(|f| rule.distance(f)).collect();
        // Leave-one-out distances of the training images: each against its class prototype
        // made without it (classes of one image have none), so they are held-out distances too.
        for (f, &y) in features.iter().zip(labels) {
            if y >= classes || f.len() != dim || counts[y] < 2 {
                continue;
            }
            let x = normalised(f);
            let own: Vec<f64> = sums[y]
                .iter()
                .zip(&x)
                .map(|(s, v)| s - f64::from(*v))
                .collect();
            let mut loo = rule.clone();
            loo.prototypes[y] = unit(&own);
            d.push(loo.distance(f));
        }
        if d.is_empty() {
            return None;
        }
        d.sort_by(f32::total_cmp);
        let n = d.len();
        let k = (((n + 1) as f64) * (1.0 - UNKNOWN_ALPHA)).ceil() as usize;
        rule.threshold = d[k.clamp(1, n) - 1];
        Some(rule)
    }

    /// `1 - max_c cos(f, p_c)`, in `[0, 2]`.
    pub fn distance(&self, f: &[f32]) -> f32 {
        let f = normalised(f);
        let best = self
            .prototypes
            .iter()
            .map(|p| p.iter().zip(&f).map(|(a, b)| a * b).sum::<f32>())
            .fold(f32::NEG_INFINITY, f32::max);
        1.0 - best
    }

    /// Whether a feature's `distance` says "none of these".
    pub fn is_unknown(&self, distance: f32) -> bool {
        distance > self.threshold
    }
}

/// What [`calibrate_run`] fitted, and how it read the images.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// The calibration, as written to `calibration.json`.
    pub calibration: Calibration,
    /// Images whose eval view came from a partial run's activation cache (only the trained
    /// tail ran for them); the others ran through the whole network.
    pub from_activation_cache: usize,
}

/// Fits the calibration of the classification run in `run_dir` on its own images: the
/// temperature on the held-out images' logits, the unknown rule on the training images'
/// features and the held-out ones' (eval view, the run's current model), and writes
/// `calibration.json`. A frozen or instant run reads its features from the feature cache under
/// `feature_cache` where training left them; a partial run reads its images' cached
/// activations there and runs only the trained tail. `progress(done, total)` follows the
/// images.
///
/// # Errors
/// The run cannot be opened or is not a classification run; it has no held-out images; the
/// engine fails; the file cannot be written.
pub fn calibrate_run(
    run_dir: &Path,
    engine: crate::infer::engine::EngineChoice,
    feature_cache: Option<&Path>,
    batch_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Fitted> {
    let run = Run::open(run_dir)?;
    run.check_task(crate::run::Task::Classification)?;
    let train = run.training_images()?;
    let (held, _) = run.held_out(&run.config.data, EvalSplit::Val)?;
    if held.is_empty() {
        return Err(Error::Run {
            path: run_dir.to_path_buf(),
            reason: "no held-out images to calibrate on".into(),
        });
    }
    let total = train.len() + held.len();
    let paths: Vec<_> = held.iter().chain(&train).map(|s| s.path.clone()).collect();
    let label_of: std::collections::HashMap<&Path, usize> = held
        .iter()
        .chain(&train)
        .map(|s| (s.path.as_path(), s.label))
        .collect();
    let mut rows = Vec::with_capacity(total);
    let mut from_activation_cache = 0;
    // A partial run's images have their eval view's activations in the activation cache
    // training filled: only the trained tail runs for them.
    let rest = match feature_cache.map(|root| tail_rows_from_cache(&run, root, &paths)) {
        Some(Ok(Some((found, missing)))) => {
            from_activation_cache = found.len();
            rows.extend(found);
            progress(rows.len(), total);
            missing
        }
        _ => paths,
    };
    if !rest.is_empty() {
        let p = Predictor::open_scoring(run_dir, engine, Precision::Fp32, true)?;
        // Frozen and instant runs keep the pretrained backbone: its features are in the
        // feature cache training filled.
        let cache = match (
            feature_cache,
            &run.config.weights.path,
            run.config.hyper.mode,
        ) {
            (Some(root), Some(w), Mode::Frozen | Mode::Instant) => FeatureCache::open(
                root,
                run.config.arch,
                w,
                &run.config.eval_preset,
                run.config.arch.feature_dim(),
            )
            .ok(),
            _ => None,
        };
        for chunk in rest.chunks(batch_size.max(1) * 4) {
            let (r, _skipped) = match &cache {
                Some(c) => p.logits_for_files_cached(chunk, batch_size, c)?,
                None => p.logits_for_files(chunk, batch_size)?,
            };
            rows.extend(r);
            progress(rows.len(), total);
        }
    }
    let held_set: std::collections::HashSet<&Path> =
        held.iter().map(|s| s.path.as_path()).collect();
    let (mut hl, mut hy, mut hf) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tf, mut ty) = (Vec::new(), Vec::new());
    for r in rows {
        let y = label_of[r.path.as_path()];
        let f = r.features.unwrap_or_default();
        if held_set.contains(r.path.as_path()) {
            hl.push(r.logits);
            hy.push(y);
            hf.push(f);
        } else {
            tf.push(f);
            ty.push(y);
        }
    }
    let temperature = fit_temperature(&hl, &hy).ok_or_else(|| Error::Run {
        path: run_dir.to_path_buf(),
        reason: "no held-out image could be read to calibrate on".into(),
    })?;
    let cal = Calibration {
        model_sha256: sha256_file(&run.model_path())?,
        temperature,
        unknown: UnknownRule::fit(&tf, &ty, run.config.labels.len(), &hf),
    };
    cal.save(run_dir)?;
    Ok(Fitted {
        calibration: cal,
        from_activation_cache,
    })
}

/// Images scored through the tail per forward pass.
const TAIL_BATCH: usize = 64;

/// Logits and features of a partial run's images from the activations training cached under
/// `feature_cache` ([`crate::train::activations`]): each image's eval view (view 0) runs
/// through the trained tail only ([`crate::model::Net::features_from`], burn, the default
/// device), the head on the host as in [`Predictor`]. Returns the rows found and the paths
/// whose activation is not cached (or whose file cannot be read), for the whole network to
/// score; None when the run is not a partial run from a weights file or its cache is gone.
///
/// # Errors
/// The model cannot be loaded; the tail fails.
fn tail_rows_from_cache(
    run: &Run,
    feature_cache: &Path,
    paths: &[PathBuf],
) -> Result<Option<(Vec<FileLogits>, Vec<PathBuf>)>> {
    let c = &run.config;
    let (Mode::Partial, Some(weights)) = (c.hyper.mode, &c.weights.path) else {
        return Ok(None);
    };
    let Ok(cut) = Cut::new(
        c.arch,
        c.hyper
            .train_blocks
            .unwrap_or(Cut::default_for(c.arch).blocks),
    ) else {
        return Ok(None);
    };
    let device = default_device();
    let outputs = c.task.outputs(c.labels.len());
    let (net, _) = load_net(c.arch, &run.model_path(), outputs, Some(&c.labels), &device)?;
    if net.check_cut(cut).is_err() {
        return Ok(None);
    }
    let shape = net.activation_shape(cut, c.eval_preset.crop as usize);
    // The weights file is hashed into the spec: one moved or deleted since training leaves
    // nothing to find.
    let Ok(spec) = ActivationSpec::new(
        c.arch,
        weights,
        cut,
        c.eval_preset,
        c.train_preset,
        views_decode_min_side(&c.train_preset, &c.eval_preset),
        c.hyper.seed,
        shape,
    ) else {
        return Ok(None);
    };
    let Some(cache) = ActivationCache::open_existing(&activations::root(feature_cache), &spec)
    else {
        return Ok(None);
    };
    let keys: Vec<Option<String>> = paths
        .par_iter()
        .map(|p| {
            ActivationCache::key(p)
                .ok()
                .filter(|k| cache.contains(k, 0))
        })
        .collect();
    let found: Vec<(&PathBuf, String)> = paths
        .iter()
        .zip(&keys)
        .filter_map(|(p, k)| k.clone().map(|k| (p, k)))
        .collect();
    let missing = paths
        .iter()
        .zip(&keys)
        .filter(|(_, k)| k.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    let head = HostLinear::from_linear(net.head())?;
    let [ch, h, w] = shape;
    let mut rows = Vec::with_capacity(found.len());
    for chunk in found.chunks(TAIL_BATCH) {
        let data = cache.read_batch(chunk.iter().map(|(_, k)| (k.as_str(), 0)))?;
        let x = Tensor::<4>::from_data(TensorData::new(data, [chunk.len(), ch, h, w]), &device);
        let features = read_f32(net.features_from(cut, x))?;
        let dim = features.len() / chunk.len();
        for ((path, _), f) in chunk.iter().zip(features.chunks(dim)) {
            rows.push(FileLogits {
                path: (*path).clone(),
                logits: head.forward(f),
                features: Some(f.to_vec()),
            });
        }
    }
    Ok(Some((rows, missing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits `[s, 0]` for label 0 with `right` of `n` right (the others `[0, s]`).
    fn two_class(n: usize, right: usize, s: f32) -> (Vec<Vec<f32>>, Vec<usize>) {
        let logits = (0..n)
            .map(|i| {
                if i < right {
                    vec![s, 0.0]
                } else {
                    vec![0.0, s]
                }
            })
            .collect();
        (logits, vec![0; n])
    }

    #[test]
    fn the_fitted_temperature_matches_the_closed_form_optimum() {
        // 90 of 100 right with margin s: NLL is minimal where softmax gives 0.9 to the top-1,
        // i.e. s / T = ln 9, so T = s / ln 9 = 10 / 2.197 = 4.551. The cap (90 + 1) / 102 =
        // 0.8922 < 0.9 lowers it to where the confidence is 0.8922.
        let (l, y) = two_class(100, 90, 10.0);
        let fit = fit_temperature(&l, &y).unwrap();
        assert!((fit.fitted - 10.0 / 9f32.ln()).abs() < 1e-3, "{fit:?}");
        let lo = 91.0 / 102.0;
        assert!(
            (f64::from(fit.mean_confidence) - lo).abs() < 1e-4,
            "{fit:?}"
        );
        // Confidence 0.8922 at margin 10: T = 10 / ln(0.8922 / 0.1078).
        let want = 10.0 / (lo / (1.0 - lo)).ln();
        assert!((f64::from(fit.temperature) - want).abs() < 1e-3, "{fit:?}");
        assert!(fit.temperature > fit.fitted);
        assert_eq!((fit.held_out, fit.correct), (100, 90));
    }

    #[test]
    fn a_few_right_answers_never_give_certainty() {
        // 6 of 6 right: the NLL optimum is the smallest T (probability -> 1); the cap 7 / 8
        // holds the mean confidence at 87.5%, not 100%.
        let (l, y) = two_class(6, 6, 8.0);
        let fit = fit_temperature(&l, &y).unwrap();
        assert!(
            (fit.fitted - MIN_TEMPERATURE as f32).abs() < 1e-3,
            "{fit:?}"
        );
        assert!((fit.mean_confidence - 0.875).abs() < 1e-4, "{fit:?}");
        assert!(fit.temperature > 1.0, "{fit:?}");
    }

    #[test]
    fn an_underconfident_model_is_sharpened_within_the_cap() {
        // 99 of 100 right with margin 0.5 (softmax 0.62): the fit sharpens (T < 1) up to the
        // cap 100 / 102 = 0.9804.
        let (l, y) = two_class(100, 99, 0.5);
        let fit = fit_temperature(&l, &y).unwrap();
        assert!(fit.temperature < 1.0, "{fit:?}");
        assert!(
            (fit.mean_confidence - 100.0 / 102.0).abs() < 1e-4,
            "{fit:?}"
        );
        assert!(fit.nll_after < fit.nll_before);
        assert!(fit.ece_after < fit.ece_before);
    }

    #[test]
    fn ece_of_a_perfectly_calibrated_bin_is_zero_and_of_an_overconfident_one_the_gap() {
        let probs = vec![vec![0.75, 0.25]; 4];
        assert!(expected_calibration_error(&probs, &[0, 0, 0, 1]).abs() < 1e-9);
        assert!((expected_calibration_error(&probs, &[0, 0, 1, 1]) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn unknown_threshold_is_the_conformal_quantile_and_prototypes_are_unit_means() {
        // Class 0 along x, class 1 along y; held-out distances 0.00, 0.01, ..., 0.09 (n = 10 <
        // 99: the largest is the threshold).
        let train = vec![vec![2.0, 0.0], vec![1.0, 0.0], vec![0.0, 3.0]];
        let held: Vec<Vec<f32>> = (0..10)
            .map(|i| {
                let c = 1.0 - i as f32 / 100.0;
                vec![c, (1.0 - c * c).sqrt()]
            })
            .collect();
        let rule = UnknownRule::fit(&train, &[0, 0, 1], 2, &held).unwrap();
        assert_eq!(rule.prototypes, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert!((rule.threshold - 0.09).abs() < 1e-5, "{rule:?}");
        // Halfway between the classes: cos 0.707, distance 0.293 > 0.09.
        let d = rule.distance(&[1.0, 1.0]);
        assert!((d - (1.0 - 0.5f32.sqrt())).abs() < 1e-5);
        assert!(rule.is_unknown(d));
        assert!(!rule.is_unknown(rule.distance(&[5.0, 0.1])));
        // 200 held-out distances i / 1000: ceil(201 * 0.99) = 199th smallest = 0.198.
        let held: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let c = 1.0 - i as f32 / 1000.0;
                vec![c, (1.0 - c * c).sqrt()]
            })
            .collect();
        let rule = UnknownRule::fit(&train, &[0, 0, 1], 2, &held).unwrap();
        assert!((rule.threshold - 0.198).abs() < 1e-4, "{rule:?}");
        // A class without training images: no rule.
        assert!(UnknownRule::fit(&train, &[0, 0, 0], 2, &held).is_none());
        // Without held-out images the leave-one-out distances place it: class 0's images
        // [1, 0] and [0.8, 0.6] are 0.2 from each other's prototype (cos 0.8).
        let train = vec![vec![1.0, 0.0], vec![0.8, 0.6], vec![0.0, 1.0]];
        let rule = UnknownRule::fit(&train, &[0, 0, 1], 2, &[]).unwrap();
        assert!((rule.threshold - 0.2).abs() < 1e-5, "{rule:?}");
        assert_eq!(rule.held_out, 0);
        // One image per class: nothing to place it on.
        assert!(UnknownRule::fit(&train[1..], &[0, 1], 2, &[]).is_none());
    }
}
