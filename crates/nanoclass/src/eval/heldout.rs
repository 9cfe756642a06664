//! Which images `eval` scores: the held-out set training reported on, `test/`, or every image,
//! labelled with the run's output indices; and the run's own training images.

use std::path::{Path, PathBuf};

use crate::data::folder::Sample;
use crate::run::{Run, SplitRecord, Task};
use crate::{Error, Result};

/// Which images `eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    /// The held-out set training reported on (see [`Run::held_out`]).
    Val,
    /// The `test/` folder.
    Test,
    /// Every image of the dataset.
    All,
}

impl Run {
    /// The run's training images: its dataset's `train/` (or only) folder, less the held-out
    /// files of a generated split.
    ///
    /// # Errors
    /// The dataset cannot be scanned.
    pub fn training_images(&self) -> Result<Vec<Sample>> {
        let data = &self.config.data;
        let ds = match self.config.task {
            Task::Classification => crate::data::folder::scan_image_folder(data)?,
            Task::Regression => crate::data::folder::scan_regression_folder(data)?,
        };
        let held: std::collections::HashSet<PathBuf> = match &self.config.split {
            SplitRecord::Generated { val_files, .. } => {
                val_files.iter().map(|p| ds.root.join(p)).collect()
            }
            _ => Default::default(),
        };
        Ok(ds
            .train
            .into_iter()
            .filter(|s| !held.contains(&s.path))
            .collect())
    }

    /// The images to evaluate on, labelled with the run's output indices, and a description of
    /// where they came from.
    ///
    /// - [`EvalSplit::Val`] (the default): the `val/` folder when `data` has one, else the
    ///   held-out files recorded at training time when `data` is the run's own dataset, else
    ///   (a plain `data/<class>/<image>` folder that the run did not train on) every image.
    /// - [`EvalSplit::Test`]: the `test/` folder, which training never reads.
    /// - [`EvalSplit::All`]: every image under `data`, whatever its split.
    ///
    /// The dataset's classes must be known to the model (a subset is fine); an unknown class is
    /// an error naming it. A regression run reads the dataset as a regression set
    /// ([`crate::data::folder::scan_regression_folder`]), so every sample carries its point.
    pub fn held_out(&self, data: &Path, split: EvalSplit) -> Result<(Vec<Sample>, String)> {
        let ds = match self.config.task {
            Task::Classification => crate::data::folder::scan_image_folder(data)?,
            Task::Regression => crate::data::folder::scan_regression_folder(data)?,
        };
        let labels = &self.config.labels;
        let map: Vec<Option<usize>> = ds
            .classes
            .iter()
            .map(|c| labels.iter().position(|l| l == c))
            .collect();
        let unknown: Vec<&str> = ds
            .classes
            .iter()
            .zip(&map)
            .filter(|(_, m)| m.is_none())
            .map(|(c, _)| c.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Dataset {
                path: data.to_path_buf(),
                reason: format!(
                    "classes [{}] are not known to the model, which knows [{}]",
                    unknown.join(", "),
                    labels.join(", ")
                ),
            });
        }
        let relabel = |v: Vec<Sample>| -> Vec<Sample> {
            v.into_iter()
                .map(|mut s| {
                    s.label = map[s.label].unwrap_or(s.label);
                    s
                })
                .collect()
        };
        let same_root =
            std::fs::canonicalize(data).ok() == std::fs::canonicalize(&self.config.data).ok();
        let has_splits = data.join("train").is_dir() || ds.val.is_some() || ds.test.is_some();
        let (samples, from) = match split {
            EvalSplit::Test => match ds.test {
                Some(t) if !t.is_empty() => (t, "test/ folder".to_string()),
                _ => {
                    return Err(Error::Dataset {
                        path: data.to_path_buf(),
                        reason: "no test/ folder with images".into(),
                    });
                }
            },
            EvalSplit::All => {
                let mut all = ds.train;
                all.extend(ds.val.unwrap_or_default());
                all.extend(ds.test.unwrap_or_default());
                (all, "every image".to_string())
            }
            EvalSplit::Val => match (ds.val, &self.config.split) {
                (Some(v), _) if !v.is_empty() => (v, "val/ folder".to_string()),
                (_, SplitRecord::Generated { val_files, .. }) if same_root => {
                    let wanted: std::collections::HashSet<&PathBuf> = val_files.iter().collect();
                    let root = std::fs::canonicalize(&ds.root).unwrap_or(ds.root.clone());
                    let v = ds
                        .train
                        .into_iter()
                        .filter(|s| {
                            let abs = std::fs::canonicalize(&s.path).unwrap_or(s.path.clone());
                            abs.strip_prefix(&root)
                                .is_ok_and(|r| wanted.contains(&r.to_path_buf()))
                        })
                        .collect();
                    (v, "held-out split recorded at training time".to_string())
                }
                _ if !same_root && !has_splits => (ds.train, "every image".to_string()),
                _ => (vec![], String::new()),
            },
        };
        Ok((relabel(samples), from))
    }
}
