//! The hyperparameters of a training run: one [`Hyperparams`] with the defaults of each mode,
//! checked by [`Hyperparams::validate`], stored in the run's `config.json` and overridden by the
//! command line and the studio.

use serde::{Deserialize, Serialize};

use crate::data::presets::Augmentation;
use crate::instant::HeadChoice;

/// How the backbone is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Backbone frozen in eval mode; its features are computed once per image and cached, and
    /// only the head is trained.
    Frozen,
    /// Every layer trained from the start (the course's recipe).
    Full,
    /// The head first on the frozen backbone, then every layer with a lower backbone learning
    /// rate.
    Finetune,
    /// No gradient training: a head fitted in one go on the frozen features (class prototypes
    /// or a linear head, see [`crate::instant`]).
    Instant,
    /// The last residual blocks and the head train on cached activations of the frozen body
    /// for several augmented views per image (see [`crate::train::phases::partial`]).
    Partial,
}

impl Mode {
    /// Every mode, in the order the command line lists them.
    pub const ALL: [Mode; 5] = [
        Mode::Frozen,
        Mode::Full,
        Mode::Finetune,
        Mode::Instant,
        Mode::Partial,
    ];

    /// `frozen`, `full`, `finetune` or `instant`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Frozen => "frozen",
            Mode::Full => "full",
            Mode::Finetune => "finetune",
            Mode::Instant => "instant",
            Mode::Partial => "partial",
        }
    }

    /// Parses a mode name.
    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name.trim())
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Optimizer choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba), betas (0.9, 0.999), eps 1e-8 (torch defaults).
    Adam,
    /// SGD with momentum.
    Sgd,
}

impl OptimizerKind {
    /// The default learning rate: Adam 1e-3 (the course's), SGD 1e-2.
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Adam => 1e-3,
            OptimizerKind::Sgd => 1e-2,
        }
    }
}

/// Learning-rate schedule over the epochs of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine annealing from `lr` to 0 over the phase's steps (Loshchilov & Hutter, SGDR).
    Cosine,
    /// Multiply by 0.1 every `ceil(epochs / 3)` epochs (torchvision's StepLR recipe, scaled).
    Step,
    /// Constant learning rate.
    None,
}

/// Most epochs of a `partial` run; early stopping ([`PARTIAL_PATIENCE`]) usually ends it
/// sooner. Measured on clocks (docs/training.md, "Partial fine-tuning").
pub const PARTIAL_EPOCHS: usize = 6;

/// Adam's learning rate of `partial` runs (the head; trained blocks at `body_lr_factor` of it).
/// Measured on clocks with EfficientNet-Lite0's default cut (the head convolution and the
/// head, [`crate::model::cut::Cut::default_for`]), 6 epochs, cosine schedule: held-out top-1
/// 0.9750 at epoch 6 with 2e-3, 0.9667 (its best) with 1e-3 (docs/training.md).
pub const PARTIAL_LR: f64 = 2e-3;

/// Early-stopping patience of `partial` runs, in epochs.
pub const PARTIAL_PATIENCE: usize = 2;

/// Most epochs of one phase.
pub const MAX_EPOCHS: usize = 10_000;
/// Largest batch (images per optimizer step).
pub const MAX_BATCH: usize = 4096;

/// Every setting of how a run trains. `Default` is [`Hyperparams::for_mode`] of
/// [`Mode::Frozen`]; serialised flat into the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparams {
    /// Training mode.
    pub mode: Mode,
    /// Epochs (`finetune`: the full-network epochs after the head epochs).
    pub epochs: usize,
    /// Head-only epochs before the full phase (`finetune` only; 0 otherwise).
    pub head_epochs: usize,
    /// Images per optimizer step (at least 2: BatchNorm needs two values per channel).
    pub batch_size: usize,
    /// Learning rate of the head (and of the whole network in `full`).
    pub lr: f64,
    /// Backbone learning rate = `lr * body_lr_factor` in the `finetune` full phase.
    pub body_lr_factor: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// SGD momentum, in `[0, 1)`.
    pub momentum: f64,
    /// L2 weight decay, `>= 0`.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Seed for the split, shuffling, augmentation and head initialisation.
    pub seed: u64,
    /// Fraction of each class held out when the dataset has no `val/` folder, in `[0, 1)`.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f32,
    /// `instant` mode: which head to fit.
    #[serde(default)]
    pub instant_head: HeadChoice,
    /// `partial` mode: residual blocks trained, counted from the end of the backbone; None is
    /// the architecture's default ([`crate::model::cut::Cut::default_for`]).
    #[serde(default)]
    pub train_blocks: Option<usize>,
    /// `partial` mode: views cached per training image (view 0 the eval view, the others
    /// drawn with the train preset), 1 to [`MAX_VIEWS`].
    #[serde(default = "default_views")]
    pub views: usize,
    /// The user's augmentation (crop scale, colour jitter, flip), replacing the train preset's;
    /// None keeps the mode's own ([`Augmentation::PARTIAL`] in `partial`, the course's train
    /// preset otherwise). The train preset stored in the run is the one used.
    #[serde(default)]
    pub augmentation: Option<Augmentation>,
    /// Early stopping: end the run after this many epochs without a lower held-out loss (mean
    /// point error for regression), keeping the best model; None trains every epoch.
    #[serde(default)]
    pub patience: Option<usize>,
}

/// Most views per image in `partial` mode.
pub const MAX_VIEWS: usize = 64;

fn default_views() -> usize {
    4
}

fn default_val_fraction() -> f32 {
    0.2
}

impl Default for Hyperparams {
    fn default() -> Self {
        Hyperparams::for_mode(Mode::Frozen)
    }
}

/// Most epochs of a frozen point-regression run: the head learns from a few dozen images, so
/// an epoch is one or two optimizer steps, and early stopping ([`REGRESSION_PATIENCE`]) on the
/// held-out point error ends it. With 30 epochs (30 steps on 20 images) the held-out error was
/// twice what 300 gave.
pub const REGRESSION_FROZEN_EPOCHS: usize = 300;

/// Epochs without a lower held-out loss after which a regression run stops (keeping the best).
pub const REGRESSION_PATIENCE: usize = 30;

impl Hyperparams {
    /// The defaults of `mode` for `task`: [`Hyperparams::for_mode`], except that a regression
    /// run stops by its held-out error instead of after a fixed count: frozen trains up to
    /// [`REGRESSION_FROZEN_EPOCHS`], every mode with early stopping after
    /// [`REGRESSION_PATIENCE`] epochs without a lower held-out loss (the full network's longer
    /// epochs: after 3).
    pub fn for_task(task: crate::run::Task, mode: Mode) -> Hyperparams {
        let mut h = Hyperparams::for_mode(mode);
        if task == crate::run::Task::Regression {
            if mode == Mode::Frozen {
                h.epochs = REGRESSION_FROZEN_EPOCHS;
                h.patience = Some(REGRESSION_PATIENCE);
            } else {
                h.patience = Some(3);
            }
        }
        h
    }

    /// The defaults of `mode`: epochs 30 frozen, 10 full, 5 finetune (after 10 head epochs),
    /// 1 instant, [`PARTIAL_EPOCHS`] partial; batch 16 (partial 32); Adam at 1e-3 (the
    /// course's; partial [`PARTIAL_LR`]) with a cosine schedule; backbone at a
    /// tenth of the head's rate in finetune; SGD momentum 0.9 when SGD is chosen; no weight
    /// decay; seed 0; 20 % of each class held out when there is no `val/` folder.
    pub fn for_mode(mode: Mode) -> Hyperparams {
        Hyperparams {
            mode,
            epochs: match mode {
                Mode::Frozen => 30,
                Mode::Full => 10,
                Mode::Finetune => 5,
                Mode::Instant => 1,
                Mode::Partial => PARTIAL_EPOCHS,
            },
            head_epochs: if mode == Mode::Finetune { 10 } else { 0 },
            batch_size: if mode == Mode::Partial { 32 } else { 16 },
            lr: if mode == Mode::Partial {
                PARTIAL_LR
            } else {
                OptimizerKind::Adam.default_lr()
            },
            body_lr_factor: 0.1,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::Cosine,
            seed: 0,
            val_fraction: default_val_fraction(),
            instant_head: HeadChoice::Auto,
            train_blocks: None,
            views: default_views(),
            augmentation: None,
            patience: (mode == Mode::Partial).then_some(PARTIAL_PATIENCE),
        }
    }

    /// The augmentation this run trains with: the user's, else the mode's own (None: the
    /// course's train preset as it is).
    pub fn augmentation(&self) -> Option<Augmentation> {
        match (self.augmentation, self.mode) {
            (Some(a), _) => Some(a),
            (None, Mode::Partial) => Some(Augmentation::PARTIAL),
            (None, _) => None,
        }
    }

    /// Epochs of all phases together (finetune: head epochs plus full epochs).
    pub fn planned_epochs(&self) -> usize {
        match self.mode {
            Mode::Finetune => self.head_epochs + self.epochs,
            Mode::Frozen | Mode::Full | Mode::Partial => self.epochs,
            Mode::Instant => 1,
        }
    }

    /// Checks every range.
    ///
    /// # Errors
    /// The first setting out of its range, with the range and the value.
    pub fn validate(&self) -> Result<(), HyperError> {
        let h = self;
        if !(2..=MAX_BATCH).contains(&h.batch_size) {
            return Err(HyperError::BatchSize(h.batch_size));
        }
        if !(1..=MAX_EPOCHS).contains(&h.epochs) {
            return Err(HyperError::Epochs(h.epochs));
        }
        if h.head_epochs > MAX_EPOCHS {
            return Err(HyperError::HeadEpochs(h.head_epochs));
        }
        if !(h.lr.is_finite() && h.lr > 0.0) {
            return Err(HyperError::LearningRate(h.lr));
        }
        if !(h.body_lr_factor.is_finite() && h.body_lr_factor > 0.0) {
            return Err(HyperError::BodyLrFactor(h.body_lr_factor));
        }
        if !(0.0..1.0).contains(&h.momentum) {
            return Err(HyperError::Momentum(h.momentum));
        }
        if !(h.weight_decay.is_finite() && h.weight_decay >= 0.0) {
            return Err(HyperError::WeightDecay(h.weight_decay));
        }
        if !(0.0..1.0).contains(&h.val_fraction) {
            return Err(HyperError::ValFraction(h.val_fraction));
        }
        if !(1..=MAX_VIEWS).contains(&h.views) {
            return Err(HyperError::Views(h.views));
        }
        if h.patience == Some(0) {
            return Err(HyperError::Patience(0));
        }
        if let Some(a) = &h.augmentation {
            a.validate()
                .map_err(|e| HyperError::Augmentation(e.to_string()))?;
        }
        Ok(())
    }
}

/// A hyperparameter out of its range (the value it had).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HyperError {
    /// Batch size below 2 or above [`MAX_BATCH`].
    #[error(
        "the batch size must be between 2 and {MAX_BATCH} (BatchNorm needs two images per batch), got {0}"
    )]
    BatchSize(usize),
    /// Epochs 0 or above [`MAX_EPOCHS`].
    #[error("the number of epochs must be between 1 and {MAX_EPOCHS}, got {0}")]
    Epochs(usize),
    /// Head epochs above [`MAX_EPOCHS`].
    #[error("the number of head epochs must be at most {MAX_EPOCHS}, got {0}")]
    HeadEpochs(usize),
    /// Learning rate not a positive number.
    #[error("the learning rate must be a positive number, got {0}")]
    LearningRate(f64),
    /// Backbone learning-rate factor not a positive number.
    #[error("the backbone's learning-rate factor must be a positive number, got {0}")]
    BodyLrFactor(f64),
    /// Momentum not in `[0, 1)`.
    #[error("the momentum must be in [0, 1), got {0}")]
    Momentum(f64),
    /// Weight decay negative or not a number.
    #[error("the weight decay must be a number >= 0, got {0}")]
    WeightDecay(f64),
    /// Held-out fraction not in `[0, 1)`.
    #[error("the held-out fraction must be in [0, 1), got {0}")]
    ValFraction(f32),
    /// Views per image 0 or above [`MAX_VIEWS`].
    #[error("the number of views per image must be between 1 and {MAX_VIEWS}, got {0}")]
    Views(usize),
    /// Patience 0.
    #[error("the patience must be at least 1 epoch, got {0}")]
    Patience(usize),
    /// Augmentation out of range (the message names the setting).
    #[error("augmentation: {0}")]
    Augmentation(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_its_defaults_and_they_validate() {
        let e: Vec<usize> = Mode::ALL
            .iter()
            .map(|&m| Hyperparams::for_mode(m).epochs)
            .collect();
        assert_eq!(e, vec![30, 10, 5, 1, PARTIAL_EPOCHS]);
        let p = Hyperparams::for_mode(Mode::Partial);
        assert_eq!(
            (p.batch_size, p.patience, p.views, p.lr),
            (32, Some(PARTIAL_PATIENCE), 4, PARTIAL_LR)
        );
        assert_eq!(Hyperparams::for_mode(Mode::Full).lr, 1e-3);
        assert_eq!(p.augmentation(), Some(Augmentation::PARTIAL));
        assert_eq!(Hyperparams::for_mode(Mode::Full).augmentation(), None);
        assert_eq!(Hyperparams::for_mode(Mode::Finetune).planned_epochs(), 15);
        assert_eq!(Hyperparams::default(), Hyperparams::for_mode(Mode::Frozen));
        for m in Mode::ALL {
            Hyperparams::for_mode(m).validate().unwrap();
            assert_eq!(Mode::parse(m.name()), Some(m));
        }
    }

    #[test]
    fn out_of_range_settings_are_named_with_their_value() {
        let base = Hyperparams::default();
        let cases: Vec<(Hyperparams, HyperError, &str)> = vec![
            (
                Hyperparams {
                    batch_size: 1,
                    ..base.clone()
                },
                HyperError::BatchSize(1),
                "batch size must be between 2",
            ),
            (
                Hyperparams {
                    epochs: 0,
                    ..base.clone()
                },
                HyperError::Epochs(0),
                "epochs must be between 1",
            ),
            (
                Hyperparams {
                    lr: f64::NAN,
                    ..base.clone()
                },
                HyperError::LearningRate(f64::NAN),
                "learning rate",
            ),
            (
                Hyperparams {
                    momentum: 1.0,
                    ..base.clone()
                },
                HyperError::Momentum(1.0),
                "momentum must be in [0, 1), got 1",
            ),
            (
                Hyperparams {
                    val_fraction: 1.0,
                    ..base.clone()
                },
                HyperError::ValFraction(1.0),
                "held-out fraction",
            ),
        ];
        for (h, want, text) in cases {
            let err = h.validate().unwrap_err();
            // NaN != NaN: compare the variant by its message
            assert_eq!(err.to_string(), want.to_string());
            assert!(err.to_string().contains(text), "{err}");
            assert!(
                !err.to_string().contains("--"),
                "worded for no front end: {err}"
            );
        }
    }

    #[test]
    fn a_config_without_the_newer_fields_reads_with_their_defaults() {
        let json = r#"{"mode":"full","epochs":3,"head_epochs":0,"batch_size":8,"lr":0.01,
            "body_lr_factor":0.1,"optimizer":"sgd","momentum":0.9,"weight_decay":0.0,
            "schedule":"step","seed":7}"#;
        let h: Hyperparams = serde_json::from_str(json).unwrap();
        assert_eq!(h.val_fraction, 0.2);
        assert_eq!(h.instant_head, HeadChoice::Auto);
        assert_eq!((h.mode, h.epochs, h.seed), (Mode::Full, 3, 7));
    }
}
