//! The retrain policy on a shared database: the counters of every replica, read from the database, acted on only by the elected trainer.
//!
//! Every [`POLL`] (and on a train notification or a change of leadership) the loop
//! reads the `cluster_state` row. The leader starts a run on a recorded train
//! request, on `training.retrain_after_ratings` changes not covered by a finished
//! run, on `training.retrain_interval_secs` since the last finished run (with
//! changes, or with no model), or once per leadership term when there is no model
//! but there are ratings (`training.train_on_start`). A run that ends (published,
//! skipped or failed) marks the counters it started from as consumed; a cancelled
//! one (lost leadership, shutdown) does not, so the next leader runs it again.

use super::{RunOutcome, Worker};
use crate::store::ClusterCounters;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the counters are read.
const POLL: Duration = Duration::from_secs(1);

/// Why the elected trainer starts a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Requested,
    Changes,
    Interval,
    NoModel,
    /// The serving model was cut short by its time budget and the full run that
    /// follows it never published (its trainer died, or the cluster restarted).
    CutShort,
}

impl Worker {
    #[tracing::instrument(name = "worker", skip_all)]
    pub(super) async fn cluster_loop(self) {
        let inner = &self.inner;
        let cluster = inner.cluster.clone();
        let mut leader = cluster.subscribe_leader();
        // when this process became leader (None: it is not)
        let mut term_start: Option<Instant> = None;
        let mut checked_start = false;
        loop {
            tokio::select! {
                biased;
                _ = inner.cancel.cancelled() => break,
                _ = cluster.notified() => {}
                _ = leader.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            let counters = match inner.store.cluster_counters().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the retrain counters");
                    continue;
                }
            };
            inner
                .shared_pending
                .store(counters.pending(), Ordering::Release);
            if !cluster.is_leader() {
                (term_start, checked_start) = (None, false);
                continue;
            }
            let since_term = term_start.get_or_insert_with(Instant::now).elapsed();
            let first = !std::mem::replace(&mut checked_start, true);
            let Some(reason) = self.shared_reason(&counters, since_term, first).await else {
                continue;
            };
            tracing::info!(
                ?reason,
                pending = counters.pending(),
                "starting a training run"
            );
            match inner.store.model_rows().await {
                Ok(rows) => {
                    let max = rows.iter().map(|r| r.version as u64).max().unwrap_or(0);
                    inner.last_version.fetch_max(max, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the model versions; run postponed");
                    continue;
                }
            }
            let outcome = self.run_once().await;
            if outcome != RunOutcome::Cancelled {
                if let Err(e) = inner.store.consume_counters(&counters).await {
                    tracing::warn!(error = %e, "could not mark the retrain counters consumed");
                }
            }
            if inner.cancel.is_cancelled() {
                break;
            }
        }
        tracing::info!("training worker stopped");
    }

    /// The retrain policy on the shared counters: why to run now, if at all.
    async fn shared_reason(
        &self,
        c: &ClusterCounters,
        since_term: Duration,
        first_of_term: bool,
    ) -> Option<Reason> {
        let t = &self.inner.settings.training;
        if c.requested() {
            return Some(Reason::Requested);
        }
        if t.retrain_after_ratings > 0 && c.pending() >= t.retrain_after_ratings {
            return Some(Reason::Changes);
        }
        let store = &self.inner.store;
        let no_model = || async { matches!(store.serving_version().await, Ok(None)) };
        if t.retrain_interval_secs > 0 {
            let since_run = c.secs_since_run.unwrap_or(since_term.as_secs_f64());
            if since_run >= t.retrain_interval_secs as f64 && (c.pending() > 0 || no_model().await)
            {
                return Some(Reason::Interval);
            }
        }
        if first_of_term
            && t.train_on_start
            && no_model().await
            && matches!(store.has_ratings().await, Ok(true))
        {
            return Some(Reason::NoModel);
        }
        let cut_short = || {
            self.inner
                .serving
                .get()
                .is_some_and(|s| s.model.report.cut_short)
        };
        if first_of_term && t.train_on_start && cut_short() {
            return Some(Reason::CutShort);
        }
        None
    }
}
