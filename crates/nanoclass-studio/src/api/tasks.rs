//! Tasks (`/api/tasks`) and their categories (`/api/tasks/{task}/categories`).

use super::*;

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

pub(super) fn refuse_while_training(st: &AppState, task: &str) -> ApiResult<()> {
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
