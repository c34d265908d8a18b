//! Exact top-N over a compact int8 copy of the item factors: a first pass scores
//! every item from 1 byte per factor with a rigorous error bound, a second pass
//! rescores in f32 only the items whose upper bound can still make the top N.

use super::model::{scan_score, Model, TopK};

/// Item factors quantised to int8 with one scale per item: |q_ij − s_i·c_ij| ≤ s_i/2.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemIndex {
    k: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

/// Below this many items a plain f32 scan is as fast; the index is skipped.
const MIN_ITEMS: usize = 1024;

impl ItemIndex {
    pub fn new(model: &Model) -> Self {
        let k = model.factors();
        let q = model.item_factors.as_slice().expect("row-major factors");
        let n = model.n_items();
        let mut codes = vec![0i8; n * k];
        let mut scales = vec![0.0f32; n];
        if k > 0 {
            for ((row, out), s) in q
                .chunks_exact(k)
                .zip(codes.chunks_exact_mut(k))
                .zip(&mut scales)
            {
                let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                *s = if max > 0.0 && max.is_finite() {
                    max / 127.0
                } else {
                    0.0
                };
                if *s > 0.0 {
                    for (c, &x) in out.iter_mut().zip(row) {
                        *c = (x / *s).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            }
        }
        ItemIndex { k, codes, scales }
    }

    /// Bytes held by the index.
    pub fn size_bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
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
        let ni = model.n_items();
        if ni < MIN_ITEMS || self.k == 0 || self.k != model.factors() || self.scales.len() != ni {
            return model.top_n(u, n, exclude);
        }
        let p = model.user_row(u);
        let bias = model.item_bias.as_slice().expect("contiguous biases");
        let p_l1: f32 = p.iter().map(|x| x.abs()).sum();
        // Pass 1: approximate score and bound per item; the n-th best lower bound.
        let mut upper = vec![f32::NEG_INFINITY; ni];
        let mut lower_top = TopK::new(n);
        self.pass1(p, p_l1, bias, &exclude, &mut upper, &mut lower_top);
        let Some(threshold) = lower_top.into_sorted().last().map(|x| x.1) else {
            return Vec::new();
        };
        // Pass 2: exact f32 scores for the items that can still reach the top n.
        let q = model.item_factors.as_slice().expect("row-major factors");
        let mut top = TopK::new(n);
        for (i, &ub) in upper.iter().enumerate() {
            if ub >= threshold {
                top.push(scan_score(p, q, bias, i), i as u32);
            }
        }
        let base = model.global_mean + model.user_bias[u as usize];
        top.into_sorted()
            .into_iter()
            .map(|(i, s)| (i, model.hyper.scale.clamp(base + s)))
            .collect()
    }

    fn pass1(
        &self,
        p: &[f32],
        p_l1: f32,
        bias: &[f32],
        exclude: &impl Fn(u32) -> bool,
        upper: &mut [f32],
        lower_top: &mut TopK,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::model::has_avx2_fma() {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { pass1_avx2(self, p, p_l1, bias, exclude, upper, lower_top) };
            return;
        }
        pass1_generic(self, p, p_l1, bias, exclude, upper, lower_top);
    }
}

#[inline(always)]
fn dot_i8(p: &[f32], c: &[i8]) -> f32 {
    let n = p.len().min(c.len());
    let (p, c) = (&p[..n], &c[..n]);
    let mut acc = [0.0f32; 8];
    let mut cp = p.chunks_exact(8);
    let mut cc = c.chunks_exact(8);
    for (x, y) in (&mut cp).zip(&mut cc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l] as f32;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in cp.remainder().iter().zip(cc.remainder()) {
        s += x * *y as f32;
    }
    s
}

/// Stores item `i`'s upper bound and offers its lower bound to the top-n of lower bounds.
#[inline(always)]
fn record(i: usize, approx: f32, s: f32, p_l1: f32, ub: &mut f32, lower_top: &mut TopK) {
    // Quantisation error ≤ ‖p‖₁·s/2; the slack covers f32 rounding of both sums.
    let err = 0.5 * s * p_l1 + 1e-4 * (approx.abs() + 127.0 * s * p_l1) + 1e-6;
    *ub = approx + err;
    lower_top.push(approx - err, i as u32);
}

#[inline(always)]
fn pass1_generic(
    ix: &ItemIndex,
    p: &[f32],
    p_l1: f32,
    bias: &[f32],
    exclude: &impl Fn(u32) -> bool,
    upper: &mut [f32],
    lower_top: &mut TopK,
) {
    let k = ix.k;
    for (i, ((codes, &s), ub)) in ix
        .codes
        .chunks_exact(k)
        .zip(&ix.scales)
        .zip(upper.iter_mut())
        .enumerate()
    {
        if exclude(i as u32) {
            continue;
        }
        record(i, bias[i] + s * dot_i8(p, codes), s, p_l1, ub, lower_top);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pass1_avx2(
    ix: &ItemIndex,
    p: &[f32],
    p_l1: f32,
    bias: &[f32],
    exclude: &impl Fn(u32) -> bool,
    upper: &mut [f32],
    lower_top: &mut TopK,
) {
    use std::arch::x86_64::*;
    let k = ix.k;
    let full = k / 8 * 8;
    for (i, ((codes, &s), ub)) in ix
        .codes
        .chunks_exact(k)
        .zip(&ix.scales)
        .zip(upper.iter_mut())
        .enumerate()
    {
        if exclude(i as u32) {
            continue;
        }
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut o = 0;
        while o + 16 <= full {
            let c0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                codes.as_ptr().add(o) as *const __m128i,
            )));
            let c1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                codes.as_ptr().add(o + 8) as *const __m128i,
            )));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(p.as_ptr().add(o)), c0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.as_ptr().add(o + 8)), c1, acc1);
            o += 16;
        }
        if o < full {
            let c0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                codes.as_ptr().add(o) as *const __m128i,
            )));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(p.as_ptr().add(o)), c0, acc0);
            o += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1));
        let mut d = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for j in o..k {
            d += p[j] * codes[j] as f32;
        }
        record(i, bias[i] + s * d, s, p_l1, ub, lower_top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Hyper, IdMap};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn model(items: usize, k: usize, seed: u64) -> Model {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let users = IdMap::from_ids((0..3).map(|i| format!("u{i}")).collect()).unwrap();
        let ids = IdMap::from_ids((0..items).map(|i| format!("i{i}")).collect()).unwrap();
        let hyper = Hyper {
            factors: k,
            ..Hyper::default()
        };
        let mut m = Model::zeros(hyper, users, ids, 3.5);
        m.user_factors.mapv_inplace(|_| rng.gen_range(-0.5..0.5));
        m.item_factors.mapv_inplace(|_| rng.gen_range(-0.5..0.5));
        m.item_bias.mapv_inplace(|_| rng.gen_range(-0.3..0.3));
        // Near-ties: copies of one item with tiny differences.
        for i in 1..20 {
            let row = m.item_factors.row(0).to_owned();
            m.item_factors.row_mut(i).assign(&row);
            m.item_bias[i] = m.item_bias[0] + i as f32 * 1e-6;
        }
        m
    }

    #[test]
    fn index_top_n_equals_the_exact_scan() {
        for (items, k, seed) in [(5000, 100, 1), (3000, 40, 2), (2048, 7, 3), (100, 16, 4)] {
            let m = model(items, k, seed);
            let ix = ItemIndex::new(&m);
            for u in 0..3u32 {
                for n in [1, 10, 50] {
                    let excl = |i: u32| i % 7 == 3;
                    let want = m.top_n(u, n, excl);
                    let got = ix.top_n(&m, u, n, excl);
                    assert_eq!(got, want, "items={items} k={k} u={u} n={n}");
                }
            }
        }
    }

    #[test]
    fn quantisation_error_is_within_half_a_step() {
        let m = model(2000, 33, 5);
        let ix = ItemIndex::new(&m);
        let q = m.item_factors.as_slice().unwrap();
        for (i, (&x, &c)) in q.iter().zip(&ix.codes).enumerate() {
            let s = ix.scales[i / 33];
            assert!((x - s * c as f32).abs() <= s * 0.5 + 1e-7);
        }
        assert_eq!(ix.size_bytes(), 2000 * 33 + 2000 * 4);
    }
}
