//! The engine that runs forward-only work, and the one rule that picks it.
//!
//! An [`Engine`] takes `[N, 3, S, S]` f32 RGB images, normalised by the model's eval preset, and
//! gives one row per image: logits (or regression outputs), pooled backbone features, or the
//! activations at a cut of the backbone, depending on the graph it was opened with. It runs on
//! ONNX Runtime (the graph exported by [`crate::export::onnx`] and cached by
//! [`super::ort::open_cached`]) or on burn (the same [`Net`] the exporter reads); both give the
//! same rows within 1e-4 (tested).
//!
//! **The failure policy**, the same for every caller (`predict`, `eval`, `live`, the studio,
//! frozen and partial training's forward passes, the instant embedder, `quantize`):
//!
//! - [`EngineChoice::Burn`]: burn; ONNX Runtime is never touched.
//! - [`EngineChoice::Ort`]: ONNX Runtime. A library that does not load, or a graph it refuses,
//!   is the error of [`Engine::open`], before any work.
//! - [`EngineChoice::Auto`]: ONNX Runtime when both load; otherwise burn, and the reason is said
//!   once per process on stderr.
//! - Once open, the engine does not change: a failure while running is the `Err` of
//!   [`Engine::run`], never a panic and never a silent switch to the other engine (whose
//!   numbers the caller did not ask for).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::device::read_f32;
use super::ort::{OrtModel, ort_environment};
use crate::model::Net;
use crate::model::cut::Cut;
use crate::{Error, Result};

/// The environment variable that sets the default engine (`auto`, `ort` or `burn`).
pub const ENGINE_ENV: &str = "NANOCLASS_ENGINE";

/// Which engine runs forward-only work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// ONNX Runtime when its library loads, else burn.
    #[default]
    Auto,
    /// ONNX Runtime; an error when its library cannot be loaded.
    Ort,
    /// burn (pure Rust).
    Burn,
}

impl EngineChoice {
    /// `auto`, `ort` or `burn`.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Ort => "ort",
            EngineChoice::Burn => "burn",
        }
    }

    /// Parses `auto`, `ort` (or `onnxruntime`) or `burn`, in any case.
    pub fn parse(s: &str) -> Option<EngineChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(EngineChoice::Auto),
            "ort" | "onnxruntime" => Some(EngineChoice::Ort),
            "burn" => Some(EngineChoice::Burn),
            _ => None,
        }
    }

    /// `$NANOCLASS_ENGINE` when set to a known name, else [`EngineChoice::Auto`].
    pub fn from_env() -> EngineChoice {
        std::env::var(ENGINE_ENV)
            .ok()
            .and_then(|v| EngineChoice::parse(&v))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        EngineChoice::parse(s).ok_or_else(|| format!("unknown engine {s:?}: auto, ort or burn"))
    }
}

/// Says once per process, on stderr, that ONNX Runtime is not available and burn runs instead.
fn warn_fallback(reason: &str) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("nanoclass: ONNX Runtime not available ({reason}); running on burn");
    }
}

/// The one rule (see the module docs): `open` builds the ONNX Runtime model and is called only
/// when the choice and the library allow it. `Ok(None)` means burn.
///
/// # Errors
/// Only with [`EngineChoice::Ort`]: ONNX Runtime is not available, or `open` failed.
pub fn resolve<T>(choice: EngineChoice, open: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    match choice {
        EngineChoice::Burn => Ok(None),
        EngineChoice::Ort => {
            ort_environment().map_err(Error::Other)?;
            open().map(Some)
        }
        EngineChoice::Auto => match ort_environment() {
            Err(reason) => {
                warn_fallback(&reason);
                Ok(None)
            }
            Ok(_) => match open() {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    warn_fallback(&e.to_string());
                    Ok(None)
                }
            },
        },
    }
}

/// What a burn network computes when it serves as an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    /// [`Net::forward`]: logits, or a regression head's outputs, `[N, outputs]`.
    Outputs,
    /// [`Net::features`]: what the head reads, `[N, C]` (pooled features, or a point head's
    /// flattened stride-8 map).
    Features,
    /// [`Net::forward_until`]: the frozen body up to a cut, `[N, C, h, w]` flattened to
    /// `[N, C * h * w]` (partial fine-tuning's activations).
    Prefix(Cut),
}

/// Rows computed by an [`Engine`]: `n` rows of `width` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// The values, `[n, width]` flattened.
    pub data: Vec<f32>,
    /// Values per row.
    pub width: usize,
}

impl Rows {
    /// The rows, one `Vec` each.
    pub fn into_rows(self) -> Vec<Vec<f32>> {
        self.data
            .chunks(self.width.max(1))
            .map(<[f32]>::to_vec)
            .collect()
    }
}

enum Kind {
    Ort(OrtModel),
    Burn {
        net: Box<Net>,
        device: Device,
        graph: Graph,
    },
}

/// A forward-only model on ONNX Runtime or burn (see the module docs).
pub struct Engine {
    kind: Kind,
    size: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("engine", &self.name())
            .field("size", &self.size)
            .field("onnx", &self.onnx_path())
            .finish()
    }
}

impl Engine {
    /// Opens the engine `choice` asks for, by [`resolve`]: `ort` builds the ONNX Runtime model;
    /// burn runs `graph` of `net` (put in eval mode here) on `device`. Inputs are
    /// `[N, 3, size, size]`.
    ///
    /// # Errors
    /// Those of [`resolve`].
    pub fn open(
        choice: EngineChoice,
        net: Net,
        graph: Graph,
        device: &Device,
        size: usize,
        ort: impl FnOnce(&Net) -> Result<OrtModel>,
    ) -> Result<Engine> {
        let net = net.valid();
        match resolve(choice, || ort(&net))? {
            Some(m) => Ok(Engine::on_ort(m, size)),
            None => Ok(Engine::on_burn(net, graph, device, size)),
        }
    }

    /// `graph` of `net` on burn (eval mode).
    pub fn on_burn(net: Net, graph: Graph, device: &Device, size: usize) -> Engine {
        Engine {
            kind: Kind::Burn {
                net: Box::new(net.valid()),
                device: device.clone(),
                graph,
            },
            size,
        }
    }

    /// An ONNX model already open in ONNX Runtime.
    pub fn on_ort(model: OrtModel, size: usize) -> Engine {
        Engine {
            kind: Kind::Ort(model),
            size,
        }
    }

    /// `ort` or `burn`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Ort(_) => "ort",
            Kind::Burn { .. } => "burn",
        }
    }

    /// The ONNX file served, on ONNX Runtime.
    pub fn onnx_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Ort(m) => Some(m.path()),
            Kind::Burn { .. } => None,
        }
    }

    /// The input side `S` of `[N, 3, S, S]`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `n` images: `pixels` is `[n, 3, S, S]` flattened.
    ///
    /// # Errors
    /// [`Error::Other`] when `pixels` does not hold `n` images of the engine's size, or the
    /// engine fails (ONNX Runtime refuses the input or runs out of memory; burn's outputs cannot
    /// be read back).
    pub fn run(&self, pixels: Vec<f32>, n: usize) -> Result<Rows> {
        let s = self.size;
        if pixels.len() != n * 3 * s * s {
            return Err(Error::Other(format!(
                "the engine takes [{n}, 3, {s}, {s}] = {} values, got {}",
                n * 3 * s * s,
                pixels.len()
            )));
        }
        if n == 0 {
            return Ok(Rows {
                data: Vec::new(),
                width: 0,
            });
        }
        match &self.kind {
            Kind::Ort(m) => {
                let (data, width) = m.run(pixels, n, s)?;
                Ok(Rows { data, width })
            }
            Kind::Burn { net, device, graph } => {
                let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, s, s]), device);
                let y = match graph {
                    Graph::Outputs => net.forward(x),
                    Graph::Features => net.features(x),
                    Graph::Prefix(cut) => net.forward_until(*cut, x).flatten::<2>(1, 3),
                };
                let width = y.dims()[1];
                Ok(Rows {
                    data: read_f32(y)?,
                    width,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;

    #[test]
    fn engine_names_round_trip_and_unknown_ones_are_refused() {
        for e in [EngineChoice::Auto, EngineChoice::Ort, EngineChoice::Burn] {
            assert_eq!(EngineChoice::parse(e.name()), Some(e));
            assert_eq!(e.to_string().parse::<EngineChoice>(), Ok(e));
        }
        assert_eq!(EngineChoice::parse(" ORT "), Some(EngineChoice::Ort));
        let err = "tensorrt".parse::<EngineChoice>().unwrap_err();
        assert!(
            err.contains("tensorrt") && err.contains("auto, ort or burn"),
            "{err}"
        );
    }

    #[test]
    fn one_rule_picks_the_engine() {
        let failing = || -> Result<u8> { Err(Error::Other("export failed".into())) };
        // burn never opens ONNX Runtime
        let r = resolve(EngineChoice::Burn, || -> Result<u8> { panic!("opened") });
        assert!(matches!(r, Ok(None)));
        // auto falls back, whatever failed (the library or the model)
        assert!(matches!(resolve(EngineChoice::Auto, failing), Ok(None)));
        // asked for by name, any failure is the error
        assert!(resolve(EngineChoice::Ort, failing).is_err());
        if ort_environment().is_ok() {
            assert!(matches!(
                resolve(EngineChoice::Auto, || Ok(7u8)),
                Ok(Some(7))
            ));
            assert!(matches!(
                resolve(EngineChoice::Ort, || Ok(7u8)),
                Ok(Some(7))
            ));
        }
    }

    #[test]
    fn a_wrong_input_is_an_error_not_a_panic() {
        let device = super::super::device::default_device();
        let net = Net::new(Arch::EfficientnetLite0, 3, &device);
        let engine = Engine::on_burn(net, Graph::Outputs, &device, 32);
        let err = engine.run(vec![0.0; 10], 1).unwrap_err().to_string();
        assert!(err.contains("[1, 3, 32, 32]"), "{err}");
        let rows = engine.run(vec![0.1; 2 * 3 * 32 * 32], 2).unwrap();
        assert_eq!((rows.width, rows.data.len()), (3, 6));
        assert_eq!(engine.name(), "burn");
        assert!(engine.onnx_path().is_none());
    }
}
