//! The ONNX graph of a [`Net`], written by nanoclass from the model's own modules.
//!
//! The protobuf messages are the prost-generated ONNX types of the `tract-onnx` crate
//! ([`tract_onnx::pb`], generated from the official `onnx.proto`), encoded with `prost`.
//!
//! # The graph
//!
//! - Input `input_0`: `[batch, 3, S, S]` f32, `batch` a symbolic dimension, `S` the run's eval
//!   crop (224). RGB, normalised like the run's eval preset (see [`super::metadata`]).
//! - Every convolution is followed by its BatchNorm in eval mode; the two are folded into one
//!   `Conv` (`w' = w * gamma / sqrt(var + eps)` per output channel,
//!   `b' = (b - mean) * gamma / sqrt(var + eps) + beta`, computed in f64, stored as f32).
//! - ReLU is `Relu`; EfficientNet's ReLU6 is `Clip(0, 6)`; residual sums are `Add`;
//!   ResNet's stem pool is `MaxPool` 3x3 / 2, pads 1.
//! - Global average pooling is `GlobalAveragePool` + `Flatten(axis 1)`, the head a `Gemm`
//!   with the weight in PyTorch layout `[K, C]` (`transB = 1`).
//! - Output `output_0`: `[batch, K]`, the logits, or with `softmax` a `Softmax(axis 1)` of them.
//! - A regression model (point head, [`crate::model::point`]) stops at the stride-8 map and
//!   ends in `Conv` 3x3 + `Relu`, then a heatmap `Conv` 1x1 with `Softmax` over the cells and
//!   an offset `Conv` 1x1 with `Mul`, `Add` (cell centres), `Mul`, `ReduceSum` and
//!   `Reshape` to `output_0` `[batch, 2K]`: `(x, y)` per category, normalised to `[-1, 1]`.
//!
//! # Padding is for the export's input size
//!
//! EfficientNet-Lite0 uses TensorFlow "SAME" padding, which depends on the input size: for a
//! stride-2 3x3 convolution on an even size it is (top 0, bottom 1), not PyTorch's (1, 1). burn
//! computes it at every forward call (`PaddingConfig2d::Same`, burn-nn `padding.rs`
//! `calculate_same_padding`): `out = ceil(in / stride)`,
//! `total = max((out - 1) * stride + kernel - in, 0)`, `begin = total / 2`,
//! `end = total - begin`. The export computes the same pads for the spatial size each
//! convolution sees when the input is `S x S`, and writes them as explicit `pads`. The exported
//! graph therefore declares `S x S` as its input size and is exact only for that size (the
//! ResNets' explicit pads do not depend on it, but the declared input shape does).

mod graph;
mod layers;

pub use graph::*;
use layers::*;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::prelude::*;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};

use crate::model::cut::Cut;
use crate::model::efficientnet::EfficientNetLite;
use crate::model::point::{self, PointHead};
use crate::model::resnet::ResNet;
use crate::model::{Net, point_side};
use crate::{Error, Result};

/// Name of the graph input (what jetson-inference's `imagenet` binds by default).
pub const INPUT_NAME: &str = "input_0";
/// Name of the graph output (what jetson-inference's `imagenet` reads by default).
pub const OUTPUT_NAME: &str = "output_0";
/// Name of the symbolic batch dimension of the input and the output.
pub const BATCH_DIM: &str = "batch";
/// Opset declared when none is asked for.
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets the emitted graph is valid for. 13 is the first with `Softmax` over one axis,
/// `Clip` taking its bounds as inputs and `ReduceSum` taking its axes as an input (all as
/// emitted here); none of the emitted operators (Conv, Relu, Clip, Add, MaxPool,
/// GlobalAveragePool, Flatten, Gemm, Softmax, Reshape, Mul, ReduceSum) changes meaning up
/// to 21, the newest opset both test runtimes (tract, onnxruntime) are checked against.
pub const OPSETS: RangeInclusive<i64> = 13..=21;

/// Checks an opset against [`OPSETS`].
///
/// # Errors
/// [`Error::Other`] naming the value and the supported range.
pub fn check_opset(opset: i64) -> Result<i64> {
    if OPSETS.contains(&opset) {
        Ok(opset)
    } else {
        Err(Error::Other(format!(
            "--opset {opset} is not supported: the exported graph is valid for opsets {} to {}",
            OPSETS.start(),
            OPSETS.end()
        )))
    }
}

/// The ONNX IR version that goes with an opset (the ONNX release that introduced the opset:
/// opset 13-14 -> IR 7 (ONNX 1.8-1.9), 15-18 -> IR 8 (1.10-1.13), 19-20 -> IR 9 (1.14-1.15),
/// 21 -> IR 10 (1.16); source: onnx `docs/Versioning.md`). Runtimes refuse an IR version newer
/// than they know, so the lowest one that has the opset is declared.
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Serialises a model to the bytes of an `.onnx` file.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Builds the ONNX model of `net` for `size x size` inputs (see the module docs).
///
/// `metadata` becomes the model's `metadata_props`, in key order.
///
/// # Errors
/// A tensor of the model holds NaN or infinity (it names the tensor), or `opset` is outside
/// [`OPSETS`].
pub fn model_proto(
    net: &Net,
    size: usize,
    softmax: bool,
    opset: i64,
    metadata: &BTreeMap<String, String>,
) -> Result<pb::ModelProto> {
    build(net, size, Some(softmax), opset, metadata)
}

/// The backbone alone: [`INPUT_NAME`] `[batch, 3, size, size]` to [`OUTPUT_NAME`]
/// `[batch, C]`, the pooled features the head reads (what frozen training caches).
///
/// # Errors
/// Those of [`model_proto`].
pub fn features_proto(
    net: &Net,
    size: usize,
    opset: i64,
    metadata: &BTreeMap<String, String>,
) -> Result<pb::ModelProto> {
    build(net, size, None, opset, metadata)
}

/// `head`: Some(softmax) for the whole model, None for the backbone's features.
fn build(
    net: &Net,
    size: usize,
    head: Option<bool>,
    opset: i64,
    metadata: &BTreeMap<String, String>,
) -> Result<pb::ModelProto> {
    check_opset(opset)?;
    let mut g = Graph::default();
    let tap = net.point_head().is_some();
    let (features, arch) = match net {
        Net::ResNet(m) => {
            let stop = if tap {
                Stop::Before(m.layer1.len() + m.layer2.len())
            } else {
                Stop::Pooled
            };
            (resnet(&mut g, m, size, stop)?, "resnet")
        }
        Net::EfficientNetLite(m) => {
            let stop = if tap {
                Stop::Before(EfficientNetLite::TAP_BLOCKS)
            } else {
                Stop::Pooled
            };
            (efficientnet(&mut g, m, size, stop)?, "efficientnet_lite")
        }
    };
    let softmax = head == Some(true);
    let side = point_side(size);
    let k = match (head, net.point_head()) {
        (Some(_), Some(p)) => point_head(&mut g, p, &features, side, OUTPUT_NAME)?,
        (None, Some(p)) => {
            g.node(
                "Flatten",
                "map.flatten",
                &[&features],
                OUTPUT_NAME,
                vec![attr_int("axis", 1)],
            );
            p.channels() * side * side
        }
        (Some(_), None) => {
            let logits_name = if softmax { "logits" } else { OUTPUT_NAME };
            let logits = g.gemm(head_name(net), &features, net.head(), logits_name)?;
            if softmax {
                g.node(
                    "Softmax",
                    "softmax",
                    &[&logits],
                    OUTPUT_NAME,
                    vec![attr_int("axis", 1)],
                );
            }
            net.num_outputs()
        }
        (None, None) => {
            g.node("Identity", "features", &[&features], OUTPUT_NAME, vec![]);
            net.head().weight.val().dims()[0]
        }
    };
    let doc = format!(
        "{INPUT_NAME}: [batch, 3, {size}, {size}] f32 RGB, normalised; {OUTPUT_NAME}: [batch, {k}] {}",
        match head {
            Some(_) if tap => "points (x, y) per category, normalised to [-1, 1]",
            Some(true) => "probabilities",
            Some(false) => "raw outputs",
            None if tap => "the point head's stride-8 map, flattened",
            None => "pooled backbone features",
        }
    );
    let output = [Dim::Batch, Dim::Fixed(k as i64)];
    Ok(model(g, arch, size, &output, doc, opset, metadata))
}

/// The frozen body of partial fine-tuning ([`Net::forward_until`]): [`INPUT_NAME`]
/// `[batch, 3, size, size]` to [`OUTPUT_NAME`] `[batch, C, h, w]`, the input of the first
/// trained block ([`Net::activation_shape`]), with every BatchNorm in eval mode.
///
/// # Errors
/// The cut does not fit the model ([`crate::model::cut::CutError`]), or those of
/// [`model_proto`].
pub fn prefix_proto(
    net: &Net,
    cut: Cut,
    size: usize,
    opset: i64,
    metadata: &BTreeMap<String, String>,
) -> Result<pb::ModelProto> {
    check_opset(opset)?;
    net.check_cut(cut)?;
    let stop = Stop::Before(net.block_count() - cut.blocks);
    let mut g = Graph::default();
    let (map, arch) = match net {
        Net::ResNet(m) => (resnet(&mut g, m, size, stop)?, "resnet"),
        Net::EfficientNetLite(m) => (efficientnet(&mut g, m, size, stop)?, "efficientnet_lite"),
    };
    g.node("Identity", "activation", &[&map], OUTPUT_NAME, vec![]);
    let [c, h, w] = net.activation_shape(cut, size);
    let doc = format!(
        "{INPUT_NAME}: [batch, 3, {size}, {size}] f32 RGB, normalised; {OUTPUT_NAME}: \
         [batch, {c}, {h}, {w}] the input of the first of the last {} blocks",
        cut.blocks
    );
    let output = [
        Dim::Batch,
        Dim::Fixed(c as i64),
        Dim::Fixed(h as i64),
        Dim::Fixed(w as i64),
    ];
    Ok(model(g, arch, size, &output, doc, opset, metadata))
}

/// The model around a finished graph: input [`INPUT_NAME`] `[batch, 3, size, size]`, output
/// [`OUTPUT_NAME`] of shape `output`.
fn model(
    g: Graph,
    arch: &str,
    size: usize,
    output: &[Dim],
    doc: String,
    opset: i64,
    metadata: &BTreeMap<String, String>,
) -> pb::ModelProto {
    let graph = pb::GraphProto {
        node: g.nodes,
        name: format!("nanoclass_{arch}"),
        initializer: g.initializers,
        input: vec![value_info(
            INPUT_NAME,
            &[
                Dim::Batch,
                Dim::Fixed(3),
                Dim::Fixed(size as i64),
                Dim::Fixed(size as i64),
            ],
        )],
        output: vec![value_info(OUTPUT_NAME, output)],
        doc_string: doc,
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: ir_version(opset),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "nanoclass".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: "Exported by nanoclass; see metadata_props for labels and preprocessing."
            .into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;

    #[test]
    fn same_padding_matches_tensorflow_for_the_lite0_stages_at_224() {
        // Stride-2 3x3 on 224: out 112, total (111 * 2 + 3) - 224 = 1 -> (0, 1), asymmetric.
        assert_eq!(same_padding(3, 2, 224), (0, 1));
        // Stride-2 5x5 on 56: out 28, total 54 + 5 - 56 = 3 -> (1, 2).
        assert_eq!(same_padding(5, 2, 56), (1, 2));
        // Stride-1 keeps the size: k - 1 split evenly.
        assert_eq!(same_padding(5, 1, 14), (2, 2));
        assert_eq!(same_padding(1, 1, 7), (0, 0));
        // Odd size, stride 2, 3x3: out 3, total 4 + 3 - 5 = 2 -> (1, 1).
        assert_eq!(same_padding(3, 2, 5), (1, 1));
    }

    #[test]
    fn explicit_pads_give_burns_output_size() {
        // The pads and sizes the graph declares must equal what burn computes for the same
        // convolution; checked on the shapes burn produces.
        let device = Device::flex();
        for (k, s, size) in [(3, 2, 224), (5, 2, 28), (3, 1, 7), (5, 2, 15), (1, 1, 9)] {
            let conv = Conv2dConfig::new([1, 1], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Same)
                .init(&device);
            let y = conv.forward(Tensor::<4>::zeros([1, 1, size, size], &device));
            let p = pads(&conv.padding, conv.kernel_size, conv.stride, [size, size]);
            let out = out_size(size, p[0], p[2], k, s, 1);
            assert_eq!(y.dims()[2], out, "k {k} s {s} size {size}");
        }
    }

    #[test]
    fn opsets_outside_the_range_are_refused_with_the_range() {
        assert_eq!(check_opset(17).ok(), Some(17));
        assert_eq!(check_opset(13).ok(), Some(13));
        let err = check_opset(12)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("12") && err.contains("13 to 21"), "{err}");
        assert!(check_opset(22).is_err());
        assert_eq!(ir_version(13), 7);
        assert_eq!(ir_version(17), 8);
        assert_eq!(ir_version(21), 10);
    }
}
