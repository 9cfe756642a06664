//! Camera sources: opening faults, frame validation and disconnects on a stand-in V4L2 stream,
//! YUYV conversion, folder and video sources on real photos.

mod common;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;
use nanoclass::camera::v4l2::{
    MAX_CONSECUTIVE_DROPS, RawFormat, RawSource, RawStream, frame_from_buffer, ycbcr_to_rgb,
    yuyv_to_rgb,
};
use nanoclass::camera::{self, CameraError, Source};
use nanoclass::data::decode::{DecodeOptions, decode_file};

fn data() -> PathBuf {
    common::shared_data()
}

/// A blue-sky ant photo (mean RGB about (91, 145, 209)).
fn ant_photo() -> PathBuf {
    data().join("hymenoptera/train/ants/0013035.jpg")
}

/// A brown-yellow bee photo (mean RGB about (130, 99, 15)).
fn bee_photo() -> PathBuf {
    data().join("hymenoptera/train/bees/1092977343_cb42b38d62.jpg")
}

fn photo(path: &Path, w: u32, h: u32) -> RgbImage {
    let img = decode_file(path, &DecodeOptions::default()).unwrap();
    image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
}

fn mean_rgb(img: &RgbImage) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            sum[c] += p[c] as f64;
        }
    }
    let n = (img.width() * img.height()) as f64;
    sum.map(|s| s / n)
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f64>().sqrt()
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .unwrap();
    out
}

/// A camera-style MJPEG frame: a JPEG without its DHT segments (UVC cameras leave them out).
fn mjpeg_frame(img: &RgbImage) -> Vec<u8> {
    let jpeg = jpeg_bytes(img);
    let mut out = jpeg[..2].to_vec();
    let mut i = 2;
    loop {
        let marker = jpeg[i + 1];
        if marker == 0xDA {
            out.extend_from_slice(&jpeg[i..]);
            // UVC payloads are often zero-padded after EOI.
            out.extend_from_slice(&[0; 16]);
            return out;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker != 0xC4 {
            out.extend_from_slice(&jpeg[i..i + 2 + len]);
        }
        i += 2 + len;
    }
}

/// Full-range BT.601 RGB -> Y'CbCr (JFIF), rounded.
fn rgb_to_ycbcr(p: [u8; 3]) -> [f64; 3] {
    let [r, g, b] = p.map(|v| v as f64);
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b,
    ]
}

/// Encodes an RGB image as packed YUYV (chroma averaged over each pixel pair), rows
/// `stride` bytes apart.
fn to_yuyv(img: &RgbImage, stride: usize) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0u8; stride * h];
    let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    for y in 0..h {
        for x in (0..w).step_by(2) {
            let a = rgb_to_ycbcr(img.get_pixel(x as u32, y as u32).0);
            let b = rgb_to_ycbcr(img.get_pixel(x as u32 + 1, y as u32).0);
            let o = y * stride + 2 * x;
            out[o] = q(a[0]);
            out[o + 1] = q((a[1] + b[1]) / 2.0);
            out[o + 2] = q(b[0]);
            out[o + 3] = q((a[2] + b[2]) / 2.0);
        }
    }
    out
}

/// A stand-in V4L2 stream: yields the scripted buffers and errors in order and panics if read
/// past its script (a source must not read again after a disconnect).
struct MockStream {
    script: VecDeque<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    reads: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

impl MockStream {
    fn new(script: Vec<io::Result<Vec<u8>>>) -> (Self, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let mock = MockStream {
            script: script.into(),
            current: Vec::new(),
            reads: Arc::clone(&reads),
            closed: Arc::clone(&closed),
        };
        (mock, reads, closed)
    }
}

impl RawStream for MockStream {
    fn next_buffer(&mut self) -> io::Result<&[u8]> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        match self.script.pop_front() {
            Some(Ok(bytes)) => {
                self.current = bytes;
                Ok(&self.current)
            }
            Some(Err(e)) => Err(e),
            None => panic!("the source read the stream after its end"),
        }
    }
}

impl Drop for MockStream {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

// ---- opening faults (B33) ----

#[test]
fn a_missing_device_is_an_immediate_error_naming_it() {
    for uri in ["/dev/video99", "v4l2:///dev/video99"] {
        let t0 = Instant::now();
        let err = camera::open(uri)
            .err()
            .expect("opening /dev/video99 must fail");
        let msg = err.to_string();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(msg, "camera v4l2:///dev/video99: no such device", "{uri}");
    }
}

#[test]
fn a_node_that_cannot_capture_is_an_immediate_error_with_the_reason() {
    let t0 = Instant::now();
    let msg = camera::open("v4l2:///dev/null").err().unwrap().to_string();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(msg.starts_with("camera v4l2:///dev/null: "), "{msg}");
    assert!(msg.contains("not a V4L2 device"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("video0");
    std::fs::write(&file, b"not a device").unwrap();
    let msg = camera::open(&format!("v4l2://{}", file.display()))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("not a character device"), "{msg}");
}

#[test]
fn device_listing_holds_only_capture_nodes() {
    // Whatever this machine has: every listed node must open as a camera or be busy; nodes
    // like /dev/null never appear.
    for dev in camera::list_devices() {
        assert!(dev.path.starts_with("/dev"), "{dev:?}");
        assert!(dev.uri.starts_with("v4l2:///dev/video"), "{dev:?}");
    }
}

// ---- frame validation and disconnects on a stand-in stream (B34) ----

#[test]
fn bad_mjpeg_frames_are_dropped_and_an_unplug_is_reported_once() {
    let ant = photo(&ant_photo(), 160, 120);
    let bee = photo(&bee_photo(), 160, 120);
    let good_ant = mjpeg_frame(&ant);
    let good_bee = mjpeg_frame(&bee);
    let cut = good_ant[..good_ant.len() / 2].to_vec();
    let mut cut_and_terminated = cut.clone();
    cut_and_terminated.extend_from_slice(&[0xFF, 0xD9]);
    let (mock, reads, closed) = MockStream::new(vec![
        Ok(good_ant.clone()),
        Ok(Vec::new()), // bytesused = 0
        Ok(cut),        // cut short in transfer: no EOI
        Ok(cut_and_terminated),
        Ok(good_bee),
        Err(io::Error::from_raw_os_error(19)), // ENODEV from VIDIOC_DQBUF
    ]);
    let format = RawFormat::Mjpeg {
        width: 160,
        height: 120,
    };
    let mut src = RawSource::new("v4l2:///dev/video0", format, mock);
    assert_eq!(src.describe(), "v4l2:///dev/video0 (MJPEG 160x120)");

    let first = src.next_frame().unwrap();
    assert_eq!(first.index, 0);
    assert_eq!(first.image.dimensions(), (160, 120));
    assert!(distance(mean_rgb(&first.image), mean_rgb(&ant)) < 3.0);
    // The JPEG bytes handed out are a complete file (Huffman tables restored), decodable by
    // any decoder.
    let jpeg = first.jpeg.as_ref().unwrap();
    let standalone = image::load_from_memory(jpeg).unwrap().to_rgb8();
    assert_eq!(standalone.dimensions(), (160, 120));

    let second = src.next_frame().unwrap();
    assert_eq!(second.index, 1);
    assert!(distance(mean_rgb(&second.image), mean_rgb(&bee)) < 3.0);
    assert!(second.timestamp >= first.timestamp);
    assert_eq!(src.dropped(), 3);

    let err = src.next_frame().unwrap_err();
    match &err {
        CameraError::Disconnected { device, reason } => {
            assert_eq!(device, "v4l2:///dev/video0");
            assert!(reason.contains("removed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(closed.load(Ordering::SeqCst), "the stream is released");
    let reads_at_error = reads.load(Ordering::SeqCst);
    assert_eq!(reads_at_error, 6);
    // Later calls answer at once with the same error and never touch the device again.
    let t0 = Instant::now();
    for _ in 0..1000 {
        assert_eq!(src.next_frame().unwrap_err(), err);
    }
    assert!(t0.elapsed() < Duration::from_millis(100));
    assert_eq!(reads.load(Ordering::SeqCst), reads_at_error);
}

#[test]
fn short_yuyv_frames_are_dropped_and_good_ones_convert() {
    let ant = photo(&ant_photo(), 64, 48);
    let stride = 64 * 2 + 32; // padded rows
    let good = to_yuyv(&ant, stride);
    let short = good[..good.len() / 3].to_vec();
    let (mock, _, _) = MockStream::new(vec![
        Ok(good.clone()),
        Ok(short),
        Ok(Vec::new()),
        Ok(good),
        Err(io::Error::from_raw_os_error(5)), // EIO
    ]);
    let format = RawFormat::Yuyv {
        width: 64,
        height: 48,
        bytes_per_line: stride as u32,
    };
    let mut src = RawSource::new("v4l2:///dev/video2", format, mock);
    for index in 0..2 {
        let f = src.next_frame().unwrap();
        assert_eq!(f.index, index);
        assert!(f.jpeg.is_none());
        // Chroma is shared by pixel pairs, so edges blur a little; the mean stays.
        assert!(distance(mean_rgb(&f.image), mean_rgb(&ant)) < 1.5);
    }
    assert_eq!(src.dropped(), 2);
    assert!(matches!(
        src.next_frame(),
        Err(CameraError::Disconnected { .. })
    ));
}

#[test]
fn a_stream_of_only_bad_frames_ends_as_a_disconnect_not_a_hang() {
    let n = MAX_CONSECUTIVE_DROPS as usize;
    let (mock, reads, _) = MockStream::new((0..n).map(|_| Ok(Vec::new())).collect());
    let format = RawFormat::Mjpeg {
        width: 8,
        height: 8,
    };
    let mut src = RawSource::new("v4l2:///dev/video0", format, mock);
    let err = src.next_frame().unwrap_err().to_string();
    assert!(err.contains("unusable"), "{err}");
    assert_eq!(reads.load(Ordering::SeqCst), n);
    assert_eq!(src.dropped(), MAX_CONSECUTIVE_DROPS);
}

#[test]
fn a_stalled_stream_is_reported_with_the_wait() {
    let (mock, _, _) = MockStream::new(vec![Err(io::Error::from(io::ErrorKind::TimedOut))]);
    let format = RawFormat::Mjpeg {
        width: 8,
        height: 8,
    };
    let mut src = RawSource::new("v4l2:///dev/video0", format, mock);
    let err = src.next_frame().unwrap_err().to_string();
    assert_eq!(
        err,
        "camera v4l2:///dev/video0 disconnected: no frame for 5 s"
    );
}

// ---- YUYV conversion ----

#[test]
fn yuyv_known_values_convert_to_the_expected_colours() {
    // Y = 235, Cb = Cr = 128: near white, and exactly grey 235 in full range.
    let white = yuyv_to_rgb(2, 1, 0, &[235, 128, 235, 128]).unwrap();
    assert_eq!(white.get_pixel(0, 0).0, [235, 235, 235]);
    assert_eq!(white.get_pixel(1, 0).0, [235, 235, 235]);
    // Pure red, encoded with the JFIF equations: (Y, Cb, Cr) = (76, 85, 255).
    let [y, cb, cr] = rgb_to_ycbcr([255, 0, 0]).map(|v| v.round().clamp(0.0, 255.0) as u8);
    assert_eq!((y, cb, cr), (76, 85, 255));
    let red = yuyv_to_rgb(2, 1, 0, &[y, cb, y, cr]).unwrap();
    assert_eq!(red.get_pixel(0, 0).0, [254, 0, 0]);
    // Pure green and blue come back within one level.
    for rgb in [[0u8, 255, 0], [0, 0, 255], [30, 144, 255]] {
        let [y, cb, cr] = rgb_to_ycbcr(rgb).map(|v| v.round() as u8);
        let back = ycbcr_to_rgb(y, cb, cr);
        for c in 0..3 {
            assert!(
                (back[c] as i32 - rgb[c] as i32).abs() <= 2,
                "{rgb:?} -> {back:?}"
            );
        }
    }
    // A buffer one byte short of the last row is refused, not half-converted.
    assert!(
        frame_from_buffer(
            &RawFormat::Yuyv {
                width: 2,
                height: 2,
                bytes_per_line: 4
            },
            &[16; 7]
        )
        .is_none()
    );
}

#[test]
fn mjpeg_of_the_wrong_size_is_dropped() {
    let img = photo(&ant_photo(), 32, 24);
    let frame = mjpeg_frame(&img);
    let right = RawFormat::Mjpeg {
        width: 32,
        height: 24,
    };
    let wrong = RawFormat::Mjpeg {
        width: 64,
        height: 48,
    };
    assert!(frame_from_buffer(&right, &frame).is_some());
    assert!(frame_from_buffer(&wrong, &frame).is_none());
}

// ---- folder source ----

/// A folder with b.png, a.jpg, c.jpg (real photos), a corrupt d.jpg, and files that are not
/// images or are hidden.
fn photo_folder() -> (tempfile::TempDir, Vec<RgbImage>) {
    let dir = tempfile::tempdir().unwrap();
    let ant = photo(&ant_photo(), 96, 72);
    let bee = photo(&bee_photo(), 96, 72);
    let ant2 = photo(
        &data().join("hymenoptera/train/ants/1030023514_aad5c608f9.jpg"),
        80,
        60,
    );
    std::fs::write(dir.path().join("a.jpg"), jpeg_bytes(&ant)).unwrap();
    bee.save(dir.path().join("b.png")).unwrap();
    std::fs::write(dir.path().join("c.JPG"), jpeg_bytes(&ant2)).unwrap();
    std::fs::write(
        dir.path().join("d.jpg"),
        b"\xFF\xD8\xFF\xE0 not really a jpeg",
    )
    .unwrap();
    std::fs::write(dir.path().join(".hidden.jpg"), jpeg_bytes(&bee)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let expect = ["a.jpg", "b.png", "c.JPG"]
        .iter()
        .map(|n| decode_file(&dir.path().join(n), &DecodeOptions::default()).unwrap())
        .collect();
    (dir, expect)
}

#[test]
fn a_folder_plays_its_images_in_name_order_looping_and_drops_bad_files() {
    let (dir, expect) = photo_folder();
    let mut src = camera::open(&dir.path().display().to_string()).unwrap();
    assert!(
        src.describe().contains("folder of 4 images, looping"),
        "{}",
        src.describe()
    );
    // Two passes: a, b, c, (d dropped), a, b, c.
    for i in 0..6u64 {
        let f = src.next_frame().unwrap();
        assert_eq!(f.index, i);
        assert_eq!(f.image, expect[(i % 3) as usize], "frame {i}");
        // JPEG files hand out their own bytes; the PNG does not.
        assert_eq!(f.jpeg.is_some(), i % 3 != 1, "frame {i}");
    }
    assert_eq!(src.dropped(), 1, "the corrupt d.jpg, once per pass");
    src.next_frame().unwrap();
    assert_eq!(src.dropped(), 2);
}

#[test]
fn a_folder_of_class_subfolders_plays_their_images_each_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let ant = photo(&ant_photo(), 96, 72);
    let bee = photo(&bee_photo(), 96, 72);
    for (class, img) in [("bees", &bee), ("ants", &ant)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        std::fs::write(dir.path().join(class).join("x.jpg"), jpeg_bytes(img)).unwrap();
    }
    // Deeper folders and hidden ones are not read.
    std::fs::create_dir_all(dir.path().join("ants/deeper")).unwrap();
    std::fs::write(dir.path().join("ants/deeper/y.jpg"), jpeg_bytes(&bee)).unwrap();
    std::fs::create_dir(dir.path().join(".cache")).unwrap();
    std::fs::write(dir.path().join(".cache/z.jpg"), jpeg_bytes(&bee)).unwrap();
    std::fs::write(dir.path().join("top.jpg"), jpeg_bytes(&bee)).unwrap();

    let mut src = camera::open(&format!("file://{}?loop=0", dir.path().display())).unwrap();
    assert!(
        src.describe().contains("folder of 3 images"),
        "{}",
        src.describe()
    );
    let mut seen = Vec::new();
    while let Ok(f) = src.next_frame() {
        let path = f.path.expect("a folder frame names its file");
        let rel = path.strip_prefix(dir.path()).unwrap().to_owned();
        let decoded = decode_file(&path, &DecodeOptions::default()).unwrap();
        assert_eq!(f.image, decoded, "{}", rel.display());
        // The ant photo is blue sky, the bee photo brown-yellow.
        assert_eq!(
            mean_rgb(&f.image)[2] > 100.0,
            rel.starts_with("ants"),
            "{}",
            rel.display()
        );
        seen.push(rel);
    }
    let expect: Vec<PathBuf> = ["ants/x.jpg", "bees/x.jpg", "top.jpg"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(seen, expect);

    // Subfolders without images: the error says they were looked in.
    let empty = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir(empty.path().join(class)).unwrap();
    }
    let msg = camera::open(&empty.path().display().to_string())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("no image files in the folder nor in its 2 subfolders"),
        "{msg}"
    );
}

#[test]
fn a_folder_played_once_ends_and_stays_ended() {
    let (dir, _) = photo_folder();
    let uri = format!("file://{}?loop=0", dir.path().display());
    let mut src = camera::open(&uri).unwrap();
    for _ in 0..3 {
        src.next_frame().unwrap();
    }
    for _ in 0..3 {
        assert!(matches!(src.next_frame(), Err(CameraError::Ended { .. })));
    }
}

#[test]
fn folder_fps_paces_delivery() {
    let (dir, _) = photo_folder();
    let mut src = camera::open(&format!("file://{}?fps=20", dir.path().display())).unwrap();
    let t0 = Instant::now();
    for _ in 0..5 {
        src.next_frame().unwrap();
    }
    // Frames due at 0, 50, 100, 150, 200 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(195),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn folders_without_a_readable_image_fail_to_open_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.txt"), b"x").unwrap();
    let msg = camera::open(&dir.path().display().to_string())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("no image files"), "{msg}");

    std::fs::write(dir.path().join("a.jpg"), b"").unwrap();
    std::fs::write(dir.path().join("b.png"), b"garbage").unwrap();
    let msg = camera::open(&dir.path().display().to_string())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("none of its 2 image files could be read"),
        "{msg}"
    );
    assert!(msg.contains("a.jpg: empty file"), "{msg}");

    let msg = camera::open(&format!("file://{}?speed=2", dir.path().display()))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("unknown query parameter \"speed\""), "{msg}");
}

// ---- video source ----

/// A 320x240, 10 fps clip: 1 s of the ant photo, then 1 s of the bee photo (20 frames).
fn make_clip(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let filter = "[0:v]scale=320:240,setsar=1,format=yuv420p[a];\
                  [1:v]scale=320:240,setsar=1,format=yuv420p[b];[a][b]concat=n=2:v=1:a=0[v]";
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-y",
            "-v",
            "error",
            "-loop",
            "1",
            "-framerate",
            "10",
            "-t",
            "1",
            "-i",
        ])
        .arg(ant_photo())
        .args(["-loop", "1", "-framerate", "10", "-t", "1", "-i"])
        .arg(bee_photo())
        .args(["-filter_complex", filter, "-map", "[v]", "-r", "10"])
        .arg(&out)
        .status()
        .expect("ffmpeg is needed to make the test clip");
    assert!(status.success());
    out
}

#[test]
fn a_video_plays_as_a_camera_with_the_photos_colours() {
    let dir = tempfile::tempdir().unwrap();
    let ant = mean_rgb(&photo(&ant_photo(), 320, 240));
    let bee = mean_rgb(&photo(&bee_photo(), 320, 240));
    // The two photos differ far more than the tolerance used below.
    assert!(distance(ant, bee) > 100.0);
    for name in ["clip.y4m", "clip.avi"] {
        let clip = make_clip(dir.path(), name);
        let mut src = camera::open(&format!("file://{}?loop=0&fps=0", clip.display())).unwrap();
        assert!(
            src.describe().contains("video 320x240, unpaced, once"),
            "{}",
            src.describe()
        );
        let mut frames = Vec::new();
        loop {
            match src.next_frame() {
                Ok(f) => frames.push(f),
                Err(CameraError::Ended { device }) => {
                    assert!(device.ends_with(name));
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(frames.len(), 20, "{name}");
        assert_eq!(src.dropped(), 0);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.index, i as u64);
            assert_eq!(f.image.dimensions(), (320, 240));
            let want = if i < 10 { ant } else { bee };
            let got = mean_rgb(&f.image);
            // yuv420p and the codec shift colours by a few levels.
            assert!(
                distance(got, want) < 12.0,
                "{name} frame {i}: {got:?} vs {want:?}"
            );
        }
        assert!(matches!(src.next_frame(), Err(CameraError::Ended { .. })));
    }
}

#[test]
fn a_video_loops_by_default_at_its_own_frame_rate() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.y4m");
    let ant = mean_rgb(&photo(&ant_photo(), 320, 240));
    let mut src = camera::open(&clip.display().to_string()).unwrap();
    assert!(
        src.describe().contains("10.0 fps, looping"),
        "{}",
        src.describe()
    );
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..23 {
        last = Some(src.next_frame().unwrap());
    }
    // 23 frames at 10 fps: the last is due 2.2 s after the first.
    assert!(
        t0.elapsed() >= Duration::from_millis(2150),
        "{:?}",
        t0.elapsed()
    );
    let last = last.unwrap();
    assert_eq!(last.index, 22);
    // Frame 22 is frame 2 of the second loop: the ant again.
    assert!(distance(mean_rgb(&last.image), ant) < 12.0);
}

#[test]
fn an_unreadable_video_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.mp4");
    std::fs::write(&bad, b"this is not a video").unwrap();
    let msg = camera::open(&bad.display().to_string())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.starts_with(&format!("camera file://{}: ", bad.display())),
        "{msg}"
    );
    assert!(msg.contains("not a readable video"), "{msg}");
}
