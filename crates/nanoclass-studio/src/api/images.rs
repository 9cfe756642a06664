//! Images of a category: listing, uploads checked by the decoder, thumbnails, points of regression images, camera captures and folder imports.

use super::*;

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
pub(super) fn extension_for(bytes: &[u8]) -> Option<&'static str> {
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
pub(super) fn save_checked(
    st: &AppState,
    task: &str,
    category: &str,
    items: Vec<(String, Bytes)>,
    from: Saved,
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
            None => store.save_image(task, category, &bytes, ext, from),
        })
        .collect()
}

/// Decodes encoded image bytes with the training decoder and returns what to store: the bytes
/// as given with their extension, or the image re-encoded as JPEG when its format is not one
/// the dataset scanner lists, and the decoded image (full size when `full`, so that a point
/// can be checked against it; otherwise possibly DCT-scaled). 400 naming `name` and the reason
/// when it does not decode.
pub(super) fn storable(
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
pub(super) fn point_from_name(name: &str) -> ApiResult<[u32; 2]> {
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
    if point[0] >= w || point[1] >= h {
        return Err(ApiError::bad_request(format!(
            "{what}: point ({}, {}) lies outside the {w}x{h} image (x must be in 0..={}, y in 0..={})",
            point[0],
            point[1],
            w.saturating_sub(1),
            h.saturating_sub(1)
        )));
    }
    // The model sees only the centre square: a point beside it could never be learned.
    let v = nanoclass::eval::regression::view_box(w, h);
    let (x, y) = (point[0] as f32 + 0.5, point[1] as f32 + 0.5);
    if x < v.x || x > v.x + v.w || y < v.y || y > v.y + v.h {
        return Err(ApiError::bad_request(format!(
            "{what}: point ({}, {}) lies outside the model's view, the centre square of the {w}x{h} image (x in {}..{}, y in {}..{}): the model never sees it; click inside the marked square",
            point[0],
            point[1],
            v.x.round(),
            (v.x + v.w).round(),
            v.y.round(),
            (v.y + v.h).round()
        )));
    }
    Ok(())
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
pub(super) fn coordinate(axis: &str, v: Option<&str>, what: &str) -> ApiResult<u32> {
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
pub(super) fn require_kind(
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

pub(super) fn rejection(status: StatusCode, text: String) -> ApiError {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the upload is larger than the limit (--max-upload-mb); nothing was saved".to_string()
    } else {
        text
    };
    ApiError::new(status, message)
}

/// `POST /api/tasks/{task}/categories/{category}/images` → 201: `multipart/form-data` (any
/// number of files, saved as files) or a raw image body (a frame of the browser's camera,
/// saved as a capture: its name carries the capture time that keeps a burst together). 400
/// when a file does not decode, 413 over the size limit; in both cases nothing is saved.
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
    // A raw body is the browser camera's frame (the page's capture); files come as a form.
    let from = if multipart {
        Saved::File
    } else {
        Saved::Capture
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("no file in the request"));
    }
    let st2 = st.clone();
    let (t, c) = (task.clone(), category.clone());
    let saved = blocking(move || save_checked(&st2, &t, &c, items, from)).await?;
    touch_instant(&st, &task);
    let count = category_count(&st, &task, &category).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"saved": saved, "count": count})),
    ))
}

pub(super) async fn category_count(st: &AppState, task: &str, category: &str) -> ApiResult<usize> {
    let store = st.inner.store.clone();
    let (t, c) = (task.to_string(), category.to_string());
    let cats = blocking(move || store.categories(&t)).await?;
    Ok(cats
        .into_iter()
        .find(|x| x.name == c)
        .map_or(0, |x| x.count))
}

pub(super) fn content_type(path: &Path) -> &'static str {
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
pub(super) async fn save_frame(
    st: &AppState,
    task: &str,
    category: &str,
    jpeg: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let store = st.inner.store.clone();
    let (t, c) = (task.to_string(), category.to_string());
    let name = blocking(move || store.save_image(&t, &c, &jpeg, "jpg", Saved::Capture)).await?;
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
                None => imported.push(store.save_image(&t, &c, &bytes, ext, Saved::File)?),
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
