//! Simon Funk's feature-at-a-time training: biases first, then factor 1 on the
//! residual until its epochs are done, freeze it, then factor 2, and so on.
//! Residuals are cached, so every epoch is O(ratings) whatever the factor count.

use super::super::data::Rating;
use super::super::model::{EpochStats, Model};
use super::Progress;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::ControlFlow;

struct Cache {
    /// r − (μ + b_u + b_i + Σ_{frozen f} p_uf q_if) per training rating.
    train: Vec<f32>,
    /// The same for validation ratings whose user and item are both known.
    valid: Vec<(Rating, f32)>,
}

pub(super) fn run(
    model: &mut Model,
    ratings: &mut [Rating],
    validation: Option<&[Rating]>,
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    let h = model.hyper.clone();
    let k = model.factors();
    let (nu, ni) = (model.n_users(), model.n_items());
    model.user_factors.fill(0.0);
    model.item_factors.fill(0.0);
    ratings.shuffle(&mut ChaCha8Rng::seed_from_u64(h.seed ^ 0xf00f));
    let mut epoch_no = 0usize;

    // Phase 0: the biases alone, by SGD.
    if h.biased {
        for e in 0..h.epochs {
            let d = h.lr_decay.powi(e as i32);
            for r in ratings.iter() {
                let (u, i) = (r.user as usize, r.item as usize);
                let err = r.value - (model.global_mean + model.user_bias[u] + model.item_bias[i]);
                model.user_bias[u] += h.lr_bias * d * (err - h.reg_bias * model.user_bias[u]);
                model.item_bias[i] += h.lr_bias * d * (err - h.reg_bias * model.item_bias[i]);
            }
            epoch_no += 1;
            if report(model, epoch_no, Progress::Compute).is_break() {
                return;
            }
        }
    }

    let base = |m: &Model, r: &Rating| {
        let (u, i) = (r.user as usize, r.item as usize);
        if h.biased {
            m.global_mean + m.user_bias[u] + m.item_bias[i]
        } else {
            0.0
        }
    };
    let mut cache = Cache {
        train: ratings.iter().map(|r| r.value - base(model, r)).collect(),
        valid: validation
            .unwrap_or(&[])
            .iter()
            .filter(|r| (r.user as usize) < nu && (r.item as usize) < ni)
            .map(|r| (*r, r.value - base(model, r)))
            .collect(),
    };
    // Validation ratings with an unknown side never change: their error is fixed.
    let (unknown_sse, unknown_n) = validation
        .unwrap_or(&[])
        .iter()
        .filter(|r| (r.user as usize) >= nu || (r.item as usize) >= ni)
        .fold((0.0f64, 0usize), |(s, n), r| {
            let e = r.value as f64 - model.predict_for(r.user, r.item) as f64;
            (s + e * e, n + 1)
        });
    let sq = |xs: &[f32]| xs.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
    let bias_pen = if h.biased {
        h.reg_bias as f64
            * (sq(model.user_bias.as_slice().unwrap()) + sq(model.item_bias.as_slice().unwrap()))
    } else {
        0.0
    };
    let mut frozen_pen = 0.0f64;
    let init = if h.init_std > 0.0 { h.init_std } else { 0.1 };
    let mut pu = vec![0.0f32; nu];
    let mut qi = vec![0.0f32; ni];

    for f in 0..k {
        pu.fill(init);
        qi.fill(init);
        for e in 0..h.epochs {
            let lr = h.lr * h.lr_decay.powi(e as i32);
            for (r, &res) in ratings.iter().zip(&cache.train) {
                let (u, i) = (r.user as usize, r.item as usize);
                let (a, b) = (pu[u], qi[i]);
                let err = res - a * b;
                pu[u] = a + lr * (err * b - h.reg * a);
                qi[i] = b + lr * (err * a - h.reg * b);
            }
            epoch_no += 1;
            let sse: f64 = ratings
                .iter()
                .zip(&cache.train)
                .map(|(r, &res)| {
                    let err = (res - pu[r.user as usize] * qi[r.item as usize]) as f64;
                    err * err
                })
                .sum();
            let pen = h.reg as f64 * (sq(&pu) + sq(&qi));
            let validation_rmse = validation.map(|_| {
                let s: f64 = cache
                    .valid
                    .iter()
                    .map(|(r, res)| {
                        let pred = r.value - res + pu[r.user as usize] * qi[r.item as usize];
                        let err = (r.value - h.scale.clamp(pred)) as f64;
                        err * err
                    })
                    .sum();
                ((s + unknown_sse) / (cache.valid.len() + unknown_n).max(1) as f64).sqrt()
            });
            let stats = EpochStats {
                epoch: epoch_no,
                loss: 0.5 * (sse + bias_pen + frozen_pen + pen),
                train_rmse: (sse / ratings.len().max(1) as f64).sqrt(),
                validation_rmse,
            };
            if report(model, epoch_no, Progress::Full(stats)).is_break() {
                write_column(model, f, &pu, &qi);
                return;
            }
        }
        // Freeze factor f: fold it into the residuals.
        write_column(model, f, &pu, &qi);
        frozen_pen += h.reg as f64 * (sq(&pu) + sq(&qi));
        for (r, res) in ratings.iter().zip(cache.train.iter_mut()) {
            *res -= pu[r.user as usize] * qi[r.item as usize];
        }
        for (r, res) in cache.valid.iter_mut() {
            *res -= pu[r.user as usize] * qi[r.item as usize];
        }
    }
}

fn write_column(model: &mut Model, f: usize, pu: &[f32], qi: &[f32]) {
    model
        .user_factors
        .column_mut(f)
        .iter_mut()
        .zip(pu)
        .for_each(|(a, &b)| *a = b);
    model
        .item_factors
        .column_mut(f)
        .iter_mut()
        .zip(qi)
        .for_each(|(a, &b)| *a = b);
}
