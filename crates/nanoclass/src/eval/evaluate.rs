//! Scoring a trained run on labelled images: classification metrics (top-1, per-class
//! precision/recall/F1, confusion matrix, loss) and regression point errors.

use std::path::PathBuf;

use crate::data::decode::DecodeOptions;
use crate::data::folder::Sample;
use crate::data::loader::Skipped;
use crate::eval::metrics::{ConfusionMatrix, EvalReport, cross_entropy};
use crate::eval::regression::{PointTile, RegressionReport, distance, in_view};
use crate::infer::predictor::Predictor;
use crate::infer::scorer::argmax;
use crate::run::Task;
use crate::{Error, Result};

impl Predictor {
    /// Regression: scores held-out samples (each with its category in `label` and its point,
    /// in pixels of the file, in `point`): the distance between the predicted and the true point
    /// of the sample's category, in pixels of the model input (the eval preset's
    /// `crop x crop` view), per category and overall. Samples whose true point falls outside
    /// the view are counted in [`RegressionReport::out_of_view`] and not scored. Also returns
    /// up to `tiles` views with their true and predicted points, for
    /// [`crate::eval::regression::write_points_png`].
    ///
    /// # Errors
    /// [`Error::Run`] when the run is not a regression run.
    pub fn evaluate_regression(
        &self,
        samples: &[Sample],
        batch_size: usize,
        tiles: usize,
    ) -> Result<(RegressionReport, Vec<PointTile>, Vec<Skipped>)> {
        self.require(Task::Regression)?;
        let preset = self.run.config.eval_preset;
        let size = preset.crop;
        let mut errors = Vec::new();
        let mut drawn = Vec::new();
        let mut skipped = Vec::new();
        let mut out_of_view = 0;
        for chunk in samples.chunks(batch_size.max(1)) {
            let (decoded, skip) =
                crate::data::loader::decode_samples(chunk, &DecodeOptions::default());
            skipped.extend(skip);
            let pixels: Vec<f32> = decoded.iter().flat_map(|(_, i)| preset.apply(i)).collect();
            let rows = self.input_points(pixels, decoded.len())?;
            for ((s, img), row) in decoded.iter().zip(rows) {
                let Some(point) = s.point else {
                    return Err(Error::Dataset {
                        path: s.path.clone(),
                        reason: "no target point: not a regression sample".into(),
                    });
                };
                let truth = preset
                    .crop_box(img.width(), img.height())
                    .map_point(point, size);
                if !in_view(truth, size) {
                    out_of_view += 1;
                    continue;
                }
                let pred = row.get(s.label).copied().unwrap_or([f32::NAN; 2]);
                errors.push((s.label, distance(pred, truth)));
                if drawn.len() < tiles {
                    drawn.push(PointTile {
                        view: preset.view(img),
                        truth: vec![truth],
                        pred: vec![pred],
                    });
                }
            }
        }
        let mut report = RegressionReport::new(self.labels(), size, &errors);
        report.out_of_view = out_of_view;
        Ok((report, drawn, skipped))
    }

    /// Evaluates on held-out samples: top-1, per-class precision/recall/F1, confusion matrix and
    /// mean cross-entropy loss.
    ///
    /// # Errors
    /// The engine fails ([`crate::infer::engine::Engine::run`]).
    pub fn evaluate(
        &self,
        samples: &[Sample],
        batch_size: usize,
    ) -> Result<(EvalReport, Vec<Skipped>)> {
        let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
        let (rows, skipped) = self.logits_for_files(&paths, batch_size)?;
        let label_of: std::collections::HashMap<&PathBuf, usize> =
            samples.iter().map(|s| (&s.path, s.label)).collect();
        let mut cm = ConfusionMatrix::new(self.labels().to_vec());
        let mut loss = 0.0;
        for r in &rows {
            let truth = label_of[&r.path];
            let pred = argmax(&r.logits);
            cm.add(truth, pred);
            loss += cross_entropy(&r.logits, truth);
        }
        let n = rows.len();
        let report = EvalReport::new(cm, (n > 0).then(|| loss / n as f64));
        Ok((report, skipped))
    }
}
