//! Bulk loading for `funkrec import`: big transactions, multi-row inserts, keys assigned in memory.

use crate::store::keys::{Keys, Table};
use crate::store::writer::FOLD_ALL;
use anyhow::Context;
use sqlx::{Connection, Executor, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashMap;

/// Ratings per multi-row INSERT (4 binds each: 16 000 < SQLite's 32 766 limit).
const ROWS_PER_STATEMENT: usize = 4000;
/// Ratings per transaction.
const ROWS_PER_TRANSACTION: usize = 1_000_000;

/// Opens an import transaction and folds the whole delta into `ratings` first, so a
/// rating the import writes replaces what the service wrote before.
async fn begin(conn: &mut SqliteConnection) -> anyhow::Result<()> {
    conn.execute("BEGIN IMMEDIATE").await?;
    conn.execute(sqlx::raw_sql(FOLD_ALL)).await?;
    Ok(())
}

/// One validated rating to import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    pub user: String,
    pub item: String,
    pub rating: f32,
    pub timestamp: i64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Rating rows written (a later row of the same pair replaces an earlier one).
    pub rows: u64,
    pub new_users: u64,
    pub new_items: u64,
}

/// Writes the rows of the keys added to `table` since the last call; returns how many.
async fn insert_keys(
    conn: &mut SqliteConnection,
    keys: &mut Keys,
    table: Table,
) -> anyhow::Result<u64> {
    let new = keys.take_added(table);
    for chunk in new.chunks(ROWS_PER_STATEMENT * 2) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO {} (id, ext_id) ", table.name()));
        qb.push_values(chunk, |mut b, (k, id)| {
            b.push_bind(*k).push_bind(&**id);
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(new.len() as u64)
}

/// Every user's and item's key, read on the import's connection.
async fn load_keys(conn: &mut SqliteConnection) -> anyhow::Result<Keys> {
    async fn read(conn: &mut SqliteConnection, table: Table) -> sqlx::Result<Vec<(i64, String)>> {
        sqlx::query_as(table.load_sql()).fetch_all(conn).await
    }
    Ok(Keys::new(
        read(conn, Table::Users).await?,
        read(conn, Table::Items).await?,
    ))
}

async fn insert_ratings(
    conn: &mut SqliteConnection,
    rows: &[(i64, i64, f32, i64)],
) -> anyhow::Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO ratings (user_id, item_id, rating, ts) ");
        qb.push_values(chunk, |mut b, &(u, i, r, t)| {
            b.push_bind(u).push_bind(i).push_bind(r as f64).push_bind(t);
        });
        qb.push(" ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts");
        qb.build().persistent(true).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Streams `rows` into the database on one dedicated connection tuned for bulk
/// load (synchronous=OFF, big page cache, foreign-key checks off: keys are
/// assigned here, in memory, so they are consistent by construction).
/// Every transaction holds up to a million ratings; an error leaves the
/// transactions committed so far in place.
pub async fn import<I>(
    pool: &SqlitePool,
    rows: I,
    on_progress: &mut dyn FnMut(u64),
) -> anyhow::Result<ImportStats>
where
    I: Iterator<Item = anyhow::Result<ImportRow>>,
{
    let mut conn = pool.acquire().await?.detach();
    for pragma in [
        "PRAGMA synchronous = OFF",
        "PRAGMA cache_size = -524288",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA foreign_keys = OFF",
    ] {
        conn.execute(pragma).await?;
    }
    let mut keys = load_keys(&mut conn).await?;
    let mut stats = ImportStats::default();

    let mut chunk: Vec<(i64, i64, f32, i64)> = Vec::with_capacity(ROWS_PER_STATEMENT);
    let mut in_tx = 0usize;
    let mut pos_in_chunk: HashMap<(i64, i64), usize> = HashMap::with_capacity(ROWS_PER_STATEMENT);
    let mut rows = rows;
    begin(&mut conn).await?;
    loop {
        let row = rows.next().transpose().context("reading the input")?;
        if let Some(row) = &row {
            let u = keys.get_or_assign(Table::Users, &row.user);
            let i = keys.get_or_assign(Table::Items, &row.item);
            // A later duplicate inside one statement replaces the earlier one.
            match pos_in_chunk.get(&(u, i)) {
                Some(&p) => chunk[p] = (u, i, row.rating, row.timestamp),
                None => {
                    pos_in_chunk.insert((u, i), chunk.len());
                    chunk.push((u, i, row.rating, row.timestamp));
                }
            }
            stats.rows += 1;
        }
        let done = row.is_none();
        if chunk.len() >= ROWS_PER_STATEMENT || (done && !chunk.is_empty()) {
            stats.new_users += insert_keys(&mut conn, &mut keys, Table::Users).await?;
            stats.new_items += insert_keys(&mut conn, &mut keys, Table::Items).await?;
            insert_ratings(&mut conn, &chunk).await?;
            in_tx += chunk.len();
            chunk.clear();
            pos_in_chunk.clear();
            on_progress(stats.rows);
            if in_tx >= ROWS_PER_TRANSACTION {
                conn.execute("COMMIT").await?;
                begin(&mut conn).await?;
                in_tx = 0;
            }
        }
        if done {
            break;
        }
    }
    conn.execute("COMMIT").await?;
    conn.execute("PRAGMA optimize").await?;
    conn.close().await?;
    on_progress(stats.rows);
    Ok(stats)
}
