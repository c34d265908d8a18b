//! Simon Funk's feature-at-a-time training: biases first, then factor 1 on the
//! residual until its epochs are done, freeze it, then factor 2, and so on (the
//! biases keep learning alongside each factor). Residuals of the frozen factors
//! are cached, so every epoch is O(ratings) whatever the factor count.

use crate::data::Rating;
use crate::model::{clamp_prediction, raw_from_parts, EpochStats, Model};
use crate::params::Hyper;
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

/// What the trainer learns in one stage.
#[derive(Clone, Copy)]
enum Stage {
    /// The biases alone.
    Biases,
    /// Factor `f` (column f of P and Q), with the biases.
    Factor(usize),
}

/// The training state: the biases and the factor being fitted as plain vectors,
/// plus the per-rating (and per validation rating) sums of the frozen factors.
struct Funk<'a> {
    hyper: Hyper,
    mu: f32,
    /// The training ratings, in the order every epoch visits them.
    ratings: &'a [Rating],
    /// Σ over frozen factors of p_uf·q_if, per training rating.
    frozen: Vec<f32>,
    /// λ(‖p_f‖² + ‖q_f‖²) summed over the frozen factors.
    frozen_pen: f64,
    /// The validation ratings (None: the trainer was given none).
    held: Option<Vec<Held>>,
    bu: Vec<f32>,
    bi: Vec<f32>,
    /// The factor being fitted: column f of P and of Q.
    pu: Vec<f32>,
    qi: Vec<f32>,
    /// Epochs run so far, over all stages.
    epochs_done: usize,
}

impl<'a> Funk<'a> {
    fn new(model: &Model, ratings: &'a [Rating], validation: Option<&[Rating]>) -> Self {
        let (nu, ni) = (model.n_users(), model.n_items());
        let held = validation.map(|v| {
            v.iter()
                .map(|r| Held {
                    user: ((r.user as usize) < nu).then_some(r.user as usize),
                    item: ((r.item as usize) < ni).then_some(r.item as usize),
                    value: r.value,
                    frozen: 0.0,
                })
                .collect()
        });
        Funk {
            hyper: model.hyper.clone(),
            mu: model.global_mean,
            ratings,
            frozen: vec![0.0; ratings.len()],
            frozen_pen: 0.0,
            held,
            bu: vec![0.0; nu],
            bi: vec![0.0; ni],
            pu: vec![0.0; nu],
            qi: vec![0.0; ni],
            epochs_done: 0,
        }
    }

    /// Bias stage: no factor is fitted (the current one is zero).
    fn clear_factor(&mut self) {
        self.pu.fill(0.0);
        self.qi.fill(0.0);
    }

    /// A new factor starts random, not constant: with biases learned the
    /// residual's row sums are ~0, so a constant start sits on a near-zero gradient.
    fn start_factor(&mut self, rng: &mut ChaCha8Rng, normal: &Normal<f32>) {
        self.pu
            .iter_mut()
            .chain(self.qi.iter_mut())
            .for_each(|x| *x = normal.sample(rng));
    }

    /// Backfitting: loads factor `f` from `model` and takes it out of the frozen sums.
    fn take_out(&mut self, model: &Model, f: usize) {
        copy(&mut self.pu, model.user_factors.column(f));
        copy(&mut self.qi, model.item_factors.column(f));
        self.fold(-1.0);
    }

    /// Freezes the current factor: adds it into the frozen sums.
    fn put_back(&mut self) {
        self.fold(1.0);
    }

    /// Adds (`sign` 1) or removes (−1) the current factor to or from the frozen sums and penalty.
    fn fold(&mut self, sign: f32) {
        let (pu, qi) = (&self.pu, &self.qi);
        self.frozen_pen += sign as f64 * self.hyper.reg as f64 * (sq(pu) + sq(qi));
        for (r, fz) in self.ratings.iter().zip(self.frozen.iter_mut()) {
            *fz += sign * (pu[r.user as usize] * qi[r.item as usize]);
        }
        for v in self.held.iter_mut().flatten() {
            if let (Some(u), Some(i)) = (v.user, v.item) {
                v.frozen += sign * (pu[u] * qi[i]);
            }
        }
    }

    /// One pass over the ratings: SGD on the biases and, in a factor stage, on
    /// the current factor; returns Σe² (errors before each update).
    fn epoch(&mut self, e: usize, stage: Stage) -> f64 {
        let h = &self.hyper;
        let d = h.lr_decay.powi(e as i32);
        let (lr, lrb) = (h.lr * d, h.lr_bias * d);
        let fit_factor = matches!(stage, Stage::Factor(_));
        let (bu, bi, pu, qi) = (&mut self.bu, &mut self.bi, &mut self.pu, &mut self.qi);
        let mut sse = 0.0f64;
        for (r, &fz) in self.ratings.iter().zip(&self.frozen) {
            let (u, i) = (r.user as usize, r.item as usize);
            let (a, b) = (pu[u], qi[i]);
            let err = r.value - (self.mu + bu[u] + bi[i] + fz + a * b);
            sse += (err as f64) * (err as f64);
            if h.biased {
                bu[u] += lrb * (err - h.reg_bias * bu[u]);
                bi[i] += lrb * (err - h.reg_bias * bi[i]);
            }
            if fit_factor {
                pu[u] = a + lr * (err * b - h.reg * a);
                qi[i] = b + lr * (err * a - h.reg * b);
            }
        }
        self.epochs_done += 1;
        sse
    }

    /// RMSE of the clamped predictions on the validation ratings, if any.
    fn validation_rmse(&self) -> Option<f64> {
        let held = self.held.as_ref()?;
        let (bu, bi, pu, qi) = (&self.bu, &self.bi, &self.pu, &self.qi);
        let s: f64 = held
            .iter()
            .map(|v| {
                let known = v.user.zip(v.item);
                let raw = raw_from_parts(
                    self.mu,
                    v.user.map(|u| bu[u]),
                    v.item.map(|i| bi[i]),
                    known.map(|(u, i)| v.frozen + pu[u] * qi[i]),
                );
                let err = (v.value - clamp_prediction(&self.hyper, raw, known.is_some())) as f64;
                err * err
            })
            .sum();
        Some((s / held.len().max(1) as f64).sqrt())
    }

    /// The epoch's statistics from its in-pass Σe² (the classic SGD running
    /// estimate; it is what Funk printed) and the exact penalty.
    fn stats(&self, sse: f64) -> EpochStats {
        let h = &self.hyper;
        let bias_pen = h.reg_bias as f64 * (sq(&self.bu) + sq(&self.bi));
        let pen = h.reg as f64 * (sq(&self.pu) + sq(&self.qi));
        EpochStats {
            epoch: self.epochs_done,
            loss: 0.5 * (sse + bias_pen + self.frozen_pen + pen),
            train_rmse: (sse / self.ratings.len().max(1) as f64).sqrt(),
            validation_rmse: self.validation_rmse(),
        }
    }

    /// Writes the biases and, in a factor stage, the current factor into `model`.
    fn write_back(&self, model: &mut Model, stage: Stage) {
        copy(model.user_bias.view_mut(), &self.bu);
        copy(model.item_bias.view_mut(), &self.bi);
        if let Stage::Factor(f) = stage {
            copy(model.user_factors.column_mut(f), &self.pu);
            copy(model.item_factors.column_mut(f), &self.qi);
        }
    }
}

/// Element-wise copy of `src` into `dst` (up to the shorter length).
fn copy<'x>(dst: impl IntoIterator<Item = &'x mut f32>, src: impl IntoIterator<Item = &'x f32>) {
    dst.into_iter().zip(src).for_each(|(a, &b)| *a = b);
}

/// Trains `model` feature by feature on `ratings` (shuffled once), reporting every epoch.
pub(crate) fn run(
    model: &mut Model,
    ratings: &mut [Rating],
    validation: Option<&[Rating]>,
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    let h = model.hyper.clone();
    let k = model.factors();
    model.user_factors.fill(0.0);
    model.item_factors.fill(0.0);
    ratings.shuffle(&mut ChaCha8Rng::seed_from_u64(h.seed ^ 0xf00f));
    let mut state = Funk::new(model, ratings, validation);
    let mut rng = ChaCha8Rng::seed_from_u64(h.seed ^ 0xfeed);
    let normal =
        Normal::new(0.0f32, if h.init_std > 0.0 { h.init_std } else { 0.1 }).expect("finite");

    // With `funk_cycles` > 1 the factors are revisited in turn (backfitting):
    // factor f is taken out of the cached sums, refitted, put back.
    let mut stages: Vec<Stage> = Vec::new();
    if h.biased {
        stages.push(Stage::Biases);
    }
    for _ in 0..h.funk_cycles.max(1) {
        stages.extend((0..k).map(Stage::Factor));
    }
    let mut fitted = vec![false; k];
    for stage in stages {
        match stage {
            Stage::Factor(f) if fitted[f] => state.take_out(model, f),
            Stage::Factor(f) => {
                fitted[f] = true;
                state.start_factor(&mut rng, &normal);
            }
            Stage::Biases => state.clear_factor(),
        }
        for e in 0..h.epochs {
            let sse = state.epoch(e, stage);
            let stats = state.stats(sse);
            // The reporter sees the current parameters (early stopping copies them);
            // O(users + items), small beside the epoch's O(ratings).
            state.write_back(model, stage);
            let progress = if e + 1 == h.epochs {
                Progress::Full(stats)
            } else {
                Progress::Within(stats)
            };
            if report(model, stats.epoch, progress).is_break() {
                return;
            }
        }
        state.write_back(model, stage);
        if let Stage::Factor(_) = stage {
            state.put_back();
        }
    }
}
