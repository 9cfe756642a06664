//! Inference on a trained run: the one path from image files to logits used by `predict` and
//! `eval`, so a file's logits are the same in both.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;

use crate::data::decode::DecodeOptions;
use crate::data::folder::Sample;
use crate::data::loader::{Skipped, decode_batches};
use crate::eval::metrics::{ConfusionMatrix, EvalReport};
use crate::model::Net;
use crate::model::weights::load_net;
use crate::run::{Run, SplitRecord};
use crate::train::default_device;
use crate::{Error, Result};

/// Which images `eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    /// The held-out set training reported on (see [`Predictor::held_out`]).
    Val,
    /// The `test/` folder.
    Test,
    /// Every image of the dataset.
    All,
}

/// A trained model ready for inference: the run's network in eval mode, its eval preset and
/// labels.
#[derive(Debug)]
pub struct Predictor {
    /// The run it came from.
    pub run: Run,
    net: Net,
    device: Device,
}

/// Logits for one file.
#[derive(Debug, Clone)]
pub struct FileLogits {
    /// The file.
    pub path: PathBuf,
    /// `[N]` logits, one per label.
    pub logits: Vec<f32>,
}

impl Predictor {
    /// Loads `model.safetensors` of a run directory. The model's labels metadata must equal the
    /// run's labels.
    pub fn open(run_dir: &Path) -> Result<Predictor> {
        let run = Run::open(run_dir)?;
        let device = default_device();
        let labels = run.config.labels.clone();
        let path = run.model_path();
        if !path.exists() {
            return Err(Error::Run {
                path: run_dir.to_path_buf(),
                reason: "no model.safetensors: training did not finish an epoch".into(),
            });
        }
        let (net, report) = load_net(run.config.arch, &path, labels.len(), Some(&labels), &device)?;
        if report.head != crate::model::weights::HeadLoad::Loaded {
            return Err(Error::Run {
                path: path.clone(),
                reason: format!(
                    "the model has {} outputs but the run has {} labels",
                    match report.head {
                        crate::model::weights::HeadLoad::Fresh { file_outputs, .. } => file_outputs,
                        crate::model::weights::HeadLoad::Loaded => labels.len(),
                    },
                    labels.len()
                ),
            });
        }
        Ok(Predictor {
            run,
            net: net.valid(),
            device,
        })
    }

    /// Class names, index = output index.
    pub fn labels(&self) -> &[String] {
        &self.run.config.labels
    }

    /// Logits for preprocessed images: `pixels` is `[n, 3, crop, crop]` flattened, as the run's
    /// eval preset makes it. Returns `n` rows of `labels().len()` logits.
    pub fn logits(&self, pixels: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        let crop = self.run.config.eval_preset.crop as usize;
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, crop, crop]), &self.device);
        let y = self.net.forward(x);
        let k = y.dims()[1];
        let v: Vec<f32> = y
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        v.chunks(k).map(|c| c.to_vec()).collect()
    }

    /// Decodes, preprocesses (the stored eval preset) and runs files, batch by batch; decoding
    /// is parallel and overlapped with the model. Undecodable files are returned as skipped.
    pub fn logits_for_files(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
    ) -> (Vec<FileLogits>, Vec<Skipped>) {
        let preset = self.run.config.eval_preset;
        let opts = DecodeOptions {
            min_side: Some(preset.decode_min_side()),
        };
        let mut out = Vec::with_capacity(paths.len());
        let mut skipped = Vec::new();
        for (batch, skip) in decode_batches(paths.to_vec(), batch_size, opts, move |img| {
            preset.apply(img)
        }) {
            skipped.extend(skip);
            if batch.n == 0 {
                continue;
            }
            let rows = self.logits(batch.pixels, batch.n);
            for (i, logits) in batch.items.into_iter().zip(rows) {
                out.push(FileLogits {
                    path: paths[i].clone(),
                    logits,
                });
            }
        }
        (out, skipped)
    }

    /// The images to evaluate on, labelled with the run's output indices, and a description of
    /// where they came from.
    ///
    /// - [`EvalSplit::Val`] (the default): the `val/` folder when `data` has one, else the
    ///   held-out files recorded at training time when `data` is the run's own dataset, else
    ///   (a plain `data/<class>/<image>` folder that the run did not train on) every image.
    /// - [`EvalSplit::Test`]: the `test/` folder, which training never reads.
    /// - [`EvalSplit::All`]: every image under `data`, whatever its split.
    ///
    /// The dataset's classes must be known to the model (a subset is fine); an unknown class is
    /// an error naming it.
    pub fn held_out(&self, data: &Path, split: EvalSplit) -> Result<(Vec<Sample>, String)> {
        let ds = crate::data::folder::scan_image_folder(data)?;
        let labels = &self.run.config.labels;
        let map: Vec<Option<usize>> = ds
            .classes
            .iter()
            .map(|c| labels.iter().position(|l| l == c))
            .collect();
        let unknown: Vec<&str> = ds
            .classes
            .iter()
            .zip(&map)
            .filter(|(_, m)| m.is_none())
            .map(|(c, _)| c.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Dataset {
                path: data.to_path_buf(),
                reason: format!(
                    "classes [{}] are not known to the model, which knows [{}]",
                    unknown.join(", "),
                    labels.join(", ")
                ),
            });
        }
        let relabel = |v: Vec<Sample>| -> Vec<Sample> {
            v.into_iter()
                .map(|mut s| {
                    s.label = map[s.label].unwrap_or(s.label);
                    s
                })
                .collect()
        };
        let same_root =
            std::fs::canonicalize(data).ok() == std::fs::canonicalize(&self.run.config.data).ok();
        let has_splits = data.join("train").is_dir() || ds.val.is_some() || ds.test.is_some();
        let (samples, from) = match split {
            EvalSplit::Test => match ds.test {
                Some(t) if !t.is_empty() => (t, "test/ folder".to_string()),
                _ => {
                    return Err(Error::Dataset {
                        path: data.to_path_buf(),
                        reason: "no test/ folder with images".into(),
                    });
                }
            },
            EvalSplit::All => {
                let mut all = ds.train;
                all.extend(ds.val.unwrap_or_default());
                all.extend(ds.test.unwrap_or_default());
                (all, "every image".to_string())
            }
            EvalSplit::Val => match (ds.val, &self.run.config.split) {
                (Some(v), _) if !v.is_empty() => (v, "val/ folder".to_string()),
                (_, SplitRecord::Generated { val_files, .. }) if same_root => {
                    let wanted: std::collections::HashSet<&PathBuf> = val_files.iter().collect();
                    let root = std::fs::canonicalize(&ds.root).unwrap_or(ds.root.clone());
                    let v = ds
                        .train
                        .into_iter()
                        .filter(|s| {
                            let abs = std::fs::canonicalize(&s.path).unwrap_or(s.path.clone());
                            abs.strip_prefix(&root)
                                .is_ok_and(|r| wanted.contains(&r.to_path_buf()))
                        })
                        .collect();
                    (v, "held-out split recorded at training time".to_string())
                }
                _ if !same_root && !has_splits => (ds.train, "every image".to_string()),
                _ => (vec![], String::new()),
            },
        };
        Ok((relabel(samples), from))
    }

    /// Evaluates on held-out samples: top-1, per-class precision/recall/F1, confusion matrix and
    /// mean cross-entropy loss.
    pub fn evaluate(&self, samples: &[Sample], batch_size: usize) -> (EvalReport, Vec<Skipped>) {
        let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
        let (rows, skipped) = self.logits_for_files(&paths, batch_size);
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
        let report = EvalReport {
            top1: cm.top1(),
            n,
            per_class: cm.per_class(),
            loss: (n > 0).then(|| loss / n as f64),
            confusion: cm,
        };
        (report, skipped)
    }
}

/// Index of the largest logit (the lowest index among ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Cross-entropy of one row of logits against the true class, in nats.
pub fn cross_entropy(logits: &[f32], truth: usize) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    lse - logits[truth] as f64
}
