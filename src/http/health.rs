//! Liveness and readiness probes.

use crate::http::error::{ApiError, ErrorBody};
use crate::http::AppState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// `GET /healthz` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// The overall state in a `200` answer of `GET /readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyState {
    Ready,
}

/// A check that passed (a failing one answers 503 instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Ok,
}

/// `GET /readyz` answer: every check passed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub status: ReadyState,
    /// The database answered a `SELECT 1`.
    pub database: CheckState,
    /// Round trip of that query, in milliseconds.
    pub database_latency_ms: f64,
    /// The writer thread takes rating writes.
    pub writer: CheckState,
    /// The background training worker is running.
    pub training_worker: CheckState,
    /// No write failed in the last 60 s without a successful commit after it.
    pub writes: CheckState,
    /// The data directory's file system has at least `storage.min_free_bytes` free.
    pub disk: CheckState,
    /// Free bytes (for unprivileged users) in the data directory's file system.
    pub disk_free_bytes: u64,
    /// Whether a model snapshot is served (reported, not required: without one the API
    /// serves fallbacks).
    pub model_loaded: bool,
    /// Version of the served snapshot.
    pub model_version: Option<u64>,
    /// The served snapshot's index of each user's rated items is built (it is built in
    /// the background after a snapshot is loaded; until then reads of known users ask
    /// the store for what they rated). Reported, not required.
    pub model_indexed: bool,
    /// `cluster.role`: `all`, `api` or `trainer`.
    pub role: String,
    /// This process trains now: it holds the trainer lock on PostgreSQL (on SQLite
    /// the one process with role `all` always does).
    pub trainer_lock: bool,
}

/// What `/readyz` found; [`Probe::verdict`] turns it into the answer.
struct Probe {
    /// The database ping: its error, or how long it took.
    database: Result<Duration, String>,
    writer_running: bool,
    worker_running: bool,
    model_version: Option<u64>,
    model_indexed: bool,
    /// The latest failed write's error and age, when none committed since.
    write_failure: Option<(String, Duration)>,
    /// Free bytes in the data directory (or why they could not be read).
    disk_free: Result<u64, String>,
    min_free_bytes: u64,
    role: String,
    leader: bool,
}

/// How long a failed write (with no successful one after it) keeps `/readyz` failing: long
/// enough to take the instance out of rotation, short enough to let writes be tried again.
pub const WRITE_FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl Probe {
    /// `Ready`, or `NotReady` naming every failing check (the client sees the names, the
    /// log also the reasons).
    fn verdict(self) -> Result<Ready, ApiError> {
        let mut failed = Vec::new();
        let mut why = Vec::new();
        if let Err(e) = &self.database {
            failed.push("database");
            why.push(format!("database: {e}"));
        }
        if !self.writer_running {
            failed.push("writer");
            why.push("writer: the writer thread has ended".to_owned());
        }
        if !self.worker_running {
            failed.push("training_worker");
            why.push("training_worker: the worker loop has ended".to_owned());
        }
        if let Some((e, age)) = &self.write_failure {
            if *age < WRITE_FAILURE_WINDOW {
                failed.push("writes");
                why.push(format!(
                    "writes: the latest write failed {:.1} s ago: {e}",
                    age.as_secs_f64()
                ));
            }
        }
        match &self.disk_free {
            Ok(free) if *free >= self.min_free_bytes => {}
            Ok(free) => {
                failed.push("disk");
                why.push(format!(
                    "disk: {free} bytes free in the data directory, below storage.min_free_bytes = {}",
                    self.min_free_bytes
                ));
            }
            Err(e) => {
                failed.push("disk");
                why.push(format!("disk: cannot read the free space: {e}"));
            }
        }
        match self.database {
            Ok(latency) if failed.is_empty() => Ok(Ready {
                status: ReadyState::Ready,
                database: CheckState::Ok,
                database_latency_ms: latency.as_secs_f64() * 1e3,
                writer: CheckState::Ok,
                training_worker: CheckState::Ok,
                writes: CheckState::Ok,
                disk: CheckState::Ok,
                disk_free_bytes: *self.disk_free.as_ref().unwrap_or(&0),
                model_loaded: self.model_version.is_some(),
                model_version: self.model_version,
                model_indexed: self.model_indexed,
                role: self.role,
                trainer_lock: self.leader,
            }),
            _ => Err(ApiError::NotReady {
                failed: failed.join(", "),
                detail: why.join("; "),
            }),
        }
    }
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

/// `GET /readyz` — 200 when the database answers a ping, the writer thread takes writes,
/// no write failed in the last minute without a commit after it, the data directory has
/// `storage.min_free_bytes` free and the training worker runs (whether a model is loaded
/// is reported, not required); 503 `unavailable` naming the failing checks otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Every check passed", body = Ready),
        (status = 503, description = "`unavailable` (the message names the failing checks: `database`, `writer`, `training_worker`, `writes`, `disk`) or `timeout`", body = ErrorBody),
    )
)]
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let started = Instant::now();
    let database = st
        .store
        .ping()
        .await
        .map(|()| started.elapsed())
        .map_err(|e| e.to_string());
    let health = st.writer.health();
    let serving = st.serving.get();
    let probe = Probe {
        database,
        writer_running: st.writer.is_running(),
        worker_running: !st.worker_loop.is_finished(),
        model_version: serving.as_ref().map(|s| s.version),
        model_indexed: serving.as_ref().is_some_and(|s| s.rated.get().is_some()),
        write_failure: health.failing().map(|(e, age)| (e.to_owned(), age)),
        disk_free: fs4::available_space(&st.settings.storage.data_dir).map_err(|e| e.to_string()),
        min_free_bytes: st.settings.storage.min_free_bytes,
        role: st.cluster.role().to_string(),
        leader: st.cluster.is_leader(),
    };
    probe.verdict().map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::ErrorCode;

    fn healthy() -> Probe {
        Probe {
            database: Ok(Duration::from_micros(1500)),
            writer_running: true,
            worker_running: true,
            model_version: Some(4),
            model_indexed: true,
            write_failure: None,
            disk_free: Ok(1 << 30),
            min_free_bytes: 1 << 20,
            role: "api".into(),
            leader: false,
        }
    }

    #[test]
    fn failing_writes_and_a_full_disk_are_unready() {
        let e = Probe {
            write_failure: Some(("database or disk is full".into(), Duration::from_secs(3))),
            ..healthy()
        }
        .verdict()
        .unwrap_err();
        assert_eq!(e.public_message(), "not ready: writes");
        assert!(e.to_string().contains("database or disk is full"), "{e}");
        let old = Probe {
            write_failure: Some(("x".into(), WRITE_FAILURE_WINDOW + Duration::from_secs(1))),
            ..healthy()
        };
        assert!(old.verdict().is_ok(), "an old failure no longer counts");
        let e = Probe {
            disk_free: Ok(1000),
            ..healthy()
        }
        .verdict()
        .unwrap_err();
        assert_eq!(e.public_message(), "not ready: disk");
        let e = Probe {
            disk_free: Err("no such directory".into()),
            write_failure: Some(("disk I/O error".into(), Duration::ZERO)),
            ..healthy()
        }
        .verdict()
        .unwrap_err();
        assert_eq!(e.public_message(), "not ready: writes, disk");
    }

    #[test]
    fn all_checks_passing_is_ready_with_the_model_reported() {
        let r = healthy().verdict().unwrap();
        assert_eq!(r.database_latency_ms, 1.5);
        assert_eq!((r.model_loaded, r.model_version), (true, Some(4)));
        assert_eq!((r.role.as_str(), r.trainer_lock), ("api", false));
        let r = Probe {
            model_version: None,
            ..healthy()
        };
        assert!(
            !r.verdict().unwrap().model_loaded,
            "no model is still ready"
        );
    }

    #[test]
    fn each_failing_check_is_named() {
        let e = Probe {
            database: Err("disk I/O error at /secret/db".into()),
            ..healthy()
        }
        .verdict()
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(e.public_message(), "not ready: database");
        assert!(e.to_string().contains("disk I/O error"), "{e}");
        let e = Probe {
            writer_running: false,
            worker_running: false,
            ..healthy()
        }
        .verdict()
        .unwrap_err();
        assert_eq!(e.public_message(), "not ready: writer, training_worker");
    }
}
