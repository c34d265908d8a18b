//! Extractors that wrap axum's and turn every rejection into an [`ApiError`].

use crate::http::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, StatusCode};

/// The raw bytes of a body sent as JSON (`application/json` or `application/*+json`,
/// parameters such as `charset` allowed, the same rule as axum's `Json`); parsing is left
/// to the handler, so the whole body check can be a pure function (and be fuzzed).
pub struct JsonBytes(pub Bytes);

/// Whether the request says its body is JSON.
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty == "application" && (sub == "json" || (sub.ends_with("+json") && sub.len() > 5))
}

/// The `charset` parameter of the request's `Content-Type` when it names anything but
/// UTF-8 (the body is parsed as UTF-8, so another charset is refused, not misread).
pub fn non_utf8_charset(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    ct.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("charset") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        let utf8 = value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8");
        (!utf8).then(|| value.chars().take(40).collect())
    })
}

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        if let Some(charset) = non_utf8_charset(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "JSON bodies are read as UTF-8; charset `{charset}` is not supported"
            )));
        }
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(JsonBytes(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::PayloadTooLarge("request body is too large".into()),
            ),
            Err(e) => Err(ApiError::MalformedJson(e.body_text())),
        }
    }
}

/// `Query<T>` answering `invalid_query`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path<T>` answering `invalid_path`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, v.parse().unwrap());
        h
    }

    #[test]
    fn only_utf8_charsets_pass() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json; charset=utf8",
        ] {
            assert_eq!(non_utf8_charset(&ct(ok)), None, "{ok}");
        }
        assert_eq!(
            non_utf8_charset(&ct("application/json; charset=utf-16")).as_deref(),
            Some("utf-16")
        );
        assert_eq!(
            non_utf8_charset(&ct("application/json; x=1; Charset=\"latin1\"")).as_deref(),
            Some("latin1")
        );
    }
}
