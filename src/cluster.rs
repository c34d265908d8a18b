//! Several processes on one PostgreSQL database: this process's role, the trainer election and following the model that serves.
//!
//! * Election: every process that may train (`cluster.role` `all` or `trainer`) keeps
//!   a connection of its own and tries `pg_try_advisory_lock` on it every
//!   [`LOCK_RETRY`]. The holder is the trainer; it checks its session every
//!   [`LOCK_RETRY`] and, when the session is gone (lost connection, restarted
//!   server), cancels the run in progress (its term ends) and stops being leader.
//!   A killed process's session ends with it, which releases the lock.
//! * Following: every process listens on the model and train channels and polls
//!   [`Store::serving_version`] every `cluster.poll_secs`. A version other than the
//!   served one is loaded from the database, checked (length and SHA-256, then the
//!   file's own CRC) and swapped in atomically; one that fails is skipped with a log
//!   line and `funkrec_model_checksum_failures_total`. A train notification wakes the
//!   worker (the elected one acts on it). A forget notification (an item retired on
//!   another replica) and every poll reload the retired items and forgotten users.
//!
//! On SQLite there is one process: it is the trainer, nothing is elected or followed.

use crate::config::{ClusterRole, Settings};
use crate::forget::Forgets;
use crate::rated::RecentWrites;
use crate::snapshot::{self, Serving, Snapshot};
use crate::store::{FetchError, Store, StoreError, FORGET_CHANNEL, MODEL_CHANNEL, TRAIN_CHANNEL};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a follower tries to take the trainer lock, and how often the leader
/// checks that its session (and so the lock) is alive.
pub const LOCK_RETRY: Duration = Duration::from_secs(1);

/// This process's place in the cluster; shared by the worker, the tasks and the API.
#[derive(Debug)]
pub struct Cluster {
    role: ClusterRole,
    /// The processes share a PostgreSQL database (elections, shared models).
    shared: bool,
    leader: watch::Sender<bool>,
    /// Cancelled when the current leadership ends (a run in progress stops).
    term: Mutex<CancellationToken>,
    /// Woken by a train notification.
    wake: Notify,
    /// The version this process is publishing (its follower must not load it again).
    own: AtomicU64,
    checksum_failures: AtomicU64,
    models_loaded: AtomicU64,
}

impl Cluster {
    /// On SQLite (`shared` false) the process is the trainer from the start.
    pub fn new(role: ClusterRole, shared: bool) -> Arc<Cluster> {
        Arc::new(Cluster {
            role,
            shared,
            leader: watch::Sender::new(!shared && role.trains()),
            term: Mutex::new(CancellationToken::new()),
            wake: Notify::new(),
            own: AtomicU64::new(0),
            checksum_failures: AtomicU64::new(0),
            models_loaded: AtomicU64::new(0),
        })
    }

    pub fn for_settings(settings: &Settings) -> Arc<Cluster> {
        Cluster::new(settings.cluster.role, settings.is_postgres())
    }

    pub fn role(&self) -> ClusterRole {
        self.role
    }

    /// Several processes share the database: the trainer is elected, models are
    /// shared through it, and the retrain counters live in it.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// This process trains now (holds the trainer lock, or is the only process).
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Every change of leadership.
    pub fn subscribe_leader(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// The token of the current leadership term (cancelled when it ends).
    pub fn term(&self) -> CancellationToken {
        self.term.lock().unwrap().clone()
    }

    /// Completes on the next train notification.
    pub async fn notified(&self) {
        self.wake.notified().await
    }

    /// Models that failed their checksum (or did not decode) when loaded from the database.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }

    /// Models loaded from the database and served (at start or by following).
    pub fn models_loaded(&self) -> u64 {
        self.models_loaded.load(Ordering::Relaxed)
    }

    /// Called by the worker before it stores a version it trained.
    pub fn publishing(&self, version: u64) {
        self.own.store(version, Ordering::Release);
    }

    fn set_leader(&self, leader: bool) {
        if !leader {
            self.term.lock().unwrap().cancel();
        } else {
            *self.term.lock().unwrap() = CancellationToken::new();
        }
        self.leader.send_replace(leader);
    }
}

/// The snapshot to serve at start, and the highest version seen anywhere. On a shared
/// database: the serving version from the database (files are the fallback when it
/// cannot be loaded); a `trainer` process serves no model and loads none.
pub async fn initial_snapshot(
    store: &Store,
    settings: &Settings,
    cluster: &Cluster,
) -> anyhow::Result<(Option<Snapshot>, u64)> {
    if !cluster.shared() {
        return snapshot::load_newest(store, &settings.models_dir()).await;
    }
    let max_seen = store
        .model_rows()
        .await?
        .iter()
        .map(|r| r.version as u64)
        .max()
        .unwrap_or(0);
    if !cluster.role().serves_api() {
        return Ok((None, max_seen));
    }
    if let Some(version) = store.serving_version().await? {
        match load_shared(store, cluster, version).await {
            Ok(snap) => return Ok((Some(snap), max_seen)),
            Err(e) => tracing::warn!(
                version,
                error = %e,
                "could not load the serving model from the database; trying the files"
            ),
        }
    }
    let (snap, on_disk) = snapshot::load_newest(store, &settings.models_dir()).await?;
    Ok((snap, max_seen.max(on_disk)))
}

/// Fetches, verifies and decodes a model stored in the database (counting a
/// checksum or decoding failure: both are `Corrupt`).
pub(crate) async fn load_shared(
    store: &Store,
    cluster: &Cluster,
    version: u64,
) -> Result<Snapshot, FetchError> {
    let internal =
        |e: tokio::task::JoinError| FetchError::Store(StoreError::Internal(e.to_string()));
    let decoded = match store.fetch_model(version).await {
        Ok(bytes) => {
            tokio::task::spawn_blocking(move || funkrec_engine::persist::from_bytes(&bytes))
                .await
                .map_err(internal)?
                .map_err(|e| FetchError::Corrupt {
                    version,
                    detail: format!("does not decode: {e}"),
                })
        }
        Err(e) => Err(e),
    };
    let model = match decoded {
        Ok(m) => m,
        Err(e) => {
            if matches!(e, FetchError::Corrupt { .. }) {
                cluster.checksum_failures.fetch_add(1, Ordering::Relaxed);
            }
            return Err(e);
        }
    };
    let row = store
        .model_rows()
        .await?
        .into_iter()
        .find(|r| r.version as u64 == version);
    let snap = tokio::task::spawn_blocking(move || {
        Snapshot::loaded(version, model, row.as_ref(), String::new)
    })
    .await
    .map_err(internal)?;
    cluster.models_loaded.fetch_add(1, Ordering::Relaxed);
    Ok(snap)
}

/// Background tasks of a process on a shared database; `stop` ends them.
pub struct ClusterTasks {
    stop: CancellationToken,
    joins: Vec<JoinHandle<()>>,
}

impl ClusterTasks {
    /// Starts the election (processes that may train) and the follower (all of them)
    /// on a shared database; nothing on SQLite.
    pub fn start(
        cluster: Arc<Cluster>,
        store: Store,
        serving: Arc<Serving>,
        recent: Arc<RecentWrites>,
        forgets: Arc<Forgets>,
        poll: Duration,
    ) -> ClusterTasks {
        let stop = CancellationToken::new();
        let mut joins = Vec::new();
        if cluster.shared() {
            if cluster.role().trains() {
                let (c, s, t) = (cluster.clone(), store.clone(), stop.clone());
                joins.push(tokio::spawn(async move { elect(c, s, t).await }));
            }
            let follower = Follower {
                cluster,
                store,
                serving,
                recent,
                forgets,
                poll,
                skipped: HashSet::new(),
            };
            let t = stop.clone();
            joins.push(tokio::spawn(async move { follower.run(t).await }));
        }
        ClusterTasks { stop, joins }
    }

    /// Stops the tasks (releasing the trainer lock) and waits for them.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for j in self.joins {
            let _ = j.await;
        }
    }
}

/// Sleeps `d`; false when `stop` fired first.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// The election loop: take the lock, hold it while the session lives, again.
#[tracing::instrument(name = "election", skip_all)]
async fn elect(cluster: Arc<Cluster>, store: Store, stop: CancellationToken) {
    'connect: while !stop.is_cancelled() {
        let mut lock = match store.trainer_lock().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "trainer election: cannot connect");
                pause(&stop, LOCK_RETRY).await;
                continue;
            }
        };
        loop {
            match lock.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {
                    if !pause(&stop, LOCK_RETRY).await {
                        lock.release().await;
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "trainer election: lost the connection");
                    continue 'connect;
                }
            }
        }
        tracing::info!("holding the trainer lock: this process trains");
        cluster.set_leader(true);
        loop {
            if !pause(&stop, LOCK_RETRY).await {
                cluster.set_leader(false);
                lock.release().await;
                tracing::info!("released the trainer lock");
                return;
            }
            if let Err(e) = lock.check().await {
                tracing::error!(
                    error = %e,
                    "lost the trainer lock's connection: cancelling the run in progress"
                );
                cluster.set_leader(false);
                continue 'connect;
            }
        }
    }
}

/// Keeps the served snapshot on the version the database says serves.
struct Follower {
    cluster: Arc<Cluster>,
    store: Store,
    serving: Arc<Serving>,
    recent: Arc<RecentWrites>,
    forgets: Arc<Forgets>,
    poll: Duration,
    /// Versions that failed to load for good (corrupt, missing): not tried again.
    skipped: HashSet<u64>,
}

impl Follower {
    #[tracing::instrument(name = "follower", skip_all)]
    async fn run(mut self, stop: CancellationToken) {
        let mut listener = None;
        loop {
            if listener.is_none() {
                match self
                    .store
                    .listen(&[MODEL_CHANNEL, TRAIN_CHANNEL, FORGET_CHANNEL])
                    .await
                {
                    Ok(l) => listener = Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for notifications; polling")
                    }
                }
            }
            let event = {
                let recv = async {
                    match listener.as_mut() {
                        Some(l) => Some(l.recv().await),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    n = recv => n,
                    // a missed notification is noticed here
                    _ = tokio::time::sleep(self.poll) => None,
                }
            };
            match event {
                Some(Ok((channel, _))) if channel == TRAIN_CHANNEL => {
                    self.cluster.wake.notify_one();
                    continue;
                }
                Some(Ok((channel, _))) if channel == FORGET_CHANNEL => {
                    self.reload_forgets().await;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "notifications interrupted; polling");
                    listener = None;
                    if !pause(&stop, LOCK_RETRY).await {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                // a poll: also catch a missed forget notification
                None => self.reload_forgets().await,
            }
            self.sync().await;
        }
    }

    /// Reads the retired items and forgotten users again (another replica changed them).
    async fn reload_forgets(&self) {
        let version = self.serving.get().map_or(0, |s| s.version);
        if let Err(e) = self.forgets.reload(&self.store, version).await {
            tracing::debug!(error = %e, "reloading retired items and forgotten users");
        }
    }

    /// Loads and serves the serving version if it is not served yet.
    async fn sync(&mut self) {
        if !self.cluster.role().serves_api() {
            return;
        }
        let version = match self.store.serving_version().await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "reading the serving version");
                return;
            }
        };
        let served = self.serving.get().map(|s| s.version);
        if served == Some(version)
            || self.skipped.contains(&version)
            || self.cluster.own.load(Ordering::Acquire) == version
        {
            return;
        }
        match load_shared(&self.store, &self.cluster, version).await {
            Ok(snap) => {
                let snap = Arc::new(snap);
                self.serving.publish(snap.clone());
                tracing::info!(version, previous = ?served, "serving a model from the database");
                let (store, recent) = (self.store.clone(), self.recent.clone());
                tokio::spawn(async move {
                    let indexed = snapshot::index_rated(&store, snap.clone(), &recent).await;
                    match indexed {
                        Ok(()) => {
                            if let Some(r) = snap.rated.get() {
                                recent.prune(r.since);
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = format!("{e:#}"),
                            "could not index rated items; reading them from the store"
                        ),
                    }
                });
            }
            Err(FetchError::Store(e)) => {
                tracing::warn!(version, error = %e, "loading a model failed; trying again at the next check")
            }
            Err(e) => {
                self.skipped.insert(version);
                tracing::error!(
                    version,
                    error = %e,
                    "skipping a model that failed to load; serving the previous one"
                );
            }
        }
    }
}
