//! The JSON API's handlers. Every file and model operation runs on the blocking pool
//! (`spawn_blocking`) or on its own thread, never on the async workers. The endpoints are listed
//! in the README's "Studio" section.

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
use crate::store::{TaskKind, staleness};
use crate::training::{Next, TrainRequest, options};

/// Runs blocking work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}

/// `GET /api/info`.
pub async fn info(State(st): State<AppState>) -> Json<Value> {
    let archs: Vec<&str> = nanoclass::model::Arch::ALL
        .iter()
        .map(|a| a.name())
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "data": st.inner.store.root(),
        "source": st.inner.source.status(),
        "backbones": archs,
        "modes": ["frozen", "full", "finetune", "instant", "partial"],
        "task_kinds": ["classification", "regression"],
        "max_upload_bytes": st.inner.max_upload,
    }))
}
