//! The run directory: everything a trained model needs, read back by every later command.
//!
//! ```text
//! RUN/
//!   config.json      every setting, the seed, the eval preset, normalisation, labels, the split
//!   labels.txt       one class name per line; line i is output i
//!   model.safetensors  the best model (highest held-out top-1), PyTorch layout, reference names
//!   last.safetensors   the model after the last completed epoch
//!   metrics.jsonl    one JSON object per epoch
//!   checkpoint/      training state for --resume (see crate::train::checkpoint)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod limits;

use crate::data::labels::{read_labels, write_labels};
use crate::data::presets::{EvalPreset, TrainPreset};
use crate::fs::write_atomic;
use crate::infer::device::DeviceChoice;
use crate::model::Arch;
use crate::train::hyper::Hyperparams;
use crate::train::precision::TrainPrecision;
use crate::{Error, Result};

/// File names inside a run directory.
pub mod files {
    /// Settings and metadata.
    pub const CONFIG: &str = "config.json";
    /// Class names, one per line.
    pub const LABELS: &str = "labels.txt";
    /// Best model.
    pub const MODEL: &str = "model.safetensors";
    /// Model after the last completed epoch.
    pub const LAST: &str = "last.safetensors";
    /// Per-epoch metrics.
    pub const METRICS: &str = "metrics.jsonl";
    /// Resume state folder.
    pub const CHECKPOINT: &str = "checkpoint";
}

/// The task a run solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One label per image among `N` classes; the head has `N` logits.
    Classification,
    /// One `(x, y)` point per image for its category among `K` (the DLI course's regression
    /// project); the head has `2K` outputs, `(x, y)` of category `k` at `2k, 2k + 1`, in the
    /// normalised coordinates of [`crate::eval::regression::normalise`].
    Regression,
}

impl Task {
    /// The name used on the command line and in `config.json`: `classification`, `regression`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }
    }

    /// Head outputs for `k` labels: `k` for classification, `2k` for regression.
    pub fn outputs(self, k: usize) -> usize {
        match self {
            Task::Classification => k,
            Task::Regression => 2 * k,
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the validation split came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitRecord {
    /// The dataset has a `val/` folder.
    Folder,
    /// Stratified, seeded split of the training images that keeps capture groups (bursts,
    /// near-copies: [`crate::data::groups`]) on one side; `val_files` are relative to the
    /// dataset root, so `eval` uses exactly these.
    Generated {
        /// Fraction of each class held out.
        val_fraction: f32,
        /// Seed of the split.
        seed: u64,
        /// Held-out files, relative to the dataset root.
        val_files: Vec<PathBuf>,
        /// Capture groups the images formed (absent in runs made before groups were kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        groups: Option<usize>,
        /// Classes whose images were one group, split image by image.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unsplittable: Vec<String>,
    },
    /// No held-out images: no validation figure is reported.
    NoValidation,
}

/// Which weights the backbone started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsRecord {
    /// As given on the command line (`resnet18`, a path, or `none`).
    pub spec: String,
    /// The file loaded, if any.
    pub path: Option<PathBuf>,
}

/// Every setting of a run, written to `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// nanoclass version that wrote the run.
    pub nanoclass_version: String,
    /// The task.
    pub task: Task,
    /// The backbone.
    pub arch: Arch,
    /// Class names; index = output index.
    pub labels: Vec<String>,
    /// Preprocessing used by eval, predict and every later command.
    pub eval_preset: EvalPreset,
    /// Training augmentation.
    pub train_preset: TrainPreset,
    /// Dataset root (absolute).
    pub data: PathBuf,
    /// Starting weights.
    pub weights: WeightsRecord,
    /// How it trains (flattened into `config.json`: `mode`, `epochs`, `lr`, ...).
    #[serde(flatten)]
    pub hyper: Hyperparams,
    /// The held-out split.
    pub split: SplitRecord,
    /// Where burn trained it.
    #[serde(default)]
    pub device: DeviceChoice,
    /// The float type of its training steps through the backbone (fp32 in runs from before
    /// it was recorded).
    #[serde(default)]
    pub precision: TrainPrecision,
}

/// Per-epoch metrics, one line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number across phases.
    pub epoch: usize,
    /// `head` or `full`.
    pub phase: String,
    /// Mean training loss (classification: cross-entropy; regression: squared error of the
    /// normalised point, see [`Task::Regression`]).
    pub train_loss: f64,
    /// Training top-1 over the epoch (augmented images, train-mode model); None for regression.
    #[serde(default)]
    pub train_top1: Option<f64>,
    /// Held-out loss, when there is a held-out set.
    pub val_loss: Option<f64>,
    /// Held-out top-1, when there is a held-out set (classification).
    pub val_top1: Option<f64>,
    /// Regression: mean distance between predicted and true points over the epoch's augmented
    /// training views, in pixels of the model input (`crop x crop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_error_px: Option<f64>,
    /// Regression: mean held-out distance between predicted and true points, in pixels of the
    /// model input (eval preset), when there is a held-out set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_error_px: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: RunConfig,
}

fn run_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Run {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

impl Run {
    /// Creates (or reuses) `dir` and writes `config.json` and `labels.txt`, after checking every
    /// bounded setting ([`limits::check_config`]).
    pub fn create(dir: &Path, config: RunConfig) -> Result<Run> {
        limits::check_config(&config)
            .map_err(|e| run_err(&dir.join(files::CONFIG), e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let run = Run {
            dir: dir.to_path_buf(),
            config,
        };
        run.write_config()?;
        write_labels(&dir.join(files::LABELS), &run.config.labels)?;
        Ok(run)
    }

    /// Writes `config.json`.
    pub fn write_config(&self) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| Error::Other(format!("config.json: {e}")))?;
        write_atomic(&self.dir.join(files::CONFIG), json.as_bytes())
    }

    /// Opens a run directory: reads `config.json`, checks its bounded settings
    /// ([`limits::check_config`]: an error names the file, the field, the value and the allowed
    /// range) and checks `labels.txt` against it.
    pub fn open(dir: &Path) -> Result<Run> {
        if !dir.exists() {
            return Err(run_err(dir, "does not exist"));
        }
        if !dir.is_dir() {
            return Err(run_err(
                dir,
                "is a file, not a run directory (the run directory written by `nanoclass train` comes first)",
            ));
        }
        let cfg_path = dir.join(files::CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                run_err(dir, "no config.json: not a nanoclass run directory")
            } else {
                Error::io(&cfg_path, e)
            }
        })?;
        let config: RunConfig = serde_json::from_str(&text)
            .map_err(|e| run_err(dir, format!("config.json is not valid: {e}")))?;
        limits::check_config(&config).map_err(|e| run_err(&cfg_path, e.to_string()))?;
        let labels_path = dir.join(files::LABELS);
        if labels_path.exists() {
            let labels = read_labels(&labels_path)?;
            if labels != config.labels {
                return Err(run_err(
                    dir,
                    format!(
                        "labels.txt has {} labels {:?} but config.json has {} {:?}",
                        labels.len(),
                        labels,
                        config.labels.len(),
                        config.labels
                    ),
                ));
            }
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Refuses a run of another task, naming both: a classification run and a regression run
    /// are never used in each other's place.
    ///
    /// # Errors
    /// [`Error::Run`] `"is a regression run (config.json task), not a classification run"`.
    pub fn check_task(&self, want: Task) -> Result<()> {
        if self.config.task == want {
            return Ok(());
        }
        let article = |t: Task| match t {
            Task::Classification => "a classification",
            Task::Regression => "a regression",
        };
        Err(run_err(
            &self.dir,
            format!(
                "is {} run (config.json task \"{}\"), not {} run; use it with a command for {} \
                 runs, or train a {} run",
                article(self.config.task),
                self.config.task,
                article(want),
                self.config.task,
                want
            ),
        ))
    }

    /// Path of the best model.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(files::MODEL)
    }

    /// Metadata stored inside each saved model file.
    pub fn model_metadata(&self) -> BTreeMap<String, String> {
        let c = &self.config;
        let mut m = BTreeMap::new();
        m.insert("producer".into(), "nanoclass".into());
        m.insert("nanoclass_version".into(), c.nanoclass_version.clone());
        m.insert("task".into(), c.task.name().into());
        m.insert("arch".into(), c.arch.name().into());
        m.insert(
            "labels".into(),
            serde_json::to_string(&c.labels).unwrap_or_default(),
        );
        m.insert(
            "eval_preset".into(),
            serde_json::to_string(&c.eval_preset).unwrap_or_default(),
        );
        m
    }

    /// Reads `metrics.jsonl`.
    pub fn read_metrics(&self) -> Result<Vec<EpochMetrics>> {
        let path = self.dir.join(files::METRICS);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(&path, e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| run_err(&self.dir, format!("metrics.jsonl: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::presets::presets;

    /// A run directory with a two-class config and no model, for tests of what reads and
    /// writes run files.
    pub(crate) fn tiny_run(dir: &Path, task: Task) -> Run {
        let arch = Arch::EfficientnetLite0;
        let (train_preset, eval_preset) = presets(arch.normalization(), arch.input_size());
        let config = RunConfig {
            nanoclass_version: env!("CARGO_PKG_VERSION").to_string(),
            task,
            arch,
            labels: vec!["a".into(), "b".into()],
            eval_preset,
            train_preset,
            data: dir.to_path_buf(),
            weights: WeightsRecord {
                spec: "none".into(),
                path: None,
            },
            hyper: Hyperparams::default(),
            split: SplitRecord::NoValidation,
            device: DeviceChoice::Cpu,
            precision: TrainPrecision::Fp16,
        };
        Run::create(&dir.join("run"), config).unwrap()
    }

    #[test]
    fn a_config_round_trips_with_its_hyperparameters_flat() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tiny_run(tmp.path(), Task::Classification);
        let text = std::fs::read_to_string(run.dir.join(files::CONFIG)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["mode"], "frozen");
        assert_eq!(v["epochs"], 30);
        assert!(v.get("hyper").is_none());
        assert_eq!(Run::open(&run.dir).unwrap().config, run.config);
    }
}
