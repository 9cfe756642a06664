//! From a model's outputs to what the user sees: probabilities, the best classes, a label or
//! none. The one scoring path of `predict`, `live`, the studio's live view and its instant
//! preview ([`Scorer`]), so the same logits give the same scores everywhere.
//!
//! - **Probabilities**: the softmax of the logits ([`softmax`]); instant models give
//!   probabilities directly ([`Scorer::probs`]).
//! - **Smoothing** over consecutive frames: an exponential moving average of the probabilities,
//!   `s_t = a * s_(t-1) + (1 - a) * p_t` ([`ema`]); `a = 0` shows each frame as it is, `a = 0.8`
//!   averages over roughly the last 5 frames. Regression points are smoothed the same way.
//! - **Threshold**: a top-1 probability below it gives no label (the frame is "unsure").
//! - **Top-k**: the `k` best classes, best first ([`top_k`]).
//! - **Calibration** ([`Scorer::calibrated`], [`crate::infer::calibration`]): a run's fitted
//!   temperature divides the logits before the softmax, and with the unknown rule on, an image
//!   whose features are farther from every class prototype than the rule's threshold gets no
//!   label and is marked unknown ("none of these"). The distance is smoothed like the
//!   probabilities.

use std::sync::Arc;

use serde::Serialize;

use crate::infer::calibration::Calibration;
use crate::{Error, Result};

/// How outputs are turned into scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOptions {
    /// How many of the best classes [`Scores::top`] lists (at least 1).
    pub top_k: usize,
    /// A top-1 probability below this (in `[0, 1]`) gives no label.
    pub threshold: Option<f32>,
    /// Exponential moving average factor `a` in `[0, 1)` over consecutive frames (0: none).
    pub smoothing: f32,
}

impl Default for ScoreOptions {
    /// Top 5, no threshold, no smoothing.
    fn default() -> Self {
        ScoreOptions {
            top_k: 5,
            threshold: None,
            smoothing: 0.0,
        }
    }
}

impl ScoreOptions {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`Error::Other`] when `smoothing` is outside `[0, 1)` or `threshold` outside `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.smoothing) {
            return Err(Error::Other(format!(
                "smoothing must be in [0, 1), got {}",
                self.smoothing
            )));
        }
        if let Some(t) = self.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::Other(format!(
                "the threshold must be in [0, 1], got {t}"
            )));
        }
        Ok(())
    }
}

/// The scores of one image or frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Probabilities, one per label (after smoothing), summing to 1.
    pub probs: Vec<f32>,
    /// The `top_k` best `(label index, probability)`, best first.
    pub top: Vec<(usize, f32)>,
    /// The top-1 label index, or None when its probability is below the threshold.
    pub label: Option<usize>,
    /// The gap between the two highest probabilities, in `[0, 1]` (1 with one class): small
    /// means unsure between two classes.
    pub margin: f32,
    /// "None of these": the features are farther from every class prototype than the unknown
    /// rule's threshold (then `label` is None). False without the rule.
    pub unknown: bool,
    /// The distance to the nearest class prototype (`1 - cos`, in `[0, 2]`) when the unknown
    /// rule is on.
    pub distance: Option<f32>,
}

/// Scores consecutive outputs of one model (see the module docs); it keeps the smoothing
/// history, so use one per stream of frames.
#[derive(Debug, Clone)]
pub struct Scorer {
    opts: ScoreOptions,
    smoothed: Option<Vec<f32>>,
    calibration: Option<Arc<Calibration>>,
    unknown: bool,
    distance: Option<f32>,
}

impl Scorer {
    /// A scorer with `opts`.
    ///
    /// # Errors
    /// Those of [`ScoreOptions::validate`].
    pub fn new(opts: ScoreOptions) -> Result<Scorer> {
        opts.validate()?;
        Ok(Scorer {
            opts,
            smoothed: None,
            calibration: None,
            unknown: false,
            distance: None,
        })
    }

    /// Scores with a run's calibration: its temperature, and with `unknown` its unknown rule
    /// (when it has one; see the module docs). None scores the raw logits.
    pub fn calibrated(mut self, calibration: Option<&Calibration>, unknown: bool) -> Scorer {
        self.calibration = calibration.map(|c| Arc::new(c.clone()));
        self.unknown = unknown;
        self.distance = None;
        self
    }

    /// The temperature the logits are divided by (1 without calibration).
    pub fn temperature(&self) -> f32 {
        self.calibration
            .as_ref()
            .map_or(1.0, |c| c.temperature.temperature)
    }

    /// Whether the unknown rule is applied (asked for, and the calibration has one).
    pub fn unknown_rule_on(&self) -> bool {
        self.unknown
            && self
                .calibration
                .as_ref()
                .is_some_and(|c| c.unknown.is_some())
    }

    /// Its options.
    pub fn options(&self) -> &ScoreOptions {
        &self.opts
    }

    /// Forgets the smoothing history (the camera or the model changed).
    pub fn reset(&mut self) {
        self.smoothed = None;
        self.distance = None;
    }

    /// Scores one row of logits (divided by the calibrated temperature, if any).
    pub fn logits(&mut self, logits: &[f32]) -> Scores {
        self.logits_with_features(logits, None)
    }

    /// [`Scorer::logits`], and with the unknown rule on, `features` (what the head read, `[C]`)
    /// decide whether the image is unknown.
    pub fn logits_with_features(&mut self, logits: &[f32], features: Option<&[f32]>) -> Scores {
        let probs = match &self.calibration {
            Some(c) => c.probs(logits),
            None => softmax(logits),
        };
        let mut scores = self.probs(probs);
        let rule = self
            .calibration
            .as_ref()
            .filter(|_| self.unknown)
            .and_then(|c| c.unknown.as_ref());
        if let (Some(rule), Some(f)) = (rule, features) {
            let d = rule.distance(f);
            let a = self.opts.smoothing;
            let d = match self.distance {
                Some(prev) if a > 0.0 => a * prev + (1.0 - a) * d,
                _ => d,
            };
            self.distance = Some(d);
            scores.distance = Some(d);
            if rule.is_unknown(d) {
                scores.unknown = true;
                scores.label = None;
            }
        }
        scores
    }

    /// Scores one row of probabilities (an instant model's).
    pub fn probs(&mut self, probs: Vec<f32>) -> Scores {
        let probs = self.smooth(probs);
        let top = top_k(&probs, self.opts.top_k.max(1));
        let label = confident(&top, self.opts.threshold);
        Scores {
            margin: margin(&probs),
            probs,
            top,
            label,
            unknown: false,
            distance: None,
        }
    }

    /// Smooths regression outputs (points, flattened) like probabilities.
    pub fn points(&mut self, flat: Vec<f32>) -> Vec<f32> {
        self.smooth(flat)
    }

    fn smooth(&mut self, p: Vec<f32>) -> Vec<f32> {
        let next = ema(self.smoothed.as_deref(), p, self.opts.smoothing);
        self.smoothed = Some(next.clone());
        next
    }
}

/// One step of the exponential moving average `a * prev + (1 - a) * p`; without a previous value
/// of the same length (the first frame, or the labels changed) it is `p` itself.
pub fn ema(prev: Option<&[f32]>, p: Vec<f32>, a: f32) -> Vec<f32> {
    match prev {
        Some(prev) if a > 0.0 && prev.len() == p.len() => prev
            .iter()
            .zip(&p)
            .map(|(s, x)| a * s + (1.0 - a) * x)
            .collect(),
        _ => p,
    }
}

/// The top-1 index when its probability reaches `threshold` (always, without one).
pub fn confident(top: &[(usize, f32)], threshold: Option<f32>) -> Option<usize> {
    let &(i, p) = top.first()?;
    threshold.is_none_or(|t| p >= t).then_some(i)
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

/// Index of the largest value (the lowest index among ties; 0 for an empty row), for f32
/// logits and probabilities as for f64 scores.
pub fn argmax<T: PartialOrd>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Indices and scores of the `k` largest logits, by descending score; equal scores keep the lower
/// index first, so the result is deterministic. Returns `min(k, logits.len())` pairs; NaN scores
/// rank below every number (they are never preferred over a real score).
///
/// Works on raw logits or on [`softmax`] probabilities alike (softmax preserves the order).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // A stable sort by descending score keeps equal scores in index order.
    order.sort_by(|&a, &b| {
        let (sa, sb) = (logits[a], logits[b]);
        match (sa.is_nan(), sb.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => sb.total_cmp(&sa),
        }
    });
    order.into_iter().take(k).map(|i| (i, logits[i])).collect()
}

/// Softmax of one sample's logits: `exp(x_i - max) / Σ_j exp(x_j - max)`, probabilities in
/// `[0, 1]` summing to 1 (to f32 rounding). Subtracting the maximum first keeps it exact for
/// large logits such as `[1000, 0]`, which gives `[1, 0]` rather than NaN; the sum is taken in
/// f64.
///
/// `-inf` entries (masked classes) get probability 0. If the largest logit is not finite (all
/// `-inf`, or a `+inf`) or any logit is NaN, every output is NaN: the distribution is undefined
/// and no substitute is invented. An empty slice gives an empty vector.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if logits.is_empty() {
        return Vec::new();
    }
    if !max.is_finite() || logits.iter().any(|x| x.is_nan()) {
        return vec![f32::NAN; logits.len()];
    }
    let exps: Vec<f64> = logits
        .iter()
        .map(|&x| (f64::from(x) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_weights_the_history_by_the_factor() {
        let first = ema(None, vec![1.0, 0.0], 0.75);
        assert_eq!(first, vec![1.0, 0.0]);
        let second = ema(Some(&first), vec![0.0, 1.0], 0.75);
        assert_eq!(second, vec![0.75, 0.25]);
        // No smoothing: the new frame alone.
        assert_eq!(ema(Some(&first), vec![0.0, 1.0], 0.0), vec![0.0, 1.0]);
        // A changed label count restarts the average.
        assert_eq!(
            ema(Some(&first), vec![0.2, 0.3, 0.5], 0.75),
            vec![0.2, 0.3, 0.5]
        );
    }

    #[test]
    fn below_the_threshold_there_is_no_label() {
        let top = [(2, 0.55), (0, 0.45)];
        assert_eq!(confident(&top, None), Some(2));
        assert_eq!(confident(&top, Some(0.5)), Some(2));
        assert_eq!(confident(&top, Some(0.6)), None);
        assert_eq!(confident(&[], None), None);
    }

    #[test]
    fn margin_is_the_gap_between_the_top_two() {
        assert!((margin(&[0.1, 0.6, 0.3]) - 0.3).abs() < 1e-6);
        assert_eq!(margin(&[1.0]), 1.0);
    }

    #[test]
    fn a_scorer_smooths_thresholds_and_ranks() {
        let mut s = Scorer::new(ScoreOptions {
            top_k: 2,
            threshold: Some(0.7),
            smoothing: 0.5,
        })
        .unwrap();
        // logits [ln 9, 0] -> probabilities [0.9, 0.1]
        let a = s.logits(&[9f32.ln(), 0.0]);
        assert!((a.probs[0] - 0.9).abs() < 1e-6);
        assert_eq!(a.label, Some(0));
        assert_eq!(a.top.len(), 2);
        // the next frame says [0.1, 0.9]; smoothed [0.5, 0.5]: below the threshold
        let b = s.probs(vec![0.1, 0.9]);
        assert!((b.probs[0] - 0.5).abs() < 1e-6 && b.margin.abs() < 1e-6);
        assert_eq!(b.label, None);
        s.reset();
        assert_eq!(s.probs(vec![0.1, 0.9]).label, Some(1));
        assert!(!s.probs(vec![0.1, 0.9]).unknown);
        for bad in [
            ScoreOptions {
                smoothing: 1.0,
                ..ScoreOptions::default()
            },
            ScoreOptions {
                threshold: Some(1.5),
                ..ScoreOptions::default()
            },
        ] {
            assert!(Scorer::new(bad).is_err());
        }
    }

    #[test]
    fn a_calibrated_scorer_divides_by_the_temperature_and_answers_unknown_far_away() {
        use crate::infer::calibration::{Calibration, TemperatureFit, UnknownRule};
        let cal = Calibration {
            model_sha256: String::new(),
            temperature: TemperatureFit {
                temperature: 2.0,
                fitted: 2.0,
                held_out: 10,
                correct: 9,
                nll_before: 0.0,
                nll_after: 0.0,
                ece_before: 0.0,
                ece_after: 0.0,
                mean_confidence: 0.0,
                confidence_cap: 0.0,
            },
            unknown: Some(UnknownRule {
                prototypes: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                threshold: 0.1,
                alpha: 0.01,
                held_out: 10,
            }),
        };
        let opts = ScoreOptions::default();
        // logits [2 ln 9, 0] at T = 2: probabilities [0.9, 0.1].
        let mut s = Scorer::new(opts).unwrap().calibrated(Some(&cal), false);
        assert_eq!(s.temperature(), 2.0);
        assert!(!s.unknown_rule_on());
        let a = s.logits_with_features(&[2.0 * 9f32.ln(), 0.0], Some(&[1.0, 1.0]));
        assert!((a.probs[0] - 0.9).abs() < 1e-6);
        assert_eq!((a.label, a.unknown, a.distance), (Some(0), false, None));
        // With the rule: features halfway between the prototypes are unknown; near one are not.
        let mut s = Scorer::new(opts).unwrap().calibrated(Some(&cal), true);
        assert!(s.unknown_rule_on());
        let b = s.logits_with_features(&[2.0 * 9f32.ln(), 0.0], Some(&[1.0, 1.0]));
        assert!(b.unknown && b.label.is_none());
        assert!((b.distance.unwrap() - (1.0 - 0.5f32.sqrt())).abs() < 1e-6);
        let c = s.logits_with_features(&[2.0 * 9f32.ln(), 0.0], Some(&[1.0, 0.01]));
        assert_eq!((c.label, c.unknown), (Some(0), false));
    }
}
