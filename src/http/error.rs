//! The API's one error type: stable codes ([`ErrorCode`], also the OpenAPI enum), HTTP
//! status mapping, the JSON error body, and the middleware that logs 5xx details.

use crate::domain::DomainError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error the API reports; [`ApiError::status_and_code`] maps each to its status and
/// stable code.
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
    /// `DELETE /v1/users/{user}` of a user the store has never seen.
    #[error("{0}")]
    UserNotFound(String),
    /// `DELETE /v1/items/{item}` of an item the store has never seen.
    #[error("{0}")]
    ItemNotFound(String),
    /// A rating of a retired item.
    #[error("{0}")]
    ItemRetired(String),
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
    /// `/readyz` found failing checks: `failed` names them (sent), `detail` says why
    /// (logged only).
    #[error("not ready: {failed} ({detail})")]
    NotReady { failed: String, detail: String },
    /// Details are logged, never sent to the client.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request body did not arrive within `server.body_timeout_secs`.
    #[error("{0}")]
    BodyTimeout(String),
    /// The request target is longer than the server reads.
    #[error("{0}")]
    UriTooLong(String),
    /// The request headers are larger than the server reads.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A JSON object names the same key twice (which one wins is not defined).
    #[error("{0}")]
    DuplicateKey(String),
    /// `POST /v1/model/rollback`: no model version has that number.
    #[error("{0}")]
    VersionNotFound(String),
    /// `POST /v1/model/rollback`: the version was rejected by the publish gate.
    #[error("{0}")]
    VersionRejected(String),
    /// `POST /v1/model/rollback`: the version's file was pruned or does not verify.
    #[error("{0}")]
    VersionFileUnavailable(String),
}

// The `code` of every error body and the `ErrorCode` enum of the OpenAPI document; serde
// and strum both spell the variants in `snake_case` (a unit test checks that they agree).
/// The stable machine-readable error codes (see `ApiError::status_and_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidBody,
    InvalidId,
    InvalidRating,
    EmptyBatch,
    BatchTooLarge,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidQuery,
    InvalidPath,
    RatingNotFound,
    UserNotFound,
    ItemNotFound,
    ItemRetired,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Unavailable,
    Internal,
    Unauthorized,
    Forbidden,
    Overloaded,
    RequestTimeout,
    UriTooLong,
    HeadersTooLarge,
    VersionNotFound,
    VersionRejected,
    VersionFileUnavailable,
}

impl ErrorCode {
    /// The code as it appears in error bodies, e.g. `invalid_id`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Every error: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Human-readable; never carries internals for 5xx.
    pub message: String,
}

/// What a 5xx response built from an [`ApiError`] carries in its extensions for
/// [`log_server_error`]: the full error, which the body never shows.
#[derive(Debug, Clone)]
pub struct ServerErrorDetail {
    pub code: ErrorCode,
    pub detail: String,
}

/// Called by the `json_errors` response layer: logs the detail of every 5xx answer built from an
/// [`ApiError`], in the request's span.
pub fn log_server_error(res: &Response) {
    if let Some(e) = res.extensions().get::<ServerErrorDetail>() {
        tracing::error!(code = e.code.as_str(), error = %e.detail, "request failed");
    }
}

impl ApiError {
    /// HTTP status and stable machine-readable code (exhaustive: a new variant must be mapped).
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        use ApiError as E;
        use ErrorCode as C;
        match self {
            E::MalformedJson(_) => (StatusCode::BAD_REQUEST, C::MalformedJson),
            E::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, C::InvalidBody),
            E::InvalidId(_) => (StatusCode::UNPROCESSABLE_ENTITY, C::InvalidId),
            E::InvalidRating(_) => (StatusCode::UNPROCESSABLE_ENTITY, C::InvalidRating),
            E::EmptyBatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, C::EmptyBatch),
            E::BatchTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, C::BatchTooLarge),
            E::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, C::PayloadTooLarge),
            E::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, C::UnsupportedMediaType)
            }
            E::InvalidQuery(_) => (StatusCode::BAD_REQUEST, C::InvalidQuery),
            E::InvalidPath(_) => (StatusCode::BAD_REQUEST, C::InvalidPath),
            E::RatingNotFound(_) => (StatusCode::NOT_FOUND, C::RatingNotFound),
            E::UserNotFound(_) => (StatusCode::NOT_FOUND, C::UserNotFound),
            E::ItemNotFound(_) => (StatusCode::NOT_FOUND, C::ItemNotFound),
            E::ItemRetired(_) => (StatusCode::CONFLICT, C::ItemRetired),
            E::RouteNotFound(_) => (StatusCode::NOT_FOUND, C::NotFound),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, C::MethodNotAllowed),
            E::Timeout => (StatusCode::SERVICE_UNAVAILABLE, C::Timeout),
            E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, C::Unavailable),
            E::Unauthorized(_) => (StatusCode::UNAUTHORIZED, C::Unauthorized),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, C::Forbidden),
            E::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, C::Overloaded),
            E::NotReady { .. } => (StatusCode::SERVICE_UNAVAILABLE, C::Unavailable),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, C::Internal),
            E::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, C::RequestTimeout),
            E::UriTooLong(_) => (StatusCode::URI_TOO_LONG, C::UriTooLong),
            E::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                C::HeadersTooLarge,
            ),
            E::DuplicateKey(_) => (StatusCode::BAD_REQUEST, C::InvalidBody),
            E::VersionNotFound(_) => (StatusCode::NOT_FOUND, C::VersionNotFound),
            E::VersionRejected(_) => (StatusCode::CONFLICT, C::VersionRejected),
            E::VersionFileUnavailable(_) => (StatusCode::CONFLICT, C::VersionFileUnavailable),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.status_and_code().1
    }

    /// The message the client sees (5xx never carries internals).
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal server error".into(),
            ApiError::Unavailable(_) => "service temporarily unavailable".into(),
            ApiError::NotReady { failed, .. } => format!("not ready: {failed}"),
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
            StatusCode::REQUEST_TIMEOUT => {
                ApiError::BodyTimeout("the request did not arrive in time".into())
            }
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Timeout,
            StatusCode::URI_TOO_LONG => {
                ApiError::UriTooLong("the request target is too long".into())
            }
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                ApiError::HeadersTooLarge("the request headers are too large".into())
            }
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
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.public_message(),
            },
        };
        let mut res = (status, Json(body)).into_response();
        if status.is_server_error() {
            res.extensions_mut().insert(ServerErrorDetail {
                code,
                detail: self.to_string(),
            });
        }
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
            // the rest of the body (or header) is not read: the connection cannot be reused
            ApiError::BodyTimeout(_) | ApiError::UriTooLong(_) | ApiError::HeadersTooLarge(_) => {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // the database is down or busy: a client may try again shortly
            ApiError::Unavailable(_) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
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

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
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
        for (status, code) in [
            (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed),
            (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            (StatusCode::URI_TOO_LONG, ErrorCode::UriTooLong),
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::HeadersTooLarge,
            ),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        ] {
            assert_eq!(ApiError::from_status(status).code(), code, "{status}");
        }
    }

    #[test]
    fn code_strings_are_the_serde_names() {
        for code in <ErrorCode as strum::VariantArray>::VARIANTS {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
        assert_eq!(
            ErrorCode::UnsupportedMediaType.as_str(),
            "unsupported_media_type"
        );
    }

    #[tokio::test]
    async fn server_errors_carry_their_detail_for_the_log_only() {
        let r = ApiError::Internal("secret path /etc/x".into()).into_response();
        let d = r.extensions().get::<ServerErrorDetail>().unwrap();
        assert_eq!(d.code, ErrorCode::Internal);
        assert!(d.detail.contains("secret path /etc/x"), "{d:?}");
        let (s, v) = body_of(ApiError::NotReady {
            failed: "writer".into(),
            detail: "db at 10.0.0.1".into(),
        })
        .await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (503, Some("unavailable"))
        );
        assert_eq!(v["error"]["message"], "not ready: writer");
        let r = ApiError::InvalidId("x".into()).into_response();
        assert!(r.extensions().get::<ServerErrorDetail>().is_none());
    }
}
