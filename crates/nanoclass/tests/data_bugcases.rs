//! The data module against the known bad inputs of /work/shared/bug-cases.md (B01-B18) and the
//! formats and layouts it must read. Inputs are built here in temporary folders with the `image`
//! and `png` crates or by hand; the CMYK JPEG and the torchvision references come from
//! `tests/fixtures/data/make_fixtures.py`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::shared_data;
use image::{ImageFormat, Rgb, RgbImage};
use nanoclass::Error;
use nanoclass::data::decode::{DecodeOptions, decode_bytes, decode_file};
use nanoclass::data::folder::{
    Dataset, parse_dli_point, sample_counts, scan_image_folder, scan_regression_folder,
};
use nanoclass::data::labels::{check_label_count, parse_labels, read_labels, write_labels};
use nanoclass::data::presets::{ColorOp, EvalPreset, Normalization, apply_color_ops};
use nanoclass::data::split::stratified_split;

const FULL: DecodeOptions = DecodeOptions { min_side: None };

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("path has a parent")).expect("create folder");
    std::fs::write(path, bytes).expect("write file");
}

fn jpeg_bytes(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .expect("encode JPEG in memory");
    out
}

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .expect("encode PNG in memory");
    out.into_inner()
}

/// A small valid JPEG (16x16 gray-blue).
fn tiny_jpeg() -> Vec<u8> {
    jpeg_bytes(&RgbImage::from_pixel(16, 16, Rgb([40, 90, 200])), 90)
}

/// A 64x64 JPEG with detail in every block, so that its scan data fills the whole file.
fn noisy_jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        let v = (x * 31 + y * 17) ^ (x * y);
        Rgb([
            (v % 256) as u8,
            ((v / 3) % 256) as u8,
            ((x + 2 * y) % 256) as u8,
        ])
    });
    jpeg_bytes(&img, 90)
}

fn decode_reason(bytes: &[u8], path: &Path) -> String {
    match decode_bytes(bytes, path, &FULL) {
        Err(Error::Decode { path: p, reason }) => {
            assert_eq!(p, path, "the error names the file");
            reason
        }
        Err(other) => panic!("expected Error::Decode for {}, got {other}", path.display()),
        Ok(img) => panic!(
            "expected an error for {}, got a {}x{} image",
            path.display(),
            img.width(),
            img.height()
        ),
    }
}

fn class_names(ds: &Dataset) -> Vec<&str> {
    ds.classes.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// Folder scanning: B01, B02, B03, B04, B06, B15, B18

#[test]
fn b01_hidden_checkpoint_folder_is_not_a_class() {
    for with_copy in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(&root.join("a/1.jpg"), &tiny_jpeg());
        write(&root.join("b/1.jpg"), &tiny_jpeg());
        std::fs::create_dir_all(root.join(".ipynb_checkpoints")).expect("mkdir");
        if with_copy {
            write(&root.join(".ipynb_checkpoints/1.jpg"), &tiny_jpeg());
        }
        let ds = scan_image_folder(root).expect("scan");
        assert_eq!(class_names(&ds), ["a", "b"]);
        let labels: Vec<usize> = ds.train.iter().map(|s| s.label).collect();
        assert_eq!(labels, [0, 1]);
        let notes: Vec<&String> = ds
            .warnings
            .iter()
            .filter(|w| w.contains(".ipynb_checkpoints"))
            .collect();
        assert_eq!(notes.len(), 1, "logged once: {:?}", ds.warnings);
        assert_eq!(notes[0], "ignored hidden folder .ipynb_checkpoints");
    }
}

#[test]
fn b02_ds_store_and_os_junk_are_never_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(&root.join(".DS_Store"), b"\x00\x00\x00\x01Bud1junk");
    write(&root.join("cat/.DS_Store"), b"\x00\x00\x00\x01Bud1junk");
    write(&root.join("cat/Thumbs.db"), b"\xd0\xcf\x11\xe0junk");
    write(&root.join("cat/desktop.ini"), b"[.ShellClassInfo]\r\n");
    write(&root.join("cat/1.jpg"), &tiny_jpeg());
    write(&root.join("dog/1.jpg"), &tiny_jpeg());
    let ds = scan_image_folder(root).expect("scan");
    assert_eq!(class_names(&ds), ["cat", "dog"]);
    assert_eq!(ds.train.len(), 2);
    assert_eq!(sample_counts(&ds.train, 2), [1, 1]);
}

#[test]
fn b03_macos_archive_debris_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = png_bytes(&image::DynamicImage::ImageRgb8(RgbImage::from_pixel(
        8,
        8,
        Rgb([9, 9, 9]),
    )));
    let mut apple_double = vec![0x00, 0x05, 0x16, 0x07, 0x00, 0x02, 0x00, 0x00];
    apple_double.resize(4096, 0);
    write(&root.join("cat/1.png"), &png);
    write(&root.join("cat/._1.png"), &apple_double);
    write(&root.join("__MACOSX/cat/._1.png"), &apple_double);
    write(&root.join("dog/1.png"), &png);
    let ds = scan_image_folder(root).expect("scan");
    assert_eq!(class_names(&ds), ["cat", "dog"]);
    assert_eq!(ds.train.len(), 2);
    assert!(
        ds.train
            .iter()
            .all(|s| !s.path.to_string_lossy().contains("._"))
    );
    assert!(
        ds.warnings.iter().any(|w| w.contains("__MACOSX")),
        "{:?}",
        ds.warnings
    );
    // Decoded anyway (e.g. given on the command line): an error, not a panic.
    let reason = decode_reason(&apple_double, &root.join("cat/._1.png"));
    assert!(reason.starts_with("unknown image format"), "{reason}");
    assert!(reason.contains("AppleDouble"), "{reason}");
}

#[test]
fn b04a_empty_training_class_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(&root.join("train/a/1.jpg"), &tiny_jpeg());
    std::fs::create_dir_all(root.join("train/b")).expect("mkdir");
    let err = scan_image_folder(root).expect_err("train/b is empty");
    assert!(matches!(err, Error::Dataset { .. }));
    let message = err.to_string();
    assert!(message.contains("train/b"), "{message}");
    assert!(message.contains("no image"), "{message}");
}

#[test]
fn b04b_empty_val_split_warns_and_gives_no_figure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(&root.join("train/a/1.jpg"), &tiny_jpeg());
    write(&root.join("train/b/1.jpg"), &tiny_jpeg());
    std::fs::create_dir_all(root.join("val/a")).expect("mkdir");
    std::fs::create_dir_all(root.join("val/b")).expect("mkdir");
    let ds = scan_image_folder(root).expect("scan");
    assert_eq!(class_names(&ds), ["a", "b"]);
    assert_eq!(ds.train.len(), 2);
    assert_eq!(ds.val, Some(vec![]));
    assert!(ds.test.is_none());
    assert!(
        ds.warnings
            .iter()
            .any(|w| w == "val/ is empty: no validation figure"),
        "{:?}",
        ds.warnings
    );
}

#[test]
fn b06_one_class_is_an_error_but_regression_is_fine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for i in 1..=3 {
        write(&root.join(format!("only/{i}.jpg")), &tiny_jpeg());
    }
    let message = scan_image_folder(root).expect_err("one class").to_string();
    assert!(
        message.contains("at least 2 classes are needed"),
        "{message}"
    );

    let reg = tempfile::tempdir().expect("tempdir");
    write(&reg.path().join("only/10_20_0b1c-4d.jpg"), &tiny_jpeg());
    let ds = scan_regression_folder(reg.path()).expect("regression has no class minimum");
    assert_eq!(class_names(&ds), ["only"]);
    assert_eq!(ds.train[0].point, Some([10.0, 20.0]));
}

#[test]
fn b15_upper_case_extensions_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let png = png_bytes(&image::DynamicImage::ImageRgb8(RgbImage::from_pixel(
        8,
        8,
        Rgb([1, 2, 3]),
    )));
    write(&root.join("a/IMG_0001.JPG"), &tiny_jpeg());
    write(&root.join("a/x.Jpeg"), &tiny_jpeg());
    write(&root.join("a/y.PNG"), &png);
    write(&root.join("b/z.jpg"), &tiny_jpeg());
    let ds = scan_image_folder(root).expect("scan");
    assert_eq!(ds.train.len(), 4);
    assert_eq!(sample_counts(&ds.train, ds.classes.len()), [3, 1]);
    for sample in &ds.train {
        decode_file(&sample.path, &FULL).expect("every counted file decodes");
    }
}

#[test]
fn b18_non_ascii_class_names_survive_scan_and_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    for class in ["красный", "日本", "red apple"] {
        write(&root.join(class).join("1.jpg"), &tiny_jpeg());
    }
    let ds = scan_image_folder(&root).expect("scan");
    // Byte order of the UTF-8 names, as Python's sorted().
    assert_eq!(class_names(&ds), ["red apple", "красный", "日本"]);
    let labels_path = dir.path().join("labels.txt");
    write_labels(&labels_path, &ds.classes).expect("write labels");
    assert_eq!(read_labels(&labels_path).expect("read labels"), ds.classes);
    // Shared with the model like the run's other files, not left private like a temp file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&labels_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "labels.txt mode {:o}", mode & 0o777);
    }

    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice("красный\n日本\nred apple\n".as_bytes());
    write(&labels_path, &with_bom);
    let read = read_labels(&labels_path).expect("read labels with BOM");
    assert_eq!(read, ["красный", "日本", "red apple"]);
    assert!(!read[0].starts_with('\u{FEFF}'));
}

// ---------------------------------------------------------------------------------------------
// Bad files: B07, B08, B09

#[test]
fn b07_truncated_jpeg_is_a_per_file_error_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let good = noisy_jpeg(64, 64);
    let cut = &good[..good.len() / 2];
    assert_ne!(&cut[cut.len() - 2..], &[0xFF, 0xD9]);
    write(&root.join("a/good.jpg"), &good);
    write(&root.join("a/truncated.jpg"), cut);
    write(&root.join("b/good.jpg"), &good);
    let ds = scan_image_folder(root).expect("scan lists files without decoding");
    let results: Vec<_> = ds
        .train
        .iter()
        .map(|s| decode_file(&s.path, &FULL))
        .collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let full_path = root.join("a/truncated.jpg").display().to_string();
    assert!(
        failed[0].starts_with(&format!("{full_path}: truncated")),
        "{}",
        failed[0]
    );
}

#[test]
fn b08_broken_files_give_errors_not_panics() {
    let dir = Path::new("/data/broken");
    let good = noisy_jpeg(64, 64);

    // Truncated JPEG (B07's file).
    let reason = decode_reason(&good[..good.len() / 2], &dir.join("truncated.jpg"));
    assert!(reason.starts_with("truncated"), "{reason}");

    // 0-byte PNG.
    assert_eq!(decode_reason(&[], &dir.join("x.png")), "empty file");

    // A PNG whose IDAT chunk is cut in half.
    let noisy = RgbImage::from_fn(64, 64, |x, y| {
        Rgb([((x * 7) ^ (y * 3)) as u8, (x * y) as u8, (x + y) as u8])
    });
    let png = png_bytes(&image::DynamicImage::ImageRgb8(noisy));
    let idat = png
        .windows(4)
        .position(|w| w == b"IDAT")
        .expect("IDAT chunk")
        - 4;
    let idat_len = u32::from_be_bytes(png[idat..idat + 4].try_into().expect("4 bytes")) as usize;
    let cut_png = &png[..idat + 8 + idat_len / 2];
    let reason = decode_reason(cut_png, &dir.join("cut.png"));
    assert!(reason.starts_with("truncated"), "{reason}");

    // A JPEG whose SOF claims twice the height its scan data holds.
    let mut tall = good.clone();
    let sof = tall
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    tall[sof + 5..sof + 7].copy_from_slice(&128u16.to_be_bytes());
    let reason = decode_reason(&tall, &dir.join("tall.jpg"));
    assert!(reason.starts_with("corrupt JPEG"), "{reason}");
    assert!(reason.contains("64x128"), "{reason}");

    // The opposite: a SOF smaller than the scan decodes the announced part.
    let mut short = good.clone();
    short[sof + 5..sof + 7].copy_from_slice(&32u16.to_be_bytes());
    let img =
        decode_bytes(&short, &dir.join("short.jpg"), &FULL).expect("decodes the first 32 rows");
    assert_eq!(img.dimensions(), (64, 32));
}

#[test]
fn b09_format_comes_from_the_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cat = dir.path().join("cat");
    write(&cat.join("0.jpg"), b"");
    write(
        &cat.join("page.jpg"),
        b"<!DOCTYPE html><html><body>Not found</body></html>",
    );
    let png = png_bytes(&image::DynamicImage::ImageRgb8(RgbImage::from_pixel(
        6,
        4,
        Rgb([10, 200, 30]),
    )));
    write(&cat.join("real.jpg"), &png);
    write(&cat.join("ok.jpg"), &tiny_jpeg());

    let err = decode_file(&cat.join("0.jpg"), &FULL)
        .expect_err("empty")
        .to_string();
    assert_eq!(err, format!("{}: empty file", cat.join("0.jpg").display()));
    let err = decode_file(&cat.join("page.jpg"), &FULL)
        .expect_err("html")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: unknown image format",
            cat.join("page.jpg").display()
        )),
        "{err}"
    );
    let real = decode_file(&cat.join("real.jpg"), &FULL).expect("PNG bytes named .jpg load");
    assert_eq!(
        (real.dimensions(), real.get_pixel(0, 0).0),
        ((6, 4), [10, 200, 30])
    );
    decode_file(&cat.join("ok.jpg"), &FULL).expect("ok.jpg loads");
}

// ---------------------------------------------------------------------------------------------
// Pixel rules: B10, B11, B14, CMYK, 16-bit, DCT scaling

#[test]
fn b10_grayscale_inputs_become_three_equal_channels() {
    let gray = image::GrayImage::from_pixel(8, 8, image::Luma([100]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
        .encode_image(&gray)
        .expect("encode gray JPEG");
    let gray_alpha = image::GrayAlphaImage::from_pixel(8, 8, image::LumaA([100, 255]));
    let png = png_bytes(&image::DynamicImage::ImageLumaA8(gray_alpha));
    for (bytes, name) in [(jpeg, "gray.jpg"), (png, "gray_alpha.png")] {
        let img = decode_bytes(&bytes, Path::new(name), &FULL).expect("decodes");
        assert_eq!(img.dimensions(), (8, 8));
        assert!(
            img.pixels().all(|p| p.0 == [100, 100, 100]),
            "{name}: {:?}",
            img.get_pixel(3, 3)
        );
        let input = EvalPreset::default().apply(&img);
        assert_eq!(input.len(), 3 * 224 * 224);
    }
}

#[test]
fn b11a_rgba_is_composited_over_white() {
    let rgba = image::RgbaImage::from_raw(
        2,
        2,
        vec![255, 0, 0, 0, 0, 0, 255, 255, 0, 255, 0, 128, 0, 0, 0, 255],
    )
    .expect("2x2 pixels");
    let png = png_bytes(&image::DynamicImage::ImageRgba8(rgba));
    let img = decode_bytes(&png, Path::new("rgba.png"), &FULL).expect("decodes");
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 0, 255]);
    let [r, g, b] = img.get_pixel(0, 1).0;
    assert!(
        r.abs_diff(127) <= 1 && g == 255 && b.abs_diff(127) <= 1,
        "{:?}",
        [r, g, b]
    );
    assert_eq!(img.get_pixel(1, 1).0, [0, 0, 0]);
}

#[test]
fn b11b_palette_with_trns_equals_its_rgba_equivalent() {
    // 4x4 indexed PNG, palette [red, blue], tRNS makes entry 0 fully transparent.
    let indices: Vec<u8> = (0..16).map(|i| u8::from((i + i / 4) % 2 == 1)).collect();
    let mut palette_png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut palette_png, 4, 4);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![255, 0, 0, 0, 0, 255]);
        encoder.set_trns(vec![0]);
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(&indices).expect("png data");
    }
    let rgba = image::RgbaImage::from_fn(4, 4, |x, y| {
        if indices[(y * 4 + x) as usize] == 0 {
            image::Rgba([255, 0, 0, 0])
        } else {
            image::Rgba([0, 0, 255, 255])
        }
    });
    let rgba_png = png_bytes(&image::DynamicImage::ImageRgba8(rgba));
    let from_palette =
        decode_bytes(&palette_png, Path::new("palette.png"), &FULL).expect("palette");
    let from_rgba = decode_bytes(&rgba_png, Path::new("rgba.png"), &FULL).expect("rgba");
    assert_eq!(from_palette, from_rgba);
    assert_eq!(from_palette.get_pixel(0, 0).0, [255, 255, 255]);
    assert_eq!(from_palette.get_pixel(1, 0).0, [0, 0, 255]);
}

/// Inserts an APP1 EXIF segment holding only the Orientation tag right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2A\x00\x00\x00\x08"); // big-endian TIFF header, IFD0 at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(
        &u16::try_from(payload.len() + 2)
            .expect("small")
            .to_be_bytes(),
    );
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn close(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

#[test]
fn b14_exif_orientation_6_turns_landscape_into_portrait() {
    let img = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let jpeg = with_exif_orientation(&jpeg_bytes(&img, 95), 6);
    let out = decode_bytes(&jpeg, Path::new("portrait.jpg"), &FULL).expect("decodes");
    assert_eq!(out.dimensions(), (20, 40));
    assert!(
        close(out.get_pixel(10, 5).0, [255, 0, 0], 30),
        "top: {:?}",
        out.get_pixel(10, 5)
    );
    assert!(
        close(out.get_pixel(10, 34).0, [0, 0, 255], 30),
        "bottom: {:?}",
        out.get_pixel(10, 34)
    );
}

#[test]
fn exif_orientation_all_eight_values() {
    // 3 x 2 blocks of 16x16 pixels, each its own colour.
    let colours = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [255, 0, 255],
    ];
    let (w, h) = (48u32, 32u32);
    let stored = RgbImage::from_fn(w, h, |x, y| Rgb(colours[(y / 16 * 3 + x / 16) as usize]));
    let jpeg = jpeg_bytes(&stored, 95);
    // Display pixel (x, y) comes from stored pixel source(x, y) (EXIF 2.32, Orientation tag).
    let source = |o: u16, x: u32, y: u32| -> (u32, u32) {
        match o {
            1 => (x, y),
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            _ => (w - 1 - y, x),
        }
    };
    for orientation in 1..=8u16 {
        let out = decode_bytes(
            &with_exif_orientation(&jpeg, orientation),
            Path::new("o.jpg"),
            &FULL,
        )
        .expect("decodes");
        let expected_size = if orientation >= 5 { (h, w) } else { (w, h) };
        assert_eq!(out.dimensions(), expected_size, "orientation {orientation}");
        for y in (8..out.height()).step_by(16) {
            for x in (8..out.width()).step_by(16) {
                let (sx, sy) = source(orientation, x, y);
                let want = stored.get_pixel(sx, sy).0;
                let got = out.get_pixel(x, y).0;
                assert!(
                    close(got, want, 40),
                    "orientation {orientation} at ({x},{y}): {got:?} vs {want:?}"
                );
            }
        }
    }
}

#[test]
fn cmyk_jpeg_converts_like_pillow() {
    let path = fixtures().join("cmyk.jpg");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("cmyk_expected.json")).expect("read expectations"),
    )
    .expect("json");
    let img = decode_file(&path, &FULL).expect("CMYK JPEG decodes");
    assert_eq!(img.dimensions(), (64, 16));
    let pillow = expected["pillow_rgb"].as_array().expect("array");
    for (i, want) in pillow.iter().enumerate() {
        let want: Vec<u8> = want
            .as_array()
            .expect("rgb")
            .iter()
            .map(|v| v.as_u64().expect("u8") as u8)
            .collect();
        let got = img.get_pixel(16 * i as u32 + 8, 8).0;
        assert!(
            close(got, [want[0], want[1], want[2]], 3),
            "block {i}: {got:?} vs Pillow {want:?}"
        );
    }
    // The ideal values of pure cyan, magenta and yellow ink.
    assert!(close(img.get_pixel(8, 8).0, [0, 255, 255], 3));
    assert!(close(img.get_pixel(24, 8).0, [255, 0, 255], 3));
    assert!(close(img.get_pixel(40, 8).0, [255, 255, 0], 3));
}

#[test]
fn sixteen_bit_png_is_reduced_to_eight() {
    let img: image::ImageBuffer<Rgb<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(3, 1, |x, _| match x {
            0 => Rgb([65535, 0, 32896]),
            1 => Rgb([257 * 100, 257 * 200, 257 * 50]),
            _ => Rgb([0, 65535, 0]),
        });
    let png = png_bytes(&image::DynamicImage::ImageRgb16(img));
    let out = decode_bytes(&png, Path::new("deep.png"), &FULL).expect("16-bit PNG decodes");
    assert_eq!(out.get_pixel(0, 0).0, [255, 0, 128]);
    assert_eq!(out.get_pixel(1, 0).0, [100, 200, 50]);
    assert_eq!(out.get_pixel(2, 0).0, [0, 255, 0]);

    // 16-bit with alpha: half-transparent black over white is mid gray.
    let la: image::ImageBuffer<image::LumaA<u16>, Vec<u16>> =
        image::ImageBuffer::from_pixel(1, 1, image::LumaA([0, 32768]));
    let png = png_bytes(&image::DynamicImage::ImageLumaA16(la));
    let out = decode_bytes(&png, Path::new("deep_alpha.png"), &FULL).expect("decodes");
    assert_eq!(out.get_pixel(0, 0).0, [127, 127, 127]);
}

#[test]
fn jpeg_dct_downscaling_keeps_the_shorter_side() {
    let big = noisy_jpeg(2000, 1500);
    let opts = DecodeOptions {
        min_side: Some(256),
    };
    let img = decode_bytes(&big, Path::new("big.jpg"), &opts).expect("decodes");
    let short = img.width().min(img.height());
    assert!((256..512).contains(&short), "shorter side {short}");
    assert_eq!(img.dimensions(), (500, 375)); // 1/4
    // The eval preset's own request gives the same.
    assert_eq!(EvalPreset::default().decode_min_side(), 256);
    // A JPEG already smaller than the request decodes at full size.
    let small = decode_bytes(&noisy_jpeg(300, 200), Path::new("s.jpg"), &opts).expect("decodes");
    assert_eq!(small.dimensions(), (300, 200));
}

#[test]
fn real_datasets_scan_with_their_published_counts() {
    let data = shared_data();
    // SHA256SUMS and SOURCE.md sit at each dataset root: never classes, never samples.
    let ds = scan_image_folder(&data.join("hymenoptera")).expect("scan hymenoptera");
    assert_eq!(class_names(&ds), ["ants", "bees"]);
    assert_eq!(
        (ds.train.len(), ds.val.as_ref().map(Vec::len)),
        (244, Some(153))
    );
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    let ds = scan_image_folder(&data.join("clocks")).expect("scan clocks");
    assert_eq!(ds.classes.len(), 12);
    assert_eq!(
        (ds.classes[0].as_str(), ds.classes[11].as_str()),
        ("01", "12")
    );
    assert_eq!(
        (ds.train.len(), ds.val.as_ref().map(Vec::len)),
        (503, Some(120))
    );
    let ds = scan_image_folder(&data.join("imagenet_sanity")).expect("val-only set");
    assert_eq!(class_names(&ds), ["cat", "eagle", "espresso"]);
    assert_eq!(
        (ds.train.len(), ds.val.as_ref().map(Vec::len)),
        (0, Some(3))
    );
}

#[test]
fn real_photos_decode() {
    let ants = shared_data().join("hymenoptera/train/ants");
    let entries = std::fs::read_dir(&ants).expect("list hymenoptera/train/ants");
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("list").path();
        let img = decode_file(&path, &FULL).unwrap_or_else(|e| panic!("{e}"));
        assert!(img.width() > 0 && img.height() > 0);
        let scaled = decode_file(
            &path,
            &DecodeOptions {
                min_side: Some(256),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(scaled.width().min(scaled.height()) >= 256.min(img.width().min(img.height())));
        count += 1;
    }
    assert!(count >= 100, "expected the 124 ant photos, found {count}");
}

// ---------------------------------------------------------------------------------------------
// Labels (B17), DLI names, split, presets against torchvision

#[test]
fn b17_labels_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("labels.txt");
    for text in ["a\nb\n\n", "a\r\nb\r\n"] {
        write(&path, text.as_bytes());
        let labels = read_labels(&path).expect("read");
        assert_eq!(labels, ["a", "b"], "{text:?}");
        check_label_count(&path, &labels, 2).expect("2 labels, 2 outputs");
    }
    write(&path, b"a\nb\nc\n");
    let labels = read_labels(&path).expect("read");
    let message = check_label_count(&path, &labels, 2)
        .expect_err("3 vs 2")
        .to_string();
    assert!(
        message.contains("3 labels") && message.contains("2 outputs"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(parse_labels("  a  \n\tb\n"), ["a", "b"]);
}

#[test]
fn dli_regression_names() {
    assert_eq!(
        parse_dli_point(Path::new("face/12_200_3f2a-11ee_b1c2.jpg")).expect("parses"),
        [12.0, 200.0]
    );
    for bad in ["face/abc.jpg", "face/12_x_u.jpg"] {
        let message = parse_dli_point(Path::new(bad))
            .expect_err("malformed")
            .to_string();
        assert!(message.contains(bad), "{message}");
    }
}

#[test]
fn split_is_stratified_and_seeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (class, n) in [("a", 10), ("b", 5)] {
        for i in 0..n {
            write(
                &dir.path().join(class).join(format!("{i}.jpg")),
                &tiny_jpeg(),
            );
        }
    }
    let ds = scan_image_folder(dir.path()).expect("scan");
    let (train, val) = stratified_split(&ds.train, 2, 0.2, 1234);
    assert_eq!(sample_counts(&val, 2), [2, 1]);
    assert_eq!(sample_counts(&train, 2), [8, 4]);
    assert_eq!(stratified_split(&ds.train, 2, 0.2, 1234), (train, val));
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read fixture");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn eval_preset_matches_torchvision() {
    let img = decode_file(&fixtures().join("preset_input.png"), &FULL).expect("fixture");
    let preset = EvalPreset {
        resize: 32,
        crop: 28,
        norm: Normalization::IMAGENET,
    };
    let ours = preset.apply(&img);
    let torchvision = read_f32(&fixtures().join("eval_expected.bin"));
    assert_eq!(ours.len(), torchvision.len());
    // Pillow's bilinear resize and the image crate's Triangle filter round a few values
    // differently (by 1 level of 255 at most on this image): allow 1.5 levels in normalised units.
    // A crop shifted by one pixel, or any other resize rule, differs by tens of levels on noise.
    let tolerance = 1.5 / 255.0 / 0.224;
    let worst = ours
        .iter()
        .zip(&torchvision)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tolerance,
        "largest difference {worst} > {tolerance}"
    );
}

#[test]
fn color_jitter_matches_torchvision() {
    let img = decode_file(&fixtures().join("preset_input.png"), &FULL).expect("fixture");
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut chw = vec![0.0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(p.0[c]) / 255.0;
        }
    }
    let expected = read_f32(&fixtures().join("jitter_expected.bin"));
    let ops = [
        ColorOp::Brightness(1.15),
        ColorOp::Contrast(0.85),
        ColorOp::Saturation(1.2),
        ColorOp::Hue(0.13),
    ];
    for (k, op) in ops.into_iter().enumerate() {
        let mut ours = chw.clone();
        apply_color_ops(&mut ours, &[op]);
        let want = &expected[k * 3 * plane..(k + 1) * 3 * plane];
        let worst = ours
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{op:?}: largest difference {worst}");
    }
}

#[test]
fn labels_write_is_atomic_over_an_existing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("labels.txt");
    let mut old = std::fs::File::create(&path).expect("create");
    old.write_all(b"old\n").expect("write");
    drop(old);
    write_labels(&path, &["cat".to_owned(), "dog".to_owned()]).expect("write");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "cat\ndog\n");
}

/// Held-out that holds: a folder of real photos, each saved three times (the original JPEG, a
/// re-encoded copy a little brighter, a copy resized to 90%) under unrelated names, forms one
/// capture group per photo, and the generated split never puts copies of one photo on both
/// sides. A `val/` folder holding such a copy is reported by name.
#[test]
fn near_copies_form_groups_that_the_split_keeps_whole() {
    use nanoclass::data::groups::{GroupRules, capture_groups, fingerprints, near_copy_warning};
    use nanoclass::data::split::grouped_split;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("set");
    let mut photo_of = std::collections::HashMap::new();
    for class in ["ants", "bees"] {
        let photos: Vec<PathBuf> = {
            let mut v: Vec<PathBuf> =
                std::fs::read_dir(shared_data().join("hymenoptera/train").join(class))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
            v.sort();
            v.truncate(6);
            v
        };
        for (i, p) in photos.iter().enumerate() {
            let img = decode_file(p, &FULL).unwrap();
            let brighter = RgbImage::from_fn(img.width(), img.height(), |x, y| {
                let q = img.get_pixel(x, y).0;
                Rgb(q.map(|c| c.saturating_add(3)))
            });
            let smaller = image::imageops::resize(
                &img,
                img.width() * 9 / 10,
                img.height() * 9 / 10,
                image::imageops::FilterType::Triangle,
            );
            let names = [
                format!("p{i}.jpg"),
                format!("z{}-copy.jpg", 5 - i),
                format!("m{i}x.jpg"),
            ];
            write(
                &root.join(class).join(&names[0]),
                &std::fs::read(p).unwrap(),
            );
            write(
                &root.join(class).join(&names[1]),
                &jpeg_bytes(&brighter, 85),
            );
            write(&root.join(class).join(&names[2]), &jpeg_bytes(&smaller, 90));
            for n in names {
                photo_of.insert(root.join(class).join(n), format!("{class}{i}"));
            }
        }
    }
    let ds = scan_image_folder(&root).unwrap();
    assert_eq!(ds.train.len(), 36);
    let prints = fingerprints(&ds.train);
    let groups = capture_groups(&ds.train, &prints, &GroupRules::default());
    for (i, s) in ds.train.iter().enumerate() {
        for (j, t) in ds.train.iter().enumerate() {
            assert_eq!(
                groups[i] == groups[j],
                photo_of[&s.path] == photo_of[&t.path],
                "{} and {}",
                s.path.display(),
                t.path.display()
            );
        }
    }
    for seed in 0..8 {
        let split = grouped_split(&ds.train, &groups, 2, 0.2, seed);
        assert!(split.unsplittable.is_empty());
        // round(0.2 * 18) = 4 places per class: one photo's 3 copies fit, two do not.
        assert_eq!(split.val.len(), 6, "seed {seed}");
        for v in &split.val {
            assert!(
                split
                    .train
                    .iter()
                    .all(|t| photo_of[&t.path] != photo_of[&v.path]),
                "seed {seed}: a copy of {} is in training",
                v.path.display()
            );
        }
    }

    // An ImageFolder with a val/ folder: a copy in val/ is named, other photos are not.
    let tv = dir.path().join("tv");
    let ants = shared_data().join("hymenoptera/train/ants");
    let mut a: Vec<PathBuf> = std::fs::read_dir(&ants)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    a.sort();
    for p in &a[..4] {
        write(
            &tv.join("train/ants").join(p.file_name().unwrap()),
            &std::fs::read(p).unwrap(),
        );
    }
    let bee = shared_data().join("hymenoptera/train/bees");
    let b: PathBuf = std::fs::read_dir(&bee)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    write(&tv.join("train/bees/b.jpg"), &std::fs::read(&b).unwrap());
    write(
        &tv.join("val/ants/other.jpg"),
        &std::fs::read(&a[10]).unwrap(),
    );
    let ds = scan_image_folder(&tv).unwrap();
    let val = ds.val.clone().unwrap();
    assert_eq!(near_copy_warning(&ds.root, &ds.train, &val, "val/"), None);
    let img = decode_file(&a[2], &FULL).unwrap();
    write(&tv.join("val/ants/again.jpg"), &jpeg_bytes(&img, 80));
    let ds = scan_image_folder(&tv).unwrap();
    let val = ds.val.clone().unwrap();
    let w = near_copy_warning(&ds.root, &ds.train, &val, "val/").expect("the copy is found");
    let original = format!("train/ants/{}", a[2].file_name().unwrap().to_string_lossy());
    assert!(
        w.starts_with("1 of 2 val/ images")
            && w.contains("val/ants/again.jpg")
            && w.contains(&original),
        "{w}"
    );
}
