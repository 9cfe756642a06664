//! The regression task on files: DLI course file names (tricky and malformed), the marker set
//! built from the real photos of ../shared/data, targets that move with flipped and cropped
//! views, and runs of one task refused by the other's commands.

mod common;

use std::path::Path;

use common::shared_data;
use image::{Rgb, RgbImage};
use nanoclass::data::folder::{parse_dli_point, scan_regression_folder};
use nanoclass::data::markers::{MarkerSet, draw_marker};
use nanoclass::data::presets::{ColorJitter, Normalization, TrainPreset, regression_presets};
use nanoclass::eval::regression::{denormalise, normalise};
use nanoclass::infer::predictor::Predictor;
use nanoclass::run::Task;
use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;

fn write_jpeg(path: &Path, img: &RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

#[test]
fn tricky_names_parse_and_malformed_names_are_refused_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = RgbImage::from_pixel(32, 24, Rgb([90, 120, 30]));
    // uuid with '-' and '_', upper-case extensions, a '.jpeg' name.
    let good = [
        (
            "nose/12_20_3f2a9c1e-11ee-4b1c_a9d0_0242ac120002.jpg",
            [12.0, 20.0],
        ),
        (
            "nose/0_7_6F1C2D3E-2A1B-11EE-8C99-0242AC120002.JPG",
            [0.0, 7.0],
        ),
        ("nose/31_23_a_b_c.Jpeg", [31.0, 23.0]),
        ("nose/5_6_x-y_z.PNG", [5.0, 6.0]),
    ];
    for (name, _) in good {
        write_jpeg(&root.join(name), &img);
    }
    let ds = scan_regression_folder(root).unwrap();
    assert_eq!(ds.classes, vec!["nose"]);
    let mut got: Vec<(String, [f32; 2])> = ds
        .train
        .iter()
        .map(|s| {
            (
                s.path.strip_prefix(root).unwrap().display().to_string(),
                s.point.unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, [f32; 2])> = good.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);

    for bad in [
        "12_20.jpg",
        "12_20_.jpg",
        "x_20_u.jpg",
        "-3_4_u.jpg",
        "1.5_4_u.jpg",
        "12-20-uuid.jpg",
        "99999999999_1_u.jpg",
    ] {
        let err = parse_dli_point(&root.join("nose").join(bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains(bad), "{bad}: {err}");
        assert!(err.contains("expected <x>_<y>_<uuid>.jpg"), "{err}");
    }
    // In a folder, a malformed name stops the scan with its path.
    write_jpeg(&root.join("nose/IMG_0001.JPG"), &img);
    let err = scan_regression_folder(root).unwrap_err().to_string();
    assert!(
        err.contains(&root.join("nose/IMG_0001.JPG").display().to_string()),
        "{err}"
    );
}

/// Centre of the pixels of `view` (CHW, values 0..=1) close to magenta.
fn magenta_centre(chw: &[f32], size: usize) -> [f32; 2] {
    let plane = size * size;
    let (mut sx, mut sy, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let (r, g, b) = (chw[i], chw[plane + i], chw[2 * plane + i]);
            if r > 0.8 && g < 0.25 && b > 0.8 {
                sx += x as f64 + 0.5;
                sy += y as f64 + 0.5;
                n += 1.0;
            }
        }
    }
    assert!(n > 10.0, "marker not found in the view");
    [(sx / n) as f32, (sy / n) as f32]
}

/// No normalisation: the view's values are `pixel / 255`.
const PLAIN: Normalization = Normalization {
    mean: [0.0; 3],
    std: [1.0; 3],
};

#[test]
fn flipped_and_cropped_views_move_the_target_with_the_pixels() {
    // A grey 300x224 image with a magenta marker centred on (61, 150).
    let mut img = RgbImage::from_pixel(300, 224, Rgb([128, 128, 128]));
    let point = [61.0f32, 150.0];
    draw_marker(&mut img, point[0], point[1], 6.0, [255, 0, 255]);
    // The regression preset's geometry without its random crop first: the centre square.
    let (regression, _) = regression_presets(Normalization::IMAGENET, 224);
    let mut train = TrainPreset {
        scale: [1.0, 1.0],
        ratio: [1.0, 1.0],
        norm: PLAIN,
        jitter: ColorJitter::NONE,
        ..regression
    };
    let mut rng = ChaCha12Rng::seed_from_u64(1);

    // Never flipped: the centre square (x from 38 to 262), the marker at x = 61 - 38 = 23.
    train.hflip = 0.0;
    let (view, b) = train.apply_with_flip(&img, &mut rng);
    assert!(!b.flipped);
    let seen = magenta_centre(&view, 224);
    assert_eq!(b.map_point(point, 224), [23.0, 150.0]);
    assert!(
        (seen[0] - 23.0).abs() < 0.5 && (seen[1] - 150.0).abs() < 0.5,
        "{seen:?}"
    );

    // Always flipped: x -> 224 - 23 = 201 in the view, the normalised x negated.
    train.hflip = 1.0;
    let (view, b) = train.apply_with_flip(&img, &mut rng);
    assert!(b.flipped);
    let target = b.map_point(point, 224);
    assert_eq!(target, [201.0, 150.0]);
    let seen = magenta_centre(&view, 224);
    assert!(
        (seen[0] - 201.0).abs() < 0.5 && (seen[1] - 150.0).abs() < 0.5,
        "{seen:?}"
    );
    let unflipped = normalise([23.0, 150.0], 224.0, 224.0);
    let flipped = normalise(target, 224.0, 224.0);
    assert!((flipped[0] + unflipped[0]).abs() < 1e-6 && flipped[1] == unflipped[1]);
    // And back to the source pixels.
    assert_eq!(b.unmap_point(target, 224), point);

    // A random crop of half the area, scaled: the point still lands on the marker.
    let crop = TrainPreset {
        scale: [0.5, 0.5],
        ratio: [1.0, 1.0],
        hflip: 0.5,
        ..train
    };
    let mut checked = 0;
    for _ in 0..40 {
        let (view, b) = crop.apply_with_flip(&img, &mut rng);
        let t = b.map_point(point, 224);
        // Only views that show the whole marker (radius + ring = 8 source px, scaled).
        let margin = 8.0 * 224.0 / b.w;
        if t[0] < margin || t[1] < margin || t[0] > 224.0 - margin || t[1] > 224.0 - margin {
            continue;
        }
        let seen = magenta_centre(&view, 224);
        let tol = 224.0 / b.w; // one source pixel in the view
        assert!(
            (seen[0] - t[0]).abs() < tol && (seen[1] - t[1]).abs() < tol,
            "{seen:?} vs {t:?} for {b:?}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} views showed the marker");

    // The regression preset itself: every view keeps the point inside, away from the edges,
    // and the marker is where the target says.
    let keeping = TrainPreset {
        norm: PLAIN,
        jitter: ColorJitter::NONE,
        ..regression
    };
    let mut flipped = 0;
    for _ in 0..30 {
        let (view, b) = keeping.apply_keeping(&img, point, &mut rng);
        let t = b.map_point(point, 224);
        let m = 224.0 * nanoclass::data::presets::KEEP_MARGIN;
        assert!(
            t.iter().all(|v| *v >= m - 1e-3 && *v <= 224.0 - m + 1e-3),
            "{t:?} for {b:?}"
        );
        let seen = magenta_centre(&view, 224);
        let tol = 224.0 / b.w.min(b.h);
        assert!(
            (seen[0] - t[0]).abs() < tol && (seen[1] - t[1]).abs() < tol,
            "{seen:?} vs {t:?} for {b:?}"
        );
        flipped += usize::from(b.flipped);
    }
    assert!((5..=25).contains(&flipped), "{flipped} of 30 flipped");
}

#[test]
fn marker_set_from_real_photos_names_each_file_by_its_marker() {
    let dir = tempfile::tempdir().unwrap();
    let set = MarkerSet {
        source: shared_data().join("hymenoptera"),
        out: dir.path().to_path_buf(),
        size: 224,
        radius: 6.0,
        categories: 2,
        train: 8,
        val: 4,
        seed: 5,
    };
    let written = set.write().unwrap();
    assert_eq!(written.len(), 12);
    let ds = scan_regression_folder(dir.path()).unwrap();
    assert_eq!(ds.classes, vec!["cyan", "magenta"]);
    assert_eq!(ds.train.len(), 8);
    assert_eq!(ds.val.as_ref().map(Vec::len), Some(4));
    // Train and held-out images come from different photos.
    let (train_src, val_src): (Vec<_>, Vec<_>) = written
        .iter()
        .partition(|w| w.path.starts_with(dir.path().join("train")));
    for v in &val_src {
        assert!(train_src.iter().all(|t| t.source != v.source));
    }
    let colours = [("magenta", [255u8, 0, 255]), ("cyan", [0, 255, 255])];
    let mut with_underscores = 0;
    for w in &written {
        let name = w.path.file_name().unwrap().to_str().unwrap();
        let uuid = name.splitn(3, '_').nth(2).unwrap();
        with_underscores += usize::from(uuid.contains('_'));
        let p = parse_dli_point(&w.path).unwrap();
        assert_eq!(p, [w.point[0] as f32, w.point[1] as f32]);
        // The file's pixels at the named point are the category's colour (JPEG-close).
        let img = image::open(&w.path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (224, 224));
        let folder = w
            .path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let colour = colours.iter().find(|c| c.0 == folder).unwrap().1;
        let px = img.get_pixel(w.point[0], w.point[1]).0;
        let close = px
            .iter()
            .zip(colour)
            .all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() < 60);
        assert!(
            close,
            "{}: {px:?} at the point, want {colour:?}",
            w.path.display()
        );
    }
    assert!(with_underscores >= 3, "{with_underscores}");
}

#[test]
fn the_course_normalisation_round_trips_through_the_view() {
    // A 448x336 photo: the eval view is its centre 298x224... of the shorter-side-224 resize.
    let (_, eval) = regression_presets(Normalization::IMAGENET, 224);
    let b = eval.crop_box(448, 336);
    let p = [224.0f32, 100.0];
    let v = b.map_point(p, 224);
    let n = normalise(v, 224.0, 224.0);
    let back = b.unmap_point(denormalise(n, 224.0, 224.0), 224);
    assert!(
        (back[0] - p[0]).abs() < 1e-3 && (back[1] - p[1]).abs() < 1e-3,
        "{back:?}"
    );
    // The image centre is the view centre: (0, 0) normalised.
    let c = normalise(b.map_point([224.0, 168.0], 224), 224.0, 224.0);
    assert!(c[0].abs() < 1e-6 && c[1].abs() < 1e-6, "{c:?}");
}

#[test]
fn a_run_of_one_task_is_refused_by_the_other() {
    use nanoclass::run::Run;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let (train_preset, eval_preset) = regression_presets(Normalization::IMAGENET, 224);
    let config = nanoclass::run::RunConfig {
        nanoclass_version: "test".into(),
        task: Task::Regression,
        arch: nanoclass::model::Arch::Resnet18,
        labels: vec!["nose".into()],
        eval_preset,
        train_preset,
        data: dir.path().to_path_buf(),
        weights: nanoclass::run::WeightsRecord {
            spec: "none".into(),
            path: None,
        },
        hyper: nanoclass::train::Hyperparams {
            epochs: 1,
            batch_size: 2,
            ..nanoclass::train::Hyperparams::for_mode(nanoclass::train::Mode::Full)
        },
        split: nanoclass::run::SplitRecord::NoValidation,
        device: Default::default(),
        precision: Default::default(),
    };
    let run = Run::create(&run_dir, config).unwrap();
    // A regression model file: resnet18 with 2 outputs for the one category.
    let net = nanoclass::model::Net::new(
        nanoclass::model::Arch::Resnet18,
        2,
        &nanoclass::infer::device::default_device(),
    );
    nanoclass::model::weights::save_net(&net, &run.model_path(), &run.model_metadata()).unwrap();

    let err = Predictor::open(&run_dir).unwrap_err().to_string();
    assert!(
        err.contains("is a regression run") && err.contains("not a classification run"),
        "{err}"
    );
    let p = Predictor::open_regression(&run_dir).unwrap();
    assert_eq!(p.task(), Task::Regression);
    let any = Predictor::open_any(&run_dir).unwrap();
    assert_eq!(
        any.points_for_image(&RgbImage::new(64, 48)).unwrap().len(),
        1
    );

    // Flip the run to classification: the 2-output file no longer matches 1 label, and the
    // file's task metadata disagrees; either way it is refused with a clear message.
    let mut cfg = Run::open(&run_dir).unwrap().config;
    cfg.task = Task::Classification;
    let run = Run {
        dir: run_dir.clone(),
        config: cfg,
    };
    run.write_config().unwrap();
    let err = Predictor::open_regression(&run_dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a classification run"), "{err}");
    let err = Predictor::open(&run_dir).unwrap_err().to_string();
    assert!(err.contains("outputs"), "{err}");
    let any = Predictor::open_any(&run_dir);
    assert!(any.is_err());
}
