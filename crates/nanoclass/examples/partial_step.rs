//! Time of one partial fine-tuning step on burn (forward through the trained tail, backward,
//! Adam step) for a batch of cached activations, by number of trained blocks (0, 1, 2).
//!
//! `cargo run --release -p nanoclass --example partial_step -- [BATCH] [ARCH] [BN]`
//!
//! `BN`: `batch` (the trained blocks' BatchNorm with batch statistics, the default) or `frozen`
//! (running statistics).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use nanoclass::infer::device::{default_device, read_scalar};
use nanoclass::model::cut::{Cut, TailBatchNorm};
use nanoclass::model::{Arch, Net};
use nanoclass::train::schedule::make_optimizer;
use nanoclass::train::{Hyperparams, Mode};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let arch = args
        .get(2)
        .and_then(|a| Arch::parse(a))
        .unwrap_or(Arch::EfficientnetLite0);
    let bn = match args.get(3).map(String::as_str) {
        Some("frozen") => TailBatchNorm::Frozen,
        _ => TailBatchNorm::Batch,
    };
    let ad = default_device().autodiff();
    let h = Hyperparams::for_mode(Mode::Partial);
    for blocks in [0, 1, 2] {
        let cut = Cut::new(arch, blocks).unwrap();
        let net = Net::new(arch, 12, &ad).with_tail_batch_norm(cut, bn);
        let [c, hh, ww] = net.activation_shape(cut, 224);
        let mut optim = make_optimizer(&h);
        let mut model = net;
        let mut times = Vec::new();
        let mut fwd = Vec::new();
        let mut back = Vec::new();
        for _ in 0..6 {
            let x = Tensor::<4>::random(
                [batch, c, hh, ww],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &ad,
            );
            let t0 = Instant::now();
            let y = model.forward_from(cut, x);
            let loss = y.powf_scalar(2.0).mean();
            let _ = read_scalar(loss.clone()).unwrap();
            let tf = t0.elapsed().as_secs_f64();
            let grads = loss.backward();
            let tb = t0.elapsed().as_secs_f64();
            let grads = GradientsParams::from_grads(grads, &model);
            model = optim.step(1e-4, model, grads);
            let probe = Tensor::zeros([2, c, hh, ww], &default_device());
            let _ = read_scalar(model.valid().forward_from(cut, probe).sum()).unwrap();
            let total = t0.elapsed().as_secs_f64();
            times.push(total);
            fwd.push(tf);
            back.push(tb - tf);
        }
        times.sort_by(f64::total_cmp);
        fwd.sort_by(f64::total_cmp);
        back.sort_by(f64::total_cmp);
        println!(
            "{arch} last {blocks} blocks, BatchNorm {bn:?}, batch {batch} of [{c}, {hh}, {ww}]: step median \
             {:.3} s (forward {:.3} s, backward {:.3} s)",
            times[3], fwd[3], back[3]
        );
    }
}
