//! Bearer-key access control for the `/v1` API: which role a route needs, and the
//! middleware that checks the `Authorization` header against the configured keys.

use crate::auth::Role;
use crate::http::error::ApiError;
use crate::http::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Paths that never need a key, wherever they are routed.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The role a request needs (None = open). Deny by default: every route under
/// the API router needs at least `read`; non-GET methods need `write`; the model
/// endpoints and retiring an item need `admin`.
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    if OPEN_PATHS.contains(&route) {
        return None;
    }
    if route == "/v1/model" || route.starts_with("/v1/model/") {
        return Some(Role::Admin);
    }
    if method == Method::DELETE && route == "/v1/items/{item}" {
        return Some(Role::Admin);
    }
    if method == Method::GET || method == Method::HEAD {
        Some(Role::Read)
    } else {
        Some(Role::Write)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(req: &Request) -> Option<&str> {
    bearer_token(req.headers())
}

/// [`bearer`] on a header map (the dashboard's key check reads it outside the middleware).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: with keys configured, `401 unauthorized` without a known key and
/// `403 forbidden` with a key whose role is too low. With no keys configured
/// (allowed on loopback or with `auth.allow_open`) every request passes.
/// The role (never the key) is recorded on the request's span.
pub async fn require_key(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &st.settings.auth.keys;
    if keys.is_empty() {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or_else(|| req.uri().path());
    let Some(needed) = required_role(req.method(), route) else {
        return next.run(req).await;
    };
    let Some(token) = bearer(&req) else {
        return ApiError::Unauthorized(
            "this endpoint needs an API key: send `Authorization: Bearer <key>`".into(),
        )
        .into_response();
    };
    let Some(role) = keys.role_of(token) else {
        return ApiError::Unauthorized("the API key is not valid".into()).into_response();
    };
    tracing::Span::current().record("role", tracing::field::display(role));
    if role < needed {
        return ApiError::Forbidden(format!(
            "{} {route} needs a {needed} key; this key has the role {role}",
            req.method()
        ))
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_route() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_role(&get, "/healthz"), None);
        assert_eq!(required_role(&get, "/metrics"), None);
        assert_eq!(required_role(&get, "/openapi.json"), None);
        assert_eq!(
            required_role(&get, "/v1/users/{user}/recommendations"),
            Some(Role::Read)
        );
        assert_eq!(required_role(&post, "/v1/ratings"), Some(Role::Write));
        assert_eq!(
            required_role(&Method::DELETE, "/v1/users/{user}/ratings/{item}"),
            Some(Role::Write)
        );
        assert_eq!(required_role(&get, "/v1/model"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::DELETE, "/v1/users/{user}"),
            Some(Role::Write)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/v1/items/{item}"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&post, "/v1/model/train"), Some(Role::Admin));
        assert_eq!(required_role(&get, "/v1/anything-new"), Some(Role::Read));
    }

    #[test]
    fn bearer_parsing() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&req("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
        assert_eq!(bearer(&req("Bearer")), None);
    }
}
