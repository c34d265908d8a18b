//! Exact top-N over a compact int8 copy of the item factors.
//!
//! Pass 1 scores every item with integer arithmetic only: the item factors are
//! int8 codes with one scale per item, the user's factors are quantised per
//! call to 7-bit codes, and the codes are laid out item-blocked (8 items × 4
//! factors per 32 bytes) so that one AVX2 `vpmaddubsw` + `vpmaddwd` step adds
//! four products to each of eight item scores, with no horizontal sums. Each
//! score carries a rigorous error bound from both quantisations plus f32
//! rounding, which gives the n-th best lower bound T. Pass 2 rescores in f32,
//! with the kernel [`Model::top_n`] uses, only the items whose upper bound
//! reaches T, so the result is the same list with bit-identical scores.

use crate::model::{scan_score, Model, TopK};

/// Items per block: one AVX2 register holds the eight i32 item scores.
const LANES: usize = 8;
/// Factors per i32 lane: four code bytes times four query bytes.
const GROUP: usize = 4;
/// Bytes of codes per (block, factor group).
const STRIDE: usize = LANES * GROUP;
/// Item codes are stored as c + 128 ∈ [1, 255], the unsigned operand of `vpmaddubsw`.
const OFFSET: i32 = 128;
/// Query codes lie in [−64, 64], so a `vpmaddubsw` pair sum (≤ 2·255·64 = 32640)
/// never saturates i16.
const QMAX: f32 = 64.0;
/// Largest k for which the i32 accumulator (≤ 255·64·k) cannot overflow.
const MAX_K: usize = 100_000;
/// Below this many items a plain f32 scan is as fast; the index is skipped.
const MIN_ITEMS: usize = 256;

/// Item factors as int8 codes with one scale per item, |q_ij − s_i·c_ij| ≤ s_i/2,
/// stored item-blocked for the integer first pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemIndex {
    k: usize,
    n_items: usize,
    /// ⌈k/4⌉: factor groups per item.
    groups: usize,
    /// Code of item i, factor j (plus [`OFFSET`]) at [`ItemIndex::pos`]; padding is c = 0.
    codes: Vec<u8>,
    /// Per item (padded to a whole block): s_i, ‖c_i‖₁, b_i and ε·|b_i|.
    scales: Vec<f32>,
    l1: Vec<f32>,
    bias: Vec<f32>,
    bias_slack: Vec<f32>,
    /// ε: relative slack for the f32 rounding of the scan and of pass 1.
    rel: f32,
    /// max |q_ij| over all items.
    q_max: f32,
    /// False when the model has non-finite values or k is out of range: top-N scans.
    usable: bool,
}

/// The user's factors quantised for one call: p ≈ t·p_q with |p_j − t·p_qj| ≤ t/2.
struct Query {
    /// Per factor group, the four i8 codes packed little-endian.
    words: Vec<i32>,
    /// 128·Σ p_q: removes the code offset from the integer dot product.
    corr: i32,
    t: f32,
    /// The bound on |(b_i + p·q_i) − (b_i + s_i·t·D_i)| is s_i·(a + h·‖c_i‖₁) + ε·|b_i|.
    a: f32,
    h: f32,
}

impl ItemIndex {
    pub fn new(model: &Model) -> Self {
        let k = model.factors();
        let n = model.n_items();
        let q = model.item_factors.as_slice().expect("row-major factors");
        let b = model.item_bias.as_slice().expect("contiguous biases");
        let groups = k.div_ceil(GROUP);
        let padded = n.div_ceil(LANES) * LANES;
        // The scan's f32 error is ≤ γ_k·Σ|p_j·q_ij| + u·|score| (u = ε/2); this is
        // about four times that, and also covers pass 1's own rounding.
        let rel = (2 * k + 16) as f32 * f32::EPSILON;
        let mut ix = ItemIndex {
            k,
            n_items: n,
            groups,
            codes: vec![OFFSET as u8; padded * groups * GROUP],
            scales: vec![0.0; padded],
            l1: vec![0.0; padded],
            bias: vec![0.0; padded],
            bias_slack: vec![0.0; padded],
            rel,
            q_max: 0.0,
            usable: (1..=MAX_K).contains(&k)
                && q.iter().chain(b).all(|x| x.is_finite())
                && q.len() == n * k
                && b.len() == n,
        };
        if !ix.usable {
            return ix;
        }
        for (i, row) in q.chunks_exact(k).enumerate() {
            let m = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            ix.q_max = ix.q_max.max(m);
            let s = m / 127.0;
            let mut l1 = 0u32;
            if s > 0.0 {
                for (j, &x) in row.iter().enumerate() {
                    let c = (x / s).round().clamp(-127.0, 127.0) as i32;
                    l1 += c.unsigned_abs();
                    let at = ix.pos(i, j);
                    ix.codes[at] = (c + OFFSET) as u8;
                }
            }
            ix.scales[i] = s;
            ix.l1[i] = l1 as f32;
            ix.bias[i] = b[i];
            ix.bias_slack[i] = rel * b[i].abs();
        }
        ix
    }

    /// Offset of item i's code for factor j in `codes`.
    #[inline]
    fn pos(&self, i: usize, j: usize) -> usize {
        (((i / LANES) * self.groups + j / GROUP) * LANES + i % LANES) * GROUP + j % GROUP
    }

    /// Bytes held by the index.
    pub fn size_bytes(&self) -> usize {
        self.codes.len()
            + 4 * (self.scales.len() + self.l1.len() + self.bias.len() + self.bias_slack.len())
    }

    /// Whether the index serves `model` (built from it, finite, big enough).
    fn serves(&self, model: &Model) -> bool {
        self.usable && self.k == model.factors() && self.n_items == model.n_items()
    }

    /// The same result as [`Model::top_n`] (items and clamped scores), faster on
    /// big catalogues. `model` must be the one the index was built from.
    pub fn top_n(
        &self,
        model: &Model,
        u: u32,
        n: usize,
        exclude: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        self.top_n_for(
            model,
            model.user_row(u),
            model.user_bias[u as usize],
            n,
            exclude,
        )
    }

    /// [`ItemIndex::top_n`] for a user vector `p` and bias `bu` given by the caller
    /// (e.g. folded in): the same list as [`Model::top_n_for`].
    pub fn top_n_for(
        &self,
        model: &Model,
        p: &[f32],
        bu: f32,
        n: usize,
        exclude: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        if self.n_items < MIN_ITEMS {
            return model.top_n_for(p, bu, n, exclude);
        }
        self.top_n_indexed(model, p, bu, n, exclude, true)
    }

    /// [`ItemIndex::top_n`] through the index whatever the catalogue size; `simd`
    /// false forces the portable pass 1.
    fn top_n_indexed(
        &self,
        model: &Model,
        p: &[f32],
        bu: f32,
        n: usize,
        exclude: impl Fn(u32) -> bool,
        simd: bool,
    ) -> Vec<(u32, f32)> {
        if n == 0 {
            return Vec::new();
        }
        let query = match self.serves(model) {
            true => self.quantise(p),
            false => None,
        };
        let Some(query) = query else {
            return model.top_n_for(p, bu, n, exclude);
        };
        // Pass 1: bounds for every item; candidates are the items whose upper
        // bound reached the running n-th best lower bound (it only rises).
        let mut lower = TopK::new(n);
        let mut cands: Vec<(u32, f32)> = Vec::with_capacity(4 * n.min(self.n_items) + 64);
        self.pass1(&query, &exclude, &mut lower, &mut cands, simd);
        let threshold = lower.threshold();
        // Pass 2: exact f32 scores, in item order as the scan pushes them.
        let q = model.item_factors.as_slice().expect("row-major factors");
        let bias = model.item_bias.as_slice().expect("contiguous biases");
        let mut top = TopK::new(n);
        for &(i, ub) in &cands {
            if ub >= threshold {
                top.push(scan_score(p, q, bias, i as usize), i);
            }
        }
        let base = model.global_mean + bu;
        top.into_sorted()
            .into_iter()
            .map(|(i, s)| (i, model.hyper.scale.clamp(base + s)))
            .collect()
    }

    /// Quantises p; None (the caller scans) when p is not finite, too small to
    /// scale, or scores could overflow f32.
    fn quantise(&self, p: &[f32]) -> Option<Query> {
        if p.len() != self.k || !p.iter().all(|x| x.is_finite()) {
            return None;
        }
        let p_max = p.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let p_l1: f64 = p.iter().map(|x| x.abs() as f64).sum();
        let t = p_max / QMAX;
        if (p_max > 0.0 && t < f32::MIN_POSITIVE) || p_l1 * self.q_max as f64 > 1e30 {
            return None;
        }
        // x·(1/t) is within 2ε of x/t, inside the bound's margin below; rounding by
        // adding and subtracting 1.5·2²³ (to nearest, exact for |v| ≤ 2²²) inlines,
        // where `f32::round` is a libm call per factor
        let inv = if t > 0.0 { 1.0 / t } else { 0.0 };
        const ROUND: f32 = 12_582_912.0;
        let mut sum = 0i32;
        let mut words = Vec::with_capacity(self.groups);
        for xs in p.chunks(GROUP) {
            let mut bytes = [0u8; GROUP];
            for (b, &x) in bytes.iter_mut().zip(xs) {
                let c = ((x * inv).clamp(-QMAX, QMAX) + ROUND - ROUND) as i8;
                sum += c as i32;
                *b = c as u8;
            }
            words.push(i32::from_le_bytes(bytes));
        }
        let corr = OFFSET * sum;
        // |p·q_i − s_i·t·D_i| ≤ s_i·(‖p‖₁/2 + t/2·‖c_i‖₁) (item, then query
        // quantisation); f32 rounding adds ≤ ε·(|b_i| + 127·s_i·(‖p‖₁ + k·t)).
        // The 1e-3 margin covers rounding in computing the bound itself.
        let (t64, k) = (t as f64, self.k as f64);
        let margin = 1.0 + 1e-3;
        let a = (p_l1 / 2.0 + self.rel as f64 * 127.0 * (p_l1 + k * t64)) * margin;
        Some(Query {
            words,
            corr,
            t,
            a: a as f32,
            h: (t64 / 2.0 * margin) as f32,
        })
    }

    fn pass1(
        &self,
        query: &Query,
        exclude: &impl Fn(u32) -> bool,
        lower: &mut TopK,
        cands: &mut Vec<(u32, f32)>,
        simd: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd && crate::model::has_avx2_fma() {
            // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
            unsafe { pass1_avx2(self, query, exclude, lower, cands) };
            return;
        }
        let _ = simd;
        pass1_portable(self, query, exclude, lower, cands);
    }
}

/// Offers the items of block-relative lanes in `mask` (upper bound ≥ the
/// threshold) to the lower-bound top-n and the candidates; returns the new threshold.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn admit(
    first: usize,
    mut mask: u32,
    lb: &[f32; LANES],
    ub: &[f32; LANES],
    n_items: usize,
    exclude: &impl Fn(u32) -> bool,
    lower: &mut TopK,
    cands: &mut Vec<(u32, f32)>,
) -> f32 {
    while mask != 0 {
        let l = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let i = first + l;
        if i < n_items && !exclude(i as u32) {
            lower.push(lb[l], i as u32);
            cands.push((i as u32, ub[l]));
        }
    }
    lower.threshold()
}

fn pass1_portable(
    ix: &ItemIndex,
    query: &Query,
    exclude: &impl Fn(u32) -> bool,
    lower: &mut TopK,
    cands: &mut Vec<(u32, f32)>,
) {
    let mut threshold = lower.threshold();
    let block_len = ix.groups * STRIDE;
    for (b, block) in ix.codes.chunks_exact(block_len).enumerate() {
        let mut acc = [0i32; LANES];
        for (chunk, w) in block.chunks_exact(STRIDE).zip(&query.words) {
            let w = w.to_le_bytes();
            for (a, c) in acc.iter_mut().zip(chunk.chunks_exact(GROUP)) {
                for (&c, &w) in c.iter().zip(&w) {
                    *a += c as i32 * w as i8 as i32;
                }
            }
        }
        let first = b * LANES;
        let (mut lb, mut ub, mut mask) = ([0.0f32; LANES], [0.0f32; LANES], 0u32);
        for l in 0..LANES {
            let i = first + l;
            let s = ix.scales[i];
            let approx = ix.bias[i] + s * query.t * (acc[l] - query.corr) as f32;
            let err = s * (query.a + query.h * ix.l1[i]) + ix.bias_slack[i];
            lb[l] = approx - err;
            ub[l] = approx + err;
            mask |= ((ub[l] >= threshold) as u32) << l;
        }
        if mask != 0 {
            threshold = admit(first, mask, &lb, &ub, ix.n_items, exclude, lower, cands);
        }
    }
}

/// Pass 1 with AVX2: eight item scores per block in one register.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pass1_avx2(
    ix: &ItemIndex,
    query: &Query,
    exclude: &impl Fn(u32) -> bool,
    lower: &mut TopK,
    cands: &mut Vec<(u32, f32)>,
) {
    use std::arch::x86_64::*;
    let g = ix.groups;
    let words = &query.words[..g];
    let ones = _mm256_set1_epi16(1);
    let corr = _mm256_set1_epi32(query.corr);
    let (t, a, h) = (
        _mm256_set1_ps(query.t),
        _mm256_set1_ps(query.a),
        _mm256_set1_ps(query.h),
    );
    let mut threshold = lower.threshold();
    let blocks = ix.scales.len() / LANES;
    // `ItemIndex::new` sizes these together (`padded` = LANES·blocks items) and
    // nothing changes them afterwards (private fields). Checked in debug builds
    // only; release builds rely on that construction.
    debug_assert!(
        ix.codes.len() == blocks * g * STRIDE
            && [&ix.bias, &ix.l1, &ix.bias_slack]
                .iter()
                .all(|v| v.len() == blocks * LANES),
        "item index arrays of different sizes"
    );
    for b in 0..blocks {
        // SAFETY: block b's codes are codes[b·g·STRIDE .. (b+1)·g·STRIDE] (x < g
        // below, 32-byte loads at x·STRIDE) and its per-item values are
        // [b·LANES .. (b+1)·LANES] of scales, bias, l1 and bias_slack (8-float
        // loads): in bounds because `ItemIndex::new` allocates `codes` with
        // padded·g·GROUP = blocks·g·STRIDE bytes and the four per-item arrays with
        // `padded` = blocks·LANES entries, and no code resizes them (`blocks` is
        // scales.len() / LANES); `words` has g entries (sliced above, x < g).
        let (lb, ub) = unsafe {
            let base = ix.codes.as_ptr().add(b * g * STRIDE);
            let step = |x: usize, acc| {
                let c = _mm256_loadu_si256(base.add(x * STRIDE) as *const __m256i);
                let w = _mm256_set1_epi32(*words.get_unchecked(x));
                _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, w), ones))
            };
            let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let mut x = 0;
            while x + 2 <= g {
                acc0 = step(x, acc0);
                acc1 = step(x + 1, acc1);
                x += 2;
            }
            if x < g {
                acc0 = step(x, acc0);
            }
            let d = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_add_epi32(acc0, acc1), corr));
            let o = b * LANES;
            let s = _mm256_loadu_ps(ix.scales.as_ptr().add(o));
            let approx = _mm256_fmadd_ps(
                _mm256_mul_ps(s, t),
                d,
                _mm256_loadu_ps(ix.bias.as_ptr().add(o)),
            );
            let err = _mm256_fmadd_ps(
                s,
                _mm256_fmadd_ps(h, _mm256_loadu_ps(ix.l1.as_ptr().add(o)), a),
                _mm256_loadu_ps(ix.bias_slack.as_ptr().add(o)),
            );
            let ub = _mm256_add_ps(approx, err);
            let hit = _mm256_cmp_ps::<_CMP_GE_OQ>(ub, _mm256_set1_ps(threshold));
            if _mm256_movemask_ps(hit) == 0 {
                continue;
            }
            let (mut lb_out, mut ub_out) = ([0.0f32; LANES], [0.0f32; LANES]);
            _mm256_storeu_ps(lb_out.as_mut_ptr(), _mm256_sub_ps(approx, err));
            _mm256_storeu_ps(ub_out.as_mut_ptr(), ub);
            (lb_out, ub_out)
        };
        let mask = (0..LANES).fold(0u32, |m, l| m | ((ub[l] >= threshold) as u32) << l);
        threshold = admit(b * LANES, mask, &lb, &ub, ix.n_items, exclude, lower, cands);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hyper, IdMap};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn model(items: usize, k: usize, seed: u64) -> Model {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let users = IdMap::from_ids((0..4).map(|i| format!("u{i}")).collect()).unwrap();
        let ids = IdMap::from_ids((0..items).map(|i| format!("i{i}")).collect()).unwrap();
        let hyper = Hyper {
            factors: k,
            ..Hyper::default()
        };
        let mut m = Model::zeros(hyper, users, ids, 3.5);
        m.user_factors.mapv_inplace(|_| rng.gen_range(-0.5..0.5));
        m.item_factors.mapv_inplace(|_| rng.gen_range(-0.5..0.5));
        m.item_bias.mapv_inplace(|_| rng.gen_range(-0.3..0.3));
        // User 3 has all-zero factors: every score is the item bias.
        m.user_factors.row_mut(3.min(m.n_users() - 1)).fill(0.0);
        // Near-ties: copies of item 0 with tiny differences...
        for i in 1..20.min(items) {
            let row = m.item_factors.row(0).to_owned();
            m.item_factors.row_mut(i).assign(&row);
            m.item_bias[i] = m.item_bias[0] + i as f32 * 1e-6;
        }
        // ...and exact copies spread over blocks (and over the scan's 4-row tail).
        for i in [
            29,
            37,
            101,
            items.saturating_sub(1),
            items.saturating_sub(2),
        ] {
            if (20..items).contains(&i) {
                let row = m.item_factors.row(0).to_owned();
                m.item_factors.row_mut(i).assign(&row);
                m.item_bias[i] = m.item_bias[0];
            }
        }
        m
    }

    /// Both pass-1 kernels against the f32 scan, for every user.
    fn check(m: &Model, n: usize, exclude: impl Fn(u32) -> bool + Copy) {
        let ix = ItemIndex::new(m);
        assert!(ix.usable);
        for u in 0..m.n_users() as u32 {
            let want = m.top_n(u, n, exclude);
            for simd in [true, false] {
                let (p, bu) = (m.user_row(u), m.user_bias[u as usize]);
                let got = ix.top_n_indexed(m, p, bu, n, exclude, simd);
                assert_eq!(
                    got,
                    want,
                    "items={} k={} u={u} n={n} simd={simd}",
                    m.n_items(),
                    m.factors()
                );
            }
            assert_eq!(ix.top_n(m, u, n, exclude), want);
        }
    }

    #[test]
    fn index_top_n_equals_the_exact_scan() {
        for (items, k, seed) in [
            (5000, 100, 1),
            (3000, 40, 2),
            (2048, 7, 3),
            (100, 16, 4),
            (777, 1, 5),
            (1031, 33, 6),
        ] {
            let m = model(items, k, seed);
            for n in [1, 10, 50, items + 5] {
                check(&m, n, |i| i % 7 == 3);
                check(&m, n, |_| false);
            }
            // Only a few items left, fewer than n.
            check(&m, 10, |i| i % 500 != 11);
        }
    }

    #[test]
    fn nothing_to_rank() {
        let m = model(600, 12, 7);
        check(&m, 10, |_| true);
        check(&m, 0, |_| false);
    }

    #[test]
    fn clamped_scores_and_ties_after_clamping() {
        // Large factors push many predictions past the rating scale.
        let mut m = model(900, 9, 8);
        m.item_factors.mapv_inplace(|x| x * 8.0);
        check(&m, 30, |i| i % 3 == 0);
    }

    #[test]
    fn non_finite_models_fall_back_to_the_scan() {
        let mut m = model(600, 8, 9);
        m.item_factors[[5, 3]] = f32::NAN;
        m.item_bias[7] = f32::INFINITY;
        let ix = ItemIndex::new(&m);
        assert!(!ix.usable);
        for u in 0..4 {
            assert_eq!(ix.top_n(&m, u, 10, |_| false), m.top_n(u, 10, |_| false));
        }
    }

    #[test]
    fn quantisation_error_is_within_half_a_step() {
        let m = model(2000, 33, 5);
        let ix = ItemIndex::new(&m);
        for i in 0..2000 {
            let s = ix.scales[i];
            let mut l1 = 0.0;
            for (j, &x) in m.item_row(i as u32).iter().enumerate() {
                let c = ix.codes[ix.pos(i, j)] as i32 - OFFSET;
                l1 += c.abs() as f32;
                assert!((x - s * c as f32).abs() <= s * 0.5 + 1e-7);
            }
            assert_eq!(l1, ix.l1[i]);
            // Padding factors are code 0.
            for j in 33..36 {
                assert_eq!(ix.codes[ix.pos(i, j)] as i32, OFFSET);
            }
        }
        assert_eq!(ix.size_bytes(), 2000 * 36 + 2000 * 16);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn index_equals_scan_on_random_models(
            items in 1usize..300,
            k in 1usize..24,
            n in 0usize..320,
            seed in any::<u64>(),
            modulus in 1u32..9,
        ) {
            let m = model(items, k, seed);
            check(&m, n, |i| i % modulus == 0 && modulus > 1);
        }
    }
}
