//! Seed files for the fuzz runs: small valid images of every format and colour type written
//! here with the `image` and `png` encoders, the committed seeds of `fixtures/fuzz/seeds`
//! (written by `make_seeds.py` with Pillow and torch: what the Rust encoders cannot write), the
//! repository's image fixtures, state dicts in every weights format, and a run's `config.json`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use nanoclass::data::presets::{Normalization, presets, regression_presets};
use nanoclass::export::torch::{DType, StateTensor, write_pth};
use nanoclass::model::Arch;
use nanoclass::run::{RunConfig, SplitRecord, Task, WeightsRecord};
use nanoclass::train::{Hyperparams, Mode, OptimizerKind, Schedule};

/// One seed file.
#[derive(Clone, Debug)]
pub struct Seed {
    /// Where it came from (a file name, or what was generated).
    pub name: String,
    pub bytes: Vec<u8>,
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 16) as u8, (y * 20) as u8, ((x * y * 7) % 256) as u8])
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("encode {format:?}: {e}"));
    out.into_inner()
}

/// A PNG written with the png crate: `color`, `depth`, raw `data`, and optional chunks.
fn png(
    (w, h): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<(&[u8], &[u8])>,
    exif: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some((plte, trns)) = palette {
            enc.set_palette(plte.to_vec());
            enc.set_trns(trns.to_vec());
        }
        let mut writer = enc.write_header().expect("PNG header");
        if let Some(exif) = exif {
            writer
                .write_chunk(png::chunk::eXIf, exif)
                .expect("eXIf chunk");
        }
        writer.write_image_data(data).expect("PNG data");
    }
    out
}

/// A TIFF-style EXIF block (big endian) holding only the Orientation tag.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut e = b"MM\0*\0\0\0\x08\0\x01".to_vec();
    e.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    e.extend_from_slice(&value.to_be_bytes());
    e.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    e
}

/// Images of every supported format: generated ones, the committed seeds, the repository's
/// image fixtures.
pub fn image_seeds() -> Vec<Seed> {
    let rgb = picture(16, 12);
    let dynamic = DynamicImage::ImageRgb8(rgb.clone());
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(16, 12, |x, y| {
        let p = rgb.get_pixel(x, y).0;
        image::Rgba([p[0], p[1], p[2], (x * y * 3) as u8])
    }));
    let gray = DynamicImage::ImageLuma8(dynamic.to_luma8());
    let (w, h) = (16u32, 12u32);
    let n = (w * h) as usize;
    let ramp = |k: usize| -> Vec<u8> { (0..n * k).map(|i| (i * 7 % 251) as u8).collect() };
    let mut seeds = vec![
        ("rgb.jpg", encode(&dynamic, ImageFormat::Jpeg)),
        ("gray.jpg", encode(&gray, ImageFormat::Jpeg)),
        ("rgb.gif", encode(&dynamic, ImageFormat::Gif)),
        ("rgb.bmp", encode(&dynamic, ImageFormat::Bmp)),
        ("rgba.bmp", encode(&rgba, ImageFormat::Bmp)),
        ("rgb.tiff", encode(&dynamic, ImageFormat::Tiff)),
        ("rgba.tiff", encode(&rgba, ImageFormat::Tiff)),
        ("gray.tiff", encode(&gray, ImageFormat::Tiff)),
        ("rgba.webp", encode(&rgba, ImageFormat::WebP)),
        (
            "rgb8.png",
            png(
                (w, h),
                png::ColorType::Rgb,
                png::BitDepth::Eight,
                &ramp(3),
                None,
                None,
            ),
        ),
        (
            "rgba8.png",
            png(
                (w, h),
                png::ColorType::Rgba,
                png::BitDepth::Eight,
                &ramp(4),
                None,
                None,
            ),
        ),
        (
            "gray_alpha8.png",
            png(
                (w, h),
                png::ColorType::GrayscaleAlpha,
                png::BitDepth::Eight,
                &ramp(2),
                None,
                None,
            ),
        ),
        (
            "rgb16.png",
            png(
                (w, h),
                png::ColorType::Rgb,
                png::BitDepth::Sixteen,
                &ramp(6),
                None,
                None,
            ),
        ),
        (
            "rgba16.png",
            png(
                (w, h),
                png::ColorType::Rgba,
                png::BitDepth::Sixteen,
                &ramp(8),
                None,
                None,
            ),
        ),
        (
            "gray1.png",
            png(
                (w, h),
                png::ColorType::Grayscale,
                png::BitDepth::One,
                &ramp(1)[..n / 8],
                None,
                None,
            ),
        ),
        (
            "palette_trns.png",
            png(
                (w, h),
                png::ColorType::Indexed,
                png::BitDepth::Eight,
                &(0..n).map(|i| (i % 2) as u8).collect::<Vec<_>>(),
                Some((&[255, 0, 0, 0, 0, 255], &[0])),
                None,
            ),
        ),
        (
            "exif_rotate90.png",
            png(
                (w, h),
                png::ColorType::Rgb,
                png::BitDepth::Eight,
                &ramp(3),
                None,
                Some(&exif_orientation(6)),
            ),
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| Seed {
        name: name.to_owned(),
        bytes,
    })
    .collect::<Vec<_>>();
    let committed = fixtures().join("fuzz/seeds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&committed)
        .unwrap_or_else(|e| panic!("{}: {e}", committed.display()))
        .map(|e| e.expect("list seeds").path())
        .filter(|p| nanoclass::data::decode::is_image_extension(p))
        .collect();
    files.extend([
        fixtures().join("data/cmyk.jpg"),
        fixtures().join("data/preset_input.png"),
    ]);
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seeds.push(Seed {
            name: path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
            bytes,
        });
    }
    seeds
}

fn f32_tensor(name: &str, shape: &[usize]) -> StateTensor {
    let numel: usize = shape.iter().product();
    StateTensor {
        name: name.to_owned(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        data: (0..numel)
            .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
            .collect(),
    }
}

/// A small ResNet-style state dict: the stem convolution, its BatchNorm, a 2-class head.
fn small_state_dict() -> Vec<StateTensor> {
    let mut tensors = vec![
        f32_tensor("conv1.weight", &[2, 3, 3, 3]),
        f32_tensor("bn1.weight", &[2]),
        f32_tensor("bn1.bias", &[2]),
        f32_tensor("bn1.running_mean", &[2]),
        f32_tensor("bn1.running_var", &[2]),
        f32_tensor("fc.weight", &[2, 512]),
        f32_tensor("fc.bias", &[2]),
    ];
    tensors.push(StateTensor {
        name: "bn1.num_batches_tracked".to_owned(),
        dtype: DType::I64,
        shape: vec![],
        data: 3i64.to_le_bytes().to_vec(),
    });
    tensors
}

fn safetensors_bytes(tensors: &[StateTensor]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let dtype = match t.dtype {
                DType::F32 => safetensors::Dtype::F32,
                DType::I64 => safetensors::Dtype::I64,
            };
            let view = safetensors::tensor::TensorView::new(dtype, t.shape.clone(), &t.data)
                .expect("consistent tensor");
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize safetensors")
}

/// A weights seed, with the backbone its keys belong to.
pub struct WeightsSeed {
    pub seed: Seed,
    pub arch: Arch,
}

/// State dicts in every format: safetensors and zip `.pth` written here, the committed legacy
/// and checkpoint `.pth` seeds and the registry fixtures; with `full`, also a complete
/// EfficientNet-Lite0 (random weights, 19 MB) as safetensors and `.pth`, which load_net reads
/// through to the last tensor.
pub fn weights_seeds(scratch: &Path, full: bool) -> Vec<WeightsSeed> {
    let small = small_state_dict();
    let zip_path = scratch.join("small.pth");
    write_pth(&zip_path, &small).expect("write .pth");
    let mut seeds = vec![
        ("small.safetensors".to_owned(), safetensors_bytes(&small)),
        (
            "small.pth".to_owned(),
            std::fs::read(&zip_path).expect("read .pth"),
        ),
    ];
    let mut files: Vec<PathBuf> = [fixtures().join("fuzz/seeds"), fixtures().join("registry")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).expect("list seeds"))
        .map(|e| e.expect("list").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        seeds.push((name, std::fs::read(&path).expect("read seed")));
    }
    let mut out: Vec<WeightsSeed> = seeds
        .into_iter()
        .map(|(name, bytes)| WeightsSeed {
            seed: Seed { name, bytes },
            arch: Arch::Resnet18,
        })
        .collect();
    if full {
        let device = nanoclass::infer::device::default_device();
        let net = nanoclass::model::Net::new(Arch::EfficientnetLite0, 2, &device);
        let st = scratch.join("effnet.safetensors");
        nanoclass::model::weights::save_net(&net, &st, &Default::default()).expect("save");
        let tensors = nanoclass::export::torch::read_state_dict(&st, None).expect("read back");
        let pth = scratch.join("effnet.pth");
        write_pth(&pth, &tensors).expect("write .pth");
        for (name, path) in [("effnet.safetensors", &st), ("effnet.pth", &pth)] {
            out.push(WeightsSeed {
                seed: Seed {
                    name: name.to_owned(),
                    bytes: std::fs::read(path).expect("read"),
                },
                arch: Arch::EfficientnetLite0,
            });
        }
    }
    out
}

/// A valid `config.json` of each task (with the classification presets and a generated split;
/// with the regression presets), and its `labels.txt`.
pub fn config_seeds() -> Vec<(Seed, String)> {
    let labels = vec!["ants".to_owned(), "bees".to_owned()];
    let config = |task: Task| {
        let (train_preset, eval_preset) = match task {
            Task::Classification => presets(Normalization::IMAGENET, 224),
            Task::Regression => regression_presets(Normalization::EFFICIENTNET_LITE, 224),
        };
        RunConfig {
            nanoclass_version: "0.1.0".into(),
            task,
            arch: Arch::Resnet18,
            labels: labels.clone(),
            eval_preset,
            train_preset,
            data: PathBuf::from("/data/hymenoptera"),
            weights: WeightsRecord {
                spec: "resnet18".into(),
                path: Some(PathBuf::from("/cache/resnet18-f37072fd.pth")),
            },
            hyper: Hyperparams {
                epochs: 5,
                head_epochs: 10,
                batch_size: 16,
                lr: 1e-3,
                body_lr_factor: 0.1,
                optimizer: OptimizerKind::Adam,
                momentum: 0.9,
                weight_decay: 1e-4,
                schedule: Schedule::Cosine,
                seed: 7,
                ..Hyperparams::for_mode(Mode::Finetune)
            },
            split: SplitRecord::Generated {
                val_fraction: 0.2,
                seed: 7,
                val_files: vec!["ants/1.jpg".into(), "bees/2.jpg".into()],
                groups: Some(9),
                unsplittable: vec!["bees".into()],
            },
            device: Default::default(),
            precision: Default::default(),
        }
    };
    [Task::Classification, Task::Regression]
        .into_iter()
        .map(|task| {
            let json = serde_json::to_string_pretty(&config(task)).expect("config JSON");
            (
                Seed {
                    name: format!("{task}.json"),
                    bytes: json.into_bytes(),
                },
                labels.join("\n") + "\n",
            )
        })
        .collect()
}
