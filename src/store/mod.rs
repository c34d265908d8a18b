//! The ratings store: every SQL statement lives here, behind the [`Store`] boundary.
//!
//! Handlers and the worker only see [`Store`]'s methods and plain data types,
//! never a pool or a query, nor which backend runs: `storage.database_url` picks
//! SQLite (`sqlite.rs`: the default, a file in the data directory) or PostgreSQL
//! (`postgres/`). Each method dispatches on the backend; the SQLite SQL lives in
//! this file and its submodules, the PostgreSQL SQL in `postgres/`. Both behave the
//! same: `tests/store_contract.rs` runs every operation against both.

mod bulk;
mod checkpoint;
mod error;
mod keys;
mod lock;
mod postgres;
mod reader;
mod scan;
mod sqlite;
mod writer;

pub use bulk::{ImportRow, ImportStats};
pub use error::StoreError;
pub use postgres::cluster::{
    ClusterCounters, FetchError, TrainerLock, CHUNK_BYTES, FORGET_CHANNEL, MODEL_CHANNEL,
    TRAIN_CHANNEL,
};
pub use writer::{Writer, WriterTask};

use crate::config::Settings;
use crate::domain::{ItemId, UserId};
use serde::Serialize;
use sqlx::sqlite::SqlitePool;
use tracing::field::Empty;

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

/// The database behind a [`Store`].
#[derive(Clone, Debug)]
enum Backend {
    /// The pool, and the blocking readers of the serving path's point reads.
    Sqlite(SqlitePool, std::sync::Arc<reader::Readers>),
    Postgres(postgres::PgStore),
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
    /// The database snapshot the rows were read in, when the backend can later say
    /// which users changed after it (PostgreSQL with `storage.check_user_changes`).
    pub snapshot: Option<ScanSnapshot>,
}

/// The database snapshot a training scan read in (PostgreSQL's `pg_current_snapshot()`,
/// as text): [`Store::changed_since`] asks whether a user's ratings changed after it,
/// on any replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScanSnapshot(pub(crate) String);

/// A row of the `model` table: metadata of one published snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
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
    /// [`MODEL_SERVING`], [`MODEL_SUPERSEDED`] or [`MODEL_REJECTED`].
    pub state: String,
    /// Why the publish gate rejected the version (None otherwise).
    pub reason: Option<String>,
}

/// The version the service serves (at most one row has this state).
pub const MODEL_SERVING: &str = "serving";
/// Published once; another version serves now.
pub const MODEL_SUPERSEDED: &str = "superseded";
/// Refused by the publish gate; never served.
pub const MODEL_REJECTED: &str = "rejected";

/// The columns of a [`ModelRow`], in its order (both backends select them).
const MODEL_COLUMNS: &str = "version, file, trained_at, trainer, n_users, n_items, n_ratings, \
     n_holdout, train_rmse, holdout_rmse, train_secs, state, reason";

impl Store {
    /// Opens and migrates the database of `storage.database_url`: PostgreSQL for a
    /// `postgres://` URL, otherwise SQLite (creating the data directory and the
    /// file if needed). An unsupported scheme or an unreachable server is an error
    /// that names the URL without its password.
    #[tracing::instrument(skip_all, fields(database = %crate::config::redact_url(&settings.database_url())))]
    pub async fn connect(settings: &Settings) -> anyhow::Result<Store> {
        let url = settings.database_url();
        let backend = if postgres::is_postgres_url(&url) {
            Backend::Postgres(
                postgres::PgStore::connect(&url, settings.storage.max_connections)
                    .await?
                    .with_change_check(settings.storage.check_user_changes),
            )
        } else {
            std::fs::create_dir_all(&settings.storage.data_dir)?;
            let pool = sqlite::connect(&url, settings.storage.max_connections).await?;
            let path = pool.connect_options().get_filename().to_owned();
            Backend::Sqlite(pool, reader::Readers::new(path))
        };
        Ok(Store { backend })
    }

    /// Which backend runs: `"sqlite"` or `"postgres"` (for logs, metrics and readiness).
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(..) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The SQLite pool, or the PostgreSQL store (the caller runs its own SQL for that).
    fn sqlite(&self) -> Result<&SqlitePool, &postgres::PgStore> {
        match &self.backend {
            Backend::Sqlite(pool, _) => Ok(pool),
            Backend::Postgres(pg) => Err(pg),
        }
    }

    /// The database file of the SQLite backend (the writer and the training scan open
    /// their own connections to it); None on PostgreSQL.
    fn path(&self) -> Option<std::path::PathBuf> {
        self.sqlite()
            .ok()
            .map(|pool| pool.connect_options().get_filename().to_owned())
    }

    /// Closes the pool (waits for connections to be returned) and, on SQLite, the
    /// serving path's readers.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool, readers) => {
                readers.close();
                pool.close().await
            }
            Backend::Postgres(pg) => pg.close().await,
        }
    }

    /// `SELECT 1`: is the database reachable?
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.ping().await,
        };
        sqlx::query("SELECT 1").execute(pool).await?;
        Ok(())
    }

    /// The database key of a user id (None: the user has never been written).
    async fn user_key(&self, pool: &SqlitePool, user: &UserId) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM users WHERE ext_id = ?")
            .bind(user.as_str())
            .fetch_optional(pool)
            .await?)
    }

    /// A page of a user's ratings (ordered by item key) and the user's total.
    #[tracing::instrument(level = "debug", skip_all, fields(user = user.as_str(), limit = limit, offset = offset, total = Empty))]
    pub async fn list_ratings(
        &self,
        user: &UserId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<StoredRating>, u64), StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.list_ratings(user, limit, offset).await,
        };
        let Some(key) = self.user_key(pool, user).await? else {
            return Ok((Vec::new(), 0));
        };
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ratings_now WHERE user_id = ?")
            .bind(key)
            .fetch_one(pool)
            .await?;
        let rows: Vec<(String, f64, i64)> = sqlx::query_as(
            "SELECT i.ext_id, r.rating, r.ts FROM ratings_now r JOIN items i ON i.id = r.item_id \
             WHERE r.user_id = ? ORDER BY r.item_id LIMIT ? OFFSET ?",
        )
        .bind(key)
        .bind(limit as i64)
        .bind(offset.min(i64::MAX as u64) as i64)
        .fetch_all(pool)
        .await?;
        tracing::Span::current().record("total", total);
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

    /// External ids of every item the user has rated (as of now, not as of the model).
    #[tracing::instrument(level = "debug", skip_all, fields(user = user.as_str(), items = Empty))]
    pub async fn rated_items(&self, user: &UserId) -> Result<Vec<String>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.rated_items(user).await,
        };
        let Some(key) = self.user_key(pool, user).await? else {
            return Ok(Vec::new());
        };
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT i.ext_id FROM ratings_now r JOIN items i ON i.id = r.item_id WHERE r.user_id = ?",
        )
        .bind(key)
        .fetch_all(pool)
        .await?;
        tracing::Span::current().record("items", items.len());
        Ok(items)
    }

    /// Every rating of the user as of now, (item id, rating): what fold-in solves from.
    #[tracing::instrument(level = "debug", skip_all, fields(user = user.as_str(), items = Empty))]
    pub async fn user_ratings(&self, user: &UserId) -> Result<Vec<(String, f32)>, StoreError> {
        let readers = match &self.backend {
            Backend::Sqlite(_, readers) => readers,
            Backend::Postgres(pg) => return pg.user_ratings(user).await,
        };
        let user = user.as_str().to_owned();
        let rows = readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT i.ext_id, r.rating FROM ratings_now r JOIN items i ON i.id = r.item_id \
                     WHERE r.user_id = (SELECT id FROM users WHERE ext_id = ?1)",
                )?;
                let rows = stmt.query_map([&user], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)? as f32))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        tracing::Span::current().record("items", rows.len());
        Ok(rows)
    }

    /// The damped mean (s_i + m·μ)/(n_i + m), m = 10, of an item as of now, or the
    /// global mean μ when nobody rated it (None when the store holds no rating): the
    /// prediction before any model exists.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn damped_mean(&self, item: &ItemId) -> Result<Option<f32>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.damped_mean(item).await,
        };
        let row: (Option<f64>, Option<f64>, i64) = sqlx::query_as(
            "SELECT (SELECT AVG(rating) FROM ratings_now), \
             (SELECT SUM(r.rating) FROM ratings_now r JOIN items i ON i.id = r.item_id WHERE i.ext_id = ?1), \
             (SELECT COUNT(*) FROM ratings_now r JOIN items i ON i.id = r.item_id WHERE i.ext_id = ?1)",
        )
        .bind(item.as_str())
        .fetch_one(pool)
        .await?;
        damped(row)
    }

    /// Damped-mean popularity straight from the store (the fallback before any
    /// model exists): (s_i + m·μ)/(n_i + m) with m = 10, best first, skipping
    /// the items `exclude_user` rated and the item `exclude_item`.
    #[tracing::instrument(level = "debug", skip_all, fields(n = n))]
    pub async fn popular(
        &self,
        n: usize,
        exclude_user: Option<&UserId>,
        exclude_item: Option<&ItemId>,
    ) -> Result<Vec<(String, f32)>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.popular(n, exclude_user, exclude_item).await,
        };
        let user_key = match exclude_user {
            Some(u) => self.user_key(pool, u).await?,
            None => None,
        };
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT i.ext_id, (SUM(r.rating) + 10.0 * (SELECT AVG(rating) FROM ratings_now)) / (COUNT(*) + 10.0) AS score \
             FROM ratings_now r JOIN items i ON i.id = r.item_id \
             WHERE r.item_id NOT IN (SELECT item_id FROM ratings_now WHERE user_id = ?) \
             AND i.ext_id <> ? \
             GROUP BY r.item_id, i.ext_id ORDER BY score DESC, r.item_id LIMIT ?",
        )
        .bind(user_key.unwrap_or(0))
        .bind(exclude_item.map(|i| i.as_str()).unwrap_or(""))
        .bind(n.min(i64::MAX as usize) as i64)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|(i, s)| (i, s as f32)).collect())
    }

    /// How many ratings there are: the table's count corrected by the delta (its new
    /// pairs added, its deletions of stored pairs taken off), so the cost is one
    /// count of the big table plus a probe per delta row.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn count_ratings(&self) -> Result<u64, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.count_ratings().await,
        };
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM ratings) \
             + (SELECT COUNT(*) FROM ratings_delta d WHERE d.rating IS NOT NULL AND NOT EXISTS \
                (SELECT 1 FROM ratings r WHERE r.user_id = d.user_id AND r.item_id = d.item_id)) \
             - (SELECT COUNT(*) FROM ratings_delta d WHERE d.rating IS NULL AND EXISTS \
                (SELECT 1 FROM ratings r WHERE r.user_id = d.user_id AND r.item_id = d.item_id))",
        )
        .fetch_one(pool)
        .await?;
        Ok(n as u64)
    }

    /// True when the store holds at least one rating (cheap, unlike a count).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn has_ratings(&self) -> Result<bool, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.has_ratings().await,
        };
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM ratings_now LIMIT 1")
            .fetch_optional(pool)
            .await?;
        Ok(any.is_some())
    }

    /// Everything the trainer needs, read in one transaction so users, items and
    /// ratings are one consistent snapshot even while ratings keep arriving
    /// (on a dedicated connection, off the async runtime: see `scan.rs`).
    #[tracing::instrument(skip_all, fields(users = Empty, items = Empty, ratings = Empty))]
    pub async fn load_training_rows(&self) -> anyhow::Result<TrainingRows> {
        let rows = match &self.backend {
            Backend::Sqlite(pool, _) => {
                let path = pool.connect_options().get_filename().to_owned();
                tokio::task::spawn_blocking(move || scan::training_rows(&path)).await??
            }
            Backend::Postgres(pg) => pg.training_rows().await?,
        };
        let rows = without_retired(rows, &self.retired_items().await?);
        let span = tracing::Span::current();
        span.record("users", rows.users.len());
        span.record("items", rows.items.len());
        span.record("ratings", rows.ratings.len());
        Ok(rows)
    }

    /// Whether `user`'s ratings changed after the scan that read in `snapshot`, by any
    /// process on the database: the id of the latest such change (a PostgreSQL
    /// transaction id), None when nothing changed since. One indexed query. Snapshots
    /// exist only on PostgreSQL, so on SQLite this is always None.
    #[tracing::instrument(level = "debug", skip_all, fields(user = user.as_str()))]
    pub async fn changed_since(
        &self,
        user: &UserId,
        snapshot: &ScanSnapshot,
    ) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(..) => Ok(None),
            Backend::Postgres(pg) => pg.changed_since(user, snapshot).await,
        }
    }

    /// Records a model version's metadata. A row whose state is [`MODEL_SERVING`]
    /// takes over serving in the same transaction (the serving row before it becomes
    /// [`MODEL_SUPERSEDED`]); a [`MODEL_REJECTED`] row changes nothing else.
    #[tracing::instrument(skip_all, fields(version = row.version, state = %row.state))]
    pub async fn insert_model_row(&self, row: &ModelRow) -> Result<(), StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.insert_model_row(row).await,
        };
        let mut tx = pool.begin().await?;
        if row.state == MODEL_SERVING {
            sqlx::query("UPDATE model SET state = 'superseded' WHERE state = 'serving'")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO model ({MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
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
        .bind(&row.state)
        .bind(&row.reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every recorded model version, newest first.
    #[tracing::instrument(level = "debug", skip_all, fields(rows = Empty))]
    pub async fn model_rows(&self) -> Result<Vec<ModelRow>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.model_rows().await,
        };
        let rows: Vec<ModelRow> = sqlx::query_as(&format!(
            "SELECT {MODEL_COLUMNS} FROM model ORDER BY version DESC"
        ))
        .fetch_all(pool)
        .await?;
        tracing::Span::current().record("rows", rows.len());
        Ok(rows)
    }

    /// Every retired item's id (`DELETE /v1/items/{item}`).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn retired_items(&self) -> Result<Vec<String>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.retired_items().await,
        };
        Ok(sqlx::query_scalar("SELECT item_ext FROM retired_items")
            .fetch_all(pool)
            .await?)
    }

    /// Every forgotten user not yet covered by a served snapshot, with its row's tag
    /// (`DELETE /v1/users/{user}`, see `crate::forget`).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn forgotten_users(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.forgotten_users().await,
        };
        Ok(sqlx::query_as("SELECT user_ext, tag FROM forgotten_users")
            .fetch_all(pool)
            .await?)
    }

    /// Deletes the forgotten-user rows (user, tag) a served snapshot covers; a row
    /// rewritten since (another tag) stays.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn clear_forgotten(&self, users: &[(String, i64)]) -> Result<(), StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.clear_forgotten(users).await,
        };
        let mut tx = pool.begin().await?;
        for (user, tag) in users {
            sqlx::query("DELETE FROM forgotten_users WHERE user_ext = ? AND tag = ?")
                .bind(user)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The version whose state is [`MODEL_SERVING`] (None: no version serves yet).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn serving_version(&self) -> Result<Option<u64>, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.serving_version().await,
        };
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM model WHERE state = 'serving'")
                .fetch_optional(pool)
                .await?;
        Ok(v.map(|v| v as u64))
    }

    /// Makes `version` the serving one, in one transaction: the serving row before it
    /// becomes [`MODEL_SUPERSEDED`]. False (and nothing changed) when no row has that
    /// version.
    #[tracing::instrument(skip_all, fields(version = version))]
    pub async fn set_serving(&self, version: u64) -> Result<bool, StoreError> {
        let pool = match self.sqlite() {
            Ok(pool) => pool,
            Err(pg) => return pg.set_serving(version).await,
        };
        let version = version.min(i64::MAX as u64) as i64;
        let mut tx = pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM model WHERE version = ?")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE model SET state = 'superseded' WHERE state = 'serving' AND version <> ?",
        )
        .bind(version)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE model SET state = 'serving', reason = NULL WHERE version = ?")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Bulk load for `funkrec import` (see `bulk.rs`), holding the store's lock
    /// exclusively: refused at once while a server (or another import) uses the store.
    #[tracing::instrument(skip_all, fields(rows = Empty, new_users = Empty, new_items = Empty))]
    pub async fn bulk_import<I>(
        &self,
        rows: I,
        on_progress: &mut dyn FnMut(u64),
    ) -> anyhow::Result<ImportStats>
    where
        I: Iterator<Item = anyhow::Result<ImportRow>>,
    {
        let stats = match &self.backend {
            Backend::Sqlite(pool, _) => {
                let path = pool.connect_options().get_filename().to_owned();
                let _lock = lock::StoreLock::for_import(&path)?;
                bulk::import(pool, rows, on_progress).await?
            }
            Backend::Postgres(pg) => pg.bulk_import(rows, on_progress).await?,
        };
        let span = tracing::Span::current();
        span.record("rows", stats.rows);
        span.record("new_users", stats.new_users);
        span.record("new_items", stats.new_items);
        Ok(stats)
    }
}

/// Notifications on the channels a [`Store::listen`] subscribed to (PostgreSQL).
pub struct Notifications(sqlx::postgres::PgListener);

impl Notifications {
    /// The next notification's (channel, payload). After a lost connection the
    /// listener reconnects (and listens again) on the next call; notifications sent
    /// meanwhile are lost, which is why every listener also polls.
    pub async fn recv(&mut self) -> Result<(String, String), StoreError> {
        let n = self.0.recv().await?;
        Ok((n.channel().to_owned(), n.payload().to_owned()))
    }
}

/// Several processes on one database (PostgreSQL; see `postgres/cluster.rs`).
impl Store {
    /// The PostgreSQL store, or an error naming `what` for SQLite.
    fn postgres(&self, what: &str) -> Result<&postgres::PgStore, StoreError> {
        match &self.backend {
            Backend::Postgres(pg) => Ok(pg),
            Backend::Sqlite(..) => Err(StoreError::Internal(format!(
                "{what} needs PostgreSQL (one process owns an SQLite store)"
            ))),
        }
    }

    /// Records a published model: on PostgreSQL its `model` row, its file (read in
    /// chunks) and checksum in one transaction that notifies the replicas; on SQLite
    /// the row alone (the file stays the only copy).
    #[tracing::instrument(skip_all, fields(version = row.version))]
    pub async fn publish_model(
        &self,
        row: &ModelRow,
        file: &std::path::Path,
    ) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Postgres(pg) => pg.publish_model(row, file).await,
            Backend::Sqlite(..) => Ok(self.insert_model_row(row).await?),
        }
    }

    /// A stored model's file bytes, checked against its length and SHA-256. SQLite
    /// stores no model bytes (its files are the models): always `Missing` there.
    #[tracing::instrument(skip_all, fields(version = version))]
    pub async fn fetch_model(&self, version: u64) -> Result<Vec<u8>, FetchError> {
        match &self.backend {
            Backend::Postgres(pg) => pg.fetch_model(version).await,
            Backend::Sqlite(..) => Err(FetchError::Missing(version)),
        }
    }

    /// Records a train request in the database and notifies the trainer (PostgreSQL).
    pub async fn request_train(&self) -> Result<(), StoreError> {
        self.postgres("a shared train request")?
            .request_train()
            .await
    }

    /// The shared retrain counters (PostgreSQL).
    pub async fn cluster_counters(&self) -> Result<ClusterCounters, StoreError> {
        self.postgres("the shared retrain counters")?
            .cluster_counters()
            .await
    }

    /// Marks the counters read when a run started as covered by it (PostgreSQL).
    pub async fn consume_counters(&self, at_start: &ClusterCounters) -> Result<(), StoreError> {
        self.postgres("the shared retrain counters")?
            .consume(at_start)
            .await
    }

    /// Listens on `channels` on a connection of its own (PostgreSQL).
    pub async fn listen(&self, channels: &[&str]) -> Result<Notifications, StoreError> {
        let l = self.postgres("LISTEN")?.listen(channels).await?;
        Ok(Notifications(l))
    }

    /// A dedicated connection for the trainer election (PostgreSQL).
    pub async fn trainer_lock(&self) -> Result<TrainerLock, StoreError> {
        self.postgres("the trainer election")?
            .lock_connection()
            .await
    }
}

/// The damped mean from (global mean, the item's sum, the item's count), m = 10;
/// None when the store holds no rating (both backends answer `damped_mean` with it).
fn damped(row: (Option<f64>, Option<f64>, i64)) -> Result<Option<f32>, StoreError> {
    let Some(mu) = row.0 else {
        return Ok(None);
    };
    let (sum, n) = (row.1.unwrap_or(0.0), row.2 as f64);
    Ok(Some(((sum + 10.0 * mu) / (n + 10.0)) as f32))
}

/// The rows without the retired items and their ratings (a rating of a retired item
/// can only be one committed concurrently with its retirement: the next training run
/// leaves it out).
fn without_retired(mut rows: TrainingRows, retired: &[String]) -> TrainingRows {
    if retired.is_empty() {
        return rows;
    }
    let retired: std::collections::HashSet<&str> = retired.iter().map(String::as_str).collect();
    let keys: std::collections::HashSet<u32> = rows
        .items
        .iter()
        .filter(|(_, id)| retired.contains(id.as_str()))
        .filter_map(|(k, _)| u32::try_from(*k).ok())
        .collect();
    if keys.is_empty() {
        return rows;
    }
    rows.items.retain(|(_, id)| !retired.contains(id.as_str()));
    rows.ratings.retain(|(_, i, _)| !keys.contains(i));
    rows
}
