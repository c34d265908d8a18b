//! The writer: one thread takes the writes of concurrent requests from a channel and group-commits them (loop here; `commit.rs`, `fold.rs`).
//!
//! SQLite has one writer at a time. Instead of every request opening its own write
//! transaction (and waiting on the busy timeout for the others), handlers send their
//! write to this thread and wait for the answer. The thread takes whatever is queued
//! (up to [`MAX_GROUP_RATINGS`] ratings), runs it as one transaction, records the
//! committed pairs in [`RecentWrites`] and only then answers each request: an `Ok`
//! means the transaction holding that request committed. If the group's transaction
//! fails, it runs again with one savepoint per request, so a request that fails is
//! rolled back alone and does not fail the others (savepoints are not the default:
//! they make SQLite journal every page a second time). See `commit.rs`.
//!
//! What makes it fast (issue #4, `docs/benchmarks.md`):
//! * a synchronous rusqlite connection with cached prepared statements: a batch of
//!   1,000 ratings is 1,000 executions of one compiled statement, not a round trip per
//!   statement to an async pool;
//! * the key of every user and item id in memory ([`Keys`]): a miss reads (or
//!   inserts) the row inside the write transaction, and keys created by a transaction
//!   that rolls back are forgotten;
//! * writes go to the small `ratings_delta` table, so a commit rewrites a few of its
//!   pages rather than one page of the big table per (randomly placed) rating; once it
//!   holds [`FOLD_AT`] rows, each commit is followed by a fold of its `FOLD_CHUNK`
//!   smallest keys into `ratings`, and a writer that received nothing for
//!   [`IDLE_FOLD`] folds the rest (`fold.rs`);
//! * WAL checkpoints on their own thread (`checkpoint.rs`).
//!
//! While it runs, the writer holds the store's lock shared (`lock.rs`), so
//! `funkrec import` refuses to run against the store.

pub(super) mod commit;
mod fold;
#[cfg(test)]
mod tests;

pub(crate) use fold::FOLD_ALL;

use crate::domain::{ItemId, NewRating, UserId};
use crate::rated::RecentWrites;
use crate::store::checkpoint::{Checkpointer, JOURNAL_SIZE_LIMIT, WRITER_AUTOCHECKPOINT_PAGES};
use crate::store::keys::{Keys, Table};
use crate::store::lock::StoreLock;
use crate::store::{Store, StoreError};
use anyhow::Context;
use commit::{commit_group, Job, Op};
use flume::RecvTimeoutError;
use rusqlite::{Connection, OpenFlags};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Ratings per group commit (more wait for the next one).
pub const MAX_GROUP_RATINGS: usize = 20_000;
/// Requests waiting for the writer before senders wait for room.
const QUEUE: usize = 4096;
/// Page cache of the writer's connection (KiB, as SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 16 * 1024;

/// Delta rows above which every group commit is followed by one fold chunk.
const FOLD_AT: usize = 50_000;
/// With nothing received for this long, the writer folds what is left in the delta.
const IDLE_FOLD: Duration = Duration::from_secs(1);

pub(super) enum Msg {
    Job(Job),
    /// Commit what is queued, then end.
    Stop,
}

/// Puts `first` and whatever else is queued (up to [`MAX_GROUP_RATINGS`] ratings) into
/// `group`, the next group commit of either backend: the group's size in ratings, and
/// whether a stop was queued.
pub(super) fn fill_group(
    first: Job,
    rx: &flume::Receiver<Msg>,
    group: &mut Vec<Job>,
) -> (usize, bool) {
    let mut stopping = false;
    let mut size = first.size();
    group.push(first);
    while size < MAX_GROUP_RATINGS {
        match rx.try_recv() {
            Ok(Msg::Job(job)) => {
                size += job.size();
                group.push(job);
            }
            Ok(Msg::Stop) => stopping = true,
            Err(_) => break,
        }
    }
    (size, stopping)
}

/// How the writer thread runs; [`Writer::start`] uses [`Tuning::default`], tests
/// change it.
pub(crate) struct Tuning {
    /// With nothing received for this long, fold the delta (None: never fold when idle).
    idle_fold: Option<Duration>,
    /// Told after each idle fold that left the delta empty.
    folded_when_idle: Option<std::sync::mpsc::Sender<()>>,
    /// The thread waits for this to be sent to (or dropped) before it takes the first
    /// message, so what is queued until then is one group.
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            idle_fold: Some(IDLE_FOLD),
            folded_when_idle: None,
            gate: None,
        }
    }
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: flume::Sender<Msg>,
    /// The outcome of the latest write, for `/readyz`.
    health: Arc<std::sync::Mutex<WriteHealth>>,
}

/// The latest failed write and whether one succeeded after it.
#[derive(Debug, Default, Clone)]
pub struct WriteHealth {
    /// The error of the latest failed write and when it failed.
    pub last_error: Option<(String, std::time::Instant)>,
    /// When the latest write committed.
    pub last_ok: Option<std::time::Instant>,
}

impl WriteHealth {
    /// The latest failed write's error and age, when no write committed since.
    pub fn failing(&self) -> Option<(&str, Duration)> {
        let (e, at) = self.last_error.as_ref()?;
        match self.last_ok {
            Some(ok) if ok > *at => None,
            _ => Some((e.as_str(), at.elapsed())),
        }
    }
}

/// Owns the writer thread: [`WriterTask::finish`] stops it once the queued writes are
/// committed (it also ends by itself once every handle, this one included, is dropped).
pub struct WriterTask {
    tx: flume::Sender<Msg>,
    done: oneshot::Receiver<()>,
}

impl WriterTask {
    /// Commits and answers the writes queued so far, ends the thread and waits for it;
    /// writes sent after that fail.
    pub async fn finish(self) {
        let _ = self.tx.send_async(Msg::Stop).await;
        drop(self.tx);
        if self.done.await.is_err() {
            tracing::error!("writer thread ended abnormally");
        }
    }
}

impl Writer {
    /// Takes the store's lock (shared: refused while `funkrec import` runs), opens the
    /// writer's own connection to the store's database, loads the id keys and starts
    /// the thread.
    /// On PostgreSQL the writer is a task on the async runtime instead (see
    /// `postgres/writer.rs`), with the same group commit and answers.
    pub fn start(store: &Store, recent: Arc<RecentWrites>) -> anyhow::Result<(Writer, WriterTask)> {
        match &store.backend {
            crate::store::Backend::Postgres(pg) => {
                let (tx, rx) = flume::bounded(QUEUE);
                let (done_tx, done) = oneshot::channel();
                let pool = pg.pool().clone();
                tokio::spawn(async move {
                    crate::store::postgres::writer::run(pool, rx, recent).await;
                    let _ = done_tx.send(());
                });
                let writer = Writer {
                    tx: tx.clone(),
                    health: Default::default(),
                };
                Ok((writer, WriterTask { tx, done }))
            }
            crate::store::Backend::Sqlite(..) => {
                Writer::start_with(store, recent, Tuning::default())
            }
        }
    }

    #[tracing::instrument(name = "writer_start", skip_all)]
    fn start_with(
        store: &Store,
        recent: Arc<RecentWrites>,
        tuning: Tuning,
    ) -> anyhow::Result<(Writer, WriterTask)> {
        let path = store
            .path()
            .context("the SQLite writer needs a SQLite store")?;
        let lock = StoreLock::for_server(&path)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} for the writer", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Foreign-key checks off: every key written comes from `Keys`, read or inserted
        // in the same transaction, so it exists (as in `funkrec import`). Savepoint
        // journals in memory.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; \
             PRAGMA cache_size = -{CACHE_KIB};"
        ))?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
        let keys = load_keys(&conn).context("loading user and item keys")?;
        let checkpointer = Checkpointer::start(&path)?;
        let (tx, rx) = flume::bounded(QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("funkrec-writer".into())
            .spawn(move || {
                if let Some(gate) = &tuning.gate {
                    let _ = gate.recv();
                }
                let mut w = Loop {
                    conn,
                    keys,
                    recent: &recent,
                    checkpointer: &checkpointer,
                    tuning: &tuning,
                    delta_rows: 0,
                };
                w.run(&rx);
                drop(rx);
                checkpointer.stop();
                drop(lock);
                let _ = done_tx.send(());
            })
            .context("starting the writer thread")?;
        let writer = Writer {
            tx: tx.clone(),
            health: Default::default(),
        };
        Ok((writer, WriterTask { tx, done }))
    }

    /// Whether the writer thread is still taking writes (it has not ended).
    pub fn is_running(&self) -> bool {
        !self.tx.is_disconnected()
    }

    /// Stores a batch (all or nothing); Ok once its transaction committed. Within the
    /// batch a later rating of the same (user, item) pair replaces an earlier one.
    pub async fn upsert(&self, ratings: Vec<NewRating>) -> Result<(), StoreError> {
        self.submit(Op::Upsert(ratings)).await.map(|_| ())
    }

    /// Deletes one rating; Ok(false) when there was none.
    pub async fn delete(&self, user: UserId, item: ItemId) -> Result<bool, StoreError> {
        self.submit(Op::Delete(user, item)).await
    }

    /// Deletes every rating of `user` and records them forgotten under `tag` (see
    /// `crate::forget`); Ok(false) when the store has never seen the user.
    pub async fn forget_user(&self, user: UserId, tag: i64) -> Result<bool, StoreError> {
        let removed = Default::default();
        self.submit(Op::ForgetUser { user, tag, removed }).await
    }

    /// Deletes every rating of `item` and records it retired at `at` (Unix seconds);
    /// Ok(false) when the store has never seen the item.
    pub async fn retire_item(&self, item: ItemId, at: i64) -> Result<bool, StoreError> {
        self.submit(Op::RetireItem { item, at }).await
    }

    /// The outcome of the latest writes (for readiness).
    pub fn health(&self) -> WriteHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn submit(&self, op: Op) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send_async(Msg::Job(Job { op, reply })).await;
        let result = match sent {
            Ok(()) => answer.await.unwrap_or(Err(StoreError::Closed)),
            Err(_) => Err(StoreError::Closed),
        };
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => h.last_ok = Some(std::time::Instant::now()),
            Err(e) => h.last_error = Some((e.to_string(), std::time::Instant::now())),
        }
        result
    }
}

/// Every user's and item's key, read on the writer's connection.
fn load_keys(conn: &Connection) -> rusqlite::Result<Keys> {
    let read = |table: Table| -> rusqlite::Result<Vec<(i64, String)>> {
        let mut stmt = conn.prepare(table.load_sql())?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    };
    Ok(Keys::new(read(Table::Users)?, read(Table::Items)?))
}

/// The writer thread's state.
struct Loop<'a> {
    conn: Connection,
    keys: Keys,
    recent: &'a RecentWrites,
    checkpointer: &'a Checkpointer,
    tuning: &'a Tuning,
    /// Estimate of the rows in the delta (see [`fold::fold`]).
    delta_rows: usize,
}

impl Loop<'_> {
    /// Takes messages until every handle is gone or a `Stop` was followed by an empty
    /// queue: groups of jobs are committed (and the delta folded past [`FOLD_AT`]);
    /// with nothing received for the idle interval, the delta is folded.
    #[tracing::instrument(name = "writer", skip_all)]
    fn run(&mut self, rx: &flume::Receiver<Msg>) {
        self.delta_rows = match self
            .conn
            .query_row("SELECT COUNT(*) FROM ratings_delta", [], |r| {
                r.get::<_, i64>(0)
            }) {
            Ok(n) => n as usize,
            Err(e) => {
                tracing::warn!(error = %e, "could not count the delta rows");
                FOLD_AT
            }
        };
        let mut group: Vec<Job> = Vec::new();
        let mut stopping = false;
        loop {
            let received = if stopping {
                rx.try_recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                match self.tuning.idle_fold {
                    Some(idle) => rx.recv_timeout(idle),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                }
            };
            let first = match received {
                Ok(Msg::Job(job)) => job,
                Ok(Msg::Stop) => {
                    stopping = true;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fold_while_idle(rx);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let (size, stop) = fill_group(first, rx, &mut group);
            stopping |= stop;
            commit_group(&mut self.conn, &mut self.keys, self.recent, &mut group);
            self.delta_rows += size;
            if self.delta_rows >= FOLD_AT {
                fold::fold(&mut self.conn, &mut self.delta_rows);
            }
            self.checkpointer.poke();
        }
        tracing::debug!("writer thread stopped");
    }

    /// Folds the delta chunk by chunk while nothing is queued.
    fn fold_while_idle(&mut self, rx: &flume::Receiver<Msg>) {
        let had_rows = self.delta_rows > 0;
        while self.delta_rows > 0
            && rx.is_empty()
            && fold::fold(&mut self.conn, &mut self.delta_rows)
        {
            self.checkpointer.poke();
        }
        if had_rows && self.delta_rows == 0 {
            if let Some(tell) = &self.tuning.folded_when_idle {
                let _ = tell.send(());
            }
        }
    }
}
