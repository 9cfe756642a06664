//! The device's camera source, shared by every page: one reader thread per source, publishing
//! the latest frame (RGB and JPEG) on a watch channel. Frames are read only while someone
//! watches (a preview, a live view, a capture waiting for its frame), so an idle studio costs
//! nothing.

use std::io::Cursor;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Bytes;
use image::RgbImage;
use nanoclass::camera::{self, CameraError};
use serde::Serialize;
use tokio::sync::watch;

/// JPEG quality of frames re-encoded for the preview stream and for captures (the camera's own
/// JPEG is used as-is when it gives one).
pub const JPEG_QUALITY: u8 = 90;

/// One frame from the device source.
#[derive(Debug)]
pub struct SharedFrame {
    /// RGB pixels.
    pub image: RgbImage,
    /// The frame as JPEG.
    pub jpeg: Bytes,
    /// Frame number from the camera (0-based).
    pub index: u64,
    /// Which source produced it ([`SourceStatus::generation`]).
    pub generation: u64,
}

/// What the page shows about the device source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// The URI given (`v4l2:///dev/video0`, `file:///path?fps=10`), None when none is set.
    pub uri: Option<String>,
    /// The source's own description.
    pub description: Option<String>,
    /// The last error (device unplugged, clip ended), None while frames flow.
    pub error: Option<String>,
    /// Increases each time the source is replaced.
    pub generation: u64,
}

/// The device source, if any, and its latest frame.
#[derive(Debug)]
pub struct SourceHub {
    status: Mutex<SourceStatus>,
    tx: watch::Sender<Option<Arc<SharedFrame>>>,
}

impl Default for SourceHub {
    fn default() -> Self {
        SourceHub {
            status: Mutex::new(SourceStatus::default()),
            tx: watch::channel(None).0,
        }
    }
}

impl SourceHub {
    /// A hub with no source.
    pub fn new() -> Arc<SourceHub> {
        Arc::new(SourceHub::default())
    }

    /// The current status.
    pub fn status(&self) -> SourceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Subscribes to frames. Holding the receiver keeps the reader reading.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<SharedFrame>>> {
        self.tx.subscribe()
    }

    /// Opens `uri` (see [`nanoclass::camera::open`]) and makes it the source, replacing the
    /// previous one. Blocks until the device is open.
    ///
    /// # Errors
    /// The camera's error (device missing, not a capture device, no images in the folder), as
    /// its message; the previous source then stays in place.
    pub fn set_source(self: &Arc<Self>, uri: &str) -> Result<SourceStatus, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let generation = self.status().generation + 1;
        let weak = Arc::downgrade(self);
        let uri_owned = uri.to_string();
        std::thread::Builder::new()
            .name("studio-source".into())
            .spawn(move || {
                let mut src = match camera::open(&uri_owned) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(src.describe()));
                read_frames(weak, &uri_owned, generation, &mut src);
            })
            .map_err(|e| format!("cannot start the camera thread: {e}"))?;
        let description = ready_rx
            .recv()
            .map_err(|_| format!("{uri}: the camera thread stopped while opening"))??;
        let mut st = self.status.lock().map_err(|_| "source state poisoned")?;
        *st = SourceStatus {
            uri: Some(uri.to_string()),
            description: Some(description),
            error: None,
            generation,
        };
        Ok(st.clone())
    }

    fn current_generation(&self) -> u64 {
        self.status.lock().map(|s| s.generation).unwrap_or(0)
    }

    fn set_error(&self, generation: u64, error: Option<String>) {
        if let Ok(mut st) = self.status.lock()
            && st.generation == generation
        {
            st.error = error;
        }
    }

    /// Waits (up to `timeout`) for a frame newer than the one current at the call, so every
    /// capture is a distinct frame.
    pub async fn next_frame(&self, timeout: Duration) -> Result<Arc<SharedFrame>, String> {
        let st = self.status();
        if st.uri.is_none() {
            return Err("no device source is set: start the studio with --source URI, or choose one on the page".into());
        }
        let mut rx = self.subscribe();
        rx.mark_unchanged();
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                if let Some(f) = rx.borrow_and_update().clone()
                    && f.generation == self.current_generation()
                {
                    return Some(f);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(f)) => Ok(f),
            _ => Err(match self.status().error {
                Some(e) => e,
                None => format!(
                    "no frame from {} within {:.1} s",
                    st.uri.unwrap_or_default(),
                    timeout.as_secs_f64()
                ),
            }),
        }
    }
}

/// The reader loop of one source: reads while someone subscribes and this source is current;
/// stops when the hub is gone or another source replaced it. A disconnected camera is reopened
/// once a second.
fn read_frames(
    hub: Weak<SourceHub>,
    uri: &str,
    generation: u64,
    src: &mut Box<dyn camera::Source>,
) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        if h.current_generation() > generation {
            return;
        }
        if h.tx.receiver_count() == 0 {
            drop(h);
            std::thread::sleep(Duration::from_millis(30));
            continue;
        }
        drop(h);
        match src.next_frame() {
            Ok(frame) => {
                let jpeg = match frame.jpeg {
                    Some(j) => Bytes::from(j),
                    None => match encode_jpeg(&frame.image) {
                        Ok(j) => j,
                        Err(e) => {
                            if let Some(h) = hub.upgrade() {
                                h.set_error(generation, Some(e));
                            }
                            continue;
                        }
                    },
                };
                let Some(h) = hub.upgrade() else { return };
                if h.current_generation() > generation {
                    return;
                }
                h.set_error(generation, None);
                h.tx.send_replace(Some(Arc::new(SharedFrame {
                    image: frame.image,
                    jpeg,
                    index: frame.index,
                    generation,
                })));
            }
            Err(e) => {
                let Some(h) = hub.upgrade() else { return };
                h.set_error(generation, Some(e.to_string()));
                drop(h);
                match e {
                    CameraError::Disconnected { .. } => loop {
                        std::thread::sleep(Duration::from_secs(1));
                        match hub.upgrade() {
                            Some(h) if h.current_generation() == generation => {}
                            _ => return,
                        }
                        if let Ok(s) = camera::open(uri) {
                            *src = s;
                            break;
                        }
                    },
                    _ => return,
                }
            }
        }
    }
}

/// Encodes RGB pixels as a baseline JPEG at [`JPEG_QUALITY`].
pub fn encode_jpeg(img: &RgbImage) -> Result<Bytes, String> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(img)
        .map_err(|e| format!("cannot encode the frame as JPEG: {e}"))?;
    Ok(Bytes::from(out.into_inner()))
}
