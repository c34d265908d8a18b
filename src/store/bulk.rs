//! Bulk loading for `funkrec import`: big transactions, multi-row inserts, keys assigned in memory.

use anyhow::Context;
use sqlx::{Connection, Executor, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashMap;

/// Ratings per multi-row INSERT (4 binds each: 16 000 < SQLite's 32 766 limit).
const ROWS_PER_STATEMENT: usize = 4000;
/// Ratings per transaction.
const ROWS_PER_TRANSACTION: usize = 1_000_000;

/// Folds the whole delta (what the service wrote since its writer last folded) into
/// `ratings`. Each import transaction starts with it, so a rating the import writes
/// afterwards replaces an older one of the same pair, and one the service acknowledges
/// later (into the delta) replaces the import's.
const FOLD_DELTA: &str = "\
    INSERT INTO ratings (user_id, item_id, rating, ts) \
        SELECT user_id, item_id, rating, ts FROM ratings_delta WHERE rating IS NOT NULL \
        ORDER BY user_id, item_id \
        ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts; \
    DELETE FROM ratings WHERE (user_id, item_id) IN \
        (SELECT user_id, item_id FROM ratings_delta WHERE rating IS NULL); \
    DELETE FROM ratings_delta;";

async fn begin(conn: &mut SqliteConnection) -> anyhow::Result<()> {
    conn.execute("BEGIN IMMEDIATE").await?;
    conn.execute(sqlx::raw_sql(FOLD_DELTA)).await?;
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

struct Keys {
    map: HashMap<String, i64>,
    next: i64,
}

impl Keys {
    async fn load(conn: &mut SqliteConnection, table: &str) -> anyhow::Result<Keys> {
        let rows: Vec<(i64, String)> = sqlx::query_as(&format!("SELECT id, ext_id FROM {table}"))
            .fetch_all(&mut *conn)
            .await?;
        let next = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1;
        Ok(Keys {
            map: rows.into_iter().map(|(k, v)| (v, k)).collect(),
            next,
        })
    }

    /// Key of `id`, assigning the next one (and remembering it in `new`) when unseen.
    fn key(&mut self, id: &str, new: &mut Vec<(i64, String)>) -> i64 {
        if let Some(&k) = self.map.get(id) {
            return k;
        }
        let k = self.next;
        self.next += 1;
        self.map.insert(id.to_owned(), k);
        new.push((k, id.to_owned()));
        k
    }
}

async fn insert_keys(
    conn: &mut SqliteConnection,
    table: &str,
    new: &[(i64, String)],
) -> anyhow::Result<()> {
    for chunk in new.chunks(ROWS_PER_STATEMENT * 2) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO {table} (id, ext_id) "));
        qb.push_values(chunk, |mut b, (k, id)| {
            b.push_bind(*k).push_bind(id.as_str());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
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
    let mut users = Keys::load(&mut conn, "users").await?;
    let mut items = Keys::load(&mut conn, "items").await?;
    let mut stats = ImportStats::default();

    let mut new_users = Vec::new();
    let mut new_items = Vec::new();
    let mut chunk: Vec<(i64, i64, f32, i64)> = Vec::with_capacity(ROWS_PER_STATEMENT);
    let mut in_tx = 0usize;
    let mut pos_in_chunk: HashMap<(i64, i64), usize> = HashMap::with_capacity(ROWS_PER_STATEMENT);
    let mut rows = rows;
    begin(&mut conn).await?;
    loop {
        let row = rows.next().transpose().context("reading the input")?;
        if let Some(row) = &row {
            let u = users.key(&row.user, &mut new_users);
            let i = items.key(&row.item, &mut new_items);
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
            insert_keys(&mut conn, "users", &new_users).await?;
            insert_keys(&mut conn, "items", &new_items).await?;
            stats.new_users += new_users.len() as u64;
            stats.new_items += new_items.len() as u64;
            new_users.clear();
            new_items.clear();
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
