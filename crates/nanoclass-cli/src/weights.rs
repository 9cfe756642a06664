//! `nanoclass weights`: the pretrained-weights registry.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use nanoclass::model::registry;

/// `nanoclass weights` subcommands.
#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// The registry: name, architecture, file, format, source, and whether the file is on this
    /// machine (ready), with the one command that gets it when it is absent.
    List,
    /// Download NAME into the cache (verified by SHA-256, written atomically).
    Fetch {
        /// Registry name, e.g. resnet18.
        name: String,
        /// Download from this URL instead of the registry's (a mirror); the hash is still checked.
        #[arg(long)]
        url: Option<String>,
    },
    /// Put a weights file you already have into the cache, after checking its SHA-256 against
    /// the registry.
    Add {
        /// The file.
        file: PathBuf,
    },
}

/// Runs `nanoclass weights`.
pub fn cmd_weights(w: WeightsCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match w {
        WeightsCommand::List => {
            let cache = registry::cache_dir()?;
            writeln!(out, "cache: {}", cache.display())?;
            for e in registry::registry() {
                let availability = registry::availability(e);
                let state = match &availability {
                    registry::Availability::Ready(_) => "ready",
                    registry::Availability::Absent => "absent",
                    registry::Availability::Unusable(_) => "unusable",
                };
                writeln!(
                    out,
                    "{:<20} {:<20} {:<36} {:<12} {state}\n{:<20} source: {}",
                    e.name,
                    e.arch,
                    e.file_name,
                    e.format.as_str(),
                    "",
                    e.url
                )?;
                match availability {
                    registry::Availability::Ready(_) => {}
                    registry::Availability::Absent => {
                        writeln!(out, "{:<20} get it: {}", "", e.get_command())?
                    }
                    registry::Availability::Unusable(reason) => writeln!(
                        out,
                        "{:<20} cannot be used: {reason}; delete it and get it again: {}",
                        "",
                        e.get_command()
                    )?,
                }
            }
        }
        WeightsCommand::Fetch { name, url } => {
            let entry = registry::find(&name).with_context(|| {
                let names: Vec<&str> = registry::registry().iter().map(|e| e.name).collect();
                format!("no registry entry `{name}` (known: {})", names.join(", "))
            })?;
            let path = registry::fetch(entry, url.as_deref())?;
            writeln!(out, "{}", path.display())?;
        }
        WeightsCommand::Add { file } => {
            let (entry, path) = registry::add(&file)?;
            writeln!(
                out,
                "added {} as {} -> {}",
                file.display(),
                entry.name,
                path.display()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
