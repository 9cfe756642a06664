//! The compute device of burn, chosen at run time ([`DeviceChoice`]), and reading tensors back
//! to the host.
//!
//! Every build has the CPU (burn's Flex backend). A build with the `wgpu` feature can also run
//! on a GPU through wgpu (Vulkan, Metal or DirectX 12), and one with `cuda` through CUDA; one
//! binary then trains on `cpu` or on the GPU, as `--device` (or `$NANOCLASS_DEVICE`) says. The
//! CPU is the default everywhere.
//!
//! The GPU backends choose among several kernels for each operation by timing them on the
//! device (cubecl's autotune); the choices are kept in [`gpu_cache_dir`], so only a machine's
//! first run pays the tuning. wgpu's kernels are compiled at each start (WGSL, which the driver
//! compiles); CUDA's compiled kernels are kept in the same place.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The environment variable naming the default device (`cpu`, `wgpu` or `cuda`).
pub const DEVICE_ENV: &str = "NANOCLASS_DEVICE";

/// Where burn runs: training steps, and forward passes that do not run on ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// burn's Flex backend on the CPU (every build).
    #[default]
    Cpu,
    /// A GPU through wgpu (builds with the `wgpu` feature).
    Wgpu,
    /// An NVIDIA GPU through CUDA (builds with the `cuda` feature).
    Cuda,
}

impl DeviceChoice {
    /// Every device, the CPU first.
    pub const ALL: [DeviceChoice; 3] = [DeviceChoice::Cpu, DeviceChoice::Wgpu, DeviceChoice::Cuda];

    /// `cpu`, `wgpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Cuda => "cuda",
        }
    }

    /// Parses `cpu`, `wgpu` (or `gpu`, `vulkan`) or `cuda`, in any case.
    pub fn parse(s: &str) -> Option<DeviceChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Some(DeviceChoice::Cpu),
            "wgpu" | "gpu" | "vulkan" => Some(DeviceChoice::Wgpu),
            "cuda" => Some(DeviceChoice::Cuda),
            _ => None,
        }
    }

    /// `$NANOCLASS_DEVICE` when set to a known name, else [`DeviceChoice::Cpu`].
    pub fn from_env() -> DeviceChoice {
        std::env::var(DEVICE_ENV)
            .ok()
            .and_then(|v| DeviceChoice::parse(&v))
            .unwrap_or_default()
    }

    /// Whether this build can run on it.
    pub fn compiled(self) -> bool {
        match self {
            DeviceChoice::Cpu => true,
            DeviceChoice::Wgpu => cfg!(feature = "wgpu"),
            DeviceChoice::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Whether it is a GPU.
    pub fn is_gpu(self) -> bool {
        self != DeviceChoice::Cpu
    }

    /// The burn device. A GPU is acquired here, so a machine without one fails now, with the
    /// reason, rather than at the first tensor.
    ///
    /// # Errors
    /// [`Error::Other`] when this build lacks the backend (with the feature to build with), or
    /// no GPU adapter could be acquired.
    pub fn device(self) -> Result<Device> {
        if !self.compiled() {
            return Err(Error::Other(format!(
                "this build of nanoclass has no {0} backend: build it with `cargo build \
                 --release -p nanoclass-cli --features {0}`",
                self.name()
            )));
        }
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        if self.is_gpu() {
            configure_gpu_cache();
        }
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Device::wgpu_options()
                .init()
                .map_err(|e| Error::Other(format!("no GPU through wgpu: {e}"))),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            _ => unreachable!("checked by compiled()"),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DeviceChoice::parse(s).ok_or_else(|| format!("unknown device {s:?}: cpu, wgpu or cuda"))
    }
}

/// Where the GPU backends keep their tuned kernel choices: `$NANOCLASS_GPU_CACHE` when set,
/// else `<platform cache>/nanoclass/gpu-kernels` (`~/.cache/nanoclass/gpu-kernels` on Linux). A
/// `cubecl.toml` (or `burn.toml`) in the working folder that sets `environment.path` wins.
pub fn gpu_cache_dir() -> std::path::PathBuf {
    match std::env::var_os("NANOCLASS_GPU_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("nanoclass")
            .join("gpu-kernels"),
    }
}

/// The file in [`gpu_cache_dir`] that holds the tuned choices (cubecl's environment database,
/// `<name>.db`, `default` unless `$CUBECL_ENVIRONMENT` names another).
pub fn gpu_cache_file() -> std::path::PathBuf {
    let name = std::env::var("CUBECL_ENVIRONMENT")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    gpu_cache_dir().join(format!("{name}.db"))
}

/// Whether an earlier GPU run on this machine left its tuned kernel choices ([`gpu_cache_file`]).
pub fn gpu_cache_warm() -> bool {
    gpu_cache_file().is_file()
}

/// Points the GPU backends' tuning cache at [`gpu_cache_dir`], once, before the first GPU
/// device exists (cubecl reads its settings then). Settings from a `cubecl.toml` and the
/// `CUBECL_*` variables are kept; only the default location (cubecl's `target/` beside the
/// nearest `Cargo.toml`, or its own `~/.cache/cubecl`) is replaced.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn configure_gpu_cache() {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if matches!(config.environment.path, CacheConfig::Target) {
            config.environment.path = CacheConfig::Directory(gpu_cache_dir());
        }
        // Keep compiled kernels beside the tuned choices where the runtime can (off in
        // cubecl's defaults): the CUDA backend stores its PTX there, so a later start loads it
        // instead of compiling again. wgpu compiles WGSL, which its driver compiles again at
        // every start; cubecl keeps nothing of it.
        config.compilation.cache = true;
        // False when a GPU device was made before (its settings then stay as they were).
        let _ = CubeClRuntimeConfig::try_set(config);
    });
}

/// The device of forward-only work and of everything that does not choose one: burn's Flex
/// backend on the CPU.
pub fn default_device() -> Device {
    Device::flex()
}

/// A tensor's values on the host, as f32 in row-major order.
///
/// # Errors
/// [`Error::Other`] when the backend cannot give the data back (a device error).
pub fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Other(format!("reading a tensor back from the device: {e:?}")))
}

/// An integer tensor's values on the host, as i64 in row-major order.
///
/// # Errors
/// As [`read_f32`].
pub fn read_i64<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| Error::Other(format!("reading a tensor back from the device: {e:?}")))
}

/// The one value of a one-element tensor (a loss).
///
/// # Errors
/// As [`read_f32`], or an empty tensor.
pub fn read_scalar(t: Tensor<1>) -> Result<f64> {
    read_f32(t)?
        .first()
        .map(|v| f64::from(*v))
        .ok_or_else(|| Error::Other("reading a scalar: the tensor is empty".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_a_missing_backend_names_its_feature() {
        for d in DeviceChoice::ALL {
            assert_eq!(d.name().parse::<DeviceChoice>(), Ok(d));
        }
        assert!(DeviceChoice::Cpu.device().is_ok());
        if !cfg!(feature = "cuda") {
            let err = DeviceChoice::Cuda.device().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().contains("tpu"));
    }
}
