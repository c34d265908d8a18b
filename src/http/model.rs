//! Model endpoints: describe the serving snapshot, request a retrain, list the model
//! versions and roll back to a kept one.

use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::JsonBytes;
use crate::http::AppState;
use crate::worker::{JobStatus, RollbackError};
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
    /// Early stopping (`model.patience`): the epoch whose parameters the model holds
    /// (the lowest holdout RMSE); absent when early stopping was off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// The run ended before `model.epochs` because the holdout RMSE stopped improving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<bool>,
    /// The run ended at `training.first_model_secs` (no model served when it started);
    /// a full run follows it. Absent when false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_short: Option<bool>,
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
            best_epoch: None,
            stopped_early: None,
            cut_short: None,
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
        best_epoch: m.report.best_epoch,
        stopped_early: Some(m.report.stopped_early),
        cut_short: m.report.cut_short.then_some(true),
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

/// The state of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Served now (exactly one version, once a model exists).
    Serving,
    /// Was served; a later publication or a rollback replaced it.
    Superseded,
    /// Refused by the publish gate (`reason` says why); never served, no file.
    Rejected,
}

impl VersionState {
    fn from_row(state: &str) -> VersionState {
        match state {
            crate::store::MODEL_SERVING => VersionState::Serving,
            crate::store::MODEL_REJECTED => VersionState::Rejected,
            _ => VersionState::Superseded,
        }
    }
}

/// Sizes of the data behind a model version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionCounts {
    pub users: u64,
    pub items: u64,
    /// Ratings the run loaded from the store (training + holdout).
    pub ratings: u64,
    pub holdout: u64,
}

/// One model version, as recorded in the `model` table.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    pub version: u64,
    pub state: VersionState,
    /// RFC 3339, UTC.
    pub trained_at: String,
    pub trainer: String,
    pub counts: VersionCounts,
    /// RMSE on the held-out ratings (`null` when nothing was held out).
    pub holdout_rmse: Option<f64>,
    /// RMSE on the training ratings at the kept epoch.
    pub train_rmse: Option<f64>,
    /// Training time in seconds.
    pub train_seconds: f64,
    /// Why the publish gate rejected it (`null` unless `rejected`).
    pub reason: Option<String>,
    /// Whether its model file is still on disk (`storage.keep_snapshots` prunes old
    /// ones, never the serving one): only a kept, non-rejected version can be rolled
    /// back to.
    pub file_kept: bool,
}

/// `GET /v1/model/versions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelVersions {
    /// Every recorded version, newest first.
    pub versions: Vec<VersionInfo>,
}

impl VersionInfo {
    /// The version of `row`; `dir` holds the model files.
    pub fn from_row(r: crate::store::ModelRow, dir: &std::path::Path) -> VersionInfo {
        VersionInfo {
            version: r.version.max(0) as u64,
            state: VersionState::from_row(&r.state),
            file_kept: crate::snapshot::file_kept(dir, r.version.max(0) as u64),
            trained_at: r.trained_at,
            trainer: r.trainer,
            counts: VersionCounts {
                users: r.n_users.max(0) as u64,
                items: r.n_items.max(0) as u64,
                ratings: r.n_ratings.max(0) as u64,
                holdout: r.n_holdout.max(0) as u64,
            },
            holdout_rmse: r.holdout_rmse,
            train_rmse: r.train_rmse,
            train_seconds: r.train_secs,
            reason: r.reason,
        }
    }
}

/// Every recorded version, newest first.
pub async fn version_list(st: &AppState) -> Result<Vec<VersionInfo>, ApiError> {
    let dir = st.settings.models_dir();
    let rows = st.store.model_rows().await?;
    Ok(rows
        .into_iter()
        .map(|r| VersionInfo::from_row(r, &dir))
        .collect())
}

/// `GET /v1/model/versions` — every model version (serving, superseded, rejected).
#[utoipa::path(
    get,
    path = "/v1/model/versions",
    tag = "model",
    operation_id = "model_versions",
    responses(
        (status = 200, description = "Every recorded model version, newest first", body = ModelVersions),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable` (database)", body = ErrorBody),
    )
)]
pub async fn versions(State(st): State<AppState>) -> Result<Json<ModelVersions>, ApiError> {
    Ok(Json(ModelVersions {
        versions: version_list(&st).await?,
    }))
}

/// Body of `POST /v1/model/rollback`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The kept version to serve again.
    #[schema(minimum = 1)]
    pub version: u64,
}

/// `200` answer of `POST /v1/model/rollback`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RollbackDone {
    /// The version served now.
    pub version: u64,
    pub trained_at: String,
    pub holdout_rmse: Option<f64>,
}

/// `POST /v1/model/rollback` — serves a kept version again (its file is loaded and
/// verified, then swapped in atomically and recorded as the serving version).
#[utoipa::path(
    post,
    path = "/v1/model/rollback",
    tag = "model",
    operation_id = "rollback",
    request_body(content = RollbackRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The version serves now (committed)", body = RollbackDone),
        (status = 400, description = "`malformed_json`, or `invalid_body` (a key named twice)", body = ErrorBody),
        (status = 404, description = "`version_not_found`: no model version has that number", body = ErrorBody),
        (status = 409, description = "`version_rejected` (the publish gate refused it) or `version_file_unavailable` (its file was pruned or does not verify)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_body`: wrong shape, type, missing or unknown field", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 503, description = "`timeout` or `unavailable` (database)", body = ErrorBody),
    )
)]
pub async fn rollback(
    State(st): State<AppState>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<RollbackDone>, ApiError> {
    let mut value = crate::http::body::parse_strict_json(&body)?;
    // an integral float (`3.0`) is an integer to JSON Schema, so to this endpoint too
    if let Some(v) = value.get_mut("version").filter(|v| v.is_f64()) {
        if let Some(i) = v.as_f64().and_then(crate::http::body::integral_f64) {
            *v = i.into();
        }
    }
    if !value.is_object() {
        return Err(ApiError::InvalidBody(
            "the body must be a JSON object: {\"version\": N}".into(),
        ));
    }
    let req: RollbackRequest =
        serde_json::from_value(value).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let snap = st.worker.rollback(req.version).await.map_err(|e| {
        let msg = format!("version {}: {e}", req.version);
        match e {
            RollbackError::NotFound => ApiError::VersionNotFound(msg),
            RollbackError::Rejected(_) => ApiError::VersionRejected(msg),
            RollbackError::FileUnavailable(_) => ApiError::VersionFileUnavailable(msg),
            RollbackError::Store(e) => e.into(),
            RollbackError::Internal(e) => ApiError::Internal(format!("{e:#}")),
        }
    })?;
    Ok(Json(RollbackDone {
        version: snap.version,
        trained_at: snap.trained_at.clone(),
        holdout_rmse: snap.holdout_rmse,
    }))
}
