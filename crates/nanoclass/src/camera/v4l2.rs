//! V4L2 cameras (`v4l2:///dev/video0`), read through the pure-Rust `linuxvideo` crate (direct
//! V4L2 ioctls, memory-mapped streaming buffers; no libv4l, no C bindings to generate).
//!
//! Formats: MJPEG (preferred: the camera compresses, so USB 2 carries 640x480 at 30 fps) and
//! YUYV 4:2:2. YUYV is converted to RGB with the BT.601 matrix at full range (Y, Cb, Cr all
//! 0..=255, as in JFIF), which is what UVC webcams' sensors deliver in practice:
//!
//! ```text
//! R = Y + 1.402 (Cr - 128)
//! G = Y - 0.344136 (Cb - 128) - 0.714136 (Cr - 128)
//! B = Y + 1.772 (Cb - 128)
//! ```
//!
//! (ITU-R BT.601 coefficients; the full-range form is the one of JFIF 1.02 and of libjpeg.)
//!
//! The device-independent part, turning one raw buffer into a frame ([`frame_from_buffer`]) and
//! the drop / disconnect rules ([`RawSource`]), works on any [`RawStream`], so it is the same code
//! whether the buffers come from a camera or from a stand-in.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::{CameraError, Frame, Query, Source, camera_error, mjpeg};
use crate::Result;
use crate::data::decode::{DecodeOptions, decode_bytes};

/// How long [`RawSource`] waits for a frame before it reports the camera as disconnected. A
/// working camera sends one every 33 ms at 30 fps (1 s at the slowest UVC rates); a stall this
/// long means the device or its driver is gone.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// After this many unusable buffers in a row (empty, truncated, undecodable) the source reports
/// the camera as disconnected rather than block its caller forever.
pub const MAX_CONSECUTIVE_DROPS: u64 = 100;

/// Frame size asked of the driver when the URI gives none: 640x480 (VGA), which every UVC camera
/// offers in both MJPEG and YUYV. The driver may pick the nearest size it supports.
pub const DEFAULT_SIZE: (u32, u32) = (640, 480);

/// The layout of a camera's raw buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawFormat {
    /// One JPEG per buffer (V4L2 `MJPG` or `JPEG`), `width` x `height` pixels.
    Mjpeg { width: u32, height: u32 },
    /// Packed YUYV 4:2:2 (V4L2 `YUYV`): per pair of pixels `Y0 Cb Y1 Cr`, rows `bytes_per_line`
    /// bytes apart (at least `2 * width`).
    Yuyv {
        width: u32,
        height: u32,
        bytes_per_line: u32,
    },
}

impl RawFormat {
    /// `MJPEG 640x480` / `YUYV 640x480`.
    pub fn describe(&self) -> String {
        match self {
            RawFormat::Mjpeg { width, height } => format!("MJPEG {width}x{height}"),
            RawFormat::Yuyv { width, height, .. } => format!("YUYV {width}x{height}"),
        }
    }
}

/// A source of raw frame buffers: a V4L2 capture stream, or a stand-in.
pub trait RawStream: Send {
    /// Blocks until the next filled buffer and returns its used bytes (V4L2 `bytesused`; an
    /// empty slice for a buffer with `bytesused == 0` or the driver's error flag set). The
    /// buffer has already been handed back to the driver, so the driver never runs out.
    ///
    /// # Errors
    /// The device's error (`ENODEV` once a USB camera is unplugged, `EIO`, ...), or
    /// [`io::ErrorKind::TimedOut`] when no buffer came within [`FRAME_TIMEOUT`].
    fn next_buffer(&mut self) -> io::Result<&[u8]>;
}

/// Turns one raw buffer into an RGB image, and for MJPEG the complete JPEG bytes (standard
/// Huffman tables inserted where the camera left them out, see [`mjpeg::with_huffman_tables`]).
///
/// `None`, meaning "drop this frame", for an empty buffer, a YUYV buffer shorter than the
/// format needs, an MJPEG buffer without SOI/EOI (cut short in transfer), one that does not
/// decode completely, or one whose size is not the negotiated `width` x `height`.
pub fn frame_from_buffer(fmt: &RawFormat, bytes: &[u8]) -> Option<(RgbImage, Option<Vec<u8>>)> {
    if bytes.is_empty() {
        return None;
    }
    match *fmt {
        RawFormat::Mjpeg { width, height } => {
            if !mjpeg::is_complete(bytes) {
                return None;
            }
            let jpeg = mjpeg::with_huffman_tables(bytes);
            let img = decode_bytes(&jpeg, Path::new("frame"), &DecodeOptions::default()).ok()?;
            if img.dimensions() != (width, height) {
                return None;
            }
            Some((img, Some(jpeg.into_owned())))
        }
        RawFormat::Yuyv {
            width,
            height,
            bytes_per_line,
        } => yuyv_to_rgb(width, height, bytes_per_line, bytes).map(|img| (img, None)),
    }
}

/// Converts packed YUYV 4:2:2 to RGB (BT.601, full range; see the module documentation). Each
/// pair of pixels shares its Cb and Cr. `bytes_per_line` below `2 * width` (0 from some drivers)
/// means tightly packed rows.
///
/// `None` when `bytes` is shorter than `height` rows, or the size is zero.
pub fn yuyv_to_rgb(width: u32, height: u32, bytes_per_line: u32, bytes: &[u8]) -> Option<RgbImage> {
    if width == 0 || height == 0 {
        return None;
    }
    let (w, h) = (width as usize, height as usize);
    let row_bytes = 2 * w.div_ceil(2) * 2;
    let stride = (bytes_per_line as usize).max(row_bytes);
    if bytes.len() < stride * (h - 1) + row_bytes {
        return None;
    }
    let mut out = vec![0u8; w * h * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let src = &bytes[row * stride..row * stride + row_bytes];
        for (pair, yuyv) in src.chunks_exact(4).enumerate() {
            let (cb, cr) = (yuyv[1], yuyv[3]);
            for (k, y) in [yuyv[0], yuyv[2]].into_iter().enumerate() {
                let x = 2 * pair + k;
                if x < w {
                    dst[3 * x..3 * x + 3].copy_from_slice(&ycbcr_to_rgb(y, cb, cr));
                }
            }
        }
    }
    RgbImage::from_raw(width, height, out)
}

/// One full-range BT.601 Y'CbCr sample to RGB (the JFIF equations), rounded and clamped to
/// 0..=255. Coefficients in 16.16 fixed point: 1.402, 0.344136, 0.714136, 1.772 x 65536.
pub fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = (y as i32) << 16;
    let cb = cb as i32 - 128;
    let cr = cr as i32 - 128;
    let half = 1 << 15;
    let clamp = |v: i32| ((v + half) >> 16).clamp(0, 255) as u8;
    [
        clamp(y + 91_881 * cr),
        clamp(y - 22_554 * cb - 46_802 * cr),
        clamp(y + 116_130 * cb),
    ]
}

/// A [`Source`] over any [`RawStream`]: validates each buffer with [`frame_from_buffer`], drops
/// and counts the bad ones, and turns a stream error into one [`CameraError::Disconnected`],
/// after which the stream is dropped (buffers unmapped, device closed) and every call returns
/// the same error at once.
pub struct RawSource<S: RawStream> {
    device: String,
    detail: String,
    format: RawFormat,
    stream: Option<S>,
    opened: Instant,
    delivered: u64,
    dropped: u64,
    failed: Option<CameraError>,
}

impl<S: RawStream> RawSource<S> {
    /// Wraps `stream`, whose buffers have the layout `format`. `device` names the source in
    /// messages (`v4l2:///dev/video0`).
    pub fn new(device: impl Into<String>, format: RawFormat, stream: S) -> Self {
        RawSource {
            device: device.into(),
            detail: String::new(),
            format,
            stream: Some(stream),
            opened: Instant::now(),
            delivered: 0,
            dropped: 0,
            failed: None,
        }
    }

    /// The buffer layout.
    pub fn format(&self) -> RawFormat {
        self.format
    }

    fn fail(&mut self, reason: String) -> CameraError {
        let err = CameraError::Disconnected {
            device: self.device.clone(),
            reason,
        };
        self.stream = None;
        self.failed = Some(err.clone());
        err
    }
}

impl<S: RawStream> Source for RawSource<S> {
    fn next_frame(&mut self) -> std::result::Result<Frame, CameraError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let mut bad_in_a_row = 0;
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(self.fail("the stream is closed".to_owned()));
            };
            let decoded = match stream.next_buffer() {
                Ok(bytes) => frame_from_buffer(&self.format, bytes),
                Err(e) => return Err(self.fail(io_reason(&e))),
            };
            match decoded {
                Some((image, jpeg)) => {
                    let frame = Frame {
                        image,
                        jpeg,
                        timestamp: self.opened.elapsed(),
                        index: self.delivered,
                        path: None,
                    };
                    self.delivered += 1;
                    return Ok(frame);
                }
                None => {
                    self.dropped += 1;
                    bad_in_a_row += 1;
                    if bad_in_a_row >= MAX_CONSECUTIVE_DROPS {
                        return Err(self.fail(format!(
                            "the last {MAX_CONSECUTIVE_DROPS} frames were all unusable \
                             (empty, truncated or corrupt)"
                        )));
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}{})",
            self.device,
            self.format.describe(),
            self.detail
        )
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A stream error in words: the unplug and stall cases spelled out, anything else as the OS
/// says it.
fn io_reason(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::TimedOut {
        return format!("no frame for {} s", FRAME_TIMEOUT.as_secs());
    }
    #[cfg(target_os = "linux")]
    if e.raw_os_error() == Some(libc::ENODEV) {
        return format!("the device was removed ({e})");
    }
    e.to_string()
}

/// A V4L2 node that can capture video, as [`list_devices`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device node, e.g. `/dev/video0`.
    pub path: PathBuf,
    /// The URI to [`open`](super::open) it with, e.g. `v4l2:///dev/video0`.
    pub uri: String,
    /// The card name the driver reports (`HD Pro Webcam C920`).
    pub card: String,
    /// The driver (`uvcvideo`, `v4l2 loopback`).
    pub driver: String,
    /// Where it is attached (`usb-0000:00:14.0-1`).
    pub bus_info: String,
    /// The pixel formats it offers, as fourcc codes (`MJPG`, `YUYV`, ...).
    pub formats: Vec<String>,
}

/// The V4L2 nodes under `/dev` that can capture video with streaming I/O, in node order
/// (`video0`, `video1`, ..., `video10`). Nodes that cannot capture (a UVC camera's metadata
/// node, output-only loopback devices, codecs) and nodes that cannot be opened (busy, no
/// permission) are left out. Empty on systems without V4L2.
pub fn list_devices() -> Vec<DeviceInfo> {
    #[cfg(target_os = "linux")]
    {
        linux::list_devices()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// Opens a V4L2 device; see [`super::open`].
#[cfg(target_os = "linux")]
pub(crate) fn open_device(device: &str, path: &Path, query: &Query) -> Result<Box<dyn Source>> {
    Ok(Box::new(linux::open_device(device, path, query)?))
}

/// Opens a V4L2 device; see [`super::open`].
#[cfg(not(target_os = "linux"))]
pub(crate) fn open_device(device: &str, _path: &Path, _query: &Query) -> Result<Box<dyn Source>> {
    Err(camera_error(device, "V4L2 cameras need Linux"))
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;

    use linuxvideo::format::{PixFormat, PixelFormat};
    use linuxvideo::stream::ReadStream;
    use linuxvideo::{BufType, CapabilityFlags, Device, Fract};

    use super::*;

    /// The formats nanoclass reads, in order of preference.
    const PREFERRED: [(PixelFormat, &str); 3] = [
        (PixelFormat::MJPG, "mjpeg"),
        (PixelFormat::JPEG, "mjpeg"),
        (PixelFormat::YUYV, "yuyv"),
    ];

    /// A V4L2 capture stream: memory-mapped buffers, `poll` with [`FRAME_TIMEOUT`] before each
    /// dequeue so that a dead device cannot hang the caller.
    pub(super) struct DeviceStream {
        stream: ReadStream,
        buf: Vec<u8>,
    }

    impl DeviceStream {
        /// Dequeues one buffer into `self.buf` (empty for `bytesused == 0` or the error flag)
        /// and queues it again.
        fn take(&mut self) -> io::Result<()> {
            let buf = &mut self.buf;
            self.stream.dequeue(|view| {
                buf.clear();
                if !view.is_error() {
                    buf.extend_from_slice(&view);
                }
                Ok(())
            })
        }

        /// Waits up to `timeout` for a filled buffer: Ok(true) when one is ready, Ok(false) on
        /// timeout, Err when the device reports an error or hang-up (unplugged).
        fn ready(&self, timeout: Duration) -> io::Result<bool> {
            let mut pfd = libc::pollfd {
                fd: self.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            loop {
                // SAFETY: one valid pollfd, for the duration of the call.
                let n = unsafe { libc::poll(&mut pfd, 1, ms) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if n == 0 {
                    return Ok(false);
                }
                if pfd.revents & libc::POLLIN != 0 {
                    return Ok(true);
                }
                if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
            }
        }
    }

    impl RawStream for DeviceStream {
        fn next_buffer(&mut self) -> io::Result<&[u8]> {
            if !self.ready(FRAME_TIMEOUT)? {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            self.take()?;
            // Buffers that filled while the caller was busy hold older pictures: keep only the
            // newest, so a slow consumer sees the scene as it is now.
            for _ in 0..linuxvideo_buffer_count() {
                if !self.ready(Duration::ZERO)? {
                    break;
                }
                self.take()?;
            }
            Ok(&self.buf)
        }
    }

    /// The number of buffers `linuxvideo` maps per stream (its `DEFAULT_BUFFER_COUNT`), the
    /// most that can be waiting at once.
    fn linuxvideo_buffer_count() -> usize {
        4
    }

    fn fourcc(p: PixelFormat) -> String {
        p.to_string()
    }

    /// Why `Device::open` failed, in words.
    fn open_reason(e: &io::Error) -> String {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                "no such device".to_owned()
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                "permission denied (is the user in the 'video' group?)".to_owned()
            }
            Some(libc::EBUSY) => "the device is busy (another program is using it)".to_owned(),
            Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                format!("not a V4L2 device (VIDIOC_QUERYCAP: {e})")
            }
            _ => format!("cannot open: {e}"),
        }
    }

    pub(super) fn open_device(
        device: &str,
        path: &Path,
        query: &Query,
    ) -> Result<RawSource<DeviceStream>> {
        let fail = |reason: String| camera_error(device, reason);
        query.only(device, &["width", "height", "fps", "format"])?;
        match std::fs::metadata(path) {
            Err(e) => return Err(fail(open_reason(&e))),
            Ok(m) if !m.file_type().is_char_device() => {
                return Err(fail(
                    "not a V4L2 device (not a character device node)".to_owned(),
                ));
            }
            Ok(_) => {}
        }
        let dev = Device::open(path).map_err(|e| fail(open_reason(&e)))?;
        let caps = dev
            .capabilities()
            .map_err(|e| fail(format!("VIDIOC_QUERYCAP: {e}")))?;
        let flags = caps.device_capabilities();
        if !flags.contains(CapabilityFlags::VIDEO_CAPTURE) {
            return Err(fail(format!(
                "not a video capture device (driver {}, capabilities {flags:?}; a UVC camera's \
                 second node carries metadata only, try the other /dev/video node)",
                caps.driver()
            )));
        }
        if !flags.contains(CapabilityFlags::STREAMING) {
            return Err(fail("the device does not support streaming I/O".to_owned()));
        }
        let card = caps.card().to_owned();
        let offered: Vec<PixelFormat> = dev
            .formats(BufType::VIDEO_CAPTURE)
            .filter_map(|f| f.ok().map(|f| f.pixel_format()))
            .collect();
        let wanted: Option<String> = query.get(device, "format")?;
        if let Some(w) = &wanted
            && w != "mjpeg"
            && w != "yuyv"
        {
            return Err(fail(format!("format={w:?}: use mjpeg or yuyv")));
        }
        let Some(&(pixel_format, _)) = PREFERRED
            .iter()
            .filter(|(_, name)| wanted.as_deref().is_none_or(|w| w == *name))
            .find(|(p, _)| offered.contains(p))
        else {
            let list: Vec<String> = offered.iter().map(|p| fourcc(*p)).collect();
            return Err(fail(format!(
                "offers none of the formats nanoclass reads ({}); it offers: {}",
                wanted.as_deref().unwrap_or("MJPEG, YUYV"),
                if list.is_empty() {
                    "nothing".to_owned()
                } else {
                    list.join(", ")
                }
            )));
        };
        let width = query.get(device, "width")?.unwrap_or(DEFAULT_SIZE.0);
        let height = query.get(device, "height")?.unwrap_or(DEFAULT_SIZE.1);
        let fps: Option<u32> = query.get(device, "fps")?;
        if width == 0 || height == 0 || fps == Some(0) {
            return Err(fail("width, height and fps must be positive".to_owned()));
        }
        let capture = dev
            .video_capture(PixFormat::new(width, height, pixel_format))
            .map_err(|e| {
                fail(format!(
                    "setting the format {} {width}x{height}: {}",
                    fourcc(pixel_format),
                    open_reason(&e)
                ))
            })?;
        let (actual_format, width, height, bytes_per_line) = {
            let f = capture.format();
            (f.pixel_format(), f.width(), f.height(), f.bytes_per_line())
        };
        if actual_format != pixel_format {
            return Err(fail(format!(
                "asked for {}, the driver chose {}",
                fourcc(pixel_format),
                fourcc(actual_format)
            )));
        }
        let rate = match fps {
            Some(fps) => match capture.set_frame_interval(Fract::new(1, fps)) {
                Ok(f) => format!(", {} fps", f.denominator() / f.numerator().max(1)),
                Err(e) => format!(", frame rate not settable: {e}"),
            },
            None => String::new(),
        };
        let stream = capture.into_stream().map_err(|e| {
            fail(format!(
                "starting the stream (REQBUFS/mmap/STREAMON): {}",
                open_reason(&e)
            ))
        })?;
        let format = if pixel_format == PixelFormat::YUYV {
            RawFormat::Yuyv {
                width,
                height,
                bytes_per_line,
            }
        } else {
            RawFormat::Mjpeg { width, height }
        };
        let mut source = RawSource::new(
            device,
            format,
            DeviceStream {
                stream,
                buf: Vec::new(),
            },
        );
        source.detail = format!("{rate}, {card}");
        Ok(source)
    }

    pub(super) fn list_devices() -> Vec<DeviceInfo> {
        let Ok(entries) = std::fs::read_dir("/dev") else {
            return Vec::new();
        };
        let mut nodes: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let n = name.to_str()?.strip_prefix("video")?.parse::<u64>().ok()?;
                Some((n, e.path()))
            })
            .collect();
        nodes.sort();
        nodes
            .into_iter()
            .filter_map(|(_, path)| {
                let dev = Device::open(&path).ok()?;
                let caps = dev.capabilities().ok()?;
                let flags = caps.device_capabilities();
                if !flags.contains(CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING) {
                    return None;
                }
                let formats = dev
                    .formats(BufType::VIDEO_CAPTURE)
                    .filter_map(|f| f.ok().map(|f| fourcc(f.pixel_format())))
                    .collect();
                Some(DeviceInfo {
                    uri: format!("v4l2://{}", path.display()),
                    path,
                    card: caps.card().to_owned(),
                    driver: caps.driver().to_owned(),
                    bus_info: caps.bus_info().to_owned(),
                    formats,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_full_range_reference_values() {
        // Grey axis: Cb = Cr = 128 leaves Y on all three channels.
        assert_eq!(ycbcr_to_rgb(235, 128, 128), [235, 235, 235]);
        assert_eq!(ycbcr_to_rgb(0, 128, 128), [0, 0, 0]);
        // Pure red in full-range BT.601 is (Y, Cb, Cr) = (76, 85, 255).
        assert_eq!(ycbcr_to_rgb(76, 85, 255), [254, 0, 0]);
        // Pure blue: (29, 255, 107).
        let [r, g, b] = ycbcr_to_rgb(29, 255, 107);
        assert!(r <= 1 && g <= 1 && b >= 253, "{r} {g} {b}");
    }

    #[test]
    fn yuyv_rows_honour_the_stride_and_short_buffers_are_refused() {
        // 2x2 image, rows 8 bytes apart (4 bytes of padding each).
        let bytes = [
            235, 128, 16, 128, 9, 9, 9, 9, //
            76, 85, 76, 255, 9, 9, 9, 9,
        ];
        let img = yuyv_to_rgb(2, 2, 8, &bytes).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [235, 235, 235]);
        assert_eq!(img.get_pixel(1, 0).0, [16, 16, 16]);
        assert_eq!(img.get_pixel(1, 1).0, [254, 0, 0]);
        assert!(yuyv_to_rgb(2, 2, 8, &bytes[..11]).is_none());
        // Tightly packed rows, stride 0.
        assert!(yuyv_to_rgb(2, 2, 0, &bytes[..8]).is_some());
    }
}
