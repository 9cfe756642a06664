//! The JSON API's handlers. Every file and model operation runs on the blocking pool
//! (`spawn_blocking`) or on its own thread, never on the async workers. The endpoints are listed
//! in the README's "Studio" section.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
async fn blocking<T: Send + 'static>(
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

// ---------------------------------------------------------------- tasks

/// `GET /api/tasks`.
pub async fn list_tasks(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let tasks = blocking(move || store.list_tasks()).await?;
    Ok(Json(json!(tasks)))
}

/// Body of `POST /api/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Task name (a folder name: the category rules apply).
    pub name: String,
    /// Task kind (default `classification`).
    pub kind: Option<TaskKind>,
}

/// `POST /api/tasks` → 201.
pub async fn create_task(
    State(st): State<AppState>,
    Json(body): Json<NewTask>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let store = st.inner.store.clone();
    let kind = body.kind.unwrap_or(TaskKind::Classification);
    let t = blocking(move || store.create_task(&body.name, kind)).await?;
    Ok((StatusCode::CREATED, Json(json!(t))))
}

/// `GET /api/tasks/{task}`.
pub async fn get_task(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let t = blocking(move || store.task_info(&task)).await?;
    Ok(Json(json!(t)))
}

/// `DELETE /api/tasks/{task}` → 204 (the folder moves to `DATA/.trash/`).
pub async fn delete_task(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<StatusCode> {
    if st.inner.trainer.running(&task) {
        return Err(ApiError::conflict(format!(
            "task {task:?} is training; stop it first"
        )));
    }
    let store = st.inner.store.clone();
    let t = task.clone();
    blocking(move || store.delete_task(&t)).await?;
    if let Some(hub) = &st.inner.instant {
        hub.forget(&task);
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- categories

/// Body of `POST .../categories` and `PATCH .../categories/{category}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Named {
    /// Category name (folder name).
    pub name: String,
}

fn refuse_while_training(st: &AppState, task: &str) -> ApiResult<()> {
    if st.inner.trainer.running(task) {
        return Err(ApiError::conflict(format!(
            "task {task:?} is training; stop it or wait before changing its categories"
        )));
    }
    Ok(())
}

/// `POST /api/tasks/{task}/categories` → 201.
pub async fn add_category(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
    Json(body): Json<Named>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let store = st.inner.store.clone();
    let c = blocking(move || store.add_category(&task, &body.name)).await?;
    Ok((StatusCode::CREATED, Json(json!(c))))
}

/// `PATCH /api/tasks/{task}/categories/{category}` (rename).
pub async fn rename_category(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
    Json(body): Json<Named>,
) -> ApiResult<Json<Value>> {
    refuse_while_training(&st, &task)?;
    let store = st.inner.store.clone();
    let t = task.clone();
    let c = blocking(move || store.rename_category(&t, &category, &body.name)).await?;
    refresh_instant_now(&st, &task).await;
    Ok(Json(json!(c)))
}

/// `DELETE /api/tasks/{task}/categories/{category}` → 204 (moved to the task's `trash/`).
pub async fn delete_category(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    refuse_while_training(&st, &task)?;
    let store = st.inner.store.clone();
    let t = task.clone();
    blocking(move || store.delete_category(&t, &category)).await?;
    refresh_instant_now(&st, &task).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- images

/// `GET /api/tasks/{task}/categories/{category}/images`.
pub async fn list_images(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let imgs = blocking(move || store.list_images(&task, &category)).await?;
    Ok(Json(json!(imgs)))
}

/// The file extension for encoded image bytes, from their signature (they decoded already).
fn extension_for(bytes: &[u8]) -> Option<&'static str> {
    use image::ImageFormat as F;
    let ext = match image::guess_format(bytes).ok()? {
        F::Jpeg => "jpg",
        F::Png => "png",
        F::Gif => "gif",
        F::Bmp => "bmp",
        F::WebP => "webp",
        F::Tiff => "tiff",
        _ => return None,
    };
    is_image_extension(Path::new(&format!("x.{ext}"))).then_some(ext)
}

/// Checks that every upload decodes (with the training decoder), then saves them all; one bad
/// file saves nothing and answers 400 naming it and the reason. In a regression task every
/// file must be named `<x>_<y>_<uuid>.<ext>` with its point inside the image (it is saved
/// under that point with a new uuid).
fn save_checked(
    st: &AppState,
    task: &str,
    category: &str,
    items: Vec<(String, Bytes)>,
) -> ApiResult<Vec<String>> {
    let store = &st.inner.store;
    store.category_dir(task, category)?;
    let regression = store.task_meta(task)?.kind == TaskKind::Regression;
    let mut ready = Vec::new();
    for (name, bytes) in &items {
        let point =
            if regression {
                Some(point_from_name(name).map_err(|e| {
                    ApiError::bad_request(format!("{}; nothing was saved", e.message))
                })?)
            } else {
                None
            };
        let (bytes, ext, img) = storable(bytes, name, point.is_some())
            .map_err(|e| ApiError::bad_request(format!("{}; nothing was saved", e.message)))?;
        if let Some(p) = point {
            check_point(&img, p, name)
                .map_err(|e| ApiError::bad_request(format!("{}; nothing was saved", e.message)))?;
        }
        ready.push((bytes, ext, point));
    }
    ready
        .into_iter()
        .map(|(bytes, ext, point)| match point {
            Some(p) => store.save_point_image(task, category, &bytes, ext, p),
            None => store.save_image(task, category, &bytes, ext),
        })
        .collect()
}

/// Decodes encoded image bytes with the training decoder and returns what to store: the bytes
/// as given with their extension, or the image re-encoded as JPEG when its format is not one
/// the dataset scanner lists, and the decoded image (full size when `full`, so that a point
/// can be checked against it; otherwise possibly DCT-scaled). 400 naming `name` and the reason
/// when it does not decode.
fn storable(
    bytes: &[u8],
    name: &str,
    full: bool,
) -> ApiResult<(Vec<u8>, &'static str, image::RgbImage)> {
    let opts = DecodeOptions {
        min_side: if full { None } else { Some(256) },
    };
    let img = decode_bytes(bytes, Path::new(name), &opts)?;
    Ok(match extension_for(bytes) {
        Some(ext) => (bytes.to_vec(), ext, img),
        // A format that decodes but is not one the dataset scanner lists: store as JPEG.
        None => (
            crate::source::encode_jpeg(&img)
                .map_err(ApiError::internal)?
                .to_vec(),
            "jpg",
            img,
        ),
    })
}

/// The point of a regression file name `<x>_<y>_<uuid>.<ext>`; 400 naming the file otherwise.
fn point_from_name(name: &str) -> ApiResult<[u32; 2]> {
    crate::store::split_point_name(name)
        .map(|(p, _, _)| p)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}: a regression task's image must be named <x>_<y>_<uuid>.jpg with its \
                 point in integer pixels (or be saved by clicking the point on the live frame)"
            ))
        })
}

/// Checks that a point lies in an image: `x` in `0..width`, `y` in `0..height` (integer
/// pixels; continuous coordinates `[0, width)`). 400 naming `what` (a file or "the frame"),
/// the point, the image size and the allowed ranges.
pub fn check_point(img: &image::RgbImage, point: [u32; 2], what: &str) -> ApiResult<()> {
    let (w, h) = img.dimensions();
    if point[0] < w && point[1] < h {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "{what}: point ({}, {}) lies outside the {w}x{h} image (x must be in 0..={}, y in 0..={})",
        point[0],
        point[1],
        w.saturating_sub(1),
        h.saturating_sub(1)
    )))
}

/// Query of `POST .../points`: the clicked point in integer pixels of the posted image.
#[derive(Debug, Deserialize)]
pub struct PointQuery {
    /// Pixels from the left edge, `0..width`.
    pub x: Option<String>,
    /// Pixels from the top edge, `0..height`.
    pub y: Option<String>,
}

/// Parses one coordinate of a point: a non-negative integer number of pixels.
fn coordinate(axis: &str, v: Option<&str>, what: &str) -> ApiResult<u32> {
    let v = v.ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what}: no {axis}: the point is ?x=X&y=Y in pixels"
        ))
    })?;
    v.trim().parse::<u32>().map_err(|_| {
        ApiError::bad_request(format!(
            "{what}: {axis} = {v:?} is not a non-negative integer number of pixels"
        ))
    })
}

/// `POST /api/tasks/{task}/categories/{category}/points?x=X&y=Y` → 201: saves an encoded
/// image (the frame the user clicked on) into a regression category as `<x>_<y>_<uuid>.jpg`.
/// 400 when the task is not a regression task, the image does not decode, or the point is
/// not an integer pixel inside it; nothing is saved then.
pub async fn save_point(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
    Query(q): Query<PointQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let store = st.inner.store.clone();
    let (t, c) = (task.clone(), category.clone());
    let (name, point) = blocking(move || {
        store.category_dir(&t, &c)?;
        require_kind(
            &store,
            &t,
            TaskKind::Regression,
            "saving a frame with a point",
        )?;
        let what = "the frame";
        let point = [
            coordinate("x", q.x.as_deref(), what)?,
            coordinate("y", q.y.as_deref(), what)?,
        ];
        let fail =
            |e: ApiError| ApiError::new(e.status, format!("{}; nothing was saved", e.message));
        let (bytes, ext, img) = storable(&body, "frame", true).map_err(fail)?;
        check_point(&img, point, what).map_err(fail)?;
        Ok((store.save_point_image(&t, &c, &bytes, ext, point)?, point))
    })
    .await?;
    let count = category_count(&st, &task, &category).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"saved": [name], "point": point, "count": count})),
    ))
}

/// Body of `PUT .../images/{image}/point`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPoint {
    /// Pixels from the left edge of the stored image, `0..width`.
    pub x: u32,
    /// Pixels from the top edge, `0..height`.
    pub y: u32,
}

/// `PUT /api/tasks/{task}/categories/{category}/images/{image}/point` with `{x, y}`: corrects a
/// regression image's point by renaming it to `<x>_<y>_<uuid>.<ext>` (atomic; the bytes are
/// untouched) → `{name, point, count}`. 400 when the point lies outside the image or the task
/// is not a regression task, 404 for a missing image, 409 when the new name is taken.
pub async fn move_point(
    State(st): State<AppState>,
    UrlPath((task, category, image)): UrlPath<(String, String, String)>,
    Json(body): Json<NewPoint>,
) -> ApiResult<Json<Value>> {
    refuse_while_training(&st, &task)?;
    let store = st.inner.store.clone();
    let (t, c) = (task.clone(), category.clone());
    let point = [body.x, body.y];
    let name = blocking(move || {
        require_kind(&store, &t, TaskKind::Regression, "moving a point")?;
        let path = store.image_path(&t, &c, &image)?;
        let img = nanoclass::data::decode::decode_file(&path, &DecodeOptions::default())?;
        check_point(&img, point, &image)?;
        store.move_point(&t, &c, &image, point)
    })
    .await?;
    let count = category_count(&st, &task, &category).await?;
    Ok(Json(json!({"name": name, "point": point, "count": count})))
}

/// 400 unless `task` is of `kind`, naming what was asked and the task's kind.
fn require_kind(
    store: &crate::store::Store,
    task: &str,
    kind: TaskKind,
    what: &str,
) -> ApiResult<()> {
    let have = store.task_meta(task)?.kind;
    if have == kind {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "{what} needs a {} task; task {task:?} is a {} task",
        kind.name(),
        have.name()
    )))
}

fn rejection(status: StatusCode, text: String) -> ApiError {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the upload is larger than the limit (--max-upload-mb); nothing was saved".to_string()
    } else {
        text
    };
    ApiError::new(status, message)
}

/// `POST /api/tasks/{task}/categories/{category}/images` → 201: `multipart/form-data` (any
/// number of files) or a raw image body. 400 when a file does not decode, 413 over the size
/// limit; in both cases nothing is saved.
pub async fn upload_images(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    {
        let store = st.inner.store.clone();
        let (t, c) = (task.clone(), category.clone());
        blocking(move || store.category_dir(&t, &c)).await?;
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut items = Vec::new();
    if multipart {
        let mut mp = Multipart::from_request(req, &st)
            .await
            .map_err(|r| rejection(r.status(), r.body_text()))?;
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| rejection(e.status(), e.body_text()))?
        {
            let name = field.file_name().unwrap_or("upload").to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| rejection(e.status(), e.body_text()))?;
            items.push((name, data));
        }
    } else {
        let data = Bytes::from_request(req, &st)
            .await
            .map_err(|r| rejection(r.status(), r.body_text()))?;
        items.push(("upload".to_string(), data));
    }
    if items.is_empty() {
        return Err(ApiError::bad_request("no file in the request"));
    }
    let st2 = st.clone();
    let (t, c) = (task.clone(), category.clone());
    let saved = blocking(move || save_checked(&st2, &t, &c, items)).await?;
    touch_instant(&st, &task);
    let count = category_count(&st, &task, &category).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"saved": saved, "count": count})),
    ))
}

async fn category_count(st: &AppState, task: &str, category: &str) -> ApiResult<usize> {
    let store = st.inner.store.clone();
    let (t, c) = (task.to_string(), category.to_string());
    let cats = blocking(move || store.categories(&t)).await?;
    Ok(cats
        .into_iter()
        .find(|x| x.name == c)
        .map_or(0, |x| x.count))
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("webp") => "image/webp",
        Some("tif" | "tiff") => "image/tiff",
        _ => "application/octet-stream",
    }
}

/// `GET /api/tasks/{task}/categories/{category}/images/{image}`: the file as stored.
pub async fn get_image(
    State(st): State<AppState>,
    UrlPath((task, category, image)): UrlPath<(String, String, String)>,
) -> ApiResult<Response> {
    let store = st.inner.store.clone();
    let (path, bytes) = blocking(move || {
        let p = store.image_path(&task, &category, &image)?;
        let b =
            std::fs::read(&p).map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))?;
        Ok((p, b))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, content_type(&path))], bytes).into_response())
}

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 160;

/// `GET /api/tasks/{task}/categories/{category}/images/{image}/thumb`: a JPEG at most
/// [`THUMB_SIDE`] pixels on its longest side, in display orientation.
pub async fn get_thumb(
    State(st): State<AppState>,
    UrlPath((task, category, image)): UrlPath<(String, String, String)>,
) -> ApiResult<Response> {
    let store = st.inner.store.clone();
    let jpeg = blocking(move || {
        let p = store.image_path(&task, &category, &image)?;
        let img = nanoclass::data::decode::decode_file(
            &p,
            &DecodeOptions {
                min_side: Some(THUMB_SIDE),
            },
        )?;
        let (w, h) = img.dimensions();
        let s = (THUMB_SIDE as f32 / w.max(h) as f32).min(1.0);
        let t = if s < 1.0 {
            image::imageops::thumbnail(
                &img,
                ((w as f32 * s).round() as u32).max(1),
                ((h as f32 * s).round() as u32).max(1),
            )
        } else {
            img
        };
        crate::source::encode_jpeg(&t).map_err(ApiError::internal)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        jpeg,
    )
        .into_response())
}

/// `DELETE /api/tasks/{task}/categories/{category}/images/{image}` → 204 (moved to `trash/`).
pub async fn delete_image(
    State(st): State<AppState>,
    UrlPath((task, category, image)): UrlPath<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let store = st.inner.store.clone();
    let t = task.clone();
    blocking(move || store.delete_image(&t, &category, &image)).await?;
    touch_instant(&st, &task);
    Ok(StatusCode::NO_CONTENT)
}

/// How long a capture waits for the device's next frame.
pub const CAPTURE_TIMEOUT: Duration = Duration::from_secs(3);

/// `POST /api/tasks/{task}/categories/{category}/capture` → 201: saves the device source's
/// next frame as JPEG. 409 without a source, 503 when no frame comes.
pub async fn capture(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    {
        let store = st.inner.store.clone();
        let (t, c) = (task.clone(), category.clone());
        blocking(move || {
            store.category_dir(&t, &c)?;
            require_kind(
                &store,
                &t,
                TaskKind::Classification,
                "capturing a frame without a point (in a regression task, click the point on \
                 the live frame: POST .../points?x=X&y=Y)",
            )
        })
        .await?;
    }
    if st.inner.source.status().uri.is_none() {
        return Err(ApiError::conflict(
            "no device source is set: start the studio with --source URI, or choose one on the page",
        ));
    }
    let frame = st
        .inner
        .source
        .next_frame(CAPTURE_TIMEOUT)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    save_frame(&st, &task, &category, frame.jpeg.clone()).await
}

/// Saves a camera frame's JPEG into a category, refreshes the instant preview, and answers
/// 201 `{saved: [name], count}` (capture, and filing a "label these next" frame).
async fn save_frame(
    st: &AppState,
    task: &str,
    category: &str,
    jpeg: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let store = st.inner.store.clone();
    let (t, c) = (task.to_string(), category.to_string());
    let name = blocking(move || store.save_image(&t, &c, &jpeg, "jpg")).await?;
    touch_instant(st, task);
    let count = category_count(st, task, category).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"saved": [name], "count": count})),
    ))
}

/// Body of `POST .../import`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// A folder on the machine running the studio.
    pub path: PathBuf,
}

/// `POST /api/tasks/{task}/categories/{category}/import`: copies every image file directly in
/// a folder on the server into the category. Files that do not decode are skipped and listed
/// with the reason; 400 when the path is not a folder.
pub async fn import_folder(
    State(st): State<AppState>,
    UrlPath((task, category)): UrlPath<(String, String)>,
    Json(body): Json<ImportRequest>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let limit = st.inner.max_upload;
    let (t, c) = (task.clone(), category.clone());
    let (imported, skipped) = blocking(move || {
        store.category_dir(&t, &c)?;
        let regression = store.task_meta(&t)?.kind == TaskKind::Regression;
        let dir = body.path;
        if !dir.is_dir() {
            return Err(ApiError::bad_request(format!(
                "{}: not a folder on the studio's machine",
                dir.display()
            )));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && is_image_extension(p)
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        let mut imported = Vec::new();
        let mut skipped = Vec::new();
        for f in files {
            let bytes = match std::fs::read(&f) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push(json!({"file": f, "reason": e.to_string()}));
                    continue;
                }
            };
            if bytes.len() > limit {
                skipped.push(json!({"file": f, "reason": format!("{} bytes, over the upload limit of {limit}", bytes.len())}));
                continue;
            }
            let file_name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let point = if regression {
                match point_from_name(&file_name) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        skipped.push(json!({"file": f, "reason": e.message}));
                        continue;
                    }
                }
            } else {
                None
            };
            let min_side = if regression { None } else { Some(256) };
            let img = match decode_bytes(&bytes, &f, &DecodeOptions { min_side }) {
                Ok(img) => img,
                Err(e) => {
                    skipped.push(json!({"file": f, "reason": e.to_string()}));
                    continue;
                }
            };
            let ext = extension_for(&bytes).unwrap_or("jpg");
            match point {
                Some(p) => {
                    if let Err(e) = check_point(&img, p, &f.display().to_string()) {
                        skipped.push(json!({"file": f, "reason": e.message}));
                        continue;
                    }
                    imported.push(store.save_point_image(&t, &c, &bytes, ext, p)?);
                }
                None => imported.push(store.save_image(&t, &c, &bytes, ext)?),
            }
        }
        Ok((imported, skipped))
    })
    .await?;
    touch_instant(&st, &task);
    let count = category_count(&st, &task, &category).await?;
    Ok(Json(
        json!({"imported": imported.len(), "saved": imported, "skipped": skipped, "count": count}),
    ))
}

// ---------------------------------------------------------------- training

/// `POST /api/tasks/{task}/train` → 202: starts training into a new run `runs/<n>`.
pub async fn start_training(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
    Json(req): Json<TrainRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let store = st.inner.store.clone();
    let t = task.clone();
    let cache = st.inner.feature_cache.clone();
    let (run, opts) = blocking(move || {
        let cats = store.categories(&t)?;
        let kind = store.task_meta(&t)?.kind;
        // A classifier needs two categories; a point regressor is fine with one.
        let needed = match kind {
            TaskKind::Classification => 2,
            TaskKind::Regression => 1,
        };
        let with_images = cats.iter().filter(|c| c.count > 0).count();
        if cats.len() < needed || with_images < cats.len() {
            let empty: Vec<&str> = cats
                .iter()
                .filter(|c| c.count == 0)
                .map(|c| c.name.as_str())
                .collect();
            return Err(ApiError::bad_request(if cats.len() < needed {
                format!(
                    "task {t:?} has {} categor{}: at least {needed} {} needed to train a {}",
                    cats.len(),
                    if cats.len() == 1 { "y" } else { "ies" },
                    if needed == 1 { "is" } else { "are" },
                    match kind {
                        TaskKind::Classification => "classifier",
                        TaskKind::Regression => "point model",
                    }
                )
            } else {
                format!("categories without images: {}", empty.join(", "))
            }));
        }
        let run = store.next_run_id(&t)?;
        let out = store.runs_dir(&t)?.join(run.to_string());
        let opts = options(&req, kind, store.data_dir(&t)?, out, cache)?;
        Ok((run, opts))
    })
    .await?;
    let job = st.inner.trainer.start(&task, run, opts)?;
    Ok((StatusCode::ACCEPTED, Json(job.snapshot())))
}

/// `GET /api/tasks/{task}/train`: the latest job (state and events), or `{"state": "idle"}`.
pub async fn training_status(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let t = task.clone();
    blocking(move || store.task_dir(&t)).await?;
    Ok(Json(match st.inner.trainer.job(&task) {
        Some(j) => j.snapshot(),
        None => json!({"task": task, "state": "idle", "events": []}),
    }))
}

/// `POST /api/tasks/{task}/train/stop`: asks the running job to stop; 409 when none runs.
pub async fn stop_training(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let t = task.clone();
    blocking(move || store.task_dir(&t)).await?;
    match st.inner.trainer.job(&task) {
        Some(j) if j.state() == crate::training::JobState::Running => {
            j.request_stop();
            Ok(Json(json!({"stopping": true, "run": j.run})))
        }
        _ => Err(ApiError::conflict(format!("task {task:?} is not training"))),
    }
}

fn sse_json(v: &impl serde::Serialize) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".into())))
}

/// `GET /api/tasks/{task}/train/events`: server-sent events, one JSON object each (see
/// [`crate::training`]), replaying the latest job from its start; the stream ends after the
/// job's last event. 404 when the task has never trained in this server's life.
pub async fn training_events(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let store = st.inner.store.clone();
    let t = task.clone();
    blocking(move || store.task_dir(&t)).await?;
    let job = st
        .inner
        .trainer
        .job(&task)
        .ok_or_else(|| ApiError::not_found(format!("task {task:?} has no training job")))?;
    let rx = job.subscribe();
    let s = stream::unfold((0usize, job, rx), |(i, job, mut rx)| async move {
        loop {
            match job.next(i) {
                Next::Event(ev) => return Some((sse_json(&ev), (i + 1, job, rx))),
                Next::End => return None,
                Next::Wait => {
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

// ---------------------------------------------------------------- runs and live

/// `GET /api/tasks/{task}/runs`: model versions, newest first, each with its staleness.
pub async fn list_runs(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let runs = blocking(move || store.list_runs(&task)).await?;
    Ok(Json(json!(runs)))
}

/// `GET /api/tasks/{task}/runs/{run}`: one run with its per-epoch metrics.
pub async fn get_run(
    State(st): State<AppState>,
    UrlPath((task, run)): UrlPath<(String, u32)>,
) -> ApiResult<Json<Value>> {
    let store = st.inner.store.clone();
    let v = blocking(move || {
        let info = store.run_info(&task, run)?;
        let dir = store.run_dir(&task, run)?;
        let metrics = nanoclass::run::Run::open(&dir)?
            .read_metrics()
            .unwrap_or_default();
        let mut v = json!(info);
        v["metrics"] = json!(metrics);
        Ok(v)
    })
    .await?;
    Ok(Json(v))
}

/// The run's directory after checking that it predicts what the task needs (a classification
/// run in a classification task, a regression run in a regression task; 409 naming both
/// otherwise) and that its labels are all still categories (409 with "retrain needed"
/// otherwise).
fn fresh_run(st: &AppState, task: &str, run: u32) -> ApiResult<PathBuf> {
    let store = &st.inner.store;
    let dir = store.run_dir(task, run)?;
    let kind = store.task_meta(task)?.kind;
    let cats = store.category_names(task)?;
    let config = nanoclass::run::Run::open(&dir)?.config;
    if config.task != kind.run_task() {
        return Err(ApiError::conflict(format!(
            "run {run} is a {} model and task {task:?} is a {} task: the live view runs only {} \
             models here; train one with this task's images",
            config.task.name(),
            kind.name(),
            kind.name()
        )));
    }
    let labels = config.labels;
    match staleness(&labels, &cats) {
        (true, note) => Err(ApiError::conflict(note.unwrap_or_default())),
        _ => Ok(dir),
    }
}

/// `POST /api/tasks/{task}/runs/{run}/predict?smoothing=&threshold=`: scores one encoded image
/// (a browser camera frame). 409 when the model is stale or not ready.
pub async fn predict(
    State(st): State<AppState>,
    UrlPath((task, run)): UrlPath<(String, u32)>,
    Query(q): Query<LiveQuery>,
    body: Bytes,
) -> ApiResult<Json<Scores>> {
    let opts = q.options()?;
    let st2 = st.clone();
    let scores = blocking(move || {
        let dir = fresh_run(&st2, &task, run)?;
        let live = st2.inner.models.get(&dir, opts)?;
        let mut live = live
            .lock()
            .map_err(|_| ApiError::internal("model lock poisoned"))?;
        // Points are in pixels of the frame as sent: decode it at full size.
        let regression = live.predictor().task() == nanoclass::run::Task::Regression;
        let img = decode_bytes(
            &body,
            Path::new("frame"),
            &DecodeOptions {
                min_side: if regression { None } else { Some(256) },
            },
        )?;
        let r = live.process(&img)?;
        Ok(Scores::new(run, &live, r, None, img.dimensions()))
    })
    .await?;
    Ok(Json(scores))
}

/// How often a live stream rechecks that its model is still valid.
const STALE_CHECK: Duration = Duration::from_secs(1);

/// `GET /api/tasks/{task}/runs/{run}/live?smoothing=&threshold=`: server-sent events with the
/// scores of the device source's frames, as fast as the model runs (frames that arrive while
/// the model is busy are skipped). When the model becomes stale (a category deleted or
/// renamed) a `{"type": "stale", "message"}` event ends the stream.
pub async fn live_stream(
    State(st): State<AppState>,
    UrlPath((task, run)): UrlPath<(String, u32)>,
    Query(q): Query<LiveQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let opts = q.options()?;
    if st.inner.source.status().uri.is_none() {
        return Err(ApiError::conflict(
            "no device source is set: start the studio with --source URI, or choose one on the page",
        ));
    }
    let st2 = st.clone();
    let t = task.clone();
    let live = blocking(move || {
        let dir = fresh_run(&st2, &t, run)?;
        crate::live::open(&dir, opts)
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(2);
    let handle = tokio::runtime::Handle::current();
    let mut frames = st.inner.source.subscribe();
    let st3 = st.clone();
    std::thread::Builder::new()
        .name("studio-live".into())
        .spawn(move || {
            let mut live = live;
            let mut checked = std::time::Instant::now();
            loop {
                if tx.is_closed() {
                    return;
                }
                if checked.elapsed() >= STALE_CHECK {
                    checked = std::time::Instant::now();
                    if let Err(e) = fresh_run(&st3, &task, run) {
                        let _ = tx.blocking_send(json!({"type": "stale", "message": e.message}));
                        return;
                    }
                }
                match handle
                    .block_on(async { tokio::time::timeout(STALE_CHECK, frames.changed()).await })
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
                let Some(frame) = frames.borrow_and_update().clone() else {
                    continue;
                };
                let s = match live.process(&frame.image) {
                    Ok(r) => {
                        Scores::new(run, &live, r, Some(frame.index), frame.image.dimensions())
                    }
                    Err(e) => {
                        let _ =
                            tx.blocking_send(json!({"type": "error", "message": e.to_string()}));
                        return;
                    }
                };
                let mut v = json!(s);
                v["type"] = json!("scores");
                if tx.blocking_send(v).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ApiError::internal(format!("cannot start the live thread: {e}")))?;
    let s = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|v| (sse_json(&v), rx))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

// ---------------------------------------------------------------- device source

/// `GET /api/source`: the device source's status.
pub async fn source_status(State(st): State<AppState>) -> Json<Value> {
    Json(json!(st.inner.source.status()))
}

/// Body of `PUT /api/source`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    /// A camera URI (`v4l2:///dev/video0`, `file:///folder?fps=10`, a video file).
    pub uri: String,
}

/// `PUT /api/source`: opens another device source (400 with the camera's reason when it
/// cannot be opened; the previous source then stays).
pub async fn set_source(
    State(st): State<AppState>,
    Json(body): Json<SourceRequest>,
) -> ApiResult<Json<Value>> {
    let hub = st.inner.source.clone();
    let status = blocking(move || hub.set_source(&body.uri).map_err(ApiError::bad_request)).await?;
    Ok(Json(json!(status)))
}

/// `GET /api/source/frame`: the device source's next frame as JPEG (409 without a source).
pub async fn source_frame(State(st): State<AppState>) -> ApiResult<Response> {
    if st.inner.source.status().uri.is_none() {
        return Err(ApiError::conflict("no device source is set"));
    }
    let f = st
        .inner
        .source
        .next_frame(CAPTURE_TIMEOUT)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        f.jpeg.clone(),
    )
        .into_response())
}

/// `GET /api/source/stream`: the device source as an MJPEG stream
/// (`multipart/x-mixed-replace`), usable as an `<img>` source in any browser.
pub async fn source_stream(State(st): State<AppState>) -> ApiResult<Response> {
    if st.inner.source.status().uri.is_none() {
        return Err(ApiError::conflict("no device source is set"));
    }
    let rx: tokio::sync::watch::Receiver<Option<Arc<crate::source::SharedFrame>>> =
        st.inner.source.subscribe();
    let s = stream::unfold(rx, |mut rx| async move {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let frame = rx.borrow_and_update().clone();
            if let Some(f) = frame {
                let mut part = format!(
                    "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    f.jpeg.len()
                )
                .into_bytes();
                part.extend_from_slice(&f.jpeg);
                part.extend_from_slice(b"\r\n");
                return Some((Ok::<_, Infallible>(Bytes::from(part)), rx));
            }
        }
    });
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "multipart/x-mixed-replace; boundary=frame",
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(s))
        .map_err(|e| ApiError::internal(e.to_string()))
}

// ---------------------------------------------------------------- instant mode

/// Refreshes the task's instant model in the background after its images changed (a capture
/// is answered without waiting for the embedding).
fn touch_instant(st: &AppState, task: &str) {
    if st.inner.instant.is_none() {
        return;
    }
    let st = st.clone();
    let task = task.to_string();
    tokio::task::spawn_blocking(move || {
        if let Some(hub) = &st.inner.instant
            && instant_task(&st, &task).is_ok()
        {
            // Errors (a backbone that cannot load) are reported by GET .../instant.
            let _ = hub.refresh(&st.inner.store, &task);
        }
    });
}

/// Refreshes the task's instant model before answering, so that no preview score with a
/// renamed or deleted category's label follows the answer.
async fn refresh_instant_now(st: &AppState, task: &str) {
    if st.inner.instant.is_none() {
        return;
    }
    let st = st.clone();
    let task = task.to_string();
    let _ = blocking(move || match &st.inner.instant {
        Some(hub) if instant_task(&st, &task).is_ok() => {
            hub.refresh(&st.inner.store, &task).map(|_| ())
        }
        _ => Ok(()),
    })
    .await;
}

fn instant_hub(st: &AppState) -> ApiResult<&crate::instant::InstantHub> {
    st.inner.instant.as_ref().ok_or_else(|| {
        ApiError::conflict("the instant preview is off (the studio was started with --no-instant)")
    })
}

/// 409 for a regression task: the instant preview scores categories, it has no points.
fn instant_task(st: &AppState, task: &str) -> ApiResult<()> {
    match st.inner.store.task_meta(task)?.kind {
        TaskKind::Classification => Ok(()),
        TaskKind::Regression => Err(ApiError::conflict(format!(
            "the instant preview is for classification tasks; task {task:?} is a regression \
             task (train it to see its points live)"
        ))),
    }
}

/// `GET /api/tasks/{task}/instant`: brings the instant model up to date and returns its status
/// (`ready`, `note` when not ready, `labels`, `counts`, `images`, `head`, `temperature`,
/// `leave_out`, `version`, `update` timings).
pub async fn instant_status(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
) -> ApiResult<Json<Value>> {
    instant_hub(&st)?;
    let st2 = st.clone();
    let v = blocking(move || {
        instant_task(&st2, &task)?;
        instant_hub(&st2)?.refresh(&st2.inner.store, &task)
    })
    .await?;
    Ok(Json(v))
}

/// `POST /api/tasks/{task}/instant/predict?smoothing=&threshold=`: preview scores of one
/// encoded image (a browser camera frame); `{"type": "waiting", "message"}` until every
/// category has an image.
pub async fn instant_predict(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
    Query(q): Query<LiveQuery>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let opts = q.options()?;
    instant_hub(&st)?;
    let st2 = st.clone();
    let v = blocking(move || {
        instant_task(&st2, &task)?;
        let hub = instant_hub(&st2)?;
        if hub.wants_recentre(&task) {
            hub.refresh(&st2.inner.store, &task)?;
        }
        let img = decode_bytes(
            &body,
            Path::new("frame"),
            &DecodeOptions {
                min_side: Some(256),
            },
        )?;
        hub.score_frame(&task, &img, body, &opts, None)
    })
    .await?;
    Ok(Json(v))
}

/// `GET /api/tasks/{task}/instant/live?smoothing=&threshold=`: server-sent preview scores of
/// the device source's frames (as `.../runs/{run}/live`, with `"preview": true`, `images` and
/// `head`). The model is refreshed from the folders every second, so a deleted category
/// disappears from the scores.
pub async fn instant_live(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
    Query(q): Query<LiveQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let opts = q.options()?;
    instant_hub(&st)?;
    if st.inner.source.status().uri.is_none() {
        return Err(ApiError::conflict(
            "no device source is set: start the studio with --source URI, or choose one on the page",
        ));
    }
    {
        let st2 = st.clone();
        let t = task.clone();
        blocking(move || {
            instant_task(&st2, &t)?;
            instant_hub(&st2)?.refresh(&st2.inner.store, &t)
        })
        .await?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(2);
    let handle = tokio::runtime::Handle::current();
    let mut frames = st.inner.source.subscribe();
    let st3 = st.clone();
    std::thread::Builder::new()
        .name("studio-instant".into())
        .spawn(move || {
            let Some(hub) = st3.inner.instant.as_ref() else {
                return;
            };
            let mut smoothed = None;
            let mut refreshed = std::time::Instant::now();
            loop {
                if tx.is_closed() {
                    return;
                }
                if refreshed.elapsed() >= STALE_CHECK || hub.wants_recentre(&task) {
                    refreshed = std::time::Instant::now();
                    if let Err(e) = hub.refresh(&st3.inner.store, &task) {
                        let _ = tx.blocking_send(json!({"type": "stale", "message": e.message}));
                        return;
                    }
                }
                match handle
                    .block_on(async { tokio::time::timeout(STALE_CHECK, frames.changed()).await })
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
                let Some(frame) = frames.borrow_and_update().clone() else {
                    continue;
                };
                let v = match hub.score_frame(
                    &task,
                    &frame.image,
                    frame.jpeg.clone(),
                    &opts,
                    Some(&mut smoothed),
                ) {
                    Ok(mut v) => {
                        v["frame"] = json!(frame.index);
                        v
                    }
                    Err(e) => json!({"type": "waiting", "preview": true, "message": e.message}),
                };
                if tx.blocking_send(v).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ApiError::internal(format!("cannot start the preview thread: {e}")))?;
    let s = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|v| (sse_json(&v), rx))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// Query of `GET .../instant/uncertain`.
#[derive(Debug, Deserialize)]
pub struct UncertainQuery {
    /// How many frames (default 4, at most 20).
    pub n: Option<usize>,
}

/// `GET /api/tasks/{task}/instant/uncertain?n=4`: "label these next": recent frames the
/// instant model is least sure of, smallest margin first: `[{id, margin, top1, probability}]`.
pub async fn instant_uncertain(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
    Query(q): Query<UncertainQuery>,
) -> ApiResult<Json<Value>> {
    let n = q.n.unwrap_or(4).min(20);
    let v = instant_hub(&st)?.uncertain(&task, n)?;
    Ok(Json(v))
}

/// `GET /api/tasks/{task}/instant/frames/{id}`: a recent frame as JPEG (404 once it left the
/// pool).
pub async fn instant_frame(
    State(st): State<AppState>,
    UrlPath((task, id)): UrlPath<(String, u64)>,
) -> ApiResult<Response> {
    let jpeg = instant_hub(&st)?.frame(&task, id)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        jpeg,
    )
        .into_response())
}

/// `POST /api/tasks/{task}/instant/frames/{id}/file` with `{"category": NAME}` → 201: saves a
/// recent frame into a category (one click in "label these next").
pub async fn instant_file_frame(
    State(st): State<AppState>,
    UrlPath((task, id)): UrlPath<(String, u64)>,
    Json(body): Json<FileFrame>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let category = body.category;
    {
        let st2 = st.clone();
        let (t, c) = (task.clone(), category.clone());
        blocking(move || {
            st2.inner.store.category_dir(&t, &c)?;
            instant_task(&st2, &t)
        })
        .await?;
    }
    let jpeg = instant_hub(&st)?.take_frame(&task, id)?;
    save_frame(&st, &task, &category, jpeg).await
}

/// Body of `POST .../instant/frames/{id}/file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFrame {
    /// The category to file the frame into.
    pub category: String,
}
