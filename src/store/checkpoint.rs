//! WAL checkpoints off the writer thread: a background thread copies committed pages from the WAL into the database file.
//!
//! In WAL mode every commit appends the pages it changed to the `-wal` file; a
//! checkpoint copies them back into the database (and syncs both files), after which
//! the WAL starts over. SQLite runs one automatically in whichever connection commits
//! past 1,000 WAL pages, which puts the copying and two fsyncs on the group-commit
//! writer's critical path. Instead the writer pokes this thread after each commit and
//! it runs a PASSIVE checkpoint (it never blocks the writer or readers) at most every
//! [`MIN_INTERVAL`]. The writer keeps a high automatic threshold as a safety net, so
//! the WAL still cannot grow without bound if this thread falls behind.

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shortest time between two checkpoints.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest sleep without a poke (a checkpoint then runs anyway).
const IDLE: Duration = Duration::from_secs(5);
/// The writer's own automatic checkpoint threshold (pages): the safety net.
/// 65,536 pages (256 MiB of WAL) is high enough that it only runs to finish what this
/// thread has mostly copied already (the WAL can only start over after a checkpoint
/// that caught up with the writer, and a busy writer never lets this thread catch up).
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 65_536;
/// The WAL file is cut back to this size when it starts over.
pub(super) const JOURNAL_SIZE_LIMIT: i64 = 1 << 30;

/// Handle to the checkpoint thread.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    join: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} for checkpoints", path.display()))?;
        conn.busy_timeout(Duration::from_secs(1))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = std::thread::Builder::new()
            .name("funkrec-checkpoint".into())
            .spawn(move || run(conn, &flag))
            .context("starting the checkpoint thread")?;
        Ok(Checkpointer { stop, join })
    }

    /// Something was committed: checkpoint soon.
    pub(super) fn poke(&self) {
        self.join.thread().unpark();
    }

    /// Runs a last checkpoint and waits for the thread.
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.join.thread().unpark();
        if self.join.join().is_err() {
            tracing::error!("checkpoint thread panicked");
        }
    }
}

fn run(conn: Connection, stop: &AtomicBool) {
    loop {
        std::thread::park_timeout(IDLE);
        let last = stop.load(Ordering::Acquire);
        let started = Instant::now();
        checkpoint(&conn);
        if last {
            break;
        }
        std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed()));
    }
}

/// One PASSIVE checkpoint: copies what it can of the WAL into the database without
/// waiting for readers or the writer.
#[tracing::instrument(level = "trace", skip_all)]
fn checkpoint(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        Ok((wal, done)) => tracing::trace!(wal, done, "checkpoint"),
        Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
    }
}
