//! A DeepStream `nvinfer` configuration for an exported classification model.
//!
//! `nvinfer` normalises each pixel `x` (0..=255, after scaling the frame or object to the
//! network's `S x S`) as `y = net-scale-factor * (x - offsets[c])`: one scale, per-channel
//! offsets (DeepStream's Gst-nvinfer documentation). nanoclass's eval preset is
//! `(x / 255 - mean[c]) / std[c]` ([`crate::data::presets::Normalization`]).
//!
//! - When the three `std` are equal (EfficientNet-Lite0: mean `127/255`, std `128/255`, i.e.
//!   `(x - 127) / 128`), `net-scale-factor = 1 / (255 std)` and `offsets = 255 mean` map it
//!   exactly.
//! - Otherwise (ImageNet mean/std for ResNet), `net-scale-factor = 1/255` and
//!   `offsets = 255 mean` give `y = std[c] * x_norm`, and the per-channel `1 / std[c]` is
//!   folded into the input channels of the graph's first convolution ([`fold_input_scale`]).
//!   That convolution pads with zeros, and zero is zero in both spaces, so the folded graph on
//!   `y` computes what the unfolded one computes on `x_norm`.
//!
//! `nvinfer` scales the whole frame (or object box) to `S x S`; nanoclass's eval preset first
//! resizes the shorter side and takes the centre square. The two see the same pixels when the
//! frame given to `nvinfer` is already that centre square (e.g. square camera frames, or a
//! `nvvideoconvert` crop).

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use crate::data::presets::Normalization;
use crate::{Error, Result};

/// The configuration file name, beside the ONNX model.
pub const CONFIG_FILE: &str = "config_infer_primary.txt";
/// The label file of the configuration: a classifier's labels on one line, `;`-separated
/// (the form nvinfer's classifier label parser reads).
pub const LABEL_FILE: &str = "labels_deepstream.txt";

/// How `nvinfer` must normalise for a model exported with [`Normalization`] `norm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepStreamInput {
    /// `net-scale-factor`.
    pub scale: f32,
    /// `offsets` (R, G, B), in pixel units 0..=255.
    pub offsets: [f32; 3],
    /// Per-channel factors to fold into the first convolution's input channels, or `None`
    /// when the scale alone is exact.
    pub fold: Option<[f32; 3]>,
}

impl DeepStreamInput {
    /// The mapping for `norm` (see the module docs).
    pub fn for_norm(norm: &Normalization) -> Self {
        let offsets = norm.mean.map(|m| 255.0 * m);
        let [a, b, c] = norm.std;
        if a == b && b == c {
            DeepStreamInput {
                scale: 1.0 / (255.0 * a),
                offsets,
                fold: None,
            }
        } else {
            DeepStreamInput {
                scale: 1.0 / 255.0,
                offsets,
                fold: Some(norm.std.map(|s| 1.0 / s)),
            }
        }
    }

    /// The network input `nvinfer` computes from a `S x S` RGB image: `[3, S, S]` CHW,
    /// `y = scale * (x - offsets[c])`.
    pub fn apply(&self, img: &image::RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let mut out = vec![0.0; 3 * (w * h) as usize];
        let plane = (w * h) as usize;
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = self.scale * (p.0[c] as f32 - self.offsets[c]);
            }
        }
        out
    }
}

/// Multiplies input channel `c` of the weights of the first convolution (the node reading
/// `input`) by `factors[c]`.
///
/// # Errors
/// The node reading `input` is not a `Conv` whose weight is an f32 initializer of shape
/// `[O, 3, kh, kw]` stored as raw data.
pub fn fold_input_scale(model: &mut pb::ModelProto, input: &str, factors: [f32; 3]) -> Result<()> {
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::Other("the ONNX model has no graph".into()))?;
    let node = graph
        .node
        .iter()
        .find(|n| n.input.iter().any(|i| i == input))
        .ok_or_else(|| Error::Other(format!("no node reads `{input}`")))?;
    if node.op_type != "Conv" || node.input.len() < 2 {
        return Err(Error::Other(format!(
            "the first node `{}` is a {}, not a convolution: the input scale cannot be folded",
            node.name, node.op_type
        )));
    }
    let weight = node.input[1].clone();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == weight)
        .ok_or_else(|| Error::Other(format!("no initializer `{weight}`")))?;
    let dims = &t.dims;
    if t.data_type != DataType::Float as i32 || dims.len() != 4 || dims[1] != 3 {
        return Err(Error::Other(format!(
            "`{weight}` is not an f32 [O, 3, kh, kw] weight (dims {dims:?})"
        )));
    }
    let per_channel = (dims[2] * dims[3]) as usize;
    let count = dims.iter().product::<i64>() as usize;
    if t.raw_data.len() != 4 * count {
        return Err(Error::Other(format!(
            "`{weight}`: {} bytes of raw data for {count} values",
            t.raw_data.len()
        )));
    }
    for (i, chunk) in t.raw_data.chunks_exact_mut(4).enumerate() {
        let c = (i / per_channel) % 3;
        let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) * factors[c];
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// The `;`-separated label line of [`LABEL_FILE`].
///
/// # Errors
/// A label holds `;` or a line break, which the line form cannot carry.
pub fn label_line(labels: &[String]) -> Result<String> {
    if let Some(l) = labels.iter().find(|l| l.contains([';', '\n', '\r'])) {
        return Err(Error::Other(format!(
            "label `{l}` holds `;` or a line break, which DeepStream's classifier label file \
             cannot carry; rename that class folder"
        )));
    }
    Ok(labels.join(";") + "\n")
}

/// The `[property]` section of an `nvinfer` configuration for the ONNX file `onnx_file` and
/// label file `label_file` (both relative to the configuration), input side `size`.
pub fn config_text(
    input: &DeepStreamInput,
    onnx_file: &str,
    label_file: &str,
    size: u32,
    threshold: f32,
) -> String {
    let offsets: Vec<String> = input.offsets.iter().map(|o| format!("{o}")).collect();
    let mut s = String::new();
    s.push_str("# nvinfer configuration written by nanoclass\n");
    s.push_str("# The network input is y = net-scale-factor * (pixel - offsets), RGB,\n");
    s.push_str(&format!(
        "# on the frame scaled to {size}x{size}; nanoclass's eval preset sees the centre\n"
    ));
    s.push_str("# square of the frame, so give nvinfer that square for identical inputs.\n");
    if input.fold.is_some() {
        s.push_str("# The per-channel 1/std is folded into the model's first convolution.\n");
    }
    s.push_str("[property]\n");
    s.push_str("gpu-id=0\n");
    s.push_str(&format!("net-scale-factor={}\n", input.scale));
    s.push_str(&format!("offsets={}\n", offsets.join(";")));
    s.push_str("model-color-format=0\n");
    s.push_str(&format!("onnx-file={onnx_file}\n"));
    s.push_str(&format!("labelfile-path={label_file}\n"));
    s.push_str(&format!("infer-dims=3;{size};{size}\n"));
    s.push_str("batch-size=1\n");
    s.push_str("network-mode=0\n");
    s.push_str("network-type=1\n");
    s.push_str("is-classifier=1\n");
    s.push_str("process-mode=1\n");
    s.push_str(&format!("output-blob-names={}\n", super::onnx::OUTPUT_NAME));
    s.push_str(&format!("classifier-threshold={threshold}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_maps_with_the_scale_alone_and_imagenet_needs_a_fold() {
        let lite = DeepStreamInput::for_norm(&Normalization::EFFICIENTNET_LITE);
        assert_eq!(lite.scale, 0.0078125);
        assert_eq!(lite.offsets, [127.0; 3]);
        assert_eq!(lite.fold, None);
        let imagenet = DeepStreamInput::for_norm(&Normalization::IMAGENET);
        assert_eq!(imagenet.scale, 1.0 / 255.0);
        assert!((imagenet.offsets[0] - 123.675).abs() < 1e-4);
        let f = imagenet.fold.unwrap();
        assert!((f[2] - 1.0 / 0.225).abs() < 1e-6);
    }

    #[test]
    fn labels_with_a_semicolon_are_refused() {
        let ok = label_line(&["ants".into(), "red apple".into()]).unwrap();
        assert_eq!(ok, "ants;red apple\n");
        let e = label_line(&["a;b".into()]).unwrap_err().to_string();
        assert!(e.contains("`a;b`"), "{e}");
    }

    #[test]
    fn the_config_names_every_key_nvinfer_needs() {
        let input = DeepStreamInput::for_norm(&Normalization::EFFICIENTNET_LITE);
        let text = config_text(&input, "model.onnx", LABEL_FILE, 224, 0.2);
        for line in [
            "net-scale-factor=0.0078125",
            "offsets=127;127;127",
            "onnx-file=model.onnx",
            "labelfile-path=labels_deepstream.txt",
            "infer-dims=3;224;224",
            "network-type=1",
            "model-color-format=0",
            "classifier-threshold=0.2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
