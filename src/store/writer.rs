//! Group commit: one writer thread takes the writes of concurrent requests from a channel and commits them in one transaction.
//!
//! SQLite has one writer at a time. Instead of every request opening its own write
//! transaction (and waiting on the busy timeout for the others), handlers send their
//! write to this thread and wait for the answer. The thread takes whatever is queued
//! (up to [`MAX_GROUP_RATINGS`] ratings), runs it as one transaction, records the
//! committed pairs in [`RecentWrites`] and only then answers each request: an `Ok`
//! means the transaction holding that request committed. If the group's transaction
//! fails, it runs again with one savepoint per request, so a request that fails is
//! rolled back alone and does not fail the others (savepoints are not the default:
//! they make SQLite journal every page a second time).
//!
//! What makes it fast (issue #4, `docs/benchmarks.md`):
//! * a synchronous rusqlite connection with cached prepared statements: a batch of
//!   1,000 ratings is 1,000 executions of one compiled statement, not a round trip per
//!   statement to an async pool;
//! * the key of every user and item id in memory ([`Keys`]): ids are never renumbered
//!   or removed, so a cached key stays right; a miss reads (or inserts) the row inside
//!   the write transaction, and keys created by a transaction that rolls back are
//!   forgotten;
//! * writes go to the small `ratings_delta` table, so a commit rewrites a few of its
//!   pages rather than one page of the big table per (randomly placed) rating; once it
//!   holds [`FOLD_AT`] rows, each commit is followed by a fold of its [`FOLD_CHUNK`]
//!   smallest keys into `ratings`, and an idle writer folds the rest;
//! * WAL checkpoints on their own thread (`checkpoint.rs`).

use super::checkpoint::{Checkpointer, JOURNAL_SIZE_LIMIT, WRITER_AUTOCHECKPOINT_PAGES};
use super::{Store, StoreError};
use crate::domain::{ItemId, NewRating, UserId};
use crate::rated::RecentWrites;
use anyhow::Context;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Ratings per group commit (more wait for the next one).
pub const MAX_GROUP_RATINGS: usize = 20_000;
/// Requests waiting for the writer before senders wait for room.
const QUEUE: usize = 4096;
/// Page cache of the writer's connection (KiB, as SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 16 * 1024;

/// Delta rows above which every group commit is followed by one fold chunk.
const FOLD_AT: usize = 50_000;
/// Delta rows folded into `ratings` per fold transaction.
const FOLD_CHUNK: usize = 25_000;
/// With no write for this long (one tick to the next), the writer folds what is left
/// in the delta.
const IDLE_FOLD: Duration = Duration::from_secs(1);

/// Writes (and deletions, with a NULL rating) go to the delta; see the migration
/// `0002_ratings_delta.sql` and [`fold_chunk`].
const UPSERT_DELTA: &str = "INSERT INTO ratings_delta (user_id, item_id, rating, ts) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";
const UPSERT_MAIN: &str =
    "INSERT INTO ratings (user_id, item_id, rating, ts) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";

enum Op {
    Upsert(Vec<NewRating>),
    Delete(UserId, ItemId),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

impl Job {
    fn size(&self) -> usize {
        match &self.op {
            Op::Upsert(r) => r.len(),
            Op::Delete(..) => 1,
        }
    }
}

enum Msg {
    Job(Job),
    /// Sent every [`IDLE_FOLD`] by the ticker thread.
    Tick,
    /// Refuse new writes, commit what is queued, end.
    Stop,
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

/// Owns the writer thread: [`WriterTask::finish`] stops it once the queued writes are
/// committed (it also ends by itself once every handle, this one included, is dropped).
pub struct WriterTask {
    tx: mpsc::Sender<Msg>,
    done: oneshot::Receiver<()>,
}

impl WriterTask {
    /// Refuses new writes, commits and answers the queued ones, and waits for the thread.
    pub async fn finish(self) {
        let _ = self.tx.send(Msg::Stop).await;
        drop(self.tx);
        if self.done.await.is_err() {
            tracing::error!("writer thread ended abnormally");
        }
    }
}

impl Writer {
    /// Opens the writer's own connection to the store's database, loads the id keys
    /// and starts the thread.
    pub fn start(store: &Store, recent: Arc<RecentWrites>) -> anyhow::Result<(Writer, WriterTask)> {
        let path = store.path();
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
        let keys = Keys::load(&conn).context("loading user and item keys")?;
        let checkpointer = Checkpointer::start(&path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("funkrec-writer".into())
            .spawn(move || {
                run(conn, keys, &recent, &checkpointer, rx);
                checkpointer.stop();
                let _ = done_tx.send(());
            })
            .context("starting the writer thread")?;
        // Ticks for idle folding; ends once the writer's channel is gone (a weak
        // handle does not keep it open).
        let ticker = tx.downgrade();
        std::thread::Builder::new()
            .name("funkrec-writer-tick".into())
            .spawn(move || loop {
                std::thread::sleep(IDLE_FOLD);
                match ticker.upgrade() {
                    Some(tx) if !tx.is_closed() => {
                        let _ = tx.try_send(Msg::Tick);
                    }
                    _ => break,
                }
            })
            .context("starting the writer's ticker")?;
        Ok((Writer { tx: tx.clone() }, WriterTask { tx, done }))
    }

    /// Whether the writer thread is still taking writes (it has not ended).
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
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

    async fn submit(&self, op: Op) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Job(Job { op, reply }))
            .await
            .map_err(|_| StoreError::PoolClosed)?;
        answer.await.map_err(|_| StoreError::PoolClosed)?
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Table {
    Users,
    Items,
}

/// Database key of every user and item id written or read so far.
struct Keys {
    users: foldhash::HashMap<Box<str>, i64>,
    items: foldhash::HashMap<Box<str>, i64>,
    /// Keys inserted by the open transaction (forgotten if it rolls back).
    created: Vec<(Table, Box<str>)>,
}

impl Keys {
    fn load(conn: &Connection) -> rusqlite::Result<Keys> {
        let read = |sql: &str| -> rusqlite::Result<foldhash::HashMap<Box<str>, i64>> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?.into(), r.get(0)?)))?;
            rows.collect()
        };
        Ok(Keys {
            users: read("SELECT id, ext_id FROM users")?,
            items: read("SELECT id, ext_id FROM items")?,
            created: Vec::new(),
        })
    }

    fn map(&mut self, table: Table) -> &mut foldhash::HashMap<Box<str>, i64> {
        match table {
            Table::Users => &mut self.users,
            Table::Items => &mut self.items,
        }
    }

    /// The key of `id` (inside the write transaction): cached, read, or (when
    /// `create`) inserted; None when it does not exist and `create` is false.
    fn get(
        &mut self,
        conn: &Connection,
        table: Table,
        id: &str,
        create: bool,
    ) -> rusqlite::Result<Option<i64>> {
        if let Some(&k) = self.map(table).get(id) {
            return Ok(Some(k));
        }
        let (select, insert) = match table {
            Table::Users => (
                "SELECT id FROM users WHERE ext_id = ?1",
                "INSERT INTO users (ext_id) VALUES (?1)",
            ),
            Table::Items => (
                "SELECT id FROM items WHERE ext_id = ?1",
                "INSERT INTO items (ext_id) VALUES (?1)",
            ),
        };
        let found: Option<i64> = conn
            .prepare_cached(select)?
            .query_row([id], |r| r.get(0))
            .optional()?;
        let key = match found {
            Some(k) => k,
            None if create => {
                conn.prepare_cached(insert)?.execute([id])?;
                self.created.push((table, id.into()));
                conn.last_insert_rowid()
            }
            None => return Ok(None),
        };
        self.map(table).insert(id.into(), key);
        Ok(Some(key))
    }

    /// Forgets the keys created since `mark` (their rows were rolled back).
    fn forget_since(&mut self, mark: usize) {
        let gone: Vec<_> = self.created.drain(mark..).collect();
        for (table, id) in gone {
            self.map(table).remove(&id);
        }
    }
}

fn run(
    mut conn: Connection,
    mut keys: Keys,
    recent: &RecentWrites,
    checkpointer: &Checkpointer,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut delta_rows = match conn.query_row("SELECT COUNT(*) FROM ratings_delta", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(n) => n as usize,
        Err(e) => {
            tracing::warn!(error = %e, "could not count the delta rows");
            FOLD_AT
        }
    };
    let mut group: Vec<Job> = Vec::new();
    let mut busy = false;
    while let Some(msg) = rx.blocking_recv() {
        let first = match msg {
            Msg::Job(job) => job,
            Msg::Tick => {
                // no job since the last tick: fold the delta while nothing waits
                if !std::mem::take(&mut busy) {
                    while delta_rows > 0 && rx.is_empty() && fold(&mut conn, &mut delta_rows) {
                        checkpointer.poke();
                    }
                }
                continue;
            }
            Msg::Stop => {
                // new sends fail (503 unavailable); what is queued is still committed
                rx.close();
                continue;
            }
        };
        busy = true;
        let mut size = first.size();
        group.push(first);
        while size < MAX_GROUP_RATINGS {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => {
                    size += job.size();
                    group.push(job);
                }
                Ok(Msg::Stop) => rx.close(),
                Ok(Msg::Tick) => {}
                Err(_) => break,
            }
        }
        commit_group(&mut conn, &mut keys, recent, &mut group);
        delta_rows += size;
        if delta_rows >= FOLD_AT {
            fold(&mut conn, &mut delta_rows);
        }
        checkpointer.poke();
    }
    tracing::debug!("writer thread stopped");
}

/// Folds one chunk of the delta into `ratings` and updates the estimate of the rows
/// left (a write counts as a new row even when it replaced a delta row, so the
/// estimate is high until a short chunk shows the delta is empty). False if it failed.
fn fold(conn: &mut Connection, delta_rows: &mut usize) -> bool {
    match fold_chunk(conn, FOLD_CHUNK) {
        Ok(n) if n < FOLD_CHUNK => *delta_rows = 0,
        Ok(n) => *delta_rows = delta_rows.saturating_sub(n).max(1),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            tracing::warn!(error = %e, "folding the delta failed; it stays in the delta");
            return false;
        }
    }
    true
}

/// Moves the `limit` smallest-keyed delta rows into `ratings` (in key order, so the
/// big table's pages are visited once each) in one transaction; returns how many.
fn fold_chunk(conn: &mut Connection, limit: usize) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let rows: Vec<(i64, i64, Option<f64>, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT user_id, item_id, rating, ts FROM ratings_delta ORDER BY user_id, item_id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let Some(&(last_user, last_item, ..)) = rows.last() else {
        return Ok(0);
    };
    {
        let mut upsert = tx.prepare_cached(UPSERT_MAIN)?;
        let mut delete =
            tx.prepare_cached("DELETE FROM ratings WHERE user_id = ?1 AND item_id = ?2")?;
        for &(u, i, rating, ts) in &rows {
            match rating {
                Some(r) => upsert.execute(params![u, i, r, ts])?,
                None => delete.execute(params![u, i])?,
            };
        }
        tx.prepare_cached(
            "DELETE FROM ratings_delta WHERE user_id < ?1 OR (user_id = ?1 AND item_id <= ?2)",
        )?
        .execute(params![last_user, last_item])?;
    }
    tx.commit()?;
    Ok(rows.len())
}

/// Commits a group and answers it. The common case is one transaction with every
/// job's statements and no savepoints (a savepoint makes SQLite journal each page it
/// touches first). If that fails and the group has more than one job, it is rolled
/// back and run again with one savepoint per job, so only the failing jobs fail.
fn commit_group(
    conn: &mut Connection,
    keys: &mut Keys,
    recent: &RecentWrites,
    group: &mut Vec<Job>,
) {
    let outcome = (|| -> rusqlite::Result<Vec<Result<bool, StoreError>>> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut results = Vec::with_capacity(group.len());
        for job in group.iter() {
            results.push(Ok(run_job(conn, keys, &job.op)?));
        }
        conn.execute_batch("COMMIT")?;
        Ok(results)
    })();
    match outcome {
        Ok(results) => {
            keys.created.clear();
            answer(recent, group, results);
        }
        Err(e) => {
            rollback(conn, keys);
            if group.len() > 1 {
                tracing::debug!(error = %e, "group failed; one savepoint per request");
                commit_each(conn, keys, recent, group);
            } else {
                fail_all(group, &e);
            }
        }
    }
}

/// Runs every job of the group in its own savepoint of one transaction, commits, then
/// records and answers. A failed commit fails every job of the group.
fn commit_each(
    conn: &mut Connection,
    keys: &mut Keys,
    recent: &RecentWrites,
    group: &mut Vec<Job>,
) {
    let mut results: Vec<Result<bool, StoreError>> = Vec::with_capacity(group.len());
    let outcome = (|| -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for job in group.iter() {
            let mark = keys.created.len();
            conn.execute_batch("SAVEPOINT job")?;
            match run_job(conn, keys, &job.op) {
                Ok(v) => {
                    conn.execute_batch("RELEASE job")?;
                    results.push(Ok(v));
                }
                Err(e) => {
                    conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                    keys.forget_since(mark);
                    results.push(Err(store_error(&e)));
                }
            }
        }
        conn.execute_batch("COMMIT")
    })();
    match outcome {
        Ok(()) => {
            keys.created.clear();
            answer(recent, group, results);
        }
        Err(e) => {
            rollback(conn, keys);
            fail_all(group, &e);
        }
    }
}

/// Rolls back the open transaction (if any) and forgets the keys it created.
fn rollback(conn: &Connection, keys: &mut Keys) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "rollback failed");
        }
    }
    keys.forget_since(0);
}

fn fail_all(group: &mut Vec<Job>, e: &rusqlite::Error) {
    tracing::warn!(error = %e, requests = group.len(), "group commit failed");
    for job in group.drain(..) {
        let _ = job.reply.send(Err(store_error(e)));
    }
}

/// One request's statements (inside its savepoint).
fn run_job(conn: &Connection, keys: &mut Keys, op: &Op) -> rusqlite::Result<bool> {
    match op {
        Op::Upsert(ratings) => {
            let mut rows = Vec::with_capacity(ratings.len());
            for r in ratings {
                let user = keys.get(conn, Table::Users, r.user.as_str(), true)?;
                let item = keys.get(conn, Table::Items, r.item.as_str(), true)?;
                let (Some(u), Some(i)) = (user, item) else {
                    unreachable!("created when missing")
                };
                rows.push((u, i, r.value.get() as f64, r.timestamp));
            }
            // Key order walks the table once; the sort is stable, so a later rating of
            // the same pair is still written last (and wins).
            rows.sort_by_key(|&(u, i, ..)| (u, i));
            let mut stmt = conn.prepare_cached(UPSERT_DELTA)?;
            for (u, i, value, ts) in rows {
                stmt.execute(params![u, i, value, ts])?;
            }
            Ok(true)
        }
        Op::Delete(user, item) => {
            let user = keys.get(conn, Table::Users, user.as_str(), false)?;
            let item = keys.get(conn, Table::Items, item.as_str(), false)?;
            let (Some(u), Some(i)) = (user, item) else {
                return Ok(false);
            };
            let in_delta: Option<Option<f64>> = conn
                .prepare_cached(
                    "SELECT rating FROM ratings_delta WHERE user_id = ?1 AND item_id = ?2",
                )?
                .query_row(params![u, i], |r| r.get(0))
                .optional()?;
            let existed = match in_delta {
                Some(rating) => rating.is_some(),
                None => conn
                    .prepare_cached("SELECT 1 FROM ratings WHERE user_id = ?1 AND item_id = ?2")?
                    .exists(params![u, i])?,
            };
            if existed {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                conn.prepare_cached(UPSERT_DELTA)?
                    .execute(params![u, i, None::<f64>, now])?;
            }
            Ok(existed)
        }
    }
}

/// Records the committed jobs (in order) and answers every job.
fn answer(recent: &RecentWrites, group: &mut Vec<Job>, results: Vec<Result<bool, StoreError>>) {
    for (job, r) in group.drain(..).zip(results) {
        if r.is_ok() {
            match &job.op {
                Op::Upsert(ratings) => recent.record(
                    ratings.iter().map(|r| (r.user.as_str(), r.item.as_str())),
                    true,
                ),
                Op::Delete(user, item) => {
                    if matches!(r, Ok(true)) {
                        recent.record([(user.as_str(), item.as_str())], false)
                    }
                }
            }
        }
        let _ = job.reply.send(r);
    }
}

/// The store's error for a failed statement: a busy or locked database is
/// unavailability (503, try again), a failing disk is I/O (503), anything else is
/// internal (500).
fn store_error(e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::PoolTimedOut,
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            StoreError::Io(std::io::Error::other(e.to_string()))
        }
        _ => StoreError::Protocol(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::RatingValue;
    use funkrec_engine::Scale;

    /// A migrated store in a fresh directory (kept while the `TempDir` lives).
    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.storage.data_dir = dir.path().to_path_buf();
        let store = Store::connect(&settings).await.unwrap();
        (dir, store)
    }

    fn rating(user: &str, item: &str, value: f32) -> NewRating {
        NewRating {
            user: UserId::parse(user).unwrap(),
            item: ItemId::parse(item).unwrap(),
            value: RatingValue::parse(value as f64, &Scale { min: 1.0, max: 5.0 }).unwrap(),
            timestamp: 1,
        }
    }

    /// Jobs queued together share one transaction; one that fails inside the database
    /// (here: a trigger refuses the rating 2.5) is rolled back alone.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_request_does_not_fail_the_others_in_its_group() {
        let (_dir, store) = temp_store().await;
        sqlx::query(
            "CREATE TRIGGER boom BEFORE INSERT ON ratings_delta WHEN NEW.rating = 2.5 \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let recent = Arc::new(RecentWrites::new());
        let (writer, task) = Writer::start(&store, recent.clone()).unwrap();
        // on this single-threaded runtime all three are queued before the writer runs
        let (a, bad, c) = tokio::join!(
            writer.upsert(vec![rating("u", "a", 4.0)]),
            writer.upsert(vec![rating("u", "x", 3.0), rating("u", "b", 2.5)]),
            writer.upsert(vec![rating("v", "c", 5.0)]),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        assert!(bad.unwrap_err().to_string().contains("boom"));
        assert_eq!(
            store.count_ratings().await.unwrap(),
            2,
            "u/x was rolled back with u/b"
        );
        assert_eq!(recent.seq(), 2, "only the committed requests are recorded");
        assert!(writer
            .delete(UserId::parse("u").unwrap(), ItemId::parse("a").unwrap())
            .await
            .unwrap());
        assert!(!writer
            .delete(UserId::parse("u").unwrap(), ItemId::parse("a").unwrap())
            .await
            .unwrap());
        drop(writer);
        task.finish().await;
        assert_eq!(store.count_ratings().await.unwrap(), 1);
    }

    /// The delta and its folding are invisible to readers: after a random mix of
    /// writes, re-writes and deletes, with folds of random sizes in between, every read
    /// path (count, a user's page, rated items, the training scan) agrees with a plain
    /// map of the operations, and folding everything empties the delta.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_the_delta_over_the_table_across_folds() {
        use std::collections::BTreeMap;
        let (_dir, store) = temp_store().await;
        let recent = Arc::new(RecentWrites::new());
        let (writer, task) = Writer::start(&store, recent.clone()).unwrap();
        let mut folder = Connection::open(store.path()).unwrap();
        folder.busy_timeout(Duration::from_secs(10)).unwrap();

        let mut model: BTreeMap<(String, String), f32> = BTreeMap::new();
        let mut state: u64 = 0x5eed;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for step in 0..400 {
            let (u, i) = (format!("u{}", next(6)), format!("i{}", next(8)));
            match next(10) {
                0..=5 => {
                    let v = 1 + next(5) as u32;
                    writer.upsert(vec![rating(&u, &i, v as f32)]).await.unwrap();
                    model.insert((u, i), v as f32);
                }
                6..=8 => {
                    let existed = writer
                        .delete(UserId::parse(&u).unwrap(), ItemId::parse(&i).unwrap())
                        .await
                        .unwrap();
                    assert_eq!(existed, model.remove(&(u, i)).is_some(), "step {step}");
                }
                _ => {
                    let limit = 1 + next(12) as usize;
                    tokio::task::block_in_place(|| fold_chunk(&mut folder, limit)).unwrap();
                }
            }
            if step % 50 == 49 {
                check(&store, &model).await;
            }
        }
        check(&store, &model).await;
        tokio::task::block_in_place(|| while fold_chunk(&mut folder, 7).unwrap() > 0 {});
        let left: i64 = folder
            .query_row("SELECT COUNT(*) FROM ratings_delta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        check(&store, &model).await;
        drop(writer);
        task.finish().await;

        async fn check(store: &Store, model: &BTreeMap<(String, String), f32>) {
            assert_eq!(store.count_ratings().await.unwrap(), model.len() as u64);
            for u in 0..6 {
                let user = UserId::parse(&format!("u{u}")).unwrap();
                let want: Vec<(String, f32)> = model
                    .iter()
                    .filter(|((mu, _), _)| mu == user.as_str())
                    .map(|((_, i), v)| (i.clone(), *v))
                    .collect();
                let (page, total) = store.list_ratings(&user, 100, 0).await.unwrap();
                assert_eq!(total, want.len() as u64);
                let mut got: Vec<(String, f32)> =
                    page.into_iter().map(|r| (r.item, r.rating)).collect();
                got.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(got, want, "{user:?}");
                let mut rated = store.rated_items(&user).await.unwrap();
                rated.sort();
                let want_items: Vec<String> = want.iter().map(|w| w.0.clone()).collect();
                assert_eq!(rated, want_items);
            }
            let rows = store.load_training_rows().await.unwrap();
            let name = |pairs: &[(i64, String)], k: u32| {
                pairs.iter().find(|p| p.0 == k as i64).unwrap().1.clone()
            };
            assert!(rows
                .ratings
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
            let scanned: BTreeMap<(String, String), f32> = rows
                .ratings
                .iter()
                .map(|&(u, i, v)| ((name(&rows.users, u), name(&rows.items, i)), v))
                .collect();
            assert_eq!(&scanned, model);
        }
    }

    /// An idle writer folds the delta into `ratings` by itself, within a few ticks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_writer_folds_the_delta() {
        let (_dir, store) = temp_store().await;
        let (writer, task) = Writer::start(&store, Arc::new(RecentWrites::new())).unwrap();
        let batch = (0..30)
            .map(|k| rating(&format!("u{k}"), "i", 3.0))
            .collect();
        writer.upsert(batch).await.unwrap();
        let conn = Connection::open(store.path()).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count("ratings_delta"), 30, "written to the delta first");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count("ratings_delta") > 0 {
            assert!(std::time::Instant::now() < deadline, "never folded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count("ratings"), 30);
        assert_eq!(store.count_ratings().await.unwrap(), 30);
        drop(writer);
        task.finish().await;
    }

    /// `funkrec import` folds the delta first, so what it writes replaces what the
    /// service wrote before (and a deletion in the delta is applied, not lost).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_after_service_writes_wins_over_the_delta() {
        use crate::store::ImportRow;
        let (_dir, store) = temp_store().await;
        let row = |user: &str, item: &str, rating: f32| {
            Ok(ImportRow {
                user: user.into(),
                item: item.into(),
                rating,
                timestamp: 1,
            })
        };
        let import = |rows: Vec<anyhow::Result<ImportRow>>| {
            let store = store.clone();
            async move {
                store
                    .bulk_import(rows.into_iter(), &mut |_| {})
                    .await
                    .unwrap()
            }
        };
        import(vec![row("u", "b", 4.0)]).await;
        let (writer, task) = Writer::start(&store, Arc::new(RecentWrites::new())).unwrap();
        writer.upsert(vec![rating("u", "a", 2.0)]).await.unwrap();
        assert!(writer
            .delete(UserId::parse("u").unwrap(), ItemId::parse("b").unwrap())
            .await
            .unwrap());
        drop(writer);
        task.finish().await; // the delta is (almost surely) still there: ticks are 1 s apart
        import(vec![row("u", "a", 5.0)]).await;
        let (page, total) = store
            .list_ratings(&UserId::parse("u").unwrap(), 10, 0)
            .await
            .unwrap();
        assert_eq!(total, 1);
        assert_eq!((page[0].item.as_str(), page[0].rating), ("a", 5.0));
    }

    /// The per-user reads filter `ratings_now` on a bound user key; the bundled SQLite
    /// must push that filter into both halves of the view (a search on the key), or every
    /// user's page would scan all ratings (the plan would say `SCAN r` inside the union).
    #[tokio::test]
    async fn per_user_reads_of_the_view_search_both_tables_by_key() {
        let (_dir, store) = temp_store().await;
        let conn = Connection::open(store.path()).unwrap();
        for sql in [
            "SELECT COUNT(*) FROM ratings_now WHERE user_id = ?1",
            "SELECT i.ext_id, r.rating, r.ts FROM ratings_now r JOIN items i ON i.id = r.item_id \
             WHERE r.user_id = ?1 ORDER BY r.item_id LIMIT 10 OFFSET 0",
        ] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map([1], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let has = |needle: &str| plan.iter().any(|p| p.contains(needle));
            assert!(
                has("SEARCH ratings_delta USING PRIMARY KEY (user_id=?)"),
                "{plan:?}"
            );
            assert!(has("SEARCH r USING PRIMARY KEY (user_id=?)"), "{plan:?}");
        }
    }
}
