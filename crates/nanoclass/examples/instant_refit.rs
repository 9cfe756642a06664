//! Time of one instant-preview refit (what the studio does after each upload, the embedding
//! excluded) at growing numbers of images: EfficientNet-Lite0 rows (1280 features followed by
//! the 1000 pretrained logits), 12 classes, each class a cluster around its own random centre.
//!
//! `cargo run --release -p nanoclass --example instant_refit -- [N ...]` (default 500 1000
//! 2000 5000); prints min / median / max of 7 refits per size and head choice (`Auto` runs the
//! leave-out check, `Linear` and `Prototypes` do not) in milliseconds.

use std::time::Instant;

use nanoclass::instant::{Features, HeadChoice, InstantModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FEATURES: usize = 1280;
const DIM: usize = FEATURES + 1000;
const CLASSES: usize = 12;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![500, 1000, 2000, 5000]
    } else {
        sizes
    };
    let mut rng = StdRng::seed_from_u64(0);
    let centres: Vec<Vec<f32>> = (0..CLASSES)
        .map(|_| (0..DIM).map(|_| rng.random::<f32>()).collect())
        .collect();
    for n in sizes {
        let labels: Vec<usize> = (0..n).map(|i| i % CLASSES).collect();
        let x: Vec<f32> = labels
            .iter()
            .flat_map(|&c| {
                let noise: Vec<f32> = (0..DIM).map(|_| rng.random::<f32>() - 0.5).collect();
                centres[c]
                    .iter()
                    .zip(noise)
                    .map(|(a, b)| a + b)
                    .collect::<Vec<f32>>()
            })
            .collect();
        let data = Features {
            x: &x,
            split: Some(FEATURES),
            labels: &labels,
            dim: DIM,
            classes: CLASSES,
        };
        for choice in [HeadChoice::Auto, HeadChoice::Linear, HeadChoice::Prototypes] {
            let mut ms: Vec<f64> = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    let m = InstantModel::fit(data, None, choice).expect("fit");
                    assert_eq!(m.images(), n);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            println!(
                "{n:>5} images, {choice:?}: refit min {:.1} ms, median {:.1} ms, max {:.1} ms",
                ms[0], ms[3], ms[6]
            );
        }
    }
}
