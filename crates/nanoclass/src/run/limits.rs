//! The allowed range of every number in a run's `config.json` that sizes a buffer, a tensor or a
//! loop later on (the model input side, the resize target, the batch size, the epoch counts, the
//! label count) or that the transforms divide by or take the logarithm of. `Run::open` checks
//! them before anything else reads the file, and `Run::create` before a run is written, so a
//! hand-edited or damaged file gives one clear error naming the field, its value and the range,
//! never an allocation of a forged size.

use std::fmt;

use super::RunConfig;
use crate::data::decode::MAX_ASPECT_RATIO;
use crate::data::presets::{ColorJitter, EvalPreset, Normalization, TrainPreset};

/// The smallest model input side, in pixels: 32. Every backbone (ResNet-18/34/50,
/// EfficientNet-Lite0) reduces its input 32-fold, so a smaller input has no spatial extent left
/// at the last stage.
pub const MIN_INPUT_SIDE: u32 = 32;

/// The largest model input side and resize target, in pixels: 1024, 4.6 times the 224 pixels
/// every backbone here was trained at. The eval transform resizes an image's shorter side to
/// this before cropping: at 1024 a 100:1 image ([`MAX_ASPECT_RATIO`]) becomes 102 400 x 1024
/// pixels (315 MB).
pub const MAX_INPUT_SIDE: u32 = 1024;

/// The most labels (classes, or regression categories) a run may have: 100 000, above
/// ImageNet-21k's 21 841 classes. The head has one output per class (two per category).
pub const MAX_LABELS: usize = 100_000;

/// The largest batch: 1024 images, `[1024, 3, 224, 224]` f32 is 617 MB for the input alone.
pub const MAX_BATCH_SIZE: usize = 1024;

/// The most epochs of one phase: 10 000 (the DLI course trains for 30; torchvision's ImageNet
/// recipe for 90).
pub const MAX_EPOCHS: usize = 10_000;

/// One setting of `config.json` outside its allowed range.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfRange {
    /// The field, as a JSON path (`eval_preset.crop`).
    pub field: String,
    /// The value found.
    pub value: String,
    /// The allowed range (`32..=1024`) and what the field is.
    pub allowed: String,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} is outside the allowed range {}",
            self.field, self.value, self.allowed
        )
    }
}

type Check = Result<(), OutOfRange>;

fn out_of_range(field: &str, value: impl fmt::Display, allowed: impl Into<String>) -> OutOfRange {
    OutOfRange {
        field: field.to_owned(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

fn int_in<T: PartialOrd + fmt::Display + Copy>(
    field: &str,
    value: T,
    (low, high): (T, T),
    what: &str,
) -> Check {
    if value >= low && value <= high {
        return Ok(());
    }
    Err(out_of_range(
        field,
        value,
        format!("{low}..={high} ({what})"),
    ))
}

/// `low <= value <= high` and finite; `low_open` makes the lower end exclusive.
fn real_in(field: &str, value: f64, low: f64, low_open: bool, high: f64, what: &str) -> Check {
    let above = if low_open { value > low } else { value >= low };
    if value.is_finite() && above && value <= high {
        return Ok(());
    }
    let bracket = if low_open { "(" } else { "[" };
    let high = if high.is_infinite() {
        "inf)".to_owned()
    } else {
        format!("{high}]")
    };
    Err(out_of_range(
        field,
        value,
        format!("{bracket}{low}, {high} ({what})"),
    ))
}

fn check_norm(prefix: &str, norm: &Normalization) -> Check {
    for c in 0..3 {
        let mean = norm.mean[c];
        if !mean.is_finite() {
            return Err(out_of_range(
                &format!("{prefix}.norm.mean[{c}]"),
                mean,
                "finite numbers (channel mean of pixel / 255)",
            ));
        }
        real_in(
            &format!("{prefix}.norm.std[{c}]"),
            f64::from(norm.std[c]),
            0.0,
            true,
            f64::INFINITY,
            "channel standard deviation of pixel / 255",
        )?;
    }
    Ok(())
}

/// Checks the evaluation transform: `crop` in [`MIN_INPUT_SIDE`]..=[`MAX_INPUT_SIDE`], `resize`
/// in 1..=[`MAX_INPUT_SIDE`], finite means and positive finite standard deviations.
pub fn check_eval_preset(preset: &EvalPreset) -> Check {
    int_in(
        "eval_preset.crop",
        preset.crop,
        (MIN_INPUT_SIDE, MAX_INPUT_SIDE),
        "the side of the square model input, in pixels",
    )?;
    int_in(
        "eval_preset.resize",
        preset.resize,
        (1, MAX_INPUT_SIDE),
        "the shorter side before the centre crop, in pixels",
    )?;
    check_norm("eval_preset", &preset.norm)
}

fn check_jitter(jitter: &ColorJitter) -> Check {
    for (name, value) in [
        ("brightness", jitter.brightness),
        ("contrast", jitter.contrast),
        ("saturation", jitter.saturation),
    ] {
        real_in(
            &format!("train_preset.jitter.{name}"),
            f64::from(value),
            0.0,
            false,
            f64::INFINITY,
            "colour jitter strength",
        )?;
    }
    real_in(
        "train_preset.jitter.hue",
        f64::from(jitter.hue),
        0.0,
        false,
        0.5,
        "hue jitter, a fraction of the hue circle",
    )
}

/// Checks the training transform: `crop` as for [`check_eval_preset`]; `scale` an area fraction
/// range within (0, 1]; `ratio` an aspect ratio range within [1/100, 100] (the decoder's
/// [`MAX_ASPECT_RATIO`]), each `[low, high]` with `low <= high`; `hflip` a probability; the
/// colour jitter strengths; the normalisation.
pub fn check_train_preset(preset: &TrainPreset) -> Check {
    int_in(
        "train_preset.crop",
        preset.crop,
        (MIN_INPUT_SIDE, MAX_INPUT_SIDE),
        "the side of the square model input, in pixels",
    )?;
    for (i, s) in preset.scale.iter().enumerate() {
        real_in(
            &format!("train_preset.scale[{i}]"),
            f64::from(*s),
            0.0,
            true,
            1.0,
            "fraction of the image area",
        )?;
    }
    let widest = f64::from(MAX_ASPECT_RATIO);
    for (i, r) in preset.ratio.iter().enumerate() {
        real_in(
            &format!("train_preset.ratio[{i}]"),
            f64::from(*r),
            1.0 / widest,
            false,
            widest,
            "aspect ratio width / height",
        )?;
    }
    for (name, pair) in [("scale", preset.scale), ("ratio", preset.ratio)] {
        if pair[0] > pair[1] {
            return Err(out_of_range(
                &format!("train_preset.{name}"),
                format!("[{}, {}]", pair[0], pair[1]),
                "[low, high] with low <= high",
            ));
        }
    }
    real_in(
        "train_preset.hflip",
        f64::from(preset.hflip),
        0.0,
        false,
        1.0,
        "probability of a left-right mirror",
    )?;
    check_jitter(&preset.jitter)?;
    check_norm("train_preset", &preset.norm)
}

/// Checks every bounded number of `config`: the two presets ([`check_eval_preset`],
/// [`check_train_preset`]), the label count (1..=[`MAX_LABELS`]), `batch_size`
/// (2..=[`MAX_BATCH_SIZE`]; BatchNorm needs two images), `epochs` (1..=[`MAX_EPOCHS`]),
/// `head_epochs` (0..=[`MAX_EPOCHS`]), and the optimizer numbers (`lr` and `body_lr_factor`
/// positive, `momentum` in [0, 1), `weight_decay` >= 0, all finite).
pub fn check_config(config: &RunConfig) -> Check {
    int_in(
        "labels",
        config.labels.len(),
        (1, MAX_LABELS),
        "number of labels",
    )
    .map_err(|e| OutOfRange {
        value: format!("a list of {}", e.value),
        ..e
    })?;
    check_eval_preset(&config.eval_preset)?;
    check_train_preset(&config.train_preset)?;
    int_in(
        "batch_size",
        config.hyper.batch_size,
        (2, MAX_BATCH_SIZE),
        "images per batch",
    )?;
    int_in(
        "epochs",
        config.hyper.epochs,
        (1, MAX_EPOCHS),
        "epochs of training",
    )?;
    int_in(
        "head_epochs",
        config.hyper.head_epochs,
        (0, MAX_EPOCHS),
        "head-only epochs",
    )?;
    real_in(
        "lr",
        config.hyper.lr,
        0.0,
        true,
        f64::INFINITY,
        "learning rate",
    )?;
    real_in(
        "body_lr_factor",
        config.hyper.body_lr_factor,
        0.0,
        true,
        f64::INFINITY,
        "backbone learning rate / lr",
    )?;
    real_in(
        "weight_decay",
        config.hyper.weight_decay,
        0.0,
        false,
        f64::INFINITY,
        "L2 weight decay",
    )?;
    if !(0.0..1.0).contains(&config.hyper.momentum) {
        return Err(out_of_range(
            "momentum",
            config.hyper.momentum,
            "[0, 1) (SGD momentum)",
        ));
    }
    Ok(())
}
