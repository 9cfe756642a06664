//! A linear layer applied on the host: a trained or pretrained head read back from burn into
//! PyTorch's row-major `[M, C]` layout, for work that needs the head's input and output of the
//! same pass (scoring with the unknown rule, instant models' ImageNet logits).

use crate::Result;
use crate::infer::device::read_f32;

/// `y = W f + b`: `weight` `[M, C]` row-major (PyTorch's `nn.Linear.weight` layout), `bias`
/// `[M]`, features of length `C`.
#[derive(Debug, Clone)]
pub struct HostLinear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    dim: usize,
}

impl HostLinear {
    /// From a loaded burn `Linear` (weight `[C, M]`, transposed here); a missing bias is zeros.
    ///
    /// # Errors
    /// The weights cannot be read back from the device.
    pub fn from_linear(linear: &burn::nn::Linear) -> Result<HostLinear> {
        let [dim, m] = linear.weight.val().dims();
        let wt = read_f32(linear.weight.val())?;
        let bias = match &linear.bias {
            Some(b) => read_f32(b.val())?,
            None => vec![0.0; m],
        };
        let mut weight = vec![0.0f32; m * dim];
        for c in 0..dim {
            for o in 0..m {
                weight[o * dim + c] = wt[c * m + o];
            }
        }
        Ok(HostLinear { weight, bias, dim })
    }

    /// From PyTorch-layout weights: `weight` `[M, C]` row-major, `bias` `[M]`.
    ///
    /// # Panics
    /// When `weight.len() != bias.len() * dim` (a programming error).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, dim: usize) -> HostLinear {
        assert_eq!(weight.len(), bias.len() * dim, "weight must be [M, C]");
        HostLinear { weight, bias, dim }
    }

    /// Feature length `C` it reads.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Outputs it writes (`M`).
    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// Row `o` of the weight, `[C]`.
    pub fn row(&self, o: usize) -> &[f32] {
        &self.weight[o * self.dim..(o + 1) * self.dim]
    }

    /// Bias `[M]`.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// One feature vector `[C]` to its `[M]` outputs (`M·C` multiply-adds).
    pub fn forward(&self, f: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(row, b)| b + dot(row, f))
            .collect()
    }
}

/// Dot product with eight partial sums (vectorises; the order of the sums differs from a plain
/// loop by rounding only).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((a, x), y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::device::default_device;
    use burn::nn::LinearConfig;
    use burn::prelude::*;

    #[test]
    fn host_outputs_equal_burns_linear() {
        let device = default_device();
        let linear = LinearConfig::new(13, 5).init(&device);
        let x: Vec<f32> = (0..13).map(|i| (i as f32 * 0.37).sin()).collect();
        let want = read_f32(
            linear.forward(Tensor::<1>::from_floats(x.as_slice(), &device).reshape([1, 13])),
        )
        .unwrap();
        let host = HostLinear::from_linear(&linear).unwrap();
        assert_eq!((host.dim(), host.outputs()), (13, 5));
        for (h, w) in host.forward(&x).iter().zip(&want) {
            assert!((h - w).abs() < 1e-5, "{h} vs {w}");
        }
    }
}
