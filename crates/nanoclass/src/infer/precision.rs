//! Which model file the ONNX Runtime engine serves: fp32 (the run's export) or the int8 model
//! `nanoclass quantize` kept ([`super::quantize`]), and the record that says which.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::registry::sha256_file;
use crate::run::Run;

/// The int8 model in a run directory.
pub const INT8_MODEL: &str = "model.int8.onnx";
/// The quantization record in a run directory.
pub const RECORD: &str = "quantize.json";
/// Which model file the ONNX Runtime engine serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// int8 when `nanoclass quantize` kept one for the current model, else fp32.
    #[default]
    Auto,
    /// Always fp32.
    Fp32,
    /// int8; an error when there is none for the current model.
    Int8,
}

impl Precision {
    /// `auto`, `fp32` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }

    /// `$NANOCLASS_PRECISION` when set to a known name, else [`Precision::Auto`].
    pub fn from_env() -> Precision {
        std::env::var("NANOCLASS_PRECISION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "fp32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision {s:?}: auto, fp32 or int8")),
        }
    }
}

/// What `nanoclass quantize` measured and decided (`RUN/quantize.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeRecord {
    /// SHA-256 of the `model.safetensors` quantized.
    pub model_sha256: String,
    /// Whether `model.int8.onnx` was kept.
    pub kept: bool,
    /// Held-out top-1 in `[0, 1]`, fp32 and int8.
    pub fp32_top1: f64,
    /// See `fp32_top1`.
    pub int8_top1: f64,
    /// `100 * (fp32_top1 - int8_top1)`, percentage points (negative: int8 is better).
    pub drop_points: f64,
    /// The largest drop that keeps the int8 model, in points.
    pub max_drop_points: f64,
    /// Held-out images scored, and where they came from.
    pub heldout_images: usize,
    /// See `heldout_images`.
    pub heldout_from: String,
    /// Training images used for calibration.
    pub calibration_images: usize,
    /// Median batch-1 model latency in ONNX Runtime, milliseconds.
    pub fp32_ms: f64,
    /// See `fp32_ms`.
    pub int8_ms: f64,
    /// `fp32_ms / int8_ms`.
    pub speedup: f64,
    /// The quantizer and its settings ([`super::quantize::QUANTIZER`]), with the onnxruntime version.
    pub quantizer: String,
    /// The calibration method chosen ([`super::quantize::CALIBRATION_METHODS`]).
    pub calibration_method: String,
    /// Its mean KL divergence from fp32's softmax on the calibration images.
    pub fidelity_kl: f64,
    /// Wall time of the whole command, seconds.
    pub seconds: f64,
}

/// The int8 model of `run` when `nanoclass quantize` kept one for its current model file.
pub fn kept_int8(run: &Run) -> Option<PathBuf> {
    let text = std::fs::read_to_string(run.dir.join(RECORD)).ok()?;
    let record: QuantizeRecord = serde_json::from_str(&text).ok()?;
    let path = run.dir.join(INT8_MODEL);
    (record.kept && path.is_file() && sha256_file(&run.model_path()).ok()? == record.model_sha256)
        .then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_round_trip() {
        for p in [Precision::Auto, Precision::Fp32, Precision::Int8] {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("int4".parse::<Precision>().unwrap_err().contains("int4"));
    }
}
