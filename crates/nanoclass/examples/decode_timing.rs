// Temporary timing harness (not committed): decode real photos and PNG versions of them.
use nanoclass::data::decode::{DecodeOptions, decode_bytes};
use std::path::Path;
use std::time::Instant;

fn main() {
    let dir = Path::new("/work/shared/data/hymenoptera/train/ants");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let jpegs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let full = DecodeOptions { min_side: None };
    let scaled = DecodeOptions {
        min_side: Some(256),
    };
    // PNG versions of the first 40 photos: RGB8, RGBA8, RGB16.
    let mut pngs: Vec<(&str, Vec<u8>)> = Vec::new();
    for b in jpegs.iter().take(40) {
        let img = image::load_from_memory(b).unwrap();
        for (kind, d) in [
            ("rgb8", image::DynamicImage::ImageRgb8(img.to_rgb8())),
            ("rgba8", image::DynamicImage::ImageRgba8(img.to_rgba8())),
            ("rgb16", image::DynamicImage::ImageRgb16(img.to_rgb16())),
        ] {
            let mut out = std::io::Cursor::new(Vec::new());
            d.write_to(&mut out, image::ImageFormat::Png).unwrap();
            pngs.push((kind, out.into_inner()));
        }
    }
    for round in 0..3 {
        for (name, opts) in [("jpeg full", full), ("jpeg min_side 256", scaled)] {
            let t = Instant::now();
            let mut px = 0u64;
            for b in &jpegs {
                let i = decode_bytes(b, Path::new("x"), &opts).unwrap();
                px += u64::from(i.width()) * u64::from(i.height());
            }
            println!(
                "round {round} {name}: {} files, {:.1} ms, {:.3} ms/file, {px} px",
                jpegs.len(),
                t.elapsed().as_secs_f64() * 1e3,
                t.elapsed().as_secs_f64() * 1e3 / jpegs.len() as f64
            );
        }
        for kind in ["rgb8", "rgba8", "rgb16"] {
            let set: Vec<&Vec<u8>> = pngs
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, b)| b)
                .collect();
            let t = Instant::now();
            for b in &set {
                decode_bytes(b, Path::new("x"), &full).unwrap();
            }
            println!(
                "round {round} png {kind}: {} files, {:.3} ms/file",
                set.len(),
                t.elapsed().as_secs_f64() * 1e3 / set.len() as f64
            );
        }
    }
}
