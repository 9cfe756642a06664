//! The one image decoder used by every path: training, evaluation, prediction, the CLI and the
//! web studio. Same bytes in, same pixels out, whatever the caller.
//!
//! Output: an 8-bit RGB image (`image::RgbImage`, row-major `[H, W, 3]`, values 0..=255), in
//! display orientation. The rules, applied to every format:
//!
//! - The format is found from the magic bytes (`image::guess_format`), never from the file name,
//!   so a PNG saved as `real.jpg` loads.
//! - Grayscale becomes R = G = B.
//! - Alpha is composited over white, then dropped: `out = c * a + 255 * (1 - a)` (policy 1:
//!   transparent pixels become white; the colour stored under a transparent pixel never shows).
//!   Palette images with a tRNS chunk are expanded to RGBA first, so they give the same pixels as
//!   their RGBA equivalent.
//! - 16-bit samples are reduced to 8 bits.
//! - JPEG: decoded by jpeg-decoder. CMYK and YCCK (Adobe) JPEGs are converted to RGB with
//!   `R = (255 - C) * (255 - K) / 255` (and likewise G from M, B from Y), the formula of Pillow's
//!   `cmyk2rgb`. Like Pillow and libjpeg users in general, 4-channel JPEG data is taken to be stored
//!   inverted (the Adobe convention, which is what Photoshop and Pillow write).
//! - EXIF orientation (all 8 values) is applied (policy 2: what the user saw is what the model
//!   sees). For JPEG it is read from the APP1 segment, for PNG/WebP/TIFF from their EXIF data.
//! - A panic inside a decoder is caught and returned as an error for that file.
//!
//!
//! # Size limits
//!
//! A file of a few bytes can claim any size in its header (a 74-byte PNG can claim
//! 2 147 483 647 rows). Before any pixel buffer is allocated, the decoder reads the header
//! (width, height, colour type or components, DCT scale, orientation) and refuses, with an error
//! for that file, an image that
//!
//! - has a side longer than [`MAX_SIDE`] (65 535) pixels, more than [`MAX_PIXELS`]
//!   (144 000 000, 12 000 x 12 000) pixels, or sides further apart than [`MAX_ASPECT_RATIO`]
//!   (100:1);
//! - would need more than [`MAX_DECODE_BYTES`] (512 MiB) at the peak of its decode, computed from
//!   the header: the decoder's working buffers (for a progressive JPEG every DCT coefficient,
//!   2 bytes per sample; the component planes; the output), then the output plus the 8-bit RGB
//!   copy when the output is gray, has alpha or has 16-bit or float samples, then the RGB image
//!   plus a rotated copy when the EXIF orientation swaps width and height.
//!
//! What this admits, one decode at a time: a 12 000 x 12 000 JPEG decoded for a model input
//! (`min_side` of a few hundred pixels: the DCT scaling decodes it at 1/8, 1 500 x 1 500; a
//! progressive 4:2:0 one holds 432 MB of coefficients); at full size, an 8-bit JPEG of up to
//! about 119 megapixels in 4:2:0 (4.5 bytes a pixel) or 89 in 4:4:4 or when it must be rotated
//! (6 bytes a pixel), an 8-bit RGB PNG of up to 144 megapixels (3 bytes a pixel, no copy), an
//! RGBA PNG of up to 76 megapixels (4 + 3 bytes a pixel), a 16-bit RGBA one of up to 48. A forged
//! header is refused from its first bytes, whatever its claim. The `image` crate's decoders also
//! get [`MAX_DECODE_BYTES`] as their `image::Limits::max_alloc`, which bounds their internal
//! buffers (PNG chunks, TIFF strips, GIF frames). Buffers allocated from
//! header values are allocated fallibly: a failure is the file's error, not an abort.
//!
//! Errors are [`Error::Decode`] with the path and a reason: `"empty file"`, `"unknown image
//! format (...)"`, `"truncated: ..."`, `"corrupt JPEG: ..."`, `"image too large..."`, or the
//! decoder's own message.

mod budget;
mod jpeg;
mod jpeg_scan;
mod raster;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat, RgbImage};

use crate::{Error, Result};

use raster::Samples;

/// File extensions (compared without regard to case) that the dataset scanners treat as images.
/// Everything else (`Thumbs.db`, `desktop.ini`, `SHA256SUMS`, ...) is never decoded or counted.
/// These are the formats this build decodes: JPEG, PNG, BMP, GIF (first frame), WebP and TIFF.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// The longest side accepted, in pixels: the largest a JPEG or GIF header can state (16-bit
/// fields). WebP stops at 16 383; PNG, TIFF and BMP headers can claim up to 2^31 - 1 and more.
pub const MAX_SIDE: u32 = 65_535;

/// The most pixels (width x height, as stored) accepted: 12 000 x 12 000. Above any camera photo
/// in common use (a 108-megapixel phone sensor writes 12 000 x 9 000).
pub const MAX_PIXELS: u64 = 144_000_000;

/// The most the longer side may exceed the shorter one, as a ratio: 100. Every model input is a
/// centred square of the image resized so that its shorter side fits (the training crops too
/// fall back to it), so more than 99 % of an image beyond this ratio is never seen, while
/// resizing its shorter side to the input size would make an image of `ratio x side x side`
/// pixels (a 65 535 x 1 image resized to 256 rows: 16.7 million x 256 pixels, 12.9 GB).
pub const MAX_ASPECT_RATIO: u32 = 100;

/// The most memory one decode may hold at its peak, in bytes (512 MiB, the figure of the `image`
/// crate's default `Limits::max_alloc`), computed from the header before anything is allocated
/// (see the module documentation). Decodes in parallel each hold their own.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// How to decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// `None` (the default): decode at full size.
    ///
    /// `Some(n)`: the caller will downscale the image so that its shorter side is `n` pixels, so a
    /// JPEG may be decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain (jpeg-decoder's
    /// `Decoder::scale`), choosing the smallest size whose shorter side is still `>= n`. A
    /// 2000x1500 JPEG with `n = 256` decodes at 1/4, 500x375. Images whose shorter side is
    /// already below `n`, and other formats, decode at full size.
    pub min_side: Option<u32>,
}

/// True when the file name ends in one of [`IMAGE_EXTENSIONS`], in any case (`IMG_0001.JPG`,
/// `x.Jpeg`). This decides which files a dataset scan lists; decoding itself ignores the name.
pub fn is_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// Reads and decodes one image file. See [`decode_bytes`] for the rules.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Decode`] when it is not a usable image;
/// both carry `path`.
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, path, opts)
}

/// Decodes an encoded image held in memory to 8-bit RGB in display orientation.
///
/// `path` is only used to name the file in errors (the format comes from the bytes). The result
/// is never empty (width and height >= 1). See the module documentation for the rules.
///
/// # Errors
/// [`Error::Decode`] `{ path, reason }`; `reason` is `"empty file"` for 0 bytes, starts with
/// `"unknown image format"` when no known signature matches, starts with `"truncated"` when the
/// data ends early, and otherwise names what is wrong. A panic inside a decoder is caught and
/// reported the same way.
pub fn decode_bytes(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<RgbImage> {
    let fail = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("empty file".to_owned()));
    }
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, opts))) {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(fail(format!(
                "the image decoder failed on this file (panic: {message})"
            )))
        }
    }
}

fn decode_inner(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<RgbImage, String> {
    let format = detect_format(bytes)?;
    let img = match format {
        ImageFormat::Jpeg => jpeg::decode_jpeg(bytes, opts)?,
        ImageFormat::Png
        | ImageFormat::Bmp
        | ImageFormat::Gif
        | ImageFormat::WebP
        | ImageFormat::Tiff => raster::decode_with_image(bytes, format)?,
        other => {
            return Err(format!(
                "unsupported image format {} (supported: JPEG, PNG, BMP, GIF, WebP, TIFF)",
                other
                    .extensions_str()
                    .first()
                    .unwrap_or(&"?")
                    .to_uppercase()
            ));
        }
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(format!(
            "image has no pixels ({}x{})",
            img.width(),
            img.height()
        ));
    }
    Ok(img)
}

/// Checks an image size, e.g. the frame size a video file declares, against the decoder's
/// limits ([`MAX_SIDE`], [`MAX_PIXELS`], [`MAX_ASPECT_RATIO`]), so that every path that turns a
/// file into pixels refuses the same sizes.
///
/// # Errors
/// The reason, e.g. `"image too large: the header claims 100000x100000 pixels; the limits are
/// ..."`.
pub fn check_dimensions(width: u32, height: u32) -> std::result::Result<(), String> {
    budget::check_size(u64::from(width), u64::from(height))
}

/// Applies the EXIF orientation. A rotation needs a second RGB buffer: it is refused when the
/// two would exceed [`MAX_DECODE_BYTES`] (only possible when the orientation was found after
/// the size check, e.g. in a JPEG APP1 segment that follows the frame header).
fn orient(rgb: RgbImage, orientation: Orientation) -> std::result::Result<RgbImage, String> {
    if orientation == Orientation::NoTransforms {
        return Ok(rgb);
    }
    if budget::rotates(orientation) {
        budget::Plan {
            width: u64::from(rgb.width()),
            height: u64::from(rgb.height()),
            decoder: 0,
            output: 0,
            converts: false,
            rotates: true,
        }
        .check()?;
    }
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// The format from the signature at the start of the data.
fn detect_format(bytes: &[u8]) -> std::result::Result<ImageFormat, String> {
    if let Ok(format) = image::guess_format(bytes) {
        return Ok(format);
    }
    // macOS AppleDouble metadata (`._name.jpg`, `__MACOSX/`): magic 00 05 16 07.
    if bytes.starts_with(&[0x00, 0x05, 0x16, 0x07]) {
        return Err(
            "unknown image format: this is a macOS AppleDouble metadata file, not an \
                    image"
                .to_owned(),
        );
    }
    let head = &bytes[..bytes.len().min(16)];
    let text = head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    Err(if text {
        let shown: String = head.iter().map(|&b| b as char).collect();
        format!("unknown image format (the file starts with the text {shown:?})")
    } else {
        let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("unknown image format (first bytes {})", hex.join(" "))
    })
}

/// Drops alpha by compositing over white: `out = c * a + 255 * (1 - a)` with `a` in 0..=1.
/// 8-bit images use exact integer arithmetic (`(c * a + 255 * (255 - a) + 127) / 255`); 16-bit
/// and float images are composited in f32 and rounded. Images without alpha are converted as
/// `DynamicImage::into_rgb8` does (16-bit `(v + 128) / 257`; f32 clamped to 0..=1, times 255,
/// rounded; gray repeated in R, G and B). The decoder uses the same conversion.
pub fn flatten_over_white(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let channels = usize::from(img.color().channel_count());
    let (samples, channels) = match img {
        DynamicImage::ImageRgb8(b) => return b,
        DynamicImage::ImageLuma8(b) => (Samples::U8(b.into_raw()), channels),
        DynamicImage::ImageLumaA8(b) => (Samples::U8(b.into_raw()), channels),
        DynamicImage::ImageRgba8(b) => (Samples::U8(b.into_raw()), channels),
        DynamicImage::ImageLuma16(b) => (Samples::U16(b.into_raw()), channels),
        DynamicImage::ImageLumaA16(b) => (Samples::U16(b.into_raw()), channels),
        DynamicImage::ImageRgb16(b) => (Samples::U16(b.into_raw()), channels),
        DynamicImage::ImageRgba16(b) => (Samples::U16(b.into_raw()), channels),
        DynamicImage::ImageRgb32F(b) => (Samples::F32(b.into_raw()), channels),
        DynamicImage::ImageRgba32F(b) => (Samples::F32(b.into_raw()), channels),
        other => (Samples::F32(other.into_rgba32f().into_raw()), 4),
    };
    let mut out = RgbImage::new(w, h);
    raster::fill_rgb8(&samples, channels, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::jpeg::{cmyk_to_rgb, dct_request, reduce_u16_ne};
    use super::*;

    #[test]
    fn extensions_ignore_case() {
        for name in [
            "a.jpg",
            "IMG_0001.JPG",
            "x.Jpeg",
            "y.PNG",
            "z.webp",
            "t.TIFF",
            "g.gif",
        ] {
            assert!(is_image_extension(Path::new(name)), "{name}");
        }
        for name in [
            "Thumbs.db",
            "desktop.ini",
            "SHA256SUMS",
            "noext",
            "a.jpg.txt",
            ".jpg",
        ] {
            assert!(!is_image_extension(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn dct_request_keeps_shorter_side() {
        // 2000x1500, min 256: 1/8 -> 188 (too small), 1/4 -> 375: decode at 1/4.
        assert_eq!(dct_request(2000, 1500, 256), Some((500, 375)));
        // 500x375, min 256: no reduction keeps 256.
        assert_eq!(dct_request(500, 375, 256), None);
        // 4096x3072, min 256: 1/8 gives 384.
        assert_eq!(dct_request(4096, 3072, 256), Some((512, 384)));
        // 600x520: 1/2 gives 260 >= 256.
        assert_eq!(dct_request(600, 520, 256), Some((300, 260)));
    }

    #[test]
    fn cmyk_conversion_matches_pillow_formula() {
        // Pure cyan ink, no black -> (0, 255, 255); 50% black on white paper -> 128 gray.
        let mut px = vec![255, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 255];
        cmyk_to_rgb(&mut px);
        assert_eq!(px, vec![0, 255, 255, 127, 127, 127, 0, 0, 0]);
    }

    #[test]
    fn flatten_composites_over_white() {
        let rgba = image::RgbaImage::from_raw(
            4,
            1,
            vec![
                255, 0, 0, 0, 0, 0, 255, 255, 0, 255, 0, 128, 10, 20, 30, 255,
            ],
        )
        .expect("4 pixels");
        let rgb = flatten_over_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 255]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 255, 127]);
        assert_eq!(rgb.get_pixel(3, 0).0, [10, 20, 30]);
    }

    #[test]
    fn reduce_16_bit_samples() {
        let bytes: Vec<u8> = [0u16, 65535, 32768, 257]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(reduce_u16_ne(&bytes, 16), vec![0, 255, 128, 1]);
        let twelve: Vec<u8> = [4095u16, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(reduce_u16_ne(&twelve, 12), vec![255, 0]);
    }

    #[test]
    fn empty_and_unknown() {
        let path = Path::new("/data/cat/0.jpg");
        let err = decode_bytes(&[], path, &DecodeOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/data/cat/0.jpg: empty file");
        let err = decode_bytes(b"<!DOCTYPE html><html>", path, &DecodeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/data/cat/0.jpg: unknown image format"),
            "{err}"
        );
        assert!(err.contains("<!DOCTYPE"), "{err}");
    }
}
