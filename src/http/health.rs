//! Liveness and readiness probes.

use crate::http::error::ApiError;
use crate::http::error::ErrorBody;
use crate::http::AppState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: String,
    /// Always `ok` (an unreachable database is a 503).
    pub database: String,
    pub model_loaded: bool,
    pub model_version: Option<u64>,
}

/// `GET /healthz` — the process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses(
        (status = 200, description = "The process is alive", body = Health),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// `GET /readyz` — 200 when the database answers (whether a model is loaded is
/// reported, not required: without one the API serves fallbacks); 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "The database answers", body = Ready),
        (status = 503, description = "`unavailable` (the database does not answer) or `timeout`", body = ErrorBody),
    )
)]
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Ready>, ApiError> {
    st.store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    let snap = st.serving.get();
    Ok(Json(Ready {
        status: "ready".into(),
        database: "ok".into(),
        model_loaded: snap.is_some(),
        model_version: snap.map(|s| s.version),
    }))
}
