//! Files whose headers claim sizes they do not hold: forged images of every format, a run
//! `config.json` with out-of-range sizes, and weights files whose shapes claim an impossible
//! head. Each must be refused with an error naming the file and the reason, before anything of
//! the claimed size is allocated. Before the decoder's size policy and the run configuration
//! checks, the images and the configuration aborted the process.

mod fuzz_support;

use std::io::Cursor;
use std::path::Path;

use fuzz_support::mutate::{crc32, fix_png_crcs};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use nanoclass::data::decode::{DecodeOptions, MAX_PIXELS, check_dimensions, decode_bytes};
use nanoclass::export::torch::{DType, StateTensor, write_pth};
use nanoclass::model::Arch;
use nanoclass::model::weights::load_net;
use nanoclass::run::Run;

const FULL: DecodeOptions = DecodeOptions { min_side: None };
const SCALED: DecodeOptions = DecodeOptions {
    min_side: Some(256),
};

fn reason(bytes: &[u8], name: &str, opts: &DecodeOptions) -> String {
    match decode_bytes(bytes, Path::new(name), opts) {
        Ok(img) => panic!("{name} decoded to {}x{}", img.width(), img.height()),
        Err(nanoclass::Error::Decode { path, reason }) => {
            assert_eq!(path, Path::new(name));
            reason
        }
        Err(other) => panic!("{name}: {other}"),
    }
}

fn assert_too_large(bytes: &[u8], name: &str, claim: &str) {
    for opts in [FULL, SCALED] {
        let reason = reason(bytes, name, &opts);
        assert!(
            reason.starts_with("image too large") && reason.contains(claim),
            "{name}: {reason}"
        );
    }
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// A PNG with an IHDR of `width x height` 8-bit RGB, then `idat` as its image data.
fn png_claiming(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn small() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(16, 16, |x, y| {
        Rgb([(x * 16) as u8, (y * 16) as u8, 99])
    }))
}

#[test]
fn png_claiming_2147483647_rows() {
    // 74 bytes: the signature, IHDR, 17 bytes of IDAT, IEND, every CRC valid.
    let png = png_claiming(
        1,
        0x7fff_ffff,
        &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(png.len(), 74);
    assert_too_large(&png, "tall.png", "1x2147483647");
}

#[test]
fn png_claiming_100000_by_100000() {
    // About 1.2 KB: a zlib stream of compressed zero rows cut after 1.1 KB.
    let mut z = vec![0x78, 0x01];
    z.extend(std::iter::repeat_n(0u8, 1100));
    let png = png_claiming(100_000, 100_000, &z);
    assert!((1100..1300).contains(&png.len()), "{}", png.len());
    assert_too_large(&png, "huge.png", "100000x100000");
}

#[test]
fn png_within_the_pixel_limit_but_not_the_memory_limit() {
    // 10 000 x 10 000 RGBA 16-bit: 100 megapixels is within MAX_PIXELS, but 800 MB of samples
    // plus the RGB copy is past the 512 MiB of one decode.
    let mut png = png_claiming(10_000, 10_000, &[0x78, 0x01]);
    png[24] = 16; // bit depth
    png[25] = 6; // RGBA
    fix_png_crcs(&mut png);
    let reason = reason(&png, "deep.png", &FULL);
    assert!(
        reason.starts_with("image too large to decode: 10000x10000 pixels need about 1050 MiB"),
        "{reason}"
    );
}

#[test]
fn gif_bmp_webp_tiff_claiming_huge_sizes() {
    // GIF: a 16x16 image on a 65535 x 65535 logical screen.
    let mut gif = encode(&small(), ImageFormat::Gif);
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert_too_large(&gif, "screen.gif", "65535x65535");

    // GIF: 10 000 x 10 000 is within the pixel limit, but the RGBA screen and the frame buffer
    // (2 x 400 MB) are not within one decode's memory.
    let mut gif = encode(&small(), ImageFormat::Gif);
    gif[6..10].copy_from_slice(&[0x10, 0x27, 0x10, 0x27]);
    let reason = reason(&gif, "wide.gif", &FULL);
    assert!(reason.starts_with("image too large to decode"), "{reason}");

    // BMP: 60 000 x 60 000 (top-down: negative height). The `image` crate's BMP decoder
    // refuses sides above 65 535 itself.
    let mut bmp = encode(&small(), ImageFormat::Bmp);
    bmp[18..22].copy_from_slice(&60_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&(-60_000i32).to_le_bytes());
    assert_too_large(&bmp, "huge.bmp", "60000x60000");

    // WebP (lossless, VP8L): 16383 x 16383, the largest size image-webp reads from the 14-bit
    // fields (width - 1, height - 1).
    let mut webp = encode(&small(), ImageFormat::WebP);
    assert_eq!(&webp[12..16], b"VP8L");
    let packed = 0x3FFEu32 | (0x3FFE << 14) | (u32::from(webp[24]) >> 4 & 1) << 28;
    webp[21..25].copy_from_slice(&packed.to_le_bytes());
    assert_too_large(&webp, "huge.webp", "16383x16383");

    // TIFF: ImageWidth and ImageLength set to 100 000 in the first IFD, and RowsPerStrip to
    // 2^32 - 1 (one strip for the whole image), so that the strip count stays consistent.
    let mut tiff = encode(&small(), ImageFormat::Tiff);
    let ifd = u32::from_le_bytes(tiff[4..8].try_into().unwrap()) as usize;
    let entries = u16::from_le_bytes([tiff[ifd], tiff[ifd + 1]]) as usize;
    for i in 0..entries {
        let e = ifd + 2 + 12 * i;
        let value = match u16::from_le_bytes([tiff[e], tiff[e + 1]]) {
            256 | 257 => 100_000u32,
            278 => u32::MAX,
            _ => continue,
        };
        tiff[e + 2..e + 4].copy_from_slice(&4u16.to_le_bytes()); // LONG
        tiff[e + 8..e + 12].copy_from_slice(&value.to_le_bytes());
    }
    assert_too_large(&tiff, "huge.tiff", "100000x100000");
}

/// The SOF segment's offset in a JPEG from the `image` encoder.
fn sof(jpeg: &[u8]) -> usize {
    jpeg.windows(2)
        .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
        .expect("SOF")
}

#[test]
fn jpeg_sizes_follow_the_decode_plan() {
    let jpeg = encode(&small(), ImageFormat::Jpeg);
    let at = sof(&jpeg);
    let with_size = |w: u16, h: u16| {
        let mut j = jpeg.clone();
        j[at + 5..at + 7].copy_from_slice(&h.to_be_bytes());
        j[at + 7..at + 9].copy_from_slice(&w.to_be_bytes());
        j
    };
    // 65535 x 65535: past the pixel limit, whatever the scale.
    assert_too_large(&with_size(65_535, 65_535), "huge.jpg", "65535x65535");

    // 12000 x 12000 is admitted when decoded for a model input (1/8 scale): the size checks
    // pass and the scan check finds the data missing.
    let big = with_size(12_000, 12_000);
    let scaled = reason(&big, "big.jpg", &SCALED);
    assert!(
        scaled.starts_with("corrupt JPEG: scan 1 holds data for only"),
        "{scaled}"
    );
    // At full size, the component planes and the output (3 + 3 bytes a pixel: the encoder writes
    // 4:4:4) exceed one decode's memory.
    let full = reason(&big, "big.jpg", &FULL);
    assert!(
        full.starts_with("image too large to decode: 12000x12000 pixels need about 824 MiB"),
        "{full}"
    );
}

#[test]
fn progressive_jpeg_coefficients_count() {
    // A progressive 4:4:4 frame keeps 2 bytes per sample of every component (864 MB at
    // 12000 x 12000), refused even when decoded at 1/8.
    let seed = fuzz_support::seeds::fixtures().join("fuzz/seeds/baseline_444.jpg");
    let mut jpeg = std::fs::read(&seed).expect("seed");
    let at = sof(&jpeg);
    jpeg[at + 1] = 0xC2; // SOF2: progressive
    jpeg[at + 5..at + 9].copy_from_slice(&[0x2E, 0xE0, 0x2E, 0xE0]); // 12000 x 12000
    let reason = reason(&jpeg, "progressive.jpg", &SCALED);
    assert!(
        reason.starts_with("image too large to decode: 1500x1500 pixels need about 837 MiB"),
        "{reason}"
    );
}

#[test]
fn video_frame_sizes_use_the_same_limits() {
    assert!(check_dimensions(1920, 1080).is_ok());
    assert!(check_dimensions(12_000, 12_000).is_ok());
    assert_eq!(u64::from(12_000u32) * 12_000, MAX_PIXELS);
    let err = check_dimensions(100_000, 100_000).unwrap_err();
    assert!(err.starts_with("image too large"), "{err}");
}

fn config_with(edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let (seed, labels) = fuzz_support::seeds::config_seeds().remove(0);
    let mut json: serde_json::Value = serde_json::from_slice(&seed.bytes).expect("seed JSON");
    edit(&mut json);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), json.to_string()).expect("write");
    std::fs::write(dir.path().join("labels.txt"), labels).expect("write");
    dir
}

#[test]
fn run_config_sizes_are_checked_on_open() {
    let ok = config_with(|_| {});
    Run::open(ok.path()).expect("the seed config opens");
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "/eval_preset/crop",
            100_000.into(),
            "eval_preset.crop = 100000 is outside the allowed range 32..=1024",
        ),
        (
            "/eval_preset/resize",
            0.into(),
            "eval_preset.resize = 0 is outside the allowed range 1..=1024",
        ),
        (
            "/train_preset/crop",
            4096.into(),
            "train_preset.crop = 4096 is outside the allowed range 32..=1024",
        ),
        (
            "/batch_size",
            1_000_000.into(),
            "batch_size = 1000000 is outside the allowed range 2..=1024",
        ),
        (
            "/epochs",
            0.into(),
            "epochs = 0 is outside the allowed range 1..=10000",
        ),
        (
            "/train_preset/scale/0",
            (-1.0).into(),
            "train_preset.scale[0] = -1 is outside the allowed range (0, 1]",
        ),
    ];
    for (pointer, value, expected) in cases {
        let dir = config_with(|json| *json.pointer_mut(pointer).expect(pointer) = value.clone());
        let err = Run::open(dir.path()).expect_err(pointer).to_string();
        let file = dir.path().join("config.json");
        assert!(
            err.starts_with(&format!("run {}: {expected}", file.display())),
            "{err}"
        );
    }
    // The eval crop also bounds what the predictor would allocate for one image; an open run
    // is usable, so `Predictor::open` on the first case fails at the same check.
    let dir = config_with(|json| json["eval_preset"]["crop"] = 100_000.into());
    let Err(err) = nanoclass::infer::predictor::Predictor::open(dir.path()) else {
        panic!("a crop of 100000 was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("eval_preset.crop = 100000"), "{err}");
}

fn f32_tensor(name: &str, shape: &[usize]) -> StateTensor {
    let numel: usize = shape.iter().product();
    StateTensor {
        name: name.to_owned(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        data: vec![0; numel * 4],
    }
}

#[test]
fn weights_whose_head_claims_two_billion_outputs() {
    // `fc.weight` of shape [2 * 10^9, 0] holds no bytes, so the file is consistent, and the
    // model is built with a head of that size: 2 * 10^9 x 512 floats (4 TB). burn allocates a
    // parameter when it is first used, and the shape check refuses the file before that.
    let tensors = [
        f32_tensor("conv1.weight", &[64, 3, 7, 7]),
        f32_tensor("fc.weight", &[2_000_000_000, 0]),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let pth = dir.path().join("head.pth");
    write_pth(&pth, &tensors).expect("write .pth");
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let v = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                &t.data,
            )
            .expect("view");
            (t.name.clone(), v)
        })
        .collect();
    let st = dir.path().join("head.safetensors");
    std::fs::write(&st, safetensors::serialize(views, None).expect("serialize")).expect("write");
    let device = nanoclass::infer::device::default_device();
    for path in [pth, st] {
        let Err(err) = load_net(Arch::Resnet18, &path, 2, None, &device) else {
            panic!("{} was accepted", path.display());
        };
        let err = err.to_string();
        assert!(
            err.contains(&*path.to_string_lossy()) && err.contains("2000000000"),
            "{err}"
        );
    }
}
