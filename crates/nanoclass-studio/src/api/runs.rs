//! A task's runs: listing, details, predictions on uploaded images and the live stream.

use super::*;

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
pub(super) fn fresh_run(st: &AppState, task: &str, run: u32) -> ApiResult<PathBuf> {
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
pub(super) const STALE_CHECK: Duration = Duration::from_secs(1);

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

/// The query of [`export_run`].
#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    /// `onnx` (the default), `triton` or `pth`.
    pub format: Option<String>,
}

/// `GET /api/tasks/{task}/runs/{run}/export?format=onnx|triton|pth`: the run's export bundle, a
/// zip (`application/zip`, `<task>-run<N>-<format>.zip`) holding the model, labels.txt, the
/// parity kit and a README.txt (see [`nanoclass::export::bundle`]); also kept in the run's
/// `export/` folder. 400 for another format, 409 when the run has no model yet.
pub async fn export_run(
    State(st): State<AppState>,
    UrlPath((task, run)): UrlPath<(String, u32)>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    use nanoclass::export::bundle::{BundleFormat, write_bundle};
    let format = BundleFormat::parse(q.format.as_deref().unwrap_or("onnx"))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let store = st.inner.store.clone();
    let (file_name, bytes) = blocking(move || {
        let dir = store.run_dir(&task, run)?;
        let name = nanoclass::export::triton::sanitize_name(&format!("{task}-run{run}"));
        let file_name = format!("{name}-{}.zip", format.name());
        let zip = dir.join("export").join(&file_name);
        write_bundle(&dir, format, &name, &zip)?;
        let bytes = std::fs::read(&zip).map_err(|e| nanoclass::Error::io(&zip, e))?;
        Ok((file_name, bytes))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}
