//! The pretrained weights' own ImageNet classifier, whose logits extend the rows of instant
//! models.

use crate::Result;
use crate::infer::host_linear::HostLinear;

/// The pretrained weights' own classifier (ImageNet's 1000 classes for torchvision's and the
/// EfficientNet-Lite0 package's weights): `l = A f + a`, `A` `[M, C]`, `a` `[M]`. Its logits are
/// appended to the features of instant models (see the module docs).
#[derive(Debug, Clone)]
pub struct PretrainedHead(HostLinear);

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
        let [_, m] = linear.weight.val().dims();
        if m != PRETRAINED_CLASSES {
            return Ok(None);
        }
        Ok(Some(PretrainedHead(HostLinear::from_linear(linear)?)))
    }

    /// From PyTorch-layout weights: `weight` `[M, C]` row-major, `bias` `[M]`.
    ///
    /// # Panics
    /// When `weight.len() != bias.len() * dim` (a programming error).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, dim: usize) -> PretrainedHead {
        PretrainedHead(HostLinear::new(weight, bias, dim))
    }

    /// Feature length `C` it reads.
    pub fn dim(&self) -> usize {
        self.0.dim()
    }

    /// Logits it writes (`M`).
    pub fn outputs(&self) -> usize {
        self.0.outputs()
    }

    /// `[n, C]` features to `[n, C + M]` rows `[f, A f + a]`, computed on the host (`n·M·C`
    /// multiply-adds: 1.3 M per EfficientNet-Lite0 image).
    pub fn extend(&self, x: &[f32]) -> Vec<f32> {
        let (c, m) = (self.dim(), self.outputs());
        let mut out = Vec::with_capacity(x.len() / c.max(1) * (c + m));
        for f in x.chunks_exact(c) {
            out.extend_from_slice(f);
            out.extend(self.0.forward(f));
        }
        out
    }

    /// A layer on `[f, l]` (`w` `[K, C + M]`, `b` `[K]`) as one layer on `f`:
    /// `W_f = w_f + w_l A`, `b_f = b + w_l a`.
    pub fn fold(&self, w: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (c, m) = (self.dim(), self.outputs());
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
                for (acc, a) in out.iter_mut().zip(self.0.row(o)) {
                    *acc += wl * f64::from(*a);
                }
                bias += wl * f64::from(self.0.bias()[o]);
            }
            wf.extend(out.iter().map(|v| *v as f32));
            bf.push(bias as f32);
        }
        (wf, bf)
    }
}
