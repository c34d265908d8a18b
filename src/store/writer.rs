//! Group commit: one writer task takes the writes of concurrent requests from a channel and commits them in one transaction.
//!
//! SQLite has one writer at a time. Instead of every request opening its own write
//! transaction (and waiting on the busy timeout for the others), handlers send their
//! write to this task and wait for the answer. The task takes whatever is queued (up
//! to [`MAX_GROUP_RATINGS`] ratings), runs each request inside its own savepoint (so a
//! request that fails is rolled back alone and does not fail the others), commits
//! once, records the committed pairs in [`RecentWrites`] and only then answers each
//! request: an `Ok` means the transaction holding that request committed.

use super::{delete_in, upsert_in, Store, StoreError};
use crate::domain::{ItemId, NewRating, UserId};
use crate::rated::RecentWrites;
use sqlx::Connection;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Ratings per group commit (more wait for the next one).
pub const MAX_GROUP_RATINGS: usize = 20_000;
/// Requests waiting for the writer before senders wait for room.
const QUEUE: usize = 4096;

enum Op {
    Upsert(Vec<NewRating>),
    Delete(UserId, ItemId),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

impl Job {
    fn size(&self) -> usize {
        match &self.op {
            Op::Upsert(r) => r.len(),
            Op::Delete(..) => 1,
        }
    }
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// Owns the writer task: it ends once every [`Writer`] handle is dropped and the
/// queued writes are committed.
pub struct WriterTask {
    stop: oneshot::Sender<()>,
    join: JoinHandle<()>,
}

impl WriterTask {
    /// Refuses new writes, commits and answers the queued ones, and waits for the task.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.join.await {
            tracing::error!(error = %e, "writer task ended abnormally");
        }
    }
}

impl Writer {
    pub fn start(store: Store, recent: Arc<RecentWrites>) -> (Writer, WriterTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stop, stopped) = oneshot::channel();
        let join = tokio::spawn(run(store, recent, rx, stopped));
        (Writer { tx }, WriterTask { stop, join })
    }

    /// Stores a batch (all or nothing); Ok once its transaction committed.
    pub async fn upsert(&self, ratings: Vec<NewRating>) -> Result<(), StoreError> {
        self.submit(Op::Upsert(ratings)).await.map(|_| ())
    }

    /// Deletes one rating; Ok(false) when there was none.
    pub async fn delete(&self, user: UserId, item: ItemId) -> Result<bool, StoreError> {
        self.submit(Op::Delete(user, item)).await
    }

    async fn submit(&self, op: Op) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::PoolClosed)?;
        answer.await.map_err(|_| StoreError::PoolClosed)?
    }
}

async fn run(
    store: Store,
    recent: Arc<RecentWrites>,
    mut rx: mpsc::Receiver<Job>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut group: Vec<Job> = Vec::new();
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            job = rx.recv() => job,
            _ = &mut stop, if !stopping => {
                // new sends fail (503 unavailable); what is queued is still committed
                rx.close();
                stopping = true;
                continue;
            }
        };
        let Some(first) = next else { break };
        let mut size = first.size();
        group.push(first);
        while size < MAX_GROUP_RATINGS {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.size();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(&store, &recent, &mut group).await;
    }
    tracing::debug!("writer task stopped");
}

/// Commits a group: first as one combined upsert (a handful of statements for the
/// whole group, the common case); if that fails or the group holds a delete, every
/// job in its own savepoint, so only the failing ones fail. Then records and answers.
async fn commit_group(store: &Store, recent: &RecentWrites, group: &mut Vec<Job>) {
    if group.len() > 1 && group.iter().all(|j| matches!(j.op, Op::Upsert(_))) {
        let all: Vec<NewRating> = group
            .iter()
            .flat_map(|j| match &j.op {
                Op::Upsert(r) => r.iter().cloned(),
                Op::Delete(..) => [].iter().cloned(),
            })
            .collect();
        let combined: Result<(), StoreError> = async {
            let mut tx = store.pool.begin().await?;
            upsert_in(&mut tx, &all).await?;
            tx.commit().await
        }
        .await;
        match combined {
            Ok(()) => {
                let results = group.iter().map(|_| Ok(true)).collect();
                answer(recent, group, results);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "combined group upsert failed; one savepoint per request")
            }
        }
    }
    commit_each(store, recent, group).await;
}

/// Records the committed jobs (in order) and answers every job.
fn answer(recent: &RecentWrites, group: &mut Vec<Job>, results: Vec<Result<bool, StoreError>>) {
    for (job, r) in group.drain(..).zip(results) {
        if r.is_ok() {
            match &job.op {
                Op::Upsert(ratings) => recent.record(
                    ratings.iter().map(|r| (r.user.as_str(), r.item.as_str())),
                    true,
                ),
                Op::Delete(user, item) => {
                    if matches!(r, Ok(true)) {
                        recent.record([(user.as_str(), item.as_str())], false)
                    }
                }
            }
        }
        let _ = job.reply.send(r);
    }
}

/// Runs every job of the group in its own savepoint of one transaction, commits, then
/// records and answers. A failed commit fails every job of the group.
async fn commit_each(store: &Store, recent: &RecentWrites, group: &mut Vec<Job>) {
    let mut results: Vec<Result<bool, StoreError>> = Vec::with_capacity(group.len());
    let outcome: Result<(), StoreError> = async {
        let mut tx = store.pool.begin().await?;
        for job in group.iter() {
            let mut sp = tx.begin().await?;
            let r = match &job.op {
                Op::Upsert(ratings) => upsert_in(&mut sp, ratings).await.map(|_| true),
                Op::Delete(user, item) => delete_in(&mut sp, user, item).await,
            };
            match r {
                Ok(v) => {
                    sp.commit().await?;
                    results.push(Ok(v));
                }
                Err(e) => {
                    sp.rollback().await?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit().await
    }
    .await;
    match outcome {
        Ok(()) => answer(recent, group, results),
        Err(e) => {
            tracing::warn!(error = %e, requests = group.len(), "group commit failed");
            for job in group.drain(..) {
                let _ = job.reply.send(Err(same_kind(&e)));
            }
        }
    }
}

/// An error of the same kind for each request of a failed group (sqlx errors are not
/// `Clone`): unavailability stays unavailability (503), anything else is internal.
fn same_kind(e: &StoreError) -> StoreError {
    match e {
        StoreError::PoolTimedOut => StoreError::PoolTimedOut,
        StoreError::PoolClosed => StoreError::PoolClosed,
        StoreError::Io(io) => StoreError::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => StoreError::Protocol(format!("group commit failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::RatingValue;
    use crate::engine::Scale;

    fn rating(user: &str, item: &str, value: f32) -> NewRating {
        NewRating {
            user: UserId::parse(user).unwrap(),
            item: ItemId::parse(item).unwrap(),
            value: RatingValue::parse(value as f64, &Scale { min: 1.0, max: 5.0 }).unwrap(),
            timestamp: 1,
        }
    }

    /// Jobs queued together share one transaction; one that fails inside the database
    /// (here: a trigger refuses the rating 2.5) is rolled back alone.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_request_does_not_fail_the_others_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.storage.data_dir = dir.path().to_path_buf();
        let store = Store::connect(&settings).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER boom BEFORE INSERT ON ratings WHEN NEW.rating = 2.5 \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let recent = Arc::new(RecentWrites::new());
        let (writer, task) = Writer::start(store.clone(), recent.clone());
        // on this single-threaded runtime all three are queued before the writer runs
        let (a, bad, c) = tokio::join!(
            writer.upsert(vec![rating("u", "a", 4.0)]),
            writer.upsert(vec![rating("u", "x", 3.0), rating("u", "b", 2.5)]),
            writer.upsert(vec![rating("v", "c", 5.0)]),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        assert!(bad.unwrap_err().to_string().contains("boom"));
        assert_eq!(
            store.count_ratings().await.unwrap(),
            2,
            "u/x was rolled back with u/b"
        );
        assert_eq!(recent.seq(), 2, "only the committed requests are recorded");
        assert!(writer
            .delete(UserId::parse("u").unwrap(), ItemId::parse("a").unwrap())
            .await
            .unwrap());
        assert!(!writer
            .delete(UserId::parse("u").unwrap(), ItemId::parse("a").unwrap())
            .await
            .unwrap());
        drop(writer);
        task.finish().await;
        assert_eq!(store.count_ratings().await.unwrap(), 1);
    }
}
