//! Training-level bug cases (../shared/bug-cases.md): B04b, B20b, B21b, B24, B25, plus resume
//! and the predict/eval logits agreement. Small generated images, ResNet-18 from random init.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use nanoclass::eval::heldout::EvalSplit;
use nanoclass::infer::predictor::Predictor;
use nanoclass::model::Arch;
use nanoclass::run::Run;
use nanoclass::train::{
    Event, Hyperparams, Mode, OptimizerKind, Schedule, TrainOptions, resume_options, train,
};

/// Writes `n` 32x32 PNGs per class: class `i` is a noisy solid colour, so classes separate.
fn make_split(root: &Path, classes: &[(&str, usize)]) {
    let colours = [[220u8, 30, 30], [30, 30, 220], [30, 200, 30]];
    for (ci, (name, n)) in classes.iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..*n {
            let c = colours[ci % 3];
            let img = RgbImage::from_fn(32, 32, |x, y| {
                let j = ((x * 7 + y * 13 + k as u32 * 29) % 40) as u8;
                Rgb([
                    c[0].saturating_add(j),
                    c[1].saturating_add(j),
                    c[2].saturating_add(j),
                ])
            });
            img.save(dir.join(format!("{k}.png"))).unwrap();
        }
    }
}

fn options(data: &Path, out: &Path, mode: Mode) -> TrainOptions {
    let mut o = TrainOptions::new(data, out);
    o.arch = Arch::Resnet18;
    o.weights = "none".into();
    o.hyper = Hyperparams {
        epochs: 1,
        head_epochs: 1,
        batch_size: 8,
        schedule: Schedule::None,
        ..Hyperparams::for_mode(mode)
    };
    o.feature_cache = None;
    o
}

fn run_train(
    opts: &TrainOptions,
) -> (
    nanoclass::Result<nanoclass::train::TrainSummary>,
    Vec<String>,
) {
    let mut log = Vec::new();
    let r = train(opts, &mut |e| match e {
        Event::Info(s) | Event::Warn(s) => log.push(s),
        _ => {}
    });
    (r, log)
}

#[test]
fn b25a_nine_images_batch_eight_completes_with_a_finite_loss() {
    let tmp = tempfile::tempdir().unwrap();
    make_split(&tmp.path().join("data/train"), &[("a", 5), ("b", 4)]);
    make_split(&tmp.path().join("data/val"), &[("a", 1), ("b", 1)]);
    let opts = options(
        &tmp.path().join("data"),
        &tmp.path().join("run"),
        Mode::Full,
    );
    let (r, _) = run_train(&opts);
    let s = r.expect("the singleton last batch must not crash BatchNorm");
    assert_eq!(s.train_images, 9);
    let m = Run::open(&s.run_dir).unwrap().read_metrics().unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0].train_loss.is_finite());
    assert!(m[0].val_top1.is_some());
}

#[test]
fn b25b_one_usable_training_image_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 1), ("b", 0)]);
    std::fs::write(
        data.join("train/b/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let (r, log) = run_train(&options(&data, &tmp.path().join("run"), Mode::Frozen));
    let err = r.expect_err("one usable image cannot train").to_string();
    assert!(
        err.contains("no usable training image") && err.contains('b'),
        "{err}"
    );
    assert!(log.iter().any(|l| l.contains("broken.png")), "{log:?}");
}

#[test]
fn b04b_empty_val_trains_and_reports_no_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 3), ("b", 3)]);
    std::fs::create_dir_all(data.join("val/a")).unwrap();
    std::fs::create_dir_all(data.join("val/b")).unwrap();
    let (r, log) = run_train(&options(&data, &tmp.path().join("run"), Mode::Frozen));
    let s = r.unwrap();
    assert_eq!(s.best_val_top1, None);
    assert_eq!(s.val_images, 0);
    assert!(log.iter().any(|l| l.contains("val")), "{log:?}");
    let m = Run::open(&s.run_dir).unwrap().read_metrics().unwrap();
    assert_eq!(m[0].val_top1, None);
    assert_eq!(m[0].val_loss, None);
}

#[test]
fn b24_divergence_stops_with_step_and_lr_and_keeps_the_saved_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 4), ("b", 4)]);
    make_split(&data.join("val"), &[("a", 1), ("b", 1)]);
    let out = tmp.path().join("run");
    let mut good = options(&data, &out, Mode::Full);
    good.hyper.optimizer = OptimizerKind::Sgd;
    good.hyper.batch_size = 2;
    run_train(&good).0.unwrap();
    let model = out.join("model.safetensors");
    let before = std::fs::read(&model).unwrap();
    // The second epoch of the same run, at a learning rate that must diverge.
    let mut bad = good.clone();
    bad.resume = true;
    bad.hyper.epochs = 2;
    bad.hyper.lr = 1e12;
    let err = run_train(&bad)
        .0
        .expect_err("lr 1e12 must diverge")
        .to_string();
    assert!(err.contains("non-finite at epoch 2, step"), "{err}");
    assert!(err.contains("learning rate 1.000e12"), "{err}");
    assert!(
        std::fs::read(&model).unwrap() == before,
        "model.safetensors was overwritten by the diverged run"
    );
    let st = safetensors::SafeTensors::deserialize(&before).unwrap();
    for (name, t) in st.tensors() {
        if t.dtype() == safetensors::Dtype::F32 {
            assert!(
                t.data()
                    .chunks_exact(4)
                    .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
                "{name} has non-finite values"
            );
        }
    }
}

#[test]
fn b20b_resume_from_a_weights_file_says_to_use_it_as_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("resnet18-f37072fd.pth");
    std::fs::write(&f, b"PK\x03\x04").unwrap();
    let err = resume_options(&f, None)
        .expect_err("a file is not a run")
        .to_string();
    assert!(err.contains("--weights"), "{err}");
    let err = resume_options(tmp.path(), None)
        .expect_err("no state")
        .to_string();
    assert!(err.contains("no training state"), "{err}");
}

#[test]
fn b21b_two_class_checkpoint_on_three_class_data_states_both_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let d2 = tmp.path().join("d2");
    make_split(&d2.join("train"), &[("a", 3), ("b", 3)]);
    let out = tmp.path().join("run2");
    run_train(&options(&d2, &out, Mode::Frozen)).0.unwrap();
    let d3 = tmp.path().join("d3");
    make_split(&d3.join("train"), &[("a", 3), ("b", 3), ("c", 3)]);
    let mut o = options(&d3, &tmp.path().join("run3"), Mode::Frozen);
    o.weights = out.join("model.safetensors").display().to_string();
    let err = run_train(&o).0.expect_err("labels differ").to_string();
    assert!(
        err.contains("checkpoint: 2 classes [a, b]; dataset: 3 [a, b, c]"),
        "{err}"
    );
}

#[test]
fn resume_continues_after_the_last_epoch_with_the_same_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 4), ("b", 4)]);
    make_split(&data.join("val"), &[("a", 2), ("b", 2)]);
    let out = tmp.path().join("run");
    let mut o = options(&data, &out, Mode::Frozen);
    o.hyper.epochs = 2;
    run_train(&o).0.unwrap();
    let first = Run::open(&out).unwrap().read_metrics().unwrap();
    let r = resume_options(&out, Some(4)).unwrap();
    assert!(r.resume);
    assert_eq!(r.hyper.epochs, 4);
    run_train(&r).0.unwrap();
    let all = Run::open(&out).unwrap().read_metrics().unwrap();
    let epochs: Vec<usize> = all.iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 3, 4]);
    assert_eq!(all[..2], first[..]);
}

#[test]
fn predict_and_eval_give_the_same_logits_at_any_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 4), ("b", 4)]);
    make_split(&data.join("val"), &[("a", 3), ("b", 3)]);
    let out = tmp.path().join("run");
    run_train(&options(&data, &out, Mode::Frozen)).0.unwrap();
    let p = Predictor::open(&out).unwrap();
    let (held, _) = p.run.held_out(&data, EvalSplit::Val).unwrap();
    assert_eq!(held.len(), 6);
    let paths: Vec<PathBuf> = held.iter().map(|s| s.path.clone()).collect();
    let (one, _) = p.logits_for_files(&paths, 1).unwrap();
    let (many, _) = p.logits_for_files(&paths, 32).unwrap();
    for (a, b) in one.iter().zip(&many) {
        assert_eq!(a.path, b.path);
        for (x, y) in a.logits.iter().zip(&b.logits) {
            assert!((x - y).abs() < 1e-4, "batch 1 {x} vs batch 32 {y}");
        }
    }
    let (report, _) = p.evaluate(&held, 4).unwrap();
    let correct = one
        .iter()
        .zip(&held)
        .filter(|(r, s)| nanoclass::infer::scorer::argmax(&r.logits) == s.label)
        .count();
    assert_eq!(report.n, 6);
    assert_eq!(report.confusion.correct() as usize, correct);
}

#[test]
fn an_existing_run_is_not_overwritten_without_force_and_a_failed_start_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 3), ("b", 3)]);
    let out = tmp.path().join("run");
    let o = options(&data, &out, Mode::Frozen);
    run_train(&o).0.unwrap();
    let err = run_train(&o)
        .0
        .expect_err("a second train into the same run")
        .to_string();
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    let mut f = o.clone();
    f.force = true;
    run_train(&f).0.unwrap();
    assert_eq!(Run::open(&out).unwrap().read_metrics().unwrap().len(), 1);

    // A start that fails (a class with no decodable image) removes the run folder it made.
    let bad = tmp.path().join("bad");
    make_split(&bad.join("train"), &[("a", 3), ("b", 0)]);
    std::fs::write(bad.join("train/b/x.png"), b"not an image").unwrap();
    let out2 = tmp.path().join("run2");
    run_train(&options(&bad, &out2, Mode::Frozen))
        .0
        .unwrap_err();
    assert!(!out2.exists(), "half-made run left at {}", out2.display());
}

#[test]
fn settings_that_cannot_train_are_refused_with_their_range() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 3), ("b", 3)]);
    let base = options(&data, &tmp.path().join("run"), Mode::Frozen);
    let mut o = base.clone();
    o.hyper.epochs = 0;
    assert!(
        run_train(&o)
            .0
            .unwrap_err()
            .to_string()
            .contains("the number of epochs must be between 1")
    );
    let mut o = base.clone();
    o.hyper.momentum = 5.0;
    assert!(
        run_train(&o)
            .0
            .unwrap_err()
            .to_string()
            .contains("the momentum must be in [0, 1), got 5")
    );
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn eval_reads_test_folders_and_plain_folders_with_a_subset_of_the_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 3), ("b", 3), ("c", 3)]);
    make_split(&data.join("val"), &[("a", 1), ("b", 1), ("c", 1)]);
    make_split(&data.join("test"), &[("a", 2), ("b", 2), ("c", 2)]);
    let out = tmp.path().join("run");
    run_train(&options(&data, &out, Mode::Frozen)).0.unwrap();
    let p = Predictor::open(&out).unwrap();
    assert_eq!(p.run.held_out(&data, EvalSplit::Val).unwrap().0.len(), 3);
    assert_eq!(p.run.held_out(&data, EvalSplit::Test).unwrap().0.len(), 6);
    assert_eq!(
        p.run.held_out(&data, EvalSplit::All).unwrap().0.len(),
        9 + 3 + 6
    );
    // A plain folder holding only classes b and c: labels follow the model's indices.
    let plain = tmp.path().join("plain");
    make_split(&plain, &[("a", 0), ("b", 2)]);
    std::fs::remove_dir(plain.join("a")).unwrap();
    std::fs::rename(plain.join("b"), plain.join("c")).unwrap();
    make_split(&plain, &[("a", 0), ("b", 1)]);
    std::fs::remove_dir(plain.join("a")).unwrap();
    let (s, _) = p.run.held_out(&plain, EvalSplit::Val).unwrap();
    let mut labels: Vec<usize> = s.iter().map(|x| x.label).collect();
    labels.sort();
    assert_eq!(labels, vec![1, 2, 2]);
    // A class the model does not know is named.
    std::fs::create_dir_all(plain.join("zebra")).unwrap();
    std::fs::copy(s[0].path.clone(), plain.join("zebra/z.png")).unwrap();
    let err = p
        .run
        .held_out(&plain, EvalSplit::Val)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[zebra]"), "{err}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 4), ("b", 4)]);
    make_split(&data.join("val"), &[("a", 2), ("b", 2)]);
    let mut o = options(&data, &tmp.path().join("r1"), Mode::Frozen);
    o.hyper.epochs = 3;
    run_train(&o).0.unwrap();
    let mut o2 = o.clone();
    o2.out = tmp.path().join("r2");
    run_train(&o2).0.unwrap();
    let m1 = Run::open(&o.out).unwrap().read_metrics().unwrap();
    let m2 = Run::open(&o2.out).unwrap().read_metrics().unwrap();
    let losses = |m: &[nanoclass::run::EpochMetrics]| -> Vec<(f64, Option<f64>)> {
        m.iter().map(|e| (e.train_loss, e.val_loss)).collect()
    };
    assert_eq!(losses(&m1), losses(&m2));
}

#[test]
fn frozen_features_come_from_the_disk_cache_on_the_next_run_and_only_new_images_are_embedded() {
    use burn::prelude::Device;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_split(&data.join("train"), &[("a", 4), ("b", 4)]);
    make_split(&data.join("val"), &[("a", 2), ("b", 2)]);
    // A weights file: a seeded random ResNet-18 saved as a state dict.
    let dev = Device::flex();
    dev.seed(7);
    let net = nanoclass::model::Net::new(Arch::Resnet18, 1000, &dev);
    let weights = tmp.path().join("r18.safetensors");
    nanoclass::model::weights::save_net(&net, &weights, &Default::default()).unwrap();
    let mut o = options(&data, &tmp.path().join("r1"), Mode::Frozen);
    o.weights = weights.display().to_string();
    o.feature_cache = Some(tmp.path().join("features"));
    let (r, log1) = run_train(&o);
    r.unwrap();
    assert!(
        log1.iter()
            .any(|l| l.contains("0 from the cache, 12 computed")),
        "{log1:?}"
    );
    let mut o2 = o.clone();
    o2.out = tmp.path().join("r2");
    let (r, log2) = run_train(&o2);
    r.unwrap();
    assert!(
        log2.iter()
            .any(|l| l.contains("12 from the cache, 0 computed")),
        "{log2:?}"
    );
    let m1 = Run::open(&o.out).unwrap().read_metrics().unwrap();
    let m2 = Run::open(&o2.out).unwrap().read_metrics().unwrap();
    assert_eq!(
        m1[0].val_loss, m2[0].val_loss,
        "cached features must equal computed ones"
    );
    // One more image: only it is embedded.
    make_split(&data.join("train"), &[("a", 5)]);
    let mut o3 = o.clone();
    o3.out = tmp.path().join("r3");
    let (r, log3) = run_train(&o3);
    r.unwrap();
    assert!(
        log3.iter()
            .any(|l| l.contains("12 from the cache, 1 computed")),
        "{log3:?}"
    );
}
