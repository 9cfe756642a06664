//! PNG, BMP, GIF (first frame), WebP and TIFF through the `image` crate's decoders, with the size
//! policy of [`super::budget`] applied to the header before the pixel buffer is allocated, and
//! the decoder's own allocations bounded by `image::Limits`.
//!
//! The decoded samples (8-bit, 16-bit or f32, with or without alpha) go to 8-bit RGB in one pass
//! into one new buffer ([`to_rgb8`]), so no intermediate RGBA or f32 copy of the image is ever
//! made. The arithmetic is the `image` crate's own conversion (`DynamicImage::into_rgb8`) for
//! images without alpha, and compositing over white for images with alpha (see
//! [`super::flatten_over_white`]).

use std::io::Cursor;

use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::budget::{Plan, check_size, rotates, zeroed};
use super::{MAX_DECODE_BYTES, orient};

/// The limits handed to the `image` crate's decoders: [`MAX_DECODE_BYTES`] for the sum of their
/// own allocations (PNG's and TIFF's internal buffers, GIF frame buffers). The sides are checked
/// by [`check_size`] as soon as the header is read (no decoder allocates pixels before), with a
/// message that states the size the header claims.
fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

pub(super) fn image_reason(error: ImageError) -> String {
    if let ImageError::Limits(limit) = &error {
        return format!(
            "image too large to decode: the decoder needed more than the limit of {} MiB \
             ({limit})",
            MAX_DECODE_BYTES >> 20
        );
    }
    let truncated = match &error {
        ImageError::IoError(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
        other => {
            let message = other.to_string().to_lowercase();
            [
                "unexpected eof",
                "unexpected end",
                "end of file",
                "truncated",
                "no more data",
            ]
            .iter()
            .any(|hint| message.contains(hint))
        }
    };
    if truncated {
        format!("truncated: the file ends before the image data does ({error})")
    } else {
        error.to_string()
    }
}

/// Bytes the decoder holds besides its output buffer, as a multiple of that buffer: GIF decodes
/// a frame into a frame buffer before placing it on the logical screen, and WebP decodes into
/// its own frame (YUV planes for lossy data, the canvas for animations) before the output; PNG,
/// BMP and TIFF decode rows or strips straight into the output.
fn decoder_factor(format: ImageFormat) -> u64 {
    match format {
        ImageFormat::Gif | ImageFormat::WebP => 2,
        _ => 1,
    }
}

/// Decodes one image of `format` to 8-bit RGB in display orientation.
pub(super) fn decode_with_image(bytes: &[u8], format: ImageFormat) -> Result<RgbImage, String> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits());
    let mut decoder = reader.into_decoder().map_err(image_reason)?;
    let (w, h) = decoder.dimensions();
    check_size(u64::from(w), u64::from(h))?;
    let color = decoder.color_type();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let output = decoder.total_bytes();
    Plan {
        width: u64::from(w),
        height: u64::from(h),
        decoder: output.saturating_mul(decoder_factor(format)),
        output,
        converts: color != ColorType::Rgb8,
        rotates: rotates(orientation),
    }
    .check()?;
    let samples = match color {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => {
            let mut buf = zeroed::<u8>(output)?;
            decoder.read_image(&mut buf).map_err(image_reason)?;
            Samples::U8(buf)
        }
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16 => {
            let mut buf = zeroed::<u16>(output / 2)?;
            decoder
                .read_image(bytemuck::cast_slice_mut(&mut buf))
                .map_err(image_reason)?;
            Samples::U16(buf)
        }
        ColorType::Rgb32F | ColorType::Rgba32F => {
            let mut buf = zeroed::<f32>(output / 4)?;
            decoder
                .read_image(bytemuck::cast_slice_mut(&mut buf))
                .map_err(image_reason)?;
            Samples::F32(buf)
        }
        other => return Err(format!("unsupported colour type {other:?}")),
    };
    let channels = usize::from(color.channel_count());
    let rgb = to_rgb8(w, h, samples, channels)?;
    orient(rgb, orientation)
}

/// Decoded samples, `channels` per pixel (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA), row-major.
pub(super) enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
}

/// One sample type's conversions, with the `image` crate's arithmetic.
trait Sample: Copy {
    /// To 8 bits, as `DynamicImage::into_rgb8` does: u16 `(v + 128) / 257` (round to nearest),
    /// f32 clamped to 0..=1 (NaN as 1), times 255, rounded.
    fn to_u8(self) -> u8;
    /// To 0..=1, as `DynamicImage::into_rgba32f` does (u16 `v / 65535`; f32 unchanged).
    fn to_unit(self) -> f32;
}

impl Sample for u8 {
    fn to_u8(self) -> u8 {
        self
    }
    fn to_unit(self) -> f32 {
        f32::from(self) / 255.0
    }
}

impl Sample for u16 {
    fn to_u8(self) -> u8 {
        ((u32::from(self) + 128) / 257) as u8
    }
    fn to_unit(self) -> f32 {
        (f32::from(self) / 65535.0).clamp(0.0, 1.0)
    }
}

impl Sample for f32 {
    fn to_u8(self) -> u8 {
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let clamped = if !(self < 1.0) { 1.0 } else { self.max(0.0) };
        (clamped * 255.0).round() as u8
    }
    fn to_unit(self) -> f32 {
        self
    }
}

/// Composites 8-bit `c` with alpha `a` over white: `(c * a + 255 * (255 - a) + 127) / 255`.
fn over_white_u8(c: u8, a: u8) -> u8 {
    let a = u32::from(a);
    ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Composites `c` with alpha `a` (both 0..=1 after clamping) over white, rounded to 8 bits.
fn over_white_f32(c: f32, a: f32) -> u8 {
    let a = a.clamp(0.0, 1.0);
    ((c.clamp(0.0, 1.0) * a + (1.0 - a)) * 255.0).round() as u8
}

/// Converts pixels of `channels` samples to RGB in `out` (3 bytes a pixel), with `composite`
/// for colour and alpha samples. One loop per layout, so each compiles to a tight loop.
fn convert<T: Sample>(
    samples: &[T],
    channels: usize,
    out: &mut [u8],
    composite: impl Fn(T, T) -> u8,
) {
    let rgb = out.chunks_exact_mut(3);
    match channels {
        1 => {
            for (&g, o) in samples.iter().zip(rgb) {
                o.fill(g.to_u8());
            }
        }
        2 => {
            for (px, o) in samples.chunks_exact(2).zip(rgb) {
                o.fill(composite(px[0], px[1]));
            }
        }
        3 => {
            for (&c, o) in samples.iter().zip(out.iter_mut()) {
                *o = c.to_u8();
            }
        }
        _ => {
            for (px, o) in samples.chunks_exact(4).zip(rgb) {
                o[0] = composite(px[0], px[3]);
                o[1] = composite(px[1], px[3]);
                o[2] = composite(px[2], px[3]);
            }
        }
    }
}

/// Writes the RGB conversion of `samples` (`channels` per pixel) into `out` (3 bytes a pixel):
/// gray is repeated in R, G and B, 16-bit and f32 samples are reduced as the `image` crate does,
/// and alpha is composited over white.
pub(super) fn fill_rgb8(samples: &Samples, channels: usize, out: &mut [u8]) {
    match samples {
        Samples::U8(v) => convert(v, channels, out, over_white_u8),
        Samples::U16(v) => convert(v, channels, out, |c: u16, a: u16| {
            over_white_f32(c.to_unit(), a.to_unit())
        }),
        Samples::F32(v) => convert(v, channels, out, |c: f32, a: f32| {
            over_white_f32(c.to_unit(), a.to_unit())
        }),
    }
}

/// Converts `w x h` pixels of `channels` samples each to 8-bit RGB ([`fill_rgb8`]). Packed 8-bit
/// RGB is taken as it is (no copy); anything else goes into one new buffer, whose allocation
/// failure is an error.
pub(super) fn to_rgb8(
    w: u32,
    h: u32,
    samples: Samples,
    channels: usize,
) -> Result<RgbImage, String> {
    let pixels = u64::from(w) * u64::from(h);
    let len = match &samples {
        Samples::U8(v) => v.len(),
        Samples::U16(v) => v.len(),
        Samples::F32(v) => v.len(),
    };
    if !(1..=4).contains(&channels) || len as u64 != pixels * channels as u64 {
        return Err(format!(
            "the decoder gave {len} samples for {w}x{h} pixels of {channels} channels"
        ));
    }
    let rgb = match samples {
        Samples::U8(v) if channels == 3 => v,
        samples => {
            let mut out = zeroed::<u8>(3 * pixels)?;
            fill_rgb8(&samples, channels, &mut out);
            out
        }
    };
    RgbImage::from_raw(w, h, rgb).ok_or_else(|| format!("no RGB image of {w}x{h} pixels"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::DynamicImage;

    /// A deterministic sequence of sample values that covers both ends of the range.
    fn values(n: usize, seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n).map(move |i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match i % 7 {
                0 => 0,
                1 => u64::MAX,
                _ => x,
            }
        })
    }

    /// The reference: the `image` crate's conversion for images without alpha; for images with
    /// alpha, its RGBA8 or RGBA f32 image composited over white.
    fn reference(img: &DynamicImage) -> RgbImage {
        if !img.color().has_alpha() {
            return img.to_rgb8();
        }
        if matches!(
            img,
            DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_)
        ) {
            let rgba = img.to_rgba8();
            return RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                let [r, g, b, a] = rgba.get_pixel(x, y).0;
                image::Rgb([
                    over_white_u8(r, a),
                    over_white_u8(g, a),
                    over_white_u8(b, a),
                ])
            });
        }
        let rgba = img.to_rgba32f();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            image::Rgb([
                over_white_f32(r, a),
                over_white_f32(g, a),
                over_white_f32(b, a),
            ])
        })
    }

    #[test]
    fn one_pass_conversion_matches_the_image_crate() {
        let (w, h) = (13u32, 7u32);
        let n = (w * h) as usize;
        for channels in 1..=4usize {
            let bytes: Vec<u8> = values(n * channels, 1).map(|v| v as u8).collect();
            let words: Vec<u16> = values(n * channels, 2).map(|v| v as u16).collect();
            let mut floats: Vec<f32> = values(n * channels, 3)
                .map(|v| (v % 2001) as f32 / 1000.0 - 0.5)
                .collect();
            floats[5] = f32::NAN;
            floats[6] = f32::INFINITY;
            let img8 = match channels {
                1 => DynamicImage::ImageLuma8(
                    image::ImageBuffer::from_raw(w, h, bytes.clone()).unwrap(),
                ),
                2 => DynamicImage::ImageLumaA8(
                    image::ImageBuffer::from_raw(w, h, bytes.clone()).unwrap(),
                ),
                3 => DynamicImage::ImageRgb8(
                    image::ImageBuffer::from_raw(w, h, bytes.clone()).unwrap(),
                ),
                _ => DynamicImage::ImageRgba8(
                    image::ImageBuffer::from_raw(w, h, bytes.clone()).unwrap(),
                ),
            };
            let img16 = match channels {
                1 => DynamicImage::ImageLuma16(
                    image::ImageBuffer::from_raw(w, h, words.clone()).unwrap(),
                ),
                2 => DynamicImage::ImageLumaA16(
                    image::ImageBuffer::from_raw(w, h, words.clone()).unwrap(),
                ),
                3 => DynamicImage::ImageRgb16(
                    image::ImageBuffer::from_raw(w, h, words.clone()).unwrap(),
                ),
                _ => DynamicImage::ImageRgba16(
                    image::ImageBuffer::from_raw(w, h, words.clone()).unwrap(),
                ),
            };
            let got8 = to_rgb8(w, h, Samples::U8(bytes), channels).unwrap();
            assert_eq!(got8, reference(&img8), "8-bit, {channels} channels");
            let got16 = to_rgb8(w, h, Samples::U16(words), channels).unwrap();
            assert_eq!(got16, reference(&img16), "16-bit, {channels} channels");
            if channels >= 3 {
                let img32 = if channels == 3 {
                    DynamicImage::ImageRgb32F(
                        image::ImageBuffer::from_raw(w, h, floats.clone()).unwrap(),
                    )
                } else {
                    DynamicImage::ImageRgba32F(
                        image::ImageBuffer::from_raw(w, h, floats.clone()).unwrap(),
                    )
                };
                let got32 = to_rgb8(w, h, Samples::F32(floats), channels).unwrap();
                assert_eq!(got32, reference(&img32), "f32, {channels} channels");
            }
        }
    }

    #[test]
    fn sample_count_must_fit() {
        let err = to_rgb8(2, 2, Samples::U8(vec![0; 11]), 3).unwrap_err();
        assert!(err.contains("11 samples for 2x2 pixels"), "{err}");
    }
}
