//! How long a training run will take, said before it starts (the studio's train form).
//!
//! A run's time is three parts:
//!
//! - the **body pass**: the frozen backbone over every image (frozen, instant and finetune's
//!   head phase: its features) or every (image, view) (partial: the activations at the cut),
//!   for what is not cached yet; `views x body_seconds_per_view`;
//! - the **epochs**: `epochs x ceil(views per epoch / batch) x seconds_per_step`, a step
//!   including its share of the epoch's held-out scoring and checkpoint (early stopping may
//!   end sooner: the estimate is for every planned epoch);
//! - **overhead**: start-up, scanning, calibration.
//!
//! The rates are this machine's own when a run with the same backbone, mode (and cut),
//! device and batch size finished here before: every run records what it measured in
//! `timings.json` in the feature cache folder ([`record`]). Otherwise they are the
//! [`reference`] figures, measured on the development machine (2 x86 cores, release build,
//! ONNX Runtime 1.31 for the body pass) and said to be such.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::folder::{scan_image_folder, scan_regression_folder};
use crate::data::presets::views_decode_min_side;
use crate::fs::write_atomic;
use crate::infer::cache::FeatureCache;
use crate::infer::device::{DeviceChoice, default_device};
use crate::model::registry::sha256_file;
use crate::model::start::weights_path;
use crate::model::{Arch, Net};
use crate::run::Task;
use crate::train::activations::{self, ActivationCache, ActivationSpec};
use crate::train::precision::TrainPrecision;
use crate::train::{Mode, TrainOptions, partial_cut, run_presets};
use crate::{Error, Result};

/// The file in the feature cache folder.
pub const FILE: &str = "timings.json";

/// Seconds per unit of each part of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Seconds per image (or view) through the frozen body, decoding and preprocessing
    /// included.
    pub body_seconds_per_view: f64,
    /// Seconds per optimizer step, the epoch's held-out scoring and checkpoint included.
    pub seconds_per_step: f64,
    /// Seconds outside the body pass and the epochs: start-up, scanning, calibration.
    pub overhead_seconds: f64,
}

/// Where an estimate's rates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RatesFrom {
    /// An earlier run on this machine with the same key.
    ThisMachine,
    /// The development machine's figures ([`reference`]).
    Reference,
}

/// What rates depend on: the backbone, the mode (and partial's cut), the device, the training
/// precision and the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateKey {
    /// Backbone.
    pub arch: Arch,
    /// Training mode.
    pub mode: Mode,
    /// Partial fine-tuning's trained blocks (None for other modes).
    pub train_blocks: Option<usize>,
    /// Where the steps run.
    pub device: DeviceChoice,
    /// The steps' float type.
    pub precision: TrainPrecision,
    /// Images (or views) per step.
    pub batch_size: usize,
}

impl RateKey {
    /// The key of a training job.
    pub fn of(opts: &TrainOptions) -> RateKey {
        RateKey {
            arch: opts.arch,
            mode: opts.hyper.mode,
            train_blocks: partial_cut(opts).ok().flatten().map(|c| c.blocks),
            device: opts.device,
            precision: opts.precision,
            batch_size: opts.hyper.batch_size,
        }
    }

    fn name(&self) -> String {
        let cut = self
            .train_blocks
            .map(|k| format!(" train-blocks {k}"))
            .unwrap_or_default();
        // fp32 keys keep the names of the rates recorded before precision was a choice.
        let precision = match self.precision {
            TrainPrecision::Fp32 => String::new(),
            p => format!(" {p}"),
        };
        format!(
            "{} {}{cut} {}{precision} batch {}",
            self.arch,
            self.mode,
            self.device.name(),
            self.batch_size
        )
    }
}

/// A run to estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The rates' key.
    pub key: RateKey,
    /// Epochs planned (finetune: head and full epochs together).
    pub epochs: usize,
    /// Training images.
    pub train_images: usize,
    /// Held-out images.
    pub val_images: usize,
    /// Views per training image an epoch goes through (partial's `--views`; 1 otherwise).
    pub views: usize,
    /// Body-pass entries already cached (features, or partial's activations).
    pub cached: usize,
}

/// The expected time of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Expected wall time in seconds, every planned epoch included.
    pub seconds: f64,
    /// Body-pass entries to compute (images, or partial's views).
    pub body_views: usize,
    /// Of which already cached (not counted in `body_views`).
    pub cached: usize,
    /// Optimizer steps in all.
    pub steps: usize,
    /// The rates used.
    pub rates: Rates,
    /// Where they come from.
    pub from: RatesFrom,
}

/// Body-pass entries a run of `mode` needs: every training and held-out image once (partial:
/// `views` per training image), none when nothing is cached ahead of training (full).
pub fn body_entries(mode: Mode, train: usize, val: usize, views: usize) -> usize {
    match mode {
        Mode::Full => 0,
        Mode::Partial => train * views + val,
        Mode::Frozen | Mode::Instant | Mode::Finetune => train + val,
    }
}

/// Optimizer steps of `epochs` epochs over `train` images with `views` each.
pub fn steps(mode: Mode, epochs: usize, train: usize, views: usize, batch: usize) -> usize {
    let per_epoch = match mode {
        Mode::Instant => 0,
        Mode::Partial => (train * views).div_ceil(batch.max(1)),
        _ => train.div_ceil(batch.max(1)),
    };
    epochs * per_epoch
}

/// The plan of the training job `opts`, without training: its images as the dataset scan
/// finds them (held-out: the `val/` folder, else `val_fraction` of the images, as the split
/// will make it up to rounding), and how many of its body-pass entries the caches under
/// `opts.feature_cache` already hold (by each file's SHA-256, as training looks them up;
/// regression's point-head maps are not looked up).
///
/// # Errors
/// The dataset cannot be scanned; the weights cannot be found; partial's cut does not fit.
pub fn plan_for(opts: &TrainOptions) -> Result<Plan> {
    let h = &opts.hyper;
    let ds = match opts.task {
        Task::Classification => scan_image_folder(&opts.data)?,
        Task::Regression => scan_regression_folder(&opts.data)?,
    };
    let (n_train, val) = match &ds.val {
        Some(v) => (ds.train.len(), v.len()),
        None => {
            let val = (ds.train.len() as f64 * f64::from(h.val_fraction)).round() as usize;
            (ds.train.len() - val, val)
        }
    };
    let views = if h.mode == Mode::Partial { h.views } else { 1 };
    let weights = (opts.weights != "none")
        .then(|| weights_path(&opts.weights))
        .transpose()?;
    let all: Vec<&Path> = ds
        .train
        .iter()
        .chain(ds.val.iter().flatten())
        .map(|s| s.path.as_path())
        .collect();
    let cached = match (&opts.feature_cache, weights, opts.task) {
        (Some(root), Some(w), Task::Classification) => cached_entries(opts, root, &w, &all, views)?,
        _ => 0,
    };
    Ok(Plan {
        key: RateKey::of(opts),
        epochs: h.planned_epochs(),
        train_images: n_train,
        val_images: val,
        views,
        cached,
    })
}

/// Body-pass entries of `images` already in the caches under `root`: features (one per
/// image), or partial's activations (views `0..views` of every image; the held-out images
/// have view 0 only).
fn cached_entries(
    opts: &TrainOptions,
    root: &Path,
    weights: &Path,
    images: &[&Path],
    views: usize,
) -> Result<usize> {
    let keys: Vec<String> = images
        .par_iter()
        .filter_map(|p| sha256_file(p).ok())
        .collect();
    let (train_preset, eval_preset) = run_presets(opts);
    Ok(match partial_cut(opts)? {
        None if opts.hyper.mode == Mode::Full => 0,
        None => {
            let cache = FeatureCache::open(
                root,
                opts.arch,
                weights,
                &eval_preset,
                opts.arch.feature_dim(),
            )?;
            keys.iter().filter(|k| cache.contains(k)).count()
        }
        Some(cut) => {
            let net = Net::new(opts.arch, opts.task.outputs(2), &default_device());
            net.check_cut(cut)?;
            let spec = ActivationSpec::new(
                opts.arch,
                weights,
                cut,
                eval_preset,
                train_preset,
                views_decode_min_side(&train_preset, &eval_preset),
                opts.hyper.seed,
                net.activation_shape(cut, eval_preset.crop as usize),
            )?;
            match ActivationCache::open_existing(&activations::root(root), &spec) {
                Some(cache) => keys
                    .iter()
                    .map(|k| (0..views as u32).filter(|&v| cache.contains(k, v)).count())
                    .sum(),
                None => 0,
            }
        }
    })
}

/// The expected time of `plan` with `rates`.
pub fn estimate(plan: &Plan, rates: Rates, from: RatesFrom) -> Estimate {
    let k = &plan.key;
    let entries = body_entries(k.mode, plan.train_images, plan.val_images, plan.views);
    let body_views = entries.saturating_sub(plan.cached);
    let steps = steps(
        k.mode,
        plan.epochs,
        plan.train_images,
        plan.views,
        k.batch_size,
    );
    Estimate {
        seconds: rates.overhead_seconds
            + body_views as f64 * rates.body_seconds_per_view
            + steps as f64 * rates.seconds_per_step,
        body_views,
        cached: entries - body_views,
        steps,
        rates,
        from,
    }
}

// The development machine's figures (2 x86 cores, release build, ONNX Runtime 1.31 for the
// body pass), as `timings.json` recorded them from empty caches: (body seconds per view,
// seconds per step at the batch, the batch, overhead seconds).
/// `train ../shared/data/clocks --mode partial` (EfficientNet-Lite0, cut 0, 4 views): the
/// host step ([`crate::train::host_tail`]).
const REF_LITE0_PARTIAL_0: (f64, f64, usize, f64) = (0.00822, 0.0386, 32, 1.23);
/// EfficientNet-Lite0 with 1 and 2 MBConv blocks trained (burn's autodiff) at batch 32: the
/// `partial_step` example's steps (0.426 s, 0.678 s), 0.252 s more per further block.
const REF_LITE0_PARTIAL_1_STEP: f64 = 0.426;
const REF_LITE0_PARTIAL_PER_BLOCK: f64 = 0.252;
/// `train ../shared/data/clocks --mode frozen`.
const REF_LITE0_FROZEN: (f64, f64, usize, f64) = (0.00886, 0.00115, 16, 0.74);
/// `train ../shared/data/hymenoptera --mode full --epochs 1`.
const REF_LITE0_FULL: (f64, f64, usize, f64) = (0.0, 4.72, 16, 6.19);
/// ResNet-18 from a torchvision-format file (its values do not change the time):
/// `train ../shared/data/clocks --arch resnet18 --weights FILE --mode frozen`,
/// `... --mode partial --epochs 2` (`layer4`), and hymenoptera `--mode full --epochs 1`.
const REF_R18_FROZEN: (f64, f64, usize, f64) = (0.0243, 0.0029, 16, 0.80);
const REF_R18_PARTIAL: (f64, f64, usize, f64) = (0.0178, 1.139, 32, 5.62);
const REF_R18_FULL: (f64, f64, usize, f64) = (0.0, 3.60, 16, 12.0);

/// The development machine's rates for `key` (see the module docs), scaled to its batch
/// size; None where none was measured (a GPU device, fp16 or bf16). Finetune counts every epoch at the full
/// step's rate (its head epochs cost far less, so it is an upper bound); ResNet-34/50 scale
/// ResNet-18's figures by compute; a partial cut other than the default takes the default's
/// ResNet figures.
pub fn reference(key: &RateKey) -> Option<Rates> {
    if key.device.is_gpu() || key.precision != TrainPrecision::Fp32 {
        return None;
    }
    // (body seconds per view, seconds per step at `batch`, `batch`, overhead seconds)
    let (body, step, batch, overhead) = match (key.arch, key.mode) {
        (Arch::EfficientnetLite0, Mode::Partial) => match key.train_blocks.unwrap_or(0) {
            0 => REF_LITE0_PARTIAL_0,
            k => {
                let (b, _, n, o) = REF_LITE0_PARTIAL_0;
                let extra = (k - 1) as f64 * REF_LITE0_PARTIAL_PER_BLOCK;
                (b, REF_LITE0_PARTIAL_1_STEP + extra, n, o)
            }
        },
        (Arch::EfficientnetLite0, Mode::Full | Mode::Finetune) => REF_LITE0_FULL,
        (Arch::EfficientnetLite0, _) => REF_LITE0_FROZEN,
        (arch, mode) => {
            // The ResNets: ResNet-18's figures scaled by torchvision's published GFLOPS
            // (ResNet-18 1.81, ResNet-34 3.66, ResNet-50 4.09).
            let scale = match arch {
                Arch::Resnet34 => 3.66 / 1.81,
                Arch::Resnet50 => 4.09 / 1.81,
                _ => 1.0,
            };
            let (b, s, n, o) = match mode {
                Mode::Partial => REF_R18_PARTIAL,
                Mode::Full | Mode::Finetune => REF_R18_FULL,
                _ => REF_R18_FROZEN,
            };
            (b * scale, s * scale, n, o)
        }
    };
    // A step's cost grows with its batch; the fixed part is small next to it on a CPU.
    let per_image = step / batch as f64;
    Some(Rates {
        body_seconds_per_view: body,
        seconds_per_step: per_image * key.batch_size.max(1) as f64,
        overhead_seconds: overhead,
    })
}

/// The rates for `key`: this machine's from `timings.json` under `feature_cache` when a run
/// recorded them, else [`reference`]'s.
pub fn rates(feature_cache: Option<&Path>, key: &RateKey) -> Option<(Rates, RatesFrom)> {
    let measured = feature_cache
        .and_then(|root| read(&root.join(FILE)).ok())
        .and_then(|mut m| m.remove(&key.name()));
    match measured {
        Some(r) => Some((r, RatesFrom::ThisMachine)),
        None => reference(key).map(|r| (r, RatesFrom::Reference)),
    }
}

fn read(path: &Path) -> Result<BTreeMap<String, Rates>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
}

/// What a finished run measured, for [`record`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Body-pass entries computed (not read from a cache).
    pub body_views: usize,
    /// Seconds of the body pass.
    pub body_seconds: f64,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Seconds of the epochs (steps, held-out scoring, checkpoints).
    pub epoch_seconds: f64,
    /// Wall time of the whole run, calibration included.
    pub total_seconds: f64,
}

/// Body-pass entries below which a run's body rate is not recorded (start-up dominates).
const MIN_BODY_VIEWS: usize = 16;

/// Records `m` as this machine's rates for `key` in `timings.json` under `feature_cache`
/// (written to a temporary file, then renamed). A rate this run could not measure (too few
/// body-pass entries computed, no optimizer step) is kept from earlier runs.
///
/// # Errors
/// The file cannot be written.
pub fn record(feature_cache: &Path, key: &RateKey, m: &Measured) -> Result<()> {
    let path: PathBuf = feature_cache.join(FILE);
    let mut all = read(&path).unwrap_or_default();
    let name = key.name();
    let earlier = all.get(&name).copied().or_else(|| reference(key));
    let body = if m.body_views >= MIN_BODY_VIEWS {
        m.body_seconds / m.body_views as f64
    } else {
        earlier.map_or(0.0, |r| r.body_seconds_per_view)
    };
    // A fit in one go (instant) has no step: its time is overhead.
    let (per_step, stepping) = if m.steps > 0 {
        (m.epoch_seconds / m.steps as f64, m.epoch_seconds)
    } else {
        (earlier.map_or(0.0, |r| r.seconds_per_step), 0.0)
    };
    all.insert(
        name,
        Rates {
            body_seconds_per_view: body,
            seconds_per_step: per_step,
            overhead_seconds: (m.total_seconds - m.body_seconds - stepping).max(0.0),
        },
    );
    std::fs::create_dir_all(feature_cache).map_err(|e| Error::io(feature_cache, e))?;
    let json = serde_json::to_string_pretty(&all).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&path, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mode: Mode, batch_size: usize) -> RateKey {
        RateKey {
            arch: Arch::EfficientnetLite0,
            mode,
            train_blocks: (mode == Mode::Partial).then_some(0),
            device: DeviceChoice::Cpu,
            precision: TrainPrecision::Fp32,
            batch_size,
        }
    }

    #[test]
    fn an_estimate_counts_views_to_compute_and_steps() {
        let plan = Plan {
            key: key(Mode::Partial, 32),
            epochs: 6,
            train_images: 100,
            val_images: 20,
            views: 4,
            cached: 10,
        };
        let rates = Rates {
            body_seconds_per_view: 0.01,
            seconds_per_step: 0.1,
            overhead_seconds: 3.0,
        };
        let e = estimate(&plan, rates, RatesFrom::Reference);
        // 100 x 4 + 20 entries, 10 cached; 6 epochs of ceil(400 / 32) = 13 steps.
        assert_eq!((e.body_views, e.cached, e.steps), (410, 10, 78));
        assert!(
            (e.seconds - (3.0 + 4.10 + 7.8)).abs() < 1e-9,
            "{}",
            e.seconds
        );
        // A frozen run: one entry per image, steps over the images.
        let frozen = Plan {
            key: key(Mode::Frozen, 16),
            views: 1,
            cached: 0,
            ..plan
        };
        let e = estimate(&frozen, rates, RatesFrom::Reference);
        assert_eq!((e.body_views, e.steps), (120, 6 * 7));
        // Full fine-tuning caches nothing ahead of its epochs.
        assert_eq!(body_entries(Mode::Full, 100, 20, 1), 0);
    }

    #[test]
    fn reference_step_time_scales_with_the_batch_and_gpus_have_none() {
        let at16 = reference(&key(Mode::Frozen, 16)).unwrap();
        let at32 = reference(&key(Mode::Frozen, 32)).unwrap();
        assert!((at32.seconds_per_step / at16.seconds_per_step - 2.0).abs() < 1e-9);
        assert_eq!(at16.body_seconds_per_view, at32.body_seconds_per_view);
        let gpu = RateKey {
            device: DeviceChoice::Wgpu,
            ..key(Mode::Frozen, 16)
        };
        assert_eq!(reference(&gpu), None);
        let half = RateKey {
            precision: TrainPrecision::Fp16,
            ..key(Mode::Full, 16)
        };
        assert_eq!(reference(&half), None);
        assert!(reference(&key(Mode::Full, 16)).is_some());
        assert_eq!(
            key(Mode::Full, 16).name(),
            "efficientnet_lite0 full cpu batch 16"
        );
        assert_eq!(half.name(), "efficientnet_lite0 full cpu fp16 batch 16");
        // Training one more block costs more per step than training none.
        let k0 = reference(&key(Mode::Partial, 32)).unwrap();
        let k1 = reference(&RateKey {
            train_blocks: Some(1),
            ..key(Mode::Partial, 32)
        })
        .unwrap();
        assert!(k1.seconds_per_step > k0.seconds_per_step);
    }

    #[test]
    fn a_recorded_run_gives_this_machines_rates_and_keeps_what_it_could_not_measure() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(Mode::Partial, 32);
        assert_eq!(rates(Some(dir.path()), &k).unwrap().1, RatesFrom::Reference);
        let m = Measured {
            body_views: 200,
            body_seconds: 4.0,
            steps: 50,
            epoch_seconds: 10.0,
            total_seconds: 17.0,
        };
        record(dir.path(), &k, &m).unwrap();
        let (r, from) = rates(Some(dir.path()), &k).unwrap();
        assert_eq!(from, RatesFrom::ThisMachine);
        assert_eq!(
            r,
            Rates {
                body_seconds_per_view: 0.02,
                seconds_per_step: 0.2,
                overhead_seconds: 3.0,
            }
        );
        // Another key is not this one.
        let other = key(Mode::Partial, 16);
        assert_eq!(
            rates(Some(dir.path()), &other).unwrap().1,
            RatesFrom::Reference
        );
        // A warm run computes no view: the body rate stays the measured one.
        let warm = Measured {
            body_views: 0,
            body_seconds: 0.3,
            steps: 50,
            epoch_seconds: 5.0,
            total_seconds: 6.3,
        };
        record(dir.path(), &k, &warm).unwrap();
        let (r, _) = rates(Some(dir.path()), &k).unwrap();
        assert_eq!(r.body_seconds_per_view, 0.02);
        assert_eq!(r.seconds_per_step, 0.1);
        assert!((r.overhead_seconds - 1.0).abs() < 1e-9);
    }
}
