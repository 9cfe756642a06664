//! A task's training runs: their folders, numbers and what each holds.

use super::*;

impl Store {
    /// `DATA/<task>/runs`.
    pub fn runs_dir(&self, task: &str) -> ApiResult<PathBuf> {
        Ok(self.task_dir(task)?.join("runs"))
    }

    /// Run numbers present, ascending.
    pub fn run_ids(&self, task: &str) -> ApiResult<Vec<u32>> {
        let dir = self.runs_dir(task)?;
        let mut ids = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for entry in rd.flatten() {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                    && entry.path().join(files::CONFIG).is_file()
                {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// A new, empty run folder number: one more than any existing folder in `runs/`.
    pub fn next_run_id(&self, task: &str) -> ApiResult<u32> {
        let dir = self.runs_dir(task)?;
        let mut max = 0;
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for entry in rd.flatten() {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    max = max.max(id);
                }
            }
        }
        Ok(max + 1)
    }

    /// `DATA/<task>/runs/<id>`; 404 when it is not a run.
    pub fn run_dir(&self, task: &str, id: u32) -> ApiResult<PathBuf> {
        let dir = self.runs_dir(task)?.join(id.to_string());
        if !dir.join(files::CONFIG).is_file() {
            return Err(ApiError::not_found(format!(
                "task {task:?} has no run {id}"
            )));
        }
        Ok(dir)
    }

    /// A run's summary, with its staleness against the current categories.
    pub fn run_info(&self, task: &str, id: u32) -> ApiResult<RunInfo> {
        let dir = self.run_dir(task, id)?;
        let run = Run::open(&dir)?;
        let metrics = run.read_metrics().unwrap_or_default();
        let best = metrics
            .iter()
            .filter_map(|m| m.val_top1)
            .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))));
        let best_error = metrics
            .iter()
            .filter_map(|m| m.val_error_px)
            .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))));
        let categories = self.category_names(task)?;
        let (stale, note) = staleness(&run.config.labels, &categories);
        let eval = std::fs::read(dir.join("eval").join("eval.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(RunInfo {
            id,
            arch: run.config.arch.name().to_string(),
            mode: run.config.hyper.mode.name().to_string(),
            task: run.config.task.name().to_string(),
            labels: run.config.labels.clone(),
            epochs: metrics.len(),
            best_val_top1: best,
            best_val_error_px: best_error,
            ready: run.model_path().is_file(),
            stale,
            note,
            eval,
        })
    }

    /// Every run of a task, newest first.
    pub fn list_runs(&self, task: &str) -> ApiResult<Vec<RunInfo>> {
        let mut out = Vec::new();
        for id in self.run_ids(task)?.into_iter().rev() {
            out.push(self.run_info(task, id)?);
        }
        Ok(out)
    }
}
