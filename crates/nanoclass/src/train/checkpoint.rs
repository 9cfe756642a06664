//! Training state for `--resume`: the last completed epoch, the best score so far and the
//! optimizer's state (Adam moments, SGD momentum).
//!
//! The optimizer keeps its state per parameter id. A model reloaded from `last.safetensors`
//! gets new ids, so the ids are saved by module path beside the optimizer state and given back
//! to the reloaded model's parameters before the optimizer state is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::run::{files, write_atomic};
use crate::{Error, Result};

const STATE: &str = "state.json";
const OPTIMIZER: &str = "optimizer.bpk";

/// What `checkpoint/state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Last completed epoch (1-based, across phases).
    pub epoch: usize,
    /// Phase of that epoch: `head` or `full`.
    pub phase: String,
    /// Best (held-out top-1, -held-out loss) so far.
    pub best: Option<(f64, f64)>,
    /// Epoch of the best model.
    pub best_epoch: usize,
    /// Parameter id of each parameter of the optimized module, by module path.
    pub param_ids: BTreeMap<String, u64>,
}

fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join(files::CHECKPOINT)
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

/// Writes the training state and the optimizer state of `module`.
pub fn save(run_dir: &Path, state: &TrainState, optim: &ModuleOptimizer) -> Result<()> {
    let d = dir(run_dir);
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    let opt_path = d.join(OPTIMIZER);
    let tmp = d.join(format!("{OPTIMIZER}.tmp"));
    optim
        .save(&tmp)
        .map_err(|e| Error::Other(format!("{}: saving optimizer state: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &opt_path).map_err(|e| Error::io(&opt_path, e))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&d.join(STATE), json.as_bytes())
}

/// Reads the training state of a run directory. A weights file or a folder without
/// `checkpoint/state.json` is refused with what to do instead.
pub fn load_state(run_dir: &Path) -> Result<TrainState> {
    if run_dir.is_file() {
        return Err(Error::Run {
            path: run_dir.to_path_buf(),
            reason: "is a weights file, which holds no training state (epoch, optimizer): \
                     --resume takes a run directory; pass this file as --weights to start from it"
                .into(),
        });
    }
    let p = dir(run_dir).join(STATE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::Run {
        path: run_dir.to_path_buf(),
        reason: format!("no training state to resume ({}: {e})", p.display()),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Run {
        path: p.clone(),
        reason: format!("not a valid training state: {e}"),
    })
}

/// Loads the optimizer state saved beside the training state.
pub fn load_optimizer(run_dir: &Path, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let p = dir(run_dir).join(OPTIMIZER);
    optim
        .load(&p)
        .map_err(|e| Error::Other(format!("{}: loading optimizer state: {e}", p.display())))
}
