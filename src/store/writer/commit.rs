//! Group commit: the jobs of one group in one transaction (one savepoint per job only after a failure), then records and answers.

use crate::domain::{ItemId, NewRating, UserId};
use crate::rated::RecentWrites;
use crate::store::keys::{Keys, Table};
use crate::store::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

/// Writes (and deletions, with a NULL rating) go to the delta; see the migration
/// `0002_ratings_delta.sql` and `fold.rs`.
const UPSERT_DELTA: &str = "INSERT INTO ratings_delta (user_id, item_id, rating, ts) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";

/// What one request asks the writer to do.
pub(in crate::store) enum Op {
    Upsert(Vec<NewRating>),
    Delete(UserId, ItemId),
    /// Deletes every rating of the user and writes its `forgotten_users` row (`tag`);
    /// the items it rated are left in `removed` (recorded as deletions once committed).
    ForgetUser {
        user: UserId,
        tag: i64,
        removed: Removed,
    },
    /// Deletes every rating of the item and writes its `retired_items` row.
    RetireItem {
        item: ItemId,
        at: i64,
    },
}

/// Filled by the job that runs the operation, read when its commit is recorded.
pub(in crate::store) type Removed = std::sync::Mutex<Vec<String>>;

/// `forgotten_users` row of a deletion (a later one of the same user replaces it).
pub(in crate::store) const FORGET_ROW: &str = "INSERT INTO forgotten_users (user_ext, tag) \
     VALUES ($1, $2) ON CONFLICT (user_ext) DO UPDATE SET tag = excluded.tag";

/// `retired_items` row of a retirement (retiring twice keeps the first time).
pub(in crate::store) const RETIRE_ROW: &str = "INSERT INTO retired_items (item_ext, retired_at) \
     VALUES ($1, $2) ON CONFLICT (item_ext) DO NOTHING";

/// A request and where its answer goes.
pub(in crate::store) struct Job {
    pub(in crate::store) op: Op,
    pub(in crate::store) reply: oneshot::Sender<Result<bool, StoreError>>,
}

impl Op {
    /// Adds the users whose ratings the operation may change to `out`. The PostgreSQL
    /// writer records them with the transaction (read-your-writes across replicas,
    /// `postgres/writer.rs`), so every kind of write or delete must name its users here.
    pub(in crate::store) fn users<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Op::Upsert(ratings) => out.extend(ratings.iter().map(|r| r.user.as_str())),
            Op::Delete(user, _) | Op::ForgetUser { user, .. } => out.push(user.as_str()),
            // a retirement changes what every rater of the item is served: the retired
            // set itself says so (`crate::forget`), not a per-user change
            Op::RetireItem { .. } => {}
        }
    }
}

impl Job {
    /// Ratings the job writes (a deletion counts one).
    pub(in crate::store) fn size(&self) -> usize {
        match &self.op {
            Op::Upsert(r) => r.len(),
            Op::Delete(..) | Op::ForgetUser { .. } | Op::RetireItem { .. } => 1,
        }
    }
}

/// Commits a group and answers it. The common case is one transaction with every
/// job's statements and no savepoints (a savepoint makes SQLite journal each page it
/// touches first). If that fails and the group has more than one job, it is rolled
/// back and run again with one savepoint per job, so only the failing jobs fail.
pub(super) fn commit_group(
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
            keys.settle();
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
            let mark = keys.mark();
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
            keys.settle();
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

/// The key of `id` (inside the write transaction): from memory, read, or (when
/// `create`) inserted; None when it does not exist and `create` is false.
fn key(
    conn: &Connection,
    keys: &mut Keys,
    table: Table,
    id: &str,
    create: bool,
) -> rusqlite::Result<Option<i64>> {
    if let Some(k) = keys.get(table, id) {
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
    match found {
        Some(k) => {
            keys.insert_committed(table, id, k);
            Ok(Some(k))
        }
        None if create => {
            conn.prepare_cached(insert)?.execute([id])?;
            let k = conn.last_insert_rowid();
            keys.insert_added(table, id, k);
            Ok(Some(k))
        }
        None => Ok(None),
    }
}

/// One request's statements (inside the group's transaction, or its own savepoint).
fn run_job(conn: &Connection, keys: &mut Keys, op: &Op) -> rusqlite::Result<bool> {
    match op {
        Op::Upsert(ratings) => {
            let mut rows = Vec::with_capacity(ratings.len());
            for r in ratings {
                let user = key(conn, keys, Table::Users, r.user.as_str(), true)?;
                let item = key(conn, keys, Table::Items, r.item.as_str(), true)?;
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
            let user = key(conn, keys, Table::Users, user.as_str(), false)?;
            let item = key(conn, keys, Table::Items, item.as_str(), false)?;
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
        Op::ForgetUser { user, tag, removed } => {
            let Some(u) = key(conn, keys, Table::Users, user.as_str(), false)? else {
                return Ok(false);
            };
            let items: Vec<String> = conn
                .prepare_cached(
                    "SELECT i.ext_id FROM ratings_now r JOIN items i ON i.id = r.item_id \
                     WHERE r.user_id = ?1",
                )?
                .query_map([u], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            conn.prepare_cached("DELETE FROM ratings WHERE user_id = ?1")?
                .execute([u])?;
            conn.prepare_cached("DELETE FROM ratings_delta WHERE user_id = ?1")?
                .execute([u])?;
            conn.prepare_cached(FORGET_ROW)?
                .execute(params![user.as_str(), tag])?;
            *removed.lock().unwrap_or_else(|p| p.into_inner()) = items;
            Ok(true)
        }
        Op::RetireItem { item, at } => {
            let Some(i) = key(conn, keys, Table::Items, item.as_str(), false)? else {
                return Ok(false);
            };
            // `ratings` is keyed by (user, item): this reads the whole table
            conn.prepare_cached("DELETE FROM ratings WHERE item_id = ?1")?
                .execute([i])?;
            conn.prepare_cached("DELETE FROM ratings_delta WHERE item_id = ?1")?
                .execute([i])?;
            conn.prepare_cached(RETIRE_ROW)?
                .execute(params![item.as_str(), at])?;
            Ok(true)
        }
    }
}

/// Records the committed jobs (in order) and answers every job.
pub(in crate::store) fn answer(
    recent: &RecentWrites,
    group: &mut Vec<Job>,
    results: Vec<Result<bool, StoreError>>,
) {
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
                Op::ForgetUser { user, removed, .. } => {
                    if matches!(r, Ok(true)) {
                        let items = removed.lock().unwrap_or_else(|p| p.into_inner());
                        recent.record(items.iter().map(|i| (user.as_str(), i.as_str())), false)
                    }
                }
                Op::RetireItem { .. } => {}
            }
        }
        let _ = job.reply.send(r);
    }
}

/// The store's error for a failed statement (see [`StoreError`]'s `From<rusqlite::Error>`).
fn store_error(e: &rusqlite::Error) -> StoreError {
    StoreError::from(e)
}
