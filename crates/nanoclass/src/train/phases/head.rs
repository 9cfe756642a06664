//! The head phase: only the head (linear, or the regression point head) trains, on the cached
//! backbone features of [`super::features`], so an epoch takes milliseconds.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::features::FeatureRows;
use super::{Batching, batch_count, epoch_batches, epoch_rng};
use crate::Result;
use crate::infer::device::read_scalar;
use crate::model::{Head, Net};
use crate::train::checkpoint::{self, TrainState};
use crate::train::epoch::{Phase, RunCtx, gradient_epoch};
use crate::train::hyper::Hyperparams;
use crate::train::loss::{EpochStats, Target, batch_loss};
use crate::train::precision::{LossScale, TrainPrecision};
use crate::train::schedule::{PhaseLr, make_optimizer};

/// See the module docs.
pub(crate) struct HeadPhase {
    net: Net,
    head: Head,
    optim: ModuleOptimizer,
    rows: FeatureRows,
    lr: PhaseLr,
    batch_size: usize,
    batching: Batching,
    seed: u64,
}

impl HeadPhase {
    /// The head of `net` (on the autodiff device) trained for `epochs` epochs on `rows`, in
    /// batches cut as `batching` says; when resuming inside this phase, `resume` gives the saved
    /// parameter ids and the optimizer state is read from the run's checkpoint.
    ///
    /// # Errors
    /// The saved optimizer state cannot be read or does not fit the head.
    pub(crate) fn new(
        net: Net,
        rows: FeatureRows,
        h: &Hyperparams,
        epochs: usize,
        batching: Batching,
        resume: Option<(&TrainState, &Path)>,
    ) -> Result<HeadPhase> {
        let mut head = net.head_module().train();
        let mut optim = make_optimizer(h);
        if let Some((st, run_dir)) = resume {
            head = checkpoint::with_param_ids(head, &st.param_ids, run_dir)?;
            optim = checkpoint::load_optimizer(run_dir, optim)?;
        }
        let steps = batch_count(rows.train_targets.len(), h.batch_size, batching);
        Ok(HeadPhase {
            net,
            head,
            optim,
            rows,
            lr: PhaseLr {
                base: h.lr,
                schedule: h.schedule,
                epochs,
                steps_per_epoch: steps,
            },
            batch_size: h.batch_size,
            batching,
            seed: h.seed,
        })
    }
}

/// Held-out (loss, score) of a head on feature rows, None for no rows.
pub(crate) fn eval_head(
    ctx: &RunCtx<'_>,
    head: &Head,
    feats: &[f32],
    targets: &[Target],
    c: usize,
) -> Result<Option<(f64, f64)>> {
    if targets.is_empty() {
        return Ok(None);
    }
    let x = Tensor::<2>::from_data(
        TensorData::new(feats.to_vec(), [targets.len(), c]),
        &ctx.device,
    );
    let (loss, score) = batch_loss(ctx.task(), head.forward(x), targets, ctx.size, &ctx.device)?;
    Ok(Some((read_scalar(loss)?, score / targets.len() as f64)))
}

impl Phase for HeadPhase {
    fn name(&self) -> &'static str {
        "head"
    }

    fn steps_per_epoch(&self) -> usize {
        self.lr.steps_per_epoch
    }

    fn train_epoch(&mut self, ctx: &mut RunCtx<'_>, e: usize, epoch: usize) -> Result<EpochStats> {
        let rows = &self.rows;
        let c = rows.c;
        let batches = epoch_batches(
            rows.train_targets.len(),
            self.batch_size,
            self.batching,
            &mut epoch_rng(self.seed, epoch),
        );
        let count = batches.len();
        let (task, size, ad) = (ctx.task(), ctx.size, ctx.ad.clone());
        let mut forward = |head: &Head, b: Vec<usize>| {
            let mut x = Vec::with_capacity(b.len() * c);
            for &i in &b {
                x.extend_from_slice(&rows.train[i * c..(i + 1) * c]);
            }
            let y: Vec<Target> = b.iter().map(|&i| rows.train_targets[i]).collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [b.len(), c]), &ad);
            let (loss, score) = batch_loss(task, head.forward(x), &y, size, &ad)?;
            Ok((loss, score, b.len()))
        };
        let mut apply = |head: Head, optim: &mut ModuleOptimizer, grads, rate: f64| {
            let grads = GradientsParams::from_grads(grads, &head);
            optim.step(rate, head, grads)
        };
        let head = self.head.clone();
        let (head, stats) = gradient_epoch(
            ctx,
            (e, epoch),
            &self.lr,
            head,
            &mut self.optim,
            batches.into_iter(),
            count,
            &mut forward,
            &mut apply,
            // The head trains in f32 whatever the run's precision.
            &mut LossScale::new(TrainPrecision::Fp32),
        )?;
        self.head = head;
        Ok(stats)
    }

    fn validate(&self, ctx: &RunCtx<'_>) -> Result<Option<(f64, f64)>> {
        let r = &self.rows;
        eval_head(ctx, &self.head.valid(), &r.val, &r.val_targets, r.c)
    }

    fn net(&self) -> Net {
        self.net.clone().with_head_module(self.head.clone()).valid()
    }

    fn optimizer(&self) -> Option<&ModuleOptimizer> {
        Some(&self.optim)
    }

    fn param_ids(&self) -> BTreeMap<String, u64> {
        checkpoint::param_ids(&self.head)
    }
}
