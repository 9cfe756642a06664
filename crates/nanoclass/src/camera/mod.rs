//! Camera sources: a V4L2 camera, a folder of images, or a video file, all read as a stream of
//! RGB frames, plus [`capture`](capture::capture), which saves frames into an ImageFolder dataset.
//!
//! A source is named by a URI and opened with [`open`]:
//!
//! | URI | source |
//! |---|---|
//! | `v4l2:///dev/video0`, or the bare `/dev/video0` | a V4L2 capture device ([`v4l2`]): MJPEG or YUYV; `?width=640&height=480&fps=30` |
//! | `file:///abs/folder`, or a folder path | the folder's images in name order, looping ([`folder`]); `?fps=N`, `?loop=0` |
//! | `file:///abs/clip.mp4` (`.avi .mkv .webm .mov .y4m .mjpeg ...`), or its path | a video file decoded by the `ffmpeg` program, looping ([`video`]); `?fps=N`, `?loop=0` |
//!
//! `file://` URIs are percent-decoded (`%20` is a space); plain paths are taken as written. The
//! query parameters are optional; an unknown one is an error that lists the known ones.
//!
//! Faults follow one rule: what can be known when opening is an error from [`open`] that names
//! the device and the reason (a missing device, a node that cannot capture, an empty folder, an
//! unreadable video). A frame that is short, empty or corrupt is dropped inside the source and
//! counted by [`Source::dropped`]; capture goes on. A device that goes away mid-stream (a USB
//! camera unplugged, the video decoder dying) makes [`Source::next_frame`] return
//! [`CameraError::Disconnected`] once, promptly; the source has then released the device, and
//! every later call returns the same error at once without touching it. To reconnect, [`open`]
//! the URI again.

pub mod capture;
pub mod folder;
pub mod mjpeg;
pub mod v4l2;
pub mod video;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::{Error, Result};

pub use capture::{CaptureOptions, CaptureSummary, SavedFrame, capture, save_frame};
pub use v4l2::{DeviceInfo, list_devices};

/// One frame from a [`Source`].
#[derive(Clone, Debug)]
pub struct Frame {
    /// The whole frame, 8-bit RGB (`[H, W, 3]` row-major), in display orientation (EXIF
    /// orientation applied for image files, rotation metadata for videos).
    pub image: RgbImage,
    /// The source's own JPEG bytes when it delivered JPEG (an MJPEG camera, a `.jpg` file), so a
    /// server can stream or save it without re-encoding. MJPEG frames that lack Huffman tables
    /// get the standard ones inserted ([`mjpeg::with_huffman_tables`]), so these bytes are
    /// always a complete JPEG file. `None` for YUYV cameras, PNGs and videos.
    pub jpeg: Option<Vec<u8>>,
    /// When the frame was delivered, since the source was opened (monotonic clock).
    pub timestamp: Duration,
    /// 0-based count of the frames this source has delivered (dropped frames are not counted).
    pub index: u64,
    /// The image file the frame was read from (a folder source); `None` for cameras and videos.
    pub path: Option<std::path::PathBuf>,
}

/// A stream of frames: a camera, a folder of images or a video file. See the module
/// documentation for the fault rules.
pub trait Source: Send {
    /// Blocks until the next good frame. Short, empty and corrupt frames are dropped inside
    /// (counted in [`Source::dropped`]), never returned.
    ///
    /// # Errors
    /// [`CameraError::Disconnected`] when the device went away or the stream broke (returned
    /// again, at once, on every later call); [`CameraError::Ended`] when a source that does not
    /// loop (`?loop=0`) has delivered its last frame.
    fn next_frame(&mut self) -> std::result::Result<Frame, CameraError>;

    /// A one-line description for people, e.g. `v4l2:///dev/video0 (MJPEG 640x480)`.
    fn describe(&self) -> String;

    /// How many frames were dropped so far (empty, truncated or undecodable).
    fn dropped(&self) -> u64;
}

/// Why a [`Source`] delivered no frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    /// The device went away mid-stream (unplugged, `ENODEV`/`EIO` from the driver, no frame for
    /// [`v4l2::FRAME_TIMEOUT`], the video decoder exited with an error). `device` is the source
    /// URI.
    #[error("camera {device} disconnected: {reason}")]
    Disconnected { device: String, reason: String },
    /// A source opened with `?loop=0` has delivered all its frames.
    #[error("camera {device}: end of stream")]
    Ended { device: String },
}

impl From<CameraError> for Error {
    fn from(e: CameraError) -> Self {
        match e {
            CameraError::Disconnected { device, reason } => Error::Camera {
                device,
                reason: format!("disconnected: {reason}"),
            },
            CameraError::Ended { device } => Error::Camera {
                device,
                reason: "end of stream".to_owned(),
            },
        }
    }
}

/// Opens the source named by `uri` (see the module documentation for the forms).
///
/// # Errors
/// [`Error::Camera`] naming the source and the reason, at once: the device does not exist, is
/// not a V4L2 video capture device, is busy or not permitted, offers neither MJPEG nor YUYV; the
/// folder has no readable image; the video cannot be decoded or `ffmpeg` is not installed; the
/// URI has an unknown scheme or query parameter.
pub fn open(uri: &str) -> Result<Box<dyn Source>> {
    match parse_uri(uri)? {
        Spec::V4l2 {
            device,
            path,
            query,
        } => v4l2::open_device(&device, &path, &query),
        Spec::Folder {
            device,
            path,
            query,
        } => Ok(Box::new(folder::FolderSource::open(
            &device, &path, &query,
        )?)),
        Spec::Video {
            device,
            path,
            query,
        } => Ok(Box::new(video::VideoSource::open(&device, &path, &query)?)),
    }
}

/// File extensions (any case) that [`open`] treats as video files.
pub const VIDEO_EXTENSIONS: [&str; 11] = [
    "mp4", "m4v", "mov", "avi", "mkv", "webm", "y4m", "mjpeg", "mjpg", "mpg", "ts",
];

/// Lowers the calling thread's scheduling priority (nice +`by`, Linux; elsewhere nothing), for
/// work that runs ahead of the model (decoding the next frames): on a machine with few cores
/// the model, whose latency the user sees, then gets the cores first and the read-ahead fills
/// the gaps. Returns whether it took effect.
pub fn lower_thread_priority(by: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority have no memory effects; PRIO_PROCESS with a thread
        // id changes only that thread's nice value.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, (now + by).min(19)) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = by;
        false
    }
}

/// True when `path` ends in one of [`VIDEO_EXTENSIONS`], in any case.
pub fn is_video_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|v| e.eq_ignore_ascii_case(v)))
}

/// The query parameters of a source URI (`?width=640&fps=30`), checked against the names the
/// source knows.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=2` (an empty string gives no parameters).
    fn parse(device: &str, query: &str) -> Result<Query> {
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(camera_error(
                    device,
                    format!("query parameter {part:?} has no value (expected name=value)"),
                ));
            };
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(Query { pairs })
    }

    /// Errors when a parameter is not one of `known`.
    pub(crate) fn only(&self, device: &str, known: &[&str]) -> Result<()> {
        for (k, _) in &self.pairs {
            if !known.contains(&k.as_str()) {
                return Err(camera_error(
                    device,
                    format!(
                        "unknown query parameter {k:?} (this source knows: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The value of `key` parsed as `T`, `None` when absent.
    pub(crate) fn get<T: std::str::FromStr>(&self, device: &str, key: &str) -> Result<Option<T>> {
        match self.pairs.iter().rev().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, v)) => v.parse().map(Some).map_err(|_| {
                camera_error(device, format!("query parameter {key}={v:?} is not valid"))
            }),
        }
    }

    /// `?fps=N` as a frame period: `None` for absent, `Some(None)` for `fps=0` (unpaced).
    pub(crate) fn fps(&self, device: &str) -> Result<Option<Option<Duration>>> {
        match self.get::<f64>(device, "fps")? {
            None => Ok(None),
            Some(0.0) => Ok(Some(None)),
            Some(f) if f.is_finite() && f > 0.0 => Ok(Some(Some(Duration::from_secs_f64(1.0 / f)))),
            Some(f) => Err(camera_error(
                device,
                format!("fps={f} must be a positive number of frames per second, or 0"),
            )),
        }
    }

    /// `?loop=0|1` (default 1: loop forever).
    pub(crate) fn looping(&self, device: &str) -> Result<bool> {
        match self.get::<u8>(device, "loop")? {
            None | Some(1) => Ok(true),
            Some(0) => Ok(false),
            Some(n) => Err(camera_error(device, format!("loop={n} must be 0 or 1"))),
        }
    }
}

/// What a URI names.
#[derive(Debug)]
enum Spec {
    V4l2 {
        device: String,
        path: PathBuf,
        query: Query,
    },
    Folder {
        device: String,
        path: PathBuf,
        query: Query,
    },
    Video {
        device: String,
        path: PathBuf,
        query: Query,
    },
}

fn camera_error(device: &str, reason: impl Into<String>) -> Error {
    Error::Camera {
        device: device.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `uri` into what it names, its canonical name (`device`, used in messages) and its
/// query.
fn parse_uri(uri: &str) -> Result<Spec> {
    let (path, query, scheme) = if let Some(rest) = uri.strip_prefix("v4l2://") {
        let (p, q) = rest.split_once('?').unwrap_or((rest, ""));
        (PathBuf::from(p), q.to_owned(), Some("v4l2"))
    } else if let Some(rest) = uri.strip_prefix("file://") {
        let (p, q) = rest.split_once('?').unwrap_or((rest, ""));
        let p = percent_decode(p).ok_or_else(|| {
            camera_error(
                uri,
                "invalid percent-encoding in the file URI (expected %XX)",
            )
        })?;
        (PathBuf::from(p), q.to_owned(), Some("file"))
    } else if uri.contains("://") {
        let scheme = uri.split("://").next().unwrap_or_default();
        return Err(camera_error(
            uri,
            format!("unsupported source scheme {scheme:?} (use v4l2://, file:// or a path)"),
        ));
    } else if Path::new(uri).exists() {
        // A plain path that exists as written, even with a '?' in its name.
        (PathBuf::from(uri), String::new(), None)
    } else {
        let (p, q) = uri.split_once('?').unwrap_or((uri, ""));
        (PathBuf::from(p), q.to_owned(), None)
    };
    if path.as_os_str().is_empty() {
        return Err(camera_error(uri, "the URI names no path"));
    }
    let is_dev =
        scheme == Some("v4l2") || (scheme.is_none() && path.starts_with("/dev") && !path.is_dir());
    if is_dev {
        let device = format!("v4l2://{}", path.display());
        let query = Query::parse(&device, &query)?;
        return Ok(Spec::V4l2 {
            device,
            path,
            query,
        });
    }
    // Messages name the file by its absolute path, as a file URI would.
    let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    let device = format!("file://{}", shown.display());
    let query = Query::parse(&device, &query)?;
    if path.is_dir() {
        Ok(Spec::Folder {
            device,
            path,
            query,
        })
    } else if is_video_extension(&path) {
        Ok(Spec::Video {
            device,
            path,
            query,
        })
    } else if !path.exists() {
        Err(camera_error(&device, "no such file or folder"))
    } else {
        Err(camera_error(
            &device,
            format!(
                "neither a folder of images nor a video file (video extensions: {})",
                VIDEO_EXTENSIONS.join(", ")
            ),
        ))
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Delivers frames no faster than one per `period` (`None`: as fast as they are pulled). Frame
/// `k` is due at `start + k * period`; a consumer that falls behind is not made up for with a
/// burst: the schedule restarts from the late frame.
#[derive(Debug)]
pub(crate) struct Pacer {
    period: Option<Duration>,
    next_due: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(period: Option<Duration>) -> Self {
        Pacer {
            period,
            next_due: None,
        }
    }

    /// Sleeps until the next frame is due.
    pub(crate) fn wait(&mut self) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        let due = match self.next_due {
            Some(due) if due > now => {
                std::thread::sleep(due - now);
                due
            }
            _ => now,
        };
        self.next_due = Some(due + period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_the_right_kind_of_source() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("my photos");
        std::fs::create_dir(&folder).unwrap();
        let encoded = format!(
            "file://{}?fps=5",
            folder.display().to_string().replace(' ', "%20")
        );
        match parse_uri(&encoded).unwrap() {
            Spec::Folder { path, query, .. } => {
                assert_eq!(path, folder);
                assert_eq!(
                    query.fps("x").unwrap(),
                    Some(Some(Duration::from_millis(200)))
                );
            }
            other => panic!("{other:?}"),
        }
        match parse_uri("/dev/video7?width=320&height=240").unwrap() {
            Spec::V4l2 { device, query, .. } => {
                assert_eq!(device, "v4l2:///dev/video7");
                assert_eq!(query.get::<u32>("x", "width").unwrap(), Some(320));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_uri(&format!("{}/clip.MP4", dir.path().display())).unwrap(),
            Spec::Video { .. }
        ));
        let err = parse_uri("rtsp://cam/stream").unwrap_err().to_string();
        assert!(err.contains("unsupported source scheme \"rtsp\""), "{err}");
        let missing = format!("{}/nothing-here", dir.path().display());
        let err = parse_uri(&missing).unwrap_err().to_string();
        assert!(err.contains("no such file or folder"), "{err}");
    }

    #[test]
    fn query_values_are_checked() {
        let q = Query::parse("d", "fps=0&loop=0&width=abc").unwrap();
        assert_eq!(q.fps("d").unwrap(), Some(None));
        assert!(!q.looping("d").unwrap());
        assert!(
            q.get::<u32>("d", "width")
                .unwrap_err()
                .to_string()
                .contains("width")
        );
        let err = q.only("d", &["fps", "loop"]).unwrap_err().to_string();
        assert!(err.contains("unknown query parameter \"width\""), "{err}");
        assert!(Query::parse("d", "fps").is_err());
        assert!(Query::parse("d", "fps=-1").unwrap().fps("d").is_err());
    }

    #[test]
    fn pacer_spaces_frames_by_the_period() {
        let mut p = Pacer::new(Some(Duration::from_millis(30)));
        let t0 = Instant::now();
        for _ in 0..4 {
            p.wait();
        }
        // Frames at 0, 30, 60, 90 ms.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
        let mut unpaced = Pacer::new(None);
        let t0 = Instant::now();
        for _ in 0..1000 {
            unpaced.wait();
        }
        assert!(t0.elapsed() < Duration::from_millis(50));
    }
}
