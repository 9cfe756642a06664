//! A folder of images played as a camera (`file:///abs/folder`, or a folder path).
//!
//! The folder's image files and those of its subfolders one level down (an ImageFolder's
//! `<class>/<image>` or a split's `val/<class>/<image>`; by extension, any case, as the dataset
//! scanner counts them; hidden files and folders skipped) are listed once when it is opened and
//! delivered in the order of their paths relative to the folder (each frame carries its file's
//! path), decoded by [`decode_bytes`](crate::data::decode::decode_bytes) (EXIF orientation,
//! alpha, CMYK, ... exactly as training sees them), looping forever. A file that cannot be read
//! or decoded is dropped (counted in [`Source::dropped`]) and the next one is delivered.
//!
//! Query parameters: `?fps=N` delivers at most `N` frames per second (default: as fast as the
//! caller pulls); `?loop=0` plays the folder once, then returns [`CameraError::Ended`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::{CameraError, Frame, Pacer, Query, Source, camera_error};
use crate::Result;
use crate::data::decode::{DecodeOptions, decode_bytes, is_image_extension};

/// A folder of images as a [`Source`].
pub struct FolderSource {
    device: String,
    files: Vec<PathBuf>,
    /// Index of the next file to read.
    pos: usize,
    /// A frame decoded ahead (the first good one, found while opening), with its file.
    pending: Option<(Decoded, PathBuf)>,
    /// Whether the current pass over the files delivered anything.
    good_in_pass: bool,
    looping: bool,
    period: Option<Duration>,
    pacer: Pacer,
    opened: Instant,
    delivered: u64,
    dropped: u64,
    finished: Option<CameraError>,
}

impl FolderSource {
    /// Lists the folder and decodes images until the first readable one.
    ///
    /// # Errors
    /// [`Error::Camera`](crate::Error::Camera) naming the folder: it cannot be listed, holds no
    /// image file, or none of its images can be decoded (with the first file's reason); an
    /// unknown query parameter.
    pub fn open(device: &str, dir: &Path, query: &Query) -> Result<FolderSource> {
        query.only(device, &["fps", "loop"])?;
        let period = query.fps(device)?.flatten();
        let looping = query.looping(device)?;
        let fail = |reason: String| camera_error(device, reason);
        let mut files = image_files(dir).map_err(|e| fail(format!("cannot list: {e}")))?;
        let subfolders = visible_subfolders(dir).map_err(|e| fail(format!("cannot list: {e}")))?;
        for sub in &subfolders {
            // A subfolder that cannot be listed is left out; the others still play.
            files.extend(image_files(sub).unwrap_or_default());
        }
        files.sort();
        if files.is_empty() {
            return Err(fail(format!(
                "no image files in the folder{} (jpg, jpeg, png, bmp, gif, webp, tif, tiff)",
                if subfolders.is_empty() {
                    String::new()
                } else {
                    format!(
                        " nor in its {} subfolders (one level down is read, not deeper)",
                        subfolders.len()
                    )
                }
            )));
        }
        let mut source = FolderSource {
            device: device.to_owned(),
            files,
            pos: 0,
            pending: None,
            good_in_pass: false,
            looping,
            period,
            pacer: Pacer::new(period),
            opened: Instant::now(),
            delivered: 0,
            dropped: 0,
            finished: None,
        };
        let mut first_error = None;
        while source.pos < source.files.len() {
            let path = source.files[source.pos].clone();
            source.pos += 1;
            match read_image(&path) {
                Ok(frame) => {
                    source.pending = Some((frame, path));
                    source.good_in_pass = true;
                    return Ok(source);
                }
                Err(e) => {
                    source.dropped += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(fail(format!(
            "none of its {} image files could be read (first: {})",
            source.files.len(),
            first_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// The image files, in delivery order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// A decoded file: the image, and its bytes when it is a JPEG.
type Decoded = (RgbImage, Option<Vec<u8>>);

/// The visible image files directly in `dir` (not sorted).
fn image_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(visible_entries(dir)?
        .into_iter()
        .filter(|p| is_image_extension(p) && p.is_file())
        .collect())
}

/// The visible folders directly in `dir`.
fn visible_subfolders(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(visible_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

/// The entries of `dir` whose names do not start with `.`.
fn visible_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect())
}

/// Reads and decodes one file; the JPEG bytes are kept when the file is a JPEG.
fn read_image(path: &Path) -> Result<Decoded> {
    let bytes = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
    let image = decode_bytes(&bytes, path, &DecodeOptions::default())?;
    let jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]).then_some(bytes);
    Ok((image, jpeg))
}

impl Source for FolderSource {
    fn next_frame(&mut self) -> std::result::Result<Frame, CameraError> {
        if let Some(err) = &self.finished {
            return Err(err.clone());
        }
        loop {
            let (decoded, path) = if let Some(pending) = self.pending.take() {
                pending
            } else {
                if self.pos == self.files.len() {
                    let end = if !self.looping {
                        Some(CameraError::Ended {
                            device: self.device.clone(),
                        })
                    } else if !self.good_in_pass {
                        Some(CameraError::Disconnected {
                            device: self.device.clone(),
                            reason: "none of the folder's images could be read any more".to_owned(),
                        })
                    } else {
                        None
                    };
                    if let Some(err) = end {
                        self.finished = Some(err.clone());
                        return Err(err);
                    }
                    self.pos = 0;
                    self.good_in_pass = false;
                }
                let path = self.files[self.pos].clone();
                self.pos += 1;
                match read_image(&path) {
                    Ok(frame) => {
                        self.good_in_pass = true;
                        (frame, path)
                    }
                    Err(_) => {
                        self.dropped += 1;
                        continue;
                    }
                }
            };
            self.pacer.wait();
            let (image, jpeg) = decoded;
            let frame = Frame {
                image,
                jpeg,
                timestamp: self.opened.elapsed(),
                index: self.delivered,
                path: Some(path),
            };
            self.delivered += 1;
            return Ok(frame);
        }
    }

    fn describe(&self) -> String {
        let rate = match self.period {
            Some(p) => format!(", {:.3} fps", 1.0 / p.as_secs_f64()),
            None => String::new(),
        };
        format!(
            "{} (folder of {} images, {}{rate})",
            self.device,
            self.files.len(),
            if self.looping { "looping" } else { "once" }
        )
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}
