//! One training step of EfficientNet-Lite0's head convolution, written out on the host.
//!
//! Partial fine-tuning's default cut for EfficientNet-Lite0 (`--train-blocks 0`) trains
//! `_conv_head` (1x1 convolution, 320 -> 1280, no bias), `_bn1` (batch statistics) and `_fc`
//! on the cached `[320, 7, 7]` output of the last block. Through burn's autodiff on the CPU
//! that step is some fifty single-threaded passes over the `[N, 1280, 7, 7]` map (BatchNorm's
//! generic training forward and backward, ReLU6 as compares and masks); here it is two matrix
//! products (burn, on the plain CPU device) and four parallel passes over the map, laid out as
//! `[M, 1280]` with one row per (image, position). The gradients go to the run's optimizer
//! exactly as burn's would (the same parameters: the same Adam state and checkpoints), and
//! `_bn1`'s running statistics are updated as burn's BatchNorm updates them.
//!
//! Forward, for `M = N * P` rows (`P` positions per image, 49 at 224x224), channel `c`:
//!
//! ```text
//! y = x W^T                                  [M, 1280], x the activations as [M, 320]
//! mu_c, var_c                                mean and biased variance of column c of y
//! xhat = (y - mu) / sqrt(var + eps)
//! z = gamma * xhat + beta,  h = min(max(z, 0), 6)        (BatchNorm, ReLU6)
//! p[n] = mean of h over image n's P rows     [N, 1280]   (global average pooling)
//! logits = p F + b                           [N, K]      (burn's Linear: F is [1280, K])
//! loss = mean over images of -log softmax(logits)[label]
//! ```
//!
//! Backward:
//!
//! ```text
//! dlogits = (softmax - onehot) / N;  dF = p^T dlogits;  db = sum_n dlogits;  dp = dlogits F^T
//! dz = dp[n] / P where 0 < z < 6, else 0
//! dbeta = sum_m dz;  dgamma = sum_m dz * xhat
//! dy = gamma / sqrt(var + eps) * (dz - mean_m dz - xhat * mean_m(dz * xhat))
//! dW = dy^T x                                [1280, 320]
//! ```
//!
//! Running statistics: `r <- (1 - momentum) r + momentum * s` for the batch mean and the
//! biased batch variance, as burn 0.22's `BatchNorm` does in training.

use burn::optim::GradientsParams;
use burn::prelude::*;
use rayon::prelude::*;

use crate::infer::device::read_f32;
use crate::infer::scorer::argmax;
use crate::model::Net;
use crate::model::cut::Cut;
use crate::model::efficientnet::EfficientNetLite;
use crate::{Error, Result};

/// The outcome of one step: the batch's mean loss, its right answers and the gradients of
/// the trained parameters (on the plain device, as burn's `GradientsParams::from_grads` gives
/// them).
pub(crate) struct HostStep {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Images whose largest logit is their label's.
    pub correct: usize,
    /// Gradients of `_conv_head.weight`, `_bn1.gamma`, `_bn1.beta`, `_fc.weight`, `_fc.bias`.
    pub grads: GradientsParams,
}

/// The EfficientNet-Lite0 model whose step this module takes: `net` at `cut` trains only the
/// head convolution, `_bn1` and `_fc` (no block, no point head).
pub(crate) fn lite0_head_only(net: &Net, cut: Cut) -> Option<&EfficientNetLite> {
    match net {
        Net::EfficientNetLite(m) if cut.blocks == 0 && net.point_head().is_none() => Some(m),
        _ => None,
    }
}

/// Rows per parallel task of the column reductions.
const ROWS_PER_TASK: usize = 64;

/// One step on `n` cached activations `x` (`[n, C, h, w]` flattened, `C` = `_conv_head`'s
/// input channels) with class `labels`: the loss, the right answers and the gradients; with
/// `update_statistics`, `_bn1`'s running mean and variance take the batch's as burn's
/// BatchNorm does. The matrix products run on `device` (the plain CPU device).
///
/// # Errors
/// A tensor cannot be read back; `labels` does not match `n` or names no output.
pub(crate) fn step(
    m: &EfficientNetLite,
    x: &[f32],
    n: usize,
    labels: &[usize],
    device: &Device,
    update_statistics: bool,
) -> Result<HostStep> {
    let [c_out, c_in, ..] = m._conv_head.weight.dims();
    let positions = x.len() / (n * c_in).max(1);
    let rows = n * positions;
    if labels.len() != n || x.len() != rows * c_in || n < 2 {
        return Err(Error::Train(format!(
            "host step: {} activation values, {} labels for a batch of {n}",
            x.len(),
            labels.len()
        )));
    }
    // [n, C, P] -> [n * P, C]: one row per (image, position).
    let mut xr = vec![0.0f32; rows * c_in];
    xr.par_chunks_mut(positions * c_in)
        .zip(x.par_chunks(c_in * positions))
        .for_each(|(out, img)| {
            for (c, plane) in img.chunks(positions).enumerate() {
                for (p, &v) in plane.iter().enumerate() {
                    out[p * c_in + c] = v;
                }
            }
        });
    let x_t = Tensor::<2>::from_data(TensorData::new(xr, [rows, c_in]), device);
    let w = read_f32(m._conv_head.weight.val())?;
    let w_t = Tensor::<2>::from_data(TensorData::new(w, [c_out, c_in]), device);
    let y = read_f32(x_t.clone().matmul(w_t.transpose()))?;

    // Column statistics of y (BatchNorm's batch mean and biased variance).
    let mean: Vec<f64> = columns(&y, c_out, |acc, row| {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += f64::from(v);
        }
    })
    .into_iter()
    .map(|s| s / rows as f64)
    .collect();
    let var: Vec<f64> = columns(&y, c_out, |acc, row| {
        for ((a, &v), &mu) in acc.iter_mut().zip(row).zip(&mean) {
            let d = f64::from(v) - mu;
            *a += d * d;
        }
    })
    .into_iter()
    .map(|s| s / rows as f64)
    .collect();
    let eps = m._bn1.epsilon;
    let inv_std: Vec<f32> = var
        .iter()
        .map(|v| (1.0 / (v + eps).sqrt()) as f32)
        .collect();
    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let gamma = read_f32(m._bn1.gamma.val())?;
    let beta = read_f32(m._bn1.beta.val())?;
    // z = a * y + b per column.
    let a: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
    let b: Vec<f32> = beta
        .iter()
        .zip(&a)
        .zip(&mean32)
        .map(|((be, a), mu)| be - a * mu)
        .collect();

    // Pooled features, one row per image.
    let scale = 1.0 / positions as f32;
    let mut pooled = vec![0.0f32; n * c_out];
    pooled
        .par_chunks_mut(c_out)
        .zip(y.par_chunks(positions * c_out))
        .for_each(|(p, img)| {
            for row in img.chunks(c_out) {
                for (((p, &v), &a), &b) in p.iter_mut().zip(row).zip(&a).zip(&b) {
                    *p += (a * v + b).clamp(0.0, 6.0);
                }
            }
            p.iter_mut().for_each(|v| *v *= scale);
        });

    // The head: logits, cross-entropy and its gradient.
    let f = read_f32(m._fc.weight.val())?;
    let k = f.len() / c_out;
    let bias = match &m._fc.bias {
        Some(b) => read_f32(b.val())?,
        None => vec![0.0; k],
    };
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut dlogits = vec![0.0f32; n * k];
    for (i, (p, dl)) in pooled.chunks(c_out).zip(dlogits.chunks_mut(k)).enumerate() {
        let mut logits = bias.clone();
        for (&pv, frow) in p.iter().zip(f.chunks(k)) {
            for (l, &fv) in logits.iter_mut().zip(frow) {
                *l += pv * fv;
            }
        }
        let label = labels[i];
        if label >= k {
            return Err(Error::Train(format!(
                "label {label} of a model with {k} outputs"
            )));
        }
        if argmax(&logits) == label {
            correct += 1;
        }
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - top).exp()).sum();
        loss += sum.ln() - f64::from(logits[label] - top);
        for (j, (d, &l)) in dl.iter_mut().zip(&logits).enumerate() {
            let prob = (f64::from(l - top).exp() / sum) as f32;
            *d = (prob - if j == label { 1.0 } else { 0.0 }) / n as f32;
        }
    }
    loss /= n as f64;
    let mut df = vec![0.0f32; c_out * k];
    let mut db = vec![0.0f32; k];
    let mut dp = vec![0.0f32; n * c_out];
    for ((p, dl), dpr) in pooled
        .chunks(c_out)
        .zip(dlogits.chunks(k))
        .zip(dp.chunks_mut(c_out))
    {
        for (d, &g) in db.iter_mut().zip(dl) {
            *d += g;
        }
        for (((&pv, frow), dfrow), dpv) in p
            .iter()
            .zip(f.chunks(k))
            .zip(df.chunks_mut(k))
            .zip(dpr.iter_mut())
        {
            let mut s = 0.0f32;
            for ((dfv, &g), &fv) in dfrow.iter_mut().zip(dl).zip(frow) {
                *dfv += pv * g;
                s += g * fv;
            }
            *dpv = s;
        }
    }

    // Back through pooling and ReLU6 (dz), then BatchNorm's sums.
    let mut dz = vec![0.0f32; rows * c_out];
    let sums: Vec<(Vec<f64>, Vec<f64>)> = dz
        .par_chunks_mut(positions * c_out)
        .zip(y.par_chunks(positions * c_out))
        .zip(dp.par_chunks(c_out))
        .map(|((dzi, yi), dpi)| {
            let mut s_dz = vec![0.0f64; c_out];
            let mut s_dzx = vec![0.0f64; c_out];
            for (dzr, yr) in dzi.chunks_mut(c_out).zip(yi.chunks(c_out)) {
                for c in 0..c_out {
                    let z = a[c] * yr[c] + b[c];
                    if z > 0.0 && z < 6.0 {
                        let g = dpi[c] * scale;
                        dzr[c] = g;
                        s_dz[c] += f64::from(g);
                        s_dzx[c] += f64::from(g) * f64::from((yr[c] - mean32[c]) * inv_std[c]);
                    }
                }
            }
            (s_dz, s_dzx)
        })
        .collect();
    let (dbeta, dgamma) = sums.into_iter().fold(
        (vec![0.0f64; c_out], vec![0.0f64; c_out]),
        |(s1, s2), (a1, a2)| (add_vec(s1, a1), add_vec(s2, a2)),
    );
    let mean_dz: Vec<f32> = dbeta.iter().map(|s| (s / rows as f64) as f32).collect();
    let mean_dzx: Vec<f32> = dgamma.iter().map(|s| (s / rows as f64) as f32).collect();
    // dy, in place of dz.
    dz.par_chunks_mut(c_out)
        .zip(y.par_chunks(c_out))
        .for_each(|(d, yr)| {
            for c in 0..c_out {
                let xhat = (yr[c] - mean32[c]) * inv_std[c];
                d[c] = a[c] * (d[c] - mean_dz[c] - xhat * mean_dzx[c]);
            }
        });
    let dy = Tensor::<2>::from_data(TensorData::new(dz, [rows, c_out]), device);
    let dw = dy.transpose().matmul(x_t).reshape([c_out, c_in, 1, 1]);

    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let vec1 = |v: Vec<f32>| {
        let len = v.len();
        Tensor::<1>::from_data(TensorData::new(v, [len]), device)
    };
    let mut grads = GradientsParams::new();
    grads.register(m._conv_head.weight.id, dw);
    grads.register(m._bn1.gamma.id, vec1(to32(dgamma)));
    grads.register(m._bn1.beta.id, vec1(to32(dbeta)));
    grads.register(
        m._fc.weight.id,
        Tensor::<2>::from_data(TensorData::new(df, [c_out, k]), device),
    );
    if let Some(bias) = &m._fc.bias {
        grads.register(bias.id, vec1(db));
    }

    if update_statistics {
        let momentum = m._bn1.momentum;
        let running = |state: &burn::module::RunningState<Tensor<1>>, batch: &[f64]| {
            let old = state.value_sync();
            let dev = old.device();
            let old = read_f32(old)?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(&r, &s)| ((1.0 - momentum) * f64::from(r) + momentum * s) as f32)
                .collect();
            state.update(Tensor::<1>::from_data(TensorData::new(new, [c_out]), &dev));
            Ok::<(), Error>(())
        };
        running(&m._bn1.running_mean, &mean)?;
        running(&m._bn1.running_var, &var)?;
    }
    Ok(HostStep {
        loss,
        correct,
        grads,
    })
}

/// Per-column sums of the row-major `[rows, cols]` matrix `y`: `add(acc, row)` adds one row
/// into `acc`. Fixed blocks of rows are summed in parallel and the block sums added in block
/// order, so the result does not depend on how rayon schedules the blocks (a resumed run
/// repeats an uninterrupted one bit for bit).
fn columns(y: &[f32], cols: usize, add: impl Fn(&mut [f64], &[f32]) + Sync) -> Vec<f64> {
    y.par_chunks(ROWS_PER_TASK * cols)
        .map(|block| {
            let mut acc = vec![0.0f64; cols];
            for row in block.chunks(cols) {
                add(&mut acc, row);
            }
            acc
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0; cols], add_vec)
}

fn add_vec(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

#[cfg(test)]
mod tests {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::model::Arch;
    use crate::model::cut::TailBatchNorm;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        read_f32(t).unwrap()
    }

    /// Largest difference between `a` and `b`, relative to `b`'s largest magnitude.
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn the_host_step_gives_burns_loss_gradients_and_running_statistics() {
        let plain = Device::flex();
        let ad = plain.clone().autodiff();
        let cut = Cut::new(Arch::EfficientnetLite0, 0).unwrap();
        let net = Net::new(Arch::EfficientnetLite0, 5, &ad)
            .with_tail_batch_norm(cut, TailBatchNorm::Batch);
        let Net::EfficientNetLite(m) = &net else {
            unreachable!()
        };
        // BatchNorm away from its initial identity, so that gamma, beta and the statistics
        // all enter the gradients.
        let m = {
            let mut m = m.clone();
            let gamma = Tensor::<1>::random([1280], Distribution::Uniform(0.5, 1.5), &ad);
            let beta = Tensor::<1>::random([1280], Distribution::Uniform(-0.5, 2.0), &ad);
            m._bn1.gamma = m._bn1.gamma.map(|_| gamma.require_grad());
            m._bn1.beta = m._bn1.beta.map(|_| beta.require_grad());
            m
        };
        let net = Net::EfficientNetLite(m);
        let n = 6;
        let labels = [0usize, 1, 2, 3, 4, 1];
        let x = Tensor::<4>::random([n, 320, 7, 7], Distribution::Normal(0.0, 1.0), &plain);
        let xs = values(x.clone());

        let Net::EfficientNetLite(m) = &net else {
            unreachable!()
        };
        let mean0 = values(m._bn1.running_mean.value_sync());
        let var0 = values(m._bn1.running_var.value_sync());
        // burn: forward from the cut on the autodiff device, cross-entropy, backward.
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]),
            &ad,
        );
        let logits = net.forward_from(
            cut,
            Tensor::<4>::from_data(TensorData::new(xs.clone(), [n, 320, 7, 7]), &ad),
        );
        let burn_logits = values(logits.clone());
        let burn_correct = burn_logits
            .chunks(5)
            .zip(labels)
            .filter(|(l, y)| argmax(l) == *y)
            .count();
        let loss = CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(logits, targets);
        let burn_loss = f64::from(values(loss.clone())[0]);
        let burn = GradientsParams::from_grads(loss.backward(), &net);
        let mean1 = values(m._bn1.running_mean.value_sync());
        let var1 = values(m._bn1.running_var.value_sync());

        let host = step(m, &xs, n, &labels, &plain, true).unwrap();
        assert!(
            (host.loss - burn_loss).abs() < 1e-5 * burn_loss.max(1.0),
            "loss {} vs {burn_loss}",
            host.loss
        );
        let bias = m._fc.bias.as_ref().unwrap();
        let pairs: [(&str, _, Vec<f32>); 5] = [
            (
                "_conv_head.weight",
                values(host.grads.get::<4>(m._conv_head.weight.id).unwrap()),
                values(burn.get::<4>(m._conv_head.weight.id).unwrap()),
            ),
            (
                "_bn1.weight",
                values(host.grads.get::<1>(m._bn1.gamma.id).unwrap()),
                values(burn.get::<1>(m._bn1.gamma.id).unwrap()),
            ),
            (
                "_bn1.bias",
                values(host.grads.get::<1>(m._bn1.beta.id).unwrap()),
                values(burn.get::<1>(m._bn1.beta.id).unwrap()),
            ),
            (
                "_fc.weight",
                values(host.grads.get::<2>(m._fc.weight.id).unwrap()),
                values(burn.get::<2>(m._fc.weight.id).unwrap()),
            ),
            (
                "_fc.bias",
                values(host.grads.get::<1>(bias.id).unwrap()),
                values(burn.get::<1>(bias.id).unwrap()),
            ),
        ];
        for (name, h, b) in &pairs {
            let d = rel_diff(h, b);
            assert!(
                d < 1e-4,
                "{name}: host and burn gradients differ by {d} (relative)"
            );
            assert!(
                b.iter().any(|v| *v != 0.0),
                "{name}: burn's gradient is zero"
            );
        }
        // burn moved the running statistics by momentum * batch statistic; the host step,
        // from there, by the same amount.
        let momentum = m._bn1.momentum as f32;
        let mean2 = values(m._bn1.running_mean.value_sync());
        let var2 = values(m._bn1.running_var.value_sync());
        let increment = |before: &[f32], after: &[f32]| -> Vec<f32> {
            before
                .iter()
                .zip(after)
                .map(|(b, a)| a - (1.0 - momentum) * b)
                .collect()
        };
        for (what, (b0, b1, b2)) in [
            ("mean", (&mean0, &mean1, &mean2)),
            ("variance", (&var0, &var1, &var2)),
        ] {
            let d = rel_diff(&increment(b1, b2), &increment(b0, b1));
            assert!(
                d < 1e-4,
                "running {what}: host and burn updates differ by {d}"
            );
        }
        assert_eq!(host.correct, burn_correct, "right answers");
    }
}
