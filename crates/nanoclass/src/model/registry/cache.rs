//! The weights cache folder: where it is, and the `.sha256` stamps that spare re-hashing verified files.

use super::*;

/// The weights cache folder.
///
/// `$NANOCLASS_CACHE` when set and not empty (the folder itself); otherwise
/// `<platform cache>/nanoclass/weights`, where the platform cache is `dirs::cache_dir()`: on
/// Linux `$XDG_CACHE_HOME` when it is an absolute path, else `~/.cache`; on macOS
/// `~/Library/Caches`; on Windows `%LOCALAPPDATA%`. A relative `$NANOCLASS_CACHE` is made
/// absolute against the current directory. The folder is not created here.
///
/// # Errors
/// [`Error::Registry`] when neither the variable nor a home folder is available.
pub fn cache_dir() -> Result<PathBuf> {
    cache_dir_from(std::env::var_os(CACHE_ENV), dirs::cache_dir())
}

/// [`cache_dir`] from explicit values of `$NANOCLASS_CACHE` and the platform cache folder.
pub(super) fn cache_dir_from(
    nanoclass_cache: Option<OsString>,
    platform_cache: Option<PathBuf>,
) -> Result<PathBuf> {
    let dir = match nanoclass_cache.filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match platform_cache {
            Some(base) => base.join("nanoclass").join("weights"),
            None => {
                return Err(Error::Registry(format!(
                    "no folder for the weights cache: set {CACHE_ENV} to one (no home or cache \
                     folder is known for this user)"
                )));
            }
        },
    };
    std::path::absolute(&dir).map_err(|e| Error::io(&dir, e))
}

/// Where `entry` lives in the cache: `cache_dir()?.join(entry.file_name)`. The file may not
/// exist yet.
///
/// # Errors
/// As [`cache_dir`].
pub fn cached_path(entry: &WeightsEntry) -> Result<PathBuf> {
    Ok(cache_dir()?.join(entry.file_name))
}

/// What the cache holds for an entry (see [`check_cached`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No file under the entry's name.
    Missing,
    /// The file is there with the right size and SHA-256.
    Ready(PathBuf),
    /// A file is there but it is not the entry's file.
    Corrupt {
        /// The cached file.
        path: PathBuf,
        /// What is wrong (sizes or both hashes).
        reason: String,
    },
}

/// Looks at `<cache>/<entry.file_name>`: missing, verified, or wrong.
///
/// The first check hashes the whole file; when it matches, a `<file>.sha256` stamp recording
/// the digest, size and modification time is written, and later checks trust the file as long
/// as its size and modification time still equal the stamp's (lazy verification). A stamp
/// that cannot be written (read-only cache) only means the next check hashes again.
///
/// # Errors
/// [`Error::Io`] naming the file when it exists but cannot be read.
pub fn check_cached(entry: &WeightsEntry, cache: &Path) -> Result<CacheStatus> {
    let path = cache.join(entry.file_name);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CacheStatus::Missing),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if !meta.is_file() {
        let reason = "it is not a regular file".to_string();
        return Ok(CacheStatus::Corrupt { path, reason });
    }
    if meta.len() != entry.size {
        let reason = format!(
            "it has {} bytes, {} should have {} bytes",
            meta.len(),
            entry.file_name,
            entry.size
        );
        return Ok(CacheStatus::Corrupt { path, reason });
    }
    let modified = meta.modified().ok();
    if stamp_matches(&path, entry, meta.len(), modified) {
        return Ok(CacheStatus::Ready(path));
    }
    let (found, _) = sha256_and_len(&path)?;
    if found != entry.sha256 {
        let reason = format!("SHA-256 mismatch: expected {}, found {found}", entry.sha256);
        return Ok(CacheStatus::Corrupt { path, reason });
    }
    // The stamp only saves re-hashing; without it (read-only cache) the next check hashes again.
    let _ = write_stamp(&path, &found);
    Ok(CacheStatus::Ready(path))
}

/// The stamp file of a cached weights file: `<file>.sha256`.
pub(super) fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".sha256");
    path.with_file_name(name)
}

/// `seconds.nanoseconds` since the Unix epoch, or `unknown`.
pub(super) fn time_text(t: Option<SystemTime>) -> String {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        None => "unknown".to_string(),
    }
}

/// Writes the `<file>.sha256` stamp of a file just verified to have digest `sha256`.
pub(super) fn write_stamp(path: &Path, sha256: &str) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = format!(
        "{sha256}  {name}\n# size={} modified={}\n",
        meta.len(),
        time_text(meta.modified().ok())
    );
    fs::write(stamp_path(path), text)
}

/// Whether the stamp beside `path` records `entry`'s digest and the file's current size and
/// modification time.
pub(super) fn stamp_matches(
    path: &Path,
    entry: &WeightsEntry,
    len: u64,
    modified: Option<SystemTime>,
) -> bool {
    if modified.is_none() {
        return false;
    }
    let Ok(text) = fs::read_to_string(stamp_path(path)) else {
        return false;
    };
    let mut lines = text.lines();
    let digest_ok = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .is_some_and(|d| d == entry.sha256);
    let expected = format!("# size={len} modified={}", time_text(modified));
    digest_ok && lines.next() == Some(expected.as_str())
}

/// SHA-256 (64 lowercase hex digits) of a file's bytes, e.g. to key caches by content.
///
/// # Errors
/// [`Error::Io`] naming the file when it cannot be opened or read.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_and_len(path)?.0)
}

/// SHA-256 and length in bytes of a file.
pub(super) fn sha256_and_len(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Checks that `text` is a full SHA-256 (64 hex digits) and returns it in lowercase.
pub(super) fn normalize_sha256(text: &str) -> Result<String> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(Error::Registry(format!(
            "expected SHA-256 '{text}' is not 64 hexadecimal digits"
        )))
    }
}
