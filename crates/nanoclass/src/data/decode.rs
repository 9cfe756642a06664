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
//! Errors are [`Error::Decode`] with the path and a reason: `"empty file"`, `"unknown image
//! format (...)"`, `"truncated: ..."`, `"corrupt JPEG: ..."`, or the decoder's own message.

mod jpeg_scan;

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};
use jpeg_decoder::PixelFormat;

use crate::{Error, Result};

use jpeg_scan::ScanCheck;

/// File extensions (compared without regard to case) that the dataset scanners treat as images.
/// Everything else (`Thumbs.db`, `desktop.ini`, `SHA256SUMS`, ...) is never decoded or counted.
/// These are the formats this build decodes: JPEG, PNG, BMP, GIF (first frame), WebP and TIFF.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// The largest decoded pixel buffer a JPEG may need, in bytes (512 MiB, the same bound as the
/// `image` crate's default `Limits::max_alloc`, which applies to the other formats). A frame
/// header that asks for more is refused instead of exhausting memory.
pub const MAX_DECODED_BYTES: usize = 512 * 1024 * 1024;

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
        ImageFormat::Jpeg => decode_jpeg(bytes, opts)?,
        ImageFormat::Png
        | ImageFormat::Bmp
        | ImageFormat::Gif
        | ImageFormat::WebP
        | ImageFormat::Tiff => decode_with_image(bytes, format)?,
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

/// Picks the DCT scale: the requested output size for jpeg-decoder's `Decoder::scale`, or `None`
/// to decode at full size. Scales are 1/8, 1/4, 1/2 (the sizes round up: `ceil(len * s / 8)`).
fn dct_request(width: u16, height: u16, min_side: u32) -> Option<(u16, u16)> {
    let scaled = |len: u16, s: u32| (u32::from(len) * s).div_ceil(8);
    let short = width.min(height);
    [1u32, 2, 4]
        .into_iter()
        .find(|&s| scaled(short, s) >= min_side)
        .map(|s| {
            let w = u16::try_from(scaled(width, s)).unwrap_or(u16::MAX);
            let h = u16::try_from(scaled(height, s)).unwrap_or(u16::MAX);
            (w, h)
        })
}

fn jpeg_reason(error: jpeg_decoder::Error) -> String {
    match error {
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated: the file ends before the JPEG data does".to_owned()
        }
        jpeg_decoder::Error::Format(message) => format!("corrupt JPEG: {message}"),
        jpeg_decoder::Error::Unsupported(feature) => {
            format!("unsupported JPEG feature: {feature:?}")
        }
        other => format!("JPEG decoding failed: {other}"),
    }
}

fn decode_jpeg(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<RgbImage, String> {
    let (header, check) = jpeg_scan::check_scans(bytes);
    if let ScanCheck::Short {
        scan,
        mcus_done,
        mcus_total,
        at_eof,
    } = check
    {
        let size = header
            .map(|h| format!("{}x{}", h.width, h.height))
            .unwrap_or_default();
        return Err(if at_eof {
            format!(
                "truncated: the file ends inside scan {scan}, after {mcus_done} of its \
                 {mcus_total} MCUs (no EOI marker)"
            )
        } else {
            format!(
                "corrupt JPEG: scan {scan} holds data for only {mcus_done} of the {mcus_total} \
                 MCUs that the frame header ({size}) announces (the file was cut short, or its \
                 size field is wrong)"
            )
        });
    }

    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(MAX_DECODED_BYTES);
    decoder.read_info().map_err(jpeg_reason)?;
    let info = decoder.info().ok_or("corrupt JPEG: no frame header")?;
    let request = opts
        .min_side
        .and_then(|n| dct_request(info.width, info.height, n));
    let mut pixels = match request {
        Some((w, h)) => {
            let (out_w, out_h) = decoder.scale(w, h).map_err(jpeg_reason)?;
            if u32::from(out_w.min(out_h)) < opts.min_side.unwrap_or(0) {
                // jpeg-decoder chose a smaller scale than asked (tiny images): decode at full size.
                decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
                decoder.set_max_decoding_buffer_size(MAX_DECODED_BYTES);
            }
            decoder.decode().map_err(jpeg_reason)?
        }
        None => decoder.decode().map_err(jpeg_reason)?,
    };
    let info = decoder.info().ok_or("corrupt JPEG: no frame header")?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let n = w as usize * h as usize;
    let precision = header.map_or(8, |h| h.precision);
    let rgb = match info.pixel_format {
        PixelFormat::L8 if pixels.len() == n => gray_to_rgb(w, h, pixels),
        PixelFormat::L16 if pixels.len() == 2 * n => {
            gray_to_rgb(w, h, reduce_u16_ne(&pixels, precision))
        }
        PixelFormat::RGB24 if pixels.len() == 3 * n => RgbImage::from_raw(w, h, pixels),
        // Lossless JPEG with more than 8 bits gives 16-bit native-endian samples.
        PixelFormat::RGB24 if pixels.len() == 6 * n => {
            RgbImage::from_raw(w, h, reduce_u16_ne(&pixels, precision))
        }
        PixelFormat::CMYK32 if pixels.len() == 4 * n => {
            cmyk_to_rgb(&mut pixels);
            RgbImage::from_raw(w, h, pixels)
        }
        other => {
            return Err(format!(
                "JPEG decoding gave {} bytes for {w}x{h} pixels in {other:?}",
                pixels.len()
            ));
        }
    }
    .ok_or_else(|| format!("JPEG decoding gave a buffer that does not fit {w}x{h} pixels"))?;

    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(orient(rgb, orientation))
}

fn gray_to_rgb(w: u32, h: u32, gray: Vec<u8>) -> Option<RgbImage> {
    image::GrayImage::from_raw(w, h, gray).map(|g| DynamicImage::ImageLuma8(g).into_rgb8())
}

/// Native-endian 16-bit samples of `precision` bits to 8 bits, rounded.
fn reduce_u16_ne(bytes: &[u8], precision: u8) -> Vec<u8> {
    let max = (1u32 << precision.clamp(1, 16)) - 1;
    bytes
        .chunks_exact(2)
        .map(|pair| {
            let v = u32::from(u16::from_ne_bytes([pair[0], pair[1]])).min(max);
            ((v * 255 + max / 2) / max) as u8
        })
        .collect()
}

/// In place: CMYK (ink amounts, 0 = no ink, as jpeg-decoder returns them) to RGB, compacting
/// 4 bytes per pixel to 3 and truncating the buffer. `R = (255 - C) * (255 - K) / 255`, rounded as
/// in Pillow's `cmyk2rgb` (`MULDIV255`).
fn cmyk_to_rgb(pixels: &mut Vec<u8>) {
    fn muldiv255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    let n = pixels.len() / 4;
    for i in 0..n {
        let (c, m, y, k) = (
            u32::from(pixels[4 * i]),
            u32::from(pixels[4 * i + 1]),
            u32::from(pixels[4 * i + 2]),
            u32::from(pixels[4 * i + 3]),
        );
        let nk = 255 - k;
        pixels[3 * i] = (nk - muldiv255(c, nk)) as u8;
        pixels[3 * i + 1] = (nk - muldiv255(m, nk)) as u8;
        pixels[3 * i + 2] = (nk - muldiv255(y, nk)) as u8;
    }
    pixels.truncate(3 * n);
}

fn orient(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    img.into_rgb8()
}

fn image_reason(error: ImageError) -> String {
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

/// PNG, BMP, GIF (first frame), WebP and TIFF through the `image` crate, with its default
/// memory limits.
fn decode_with_image(bytes: &[u8], format: ImageFormat) -> std::result::Result<RgbImage, String> {
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(image_reason)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_reason)?;
    img.apply_orientation(orientation);
    Ok(flatten_over_white(img))
}

/// Drops alpha by compositing over white: `out = c * a + 255 * (1 - a)` with `a` in 0..=1.
/// 8-bit images use exact integer arithmetic (`(c * a + 255 * (255 - a) + 127) / 255`); 16-bit
/// and float images are composited in f32 and rounded.
pub fn flatten_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let eight_bit = matches!(
        img,
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_)
    );
    if eight_bit {
        let rgba = img.into_rgba8();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let a = u32::from(a);
            let mix = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            image::Rgb([mix(r), mix(g), mix(b)])
        })
    } else {
        let rgba = img.into_rgba32f();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let a = a.clamp(0.0, 1.0);
            let mix = |c: f32| ((c.clamp(0.0, 1.0) * a + (1.0 - a)) * 255.0).round() as u8;
            image::Rgb([mix(r), mix(g), mix(b)])
        })
    }
}

#[cfg(test)]
mod tests {
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
