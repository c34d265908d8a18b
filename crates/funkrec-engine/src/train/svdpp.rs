//! SVD++ (Koren 2008): SGD on r̂ = μ + b_u + b_i + q_i·(p_u + |N(u)|^-½ Σ_{j∈N(u)} y_j), user by user, with the implicit factors' gradient accumulated per user.
//!
//! N(u) is the set of items user u rated in training. Every epoch visits the users
//! in a fresh seeded order and each user's ratings in a fixed seeded order. For
//! user u with n = |N(u)| ratings, c = n^-½:
//!
//! ```text
//! s = c Σ_{j∈N(u)} y_j            (once per user: Y does not change during the user)
//! z = p_u + s,  g = 0
//! per rating (i, r):  e = r − (μ + b_u + b_i + q_i·z)
//!   b_u += η_b (e − λ_b b_u),  b_i += η_b (e − λ_b b_i)
//!   g += e q_i;  p_u += η (e q_i − λ p_u);  q_i += η (e z − λ q_i);  z = p_u + s
//! after the user, for every j ∈ N(u):  y_j += η (c g − λ y_j)
//! ```
//!
//! so an epoch costs O(|R|·k) (the per-rating update of every y_j, as in Surprise,
//! would cost O(Σ n²·k)). The y_j step applies the n per-rating gradients of y_j at
//! once, and λ acts on y_j once per user who rated j, i.e. once per rating of j, as
//! it does on p_u and q_i. After every epoch the model's user rows are set to the
//! effective vectors p_u + c Σ y_j (from the epoch's final Y) and Y is in
//! `Model::implicit`, so the model handed to the epoch reporter predicts exactly and
//! is complete (a snapshot of biases, P, Q and Y restores the epoch); the raw p_u stay
//! in the trainer. Serial: `hyper.threads` does not apply.

use crate::data::Rating;
use crate::model::{dot_k, madd, EpochStats, Model};
use crate::train::sgd::{prefetch, rates_for, Rates, PREFETCH};
use crate::train::{Gradient, Objective, Progress};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::ops::ControlFlow;

/// The training ratings grouped by user: user u's are `ratings[start[u]..start[u + 1]]`.
struct ByUser<'a> {
    ratings: &'a [Rating],
    start: Vec<usize>,
}

impl<'a> ByUser<'a> {
    /// Sorts `ratings` by (user, item), then shuffles each user's ratings (seeded), so
    /// the visiting order does not depend on the order the ratings came in.
    fn build(ratings: &'a mut [Rating], n_users: usize, rng: &mut ChaCha8Rng) -> Self {
        ratings.sort_unstable_by_key(|r| (r.user, r.item));
        let mut start = vec![0usize; n_users + 1];
        for r in ratings.iter() {
            start[r.user as usize + 1] += 1;
        }
        for u in 0..n_users {
            start[u + 1] += start[u];
        }
        for u in 0..n_users {
            ratings[start[u]..start[u + 1]].shuffle(rng);
        }
        ByUser { ratings, start }
    }

    fn of(&self, u: usize) -> &[Rating] {
        &self.ratings[self.start[u]..self.start[u + 1]]
    }
}

/// Per-user scratch rows: the implicit term s, the user vector z = p_u + s and the
/// accumulated Σ e q_i.
struct Scratch {
    s: Vec<f32>,
    z: Vec<f32>,
    g: Vec<f32>,
}

impl Scratch {
    fn new(k: usize) -> Self {
        Scratch {
            s: vec![0.0; k],
            z: vec![0.0; k],
            g: vec![0.0; k],
        }
    }
}

/// s = c Σ_{j ∈ items} y_j, c = |items|^-½ (zero for no items).
#[inline(always)]
fn implicit_sum(rs: &[Rating], y: &[f32], k: usize, s: &mut [f32]) {
    s.fill(0.0);
    for (n, r) in rs.iter().enumerate() {
        if let Some(nx) = rs.get(n + PREFETCH) {
            prefetch(y[nx.item as usize * k..].as_ptr(), k);
        }
        let row = &y[r.item as usize * k..(r.item as usize + 1) * k];
        for (a, &b) in s.iter_mut().zip(row) {
            *a += b;
        }
    }
    if !rs.is_empty() {
        let c = 1.0 / (rs.len() as f32).sqrt();
        s.iter_mut().for_each(|a| *a *= c);
    }
}

/// One user's updates (see the module docs); returns Σe² with each error taken
/// just before its update.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn user_step<const FMA: bool>(
    rs: &[Rating],
    p: &mut [f32],
    bu: &mut f32,
    q: &mut [f32],
    bi: &mut [f32],
    y: &mut [f32],
    st: &mut Scratch,
    rates: &Rates,
) -> f64 {
    let k = p.len();
    let (s, z, g) = (&mut st.s[..k], &mut st.z[..k], &mut st.g[..k]);
    implicit_sum(rs, y, k, s);
    for ((zv, &pv), &sv) in z.iter_mut().zip(p.iter()).zip(s.iter()) {
        *zv = pv + sv;
    }
    g.fill(0.0);
    let shrink = 1.0 - rates.lr * rates.reg;
    let mut sse = 0.0f64;
    for (n, r) in rs.iter().enumerate() {
        if let Some(nx) = rs.get(n + PREFETCH) {
            prefetch(q[nx.item as usize * k..].as_ptr(), k);
        }
        let i = r.item as usize;
        let qi = &mut q[i * k..(i + 1) * k];
        let e = r.value - (rates.mu + *bu + bi[i] + dot_k::<FMA>(z, qi));
        sse += (e * e) as f64;
        if rates.biased {
            *bu += rates.lr_bias * (e - rates.reg_bias * *bu);
            bi[i] += rates.lr_bias * (e - rates.reg_bias * bi[i]);
        }
        let ge = rates.lr * e;
        for l in 0..k {
            let (pl, ql, zl) = (p[l], qi[l], z[l]);
            g[l] = madd::<FMA>(e, ql, g[l]);
            let np = madd::<FMA>(ge, ql, pl * shrink);
            p[l] = np;
            z[l] = np + s[l];
            qi[l] = madd::<FMA>(ge, zl, ql * shrink);
        }
    }
    if !rs.is_empty() {
        let a = rates.lr / (rs.len() as f32).sqrt();
        for r in rs {
            let j = r.item as usize;
            for (yv, &gv) in y[j * k..(j + 1) * k].iter_mut().zip(g.iter()) {
                *yv = madd::<FMA>(a, gv, *yv * shrink);
            }
        }
    }
    sse
}

/// One epoch over the users in `order` (`p`: the raw user factors), then the model's
/// user rows set to the effective vectors from the final Y. Returns Σe² measured
/// during the pass.
#[inline(always)]
fn epoch<const FMA: bool>(
    model: &mut Model,
    by_user: &ByUser<'_>,
    order: &[u32],
    p: &mut Array2<f32>,
    st: &mut Scratch,
    rates: &Rates,
) -> f64 {
    let k = model.factors();
    let Model {
        user_bias,
        item_bias,
        user_factors,
        item_factors,
        implicit,
        ..
    } = model;
    let y = implicit.as_mut().expect("svdpp keeps Y in the model");
    let y = y.as_slice_mut().expect("row-major");
    let q = item_factors.as_slice_mut().expect("row-major");
    let bi = item_bias.as_slice_mut().expect("contiguous");
    let p = p.as_slice_mut().expect("row-major");
    let mut sse = 0.0;
    for &u in order {
        let u = u as usize;
        let pu = &mut p[u * k..(u + 1) * k];
        sse += user_step::<FMA>(by_user.of(u), pu, &mut user_bias[u], q, bi, y, st, rates);
    }
    let eff = user_factors.as_slice_mut().expect("row-major");
    for u in 0..eff.len() / k {
        implicit_sum(by_user.of(u), y, k, &mut st.s);
        let (row, pu) = (&mut eff[u * k..(u + 1) * k], &p[u * k..(u + 1) * k]);
        for ((e, &a), &b) in row.iter_mut().zip(pu).zip(&st.s) {
            *e = a + b;
        }
    }
    sse
}

/// [`epoch`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn epoch_avx2(
    model: &mut Model,
    by_user: &ByUser<'_>,
    order: &[u32],
    p: &mut Array2<f32>,
    st: &mut Scratch,
    rates: &Rates,
) -> f64 {
    epoch::<true>(model, by_user, order, p, st, rates)
}

fn run_epoch(
    model: &mut Model,
    by_user: &ByUser<'_>,
    order: &[u32],
    p: &mut Array2<f32>,
    st: &mut Scratch,
    rates: &Rates,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::model::has_avx2_fma() {
        // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
        return unsafe { epoch_avx2(model, by_user, order, p, st, rates) };
    }
    epoch::<false>(model, by_user, order, p, st, rates)
}

fn sq(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| x as f64 * x as f64).sum()
}

/// λ(‖P‖² + ‖Q‖² + ‖Y‖²) + λ_b(‖b_u‖² + ‖b_i‖²) (biases only when biased), P the raw factors.
fn penalty(model: &Model, p: &Array2<f32>) -> f64 {
    let h = &model.hyper;
    let y = model
        .implicit
        .as_ref()
        .map_or(0.0, |y| sq(y.as_slice().unwrap()));
    let mut pen =
        h.reg as f64 * (sq(p.as_slice().unwrap()) + sq(model.item_factors.as_slice().unwrap()) + y);
    if h.biased {
        pen += h.reg_bias as f64
            * (sq(model.user_bias.as_slice().unwrap()) + sq(model.item_bias.as_slice().unwrap()));
    }
    pen
}

/// Trains `model` by SVD++ on `ratings` (regrouped by user), reporting every epoch with
/// the model's user rows set to the effective vectors and Y in `model.implicit`.
pub(crate) fn run(
    model: &mut Model,
    ratings: &mut [Rating],
    validation: Option<&[Rating]>,
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    let (nu, ni, k) = (model.n_users(), model.n_items(), model.factors());
    assert!(
        ratings
            .iter()
            .all(|r| (r.user as usize) < nu && (r.item as usize) < ni),
        "rating index outside the model"
    );
    let h = model.hyper.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(h.seed ^ 0x5356_4450_5050);
    let mut y = Array2::<f32>::zeros((ni, k));
    if h.init_std > 0.0 {
        let normal = Normal::new(0.0f32, h.init_std).expect("finite std");
        y.iter_mut().for_each(|x| *x = normal.sample(&mut rng));
    }
    model.implicit = Some(y);
    let by_user = ByUser::build(ratings, nu, &mut rng);
    let mut order: Vec<u32> = (0..nu as u32)
        .filter(|&u| !by_user.of(u as usize).is_empty())
        .collect();
    // The raw user factors p_u; the model's rows hold the effective vectors.
    let mut p = model.user_factors.clone();
    let mut st = Scratch::new(k);
    let n = by_user.ratings.len().max(1) as f64;
    for e in 0..h.epochs {
        order.shuffle(&mut rng);
        let rates = rates_for(model, e);
        let mut sse = run_epoch(model, &by_user, &order, &mut p, &mut st, &rates);
        if e + 1 == h.epochs {
            // The last epoch reports the exact error of the final model.
            sse = by_user
                .ratings
                .iter()
                .map(|r| {
                    let d = r.value - model.raw_predict(Some(r.user), Some(r.item));
                    (d * d) as f64
                })
                .sum();
        }
        let stats = EpochStats {
            epoch: e + 1,
            loss: 0.5 * (sse + penalty(model, &p)),
            train_rmse: (sse / n).sqrt(),
            validation_rmse: validation.map(|v| crate::train::rmse_of(model, v)),
        };
        if report(model, e + 1, Progress::Full(stats)).is_break() {
            break;
        }
    }
}

/// All SVD++ parameters in f64: the shared ones (with *raw* user factors p_u) and Y.
#[derive(Debug, Clone, PartialEq)]
pub struct SvdppParams {
    pub base: Gradient,
    /// Y: one row per item.
    pub implicit: Array2<f64>,
}

/// Per user: N(u) as item indices (from `ratings`), then c Σ y_j and p_u + c Σ y_j.
fn effective(t: &SvdppParams, ratings: &[Rating]) -> (Vec<Vec<usize>>, Array2<f64>) {
    let nu = t.base.user_factors.nrows();
    let mut rated = vec![Vec::new(); nu];
    for r in ratings {
        rated[r.user as usize].push(r.item as usize);
    }
    let mut z = t.base.user_factors.clone();
    for (u, items) in rated.iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        let c = 1.0 / (items.len() as f64).sqrt();
        for &j in items {
            z.row_mut(u).scaled_add(c, &t.implicit.row(j));
        }
    }
    (rated, z)
}

fn residual(t: &SvdppParams, o: &Objective, z: &Array2<f64>, r: &Rating) -> f64 {
    let (u, i) = (r.user as usize, r.item as usize);
    let b = if o.biased {
        t.base.user_bias[u] + t.base.item_bias[i]
    } else {
        0.0
    };
    r.value as f64 - (o.mu + b + z.row(u).dot(&t.base.item_factors.row(i)))
}

/// The SVD++ objective in f64: ½ Σ e² + ½ λ (‖P‖² + ‖Q‖² + ‖Y‖²) + ½ λ_b (‖b_u‖² + ‖b_i‖²),
/// N(u) being each user's items in `ratings`.
pub fn svdpp_objective(t: &SvdppParams, o: &Objective, ratings: &[Rating]) -> f64 {
    let (_, z) = effective(t, ratings);
    let sse: f64 = ratings.iter().map(|r| residual(t, o, &z, r).powi(2)).sum();
    let sq = |a: &Array2<f64>| a.iter().map(|x| x * x).sum::<f64>();
    let mut pen = o.reg * (sq(&t.base.user_factors) + sq(&t.base.item_factors) + sq(&t.implicit));
    if o.biased {
        pen += o.reg_bias
            * (t.base.user_bias.iter().map(|x| x * x).sum::<f64>()
                + t.base.item_bias.iter().map(|x| x * x).sum::<f64>());
    }
    0.5 * (sse + pen)
}

/// The analytic gradient of [`svdpp_objective`]: ∂/∂p_u = −Σ_i e q_i + λ p_u,
/// ∂/∂q_i = −Σ_u e z_u + λ q_i, ∂/∂y_j = −Σ_{u: j∈N(u)} c_u Σ_{i∈R(u)} e q_i + λ y_j.
pub fn svdpp_gradient(t: &SvdppParams, o: &Objective, ratings: &[Rating]) -> SvdppParams {
    let (rated, z) = effective(t, ratings);
    let mut g = SvdppParams {
        base: Gradient {
            user_bias: t.base.user_bias.mapv(|_| 0.0),
            item_bias: t.base.item_bias.mapv(|_| 0.0),
            user_factors: t.base.user_factors.mapv(|_| 0.0),
            item_factors: t.base.item_factors.mapv(|_| 0.0),
        },
        implicit: t.implicit.mapv(|_| 0.0),
    };
    // −Σ_i e q_i per user: the data part of ∂/∂p_u, which ∂/∂y_j reuses.
    for r in ratings {
        let (u, i) = (r.user as usize, r.item as usize);
        let e = residual(t, o, &z, r);
        if o.biased {
            g.base.user_bias[u] -= e;
            g.base.item_bias[i] -= e;
        }
        g.base
            .user_factors
            .row_mut(u)
            .scaled_add(-e, &t.base.item_factors.row(i));
        g.base.item_factors.row_mut(i).scaled_add(-e, &z.row(u));
    }
    for (u, items) in rated.iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        let c = 1.0 / (items.len() as f64).sqrt();
        let data = g.base.user_factors.row(u).to_owned();
        for &j in items {
            g.implicit.row_mut(j).scaled_add(c, &data);
        }
    }
    g.base.user_factors.scaled_add(o.reg, &t.base.user_factors);
    g.base.item_factors.scaled_add(o.reg, &t.base.item_factors);
    g.implicit.scaled_add(o.reg, &t.implicit);
    if o.biased {
        g.base.user_bias.scaled_add(o.reg_bias, &t.base.user_bias);
        g.base.item_bias.scaled_add(o.reg_bias, &t.base.item_bias);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IdMap;
    use crate::params::{Hyper, TrainerKind};
    use rand::Rng;

    /// The fused per-user step equals the textbook updates written out plainly.
    #[test]
    fn user_step_matches_the_textbook_updates() {
        let k = 5;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (ni, rates) = (
            6usize,
            Rates {
                lr: 0.05,
                lr_bias: 0.02,
                reg: 0.1,
                reg_bias: 0.03,
                mu: 3.0,
                biased: true,
            },
        );
        let mut q: Vec<f32> = (0..ni * k).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let mut y: Vec<f32> = (0..ni * k).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let mut p: Vec<f32> = (0..k).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let mut bi = vec![0.1f32; ni];
        let mut bu = -0.2f32;
        let rs: Vec<Rating> = [(1u32, 4.0f32), (4, 2.0), (0, 5.0)]
            .iter()
            .map(|&(item, value)| Rating {
                user: 0,
                item,
                value,
            })
            .collect();
        // the textbook version
        let (mut q2, mut y2, mut p2, mut bi2, mut bu2) =
            (q.clone(), y.clone(), p.clone(), bi.clone(), bu);
        let c = 1.0 / (rs.len() as f32).sqrt();
        let s: Vec<f32> = (0..k)
            .map(|l| c * rs.iter().map(|r| y2[r.item as usize * k + l]).sum::<f32>())
            .collect();
        let mut g = vec![0.0f32; k];
        let mut sse = 0.0f64;
        for r in &rs {
            let i = r.item as usize;
            let z: Vec<f32> = (0..k).map(|l| p2[l] + s[l]).collect();
            let dot: f32 = (0..k).map(|l| z[l] * q2[i * k + l]).sum();
            let e = r.value - (3.0 + bu2 + bi2[i] + dot);
            sse += (e * e) as f64;
            bu2 += 0.02 * (e - 0.03 * bu2);
            bi2[i] += 0.02 * (e - 0.03 * bi2[i]);
            for l in 0..k {
                let (pl, ql) = (p2[l], q2[i * k + l]);
                g[l] += e * ql;
                p2[l] = pl + 0.05 * (e * ql - 0.1 * pl);
                q2[i * k + l] = ql + 0.05 * (e * z[l] - 0.1 * ql);
            }
        }
        for r in &rs {
            for l in 0..k {
                let v = &mut y2[r.item as usize * k + l];
                *v += 0.05 * (c * g[l] - 0.1 * *v);
            }
        }
        let mut st = Scratch::new(k);
        let got = user_step::<false>(
            &rs, &mut p, &mut bu, &mut q, &mut bi, &mut y, &mut st, &rates,
        );
        assert!((got - sse).abs() < 1e-4, "{got} vs {sse}");
        assert!((bu - bu2).abs() < 1e-5);
        for (a, b) in p
            .iter()
            .zip(&p2)
            .chain(q.iter().zip(&q2))
            .chain(y.iter().zip(&y2))
            .chain(bi.iter().zip(&bi2))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// The trained model carries Y, its rows predict what the last epoch reported, and
    /// `Model::implicit_term` rebuilds a user's term from Y and their items.
    #[test]
    fn the_model_keeps_effective_vectors_and_y() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let ids = |n: usize| IdMap::from_ids((0..n).map(|i| i.to_string()).collect()).unwrap();
        let (nu, ni) = (40usize, 30usize);
        let mut ratings: Vec<Rating> = (0..600)
            .map(|_| Rating {
                user: rng.gen_range(0..nu as u32),
                item: rng.gen_range(0..ni as u32),
                value: rng.gen_range(1..=5) as f32,
            })
            .collect();
        let hyper = Hyper {
            trainer: TrainerKind::Svdpp,
            factors: 4,
            epochs: 3,
            init_std: 0.1,
            ..Hyper::default()
        };
        let mut seen = Vec::new();
        let m =
            crate::train::train_ratings(&ids(nu), &ids(ni), &mut ratings, &hyper, None, &mut |s| {
                seen.push(s.train_rmse);
                ControlFlow::Continue(())
            })
            .unwrap();
        let y = m.implicit.as_ref().expect("svdpp model has Y");
        assert_eq!(y.dim(), (ni, 4));
        // The last epoch's train RMSE is exact for the returned model's rows.
        let direct = crate::train::epoch_stats(&m, &ratings, None, 3).train_rmse;
        assert!((seen[2] - direct).abs() < 1e-9, "{} vs {direct}", seen[2]);
        // A user's implicit term comes from the model's Y and their rated items.
        let items: Vec<u32> = ratings
            .iter()
            .filter(|r| r.user == 0)
            .map(|r| r.item)
            .collect();
        let s = m.implicit_term(items.iter().copied()).unwrap();
        let c = 1.0 / (items.len() as f32).sqrt();
        for l in 0..4 {
            let want: f32 = c * items.iter().map(|&j| y[[j as usize, l]]).sum::<f32>();
            assert!((s[l] - want).abs() < 1e-5);
        }
    }
}
