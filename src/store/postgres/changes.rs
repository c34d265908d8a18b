//! Read-your-writes checks across replicas: "did this user's ratings change after the scan?", answered from the change log that every writer appends to, read once per batch of questions.
//!
//! Every transaction that changes ratings appends one row to `change_log` (migration
//! `0006_change_log.sql`): its transaction id and the users it changed. A replica keeps
//! what it has read of the log in memory, per user, and asks the database only for the
//! rows added since its last read. Requests queue their question; a batcher takes
//! everything queued when a query slot is free and reads the log once for all of it
//! ([`MAX_BATCH`] questions, [`MAX_IN_FLIGHT`] reads at once). A question is answered
//! only by a read that started after it was asked, so every change acknowledged before
//! it, by any replica, is in the answer.
//!
//! Transaction ids are assigned in one order and committed in another. A read in
//! snapshot X has seen every committed row below X's xmin (no transaction below it was
//! still running), so the next read starts at that xmin and leaves out the rows at or
//! above it that are already held. Whether a change is in a scan is decided here from
//! the scan's snapshot, as `pg_visible_in_snapshot` would.

use crate::store::{ScanSnapshot, StoreError};
use foldhash::HashMap;
use sqlx::postgres::PgPool;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most questions answered by one read.
pub(crate) const MAX_BATCH: usize = 256;
/// Most reads of the log at once (each holds one pool connection). Fewer reads in
/// flight make larger batches: on 2 cores, 2 against 4 took the top-10's p99 at 64
/// connections from 5.49 to 4.10 ms (`docs/benchmarks.md`, "How many log reads at
/// once").
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Most held rows a read names to leave out; beyond that they are sent again.
const MAX_SKIP: usize = 1024;

/// One read: the oldest transaction running in its snapshot and the change floor
/// (`cluster_state`, first row: no users), then the rows at or above `$1` not in `$2`.
const READ: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8, \
     (SELECT change_floor FROM cluster_state WHERE id = 1), NULL::text[] \
     UNION ALL \
     SELECT xid, NULL, users FROM change_log WHERE xid >= $1 AND xid <> ALL($2)";

type Reply = oneshot::Sender<Result<Option<u64>, StoreError>>;

/// A row of [`READ`]: (transaction id, None, its users), or first (the read's xmin, the
/// change floor, None).
type LogRow = (i64, Option<i64>, Option<Vec<String>>);

struct Ask {
    user: String,
    snapshot: ScanSnapshot,
    reply: Reply,
}

/// The handle requests ask through (cheap to clone); the batcher task ends when the
/// last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct ChangeChecks {
    tx: mpsc::UnboundedSender<Ask>,
}

impl ChangeChecks {
    /// Starts the batcher on the current tokio runtime, with at most `in_flight`
    /// reads at once.
    pub(crate) fn spawn(pool: PgPool, in_flight: usize) -> ChangeChecks {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Log::default()));
        tokio::spawn(batcher(pool, log, rx, in_flight.clamp(1, MAX_IN_FLIGHT)));
        ChangeChecks { tx }
    }

    /// None when every change of `user` is visible in `snapshot`; otherwise a tag that
    /// a further change of the user replaces (equal tags: the same changes).
    pub(crate) async fn ask(
        &self,
        user: &str,
        snapshot: &ScanSnapshot,
    ) -> Result<Option<u64>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            user: user.to_owned(),
            snapshot: snapshot.clone(),
            reply,
        };
        self.tx.send(ask).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn batcher(
    pool: PgPool,
    log: Arc<Mutex<Log>>,
    mut rx: mpsc::UnboundedReceiver<Ask>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before draining: what queues meanwhile joins this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            answer(&pool, &log, batch).await;
            drop(slot);
        });
    }
}

/// Reads the log once for `batch` and replies to each question.
async fn answer(pool: &PgPool, log: &Mutex<Log>, batch: Vec<Ask>) {
    // the questions of a batch almost always name one snapshot: parsed once
    let mut snapshots: Vec<Arc<Option<Snap>>> = Vec::with_capacity(batch.len());
    for (n, ask) in batch.iter().enumerate() {
        let parsed = match n.checked_sub(1).map(|p| &batch[p].snapshot) {
            Some(prev) if *prev == ask.snapshot => Arc::clone(&snapshots[n - 1]),
            _ => Arc::new(Snap::parse(&ask.snapshot)),
        };
        snapshots.push(parsed);
    }
    let Some(oldest) = snapshots
        .iter()
        .filter_map(|s| s.as_ref().as_ref())
        .map(|s| s.xmin)
        .min()
    else {
        return fail(batch, None);
    };
    let (from, skip) = lock(log).plan(oldest);
    let rows: Result<Vec<LogRow>, StoreError> = sqlx::query_as(READ)
        .bind(from as i64)
        .bind(&skip)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from);
    let mut log = lock(log);
    if let Err(e) = rows.and_then(|rows| log.merge(from, rows)) {
        return fail(batch, Some(e));
    }
    log.prune(oldest);
    for (ask, snap) in batch.into_iter().zip(&snapshots) {
        let reply = match snap.as_ref() {
            Some(s) => Ok(log.changed(&ask.user, s)),
            None => Err(unreadable(&ask.snapshot)),
        };
        let _ = ask.reply.send(reply);
    }
}

/// Replies `error` to every question (None: each one's snapshot is unreadable).
fn fail(batch: Vec<Ask>, error: Option<StoreError>) {
    for ask in batch {
        let e = error.clone().unwrap_or_else(|| unreadable(&ask.snapshot));
        let _ = ask.reply.send(Err(e));
    }
}

fn unreadable(snapshot: &ScanSnapshot) -> StoreError {
    StoreError::Internal(format!("unreadable scan snapshot {:?}", snapshot.0))
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// A scan's snapshot as PostgreSQL writes it (`xmin:xmax:xip,…`).
#[derive(Debug, PartialEq)]
struct Snap {
    xmin: u64,
    xmax: u64,
    running: Vec<u64>,
}

impl Snap {
    fn parse(s: &ScanSnapshot) -> Option<Snap> {
        let mut parts = s.0.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        if parts.next().is_some() || xmax < xmin {
            return None;
        }
        Some(Snap {
            xmin,
            xmax,
            running,
        })
    }

    /// Whether a committed transaction's changes are visible in the snapshot.
    fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.running.contains(&xid))
    }
}

/// What this replica has read of the change log.
#[derive(Debug)]
struct Log {
    /// Every committed row with `from <= xid < next` has been read (and those read at
    /// or above `next` are in `held`); `u64::MAX` before the first read.
    from: u64,
    next: u64,
    /// The transaction ids of the rows held (in order: a read names those at or above
    /// where it starts, a handful).
    held: BTreeSet<u64>,
    /// Per user, each held change: (transaction id, tag).
    users: HashMap<String, Vec<(u64, u64)>>,
    /// The last tag given: every row read gets a new one.
    tag: u64,
    /// A read found rows below this deleted before this replica read them: a snapshot
    /// whose xmin is below it cannot be answered from the log (every user counts as
    /// changed, each time with a new tag).
    hole: u64,
    /// The xmins of the two newest snapshots asked about; rows below both are dropped.
    recent: [u64; 2],
}

impl Default for Log {
    fn default() -> Log {
        Log {
            from: u64::MAX,
            next: u64::MAX,
            held: BTreeSet::new(),
            users: HashMap::default(),
            tag: 0,
            hole: 0,
            recent: [0; 2],
        }
    }
}

impl Log {
    /// Where the next read starts, for questions about snapshots whose oldest xmin is
    /// `oldest`, and the held rows at or above it to leave out.
    fn plan(&self, oldest: u64) -> (u64, Vec<i64>) {
        let from = if oldest < self.from {
            oldest
        } else {
            self.next
        };
        let mut skip: Vec<i64> = self
            .held
            .range(from..)
            .take(MAX_SKIP + 1)
            .map(|&x| x as i64)
            .collect();
        if skip.len() > MAX_SKIP {
            skip.clear();
        }
        (from, skip)
    }

    /// Takes in a read that started at `from`.
    fn merge(&mut self, from: u64, rows: Vec<LogRow>) -> Result<(), StoreError> {
        let mut xmin = None;
        for (xid, floor, users) in rows {
            let Some(users) = users else {
                let floor = floor.unwrap_or(0) as u64;
                if floor > from {
                    // rows in [from, floor) may have been deleted unread
                    self.hole = self.hole.max(floor);
                }
                xmin = Some(xid as u64);
                continue;
            };
            let xid = xid as u64;
            if !self.held.insert(xid) {
                continue;
            }
            self.tag += 1;
            for user in users {
                self.users.entry(user).or_default().push((xid, self.tag));
            }
        }
        let Some(xmin) = xmin else {
            return Err(StoreError::Internal(
                "change log read without its snapshot".into(),
            ));
        };
        self.from = self.from.min(from);
        self.next = match self.next {
            u64::MAX => xmin,
            next => next.max(xmin),
        };
        Ok(())
    }

    /// Notes a snapshot asked about; rows visible in both of the two newest (every row
    /// below the older one's xmin) are no longer needed.
    fn prune(&mut self, xmin: u64) {
        if xmin <= self.recent[0] {
            return;
        }
        self.recent = [xmin, self.recent[0]];
        let below = self.recent[1];
        if below <= self.from || self.from == u64::MAX {
            return;
        }
        self.held = self.held.split_off(&below);
        self.users.retain(|_, changes| {
            changes.retain(|&(x, _)| x >= below);
            !changes.is_empty()
        });
        self.from = below;
    }

    /// The answer for `user` and a scan in `snap` (read up to date).
    fn changed(&mut self, user: &str, snap: &Snap) -> Option<u64> {
        if snap.xmin < self.hole {
            self.tag += 1;
            return Some(self.tag);
        }
        self.users
            .get(user)?
            .iter()
            .filter(|&&(xid, _)| !snap.sees(xid))
            .map(|&(_, tag)| tag)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(s: &str) -> Snap {
        Snap::parse(&ScanSnapshot(s.into())).unwrap()
    }

    fn row(xid: i64, users: &[&str]) -> LogRow {
        (
            xid,
            None,
            Some(users.iter().map(|u| u.to_string()).collect()),
        )
    }

    fn head(xmin: i64, floor: i64) -> LogRow {
        (xmin, Some(floor), None)
    }

    #[test]
    fn snapshots_parse_and_see_as_postgresql_does() {
        let s = snap("10:20:12,15");
        assert!(s.sees(9) && s.sees(11) && s.sees(19));
        assert!(!s.sees(12) && !s.sees(15) && !s.sees(20) && !s.sees(25));
        assert_eq!(snap("7:7:").running, Vec::<u64>::new());
        for bad in ["", "1", "1:2", "x:2:", "3:2:", "1:2:3:4", "1:5:a"] {
            assert!(Snap::parse(&ScanSnapshot(bad.into())).is_none(), "{bad}");
        }
    }

    /// A transaction with a lower id that commits after a read at a later xmin is
    /// still found: the next read starts at that read's xmin.
    #[test]
    fn a_late_commit_below_the_last_row_is_read_next_time() {
        let mut log = Log::default();
        let s = snap("100:100:");
        let (from, skip) = log.plan(s.xmin);
        assert_eq!((from, skip.len()), (100, 0));
        // 105 committed, 104 still running: the read's xmin is 104
        log.merge(from, vec![head(104, 0), row(105, &["b"])])
            .unwrap();
        let tag_b = log.changed("b", &s).unwrap();
        assert_eq!(log.changed("a", &s), None);
        let (from, skip) = log.plan(s.xmin);
        assert_eq!((from, skip), (104, vec![105]));
        log.merge(from, vec![head(106, 0), row(104, &["a", "b"])])
            .unwrap();
        assert!(log.changed("a", &s).is_some());
        assert_ne!(
            log.changed("b", &s),
            Some(tag_b),
            "a further change, a new tag"
        );
        // a later snapshot that sees both: nothing changed
        assert_eq!(log.changed("a", &snap("106:106:")), None);
        // one that was taken while 104 ran: a changed, b's 105 only if not seen
        assert!(log.changed("a", &snap("104:106:104")).is_some());
    }

    #[test]
    fn rows_deleted_unread_make_every_user_changed_until_a_newer_snapshot() {
        let mut log = Log::default();
        let old = snap("50:50:");
        let (from, _) = log.plan(old.xmin);
        log.merge(from, vec![head(60, 0)]).unwrap();
        // idle; meanwhile rows below 80 were deleted
        let (from, _) = log.plan(old.xmin);
        assert_eq!(from, 60);
        log.merge(from, vec![head(90, 80)]).unwrap();
        let (t1, t2) = (log.changed("x", &old), log.changed("x", &old));
        assert!(t1.is_some() && t1 != t2, "never cached: {t1:?} {t2:?}");
        assert_eq!(log.changed("x", &snap("85:85:")), None);
    }

    #[test]
    fn rows_seen_by_both_newest_snapshots_are_dropped_and_read_again_if_asked() {
        let mut log = Log::default();
        let (from, _) = log.plan(10);
        log.merge(from, vec![head(30, 0), row(12, &["a"]), row(25, &["b"])])
            .unwrap();
        log.prune(10);
        log.prune(20);
        assert_eq!(log.users.len(), 2, "below 10 only");
        log.prune(28);
        assert_eq!(log.from, 20);
        assert!(!log.users.contains_key("a") && log.users.contains_key("b"));
        // an older snapshot asked again: read from its xmin
        assert_eq!(log.plan(10).0, 10);
        assert_eq!(log.plan(28).0, 30);
    }
}
