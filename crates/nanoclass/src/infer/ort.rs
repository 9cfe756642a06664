//! ONNX Runtime: finding and loading `libonnxruntime`, the cache of exported graphs, and one
//! session per model ([`OrtModel`]).
//!
//! The library is loaded at run time from the user's machine ([`find_ort_library`]); nothing is
//! downloaded or linked. A model's ONNX export is written once into a cache keyed by the SHA-256
//! of the model file and the exporter ([`onnx_cache_path`]), so a retrained model is never served
//! stale. [`super::engine`] decides whether ONNX Runtime or burn runs a model.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The environment variable naming `libonnxruntime` (the variable `ort` itself reads).
pub const ORT_LIB_ENV: &str = "ORT_DYLIB_PATH";

/// The optional config file: `<config dir>/nanoclass/config.json` (on Linux
/// `~/.config/nanoclass/config.json`), whose key `onnxruntime` may name `libonnxruntime`.
pub fn config_file() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("nanoclass").join("config.json"))
}

/// Where `libonnxruntime` is, in this order: `$ORT_DYLIB_PATH`; the `onnxruntime` key of
/// [`config_file`]; the `capi/` folder of a pip-installed `onnxruntime` (or
/// `onnxruntime-gpu`) package in the usual site-packages folders of Python 3. None when none
/// exists.
pub fn find_ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ORT_LIB_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = config_file()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("onnxruntime")?.as_str().map(PathBuf::from))
    {
        return Some(p);
    }
    site_packages()
        .into_iter()
        .find_map(|dir| capi_library(&dir.join("onnxruntime").join("capi")))
}

/// Python 3 package folders to search: the system's (`/usr/lib/python3/dist-packages`,
/// `/usr/local/lib/python3.*/dist-packages`), the user's (`~/.local/lib/python3.*/site-packages`),
/// `$VIRTUAL_ENV`'s and pyenv's.
fn site_packages() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = vec![PathBuf::from("/usr/local/lib"), PathBuf::from("/usr/lib")];
    if let Some(home) = dirs::home_dir() {
        roots.push(home.join(".local/lib"));
        if let Ok(versions) = std::fs::read_dir(home.join(".pyenv/versions")) {
            roots.extend(versions.flatten().map(|e| e.path().join("lib")));
        }
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.insert(0, PathBuf::from(venv).join("lib"));
    }
    let mut out = vec![PathBuf::from("/usr/lib/python3/dist-packages")];
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for p in pythons.into_iter().rev() {
            out.push(p.join("site-packages"));
            out.push(p.join("dist-packages"));
        }
    }
    out
}

/// `libonnxruntime.so*` (or `.dylib`, `.dll`) in `capi`: the one with the highest version in
/// its name (`libonnxruntime.so.1.31.1` over `libonnxruntime.so.1.9.0`; an unversioned name
/// ranks lowest).
fn capi_library(capi: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                (n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
                    || n == "onnxruntime.dll"
            })
        })
        .collect();
    libs.sort_by_key(|p| library_version(p));
    libs.pop()
}

/// The numeric version in a library's file name: `libonnxruntime.so.1.31.1` -> `[1, 31, 1]`.
fn library_version(path: &Path) -> Vec<u64> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split('.')
        .filter_map(|part| part.parse::<u64>().ok())
        .collect()
}

/// The process's ONNX Runtime environment: the library loaded once. `Err` holds why it is not
/// available (no library found, or it failed to load), the same for the life of the process.
pub fn ort_environment() -> std::result::Result<&'static ort::environment::Environment, String> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_ort_library().ok_or_else(|| {
            format!("no libonnxruntime found (set {ORT_LIB_ENV}, or `pip install onnxruntime`)")
        })?;
        if !lib.is_file() {
            return Err(format!("{}: no such file", lib.display()));
        }
        // A library that aborts inside `dlopen` takes the process with it; one that loads but
        // has the wrong API version is refused by `ort` with its reason.
        let builder =
            ort::init_from(&lib).map_err(|e| format!("{}: cannot load: {e}", lib.display()))?;
        builder
            .with_name("nanoclass")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("{}: {e}", lib.display()))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The version of the ONNX graphs this build writes, part of the export cache key.
const EXPORTER: &str = concat!("nanoclass-onnx-", env!("CARGO_PKG_VERSION"), "-opset17");

/// The cache root of exported models: `$NANOCLASS_ONNX_CACHE`, else
/// `<XDG cache>/nanoclass/onnx`.
pub fn onnx_cache_dir() -> Option<PathBuf> {
    std::env::var_os("NANOCLASS_ONNX_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("nanoclass").join("onnx")))
}

/// Where the ONNX export of the model file `model` is cached: `<root>/<key>.onnx`, `key` the
/// SHA-256 of the exporter version, the model file's bytes and `extra` (e.g. the input size).
///
/// # Errors
/// The model file cannot be read.
pub fn onnx_cache_path(root: &Path, model: &Path, extra: &str) -> Result<PathBuf> {
    let digest = crate::model::registry::sha256_file(model)?;
    let mut h = Sha256::new();
    h.update(EXPORTER.as_bytes());
    h.update([0]);
    h.update(digest.as_bytes());
    h.update([0]);
    h.update(extra.as_bytes());
    Ok(root.join(format!("{}.onnx", hex::encode(h.finalize()))))
}

/// The most the export cache may hold, in bytes: `$NANOCLASS_ONNX_CACHE_MB` mebibytes, else
/// 1 GiB (a ResNet-50 export is about 100 MB, EfficientNet-Lite0's about 19 MB). When a new
/// export would take it past that, the least recently used exports are removed first.
pub fn onnx_cache_limit() -> u64 {
    std::env::var("NANOCLASS_ONNX_CACHE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(1 << 30, |mb| mb << 20)
}

/// Removes the least recently used `.onnx` files of `root` (by modification time, which
/// [`open_cached`] renews on every use) until the folder holds at most `limit` bytes; `keep` is
/// never removed. Returns the bytes freed.
pub fn prune_onnx_cache(root: &Path, limit: u64, keep: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "onnx"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut freed = 0;
    for (_, len, path) in files {
        if total <= limit {
            break;
        }
        if path == keep {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            freed += len;
        }
    }
    freed
}

/// Opens in ONNX Runtime the export cached under the key of `source` (a model or weights
/// file) and `extra` ([`onnx_cache_path`]), writing it first with `build` when missing. The
/// cache is kept under [`onnx_cache_limit`] ([`prune_onnx_cache`]).
///
/// # Errors
/// ONNX Runtime is not available; no cache folder; `source` cannot be read; `build` fails;
/// the file cannot be written.
pub fn open_cached(
    source: &Path,
    extra: &str,
    build: impl FnOnce() -> Result<tract_onnx::pb::ModelProto>,
) -> Result<OrtModel> {
    ort_environment().map_err(Error::Other)?;
    let root = onnx_cache_dir()
        .ok_or_else(|| Error::Other("no cache folder for the ONNX export".into()))?;
    let path = onnx_cache_path(&root, source, extra)?;
    if path.is_file() {
        // Renews its place in the least-recently-used order; a read-only cache still works.
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    } else {
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        crate::fs::clean_stale_temp_files(&root);
        crate::fs::write_atomic(&path, &crate::export::onnx::encode(&build()?))?;
        prune_onnx_cache(&root, onnx_cache_limit(), &path);
    }
    OrtModel::open(&path)
}

/// The backbone of `net` (its pooled features, `[N, C]`) in ONNX Runtime, for frozen training
/// and instant models, cached under the pretrained weights file `weights` it was loaded from,
/// the architecture and the input size.
///
/// # Errors
/// Those of [`open_cached`].
pub fn backbone_model(
    net: &crate::model::Net,
    arch: crate::model::Arch,
    weights: &Path,
    size: usize,
) -> Result<OrtModel> {
    let extra = match net.point_head() {
        Some(_) => format!("map {} arch={} size={size}", arch.point_tap(), arch.name()),
        None => format!("features arch={} size={size}", arch.name()),
    };
    open_cached(weights, &extra, || {
        let meta = std::collections::BTreeMap::from([
            ("producer".to_string(), "nanoclass".to_string()),
            ("arch".to_string(), arch.name().to_string()),
            ("output".to_string(), "features".to_string()),
        ]);
        crate::export::onnx::features_proto(net, size, crate::export::onnx::DEFAULT_OPSET, &meta)
    })
}

/// The frozen body of partial fine-tuning up to `cut` ([`crate::export::onnx::prefix_proto`],
/// `[N, 3, size, size]` -> `[N, C, h, w]`) in ONNX Runtime, exported once per weights file, cut
/// and size into the ONNX cache.
///
/// # Errors
/// Those of [`open_cached`]; the cut does not fit the model.
pub fn prefix_model(
    net: &crate::model::Net,
    arch: crate::model::Arch,
    weights: &Path,
    cut: crate::model::cut::Cut,
    size: usize,
) -> Result<OrtModel> {
    let extra = format!(
        "prefix arch={} blocks={} size={size}",
        arch.name(),
        cut.blocks
    );
    open_cached(weights, &extra, || {
        let meta = std::collections::BTreeMap::from([
            ("producer".to_string(), "nanoclass".to_string()),
            ("arch".to_string(), arch.name().to_string()),
            (
                "output".to_string(),
                format!("activations before the {cut}"),
            ),
        ]);
        crate::export::onnx::prefix_proto(net, cut, size, crate::export::onnx::DEFAULT_OPSET, &meta)
    })
}

/// A model in ONNX Runtime: one session, `[N, 3, H, W]` f32 in, `[N, K]` f32 out.
pub struct OrtModel {
    session: Mutex<ort::session::Session>,
    input: String,
    path: PathBuf,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel")
            .field("path", &self.path)
            .field("input", &self.input)
            .finish()
    }
}

/// Threads for one ONNX Runtime session: the machine's cores.
fn intra_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl OrtModel {
    /// Opens an ONNX file in ONNX Runtime (all graph optimisations, one intra-op thread per
    /// core, no spinning between operators).
    ///
    /// # Errors
    /// ONNX Runtime is not available (the reason), or the session cannot be created.
    pub fn open(path: &Path) -> Result<OrtModel> {
        let env = ort_environment().map_err(Error::Other)?;
        let oerr = |e: ort::Error| Error::Other(format!("{}: ONNX Runtime: {e}", path.display()));
        let builder = ort::session::Session::builder(env).map_err(oerr)?;
        // With the `ort-gpu` feature (a Jetson or a CUDA PC): TensorRT, then CUDA, when the
        // library has them (NVIDIA's onnxruntime-gpu wheels); a provider the library lacks is
        // skipped and the CPU runs the rest.
        #[cfg(feature = "ort-gpu")]
        let builder = builder
            .with_execution_providers([
                ort::ep::TensorRT::default().build(),
                ort::ep::CUDA::default().build(),
            ])
            .map_err(|e| oerr(e.into()))?;
        let session = builder
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .map_err(|e| oerr(e.into()))?
            .with_intra_threads(intra_threads())
            .map_err(|e| oerr(e.into()))?
            // Idle workers sleep instead of spinning: the decoding thread beside the model gets
            // the core (ResNet-18 `live` over 640x480 JPEGs on 2 cores: 78 -> 90 FPS, model
            // time unchanged).
            .with_intra_op_spinning(false)
            .map_err(|e| oerr(e.into()))?
            .commit_from_file(path)
            .map_err(oerr)?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| Error::Other(format!("{}: the graph has no input", path.display())))?;
        Ok(OrtModel {
            session: Mutex::new(session),
            input,
            path: path.to_path_buf(),
        })
    }

    /// The ONNX file it runs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `n` images (`pixels` is `[n, 3, size, size]` flattened); returns the first output,
    /// `[n, K]` flattened, and `K`.
    ///
    /// # Errors
    /// ONNX Runtime fails (the input does not fit the graph, out of memory).
    pub fn run(&self, pixels: Vec<f32>, n: usize, size: usize) -> Result<(Vec<f32>, usize)> {
        let oerr =
            |e: ort::Error| Error::Other(format!("{}: ONNX Runtime: {e}", self.path.display()));
        let x = ort::value::Tensor::from_array(([n, 3, size, size], pixels)).map_err(oerr)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Other("ONNX Runtime session poisoned".into()))?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => x])
            .map_err(oerr)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(oerr)?;
        // Values per image: `[N, K]` gives K, `[N, C, h, w]` gives C * h * w.
        let k = shape.iter().skip(1).product::<i64>().max(1) as usize;
        Ok((data.to_vec(), k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_follows_the_model_bytes_and_the_extra_key() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("model.safetensors");
        std::fs::write(&m, b"weights one").unwrap();
        let a = onnx_cache_path(tmp.path(), &m, "224").unwrap();
        assert_eq!(a, onnx_cache_path(tmp.path(), &m, "224").unwrap());
        assert_ne!(a, onnx_cache_path(tmp.path(), &m, "256").unwrap());
        // Retrained: same path, new bytes, new key.
        std::fs::write(&m, b"weights two").unwrap();
        let b = onnx_cache_path(tmp.path(), &m, "224").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(tmp.path()));
        assert_eq!(a.extension().and_then(|e| e.to_str()), Some("onnx"));
    }

    #[test]
    fn the_cache_is_pruned_least_recently_used_first() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(1000);
        let mut paths = vec![];
        for (i, name) in ["a.onnx", "b.onnx", "c.onnx", "d.onnx"].iter().enumerate() {
            let p = tmp.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(10 * i as u64))
                .unwrap();
            paths.push(p);
        }
        std::fs::write(tmp.path().join("notes.txt"), vec![0u8; 1000]).unwrap();
        // 400 bytes of exports, limit 250: the two oldest go, except the one being kept.
        let freed = prune_onnx_cache(tmp.path(), 250, &paths[0]);
        assert_eq!(freed, 200);
        assert!(paths[0].exists() && !paths[1].exists() && !paths[2].exists());
        assert!(paths[3].exists() && tmp.path().join("notes.txt").exists());
    }

    #[test]
    fn the_newest_library_in_capi_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(capi_library(tmp.path()), None);
        // 1.9 sorts after 1.31 by name, not by version
        for n in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime.so.1.30.0",
            "README",
        ] {
            std::fs::write(tmp.path().join(n), b"").unwrap();
        }
        assert_eq!(
            capi_library(tmp.path()),
            Some(tmp.path().join("libonnxruntime.so.1.31.1"))
        );
    }
}
