//! A Triton Inference Server model repository for an exported ONNX model:
//!
//! ```text
//! REPO/NAME/config.pbtxt     the model configuration (below)
//! REPO/NAME/labels.txt       one label a line, index = output index
//! REPO/NAME/1/model.onnx     version 1: the ONNX export (symbolic batch)
//! REPO/NAME/golden/          the parity kit (see super::golden)
//! ```
//!
//! The configuration follows Triton's `ModelConfig` (model_config.proto of
//! triton-inference-server/common): `platform: "onnxruntime_onnx"`, `max_batch_size`, input
//! `input_0` and output `output_0` with their dims *without* the batch dimension (Triton adds
//! it when `max_batch_size > 0`), `label_filename` on a classification output (Triton's
//! classification extension then answers with labels), `dynamic_batching`, and one
//! `instance_group` on the GPU or the CPU.

use super::pbtxt::{Message, Value};
use crate::{Error, Result};

/// The version folder the model is written to.
pub const VERSION: &str = "1";
/// The model file name Triton's ONNX Runtime backend looks for.
pub const MODEL_FILE: &str = "model.onnx";
/// The configuration file name.
pub const CONFIG_FILE: &str = "config.pbtxt";
/// The default `max_batch_size`.
pub const DEFAULT_MAX_BATCH: u32 = 8;

/// Where Triton runs the model's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceKind {
    /// `KIND_GPU`.
    Gpu,
    /// `KIND_CPU`.
    Cpu,
}

impl InstanceKind {
    /// The `ModelInstanceGroup.Kind` enum value.
    pub fn name(self) -> &'static str {
        match self {
            InstanceKind::Gpu => "KIND_GPU",
            InstanceKind::Cpu => "KIND_CPU",
        }
    }
}

/// What the repository's configuration describes.
#[derive(Debug, Clone, PartialEq)]
pub struct TritonConfig {
    /// The model name: the repository folder's name.
    pub name: String,
    /// `max_batch_size`, at least 1.
    pub max_batch: u32,
    /// Instance kind.
    pub kind: InstanceKind,
    /// Input side `S` (input dims `[3, S, S]`).
    pub input_size: u32,
    /// Output width `K` (output dims `[K]`).
    pub outputs: usize,
    /// `label_filename: "labels.txt"` on the output (classification only).
    pub labels: bool,
}

/// Checks a model name: 1 to 128 characters of `A-Z a-z 0-9 _ - .`, not starting with a dot,
/// so that it is one folder name on every file system.
///
/// # Errors
/// The name breaks that rule (the message says which character).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::Other(format!(
            "model name `{name}`: 1 to 128 characters, got {}",
            name.len()
        )));
    }
    if name.starts_with('.') {
        return Err(Error::Other(format!(
            "model name `{name}` starts with a dot"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(Error::Other(format!(
            "model name `{name}`: `{c}` is not allowed (use letters, digits, _ - .)"
        )));
    }
    Ok(())
}

/// A model name from any text (a run folder's name): every other character becomes `_`.
pub fn sanitize_name(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if s.is_empty() { "model".into() } else { s }
}

impl TritonConfig {
    /// The `config.pbtxt` text.
    ///
    /// # Errors
    /// The name is not a valid model name ([`check_name`]) or `max_batch` is 0.
    pub fn to_pbtxt(&self) -> Result<String> {
        check_name(&self.name)?;
        if self.max_batch == 0 {
            return Err(Error::Other(
                "--max-batch must be at least 1: the ONNX model's batch dimension is symbolic"
                    .into(),
            ));
        }
        let s = self.input_size as i64;
        let input = Message::new()
            .str("name", super::onnx::INPUT_NAME)
            .enumv("data_type", "TYPE_FP32")
            .enumv("format", "FORMAT_NCHW")
            .field("dims", Value::Ints(vec![3, s, s]));
        let mut output = Message::new()
            .str("name", super::onnx::OUTPUT_NAME)
            .enumv("data_type", "TYPE_FP32")
            .field("dims", Value::Ints(vec![self.outputs as i64]));
        if self.labels {
            output = output.str("label_filename", crate::run::files::LABELS);
        }
        let config = Message::new()
            .str("name", &self.name)
            .str("platform", "onnxruntime_onnx")
            .int("max_batch_size", self.max_batch as i64)
            .field("input", Value::Msgs(vec![input]))
            .field("output", Value::Msgs(vec![output]))
            .field("dynamic_batching", Value::Msg(Message::new()))
            .field(
                "instance_group",
                Value::Msgs(vec![
                    Message::new()
                        .int("count", 1)
                        .enumv("kind", self.kind.name()),
                ]),
            );
        Ok(config.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_sanitized() {
        assert!(check_name("ants_bees-1.0").is_ok());
        let e = check_name("a/b").unwrap_err().to_string();
        assert!(e.contains("`/` is not allowed"), "{e}");
        assert!(check_name(".hidden").is_err());
        assert!(check_name("").is_err());
        assert_eq!(sanitize_name("run 1/é"), "run_1__");
        assert_eq!(check_name(&sanitize_name("run 1/é")).ok(), Some(()));
    }

    #[test]
    fn a_regression_config_has_no_label_file_and_zero_batch_is_refused() {
        let mut c = TritonConfig {
            name: "pts".into(),
            max_batch: 4,
            kind: InstanceKind::Cpu,
            input_size: 224,
            outputs: 6,
            labels: false,
        };
        let text = c.to_pbtxt().unwrap();
        assert!(!text.contains("label_filename"), "{text}");
        assert!(text.contains("dims: [ 6 ]") && text.contains("kind: KIND_CPU"));
        c.max_batch = 0;
        assert!(c.to_pbtxt().unwrap_err().to_string().contains("at least 1"));
    }
}
