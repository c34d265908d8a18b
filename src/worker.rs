//! Background training: retrain policy, one run at a time, holdout split, snapshot publication.

use crate::config::Settings;
use crate::rated::{RatedIndex, RecentWrites};
use crate::snapshot::{self, Rated, Serving, Snapshot};
use crate::store::{Store, TrainingRows};
use funkrec_engine::topn::ItemIndex;
use funkrec_engine::{Dataset, Rating};
use rand::SeedableRng;
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Below this many ratings nothing is held out (the sample would say nothing).
const MIN_RATINGS_FOR_HOLDOUT: usize = 20;

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
    notify: Notify,
    status: Mutex<JobStatus>,
    pending: AtomicU64,
    cancel: AtomicBool,
    last_version: AtomicU64,
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
        self.worker.inner.cancel.store(true, Ordering::SeqCst);
        self.worker.inner.notify.notify_one();
        if let Err(e) = self.join.await {
            tracing::error!(error = %e, "training worker ended abnormally");
        }
    }
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
    ) -> (Worker, WorkerTask) {
        let worker = Worker {
            inner: Arc::new(Inner {
                status: Mutex::new(JobStatus {
                    epochs: settings.model.total_epochs(),
                    ..JobStatus::default()
                }),
                settings,
                store,
                serving,
                recent,
                notify: Notify::new(),
                pending: AtomicU64::new(0),
                cancel: AtomicBool::new(false),
                last_version: AtomicU64::new(last_version),
            }),
        };
        if worker.inner.serving.get().is_none() && worker.inner.settings.training.train_on_start {
            match worker.inner.store.has_ratings().await {
                Ok(true) => {
                    tracing::info!("no model snapshot but ratings in the store: training at start");
                    worker.request();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the store at start"),
            }
        }
        let w = worker.clone();
        let join = tokio::spawn(async move { w.run_loop().await });
        (worker.clone(), WorkerTask { worker, join })
    }

    pub fn status(&self) -> JobStatus {
        let mut s = self.inner.status.lock().unwrap().clone();
        s.pending_changes = self.inner.pending.load(Ordering::Relaxed);
        s
    }

    /// Asks for a run. While one is running, requests coalesce into exactly one more.
    pub fn request(&self) -> JobStatus {
        self.inner.status.lock().unwrap().queued = true;
        self.inner.notify.notify_one();
        self.status()
    }

    /// Counts written or deleted ratings; triggers a run at the configured threshold.
    pub fn record_changes(&self, n: u64) {
        let total = self.inner.pending.fetch_add(n, Ordering::Relaxed) + n;
        let threshold = self.inner.settings.training.retrain_after_ratings;
        if threshold > 0 && total >= threshold && !self.status().queued {
            tracing::info!(pending = total, "retrain threshold reached");
            self.request();
        }
    }

    async fn run_loop(self) {
        let inner = &self.inner;
        self.startup_policy().await;
        let interval = inner.settings.training.retrain_interval_secs;
        let mut next_tick =
            (interval > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(interval));
        loop {
            let timer = async {
                match next_tick {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let by_timer = tokio::select! {
                _ = inner.notify.notified() => false,
                _ = timer => true,
            };
            if inner.cancel.load(Ordering::SeqCst) {
                break;
            }
            if by_timer {
                next_tick = Some(tokio::time::Instant::now() + Duration::from_secs(interval));
                let idle =
                    inner.pending.load(Ordering::Relaxed) == 0 && inner.serving.get().is_some();
                if idle {
                    continue;
                }
                tracing::info!("retrain interval passed");
            }
            self.run_once().await;
            if inner.cancel.load(Ordering::SeqCst) {
                break;
            }
            if interval > 0 {
                next_tick = Some(tokio::time::Instant::now() + Duration::from_secs(interval));
            }
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
        if diff > 0 {
            self.record_changes(diff);
        }
    }

    async fn run_once(&self) {
        let inner = &self.inner;
        let started = Instant::now();
        inner.pending.store(0, Ordering::Relaxed);
        {
            let mut s = inner.status.lock().unwrap();
            s.running = true;
            s.queued = false;
            s.epoch = None;
            s.epochs = inner.settings.model.total_epochs();
            s.last_started_at = Some(snapshot::rfc3339(time::OffsetDateTime::now_utc()));
        }
        let outcome = self.train_and_publish().await;
        let mut s = inner.status.lock().unwrap();
        s.running = false;
        s.last_finished_at = Some(snapshot::rfc3339(time::OffsetDateTime::now_utc()));
        s.last_duration_secs = Some(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Some(version)) => {
                s.runs += 1;
                s.last_error = None;
                tracing::info!(
                    version,
                    secs = started.elapsed().as_secs_f64(),
                    "published model snapshot"
                );
            }
            Ok(None) => {}
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(format!("{e:#}"));
                tracing::error!(error = format!("{e:#}"), "training run failed");
            }
        }
    }

    /// One run. Ok(None): skipped (too little data) or cancelled by shutdown.
    async fn train_and_publish(&self) -> anyhow::Result<Option<u64>> {
        let inner = self.inner.clone();
        // Before the read: every commit numbered after this may be missing from the rows.
        let since = inner.recent.seq();
        let rows = inner.store.load_training_rows().await?;
        let min = inner.settings.training.min_ratings.max(1);
        if rows.ratings.len() < min {
            let msg = format!(
                "skipped: {} ratings, at least {min} needed",
                rows.ratings.len()
            );
            tracing::info!("{msg}");
            inner.status.lock().unwrap().last_error = Some(msg);
            return Ok(None);
        }
        let version = inner.last_version.load(Ordering::SeqCst) + 1;
        let dir: PathBuf = inner.settings.models_dir();
        let settings = inner.settings.clone();
        let inner2 = inner.clone();
        let n_total = rows.ratings.len() as u64;
        let trained = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Snapshot>> {
            let t = &settings.training;
            let (mut data, holdout) =
                split(&rows, t.holdout_fraction, t.holdout_max, t.holdout_seed);
            // the model's id maps are the training set's
            let rated = RatedIndex::build(&rows, &data.users, &data.items);
            drop(rows);
            let mut on_epoch = |e: &funkrec_engine::EpochStats| {
                inner2.status.lock().unwrap().epoch = Some(e.epoch);
                if inner2.cancel.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let validation = (!holdout.is_empty()).then_some(holdout.as_slice());
            // In place: no second copy of the ratings (1.2 GB at Netflix size).
            let model = funkrec_engine::train_in_place(
                &mut data,
                &settings.model,
                validation,
                &mut on_epoch,
            )?;
            drop(data);
            if inner2.cancel.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let holdout_rmse = validation.map(|v| funkrec_engine::train::rmse_of(&model, v));
            std::fs::create_dir_all(&dir)?;
            snapshot::write_file(&dir, version, &model)?;
            Ok(Some(Snapshot {
                version,
                trained_at: snapshot::rfc3339(time::OffsetDateTime::now_utc()),
                index: ItemIndex::new(&model),
                model,
                holdout_rmse,
                n_holdout: holdout.len(),
                n_ratings_total: n_total,
                rated: OnceLock::from(Rated {
                    since,
                    index: rated,
                }),
            }))
        })
        .await??;
        let Some(snap) = trained else {
            tracing::info!("training cancelled by shutdown; partial model discarded");
            return Ok(None);
        };
        inner.last_version.store(version, Ordering::SeqCst);
        inner.store.insert_model_row(&snap.row()).await?;
        inner.serving.publish(Arc::new(snap));
        inner.recent.prune(since);
        let (dir, keep) = (
            inner.settings.models_dir(),
            inner.settings.storage.keep_snapshots,
        );
        // The run's buffers are freed by now (the old snapshot's matrices are unmapped when
        // its last reader drops it): hand the free pages inside the malloc arenas back.
        tokio::task::spawn_blocking(move || {
            snapshot::prune(&dir, keep);
            let t = Instant::now();
            let released = crate::malloc::release_free_memory();
            tracing::debug!(released, secs = t.elapsed().as_secs_f64(), "malloc_trim");
        })
        .await?;
        Ok(Some(version))
    }
}

/// Builds the training set and a seeded holdout sample from database rows.
///
/// The id maps contain only users and items seen in training; holdout ratings
/// of ids the model never saw use `u32::MAX` (scored as unknown).
pub fn split(rows: &TrainingRows, fraction: f64, max: usize, seed: u64) -> (Dataset, Vec<Rating>) {
    let n = rows.ratings.len();
    let k = if n < MIN_RATINGS_FOR_HOLDOUT {
        0
    } else {
        ((n as f64 * fraction).round() as usize).min(max).min(n - 1)
    };
    let mut held = vec![false; n];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in rand::seq::index::sample(&mut rng, n, k) {
        held[i] = true;
    }
    let names = |pairs: &[(i64, String)]| -> Vec<Option<u32>> {
        let max_key = pairs.iter().map(|p| p.0).max().unwrap_or(0).max(0) as usize;
        let mut v = vec![None; max_key + 1];
        for (pos, (key, _)) in pairs.iter().enumerate() {
            if *key >= 0 {
                v[*key as usize] = Some(pos as u32);
            }
        }
        v
    };
    let user_pos = names(&rows.users);
    let item_pos = names(&rows.items);
    let mut user_dense = vec![u32::MAX; user_pos.len()];
    let mut item_dense = vec![u32::MAX; item_pos.len()];
    let mut data = Dataset::new();
    data.ratings.reserve(n - k);
    for (idx, &(u, i, value)) in rows.ratings.iter().enumerate() {
        if held[idx] {
            continue;
        }
        let (u, i) = (u as usize, i as usize);
        // A key without a row cannot happen with one consistent read; skip it anyway.
        let (Some(Some(up)), Some(Some(ip))) = (user_pos.get(u), item_pos.get(i)) else {
            continue;
        };
        if user_dense[u] == u32::MAX {
            user_dense[u] = data.users.intern(&rows.users[*up as usize].1);
        }
        if item_dense[i] == u32::MAX {
            item_dense[i] = data.items.intern(&rows.items[*ip as usize].1);
        }
        data.ratings.push(Rating {
            user: user_dense[u],
            item: item_dense[i],
            value,
        });
    }
    let holdout = rows
        .ratings
        .iter()
        .enumerate()
        .filter(|(idx, _)| held[*idx])
        .map(|(_, &(u, i, value))| Rating {
            user: user_dense.get(u as usize).copied().unwrap_or(u32::MAX),
            item: item_dense.get(i as usize).copied().unwrap_or(u32::MAX),
            value,
        })
        .collect();
    (data, holdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n_users: i64, n_items: i64) -> TrainingRows {
        let users = (1..=n_users).map(|k| (k, format!("u{k}"))).collect();
        let items = (1..=n_items).map(|k| (k, format!("i{k}"))).collect();
        let mut ratings = Vec::new();
        for u in 1..=n_users {
            for i in 1..=n_items {
                ratings.push((u as u32, i as u32, ((u + i) % 5 + 1) as f32));
            }
        }
        TrainingRows {
            users,
            items,
            ratings,
        }
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let r = rows(10, 10);
        let (d1, h1) = split(&r, 0.1, 1000, 7);
        let (d2, h2) = split(&r, 0.1, 1000, 7);
        assert_eq!(h1.len(), 10);
        assert_eq!(d1.len(), 90);
        assert_eq!(h1, h2);
        assert_eq!(d1.ratings, d2.ratings);
        let (_, h3) = split(&r, 0.1, 1000, 8);
        assert_ne!(h1, h3, "another seed draws another sample");
        // every training rating maps back to its original value
        for rt in &d1.ratings {
            let u: i64 = d1.users.id(rt.user)[1..].parse().unwrap();
            let i: i64 = d1.items.id(rt.item)[1..].parse().unwrap();
            assert_eq!(rt.value, ((u + i) % 5 + 1) as f32);
        }
    }

    #[test]
    fn tiny_sets_hold_nothing_out_and_max_caps() {
        let (d, h) = split(&rows(2, 3), 0.4, 1000, 1);
        assert!(h.is_empty());
        assert_eq!(d.len(), 6);
        let (_, h) = split(&rows(10, 10), 0.4, 5, 1);
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn ratings_without_id_rows_are_skipped() {
        let mut r = rows(3, 3);
        r.ratings.push((77, 1, 4.0));
        r.ratings.push((1, 1000, 4.0));
        let (d, h) = split(&r, 0.0, 0, 1);
        assert!(h.is_empty());
        assert_eq!(d.len(), 9);
    }

    #[test]
    fn holdout_of_unseen_user_is_unknown() {
        let mut r = rows(5, 5);
        r.users.push((99, "lonely".into()));
        r.ratings.push((99u32, 1u32, 3.0));
        // hold out everything we can: the lonely user's only rating may be held out
        let (d, h) = split(&r, 0.45, 1000, 3);
        for rt in &h {
            assert!(rt.user == u32::MAX || (rt.user as usize) < d.n_users());
        }
    }
}
