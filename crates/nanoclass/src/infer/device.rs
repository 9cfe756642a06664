//! The compute device of burn, and reading tensors back to the host.

use burn::prelude::*;

use crate::{Error, Result};

/// The compute device: Flex (CPU) by default, CUDA or wgpu when built with those features.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    {
        Device::wgpu(Default::default())
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        Device::flex()
    }
}

/// A tensor's values on the host, as f32 in row-major order.
///
/// # Errors
/// [`Error::Other`] when the backend cannot give the data back (a device error).
pub fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Other(format!("reading a tensor back from the device: {e:?}")))
}

/// An integer tensor's values on the host, as i64 in row-major order.
///
/// # Errors
/// As [`read_f32`].
pub fn read_i64<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| Error::Other(format!("reading a tensor back from the device: {e:?}")))
}

/// The one value of a one-element tensor (a loss).
///
/// # Errors
/// As [`read_f32`], or an empty tensor.
pub fn read_scalar(t: Tensor<1>) -> Result<f64> {
    read_f32(t)?
        .first()
        .map(|v| f64::from(*v))
        .ok_or_else(|| Error::Other("reading a scalar: the tensor is empty".into()))
}
