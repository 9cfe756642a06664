//! Dataset scanning: ImageFolder layouts and the layouts written by the NVIDIA DLI course tools.
//!
//! Two layouts are read (torchvision `ImageFolder` semantics: one folder per class, classes
//! sorted, index = position in the sorted list):
//!
//! 1. `root/{train,val,test}/<class>/<image>`: any subset of the three split folders, e.g.
//!    `train/` only, or `val/` only for an evaluation-only set.
//! 2. `root/<class>/<image>`: everything goes to `train`; the caller splits (see
//!    [`crate::data::split::stratified_split`]).
//!
//! The layout is (1) when `root` holds a `train/` folder, or when every visible folder of `root`
//! is named `val` or `test`; otherwise it is (2).
//!
//! Ignored and never counted (so no class index ever shifts): entries whose name starts with
//! `.` (`.ipynb_checkpoints`, `.DS_Store`, AppleDouble `._x.png`), `__MACOSX` folders, files
//! without an image extension ([`is_image_extension`]: `Thumbs.db`, `desktop.ini`), and plain
//! files at the root (`SHA256SUMS`, `SOURCE.md`). Ignored folders at the root or split level are
//! reported once each in [`Dataset::warnings`]; ignored files are reported as one count per split.
//!
//! Scanning lists files only; decoding happens later (an undecodable file is skipped there with a
//! warning, policy 3).

mod walk;

use walk::*;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::data::decode::is_image_extension;
use crate::{Error, Result};

/// One of the three dataset splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Images the model is trained on.
    Train,
    /// Images used to pick the best epoch and report accuracy during training.
    Val,
    /// Held-out images for the final evaluation.
    Test,
}

impl Split {
    /// The folder name of the split in layout (1): `train`, `val` or `test`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// One image file and its target.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Path of the image file (as found under the scanned root).
    pub path: PathBuf,
    /// Class index into [`Dataset::classes`] (0-based). For a regression dataset, the index of
    /// the category folder.
    pub label: usize,
    /// Regression target: the `(x, y)` point in pixels of the saved image, parsed from a DLI file
    /// name `<x>_<y>_<uuid>.jpg` (see [`parse_dli_point`]). `None` for classification.
    pub point: Option<[f32; 2]>,
}

/// A scanned dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The folder that was scanned.
    pub root: PathBuf,
    /// Class (or regression category) names: the visible folder names, sorted in byte order of
    /// their UTF-8 names (the order of Python's `sorted()`, as torchvision's `ImageFolder` uses).
    /// The index of a name is the class index.
    pub classes: Vec<String>,
    /// Training samples, ordered by class, then by path (byte order).
    pub train: Vec<Sample>,
    /// Validation samples; `Some` when a `val/` folder exists, `Some(vec![])` (plus a warning)
    /// when it holds no image.
    pub val: Option<Vec<Sample>>,
    /// Test samples; `Some` when a `test/` folder exists (may be empty, with a warning).
    pub test: Option<Vec<Sample>>,
    /// Things the user should know that did not stop the scan, e.g.
    /// `"ignored hidden folder .ipynb_checkpoints"` or `"val/ is empty: no validation figure"`.
    pub warnings: Vec<String>,
}

impl Dataset {
    /// The samples of one split, if it exists.
    pub fn split(&self, split: Split) -> Option<&[Sample]> {
        match split {
            Split::Train => Some(&self.train),
            Split::Val => self.val.as_deref(),
            Split::Test => self.test.as_deref(),
        }
    }
}

/// Counts samples per label: `counts[i]` = number of samples with `label == i`, for
/// `i < n_classes`. Labels `>= n_classes` are not counted.
pub fn sample_counts(samples: &[Sample], n_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; n_classes];
    for sample in samples {
        if let Some(count) = counts.get_mut(sample.label) {
            *count += 1;
        }
    }
    counts
}

/// Scans an ImageFolder dataset for classification (layouts in the module documentation).
///
/// Nested sub-folders inside a class folder are searched recursively (as torchvision does);
/// symbolic links are followed, each real folder is visited once.
///
/// # Errors
/// [`Error::Dataset`] naming `root` when: it cannot be read; a folder name is not valid UTF-8;
/// there are fewer than 2 classes ("at least 2 classes are needed"); a class folder of the
/// training split holds no image (the message names every such folder, e.g. `train/b`); the
/// class folders of `val/` or `test/` differ from those of `train/` (the message lists the
/// missing and extra names).
pub fn scan_image_folder(root: &Path) -> Result<Dataset> {
    let dataset = scan(root, Mode::Classification)?;
    if dataset.classes.len() < 2 {
        return Err(dataset_error(
            root,
            format!(
                "at least 2 classes are needed to train a classifier, found {} ({}); make one \
                 folder per class",
                dataset.classes.len(),
                list(&dataset.classes)
            ),
        ));
    }
    Ok(dataset)
}

/// Scans a regression dataset in the DLI course layout: `<category>/<x>_<y>_<uuid>.jpg`
/// (or the same under `train/`, `val/`, `test/`). Categories are the folders (sorted, `label` =
/// category index); each [`Sample::point`] comes from its file name. A single category is fine.
///
/// # Errors
/// [`Error::Dataset`] naming `root` when it cannot be read, holds no category folder or no image,
/// the split folders disagree on the categories, or an image file name does not parse (the
/// message lists the first few such names and says `expected <x>_<y>_<uuid>.jpg`).
pub fn scan_regression_folder(root: &Path) -> Result<Dataset> {
    let dataset = scan(root, Mode::Regression)?;
    if dataset.classes.is_empty() {
        return Err(dataset_error(root, "no category folder found".to_owned()));
    }
    let total = dataset.train.len()
        + dataset.val.as_ref().map_or(0, Vec::len)
        + dataset.test.as_ref().map_or(0, Vec::len);
    if total == 0 {
        return Err(dataset_error(
            root,
            "no image found in any category folder".to_owned(),
        ));
    }
    Ok(dataset)
}

/// Parses the target point from a DLI regression file name `<x>_<y>_<uuid>.<ext>`, where `x` and
/// `y` are non-negative integer pixel coordinates in the saved image and the uuid (anything
/// non-empty; it may contain `-` and `_`) makes the name unique. `12_200_3f2a-11ee_b1c2.jpg`
/// gives `[12.0, 200.0]`.
///
/// # Errors
/// [`Error::Dataset`] with the path and the reason, e.g. `expected <x>_<y>_<uuid>.jpg`.
pub fn parse_dli_point(path: &Path) -> Result<[f32; 2]> {
    let fail = |why: &str| Error::Dataset {
        path: path.to_path_buf(),
        reason: format!("{why}: expected <x>_<y>_<uuid>.jpg with integer pixel x and y"),
    };
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| fail("the file name is not valid UTF-8"))?;
    let mut parts = stem.splitn(3, '_');
    let (Some(x), Some(y), Some(uuid)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(fail("the file name has fewer than 3 '_'-separated parts"));
    };
    let number = |s: &str, axis: &str| -> Result<f32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(&format!(
                "{axis} = {s:?} is not a non-negative integer"
            )));
        }
        s.parse::<u32>()
            .map(|v| v as f32)
            .map_err(|_| fail(&format!("{axis} = {s:?} is out of range")))
    };
    let (x, y) = (number(x, "x")?, number(y, "y")?);
    if uuid.is_empty() {
        return Err(fail("the uuid part is empty"));
    }
    Ok([x, y])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Classification,
    Regression,
}

fn dataset_error(root: &Path, reason: String) -> Error {
    Error::Dataset {
        path: root.to_path_buf(),
        reason,
    }
}

fn list(names: &[String]) -> String {
    format!("[{}]", names.join(", "))
}

/// Describes how two class lists differ: `missing [c]; extra [d]`.
fn class_difference(expected: &[String], found: &[String]) -> String {
    let missing: Vec<String> = expected
        .iter()
        .filter(|c| !found.contains(c))
        .cloned()
        .collect();
    let extra: Vec<String> = found
        .iter()
        .filter(|c| !expected.contains(c))
        .cloned()
        .collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", list(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("extra {}", list(&extra)));
    }
    parts.join("; ")
}

fn scan(root: &Path, mode: Mode) -> Result<Dataset> {
    let meta = fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(dataset_error(root, "not a folder".to_owned()));
    }
    let mut warnings = Vec::new();
    let (visible, ignored) = read_dir_sorted(root)?;
    let dirs: Vec<&Entry> = visible.iter().filter(|e| e.is_dir).collect();
    let is_split_name = |name: &str| matches!(name, "train" | "val" | "test");
    let split_layout = dirs.iter().any(|e| e.name == "train")
        || (!dirs.is_empty() && dirs.iter().all(|e| is_split_name(&e.name)));

    if !split_layout {
        let split = scan_split(root, root, "", &mut warnings)?;
        check_train_not_empty(root, &split, "")?;
        let classes = split.classes.clone();
        let train = to_samples(root, split, mode)?;
        return Ok(Dataset {
            root: root.to_path_buf(),
            classes,
            train,
            val: None,
            test: None,
            warnings,
        });
    }

    // Layout (1): root/{train,val,test}/<class>/...
    for (name, is_dir, why) in &ignored {
        if *is_dir {
            warnings.push(format!("ignored {why} folder {name}"));
        }
    }
    for entry in &dirs {
        if !is_split_name(&entry.name) {
            warnings.push(format!(
                "ignored folder {} (beside train/, only val/ and test/ are read)",
                entry.name
            ));
        }
    }
    let find = |split: Split| {
        dirs.iter()
            .find(|e| e.name == split.dir_name())
            .map(|e| e.path.clone())
    };
    let mut scans: Vec<(Split, SplitScan)> = Vec::new();
    for split in [Split::Train, Split::Val, Split::Test] {
        if let Some(dir) = find(split) {
            let prefix = format!("{}/", split.dir_name());
            scans.push((split, scan_split(root, &dir, &prefix, &mut warnings)?));
        }
    }
    // The class list comes from train/, or from the first split present.
    let classes = scans
        .first()
        .map(|(_, s)| s.classes.clone())
        .unwrap_or_default();
    let reference = scans.first().map_or(Split::Train, |(split, _)| *split);

    let mut dataset = Dataset {
        root: root.to_path_buf(),
        classes: classes.clone(),
        train: Vec::new(),
        val: None,
        test: None,
        warnings: Vec::new(),
    };
    for (split, scanned) in scans {
        let name = split.dir_name();
        let total: usize = scanned.images.iter().map(Vec::len).sum();
        if split == Split::Train {
            check_train_not_empty(root, &scanned, "train/")?;
        } else if scanned.classes.is_empty() && total == 0 {
            warnings.push(format!("{name}/ is empty: no {} figure", figure(split)));
            set_split(&mut dataset, split, Vec::new());
            continue;
        }
        let extra: Vec<String> = scanned
            .classes
            .iter()
            .filter(|c| !classes.contains(c))
            .cloned()
            .collect();
        if split == Split::Train || !extra.is_empty() {
            if scanned.classes != classes {
                return Err(dataset_error(
                    root,
                    format!(
                        "the class folders of {name}/ differ from those of {}/: {} ({}/ has {}, \
                         {}/ has {})",
                        reference.dir_name(),
                        class_difference(&classes, &scanned.classes),
                        reference.dir_name(),
                        list(&classes),
                        name,
                        list(&scanned.classes)
                    ),
                ));
            }
        } else if scanned.classes != classes {
            // A held-out split may hold a subset of the classes: its labels follow the
            // reference list, and the classes it lacks are named.
            let missing: Vec<String> = classes
                .iter()
                .filter(|c| !scanned.classes.contains(c))
                .cloned()
                .collect();
            warnings.push(format!(
                "{name}/ has no folder for {}: these classes are missing from the {} figure",
                list(&missing),
                figure(split)
            ));
            let map: Vec<usize> = scanned
                .classes
                .iter()
                .map(|c| classes.iter().position(|r| r == c).unwrap_or(0))
                .collect();
            let samples = to_samples(root, scanned, mode)?
                .into_iter()
                .map(|mut s| {
                    s.label = map[s.label];
                    s
                })
                .collect();
            set_split(&mut dataset, split, samples);
            continue;
        }
        if split != Split::Train {
            if total == 0 {
                warnings.push(format!("{name}/ is empty: no {} figure", figure(split)));
            } else {
                let empty: Vec<String> = scanned
                    .classes
                    .iter()
                    .zip(&scanned.images)
                    .filter(|(_, images)| images.is_empty())
                    .map(|(class, _)| format!("{name}/{class}"))
                    .collect();
                if !empty.is_empty() {
                    warnings.push(format!(
                        "no image in {}: these classes are missing from the {} figure",
                        empty.join(", "),
                        figure(split)
                    ));
                }
            }
        }
        let samples = to_samples(root, scanned, mode)?;
        set_split(&mut dataset, split, samples);
    }
    dataset.warnings = warnings;
    Ok(dataset)
}

fn figure(split: Split) -> &'static str {
    match split {
        Split::Train => "training",
        Split::Val => "validation",
        Split::Test => "test",
    }
}

fn set_split(dataset: &mut Dataset, split: Split, samples: Vec<Sample>) {
    match split {
        Split::Train => dataset.train = samples,
        Split::Val => dataset.val = Some(samples),
        Split::Test => dataset.test = Some(samples),
    }
}

/// Policy 4: a class folder of the training split without an image is an error.
fn check_train_not_empty(root: &Path, split: &SplitScan, prefix: &str) -> Result<()> {
    let empty: Vec<String> = split
        .classes
        .iter()
        .zip(&split.images)
        .filter(|(_, images)| images.is_empty())
        .map(|(class, _)| format!("{prefix}{class}"))
        .collect();
    if empty.is_empty() {
        return Ok(());
    }
    let (noun, verb) = if empty.len() == 1 {
        ("folder", "has")
    } else {
        ("folders", "have")
    };
    Err(dataset_error(
        root,
        format!(
            "class {noun} {} {verb} no image (.{} files); add images or remove the folder",
            empty.join(", "),
            crate::data::decode::IMAGE_EXTENSIONS.join(", .")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        fs::write(path, b"x").expect("write");
    }

    #[test]
    fn dli_points() {
        assert_eq!(
            parse_dli_point(Path::new("a/12_200_3f2a-11ee_b1c2.jpg")).unwrap(),
            [12.0, 200.0]
        );
        assert_eq!(
            parse_dli_point(Path::new("0_7_6f1c2d3e-2a1b-11ee-8c99-0242ac120002.JPG")).unwrap(),
            [0.0, 7.0]
        );
        for bad in [
            "abc.jpg",
            "12_x_u.jpg",
            "12_200.jpg",
            "12_200_.jpg",
            "-3_4_u.jpg",
            "_4_u.jpg",
        ] {
            let err = parse_dli_point(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("expected <x>_<y>_<uuid>.jpg"), "{err}");
        }
    }

    #[test]
    fn counts_per_class() {
        let s = |label| Sample {
            path: PathBuf::from("x.jpg"),
            label,
            point: None,
        };
        assert_eq!(sample_counts(&[s(0), s(2), s(2), s(5)], 3), vec![1, 0, 2]);
    }

    #[test]
    fn layout_two_goes_to_train_and_skips_root_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(&root.join("b/2.jpg"));
        touch(&root.join("a/1.jpg"));
        touch(&root.join("a/sub/deeper/3.png"));
        touch(&root.join("SHA256SUMS"));
        touch(&root.join("SOURCE.md"));
        let ds = scan_image_folder(root).expect("scan");
        assert_eq!(ds.classes, vec!["a", "b"]);
        let names: Vec<_> = ds
            .train
            .iter()
            .map(|s| (s.label, s.path.strip_prefix(root).unwrap().to_owned()))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, PathBuf::from("a/1.jpg")),
                (0, PathBuf::from("a/sub/deeper/3.png")),
                (1, PathBuf::from("b/2.jpg"))
            ]
        );
        assert!(ds.val.is_none() && ds.test.is_none());
        assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    }

    #[test]
    fn split_class_lists_must_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(&root.join("train/a/1.jpg"));
        touch(&root.join("train/b/1.jpg"));
        touch(&root.join("val/a/1.jpg"));
        touch(&root.join("val/c/1.jpg"));
        let err = scan_image_folder(root).unwrap_err().to_string();
        assert!(err.contains("missing [b]; extra [c]"), "{err}");
    }

    #[test]
    fn a_held_out_split_may_lack_a_class_and_its_labels_follow_train() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for c in ["a", "b", "c"] {
            touch(&root.join(format!("train/{c}/1.jpg")));
        }
        touch(&root.join("val/a/1.jpg"));
        touch(&root.join("val/c/1.jpg"));
        let ds = scan_image_folder(root).expect("a subset of the classes is fine");
        assert_eq!(ds.classes, vec!["a", "b", "c"]);
        let val: Vec<usize> = ds.val.unwrap().iter().map(|s| s.label).collect();
        assert_eq!(val, vec![0, 2], "c keeps its training index");
        assert!(
            ds.warnings
                .iter()
                .any(|w| w.contains("val/ has no folder for [b]")),
            "{:?}",
            ds.warnings
        );
    }

    #[test]
    fn every_malformed_regression_name_is_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(&root.join("nose/10_20_aaa.jpg"));
        touch(&root.join("nose/bad.jpg"));
        touch(&root.join("nose/1.5_2_x.jpg"));
        touch(&root.join("nose/3_y.jpg"));
        let err = scan_regression_folder(root).unwrap_err().to_string();
        assert!(err.contains("3 image file name(s)"), "{err}");
        for bad in ["bad.jpg", "1.5_2_x.jpg", "3_y.jpg"] {
            assert!(err.contains(bad), "{bad} not named: {err}");
        }
    }

    #[test]
    fn val_only_dataset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(&root.join("val/cat/1.jpg"));
        touch(&root.join("val/eagle/1.jpg"));
        let ds = scan_image_folder(root).expect("scan");
        assert_eq!(ds.classes, vec!["cat", "eagle"]);
        assert!(ds.train.is_empty());
        assert_eq!(ds.val.as_ref().map(Vec::len), Some(2));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_names() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // A Latin-1 file name (0xE9 = é) inside a class folder is fine: paths need not be UTF-8.
        touch(&root.join("a").join(OsStr::from_bytes(b"caf\xe9.jpg")));
        touch(&root.join("b/1.jpg"));
        let ds = scan_image_folder(root).expect("scan");
        assert_eq!(ds.train.len(), 2);
        // A class name must be UTF-8 (it goes to labels.txt).
        touch(&root.join(OsStr::from_bytes(b"caf\xe9")).join("1.jpg"));
        let err = scan_image_folder(root).unwrap_err().to_string();
        assert!(err.contains("is not valid UTF-8"), "{err}");
    }

    #[test]
    fn regression_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(&root.join("nose/12_200_3f2a-11ee_b1c2.jpg"));
        touch(&root.join("nose/5_6_u.jpg"));
        touch(&root.join("nose/.DS_Store"));
        let ds = scan_regression_folder(root).expect("scan");
        assert_eq!(ds.classes, vec!["nose"]);
        let points: Vec<_> = ds.train.iter().map(|s| s.point).collect();
        assert_eq!(points, vec![Some([12.0, 200.0]), Some([5.0, 6.0])]);

        touch(&root.join("nose/abc.jpg"));
        let err = scan_regression_folder(root).unwrap_err().to_string();
        assert!(err.contains("abc.jpg"), "{err}");
        assert!(
            err.starts_with(&format!("dataset {}", root.display())),
            "{err}"
        );
    }
}
