//! Delta folding: moves rows of the small `ratings_delta` table into `ratings`, in key order.
//!
//! Writes land in the delta (migration `0002_ratings_delta.sql`); readers see the
//! delta over the table through the `ratings_now` view. The writer folds the delta a
//! chunk at a time ([`fold`]); `funkrec import` folds all of it at once ([`FOLD_ALL`]).

use rusqlite::{params, Connection};

/// Delta rows folded into `ratings` per fold transaction.
pub(super) const FOLD_CHUNK: usize = 25_000;

const UPSERT_MAIN: &str =
    "INSERT INTO ratings (user_id, item_id, rating, ts) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";

/// Folds the whole delta into `ratings` (run inside the caller's transaction).
/// `funkrec import` starts each of its transactions with it, so a rating the import
/// writes afterwards replaces an older one of the same pair, and one the service
/// acknowledges later (into the delta) replaces the import's.
pub(crate) const FOLD_ALL: &str = "\
    INSERT INTO ratings (user_id, item_id, rating, ts) \
        SELECT user_id, item_id, rating, ts FROM ratings_delta WHERE rating IS NOT NULL \
        ORDER BY user_id, item_id \
        ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts; \
    DELETE FROM ratings WHERE (user_id, item_id) IN \
        (SELECT user_id, item_id FROM ratings_delta WHERE rating IS NULL); \
    DELETE FROM ratings_delta;";

/// Folds one chunk of the delta into `ratings` and updates the estimate of the rows
/// left (a write counts as a new row even when it replaced a delta row, so the
/// estimate is high until a short chunk shows the delta is empty). False if it failed.
pub(super) fn fold(conn: &mut Connection, delta_rows: &mut usize) -> bool {
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
#[tracing::instrument(level = "debug", skip_all, fields(limit = limit, folded = tracing::field::Empty))]
pub(super) fn fold_chunk(conn: &mut Connection, limit: usize) -> rusqlite::Result<usize> {
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
    tracing::Span::current().record("folded", rows.len());
    Ok(rows.len())
}
