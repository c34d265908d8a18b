//! Fold-in: one user's bias and factors solved again against a model's fixed item factors and biases.
//!
//! With the items fixed, the training objective restricted to user u is a ridge
//! regression in x = (b_u, p_u):
//!
//! ```text
//! min_x  Σ_{i∈R(u)} (r_ui − μ − b_i − b_u − p_u·q_i)² + c·(λ_b b_u² + λ ‖p_u‖²)
//! ```
//!
//! where c = |R(u)| for the trainers that apply weight decay once per rating
//! (`sgd`, `funk`: their epoch's fixed point is this objective) and c = 1 for `gd`
//! (its penalty is on each parameter once). With z_i = (1, q_i) the minimiser
//! solves (ZᵀZ + c·D) x = Zᵀ t, t_i = r_ui − μ − b_i, D = diag(λ_b, λ, …, λ): a
//! (k+1)×(k+1) symmetric positive definite system, solved by Cholesky. When the
//! user has fewer ratings than unknowns, the same x comes cheaper from the n×n
//! dual system: with W = Z (cD)^-½, x = (cD)^-½ Wᵀ (W Wᵀ + I)⁻¹ t.
//!
//! `svdpp` (c = |R(u)|): the user vector is p_u + s, s = |N|^-½ Σ_{j∈N} y_j over the
//! items N of the ratings given (the user's rated set now), computed from the model's
//! Y. s is a fixed offset: t_i = r_ui − μ − b_i − s·q_i, the same system gives
//! (b_u, p_u), and the vector returned is the effective p_u + s.
//! Why closed form and not a few SGD passes: `docs/accuracy.md` (fold-in).

use crate::model::{dot4, dot_k, madd, Model};
use crate::params::TrainerKind;

/// Smallest ridge term, so that λ = 0 still gives a positive definite system.
const MIN_RIDGE: f64 = 1e-6;

/// A user's solved bias and factors (the bias is 0 for an unbiased model).
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    pub bias: f32,
    pub factors: Vec<f32>,
    /// Ratings of items the model knows that went into the solve.
    pub n_ratings: usize,
}

impl Folded {
    /// The clamped prediction μ + b_u + b_i + p_u·q_i for item `i` of `model`.
    pub fn predict(&self, model: &Model, i: u32) -> f32 {
        let raw = model.global_mean
            + self.bias
            + model.item_bias[i as usize]
            + crate::model::dot(&self.factors, model.item_row(i));
        model.hyper.scale.clamp(raw)
    }
}

/// Solves user factors and bias for `ratings` (model item index, rating) against
/// the fixed items of `model`. None when no rating is of a known item.
/// Items outside the model are skipped; a repeated item counts twice.
pub fn fold_in(model: &Model, ratings: &[(u32, f32)]) -> Option<Folded> {
    let known: Vec<(u32, f32)> = ratings
        .iter()
        .copied()
        .filter(|&(i, r)| (i as usize) < model.n_items() && r.is_finite())
        .collect();
    if known.is_empty() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::model::has_avx2_fma() {
        // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
        return Some(unsafe { fold_in_avx2(model, &known) });
    }
    Some(solve::<false>(model, &known, None))
}

/// [`solve`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fold_in_avx2(model: &Model, known: &[(u32, f32)]) -> Folded {
    solve::<true>(model, known, None)
}

/// The alternative to the closed form, kept for the comparison `funkrec eval
/// --new-users` reports: the `sgd` trainer's own update restricted to the user
/// (items fixed), from zero, `hyper.epochs` passes in a seeded order with the
/// trainer's step sizes and decay. None when no rating is of a known item.
pub fn fold_in_sgd(model: &Model, ratings: &[(u32, f32)]) -> Option<Folded> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut known: Vec<(u32, f32)> = ratings
        .iter()
        .copied()
        .filter(|&(i, r)| (i as usize) < model.n_items() && r.is_finite())
        .collect();
    if known.is_empty() {
        return None;
    }
    let h = &model.hyper;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(h.seed);
    let (mut lr, mut lr_b) = (h.lr, h.lr_bias);
    // svdpp: the implicit term s is a fixed offset of the user vector p + s.
    let s = model
        .implicit_term(known.iter().map(|&(i, _)| i))
        .unwrap_or_else(|| vec![0.0; model.factors()]);
    let mut p = vec![0.0f32; model.factors()];
    let mut z = s.clone();
    let mut bu = 0.0f32;
    for _ in 0..h.epochs {
        known.shuffle(&mut rng);
        for &(i, r) in &known {
            let q = model.item_row(i);
            let bi = if h.biased {
                model.item_bias[i as usize]
            } else {
                0.0
            };
            let e = r - (model.global_mean + bu + bi + crate::model::dot(&z, q));
            if h.biased {
                bu += lr_b * (e - h.reg_bias * bu);
            }
            for (((pv, zv), &qv), &sv) in p.iter_mut().zip(&mut z).zip(q).zip(&s) {
                *pv += lr * (e * qv - h.reg * *pv);
                *zv = *pv + sv;
            }
        }
        lr *= h.lr_decay;
        lr_b *= h.lr_decay;
    }
    Some(Folded {
        bias: bu,
        factors: z,
        n_ratings: known.len(),
    })
}

/// The per-coordinate ridge weights c·D (bias first when the model is biased).
fn ridge(model: &Model, n: usize) -> Vec<f32> {
    let h = &model.hyper;
    let c = match h.trainer {
        TrainerKind::Sgd | TrainerKind::Funk | TrainerKind::Svdpp => n as f64,
        TrainerKind::Gd => 1.0,
    };
    let w = |lambda: f32| (c * lambda as f64).max(MIN_RIDGE) as f32;
    let mut d = Vec::with_capacity(model.factors() + 1);
    if h.biased {
        d.push(w(h.reg_bias));
    }
    d.extend(std::iter::repeat(w(h.reg)).take(model.factors()));
    d
}

/// The ridge solution; `dual` picks the system (None: the smaller one).
#[inline(always)]
fn solve<const FMA: bool>(model: &Model, known: &[(u32, f32)], dual: Option<bool>) -> Folded {
    let biased = model.hyper.biased;
    let k = model.factors();
    let d = ridge(model, known.len());
    let dim = d.len();
    let n = known.len();
    // svdpp: the implicit term, a fixed offset of the user vector.
    let offset = model.implicit_term(known.iter().map(|&(i, _)| i));
    // Rows z_i (bias column first) and targets t_i.
    let mut z = vec![0.0f32; n * dim];
    let mut t = vec![0.0f32; n];
    for (row, (&(i, r), ti)) in z.chunks_exact_mut(dim).zip(known.iter().zip(&mut t)) {
        let (head, q) = row.split_at_mut(usize::from(biased));
        if let Some(b) = head.first_mut() {
            *b = 1.0;
        }
        q.copy_from_slice(model.item_row(i));
        *ti = r
            - model.global_mean
            - if biased {
                model.item_bias[i as usize]
            } else {
                0.0
            };
        if let Some(s) = &offset {
            *ti -= dot_k::<FMA>(s, q);
        }
    }
    let x = if dual.unwrap_or(n < dim) {
        // Dual: scale columns by D^-½, solve (W Wᵀ + I) a = t, x = D^-½ Wᵀ a.
        let s: Vec<f32> = d.iter().map(|v| 1.0 / v.sqrt()).collect();
        for row in z.chunks_exact_mut(dim) {
            for (x, s) in row.iter_mut().zip(&s) {
                *x *= s;
            }
        }
        let mut g = gram_lower::<FMA>(&z, n, dim);
        for a in 0..n {
            g[a * n + a] += 1.0;
        }
        cholesky::<FMA>(&mut g, n);
        let a = cholesky_solve::<FMA>(&g, n, t);
        let mut x = vec![0.0f32; dim];
        for (row, &aj) in z.chunks_exact(dim).zip(&a) {
            for (xv, &w) in x.iter_mut().zip(row) {
                *xv = madd::<FMA>(aj, w, *xv);
            }
        }
        for (xv, s) in x.iter_mut().zip(&s) {
            *xv *= s;
        }
        x
    } else {
        // Primal: (ZᵀZ + D) x = Zᵀ t, from the columns of Z.
        let mut zt = vec![0.0f32; dim * n];
        for (r, row) in z.chunks_exact(dim).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                zt[c * n + r] = v;
            }
        }
        let mut g = gram_lower::<FMA>(&zt, dim, n);
        let rhs: Vec<f32> = zt
            .chunks_exact(n)
            .map(|col| dot_k::<FMA>(col, &t))
            .collect();
        for (j, dj) in d.iter().enumerate() {
            g[j * dim + j] += dj;
        }
        cholesky::<FMA>(&mut g, dim);
        cholesky_solve::<FMA>(&g, dim, rhs)
    };
    let (bias, mut factors) = match biased {
        true => (x[0], x[1..].to_vec()),
        false => (0.0, x),
    };
    debug_assert_eq!(factors.len(), k);
    if let Some(s) = &offset {
        factors.iter_mut().zip(s).for_each(|(p, s)| *p += s);
    }
    Folded {
        bias,
        factors,
        n_ratings: n,
    }
}

/// Four dot products p·q0..p·q3 (each q at least as long as p); with `FMA` by
/// AVX2 intrinsics (eight accumulators, each load of p shared by the four rows).
#[inline(always)]
fn dot4f<const FMA: bool>(p: &[f32], q: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only under `fold_in_avx2`, reached after
        // `has_avx2_fma` confirmed AVX2 and FMA; every q row is at least p.len() long.
        return unsafe { dot4_avx2(p, q) };
    }
    dot4::<FMA>(p, q)
}

/// [`dot4f`] with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot4_avx2(p: &[f32], q: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = p.len();
    let q = [&q[0][..k], &q[1][..k], &q[2][..k], &q[3][..k]];
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut o = 0;
    while o + 16 <= k {
        // SAFETY: o + 16 ≤ k and every slice has k elements.
        unsafe {
            let x0 = _mm256_loadu_ps(p.as_ptr().add(o));
            let x1 = _mm256_loadu_ps(p.as_ptr().add(o + 8));
            for (r, row) in q.iter().enumerate() {
                let y0 = _mm256_loadu_ps(row.as_ptr().add(o));
                let y1 = _mm256_loadu_ps(row.as_ptr().add(o + 8));
                acc[r] = _mm256_fmadd_ps(x0, y0, acc[r]);
                acc[r + 4] = _mm256_fmadd_ps(x1, y1, acc[r + 4]);
            }
        }
        o += 16;
    }
    if o + 8 <= k {
        // SAFETY: o + 8 ≤ k and every slice has k elements.
        unsafe {
            let x0 = _mm256_loadu_ps(p.as_ptr().add(o));
            for (r, row) in q.iter().enumerate() {
                let y0 = _mm256_loadu_ps(row.as_ptr().add(o));
                acc[r] = _mm256_fmadd_ps(x0, y0, acc[r]);
            }
        }
        o += 8;
    }
    let mut out = [0.0f32; 4];
    for (r, v) in out.iter_mut().enumerate() {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` has room for eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[r], acc[r + 4])) };
        let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for j in o..k {
            s = p[j].mul_add(q[r][j], s);
        }
        *v = s;
    }
    out
}

/// The 2 × 4 block of dot products p_a·q_b (each q at least as long as the p's,
/// which have one length); with `FMA` by AVX2 intrinsics, so each load serves two or
/// four multiply-adds.
#[inline(always)]
fn dot2x4f<const FMA: bool>(p: [&[f32]; 2], q: [&[f32]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: as in `dot4f`: only under `fold_in_avx2`, after `has_avx2_fma`.
        return unsafe { dot2x4_avx2(p, q) };
    }
    [dot4::<FMA>(p[0], q), dot4::<FMA>(p[1], q)]
}

/// [`dot2x4f`] with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot2x4_avx2(p: [&[f32]; 2], q: [&[f32]; 4]) -> [[f32; 4]; 2] {
    use std::arch::x86_64::*;
    let k = p[0].len();
    let p = [p[0], &p[1][..k]];
    let q = [&q[0][..k], &q[1][..k], &q[2][..k], &q[3][..k]];
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut o = 0;
    while o + 8 <= k {
        // SAFETY: o + 8 ≤ k and every slice has k elements.
        unsafe {
            let x0 = _mm256_loadu_ps(p[0].as_ptr().add(o));
            let x1 = _mm256_loadu_ps(p[1].as_ptr().add(o));
            for (r, row) in q.iter().enumerate() {
                let y = _mm256_loadu_ps(row.as_ptr().add(o));
                acc[r] = _mm256_fmadd_ps(x0, y, acc[r]);
                acc[r + 4] = _mm256_fmadd_ps(x1, y, acc[r + 4]);
            }
        }
        o += 8;
    }
    let mut out = [[0.0f32; 4]; 2];
    for (a, line) in out.iter_mut().enumerate() {
        for (r, v) in line.iter_mut().enumerate() {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` has room for eight f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r + 4 * a]) };
            let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for j in o..k {
                s = p[a][j].mul_add(q[r][j], s);
            }
            *v = s;
        }
    }
    out
}

/// The lower triangle of M Mᵀ for the `rows` × `len` row-major M (row-major,
/// `rows` × `rows`; the upper triangle is left 0). Four dot products share each
/// load of row a.
#[inline(always)]
fn gram_lower<const FMA: bool>(m: &[f32], rows: usize, len: usize) -> Vec<f32> {
    let row = |a: usize| &m[a * len..(a + 1) * len];
    let mut g = vec![0.0f32; rows * rows];
    let mut a = 0;
    while a < rows {
        // rows a and a + 1 together, four columns at a time, below both diagonals
        let pair = a + 1 < rows;
        let mut b = 0;
        while pair && b + 4 <= a + 1 {
            let q = [row(b), row(b + 1), row(b + 2), row(b + 3)];
            let d = dot2x4f::<FMA>([row(a), row(a + 1)], q);
            g[a * rows + b..a * rows + b + 4].copy_from_slice(&d[0]);
            g[(a + 1) * rows + b..(a + 1) * rows + b + 4].copy_from_slice(&d[1]);
            b += 4;
        }
        let last = if pair { a + 1 } else { a };
        for r in a..=last {
            for c in b..=r {
                g[r * rows + c] = dot_k::<FMA>(row(r), row(c));
            }
        }
        a = last + 1;
    }
    g
}

/// In-place lower Cholesky factor of the symmetric positive definite `m` × `m`
/// matrix whose lower triangle is in `g` (row-major); the upper triangle is ignored.
/// Column by column (L_ij = (A_ij − L_i,<j · L_j,<j) / L_jj for every i > j at once,
/// four rows per pass over row j's prefix). A pivot that rounding made non-positive
/// is replaced by a tiny positive one.
#[inline(always)]
fn cholesky<const FMA: bool>(g: &mut [f32], m: usize) {
    for j in 0..m {
        let (done, rest) = g.split_at_mut((j + 1) * m);
        let row_j = &mut done[j * m..];
        let s = dot_k::<FMA>(&row_j[..j], &row_j[..j]);
        let pivot = row_j[j] - s;
        let ljj = if pivot > 0.0 {
            pivot.sqrt()
        } else {
            f32::MIN_POSITIVE.sqrt()
        };
        row_j[j] = ljj;
        let lj = &row_j[..j];
        let below = m - j - 1;
        let mut i = 0;
        while i + 4 <= below {
            let at = |r: usize| &rest[(i + r) * m..(i + r) * m + j];
            let d = dot4f::<FMA>(lj, [at(0), at(1), at(2), at(3)]);
            for (r, dr) in d.iter().enumerate() {
                let e = &mut rest[(i + r) * m + j];
                *e = (*e - dr) / ljj;
            }
            i += 4;
        }
        for r in i..below {
            let s = dot_k::<FMA>(lj, &rest[r * m..r * m + j]);
            let e = &mut rest[r * m + j];
            *e = (*e - s) / ljj;
        }
    }
}

/// Solves L Lᵀ x = b with the factor from [`cholesky`].
#[inline(always)]
fn cholesky_solve<const FMA: bool>(l: &[f32], m: usize, mut b: Vec<f32>) -> Vec<f32> {
    for i in 0..m {
        let s = dot_k::<FMA>(&l[i * m..i * m + i], &b[..i]);
        b[i] = (b[i] - s) / l[i * m + i];
    }
    for i in (0..m).rev() {
        let bi = b[i] / l[i * m + i];
        b[i] = bi;
        for (bj, &lij) in b[..i].iter_mut().zip(&l[i * m..i * m + i]) {
            *bj = madd::<FMA>(-lij, bi, *bj);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IdMap;
    use crate::params::Hyper;
    use rand::{Rng, SeedableRng};

    fn model(k: usize, items: usize, biased: bool, trainer: TrainerKind) -> Model {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut ids = IdMap::new();
        for i in 0..items {
            ids.intern(&format!("i{i}"));
        }
        let hyper = Hyper {
            factors: k,
            biased,
            trainer,
            reg: 0.05,
            reg_bias: 0.02,
            ..Hyper::default()
        };
        let mut m = Model::zeros(hyper, IdMap::new(), ids, if biased { 3.5 } else { 0.0 });
        m.item_factors.mapv_inplace(|_| rng.gen_range(-0.5..0.5));
        if trainer == TrainerKind::Svdpp {
            m.implicit = Some(m.item_factors.mapv(|_| rng.gen_range(-0.5..0.5)));
        }
        if biased {
            m.item_bias.mapv_inplace(|_| rng.gen_range(-0.5..0.5));
        }
        m
    }

    /// The svdpp implicit term of `ratings` in f64 (zeros for other models).
    fn offset(m: &Model, ratings: &[(u32, f32)]) -> Vec<f64> {
        let k = m.factors();
        let Some(y) = &m.implicit else {
            return vec![0.0; k];
        };
        let c = 1.0 / (ratings.len() as f64).sqrt();
        (0..k)
            .map(|l| {
                c * ratings
                    .iter()
                    .map(|&(i, _)| y[[i as usize, l]] as f64)
                    .sum::<f64>()
            })
            .collect()
    }

    /// The objective the fold-in minimises, in f64, in the raw p (the user vector is
    /// p plus the svdpp implicit term, the penalty is on p).
    fn objective(m: &Model, ratings: &[(u32, f32)], bias: f64, p: &[f64]) -> f64 {
        let d = ridge(m, ratings.len());
        let s = offset(m, ratings);
        let mut loss = 0.0;
        for &(i, r) in ratings {
            let q = m.item_row(i);
            let pq: f64 = p
                .iter()
                .zip(&s)
                .zip(q)
                .map(|((a, s), b)| (a + s) * *b as f64)
                .sum();
            let bi = if m.hyper.biased {
                m.item_bias[i as usize] as f64
            } else {
                0.0
            };
            let e = r as f64 - m.global_mean as f64 - bi - bias - pq;
            loss += e * e;
        }
        let (db, dp) = match m.hyper.biased {
            true => (d[0] as f64, d[1] as f64),
            false => (0.0, d[0] as f64),
        };
        loss + db * bias * bias + dp * p.iter().map(|x| x * x).sum::<f64>()
    }

    /// The solution is the minimiser: the objective's gradient there is ~0, and
    /// moving any coordinate either way does not lower the objective.
    fn check_optimal(m: &Model, ratings: &[(u32, f32)]) {
        let f = fold_in(m, ratings).expect("known items");
        let s = offset(m, ratings);
        let p: Vec<f64> = f
            .factors
            .iter()
            .zip(&s)
            .map(|(&x, s)| x as f64 - s)
            .collect();
        let b = f.bias as f64;
        let base = objective(m, ratings, b, &p);
        let h = 1e-3;
        for j in 0..p.len() {
            for s in [-h, h] {
                let mut q = p.clone();
                q[j] += s;
                assert!(
                    objective(m, ratings, b, &q) >= base - 1e-6 * base.max(1.0),
                    "coordinate {j} moved by {s} lowers the objective"
                );
            }
        }
        if m.hyper.biased {
            for s in [-h, h] {
                assert!(objective(m, ratings, b + s, &p) >= base - 1e-6 * base.max(1.0));
            }
        } else {
            assert_eq!(f.bias, 0.0);
        }
    }

    fn ratings(n: usize, items: usize, seed: u64) -> Vec<(u32, f32)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.gen_range(0..items as u32), rng.gen_range(1..=5) as f32))
            .collect()
    }

    #[test]
    fn primal_and_dual_solutions_minimise_the_ridge_objective() {
        for trainer in [TrainerKind::Sgd, TrainerKind::Gd, TrainerKind::Svdpp] {
            for biased in [true, false] {
                let m = model(12, 60, biased, trainer);
                check_optimal(&m, &ratings(40, 60, 1)); // primal: n ≥ k + 1
                check_optimal(&m, &ratings(5, 60, 2)); // dual: n < k + 1
            }
        }
    }

    #[test]
    fn primal_and_dual_systems_give_the_same_solution() {
        for (n, trainer) in [3, 8, 9, 30]
            .into_iter()
            .flat_map(|n| [(n, TrainerKind::Sgd), (n, TrainerKind::Svdpp)])
        {
            let m = model(8, 40, true, trainer);
            let r = ratings(n, 40, n as u64);
            let p = solve::<false>(&m, &r, Some(false));
            let d = solve::<false>(&m, &r, Some(true));
            assert!(
                (p.bias - d.bias).abs() < 1e-4,
                "n={n}: {} vs {}",
                p.bias,
                d.bias
            );
            for (a, b) in p.factors.iter().zip(&d.factors) {
                assert!((a - b).abs() < 1e-4, "n={n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn recovers_a_planted_user_and_skips_unknown_items() {
        let mut m = model(10, 200, true, TrainerKind::Gd);
        m.hyper.reg = 0.0;
        m.hyper.reg_bias = 0.0;
        let truth: Vec<f32> = (0..10).map(|j| (j as f32 - 4.5) / 10.0).collect();
        let bu = 0.3f32;
        let mut r: Vec<(u32, f32)> = (0..200u32)
            .map(|i| {
                let pq = crate::model::dot(&truth, m.item_row(i));
                (i, m.global_mean + bu + m.item_bias[i as usize] + pq)
            })
            .collect();
        r.push((999, 5.0)); // not in the model
        let f = fold_in(&m, &r).unwrap();
        assert_eq!(f.n_ratings, 200);
        assert!((f.bias - bu).abs() < 1e-3, "bias {}", f.bias);
        for (a, b) in f.factors.iter().zip(&truth) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!((f.predict(&m, 3) - r[3].1.clamp(1.0, 5.0)).abs() < 1e-3);
        assert!(fold_in(&m, &[(999, 4.0)]).is_none());
    }

    /// svdpp: ratings made by p + |N|^-½ Σ y_j over the user's rated items are solved
    /// back to that effective vector (the implicit term from Y, p and b_u by the solve),
    /// by the closed form and by the SGD fold-in. (That the penalty is on p, not on the
    /// effective vector, is checked with λ > 0 by the optimality test above.)
    #[test]
    fn svdpp_fold_in_recovers_a_planted_user_with_its_implicit_term() {
        let mut m = model(6, 120, true, TrainerKind::Svdpp);
        m.hyper.reg = 0.0;
        m.hyper.reg_bias = 0.0;
        let p: Vec<f32> = (0..6).map(|j| (j as f32 - 2.5) / 8.0).collect();
        let bu = -0.2f32;
        let items: Vec<u32> = (0..120).step_by(2).collect();
        let s = m.implicit_term(items.iter().copied()).unwrap();
        let z: Vec<f32> = p.iter().zip(&s).map(|(a, b)| a + b).collect();
        let r: Vec<(u32, f32)> = items
            .iter()
            .map(|&i| {
                let pq = crate::model::dot(&z, m.item_row(i));
                (i, m.global_mean + bu + m.item_bias[i as usize] + pq)
            })
            .collect();
        let f = fold_in(&m, &r).unwrap();
        assert!((f.bias - bu).abs() < 1e-3, "bias {}", f.bias);
        for (a, b) in f.factors.iter().zip(&z) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        // The SGD fold-in starts from p = 0, i.e. from the implicit term alone, and
        // with enough constant-step passes reaches the same fit.
        m.hyper.epochs = 1000;
        m.hyper.lr_decay = 1.0;
        let sg = fold_in_sgd(&m, &r).unwrap();
        let err: f32 = r
            .iter()
            .map(|&(i, v)| (sg.predict(&m, i) - v.clamp(1.0, 5.0)).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.01, "sgd fold-in max error {err}");
    }
}
