//! The studio's data on disk. Every function here is blocking file I/O; handlers call it
//! through `spawn_blocking`.
//!
//! ```text
//! DATA/<task>/task.json              {"kind": "classification" | "regression", "created": <unix seconds>}
//! DATA/<task>/data/<category>/*.jpg  an ImageFolder dataset: `nanoclass train DATA/<task>/data`;
//!                                    in a regression task every image is named
//!                                    `<x>_<y>_<uuid>.jpg` (the DLI course layout), x and y the
//!                                    category's point in integer pixels of the saved image
//! DATA/<task>/runs/<n>/              one run directory per training (a model version)
//! DATA/<task>/trash/                 deleted categories and images, moved here (never erased)
//! DATA/.trash/                       deleted tasks, moved here
//! ```
//!
//! Files are written to a temporary name and renamed into place
//! ([`nanoclass::fs::write_atomic`]), so an image is never seen half-written.

mod images;
mod runs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nanoclass::data::category::validate_folder_name;
use nanoclass::data::decode::is_image_extension;
use nanoclass::data::folder::parse_dli_point;
use nanoclass::eval::metrics::EvalReport;
use nanoclass::eval::regression::RegressionReport;
use nanoclass::fs::write_atomic;
use nanoclass::run::{Run, files};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};

/// The kind of problem a task solves. Stored in `task.json` (a task written before regression
/// existed has no `kind` and is a classification task); the training settings, the dataset
/// layout and which models the live view accepts follow from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One category per image (ImageFolder: one folder per category).
    #[default]
    Classification,
    /// One point per category (the DLI course's second project): every image of category `c`
    /// is `c/<x>_<y>_<uuid>.jpg` with `(x, y)` the clicked point in integer pixels of the saved
    /// image; the model predicts one point per category.
    Regression,
}

impl TaskKind {
    /// `classification` or `regression`, as in `task.json`.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Regression => "regression",
        }
    }

    /// The library's task of a run trained for this kind of task.
    pub fn run_task(self) -> nanoclass::run::Task {
        match self {
            TaskKind::Classification => nanoclass::run::Task::Classification,
            TaskKind::Regression => nanoclass::run::Task::Regression,
        }
    }
}

/// `task.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// What the task's model predicts (missing in tasks made before regression existed:
    /// classification).
    #[serde(default)]
    pub kind: TaskKind,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// A category and its image count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CategoryInfo {
    /// Folder name = class name.
    pub name: String,
    /// Image files in the folder (by extension, hidden files excluded).
    pub count: usize,
}

/// A task as listed by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// Folder name.
    pub name: String,
    /// `task.json`'s kind.
    pub kind: TaskKind,
    /// `task.json`'s creation time (Unix seconds).
    pub created: u64,
    /// Categories in label order (byte order of the names, as the trainer sorts them).
    pub categories: Vec<CategoryInfo>,
    /// Number of run directories.
    pub runs: usize,
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// File name inside the category folder.
    pub name: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Regression tasks: the point from the file name, `[x, y]` in integer pixels of the
    /// image; absent for classification tasks and for names that do not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<[u32; 2]>,
    /// Regression tasks: the image's `[width, height]` in pixels as stored (from the file
    /// header), so that the page can place the point over a thumbnail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
}

/// The held-out evaluation of a run (`eval/eval.json`): a classification report (top-1,
/// per-class figures, confusion matrix) or a regression report (point errors in pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunEval {
    /// A regression run's report (it carries `"task": "regression"`).
    Regression(RegressionReport),
    /// A classification run's report.
    Classification(EvalReport),
}

/// A trained (or training) model version as listed by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    /// Run number (the folder `runs/<id>`).
    pub id: u32,
    /// Backbone name.
    pub arch: String,
    /// `frozen`, `full`, `finetune` or `instant`.
    pub mode: String,
    /// What the model predicts: `classification` (scores per label) or `regression` (one point
    /// per label).
    pub task: String,
    /// Labels the model outputs, index order.
    pub labels: Vec<String>,
    /// Epochs completed.
    pub epochs: usize,
    /// Best held-out top-1 over the completed epochs, in `[0, 1]` (None without a held-out set,
    /// and for regression).
    pub best_val_top1: Option<f64>,
    /// Regression: lowest mean held-out point error over the completed epochs, in pixels of
    /// the model input (None without a held-out set, and for classification).
    pub best_val_error_px: Option<f64>,
    /// Whether `model.safetensors` exists (at least one epoch completed).
    pub ready: bool,
    /// True when the model knows a label that is no longer a category (deleted or renamed):
    /// it must be retrained before live use.
    pub stale: bool,
    /// Why it is stale, or which current categories it does not know; None when it matches.
    pub note: Option<String>,
    /// Held-out evaluation written after training (`eval/eval.json`).
    pub eval: Option<RunEval>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A name unique within this process and time-ordered: `<unix ms>-<counter>`.
/// Where a saved image came from (see [`Store::save_image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// A camera frame captured now.
    Capture,
    /// An uploaded or imported file.
    File,
}

fn unique_stem() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{ms:013}-{n:06}")
}

fn io_err(path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("{}: {e}", path.display()))
}

/// Checks a task or category name (it becomes one folder name); the error speaks of `what`.
pub fn check_name(what: &str, name: &str) -> ApiResult<()> {
    validate_folder_name(what, name).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The studio's data folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root` (created when missing).
    pub fn open(root: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(root)?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DATA/<task>`, after checking the name; 404 when it is not a task.
    pub fn task_dir(&self, task: &str) -> ApiResult<PathBuf> {
        check_name("task", task)?;
        let dir = self.root.join(task);
        if !dir.join("task.json").is_file() {
            return Err(ApiError::not_found(format!("no task {task:?}")));
        }
        Ok(dir)
    }

    /// `DATA/<task>/data`: the task's ImageFolder dataset.
    pub fn data_dir(&self, task: &str) -> ApiResult<PathBuf> {
        Ok(self.task_dir(task)?.join("data"))
    }

    /// `DATA/<task>/data/<category>`, after checking both names; 404 when missing.
    pub fn category_dir(&self, task: &str, category: &str) -> ApiResult<PathBuf> {
        let data = self.data_dir(task)?;
        check_name("category", category)?;
        let dir = data.join(category);
        if !dir.is_dir() {
            return Err(ApiError::not_found(format!(
                "task {task:?} has no category {category:?}"
            )));
        }
        Ok(dir)
    }

    /// Reads `task.json`.
    pub fn task_meta(&self, task: &str) -> ApiResult<TaskMeta> {
        let path = self.task_dir(task)?.join("task.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))
    }

    /// Every task, by name.
    pub fn list_tasks(&self) -> ApiResult<Vec<TaskInfo>> {
        let mut names = Vec::new();
        let rd = std::fs::read_dir(&self.root).map_err(|e| io_err(&self.root, e))?;
        for entry in rd.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.') && entry.path().join("task.json").is_file() {
                names.push(name);
            }
        }
        names.sort();
        names.iter().map(|n| self.task_info(n)).collect()
    }

    /// One task with its categories and run count.
    pub fn task_info(&self, task: &str) -> ApiResult<TaskInfo> {
        let meta = self.task_meta(task)?;
        Ok(TaskInfo {
            name: task.to_string(),
            kind: meta.kind,
            created: meta.created,
            categories: self.categories(task)?,
            runs: self.run_ids(task)?.len(),
        })
    }

    /// Creates a task; 409 when one of that name exists.
    pub fn create_task(&self, task: &str, kind: TaskKind) -> ApiResult<TaskInfo> {
        check_name("task", task)?;
        let dir = self.root.join(task);
        if dir.exists() {
            return Err(ApiError::conflict(format!("task {task:?} already exists")));
        }
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| io_err(&data, e))?;
        let meta = TaskMeta {
            kind,
            created: now_secs(),
        };
        let json =
            serde_json::to_vec_pretty(&meta).map_err(|e| ApiError::internal(e.to_string()))?;
        write_atomic(&dir.join("task.json"), &json)?;
        self.task_info(task)
    }

    /// Moves a task to `DATA/.trash/`.
    pub fn delete_task(&self, task: &str) -> ApiResult<()> {
        let dir = self.task_dir(task)?;
        let trash = self.root.join(".trash");
        std::fs::create_dir_all(&trash).map_err(|e| io_err(&trash, e))?;
        let to = trash.join(format!("{}-{task}", unique_stem()));
        std::fs::rename(&dir, &to).map_err(|e| io_err(&dir, e))
    }

    /// The categories of a task, in label order, with image counts.
    pub fn categories(&self, task: &str) -> ApiResult<Vec<CategoryInfo>> {
        let data = self.data_dir(task)?;
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&data).map_err(|e| io_err(&data, e))?;
        for entry in rd.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let count = image_files(&entry.path())?.len();
            out.push(CategoryInfo { name, count });
        }
        // Byte order of the UTF-8 names: the trainer's label order.
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    /// Category names in label order.
    pub fn category_names(&self, task: &str) -> ApiResult<Vec<String>> {
        Ok(self.categories(task)?.into_iter().map(|c| c.name).collect())
    }

    /// Adds an empty category; 409 when it exists.
    pub fn add_category(&self, task: &str, category: &str) -> ApiResult<CategoryInfo> {
        let data = self.data_dir(task)?;
        check_name("category", category)?;
        let dir = data.join(category);
        if dir.exists() {
            return Err(ApiError::conflict(format!(
                "task {task:?} already has a category {category:?}"
            )));
        }
        std::fs::create_dir(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(CategoryInfo {
            name: category.to_string(),
            count: 0,
        })
    }

    /// Renames a category folder; 409 when the new name exists.
    pub fn rename_category(&self, task: &str, from: &str, to: &str) -> ApiResult<CategoryInfo> {
        let src = self.category_dir(task, from)?;
        check_name("category", to)?;
        let dst = self.data_dir(task)?.join(to);
        if dst.exists() {
            return Err(ApiError::conflict(format!(
                "task {task:?} already has a category {to:?}"
            )));
        }
        std::fs::rename(&src, &dst).map_err(|e| io_err(&src, e))?;
        Ok(CategoryInfo {
            name: to.to_string(),
            count: image_files(&dst)?.len(),
        })
    }

    /// Moves a category folder to the task's `trash/`.
    pub fn delete_category(&self, task: &str, category: &str) -> ApiResult<()> {
        let src = self.category_dir(task, category)?;
        let to = self
            .trash_dir(task)?
            .join(format!("{}-{category}", unique_stem()));
        std::fs::rename(&src, &to).map_err(|e| io_err(&src, e))
    }

    pub(super) fn trash_dir(&self, task: &str) -> ApiResult<PathBuf> {
        let trash = self.task_dir(task)?.join("trash");
        std::fs::create_dir_all(&trash).map_err(|e| io_err(&trash, e))?;
        Ok(trash)
    }
}

/// Whether a model with `labels` may be used when the task has `categories`: stale when it
/// knows a label that is no longer a category (it could show a deleted label). New categories
/// it does not know are noted, not stale.
pub fn staleness(labels: &[String], categories: &[String]) -> (bool, Option<String>) {
    let gone: Vec<&str> = labels
        .iter()
        .filter(|l| !categories.contains(l))
        .map(String::as_str)
        .collect();
    if !gone.is_empty() {
        return (
            true,
            Some(format!(
                "retrain needed: the model was trained on [{}], and [{}] is no longer a category",
                labels.join(", "),
                gone.join(", ")
            )),
        );
    }
    let new: Vec<&str> = categories
        .iter()
        .filter(|c| !labels.contains(c))
        .map(String::as_str)
        .collect();
    if new.is_empty() {
        (false, None)
    } else {
        (
            false,
            Some(format!(
                "the model does not know [{}]; retrain to include it",
                new.join(", ")
            )),
        )
    }
}

/// `<x>_<y>_<uuid>.<ext>`: the DLI course's regression file name.
pub fn point_name(point: [u32; 2], uuid: &str, ext: &str) -> String {
    format!("{}_{}_{uuid}.{ext}", point[0], point[1])
}

/// Splits a regression file name `<x>_<y>_<uuid>.<ext>` into its point, uuid and extension;
/// None when it is not one ([`parse_dli_point`]'s rules).
pub fn split_point_name(name: &str) -> Option<([u32; 2], &str, &str)> {
    let point = parse_dli_point(Path::new(name)).ok()?;
    let (stem, ext) = name.rsplit_once('.')?;
    let uuid = stem.splitn(3, '_').nth(2)?;
    Some(([point[0] as u32, point[1] as u32], uuid, ext))
}

/// Image files directly in `dir` (by extension, any case; hidden files skipped), sorted.
pub(crate) fn image_files(dir: &Path) -> ApiResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in rd.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() && is_image_extension(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn point_names_follow_the_course_layout() {
        assert_eq!(
            point_name([12, 200], "3f2a-11ee", "jpg"),
            "12_200_3f2a-11ee.jpg"
        );
        assert_eq!(
            split_point_name("12_200_3f2a_11ee.jpg"),
            Some(([12, 200], "3f2a_11ee", "jpg"))
        );
        assert_eq!(split_point_name("1700000000000-000001.jpg"), None);
        assert_eq!(split_point_name("-1_2_x.jpg"), None);
        // Old task.json files without a kind are classification tasks.
        let meta: TaskMeta = serde_json::from_str(r#"{"created": 5}"#).unwrap();
        assert_eq!(meta.kind, TaskKind::Classification);
    }

    #[test]
    fn a_model_that_knows_a_deleted_label_is_stale() {
        let (stale, note) = staleness(&s(&["ants", "bees"]), &s(&["ants"]));
        assert!(stale);
        assert!(note.unwrap().contains("[bees] is no longer a category"));
        let (stale, note) = staleness(&s(&["ants", "bees"]), &s(&["ants", "bees", "wasps"]));
        assert!(!stale);
        assert!(note.unwrap().contains("[wasps]"));
        assert_eq!(staleness(&s(&["a", "b"]), &s(&["a", "b"])), (false, None));
    }
}
