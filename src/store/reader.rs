//! Point reads on the serving path of the SQLite backend (a user's ratings, for fold-in): read-only rusqlite connections with cached statements, run on the blocking pool.
//!
//! sqlx's SQLite driver runs each query on its connection's worker thread and hands
//! every row back to the async side through a channel: for a fold-in, which reads
//! the ~100–200 ratings of one user, the hand-offs cost several times the query.
//! Here the whole query runs in one blocking task on a connection of its own (WAL:
//! readers never wait for the writer), and the rows come back as one `Vec`.

use crate::store::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reads running at once (more wait for a turn), and so connections kept open.
const MAX_READERS: usize = 4;
/// As the pool's: how long a read waits on a lock (only a checkpoint that resets
/// the WAL can hold one) before it fails as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-only connections to one SQLite file.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per running read: bounds the blocking threads and connections.
    /// (held by the blocking task, so a caller that gives up does not free it early)
    turns: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("path", &self.path).finish()
    }
}

impl Readers {
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
        })
    }

    /// Runs `read` on a read-only connection, on the blocking pool.
    pub async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let turn = Arc::clone(&self.turns)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            this.run_blocking(read)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task: {e}")))?
    }

    /// Refuses reads from now on (they fail as [`StoreError::Closed`]) and closes the
    /// idle connections; a read still running closes its connection when it ends.
    pub fn close(&self) {
        self.turns.close();
        self.idle.lock().unwrap().clear();
    }

    fn run_blocking<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap().pop();
        let conn = match taken {
            Some(c) => c,
            None => self.open().map_err(|e| StoreError::from(&e))?,
        };
        let out = read(&conn).map_err(|e| StoreError::from(&e));
        // a connection whose read failed is dropped (it may be in a bad state), and so
        // is every connection once the readers are closed
        if out.is_ok() && !self.turns.is_closed() {
            self.idle.lock().unwrap().push(conn);
        }
        out
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_reuse_connections_see_later_commits_and_stop_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let w = Connection::open(&path).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let readers = Readers::new(path);
        let count = |r: &Arc<Readers>| {
            let r = Arc::clone(r);
            async move {
                r.run(|c| c.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0)))
                    .await
            }
        };
        assert_eq!(count(&readers).await.unwrap(), 1);
        w.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert_eq!(
            count(&readers).await.unwrap(),
            2,
            "a commit after the first read"
        );
        assert_eq!(
            readers.idle.lock().unwrap().len(),
            1,
            "one connection, reused"
        );
        readers.close();
        assert!(readers.idle.lock().unwrap().is_empty());
        assert!(matches!(count(&readers).await, Err(StoreError::Closed)));
    }
}
