//! Simon Funk's feature-at-a-time training: biases first, then factor 1 on the
//! residual until its epochs are done, freeze it, then factor 2, and so on (the
//! biases keep learning alongside each factor). Residuals of the frozen factors
//! are cached, so every epoch is O(ratings) whatever the factor count.

use crate::data::Rating;
use crate::model::{EpochStats, Model};
use crate::train::Progress;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::ops::ControlFlow;

/// A validation rating with its known sides and the frozen factors' contribution.
struct Held {
    user: Option<usize>,
    item: Option<usize>,
    value: f32,
    frozen: f32,
}

fn sq(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| x as f64 * x as f64).sum()
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
    let mu = model.global_mean;
    // Σ over frozen factors of p_uf·q_if, per training rating.
    let mut frozen = vec![0.0f32; ratings.len()];
    let mut held: Vec<Held> = validation
        .unwrap_or(&[])
        .iter()
        .map(|r| Held {
            user: ((r.user as usize) < nu).then_some(r.user as usize),
            item: ((r.item as usize) < ni).then_some(r.item as usize),
            value: r.value,
            frozen: 0.0,
        })
        .collect();
    let mut bu = vec![0.0f32; nu];
    let mut bi = vec![0.0f32; ni];
    let mut pu = vec![0.0f32; nu];
    let mut qi = vec![0.0f32; ni];
    let mut frozen_pen = 0.0f64;
    let mut epoch_no = 0usize;
    let mut rng = ChaCha8Rng::seed_from_u64(h.seed ^ 0xfeed);
    let normal =
        Normal::new(0.0f32, if h.init_std > 0.0 { h.init_std } else { 0.1 }).expect("finite");

    // Stage "None" fits the biases alone; stage Some(f) fits factor f (with the
    // biases). With `funk_cycles` > 1 the factors are revisited in turn
    // (backfitting): factor f is taken out of the cached sums, refitted, put back.
    let mut stages: Vec<Option<usize>> = Vec::new();
    if h.biased {
        stages.push(None);
    }
    for _ in 0..h.funk_cycles.max(1) {
        stages.extend((0..k).map(Some));
    }
    let mut fitted = vec![false; k];
    for f in stages {
        match f {
            Some(f) if fitted[f] => {
                pu.iter_mut()
                    .zip(model.user_factors.column(f))
                    .for_each(|(a, &b)| *a = b);
                qi.iter_mut()
                    .zip(model.item_factors.column(f))
                    .for_each(|(a, &b)| *a = b);
                frozen_pen -= h.reg as f64 * (sq(&pu) + sq(&qi));
                for (r, fz) in ratings.iter().zip(frozen.iter_mut()) {
                    *fz -= pu[r.user as usize] * qi[r.item as usize];
                }
                for v in held.iter_mut() {
                    if let (Some(u), Some(i)) = (v.user, v.item) {
                        v.frozen -= pu[u] * qi[i];
                    }
                }
            }
            Some(f) => {
                // Random, not constant: with biases learned the residual's row sums
                // are ~0, so a constant start sits on a near-zero gradient.
                fitted[f] = true;
                pu.iter_mut()
                    .chain(qi.iter_mut())
                    .for_each(|x| *x = normal.sample(&mut rng));
            }
            None => {
                pu.fill(0.0);
                qi.fill(0.0);
            }
        }
        for e in 0..h.epochs {
            let d = h.lr_decay.powi(e as i32);
            let (lr, lrb) = (h.lr * d, h.lr_bias * d);
            let mut sse = 0.0f64;
            for (r, &fz) in ratings.iter().zip(&frozen) {
                let (u, i) = (r.user as usize, r.item as usize);
                let (a, b) = (pu[u], qi[i]);
                let err = r.value - (mu + bu[u] + bi[i] + fz + a * b);
                sse += (err as f64) * (err as f64);
                if h.biased {
                    bu[u] += lrb * (err - h.reg_bias * bu[u]);
                    bi[i] += lrb * (err - h.reg_bias * bi[i]);
                }
                if f.is_some() {
                    pu[u] = a + lr * (err * b - h.reg * a);
                    qi[i] = b + lr * (err * a - h.reg * b);
                }
            }
            epoch_no += 1;
            // The in-pass error is the classic SGD running estimate; it is what Funk printed.
            let bias_pen = h.reg_bias as f64 * (sq(&bu) + sq(&bi));
            let pen = h.reg as f64 * (sq(&pu) + sq(&qi));
            let validation_rmse = validation.map(|_| {
                let s: f64 = held
                    .iter()
                    .map(|v| {
                        let mut pred =
                            mu + v.user.map_or(0.0, |u| bu[u]) + v.item.map_or(0.0, |i| bi[i]);
                        if let (Some(u), Some(i)) = (v.user, v.item) {
                            pred += v.frozen + pu[u] * qi[i];
                        }
                        if !h.biased && (v.user.is_none() || v.item.is_none()) {
                            pred = (h.scale.min + h.scale.max) / 2.0;
                        }
                        let err = (v.value - h.scale.clamp(pred)) as f64;
                        err * err
                    })
                    .sum();
                (s / held.len().max(1) as f64).sqrt()
            });
            let stats = EpochStats {
                epoch: epoch_no,
                loss: 0.5 * (sse + bias_pen + frozen_pen + pen),
                train_rmse: (sse / ratings.len().max(1) as f64).sqrt(),
                validation_rmse,
            };
            if report(model, epoch_no, Progress::Full(stats)).is_break() {
                write_back(model, f, &bu, &bi, &pu, &qi);
                return;
            }
        }
        write_back(model, f, &bu, &bi, &pu, &qi);
        if f.is_some() {
            // Freeze the factor: fold it into the cached sums.
            frozen_pen += h.reg as f64 * (sq(&pu) + sq(&qi));
            for (r, fz) in ratings.iter().zip(frozen.iter_mut()) {
                *fz += pu[r.user as usize] * qi[r.item as usize];
            }
            for v in held.iter_mut() {
                if let (Some(u), Some(i)) = (v.user, v.item) {
                    v.frozen += pu[u] * qi[i];
                }
            }
        }
    }
}

fn write_back(model: &mut Model, f: Option<usize>, bu: &[f32], bi: &[f32], pu: &[f32], qi: &[f32]) {
    model
        .user_bias
        .iter_mut()
        .zip(bu)
        .for_each(|(a, &b)| *a = b);
    model
        .item_bias
        .iter_mut()
        .zip(bi)
        .for_each(|(a, &b)| *a = b);
    if let Some(f) = f {
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
}
