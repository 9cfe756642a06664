//! Saving camera frames into an ImageFolder dataset: `DATA/<category>/<name>.jpg`.
//!
//! File names never collide, even for two frames saved in the same millisecond or by two
//! processes at once:
//! - classification: `<unix-millis>_<16 random hex digits>.jpg` (sorts by capture time);
//! - regression (a point was given): `<x>_<y>_<uuid4>.jpg`, the naming of the DLI course's
//!   regression datasets, with `x`, `y` integer pixel coordinates in the saved image.
//!
//! Every file is written to a temporary file in the same folder, flushed, then linked into
//! place without replacing anything (`persist_noclobber`), so a crash or an unplugged camera
//! never leaves a partial image, and an existing file is never overwritten.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Frame, Source};
use crate::data::category::validate_category_name;
use crate::{Error, Result};

/// JPEG quality used when a frame has no JPEG bytes of its own (YUYV cameras, PNG files,
/// videos): 95, high enough that re-encoding artefacts do not matter for training.
pub const JPEG_QUALITY: u8 = 95;

/// What [`capture`] should do.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// The dataset root; frames go to `out/<category>/` (created when missing).
    pub out: PathBuf,
    /// The category (class) name, checked by [`validate_category_name`].
    pub category: String,
    /// How many frames to save (at least 1).
    pub count: u64,
    /// The least time between two saved frames (zero: back to back).
    pub interval: Duration,
    /// For regression datasets: the target point `(x, y)` in pixels of the saved image, which
    /// must lie inside the frame; it goes into the file name.
    pub point: Option<(u32, u32)>,
}

/// One saved frame, as [`capture`] reports it.
#[derive(Clone, Debug)]
pub struct SavedFrame {
    /// The file written.
    pub path: PathBuf,
    /// The frame's [`Frame::index`] in the source.
    pub index: u64,
    /// Frame size in pixels.
    pub width: u32,
    /// Frame size in pixels.
    pub height: u32,
    /// Size of the file in bytes.
    pub bytes: usize,
    /// Whether the source's own JPEG bytes were saved (else the frame was encoded at
    /// [`JPEG_QUALITY`]).
    pub source_jpeg: bool,
}

/// What a finished [`capture`] did.
#[derive(Clone, Debug)]
pub struct CaptureSummary {
    /// The category folder, `out/<category>`.
    pub dir: PathBuf,
    /// The files written, in order.
    pub saved: Vec<PathBuf>,
    /// Frames the source dropped meanwhile ([`Source::dropped`] at the end).
    pub dropped: u64,
    /// Wall time from the first frame request to the last file written.
    pub elapsed: Duration,
}

/// Saves `opts.count` frames of `source` into `opts.out/opts.category/`, at least
/// `opts.interval` apart, calling `on_saved` after each file is in place.
///
/// # Errors
/// [`Error::Other`] for a bad category name, `count == 0`, or a point outside the frame;
/// [`Error::Io`] when the folder or a file cannot be written; [`Error::Camera`] when the source
/// disconnects or ends before `count` frames (the message says how many were saved; they are
/// whole files).
pub fn capture(
    source: &mut dyn Source,
    opts: &CaptureOptions,
    on_saved: &mut dyn FnMut(&SavedFrame),
) -> Result<CaptureSummary> {
    validate_category_name(&opts.category)?;
    if opts.count == 0 {
        return Err(Error::Other("--count must be at least 1".to_owned()));
    }
    let dir = opts.out.join(&opts.category);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // What a killed earlier run left half-written there.
    crate::fs::clean_stale_temp_files(&dir);
    let start = Instant::now();
    let mut saved = Vec::new();
    let mut last: Option<Instant> = None;
    while (saved.len() as u64) < opts.count {
        if let Some(t) = last {
            let due = t + opts.interval;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let frame = source.next_frame().map_err(|e| {
            let Error::Camera { device, reason } = Error::from(e) else {
                unreachable!("a camera error converts to Error::Camera")
            };
            Error::Camera {
                device,
                reason: format!(
                    "{reason} ({} of {} frames saved in {})",
                    saved.len(),
                    opts.count,
                    dir.display()
                ),
            }
        })?;
        last = Some(Instant::now());
        let path = save_frame(&frame, &dir, opts.point)?;
        let info = SavedFrame {
            bytes: std::fs::metadata(&path)
                .map(|m| m.len() as usize)
                .unwrap_or(0),
            path,
            index: frame.index,
            width: frame.image.width(),
            height: frame.image.height(),
            source_jpeg: frame.jpeg.is_some(),
        };
        on_saved(&info);
        saved.push(info.path);
    }
    Ok(CaptureSummary {
        dir,
        saved,
        dropped: source.dropped(),
        elapsed: start.elapsed(),
    })
}

/// Writes one frame as a JPEG into `dir` (which must exist) under a fresh name (see the module
/// documentation) and returns its path. The source's own JPEG bytes are written when it has
/// them, else the image is encoded at [`JPEG_QUALITY`].
///
/// # Errors
/// [`Error::Other`] when `point` lies outside the frame; [`Error::Io`] when writing fails.
pub fn save_frame(frame: &Frame, dir: &Path, point: Option<(u32, u32)>) -> Result<PathBuf> {
    let (w, h) = frame.image.dimensions();
    if let Some((x, y)) = point
        && (x >= w || y >= h)
    {
        return Err(Error::Other(format!(
            "point ({x}, {y}) is outside the {w}x{h} frame (x must be below {w}, y below {h})"
        )));
    }
    let encoded;
    let bytes: &[u8] = match &frame.jpeg {
        Some(jpeg) => jpeg,
        None => {
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY)
                .encode_image(&frame.image)
                .map_err(|e| Error::Other(format!("encoding a {w}x{h} frame as JPEG: {e}")))?;
            encoded = buf;
            &encoded
        }
    };
    write_new_file(dir, bytes, || frame_file_name(point))
}

/// A fresh file name for a frame: `<x>_<y>_<uuid4>.jpg` with a point, else
/// `<unix-millis>_<16 random hex digits>.jpg`.
pub fn frame_file_name(point: Option<(u32, u32)>) -> String {
    match point {
        Some((x, y)) => format!("{x}_{y}_{}.jpg", uuid::Uuid::new_v4()),
        None => {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("{millis}_{:016x}.jpg", rand::random::<u64>())
        }
    }
}

/// Writes `bytes` to a new file `dir/<name()>` without replacing an existing one
/// ([`crate::fs::write_new`]).
fn write_new_file(dir: &Path, bytes: &[u8], name: impl FnMut() -> String) -> Result<PathBuf> {
    crate::fs::write_new(dir, bytes, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_name_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken.jpg"), b"old").unwrap();
        let mut names = vec!["fresh.jpg", "taken.jpg"];
        let path = write_new_file(dir.path(), b"new", || names.pop().unwrap().to_owned()).unwrap();
        assert_eq!(path, dir.path().join("fresh.jpg"));
        assert_eq!(std::fs::read(dir.path().join("taken.jpg")).unwrap(), b"old");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn names_carry_the_point_or_the_time() {
        let a = frame_file_name(Some((12, 340)));
        assert!(a.starts_with("12_340_") && a.ends_with(".jpg"), "{a}");
        assert_eq!(a.len(), "12_340_".len() + 36 + 4);
        let b = frame_file_name(None);
        let (millis, rest) = b.split_once('_').unwrap();
        assert!(millis.parse::<u128>().unwrap() > 1_600_000_000_000);
        assert_eq!(rest.len(), 16 + 4);
        assert_ne!(frame_file_name(None), frame_file_name(None));
    }
}
