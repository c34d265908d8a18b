//! The crate's one API error type: stable codes, HTTP status mapping and the JSON error body.

use crate::domain::DomainError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every error the API reports. `code()` strings are a stable contract.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    InvalidRating(String),
    #[error("{0}")]
    EmptyBatch(String),
    #[error("{0}")]
    BatchTooLarge(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    RatingNotFound(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request took too long")]
    Timeout,
    #[error("{0}")]
    Unavailable(String),
    /// No key, or a key that is not configured. Sent with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key whose role is too low for the endpoint.
    #[error("{0}")]
    Forbidden(String),
    /// Shed by the concurrency limit; the field is the `Retry-After` in seconds.
    #[error("the server is at its concurrency limit; retry later")]
    Overloaded(u64),
    /// Details are logged, never sent to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status and stable machine-readable code (exhaustive: a new variant must be mapped).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            InvalidId(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id"),
            InvalidRating(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rating"),
            EmptyBatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "empty_batch"),
            BatchTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            InvalidPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            RatingNotFound(_) => (StatusCode::NOT_FOUND, "rating_not_found"),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// The message the client sees (5xx never carries internals).
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal server error".into(),
            ApiError::Unavailable(_) => "service temporarily unavailable".into(),
            other => other.to_string(),
        }
    }

    /// The error for a bare status produced by a layer (timeout, body limit, panic, 405...).
    pub fn from_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => ApiError::RouteNotFound("this path".into()),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body is too large".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => ApiError::Timeout,
            s if s.is_client_error() => {
                ApiError::InvalidBody(s.canonical_reason().unwrap_or("bad request").to_lowercase())
            }
            s => ApiError::Internal(format!("layer returned {s}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        }
        let body = json!({"error": {"code": code, "message": self.public_message()}});
        let mut res = (status, Json(body)).into_response();
        match self {
            ApiError::Unauthorized(_) => {
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"funkrec\""),
                );
            }
            ApiError::Overloaded(secs) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        res
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidId(m) => ApiError::InvalidId(m),
            DomainError::InvalidRating(m) => ApiError::InvalidRating(m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body is too large".into())
            }
            other => ApiError::MalformedJson(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::InvalidQuery(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::InvalidPath(r.body_text())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let s = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (s, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let (s, v) = body_of(ApiError::Internal("secret path /etc/x".into())).await;
        assert_eq!(s, 500);
        assert_eq!(v["error"]["code"], "internal");
        assert!(!v.to_string().contains("secret"));
        let (s, v) = body_of(ApiError::Unavailable("db at 10.0.0.1 down".into())).await;
        assert_eq!(s, 503);
        assert!(!v.to_string().contains("10.0.0.1"));
    }

    #[tokio::test]
    async fn client_errors_keep_their_message() {
        let (s, v) = body_of(ApiError::InvalidId("user id must not be empty".into())).await;
        assert_eq!(s, 422);
        assert_eq!(v["error"]["code"], "invalid_id");
        assert_eq!(v["error"]["message"], "user id must not be empty");
    }

    #[tokio::test]
    async fn auth_and_overload_errors_carry_their_headers() {
        let r = ApiError::Unauthorized("missing key".into()).into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"funkrec\""
        );
        let r = ApiError::Overloaded(3).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let (s, v) = body_of(ApiError::Forbidden("needs admin".into())).await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (403, Some("forbidden"))
        );
    }

    #[test]
    fn bare_statuses_map_to_codes() {
        assert_eq!(
            ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED).code(),
            "method_not_allowed"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE).code(),
            "payload_too_large"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::REQUEST_TIMEOUT).code(),
            "timeout"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR).code(),
            "internal"
        );
        assert_eq!(
            ApiError::from_status(StatusCode::NOT_FOUND).code(),
            "not_found"
        );
    }
}
