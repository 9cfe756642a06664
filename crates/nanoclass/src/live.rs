//! Live inference on camera frames: the one path from an RGB frame to per-class scores that the
//! `nanoclass live` command and the studio's live view share.
//!
//! A frame goes through the run's stored eval preset ([`crate::data::presets::EvalPreset`]:
//! resize the shorter side, centre crop, normalise; `[1, 3, crop, crop]`, RGB, f32), the run's
//! network, and a softmax. Scores can be smoothed over frames (an exponential moving average) and
//! a top-1 below a threshold is reported as no label.

use std::path::Path;
use std::time::Instant;

use image::RgbImage;

use crate::eval::metrics::{softmax, top_k};
use crate::eval::predict::Predictor;
use crate::{Error, Result};

/// How live scores are post-processed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveOptions {
    /// How many of the best classes [`LiveResult::top`] lists (at least 1).
    pub top_k: usize,
    /// A top-1 probability below this (in `[0, 1]`) gives no label: the frame is "unsure".
    pub threshold: Option<f32>,
    /// Exponential moving average factor `a` in `[0, 1)`: `s_t = a * s_(t-1) + (1 - a) * p_t`
    /// over the frames' softmax probabilities. 0 disables smoothing; 0.8 averages over roughly
    /// the last 5 frames.
    pub smoothing: f32,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            top_k: 5,
            threshold: None,
            smoothing: 0.0,
        }
    }
}

/// The scores of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveResult {
    /// Softmax probabilities, one per label (after smoothing), summing to 1.
    pub probs: Vec<f32>,
    /// The `top_k` best `(label index, probability)`, best first.
    pub top: Vec<(usize, f32)>,
    /// The top-1 label, or None when its probability is below the threshold.
    pub label: Option<String>,
    /// Model time for this frame (preprocessing and forward pass), in milliseconds.
    pub ms: f64,
}

/// A trained run loaded for live use.
#[derive(Debug)]
pub struct Live {
    predictor: Predictor,
    opts: LiveOptions,
    smoothed: Option<Vec<f32>>,
}

impl Live {
    /// Loads the run in `run_dir` (see [`Predictor::open`]).
    ///
    /// # Errors
    /// Those of [`Predictor::open`]; [`Error::Other`] when `smoothing` is outside `[0, 1)` or
    /// `threshold` outside `[0, 1]`.
    pub fn open(run_dir: &Path, opts: LiveOptions) -> Result<Live> {
        if !(0.0..1.0).contains(&opts.smoothing) {
            return Err(Error::Other(format!(
                "smoothing must be in [0, 1), got {}",
                opts.smoothing
            )));
        }
        if let Some(t) = opts.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::Other(format!("threshold must be in [0, 1], got {t}")));
        }
        let predictor = Predictor::open(run_dir)?;
        Ok(Live {
            predictor,
            opts,
            smoothed: None,
        })
    }

    /// Class names, index = output index.
    pub fn labels(&self) -> &[String] {
        self.predictor.labels()
    }

    /// The run directory the model came from.
    pub fn run_dir(&self) -> &Path {
        &self.predictor.run.dir
    }

    /// The underlying predictor.
    pub fn predictor(&self) -> &Predictor {
        &self.predictor
    }

    /// Forgets the smoothing history (e.g. when the camera changes).
    pub fn reset(&mut self) {
        self.smoothed = None;
    }

    /// Scores one frame (any size; RGB).
    pub fn process(&mut self, frame: &RgbImage) -> LiveResult {
        self.process_batch(std::slice::from_ref(frame))
            .pop()
            .unwrap_or_else(|| self.result(Vec::new(), 0.0))
    }

    /// Scores consecutive frames in one forward pass (`[n, 3, crop, crop]`); smoothing runs over
    /// them in order, exactly as if they had been processed one by one.
    pub fn process_batch(&mut self, frames: &[RgbImage]) -> Vec<LiveResult> {
        if frames.is_empty() {
            return Vec::new();
        }
        let start = Instant::now();
        let preset = self.predictor.run.config.eval_preset;
        let mut pixels = Vec::with_capacity(frames.len() * 3 * (preset.crop as usize).pow(2));
        for frame in frames {
            pixels.extend(preset.apply(frame));
        }
        let logits = self.predictor.logits(pixels, frames.len());
        let ms = start.elapsed().as_secs_f64() * 1000.0 / frames.len() as f64;
        logits
            .into_iter()
            .map(|row| {
                let p = softmax(&row);
                let p = self.smooth(p);
                self.result(p, ms)
            })
            .collect()
    }

    fn smooth(&mut self, p: Vec<f32>) -> Vec<f32> {
        let next = ema(self.smoothed.as_deref(), p, self.opts.smoothing);
        self.smoothed = Some(next.clone());
        next
    }

    fn result(&self, probs: Vec<f32>, ms: f64) -> LiveResult {
        let top = top_k(&probs, self.opts.top_k.max(1));
        let label = confident(&top, self.opts.threshold).map(|i| self.labels()[i].clone());
        LiveResult {
            probs,
            top,
            label,
            ms,
        }
    }
}

/// One step of the exponential moving average `a * prev + (1 - a) * p`; without a previous value
/// of the same length (the first frame, or the labels changed) it is `p` itself.
fn ema(prev: Option<&[f32]>, p: Vec<f32>, a: f32) -> Vec<f32> {
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
fn confident(top: &[(usize, f32)], threshold: Option<f32>) -> Option<usize> {
    let &(i, p) = top.first()?;
    threshold.is_none_or(|t| p >= t).then_some(i)
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
        assert_eq!(ema(Some(&first), vec![0.2, 0.3, 0.5], 0.75), vec![0.2, 0.3, 0.5]);
    }

    #[test]
    fn below_the_threshold_there_is_no_label() {
        let top = [(2, 0.55), (0, 0.45)];
        assert_eq!(confident(&top, None), Some(2));
        assert_eq!(confident(&top, Some(0.5)), Some(2));
        assert_eq!(confident(&top, Some(0.6)), None);
        assert_eq!(confident(&[], None), None);
    }
}
