//! Stochastic gradient descent: one update per rating, a fresh seeded shuffle each epoch.

use super::super::data::Rating;
use super::super::model::{dot, Model};
use super::Progress;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::ControlFlow;

/// Step sizes and penalties for one epoch.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub lr: f32,
    pub lr_bias: f32,
    pub reg: f32,
    pub reg_bias: f32,
    pub mu: f32,
    pub biased: bool,
}

/// One SGD update for rating `r` on rows `p` (user) and `q` (item); returns the error.
#[inline(always)]
pub fn step(
    p: &mut [f32],
    q: &mut [f32],
    bu: &mut f32,
    bi: &mut f32,
    r: f32,
    rates: &Rates,
) -> f32 {
    let k = p.len().min(q.len());
    let (p, q) = (&mut p[..k], &mut q[..k]);
    let e = r - (rates.mu + *bu + *bi + dot(p, q));
    if rates.biased {
        *bu += rates.lr_bias * (e - rates.reg_bias * *bu);
        *bi += rates.lr_bias * (e - rates.reg_bias * *bi);
    }
    let (lr, reg) = (rates.lr, rates.reg);
    for (pf, qf) in p.iter_mut().zip(q.iter_mut()) {
        let (a, b) = (*pf, *qf);
        *pf = a + lr * (e * b - reg * a);
        *qf = b + lr * (e * a - reg * b);
    }
    e
}

/// One pass over `ratings` in their current order.
pub fn epoch(model: &mut Model, ratings: &[Rating], rates: &Rates) {
    let k = model.factors();
    let pu = model.user_factors.as_slice_mut().expect("row-major");
    let qi = model.item_factors.as_slice_mut().expect("row-major");
    let bu = model.user_bias.as_slice_mut().expect("contiguous");
    let bi = model.item_bias.as_slice_mut().expect("contiguous");
    for r in ratings {
        let (u, i) = (r.user as usize, r.item as usize);
        step(
            &mut pu[u * k..(u + 1) * k],
            &mut qi[i * k..(i + 1) * k],
            &mut bu[u],
            &mut bi[i],
            r.value,
            rates,
        );
    }
}

pub(super) fn rates_for(model: &Model, epoch: usize) -> Rates {
    let h = &model.hyper;
    let decay = h.lr_decay.powi(epoch as i32);
    Rates {
        lr: h.lr * decay,
        lr_bias: h.lr_bias * decay,
        reg: h.reg,
        reg_bias: h.reg_bias,
        mu: model.global_mean,
        biased: h.biased,
    }
}

pub(super) fn run(
    model: &mut Model,
    ratings: &mut [Rating],
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(model.hyper.seed ^ 0x5eed_5eed);
    for e in 0..model.hyper.epochs {
        ratings.shuffle(&mut rng);
        let rates = rates_for(model, e);
        epoch(model, ratings, &rates);
        if report(model, e + 1, Progress::Compute).is_break() {
            break;
        }
    }
}
