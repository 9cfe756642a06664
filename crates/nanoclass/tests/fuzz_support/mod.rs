//! A bounded, deterministic mutation fuzzer for everything nanoclass reads from untrusted
//! files: images (through the one decoder, then the evaluation transform), weights files
//! (`.pth` zip and legacy pickle, safetensors, through `index_file` and `load_net`) and run
//! directories (`config.json` through `Run::open`, then the presets it holds).
//!
//! Input `i` of a run with seed `s` is a mutation of one seed file drawn by a generator seeded
//! with `(s, i)`, so any input can be made again alone (`--seed s --start i --count 1` of the
//! `fuzz` example). An input fails the run when it panics out of the library, takes longer than
//! [`SLOW`], or makes the process abort (then the run itself dies; the input index was printed
//! by the watchdog or is in `last-input`). The caller asserts the peak RSS ([`peak_rss`]).
//!
//! Used by `tests/fuzz.rs` (a CI-sized run) and `examples/fuzz.rs` (any size).

#![allow(dead_code)]

pub mod mutate;
pub mod seeds;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use nanoclass::data::decode::{DecodeOptions, decode_bytes};
use nanoclass::data::presets::EvalPreset;
use nanoclass::model::weights::{index_file, load_net};
use nanoclass::run::Run;

/// An input slower than this is a failure (a hang, for the purpose of the run).
pub const SLOW: Duration = Duration::from_secs(5);

/// What went wrong with one input.
#[derive(Debug, Clone)]
pub struct Failure {
    pub index: u64,
    pub seed_name: String,
    pub what: String,
    /// The input, for the corpus.
    pub bytes: Vec<u8>,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: u64,
    /// Inputs the library accepted (images decoded, weights files indexed, configs opened).
    pub accepted: u64,
    /// Weights files that loaded into a model.
    pub loaded: u64,
    /// Inputs it refused with an error.
    pub refused: u64,
    /// Refused inputs whose error reports a panic inside a third-party decoder, caught by the
    /// decoder's `catch_unwind` (counted apart: the file was refused, the process went on).
    pub caught_panics: u64,
    pub failures: Vec<Failure>,
    /// The slowest input: time, index, seed name.
    pub slowest: (Duration, u64, String),
    /// Inputs per seed name.
    pub per_seed: std::collections::BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Report {
    fn record(&mut self, index: u64, seed: &str, took: Duration) {
        self.inputs += 1;
        *self.per_seed.entry(seed.to_owned()).or_default() += 1;
        if took > self.slowest.0 {
            self.slowest = (took, index, seed.to_owned());
        }
    }

    /// One line: counts, failures, the slowest input.
    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: {} inputs ({} accepted{}, {} refused with an error, {} of them a caught \
             decoder panic), {} failures, slowest input {:.3} s (#{} from {}), {:.1} s in all",
            self.inputs,
            self.accepted,
            if self.loaded > 0 {
                format!(", {} of them loaded into a model", self.loaded)
            } else {
                String::new()
            },
            self.refused,
            self.caught_panics,
            self.failures.len(),
            self.slowest.0.as_secs_f64(),
            self.slowest.1,
            self.slowest.2,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The peak resident set size of this process so far, in bytes (`VmHWM` of
/// `/proc/self/status`); `None` where there is no such file.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The generator of input `index` of a run seeded with `seed`.
pub fn input_rng(seed: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Prints the input being tried when one takes far longer than [`SLOW`] (a real hang), so that
/// it can be found even if it never returns. The thread ends when the watchdog is dropped.
struct Watchdog {
    started: Arc<AtomicU64>,
    index: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    t0: Instant,
}

/// `started` when no input is being tried.
const IDLE: u64 = u64::MAX;

impl Watchdog {
    fn new(what: &'static str) -> Self {
        let started = Arc::new(AtomicU64::new(IDLE));
        let index = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, i, halt) = (Arc::clone(&started), Arc::clone(&index), Arc::clone(&stop));
        let t0 = Instant::now();
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let since = s.load(Ordering::Relaxed);
                if since == IDLE {
                    continue;
                }
                let now = t0.elapsed().as_millis() as u64;
                if now.saturating_sub(since) > 6 * SLOW.as_millis() as u64 {
                    eprintln!(
                        "fuzz {what}: input #{} has run for {} s",
                        i.load(Ordering::Relaxed),
                        (now - since) / 1000
                    );
                    s.store(IDLE, Ordering::Relaxed);
                }
            }
        });
        Watchdog {
            started,
            index,
            stop,
            t0,
        }
    }

    fn enter(&self, index: u64) {
        self.index.store(index, Ordering::Relaxed);
        self.started
            .store(self.t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn leave(&self) {
        self.started.store(IDLE, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `body` on one input, timing it and catching a panic.
fn attempt<T>(body: impl FnOnce() -> T) -> (std::thread::Result<T>, Duration) {
    let t = Instant::now();
    let out = catch_unwind(AssertUnwindSafe(body));
    (out, t.elapsed())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// Which inputs to try: `count` of them from index `start`, of the run seeded with `seed`.
/// `last_input`: where each input is written before it is tried (and its index beside it, in a
/// `.txt` file), so that the input of an abort is on disk.
pub struct Options {
    pub seed: u64,
    pub start: u64,
    pub count: u64,
    pub last_input: Option<PathBuf>,
}

/// Writes the input about to be tried, and beside it (`.txt`) its index and seed name.
fn keep_last(opts: &Options, index: u64, seed: &str, bytes: &[u8]) {
    if let Some(path) = &opts.last_input {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let note = path.with_extension("txt");
        std::fs::write(&note, format!("{index} {seed}\n"))
            .unwrap_or_else(|e| panic!("{}: {e}", note.display()));
    }
}

fn check_outcome(
    report: &mut Report,
    index: u64,
    seed: &str,
    bytes: &[u8],
    outcome: (std::thread::Result<bool>, Duration),
) {
    let (result, took) = outcome;
    report.record(index, seed, took);
    let fail = |what: String| Failure {
        index,
        seed_name: seed.to_owned(),
        what,
        bytes: bytes.to_vec(),
    };
    match result {
        Ok(true) => report.accepted += 1,
        Ok(false) => report.refused += 1,
        Err(panic) => report
            .failures
            .push(fail(format!("panic: {}", panic_text(&*panic)))),
    }
    if took > SLOW {
        report
            .failures
            .push(fail(format!("took {:.1} s", took.as_secs_f64())));
    }
}

/// Mutated images through `decode_bytes` (even inputs at full size, odd ones with the eval
/// preset's `min_side`), and every decoded image through the eval transform.
pub fn run_images(opts: &Options) -> Report {
    let seeds = seeds::image_seeds();
    let watchdog = Watchdog::new("images");
    let eval = EvalPreset::default();
    let mut report = Report::default();
    let t0 = Instant::now();
    for index in opts.start..opts.start + opts.count {
        let mut rng = input_rng(opts.seed, index);
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let bytes = mutate::mutate(&seed.bytes, &mut rng, false);
        let decode = DecodeOptions {
            min_side: (index % 2 == 1).then(|| eval.decode_min_side()),
        };
        keep_last(opts, index, &seed.name, &bytes);
        watchdog.enter(index);
        let mut caught = false;
        let outcome = attempt(
            || match decode_bytes(&bytes, Path::new(&seed.name), &decode) {
                Ok(img) => {
                    let input = eval.apply(&img);
                    assert_eq!(input.len(), 3 * 224 * 224, "eval input size");
                    true
                }
                Err(e) => {
                    caught = e.to_string().contains("(panic:");
                    false
                }
            },
        );
        watchdog.leave();
        report.caught_panics += u64::from(caught);
        check_outcome(&mut report, index, &seed.name, &bytes, outcome);
    }
    report.elapsed = t0.elapsed();
    report
}

/// Mutated weights files through `index_file` and `load_net` (2 outputs). An input is
/// accepted when `index_file` reads it; [`Report::loaded`] counts those `load_net` loaded too.
/// `full` adds the complete EfficientNet-Lite0 seeds (19 MB each, a load of the whole model per
/// input); without them, no mutated file is a complete model.
pub fn run_weights(opts: &Options, full: bool) -> Report {
    let scratch = tempfile::tempdir().expect("tempdir");
    let seeds = seeds::weights_seeds(scratch.path(), full);
    let device = nanoclass::infer::device::default_device();
    let watchdog = Watchdog::new("weights");
    let mut report = Report::default();
    let t0 = Instant::now();
    for index in opts.start..opts.start + opts.count {
        let mut rng = input_rng(opts.seed, index);
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let safetensors = seed.seed.name.ends_with(".safetensors");
        let bytes = if safetensors {
            mutate::mutate_safetensors(&seed.seed.bytes, &mut rng)
        } else {
            mutate::mutate_pth_zip(&seed.seed.bytes, &mut rng)
        };
        let ext = if safetensors { "safetensors" } else { "pth" };
        let path = scratch.path().join(format!("input.{ext}"));
        std::fs::write(&path, &bytes).expect("write input");
        keep_last(opts, index, &seed.seed.name, &bytes);
        watchdog.enter(index);
        let mut loaded = false;
        let outcome = attempt(|| {
            let indexed = index_file(&path).is_ok();
            loaded = load_net(seed.arch, &path, 2, None, &device).is_ok();
            indexed
        });
        watchdog.leave();
        report.loaded += u64::from(loaded);
        check_outcome(&mut report, index, &seed.seed.name, &bytes, outcome);
    }
    report.elapsed = t0.elapsed();
    report
}

/// Mutated `config.json` files through `Run::open`; when one opens, its presets are applied to
/// a small image (eval view and input, a training view) to show that every size that passed the
/// checks is usable.
pub fn run_configs(opts: &Options) -> Report {
    let scratch = tempfile::tempdir().expect("tempdir");
    let seeds = seeds::config_seeds();
    let run_dir = scratch.path().join("run");
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let watchdog = Watchdog::new("configs");
    let mut report = Report::default();
    let t0 = Instant::now();
    for index in opts.start..opts.start + opts.count {
        let mut rng = input_rng(opts.seed, index);
        let (seed, labels) = &seeds[rng.random_range(0..seeds.len())];
        let bytes = mutate::mutate(&seed.bytes, &mut rng, true);
        std::fs::write(run_dir.join("config.json"), &bytes).expect("write config");
        std::fs::write(run_dir.join("labels.txt"), labels).expect("write labels");
        keep_last(opts, index, &seed.name, &bytes);
        watchdog.enter(index);
        let outcome = attempt(|| match Run::open(&run_dir) {
            Ok(run) => {
                let c = &run.config;
                let crop = c.eval_preset.crop as usize;
                assert_eq!(c.eval_preset.apply(&img).len(), 3 * crop * crop);
                let _ = c.eval_preset.view(&img);
                let mut rng = ChaCha8Rng::seed_from_u64(index);
                let train = c.train_preset.apply(&img, &mut rng);
                let crop = c.train_preset.crop as usize;
                assert_eq!(train.len(), 3 * crop * crop);
                let _ = c.train_preset.decode_min_side();
                true
            }
            Err(_) => false,
        });
        watchdog.leave();
        check_outcome(&mut report, index, &seed.name, &bytes, outcome);
    }
    report.elapsed = t0.elapsed();
    report
}
