//! Trainers: `sgd`, `gd` and `funk`, behind one entry point with a per-epoch callback.

mod funk;
mod gd;
mod sgd;

use super::data::{mean_of, Dataset, Rating};
use super::error::EngineError;
use super::model::{EpochStats, Model};
use super::params::{Hyper, TrainerKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::ops::ControlFlow;
use std::time::Instant;

pub use gd::{gradient, objective_f64, Gradient, Objective};

/// Called after every epoch; `Break` stops training early (the model so far is returned).
pub type EpochCallback<'a> = dyn FnMut(&EpochStats) -> ControlFlow<()> + 'a;

/// Trains a model on `data` with the trainer named in `hyper`.
///
/// `validation` ratings use the same id maps as `data`; indices outside them
/// count as unknown. The callback sees every epoch's loss and RMSEs.
pub fn train(
    data: &Dataset,
    hyper: &Hyper,
    validation: Option<&[Rating]>,
    on_epoch: &mut EpochCallback<'_>,
) -> Result<Model, EngineError> {
    hyper.validate().map_err(EngineError::InvalidHyper)?;
    if data.is_empty() {
        return Err(EngineError::NoData(
            "the training set has no ratings".into(),
        ));
    }
    let start = Instant::now();
    let mut model = init_model(data, hyper);
    let mut ratings = data.ratings.clone();
    let mut epochs = Vec::new();
    let mut report = |model: &Model, epoch: usize, progress: Progress| -> ControlFlow<()> {
        let stats = match progress {
            Progress::Compute => epoch_stats(model, &data.ratings, validation, epoch),
            Progress::Loss(loss) => EpochStats {
                loss,
                ..epoch_stats(model, &data.ratings, validation, epoch)
            },
            Progress::Full(stats) => stats,
        };
        epochs.push(stats);
        on_epoch(&stats)
    };
    match hyper.trainer {
        TrainerKind::Sgd => sgd::run(&mut model, &mut ratings, &mut report),
        TrainerKind::Gd => gd::run(&mut model, &ratings, &mut report),
        TrainerKind::Funk => funk::run(&mut model, &mut ratings, validation, &mut report),
    }
    model.report.epochs = epochs;
    model.report.train_seconds = start.elapsed().as_secs_f64();
    model.report.n_ratings = data.len();
    Ok(model)
}

/// What a trainer hands the reporter after an epoch.
pub(crate) enum Progress {
    /// Compute loss and RMSEs from the model.
    Compute,
    /// The trainer knows the exact (f64) loss; compute the RMSEs.
    Loss(f64),
    /// The trainer computed everything (from its caches).
    Full(EpochStats),
}

/// Zero biases, μ from the data (if biased), N(0, init_std²) factors, item popularity.
pub(crate) fn init_model(data: &Dataset, hyper: &Hyper) -> Model {
    let mu = if hyper.biased {
        mean_of(&data.ratings) as f32
    } else {
        0.0
    };
    let mut model = Model::zeros(hyper.clone(), data.users.clone(), data.items.clone(), mu);
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
    for r in &data.ratings {
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
    let h = &model.hyper;
    let mut sse = 0.0f64;
    for r in train {
        let e = r.value as f64 - model.raw_predict(Some(r.user), Some(r.item)) as f64;
        sse += e * e;
    }
    let sq = |xs: &[f32]| -> f64 { xs.iter().map(|&x| x as f64 * x as f64).sum() };
    let mut penalty = h.reg as f64
        * (sq(model.user_factors.as_slice().unwrap()) + sq(model.item_factors.as_slice().unwrap()));
    if h.biased {
        penalty += h.reg_bias as f64
            * (sq(model.user_bias.as_slice().unwrap()) + sq(model.item_bias.as_slice().unwrap()));
    }
    EpochStats {
        epoch,
        loss: 0.5 * (sse + penalty),
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
