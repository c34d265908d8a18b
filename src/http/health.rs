//! Liveness and readiness probes.

use super::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

/// `GET /healthz` — the process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz` — 200 when the database answers (whether a model is loaded is
/// reported, not required: without one the API serves fallbacks); 503 otherwise.
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    let snap = st.serving.get();
    Ok(Json(json!({
        "status": "ready",
        "database": "ok",
        "model_loaded": snap.is_some(),
        "model_version": snap.map(|s| s.version),
    })))
}
