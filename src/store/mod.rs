//! The ratings store: every SQL statement lives here, behind the [`Store`] boundary.
//!
//! Handlers and the worker only see [`Store`]'s methods and plain data types,
//! never a pool or a query. Today the backend is SQLite (`sqlite.rs` holds the
//! connection setup and migrations); a PostgreSQL backend slots in behind the
//! same methods. The SQL itself sticks to the portable subset
//! (`INSERT .. ON CONFLICT .. DO UPDATE`, `LIMIT/OFFSET`, no `RETURNING`).

mod bulk;
mod scan;
mod sqlite;
mod writer;

pub use bulk::{ImportRow, ImportStats};
pub use writer::{Writer, WriterTask};

use crate::config::Settings;
use crate::domain::{ItemId, NewRating, UserId};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{QueryBuilder, Sqlite};
use std::collections::HashMap;

/// Rows per multi-row INSERT (4 binds each, well under SQLite's 32766).
const ROWS_PER_INSERT: usize = 1000;

/// Errors from the store are sqlx errors (mapped to HTTP in `error.rs`).
pub type StoreError = sqlx::Error;

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

/// One stored rating of a user.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StoredRating {
    pub item: String,
    pub rating: f32,
    pub timestamp: i64,
}

/// All ratings with database keys, as the trainer loads them.
#[derive(Debug, Default)]
pub struct TrainingRows {
    /// (database key, external id)
    pub users: Vec<(i64, String)>,
    pub items: Vec<(i64, String)>,
    /// (user key, item key, rating), ordered by (user key, item key); 12 bytes
    /// a rating, so 100 M ratings fit in 1.2 GB.
    pub ratings: Vec<(u32, u32, f32)>,
}

/// A row of the `model` table: metadata of one published snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub version: i64,
    pub file: String,
    pub trained_at: String,
    pub trainer: String,
    pub n_users: i64,
    pub n_items: i64,
    pub n_ratings: i64,
    pub n_holdout: i64,
    pub train_rmse: Option<f64>,
    pub holdout_rmse: Option<f64>,
    pub train_secs: f64,
}

impl Store {
    /// Opens (creating the data directory and database if needed) and migrates.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&settings.storage.data_dir)?;
        let pool =
            sqlite::connect(&settings.database_url(), settings.storage.max_connections).await?;
        Ok(Store { pool })
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `SELECT 1`: is the database reachable?
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Writes a batch in one transaction: all or nothing. Within the batch a
    /// later rating of the same (user, item) pair replaces an earlier one.
    /// (The service writes through [`Writer`], which groups concurrent requests.)
    pub async fn upsert_ratings(&self, ratings: &[NewRating]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        upsert_in(&mut tx, ratings).await?;
        tx.commit().await
    }

    /// A page of a user's ratings (ordered by item key) and the user's total.
    pub async fn list_ratings(
        &self,
        user: &UserId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<StoredRating>, u64), StoreError> {
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ratings r JOIN users u ON u.id = r.user_id WHERE u.ext_id = ?",
        )
        .bind(user.as_str())
        .fetch_one(&self.pool)
        .await?;
        let rows: Vec<(String, f64, i64)> = sqlx::query_as(
            "SELECT i.ext_id, r.rating, r.ts FROM ratings r \
             JOIN users u ON u.id = r.user_id JOIN items i ON i.id = r.item_id \
             WHERE u.ext_id = ? ORDER BY r.item_id LIMIT ? OFFSET ?",
        )
        .bind(user.as_str())
        .bind(limit as i64)
        .bind(offset.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await?;
        let ratings = rows
            .into_iter()
            .map(|(item, rating, timestamp)| StoredRating {
                item,
                rating: rating as f32,
                timestamp,
            })
            .collect();
        Ok((ratings, total as u64))
    }

    /// Deletes one rating; false when there was none.
    pub async fn delete_rating(&self, user: &UserId, item: &ItemId) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        delete_in(&mut conn, user, item).await
    }

    /// External ids of every item the user has rated (as of now, not as of the model).
    pub async fn rated_items(&self, user: &UserId) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT i.ext_id FROM ratings r JOIN users u ON u.id = r.user_id \
             JOIN items i ON i.id = r.item_id WHERE u.ext_id = ?",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
    }

    /// Damped-mean popularity straight from the store (the fallback before any
    /// model exists): (s_i + m·μ)/(n_i + m) with m = 10, best first, skipping
    /// the items `exclude_user` rated and the item `exclude_item`.
    pub async fn popular(
        &self,
        n: usize,
        exclude_user: Option<&UserId>,
        exclude_item: Option<&ItemId>,
    ) -> Result<Vec<(String, f32)>, StoreError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT i.ext_id, (SUM(r.rating) + 10.0 * (SELECT AVG(rating) FROM ratings)) / (COUNT(*) + 10.0) AS score \
             FROM ratings r JOIN items i ON i.id = r.item_id \
             WHERE r.item_id NOT IN (SELECT r2.item_id FROM ratings r2 JOIN users u ON u.id = r2.user_id WHERE u.ext_id = ?) \
             AND i.ext_id <> ? \
             GROUP BY r.item_id, i.ext_id ORDER BY score DESC, r.item_id LIMIT ?",
        )
        .bind(exclude_user.map(|u| u.as_str()).unwrap_or(""))
        .bind(exclude_item.map(|i| i.as_str()).unwrap_or(""))
        .bind(n.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(i, s)| (i, s as f32)).collect())
    }

    pub async fn count_ratings(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ratings")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// True when the store holds at least one rating (cheap, unlike a count).
    pub async fn has_ratings(&self) -> Result<bool, StoreError> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM ratings LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(any.is_some())
    }

    /// Everything the trainer needs, read in one transaction so users, items and
    /// ratings are one consistent snapshot even while ratings keep arriving
    /// (on a dedicated connection, off the async runtime: see `scan.rs`).
    pub async fn load_training_rows(&self) -> anyhow::Result<TrainingRows> {
        let path = self.pool.connect_options().get_filename().to_owned();
        tokio::task::spawn_blocking(move || scan::training_rows(&path)).await?
    }

    pub async fn insert_model_row(&self, row: &ModelRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO model (version, file, trained_at, trainer, n_users, n_items, n_ratings, \
             n_holdout, train_rmse, holdout_rmse, train_secs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.version)
        .bind(&row.file)
        .bind(&row.trained_at)
        .bind(&row.trainer)
        .bind(row.n_users)
        .bind(row.n_items)
        .bind(row.n_ratings)
        .bind(row.n_holdout)
        .bind(row.train_rmse)
        .bind(row.holdout_rmse)
        .bind(row.train_secs)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Every recorded snapshot, newest first.
    pub async fn model_rows(&self) -> Result<Vec<ModelRow>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            String,
            i64,
            i64,
            i64,
            i64,
            Option<f64>,
            Option<f64>,
            f64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT version, file, trained_at, trainer, n_users, n_items, n_ratings, n_holdout, \
             train_rmse, holdout_rmse, train_secs FROM model ORDER BY version DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ModelRow {
                version: r.0,
                file: r.1,
                trained_at: r.2,
                trainer: r.3,
                n_users: r.4,
                n_items: r.5,
                n_ratings: r.6,
                n_holdout: r.7,
                train_rmse: r.8,
                holdout_rmse: r.9,
                train_secs: r.10,
            })
            .collect())
    }

    /// Bulk load for `funkrec import` (see `bulk.rs`).
    pub async fn bulk_import<I>(
        &self,
        rows: I,
        on_progress: &mut dyn FnMut(u64),
    ) -> anyhow::Result<ImportStats>
    where
        I: Iterator<Item = anyhow::Result<ImportRow>>,
    {
        bulk::import(&self.pool, rows, on_progress).await
    }
}

/// Upserts a batch on `conn` (inside the caller's transaction). Within the batch a
/// later rating of the same (user, item) pair replaces an earlier one.
async fn upsert_in(conn: &mut SqliteConnection, ratings: &[NewRating]) -> Result<(), StoreError> {
    // Last one wins inside the batch (also keeps one statement from touching a row twice).
    let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(ratings.len());
    for (i, r) in ratings.iter().enumerate() {
        last.insert((r.user.as_str(), r.item.as_str()), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();

    let users = intern(conn, "users", ratings.iter().map(|r| r.user.as_str())).await?;
    let items = intern(conn, "items", ratings.iter().map(|r| r.item.as_str())).await?;
    for chunk in keep.chunks(ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO ratings (user_id, item_id, rating, ts) ");
        qb.push_values(chunk, |mut b, &i| {
            let r = &ratings[i];
            b.push_bind(users[r.user.as_str()])
                .push_bind(items[r.item.as_str()])
                .push_bind(r.value.get() as f64)
                .push_bind(r.timestamp);
        });
        qb.push(
            " ON CONFLICT (user_id, item_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes one rating on `conn`; false when there was none.
async fn delete_in(
    conn: &mut SqliteConnection,
    user: &UserId,
    item: &ItemId,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "DELETE FROM ratings WHERE user_id = (SELECT id FROM users WHERE ext_id = ?) \
         AND item_id = (SELECT id FROM items WHERE ext_id = ?)",
    )
    .bind(user.as_str())
    .bind(item.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Inserts the distinct `ids` into `table` (ignoring ones already there) and
/// returns the key of each.
async fn intern<'a>(
    conn: &mut SqliteConnection,
    table: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<HashMap<&'a str, i64>, StoreError> {
    let mut distinct: Vec<&str> = ids.collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut keys = HashMap::with_capacity(distinct.len());
    for chunk in distinct.chunks(ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO {table} (ext_id) "));
        qb.push_values(chunk, |mut b, id| {
            b.push_bind(*id);
        });
        qb.push(" ON CONFLICT (ext_id) DO NOTHING");
        qb.build().execute(&mut *conn).await?;

        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT id, ext_id FROM {table} WHERE ext_id IN ("));
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        qb.push(")");
        let rows: Vec<(i64, String)> = qb.build_query_as().fetch_all(&mut *conn).await?;
        for (key, ext) in rows {
            if let Ok(pos) = chunk.binary_search(&ext.as_str()) {
                keys.insert(chunk[pos], key);
            }
        }
    }
    Ok(keys)
}
