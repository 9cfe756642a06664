//! Fetching a registry entry: from an installed Python package, else by HTTP(S) with the SHA-256 checked on the way, written atomically.

use super::*;

/// Makes `entry`'s file available in the cache and returns its path, downloading it when
/// needed, with a progress bar on stderr. Reads [`cache_dir`] and `$NANOCLASS_NO_PIP`.
///
/// # Errors
/// As [`fetch_into`]; also when no cache folder is known.
pub fn fetch(entry: &WeightsEntry, url_override: Option<&str>) -> Result<PathBuf> {
    fetch_into(entry, url_override, &cache_dir()?, pip_lookup_enabled())
}

/// [`fetch`] with an explicit cache folder and installed-package lookup switch.
///
/// - A verified cached file is returned as is (no network).
/// - With `url_override`, or for an entry with an `https://` URL: the file is downloaded with
///   [`fetch_url`] (SHA-256 checked, atomic) over any wrong cached file, and stamped.
/// - For a pip-packaged entry without `url_override`: nothing is installed; if `pip_lookup` is
///   on and the package is installed, its file is verified and copied into the cache;
///   otherwise the error gives the `pip install` command to run.
///
/// # Errors
/// [`Error::Registry`] for HTTP and network failures (status and URL), a wrong SHA-256 (both
/// digests; nothing is left behind), a download larger than `entry.size`, or a pip-packaged
/// file that is not installed; [`Error::Io`] when the cache cannot be written.
pub fn fetch_into(
    entry: &WeightsEntry,
    url_override: Option<&str>,
    cache: &Path,
    pip_lookup: bool,
) -> Result<PathBuf> {
    if let CacheStatus::Ready(path) = check_cached(entry, cache)? {
        return Ok(path);
    }
    let url = match url_override {
        Some(url) => url,
        None if entry.url.starts_with("https://") || entry.url.starts_with("http://") => entry.url,
        None => return resolve_pip_only(entry, cache, pip_lookup),
    };
    let dest = cache.join(entry.file_name);
    download(url, &dest, entry.sha256, Some(entry.size))?;
    // The stamp only saves re-hashing; without it the next check hashes again.
    let _ = write_stamp(&dest, entry.sha256);
    Ok(dest)
}

/// The [`fetch_into`] path of an entry that only ships inside a pip package.
pub(super) fn resolve_pip_only(
    entry: &WeightsEntry,
    cache: &Path,
    pip_lookup: bool,
) -> Result<PathBuf> {
    let Some(pip) = entry.pip else {
        return Err(Error::Registry(format!(
            "pretrained weights '{}' have no download URL: {}",
            entry.name,
            getting_steps(entry, cache)
        )));
    };
    if pip_lookup
        && let PackageLookup::Found(file) =
            installed_package_file(&pip, OsStr::new("python3"), &[])?
    {
        return install_local_file(entry, &file, cache);
    }
    Err(Error::Registry(format!(
        "pretrained weights '{}' have no download URL: they ship in the Python package {}, {}. \
         Install it and fetch again, or fetch with the URL of a copy of the file. {}",
        entry.name,
        pip.requirement,
        if pip_lookup {
            "which `python3` does not have"
        } else {
            "and the lookup of an installed copy is off"
        },
        getting_steps(entry, cache)
    )))
}

/// Downloads `url` to `dest` (HTTP or HTTPS, following redirects), with a progress bar on
/// stderr when it is a terminal.
///
/// The bytes go to `<dest>.part-<random>` beside `dest` while being hashed; when the SHA-256
/// equals `expected_sha256` (64 hex digits, any case) the part file is fsync'ed and renamed onto
/// `dest` (replacing any file there), and the folder is fsync'ed. Missing parent folders are
/// created. On any error the part file is removed and `dest` is untouched.
///
/// # Errors
/// [`Error::Registry`]: `expected_sha256` is not 64 hex digits; a non-2xx HTTP status (the
/// message has the status code and URL); a network failure (the URL and the bytes received);
/// a SHA-256 mismatch (expected and found digests). [`Error::Io`] naming the path when the
/// folder or part file cannot be written.
pub fn fetch_url(url: &str, dest: &Path, expected_sha256: &str) -> Result<()> {
    download(url, dest, expected_sha256, None)
}

/// [`fetch_url`], also failing once more than `max_size` bytes arrive.
pub(super) fn download(
    url: &str,
    dest: &Path,
    expected_sha256: &str,
    max_size: Option<u64>,
) -> Result<()> {
    let expected = normalize_sha256(expected_sha256)?;
    let Some(file_name) = dest.file_name() else {
        return Err(Error::Registry(format!(
            "download destination {} has no file name",
            dest.display()
        )));
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(url).call().map_err(|e| {
        Error::Registry(format!(
            "download {url} failed: {e} (without network access here, download the file on \
                 another machine and run `nanoclass weights add FILE`)"
        ))
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::Registry(format!(
            "download {url} failed: HTTP status {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let announced = response.body().content_length();

    let mut prefix = file_name.to_os_string();
    prefix.push(".part-");
    let mut part = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(8)
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;

    let bar = progress_bar(announced, &file_name.to_string_lossy());
    let mut reader = response.body_mut().as_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(Error::Registry(format!(
                    "download {url} failed after {total} bytes: {e}"
                )));
            }
        };
        total += n as u64;
        if let Some(max) = max_size.filter(|&max| total > max) {
            bar.abandon();
            return Err(Error::Registry(format!(
                "download {url} failed: the server sent more than the expected {max} bytes"
            )));
        }
        hasher.update(&buf[..n]);
        part.write_all(&buf[..n])
            .map_err(|e| Error::io(part.path(), e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();

    let found = hex::encode(hasher.finalize());
    if found != expected {
        return Err(Error::Registry(format!(
            "download {url}: SHA-256 mismatch: expected {expected}, found {found} ({total} bytes \
             received); nothing was saved"
        )));
    }
    persist(part, dest, &dir)
}

/// fsyncs a verified part file, renames it onto `dest`, and fsyncs the folder.
pub(super) fn persist(part: tempfile::NamedTempFile, dest: &Path, dir: &Path) -> Result<()> {
    part.as_file()
        .sync_all()
        .map_err(|e| Error::io(part.path(), e))?;
    part.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    sync_dir(dir)
}

/// fsyncs a folder so that a rename in it is durable.
#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    let result = File::open(dir).and_then(|d| d.sync_all());
    match result {
        Ok(()) => Ok(()),
        // Some file systems (e.g. some network mounts) cannot fsync a folder: the rename is
        // done, only its durability across a power cut is not guaranteed there.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// fsyncs a folder so that a rename in it is durable (not possible on this platform).
#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// A byte progress bar on stderr (drawn only when stderr is a terminal).
pub(super) fn progress_bar(len: Option<u64>, name: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(name.to_string());
    bar
}

/// Copies a local file into the cache as `entry`'s file, verifying the copied bytes, and
/// stamps it.
pub(super) fn install_local_file(
    entry: &WeightsEntry,
    src: &Path,
    cache: &Path,
) -> Result<PathBuf> {
    let dest = cache.join(entry.file_name);
    fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let mut input = File::open(src).map_err(|e| Error::io(src, e))?;
    let mut prefix = OsString::from(entry.file_name);
    prefix.push(".part-");
    let mut part = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(8)
        .tempfile_in(cache)
        .map_err(|e| Error::io(cache, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(src, e)),
        };
        hasher.update(&buf[..n]);
        part.write_all(&buf[..n])
            .map_err(|e| Error::io(part.path(), e))?;
        total += n as u64;
    }
    let found = hex::encode(hasher.finalize());
    if found != entry.sha256 || total != entry.size {
        return Err(Error::Registry(format!(
            "{} is not {} of '{}': SHA-256 expected {}, found {found} ({total} bytes, expected {})",
            src.display(),
            entry.file_name,
            entry.name,
            entry.sha256,
            entry.size
        )));
    }
    persist(part, &dest, cache)?;
    // The stamp only saves re-hashing; without it the next check hashes again.
    let _ = write_stamp(&dest, &found);
    Ok(dest)
}
