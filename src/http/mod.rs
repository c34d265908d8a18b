//! The HTTP API: routes, shared state and the middleware stack (auth, limits,
//! metrics, request ids, tracing).

pub mod auth;
pub mod body;
mod dashboard;
pub mod error;
mod extract;
mod forget;
mod health;
pub mod hygiene;
mod metrics;
mod model;
pub mod openapi;
mod ratings;
mod recs;
mod request_id;
pub mod serve;

use crate::config::Settings;
use crate::http::error::ApiError;
use crate::metrics::Metrics;
use crate::rated::RecentWrites;
use crate::snapshot::Serving;
use crate::store::{Store, Writer};
use crate::worker::Worker;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

/// What every handler can reach: one `Arc`, so the per-request clones (the state
/// extractor, the auth middleware) are one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

impl AppState {
    pub fn new(ctx: AppContext) -> Self {
        Self(Arc::new(ctx))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;
    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// The shared parts behind [`AppState`]. The model is read lock-free through `serving`.
pub struct AppContext {
    pub settings: Arc<Settings>,
    pub store: Store,
    /// All rating writes and deletes go through the group-commit writer.
    pub writer: Writer,
    /// Writes committed since the served snapshot's rows were read.
    pub recent: Arc<RecentWrites>,
    pub serving: Arc<Serving>,
    /// Retired items and forgotten users (`DELETE /v1/items/..`, `/v1/users/..`).
    pub forgets: Arc<crate::forget::Forgets>,
    pub worker: Worker,
    /// The training worker's loop, for `/readyz` (only `is_finished` is used).
    pub worker_loop: tokio::task::AbortHandle,
    pub metrics: Arc<Metrics>,
    /// This process's role and leadership (several processes on PostgreSQL).
    pub cluster: Arc<crate::cluster::Cluster>,
}

impl AppContext {
    /// `n` from the query: default when absent, `invalid_query` outside 1..=max_n.
    fn n(&self, n: Option<usize>) -> Result<usize, ApiError> {
        let s = &self.settings.server;
        match n {
            None => Ok(s.default_n),
            Some(n) if (1..=s.max_n).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::InvalidQuery(format!(
                "n must be between 1 and {}, got {n}",
                s.max_n
            ))),
        }
    }
}

/// The `/v1` API: every route needs a key when keys are configured
/// ([`auth::require_key`]) and counts against `server.max_concurrent_requests`.
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/ratings", post(ratings::post_ratings))
        .route("/v1/users/{user}", delete(forget::forget_user))
        .route("/v1/items/{item}", delete(forget::retire_item))
        .route("/v1/users/{user}/ratings", get(ratings::list_ratings))
        .route(
            "/v1/users/{user}/ratings/{item}",
            delete(ratings::delete_rating),
        )
        .route("/v1/users/{user}/predictions/{item}", get(recs::prediction))
        .route(
            "/v1/users/{user}/recommendations",
            get(recs::recommendations),
        )
        .route("/v1/items/{item}/similar", get(recs::similar))
        .route("/v1/model", get(model::get_model))
        .route("/v1/model/train", post(model::train))
        .route("/v1/model/versions", get(model::versions))
        .route("/v1/model/rollback", post(model::rollback))
        .route("/v1/model/curve.svg", get(dashboard::learning_curve_svg))
        .route("/v1/model/history", get(dashboard::history))
        .route("/v1/model/history.svg", get(dashboard::history_svg))
        .route("/v1/stats/ingestion", get(dashboard::ingestion))
        .route("/v1/stats/ingestion.svg", get(dashboard::ingestion_svg))
}

/// Probes and metrics: open, and not subject to the concurrency limit (they must
/// answer while the API sheds load).
fn ops_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
}

/// The full application router with its middleware.
pub fn router(state: AppState) -> Router {
    let server = &state.settings.server;
    let limit = server.body_limit_bytes;
    let timeout = Duration::from_secs(server.request_timeout_secs);
    let retry_after = server.retry_after_secs;
    // One semaphore shared by every API route (a plain ConcurrencyLimitLayer
    // would give each route its own). A request that finds no permit is not
    // queued: LoadShed fails it at once and HandleError turns that into 503.
    let concurrency = GlobalConcurrencyLimitLayer::new(server.max_concurrent_requests);
    // Outermost first here: auth, then the body read under its own deadline (no
    // concurrency permit held while a client trickles it), then the concurrency limit,
    // then the handler-time timeout.
    // One `layer` call: each wraps every route in a boxed service of its own, which a
    // request clones, so one stack costs one clone instead of four.
    let api = api_routes()
        // set before the layers: it only reaches method routers not yet layered
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::require_key,
                ))
                .layer(hygiene::BufferBodyLayer {
                    timeout: Duration::from_secs(server.body_timeout_secs),
                    limit,
                })
                .layer(HandleErrorLayer::new(move |e: BoxError| async move {
                    if e.is::<Overloaded>() {
                        ApiError::Overloaded(retry_after)
                    } else {
                        ApiError::Internal(format!("middleware: {e}"))
                    }
                }))
                .layer(LoadShedLayer::new())
                .layer(concurrency)
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    timeout,
                )),
        );
    let ops = ops_routes().layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        timeout,
    ));
    // a `trainer` process serves the probes and metrics only
    let serves_api = state.settings.cluster.role.serves_api();
    let mut routes = Router::new().merge(ops);
    if serves_api {
        routes = routes
            .merge(api)
            .merge(dashboard::routes())
            .route("/openapi.json", openapi::route(&state.settings));
    }
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state.clone())
        // Innermost first: each `layer` call wraps everything above it.
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(
                    |_: Box<dyn std::any::Any + Send>| {
                        ApiError::Internal("handler panicked".into()).into_response()
                    },
                ))
                .layer(RequestBodyLimitLayer::new(limit)),
        )
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(
                    request_id::MakeRequestUuidV4,
                ))
                .layer(
                    // Records method, URI and request id only: never request
                    // headers (Authorization carries the API key).
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request<axum::body::Body>| {
                            let id = req
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!(
                                "request",
                                method = %req.method(),
                                uri = %hygiene::loggable_uri(req),
                                request_id = %id,
                                role = tracing::field::Empty,
                            )
                        })
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        // first of all: drop a client request id that is not short and plain (one is
        // generated instead) and answer oversized request heads
        .layer(hygiene::HeadChecksLayer)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Rewrites any non-JSON error a layer produced (timeout, body limit, ...) into
/// the standard `{"error": {...}}` body, then logs the detail of a 5xx (one layer for
/// both: each `map_response` layer costs every request).
async fn json_errors(res: Response) -> Response {
    let res = json_error_body(res);
    error::log_server_error(&res);
    res
}

fn json_error_body(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (parts, _) = res.into_parts();
    let mut fixed = ApiError::from_status(status).into_response();
    *fixed.status_mut() = status;
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(k.clone(), v.clone());
        }
    }
    fixed
}
