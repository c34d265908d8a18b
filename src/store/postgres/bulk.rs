//! `funkrec import` into PostgreSQL: rows streamed by binary `COPY .. FROM STDIN` into a staging table, merged into `ratings` a million at a time.
//!
//! Each transaction copies up to [`ROWS_PER_TRANSACTION`] rows (with their input
//! position) into a temporary table, inserts the ids it has not seen (in order of
//! first appearance), then upserts the ratings, a later row of a pair replacing an
//! earlier one. An error leaves the transactions committed so far in place, as on
//! SQLite. The service may keep running meanwhile (PostgreSQL needs no store lock).

use crate::store::{ImportRow, ImportStats};
use anyhow::Context;
use sqlx::{Connection, PgPool};

/// Ratings per transaction.
const ROWS_PER_TRANSACTION: u64 = 1_000_000;
/// COPY data sent per message.
const SEND_BYTES: usize = 1 << 20;
/// Memory for the sorts and hashes of one import transaction (`SET LOCAL`: this
/// transaction only).
const WORK_MEM: &str = "SET LOCAL work_mem = '256MB'";
/// Progress is reported every this many rows.
const PROGRESS_ROWS: u64 = 1 << 16;

const STAGE: &str = "CREATE TEMPORARY TABLE import_stage \
     (n int8 NOT NULL, u text NOT NULL, i text NOT NULL, rating float8 NOT NULL, ts int8 NOT NULL) \
     ON COMMIT DROP";
const NEW_USERS: &str = "INSERT INTO users (ext_id) SELECT u FROM import_stage GROUP BY u \
     ORDER BY min(n) ON CONFLICT (ext_id) DO NOTHING";
const NEW_ITEMS: &str = "INSERT INTO items (ext_id) SELECT i FROM import_stage GROUP BY i \
     ORDER BY min(n) ON CONFLICT (ext_id) DO NOTHING";
const MERGE: &str = "INSERT INTO ratings (user_id, item_id, rating, ts) \
     SELECT DISTINCT ON (us.id, it.id) us.id, it.id, s.rating, s.ts FROM import_stage s \
     JOIN users us ON us.ext_id = s.u JOIN items it ON it.ext_id = s.i \
     ORDER BY us.id, it.id, s.n DESC \
     ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts";

/// The imported users changed (read-your-writes across replicas: `writer.rs`).
const USER_CHANGES: &str = "INSERT INTO user_changes (ext_id, xid) \
     SELECT u, pg_current_xact_id() FROM import_stage GROUP BY u ORDER BY u \
     ON CONFLICT (ext_id) DO UPDATE SET xid = excluded.xid";

/// Appends one row in binary COPY format.
fn encode(buf: &mut Vec<u8>, n: i64, row: &ImportRow) {
    buf.extend_from_slice(&5i16.to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&n.to_be_bytes());
    for text in [row.user.as_bytes(), row.item.as_bytes()] {
        buf.extend_from_slice(&(text.len() as i32).to_be_bytes());
        buf.extend_from_slice(text);
    }
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&(row.rating as f64).to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&row.timestamp.to_be_bytes());
}

/// The binary COPY header (signature, flags, no extension).
fn header() -> Vec<u8> {
    let mut buf = b"PGCOPY\n\xff\r\n\0".to_vec();
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf
}

pub(super) async fn import<I>(
    pool: &PgPool,
    rows: I,
    on_progress: &mut dyn FnMut(u64),
) -> anyhow::Result<ImportStats>
where
    I: Iterator<Item = anyhow::Result<ImportRow>>,
{
    let mut conn = pool.acquire().await?;
    let mut stats = ImportStats::default();
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let mut tx = conn.begin().await?;
        // the merge sorts a million rows and the id inserts group them: in memory, not in
        // temporary files (the default work_mem is 4 MB)
        sqlx::query(WORK_MEM).execute(&mut *tx).await?;
        sqlx::query(STAGE).execute(&mut *tx).await?;
        let mut copy = tx
            .copy_in_raw("COPY import_stage FROM STDIN (FORMAT binary)")
            .await?;
        let mut buf = header();
        let mut in_tx = 0u64;
        let mut failed = None;
        while in_tx < ROWS_PER_TRANSACTION {
            let row = match rows.next() {
                None => break,
                Some(Ok(row)) => row,
                Some(Err(e)) => {
                    failed = Some(e.context("reading the input"));
                    break;
                }
            };
            encode(&mut buf, (stats.rows + in_tx) as i64, &row);
            in_tx += 1;
            if buf.len() >= SEND_BYTES {
                copy.send(std::mem::take(&mut buf)).await?;
            }
            if (stats.rows + in_tx) % PROGRESS_ROWS == 0 {
                on_progress(stats.rows + in_tx);
            }
        }
        if let Some(e) = failed {
            copy.abort("input error").await.ok();
            return Err(e);
        }
        buf.extend_from_slice(&(-1i16).to_be_bytes());
        copy.send(buf).await?;
        copy.finish().await.context("copying rows")?;
        sqlx::query("ANALYZE import_stage")
            .execute(&mut *tx)
            .await?;
        stats.new_users += sqlx::query(NEW_USERS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        stats.new_items += sqlx::query(NEW_ITEMS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(MERGE).execute(&mut *tx).await?;
        // the shared retrain counter (cluster_state, migration 0004) counts them as changes
        sqlx::query("UPDATE cluster_state SET changes = changes + $1 WHERE id = 1")
            .bind(in_tx as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(USER_CHANGES).execute(&mut *tx).await?;
        tx.commit().await?;
        stats.rows += in_tx;
        on_progress(stats.rows);
    }
    sqlx::query("ANALYZE ratings").execute(&mut *conn).await?;
    on_progress(stats.rows);
    Ok(stats)
}
