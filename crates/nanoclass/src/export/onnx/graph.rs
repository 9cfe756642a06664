//! The ONNX graph builder: nodes, initializers, value infos and attributes, with torch's padding arithmetic.

use super::*;

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
pub(super) fn pads(
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
pub(super) fn out_size(
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
pub(super) enum Dim {
    /// The symbolic batch dimension [`BATCH_DIM`].
    Batch,
    /// A fixed size.
    Fixed(i64),
}

pub(super) fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
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

pub(super) fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub(super) fn attr_ints(name: &str, ints: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

/// The values of a tensor as f32, row-major.
pub(super) fn values<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Other(format!("{what}: could not read the tensor: {e:?}")))
}

/// Nodes and initializers under construction. Each node's single output is named after the
/// node, which is named after the module it comes from (`layer1.0.conv1`).
#[derive(Default)]
pub(super) struct Graph {
    pub(super) nodes: Vec<pb::NodeProto>,
    pub(super) initializers: Vec<pb::TensorProto>,
    pub(super) clip_bounds: bool,
}

impl Graph {
    pub(super) fn node(
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
    pub(super) fn initializer_i64(&mut self, name: &str, data: &[i64]) -> String {
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
    pub(super) fn initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data: &[f32],
    ) -> Result<String> {
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
    pub(super) fn conv_bn(
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
    pub(super) fn conv(
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

    pub(super) fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], name, vec![])
    }

    /// ReLU6 as `Clip(x, 0, 6)` with the bounds as scalar initializers (opset >= 11 form).
    pub(super) fn relu6(&mut self, name: &str, x: &str) -> String {
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

    pub(super) fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node("Add", name, &[a, b], name, vec![])
    }

    pub(super) fn maxpool(
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
    pub(super) fn global_average(&mut self, name: &str, x: &str) -> String {
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
    pub(super) fn gemm(
        &mut self,
        name: &str,
        x: &str,
        linear: &Linear,
        output: &str,
    ) -> Result<String> {
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
