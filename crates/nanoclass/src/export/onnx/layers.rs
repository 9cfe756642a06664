//! The network's layers as ONNX nodes: BatchNorm folded into the convolutions, the ResNet and EfficientNet-Lite0 bodies up to any stop, the point head.

use super::*;

/// Folds an eval-mode BatchNorm into a convolution's weight and bias (see the module docs).
pub(super) fn fold_bn(
    w: &[f32],
    bias: &[f32],
    bn: &BatchNorm,
    name: &str,
) -> Result<(Vec<f32>, Vec<f32>)> {
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
pub(super) fn point_head(
    g: &mut Graph,
    p: &PointHead,
    map: &str,
    side: usize,
    output: &str,
) -> Result<usize> {
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

pub(super) fn head_name(net: &Net) -> &'static str {
    match net {
        Net::ResNet(_) => "fc",
        Net::EfficientNetLite(_) => "_fc",
    }
}

/// Where an emitted backbone ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stop {
    /// After the global average: `[N, C]`.
    Pooled,
    /// Before residual block `first` (forward order): its input map `[N, C, h, w]` (the point
    /// head's tap, or partial fine-tuning's cut).
    Before(usize),
}

/// torchvision ResNet: stem, max-pool, residual stages, then the global average (`[N, C]`) or
/// the map in front of a block.
pub(super) fn resnet(g: &mut Graph, m: &ResNet, size: usize, stop: Stop) -> Result<String> {
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
pub(super) fn efficientnet(
    g: &mut Graph,
    m: &EfficientNetLite,
    size: usize,
    stop: Stop,
) -> Result<String> {
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
