//! Live inference on camera frames: the one path from an RGB frame to per-class scores that the
//! `nanoclass live` command and the studio's live view share.
//!
//! A frame goes through the run's stored eval preset ([`crate::data::presets::EvalPreset`]:
//! resize the shorter side, centre crop, normalise; `[1, 3, crop, crop]`, RGB, f32), the run's
//! network, and a softmax. Scores can be smoothed over frames (an exponential moving average) and
//! a top-1 below a threshold is reported as no label ([`crate::infer::scorer`]).

use std::path::Path;
use std::time::Instant;

use image::RgbImage;

use crate::infer::engine::EngineChoice;
use crate::infer::precision::Precision;
use crate::infer::predictor::Predictor;
use crate::infer::scorer::{ScoreOptions, Scorer, Scores};
use crate::run::Task;
use crate::{Error, Result};

/// How live frames are scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveOptions {
    /// Top-k, threshold and smoothing ([`ScoreOptions`]).
    pub score: ScoreOptions,
    /// The inference engine ([`crate::infer::engine`]).
    pub engine: EngineChoice,
    /// The model precision on ONNX Runtime ([`crate::infer::precision`]).
    pub precision: Precision,
    /// Apply the run's unknown rule ([`crate::infer::calibration`]): a frame far from every
    /// class gets no label and is marked unknown. The run's calibrated temperature applies
    /// either way.
    pub unknown: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            score: ScoreOptions::default(),
            engine: EngineChoice::from_env(),
            precision: Precision::from_env(),
            unknown: false,
        }
    }
}

/// The scores of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveResult {
    /// Classification runs: probabilities (after smoothing), top-k, label index and margin.
    /// Regression runs: empty probabilities and top-k, no label.
    pub scores: Scores,
    /// The top-1 label's name, or None when its probability is below the threshold (and for
    /// regression runs).
    pub label: Option<String>,
    /// Model time for this frame, in milliseconds: the forward pass (input tensor in, outputs
    /// out) on the engine, per frame of the batch.
    pub ms: f64,
    /// Preprocessing time for this frame, in milliseconds: the eval view (resize, centre crop,
    /// normalisation) of the decoded frame.
    pub preprocess_ms: f64,
    /// Regression runs: the predicted point of each category (label order), in continuous
    /// pixel coordinates of the frame (see [`crate::eval::regression`]), smoothed like the
    /// probabilities. None for classification runs.
    pub points: Option<Vec<[f32; 2]>>,
}

/// A trained run loaded for live use.
#[derive(Debug)]
pub struct Live {
    predictor: Predictor,
    scorer: Scorer,
}

impl Live {
    /// Loads the run in `run_dir`, classification or regression (see [`Predictor::open_any`];
    /// [`LiveResult::points`] says which).
    ///
    /// # Errors
    /// Those of [`Predictor::open_full`] and [`ScoreOptions::validate`]; [`Error::Run`] when
    /// `opts.unknown` asks for a rule the run does not have.
    pub fn open(run_dir: &Path, opts: LiveOptions) -> Result<Live> {
        let scorer = Scorer::new(opts.score)?;
        let predictor =
            Predictor::open_scoring(run_dir, opts.engine, opts.precision, opts.unknown)?;
        if opts.unknown
            && predictor.task() == Task::Classification
            && predictor
                .calibration()
                .and_then(|c| c.unknown.as_ref())
                .is_none()
        {
            return Err(Error::Run {
                path: run_dir.to_path_buf(),
                reason: "the run has no unknown rule for its current model (calibration.json \
                         is fitted when training ends; `nanoclass calibrate` fits it for an \
                         older run)"
                    .into(),
            });
        }
        let scorer = scorer.calibrated(predictor.calibration(), opts.unknown);
        Ok(Live { predictor, scorer })
    }

    /// The scorer in use (its temperature, whether the unknown rule is on).
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
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
        self.scorer.reset();
    }

    /// Scores one frame (any size; RGB).
    ///
    /// # Errors
    /// The engine fails.
    pub fn process(&mut self, frame: &RgbImage) -> Result<LiveResult> {
        self.process_batch(std::slice::from_ref(frame))?
            .pop()
            .ok_or_else(|| Error::Other("the engine gave no result for the frame".into()))
    }

    /// Scores consecutive frames in one forward pass (`[n, 3, crop, crop]`); smoothing runs over
    /// them in order, exactly as if they had been processed one by one.
    ///
    /// # Errors
    /// The engine fails.
    pub fn process_batch(&mut self, frames: &[RgbImage]) -> Result<Vec<LiveResult>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let per_frame = |t: Instant| t.elapsed().as_secs_f64() * 1000.0 / frames.len() as f64;
        let start = Instant::now();
        let preset = self.predictor.run.config.eval_preset;
        let mut pixels = Vec::with_capacity(frames.len() * 3 * (preset.crop as usize).pow(2));
        for frame in frames {
            pixels.extend(preset.apply(frame));
        }
        let preprocess_ms = per_frame(start);
        let start = Instant::now();
        if self.predictor.task() == Task::Regression {
            // The same path as `predict`: the eval view, the model, back to frame pixels.
            let rows = self.predictor.input_points(pixels, frames.len())?;
            let ms = per_frame(start);
            return Ok(rows
                .into_iter()
                .zip(frames)
                .map(|(row, frame)| {
                    let b = preset.crop_box(frame.width(), frame.height());
                    let flat: Vec<f32> = row
                        .into_iter()
                        .flat_map(|p| b.unmap_point(p, preset.crop))
                        .collect();
                    let smoothed = self.scorer.points(flat);
                    let points = smoothed.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
                    LiveResult {
                        scores: Scores {
                            probs: Vec::new(),
                            top: Vec::new(),
                            label: None,
                            margin: 0.0,
                            unknown: false,
                            distance: None,
                        },
                        label: None,
                        ms,
                        preprocess_ms,
                        points: Some(points),
                    }
                })
                .collect());
        }
        let rows = self.predictor.forward(pixels, frames.len())?;
        let ms = per_frame(start);
        Ok(rows
            .into_iter()
            .map(|(row, features)| {
                let scores = self.scorer.logits_with_features(&row, features.as_deref());
                let label = scores.label.map(|i| self.labels()[i].clone());
                LiveResult {
                    scores,
                    label,
                    ms,
                    preprocess_ms,
                    points: None,
                }
            })
            .collect())
    }
}

/// Height of one text line of [`annotate`], in pixels.
const LINE_PX: u32 = 18;
/// Colours of [`annotate`]: the confident top-1, an unsure top-1, the other lines.
const TOP1: plotters::style::RGBColor = plotters::style::RGBColor(80, 220, 100);
const UNSURE: plotters::style::RGBColor = plotters::style::RGBColor(255, 191, 0);
const OTHER: plotters::style::RGBColor = plotters::style::RGBColor(230, 230, 230);

/// A copy of `frame` with the result drawn on it: a dark band at the top with one line per
/// entry of `result.scores.top` (`label  93.1%`, the top-1 in green, or `(unsure)` in amber when it is
/// below the threshold, `(unknown)` when the unknown rule says none of these) and, when `fps` is given, the frame rate at the right. For a regression
/// result, each category's point is marked with a ring and its name.
///
/// # Errors
/// [`Error::Other`] when the embedded font cannot be parsed (never for the font shipped).
pub fn annotate(
    frame: &RgbImage,
    result: &LiveResult,
    labels: &[String],
    fps: Option<f64>,
) -> Result<RgbImage> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    crate::eval::metrics::font().map_err(Error::Other)?;
    let (w, h) = frame.dimensions();
    let mut buf = frame.as_raw().clone();
    let lines = result.scores.top.len().max(1) as u32;
    let points = result.points.as_deref().unwrap_or_default();
    let band = (lines * LINE_PX + 8).min(h);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw = || -> std::result::Result<(), String> {
            let e = |e: DrawingAreaErrorKind<_>| e.to_string();
            root.draw(&Rectangle::new(
                [(0, 0), (w as i32, band as i32)],
                RGBAColor(0, 0, 0, 0.6).filled(),
            ))
            .map_err(e)?;
            let font = |color: &'static RGBColor| {
                TextStyle::from((crate::eval::metrics::FONT, LINE_PX as f64 - 3.0).into_font())
                    .color(color)
                    .pos(Pos::new(HPos::Left, VPos::Top))
            };
            for (row, &(i, p)) in result.scores.top.iter().enumerate() {
                let (text, color) = if row == 0 && result.scores.unknown {
                    (
                        format!("(unknown) nearest {}  {:.1}%", labels[i], p * 100.0),
                        &UNSURE,
                    )
                } else if row == 0 && result.label.is_none() {
                    (
                        format!("(unsure) {}  {:.1}%", labels[i], p * 100.0),
                        &UNSURE,
                    )
                } else if row == 0 {
                    (format!("{}  {:.1}%", labels[i], p * 100.0), &TOP1)
                } else {
                    (format!("{}  {:.1}%", labels[i], p * 100.0), &OTHER)
                };
                let y = 4 + row as i32 * LINE_PX as i32;
                root.draw(&Text::new(text, (6, y), font(color)))
                    .map_err(e)?;
            }
            for (k, &[x, y]) in points.iter().enumerate() {
                let centre = (x.round() as i32, y.round() as i32);
                let radius = (w.min(h) / 40).max(4) as i32;
                root.draw(&Circle::new(centre, radius + 2, BLACK.stroke_width(2)))
                    .map_err(e)?;
                root.draw(&Circle::new(centre, radius, TOP1.stroke_width(3)))
                    .map_err(e)?;
                let name = labels.get(k).cloned().unwrap_or_default();
                let at = (centre.0 + radius + 4, centre.1 - LINE_PX as i32 / 2);
                root.draw(&Text::new(name, at, font(&TOP1))).map_err(e)?;
            }
            if let Some(fps) = fps {
                let style = font(&OTHER).pos(Pos::new(HPos::Right, VPos::Top));
                root.draw(&Text::new(
                    format!("{fps:.1} FPS"),
                    (w as i32 - 6, 4),
                    style,
                ))
                .map_err(e)?;
            }
            root.present().map_err(e)
        };
        draw().map_err(|e| Error::Other(format!("drawing the live result: {e}")))?;
    }
    RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::Other("drawing the live result: buffer size changed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_draws_a_band_and_leaves_the_rest() {
        let frame = RgbImage::from_pixel(160, 120, image::Rgb([200, 40, 40]));
        let result = LiveResult {
            scores: Scores {
                probs: vec![0.9, 0.1],
                top: vec![(0, 0.9), (1, 0.1)],
                label: Some(0),
                margin: 0.8,
                unknown: false,
                distance: None,
            },
            label: Some("ants".into()),
            ms: 1.0,
            preprocess_ms: 0.5,
            points: None,
        };
        let labels = vec!["ants".to_string(), "bees".to_string()];
        let out = annotate(&frame, &result, &labels, Some(30.0)).unwrap();
        assert_eq!(out.dimensions(), (160, 120));
        // The band darkens the top rows; below it the frame is untouched.
        let band = out.get_pixel(150, 30);
        assert!(band[0] < 120, "band pixel {band:?}");
        assert_eq!(out.get_pixel(80, 100), frame.get_pixel(80, 100));
        // Text was drawn: some pixel in the band is green-dominant (the top-1 colour).
        let greenish = (0..40u32)
            .flat_map(|y| (0..100u32).map(move |x| (x, y)))
            .any(|(x, y)| {
                let p = out.get_pixel(x, y);
                p[1] > 150 && p[1] > p[0] + 40
            });
        assert!(greenish);
    }
}
