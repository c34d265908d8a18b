//! The dashboard: its page and assets (embedded in the binary, served under a strict
//! Content-Security-Policy), the key check it starts with, and the plot and history
//! endpoints it reads.

use crate::http::error::{ApiError, ErrorBody};
use crate::http::model::{VersionInfo, VersionState};
use crate::http::AppState;
use crate::plot::{self, Chart, Marker, Series};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");

/// Same-origin scripts, styles and API calls only: no inline script or style, no
/// external origin, no framing, no form posts anywhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page, its assets and the key check: open (nothing secret is in them).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .route("/dashboard/session", get(session))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard` — the dashboard page (docs/api.md#dashboard).
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    operation_id = "dashboard",
    responses(
        (status = 200, description = "The dashboard page, with a `Content-Security-Policy` header", content_type = "text/html", body = String),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/app.js` — the dashboard's script.
#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    tag = "dashboard",
    operation_id = "dashboard_script",
    responses(
        (status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /dashboard/app.css` — the dashboard's style sheet.
#[utoipa::path(
    get,
    path = "/dashboard/app.css",
    tag = "dashboard",
    operation_id = "dashboard_style",
    responses(
        (status = 200, description = "The dashboard's style sheet", content_type = "text/css", body = String),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// What the key sent with the request may do.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Whether the server has API keys configured (otherwise the API is open).
    pub keys_required: bool,
    /// `read`, `write` or `admin`: the role of the key sent (`admin` on an open server);
    /// `null` when keys are required and no valid key was sent.
    pub role: Option<String>,
}

/// `GET /dashboard/session` — the role of the `Authorization: Bearer` key sent, if any
/// (always 200: an unknown key is `"role": null`, so the page can ask for another).
#[utoipa::path(
    get,
    path = "/dashboard/session",
    tag = "dashboard",
    operation_id = "dashboard_session",
    responses(
        (status = 200, description = "Whether keys are required and the role of the key sent", body = Session),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn session(State(st): State<AppState>, headers: HeaderMap) -> Json<Session> {
    let keys = &st.settings.auth.keys;
    if keys.is_empty() {
        return Json(Session {
            keys_required: false,
            role: Some("admin".into()),
        });
    }
    let role = crate::http::auth::bearer_token(&headers)
        .and_then(|t| keys.role_of(t))
        .map(|r| r.to_string());
    Json(Session {
        keys_required: true,
        role,
    })
}

fn svg_response(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /v1/model/curve.svg` — train and validation RMSE per epoch of the serving model.
#[utoipa::path(
    get,
    path = "/v1/model/curve.svg",
    tag = "model",
    operation_id = "learning_curve_svg",
    responses(
        (status = 200, description = "SVG plot: one marker (`circle`) per epoch and series; \"(no data)\" before the first model", content_type = "image/svg+xml", body = String),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn learning_curve_svg(State(st): State<AppState>) -> Response {
    let series = st
        .serving
        .get()
        .map(|snap| plot::rmse_series("", &snap.model.report.epochs))
        .unwrap_or_default();
    svg_response(plot::svg(&Chart {
        title: "Learning curve (RMSE per epoch)",
        x_label: "epoch",
        y_label: "RMSE",
        series: &series,
    }))
}

/// `GET /v1/model/history` answer: every recorded version, oldest first (rejected
/// ones included, marked by their `state`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelHistory {
    pub versions: Vec<VersionInfo>,
}

async fn versions(st: &AppState) -> Result<Vec<VersionInfo>, ApiError> {
    let mut rows = crate::http::model::version_list(st).await?;
    rows.reverse();
    Ok(rows)
}

/// `GET /v1/model/history` — holdout RMSE and training time of every recorded version.
#[utoipa::path(
    get,
    path = "/v1/model/history",
    tag = "model",
    operation_id = "model_history",
    responses(
        (status = 200, description = "Every recorded model version, oldest first", body = ModelHistory),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn history(State(st): State<AppState>) -> Result<Json<ModelHistory>, ApiError> {
    Ok(Json(ModelHistory {
        versions: versions(&st).await?,
    }))
}

/// `GET /v1/model/history.svg` — the same as two plots (holdout RMSE, training time).
#[utoipa::path(
    get,
    path = "/v1/model/history.svg",
    tag = "model",
    operation_id = "model_history_svg",
    responses(
        (status = 200, description = "SVG: holdout RMSE and training seconds per version, one marker per version (a circle on the line; a red cross for a rejected version)", content_type = "image/svg+xml", body = String),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn history_svg(State(st): State<AppState>) -> Result<Response, ApiError> {
    let rows = versions(&st).await?;
    // published versions on a line of circles, rejected ones as red crosses
    let split = |y: fn(&VersionInfo) -> Option<f64>, name: &str| {
        let (rejected, published): (Vec<&VersionInfo>, Vec<&VersionInfo>) =
            rows.iter().partition(|v| v.state == VersionState::Rejected);
        let points = |vs: Vec<&VersionInfo>| -> Vec<(f64, f64)> {
            vs.into_iter()
                .filter_map(|v| Some((v.version as f64, y(v)?)))
                .collect()
        };
        let mut series = vec![Series {
            name: name.to_owned(),
            points: points(published),
            marker: Marker::Circle,
        }];
        let rejected = points(rejected);
        if !rejected.is_empty() {
            series.push(Series {
                name: format!("{name}, rejected"),
                points: rejected,
                marker: Marker::Cross,
            });
        }
        series
    };
    let holdout = split(|v| v.holdout_rmse, "holdout RMSE");
    let seconds = split(|v| Some(v.train_seconds), "training time (s)");
    Ok(svg_response(plot::svg_stack(&[
        Chart {
            title: "Holdout RMSE per model version",
            x_label: "version",
            y_label: "RMSE",
            series: &holdout,
        },
        Chart {
            title: "Training time per model version",
            x_label: "version",
            y_label: "seconds",
            series: &seconds,
        },
    ])))
}

/// One bin of the rating distribution.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RatingBin {
    /// The rating, rounded to the nearest half.
    pub rating: f32,
    pub count: u64,
}

/// `GET /v1/stats/ingestion` answer: what the dashboard's Ingestion section shows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ingestion {
    /// Ratings written per minute over the last 60 minutes, oldest first (the last is
    /// the current minute so far): ratings accepted by this server process (each
    /// rating of a committed `POST /v1/ratings` counts once; deletions do not count;
    /// writes through other replicas or `funkrec import` are not seen; restarts from 0).
    pub written_per_minute: Vec<u64>,
    /// The rating distribution of the ratings the serving model's rows held when they
    /// were read (computed once per snapshot, not per request); empty before the first
    /// model, and until a snapshot loaded at start has been indexed.
    pub distribution: Vec<RatingBin>,
    /// The model version the distribution belongs to.
    pub model_version: Option<u64>,
}

fn ingestion_now(st: &AppState) -> Ingestion {
    let snap = st.serving.get();
    let distribution = snap
        .as_ref()
        .and_then(|s| s.rated.get())
        .map(|r| {
            r.index
                .histogram()
                .iter()
                .map(|&(rating, count)| RatingBin { rating, count })
                .collect()
        })
        .unwrap_or_default();
    Ingestion {
        written_per_minute: st.recent.written_per_minute(),
        distribution,
        model_version: snap.map(|s| s.version),
    }
}

/// `GET /v1/stats/ingestion` — ratings written per minute over the last hour (by this
/// process) and the serving snapshot's rating distribution.
#[utoipa::path(
    get,
    path = "/v1/stats/ingestion",
    tag = "dashboard",
    operation_id = "ingestion",
    responses(
        (status = 200, description = "Writes per minute and the rating distribution", body = Ingestion),
        (status = 503, description = "`timeout` or `overloaded`", body = ErrorBody),
    )
)]
pub async fn ingestion(State(st): State<AppState>) -> Json<Ingestion> {
    Json(ingestion_now(&st))
}

/// `GET /v1/stats/ingestion.svg` — the same as two plots: writes per minute (a line,
/// one marker per minute) and the rating distribution (one bar per rating).
#[utoipa::path(
    get,
    path = "/v1/stats/ingestion.svg",
    tag = "dashboard",
    operation_id = "ingestion_svg",
    responses(
        (status = 200, description = "SVG: ratings written per minute (60 markers, `circle`) above the rating distribution (one `rect` with `opacity=\"0.8\"` per bar)", content_type = "image/svg+xml", body = String),
        (status = 503, description = "`timeout` or `overloaded`", body = ErrorBody),
    )
)]
pub async fn ingestion_svg(State(st): State<AppState>) -> Response {
    let now = ingestion_now(&st);
    let n = now.written_per_minute.len() as f64;
    let per_minute = [Series {
        name: "ratings written".into(),
        points: now
            .written_per_minute
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as f64 - n + 1.0, c as f64))
            .collect(),
        marker: Marker::Circle,
    }];
    let bars: Vec<(f64, f64)> = now
        .distribution
        .iter()
        .map(|b| (b.rating as f64, b.count as f64))
        .collect();
    svg_response(plot::svg_line_and_bars(
        &Chart {
            title: "Ratings written per minute (this process, last hour)",
            x_label: "minutes from now",
            y_label: "ratings",
            series: &per_minute,
        },
        &plot::Bars {
            title: "Rating distribution (serving model's rows)",
            x_label: "rating",
            y_label: "ratings",
            bars: &bars,
            width: 0.5,
        },
    ))
}
