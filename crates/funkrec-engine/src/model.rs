//! The learned model: biases and factor matrices, prediction, top-N and similar items.

use crate::data::{IdMap, Rating};
use crate::params::Hyper;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Loss and (optional) validation error after one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EpochStats {
    /// 1-based epoch number (for `funk`: counted across all factors).
    pub epoch: usize,
    /// Regularised objective ½Σe² + ½λΣ‖θ‖² over the training ratings.
    ///
    /// For `sgd`, every epoch but the last reports the *running estimate*: Σe²
    /// uses each rating's error measured during the pass, just before its own
    /// update (no second pass over the data); the penalty is exact. The last
    /// epoch's value is exact.
    pub loss: f64,
    /// RMSE on the training ratings (for `sgd`: the running estimate, exact on
    /// the last epoch, as for `loss`).
    pub train_rmse: f64,
    /// RMSE on the validation ratings, when the trainer was given some.
    pub validation_rmse: Option<f64>,
}

/// What a training run reports alongside the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochStats>,
    pub train_seconds: f64,
    pub n_ratings: usize,
    /// With early stopping (`patience` > 0 and a validation set): the epoch of the
    /// lowest validation RMSE, whose parameters the model holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// The run ended before `epochs` because the validation RMSE had not improved
    /// for `patience` epochs.
    #[serde(default)]
    pub stopped_early: bool,
    /// The caller ended the run before `epochs` (e.g. the service's time budget for a
    /// first model); with early stopping the model holds the best epoch so far.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_short: bool,
}

impl TrainReport {
    pub fn last(&self) -> Option<&EpochStats> {
        self.epochs.last()
    }

    /// The statistics of the epoch whose parameters the model holds: the best epoch
    /// under early stopping, otherwise the last.
    pub fn kept(&self) -> Option<&EpochStats> {
        self.best_epoch
            .and_then(|b| self.epochs.iter().rev().find(|e| e.epoch == b))
            .or_else(|| self.epochs.last())
    }
}

/// A copy of a model's trained parameters (biases and factors), taken by early
/// stopping at the best epoch and put back at the end of the run. A parameter a
/// trainer adds to [`Model`] belongs here too (and in the two methods below).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    user_bias: Array1<f32>,
    item_bias: Array1<f32>,
    user_factors: Array2<f32>,
    item_factors: Array2<f32>,
    /// `svdpp`'s implicit factors Y (None for the other trainers).
    implicit: Option<Array2<f32>>,
}

/// A prediction for one (user, item) pair, saying which terms were known.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub rating: f32,
    pub known_user: bool,
    pub known_item: bool,
}

/// Biased matrix factorisation r̂ = μ + b_u + b_i + p_u·q_i (or p_u·q_i alone).
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub hyper: Hyper,
    pub users: IdMap,
    pub items: IdMap,
    /// μ (0 when `hyper.biased` is false).
    pub global_mean: f32,
    pub user_bias: Array1<f32>,
    pub item_bias: Array1<f32>,
    /// P: one row per user, `hyper.factors` columns. For `svdpp` each row is the
    /// user's *effective* vector p_u + |N(u)|^-½ Σ_{j∈N(u)} y_j (N(u): the items the
    /// user rated in training), so serving is the same one pass over Q as for `sgd`.
    pub user_factors: Array2<f32>,
    /// Q: one row per item, `hyper.factors` columns.
    pub item_factors: Array2<f32>,
    /// `svdpp` only: Y, the implicit item factors (one row per item), which fold-in
    /// needs to rebuild a user's implicit term from the items they rated now.
    pub implicit: Option<Array2<f32>>,
    /// Training ratings per item (for popularity fallback).
    pub item_counts: Vec<u32>,
    /// Sum of training ratings per item (for the damped mean).
    pub item_sums: Vec<f64>,
    pub report: TrainReport,
}

impl Model {
    /// Copies the trained parameters into `into` (reusing its buffers when it holds a
    /// copy of the same shape: at Netflix size P alone is 576 MB at k = 300).
    pub fn snapshot_params(&self, into: &mut Option<Params>) {
        match into {
            Some(p)
                if p.user_factors.dim() == self.user_factors.dim()
                    && p.item_factors.dim() == self.item_factors.dim() =>
            {
                p.user_bias.assign(&self.user_bias);
                p.item_bias.assign(&self.item_bias);
                p.user_factors.assign(&self.user_factors);
                p.item_factors.assign(&self.item_factors);
                match (&mut p.implicit, &self.implicit) {
                    (Some(to), Some(from)) if to.dim() == from.dim() => to.assign(from),
                    (to, from) => *to = from.clone(),
                }
            }
            _ => {
                *into = Some(Params {
                    user_bias: self.user_bias.clone(),
                    item_bias: self.item_bias.clone(),
                    user_factors: self.user_factors.clone(),
                    item_factors: self.item_factors.clone(),
                    implicit: self.implicit.clone(),
                })
            }
        }
    }

    /// Puts back parameters taken by [`Model::snapshot_params`] from this model.
    pub fn restore_params(&mut self, params: Params) {
        self.user_bias = params.user_bias;
        self.item_bias = params.item_bias;
        self.user_factors = params.user_factors;
        self.item_factors = params.item_factors;
        self.implicit = params.implicit;
    }
}

/// Dot product written so LLVM vectorises it (8 independent accumulators).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let o = c * 8;
        for l in 0..8 {
            acc[l] += a[o + l] * b[o + l];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for j in chunks * 8..n {
        s += a[j] * b[j];
    }
    s
}

#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with 16 independent accumulators (two AVX vectors); with `FMA`
/// it must run inside a function compiled with the `fma` target feature.
#[inline(always)]
pub(crate) fn dot_k<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut ta = ra.chunks_exact(8);
    let mut tb = rb.chunks_exact(8);
    for (x, y) in (&mut ta).zip(&mut tb) {
        for l in 0..8 {
            acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    let mut s = 0.0f32;
    for (x, y) in ta.remainder().iter().zip(tb.remainder()) {
        s = madd::<FMA>(*x, *y, s);
    }
    let mut h = [0.0f32; 8];
    for l in 0..8 {
        h[l] = acc[l] + acc[l + 8];
    }
    s + ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]))
}

/// μ + b_u + b_i + p·q from its parts, unclamped; an unknown side's bias is
/// `None`, and so is the interaction unless both sides are known.
#[inline(always)]
pub(crate) fn raw_from_parts(mu: f32, bu: Option<f32>, bi: Option<f32>, pq: Option<f32>) -> f32 {
    let mut r = mu;
    if let Some(b) = bu {
        r += b;
    }
    if let Some(b) = bi {
        r += b;
    }
    if let Some(x) = pq {
        r += x;
    }
    r
}

/// A raw prediction clamped to the rating scale. Plain Funk (no μ, no biases)
/// has nothing to say about an unknown side (`known` false): it falls back to
/// the middle of the scale.
#[inline(always)]
pub(crate) fn clamp_prediction(hyper: &Hyper, raw: f32, known: bool) -> f32 {
    let r = if !hyper.biased && !known {
        (hyper.scale.min + hyper.scale.max) / 2.0
    } else {
        raw
    };
    hyper.scale.clamp(r)
}

/// Whether this CPU runs the AVX2+FMA kernels (checked once, then cached by std).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Four dot products p·q0..p·q3 at once (p is loaded once for all four).
#[inline(always)]
pub(crate) fn dot4<const FMA: bool>(p: &[f32], q: [&[f32]; 4]) -> [f32; 4] {
    let k = p.len();
    let q = q.map(|r| &r[..k]);
    let mut acc = [[0.0f32; 8]; 4];
    let full = k / 8 * 8;
    let mut o = 0;
    while o < full {
        for (a, r) in acc.iter_mut().zip(&q) {
            for l in 0..8 {
                a[l] = madd::<FMA>(p[o + l], r[o + l], a[l]);
            }
        }
        o += 8;
    }
    let mut out = [0.0f32; 4];
    for ((x, a), r) in out.iter_mut().zip(&acc).zip(&q) {
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for j in full..k {
            s = madd::<FMA>(p[j], r[j], s);
        }
        *x = s;
    }
    out
}

/// Scores b_i + p·q_i for every item not excluded, keeping the best in `top`.
/// One sequential pass over Q, four rows at a time.
#[inline(always)]
fn scan_items<const FMA: bool>(
    p: &[f32],
    q: &[f32],
    bias: &[f32],
    exclude: &impl Fn(u32) -> bool,
    top: &mut TopK,
) {
    let k = p.len().max(1);
    let n = bias.len().min(q.len() / k);
    let mut i = 0;
    while i + 4 <= n {
        let rows = [0, 1, 2, 3].map(|j| &q[(i + j) * k..(i + j + 1) * k]);
        let d = dot4::<FMA>(p, rows);
        for (j, dj) in d.iter().enumerate() {
            let item = (i + j) as u32;
            if !exclude(item) {
                top.push(bias[i + j] + dj, item);
            }
        }
        i += 4;
    }
    for i in i..n {
        if !exclude(i as u32) {
            top.push(bias[i] + dot_k::<FMA>(p, &q[i * k..(i + 1) * k]), i as u32);
        }
    }
}

/// [`scan_items`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_items_avx2(
    p: &[f32],
    q: &[f32],
    bias: &[f32],
    exclude: &impl Fn(u32) -> bool,
    top: &mut TopK,
) {
    scan_items::<true>(p, q, bias, exclude, top)
}

/// p·q_i computed exactly as [`Model::top_n`]'s scan computes it (same kernel,
/// same rounding), for rescoring single items; `n` is the number of items.
#[inline(always)]
fn item_dot<const FMA: bool>(p: &[f32], q: &[f32], i: usize, n: usize) -> f32 {
    let k = p.len().max(1);
    let row = &q[i * k..(i + 1) * k];
    if i < n / 4 * 4 {
        dot4::<FMA>(p, [row; 4])[0]
    } else {
        dot_k::<FMA>(p, row)
    }
}

/// [`item_dot`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn item_dot_avx2(p: &[f32], q: &[f32], i: usize, n: usize) -> f32 {
    item_dot::<true>(p, q, i, n)
}

/// b_i + p·q_i, bit-identical to the score [`Model::top_n`] ranks by.
pub(crate) fn scan_score(p: &[f32], q: &[f32], bias: &[f32], i: usize) -> f32 {
    let n = bias.len().min(q.len() / p.len().max(1));
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
        return bias[i] + unsafe { item_dot_avx2(p, q, i, n) };
    }
    bias[i] + item_dot::<false>(p, q, i, n)
}

#[derive(PartialEq)]
struct Scored(f32, u32);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    // Reversed so that BinaryHeap is a min-heap on score (ties: larger index first out).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

/// Up to this many kept pairs live in a sorted array (an insertion moves at most this
/// many 8-byte entries, cheaper than a heap's sifts); more go to a binary heap.
const SORTED_MAX: usize = 32;

/// Keeps the `n` best (score, index) pairs seen; result sorted best first. A pair
/// enters a full set only with a score strictly above the worst kept one (so among
/// equal scores the first pushed stays), NaN never.
pub struct TopK {
    n: usize,
    kept: Kept,
    /// The worst kept score once `n` are kept (−∞ before): the bar a new pair must beat.
    bar: f32,
}

enum Kept {
    /// Best first (ascending in `Scored`'s order), for n ≤ [`SORTED_MAX`].
    Sorted(Vec<Scored>),
    /// Max-heap in `Scored`'s order: the worst kept pair on top.
    Heap(BinaryHeap<Scored>),
}

impl TopK {
    pub fn new(n: usize) -> Self {
        let kept = match n <= SORTED_MAX {
            true => Kept::Sorted(Vec::with_capacity(n)),
            false => Kept::Heap(BinaryHeap::with_capacity(n + 1)),
        };
        TopK {
            n,
            kept,
            bar: f32::NEG_INFINITY,
        }
    }

    #[inline]
    pub fn push(&mut self, score: f32, index: u32) {
        // NaN fails both; −∞ enters a set not yet full (`insert` checks)
        if score > self.bar || score == f32::NEG_INFINITY {
            self.insert(score, index);
        }
    }

    /// [`TopK::push`] past the quick rejection (`score` is not NaN).
    fn insert(&mut self, score: f32, index: u32) {
        let new = Scored(score, index);
        let n = self.n;
        match &mut self.kept {
            Kept::Sorted(v) => {
                if v.len() == n {
                    if n == 0 || score <= self.bar {
                        return;
                    }
                    v.pop();
                }
                let at = v.partition_point(|e| *e <= new);
                v.insert(at, new);
                if v.len() == n {
                    self.bar = v[n - 1].0;
                }
            }
            Kept::Heap(h) => {
                if h.len() == n {
                    if score <= self.bar {
                        return;
                    }
                    h.pop();
                }
                h.push(new);
                if h.len() == n {
                    self.bar = h.peek().map_or(f32::NEG_INFINITY, |w| w.0);
                }
            }
        }
    }

    /// The score a new item must beat to enter: the n-th best so far, or −∞
    /// while fewer than `n` are held.
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.bar
    }

    pub fn into_sorted(self) -> Vec<(u32, f32)> {
        let sorted = match self.kept {
            Kept::Sorted(v) => v,
            // into_sorted_vec is ascending by Ord, which is descending by score.
            Kept::Heap(h) => h.into_sorted_vec(),
        };
        sorted.into_iter().map(|Scored(s, i)| (i, s)).collect()
    }
}

impl Model {
    /// A model with zero biases and factors drawn by the caller later.
    pub fn zeros(hyper: Hyper, users: IdMap, items: IdMap, global_mean: f32) -> Self {
        let (nu, ni, k) = (users.len(), items.len(), hyper.factors);
        Model {
            hyper,
            global_mean,
            user_bias: Array1::zeros(nu),
            item_bias: Array1::zeros(ni),
            user_factors: Array2::zeros((nu, k)),
            item_factors: Array2::zeros((ni, k)),
            implicit: None,
            item_counts: vec![0; ni],
            item_sums: vec![0.0; ni],
            users,
            items,
            report: TrainReport::default(),
        }
    }

    pub fn factors(&self) -> usize {
        self.user_factors.ncols()
    }

    pub fn n_users(&self) -> usize {
        self.user_factors.nrows()
    }

    pub fn n_items(&self) -> usize {
        self.item_factors.nrows()
    }

    #[inline]
    pub fn user_row(&self, u: u32) -> &[f32] {
        let k = self.factors();
        let s = self.user_factors.as_slice().expect("row-major factors");
        &s[u as usize * k..(u as usize + 1) * k]
    }

    #[inline]
    pub fn item_row(&self, i: u32) -> &[f32] {
        let k = self.factors();
        let s = self.item_factors.as_slice().expect("row-major factors");
        &s[i as usize * k..(i as usize + 1) * k]
    }

    /// The `svdpp` implicit term |N|^-½ Σ_{j∈N} y_j for the rated items `items` (indices
    /// outside the model are skipped; N counts the rest), or None when the model has no
    /// implicit factors or no item is known.
    pub fn implicit_term(&self, items: impl IntoIterator<Item = u32>) -> Option<Vec<f32>> {
        let y = self.implicit.as_ref()?;
        let k = self.factors();
        let ys = y.as_slice().expect("row-major factors");
        let mut sum = vec![0.0f32; k];
        let mut n = 0usize;
        for j in items {
            if let Some(row) = ys.get(j as usize * k..(j as usize + 1) * k) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        let c = 1.0 / (n as f32).sqrt();
        sum.iter_mut().for_each(|s| *s *= c);
        Some(sum)
    }

    /// Unclamped prediction by dense index; an unknown side (None) drops its terms.
    #[inline]
    pub fn raw_predict(&self, user: Option<u32>, item: Option<u32>) -> f32 {
        raw_from_parts(
            self.global_mean,
            user.map(|u| self.user_bias[u as usize]),
            item.map(|i| self.item_bias[i as usize]),
            user.zip(item)
                .map(|(u, i)| dot(self.user_row(u), self.item_row(i))),
        )
    }

    /// The clamped prediction for dense indices, `None` for an unknown side.
    #[inline]
    fn predict_known(&self, user: Option<u32>, item: Option<u32>) -> f32 {
        let known = user.is_some() && item.is_some();
        clamp_prediction(&self.hyper, self.raw_predict(user, item), known)
    }

    /// Prediction by dense index, clamped to the rating scale.
    #[inline]
    pub fn predict_index(&self, user: u32, item: u32) -> f32 {
        self.hyper
            .scale
            .clamp(self.raw_predict(Some(user), Some(item)))
    }

    /// Prediction by external ids, clamped to the rating scale.
    pub fn predict(&self, user: &str, item: &str) -> Prediction {
        let u = self.users.get(user);
        let i = self.items.get(item);
        Prediction {
            rating: self.predict_known(u, i),
            known_user: u.is_some(),
            known_item: i.is_some(),
        }
    }

    /// Predictions for a slice of ratings (by dense index), clamped.
    pub fn predict_all(&self, ratings: &[Rating]) -> Vec<f32> {
        ratings
            .iter()
            .map(|r| self.predict_for(r.user, r.item))
            .collect()
    }

    /// Prediction for indices that may lie outside the model (treated as unknown).
    #[inline]
    pub fn predict_for(&self, user: u32, item: u32) -> f32 {
        let u = ((user as usize) < self.n_users()).then_some(user);
        let i = ((item as usize) < self.n_items()).then_some(item);
        self.predict_known(u, i)
    }

    /// The `n` items with the highest predicted rating for user `u`, skipping
    /// items for which `exclude` is true. One contiguous pass over Q with a
    /// bounded heap (no full sort). Scores are clamped predictions.
    pub fn top_n(&self, u: u32, n: usize, exclude: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.top_n_for(self.user_row(u), self.user_bias[u as usize], n, exclude)
    }

    /// [`Model::top_n`] for a user vector `p` and bias `bu` given by the caller
    /// (e.g. folded in, `crate::foldin`).
    pub fn top_n_for(
        &self,
        p: &[f32],
        bu: f32,
        n: usize,
        exclude: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let q = self.item_factors.as_slice().expect("row-major factors");
        let bias = self.item_bias.as_slice().expect("contiguous biases");
        let mut top = TopK::new(n);
        if p.is_empty() {
            for (i, &b) in bias.iter().enumerate() {
                if !exclude(i as u32) {
                    top.push(b, i as u32);
                }
            }
        } else {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
                unsafe { scan_items_avx2(p, q, bias, &exclude, &mut top) };
            } else {
                scan_items::<false>(p, q, bias, &exclude, &mut top);
            }
            #[cfg(not(target_arch = "x86_64"))]
            scan_items::<false>(p, q, bias, &exclude, &mut top);
        }
        let base = self.global_mean + bu;
        top.into_sorted()
            .into_iter()
            .map(|(i, s)| (i, self.hyper.scale.clamp(base + s)))
            .collect()
    }

    /// Damped item mean (s_i + m·μ)/(n_i + m), the fallback ranking for unknown users.
    pub fn popular(&self, n: usize, exclude: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        const DAMPING: f64 = 10.0;
        let mu = if self.hyper.biased {
            self.global_mean as f64
        } else {
            let (s, c) = self
                .item_sums
                .iter()
                .zip(&self.item_counts)
                .fold((0.0, 0u64), |(s, c), (x, y)| (s + x, c + *y as u64));
            if c == 0 {
                0.0
            } else {
                s / c as f64
            }
        };
        let mut top = TopK::new(n);
        for (i, (&s, &c)) in self.item_sums.iter().zip(&self.item_counts).enumerate() {
            if exclude(i as u32) {
                continue;
            }
            let score = (s + DAMPING * mu) / (c as f64 + DAMPING);
            top.push(score as f32, i as u32);
        }
        top.into_sorted()
    }

    /// The `n` items most cosine-similar to item `i` in factor space (excluding itself).
    pub fn similar_items(&self, i: u32, n: usize) -> Vec<(u32, f32)> {
        self.similar_items_excluding(i, n, |_| false)
    }

    /// [`Model::similar_items`] skipping the items for which `exclude` is true.
    pub fn similar_items_excluding(
        &self,
        i: u32,
        n: usize,
        exclude: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let k = self.factors();
        let q = self.item_factors.as_slice().expect("row-major factors");
        let target = self.item_row(i);
        let tn = dot(target, target).sqrt();
        let mut top = TopK::new(n);
        if tn == 0.0 {
            return Vec::new();
        }
        for (j, row) in q.chunks_exact(k.max(1)).enumerate() {
            if j as u32 == i || exclude(j as u32) {
                continue;
            }
            let rn = dot(row, row).sqrt();
            if rn == 0.0 {
                continue;
            }
            top.push(dot(target, row) / (tn * rn), j as u32);
        }
        top.into_sorted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_keeps_best_sorted() {
        let mut t = TopK::new(3);
        for (i, s) in [0.5f32, 2.0, -1.0, 3.0, 1.0, f32::NAN].iter().enumerate() {
            t.push(*s, i as u32);
        }
        assert_eq!(t.into_sorted(), vec![(3, 3.0), (1, 2.0), (4, 1.0)]);
    }

    /// What `TopK` keeps, the plain way: a bounded max-heap on the worst pair.
    fn reference(n: usize, pushes: &[(f32, u32)]) -> Vec<(u32, f32)> {
        let mut heap = BinaryHeap::new();
        for &(s, i) in pushes {
            if n == 0 || s.is_nan() {
                continue;
            }
            if heap.len() < n {
                heap.push(Scored(s, i));
            } else if heap.peek().is_some_and(|w: &Scored| s > w.0) {
                heap.pop();
                heap.push(Scored(s, i));
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|Scored(s, i)| (i, s))
            .collect()
    }

    proptest::proptest! {
        /// Both layouts (sorted array up to `SORTED_MAX`, heap above) keep what the
        /// plain bounded heap keeps, ties, −∞, ±0 and NaN included, and the threshold
        /// follows the n-th best.
        #[test]
        fn topk_equals_a_bounded_heap(
            n in 0usize..80,
            raw in proptest::collection::vec((0u8..12, 0u32..50), 0..300),
        ) {
            let scores = [f32::NEG_INFINITY, -1.0, -0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 3.5,
                f32::INFINITY, f32::NAN, 2.0];
            let pushes: Vec<(f32, u32)> =
                raw.iter().map(|&(s, i)| (scores[s as usize], i)).collect();
            let mut t = TopK::new(n);
            for (k, &(s, i)) in pushes.iter().enumerate() {
                t.push(s, i);
                let want = reference(n, &pushes[..=k]);
                let bar = match want.len() == n && n > 0 {
                    true => want[n - 1].1,
                    false => f32::NEG_INFINITY,
                };
                proptest::prop_assert_eq!(t.threshold().to_bits(), bar.to_bits());
            }
            let got: Vec<(u32, u32)> =
                t.into_sorted().iter().map(|&(i, s)| (i, s.to_bits())).collect();
            let want: Vec<(u32, u32)> =
                reference(n, &pushes).iter().map(|&(i, s)| (i, s.to_bits())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|x| x as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|x| 1.0 - x as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }
}
