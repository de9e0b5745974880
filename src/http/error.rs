//! The API's error shape: `{"error": {"code": "...", "message": "..."}}` with the status of
//! API.md, for our own errors and for axum's rejections alike. 4xx are not logged; 5xx get a
//! generic message and are logged once, here.

use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 `invalid_request`.
    Invalid(String),
    /// 401 `unauthorized`.
    Unauthorized(String),
    /// 403 `forbidden`.
    Forbidden(String),
    /// 404 `not_found`.
    NotFound(String),
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 408 `request_timeout`: the request body did not arrive within `http.body_timeout_ms`;
    /// the connection is closed.
    RequestTimeout(String),
    /// 409 `conflict`.
    Conflict(String),
    /// 413 `payload_too_large`.
    TooLarge(String),
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// 422 `idempotency_mismatch`.
    IdempotencyMismatch(String),
    /// 429 `too_many_requests`: a per-user limit was reached; nothing was written. The message
    /// names the limit; `retry_after_s` becomes the `Retry-After` header.
    TooManyRequests {
        /// Which limit, and its value.
        message: String,
        /// Seconds until a retry may succeed (at least 1).
        retry_after_s: u64,
    },
    /// 503 `unavailable`: nothing was written; retry.
    Unavailable(String),
    /// 500 `internal`: logged, never detailed to the client.
    Internal(String),
}

impl ApiError {
    /// The status and stable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::IdempotencyMismatch(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_mismatch")
            }
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Invalid(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooLarge(m)
            | Self::RequestTimeout(m)
            | Self::IdempotencyMismatch(m)
            | Self::TooManyRequests { message: m, .. } => m.clone(),
            Self::Unavailable(m) => format!("{m}; nothing was written, retry"),
            Self::MethodNotAllowed => "method not allowed on this route".into(),
            Self::UnsupportedMediaType => {
                "the body must be JSON with Content-Type: application/json".into()
            }
            Self::Internal(_) => "internal error (logged on the server)".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error answered 500"),
            Self::Unavailable(detail) => tracing::warn!(%detail, "answered 503"),
            _ => {}
        }
        let body = json!({"error": {"code": code, "message": self.message()}});
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, Self::TooLarge(_) | Self::RequestTimeout(_)) {
            // The rest of the body was not read: the connection cannot be reused.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if matches!(self, Self::Unavailable(_)) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let Self::TooManyRequests { retry_after_s, .. } = &self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from((*retry_after_s).max(1)),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Self::Unavailable(m),
            // This process stops within a second; another (the newer spool) answers the retry.
            e @ StoreError::SchemaMigratedSince { .. } => Self::Unavailable(e.to_string()),
            StoreError::NotFound(id) => Self::NotFound(format!("task {id} not found")),
            StoreError::Conflict(m) => Self::Conflict(m),
            e @ StoreError::LimitReached { .. } => Self::TooManyRequests {
                message: format!("{e}; nothing was written"),
                // A quota frees as tasks finish or are pruned: no sooner than a few seconds.
                retry_after_s: 5,
            },
            e @ StoreError::IdempotencyMismatch { .. } => Self::IdempotencyMismatch(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Short for a handler result.
pub type ApiResult<T> = Result<T, ApiError>;
