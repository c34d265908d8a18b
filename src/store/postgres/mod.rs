//! The PostgreSQL backend: connection pool, migrations from `migrations/postgres` and the read queries (writer, scan and import in submodules).

mod bulk;
mod changes;
pub(crate) mod cluster;
mod scan;
pub(super) mod writer;

use super::{
    ImportRow, ImportStats, ModelRow, ScanSnapshot, StoreError, StoredRating, TrainingRows,
};
use crate::config::redact_url;
use crate::domain::{ItemId, UserId};
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// True for a `postgres://` or `postgresql://` URL.
pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The PostgreSQL store: a pool (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pool: PgPool,
    /// `storage.check_user_changes`: training scans record their snapshot, so that
    /// readers can ask which users changed since (`changed_since`).
    check_changes: bool,
    /// Batches the `changed_since` questions of concurrent requests.
    changes: changes::ChangeChecks,
}

impl PgStore {
    /// Connects (failing at once, with the URL's password hidden, when the server
    /// does not answer) and applies pending migrations (`sqlx` takes an advisory lock
    /// for that, so replicas starting together migrate once).
    pub(crate) async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgStore> {
        let shown = redact_url(url);
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| {
                anyhow::anyhow!(
                    "bad database URL {shown:?}: {}",
                    redact_message(&e.to_string(), url)
                )
            })?
            .application_name("funkrec");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening database {shown}: {}",
                    redact_message(&e.to_string(), url)
                )
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        let changes = changes::ChangeChecks::spawn(pool.clone(), max_connections as usize / 2);
        Ok(PgStore {
            pool,
            check_changes: true,
            changes,
        })
    }

    /// Whether training scans record their snapshot for [`PgStore::changed_since`].
    pub(crate) fn with_change_check(mut self, on: bool) -> PgStore {
        self.check_changes = on;
        self
    }

    /// None when every change of `user`'s ratings is visible in `snapshot`; otherwise
    /// (a change committed after the scan, or in progress during it) a tag that the
    /// user's next change replaces. Concurrent questions share one read of the change
    /// log ([`changes`]).
    pub(crate) async fn changed_since(
        &self,
        user: &UserId,
        snapshot: &ScanSnapshot,
    ) -> Result<Option<u64>, StoreError> {
        self.changes.ask(user.as_str(), snapshot).await
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn list_ratings(
        &self,
        user: &UserId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<StoredRating>, u64), StoreError> {
        let Some(key) = self.user_key(user).await? else {
            return Ok((Vec::new(), 0));
        };
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ratings WHERE user_id = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        let rows: Vec<(String, f64, i64)> = sqlx::query_as(
            "SELECT i.ext_id, r.rating, r.ts FROM ratings r JOIN items i ON i.id = r.item_id \
             WHERE r.user_id = $1 ORDER BY r.item_id LIMIT $2 OFFSET $3",
        )
        .bind(key)
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

    async fn user_key(&self, user: &UserId) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM users WHERE ext_id = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub(crate) async fn rated_items(&self, user: &UserId) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT i.ext_id FROM ratings r JOIN items i ON i.id = r.item_id \
             WHERE r.user_id = (SELECT id FROM users WHERE ext_id = $1)",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    pub(crate) async fn user_ratings(
        &self,
        user: &UserId,
    ) -> Result<Vec<(String, f32)>, StoreError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT i.ext_id, r.rating FROM ratings r JOIN items i ON i.id = r.item_id \
             WHERE r.user_id = (SELECT id FROM users WHERE ext_id = $1)",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(i, r)| (i, r as f32)).collect())
    }

    /// As SQLite's: the item's damped mean, or μ for an unrated item, None with no ratings.
    pub(crate) async fn damped_mean(&self, item: &ItemId) -> Result<Option<f32>, StoreError> {
        let row: (Option<f64>, Option<f64>, i64) = sqlx::query_as(
            "SELECT (SELECT AVG(rating)::float8 FROM ratings), \
             (SELECT SUM(r.rating)::float8 FROM ratings r JOIN items i ON i.id = r.item_id WHERE i.ext_id = $1), \
             (SELECT COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id WHERE i.ext_id = $1)",
        )
        .bind(item.as_str())
        .fetch_one(&self.pool)
        .await?;
        super::damped(row)
    }

    /// As SQLite's: (s_i + m·μ)/(n_i + m) with m = 10, best first.
    pub(crate) async fn popular(
        &self,
        n: usize,
        exclude_user: Option<&UserId>,
        exclude_item: Option<&ItemId>,
    ) -> Result<Vec<(String, f32)>, StoreError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT i.ext_id, ((SUM(r.rating) + 10.0 * (SELECT AVG(rating) FROM ratings)) \
                 / (COUNT(*) + 10.0))::float8 AS score \
             FROM ratings r JOIN items i ON i.id = r.item_id \
             WHERE r.item_id NOT IN (SELECT item_id FROM ratings WHERE user_id = \
                 (SELECT id FROM users WHERE ext_id = $1)) \
             AND i.ext_id <> $2 \
             GROUP BY r.item_id, i.ext_id ORDER BY score DESC, r.item_id LIMIT $3",
        )
        .bind(exclude_user.map(|u| u.as_str()).unwrap_or(""))
        .bind(exclude_item.map(|i| i.as_str()).unwrap_or(""))
        .bind(n.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(i, s)| (i, s as f32)).collect())
    }

    pub(crate) async fn count_ratings(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ratings")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    pub(crate) async fn has_ratings(&self) -> Result<bool, StoreError> {
        let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM ratings LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(any.is_some())
    }

    pub(crate) async fn training_rows(&self) -> anyhow::Result<TrainingRows> {
        scan::training_rows(&self.pool, self.check_changes).await
    }

    pub(crate) async fn insert_model_row(&self, row: &ModelRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        cluster::insert_model_row(&mut tx, row).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn model_rows(&self) -> Result<Vec<ModelRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM model ORDER BY version DESC",
            super::MODEL_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub(crate) async fn retired_items(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT item_ext FROM retired_items")
            .fetch_all(&self.pool)
            .await?)
    }

    pub(crate) async fn forgotten_users(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as("SELECT user_ext, tag FROM forgotten_users")
            .fetch_all(&self.pool)
            .await?)
    }

    pub(crate) async fn clear_forgotten(&self, users: &[(String, i64)]) -> Result<(), StoreError> {
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        let tags: Vec<i64> = users.iter().map(|(_, t)| *t).collect();
        sqlx::query(
            "DELETE FROM forgotten_users f USING unnest($1::text[], $2::int8[]) AS c(u, t) \
             WHERE f.user_ext = c.u AND f.tag = c.t",
        )
        .bind(names)
        .bind(tags)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn serving_version(&self) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM model WHERE state = 'serving'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.map(|v| v as u64))
    }

    pub(crate) async fn set_serving(&self, version: u64) -> Result<bool, StoreError> {
        let version = version.min(i64::MAX as u64) as i64;
        let mut tx = self.pool.begin().await?;
        // Row lock: a concurrent set_serving of another version waits for this one.
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT version FROM model WHERE version = $1 FOR UPDATE")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE model SET state = 'superseded' WHERE state = 'serving' AND version <> $1",
        )
        .bind(version)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE model SET state = 'serving', reason = NULL WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        // the replicas follow the serving row: tell them now, not at their next poll
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(cluster::MODEL_CHANNEL)
            .bind(version.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn bulk_import<I>(
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

/// A driver message with the URL's password (if it quoted one) hidden.
fn redact_message(message: &str, url: &str) -> String {
    match crate::config::url_password(url) {
        Some(pw) if !pw.is_empty() => message.replace(pw, "***"),
        _ => message.to_owned(),
    }
}
