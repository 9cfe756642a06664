//! Files that are never seen half-written: every file nanoclass writes (models, run files,
//! exports, cache entries, captured images) goes through [`write_atomic`] or
//! [`write_atomic_with`]: the bytes go to a temporary file in the destination folder, which is
//! flushed to disk and then renamed over the destination in one step. A reader (or a process
//! killed at any moment) sees the old file or the new one, never a torn one.
//!
//! The temporary files are named `.nanoclass-tmp-<owner>-<random>`; a process killed while
//! writing leaves one behind, and [`clean_stale_temp_files`] removes those of processes that no
//! longer run (each command that writes into a folder calls it when it starts). The owner is
//! `<pid>.<start>` on Linux, `start` being the process's start time after boot (clock ticks,
//! `/proc/<pid>/stat`): process ids are reused (a machine that builds and kills many processes
//! can wrap `pid_max`, 32768 by default, within minutes), and a file whose pid now belongs to
//! another process is still the dead one's.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The start of every temporary file name.
pub const TEMP_PREFIX: &str = ".nanoclass-tmp-";

fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", owner())
}

/// This process's owner id in temporary names: `<pid>.<start>` where the start time can be read,
/// else `<pid>`.
fn owner() -> &'static str {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        match start_time(pid) {
            Some(start) => format!("{pid}.{start}"),
            None => pid.to_string(),
        }
    })
}

/// The start time of process `pid` in clock ticks after boot (field 22 of `/proc/<pid>/stat`);
/// None where there is no such process or no `/proc`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `bytes` to `path` atomically (see the module docs), with mode `rw-r--r--`.
///
/// # Errors
/// [`Error::Io`] naming `path` when the folder is missing or not writable or the disk is
/// full; `path` is then untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with the content written by `write` into the temporary file (for
/// encoders that take a writer).
///
/// # Errors
/// As [`write_atomic`], plus `write`'s own error.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Errors name the file being written, the one the user knows.
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix())
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    write(tmp.as_file_mut()).map_err(|e| Error::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    make_readable(tmp.path())?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes `bytes` to a new file in `dir` atomically, without replacing an existing file: the
/// name comes from `name`, which is asked again (up to 8 times) while the name is taken.
/// Returns the path written.
///
/// # Errors
/// [`Error::Io`] when the folder is not writable; [`Error::Other`] when every name was taken.
pub fn write_new(dir: &Path, bytes: &[u8], mut name: impl FnMut() -> String) -> Result<PathBuf> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix())
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    make_readable(tmp.path())?;
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        let path = dir.join(name());
        match tmp.persist_noclobber(&path) {
            Ok(_) => return Ok(path),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => tmp = e.file,
            Err(e) => return Err(Error::io(&path, e.error)),
        }
    }
    Err(Error::Other(format!(
        "{}: {TRIES} fresh file names were all taken",
        dir.display()
    )))
}

/// Gives a file the usual `rw-r--r--` mode: temporary files are created private (0600), but
/// the files nanoclass writes are meant to be copied, shared and served.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn make_readable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Whether the owner `id` (`<pid>.<start>`, or `<pid>` as older versions wrote it) still runs.
/// On Linux, from `/proc`: the pid must run and, where the name has it, have the same start
/// time; elsewhere every owner is taken to be running, so nothing is removed that might still
/// be written. None when `id` is not an owner id.
fn owner_alive(id: &str) -> Option<bool> {
    let (pid, start) = match id.split_once('.') {
        Some((pid, start)) => (pid.parse::<u32>().ok()?, Some(start.parse::<u64>().ok()?)),
        None => (id.parse::<u32>().ok()?, None),
    };
    if !cfg!(target_os = "linux") {
        return Some(true);
    }
    Some(match start {
        Some(start) => start_time(pid) == Some(start),
        None => Path::new("/proc").join(pid.to_string()).exists(),
    })
}

/// Removes the temporary files (and folders) of [`write_atomic`] and of checkpoint writes that
/// processes which no longer run left in `dir` (not recursive). Returns how many were removed.
/// A folder that cannot be read is left alone (0).
pub fn clean_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(id) = rest.split('-').next() else {
            continue;
        };
        // This process's own may be being written right now by another thread.
        if id == owner() || owner_alive(id) != Some(false) {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path).is_ok()
        } else {
            std::fs::remove_file(&path).is_ok()
        };
        removed += usize::from(gone);
    }
    removed
}

/// A name for a temporary folder in a parent folder, cleaned by [`clean_stale_temp_files`].
pub fn temp_dir_name(tag: &str) -> String {
    format!("{}{tag}-{:016x}", temp_prefix(), rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("encoder failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("encoder failed"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn stale_temporary_files_of_dead_processes_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // pid 0 is never a user process, and u32::MAX - 1 is far above any pid_max.
        let dead = tmp
            .path()
            .join(format!("{TEMP_PREFIX}{}-abc", u32::MAX - 1));
        let dead_dir = tmp
            .path()
            .join(format!("{TEMP_PREFIX}{}-ckpt-1", u32::MAX - 1));
        let mine = tmp.path().join(format!("{}xyz", temp_prefix()));
        let other = tmp.path().join("model.safetensors");
        // This process's pid with another start time: a dead process whose pid was reused.
        let pid = std::process::id();
        let reused = tmp
            .path()
            .join(format!("{TEMP_PREFIX}{pid}.{}-abc", u64::MAX));
        // Names of older versions, without a start time: the pid alone decides.
        let old_live = tmp.path().join(format!("{TEMP_PREFIX}{pid}-abc"));
        std::fs::write(&reused, b"x").unwrap();
        std::fs::write(&old_live, b"x").unwrap();
        std::fs::write(&dead, b"x").unwrap();
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("f"), b"x").unwrap();
        std::fs::write(&mine, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let removed = clean_stale_temp_files(tmp.path());
        if cfg!(target_os = "linux") {
            assert!(owner().starts_with(&format!("{pid}.")), "{}", owner());
            assert_eq!(removed, 3);
            assert!(!dead.exists() && !dead_dir.exists() && !reused.exists());
        }
        assert!(mine.exists() && other.exists() && old_live.exists());
    }
}
