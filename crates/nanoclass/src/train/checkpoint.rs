//! Checkpoints for `--resume`, committed in one step.
//!
//! After each epoch the run's state is written into a new folder of `RUN/checkpoint/` under a
//! temporary name: the model after the epoch (`last.safetensors`), the best model so far
//! (`best.safetensors`, a hard link to the previous epoch's when it did not change), the
//! optimizer's state (`optimizer.bpk`: Adam moments, SGD momentum), every metrics line so far
//! (`metrics.jsonl`) and the training state (`state.json`: epoch, phase, best-model and early
//! stopping figures, parameter ids). The folder is renamed to `epoch-NNNN`, and then the file
//! `checkpoint/CURRENT` is replaced (atomically) by that name: that replacement is the commit.
//! Only then are the run's own `last.safetensors`, `model.safetensors` and `metrics.jsonl`
//! replaced by the committed ones ([`publish`]) and older epoch folders removed.
//!
//! A process killed at any point leaves either the previous commit or the new one; the next
//! start ([`recover`]) publishes the committed epoch again and removes everything uncommitted,
//! so `--resume` continues exactly where an uninterrupted run would be.
//!
//! The optimizer keeps its state per parameter id. A model reloaded from `last.safetensors` gets
//! new ids, so the ids are saved by module path beside the optimizer state and given back to the
//! reloaded model's parameters ([`with_param_ids`]) before the optimizer state is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fs::{clean_stale_temp_files, temp_dir_name, write_atomic};
use crate::model::Net;
use crate::model::batch_counters::{BatchCounters, METADATA_KEY};
use crate::model::weights::save_net;
use crate::run::{EpochMetrics, Run, files};
use crate::train::early_stop::TrackerState;
use crate::{Error, Result};

/// The file naming the committed epoch folder.
const CURRENT: &str = "CURRENT";
const STATE: &str = "state.json";
const OPTIMIZER: &str = "optimizer.bpk";
const BEST: &str = "best.safetensors";

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Last completed epoch (1-based, across phases).
    pub epoch: usize,
    /// Phase of that epoch: `head`, `full` or `instant`.
    pub phase: String,
    /// The best model and early stopping figures.
    #[serde(flatten)]
    pub tracker: TrackerState,
    /// Parameter id of each parameter of the optimized module, by module path.
    pub param_ids: BTreeMap<String, u64>,
}

fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join(files::CHECKPOINT)
}

fn epoch_dir_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// The committed epoch folder of a run, when it has one (`checkpoint/CURRENT`).
fn current(run_dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(dir(run_dir).join(CURRENT)).ok()?;
    let name = name.trim();
    let valid = name.starts_with("epoch-") && !name.contains(['/', '\\']) && name != "epoch-";
    let p = dir(run_dir).join(name);
    (valid && p.is_dir()).then_some(p)
}

/// Whether the run in `run_dir` has committed an epoch (this layout, or the single-folder
/// layout of older versions, `checkpoint/state.json`).
pub fn has_committed_epoch(run_dir: &Path) -> bool {
    current(run_dir).is_some() || dir(run_dir).join(STATE).is_file()
}

/// Everything one epoch commits.
pub struct EpochCommit<'a> {
    /// The model after the epoch (eval mode).
    pub net: &'a Net,
    /// Whether it is the best so far.
    pub best: bool,
    /// The epoch's metrics line.
    pub metrics: &'a EpochMetrics,
    /// The optimizer (None for phases without one).
    pub optim: Option<&'a ModuleOptimizer>,
    /// The training state.
    pub state: &'a TrainState,
    /// The BatchNorm `num_batches_tracked` counts, saved in the models' metadata.
    pub batch_counters: &'a BatchCounters,
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn sync_dir(path: &Path) {
    // Directory fsync makes the renames durable across a power cut; not every platform or
    // filesystem allows opening a folder, and a failure costs only that durability.
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
    }
}

/// Hard-links `src` to `dst` (same filesystem), else copies it.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map_err(|e| Error::io(dst, e))?;
    Ok(())
}

/// Writes and commits one epoch (see the module docs), then publishes it.
///
/// # Errors
/// A file cannot be written; the run is then left at its previous commit.
pub fn commit(run: &Run, c: EpochCommit<'_>) -> Result<()> {
    let d = dir(&run.dir);
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    let tmp = d.join(temp_dir_name("epoch"));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = write_epoch(run, &c, &tmp);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let name = epoch_dir_name(c.state.epoch);
    let target = d.join(&name);
    if target.exists() {
        // An uncommitted folder of the same epoch from a killed attempt.
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    sync_dir(&d);
    write_atomic(&d.join(CURRENT), format!("{name}\n").as_bytes())?;
    sync_dir(&d);
    publish(&run.dir, &target)?;
    remove_uncommitted(&run.dir, &target);
    Ok(())
}

fn write_epoch(run: &Run, c: &EpochCommit<'_>, tmp: &Path) -> Result<()> {
    let mut meta = run.model_metadata();
    meta.insert(METADATA_KEY.into(), c.batch_counters.to_metadata());
    let last = tmp.join(files::LAST);
    save_net(c.net, &last, &meta)?;
    sync_file(&last)?;
    let best = tmp.join(BEST);
    if c.best {
        save_net(c.net, &best, &meta)?;
        sync_file(&best)?;
    } else {
        let published = run.dir.join(files::MODEL);
        if !published.is_file() {
            return Err(Error::Run {
                path: run.dir.clone(),
                reason: format!("the best model so far ({}) is missing", files::MODEL),
            });
        }
        link_or_copy(&published, &best)?;
    }
    if let Some(optim) = c.optim {
        let p = tmp.join(OPTIMIZER);
        optim
            .save(&p)
            .map_err(|e| Error::Other(format!("{}: saving optimizer state: {e}", p.display())))?;
        sync_file(&p)?;
    }
    let mut lines = match std::fs::read_to_string(run.dir.join(files::METRICS)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(run.dir.join(files::METRICS), e)),
    };
    // Only the lines of earlier epochs: a line of this epoch or a later one belongs to an
    // attempt that was not committed.
    lines = lines
        .lines()
        .filter(|l| {
            serde_json::from_str::<EpochMetrics>(l).is_ok_and(|m| m.epoch < c.metrics.epoch)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let line = serde_json::to_string(c.metrics).map_err(|e| Error::Other(e.to_string()))?;
    lines.push_str(&line);
    lines.push('\n');
    write_atomic(&tmp.join(files::METRICS), lines.as_bytes())?;
    let json = serde_json::to_string_pretty(c.state).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&tmp.join(STATE), json.as_bytes())?;
    sync_dir(tmp);
    Ok(())
}

/// Replaces the run's own `last.safetensors`, `model.safetensors` and `metrics.jsonl` by those
/// of the epoch folder `epoch_dir`, each in one rename. The models are hard links to the
/// folder's files (nothing writes a model in place), `metrics.jsonl` a copy.
fn publish(run_dir: &Path, epoch_dir: &Path) -> Result<()> {
    for (src, dst) in [(files::LAST, files::LAST), (BEST, files::MODEL)] {
        let from = epoch_dir.join(src);
        let to = run_dir.join(dst);
        let staged = run_dir.join(temp_dir_name("publish"));
        link_or_copy(&from, &staged)?;
        std::fs::rename(&staged, &to).map_err(|e| Error::io(&to, e))?;
        // Publishing an epoch again (a resume's recovery) links the file `to` already is, and
        // a rename between two links of one file does nothing (POSIX): the staged link stays.
        let _ = std::fs::remove_file(&staged);
    }
    let from = epoch_dir.join(files::METRICS);
    let lines = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
    write_atomic(&run_dir.join(files::METRICS), &lines)?;
    sync_dir(run_dir);
    Ok(())
}

/// Removes the epoch folders other than `keep`, and temporary files of processes that no
/// longer run.
fn remove_uncommitted(run_dir: &Path, keep: &Path) {
    let d = dir(run_dir);
    clean_stale_temp_files(&d);
    clean_stale_temp_files(run_dir);
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            let p = e.path();
            let is_epoch = e.file_name().to_string_lossy().starts_with("epoch-");
            if is_epoch && p != keep && p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

/// Brings a run directory back to its last commit: publishes the committed epoch again (a kill
/// may have come between the commit and the publishing) and removes what was not committed.
/// Returns the committed training state, None when no epoch was committed.
///
/// # Errors
/// The committed state cannot be read, or the files cannot be published.
pub fn recover(run_dir: &Path) -> Result<Option<TrainState>> {
    match current(run_dir) {
        Some(epoch_dir) => {
            // Dead processes' leftovers first: a kill during the publishing below must not
            // leave them behind in a run whose files are then complete.
            clean_stale_temp_files(run_dir);
            publish(run_dir, &epoch_dir)?;
            remove_uncommitted(run_dir, &epoch_dir);
            read_state(&epoch_dir.join(STATE)).map(Some)
        }
        None if dir(run_dir).join(STATE).is_file() => {
            // The single-folder layout of older versions: its files are already in place.
            clean_stale_temp_files(run_dir);
            read_state(&dir(run_dir).join(STATE)).map(Some)
        }
        None => {
            clean_stale_temp_files(run_dir);
            if dir(run_dir).is_dir() {
                clean_stale_temp_files(&dir(run_dir));
            }
            Ok(None)
        }
    }
}

fn read_state(p: &Path) -> Result<TrainState> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Run {
        path: p.to_path_buf(),
        reason: format!("not a valid training state: {e}"),
    })
}

/// Reads the committed training state of a run directory, without changing anything. A weights
/// file, or a folder without a committed epoch, is refused with what to do instead.
///
/// # Errors
/// [`Error::Run`] as above, or a state file that cannot be read.
pub fn load_state(run_dir: &Path) -> Result<TrainState> {
    if run_dir.is_file() {
        return Err(Error::Run {
            path: run_dir.to_path_buf(),
            reason: "is a weights file, which holds no training state (epoch, optimizer): \
                     resuming takes a run directory; use this file as the starting weights \
                     (--weights) to start from it"
                .into(),
        });
    }
    match current(run_dir) {
        Some(epoch_dir) => read_state(&epoch_dir.join(STATE)),
        None if dir(run_dir).join(STATE).is_file() => read_state(&dir(run_dir).join(STATE)),
        None => Err(Error::Run {
            path: run_dir.to_path_buf(),
            reason: format!(
                "no training state to resume ({} holds no completed epoch); train it again \
                 from the start, replacing what is there (--force)",
                dir(run_dir).display()
            ),
        }),
    }
}

/// Loads the optimizer state committed with the training state.
///
/// # Errors
/// The file is missing or not an optimizer state.
pub fn load_optimizer(run_dir: &Path, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let p = match current(run_dir) {
        Some(epoch_dir) => epoch_dir.join(OPTIMIZER),
        None => dir(run_dir).join(OPTIMIZER),
    };
    optim
        .load(&p)
        .map_err(|e| Error::Other(format!("{}: loading optimizer state: {e}", p.display())))
}

struct PathTracker {
    path: Vec<String>,
}

impl PathTracker {
    fn key(&self) -> String {
        self.path.join(".")
    }
}

struct IdCollector {
    at: PathTracker,
    ids: BTreeMap<String, u64>,
}

impl ModuleVisitor for IdCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.at.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.at.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.ids.insert(self.at.key(), param.id.val());
    }
}

struct IdSetter<'a> {
    at: PathTracker,
    ids: &'a BTreeMap<String, u64>,
    missing: Vec<String>,
}

impl ModuleMapper for IdSetter<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.at.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.at.path.pop();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.ids.get(&self.at.key()) {
            Some(id) => param.id = ParamId::from(*id),
            None => self.missing.push(self.at.key()),
        }
        param
    }
}

/// Parameter ids of a module by path.
pub fn param_ids<M: Module>(module: &M) -> BTreeMap<String, u64> {
    let mut c = IdCollector {
        at: PathTracker { path: vec![] },
        ids: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.ids
}

/// Gives a module's parameters the saved ids; every parameter must have one.
pub fn with_param_ids<M: Module>(
    module: M,
    ids: &BTreeMap<String, u64>,
    run_dir: &Path,
) -> Result<M> {
    let mut s = IdSetter {
        at: PathTracker { path: vec![] },
        ids,
        missing: vec![],
    };
    let m = module.map(&mut s);
    if s.missing.is_empty() {
        Ok(m)
    } else {
        Err(Error::Run {
            path: dir(run_dir),
            reason: format!("optimizer state has no entry for {}", s.missing.join(", ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::device::default_device;
    use crate::model::Arch;
    use crate::run::Task;

    fn metrics(epoch: usize) -> EpochMetrics {
        EpochMetrics {
            epoch,
            phase: "head".into(),
            train_loss: 1.0 / epoch as f64,
            train_top1: Some(0.5),
            val_loss: Some(1.0),
            val_top1: Some(0.5),
            train_error_px: None,
            val_error_px: None,
            lr: 0.1,
            seconds: 0.0,
        }
    }

    fn state(epoch: usize) -> TrainState {
        TrainState {
            epoch,
            phase: "head".into(),
            tracker: TrackerState {
                best: Some((0.5, -1.0)),
                best_epoch: 1,
                best_monitored: Some(1.0),
                since_improved: epoch - 1,
            },
            param_ids: BTreeMap::new(),
        }
    }

    #[test]
    fn each_commit_replaces_the_last_and_leaves_one_epoch_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let run = crate::run::tests::tiny_run(tmp.path(), Task::Classification);
        let device = default_device();
        let net = Net::new(Arch::EfficientnetLite0, 2, &device);
        assert!(!has_committed_epoch(&run.dir));
        assert!(recover(&run.dir).unwrap().is_none());
        for epoch in 1..=3 {
            let m = metrics(epoch);
            let st = state(epoch);
            commit(
                &run,
                EpochCommit {
                    net: &net,
                    best: epoch == 1,
                    metrics: &m,
                    optim: None,
                    state: &st,
                    batch_counters: &BatchCounters::default(),
                },
            )
            .unwrap();
        }
        assert_eq!(load_state(&run.dir).unwrap(), state(3));
        assert_eq!(run.read_metrics().unwrap().len(), 3);
        let folders: Vec<String> = std::fs::read_dir(dir(&run.dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut folders = folders;
        folders.sort();
        assert_eq!(folders, vec!["CURRENT", "epoch-0003"]);
        // The best model was never rewritten after epoch 1: it is the same file (inode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let a = std::fs::metadata(run.dir.join(files::MODEL)).unwrap();
            let b = std::fs::metadata(dir(&run.dir).join("epoch-0003").join(BEST)).unwrap();
            assert_eq!(a.ino(), b.ino());
        }
    }

    #[test]
    fn a_kill_between_commit_and_publish_is_repaired_and_an_uncommitted_epoch_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let run = crate::run::tests::tiny_run(tmp.path(), Task::Classification);
        let device = default_device();
        let net = Net::new(Arch::EfficientnetLite0, 2, &device);
        for epoch in 1..=2 {
            let (m, st) = (metrics(epoch), state(epoch));
            commit(
                &run,
                EpochCommit {
                    net: &net,
                    best: true,
                    metrics: &m,
                    optim: None,
                    state: &st,
                    batch_counters: &BatchCounters::default(),
                },
            )
            .unwrap();
        }
        // As if killed after CURRENT was written but before publishing: the run's metrics
        // still show one epoch, and a folder of an uncommitted epoch 3 lies around.
        let one_line: String = std::fs::read_to_string(run.dir.join(files::METRICS))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        std::fs::write(run.dir.join(files::METRICS), format!("{one_line}\n")).unwrap();
        std::fs::create_dir(dir(&run.dir).join("epoch-0003")).unwrap();
        let dead_tmp = dir(&run.dir).join(format!(
            "{}{}-epoch-x",
            crate::fs::TEMP_PREFIX,
            u32::MAX - 1
        ));
        std::fs::create_dir(&dead_tmp).unwrap();
        let st = recover(&run.dir).unwrap().unwrap();
        assert_eq!(st.epoch, 2);
        assert_eq!(run.read_metrics().unwrap().len(), 2);
        assert!(!dir(&run.dir).join("epoch-0003").exists());
        if cfg!(target_os = "linux") {
            assert!(!dead_tmp.exists());
        }
        // Epoch 2's models were published before: publishing them again leaves no staged link.
        for d in [run.dir.clone(), dir(&run.dir)] {
            for e in std::fs::read_dir(&d).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(crate::fs::TEMP_PREFIX),
                    "{name} left in {d:?}"
                );
            }
        }
    }

    #[test]
    fn resuming_a_folder_without_a_committed_epoch_says_to_start_again() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_state(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("no training state") && err.contains("--force"),
            "{err}"
        );
    }
}
