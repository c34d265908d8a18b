//! The trainer's full read of the ratings: one short-lived read-only connection, no pool.
//!
//! A training run reads every rating (100 M at Netflix size). Going through the
//! async pool costs a channel hop and a few allocations per row, and fills the
//! page cache of whichever pooled connection runs it; this reads the same WAL
//! database synchronously (call it from a blocking thread) on its own
//! connection, inside one read transaction so users, items and ratings are one
//! consistent snapshot while writers keep committing, and closes it afterwards.

use super::TrainingRows;
use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// Reads users, items and every rating (ordered by user key, item key).
pub fn training_rows(path: &Path) -> anyhow::Result<TrainingRows> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} for the training scan", path.display()))?;
    let tx = conn.transaction()?;
    let keyed = |sql: &str| -> anyhow::Result<Vec<(i64, String)>> {
        let mut stmt = tx.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let users = keyed("SELECT id, ext_id FROM users ORDER BY id")?;
    let items = keyed("SELECT id, ext_id FROM items ORDER BY id")?;
    let mut ratings = Vec::new();
    {
        let mut stmt =
            tx.prepare("SELECT user_id, item_id, rating FROM ratings ORDER BY user_id, item_id")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (u, i, r): (i64, i64, f64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let key = |k: i64| u32::try_from(k).with_context(|| format!("key {k} out of range"));
            ratings.push((key(u)?, key(i)?, r as f32));
        }
    }
    tx.rollback()?;
    ratings.shrink_to_fit();
    Ok(TrainingRows {
        users,
        items,
        ratings,
    })
}
