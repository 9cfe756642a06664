//! The JSON API's handlers. Every file and model operation runs on the blocking pool
//! (`spawn_blocking`) or on its own thread, never on the async workers. The endpoints are listed
//! in docs/studio.md.

//!
//! One file per resource: [`tasks`] (and categories), [`images`], [`training`], [`runs`] (and
//! live), [`source`] (the device camera) and [`instant`] (the preview).

mod images;
mod instant;
mod runs;
mod source;
mod tasks;
mod training;

pub use images::*;
pub use instant::*;
pub use runs::*;
pub use source::*;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
pub use tasks::*;
pub use training::*;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use nanoclass::data::decode::{DecodeOptions, decode_bytes, is_image_extension};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path as UrlPath, Query};
use crate::live::{LiveQuery, Scores};
use crate::store::{Saved, TaskKind, staleness};
use crate::training::{Next, TrainRequest, options};

/// Runs blocking work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}

/// `GET /api/info`. `devices` lists where this build can train (`cpu`, and `wgpu` / `cuda` in
/// builds with those features), `default_device` the one `$NANOCLASS_DEVICE` names (else `cpu`).
/// `backbones` lists the backbones whose pretrained weights are on the device
/// (what the page offers); `unavailable_backbones` the others, each with the one command that
/// gets its weights (`get`) and why it cannot train now (`reason`).
pub async fn info(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let (ready, unavailable) = blocking(|| Ok(backbone_availability())).await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "data": st.inner.store.root(),
        "source": st.inner.source.status(),
        "backbones": ready,
        "unavailable_backbones": unavailable,
        "modes": ["frozen", "full", "finetune", "instant", "partial"],
        // The devices this build trains on (the train form's choice), and the default.
        "devices": nanoclass::infer::device::DeviceChoice::ALL
            .into_iter()
            .filter(|d| d.compiled())
            .map(|d| d.name())
            .collect::<Vec<_>>(),
        "default_device": nanoclass::infer::device::DeviceChoice::from_env().name(),
        "task_kinds": ["classification", "regression"],
        "max_upload_bytes": st.inner.max_upload,
    })))
}

/// The backbones whose default weights (the registry entry named like them) are on the device,
/// and the others as `{name, weights, get, reason}`.
fn backbone_availability() -> (Vec<&'static str>, Vec<Value>) {
    use nanoclass::model::registry::{self, Availability};
    let mut ready = Vec::new();
    let mut unavailable = Vec::new();
    for arch in nanoclass::model::Arch::ALL {
        let Some(entry) = registry::find(arch.name()) else {
            continue;
        };
        let reason = match registry::availability(entry) {
            Availability::Ready(_) => {
                ready.push(arch.name());
                continue;
            }
            Availability::Absent => {
                format!("its weights ({}) are not on this device", entry.file_name)
            }
            Availability::Unusable(why) => format!("its weights cannot be used: {why}"),
        };
        unavailable.push(json!({
            "name": arch.name(),
            "weights": entry.file_name,
            "get": entry.get_command(),
            "reason": reason,
        }));
    }
    (ready, unavailable)
}
