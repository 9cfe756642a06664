//! The partial phase: the last residual blocks of the backbone and the head train on cached
//! activations of the frozen body ([`crate::model::cut`]).
//!
//! Before the first epoch the body runs once per (image, view) on the inference engine (ONNX
//! Runtime where its library loads, burn otherwise): view 0 is the eval preset's view, views
//! `1..V` are train-preset views drawn from (seed, image content, view)
//! ([`crate::data::presets::view`]). Their activations (`[C, h, w]`, e.g. `[192, 7, 7]` before
//! EfficientNet-Lite0's last 2 blocks) go to the on-disk [`ActivationCache`], keyed by the
//! image's content, the view, the augmentation, the weights and the cut, so a second run (or
//! a resumed one) computes only what is missing. Held-out images use view 0 only.
//!
//! An epoch is every (training image, view) pair once, shuffled, read back from the cache in
//! streamed batches (memory holds a few batches whatever the number of images). The trained
//! blocks' BatchNorm uses batch statistics ([`TailBatchNorm::Batch`], chosen by measurement:
//! see [`crate::model::cut`]). EfficientNet-Lite0 at cut 0 on the CPU takes the step written
//! out in [`crate::train::host_tail`]; everything else goes through burn's autodiff. The head learns at `lr`, the trained blocks at
//! `lr * body_lr_factor` (Adam 2e-3 and 2e-4 by default); with no block trained (EfficientNet-
//! Lite0's default cut), its head convolution and `_bn1` learn with the head at `lr`. The saved
//! model is the ordinary whole network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::FloatDType;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{Batching, batch_count, epoch_rng};
use crate::data::decode::{DecodeOptions, decode_bytes};
use crate::data::folder::Sample;
use crate::data::loader::Skipped;
use crate::data::presets::{EvalPreset, TrainPreset, view, views_decode_min_side};
use crate::infer::device::read_scalar;
use crate::infer::engine::{Engine, EngineChoice, Graph};
use crate::infer::ort::prefix_model;
use crate::model::Net;
use crate::model::cut::{Cut, TailBatchNorm};
use crate::model::mixed::compute_copy;
use crate::train::Event;
use crate::train::activations::{self, ActivationBatch, ActivationCache, ActivationSpec};
use crate::train::checkpoint::{self, TrainState};
use crate::train::epoch::{Phase, RunCtx, Stepped, gradient_epoch, step_epoch};
use crate::train::host_tail;
use crate::train::hyper::Hyperparams;
use crate::train::loss::{EpochStats, Target, batch_loss};
use crate::train::precision::{LossScale, TrainPrecision};
use crate::train::schedule::{PhaseLr, make_optimizer};
use crate::{Error, Result};

/// Images whose views are decoded, prepared and run through the body together.
const CACHE_CHUNK: usize = 8;

/// Held-out activations scored per forward pass.
const EVAL_BATCH: usize = 64;

/// What the partial phase starts from.
pub(crate) struct PartialInputs<'a> {
    /// The training images.
    pub train: &'a [Sample],
    /// The held-out images.
    pub val: &'a [Sample],
    /// The train preset with the run's augmentation (views 1 and on).
    pub train_preset: TrainPreset,
    /// The eval preset (view 0, held-out images).
    pub eval_preset: EvalPreset,
    /// The pretrained weights file the body comes from (None: random weights).
    pub pretrained: Option<&'a Path>,
}

/// The images the phase kept and the files it skipped.
pub(crate) struct PartialData {
    /// Training images with their activations cached.
    pub train: Vec<Sample>,
    /// Held-out images with their activation cached.
    pub val: Vec<Sample>,
    /// Files that could not be read or decoded.
    pub skipped: Vec<Skipped>,
}

/// See the module docs.
pub(crate) struct PartialPhase {
    model: Net,
    optim: ModuleOptimizer,
    cut: Cut,
    cache: ActivationCache,
    /// The cache folder of a run without a persistent cache, removed with the phase.
    _scratch: Option<tempfile::TempDir>,
    /// Every (image key, view, target) of an epoch.
    train: Vec<(String, u32, Target)>,
    /// Held-out (image key, target), view 0.
    val: Vec<(String, Target)>,
    shape: [usize; 3],
    trained: Vec<String>,
    body_lr_factor: f64,
    lr: PhaseLr,
    batch_size: usize,
    seed: u64,
    /// Steps written out on the host ([`host_tail`]): EfficientNet-Lite0 at cut 0 on the CPU
    /// in fp32.
    host_step: bool,
    /// The float type of the steps through burn ([`crate::train::precision`]).
    precision: TrainPrecision,
    scale: LossScale,
}

impl PartialPhase {
    /// Caches the activations of every (image, view) not yet cached, then prepares `net` (on
    /// the autodiff device) to train the last `cut.blocks` blocks and the head for `epochs`
    /// epochs; `resume` as for [`super::head::HeadPhase::new`].
    ///
    /// # Errors
    /// The cut does not fit the model (regression models are refused); the cache cannot be
    /// created or written; the engine fails; the saved optimizer state cannot be read.
    pub(crate) fn new(
        ctx: &mut RunCtx<'_>,
        net: Net,
        cut: Cut,
        inputs: PartialInputs<'_>,
        h: &Hyperparams,
        epochs: usize,
        resume: Option<(&TrainState, &Path)>,
    ) -> Result<(PartialPhase, PartialData)> {
        net.check_cut(cut)?;
        let opts = ctx.opts;
        let size = ctx.size;
        let shape = net.activation_shape(cut, size);
        let (train_preset, eval_preset) = (inputs.train_preset, inputs.eval_preset);
        let decode_min_side = views_decode_min_side(&train_preset, &eval_preset);
        let spec = match inputs.pretrained {
            Some(w) => ActivationSpec::new(
                opts.arch,
                w,
                cut,
                eval_preset,
                train_preset,
                decode_min_side,
                h.seed,
                shape,
            )?,
            None => ActivationSpec {
                arch: opts.arch,
                weights_sha256: format!("none, initialised with seed {}", h.seed),
                cut,
                eval: eval_preset,
                train: train_preset,
                decode_min_side,
                seed: h.seed,
                shape,
            },
        };
        // A persistent cache needs pretrained weights (random ones are not reproducible across
        // backends); otherwise the activations live in a scratch folder for this run.
        let root = match (&opts.feature_cache, inputs.pretrained) {
            (Some(root), Some(_)) => Some(activations::root(root)),
            _ => None,
        };
        let (cache, scratch) = match root {
            Some(root) => (ActivationCache::open(&root, &spec)?, None),
            None => {
                let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
                (ActivationCache::open(tmp.path(), &spec)?, Some(tmp))
            }
        };
        ctx.event(Event::Info(format!(
            "partial fine-tuning: the {cut} of {} and the head train on cached activations \
             {shape:?} of {} views per training image ({})",
            opts.arch,
            h.views,
            cache.dir().display()
        )));

        let views = h.views as u32;
        let jobs: Vec<(Sample, u32)> = inputs
            .train
            .iter()
            .map(|s| (s.clone(), views))
            .chain(inputs.val.iter().map(|s| (s.clone(), 1)))
            .collect();
        let net_for_engine = net.clone();
        let pretrained = inputs.pretrained.map(Path::to_path_buf);
        let device = ctx.device.clone();
        let on_gpu = opts.device.is_gpu() && opts.engine == EngineChoice::Auto;
        let open = move || -> Result<Engine> {
            match pretrained {
                Some(w) if !on_gpu => Engine::open(
                    opts.engine,
                    net_for_engine,
                    Graph::Prefix(cut),
                    &device,
                    size,
                    |n| prefix_model(n, opts.arch, &w, cut, size),
                ),
                _ => Ok(Engine::on_burn(
                    net_for_engine,
                    Graph::Prefix(cut),
                    &device,
                    size,
                )),
            }
        };
        let built = cache_views(
            ctx,
            &cache,
            jobs,
            (train_preset, eval_preset, h.seed, decode_min_side),
            open,
        )?;
        let n_train = inputs.train.len();
        let mut data = PartialData {
            train: Vec::new(),
            val: Vec::new(),
            skipped: built.skipped,
        };
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (i, key) in built.keys.into_iter().enumerate() {
            let Some(key) = key else { continue };
            let (s, is_train) = if i < n_train {
                (&inputs.train[i], true)
            } else {
                (&inputs.val[i - n_train], false)
            };
            let target = Target {
                label: s.label,
                point: [0.0; 2],
            };
            if is_train {
                train.extend((0..views).map(|v| (key.clone(), v, target)));
                data.train.push(s.clone());
            } else {
                val.push((key, target));
                data.val.push(s.clone());
            }
        }

        let host_step = host_tail::lite0_head_only(&net, cut).is_some()
            && !opts.device.is_gpu()
            && opts.precision == TrainPrecision::Fp32;
        let mut model = net.with_tail_batch_norm(cut, TailBatchNorm::Batch);
        let mut optim = make_optimizer(h);
        if let Some((st, run_dir)) = resume {
            model = checkpoint::with_param_ids(model, &st.param_ids, run_dir)?;
            optim = checkpoint::load_optimizer(run_dir, optim)?;
        }
        let steps = batch_count(train.len(), h.batch_size, Batching::Chunks);
        let phase = PartialPhase {
            model,
            optim,
            cut,
            cache,
            _scratch: scratch,
            train,
            val,
            shape,
            trained: cut.trained_layers(opts.arch),
            // With no block to train, what follows the last block (EfficientNet-Lite0's head
            // convolution and its BatchNorm) is part of the head and learns at its rate.
            body_lr_factor: if cut.blocks == 0 {
                1.0
            } else {
                h.body_lr_factor
            },
            lr: PhaseLr {
                base: h.lr,
                schedule: h.schedule,
                epochs,
                steps_per_epoch: steps,
            },
            batch_size: h.batch_size,
            seed: h.seed,
            host_step,
            precision: opts.precision,
            scale: LossScale::new(opts.precision),
        };
        Ok((phase, data))
    }
}

/// What [`cache_views`] found: each job's content key (None: skipped) and the skipped files.
struct Built {
    keys: Vec<Option<String>>,
    skipped: Vec<Skipped>,
}

/// One image's views to compute: (job index, key, view, `[3, S, S]` pixels).
type Views = Vec<(usize, String, u32, Vec<f32>)>;

/// Makes sure every job's views `0..n` are in the cache: reads each file once to hash it,
/// then decodes the images with a view missing, prepares the missing views on a background
/// thread (rayon inside) and runs them through the body, `CACHE_CHUNK` images at a time.
/// The engine is opened only when something is missing.
fn cache_views(
    ctx: &mut RunCtx<'_>,
    cache: &ActivationCache,
    jobs: Vec<(Sample, u32)>,
    (train, eval, seed, min_side): (TrainPreset, EvalPreset, u64, u32),
    open: impl FnOnce() -> Result<Engine>,
) -> Result<Built> {
    let t0 = Instant::now();
    let hashed: Vec<std::result::Result<String, Skipped>> = jobs
        .par_iter()
        .map(|(s, _)| {
            std::fs::read(&s.path)
                .map(|bytes| hex::encode(Sha256::digest(&bytes)))
                .map_err(|e| Skipped {
                    path: s.path.clone(),
                    reason: e.to_string(),
                })
        })
        .collect();
    let mut skipped = Vec::new();
    let mut keys = Vec::with_capacity(jobs.len());
    let mut todo: Vec<(usize, PathBuf, String, Vec<u32>)> = Vec::new();
    let (mut missing, mut total) = (0usize, 0usize);
    for (i, (h, (s, views))) in hashed.into_iter().zip(&jobs).enumerate() {
        match h {
            Ok(key) => {
                let absent: Vec<u32> = (0..*views).filter(|&v| !cache.contains(&key, v)).collect();
                total += *views as usize;
                missing += absent.len();
                if !absent.is_empty() {
                    todo.push((i, s.path.clone(), key.clone(), absent));
                }
                keys.push(Some(key));
            }
            Err(sk) => {
                ctx.event(Event::Warn(sk.to_string()));
                skipped.push(sk);
                keys.push(None);
            }
        }
    }
    if missing > 0 {
        let engine = open()?;
        ctx.event(Event::Info(format!(
            "activations: {} of {total} views to compute on {}, {} cached",
            missing,
            engine.name(),
            total - missing
        )));
        let s = engine.size();
        // Decoding and augmentation run one chunk ahead of the engine.
        let (tx, rx) = mpsc::sync_channel::<(Views, Vec<(usize, Skipped)>)>(1);
        let producer = std::thread::spawn(move || {
            let decode = DecodeOptions {
                min_side: Some(min_side),
            };
            for chunk in todo.chunks(CACHE_CHUNK) {
                let done: Vec<std::result::Result<Views, (usize, Skipped)>> = chunk
                    .par_iter()
                    .map(|(i, path, key, views)| {
                        let img = std::fs::read(path)
                            .map_err(|e| Error::io(path, e))
                            .and_then(|bytes| decode_bytes(&bytes, path, &decode))
                            .map_err(|e| {
                                let reason = match e {
                                    Error::Decode { reason, .. } => reason,
                                    other => other.to_string(),
                                };
                                let path = path.clone();
                                (*i, Skipped { path, reason })
                            })?;
                        Ok(views
                            .iter()
                            .map(|&v| (*i, key.clone(), v, view(&train, &eval, &img, seed, key, v)))
                            .collect())
                    })
                    .collect();
                let mut ok = Vec::new();
                let mut bad = Vec::new();
                for d in done {
                    match d {
                        Ok(v) => ok.extend(v),
                        Err(b) => bad.push(b),
                    }
                }
                if tx.send((ok, bad)).is_err() {
                    return;
                }
            }
        });
        let mut done = 0;
        for (views, bad) in rx {
            for (i, sk) in bad {
                keys[i] = None;
                ctx.event(Event::Warn(sk.to_string()));
                skipped.push(sk);
            }
            if views.is_empty() {
                continue;
            }
            let n = views.len();
            let mut pixels = Vec::with_capacity(n * 3 * s * s);
            for (_, _, _, p) in &views {
                pixels.extend_from_slice(p);
            }
            let rows = engine.run(pixels, n)?;
            for ((_, key, v, _), row) in views.iter().zip(rows.data.chunks(rows.width.max(1))) {
                cache.put(key, *v, row)?;
            }
            done += n;
            ctx.event(Event::Features {
                done,
                total: missing,
            });
        }
        producer
            .join()
            .map_err(|_| Error::Other("the view preparation thread panicked".into()))?;
    }
    ctx.measured.body_views += missing;
    ctx.measured.body_seconds += t0.elapsed().as_secs_f64();
    ctx.event(Event::Info(format!(
        "activations of {total} views: {} from the cache, {missing} computed, in {:.1} s",
        total - missing,
        t0.elapsed().as_secs_f64()
    )));
    Ok(Built { keys, skipped })
}

impl Phase for PartialPhase {
    fn name(&self) -> &'static str {
        "partial"
    }

    fn steps_per_epoch(&self) -> usize {
        self.lr.steps_per_epoch
    }

    fn train_epoch(&mut self, ctx: &mut RunCtx<'_>, e: usize, epoch: usize) -> Result<EpochStats> {
        let mut rng = epoch_rng(self.seed, epoch);
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(&mut rng);
        // A last batch of one entry is dropped: BatchNorm needs two values per channel.
        let b = self.batch_size.max(1);
        if order.len() > b && order.len() % b == 1 {
            order.pop();
        }
        let count = order.len().div_ceil(b);
        let entries: Vec<(String, u32, Target)> =
            order.iter().map(|&i| self.train[i].clone()).collect();
        let stream = self.cache.batches(entries, b);
        let ([c, hh, ww], cut, task, size) = (self.shape, self.cut, ctx.task(), ctx.size);
        let ad = ctx.ad.clone();
        let dtype = self.precision.dtype();
        let mut forward = |model: &Net, batch: Result<ActivationBatch<Target>>| {
            let batch = batch?;
            let x = Tensor::<4>::from_data(TensorData::new(batch.data, [batch.n, c, hh, ww]), &ad);
            // fp16/bf16: a copy of the model computes, the loss is f32.
            let out = compute_copy(model, dtype)
                .forward_from(cut, x.cast(dtype))
                .cast(FloatDType::F32);
            let (loss, score) = batch_loss(task, out, &batch.items, size, &ad)?;
            Ok((loss, score, batch.n))
        };
        let factor = self.body_lr_factor;
        let mut apply = |model: Net, optim: &mut ModuleOptimizer, mut grads, rate: f64| {
            let head_grads = GradientsParams::from_module(&mut grads, model.head());
            // Only the trained blocks received gradients: the body is not in the graph.
            let tail_grads = GradientsParams::from_grads(grads, &model);
            let model = optim.step(rate * factor, model, tail_grads);
            optim.step(rate, model, head_grads)
        };
        let model = self.model.clone();
        let (model, stats) = if self.host_step {
            // EfficientNet-Lite0's head convolution on the CPU: the step written out
            // (crate::train::host_tail), the same gradients to the same optimizer.
            let device = ctx.device.clone();
            let optim = &mut self.optim;
            let mut step = |model: Net, batch: Result<ActivationBatch<Target>>, rate: f64| {
                let batch = batch?;
                let labels: Vec<usize> = batch.items.iter().map(|t| t.label).collect();
                let m = host_tail::lite0_head_only(&model, cut).ok_or_else(|| {
                    Error::Other("the host step needs EfficientNet-Lite0 at cut 0".into())
                })?;
                let s = host_tail::step(m, &batch.data, batch.n, &labels, &device, true)?;
                if !s.loss.is_finite() {
                    return Ok(Stepped::NonFinite);
                }
                Ok(Stepped::Taken {
                    model: optim.step(rate, model, s.grads),
                    loss: s.loss,
                    score: s.correct as f64,
                    n: batch.n,
                })
            };
            step_epoch(ctx, (e, epoch), &self.lr, model, stream, count, &mut step)?
        } else {
            gradient_epoch(
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
            )?
        };
        for _ in 0..count {
            ctx.batch_counters.add_batch_in(&self.trained);
        }
        self.model = model;
        Ok(stats)
    }

    fn validate(&self, ctx: &RunCtx<'_>) -> Result<Option<(f64, f64)>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let net = self.model.valid();
        let [c, h, w] = self.shape;
        let mut loss_sum = 0.0;
        let mut score = 0.0;
        for chunk in self.val.chunks(EVAL_BATCH) {
            let data = self
                .cache
                .read_batch(chunk.iter().map(|(k, _)| (k.as_str(), 0)))?;
            let x =
                Tensor::<4>::from_data(TensorData::new(data, [chunk.len(), c, h, w]), &ctx.device);
            let targets: Vec<Target> = chunk.iter().map(|(_, t)| *t).collect();
            let out = net.forward_from(self.cut, x);
            let (loss, s) = batch_loss(ctx.task(), out, &targets, ctx.size, &ctx.device)?;
            loss_sum += read_scalar(loss)? * chunk.len() as f64;
            score += s;
        }
        let n = self.val.len() as f64;
        Ok(Some((loss_sum / n, score / n)))
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
