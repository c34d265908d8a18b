//! The trainer's full read of the ratings (the table merged with its delta): one short-lived read-only connection, no pool.
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
    // `ratings` and the delta, both in key order, merged: a delta row replaces the
    // table's row of the same pair, and a NULL one deletes it.
    let mut delta: Vec<(i64, i64, Option<f64>)> = {
        let mut stmt = tx.prepare(
            "SELECT user_id, item_id, rating FROM ratings_delta ORDER BY user_id, item_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    delta.reverse();
    let key = |k: i64| u32::try_from(k).with_context(|| format!("key {k} out of range"));
    let mut ratings = Vec::new();
    let mut push = |u: i64, i: i64, r: Option<f64>| -> anyhow::Result<()> {
        if let Some(r) = r {
            ratings.push((key(u)?, key(i)?, r as f32));
        }
        Ok(())
    };
    {
        let mut stmt =
            tx.prepare("SELECT user_id, item_id, rating FROM ratings ORDER BY user_id, item_id")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (u, i, r): (i64, i64, f64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let mut replaced = false;
            while let Some(&(du, di, dr)) = delta.last() {
                if (du, di) > (u, i) {
                    break;
                }
                delta.pop();
                replaced |= (du, di) == (u, i);
                push(du, di, dr)?;
            }
            if !replaced {
                push(u, i, Some(r))?;
            }
        }
    }
    while let Some((du, di, dr)) = delta.pop() {
        push(du, di, dr)?;
    }
    tx.rollback()?;
    ratings.shrink_to_fit();
    Ok(TrainingRows {
        users,
        items,
        ratings,
        snapshot: None,
    })
}
