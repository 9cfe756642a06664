//! The images a run trains and is scored on: the dataset scanned, the held-out split, the
//! regression images brought to the input size with their points, and the check that every
//! class keeps a usable training image.

use std::path::Path;

use rayon::prelude::*;

use crate::data::decode::DecodeOptions;
use crate::data::folder::{Sample, scan_image_folder, scan_regression_folder};
use crate::data::groups::{GroupRules, capture_groups, fingerprints, near_copy_warning};
use crate::data::loader::{Skipped, decode_samples};
use crate::data::presets::EvalPreset;
use crate::data::split::grouped_split;
use crate::eval::regression::normalise;
use crate::run::{SplitRecord, Task};
use crate::train::loss::Target;
use crate::train::{Event, TrainOptions};
use crate::{Error, Result};

/// The scanned dataset and its split.
pub(crate) struct Data {
    pub labels: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub split: SplitRecord,
}

pub(crate) fn prepare_data(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<Data> {
    let ds = match opts.task {
        Task::Classification => scan_image_folder(&opts.data)?,
        Task::Regression => scan_regression_folder(&opts.data)?,
    };
    for w in &ds.warnings {
        on_event(Event::Warn(w.clone()));
    }
    let n = ds.classes.len();
    if let Some(test) = ds.test.as_ref().filter(|t| !t.is_empty()) {
        on_event(Event::Info(format!(
            "test/ ({} images) is never used in training; score it afterwards with `nanoclass eval RUN --split test`",
            test.len()
        )));
    }
    let (train, val, split) = match ds.val {
        Some(val) if !val.is_empty() => (ds.train, val, SplitRecord::Folder),
        Some(_) => {
            on_event(Event::Warn(
                "val/ has no images: training without a held-out set, no accuracy figure will be reported"
                    .into(),
            ));
            (ds.train, vec![], SplitRecord::NoValidation)
        }
        None if opts.hyper.val_fraction <= 0.0 => (ds.train, vec![], SplitRecord::NoValidation),
        None => {
            let prints = fingerprints(&ds.train);
            let groups = capture_groups(&ds.train, &prints, &GroupRules::default());
            let split = grouped_split(
                &ds.train,
                &groups,
                n,
                opts.hyper.val_fraction,
                opts.hyper.seed,
            );
            let group_count = groups.iter().enumerate().filter(|&(i, &g)| i == g).count();
            if group_count < ds.train.len() {
                on_event(Event::Info(format!(
                    "{} images form {group_count} capture groups (bursts and near-copies); each group is kept whole on one side of the held-out split",
                    ds.train.len()
                )));
            }
            let unsplittable: Vec<String> = split
                .unsplittable
                .iter()
                .map(|&c| ds.classes[c].clone())
                .collect();
            if !unsplittable.is_empty() {
                on_event(Event::Warn(format!(
                    "the images of {} are each one burst of near-copies: their held-out images have near-copies in training, so the held-out figure overstates how well new captures of them are recognised; capture them in several sessions (other positions, light, backgrounds)",
                    unsplittable.join(", ")
                )));
            }
            let val_files = split
                .val
                .iter()
                .map(|s| {
                    s.path
                        .strip_prefix(&ds.root)
                        .unwrap_or(&s.path)
                        .to_path_buf()
                })
                .collect();
            (
                split.train,
                split.val,
                SplitRecord::Generated {
                    val_fraction: opts.hyper.val_fraction,
                    seed: opts.hyper.seed,
                    val_files,
                    groups: Some(group_count),
                    unsplittable,
                },
            )
        }
    };
    if matches!(split, SplitRecord::Folder)
        && let Some(w) = near_copy_warning(&ds.root, &train, &val, "val/")
    {
        on_event(Event::Warn(w));
    }
    if let Some(test) = ds.test.as_ref()
        && let Some(w) = near_copy_warning(&ds.root, &train, test, "test/")
    {
        on_event(Event::Warn(w));
    }
    if train.len() < 2 {
        return Err(Error::Dataset {
            path: opts.data.clone(),
            reason: format!(
                "{} training image(s): at least 2 are needed (BatchNorm needs two values per channel)",
                train.len()
            ),
        });
    }
    Ok(Data {
        labels: ds.classes,
        train,
        val,
        split,
    })
}

/// Regression samples decoded at full size (the file name's point is in pixels of the file as
/// displayed), their shorter side resized to the eval preset's input size, and their point
/// scaled alike. Undecodable files are reported and added to `skipped`; a sample whose point
/// falls outside the model's view (outside the image, or outside the centre square of a
/// non-square image) is left out with a warning, since no view of it shows the point.
pub(crate) fn regression_images(
    samples: &[Sample],
    eval: &EvalPreset,
    skipped: &mut Vec<Skipped>,
    on_event: &mut dyn FnMut(Event),
) -> Vec<(Sample, image::RgbImage)> {
    let (decoded, skip) = decode_samples(samples, &DecodeOptions::default());
    for s in &skip {
        on_event(Event::Warn(s.to_string()));
    }
    skipped.extend(skip);
    let resized: Vec<(Sample, image::RgbImage)> = decoded
        .into_par_iter()
        .map(|(mut s, img)| {
            let small = crate::data::presets::resize_shorter_side(&img, eval.crop);
            let (sx, sy) = (
                small.width() as f32 / img.width() as f32,
                small.height() as f32 / img.height() as f32,
            );
            s.point = s.point.map(|p| [p[0] * sx, p[1] * sy]);
            (s, small)
        })
        .collect();
    let mut kept = Vec::with_capacity(resized.len());
    let mut outside = Vec::new();
    for (s, img) in resized {
        let view = s.point.map(|p| {
            eval.crop_box(img.width(), img.height())
                .map_point(p, eval.crop)
        });
        match view {
            Some(v) if crate::eval::regression::in_view(v, eval.crop) => kept.push((s, img)),
            _ => outside.push(s.path),
        }
    }
    if let Some(first) = outside.first() {
        on_event(Event::Warn(format!(
            "{} image(s) left out: their point is outside the model's view (the centre square \
             of the image); first: {}",
            outside.len(),
            first.display()
        )));
    }
    kept
}

/// The held-out target of a regression sample whose image is already at the input size (see
/// [`regression_images`]): its point in the eval preset's view, normalised.
pub(crate) fn eval_target(s: &Sample, img: &image::RgbImage, eval: &EvalPreset) -> Target {
    let size = eval.crop as f32;
    let p = s.point.unwrap_or([0.0; 2]);
    let v = eval
        .crop_box(img.width(), img.height())
        .map_point(p, eval.crop);
    Target {
        label: s.label,
        point: normalise(v, size, size),
    }
}

/// Every class must keep at least one decodable training image (policy 4 of the bug cases).
pub(crate) fn check_classes(labels: &[String], train: &[Sample], root: &Path) -> Result<()> {
    let mut counts = vec![0usize; labels.len()];
    for s in train {
        counts[s.label] += 1;
    }
    let empty: Vec<&str> = labels
        .iter()
        .zip(&counts)
        .filter(|(_, c)| **c == 0)
        .map(|(l, _)| l.as_str())
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(Error::Dataset {
            path: root.to_path_buf(),
            reason: format!(
                "no usable training image in class folder(s): {}",
                empty.join(", ")
            ),
        })
    }
}
