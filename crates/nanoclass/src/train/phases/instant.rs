//! The instant phase: one "epoch" that fits the instant head ([`crate::instant`]: class
//! prototypes, or a linear head when a leave-out check prefers it) on the cached features in one
//! go, and saves it as the network's linear head, so the run serves `predict`, `eval`, `live`
//! and `export` like any other. The fit's record goes to `RUN/instant.json`.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::nn::Linear;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;

use super::features::FeatureRows;
use super::head::eval_head;
use crate::Result;
use crate::fs::write_atomic;
use crate::instant::{Features, HeadChoice, InstantModel, PretrainedHead};
use crate::model::{Head, Net};
use crate::train::Event;
use crate::train::checkpoint;
use crate::train::epoch::{Phase, RunCtx};
use crate::train::loss::EpochStats;

/// The record of the fit.
pub(crate) const RECORD: &str = "instant.json";

/// See the module docs.
pub(crate) struct InstantPhase {
    net: Net,
    pretrained: Option<PretrainedHead>,
    rows: FeatureRows,
    choice: HeadChoice,
    classes: usize,
}

impl InstantPhase {
    /// Fits on `rows` the head of `net` (whose pretrained ImageNet classifier, when given,
    /// extends the rows) for `classes` classes.
    pub(crate) fn new(
        net: Net,
        pretrained: Option<PretrainedHead>,
        rows: FeatureRows,
        choice: HeadChoice,
        classes: usize,
    ) -> InstantPhase {
        InstantPhase {
            net,
            pretrained,
            rows,
            choice,
            classes,
        }
    }

    fn head(&self) -> Head {
        Head::Linear(self.net.head().valid())
    }
}

impl Phase for InstantPhase {
    fn name(&self) -> &'static str {
        "instant"
    }

    fn steps_per_epoch(&self) -> usize {
        0
    }

    fn train_epoch(
        &mut self,
        ctx: &mut RunCtx<'_>,
        _e: usize,
        _epoch: usize,
    ) -> Result<EpochStats> {
        let t0 = Instant::now();
        let (c, k) = (self.rows.c, self.classes);
        let labels: Vec<usize> = self.rows.train_targets.iter().map(|t| t.label).collect();
        // Rows [f, l]: the features and the pretrained classifier's logits (see `instant`).
        let pretrained = self.pretrained.as_ref();
        let extended = pretrained.map(|p| p.extend(&self.rows.train));
        let model = InstantModel::fit(
            Features {
                x: extended.as_deref().unwrap_or(&self.rows.train),
                split: pretrained.map(|_| c),
                labels: &labels,
                dim: c + pretrained.map_or(0, PretrainedHead::outputs),
                classes: k,
            },
            None,
            self.choice,
        )?;
        let fit_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (w, b) = model.linear_layer();
        let (w, b) = match pretrained {
            Some(p) => p.fold(&w, &b),
            None => (w, b),
        };
        // burn's Linear weight is [d_input, d_output]: the transpose of PyTorch's [K, C].
        let mut wt = vec![0.0f32; c * k];
        for o in 0..k {
            for i in 0..c {
                wt[i * k + o] = w[o * c + i];
            }
        }
        let head = Linear {
            weight: burn::module::Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(wt, [c, k]),
                &ctx.ad,
            )),
            bias: Some(burn::module::Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(b, [k]),
                &ctx.ad,
            ))),
        };
        self.net = self.net.clone().with_head(head);
        let record = serde_json::json!({
            "head": model.kind,
            "temperature": model.temperature,
            "images_per_class": model.counts,
            "leave_out": model.leave_out,
            "pretrained_logits": pretrained.map_or(0, PretrainedHead::outputs),
            "fit_ms": fit_ms,
        });
        write_atomic(
            &ctx.run.dir.join(RECORD),
            format!("{record:#}\n").as_bytes(),
        )?;
        ctx.event(Event::Info(format!(
            "instant head: {} (temperature {}){}, fitted on {} images in {:.1} ms",
            model.kind.name(),
            model.temperature,
            match model.leave_out {
                Some(lo) => format!(
                    "; {}-fold leave-out top-1: prototypes {:.3}, linear {:.3}",
                    lo.folds, lo.prototypes, lo.linear
                ),
                None => String::new(),
            },
            model.images(),
            fit_ms
        )));
        let mut stats = EpochStats::new(ctx.task(), 0.0);
        let r = &self.rows;
        if let Some((loss, top1)) = eval_head(ctx, &self.head(), &r.train, &r.train_targets, c)? {
            let n = r.train_targets.len();
            stats.add(loss, top1 * n as f64, n);
        }
        Ok(stats)
    }

    fn validate(&self, ctx: &RunCtx<'_>) -> Result<Option<(f64, f64)>> {
        let r = &self.rows;
        eval_head(ctx, &self.head(), &r.val, &r.val_targets, r.c)
    }

    fn net(&self) -> Net {
        self.net.valid()
    }

    fn optimizer(&self) -> Option<&ModuleOptimizer> {
        None
    }

    fn param_ids(&self) -> BTreeMap<String, u64> {
        checkpoint::param_ids(self.net.head())
    }
}
