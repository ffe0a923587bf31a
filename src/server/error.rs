//! `AppError`: every failure the API reports, as a JSON body
//! `{"error":{"code","message"}}` with the right status. The one place
//! where the core's [`InferError`] kinds become HTTP statuses.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::infer::{InferError, Kind};

#[derive(Debug, Clone)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// Well-formed JSON whose content is invalid (422).
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// Not ready, shutting down, or timed out: 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<InferError> for AppError {
    fn from(e: InferError) -> Self {
        let status = match e.kind {
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Overloaded if e.code == "session_limit" => StatusCode::TOO_MANY_REQUESTS,
            Kind::Overloaded => {
                return Self {
                    retry_after: Some(1),
                    ..Self::new(StatusCode::TOO_MANY_REQUESTS, e.code, e.message)
                }
            }
            Kind::Unavailable => return Self::unavailable(e.code, e.message),
            // A failure of ours, not the client's: the message is logged, not sent.
            Kind::Internal => {
                tracing::error!(code = e.code, error = %e.message, "internal error");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.code,
                    "the server failed to process the request",
                );
            }
        };
        Self::new(status, e.code, e.message)
    }
}

impl From<JsonRejection> for AppError {
    fn from(rej: JsonRejection) -> Self {
        let detail = rej.body_text();
        match rej {
            JsonRejection::JsonSyntaxError(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {detail}"),
            ),
            JsonRejection::JsonDataError(_) => Self::invalid(
                "invalid_request",
                format!("the JSON does not have the expected shape: {detail}; see /openapi.yaml"),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the server's limit (--max-body-bytes)",
            ),
            other => Self::new(
                other.status(),
                "bad_request",
                format!("cannot read the request body: {detail}"),
            ),
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(rej: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("invalid query string: {}", rej.body_text()),
        )
    }
}
