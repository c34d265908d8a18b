//! Background training: the retrain policy, one run at a time, and snapshot publication.

mod build;
mod cluster;
mod dataset;
mod thread;

pub use build::{build_snapshot, Built, Stop};
pub use dataset::{is_held_out, split, split_for};

use crate::cluster::Cluster;
use crate::config::Settings;
use crate::rated::RecentWrites;
use crate::snapshot::{self, Serving, Snapshot};
use crate::store::Store;
use serde::Serialize;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the worker is doing, as reported by `/v1/model` and `POST /v1/model/train`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct JobStatus {
    /// A run is in progress.
    pub running: bool,
    /// A run was requested and has not started yet (at most one is queued).
    pub queued: bool,
    /// Epoch reached by the current run.
    pub epoch: Option<usize>,
    pub epochs: usize,
    /// Ratings written or deleted since the last run started.
    pub pending_changes: u64,
    /// Completed runs that published a snapshot, since start.
    pub runs: u64,
    pub failures: u64,
    /// Completed runs whose model the publish gate rejected, since start.
    #[serde(default)]
    pub rejected: u64,
    /// Why the last rejected model was rejected (None before any rejection).
    #[serde(default)]
    pub last_rejection: Option<String>,
    pub last_started_at: Option<String>,
    pub last_finished_at: Option<String>,
    pub last_duration_secs: Option<f64>,
    /// Why the last run failed or was skipped (cleared by a successful run).
    pub last_error: Option<String>,
}

struct Inner {
    settings: Arc<Settings>,
    store: Store,
    serving: Arc<Serving>,
    recent: Arc<RecentWrites>,
    /// Explicit run requests.
    requested: Notify,
    status: watch::Sender<JobStatus>,
    /// `recent.changes()` when the last run started: changes after it are pending.
    changes_at_run: AtomicU64,
    /// Changes found at start between the loaded snapshot and the store.
    changes_at_start: AtomicU64,
    cancel: CancellationToken,
    last_version: AtomicU64,
    /// Held while the served version changes (a publication or a rollback), so the
    /// `model` table's serving row and the served snapshot change together.
    publishing: tokio::sync::Mutex<()>,
    /// Leadership (on a shared database, see `cluster.rs`).
    cluster: Arc<Cluster>,
    /// The shared counters' pending changes, as last read (shared database).
    shared_pending: AtomicU64,
}

/// Handle to the training worker; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

/// Owns the worker task; `shutdown` stops it cleanly.
pub struct WorkerTask {
    worker: Worker,
    join: JoinHandle<()>,
}

impl WorkerTask {
    /// A handle on the worker loop whose `is_finished` tells whether it has ended.
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.join.abort_handle()
    }

    /// Cancels a run in progress (at its next epoch; the partial model is
    /// discarded), stops the loop and waits for it.
    pub async fn shutdown(self) {
        self.worker.inner.cancel.cancel();
        if let Err(e) = self.join.await {
            tracing::error!(error = %e, "training worker ended abnormally");
        }
    }
}

/// What woke the worker loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// `POST /v1/model/train` (or the start-up policy) asked for a run.
    Requested,
    /// Ratings were committed.
    Changes,
    /// `training.retrain_interval_secs` passed.
    Interval,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Published(u64),
    /// The publish gate kept the serving model; the version is recorded as rejected.
    Rejected {
        version: u64,
        reason: String,
    },
    /// Too few ratings; the message says how many.
    Skipped(String),
    /// Shutdown stopped it; nothing was published.
    Cancelled,
    Failed(String),
}

impl Worker {
    /// Starts the worker loop on the runtime. `last_version` is the highest
    /// snapshot version ever seen (new snapshots get larger ones).
    ///
    /// Whether to train right away is decided here, before the server accepts
    /// requests: with no snapshot and ratings in the store (`train_on_start`),
    /// a run is queued.
    pub async fn start(
        settings: Arc<Settings>,
        store: Store,
        serving: Arc<Serving>,
        recent: Arc<RecentWrites>,
        last_version: u64,
        cluster: Arc<Cluster>,
    ) -> (Worker, WorkerTask) {
        let worker = Worker {
            inner: Arc::new(Inner {
                status: watch::Sender::new(JobStatus {
                    epochs: settings.model.total_epochs(),
                    ..JobStatus::default()
                }),
                changes_at_run: AtomicU64::new(recent.changes()),
                changes_at_start: AtomicU64::new(0),
                settings,
                store,
                serving,
                recent,
                requested: Notify::new(),
                cancel: CancellationToken::new(),
                last_version: AtomicU64::new(last_version),
                publishing: tokio::sync::Mutex::new(()),
                cluster,
                shared_pending: AtomicU64::new(0),
            }),
        };
        // (on a shared database the elected trainer decides, see `cluster_loop`)
        if !worker.inner.cluster.shared()
            && worker.inner.serving.get().is_none()
            && worker.inner.settings.training.train_on_start
        {
            match worker.inner.store.has_ratings().await {
                Ok(true) => {
                    tracing::info!("no model snapshot but ratings in the store: training at start");
                    worker.request();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the store at start"),
            }
        } else if !worker.inner.cluster.shared()
            && worker.inner.settings.training.train_on_start
            && worker
                .inner
                .serving
                .get()
                .is_some_and(|s| s.model.report.cut_short)
        {
            // the full run that follows a first model cut short by its time budget had not
            // published before the restart
            tracing::info!(
                "the loaded model was cut short by its time budget: training the full model"
            );
            worker.request();
        }
        let w = worker.clone();
        let join = tokio::spawn(async move { w.run_loop().await });
        (worker.clone(), WorkerTask { worker, join })
    }

    pub fn status(&self) -> JobStatus {
        let mut s = self.inner.status.borrow().clone();
        s.pending_changes = self.pending();
        s
    }

    /// The status after every change (`pending_changes` is filled in by [`Worker::status`]).
    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.inner.status.subscribe()
    }

    /// The version served now and every later publication.
    pub fn published(&self) -> watch::Receiver<Option<u64>> {
        self.inner.serving.subscribe()
    }

    /// Asks for a run. While one is running, requests coalesce into exactly one more.
    pub fn request(&self) -> JobStatus {
        self.inner.status.send_modify(|s| s.queued = true);
        self.inner.requested.notify_one();
        self.status()
    }

    /// Records a train request: on a shared database in the database (whichever
    /// process is elected trains), otherwise as [`Worker::request`].
    pub async fn request_anywhere(&self) -> Result<JobStatus, crate::store::StoreError> {
        if !self.inner.cluster.shared() {
            return Ok(self.request());
        }
        self.inner.store.request_train().await?;
        let mut s = self.status();
        s.queued = true;
        Ok(s)
    }

    /// Ratings written or deleted since the last run started (counted by the writer
    /// when it commits), plus the difference found at start. On a shared database:
    /// the changes of every replica not covered by a finished run, as last read.
    pub fn pending(&self) -> u64 {
        let inner = &self.inner;
        if inner.cluster.shared() {
            return inner.shared_pending.load(Ordering::Acquire);
        }
        let since_run = inner
            .recent
            .changes()
            .saturating_sub(inner.changes_at_run.load(Ordering::Acquire));
        since_run + inner.changes_at_start.load(Ordering::Acquire)
    }

    /// The retrain policy: whether a wake-up of this kind starts a run now.
    pub fn wants_run(&self, wake: Wake) -> bool {
        let inner = &self.inner;
        match wake {
            Wake::Requested => inner.status.borrow().queued,
            Wake::Changes => {
                let threshold = inner.settings.training.retrain_after_ratings;
                threshold > 0 && self.pending() >= threshold
            }
            // an interval with nothing new to learn from is skipped
            Wake::Interval => self.pending() > 0 || inner.serving.get().is_none(),
        }
    }

    #[tracing::instrument(name = "worker", skip_all)]
    async fn run_loop(self) {
        let inner = &self.inner;
        if inner.cluster.shared() {
            return self.cluster_loop().await;
        }
        self.startup_policy().await;
        let interval = inner.settings.training.retrain_interval_secs;
        let period = (interval > 0).then(|| Duration::from_secs(interval));
        let mut next_tick = period.map(|p| tokio::time::Instant::now() + p);
        loop {
            let timer = async {
                match next_tick {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                _ = inner.cancel.cancelled() => break,
                _ = inner.requested.notified() => Wake::Requested,
                _ = timer => Wake::Interval,
                _ = inner.recent.changed() => Wake::Changes,
            };
            if wake == Wake::Interval {
                next_tick = period.map(|p| tokio::time::Instant::now() + p);
            }
            if !self.wants_run(wake) {
                continue;
            }
            tracing::info!(?wake, pending = self.pending(), "starting a training run");
            self.run_once().await;
            if inner.cancel.is_cancelled() {
                break;
            }
            next_tick = period.map(|p| tokio::time::Instant::now() + p);
        }
        tracing::info!("training worker stopped");
    }

    /// At start, with a snapshot loaded: count the changes since it was trained
    /// (in the background: a count scans the table) and retrain if they already
    /// pass the threshold.
    async fn startup_policy(&self) {
        let inner = &self.inner;
        let Some(snap) = inner.serving.get() else {
            return;
        };
        let count = match inner.store.count_ratings().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not count ratings at start");
                return;
            }
        };
        let diff = count.abs_diff(snap.n_ratings_total);
        inner.changes_at_start.store(diff, Ordering::Release);
        if self.wants_run(Wake::Changes) {
            tracing::info!(pending = diff, "retrain threshold reached at start");
            self.request();
        }
    }

    /// One training run now (status, training, publication), whatever the policy says.
    /// Only the loop calls it, so runs never overlap.
    async fn run_once(&self) -> RunOutcome {
        let inner = &self.inner;
        let started = Instant::now();
        inner
            .changes_at_run
            .store(inner.recent.changes(), Ordering::Release);
        inner.changes_at_start.store(0, Ordering::Release);
        let epochs = inner.settings.model.total_epochs();
        inner.status.send_modify(|s| {
            s.running = true;
            s.queued = false;
            s.epoch = None;
            s.epochs = epochs;
            s.last_started_at = Some(snapshot::rfc3339(time::OffsetDateTime::now_utc()));
        });
        let outcome = match self.train_and_publish().await {
            Ok(o) => o,
            Err(e) => RunOutcome::Failed(format!("{e:#}")),
        };
        let secs = started.elapsed().as_secs_f64();
        inner.status.send_modify(|s| {
            s.running = false;
            s.last_finished_at = Some(snapshot::rfc3339(time::OffsetDateTime::now_utc()));
            s.last_duration_secs = Some(secs);
            match &outcome {
                RunOutcome::Published(_) => {
                    s.runs += 1;
                    s.last_error = None;
                }
                RunOutcome::Rejected { reason, .. } => {
                    s.rejected += 1;
                    s.last_error = None;
                    s.last_rejection = Some(reason.clone());
                }
                RunOutcome::Skipped(msg) => s.last_error = Some(msg.clone()),
                RunOutcome::Cancelled => {}
                RunOutcome::Failed(msg) => {
                    s.failures += 1;
                    s.last_error = Some(msg.clone());
                }
            }
        });
        match &outcome {
            RunOutcome::Published(version) => {
                tracing::info!(version, secs, "published model snapshot")
            }
            RunOutcome::Rejected { version, reason } => {
                tracing::warn!(
                    version,
                    secs,
                    reason,
                    "model rejected by the publish gate; the serving model stays"
                )
            }
            RunOutcome::Skipped(msg) => tracing::info!("{msg}"),
            RunOutcome::Cancelled => {
                tracing::info!(
                    "training cancelled (shutdown or lost leadership); partial model discarded"
                )
            }
            RunOutcome::Failed(msg) => tracing::error!(error = msg, "training run failed"),
        }
        outcome
    }

    /// Reads the rows, builds a snapshot on a blocking thread and publishes it.
    #[tracing::instrument(skip_all, fields(version))]
    async fn train_and_publish(&self) -> anyhow::Result<RunOutcome> {
        let inner = self.inner.clone();
        let started = Instant::now();
        // Before the read: every commit numbered after this may be missing from the rows.
        let since = inner.recent.seq();
        let rows = inner.store.load_training_rows().await?;
        let min = inner.settings.training.min_ratings.max(1);
        if rows.ratings.len() < min {
            return Ok(RunOutcome::Skipped(format!(
                "skipped: {} ratings, at least {min} needed",
                rows.ratings.len()
            )));
        }
        let version = inner.last_version.load(Ordering::SeqCst) + 1;
        tracing::Span::current().record("version", version);
        let worker = self.clone();
        // The gate compares with the model serving when the run starts.
        let baseline = inner.serving.get();
        // the leadership this run belongs to: losing it cancels the run
        let term = inner.cluster.term();
        let term_ = term.clone();
        // With no model serving, a run has a time budget (a first model in minutes on
        // a large store; a full run follows).
        let budget = inner.settings.training.first_model_secs;
        let deadline =
            (baseline.is_none() && budget > 0).then(|| started + Duration::from_secs(budget));
        let nice = inner.settings.training.nice;
        let built = thread::run(nice, move || {
            let inner = &worker.inner;
            let mut on_epoch = |e: &funkrec_engine::EpochStats| {
                inner.status.send_modify(|s| s.epoch = Some(e.epoch));
                if inner.cancel.is_cancelled() || term_.is_cancelled() {
                    ControlFlow::Break(Stop::Cancel)
                } else if deadline.is_some_and(|d| Instant::now() >= d) {
                    ControlFlow::Break(Stop::Budget)
                } else {
                    ControlFlow::Continue(())
                }
            };
            let baseline = baseline.as_ref().map(|b| &b.model);
            build_snapshot(
                rows,
                &inner.settings,
                version,
                since,
                baseline,
                &mut on_epoch,
            )
        })
        .await??;
        let Some(built) = built else {
            return Ok(RunOutcome::Cancelled);
        };
        if term.is_cancelled() {
            return Ok(RunOutcome::Cancelled);
        }
        if let Some(reason) = gate(&built, inner.settings.training.max_regression) {
            self.reject(&built.snapshot, &reason).await?;
            return Ok(RunOutcome::Rejected { version, reason });
        }
        let cut_short = built.snapshot.model.report.cut_short;
        self.publish(built.snapshot).await?;
        if cut_short {
            tracing::info!(
                version,
                budget_secs = budget,
                "first model published at its time budget; a full run follows"
            );
            if let Err(e) = self.request_anywhere().await {
                tracing::warn!(error = %e, "could not ask for the full run");
            }
        }
        Ok(RunOutcome::Published(version))
    }

    /// Records a rejected model's row (its file is not written) and uses up its version.
    async fn reject(&self, snap: &Snapshot, reason: &str) -> anyhow::Result<()> {
        let inner = &self.inner;
        let _guard = inner.publishing.lock().await;
        inner.last_version.store(snap.version, Ordering::SeqCst);
        let mut row = snap.row();
        row.state = crate::store::MODEL_REJECTED.to_owned();
        row.reason = Some(reason.to_owned());
        inner.store.insert_model_row(&row).await?;
        Ok(())
    }

    /// Serves the kept version `version` again: loads and verifies its file, records it
    /// as the serving row (the one before it becomes superseded) and swaps it in.
    pub async fn rollback(&self, version: u64) -> Result<Arc<Snapshot>, RollbackError> {
        let inner = &self.inner;
        let _guard = inner.publishing.lock().await;
        let rows = inner.store.model_rows().await?;
        let row = rows
            .iter()
            .find(|r| r.version as u64 == version)
            .ok_or(RollbackError::NotFound)?;
        if row.state == crate::store::MODEL_REJECTED {
            return Err(RollbackError::Rejected(
                row.reason.clone().unwrap_or_default(),
            ));
        }
        let snap = if inner.cluster.shared() {
            // on a shared database the models live there (any replica can roll back)
            crate::cluster::load_shared(&inner.store, &inner.cluster, version)
                .await
                .map_err(|e| RollbackError::FileUnavailable(e.to_string()))?
        } else {
            let dir = inner.settings.models_dir();
            snapshot::load_version(&dir, version, Some(row))
                .await
                .map_err(RollbackError::Internal)?
                .map_err(RollbackError::FileUnavailable)?
        };
        if !inner.store.set_serving(version).await? {
            return Err(RollbackError::NotFound);
        }
        let snap = Arc::new(snap);
        snapshot::serve_loaded(&inner.serving, &inner.store, &inner.recent, snap.clone());
        tracing::info!(version, "rolled back: serving an earlier model version");
        Ok(snap)
    }
    /// Records the published snapshot in the store: its `model` row, and on a shared
    /// database its file too (the replicas load it from there).
    async fn share(&self, snap: &Snapshot) -> anyhow::Result<()> {
        let inner = &self.inner;
        inner.cluster.publishing(snap.version);
        let file = inner
            .settings
            .models_dir()
            .join(snapshot::file_name(snap.version));
        inner.store.publish_model(&snap.row(), &file).await
    }

    /// Writes the snapshot's file and `model` row, serves it, then prunes old files
    /// and the recent writes it covers.
    async fn publish(&self, snap: Snapshot) -> anyhow::Result<()> {
        let inner = &self.inner;
        let _guard = inner.publishing.lock().await;
        let version = snap.version;
        let since = snap.rated.get().map(|r| r.since);
        let dir = inner.settings.models_dir();
        let snap = tokio::task::spawn_blocking(move || -> anyhow::Result<Snapshot> {
            std::fs::create_dir_all(&dir)?;
            snapshot::write_file(&dir, version, &snap.model)?;
            Ok(snap)
        })
        .await??;
        inner.last_version.store(version, Ordering::SeqCst);
        self.share(&snap).await?;
        inner.serving.publish(Arc::new(snap));
        if let Some(since) = since {
            inner.recent.prune(since);
        }
        let (dir, keep) = (
            inner.settings.models_dir(),
            inner.settings.storage.keep_snapshots,
        );
        // The run's buffers are freed by now (the old snapshot's matrices are unmapped when
        // its last reader drops it): hand the free pages inside the malloc arenas back.
        tokio::task::spawn_blocking(move || {
            snapshot::prune(&dir, keep, Some(version));
            let t = Instant::now();
            let released = crate::malloc::release_free_memory();
            tracing::debug!(released, secs = t.elapsed().as_secs_f64(), "malloc_trim");
        })
        .await?;
        Ok(())
    }
}

/// Why a rollback was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no model version with that number")]
    NotFound,
    #[error("the version was rejected by the publish gate ({0}) and was never served")]
    Rejected(String),
    #[error("the version's model file cannot be served: {0}")]
    FileUnavailable(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// The publish gate: the reason to reject `built`, or None to publish it. A model is
/// rejected when its holdout RMSE is worse than the serving model's on the same
/// holdout by more than `max_regression` (relative: 0.02 = 2 %). Without a holdout
/// or without a serving model there is nothing to compare, and it is published.
pub fn gate(built: &Built, max_regression: f64) -> Option<String> {
    let new = built.snapshot.holdout_rmse?;
    let old = built.baseline_rmse?;
    if new <= old * (1.0 + max_regression) {
        return None;
    }
    Some(format!(
        "holdout RMSE {new:.4} is {:.2} % worse than the serving model's {old:.4} on the \
         same {} held-out ratings (training.max_regression = {:.2} %)",
        (new / old - 1.0) * 100.0,
        built.snapshot.n_holdout,
        max_regression * 100.0
    ))
}
