//! The API's error type: an HTTP status and a plain message for the user, sent as
//! `{"error": "..."}`, and [`json_errors`], which gives every other error response (axum's own
//! 405, 413, ...) the same form.
//!
//! Two rules hold for every message sent:
//! - Names echoed from the request are shortened ([`clip_echoes`]): a 5 MB task name comes back
//!   as its first [`ECHO_CHARS`] characters and its length.
//! - Server failures (5xx) are logged to stderr whole; the page gets a plain message without
//!   server paths or internals ([`INTERNAL_MESSAGE`]). 503 (the camera gave no frame) keeps its
//!   message: it is the camera's reason, about the source the user chose.

use axum::Json;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// An error answered to an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the user (names the task, category, file or setting and the reason).
    pub message: String,
}

/// Result alias for handlers.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Characters of an echoed name kept in a message; longer ones are cut and their length given.
pub const ECHO_CHARS: usize = 80;

/// Longest message sent, in characters, after names are shortened (a backstop: the parts of a
/// message that are not quoted names are written by the studio and short).
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// What a 5xx answer says (the detail goes to the studio's stderr).
pub const INTERNAL_MESSAGE: &str = "the studio failed to do this (a fault on the device, not in \
     the request); the terminal running `nanoclass studio` shows the details";

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403: the request comes from another web site, or names a host the studio does not
    /// answer.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: the task, category, image or run does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request conflicts with the current state (name taken, training running,
    /// model out of date).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500: the server failed (disk, a thread that died). The message is logged, not sent.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 413: a request body over the upload limit of `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        const MIB: usize = 1024 * 1024;
        let shown = if limit.is_multiple_of(MIB) {
            format!("{} MiB", limit / MIB)
        } else {
            format!("{limit} bytes")
        };
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request is larger than the studio's upload limit of {shown} (set with \
                 --max-upload-mb); nothing was saved"
            ),
        )
    }

    /// Whether the message stays on the server (5xx other than 503).
    fn is_hidden(&self) -> bool {
        self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// Library errors: bad input data (an image that does not decode, a dataset that cannot train,
/// settings out of range) is the user's to fix (400); files that cannot be read or written are
/// the server's (500).
impl From<nanoclass::Error> for ApiError {
    fn from(e: nanoclass::Error) -> Self {
        use nanoclass::Error as E;
        let status = match &e {
            E::Decode { .. } | E::Dataset { .. } | E::Train(_) | E::Labels { .. } | E::Other(_) => {
                StatusCode::BAD_REQUEST
            }
            E::Run { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = clip_echoes(&self.message);
        let shown = if self.is_hidden() {
            eprintln!("studio: {} {message}", self.status.as_u16());
            INTERNAL_MESSAGE.to_string()
        } else {
            message
        };
        (self.status, Json(serde_json::json!({ "error": shown }))).into_response()
    }
}

/// Shortens every quoted part of `message` (`"..."` as `{:?}` writes names, with its `\"`
/// escapes, and `` `...` `` as serde writes values) longer than [`ECHO_CHARS`] characters to
/// its first [`ECHO_CHARS`], `…` and the length; then cuts the whole to [`MAX_MESSAGE_CHARS`].
pub fn clip_echoes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * MAX_MESSAGE_CHARS));
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' && c != '`' {
            out.push(c);
            continue;
        }
        // A quoted part: up to the closing quote (a backslash escapes the next character in
        // `"` quotes), or to the end of the message.
        let mut inner = String::new();
        let mut closed = false;
        while let Some(d) = chars.next() {
            if d == c {
                closed = true;
                break;
            }
            inner.push(d);
            if d == '\\'
                && c == '"'
                && let Some(e) = chars.next()
            {
                inner.push(e);
            }
        }
        let n = inner.chars().count();
        out.push(c);
        if n > ECHO_CHARS {
            out.extend(inner.chars().take(ECHO_CHARS));
            out.push('…');
        } else {
            out.push_str(&inner);
        }
        if closed {
            out.push(c);
        }
        if n > ECHO_CHARS {
            out.push_str(&format!(" ({n} characters)"));
        }
    }
    let n = out.chars().count();
    if n > MAX_MESSAGE_CHARS {
        let cut: String = out.chars().take(MAX_MESSAGE_CHARS).collect();
        return format!("{cut}… ({n} characters)");
    }
    out
}

/// Whether a response says it is JSON.
fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Largest error body read back to reword it (axum's are one line).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `router` inside [`json_errors`]. The router is wrapped whole (as the fallback service of
/// an outer router), so the middleware sees its final answers: axum adds `Allow` to a 405
/// after the route's own layers have run.
pub fn with_json_errors(router: axum::Router, max_upload: usize) -> axum::Router {
    axum::Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn(move |req, next| {
            json_errors(max_upload, req, next)
        }))
}

/// Middleware ([`with_json_errors`]): every error response (4xx, 5xx) that is not already
/// JSON becomes `{"error": "..."}` through [`ApiError`] (so it is clipped, and a 5xx is
/// logged), keeping the other headers: 405 names the method and the allowed ones, 413 the
/// upload limit (`max_upload` bytes), others keep the text axum wrote (or the status's reason
/// when there is none).
pub async fn json_errors(max_upload: usize, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let allow = parts.headers.get(header::ALLOW);
    let text = if method == Method::HEAD {
        String::new()
    } else {
        axum::body::to_bytes(body, MAX_ERROR_BODY)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    };
    let err = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            format!(
                "{method} is not allowed on {path:?}; it answers {}",
                allow
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("other methods")
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(max_upload),
        _ if !text.is_empty() => ApiError::new(status, text),
        _ => ApiError::new(
            status,
            status.canonical_reason().unwrap_or("request failed"),
        ),
    };
    let mut out = err.into_response();
    // The original headers (Allow, the framing ban, ...) but those of the replaced body.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn body_json(resp: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn long_names_are_shortened_and_short_ones_kept() {
        let name = "a".repeat(5_000_000);
        let clipped = clip_echoes(&format!("task name {name:?}: is too long"));
        assert_eq!(
            clipped,
            format!(
                "task name \"{}…\" (5000000 characters): is too long",
                "a".repeat(ECHO_CHARS)
            )
        );
        let m = "unknown variant `detection`, expected `classification` or `regression`";
        assert_eq!(clip_echoes(m), m);
        // Escaped quotes stay inside the name; an unclosed quote is clipped too.
        let tricky = format!(
            "{:?} then \"{}",
            format!("x\"{}", "b".repeat(100)),
            "c".repeat(90)
        );
        let c = clip_echoes(&tricky);
        assert!(c.starts_with("\"x\\\"bbb"), "{c}");
        assert!(c.contains("…\" (103 characters) then \"ccc"), "{c}");
        assert!(c.ends_with("… (90 characters)"), "{c}");
        // The backstop.
        let prose = "word ".repeat(1000);
        assert_eq!(
            clip_echoes(&prose).chars().count(),
            MAX_MESSAGE_CHARS + " (5000 characters)".chars().count() + 1
        );
    }

    #[tokio::test]
    async fn server_errors_are_logged_not_sent() {
        let e = ApiError::internal("/srv/secret/data/t/task.json: Permission denied (os error 13)");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v = body_json(resp).await;
        assert_eq!(v["error"], INTERNAL_MESSAGE);
        // 503 keeps the camera's reason.
        let e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no frame from v4l2:///dev/video0",
        );
        let v = body_json(e.into_response()).await;
        assert_eq!(v["error"], "no frame from v4l2:///dev/video0");
    }

    #[tokio::test]
    async fn plain_error_bodies_become_json() {
        let app = Router::new()
            .route(
                "/fail",
                get(|| async {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "join error at /home/me/src/x.rs:12",
                    )
                }),
            )
            .route(
                "/teapot",
                get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
            )
            .route("/empty", get(|| async { StatusCode::GONE }))
            .route("/ok", get(|| async { "fine" }));
        let app = with_json_errors(app, 3 * 1024 * 1024);
        let call = |method: &str, uri: &str| {
            app.clone().oneshot(
                axum::http::Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let r = call("GET", "/fail").await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body_json(r).await["error"], INTERNAL_MESSAGE);
        let r = call("GET", "/teapot").await.unwrap();
        assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(body_json(r).await["error"], "short and stout");
        let r = call("GET", "/empty").await.unwrap();
        assert_eq!(body_json(r).await["error"], "Gone");
        let r = call("POST", "/ok").await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.headers().contains_key(header::ALLOW));
        let e = body_json(r).await["error"].as_str().unwrap().to_string();
        assert!(
            e.starts_with("POST is not allowed on \"/ok\"; it answers GET"),
            "{e}"
        );
        let r = call("GET", "/ok").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            ApiError::too_large(3 * 1024 * 1024)
                .message
                .contains("limit of 3 MiB")
        );
    }
}
