//! What a training run is asked to do ([`TrainOptions`], and those of a run to resume), what it reports while it runs ([`Event`]) and at its end ([`TrainSummary`]).

use super::*;

/// Everything a training run needs: what to train on, which backbone, where to write, and how
/// ([`Hyperparams`]).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Dataset root (ImageFolder or DLI layout; for regression `<category>/<x>_<y>_<uuid>.jpg`).
    pub data: PathBuf,
    /// Classification (one label per image) or regression (one point per image).
    pub task: Task,
    /// Backbone.
    pub arch: Arch,
    /// Starting weights: a registry name, a file path, a run directory, or `none` (random
    /// init); see [`crate::model::start::initial_net`].
    pub weights: String,
    /// How it trains.
    pub hyper: Hyperparams,
    /// Run directory to write.
    pub out: PathBuf,
    /// Continue the run in `out` from its last committed epoch (see [`resume_options`]).
    pub resume: bool,
    /// Replace a run already in `out` (its models, metrics, checkpoint and eval results).
    pub force: bool,
    /// Root of the on-disk feature cache ([`cache::default_dir`]); None disables it.
    pub feature_cache: Option<PathBuf>,
    /// Cancellation: when the flag becomes true, training stops before its next optimizer step
    /// (and after feature extraction) with [`Error::Train`] saying so. Epochs already committed
    /// stay saved, so a run stopped after its first epoch is a usable model.
    pub stop: Option<Arc<AtomicBool>>,
    /// Engine of forward-only work (the backbone's features in the frozen, finetune and instant
    /// modes).
    pub engine: EngineChoice,
    /// Where burn trains: the CPU or a GPU ([`DeviceChoice`]).
    pub device: DeviceChoice,
    /// The float type of the steps through the backbone (`full`, `finetune` after its head
    /// epochs, `partial`): fp32, or fp16/bf16 mixed precision with f32 weights
    /// ([`crate::train::precision`]). fp32 in [`TrainOptions::new`]; the CLI and the studio
    /// take `$NANOCLASS_TRAIN_PRECISION` ([`TrainPrecision::default_for`]).
    pub precision: TrainPrecision,
}

impl TrainOptions {
    /// Classification of `data` into `out` with EfficientNet-Lite0 and its ImageNet weights
    /// (installed with pip, so it trains offline), the default [`Hyperparams`] (frozen mode),
    /// the default feature cache and the engine of `$NANOCLASS_ENGINE`.
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> TrainOptions {
        let arch = Arch::EfficientnetLite0;
        TrainOptions {
            data: data.into(),
            task: Task::Classification,
            arch,
            weights: arch.name().to_string(),
            hyper: Hyperparams::default(),
            out: out.into(),
            resume: false,
            force: false,
            feature_cache: cache::default_dir(),
            stop: None,
            engine: EngineChoice::from_env(),
            device: DeviceChoice::from_env(),
            precision: TrainPrecision::Fp32,
        }
    }

    /// Checks the settings before any work.
    ///
    /// # Errors
    /// [`Error::Train`] with the first setting out of range ([`Hyperparams::validate`]), or a
    /// mode that does not fit the task.
    pub fn validate(&self) -> Result<()> {
        self.hyper
            .validate()
            .map_err(|e| Error::Train(e.to_string()))?;
        if self.hyper.mode == Mode::Instant && self.task != Task::Classification {
            return Err(Error::Train(
                "instant mode fits a classification head; train regression in the frozen, full \
                 or finetune mode"
                    .into(),
            ));
        }
        if self.precision != TrainPrecision::Fp32 && !TrainPrecision::applies_to(self.hyper.mode) {
            return Err(Error::Train(format!(
                "--precision {} applies to the steps through the backbone (the full, finetune and \
                 partial modes); the {} mode trains its head in fp32",
                self.precision, self.hyper.mode
            )));
        }
        Ok(())
    }
}

/// What the training loop reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// A line for the user.
    Info(String),
    /// A warning for the user.
    Warn(String),
    /// Feature extraction progress: `done` of `total` images.
    Features {
        /// Images embedded so far.
        done: usize,
        /// Images to embed.
        total: usize,
    },
    /// A phase begins.
    Phase {
        /// `head`, `full` or `instant`.
        phase: &'static str,
        /// Epochs in the phase.
        epochs: usize,
        /// Optimizer steps per epoch (0 for a fit in one go).
        steps: usize,
    },
    /// One optimizer step finished.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step in the epoch.
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// Running mean training loss of the epoch.
        loss: f64,
        /// Running training top-1 of the epoch (classification).
        top1: Option<f64>,
        /// Running mean training point error of the epoch, in pixels of the model input
        /// (regression).
        error_px: Option<f64>,
    },
    /// An epoch finished (after validation) and was committed.
    Epoch(EpochMetrics),
}

/// The outcome of a training run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Run directory.
    pub run_dir: PathBuf,
    /// Best held-out top-1 (None without a held-out set, and for regression).
    pub best_val_top1: Option<f64>,
    /// Regression: lowest mean held-out point error, in pixels of the model input (None without
    /// a held-out set, and for classification).
    pub best_val_error_px: Option<f64>,
    /// Epoch of the best model (1-based).
    pub best_epoch: usize,
    /// Files that could not be decoded.
    pub skipped: Vec<Skipped>,
    /// Training images used.
    pub train_images: usize,
    /// Held-out images used.
    pub val_images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The run's body pass, epochs and wall time, calibration included: the rates
    /// [`crate::train::estimate`] keeps for this machine.
    pub measured: crate::train::estimate::Measured,
}

/// Everything needed to continue the run in `run_dir`: its `config.json` settings, with
/// `epochs` raised when given (to train longer than first planned).
///
/// # Errors
/// `run_dir` is a file, holds no run, or no committed epoch ([`checkpoint::load_state`]).
pub fn resume_options(run_dir: &Path, epochs: Option<usize>) -> Result<TrainOptions> {
    checkpoint::load_state(run_dir)?;
    let c = Run::open(run_dir)?.config;
    let mut hyper = c.hyper;
    if let Some(e) = epochs {
        hyper.epochs = e;
    }
    if let SplitRecord::Generated { val_fraction, .. } = c.split {
        hyper.val_fraction = val_fraction;
    }
    Ok(TrainOptions {
        data: c.data,
        task: c.task,
        arch: c.arch,
        weights: c.weights.spec,
        hyper,
        out: run_dir.to_path_buf(),
        resume: true,
        force: false,
        feature_cache: cache::default_dir(),
        stop: None,
        engine: EngineChoice::from_env(),
        device: DeviceChoice::from_env(),
        precision: c.precision,
    })
}
