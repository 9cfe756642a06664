//! The pretrained weights' own ImageNet classifier, whose logits extend the rows of instant
//! models.

use crate::Result;
use crate::infer::device::read_f32;

/// The pretrained weights' own classifier (ImageNet's 1000 classes for torchvision's and the
/// EfficientNet-Lite0 package's weights): `l = A f + a`, `A` `[M, C]`, `a` `[M]`. Its logits are
/// appended to the features of instant models (see the module docs).
#[derive(Debug, Clone)]
pub struct PretrainedHead {
    /// `[M, C]`, row-major (PyTorch's `nn.Linear.weight` layout).
    weight: Vec<f32>,
    bias: Vec<f32>,
    dim: usize,
}

/// Output count a weights file's head must have to be used as a [`PretrainedHead`]: the
/// ImageNet-1k classes.
pub const PRETRAINED_CLASSES: usize = 1000;

impl PretrainedHead {
    /// From a loaded head (burn layout, weight `[C, M]`); `Ok(None)` unless it has
    /// [`PRETRAINED_CLASSES`] outputs.
    ///
    /// # Errors
    /// The weights cannot be read back from the device.
    pub fn from_linear(linear: &burn::nn::Linear) -> Result<Option<PretrainedHead>> {
        let [dim, m] = linear.weight.val().dims();
        if m != PRETRAINED_CLASSES {
            return Ok(None);
        }
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
        Ok(Some(PretrainedHead { weight, bias, dim }))
    }

    /// From PyTorch-layout weights: `weight` `[M, C]` row-major, `bias` `[M]`.
    ///
    /// # Panics
    /// When `weight.len() != bias.len() * dim` (a programming error).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, dim: usize) -> PretrainedHead {
        assert_eq!(weight.len(), bias.len() * dim, "weight must be [M, C]");
        PretrainedHead { weight, bias, dim }
    }

    /// Feature length `C` it reads.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Logits it writes (`M`).
    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// `[n, C]` features to `[n, C + M]` rows `[f, A f + a]`, computed on the host (`n·M·C`
    /// multiply-adds: 1.3 M per EfficientNet-Lite0 image).
    pub fn extend(&self, x: &[f32]) -> Vec<f32> {
        let (c, m) = (self.dim, self.outputs());
        let mut out = Vec::with_capacity(x.len() / c.max(1) * (c + m));
        for f in x.chunks_exact(c) {
            out.extend_from_slice(f);
            for (row, b) in self.weight.chunks_exact(c).zip(&self.bias) {
                out.push(b + super::solve::dot(row, f));
            }
        }
        out
    }

    /// A layer on `[f, l]` (`w` `[K, C + M]`, `b` `[K]`) as one layer on `f`:
    /// `W_f = w_f + w_l A`, `b_f = b + w_l a`.
    pub fn fold(&self, w: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (c, m) = (self.dim, self.outputs());
        let mut wf = Vec::with_capacity(b.len() * c);
        let mut bf = Vec::with_capacity(b.len());
        for (row, bk) in w.chunks_exact(c + m).zip(b) {
            let (rf, rl) = row.split_at(c);
            let mut out: Vec<f64> = rf.iter().map(|v| f64::from(*v)).collect();
            let mut bias = f64::from(*bk);
            for (o, &wl) in rl.iter().enumerate() {
                if wl == 0.0 {
                    continue;
                }
                let wl = f64::from(wl);
                for (acc, a) in out.iter_mut().zip(&self.weight[o * c..(o + 1) * c]) {
                    *acc += wl * f64::from(*a);
                }
                bias += wl * f64::from(self.bias[o]);
            }
            wf.extend(out.iter().map(|v| *v as f32));
            bf.push(bias as f32);
        }
        (wf, bf)
    }
}
