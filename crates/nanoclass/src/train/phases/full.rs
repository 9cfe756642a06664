//! The full phase: every layer trains on augmented views of the training images (the train
//! preset: random resized crop, flip, colour jitter; regression views move the point with the
//! pixels), prepared in parallel one batch ahead of the optimizer. BatchNorm uses batch
//! statistics. In finetune mode the backbone's learning rate is `lr * body_lr_factor`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::FloatDType;
use image::RgbImage;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use super::{Batching, batch_count, epoch_batches, epoch_rng};
use crate::Result;
use crate::data::folder::Sample;
use crate::data::loader::{Batch, prefetch};
use crate::data::presets::TrainPreset;
use crate::eval::regression::normalise;
use crate::infer::device::read_scalar;
use crate::model::Net;
use crate::model::mixed::compute_copy;
use crate::run::Task;
use crate::train::checkpoint::{self, TrainState};
use crate::train::epoch::{Phase, RunCtx, gradient_epoch};
use crate::train::hyper::Hyperparams;
use crate::train::loss::{EpochStats, Target, batch_loss};
use crate::train::precision::{LossScale, TrainPrecision};
use crate::train::schedule::{PhaseLr, make_optimizer};

/// See the module docs.
pub(crate) struct FullPhase {
    model: Net,
    optim: ModuleOptimizer,
    train: Arc<Vec<(Sample, RgbImage)>>,
    val: Vec<(Vec<f32>, Target)>,
    preset: TrainPreset,
    body_lr_factor: f64,
    lr: PhaseLr,
    batch_size: usize,
    batching: Batching,
    seed: u64,
    precision: TrainPrecision,
    scale: LossScale,
}

impl FullPhase {
    /// Trains `net` (on the autodiff device) for `epochs` epochs on the decoded training
    /// images, scoring the preprocessed held-out tensors `val` (`[3, S, S]` each, eval preset);
    /// `batching` cuts each epoch's images into batches; each step computes in `precision`
    /// (the weights stay f32, [`crate::train::precision`]); `resume` as for
    /// [`super::head::HeadPhase::new`].
    ///
    /// # Errors
    /// The saved optimizer state cannot be read or does not fit the model.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        net: Net,
        train: Vec<(Sample, RgbImage)>,
        val: Vec<(Vec<f32>, Target)>,
        preset: TrainPreset,
        h: &Hyperparams,
        body_lr_factor: f64,
        epochs: usize,
        batching: Batching,
        precision: TrainPrecision,
        resume: Option<(&TrainState, &Path)>,
    ) -> Result<FullPhase> {
        let mut model = net.train();
        let mut optim = make_optimizer(h);
        if let Some((st, run_dir)) = resume {
            model = checkpoint::with_param_ids(model, &st.param_ids, run_dir)?;
            optim = checkpoint::load_optimizer(run_dir, optim)?;
        }
        let steps = batch_count(train.len(), h.batch_size, batching);
        Ok(FullPhase {
            model,
            optim,
            train: Arc::new(train),
            val,
            preset,
            body_lr_factor,
            lr: PhaseLr {
                base: h.lr,
                schedule: h.schedule,
                epochs,
                steps_per_epoch: steps,
            },
            batch_size: h.batch_size,
            batching,
            seed: h.seed,
            precision,
            scale: LossScale::new(precision),
        })
    }
}

/// The augmented view of image `i` and its target, from the per-image seed.
fn view(
    imgs: &[(Sample, RgbImage)],
    i: usize,
    preset: &TrainPreset,
    task: Task,
    seed: u64,
) -> (Vec<f32>, Target) {
    let mut r = StdRng::seed_from_u64(seed);
    let (s, img) = &imgs[i];
    let (pixels, crop) = match (task, s.point) {
        (Task::Regression, Some(p)) => preset.apply_keeping(img, p, &mut r),
        _ => preset.apply_with_flip(img, &mut r),
    };
    // The target moves with the pixels: cropped, scaled and mirrored alike.
    let point = match (task, s.point) {
        (Task::Regression, Some(p)) => {
            let size = preset.crop as f32;
            normalise(crop.map_point(p, preset.crop), size, size)
        }
        _ => [0.0; 2],
    };
    (
        pixels,
        Target {
            label: s.label,
            point,
        },
    )
}

/// Held-out (loss, score) of the whole network on preprocessed `[3, S, S]` tensors.
pub(crate) fn eval_net(
    ctx: &RunCtx<'_>,
    net: &Net,
    val: &[(Vec<f32>, Target)],
) -> Result<Option<(f64, f64)>> {
    if val.is_empty() {
        return Ok(None);
    }
    let s = ctx.size;
    let mut loss_sum = 0.0;
    let mut score = 0.0;
    // 32 images at a time on the CPU; on a GPU the training batches' size, cut evenly, so the
    // held-out pass reuses the kernels tuned for the training steps (see [`Batching::Even`]).
    let batching = Batching::for_device(ctx.opts.device);
    let batch = match batching {
        Batching::Chunks => 32,
        Batching::Even => ctx.opts.hyper.batch_size,
    };
    let sizes = batching.sizes_of_all(val.len(), batch);
    let mut start = 0;
    for size in sizes {
        let chunk = &val[start..start + size];
        start += size;
        let mut px = Vec::with_capacity(chunk.len() * 3 * s * s);
        for (t, _) in chunk {
            px.extend_from_slice(t);
        }
        let targets: Vec<Target> = chunk.iter().map(|(_, t)| *t).collect();
        let x = Tensor::<4>::from_data(TensorData::new(px, [chunk.len(), 3, s, s]), &ctx.device);
        let (loss, sc) = batch_loss(ctx.task(), net.forward(x), &targets, s, &ctx.device)?;
        loss_sum += read_scalar(loss)? * chunk.len() as f64;
        score += sc;
    }
    Ok(Some((
        loss_sum / val.len() as f64,
        score / val.len() as f64,
    )))
}

impl Phase for FullPhase {
    fn name(&self) -> &'static str {
        "full"
    }

    fn steps_per_epoch(&self) -> usize {
        self.lr.steps_per_epoch
    }

    fn train_epoch(&mut self, ctx: &mut RunCtx<'_>, e: usize, epoch: usize) -> Result<EpochStats> {
        let mut rng = epoch_rng(self.seed, epoch);
        let batches = epoch_batches(self.train.len(), self.batch_size, self.batching, &mut rng);
        let count = batches.len();
        // One seed per batch keeps augmentation reproducible while batches are prepared in
        // parallel on the producer thread.
        let chunks: Vec<(Vec<usize>, u64)> = batches
            .into_iter()
            .map(|b| (b, rand::Rng::random::<u64>(&mut rng)))
            .collect();
        let (imgs, preset, task) = (self.train.clone(), self.preset, ctx.task());
        let stream = prefetch(chunks, 2, move |(b, seed): (Vec<usize>, u64)| {
            let views: Vec<(Vec<f32>, Target)> = b
                .par_iter()
                .enumerate()
                .map(|(j, &i)| view(&imgs, i, &preset, task, seed.wrapping_add(j as u64)))
                .collect();
            let mut pixels = Vec::with_capacity(views.iter().map(|v| v.0.len()).sum());
            let mut items = Vec::with_capacity(views.len());
            for (p, t) in views {
                pixels.extend(p);
                items.push(t);
            }
            Batch {
                pixels,
                n: items.len(),
                items,
            }
        });
        let (crop, ad) = (self.preset.crop as usize, ctx.ad.clone());
        let dtype = self.precision.dtype();
        let mut forward = |model: &Net, batch: Batch<Target>| {
            let x = Tensor::<4>::from_data(
                TensorData::new(batch.pixels, [batch.n, 3, crop, crop]),
                &ad,
            );
            // fp16/bf16: a copy of the model computes, the loss is f32.
            let out = compute_copy(model, dtype)
                .forward(x.cast(dtype))
                .cast(FloatDType::F32);
            let (loss, score) = batch_loss(task, out, &batch.items, crop, &ad)?;
            Ok((loss, score, batch.n))
        };
        let factor = self.body_lr_factor;
        let mut apply = |model: Net, optim: &mut ModuleOptimizer, mut grads, rate: f64| {
            if factor == 1.0 {
                let grads = GradientsParams::from_grads(grads, &model);
                return optim.step(rate, model, grads);
            }
            let head_grads = match model.point_head() {
                Some(p) => GradientsParams::from_module(&mut grads, p),
                None => GradientsParams::from_module(&mut grads, model.head()),
            };
            let body_grads = GradientsParams::from_grads(grads, &model);
            let model = optim.step(rate * factor, model, body_grads);
            optim.step(rate, model, head_grads)
        };
        let model = self.model.clone();
        let (model, stats) = gradient_epoch(
            ctx,
            (e, epoch),
            &self.lr,
            model,
            &mut self.optim,
            stream,
            count,
            &mut forward,
            &mut apply,
            &mut self.scale,
        )?;
        // Every step ran the body's BatchNorm layers in train mode.
        for _ in 0..count {
            ctx.batch_counters.add_batch();
        }
        self.model = model;
        Ok(stats)
    }

    fn validate(&self, ctx: &RunCtx<'_>) -> Result<Option<(f64, f64)>> {
        eval_net(ctx, &self.model.valid(), &self.val)
    }

    fn net(&self) -> Net {
        self.model.valid()
    }

    fn optimizer(&self) -> Option<&ModuleOptimizer> {
        Some(&self.optim)
    }

    fn param_ids(&self) -> BTreeMap<String, u64> {
        checkpoint::param_ids(&self.model)
    }
}
