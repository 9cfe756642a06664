//! A video file played as a camera (`file:///abs/clip.mp4`, `.avi`, `.mkv`, `.webm`, `.mov`,
//! `.y4m`, `.mjpeg`, ... or the plain path), decoded by the `ffmpeg` program.
//!
//! `ffprobe` reads the first video stream's size, frame rate and rotation; `ffmpeg` then decodes
//! it as a child process that writes raw `rgb24` frames (`width * height * 3` bytes each, rows
//! top to bottom) to a pipe. Rotation metadata (phone videos) is applied by ffmpeg, so frames are
//! in display orientation. The child is killed when the source is dropped.
//!
//! Query parameters: `?fps=N` delivers at most `N` frames per second, `fps=0` as fast as the
//! caller pulls; the default is the clip's own frame rate, so the clip plays in real time like
//! a camera. `?loop=0` plays the clip once, then returns [`CameraError::Ended`]; by default it
//! loops forever (ffmpeg's `-stream_loop -1`).
//!
//! Faults: ffmpeg or ffprobe missing, or a file ffmpeg cannot decode, is an error from
//! [`VideoSource::open`] (it decodes the first frame before returning). ffmpeg failing later is
//! [`CameraError::Disconnected`] with the end of its error output. A last frame cut short is
//! dropped.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::RgbImage;

use super::{CameraError, Frame, Pacer, Query, Source, camera_error};
use crate::{Error, Result};

/// The programs this source runs, looked up on `PATH`.
pub const FFMPEG: &str = "ffmpeg";
/// See [`FFMPEG`].
pub const FFPROBE: &str = "ffprobe";

/// How many lines of ffmpeg's error output are kept for messages.
const STDERR_LINES: usize = 8;

/// What `ffprobe` says about the first video stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    /// Frame width in pixels, in display orientation (rotation applied).
    pub width: u32,
    /// Frame height in pixels, in display orientation.
    pub height: u32,
    /// Frames per second (`avg_frame_rate`, else `r_frame_rate`); `None` when unknown.
    pub fps: Option<f64>,
}

/// A video file as a [`Source`].
pub struct VideoSource {
    device: String,
    path: std::path::PathBuf,
    info: VideoInfo,
    looping: bool,
    period: Option<Duration>,
    pacer: Pacer,
    decoder: Option<Decoder>,
    pending: Option<RgbImage>,
    opened: Instant,
    delivered: u64,
    dropped: u64,
    finished: Option<CameraError>,
}

/// The running ffmpeg child and the thread that keeps the end of its error output.
struct Decoder {
    child: Child,
    stdout: ChildStdout,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Decoder {
    /// Reads exactly one frame of `buf.len()` bytes. Ok(true): a whole frame; Ok(false): end of
    /// stream, with `partial` set when some bytes of a frame had come.
    fn read_frame(&mut self, buf: &mut [u8], partial: &mut bool) -> io::Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.stdout.read(&mut buf[filled..]) {
                Ok(0) => {
                    *partial = filled > 0;
                    return Ok(false);
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Waits for the child after its output ended; Ok when it exited successfully, else the
    /// reason with its last error lines.
    fn finish(&mut self) -> std::result::Result<(), String> {
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for ffmpeg: {e}"))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        if status.success() {
            return Ok(());
        }
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default();
        Err(format!(
            "ffmpeg exited with {status}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ))
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // The child may have exited already; both calls are then harmless no-ops or errors that
        // mean "already gone".
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

/// The message for a program that could not be started.
fn spawn_error(device: &str, program: &str, e: &io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        camera_error(
            device,
            format!(
                "video files are decoded with the `{program}` program, which is not installed \
                 (not found on PATH); install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg)"
            ),
        )
    } else {
        camera_error(device, format!("cannot run {program}: {e}"))
    }
}

/// Reads the first video stream's size, frame rate and rotation with `ffprobe`.
///
/// # Errors
/// [`Error::Camera`] when ffprobe is missing, fails on the file (its message is included), or
/// finds no video stream, or a frame size beyond the image limits
/// ([`crate::data::decode::check_dimensions`]).
pub fn probe(device: &str, path: &Path) -> Result<VideoInfo> {
    let out = Command::new(FFPROBE)
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,avg_frame_rate,r_frame_rate:stream_side_data=rotation:stream_tags=rotate",
            "-of",
            "json",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(device, FFPROBE, &e))?;
    let fail = |reason: String| camera_error(device, reason);
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!(
            "not a readable video ({FFPROBE}: {})",
            msg.trim().lines().last().unwrap_or("no message")
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("unexpected {FFPROBE} output: {e}")))?;
    let Some(stream) = json["streams"].get(0) else {
        return Err(fail("the file has no video stream".to_owned()));
    };
    let dim = |k: &str| {
        stream[k]
            .as_u64()
            .filter(|&v| v > 0 && v <= u32::MAX as u64)
    };
    let (Some(w), Some(h)) = (dim("width"), dim("height")) else {
        return Err(fail("the video stream has no frame size".to_owned()));
    };
    // Each frame is read into a `width * height * 3` buffer: the image size limits apply.
    crate::data::decode::check_dimensions(w as u32, h as u32)
        .map_err(|reason| fail(format!("the video stream's frame size: {reason}")))?;
    let rotation = stream["side_data_list"]
        .as_array()
        .and_then(|list| list.iter().find_map(|sd| sd["rotation"].as_f64()))
        .or_else(|| stream["tags"]["rotate"].as_str()?.parse().ok())
        .unwrap_or(0.0);
    let quarter_turn = (rotation.round() as i64).rem_euclid(180) == 90;
    let (width, height) = if quarter_turn { (h, w) } else { (w, h) };
    let rate = |k: &str| -> Option<f64> {
        let (n, d) = stream[k].as_str()?.split_once('/')?;
        let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
        (n > 0.0 && d > 0.0).then_some(n / d)
    };
    Ok(VideoInfo {
        width: width as u32,
        height: height as u32,
        fps: rate("avg_frame_rate").or_else(|| rate("r_frame_rate")),
    })
}

impl VideoSource {
    /// Probes the file, starts ffmpeg and decodes the first frame.
    ///
    /// # Errors
    /// [`Error::Camera`] naming the file: ffmpeg/ffprobe not installed, not a readable video, no
    /// frame could be decoded, an unknown query parameter.
    pub fn open(device: &str, path: &Path, query: &Query) -> Result<VideoSource> {
        query.only(device, &["fps", "loop"])?;
        let looping = query.looping(device)?;
        let fps_param = query.fps(device)?;
        let info = probe(device, path)?;
        let period = match fps_param {
            Some(p) => p,
            None => info.fps.map(|f| Duration::from_secs_f64(1.0 / f)),
        };
        let mut source = VideoSource {
            device: device.to_owned(),
            path: path.to_path_buf(),
            info,
            looping,
            period,
            pacer: Pacer::new(period),
            decoder: None,
            pending: None,
            opened: Instant::now(),
            delivered: 0,
            dropped: 0,
            finished: None,
        };
        source.decoder = Some(source.spawn()?);
        match source.read_next() {
            Ok(img) => {
                source.pending = Some(img);
                Ok(source)
            }
            Err(CameraError::Ended { .. }) => Err(camera_error(
                device,
                "ffmpeg decoded no frame from the file".to_owned(),
            )),
            Err(CameraError::Disconnected { reason, .. }) => Err(camera_error(device, reason)),
        }
    }

    /// What ffprobe reported.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    fn spawn(&self) -> Result<Decoder> {
        let mut cmd = Command::new(FFMPEG);
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error"]);
        if self.looping {
            cmd.args(["-stream_loop", "-1"]);
        }
        cmd.arg("-i")
            .arg(&self.path)
            .args([
                "-map", "0:v:0", "-an", "-sn", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_error(&self.device, FFMPEG, &e))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(camera_error(&self.device, "ffmpeg's pipes were not set up"));
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let stderr_thread = std::thread::Builder::new()
            .name("ffmpeg-stderr".to_owned())
            .spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_LINES {
                            t.pop_front();
                        }
                        t.push_back(line.trim().to_owned());
                    }
                }
            })
            .map_err(|e| camera_error(&self.device, format!("cannot start a thread: {e}")))?;
        Ok(Decoder {
            child,
            stdout,
            stderr_tail,
            stderr_thread: Some(stderr_thread),
        })
    }

    /// Reads the next whole frame from ffmpeg.
    fn read_next(&mut self) -> std::result::Result<RgbImage, CameraError> {
        let (w, h) = (self.info.width, self.info.height);
        let disconnected = |reason: String| CameraError::Disconnected {
            device: self.device.clone(),
            reason,
        };
        let Some(decoder) = self.decoder.as_mut() else {
            return Err(disconnected("the decoder is not running".to_owned()));
        };
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        let mut partial = false;
        match decoder.read_frame(&mut buf, &mut partial) {
            Ok(true) => RgbImage::from_raw(w, h, buf)
                .ok_or_else(|| disconnected("frame buffer size mismatch".to_owned())),
            Ok(false) => {
                if partial {
                    self.dropped += 1;
                }
                let outcome = decoder.finish();
                self.decoder = None;
                match outcome {
                    Ok(()) => Err(CameraError::Ended {
                        device: self.device.clone(),
                    }),
                    Err(reason) => Err(CameraError::Disconnected {
                        device: self.device.clone(),
                        reason,
                    }),
                }
            }
            Err(e) => {
                self.decoder = None;
                Err(disconnected(format!("reading from ffmpeg: {e}")))
            }
        }
    }
}

impl Source for VideoSource {
    fn next_frame(&mut self) -> std::result::Result<Frame, CameraError> {
        if let Some(err) = &self.finished {
            return Err(err.clone());
        }
        let image = match self.pending.take() {
            Some(img) => img,
            None => match self.read_next() {
                Ok(img) => img,
                Err(e) => {
                    self.finished = Some(e.clone());
                    return Err(e);
                }
            },
        };
        self.pacer.wait();
        let frame = Frame {
            image,
            jpeg: None,
            timestamp: self.opened.elapsed(),
            index: self.delivered,
            path: None,
        };
        self.delivered += 1;
        Ok(frame)
    }

    fn describe(&self) -> String {
        let rate = match self.period {
            Some(p) => format!("{:.1} fps", 1.0 / p.as_secs_f64()),
            None => "unpaced".to_owned(),
        };
        format!(
            "{} (video {}x{}, {rate}, {})",
            self.device,
            self.info.width,
            self.info.height,
            if self.looping { "looping" } else { "once" }
        )
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}
