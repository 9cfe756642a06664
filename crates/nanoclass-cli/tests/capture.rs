//! `nanoclass capture` end to end: the real binary on real photos and a video made from them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nanoclass::data::decode::{DecodeOptions, decode_bytes};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn nanoclass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nanoclass"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const ANT: &str = "hymenoptera/train/ants/0013035.jpg";
const BEE: &str = "hymenoptera/train/bees/1092977343_cb42b38d62.jpg";

/// A folder holding three real photos.
fn photo_folder(root: &Path) -> PathBuf {
    let dir = root.join("photos");
    std::fs::create_dir(&dir).unwrap();
    for (i, rel) in [ANT, BEE, "hymenoptera/train/ants/1030023514_aad5c608f9.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(data().join(rel), dir.join(format!("{i}.jpg"))).unwrap();
    }
    dir
}

/// A 320x240 clip, 10 fps: 1 s of the ant photo, then 1 s of the bee photo (20 frames).
fn clip(root: &Path) -> PathBuf {
    let out = root.join("clip.y4m");
    let filter = "[0:v]scale=320:240,setsar=1,format=yuv420p[a];\
                  [1:v]scale=320:240,setsar=1,format=yuv420p[b];[a][b]concat=n=2:v=1:a=0[v]";
    let status = Command::new("ffmpeg")
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
        .arg(data().join(ANT))
        .args(["-loop", "1", "-framerate", "10", "-t", "1", "-i"])
        .arg(data().join(BEE))
        .args(["-filter_complex", filter, "-map", "[v]", "-r", "10"])
        .arg(&out)
        .status()
        .expect("ffmpeg is needed to make the test clip");
    assert!(status.success());
    out
}

/// The files of `dir`, sorted, with their decoded size; fails on anything that is not a whole
/// JPEG.
fn saved_jpegs(dir: &Path) -> Vec<(String, (u32, u32))> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            assert!(
                bytes.starts_with(&[0xFF, 0xD8]) && bytes.ends_with(&[0xFF, 0xD9]),
                "{n}"
            );
            let img = decode_bytes(&bytes, Path::new(&n), &DecodeOptions::default())
                .unwrap_or_else(|e| panic!("{e}"));
            (n, img.dimensions())
        })
        .collect()
}

fn is_time_name(n: &str) -> bool {
    let Some(stem) = n.strip_suffix(".jpg") else {
        return false;
    };
    let Some((millis, hex)) = stem.split_once('_') else {
        return false;
    };
    millis.len() >= 13
        && millis.bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 16
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn capture_from_a_folder_saves_whole_uniquely_named_jpegs() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = photo_folder(tmp.path());
    let out = tmp.path().join("data");
    let o = nanoclass(&[
        "capture",
        "--source",
        photos.to_str().unwrap(),
        "--category",
        "worker ants é",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let dir = out.join("worker ants é");
    let stdout = text(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for l in &lines {
        assert!(Path::new(l).starts_with(&dir), "{l}");
    }
    assert!(
        text(&o.stderr).contains(&format!("saved 5 images to {}", dir.display())),
        "{}",
        text(&o.stderr)
    );
    let files = saved_jpegs(&dir);
    assert_eq!(files.len(), 5, "no temporary file is left");
    assert!(files.iter().all(|(n, _)| is_time_name(n)), "{files:?}");
    // The folder's own JPEG bytes are saved, not a re-encoding: the first capture is 0.jpg.
    let first = Path::new(lines[0]);
    assert_eq!(
        std::fs::read(first).unwrap(),
        std::fs::read(photos.join("0.jpg")).unwrap()
    );
    // Frames 4 and 5 are the folder's photos 0 and 1 again (the folder loops).
    assert_eq!(
        std::fs::read(lines[3]).unwrap(),
        std::fs::read(photos.join("0.jpg")).unwrap()
    );
}

#[test]
fn two_captures_at_once_into_one_category_never_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = photo_folder(tmp.path());
    let out = tmp.path().join("data");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_nanoclass"))
            .args(["capture", "--source"])
            .arg(&photos)
            .args(["--category", "ants", "--out"])
            .arg(&out)
            .args(["--count", "12"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success() && b.status.success());
    let files = saved_jpegs(&out.join("ants"));
    assert_eq!(files.len(), 24);
    let names: HashSet<_> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 24);
}

#[test]
fn capture_from_a_video_with_a_point_names_files_like_the_course() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = clip(tmp.path());
    let out = tmp.path().join("xy");
    let source = format!("file://{}?fps=0", clip.display());
    let o = nanoclass(&[
        "capture",
        "--source",
        &source,
        "--category",
        "apex",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "4",
        "--point",
        "300,17",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let files = saved_jpegs(&out.join("apex"));
    assert_eq!(files.len(), 4);
    for (name, img) in &files {
        let rest = name
            .strip_prefix("300_17_")
            .unwrap_or_else(|| panic!("{name}"));
        let uuid = rest.strip_suffix(".jpg").unwrap();
        assert_eq!(uuid.len(), 36, "{name}");
        assert_eq!(uuid.as_bytes()[14], b'4', "a version-4 UUID: {name}");
        assert_eq!(*img, (320, 240));
    }

    // A point outside the frame is refused before anything is written.
    let o = nanoclass(&[
        "capture",
        "--source",
        &source,
        "--category",
        "apex",
        "--out",
        out.to_str().unwrap(),
        "--point",
        "320,10",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("point (320, 10) is outside the 320x240 frame"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(saved_jpegs(&out.join("apex")).len(), 4);
}

#[test]
fn a_source_that_ends_early_stops_with_one_message_and_whole_files() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = clip(tmp.path());
    let out = tmp.path().join("data");
    let source = format!("file://{}?loop=0&fps=0", clip.display());
    let o = nanoclass(&[
        "capture",
        "--source",
        &source,
        "--category",
        "bees",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "25",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert!(
        stderr.contains("end of stream (20 of 25 frames saved in"),
        "{stderr}"
    );
    assert_eq!(text(&o.stdout).lines().count(), 20);
    assert_eq!(saved_jpegs(&out.join("bees")).len(), 20);
}

#[test]
fn bad_category_names_are_rejected_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = photo_folder(tmp.path());
    let out = tmp.path().join("data");
    for (name, why) in [
        ("../escape", "path separator"),
        ("..", "only dots"),
        ("", "is empty"),
        ("a\nb", "control character"),
    ] {
        let o = nanoclass(&[
            "capture",
            "--source",
            photos.to_str().unwrap(),
            "--category",
            name,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{name:?}");
        let stderr = text(&o.stderr);
        assert!(
            stderr.contains("category name") && stderr.contains(why),
            "{name:?}: {stderr}"
        );
        assert!(!out.exists(), "{name:?} created the dataset folder");
    }
}

#[test]
fn a_missing_device_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = nanoclass(&[
        "capture",
        "--source",
        "/dev/video99",
        "--category",
        "ants",
        "--out",
        tmp.path().join("data").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr).trim(),
        "error: camera v4l2:///dev/video99: no such device"
    );
}

#[test]
fn a_video_without_ffmpeg_installed_says_to_install_it() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = clip(tmp.path());
    let empty_path = tmp.path().join("no-programs");
    std::fs::create_dir(&empty_path).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_nanoclass"))
        .args(["capture", "--source"])
        .arg(&clip)
        .args(["--category", "ants", "--out"])
        .arg(tmp.path().join("data"))
        .env("PATH", &empty_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(stderr.contains(&clip.display().to_string()), "{stderr}");
    assert!(stderr.contains("install ffmpeg"), "{stderr}");
}
