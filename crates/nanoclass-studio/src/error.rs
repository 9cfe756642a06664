//! The API's error type: an HTTP status and a plain message for the user, sent as
//! `{"error": "..."}`. Server-side failures (5xx) are also logged to stderr.

use axum::Json;
use axum::http::StatusCode;
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

    /// 404: the task, category, image or run does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request conflicts with the current state (name taken, training running,
    /// model out of date).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500: the server failed (disk, a thread that died).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
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
        if self.status.is_server_error() {
            eprintln!("studio: {self}");
        }
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
