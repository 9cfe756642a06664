//! Inference on a trained run: the one path from image files to logits used by `predict` and
//! `eval`, so a file's logits are the same in both.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;

use crate::data::decode::DecodeOptions;
use crate::data::folder::Sample;
use crate::data::loader::{Skipped, decode_batches};
use crate::engine::{EngineChoice, OrtModel, open_cached, resolve};
use crate::eval::metrics::{ConfusionMatrix, EvalReport};
use crate::eval::regression::{PointTile, RegressionReport, denormalise, distance, output_points};
use crate::model::Net;
use crate::model::weights::load_net;
use crate::quantize::Precision;
use crate::run::{Run, SplitRecord, Task};
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
/// labels. [`Predictor::open`] opens classification runs only, [`Predictor::open_regression`]
/// regression runs only, and [`Predictor::open_any`] either (for callers that look at
/// [`Predictor::task`]), so one task's model is never used as the other's.
#[derive(Debug)]
pub struct Predictor {
    /// The run it came from.
    pub run: Run,
    backend: Backend,
}

/// The engine a [`Predictor`] runs on.
#[derive(Debug)]
enum Backend {
    Burn { net: Box<Net>, device: Device },
    Ort(OrtModel),
}

/// The run's model in ONNX Runtime: the int8 model `nanoclass quantize` kept (unless
/// `precision` is fp32), else the fp32 export from the export cache (written first when
/// missing).
fn ort_model(run: &Run, net: &Net, precision: Precision) -> Result<OrtModel> {
    if precision != Precision::Fp32 {
        match crate::quantize::kept_int8(run) {
            Some(p) => return OrtModel::open(&p),
            None if precision == Precision::Int8 => {
                return Err(Error::Run {
                    path: run.dir.clone(),
                    reason: "no int8 model for the current model.safetensors: run `nanoclass \
                             quantize` first"
                        .into(),
                });
            }
            None => {}
        }
    }
    let size = run.config.eval_preset.crop as usize;
    open_cached(&run.model_path(), &format!("size={size}"), || {
        crate::export::onnx::model_proto(
            net,
            size,
            false,
            crate::export::onnx::DEFAULT_OPSET,
            &crate::export::metadata(run, false),
        )
    })
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
    /// Loads `model.safetensors` of a classification run directory. The model's labels
    /// metadata must equal the run's labels.
    ///
    /// # Errors
    /// Those of [`Predictor::open_any`]; [`Error::Run`] for a regression run
    /// ([`Run::check_task`]).
    pub fn open(run_dir: &Path) -> Result<Predictor> {
        Run::open(run_dir)?.check_task(Task::Classification)?;
        Predictor::open_any(run_dir)
    }

    /// Loads `model.safetensors` of a regression run directory.
    ///
    /// # Errors
    /// Those of [`Predictor::open_any`]; [`Error::Run`] for a classification run.
    pub fn open_regression(run_dir: &Path) -> Result<Predictor> {
        Run::open(run_dir)?.check_task(Task::Regression)?;
        Predictor::open_any(run_dir)
    }

    /// Loads `model.safetensors` of a run of either task (see [`Predictor::task`]). The model
    /// file's labels and task metadata must equal the run's, and its head must have the task's
    /// output count (`K` classes, or `2K` for `K` regression categories).
    ///
    /// # Errors
    /// [`Error::Run`] when the run has no model or the model disagrees with the run;
    /// [`Error::Weights`] when the file cannot be loaded.
    pub fn open_any(run_dir: &Path) -> Result<Predictor> {
        Predictor::open_with(run_dir, EngineChoice::from_env())
    }

    /// [`Predictor::open_any`] on the engine `engine` ([`crate::engine`]): with ONNX Runtime the
    /// run's ONNX export is taken from the export cache, written there first if missing.
    ///
    /// # Errors
    /// Those of [`Predictor::open_any`]; with [`EngineChoice::Ort`], ONNX Runtime not being
    /// available (the reason) or refusing the graph.
    pub fn open_with(run_dir: &Path, engine: EngineChoice) -> Result<Predictor> {
        Predictor::open_full(run_dir, engine, Precision::from_env())
    }

    /// [`Predictor::open_with`] with the model precision on ONNX Runtime: [`Precision::Auto`]
    /// serves the int8 model `nanoclass quantize` kept for the current model file, if any.
    ///
    /// # Errors
    /// Those of [`Predictor::open_with`]; [`Precision::Int8`] without a kept int8 model.
    pub fn open_full(
        run_dir: &Path,
        engine: EngineChoice,
        precision: Precision,
    ) -> Result<Predictor> {
        let run = Run::open(run_dir)?;
        let device = default_device();
        let labels = run.config.labels.clone();
        let task = run.config.task;
        let path = run.model_path();
        if !path.exists() {
            return Err(Error::Run {
                path: run_dir.to_path_buf(),
                reason: "no model.safetensors: training did not finish an epoch".into(),
            });
        }
        let outputs = task.outputs(labels.len());
        let (net, report) = load_net(run.config.arch, &path, outputs, Some(&labels), &device)?;
        if report.head != crate::model::weights::HeadLoad::Loaded {
            return Err(Error::Run {
                path: path.clone(),
                reason: format!(
                    "the model has {} outputs but the {} run has {} labels ({} outputs)",
                    match report.head {
                        crate::model::weights::HeadLoad::Fresh { file_outputs, .. } => file_outputs,
                        crate::model::weights::HeadLoad::Loaded => outputs,
                    },
                    task,
                    labels.len(),
                    outputs
                ),
            });
        }
        if let Some(t) = report.metadata.get("task")
            && t != task.name()
        {
            return Err(Error::Run {
                path: path.clone(),
                reason: format!(
                    "the model file is for task \"{t}\" but the run's config.json says \"{task}\""
                ),
            });
        }
        let net = net.valid();
        let backend = match resolve(engine, || ort_model(&run, &net, precision))? {
            Some(m) => Backend::Ort(m),
            None => Backend::Burn {
                net: Box::new(net),
                device,
            },
        };
        Ok(Predictor { run, backend })
    }

    /// A run's model from the ONNX file `onnx` (e.g. an int8 model being measured), on ONNX
    /// Runtime.
    ///
    /// # Errors
    /// The run cannot be opened; ONNX Runtime is not available or refuses the file.
    pub fn open_onnx(run_dir: &Path, onnx: &Path) -> Result<Predictor> {
        let run = Run::open(run_dir)?;
        Ok(Predictor {
            run,
            backend: Backend::Ort(OrtModel::open(onnx)?),
        })
    }

    /// The ONNX file served, on ONNX Runtime.
    pub fn onnx_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Ort(m) => Some(m.path()),
            Backend::Burn { .. } => None,
        }
    }

    /// The run's training images: its dataset's `train/` (or only) folder, less the held-out
    /// files of a generated split.
    ///
    /// # Errors
    /// The dataset cannot be scanned.
    pub fn training_images(&self) -> Result<Vec<Sample>> {
        let data = &self.run.config.data;
        let ds = match self.task() {
            Task::Classification => crate::data::folder::scan_image_folder(data)?,
            Task::Regression => crate::data::folder::scan_regression_folder(data)?,
        };
        let held: std::collections::HashSet<PathBuf> = match &self.run.config.split {
            SplitRecord::Generated { val_files, .. } => {
                val_files.iter().map(|p| ds.root.join(p)).collect()
            }
            _ => Default::default(),
        };
        Ok(ds
            .train
            .into_iter()
            .filter(|s| !held.contains(&s.path))
            .collect())
    }

    /// The engine in use: `ort` or `burn`.
    pub fn engine(&self) -> &'static str {
        match self.backend {
            Backend::Burn { .. } => "burn",
            Backend::Ort(_) => "ort",
        }
    }

    /// Class names, index = output index (regression: category names; category `k` has
    /// outputs `2k`, `2k + 1`).
    pub fn labels(&self) -> &[String] {
        &self.run.config.labels
    }

    /// The run's task.
    pub fn task(&self) -> Task {
        self.run.config.task
    }

    fn require(&self, want: Task) -> Result<()> {
        self.run.check_task(want)
    }

    /// Regression: predicted points in pixels of the model input (`crop x crop`), one per
    /// category, for preprocessed images (`pixels` as for [`Predictor::logits`]). Returns `n`
    /// rows of `labels().len()` points.
    ///
    /// # Errors
    /// [`Error::Run`] when the run is not a regression run.
    pub fn input_points(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<[f32; 2]>>> {
        self.require(Task::Regression)?;
        let size = self.run.config.eval_preset.crop as f32;
        Ok(self
            .logits(pixels, n)
            .iter()
            .map(|row| {
                output_points(row)
                    .into_iter()
                    .map(|p| denormalise(p, size, size))
                    .collect()
            })
            .collect())
    }

    /// Regression: the predicted point of every category for one decoded image, in continuous
    /// pixel coordinates of that image (see [`crate::eval::regression`]): the eval preset's view
    /// is predicted and mapped back through its crop box.
    ///
    /// # Errors
    /// [`Error::Run`] when the run is not a regression run.
    pub fn points_for_image(&self, img: &image::RgbImage) -> Result<Vec<[f32; 2]>> {
        Ok(self
            .points_for_images(std::slice::from_ref(img))?
            .pop()
            .unwrap_or_default())
    }

    /// [`Predictor::points_for_image`] for several images in one forward pass.
    ///
    /// # Errors
    /// [`Error::Run`] when the run is not a regression run.
    pub fn points_for_images(&self, imgs: &[image::RgbImage]) -> Result<Vec<Vec<[f32; 2]>>> {
        self.require(Task::Regression)?;
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let preset = self.run.config.eval_preset;
        let pixels: Vec<f32> = imgs.iter().flat_map(|i| preset.apply(i)).collect();
        let rows = self.input_points(pixels, imgs.len())?;
        Ok(rows
            .into_iter()
            .zip(imgs)
            .map(|(row, img)| {
                let b = preset.crop_box(img.width(), img.height());
                row.into_iter()
                    .map(|p| b.unmap_point(p, preset.crop))
                    .collect()
            })
            .collect())
    }

    /// Regression: decodes files at full size (so that the points are in pixels of the file as
    /// displayed, EXIF orientation applied) and predicts every category's point. Undecodable
    /// files are returned as skipped.
    ///
    /// # Errors
    /// [`Error::Run`] when the run is not a regression run.
    pub fn points_for_files(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
    ) -> Result<(Vec<FilePoints>, Vec<Skipped>)> {
        self.require(Task::Regression)?;
        let mut out = Vec::with_capacity(paths.len());
        let mut skipped = Vec::new();
        for chunk in paths.chunks(batch_size.max(1)) {
            let samples: Vec<Sample> = chunk
                .iter()
                .map(|p| Sample {
                    path: p.clone(),
                    label: 0,
                    point: None,
                })
                .collect();
            let (decoded, skip) =
                crate::data::loader::decode_samples(&samples, &DecodeOptions::default());
            skipped.extend(skip);
            let imgs: Vec<image::RgbImage> = decoded.iter().map(|(_, i)| i.clone()).collect();
            let points = self.points_for_images(&imgs)?;
            for ((s, img), points) in decoded.into_iter().zip(points) {
                out.push(FilePoints {
                    path: s.path,
                    width: img.width(),
                    height: img.height(),
                    points,
                });
            }
        }
        Ok((out, skipped))
    }

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

    /// Logits for preprocessed images: `pixels` is `[n, 3, crop, crop]` flattened, as the run's
    /// eval preset makes it. Returns `n` rows of `labels().len()` logits.
    ///
    /// # Panics
    /// ONNX Runtime fails on an input of the run's own size (a broken library).
    pub fn logits(&self, pixels: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        let crop = self.run.config.eval_preset.crop as usize;
        let (v, k) = match &self.backend {
            Backend::Burn { net, device } => {
                let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, crop, crop]), device);
                let y = net.forward(x);
                let k = y.dims()[1];
                let v: Vec<f32> = y
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default();
                (v, k)
            }
            Backend::Ort(m) => m.run(pixels, n, crop).unwrap_or_else(|e| panic!("{e}")),
        };
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
    /// an error naming it. A regression run reads the dataset as a regression set
    /// ([`crate::data::folder::scan_regression_folder`]), so every sample carries its point.
    pub fn held_out(&self, data: &Path, split: EvalSplit) -> Result<(Vec<Sample>, String)> {
        let ds = match self.task() {
            Task::Classification => crate::data::folder::scan_image_folder(data)?,
            Task::Regression => crate::data::folder::scan_regression_folder(data)?,
        };
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

/// Predicted points for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePoints {
    /// The file.
    pub path: PathBuf,
    /// Width of the decoded image (as displayed), in pixels.
    pub width: u32,
    /// Height of the decoded image, in pixels.
    pub height: u32,
    /// One `[x, y]` per category (label order), in continuous pixel coordinates of the image.
    pub points: Vec<[f32; 2]>,
}

/// True when a point of a `size x size` view lies inside it (`0 <= x, y <= size`).
pub fn in_view(p: [f32; 2], size: u32) -> bool {
    let s = size as f32;
    (0.0..=s).contains(&p[0]) && (0.0..=s).contains(&p[1])
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
