//! A trained run ready for inference: the one path from images to logits (or points) that
//! `predict`, `eval`, `live`, `quantize` and the studio share, so a file's outputs are the same
//! in all of them.

use std::path::{Path, PathBuf};

use crate::data::decode::DecodeOptions;
use crate::data::folder::Sample;
use crate::data::loader::{Skipped, decode_batches};
use crate::eval::regression::{denormalise, output_points};
use crate::infer::calibration::Calibration;
use crate::infer::device::default_device;
use crate::infer::engine::{Engine, EngineChoice, Graph};
use crate::infer::host_linear::HostLinear;
use crate::infer::ort::{OrtModel, open_cached};
use crate::infer::precision::{Precision, kept_int8};
use crate::model::Net;
use crate::model::weights::{HeadLoad, load_net};
use crate::run::{Run, Task};
use crate::{Error, Result};

/// A trained model ready for inference: the run's network in eval mode, its eval preset and
/// labels. [`Predictor::open`] opens classification runs only, [`Predictor::open_regression`]
/// regression runs only, and [`Predictor::open_any`] either (for callers that look at
/// [`Predictor::task`]), so one task's model is never used as the other's.
#[derive(Debug)]
pub struct Predictor {
    /// The run it came from.
    pub run: Run,
    engine: Engine,
    /// With features ([`Predictor::open_scoring`]): the engine computes what the head reads and
    /// this head, on the host, the logits.
    head: Option<HostLinear>,
    calibration: Option<Calibration>,
}

/// The run's model in ONNX Runtime: the int8 model `nanoclass quantize` kept (unless
/// `precision` is fp32), else the fp32 export from the export cache (written first when
/// missing).
fn ort_model(run: &Run, net: &Net, precision: Precision) -> Result<OrtModel> {
    if precision != Precision::Fp32 {
        match kept_int8(run) {
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

/// One image's logits, and the features the head read when the predictor has them.
pub type LogitsRow = (Vec<f32>, Option<Vec<f32>>);

/// Logits for one file.
#[derive(Debug, Clone)]
pub struct FileLogits {
    /// The file.
    pub path: PathBuf,
    /// `[N]` logits, one per label.
    pub logits: Vec<f32>,
    /// `[C]` features the head read, from a predictor opened with features
    /// ([`Predictor::open_scoring`]).
    pub features: Option<Vec<f32>>,
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
        Predictor::open_scoring(run_dir, engine, precision, false)
    }

    /// [`Predictor::open_full`], and with `features` (classification runs) the engine computes
    /// the features the head reads (`[N, C]`) and the head runs on the host, so each image's
    /// features come with its logits ([`FileLogits::features`], [`Predictor::forward`]): what
    /// the unknown rule of [`crate::infer::calibration`] needs. With features the fp32 model is
    /// served (an int8 model has no features output).
    ///
    /// # Errors
    /// Those of [`Predictor::open_full`].
    pub fn open_scoring(
        run_dir: &Path,
        engine: EngineChoice,
        precision: Precision,
        features: bool,
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
        if let HeadLoad::Fresh { file_outputs, .. } = report.head {
            return Err(Error::Run {
                path: path.clone(),
                reason: format!(
                    "the model has {file_outputs} outputs but the {task} run has {} labels \
                     ({outputs} outputs)",
                    labels.len(),
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
        let size = run.config.eval_preset.crop as usize;
        let calibration = match task {
            Task::Classification => Calibration::load(&run),
            Task::Regression => None,
        };
        let head = match task {
            Task::Classification if features && net.point_head().is_none() => {
                Some(HostLinear::from_linear(net.head())?)
            }
            _ => None,
        };
        let engine = match head {
            Some(_) => Engine::open(engine, net, Graph::Features, &device, size, |net| {
                open_cached(&run.model_path(), &format!("features size={size}"), || {
                    crate::export::onnx::features_proto(
                        net,
                        size,
                        crate::export::onnx::DEFAULT_OPSET,
                        &crate::export::metadata(&run, false),
                    )
                })
            })?,
            None => Engine::open(engine, net, Graph::Outputs, &device, size, |net| {
                ort_model(&run, net, precision)
            })?,
        };
        Ok(Predictor {
            run,
            engine,
            head,
            calibration,
        })
    }

    /// The run's calibration for its current model file ([`crate::infer::calibration`]), if
    /// training (or `nanoclass calibrate`) fitted one.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// Whether each image's features come with its logits ([`Predictor::open_scoring`]).
    pub fn has_features(&self) -> bool {
        self.head.is_some()
    }

    /// A run's model from the ONNX file `onnx` (e.g. an int8 model being measured), on ONNX
    /// Runtime.
    ///
    /// # Errors
    /// The run cannot be opened; ONNX Runtime is not available or refuses the file.
    pub fn open_onnx(run_dir: &Path, onnx: &Path) -> Result<Predictor> {
        let run = Run::open(run_dir)?;
        let size = run.config.eval_preset.crop as usize;
        Ok(Predictor {
            calibration: Calibration::load(&run),
            run,
            engine: Engine::on_ort(OrtModel::open(onnx)?, size),
            head: None,
        })
    }

    /// The ONNX file served, on ONNX Runtime.
    pub fn onnx_path(&self) -> Option<&Path> {
        self.engine.onnx_path()
    }

    /// The engine in use: `ort` or `burn`.
    pub fn engine(&self) -> &'static str {
        self.engine.name()
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

    pub(crate) fn require(&self, want: Task) -> Result<()> {
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
            .logits(pixels, n)?
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

    /// Logits for preprocessed images: `pixels` is `[n, 3, crop, crop]` flattened, as the run's
    /// eval preset makes it. Returns `n` rows of `labels().len()` logits (regression: `2K`
    /// outputs).
    ///
    /// # Errors
    /// The engine fails ([`Engine::run`]).
    pub fn logits(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .forward(pixels, n)?
            .into_iter()
            .map(|(l, _)| l)
            .collect())
    }

    /// [`Predictor::logits`] with each row's features when the predictor has them
    /// ([`Predictor::open_scoring`]).
    ///
    /// # Errors
    /// The engine fails ([`Engine::run`]).
    pub fn forward(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<LogitsRow>> {
        let rows = self.engine.run(pixels, n)?.into_rows();
        Ok(match &self.head {
            Some(h) => rows.into_iter().map(|f| (h.forward(&f), Some(f))).collect(),
            None => rows.into_iter().map(|l| (l, None)).collect(),
        })
    }

    /// [`Predictor::logits_for_files`] for a predictor with features, through the on-disk
    /// feature `cache` (features already there are read, not computed; new ones are added).
    /// Only for a run whose backbone is the one the cache belongs to (frozen and instant runs
    /// keep their pretrained backbone).
    ///
    /// # Errors
    /// [`Error::Run`] without features ([`Predictor::open_scoring`]); the engine fails.
    pub fn logits_for_files_cached(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
        cache: &crate::infer::cache::FeatureCache,
    ) -> Result<(Vec<FileLogits>, Vec<Skipped>)> {
        let head = self.head.as_ref().ok_or_else(|| Error::Run {
            path: self.run.dir.clone(),
            reason: "the predictor was opened without features".into(),
        })?;
        let (rows, skipped, _) = crate::infer::embed::extract_features(
            crate::infer::embed::EngineSource::Ready(&self.engine),
            paths,
            &self.run.config.eval_preset,
            batch_size,
            Some(cache),
            |_, _| {},
        )?;
        let out = paths
            .iter()
            .zip(rows)
            .filter_map(|(p, f)| {
                f.map(|f| FileLogits {
                    path: p.clone(),
                    logits: head.forward(&f),
                    features: Some(f),
                })
            })
            .collect();
        Ok((out, skipped))
    }

    /// Decodes, preprocesses (the stored eval preset) and runs files, batch by batch; decoding
    /// is parallel and overlapped with the model. Undecodable files are returned as skipped.
    ///
    /// # Errors
    /// The engine fails ([`Engine::run`]).
    pub fn logits_for_files(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
    ) -> Result<(Vec<FileLogits>, Vec<Skipped>)> {
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
            let rows = self.forward(batch.pixels, batch.n)?;
            for (i, (logits, features)) in batch.items.into_iter().zip(rows) {
                out.push(FileLogits {
                    path: paths[i].clone(),
                    logits,
                    features,
                });
            }
        }
        Ok((out, skipped))
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
