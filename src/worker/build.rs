//! One training run as a pure computation: store rows in, an unpublished snapshot out.

use super::dataset::split_for;
use crate::config::Settings;
use crate::rated::RatedIndex;
use crate::snapshot::{self, Rated, Snapshot};
use crate::store::TrainingRows;
use funkrec_engine::topn::ItemIndex;
use funkrec_engine::EpochStats;
use std::ops::ControlFlow;
use std::sync::OnceLock;

/// Why a run's epoch callback ends it early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Shutdown or lost leadership: the partial model is discarded.
    Cancel,
    /// The time budget is spent: the model (the best epoch so far, under early
    /// stopping) is built and marked `cut_short`.
    Budget,
}

/// A trained, unpublished snapshot and what the publish gate compares it with.
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    /// The RMSE of the `baseline` model (the serving one) on this run's holdout
    /// (None without a baseline or without a holdout).
    pub baseline_rmse: Option<f64>,
}

/// Trains a model on `rows` (holdout split, rated-items index, training with early
/// stopping on the holdout, holdout RMSE, top-N index) and returns it as snapshot
/// `version`, complete up to write sequence number `since`, with the RMSE of
/// `baseline` on the same holdout. Reads and writes nothing: publication is the
/// caller's. `on_epoch` sees every epoch and can end the run: [`Stop::Cancel`] returns
/// `Ok(None)`, [`Stop::Budget`] builds the model trained so far.
pub fn build_snapshot(
    rows: TrainingRows,
    settings: &Settings,
    version: u64,
    since: u64,
    baseline: Option<&funkrec_engine::Model>,
    on_epoch: &mut dyn FnMut(&EpochStats) -> ControlFlow<Stop>,
) -> Result<Option<Built>, funkrec_engine::EngineError> {
    let t = &settings.training;
    let n_total = rows.ratings.len() as u64;
    let split = split_for(
        &rows,
        t.holdout_fraction,
        t.holdout_max,
        t.holdout_seed,
        baseline,
    );
    let (mut data, holdout) = (split.data, split.holdout);
    let baseline_rmse = baseline
        .zip(split.holdout_for.as_deref())
        .filter(|(_, h)| !h.is_empty())
        .map(|(m, h)| funkrec_engine::train::rmse_of(m, h));
    // the model's id maps are the training set's
    let rated = RatedIndex::build(&rows, &data.users, &data.items);
    let scan_snapshot = rows.snapshot.clone();
    drop(rows);
    let validation = (!holdout.is_empty()).then_some(holdout.as_slice());
    let mut stopped = None;
    let mut callback = |e: &EpochStats| match on_epoch(e) {
        ControlFlow::Continue(()) => ControlFlow::Continue(()),
        ControlFlow::Break(why) => {
            stopped = Some(why);
            ControlFlow::Break(())
        }
    };
    // In place: no second copy of the ratings (1.2 GB at Netflix size).
    let mut model =
        funkrec_engine::train_in_place(&mut data, &settings.model, validation, &mut callback)?;
    drop(data);
    match stopped {
        Some(Stop::Cancel) => return Ok(None),
        Some(Stop::Budget) => model.report.cut_short = true,
        None => {}
    }
    let holdout_rmse = validation.map(|v| funkrec_engine::train::rmse_of(&model, v));
    let snapshot = Snapshot {
        version,
        trained_at: snapshot::rfc3339(time::OffsetDateTime::now_utc()),
        index: ItemIndex::new(&model),
        model,
        holdout_rmse,
        n_holdout: holdout.len(),
        n_ratings_total: n_total,
        rated: OnceLock::from(Rated {
            since,
            snapshot: scan_snapshot,
            index: rated,
        }),
        folded: Default::default(),
        lists: Default::default(),
    };
    Ok(Some(Built {
        snapshot,
        baseline_rmse,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two taste groups over 12 items, every pair rated.
    fn rows() -> TrainingRows {
        let users = (1..=30).map(|k| (k, format!("u{k}"))).collect();
        let items = (1..=12).map(|k| (k, format!("i{k}"))).collect();
        let mut ratings = Vec::new();
        for u in 1..=30u32 {
            for i in 1..=12u32 {
                let likes = (u % 2 == 0) == (i <= 6);
                ratings.push((u, i, if likes { 5.0 } else { 1.0 }));
            }
        }
        TrainingRows {
            users,
            items,
            ratings,
            ..Default::default()
        }
    }

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.model = funkrec_engine::Hyper {
            factors: 4,
            epochs: 60,
            lr: 0.02,
            lr_bias: 0.02,
            lr_decay: 1.0,
            ..s.model
        };
        s.training.holdout_fraction = 0.05;
        // every epoch: on this toy set the holdout RMSE plateaus for the first epochs
        // (early stopping has its own tests in the engine)
        s.model.patience = 0;
        s
    }

    #[test]
    fn builds_a_snapshot_that_learned_the_rows() {
        let s = settings();
        let mut epochs = 0;
        let built = build_snapshot(rows(), &s, 7, 3, None, &mut |_| {
            epochs += 1;
            ControlFlow::Continue(())
        })
        .unwrap()
        .expect("not stopped");
        assert_eq!(built.baseline_rmse, None);
        let snap = built.snapshot;
        assert_eq!(epochs, snap.model.report.epochs.len());
        assert!(epochs <= s.model.total_epochs());
        assert_eq!((snap.version, snap.n_ratings_total), (7, 360));
        assert!((5..=40).contains(&snap.n_holdout), "{}", snap.n_holdout);
        assert_eq!(snap.model.n_items(), 12);
        let rmse = snap.holdout_rmse.expect("a holdout was drawn");
        assert!(rmse < 0.5, "holdout RMSE {rmse}");
        let rated = snap.rated.get().expect("rated index set");
        assert_eq!(rated.since, 3);
        let u2 = snap.model.users.get("u2");
        assert!(rated.index.items("u2", u2).len() >= 10);
    }

    #[test]
    fn the_baseline_is_scored_on_the_same_holdout() {
        let s = settings();
        let first = build_snapshot(rows(), &s, 1, 0, None, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .unwrap()
            .snapshot;
        let second = build_snapshot(rows(), &s, 2, 0, Some(&first.model), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        // same rows, same seeds: the same holdout and the same model, so the same RMSE
        let (a, b) = (
            second.baseline_rmse.unwrap(),
            second.snapshot.holdout_rmse.unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        assert_eq!(first.holdout_rmse, second.snapshot.holdout_rmse);
    }

    #[test]
    fn a_stopped_run_builds_nothing() {
        let mut seen = 0;
        let out = build_snapshot(rows(), &settings(), 1, 0, None, &mut |e| {
            seen = e.epoch;
            if e.epoch == 2 {
                ControlFlow::Break(Stop::Cancel)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(out.is_none());
        assert_eq!(seen, 2, "stopped at the epoch that asked");
    }

    #[test]
    fn a_run_out_of_time_builds_what_it_has() {
        let mut s = settings();
        s.model.patience = 100; // keeps the best epoch, never stops by itself
        let built = build_snapshot(rows(), &s, 1, 0, None, &mut |e| {
            if e.epoch == 3 {
                ControlFlow::Break(Stop::Budget)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap()
        .expect("a budget keeps the model");
        let report = &built.snapshot.model.report;
        assert!(report.cut_short);
        assert!(!report.stopped_early);
        assert_eq!(report.epochs.len(), 3);
        assert!(
            report.best_epoch.is_some_and(|b| b <= 3),
            "{:?}",
            report.best_epoch
        );
        assert!(built.snapshot.holdout_rmse.is_some());
    }
}
