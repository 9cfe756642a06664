//! A folder of images played as a camera (`file:///abs/folder`, or a folder path).
//!
//! The folder's image files (by extension, any case, as the dataset scanner counts them; hidden
//! files skipped; not recursive) are listed once when it is opened and delivered in file-name
//! order, decoded by [`decode_bytes`](crate::data::decode::decode_bytes) (EXIF orientation,
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
    /// A frame decoded ahead (the first good one, found while opening).
    pending: Option<(RgbImage, Option<Vec<u8>>)>,
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
        let entries = std::fs::read_dir(dir).map_err(|e| fail(format!("cannot list: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let hidden = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                !hidden && is_image_extension(p) && p.is_file()
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(fail(
                "no image files in the folder (jpg, jpeg, png, bmp, gif, webp, tif, tiff)"
                    .to_owned(),
            ));
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
                    source.pending = Some(frame);
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

/// Reads and decodes one file; the JPEG bytes are kept when the file is a JPEG.
fn read_image(path: &Path) -> Result<(RgbImage, Option<Vec<u8>>)> {
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
            let decoded = if let Some(frame) = self.pending.take() {
                frame
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
                let path = &self.files[self.pos];
                self.pos += 1;
                match read_image(path) {
                    Ok(frame) => {
                        self.good_in_pass = true;
                        frame
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
