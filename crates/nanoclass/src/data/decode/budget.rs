//! The size policy of the decoder: what a header may claim, and the memory one decode may use.
//! The limits themselves and their reasons are documented with the constants in the parent
//! module ([`super::MAX_SIDE`], [`super::MAX_PIXELS`], [`super::MAX_ASPECT_RATIO`],
//! [`super::MAX_DECODE_BYTES`]).

use image::metadata::Orientation;

use super::{MAX_ASPECT_RATIO, MAX_DECODE_BYTES, MAX_PIXELS, MAX_SIDE};

/// Checks an image size read from a header against [`MAX_SIDE`], [`MAX_PIXELS`] and
/// [`MAX_ASPECT_RATIO`]; `Err` holds the reason for the per-file error.
pub(crate) fn check_size(width: u64, height: u64) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}x{height})"));
    }
    let limits = || {
        format!(
            "the limits are {MAX_SIDE} pixels a side, {} megapixels, and a side ratio of \
             {MAX_ASPECT_RATIO}:1",
            MAX_PIXELS / 1_000_000
        )
    };
    if width > u64::from(MAX_SIDE) || height > u64::from(MAX_SIDE) {
        return Err(format!(
            "image too large: the header claims {width}x{height} pixels; {}",
            limits()
        ));
    }
    if width * height > MAX_PIXELS {
        return Err(format!(
            "image too large: the header claims {width}x{height} pixels ({:.1} megapixels); {}",
            (width * height) as f64 / 1e6,
            limits()
        ));
    }
    if width.max(height) > u64::from(MAX_ASPECT_RATIO) * width.min(height) {
        return Err(format!(
            "image too elongated: the header claims {width}x{height} pixels, a side ratio above \
             {MAX_ASPECT_RATIO}:1 (no model input would show more than a sliver of it); {}",
            limits()
        ));
    }
    Ok(())
}

/// True for the orientations that swap width and height, which need a second RGB buffer
/// (the flips and the half turn are done in place).
pub(crate) fn rotates(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The memory one decode holds at its peak, computed from header values before anything is
/// allocated. The decode goes through three steps; each holds:
///
/// 1. the decoder at work: `decoder` bytes (its output buffer included);
/// 2. conversion to 8-bit RGB: the decoder's output (`output` bytes) plus, when the output is
///    not already packed 8-bit RGB (`converts`), the RGB image (`3 * width * height`);
/// 3. orientation: the RGB image, plus a rotated copy when the orientation swaps the sides.
///
/// All figures are `u64` and saturate, so a forged header cannot overflow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Width of the decoded image, in pixels (after any DCT scaling, before orientation).
    pub width: u64,
    /// Height of the decoded image, in pixels.
    pub height: u64,
    /// Bytes the decoder holds at its peak, its output buffer included.
    pub decoder: u64,
    /// Bytes of the decoder's output buffer.
    pub output: u64,
    /// The output must be converted into a new 8-bit RGB buffer.
    pub converts: bool,
    /// The orientation swaps width and height (a rotated copy is made).
    pub rotates: bool,
}

impl Plan {
    /// Peak bytes over the three steps.
    pub(crate) fn peak(&self) -> u64 {
        let rgb = self.width.saturating_mul(self.height).saturating_mul(3);
        let convert = if self.converts {
            self.output.saturating_add(rgb)
        } else {
            self.output
        };
        let orient = if self.rotates {
            rgb.saturating_mul(2)
        } else {
            rgb
        };
        self.decoder.max(convert).max(orient)
    }

    /// `Err` with the reason when [`Plan::peak`] exceeds [`MAX_DECODE_BYTES`].
    pub(crate) fn check(&self) -> Result<(), String> {
        let peak = self.peak();
        if peak <= MAX_DECODE_BYTES {
            return Ok(());
        }
        Err(format!(
            "image too large to decode: {}x{} pixels need about {} MiB of memory, more than the \
             limit of {} MiB",
            self.width,
            self.height,
            peak.div_ceil(1 << 20),
            MAX_DECODE_BYTES >> 20
        ))
    }
}

/// A zero-filled buffer of `len` elements, or the reason when the allocation fails (so an
/// impossible size becomes the file's error instead of aborting the process).
pub(crate) fn zeroed<T: Copy + Default>(len: u64) -> Result<Vec<T>, String> {
    let too_large = || {
        format!(
            "out of memory: cannot allocate {} MiB for the decoded image",
            len.saturating_mul(std::mem::size_of::<T>() as u64)
                .div_ceil(1 << 20)
        )
    };
    let len = usize::try_from(len).map_err(|_| too_large())?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| too_large())?;
    buf.resize(len, T::default());
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_at_and_past_each_limit() {
        assert!(check_size(12_000, 12_000).is_ok());
        assert!(check_size(1, 1).is_ok());
        assert!(check_size(100, 1).is_ok());
        let err = check_size(101, 1).unwrap_err();
        assert!(err.starts_with("image too elongated"), "{err}");
        let err = check_size(12_001, 12_000).unwrap_err();
        assert!(err.contains("12001x12000"), "{err}");
        assert!(err.contains("144.0 megapixels"), "{err}");
        let err = check_size(65_536, 1_000).unwrap_err();
        assert!(err.contains("65535 pixels a side"), "{err}");
        assert!(check_size(0, 5).unwrap_err().contains("no pixels"));
        // The PNG maximum (2^31 - 1) and more: no overflow.
        assert!(check_size(0x7fff_ffff, 0x7fff_ffff).is_err());
        assert!(check_size(u64::from(u32::MAX), u64::from(u32::MAX)).is_err());
    }

    #[test]
    fn peak_is_the_largest_step() {
        let plan = Plan {
            width: 1000,
            height: 1000,
            decoder: 4_000_000,
            output: 4_000_000,
            converts: true,
            rotates: false,
        };
        // RGBA output + the RGB copy.
        assert_eq!(plan.peak(), 7_000_000);
        let rotated = Plan {
            converts: false,
            output: 3_000_000,
            decoder: 3_000_000,
            rotates: true,
            ..plan
        };
        assert_eq!(rotated.peak(), 6_000_000);
        let big = Plan {
            width: u64::MAX,
            height: u64::MAX,
            decoder: u64::MAX,
            output: u64::MAX,
            converts: true,
            rotates: true,
        };
        assert_eq!(big.peak(), u64::MAX);
        let err = big.check().unwrap_err();
        assert!(err.contains("more than the limit of 512 MiB"), "{err}");
    }

    #[test]
    fn impossible_allocation_is_an_error() {
        let err = zeroed::<u8>(u64::MAX).unwrap_err();
        assert!(err.starts_with("out of memory"), "{err}");
        assert_eq!(zeroed::<u16>(3).unwrap(), vec![0u16; 3]);
    }
}
