//! The handlers' extractors: axum's `Json`, `Path` and `Query`, whose rejections are answered
//! as [`ApiError`]s worded for the page (`{"error": ...}`) instead of axum's plain text.
//!
//! JSON bodies: not JSON at all (a syntax error) → 400; JSON of the wrong shape (a missing
//! field, a wrong type, an unknown value) → 422; no `Content-Type: application/json` → 415; a
//! body over the upload limit → 413 (worded by [`crate::error::json_errors`], which knows the
//! limit).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body (`FromRequest`) or answer (`IntoResponse`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Path parameters (`{task}`, `{run}`, ...).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

/// The URL's query parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

/// The detail of a rejection (the serde message), without axum's own sentence before it.
fn detail(e: &(dyn std::error::Error + 'static)) -> String {
    e.source().map_or_else(|| e.to_string(), |s| s.to_string())
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(match r {
                JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(format!(
                    "the request body is not valid JSON: {}",
                    detail(&e)
                ))
                .into_response(),
                JsonRejection::JsonDataError(e) => ApiError::new(
                    e.status(),
                    format!("the JSON body does not fit this request: {}", detail(&e)),
                )
                .into_response(),
                JsonRejection::MissingJsonContentType(e) => ApiError::new(
                    e.status(),
                    "the request body must be JSON, sent with `Content-Type: application/json`",
                )
                .into_response(),
                // 413 and unreadable bodies: axum's answer, made JSON by `json_errors`.
                other => other.into_response(),
            }),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// How a path parameter of type `rust_type` is described.
fn kind_of(rust_type: &str) -> String {
    match rust_type {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0, 1, 2, ...)".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        other => format!("a {other}"),
    }
}

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind as K;
        let e = match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => return Ok(Path(p.0)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => e,
            Err(other) => return Err(ApiError::new(other.status(), other.body_text())),
        };
        // The route's parameter names, in order, to name the one that failed.
        let names: Vec<String> = RawPathParams::from_request_parts(parts, state)
            .await
            .map(|p| p.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default();
        let name = |i: usize| {
            names
                .get(i)
                .cloned()
                .unwrap_or_else(|| "a part of the path".to_string())
        };
        let status = e.status();
        let message = match e.into_kind() {
            K::ParseErrorAtIndex {
                index,
                value,
                expected_type,
            } => format!(
                "{} {value:?} in the URL is not {}",
                name(index),
                kind_of(expected_type)
            ),
            K::ParseErrorAtKey {
                key,
                value,
                expected_type,
            } => format!(
                "{key} {value:?} in the URL is not {}",
                kind_of(expected_type)
            ),
            K::ParseError {
                value,
                expected_type,
            } => format!(
                "{} {value:?} in the URL is not {}",
                name(0),
                kind_of(expected_type)
            ),
            K::InvalidUtf8InPathParam { key } => {
                format!("{key} in the URL is not UTF-8 text once percent-decoded")
            }
            K::DeserializeError {
                key,
                value,
                message,
            } => format!("{key} {value:?} in the URL: {message}"),
            other => other.to_string(),
        };
        Err(ApiError::new(status, message))
    }
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(Query(q.0)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::new(
                e.status(),
                format!("the URL's query parameters: {}", detail(&e)),
            )),
            Err(other) => Err(ApiError::new(other.status(), other.body_text())),
        }
    }
}
