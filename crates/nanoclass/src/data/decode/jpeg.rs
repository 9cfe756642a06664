//! JPEG through jpeg-decoder, with DCT-domain downscaling, the scan check of [`super::jpeg_scan`]
//! and the size policy of [`super::budget`] applied before any pixel buffer is allocated.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};
use jpeg_decoder::{CodingProcess, PixelFormat};

use super::budget::{Plan, check_size, rotates};
use super::jpeg_scan::{self, FrameHeader, ScanCheck};
use super::{DecodeOptions, MAX_DECODE_BYTES, orient};

/// Picks the DCT scale: the requested output size for jpeg-decoder's `Decoder::scale`, or `None`
/// to decode at full size. Scales are 1/8, 1/4, 1/2 (the sizes round up: `ceil(len * s / 8)`).
pub(super) fn dct_request(width: u16, height: u16, min_side: u32) -> Option<(u16, u16)> {
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

fn new_decoder(bytes: &[u8]) -> jpeg_decoder::Decoder<Cursor<&[u8]>> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    // A second guard behind the plan: jpeg-decoder refuses an output buffer above this.
    decoder.set_max_decoding_buffer_size(usize::try_from(MAX_DECODE_BYTES).unwrap_or(usize::MAX));
    decoder
}

/// The memory jpeg-decoder 0.3 holds while it decodes a `width x height` frame of `components`
/// components to an `out_w x out_h` image (the DCT scale is `out / size`, one of 1/8..1):
///
/// - progressive frames keep every coefficient until the last scan: `64 * blocks` i16 values;
/// - each component is decoded into a plane of `blocks * (8 * scale)^2` bytes (whole MCUs);
/// - the output buffer: `components * out_w * out_h` bytes (twice that for lossless JPEG above
///   8 bits);
/// - lossless frames keep two u16 planes per component (samples and differences).
///
/// `frame` is the SOF as parsed by [`jpeg_scan::frame_header`]; when it is missing or disagrees
/// with jpeg-decoder's size, every component is counted at full resolution with 4x4 MCUs of
/// padding, an upper bound.
fn decoder_bytes(
    info: &jpeg_decoder::ImageInfo,
    frame: Option<FrameHeader>,
    (out_w, out_h): (u64, u64),
) -> u64 {
    let (w, h) = (u64::from(info.width), u64::from(info.height));
    let components = match info.pixel_format {
        PixelFormat::L8 | PixelFormat::L16 => 1,
        PixelFormat::RGB24 => 3,
        PixelFormat::CMYK32 => 4,
    };
    let sample_bytes = if info.pixel_format == PixelFormat::L16 {
        2
    } else {
        1
    };
    let output = components * out_w * out_h * sample_bytes;
    if info.coding_process == CodingProcess::Lossless {
        // Lossless output is 16-bit RGB24 above 8 bits: count 2 bytes a sample either way.
        return components * w * h * 4 + components * out_w * out_h * 2;
    }
    let blocks = frame
        .filter(|f| (u64::from(f.width), u64::from(f.height)) == (w, h))
        .map_or(
            components * (w.div_ceil(8) + 4) * (h.div_ceil(8) + 4),
            |f| f.blocks,
        );
    // The IDCT size per block: the smallest of 1, 2, 4, 8 that gives the output width.
    let scale = [1, 2, 4, 8]
        .into_iter()
        .find(|&s| (w * s).div_ceil(8) >= out_w)
        .unwrap_or(8);
    let coefficients = if info.coding_process == CodingProcess::DctProgressive {
        blocks * 64 * 2
    } else {
        0
    };
    coefficients + blocks * scale * scale + output
}

pub(super) fn decode_jpeg(bytes: &[u8], opts: &DecodeOptions) -> Result<RgbImage, String> {
    let mut decoder = new_decoder(bytes);
    decoder.read_info().map_err(jpeg_reason)?;
    let info = decoder.info().ok_or("corrupt JPEG: no frame header")?;
    check_size(u64::from(info.width), u64::from(info.height))?;

    let request = opts
        .min_side
        .and_then(|n| dct_request(info.width, info.height, n));
    let (mut out_w, mut out_h) = (u64::from(info.width), u64::from(info.height));
    if let Some((w, h)) = request {
        let (sw, sh) = decoder.scale(w, h).map_err(jpeg_reason)?;
        if u32::from(sw.min(sh)) < opts.min_side.unwrap_or(0) {
            // jpeg-decoder chose a smaller scale than asked (tiny images): decode at full size.
            decoder = new_decoder(bytes);
            decoder.read_info().map_err(jpeg_reason)?;
        } else {
            (out_w, out_h) = (u64::from(sw), u64::from(sh));
        }
    }
    let frame = jpeg_scan::frame_header(bytes);
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let decoder_peak = decoder_bytes(&info, frame, (out_w, out_h));
    let output_bytes = match info.pixel_format {
        PixelFormat::L8 => out_w * out_h,
        PixelFormat::L16 => 2 * out_w * out_h,
        PixelFormat::RGB24 if info.coding_process == CodingProcess::Lossless => 6 * out_w * out_h,
        PixelFormat::RGB24 => 3 * out_w * out_h,
        PixelFormat::CMYK32 => 4 * out_w * out_h,
    };
    Plan {
        width: out_w,
        height: out_h,
        decoder: decoder_peak,
        output: output_bytes,
        // CMYK is converted in place; gray and 16-bit samples go to a new buffer.
        converts: match info.pixel_format {
            PixelFormat::RGB24 => info.coding_process == CodingProcess::Lossless,
            PixelFormat::CMYK32 => false,
            PixelFormat::L8 | PixelFormat::L16 => true,
        },
        rotates: rotates(orientation),
    }
    .check()?;

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

    let mut pixels = decoder.decode().map_err(jpeg_reason)?;
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

    // The orientation is read again: an APP1 segment after the frame header is only seen now.
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    orient(rgb, orientation)
}

fn gray_to_rgb(w: u32, h: u32, gray: Vec<u8>) -> Option<RgbImage> {
    image::GrayImage::from_raw(w, h, gray).map(|g| DynamicImage::ImageLuma8(g).into_rgb8())
}

/// Native-endian 16-bit samples of `precision` bits to 8 bits, rounded.
pub(super) fn reduce_u16_ne(bytes: &[u8], precision: u8) -> Vec<u8> {
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
pub(super) fn cmyk_to_rgb(pixels: &mut Vec<u8>) {
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
