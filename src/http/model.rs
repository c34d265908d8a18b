//! Model endpoints: describe the serving snapshot, request a retrain.

use crate::http::error::ErrorBody;
use crate::http::AppState;
use crate::worker::JobStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use funkrec_engine::{EpochStats, Hyper, TrainerKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether a snapshot is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    NoModel,
    Ready,
}

/// Sizes of the data behind a snapshot.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelCounts {
    pub users: u64,
    pub items: u64,
    /// Ratings the run loaded from the store.
    pub ratings: u64,
    pub train_ratings: u64,
    pub holdout_ratings: u64,
}

/// `GET /v1/model`. Before the first snapshot only `state`, `version`, `trained_at`
/// (both `null`) and `training` are present.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    pub state: ModelState,
    pub version: Option<u64>,
    /// RFC 3339, UTC.
    pub trained_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperparameters: Option<Hyper>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<ModelCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// RMSE on the training ratings after the last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_rmse: Option<f64>,
    /// RMSE on the held-out sample; absent before the first model, `null` when nothing
    /// was held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_rmse: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<Vec<EpochStats>>,
    /// The background worker.
    pub training: JobStatus,
}

/// `202` answer of `POST /v1/model/train`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrainAccepted {
    pub job: JobStatus,
}

/// `GET /v1/model` — always 200; `"state": "no_model"` (and null fields) before
/// the first snapshot exists, `"state": "ready"` after.
#[utoipa::path(
    get,
    path = "/v1/model",
    tag = "model",
    operation_id = "get_model",
    responses(
        (status = 200, description = "The serving snapshot and the training worker", body = ModelInfo),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout`", body = ErrorBody),
    )
)]
pub async fn get_model(State(st): State<AppState>) -> Json<ModelInfo> {
    let training = st.worker.status();
    let Some(snap) = st.serving.get() else {
        return Json(ModelInfo {
            state: ModelState::NoModel,
            version: None,
            trained_at: None,
            trainer: None,
            hyperparameters: None,
            counts: None,
            train_seconds: None,
            train_rmse: None,
            holdout_rmse: None,
            epochs: None,
            training,
        });
    };
    let m = &snap.model;
    Json(ModelInfo {
        state: ModelState::Ready,
        version: Some(snap.version),
        trained_at: Some(snap.trained_at.clone()),
        trainer: Some(m.hyper.trainer),
        hyperparameters: Some(m.hyper.clone()),
        counts: Some(ModelCounts {
            users: m.n_users() as u64,
            items: m.n_items() as u64,
            ratings: snap.n_ratings_total,
            train_ratings: m.report.n_ratings as u64,
            holdout_ratings: snap.n_holdout as u64,
        }),
        train_seconds: Some(m.report.train_seconds),
        train_rmse: snap.train_rmse(),
        holdout_rmse: Some(snap.holdout_rmse),
        epochs: Some(m.report.epochs.clone()),
        training,
    })
}

/// `POST /v1/model/train` — `202` with the job state; runs coalesce (one queued at most).
#[utoipa::path(
    post,
    path = "/v1/model/train",
    tag = "model",
    operation_id = "train",
    responses(
        (status = 202, description = "A run is queued (coalesced with an already queued one); on PostgreSQL the request is recorded in the database for the elected trainer", body = TrainAccepted),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`unavailable` (the database could not record the request) or `timeout`", body = ErrorBody),
    )
)]
pub async fn train(
    State(st): State<AppState>,
) -> Result<(StatusCode, Json<TrainAccepted>), crate::http::error::ApiError> {
    let job = st.worker.request_anywhere().await?;
    Ok((StatusCode::ACCEPTED, Json(TrainAccepted { job })))
}
