//! Model endpoints: describe the serving snapshot, request a retrain.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// `GET /v1/model` — always 200; `"state": "no_model"` (and null fields) before
/// the first snapshot exists, `"state": "ready"` after.
pub async fn get_model(State(st): State<AppState>) -> Json<Value> {
    let training = st.worker.status();
    let Some(snap) = st.serving.get() else {
        return Json(json!({
            "state": "no_model",
            "version": null,
            "trained_at": null,
            "training": training,
        }));
    };
    let m = &snap.model;
    Json(json!({
        "state": "ready",
        "version": snap.version,
        "trained_at": snap.trained_at,
        "trainer": m.hyper.trainer,
        "hyperparameters": m.hyper,
        "counts": {
            "users": m.n_users(),
            "items": m.n_items(),
            "ratings": snap.n_ratings_total,
            "train_ratings": m.report.n_ratings,
            "holdout_ratings": snap.n_holdout,
        },
        "train_seconds": m.report.train_seconds,
        "train_rmse": snap.train_rmse(),
        "holdout_rmse": snap.holdout_rmse,
        "epochs": m.report.epochs,
        "training": training,
    }))
}

/// `POST /v1/model/train` — `202` with the job state; runs coalesce (one queued at most).
pub async fn train(State(st): State<AppState>) -> (StatusCode, Json<Value>) {
    let job = st.worker.request();
    (StatusCode::ACCEPTED, Json(json!({ "job": job })))
}
