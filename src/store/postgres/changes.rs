//! Read-your-writes checks across replicas: "did this user's ratings change after the scan?", batched so that concurrent requests share one query.
//!
//! Every request that serves a known user asks it (migration `0005_user_changes.sql`).
//! One query per request costs a round trip and a backend's CPU each, which at 64
//! connections is most of a top-10's cost. Here requests queue their question; a
//! batcher takes everything queued when a query slot is free and asks for all of it
//! at once (`ext_id = ANY($1)`, one primary-key probe per user). Under no load a
//! batch is a single user, so nothing waits; under load, batches grow while the
//! slots are busy (at most [`MAX_BATCH`] users, [`MAX_IN_FLIGHT`] queries at once).

use crate::store::{ScanSnapshot, StoreError};
use sqlx::postgres::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most users asked in one query.
pub(crate) const MAX_BATCH: usize = 256;
/// Most change queries running at once (each holds one pool connection).
pub(crate) const MAX_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Option<u64>, StoreError>>;

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
    /// queries at once.
    pub(crate) fn spawn(pool: PgPool, in_flight: usize) -> ChangeChecks {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(pool, rx, in_flight.clamp(1, MAX_IN_FLIGHT)));
        ChangeChecks { tx }
    }

    /// The id of the latest transaction that changed `user`'s ratings and is not
    /// visible in `snapshot`; None when every change of the user is in the scan.
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

async fn batcher(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Ask>, in_flight: usize) {
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
        tokio::spawn(async move {
            answer(&pool, batch).await;
            drop(slot);
        });
    }
}

/// Asks for every user of `batch` (one query per distinct snapshot, almost always
/// one) and replies to each asker.
async fn answer(pool: &PgPool, batch: Vec<Ask>) {
    let mut by_snapshot: HashMap<ScanSnapshot, Vec<Ask>> = HashMap::new();
    for ask in batch {
        by_snapshot
            .entry(ask.snapshot.clone())
            .or_default()
            .push(ask);
    }
    for (snapshot, asks) in by_snapshot {
        let mut users: Vec<&str> = asks.iter().map(|a| a.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let result: Result<Vec<(String, i64)>, StoreError> = sqlx::query_as(
            "SELECT ext_id, xid::text::int8 FROM user_changes \
             WHERE ext_id = ANY($1) AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot)",
        )
        .bind(&users)
        .bind(&snapshot.0)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from);
        match result {
            Ok(rows) => {
                let changed: HashMap<String, u64> =
                    rows.into_iter().map(|(u, x)| (u, x as u64)).collect();
                for ask in asks {
                    let _ = ask.reply.send(Ok(changed.get(&ask.user).copied()));
                }
            }
            Err(e) => {
                for ask in asks {
                    let _ = ask.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
