//! The SGD update kernels: the fused per-rating update, the unsafe block kernel over raw parameter views, and the AVX2+FMA dispatch.

use crate::data::Rating;
#[cfg(target_arch = "x86_64")]
use crate::model::has_avx2_fma;
use crate::model::{dot_k, madd, Model};

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

/// The fused update: error from μ + b_u + b_i + p·q, then biases and both rows.
#[inline(always)]
fn update<const FMA: bool>(
    p: &mut [f32],
    q: &mut [f32],
    bu: &mut f32,
    bi: &mut f32,
    r: f32,
    rates: &Rates,
) -> f32 {
    let k = p.len().min(q.len());
    let (p, q) = (&mut p[..k], &mut q[..k]);
    let e = r - (rates.mu + *bu + *bi + dot_k::<FMA>(p, q));
    if rates.biased {
        *bu += rates.lr_bias * (e - rates.reg_bias * *bu);
        *bi += rates.lr_bias * (e - rates.reg_bias * *bi);
    }
    // p ← p + lr(e·q − λp) = (1 − lr·λ)p + (lr·e)q, and symmetrically for q.
    let shrink = 1.0 - rates.lr * rates.reg;
    let g = rates.lr * e;
    for (pf, qf) in p.iter_mut().zip(q.iter_mut()) {
        let (a, b) = (*pf, *qf);
        *pf = madd::<FMA>(g, b, a * shrink);
        *qf = madd::<FMA>(g, a, b * shrink);
    }
    e
}

/// One SGD update for rating `r` on rows `p` (user) and `q` (item); returns the
/// error before the update. Picks the AVX2+FMA kernel when the CPU has it.
#[inline]
pub fn step(
    p: &mut [f32],
    q: &mut [f32],
    bu: &mut f32,
    bi: &mut f32,
    r: f32,
    rates: &Rates,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: `has_avx2_fma` just confirmed the CPU has AVX2 and FMA.
        return unsafe { step_avx2(p, q, bu, bi, r, rates) };
    }
    update::<false>(p, q, bu, bi, r, rates)
}

/// [`update`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_avx2(
    p: &mut [f32],
    q: &mut [f32],
    bu: &mut f32,
    bi: &mut f32,
    r: f32,
    rates: &Rates,
) -> f32 {
    update::<true>(p, q, bu, bi, r, rates)
}

/// Raw views of the model's parameters, shared by the worker threads. Workers
/// only touch rows of the user and item bins of the block they run, and the
/// blocks of one stratum have disjoint bins, so no two threads write (or read
/// while another writes) the same element.
#[derive(Clone, Copy)]
pub(super) struct Params {
    pu: *mut f32,
    qi: *mut f32,
    bu: *mut f32,
    bi: *mut f32,
    k: usize,
    n_users: usize,
    n_items: usize,
}

// SAFETY: `Params` is plain pointers into the model's arrays; the functions that
// dereference them are `unsafe` and require that no two threads touch the same
// rows (the block schedule partitions the rows between threads).
unsafe impl Send for Params {}
// SAFETY: as for `Send`: shared copies are only dereferenced on disjoint rows.
unsafe impl Sync for Params {}

impl Params {
    /// Views of `model`'s P, Q and biases; valid while `model` is neither moved,
    /// resized nor accessed through anything else.
    pub(super) fn of(model: &mut Model) -> Self {
        Params {
            k: model.factors(),
            n_users: model.n_users(),
            n_items: model.n_items(),
            pu: model
                .user_factors
                .as_slice_mut()
                .expect("row-major")
                .as_mut_ptr(),
            qi: model
                .item_factors
                .as_slice_mut()
                .expect("row-major")
                .as_mut_ptr(),
            bu: model
                .user_bias
                .as_slice_mut()
                .expect("contiguous")
                .as_mut_ptr(),
            bi: model
                .item_bias
                .as_slice_mut()
                .expect("contiguous")
                .as_mut_ptr(),
        }
    }

    /// Users (rows of P) in the model.
    pub(super) fn n_users(&self) -> usize {
        self.n_users
    }

    /// Items (rows of Q) in the model.
    pub(super) fn n_items(&self) -> usize {
        self.n_items
    }
}

/// How far ahead (in ratings) the rows are prefetched.
pub(crate) const PREFETCH: usize = 8;

/// Hints the CPU to load the `len` floats from `ptr` into cache. Any address is
/// allowed: a prefetch is only a hint and never faults.
#[inline(always)]
pub(crate) fn prefetch(ptr: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = len * 4;
        let mut off = 0;
        while off < bytes {
            // SAFETY: `_mm_prefetch` reads nothing and never faults, whatever the
            // address; `wrapping_add` makes no in-bounds claim.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((ptr as *const i8).wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

/// One update for rating `r` (a plain function, not a closure, so that it is
/// inlined into the `target_feature` caller and compiled with its features).
///
/// # Safety
/// `m` must view a live model with `r.user < m.n_users` and `r.item < m.n_items`,
/// and no other thread may access user row `r.user` (P and b_u) or item row
/// `r.item` (Q and b_i) during the call.
#[inline(always)]
unsafe fn update_at<const FMA: bool>(r: &Rating, m: Params, rates: &Rates) -> f32 {
    let (u, i, k) = (r.user as usize, r.item as usize, m.k);
    // SAFETY: by the contract above, rows u and i lie inside P, Q (k floats each)
    // and the bias vectors, and nobody else touches them meanwhile; P, Q, b_u
    // and b_i are four separate arrays, so the four borrows do not overlap.
    unsafe {
        let p = std::slice::from_raw_parts_mut(m.pu.add(u * k), k);
        let q = std::slice::from_raw_parts_mut(m.qi.add(i * k), k);
        update::<FMA>(p, q, &mut *m.bu.add(u), &mut *m.bi.add(i), r.value, rates)
    }
}

/// Prefetches the user and item rows of `r`, if any.
#[inline(always)]
fn prefetch_rows(r: Option<&Rating>, m: Params) {
    if let Some(r) = r {
        prefetch(m.pu.wrapping_add(r.user as usize * m.k), m.k);
        prefetch(m.qi.wrapping_add(r.item as usize * m.k), m.k);
    }
}

/// Runs SGD over `ratings` in a fixed order; returns Σe² (errors before each update).
///
/// # Safety
/// `m` must view a live model; every rating's user must be below `m.n_users`
/// and its item below `m.n_items`, and no other thread may access those rows
/// meanwhile.
#[inline(always)]
unsafe fn block_kernel<const FMA: bool>(ratings: &[Rating], m: Params, rates: &Rates) -> f64 {
    // Two cursors, one in each half of the block, alternate: in a block sorted
    // by user, consecutive updates of one cursor share a user row (a dependency
    // chain through p), while the other cursor's update is independent and can
    // run in the gaps. It is still plain sequential SGD, in a fixed order.
    let half = ratings.len() / 2;
    let (a, b) = ratings.split_at(half);
    let mut sse = 0.0f64;
    for (j, (ra, rb)) in a.iter().zip(b).enumerate() {
        prefetch_rows(a.get(j + PREFETCH), m);
        prefetch_rows(b.get(j + PREFETCH), m);
        // SAFETY: `ra` and `rb` are ratings of the block: the caller's contract.
        let (ea, eb) = unsafe {
            (
                update_at::<FMA>(ra, m, rates),
                update_at::<FMA>(rb, m, rates),
            )
        };
        sse += (ea * ea) as f64 + (eb * eb) as f64;
    }
    if let Some(r) = b.get(half) {
        // SAFETY: `r` is a rating of the block: the caller's contract.
        let e = unsafe { update_at::<FMA>(r, m, rates) };
        sse += (e * e) as f64;
    }
    sse
}

/// The portable block kernel.
///
/// # Safety
/// As for [`block_kernel`].
unsafe fn block_portable(ratings: &[Rating], m: Params, rates: &Rates) -> f64 {
    // SAFETY: the caller upholds `block_kernel`'s contract.
    unsafe { block_kernel::<false>(ratings, m, rates) }
}

/// The block kernel compiled with AVX2 and FMA.
///
/// # Safety
/// As for [`block_kernel`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(ratings: &[Rating], m: Params, rates: &Rates) -> f64 {
    // SAFETY: the caller upholds `block_kernel`'s contract.
    unsafe { block_kernel::<true>(ratings, m, rates) }
}

/// A block kernel; callers must uphold [`block_kernel`]'s contract.
pub(super) type BlockFn = unsafe fn(&[Rating], Params, &Rates) -> f64;

/// The fastest block kernel this CPU runs; calling it carries
/// [`block_kernel`]'s contract, and no more (the CPU features are checked here).
pub(super) fn block_fn() -> BlockFn {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return block_avx2;
    }
    block_portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_and_portable_kernels_agree() {
        let rates = Rates {
            lr: 0.01,
            lr_bias: 0.01,
            reg: 0.05,
            reg_bias: 0.01,
            mu: 3.5,
            biased: true,
        };
        for k in [1usize, 7, 8, 16, 40, 100] {
            let mut p: Vec<f32> = (0..k).map(|j| (j as f32 * 0.37).sin() * 0.1).collect();
            let mut q: Vec<f32> = (0..k).map(|j| (j as f32 * 0.11).cos() * 0.1).collect();
            let (mut p2, mut q2) = (p.clone(), q.clone());
            let (mut bu, mut bi, mut bu2, mut bi2) = (0.1, -0.2, 0.1, -0.2);
            let e1 = step(&mut p, &mut q, &mut bu, &mut bi, 4.0, &rates);
            let e2 = update::<false>(&mut p2, &mut q2, &mut bu2, &mut bi2, 4.0, &rates);
            assert!((e1 - e2).abs() < 1e-5, "k={k}");
            for (a, b) in p.iter().zip(&p2).chain(q.iter().zip(&q2)) {
                assert!((a - b).abs() < 1e-5, "k={k}");
            }
            // Against the textbook update.
            let (mut p3, mut q3): (Vec<f32>, Vec<f32>) = (
                (0..k).map(|j| (j as f32 * 0.37).sin() * 0.1).collect(),
                (0..k).map(|j| (j as f32 * 0.11).cos() * 0.1).collect(),
            );
            let d: f32 = p3.iter().zip(&q3).map(|(a, b)| a * b).sum();
            let e3 = 4.0 - (3.5 + 0.1 - 0.2 + d);
            for j in 0..k {
                let (a, b) = (p3[j], q3[j]);
                p3[j] = a + 0.01 * (e3 * b - 0.05 * a);
                q3[j] = b + 0.01 * (e3 * a - 0.05 * b);
            }
            assert!((e1 - e3).abs() < 1e-5);
            for (a, b) in p.iter().zip(&p3).chain(q.iter().zip(&q3)) {
                assert!((a - b).abs() < 1e-5, "k={k}");
            }
        }
    }
}
