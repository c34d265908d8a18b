//! Group commit on PostgreSQL: a task takes the queued writes and commits them in group transactions, up to two at once, answering each request only after its `COMMIT`.
//!
//! The same channel and answers as the SQLite writer thread (`store/writer`): what is
//! queued (up to [`MAX_GROUP_RATINGS`](crate::store::writer::MAX_GROUP_RATINGS) ratings) becomes one transaction. Within it,
//! the group's new user and item ids are inserted once (`ON CONFLICT DO NOTHING`, in
//! order of first appearance, so keys follow the order ids were first written, as on
//! SQLite) and their keys read back; consecutive upserts go out as one
//! `INSERT .. SELECT FROM unnest(..)` statement (a later rating of a pair wins);
//! deletions run in order between them. If the group's transaction fails and it
//! holds more than one request, each request runs again in its own transaction, so
//! only the failing ones fail. Keys of committed ids are cached: ids are never
//! renumbered or removed.
//!
//! One group transaction keeps one PostgreSQL backend busy while the server waits
//! (`docs/benchmarks.md`, "PostgreSQL batches"), so [`IN_FLIGHT`] groups run at once,
//! each on its own connection. Two groups in flight hold requests that were all
//! waiting for their answer at the same time, so neither order of the two is wrong; a
//! pair written by both is written by the later commit (the upsert waits for the
//! other's row lock). Rows are upserted in key order, so two groups lock rows in one
//! order; the users a group changed go into one new row of the change log, and its
//! count into a retrain counter slot of its own, so neither waits for the other
//! there; only the insertion of new ids, in order of first appearance, takes turns
//! ([`Shared::new_keys`]).

use crate::domain::NewRating;
use crate::rated::RecentWrites;
use crate::store::writer::commit::{answer, Job, Op, FORGET_ROW, RETIRE_ROW};
use crate::store::writer::{fill_group, Msg};
use crate::store::StoreError;
use foldhash::HashMap;
use sqlx::{PgConnection, PgPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Group transactions committing at once, each on its own connection: while one
/// waits for its statements or its `COMMIT`, the next group runs.
const IN_FLIGHT: usize = 2;

/// Upserts a batch of (user key, item key, rating, timestamp) rows.
const UPSERT: &str = "INSERT INTO ratings (user_id, item_id, rating, ts) \
     SELECT * FROM unnest($1::int8[], $2::int8[], $3::float8[], $4::int8[]) \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";

const DELETE: &str = "DELETE FROM ratings \
     WHERE user_id = (SELECT id FROM users WHERE ext_id = $1) \
     AND item_id = (SELECT id FROM items WHERE ext_id = $2)";

/// Records the users a transaction changed, with its id, in the same transaction: one
/// row of the change log (migration `0006_change_log.sql`; read by
/// `PgStore::changed_since`).
pub(super) const LOG_CHANGES: &str =
    "INSERT INTO change_log (xid, users) VALUES (pg_current_xact_id()::text::int8, $1)";

/// Adds to the retrain counter in one of the slots of `change_counts`.
pub(super) const COUNT_CHANGES: &str =
    "UPDATE change_counts SET changes = changes + $1 WHERE slot = $2";

/// Slots of `change_counts` (migration `0006_change_log.sql`).
pub(super) const COUNT_SLOTS: usize = 16;

/// Keys of the user and item ids committed so far.
#[derive(Default)]
struct KeyCache {
    users: HashMap<String, i64>,
    items: HashMap<String, i64>,
}

/// Takes messages until every handle is gone or a `Stop` was followed by an empty
/// queue, and commits them in groups, up to [`IN_FLIGHT`] group transactions at once
/// (each on its own connection); waits for the last ones before returning.
#[tracing::instrument(name = "writer", skip_all)]
pub(crate) async fn run(pool: PgPool, rx: flume::Receiver<Msg>, recent: Arc<RecentWrites>) {
    let shared = Arc::new(Shared {
        pool,
        cache: Mutex::new(KeyCache::default()),
        new_keys: tokio::sync::Mutex::new(()),
        recent,
        // processes start at different slots; each group takes the next one
        slot: AtomicUsize::new(std::process::id() as usize),
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut running = tokio::task::JoinSet::new();
    let mut stopping = false;
    loop {
        let received = if stopping {
            rx.try_recv().ok()
        } else {
            rx.recv_async().await.ok()
        };
        let first = match received {
            Some(Msg::Job(job)) => job,
            Some(Msg::Stop) => {
                stopping = true;
                continue;
            }
            None => break,
        };
        // a free slot first, so that the group takes what queued while both were busy
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let mut group = Vec::new();
        stopping |= fill_group(first, &rx, &mut group).1;
        let shared = Arc::clone(&shared);
        running.spawn(async move {
            commit_group(&shared, &mut group).await;
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    tracing::debug!("writer task stopped");
}

/// What the writer's group transactions share.
struct Shared {
    pool: PgPool,
    cache: Mutex<KeyCache>,
    /// Held while a group inserts its new user and item ids: two groups inserting the
    /// same new ids in different orders (the order of first appearance) would wait
    /// for each other's commit, a deadlock; in turn, the second waits for the first's
    /// commit only where they share new ids.
    new_keys: tokio::sync::Mutex<()>,
    recent: Arc<RecentWrites>,
    /// The `change_counts` slot of the next group: two groups in flight add to
    /// different rows, so neither waits for the other's commit.
    slot: AtomicUsize,
}

/// Commits a group and answers it (each request alone after a failed group).
async fn commit_group(shared: &Shared, group: &mut Vec<Job>) {
    let recent = &*shared.recent;
    match run_jobs(shared, group).await {
        Ok(results) => answer(recent, group, results.into_iter().map(Ok).collect()),
        // (an unreachable database fails every request alike: no point retrying each)
        Err(e) if group.len() > 1 && !e.is_unavailable() => {
            tracing::debug!(error = %e, "group failed; one transaction per request");
            for job in std::mem::take(group) {
                let mut one = vec![job];
                let result = match run_jobs(shared, &one).await {
                    Ok(mut r) => Ok(r.remove(0)),
                    Err(e) => {
                        tracing::warn!(error = %e, "write failed");
                        Err(e)
                    }
                };
                answer(recent, &mut one, vec![result]);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = group.len(), "group commit failed");
            let results = group.iter().map(|_| Err(e.clone())).collect();
            answer(recent, group, results);
        }
    }
}

/// Runs `jobs` in one transaction; the result of each (deletions: whether there was
/// a rating) once it committed.
async fn run_jobs(shared: &Shared, jobs: &[Job]) -> Result<Vec<bool>, StoreError> {
    let mut tx = shared.pool.begin().await?;
    let ratings = || {
        jobs.iter().flat_map(|j| match &j.op {
            Op::Upsert(r) => r.as_slice(),
            Op::Delete(..) | Op::ForgetUser { .. } | Op::RetireItem { .. } => &[],
        })
    };
    // the keys of the group's ids: from the cache, the rest inserted or read now
    let (mut users, missing_users) =
        shared.cache_lookup(Side::Users, ratings().map(|r| r.user.as_str()));
    let (mut items, missing_items) =
        shared.cache_lookup(Side::Items, ratings().map(|r| r.item.as_str()));
    let (mut new_users, mut new_items) = (HashMap::default(), HashMap::default());
    if !missing_users.is_empty() || !missing_items.is_empty() {
        let _turn = shared.new_keys.lock().await;
        new_users = keys(&mut tx, Side::Users, &missing_users).await?;
        new_items = keys(&mut tx, Side::Items, &missing_items).await?;
    }
    users.extend(new_users.iter().map(|(k, v)| (k.as_str(), *v)));
    items.extend(new_items.iter().map(|(k, v)| (k.as_str(), *v)));
    let key = |known: &HashMap<&str, i64>, id: &str| known.get(id).copied();
    let mut results = Vec::with_capacity(jobs.len());
    // rating changes committed, as `RecentWrites` counts them (the shared retrain counter)
    let mut changes = 0i64;
    let mut pending: Vec<(i64, i64, f64, i64)> = Vec::new();
    for job in jobs {
        match &job.op {
            Op::Upsert(rs) => {
                for r in rs {
                    let row = keyed(r, |u| key(&users, u), |i| key(&items, i))?;
                    pending.push(row);
                    changes += 1;
                }
                results.push(true);
            }
            Op::Delete(user, item) => {
                flush(&mut tx, &mut pending).await?;
                let n = sqlx::query(DELETE)
                    .bind(user.as_str())
                    .bind(item.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                changes += i64::from(n > 0);
                results.push(n > 0);
            }
            Op::ForgetUser { user, tag, removed } => {
                flush(&mut tx, &mut pending).await?;
                let key: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE ext_id = $1")
                    .bind(user.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(key) = key else {
                    results.push(false);
                    continue;
                };
                let items: Vec<String> = sqlx::query_scalar(
                    "WITH d AS (DELETE FROM ratings WHERE user_id = $1 RETURNING item_id) \
                     SELECT i.ext_id FROM d JOIN items i ON i.id = d.item_id",
                )
                .bind(key)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query(FORGET_ROW)
                    .bind(user.as_str())
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
                *removed.lock().unwrap_or_else(|p| p.into_inner()) = items;
                results.push(true);
            }
            Op::RetireItem { item, at } => {
                flush(&mut tx, &mut pending).await?;
                let key: Option<i64> = sqlx::query_scalar("SELECT id FROM items WHERE ext_id = $1")
                    .bind(item.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(key) = key else {
                    results.push(false);
                    continue;
                };
                sqlx::query("DELETE FROM ratings WHERE item_id = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(RETIRE_ROW)
                    .bind(item.as_str())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                // delivered at COMMIT: the other replicas stop serving the item too
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(super::cluster::FORGET_CHANNEL)
                    .bind(item.as_str())
                    .execute(&mut *tx)
                    .await?;
                results.push(true);
            }
        }
    }
    flush(&mut tx, &mut pending).await?;
    record_changes(&mut tx, jobs).await?;
    if changes > 0 {
        let slot = shared.slot.fetch_add(1, Ordering::Relaxed) % COUNT_SLOTS;
        sqlx::query(COUNT_CHANGES)
            .bind(changes)
            .bind(slot as i16)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let mut cache = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.users.extend(new_users);
    cache.items.extend(new_items);
    Ok(results)
}

/// Records every user the jobs change as changed by this transaction (each kind of
/// write names its users: `Op::users`).
async fn record_changes(conn: &mut PgConnection, jobs: &[Job]) -> Result<(), StoreError> {
    let mut users = Vec::new();
    for job in jobs {
        job.op.users(&mut users);
    }
    if users.is_empty() {
        return Ok(());
    }
    users.sort_unstable();
    users.dedup();
    sqlx::query(LOG_CHANGES).bind(&users).execute(conn).await?;
    Ok(())
}

/// A rating's row with its keys.
fn keyed(
    r: &NewRating,
    user: impl Fn(&str) -> Option<i64>,
    item: impl Fn(&str) -> Option<i64>,
) -> Result<(i64, i64, f64, i64), StoreError> {
    match (user(r.user.as_str()), item(r.item.as_str())) {
        (Some(u), Some(i)) => Ok((u, i, r.value.get() as f64, r.timestamp)),
        _ => Err(StoreError::Internal("a key was not created".into())),
    }
}

impl Shared {
    /// The cached keys of `ids`, and the ids not cached (each once, first appearance
    /// first).
    fn cache_lookup<'a>(
        &self,
        side: Side,
        ids: impl Iterator<Item = &'a str>,
    ) -> (HashMap<&'a str, i64>, Vec<&'a str>) {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cache = match side {
            Side::Users => &cache.users,
            Side::Items => &cache.items,
        };
        let mut known = HashMap::default();
        let mut missing = Vec::new();
        let mut seen = foldhash::HashSet::default();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            match cache.get(id) {
                Some(&k) => {
                    known.insert(id, k);
                }
                None => missing.push(id),
            }
        }
        (known, missing)
    }
}

#[derive(Clone, Copy)]
enum Side {
    Users,
    Items,
}

/// Inserts the ids `missing` (in their order: first appearance first) where the
/// table does not have them, and returns the keys of all of them.
async fn keys(
    conn: &mut PgConnection,
    side: Side,
    missing: &[&str],
) -> Result<HashMap<String, i64>, StoreError> {
    if missing.is_empty() {
        return Ok(HashMap::default());
    }
    let (insert, select) = match side {
        Side::Users => (
            "INSERT INTO users (ext_id) SELECT x FROM unnest($1::text[]) WITH ORDINALITY AS t(x, n) \
             ORDER BY n ON CONFLICT (ext_id) DO NOTHING",
            "SELECT ext_id, id FROM users WHERE ext_id = ANY($1::text[])",
        ),
        Side::Items => (
            "INSERT INTO items (ext_id) SELECT x FROM unnest($1::text[]) WITH ORDINALITY AS t(x, n) \
             ORDER BY n ON CONFLICT (ext_id) DO NOTHING",
            "SELECT ext_id, id FROM items WHERE ext_id = ANY($1::text[])",
        ),
    };
    sqlx::query(insert)
        .bind(missing)
        .execute(&mut *conn)
        .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(select)
        .bind(missing)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Writes the pending rows as one statement (a later row of a pair wins) and
/// empties them.
async fn flush(
    conn: &mut PgConnection,
    pending: &mut Vec<(i64, i64, f64, i64)>,
) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    // Stable sort by key, then keep the last row of each pair.
    pending.sort_by_key(|&(u, i, ..)| (u, i));
    let mut rows: Vec<(i64, i64, f64, i64)> = Vec::with_capacity(pending.len());
    for row in pending.drain(..) {
        match rows.last_mut() {
            Some(last) if (last.0, last.1) == (row.0, row.1) => *last = row,
            _ => rows.push(row),
        }
    }
    let users: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let items: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.3).collect();
    sqlx::query(UPSERT)
        .bind(users)
        .bind(items)
        .bind(values)
        .bind(ts)
        .execute(conn)
        .await?;
    Ok(())
}
