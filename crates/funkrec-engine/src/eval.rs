//! Evaluation: RMSE/MAE, seeded k-fold splits, and top-N precision/recall/NDCG.

use crate::data::{Dataset, Rating};
use crate::error::EngineError;
use crate::model::{EpochStats, Model};
use crate::params::Hyper;
use crate::train::{train, EpochCallback};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Root mean squared error of clamped predictions.
pub fn rmse(model: &Model, ratings: &[Rating]) -> f64 {
    crate::train::rmse_of(model, ratings)
}

/// Mean absolute error of clamped predictions.
pub fn mae(model: &Model, ratings: &[Rating]) -> f64 {
    if ratings.is_empty() {
        return 0.0;
    }
    ratings
        .iter()
        .map(|r| (r.value as f64 - model.predict_for(r.user, r.item) as f64).abs())
        .sum::<f64>()
        / ratings.len() as f64
}

/// `k` disjoint test folds over `0..n` after a seeded shuffle; each entry is (train, test) indices.
pub fn kfold(n: usize, k: usize, seed: u64) -> Vec<(Vec<usize>, Vec<usize>)> {
    let k = k.clamp(2, n.max(2));
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    (0..k)
        .map(|f| {
            let (lo, hi) = (f * n / k, (f + 1) * n / k);
            let test = idx[lo..hi].to_vec();
            let train = idx[..lo].iter().chain(&idx[hi..]).copied().collect();
            (train, test)
        })
        .collect()
}

/// Top-N quality averaged over users with at least one relevant held-out item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TopNMetrics {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub users: usize,
}

/// precision@n, recall@n and NDCG@n (binary relevance: held-out rating ≥ `threshold`).
/// Candidates are all items the user did not rate in training.
pub fn top_n_metrics(
    model: &Model,
    train: &[Rating],
    test: &[Rating],
    n: usize,
    threshold: f32,
) -> TopNMetrics {
    let mut relevant: HashMap<u32, HashSet<u32>> = HashMap::new();
    for r in test {
        if r.value >= threshold && (r.user as usize) < model.n_users() {
            relevant.entry(r.user).or_default().insert(r.item);
        }
    }
    let mut seen: HashMap<u32, HashSet<u32>> = HashMap::new();
    for r in train {
        if relevant.contains_key(&r.user) {
            seen.entry(r.user).or_default().insert(r.item);
        }
    }
    let empty = HashSet::new();
    let mut m = TopNMetrics::default();
    let mut users: Vec<_> = relevant.keys().copied().collect();
    users.sort_unstable();
    for u in users {
        let rel = &relevant[&u];
        let rated = seen.get(&u).unwrap_or(&empty);
        let recs = model.top_n(u, n, |i| rated.contains(&i));
        let mut dcg = 0.0;
        let mut hits = 0usize;
        for (rank, (i, _)) in recs.iter().enumerate() {
            if rel.contains(i) {
                hits += 1;
                dcg += 1.0 / ((rank + 2) as f64).log2();
            }
        }
        let idcg: f64 = (0..rel.len().min(n))
            .map(|r| 1.0 / ((r + 2) as f64).log2())
            .sum();
        m.precision += hits as f64 / n as f64;
        m.recall += hits as f64 / rel.len() as f64;
        m.ndcg += dcg / idcg;
        m.users += 1;
    }
    if m.users > 0 {
        let c = m.users as f64;
        m.precision /= c;
        m.recall /= c;
        m.ndcg /= c;
    }
    m
}

/// Everything measured on one train/test split.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    pub rmse: f64,
    pub mae: f64,
    pub fit_seconds: f64,
    pub precision_at_10: f64,
    pub recall_at_10: f64,
    pub ndcg_at_10: f64,
    /// Early stopping's best epoch (None when it was off).
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    pub epochs: Vec<EpochStats>,
}

/// How an evaluation run may stop early without ever looking at the test ratings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalStopping {
    /// No early stopping (`patience` is ignored): every epoch runs.
    Off,
    /// A seeded `fraction` of the training split is held out as the validation set
    /// and the model is trained on the rest, with early stopping on it.
    Carve(f64),
    /// As `Carve`, to find the best epoch count; then the model is trained again on
    /// the whole training split for that many epochs (without early stopping).
    Refit(f64),
}

/// Splits a seeded `fraction` of `data`'s ratings off as a validation set (same id
/// maps); returns (the rest, the validation ratings).
pub fn carve_validation(data: &Dataset, fraction: f64, seed: u64) -> (Dataset, Vec<Rating>) {
    let n = data.len();
    let k = ((n as f64 * fraction.clamp(0.0, 0.5)).round() as usize).min(n.saturating_sub(1));
    let mut held = vec![false; n];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7661_6c69);
    for i in rand::seq::index::sample(&mut rng, n, k) {
        held[i] = true;
    }
    let (mut rest, mut validation) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (r, h) in data.ratings.iter().zip(held) {
        if h {
            validation.push(*r)
        } else {
            rest.push(*r)
        }
    }
    let rest = Dataset {
        users: data.users.clone(),
        items: data.items.clone(),
        ratings: rest,
    };
    (rest, validation)
}

/// Trains on `train`, evaluates on `test` (indices from `train`'s id maps).
/// `track_test` records the test RMSE per epoch (with `Off` only: under early
/// stopping the per-epoch validation RMSE is the carved validation set's).
pub fn evaluate_split(
    train_set: &Dataset,
    test: &[Rating],
    hyper: &Hyper,
    track_test: bool,
    stopping: EvalStopping,
    on_epoch: &mut EpochCallback<'_>,
) -> Result<FoldResult, EngineError> {
    let start = Instant::now();
    let fraction = match stopping {
        EvalStopping::Carve(f) | EvalStopping::Refit(f) if hyper.patience > 0 && f > 0.0 => f,
        _ => 0.0,
    };
    let model = if fraction > 0.0 {
        let (rest, validation) = carve_validation(train_set, fraction, hyper.seed);
        let model = train(&rest, hyper, Some(&validation), on_epoch)?;
        match (stopping, model.report.best_epoch) {
            (EvalStopping::Refit(_), Some(best)) => {
                let refit = Hyper {
                    epochs: best,
                    patience: 0,
                    ..hyper.clone()
                };
                let mut m = train(train_set, &refit, None, on_epoch)?;
                m.report.best_epoch = Some(best);
                m.report.stopped_early = model.report.stopped_early;
                m
            }
            _ => model,
        }
    } else {
        // The test ratings may be tracked, never used to stop.
        let hyper = Hyper {
            patience: 0,
            ..hyper.clone()
        };
        train(train_set, &hyper, track_test.then_some(test), on_epoch)?
    };
    let fit_seconds = start.elapsed().as_secs_f64();
    let top = top_n_metrics(&model, &train_set.ratings, test, 10, 4.0);
    Ok(FoldResult {
        rmse: rmse(&model, test),
        mae: mae(&model, test),
        fit_seconds,
        precision_at_10: top.precision,
        recall_at_10: top.recall,
        ndcg_at_10: top.ndcg,
        best_epoch: model.report.best_epoch,
        stopped_early: model.report.stopped_early,
        epochs: model.report.epochs.clone(),
    })
}

/// The strict new-user protocol on one training set: what fold-in loses against
/// retraining with the same ratings.
#[derive(Debug, Clone, Serialize)]
pub struct NewUserResult {
    /// Users removed from training.
    pub new_users: usize,
    /// Their ratings folded in (and, for the retrain, trained on).
    pub folded_ratings: usize,
    /// Their ratings tested.
    pub test_ratings: usize,
    /// RMSE on the test half with the closed-form fold-in against the model without them.
    pub fold_in_rmse: f64,
    /// The same with the SGD fold-in ([`crate::foldin::fold_in_sgd`]).
    pub fold_in_sgd_rmse: f64,
    /// RMSE on the test half of a model retrained with the folded halves.
    pub retrain_rmse: f64,
    /// Mean time per user of the closed-form and the SGD fold-in.
    pub fold_in_micros: f64,
    pub fold_in_sgd_micros: f64,
    /// Training time of the model without the new users.
    pub fit_seconds: f64,
}

/// One user's ratings as (item index, rating).
type ItemRatings = Vec<(u32, f32)>;
/// A fold-in solver: [`crate::foldin::fold_in`] or [`crate::foldin::fold_in_sgd`].
type FoldFn = fn(&Model, &[(u32, f32)]) -> Option<crate::foldin::Folded>;

/// A seeded `fraction` of the users of `data` is removed from training entirely;
/// half of each removed user's ratings (seeded) are folded in against the model
/// trained on the rest, the other half are tested. The retrain trains on the rest
/// plus every folded half and is tested on the same ratings.
pub fn evaluate_new_users(
    data: &Dataset,
    fraction: f64,
    hyper: &Hyper,
    on_epoch: &mut EpochCallback<'_>,
) -> Result<NewUserResult, EngineError> {
    use crate::foldin::{fold_in, fold_in_sgd};
    let mut rng = ChaCha8Rng::seed_from_u64(hyper.seed ^ 0x6e65_7775);
    let mut users: Vec<u32> = (0..data.n_users() as u32).collect();
    users.shuffle(&mut rng);
    let n_new = ((data.n_users() as f64 * fraction.clamp(0.0, 1.0)).round() as usize).max(1);
    let mut is_new = vec![false; data.n_users()];
    for &u in &users[..n_new.min(users.len())] {
        is_new[u as usize] = true;
    }
    let mut by_user: Vec<Vec<Rating>> = vec![Vec::new(); data.n_users()];
    let mut base = Vec::new();
    for r in &data.ratings {
        match is_new[r.user as usize] {
            true => by_user[r.user as usize].push(*r),
            false => base.push(*r),
        }
    }
    let (mut folded, mut test) = (Vec::new(), Vec::new());
    // per new user: (the folded half as (item, rating), the tested half)
    let mut halves: Vec<(ItemRatings, Vec<Rating>)> = Vec::new();
    for mut rs in by_user.into_iter().filter(|v| v.len() >= 2) {
        rs.shuffle(&mut rng);
        let (f, t) = rs.split_at(rs.len() / 2);
        folded.extend_from_slice(f);
        test.extend_from_slice(t);
        halves.push((f.iter().map(|r| (r.item, r.value)).collect(), t.to_vec()));
    }
    let rest = Dataset {
        users: data.users.clone(),
        items: data.items.clone(),
        ratings: base,
    };
    let start = Instant::now();
    let model = train(&rest, hyper, None, on_epoch)?;
    let fit_seconds = start.elapsed().as_secs_f64();
    let score = |solve: FoldFn| {
        let (mut se, mut n, mut secs) = (0.0f64, 0usize, 0.0f64);
        for (f, t) in &halves {
            let start = Instant::now();
            let v = solve(&model, f);
            secs += start.elapsed().as_secs_f64();
            for r in t {
                let p = match (&v, (r.item as usize) < model.n_items()) {
                    (Some(v), true) => v.predict(&model, r.item),
                    (Some(v), false) => model.hyper.scale.clamp(model.global_mean + v.bias),
                    (None, _) => model.predict_for(u32::MAX, r.item),
                };
                se += ((p - r.value) as f64).powi(2);
                n += 1;
            }
        }
        (
            (se / n.max(1) as f64).sqrt(),
            secs * 1e6 / halves.len().max(1) as f64,
        )
    };
    let (fold_in_rmse, fold_in_micros) = score(fold_in);
    let (fold_in_sgd_rmse, fold_in_sgd_micros) = score(fold_in_sgd);
    let mut all = rest;
    all.ratings.extend_from_slice(&folded);
    let retrained = train(&all, hyper, None, on_epoch)?;
    Ok(NewUserResult {
        new_users: halves.len(),
        folded_ratings: folded.len(),
        test_ratings: test.len(),
        fold_in_rmse,
        fold_in_sgd_rmse,
        retrain_rmse: rmse(&retrained, &test),
        fold_in_micros,
        fold_in_sgd_micros,
        fit_seconds,
    })
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = xs.into_iter().collect();
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfold_partitions_every_index_once() {
        let folds = kfold(103, 5, 7);
        assert_eq!(folds.len(), 5);
        let mut all: Vec<usize> = folds.iter().flat_map(|(_, t)| t.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        for (tr, te) in &folds {
            assert_eq!(tr.len() + te.len(), 103);
            let s: HashSet<_> = tr.iter().collect();
            assert!(te.iter().all(|i| !s.contains(i)));
        }
        assert_eq!(kfold(103, 5, 7)[2].1, folds[2].1, "seeded");
        assert_ne!(kfold(103, 5, 8)[2].1, folds[2].1);
    }

    #[test]
    fn mean_std_known_values() {
        let (m, s) = mean_std([1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (s - 1.25f64.sqrt()).abs() < 1e-12);
    }
}
