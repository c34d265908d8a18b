//! Full-batch gradient descent on the regularised squared error, in f64, with an
//! Armijo backtracking line search (so the loss never increases) seeded by a
//! Barzilai–Borwein step.
//!
//! Objective over the observed set Ω, with e_ui = r_ui − μ − b_u − b_i − p_u·q_i:
//! L = ½ Σ_Ω e² + ½ λ (‖P‖² + ‖Q‖²) + ½ λ_b (‖b_u‖² + ‖b_i‖²).
//! Its gradient in matrix form is ∇_P = −E Q + λP, ∇_Q = −Eᵀ P + λQ, so a step
//! of size t is the lecture's P ← P + t·E·Q, Q ← Q + t·Eᵀ·P (plus decay).

use crate::data::Rating;
use crate::model::Model;
use crate::train::Progress;
use ndarray::{Array1, Array2, Zip};
use std::ops::ControlFlow;

/// All trainable parameters in f64 (also used for gradients of the same shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient {
    pub user_bias: Array1<f64>,
    pub item_bias: Array1<f64>,
    pub user_factors: Array2<f64>,
    pub item_factors: Array2<f64>,
}

impl Gradient {
    pub fn from_model(m: &Model) -> Self {
        Gradient {
            user_bias: m.user_bias.mapv(f64::from),
            item_bias: m.item_bias.mapv(f64::from),
            user_factors: m.user_factors.mapv(f64::from),
            item_factors: m.item_factors.mapv(f64::from),
        }
    }

    pub fn write_to(&self, m: &mut Model) {
        Zip::from(&mut m.user_bias)
            .and(&self.user_bias)
            .for_each(|a, &b| *a = b as f32);
        Zip::from(&mut m.item_bias)
            .and(&self.item_bias)
            .for_each(|a, &b| *a = b as f32);
        Zip::from(&mut m.user_factors)
            .and(&self.user_factors)
            .for_each(|a, &b| *a = b as f32);
        Zip::from(&mut m.item_factors)
            .and(&self.item_factors)
            .for_each(|a, &b| *a = b as f32);
    }

    fn zeros_like(&self) -> Self {
        Gradient {
            user_bias: Array1::zeros(self.user_bias.raw_dim()),
            item_bias: Array1::zeros(self.item_bias.raw_dim()),
            user_factors: Array2::zeros(self.user_factors.raw_dim()),
            item_factors: Array2::zeros(self.item_factors.raw_dim()),
        }
    }

    /// Σ aᵢbᵢ over every parameter.
    pub fn dot(&self, o: &Self) -> f64 {
        (&self.user_bias * &o.user_bias).sum()
            + (&self.item_bias * &o.item_bias).sum()
            + (&self.user_factors * &o.user_factors).sum()
            + (&self.item_factors * &o.item_factors).sum()
    }

    /// self + a·o
    fn add_scaled(&self, a: f64, o: &Self) -> Self {
        Gradient {
            user_bias: &self.user_bias + &(&o.user_bias * a),
            item_bias: &self.item_bias + &(&o.item_bias * a),
            user_factors: &self.user_factors + &(&o.user_factors * a),
            item_factors: &self.item_factors + &(&o.item_factors * a),
        }
    }
}

/// Penalties and intercept the objective needs.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    pub mu: f64,
    pub reg: f64,
    pub reg_bias: f64,
    pub biased: bool,
}

impl Objective {
    pub fn of(m: &Model) -> Self {
        Objective {
            mu: m.global_mean as f64,
            reg: m.hyper.reg as f64,
            reg_bias: m.hyper.reg_bias as f64,
            biased: m.hyper.biased,
        }
    }
}

#[inline]
fn residual(t: &Gradient, o: &Objective, r: &Rating) -> f64 {
    let (u, i) = (r.user as usize, r.item as usize);
    let pq = t.user_factors.row(u).dot(&t.item_factors.row(i));
    let b = if o.biased {
        t.user_bias[u] + t.item_bias[i]
    } else {
        0.0
    };
    r.value as f64 - (o.mu + b + pq)
}

/// The regularised objective L(θ) in f64.
pub fn objective_f64(t: &Gradient, o: &Objective, ratings: &[Rating]) -> f64 {
    let sse: f64 = ratings.iter().map(|r| residual(t, o, r).powi(2)).sum();
    let sq = |a: f64| a * a;
    let mut pen = o.reg
        * (t.user_factors.iter().map(|&x| sq(x)).sum::<f64>()
            + t.item_factors.iter().map(|&x| sq(x)).sum::<f64>());
    if o.biased {
        pen += o.reg_bias
            * (t.user_bias.iter().map(|&x| sq(x)).sum::<f64>()
                + t.item_bias.iter().map(|&x| sq(x)).sum::<f64>());
    }
    0.5 * (sse + pen)
}

/// The analytic gradient ∇L(θ): one pass over the ratings (sparse E·Q and Eᵀ·P).
pub fn gradient(t: &Gradient, o: &Objective, ratings: &[Rating]) -> Gradient {
    let mut g = t.zeros_like();
    for r in ratings {
        let (u, i) = (r.user as usize, r.item as usize);
        let e = residual(t, o, r);
        if o.biased {
            g.user_bias[u] -= e;
            g.item_bias[i] -= e;
        }
        let (pu, qi) = (t.user_factors.row(u), t.item_factors.row(i));
        g.user_factors.row_mut(u).scaled_add(-e, &qi);
        g.item_factors.row_mut(i).scaled_add(-e, &pu);
    }
    g.user_factors.scaled_add(o.reg, &t.user_factors);
    g.item_factors.scaled_add(o.reg, &t.item_factors);
    if o.biased {
        g.user_bias.scaled_add(o.reg_bias, &t.user_bias);
        g.item_bias.scaled_add(o.reg_bias, &t.item_bias);
    }
    g
}

/// Armijo sufficient-decrease constant.
const ARMIJO_C: f64 = 1e-4;

pub(super) fn run(
    model: &mut Model,
    ratings: &[Rating],
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    let obj = Objective::of(model);
    let mut theta = Gradient::from_model(model);
    let mut f = objective_f64(&theta, &obj, ratings);
    let mut g = gradient(&theta, &obj, ratings);
    let mut step = model.hyper.lr as f64;
    for epoch in 1..=model.hyper.epochs {
        let gg = g.dot(&g);
        if gg == 0.0 || !gg.is_finite() {
            break;
        }
        // Backtrack until the loss drops by at least c·t·‖g‖²; never accept an increase.
        let mut accepted = None;
        while step > 1e-30 {
            let cand = theta.add_scaled(-step, &g);
            let fc = objective_f64(&cand, &obj, ratings);
            if fc.is_finite() && fc <= f - ARMIJO_C * step * gg {
                accepted = Some((cand, fc));
                break;
            }
            step *= 0.5;
        }
        let Some((cand, fc)) = accepted else { break };
        let g_new = gradient(&cand, &obj, ratings);
        // Barzilai–Borwein: s = Δθ = −t·g, y = Δg; next trial step s·s / s·y.
        let y = g_new.add_scaled(-1.0, &g);
        let sy = -step * g.dot(&y);
        let ss = step * step * gg;
        step = if sy > 0.0 {
            (ss / sy).min(1e6)
        } else {
            step * 2.0
        };
        theta = cand;
        f = fc;
        g = g_new;
        theta.write_to(model);
        if report(model, epoch, Progress::Loss(f)).is_break() {
            break;
        }
    }
    theta.write_to(model);
}
