//! SQLite connection setup: WAL journal, busy timeout, migrations from `migrations/sqlite`.

use anyhow::{bail, Context};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::str::FromStr;
use std::time::Duration;

/// Opens the pool (creating the file) and applies pending migrations.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let shown = crate::config::redact_url(url);
    if !url.starts_with("sqlite:") {
        bail!(
            "unsupported database URL {shown:?}: storage.database_url must be empty, \
             sqlite://FILE or postgres://USER@HOST:PORT/DATABASE"
        );
    }
    let opts = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("bad database URL {shown:?}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode: a committed transaction survives a process crash.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .with_context(|| format!("opening database {shown}"))?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .context("applying database migrations")?;
    Ok(pool)
}
