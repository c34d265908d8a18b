//! Trainers: `sgd`, `gd`, `funk` and `svdpp`, behind one entry point with a per-epoch callback.

mod funk;
mod gd;
pub mod sgd;
mod svdpp;

use crate::data::{mean_of, Dataset, IdMap, Rating};
use crate::error::EngineError;
use crate::model::{EpochStats, Model, Params};
use crate::params::{Hyper, TrainerKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::ops::ControlFlow;
use std::time::Instant;

pub use gd::{gradient, objective_f64, Gradient, Objective};
pub use svdpp::{svdpp_gradient, svdpp_objective, SvdppParams};

/// Called after every epoch; `Break` stops training early (the model so far is returned).
pub type EpochCallback<'a> = dyn FnMut(&EpochStats) -> ControlFlow<()> + 'a;

/// Trains a model on `data` with the trainer named in `hyper`.
///
/// `validation` ratings use the same id maps as `data`; indices outside them
/// count as unknown. The callback sees every epoch's loss and RMSEs.
/// The ratings are copied (the trainers reorder them); use [`train_in_place`]
/// to train on an owned dataset without the copy.
pub fn train(
    data: &Dataset,
    hyper: &Hyper,
    validation: Option<&[Rating]>,
    on_epoch: &mut EpochCallback<'_>,
) -> Result<Model, EngineError> {
    let mut ratings = data.ratings.clone();
    train_ratings(
        &data.users,
        &data.items,
        &mut ratings,
        hyper,
        validation,
        on_epoch,
    )
}

/// Like [`train`], but works on `data.ratings` directly (no copy: 12 bytes per
/// rating in memory); the ratings are left in an unspecified order.
pub fn train_in_place(
    data: &mut Dataset,
    hyper: &Hyper,
    validation: Option<&[Rating]>,
    on_epoch: &mut EpochCallback<'_>,
) -> Result<Model, EngineError> {
    train_ratings(
        &data.users,
        &data.items,
        &mut data.ratings,
        hyper,
        validation,
        on_epoch,
    )
}

/// Trains on `ratings` (indices into `users` and `items`), reordering them.
pub fn train_ratings(
    users: &IdMap,
    items: &IdMap,
    ratings: &mut [Rating],
    hyper: &Hyper,
    validation: Option<&[Rating]>,
    on_epoch: &mut EpochCallback<'_>,
) -> Result<Model, EngineError> {
    hyper.validate().map_err(EngineError::InvalidHyper)?;
    if ratings.is_empty() {
        return Err(EngineError::NoData(
            "the training set has no ratings".into(),
        ));
    }
    let start = Instant::now();
    let mut model = init_model_from(users, items, ratings, hyper);
    let mut epochs = Vec::new();
    let mut stop = EarlyStop::new(hyper.patience, validation.is_some());
    let n_ratings = ratings.len();
    match hyper.trainer {
        TrainerKind::Gd => {
            let ratings: &[Rating] = ratings;
            let mut report = reporter(Some(ratings), validation, &mut epochs, &mut stop, on_epoch);
            gd::run(&mut model, ratings, &mut report);
        }
        TrainerKind::Sgd => {
            let mut report = reporter(None, validation, &mut epochs, &mut stop, on_epoch);
            sgd::run(&mut model, ratings, validation, &mut report);
        }
        TrainerKind::Funk => {
            let mut report = reporter(None, validation, &mut epochs, &mut stop, on_epoch);
            funk::run(&mut model, ratings, validation, &mut report);
        }
        TrainerKind::Svdpp => {
            let mut report = reporter(None, validation, &mut epochs, &mut stop, on_epoch);
            svdpp::run(&mut model, ratings, validation, &mut report);
        }
    }
    stop.finish(&mut model);
    model.report.epochs = epochs;
    model.report.train_seconds = start.elapsed().as_secs_f64();
    model.report.n_ratings = n_ratings;
    Ok(model)
}

type Reporter<'a> = Box<dyn FnMut(&Model, usize, Progress) -> ControlFlow<()> + 'a>;

/// An epoch counts towards early stopping's patience unless it lowers the validation
/// RMSE of the last counted improvement by more than this fraction (the best
/// parameters are still kept on any improvement).
pub const MIN_IMPROVEMENT: f64 = 0.0;

/// Early stopping, applied by the reporter to every trainer: tracks the best
/// validation RMSE, copies the parameters at each new best, stops the run after
/// `patience` epochs without an improvement (by more than [`MIN_IMPROVEMENT`]), and
/// puts the best parameters back at the end.
pub(crate) struct EarlyStop {
    patience: usize,
    tolerance: f64,
    best_rmse: f64,
    /// The RMSE of the last improvement that reset the patience count.
    reference: f64,
    best_epoch: Option<usize>,
    since_best: usize,
    best: Option<Params>,
    stopped: bool,
}

impl EarlyStop {
    /// Off when `patience` is 0 or there is no validation set.
    pub(crate) fn new(patience: usize, has_validation: bool) -> Self {
        EarlyStop {
            patience: if has_validation { patience } else { 0 },
            tolerance: MIN_IMPROVEMENT,
            best_rmse: f64::INFINITY,
            reference: f64::INFINITY,
            best_epoch: None,
            since_best: 0,
            best: None,
            stopped: false,
        }
    }

    /// Looks at one epoch; `Break` when the run should stop.
    pub(crate) fn observe(&mut self, model: &Model, stats: &EpochStats) -> ControlFlow<()> {
        let Some(v) = stats.validation_rmse.filter(|_| self.patience > 0) else {
            return ControlFlow::Continue(());
        };
        if v < self.best_rmse {
            self.best_rmse = v;
            self.best_epoch = Some(stats.epoch);
            model.snapshot_params(&mut self.best);
        }
        if v < self.reference * (1.0 - self.tolerance) {
            self.reference = v;
            self.since_best = 0;
            return ControlFlow::Continue(());
        }
        self.since_best += 1;
        if self.since_best >= self.patience {
            self.stopped = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Puts the best epoch's parameters into `model` and records it in the report.
    pub(crate) fn finish(self, model: &mut Model) {
        if let (Some(epoch), Some(best)) = (self.best_epoch, self.best) {
            model.restore_params(best);
            model.report.best_epoch = Some(epoch);
            model.report.stopped_early = self.stopped;
        }
    }
}

/// Turns a trainer's [`Progress`] into recorded [`EpochStats`] (`train` is
/// needed only by trainers that send `Loss`), applies early stopping, and
/// passes the epoch on to the caller's callback.
fn reporter<'a, 'c: 'a>(
    train: Option<&'a [Rating]>,
    validation: Option<&'a [Rating]>,
    epochs: &'a mut Vec<EpochStats>,
    stop: &'a mut EarlyStop,
    on_epoch: &'a mut EpochCallback<'c>,
) -> Reporter<'a> {
    Box::new(move |model: &Model, epoch: usize, progress: Progress| {
        let full = |model: &Model| {
            let train = train.expect("this trainer reports full statistics");
            epoch_stats(model, train, validation, epoch)
        };
        let (stats, judged) = match progress {
            Progress::Loss(loss) => (
                EpochStats {
                    loss,
                    ..full(model)
                },
                true,
            ),
            Progress::Full(stats) => (stats, true),
            Progress::Within(stats) => (stats, false),
        };
        epochs.push(stats);
        let early = if judged {
            stop.observe(model, &stats)
        } else {
            ControlFlow::Continue(())
        };
        let caller = on_epoch(&stats);
        if early.is_break() {
            early
        } else {
            caller
        }
    })
}

/// What a trainer hands the reporter after an epoch.
pub(crate) enum Progress {
    /// The trainer knows the exact (f64) loss; compute the RMSEs.
    Loss(f64),
    /// The trainer computed everything (from its caches).
    Full(EpochStats),
    /// As `Full`, for an epoch inside a stage that early stopping does not judge
    /// (`funk`: every epoch of a factor but its last, so patience counts factors).
    Within(EpochStats),
}

/// Zero biases, μ from the data (if biased), N(0, init_std²) factors, item popularity.
pub(crate) fn init_model_from(
    users: &IdMap,
    items: &IdMap,
    ratings: &[Rating],
    hyper: &Hyper,
) -> Model {
    let mu = if hyper.biased {
        mean_of(ratings) as f32
    } else {
        0.0
    };
    let mut model = Model::zeros(hyper.clone(), users.clone(), items.clone(), mu);
    let mut rng = ChaCha8Rng::seed_from_u64(hyper.seed);
    if hyper.init_std > 0.0 {
        let normal = Normal::new(0.0f32, hyper.init_std).expect("finite std");
        for x in model.user_factors.iter_mut() {
            *x = normal.sample(&mut rng);
        }
        for x in model.item_factors.iter_mut() {
            *x = normal.sample(&mut rng);
        }
    }
    for r in ratings {
        model.item_counts[r.item as usize] += 1;
        model.item_sums[r.item as usize] += r.value as f64;
    }
    model
}

/// Regularised objective and RMSEs for the current parameters.
pub(crate) fn epoch_stats(
    model: &Model,
    train: &[Rating],
    validation: Option<&[Rating]>,
    epoch: usize,
) -> EpochStats {
    epoch_stats_par(model, train, validation, epoch, 1)
}

/// Σe² of the unclamped predictions over `ratings`.
fn sse_of(model: &Model, ratings: &[Rating]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::model::has_avx2_fma() {
        // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
        return unsafe { sse_avx2(model, ratings) };
    }
    sse_kernel::<false>(model, ratings)
}

/// [`sse_kernel`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sse_avx2(model: &Model, ratings: &[Rating]) -> f64 {
    sse_kernel::<true>(model, ratings)
}

/// Σ(r − r̂)² with unclamped predictions, rows prefetched a few ratings ahead.
#[inline(always)]
fn sse_kernel<const FMA: bool>(model: &Model, ratings: &[Rating]) -> f64 {
    let k = model.factors();
    let (p, q) = (
        model.user_factors.as_slice().expect("row-major"),
        model.item_factors.as_slice().expect("row-major"),
    );
    let (bu, bi) = (&model.user_bias, &model.item_bias);
    let mut sse = 0.0f64;
    for (n, r) in ratings.iter().enumerate() {
        if let Some(nx) = ratings.get(n + sgd::PREFETCH) {
            sgd::prefetch(p[nx.user as usize * k..].as_ptr(), k);
            sgd::prefetch(q[nx.item as usize * k..].as_ptr(), k);
        }
        let (u, i) = (r.user as usize, r.item as usize);
        let dot = crate::model::dot_k::<FMA>(&p[u * k..(u + 1) * k], &q[i * k..(i + 1) * k]);
        let e = r.value as f64 - (model.global_mean + bu[u] + bi[i] + dot) as f64;
        sse += e * e;
    }
    sse
}

/// ½λΣ‖θ‖² times two: λ(‖P‖² + ‖Q‖²) (+ λ_b(‖b_u‖² + ‖b_i‖²) when biased).
pub(crate) fn penalty(model: &Model) -> f64 {
    let h = &model.hyper;
    let sq = |xs: &[f32]| -> f64 { xs.iter().map(|&x| x as f64 * x as f64).sum() };
    let mut penalty = h.reg as f64
        * (sq(model.user_factors.as_slice().unwrap()) + sq(model.item_factors.as_slice().unwrap()));
    if h.biased {
        penalty += h.reg_bias as f64
            * (sq(model.user_bias.as_slice().unwrap()) + sq(model.item_bias.as_slice().unwrap()));
    }
    penalty
}

/// [`epoch_stats`] with the training error summed on `threads` threads (fixed
/// chunks, summed in order, so the result does not depend on timing).
pub(crate) fn epoch_stats_par(
    model: &Model,
    train: &[Rating],
    validation: Option<&[Rating]>,
    epoch: usize,
    threads: usize,
) -> EpochStats {
    let threads = threads.clamp(1, 64);
    let sse = if threads == 1 || train.len() < 100_000 {
        sse_of(model, train)
    } else {
        // The first chunk runs on the calling thread, the others on scoped threads.
        // Against rayon (`pool_compare` in train/sgd/mod.rs) the time ratio
        // rayon/scoped was 1.00 (median of 8: 100 K–3 M ratings, 2 threads,
        // 2-core machine, 2026-11-30), so there is no rayon dependency.
        let chunk = train.len().div_ceil(threads);
        let (first, rest) = train.split_at(chunk.min(train.len()));
        std::thread::scope(|s| {
            let others: Vec<_> = rest
                .chunks(chunk)
                .map(|c| s.spawn(move || sse_of(model, c)))
                .collect();
            let mut parts = vec![sse_of(model, first)];
            parts.extend(others.into_iter().map(|h| h.join().expect("stats thread")));
            parts.into_iter().sum::<f64>()
        })
    };
    EpochStats {
        epoch,
        loss: 0.5 * (sse + penalty(model)),
        train_rmse: (sse / train.len().max(1) as f64).sqrt(),
        validation_rmse: validation.map(|v| rmse_of(model, v)),
    }
}

/// RMSE of the model's clamped predictions on `ratings`.
pub fn rmse_of(model: &Model, ratings: &[Rating]) -> f64 {
    if ratings.is_empty() {
        return 0.0;
    }
    let sse: f64 = ratings
        .iter()
        .map(|r| {
            let e = r.value as f64 - model.predict_for(r.user, r.item) as f64;
            e * e
        })
        .sum();
    (sse / ratings.len() as f64).sqrt()
}
