//! Trainers: `sgd`, `gd`, `funk` and `svdpp`, behind one entry point with a per-epoch callback.

mod funk;
mod gd;
pub mod sgd;
mod svdpp;

use crate::data::{mean_of, Dataset, IdMap, Rating};
use crate::error::EngineError;
use crate::model::{EpochStats, Model};
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
    let n_ratings = ratings.len();
    match hyper.trainer {
        TrainerKind::Gd => {
            let ratings: &[Rating] = ratings;
            let mut report = reporter(Some(ratings), validation, &mut epochs, on_epoch);
            gd::run(&mut model, ratings, &mut report);
        }
        TrainerKind::Sgd => {
            let mut report = reporter(None, validation, &mut epochs, on_epoch);
            sgd::run(&mut model, ratings, validation, &mut report);
        }
        TrainerKind::Funk => {
            let mut report = reporter(None, validation, &mut epochs, on_epoch);
            funk::run(&mut model, ratings, validation, &mut report);
        }
        TrainerKind::Svdpp => {
            let mut report = reporter(None, validation, &mut epochs, on_epoch);
            svdpp::run(&mut model, ratings, validation, &mut report);
        }
    }
    model.report.epochs = epochs;
    model.report.train_seconds = start.elapsed().as_secs_f64();
    model.report.n_ratings = n_ratings;
    Ok(model)
}

type Reporter<'a> = Box<dyn FnMut(&Model, usize, Progress) -> ControlFlow<()> + 'a>;

/// Turns a trainer's [`Progress`] into recorded [`EpochStats`]; `train` is
/// needed only by trainers that send `Compute` or `Loss`.
fn reporter<'a, 'c: 'a>(
    train: Option<&'a [Rating]>,
    validation: Option<&'a [Rating]>,
    epochs: &'a mut Vec<EpochStats>,
    on_epoch: &'a mut EpochCallback<'c>,
) -> Reporter<'a> {
    Box::new(move |model: &Model, epoch: usize, progress: Progress| {
        let full = |model: &Model| {
            let train = train.expect("this trainer reports full statistics");
            epoch_stats(model, train, validation, epoch)
        };
        let stats = match progress {
            Progress::Loss(loss) => EpochStats {
                loss,
                ..full(model)
            },
            Progress::Full(stats) => stats,
        };
        epochs.push(stats);
        on_epoch(&stats)
    })
}

/// What a trainer hands the reporter after an epoch.
pub(crate) enum Progress {
    /// The trainer knows the exact (f64) loss; compute the RMSEs.
    Loss(f64),
    /// The trainer computed everything (from its caches).
    Full(EpochStats),
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
