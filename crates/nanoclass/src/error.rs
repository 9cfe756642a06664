//! The library's error type. Every message names the file, shape or value that is wrong.

use std::path::PathBuf;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by nanoclass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        // Not a `source`: the message already carries it, and a report of the whole chain
        // (`{:#}`) would repeat it.
        err: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("{path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    /// The dataset on disk cannot be used as given.
    #[error("dataset {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    /// A labels file (`labels.txt`) cannot be read, written, or disagrees with the model.
    #[error("labels {path}: {reason}")]
    Labels { path: PathBuf, reason: String },
    /// A weights file could not be loaded into the model.
    #[error("weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    /// A run directory is missing something or disagrees with the request.
    #[error("run {path}: {reason}")]
    Run { path: PathBuf, reason: String },
    /// Downloading or caching pretrained weights failed.
    #[error("{0}")]
    Registry(String),
    /// Training cannot go on (bad settings, non-finite loss, ...).
    #[error("{0}")]
    Train(String),
    /// A camera source could not be opened or failed while capturing. `device` is the source's
    /// URI (`v4l2:///dev/video0`, `file:///data/clip.mp4`), `reason` what went wrong
    /// (`no such device`, `not a video capture device`, ...).
    #[error("camera {device}: {reason}")]
    Camera { device: String, reason: String },
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}
