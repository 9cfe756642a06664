//! The one epoch loop every phase runs ([`run_phase`]), and the optimizer steps of the phases
//! that train by gradient descent ([`gradient_epoch`]).
//!
//! Each epoch: the phase trains (steps, or a fit), the model is scored on the held-out set,
//! its weights are checked to be finite, the tracker decides whether it is the best so far and
//! whether to stop early ([`crate::train::early_stop`]), and the epoch is committed in one step
//! ([`crate::train::checkpoint`]). A non-finite loss stops training at once, naming the step and
//! the learning rate, before anything is saved, so the best checkpoint stays intact.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::Gradients;

use crate::infer::device::{read_f32, read_scalar};
use crate::model::Net;
use crate::model::batch_counters::BatchCounters;
use crate::run::{Run, Task};
use crate::train::checkpoint::{self, EpochCommit, TrainState};
use crate::train::early_stop::Tracker;
use crate::train::loss::EpochStats;
use crate::train::precision::LossScale;
use crate::train::schedule::PhaseLr;
use crate::train::{Event, TrainOptions};
use crate::{Error, Result};

/// What the phases of one run share.
pub(crate) struct RunCtx<'a> {
    /// The job.
    pub opts: &'a TrainOptions,
    /// The run directory being written.
    pub run: &'a Run,
    /// The device of forward-only work (held-out scoring).
    pub device: Device,
    /// The same device with autodiff (training steps).
    pub ad: Device,
    /// The best model and early stopping.
    pub tracker: Tracker,
    /// Where events go.
    pub on_event: &'a mut dyn FnMut(Event),
    /// The model input side `S` of `[N, 3, S, S]`.
    pub size: usize,
    /// The BatchNorm `num_batches_tracked` counts, saved with every model.
    pub batch_counters: BatchCounters,
    /// What the run measured so far (body pass, epochs), for [`crate::train::estimate`].
    pub measured: crate::train::estimate::Measured,
}

impl RunCtx<'_> {
    /// The task.
    pub fn task(&self) -> Task {
        self.opts.task
    }

    /// Sends an event.
    pub fn event(&mut self, e: Event) {
        (self.on_event)(e);
    }
}

/// One phase of training (see [`crate::train::phases`]).
pub(crate) trait Phase {
    /// `head`, `full` or `instant`: the phase column of `metrics.jsonl`.
    fn name(&self) -> &'static str;
    /// Optimizer steps per epoch (0 for a fit in one go).
    fn steps_per_epoch(&self) -> usize;
    /// Trains epoch `e` of the phase (0-based), which is the run's epoch `epoch` (1-based).
    fn train_epoch(&mut self, ctx: &mut RunCtx<'_>, e: usize, epoch: usize) -> Result<EpochStats>;
    /// Held-out (loss, top-1 or mean point error in pixels), None without a held-out set.
    fn validate(&self, ctx: &RunCtx<'_>) -> Result<Option<(f64, f64)>>;
    /// The whole network as it now stands, in eval mode.
    fn net(&self) -> Net;
    /// The optimizer, for phases that have one.
    fn optimizer(&self) -> Option<&ModuleOptimizer>;
    /// Parameter ids of the optimized module, by path (see [`checkpoint::param_ids`]).
    fn param_ids(&self) -> BTreeMap<String, u64>;
}

/// Runs epochs `done..epochs` of `phase` (0-based within the phase; epoch `e` is the run's
/// epoch `first_epoch + e`). Returns true when early stopping ended it.
///
/// # Errors
/// Those of the phase; non-finite weights; a checkpoint that cannot be written.
pub(crate) fn run_phase(
    phase: &mut dyn Phase,
    ctx: &mut RunCtx<'_>,
    first_epoch: usize,
    epochs: usize,
    done: usize,
) -> Result<bool> {
    ctx.event(Event::Phase {
        phase: phase.name(),
        epochs,
        steps: phase.steps_per_epoch(),
    });
    for e in done..epochs {
        let epoch = first_epoch + e;
        let t0 = Instant::now();
        let stats = phase.train_epoch(ctx, e, epoch)?;
        let val = phase.validate(ctx)?;
        let metrics = stats.metrics(epoch, phase.name(), val, t0.elapsed().as_secs_f64());
        let net = phase.net();
        if !head_is_finite(&net)? {
            return Err(Error::Train(format!(
                "the model's weights became non-finite in epoch {epoch}; training stopped before \
                 saving that epoch, and the checkpoints of earlier epochs were left as they were. \
                 Lower the learning rate or the momentum."
            )));
        }
        let best = ctx.tracker.observe(&metrics);
        let state = TrainState {
            epoch,
            phase: phase.name().to_string(),
            tracker: ctx.tracker.state.clone(),
            param_ids: phase.param_ids(),
        };
        checkpoint::commit(
            ctx.run,
            EpochCommit {
                net: &net,
                best,
                metrics: &metrics,
                optim: phase.optimizer(),
                state: &state,
                batch_counters: &ctx.batch_counters,
            },
        )?;
        // The epoch's cost as a rate: its steps, held-out scoring and commit.
        ctx.measured.steps += phase.steps_per_epoch();
        ctx.measured.epoch_seconds += t0.elapsed().as_secs_f64();
        ctx.event(Event::Epoch(metrics));
        if ctx.tracker.should_stop() {
            ctx.event(Event::Info(format!(
                "stopped early after epoch {epoch}: the held-out figure did not improve for {} \
                 epochs; the best model (epoch {}) is kept",
                ctx.tracker.state.since_improved, ctx.tracker.state.best_epoch
            )));
            return Ok(true);
        }
    }
    Ok(false)
}

/// Err when the job's stop flag is set: the user asked training to stop, before step `step` of
/// epoch `epoch` (1-based).
pub(crate) fn check_stop(opts: &TrainOptions, epoch: usize, step: usize) -> Result<()> {
    match &opts.stop {
        Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Train(format!(
            "training stopped on request before step {step} of epoch {epoch}; completed epochs \
             are kept"
        ))),
        _ => Ok(()),
    }
}

fn non_finite(epoch: usize, step: usize, lr: f64) -> Error {
    Error::Train(format!(
        "the training loss became non-finite at epoch {epoch}, step {step} (learning rate \
         {lr:.3e}); training stopped and the saved checkpoints were left as they were. Lower the \
         learning rate."
    ))
}

/// Whether every trained weight of the head (the linear head, or each convolution of the point
/// head) is finite.
fn head_is_finite(net: &Net) -> Result<bool> {
    let finite = |v: Vec<f32>| v.iter().all(|x| x.is_finite());
    Ok(match net.point_head() {
        Some(p) => {
            let mut all = true;
            for c in [&p.conv1, &p.conv2, &p.offset] {
                all &= finite(read_f32(c.weight.val())?);
            }
            all
        }
        None => finite(read_f32(net.head().weight.val())?),
    })
}

/// The forward pass of one batch: its loss, its score and its image count.
pub(crate) type Forward<'f, M, B> = &'f mut dyn FnMut(&M, B) -> Result<(Tensor<1>, f64, usize)>;

/// The learning-rate policy of one optimizer step: the whole model at the step's rate, or
/// (finetune's full phase) the head at the rate and the backbone at a fraction of it.
pub(crate) type ApplyStep<'f, M> = &'f mut dyn FnMut(M, &mut ModuleOptimizer, Gradients, f64) -> M;

/// What one optimizer step on a batch did.
pub(crate) enum Stepped<M> {
    /// The step was taken: the model after it, the batch's loss (before the step), its score
    /// and its image count.
    Taken {
        model: M,
        loss: f64,
        score: f64,
        n: usize,
    },
    /// The batch's loss was not finite: no step was taken.
    NonFinite,
}

/// One optimizer step: the model, a batch and the scheduled rate -> [`Stepped`].
pub(crate) type Step<'f, M, B> = &'f mut dyn FnMut(M, B, f64) -> Result<Stepped<M>>;

/// One epoch of optimizer steps: for each batch, `step` takes the step at the scheduled rate
/// (and says whether the loss was finite). Step events go to the run's listener.
///
/// # Errors
/// A stop request; a non-finite loss; those of `step`.
pub(crate) fn step_epoch<M, B>(
    ctx: &mut RunCtx<'_>,
    (e, epoch): (usize, usize),
    lr: &PhaseLr,
    mut model: M,
    batches: impl Iterator<Item = B>,
    count: usize,
    step: Step<'_, M, B>,
) -> Result<(M, EpochStats)> {
    let mut stats = EpochStats::new(ctx.task(), lr.at(e, 0));
    for (k, batch) in batches.enumerate() {
        check_stop(ctx.opts, epoch, k + 1)?;
        let rate = lr.at(e, k);
        let (loss, score, n) = match step(model, batch, rate)? {
            Stepped::Taken {
                model: m,
                loss,
                score,
                n,
            } => {
                model = m;
                (loss, score, n)
            }
            Stepped::NonFinite => return Err(non_finite(epoch, k + 1, rate)),
        };
        stats.lr = rate;
        stats.add(loss, score, n);
        let (top1, error_px) = stats.figures();
        ctx.event(Event::Step {
            epoch,
            step: k + 1,
            steps: count,
            loss: stats.loss(),
            top1,
            error_px,
        });
    }
    Ok((model, stats))
}

/// [`step_epoch`] by burn's autodiff: for each batch, `forward` gives the loss, the batch's
/// score and its image count; the loss is checked to be finite, differentiated (times `scale`'s
/// loss scale, the gradients divided back: see [`crate::train::precision`]), and `apply` takes
/// the optimizer step at the scheduled rate (none when an fp16 gradient overflowed).
///
/// # Errors
/// A stop request; a non-finite loss; those of `forward`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gradient_epoch<M: burn::module::Module, B>(
    ctx: &mut RunCtx<'_>,
    epochs: (usize, usize),
    lr: &PhaseLr,
    model: M,
    optim: &mut ModuleOptimizer,
    batches: impl Iterator<Item = B>,
    count: usize,
    forward: Forward<'_, M, B>,
    apply: ApplyStep<'_, M>,
    scale: &mut LossScale,
) -> Result<(M, EpochStats)> {
    let skipped_before = scale.skipped;
    let mut step = |model: M, batch: B, rate: f64| -> Result<Stepped<M>> {
        let (loss, score, n) = forward(&model, batch)?;
        let value = read_scalar(loss.clone())?;
        if !value.is_finite() {
            return Ok(Stepped::NonFinite);
        }
        let grads = scale.backward(loss);
        // An fp16 gradient that overflowed skips the optimizer step (the scale has halved).
        let model = match scale.unscale(&model, grads)? {
            Some(grads) => apply(model, optim, grads, rate),
            None => model,
        };
        Ok(Stepped::Taken {
            model,
            loss: value,
            score,
            n,
        })
    };
    let out = step_epoch(ctx, epochs, lr, model, batches, count, &mut step)?;
    let skipped = scale.skipped - skipped_before;
    if skipped > 0 {
        ctx.event(Event::Info(format!(
            "epoch {}: {skipped} of {count} optimizer step{} skipped (an fp16 gradient \
             overflowed); loss scale now {}",
            epochs.1,
            if count == 1 { "" } else { "s" },
            scale.scale()
        )));
    }
    Ok(out)
}
