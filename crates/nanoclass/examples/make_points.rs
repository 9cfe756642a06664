//! Writes a point-regression dataset from real photos (see `nanoclass::data::markers`):
//!
//! ```text
//! cargo run --release -p nanoclass --example make_points -- SOURCE OUT \
//!     [--train 240] [--val 60] [--categories 1] [--radius 6] [--size 224] [--seed 0]
//! ```
//!
//! e.g. `SOURCE = ../shared/data/hymenoptera`, `OUT = data/points`, then
//! `nanoclass train data/points --task regression`.

use std::path::PathBuf;
use std::process::ExitCode;

use nanoclass::data::markers::MarkerSet;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let usage = "usage: make_points SOURCE OUT [--train N] [--val N] [--categories K] \
                 [--radius R] [--size S] [--seed N]";
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut set = MarkerSet {
        source: PathBuf::new(),
        out: PathBuf::new(),
        size: 224,
        radius: 6.0,
        categories: 1,
        train: 240,
        val: 60,
        seed: 0,
    };
    while let Some(a) = args.next() {
        if let Some(flag) = a.strip_prefix("--") {
            let v = args
                .next()
                .ok_or(format!("--{flag} needs a value\n{usage}"))?;
            let num = |v: &str| v.parse::<f64>().map_err(|e| format!("--{flag} {v}: {e}"));
            match flag {
                "train" => set.train = num(&v)? as usize,
                "val" => set.val = num(&v)? as usize,
                "categories" => set.categories = num(&v)? as usize,
                "radius" => set.radius = num(&v)? as f32,
                "size" => set.size = num(&v)? as u32,
                "seed" => set.seed = num(&v)? as u64,
                _ => return Err(format!("unknown flag --{flag}\n{usage}")),
            }
        } else {
            positional.push(PathBuf::from(a));
        }
    }
    let [source, out] = <[PathBuf; 2]>::try_from(positional).map_err(|_| usage.to_string())?;
    set.source = source;
    set.out = out;
    let images = set.write().map_err(|e| e.to_string())?;
    println!(
        "{} images ({} train, {} held-out) in {}",
        images.len(),
        set.train,
        set.val,
        set.out.display()
    );
    Ok(())
}
