//! Request hygiene before routing: client request ids, the size of the request head, and
//! the body read under its own deadline.
//!
//! Hand-written tower services (no boxed middleware on the hot path): a request that
//! passes every check costs a few comparisons.

use crate::http::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::either::Either;
use tower::{Layer, Service};

/// Longest client request id kept; longer ones (or other characters) are replaced.
pub const MAX_REQUEST_ID_CHARS: usize = 64;
/// Longest request target (path and query) read, in bytes (`414 uri_too_long` beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most request header bytes read (names, values and separators; `431 headers_too_large`).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most request header fields read (`431 headers_too_large`).
pub const MAX_HEADER_FIELDS: usize = 100;
/// Most bytes of the request target a log line takes.
pub const MAX_LOGGED_URI_BYTES: usize = 256;

/// Whether a client-sent `X-Request-Id` is kept: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn is_plain_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=MAX_REQUEST_ID_CHARS).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The request target as logged: at most [`MAX_LOGGED_URI_BYTES`] bytes, `…` when cut.
pub fn loggable_uri(req: &Request) -> String {
    let s = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    if s.len() <= MAX_LOGGED_URI_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_LOGGED_URI_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The answer for a request head larger than the server reads, if it is one.
fn oversized_head(req: &Request) -> Option<ApiError> {
    let uri_len = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path().len(), |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong(format!(
            "the request target is {uri_len} bytes long, at most {MAX_URI_BYTES} are read"
        )));
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADER_FIELDS {
        return Some(ApiError::HeadersTooLarge(format!(
            "the request has {} header fields, at most {MAX_HEADER_FIELDS} are read",
            headers.len()
        )));
    }
    let bytes = header_bytes(headers);
    if bytes > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge(format!(
            "the request headers are {bytes} bytes, at most {MAX_HEADER_BYTES} are read"
        )));
    }
    None
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// Drops a client `X-Request-Id` that is not plain (one is generated instead), and
/// answers `414`/`431` for oversized request heads.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadChecksLayer;

impl<S> Layer<S> for HeadChecksLayer {
    type Service = HeadChecks<S>;
    fn layer(&self, inner: S) -> HeadChecks<S> {
        HeadChecks { inner }
    }
}

#[derive(Debug, Clone)]
pub struct HeadChecks<S> {
    inner: S,
}

impl<S> Service<Request> for HeadChecks<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some(e) = oversized_head(&req) {
            return Either::Right(ready(Ok(e.into_response())));
        }
        if req
            .headers()
            .get("x-request-id")
            .is_some_and(|v| !is_plain_request_id(v))
        {
            req.headers_mut().remove("x-request-id");
        }
        Either::Left(self.inner.call(req))
    }
}

/// Reads a request body completely, within `timeout`, before the request goes on (and
/// before it takes a concurrency permit): a client trickling its body holds only its own
/// connection, and handler time (`server.request_timeout_secs`) starts after the body.
/// A body that does not arrive in time is answered `408 request_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    pub timeout: Duration,
    pub limit: usize,
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;
    fn layer(&self, inner: S) -> BufferBody<S> {
        BufferBody {
            inner,
            timeout: self.timeout,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    timeout: Duration,
    limit: usize,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for BufferBody<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if axum::body::HttpBody::size_hint(req.body()).exact() == Some(0) {
            return Either::Left(self.inner.call(req));
        }
        // the ready clone serves this request; `self` keeps a fresh one (tower's pattern)
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (timeout, limit) = (self.timeout, self.limit);
        Either::Right(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await
            {
                Ok(Ok(b)) => b,
                Ok(Err(e)) if is_length_limit(&e) => {
                    return Ok(
                        ApiError::PayloadTooLarge("request body is too large".into())
                            .into_response(),
                    )
                }
                Ok(Err(e)) => {
                    return Ok(ApiError::MalformedJson(format!(
                        "could not read the request body: {e}"
                    ))
                    .into_response())
                }
                Err(_) => {
                    return Ok(ApiError::BodyTimeout(format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs_f64()
                    ))
                    .into_response())
                }
            };
            inner
                .call(Request::from_parts(parts, Body::from(bytes)))
                .await
        }))
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_kept() {
        for ok in ["trace-me-42", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(
                is_plain_request_id(&HeaderValue::from_str(ok).unwrap()),
                "{ok}"
            );
        }
        for bad in ["", "a b", "a/b", "ü", "id\t1", &"x".repeat(65), "<script>"] {
            let v = HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            assert!(!is_plain_request_id(&v), "{bad}");
        }
    }

    #[test]
    fn logged_uris_are_capped() {
        let long = format!("/v1/users/{}/ratings", "a".repeat(5000));
        let req = Request::builder().uri(&long).body(Body::empty()).unwrap();
        let shown = loggable_uri(&req);
        assert!(shown.len() <= MAX_LOGGED_URI_BYTES + '…'.len_utf8());
        assert!(shown.ends_with('…'));
        let req = Request::builder()
            .uri("/healthz?x=1")
            .body(Body::empty())
            .unwrap();
        assert_eq!(loggable_uri(&req), "/healthz?x=1");
    }
}
