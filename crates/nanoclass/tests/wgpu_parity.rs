//! The GPU backend against the CPU one: one ResNet-18 (its weights read from one safetensors
//! file, so both start equal) takes the same full training steps (forward, cross-entropy,
//! backward, SGD with momentum) on burn's Flex backend and on wgpu, which on a machine without a
//! GPU is Mesa's software Vulkan, lavapipe (Debian `mesa-vulkan-drivers`). The loss of every step
//! and the logits afterwards (eval mode) agree within the tolerances below.
//!
//! SGD rather than Adam: Adam's first steps move every weight by about its learning rate
//! whatever the gradient's size, so a gradient that is 1e-9 on one backend and -1e-9 on the
//! other would move a weight in opposite directions; SGD moves it in proportion, and the
//! comparison measures the backends, not that amplification.
//!
//! Built only with the `wgpu` feature (`.ci/run` builds the suite with it).
#![cfg(feature = "wgpu")]

use std::collections::BTreeMap;
use std::path::Path;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use nanoclass::infer::device::{DeviceChoice, read_f32, read_scalar};
use nanoclass::model::weights::{load_net, save_net};
use nanoclass::model::{Arch, Net};
use nanoclass::run::Task;
use nanoclass::train::loss::{Target, batch_loss};

/// Training steps compared.
const STEPS: usize = 3;
/// Images per batch and their side (ResNet-18 takes any side; 64 keeps software Vulkan quick).
const BATCH: usize = 4;
const SIDE: usize = 64;
const CLASSES: usize = 3;
/// The SGD learning rate (momentum 0.9).
const LR: f64 = 0.01;
/// Largest relative difference of a step's loss. The first two steps agree within 1e-6 on
/// lavapipe; the third within 1e-3, varying with the kernels autotune picks (it times them), as
/// f32 rounding differences pass through two updates and batch statistics of 4 images.
const LOSS_TOLERANCE: f64 = 5e-3;
/// Largest absolute difference of a logit after the steps (logits are of order 1; 6e-4 seen).
const LOGIT_TOLERANCE: f32 = 5e-3;

/// Batch `i`: values in -2..2 from a fixed generator, and labels 0, 1, 2, 0.
fn batch(i: usize) -> (Vec<f32>, Vec<Target>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
    let values = (0..BATCH * 3 * SIDE * SIDE)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    let targets = (0..BATCH)
        .map(|k| Target {
            label: k % CLASSES,
            point: [0.0, 0.0],
        })
        .collect();
    (values, targets)
}

/// The logits of `net` in eval mode for one more batch.
fn eval_logits(net: &Net, device: &Device) -> Vec<f32> {
    let (x, _) = batch(STEPS);
    let x = Tensor::<4>::from_data(TensorData::new(x, [BATCH, 3, SIDE, SIDE]), device);
    read_f32(net.forward(x)).unwrap()
}

/// The losses of [`STEPS`] training steps from the weights in `file` on `device`, and the
/// logits of one more batch in eval mode afterwards.
fn train_steps(device: &Device, file: &Path) -> (Vec<f64>, Vec<f32>) {
    let ad = device.clone().autodiff();
    let (mut net, _) = load_net(Arch::Resnet18, file, CLASSES, None, &ad).unwrap();
    let mut optim: ModuleOptimizer = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .init();
    let mut losses = Vec::new();
    for i in 0..STEPS {
        let (x, targets) = batch(i);
        let x = Tensor::<4>::from_data(TensorData::new(x, [BATCH, 3, SIDE, SIDE]), &ad);
        let (loss, _) =
            batch_loss(Task::Classification, net.forward(x), &targets, SIDE, &ad).unwrap();
        losses.push(read_scalar(loss.clone()).unwrap());
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(LR, net, grads);
    }
    let net: Net = net.valid();
    (losses, eval_logits(&net, device))
}

#[test]
fn training_steps_on_wgpu_equal_the_cpu_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("start.safetensors");
    let cpu = DeviceChoice::Cpu.device().unwrap();
    cpu.seed(7);
    let start = Net::new(Arch::Resnet18, CLASSES, &cpu);
    save_net(&start, &file, &BTreeMap::new()).unwrap();
    let untrained = eval_logits(&start, &cpu);
    // Autotune's least effort: this test compares results, not speed, and on software Vulkan
    // every candidate kernel that autotune times is compiled by LLVM first. Read when the
    // first GPU device is made, just below (this binary holds no other test).
    // SAFETY: no other thread of this process reads or writes the environment now.
    unsafe { std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal") };
    let gpu = DeviceChoice::Wgpu.device().unwrap_or_else(|e| {
        panic!(
            "{e}: without a GPU, install Mesa's software Vulkan (`apt-get install \
             mesa-vulkan-drivers`, as .ci/run does)"
        )
    });
    let (cpu_losses, cpu_logits) = train_steps(&cpu, &file);
    let (gpu_losses, gpu_logits) = train_steps(&gpu, &file);
    eprintln!("losses cpu {cpu_losses:?}\nlosses wgpu {gpu_losses:?}");
    // The steps train (weights and BatchNorm statistics): the logits moved far more than the
    // tolerance, so agreeing within it is not agreeing on nothing.
    let moved = untrained
        .iter()
        .zip(&cpu_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 10.0 * LOGIT_TOLERANCE,
        "training moved the logits by {moved}"
    );
    for (i, (a, b)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
        let rel = (a - b).abs() / a.abs().max(1.0);
        assert!(
            rel <= LOSS_TOLERANCE,
            "step {i}: loss {a} on the CPU, {b} on wgpu (relative difference {rel:.2e})"
        );
    }
    assert_eq!(cpu_logits.len(), BATCH * CLASSES);
    let worst = cpu_logits
        .iter()
        .zip(&gpu_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("largest logit difference {worst:.3e}");
    assert!(
        worst <= LOGIT_TOLERANCE,
        "logits differ by up to {worst} after {STEPS} steps:\ncpu {cpu_logits:?}\nwgpu {gpu_logits:?}"
    );
}
