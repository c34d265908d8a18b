//! `GET /metrics` and the middleware that records every request.

use crate::http::AppState;
use crate::metrics::{Metrics, CONTENT_TYPE};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 503, description = "`timeout`", body = crate::http::error::ErrorBody),
    )
)]
/// `GET /metrics` — Prometheus text format. Store, model and training figures are
/// read at scrape time (the ratings gauge is `Store::count_ratings`: a count of the table
/// corrected by the delta).
pub async fn metrics(State(st): State<AppState>) -> Response {
    let ratings = match st.store.count_ratings().await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: counting ratings failed");
            None
        }
    };
    st.metrics
        .update_state(st.serving.get().as_deref(), &st.worker.status(), ratings);
    st.metrics.update_cluster(&st.cluster);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], st.metrics.render()).into_response()
}

/// Known methods keep their name; anything else is `other` (bounded label values).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts and times every request by method, matched route template
/// (`unmatched` for 404s, so raw URIs never become label values) and status.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    m.observe_request(method, &route, res.status().as_u16(), started.elapsed());
    res
}
