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

/// Folds an eval-mode BatchNorm into a convolution's weight and bias (see the module docs).
fn fold_bn(w: &[f32], bias: &[f32], bn: &BatchNorm, name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let out_ch = bias.len();
    let per_out = w.len() / out_ch;
    let gamma = values(bn.gamma.val(), name)?;
    let beta = values(bn.beta.val(), name)?;
    let mean = values(bn.running_mean.value(), name)?;
    let var = values(bn.running_var.value(), name)?;
    let mut wf = vec![0f32; w.len()];
    let mut bf = vec![0f32; out_ch];
    for o in 0..out_ch {
        let scale = f64::from(gamma[o]) / (f64::from(var[o]) + bn.epsilon).sqrt();
        for j in 0..per_out {
            wf[o * per_out + j] = (f64::from(w[o * per_out + j]) * scale) as f32;
        }
        bf[o] = ((f64::from(bias[o]) - f64::from(mean[o])) * scale + f64::from(beta[o])) as f32;
    }
    Ok((wf, bf))
}

/// The point head after the tap `map` (`[N, C, side, side]`, see [`crate::model::point`]):
/// `h = Relu(Conv 3x3)`; `p = Softmax(Reshape(Conv 1x1 (h), [N, K, 1, cells]), axis 3)`;
/// `pos = Reshape(Conv 1x1 (h), [N, K, 2, cells]) * reach + centres`;
/// `output = Reshape(ReduceSum(pos * p, axis 3), [N, 2K])`.
fn point_head(g: &mut Graph, p: &PointHead, map: &str, side: usize, output: &str) -> Result<usize> {
    let hw = [side, side];
    let (h, hw) = g.conv("point.conv1", map, hw, &p.conv1, None)?;
    let h = g.relu("point.relu", &h);
    let (heat, _) = g.conv("point.conv2", &h, hw, &p.conv2, None)?;
    let (off, _) = g.conv("point.offset", &h, hw, &p.offset, None)?;
    let k = p.categories();
    let cells = side * side;
    let shape = g.initializer_i64("point.heatmap_shape", &[0, k as i64, 1, cells as i64]);
    let flat = g.node(
        "Reshape",
        "point.flatten",
        &[&heat, &shape],
        "point.flatten",
        vec![],
    );
    let prob = g.node(
        "Softmax",
        "point.softmax",
        &[&flat],
        "point.softmax",
        vec![attr_int("axis", 3)],
    );
    let shape = g.initializer_i64("point.offset_shape", &[0, k as i64, 2, cells as i64]);
    let off = g.node(
        "Reshape",
        "point.offset_cells",
        &[&off, &shape],
        "point.offset_cells",
        vec![],
    );
    let reach = [2.0 / side as f32, 2.0 / side as f32];
    let reach = g.initializer("point.reach", &[1, 1, 2, 1], &reach)?;
    let off = g.node(
        "Mul",
        "point.offset_scaled",
        &[&off, &reach],
        "point.offset_scaled",
        vec![],
    );
    let (gx, gy) = point::grid(side, side);
    let centres = g.initializer("point.cell_centres", &[1, 1, 2, cells], &[gx, gy].concat())?;
    let pos = g.node(
        "Add",
        "point.positions",
        &[&off, &centres],
        "point.positions",
        vec![],
    );
    let votes = g.node("Mul", "point.votes", &[&pos, &prob], "point.votes", vec![]);
    let axes = g.initializer_i64("point.sum_axes", &[3]);
    let xy = g.node(
        "ReduceSum",
        "point.expect",
        &[&votes, &axes],
        "point.expect",
        vec![attr_int("keepdims", 0)],
    );
    let shape = g.initializer_i64("point.output_shape", &[0, 2 * k as i64]);
    g.node("Reshape", "point.output", &[&xy, &shape], output, vec![]);
    Ok(2 * k)
}

fn head_name(net: &Net) -> &'static str {
    match net {
        Net::ResNet(_) => "fc",
        Net::EfficientNetLite(_) => "_fc",
    }
}

/// Where an emitted backbone ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After the global average: `[N, C]`.
    Pooled,
    /// Before residual block `first` (forward order): its input map `[N, C, h, w]` (the point
    /// head's tap, or partial fine-tuning's cut).
    Before(usize),
}

/// torchvision ResNet: stem, max-pool, residual stages, then the global average (`[N, C]`) or
/// the map in front of a block.
fn resnet(g: &mut Graph, m: &ResNet, size: usize, stop: Stop) -> Result<String> {
    let hw = [size, size];
    let (x, hw) = g.conv_bn("conv1", INPUT_NAME, hw, &m.conv1, &m.bn1)?;
    let x = g.relu("relu", &x);
    let (mut x, mut hw) = g.maxpool("maxpool", &x, hw, &m.maxpool);
    let stages = [&m.layer1, &m.layer2, &m.layer3, &m.layer4];
    let blocks = stages.iter().enumerate().flat_map(|(si, stage)| {
        stage
            .iter()
            .enumerate()
            .map(move |(bi, b)| (format!("layer{}.{bi}", si + 1), b))
    });
    let limit = match stop {
        Stop::Before(first) => first,
        Stop::Pooled => usize::MAX,
    };
    for (p, b) in blocks.take(limit) {
        let (y, h1) = g.conv_bn(&format!("{p}.conv1"), &x, hw, &b.conv1, &b.bn1)?;
        let y = g.relu(&format!("{p}.relu1"), &y);
        let (mut y, mut h2) = g.conv_bn(&format!("{p}.conv2"), &y, h1, &b.conv2, &b.bn2)?;
        if let (Some(c3), Some(b3)) = (&b.conv3, &b.bn3) {
            let r = g.relu(&format!("{p}.relu2"), &y);
            (y, h2) = g.conv_bn(&format!("{p}.conv3"), &r, h2, c3, b3)?;
        }
        let shortcut = match &b.downsample {
            Some(ds) => {
                g.conv_bn(&format!("{p}.downsample"), &x, hw, &ds.conv, &ds.bn)?
                    .0
            }
            None => x.clone(),
        };
        let sum = g.add(&format!("{p}.add"), &y, &shortcut);
        x = g.relu(&format!("{p}.relu"), &sum);
        hw = h2;
    }
    match stop {
        Stop::Before(_) => Ok(x),
        Stop::Pooled => Ok(g.global_average("avgpool", &x)),
    }
}

/// EfficientNet-Lite: stem, MBConv blocks, head convolution, global average -> `[N, 1280]`,
/// or the map in front of a block.
fn efficientnet(g: &mut Graph, m: &EfficientNetLite, size: usize, stop: Stop) -> Result<String> {
    let (x, hw) = g.conv_bn(
        "_conv_stem",
        INPUT_NAME,
        [size, size],
        &m._conv_stem,
        &m._bn0,
    )?;
    let mut x = g.relu6("_conv_stem.relu6", &x);
    let mut hw = hw;
    let blocks = match stop {
        Stop::Before(first) => &m._blocks[..first],
        Stop::Pooled => &m._blocks[..],
    };
    for (i, b) in blocks.iter().enumerate() {
        let p = format!("_blocks.{i}");
        let (h, h_hw) = match (&b._expand_conv, &b._bn0) {
            (Some(conv), Some(bn)) => {
                let (h, h_hw) = g.conv_bn(&format!("{p}._expand_conv"), &x, hw, conv, bn)?;
                (g.relu6(&format!("{p}._expand_conv.relu6"), &h), h_hw)
            }
            _ => (x.clone(), hw),
        };
        let (h, h_hw) = g.conv_bn(
            &format!("{p}._depthwise_conv"),
            &h,
            h_hw,
            &b._depthwise_conv,
            &b._bn1,
        )?;
        let h = g.relu6(&format!("{p}._depthwise_conv.relu6"), &h);
        let (h, h_hw) = g.conv_bn(
            &format!("{p}._project_conv"),
            &h,
            h_hw,
            &b._project_conv,
            &b._bn2,
        )?;
        x = if b.residual {
            g.add(&format!("{p}.add"), &h, &x)
        } else {
            h
        };
        hw = h_hw;
    }
    if let Stop::Before(_) = stop {
        return Ok(x);
    }
    let (x, _) = g.conv_bn("_conv_head", &x, hw, &m._conv_head, &m._bn1)?;
    let x = g.relu6("_conv_head.relu6", &x);
    Ok(g.global_average("avgpool", &x))
}

/// TensorFlow "SAME" padding of one spatial axis, `(begin, end)`, exactly as burn-nn 0.22.1
/// computes it for `PaddingConfig2d::Same` (`padding.rs`, `calculate_same_padding`).
pub fn same_padding(kernel: usize, stride: usize, size_in: usize) -> (usize, usize) {
    let size_out = size_in.div_ceil(stride);
    let total = if size_out > 0 {
        ((size_out - 1) * stride + kernel).saturating_sub(size_in)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

/// Pads `[top, left, bottom, right]` (ONNX order: begins, then ends) of a padding config for an
/// input of `hw = [height, width]`.
fn pads(
    padding: &PaddingConfig2d,
    kernel: [usize; 2],
    stride: [usize; 2],
    hw: [usize; 2],
) -> [usize; 4] {
    match padding {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => {
            let (top, bottom) = same_padding(kernel[0], stride[0], hw[0]);
            let (left, right) = same_padding(kernel[1], stride[1], hw[1]);
            [top, left, bottom, right]
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => [*top, *left, *bottom, *right],
    }
}

/// Output size of a convolution or pooling window along one axis (floor mode).
fn out_size(
    size: usize,
    begin: usize,
    end: usize,
    kernel: usize,
    stride: usize,
    dil: usize,
) -> usize {
    (size + begin + end).saturating_sub(dil * (kernel - 1) + 1) / stride + 1
}

/// A dimension of a graph input or output.
enum Dim {
    /// The symbolic batch dimension [`BATCH_DIM`].
    Batch,
    /// A fixed size.
    Fixed(i64),
}

fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Batch => dimension::Value::DimParam(BATCH_DIM.into()),
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

/// The values of a tensor as f32, row-major.
fn values<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Other(format!("{what}: could not read the tensor: {e:?}")))
}

/// Nodes and initializers under construction. Each node's single output is named after the
/// node, which is named after the module it comes from (`layer1.0.conv1`).
#[derive(Default)]
struct Graph {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    clip_bounds: bool,
}

impl Graph {
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output.to_string()
    }

    /// Adds a 1-D int64 initializer (a shape).
    fn initializer_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.initializers.push(pb::TensorProto {
            dims: vec![data.len() as i64],
            data_type: DataType::Int64 as i32,
            name: name.into(),
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an f32 initializer; refuses NaN and infinity, naming the tensor.
    fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) -> Result<String> {
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Other(format!(
                "tensor {name} holds {} at index {i}: the model is not usable and is not exported \
                 (train it again with a lower learning rate)",
                data[i]
            )));
        }
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(pb::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            name: name.into(),
            raw_data,
            ..Default::default()
        });
        Ok(name.to_string())
    }

    /// A convolution with its BatchNorm folded in; returns the output and its `[H, W]`.
    fn conv_bn(
        &mut self,
        name: &str,
        x: &str,
        hw: [usize; 2],
        conv: &Conv2d,
        bn: &BatchNorm,
    ) -> Result<(String, [usize; 2])> {
        self.conv(name, x, hw, conv, Some(bn))
    }

    /// A convolution, with its BatchNorm (if any) folded in; returns the output and its
    /// `[H, W]`.
    fn conv(
        &mut self,
        name: &str,
        x: &str,
        hw: [usize; 2],
        conv: &Conv2d,
        bn: Option<&BatchNorm>,
    ) -> Result<(String, [usize; 2])> {
        let dims = conv.weight.dims();
        let w = values(conv.weight.val(), name)?;
        let out_ch = dims[0];
        let bias = match &conv.bias {
            Some(b) => values(b.val(), name)?,
            None => vec![0.0; out_ch],
        };
        let (wf, bf) = match bn {
            Some(bn) => fold_bn(&w, &bias, bn, name)?,
            None => (w, bias),
        };
        let wname = self.initializer(&format!("{name}.weight"), &dims, &wf)?;
        let bname = self.initializer(&format!("{name}.bias"), &[out_ch], &bf)?;
        let p = pads(&conv.padding, conv.kernel_size, conv.stride, hw);
        let out_hw = [
            out_size(
                hw[0],
                p[0],
                p[2],
                conv.kernel_size[0],
                conv.stride[0],
                conv.dilation[0],
            ),
            out_size(
                hw[1],
                p[1],
                p[3],
                conv.kernel_size[1],
                conv.stride[1],
                conv.dilation[1],
            ),
        ];
        let out = self.node(
            "Conv",
            name,
            &[x, &wname, &bname],
            name,
            vec![
                attr_ints("kernel_shape", &conv.kernel_size),
                attr_ints("strides", &conv.stride),
                attr_ints("pads", &p),
                attr_ints("dilations", &conv.dilation),
                attr_int("group", conv.groups as i64),
            ],
        );
        Ok((out, out_hw))
    }

    fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], name, vec![])
    }

    /// ReLU6 as `Clip(x, 0, 6)` with the bounds as scalar initializers (opset >= 11 form).
    fn relu6(&mut self, name: &str, x: &str) -> String {
        if !self.clip_bounds {
            for (n, v) in [("relu6.min", 0.0f32), ("relu6.max", 6.0)] {
                self.initializers.push(pb::TensorProto {
                    dims: vec![],
                    data_type: DataType::Float as i32,
                    name: n.into(),
                    raw_data: v.to_le_bytes().to_vec(),
                    ..Default::default()
                });
            }
            self.clip_bounds = true;
        }
        self.node("Clip", name, &[x, "relu6.min", "relu6.max"], name, vec![])
    }

    fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node("Add", name, &[a, b], name, vec![])
    }

    fn maxpool(
        &mut self,
        name: &str,
        x: &str,
        hw: [usize; 2],
        pool: &MaxPool2d,
    ) -> (String, [usize; 2]) {
        let p = pads(&pool.padding, pool.kernel_size, pool.stride, hw);
        let k = pool.kernel_size;
        let s = pool.stride;
        let d = pool.dilation;
        let out_hw = [
            out_size(hw[0], p[0], p[2], k[0], s[0], d[0]),
            out_size(hw[1], p[1], p[3], k[1], s[1], d[1]),
        ];
        let out = self.node(
            "MaxPool",
            name,
            &[x],
            name,
            vec![
                attr_ints("kernel_shape", &k),
                attr_ints("strides", &s),
                attr_ints("pads", &p),
                attr_ints("dilations", &d),
                attr_int("ceil_mode", i64::from(pool.ceil_mode)),
            ],
        );
        (out, out_hw)
    }

    /// `[N, C, H, W]` -> `[N, C]`: GlobalAveragePool then Flatten(axis 1).
    fn global_average(&mut self, name: &str, x: &str) -> String {
        let pooled = self.node("GlobalAveragePool", name, &[x], name, vec![]);
        let flat = format!("{name}.flatten");
        self.node(
            "Flatten",
            &flat,
            &[&pooled],
            &flat,
            vec![attr_int("axis", 1)],
        )
    }

    /// The linear head as `Gemm(x, W^T, b)` with `W` in PyTorch layout `[out, in]`.
    fn gemm(&mut self, name: &str, x: &str, linear: &Linear, output: &str) -> Result<String> {
        let [fan_in, fan_out] = linear.weight.dims();
        // burn stores [in, out]; PyTorch (and this graph, with transB = 1) [out, in].
        let w = values(linear.weight.val().transpose(), name)?;
        let b = match &linear.bias {
            Some(b) => values(b.val(), name)?,
            None => vec![0.0; fan_out],
        };
        let wname = self.initializer(&format!("{name}.weight"), &[fan_out, fan_in], &w)?;
        let bname = self.initializer(&format!("{name}.bias"), &[fan_out], &b)?;
        Ok(self.node(
            "Gemm",
            name,
            &[x, &wname, &bname],
            output,
            vec![attr_int("transB", 1)],
        ))
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
