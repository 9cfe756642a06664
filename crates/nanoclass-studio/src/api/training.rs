//! Training jobs of a task: start, status, stop and the event stream.

use super::*;

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

/// `POST /api/tasks/{task}/train/estimate` (the body of [`start_training`]): the expected
/// time of training the task with these settings, before it starts
/// ([`nanoclass::train::estimate`]): `{"seconds", "body_views", "cached", "steps", "epochs",
/// "train_images", "val_images", "from"}`; `from` is `this_machine` (rates an earlier run here
/// measured) or `reference` (the development machine's); `seconds` is null where neither
/// has rates (a GPU device before its first run). Nothing is written but the cache folder.
pub async fn estimate_training(
    State(st): State<AppState>,
    UrlPath(task): UrlPath<String>,
    Json(req): Json<TrainRequest>,
) -> ApiResult<Json<Value>> {
    use nanoclass::train::estimate::{estimate, plan_for, rates};
    let store = st.inner.store.clone();
    let cache = st.inner.feature_cache.clone();
    blocking(move || {
        let kind = store.task_meta(&task)?.kind;
        let out = store.runs_dir(&task)?.join("estimate");
        let opts = options(&req, kind, store.data_dir(&task)?, out, cache)?;
        let plan = plan_for(&opts)?;
        let mut v = json!({
            "seconds": null,
            "epochs": plan.epochs,
            "train_images": plan.train_images,
            "val_images": plan.val_images,
        });
        if let Some((r, from)) = rates(opts.feature_cache.as_deref(), &plan.key) {
            let e = estimate(&plan, r, from);
            v["seconds"] = json!(e.seconds);
            v["body_views"] = json!(e.body_views);
            v["cached"] = json!(e.cached);
            v["steps"] = json!(e.steps);
            v["from"] = json!(e.from);
        }
        Ok(Json(v))
    })
    .await
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

pub(super) fn sse_json(v: &impl serde::Serialize) -> Result<SseEvent, Infallible> {
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
