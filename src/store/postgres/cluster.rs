//! Several processes on one PostgreSQL database: model files stored in chunks, the shared retrain counters, notifications and the trainer's advisory lock.
//!
//! A published model goes into `model_chunk` (about [`CHUNK_BYTES`] a row, read from
//! its file a chunk at a time, so it is never held twice) in the transaction that
//! inserts its `model` row, with its SHA-256 in `model_blob`; that transaction also
//! sends `NOTIFY` on [`MODEL_CHANNEL`] with the version. A replica reads the chunks in
//! order into one buffer of the recorded size and checks the length and the SHA-256.

use super::PgStore;
use crate::store::{ModelRow, StoreError};
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, Postgres};
use std::path::Path;
use tokio::io::AsyncReadExt;

/// Bytes per `model_chunk` row.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Channel notified with the version of every published model.
pub const MODEL_CHANNEL: &str = "funkrec_model";
/// Channel notified on every `POST /v1/model/train` (any replica).
pub const TRAIN_CHANNEL: &str = "funkrec_train";
/// Channel of "the retired items or forgotten users changed" (payload: the item id),
/// sent in the transaction that retires an item; replicas reload their sets.
pub const FORGET_CHANNEL: &str = "funkrec_forget";
/// The advisory lock key of the trainer election ("funkrec" in ASCII).
const TRAINER_LOCK: i64 = 0x0066_756e_6b72_6563;

/// The retrain policy's shared counters (the `cluster_state` row).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClusterCounters {
    /// Rating writes and deletes committed by every replica.
    pub changes: u64,
    /// Train requests received by every replica.
    pub requests: u64,
    /// `changes` as of the start of the last finished run.
    pub changes_consumed: u64,
    /// `requests` as of the start of the last finished run.
    pub requests_consumed: u64,
    /// Seconds since the last finished run (None: none yet).
    pub secs_since_run: Option<f64>,
}

impl ClusterCounters {
    /// Changes not covered by a finished run.
    pub fn pending(&self) -> u64 {
        self.changes.saturating_sub(self.changes_consumed)
    }

    /// A train request arrived after the last finished run started.
    pub fn requested(&self) -> bool {
        self.requests > self.requests_consumed
    }
}

/// Why a stored model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No chunks are stored for the version (e.g. published before models were shared).
    #[error("model {0} is not stored in the database")]
    Missing(u64),
    /// The chunks do not add up to the recorded length or SHA-256.
    #[error("model {version} failed its checksum: {detail}")]
    Corrupt { version: u64, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for FetchError {
    fn from(e: sqlx::Error) -> Self {
        FetchError::Store(e.into())
    }
}

/// Inserts a `model` row inside a transaction; a row inserted as serving first turns
/// the serving row before it into a superseded one.
pub(super) async fn insert_model_row(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    row: &ModelRow,
) -> Result<(), StoreError> {
    if row.state == crate::store::MODEL_SERVING {
        sqlx::query("UPDATE model SET state = 'superseded' WHERE state = 'serving'")
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(&format!(
        "INSERT INTO model ({}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        crate::store::MODEL_COLUMNS
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// With a model published to serve: deletes the change log's rows below the oldest
/// transaction that was running when the model before it was published, and records
/// that bound as the log's floor (migration `0006_change_log.sql`). Every replica
/// serving that model or a later one scanned the database after that moment (to build
/// its rated-items index), so rows below it are visible in every such scan; a replica
/// that asks from below the floor learns it from its read (`changes.rs`).
async fn prune_change_log(tx: &mut sqlx::Transaction<'_, Postgres>) -> Result<(), StoreError> {
    let floor: i64 = sqlx::query_scalar(
        "UPDATE cluster_state SET change_floor = change_next, \
         change_next = pg_snapshot_xmin(pg_current_snapshot())::text::int8 \
         WHERE id = 1 RETURNING change_floor",
    )
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM change_log WHERE xid < $1")
        .bind(floor)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl PgStore {
    /// Stores a published model: its row, its file in chunks and their checksum, in
    /// one transaction that also notifies [`MODEL_CHANNEL`].
    pub(crate) async fn publish_model(&self, row: &ModelRow, file: &Path) -> anyhow::Result<()> {
        let mut f = tokio::fs::File::open(file).await?;
        let mut tx = self.pool.begin().await?;
        insert_model_row(&mut tx, row).await?;
        let mut sha = Sha256::new();
        let (mut total, mut chunks) = (0u64, 0i32);
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let mut filled = 0;
            while filled < CHUNK_BYTES {
                let n = f.read(&mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            sha.update(&buf[..filled]);
            sqlx::query("INSERT INTO model_chunk (version, chunk, data) VALUES ($1, $2, $3)")
                .bind(row.version)
                .bind(chunks)
                .bind(&buf[..filled])
                .execute(&mut *tx)
                .await?;
            total += filled as u64;
            chunks += 1;
        }
        let checksum = hex(&sha.finalize());
        sqlx::query(
            "INSERT INTO model_blob (version, bytes, checksum, chunks) VALUES ($1, $2, $3, $4)",
        )
        .bind(row.version)
        .bind(total as i64)
        .bind(&checksum)
        .bind(chunks)
        .execute(&mut *tx)
        .await?;
        if row.state == crate::store::MODEL_SERVING {
            prune_change_log(&mut tx).await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(MODEL_CHANNEL)
            .bind(row.version.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The bytes of a stored model, checked against its recorded length and SHA-256.
    pub(crate) async fn fetch_model(&self, version: u64) -> Result<Vec<u8>, FetchError> {
        let blob: Option<(i64, String, i32)> =
            sqlx::query_as("SELECT bytes, checksum, chunks FROM model_blob WHERE version = $1")
                .bind(version as i64)
                .fetch_optional(&self.pool)
                .await?;
        let Some((bytes, checksum, chunks)) = blob else {
            return Err(FetchError::Missing(version));
        };
        let corrupt = |detail: String| FetchError::Corrupt { version, detail };
        let mut buf = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
        let mut sha = Sha256::new();
        let mut seen = 0i32;
        let mut rows = sqlx::query_as::<_, (i32, Vec<u8>)>(
            "SELECT chunk, data FROM model_chunk WHERE version = $1 ORDER BY chunk",
        )
        .bind(version as i64)
        .fetch(&self.pool);
        while let Some((chunk, data)) = rows.try_next().await? {
            if chunk != seen {
                return Err(corrupt(format!("chunk {seen} is missing")));
            }
            if buf.len() + data.len() > buf.capacity() {
                return Err(corrupt(format!("longer than the recorded {bytes} bytes")));
            }
            sha.update(&data);
            buf.extend_from_slice(&data);
            seen += 1;
        }
        if seen != chunks || buf.len() as i64 != bytes {
            return Err(corrupt(format!(
                "{seen} chunks, {} bytes; recorded {chunks} chunks, {bytes} bytes",
                buf.len()
            )));
        }
        let actual = hex(&sha.finalize());
        if actual != checksum {
            return Err(corrupt(format!("SHA-256 {actual}, recorded {checksum}")));
        }
        Ok(buf)
    }

    /// Records a train request for whichever process trains, and notifies it.
    pub(crate) async fn request_train(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE cluster_state SET requests = requests + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(TRAIN_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn cluster_counters(&self) -> Result<ClusterCounters, StoreError> {
        let (changes, requests, changes_consumed, requests_consumed, secs): (
            i64,
            i64,
            i64,
            i64,
            Option<f64>,
        ) = sqlx::query_as(
            "SELECT changes + (SELECT COALESCE(SUM(changes), 0) FROM change_counts)::int8, \
             requests, changes_consumed, requests_consumed, \
             EXTRACT(EPOCH FROM now() - last_run_at)::float8 FROM cluster_state WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ClusterCounters {
            changes: changes as u64,
            requests: requests as u64,
            changes_consumed: changes_consumed as u64,
            requests_consumed: requests_consumed as u64,
            secs_since_run: secs,
        })
    }

    /// Marks what a finished run covered (the counters read when it started).
    pub(crate) async fn consume(&self, at_start: &ClusterCounters) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE cluster_state SET changes_consumed = GREATEST(changes_consumed, $1), \
             requests_consumed = GREATEST(requests_consumed, $2), last_run_at = now() WHERE id = 1",
        )
        .bind(at_start.changes as i64)
        .bind(at_start.requests as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A connection of its own listening on `channels` (reconnects by itself).
    pub(crate) async fn listen(&self, channels: &[&str]) -> Result<PgListener, StoreError> {
        let mut l = PgListener::connect_with(&self.pool).await?;
        l.listen_all(channels.iter().copied()).await?;
        Ok(l)
    }

    /// A dedicated connection for the trainer election (outside the pool).
    pub(crate) async fn lock_connection(&self) -> Result<TrainerLock, StoreError> {
        let opts = self.pool.connect_options();
        let conn = PgConnection::connect_with(&opts).await?;
        Ok(TrainerLock { conn, held: false })
    }
}

/// The connection that takes and holds the trainer's advisory lock. The lock lives
/// as long as the session: a killed process or a lost connection releases it.
pub struct TrainerLock {
    conn: PgConnection,
    held: bool,
}

impl TrainerLock {
    /// Tries to take the lock (never waits); true when this session holds it.
    pub async fn try_acquire(&mut self) -> Result<bool, StoreError> {
        self.held = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(TRAINER_LOCK)
            .fetch_one(&mut self.conn)
            .await?;
        Ok(self.held)
    }

    /// Checks that the session (and with it the lock) is still alive.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut self.conn).await?;
        Ok(())
    }

    /// Releases the lock and closes the session.
    pub async fn release(mut self) {
        if self.held {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(TRAINER_LOCK)
                .execute(&mut self.conn)
                .await;
        }
        let _ = self.conn.close().await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
