//! The device camera source the studio reads: status, choice, one frame and the MJPEG stream.

use super::*;

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
