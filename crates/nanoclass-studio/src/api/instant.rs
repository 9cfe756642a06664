//! Instant mode's preview: the fitted model's status, scores of an image or of the live frames, and the uncertain frames worth labelling.

use super::*;

/// Refreshes the task's instant model in the background after its images changed (a capture
/// is answered without waiting for the embedding).
pub(super) fn touch_instant(st: &AppState, task: &str) {
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
pub(super) async fn refresh_instant_now(st: &AppState, task: &str) {
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

pub(super) fn instant_hub(st: &AppState) -> ApiResult<&crate::instant::InstantHub> {
    st.inner.instant.as_ref().ok_or_else(|| {
        ApiError::conflict("the instant preview is off (the studio was started with --no-instant)")
    })
}

/// 409 for a regression task: the instant preview scores categories, it has no points.
pub(super) fn instant_task(st: &AppState, task: &str) -> ApiResult<()> {
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
