//! Group commit on PostgreSQL: a task takes the queued writes and commits them in one transaction, answering each only after `COMMIT`.
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

use crate::domain::NewRating;
use crate::rated::RecentWrites;
use crate::store::writer::commit::{answer, Job, Op, FORGET_ROW, RETIRE_ROW};
use crate::store::writer::{fill_group, Msg};
use crate::store::StoreError;
use foldhash::HashMap;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;

/// Upserts a batch of (user key, item key, rating, timestamp) rows.
const UPSERT: &str = "INSERT INTO ratings (user_id, item_id, rating, ts) \
     SELECT * FROM unnest($1::int8[], $2::int8[], $3::float8[], $4::int8[]) \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";

const DELETE: &str = "DELETE FROM ratings \
     WHERE user_id = (SELECT id FROM users WHERE ext_id = $1) \
     AND item_id = (SELECT id FROM items WHERE ext_id = $2)";

/// Records the users a transaction changed, with its id, in the same transaction
/// (migration `0005_user_changes.sql`; read by `PgStore::changed_since`). The ids come
/// sorted, so concurrent writers lock the rows in one order.
const USER_CHANGES: &str = "INSERT INTO user_changes (ext_id, xid) \
     SELECT u, pg_current_xact_id() FROM unnest($1::text[]) AS t(u) \
     ON CONFLICT (ext_id) DO UPDATE SET xid = excluded.xid";

/// Keys of the user and item ids committed so far.
#[derive(Default)]
struct KeyCache {
    users: HashMap<String, i64>,
    items: HashMap<String, i64>,
}

/// Takes messages until every handle is gone or a `Stop` was followed by an empty
/// queue; each group is committed before the next is taken.
#[tracing::instrument(name = "writer", skip_all)]
pub(crate) async fn run(pool: PgPool, rx: flume::Receiver<Msg>, recent: Arc<RecentWrites>) {
    let mut cache = KeyCache::default();
    let mut group: Vec<Job> = Vec::new();
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
        stopping |= fill_group(first, &rx, &mut group).1;
        commit_group(&pool, &mut cache, &recent, &mut group).await;
    }
    tracing::debug!("writer task stopped");
}

/// Commits a group and answers it (each request alone after a failed group).
async fn commit_group(
    pool: &PgPool,
    cache: &mut KeyCache,
    recent: &RecentWrites,
    group: &mut Vec<Job>,
) {
    match run_jobs(pool, cache, group).await {
        Ok(results) => answer(recent, group, results.into_iter().map(Ok).collect()),
        // (an unreachable database fails every request alike: no point retrying each)
        Err(e) if group.len() > 1 && !e.is_unavailable() => {
            tracing::debug!(error = %e, "group failed; one transaction per request");
            for job in std::mem::take(group) {
                let mut one = vec![job];
                let result = match run_jobs(pool, cache, &one).await {
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
async fn run_jobs(
    pool: &PgPool,
    cache: &mut KeyCache,
    jobs: &[Job],
) -> Result<Vec<bool>, StoreError> {
    let mut tx = pool.begin().await?;
    let ratings = || {
        jobs.iter().flat_map(|j| match &j.op {
            Op::Upsert(r) => r.as_slice(),
            Op::Delete(..) | Op::ForgetUser { .. } | Op::RetireItem { .. } => &[],
        })
    };
    let new_users = keys(
        &mut tx,
        &cache.users,
        Side::Users,
        ratings().map(|r| r.user.as_str()),
    )
    .await?;
    let new_items = keys(
        &mut tx,
        &cache.items,
        Side::Items,
        ratings().map(|r| r.item.as_str()),
    )
    .await?;
    let key = |cache: &HashMap<String, i64>, new: &HashMap<String, i64>, id: &str| {
        cache.get(id).or_else(|| new.get(id)).copied()
    };
    let mut results = Vec::with_capacity(jobs.len());
    // rating changes committed, as `RecentWrites` counts them (the shared retrain counter)
    let mut changes = 0i64;
    let mut pending: Vec<(i64, i64, f64, i64)> = Vec::new();
    for job in jobs {
        match &job.op {
            Op::Upsert(rs) => {
                for r in rs {
                    let row = keyed(
                        r,
                        |u| key(&cache.users, &new_users, u),
                        |i| key(&cache.items, &new_items, i),
                    )?;
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
    if changes > 0 {
        sqlx::query("UPDATE cluster_state SET changes = changes + $1 WHERE id = 1")
            .bind(changes)
            .execute(&mut *tx)
            .await?;
    }
    record_changes(&mut tx, jobs).await?;
    tx.commit().await?;
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
    users.sort_unstable();
    users.dedup();
    sqlx::query(USER_CHANGES).bind(&users).execute(conn).await?;
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

#[derive(Clone, Copy)]
enum Side {
    Users,
    Items,
}

/// Inserts the ids the cache does not know (first appearance first) and returns
/// their keys.
async fn keys<'a>(
    conn: &mut PgConnection,
    cache: &HashMap<String, i64>,
    side: Side,
    ids: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, i64>, StoreError> {
    let mut seen = foldhash::HashSet::default();
    let missing: Vec<&str> = ids
        .filter(|id| !cache.contains_key(*id) && seen.insert(*id))
        .collect();
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
        .bind(&missing)
        .execute(&mut *conn)
        .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(select)
        .bind(&missing)
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
