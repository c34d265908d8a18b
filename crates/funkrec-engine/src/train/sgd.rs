//! Stochastic gradient descent, one update per rating, serial or parallel.
//!
//! The ratings are grouped once (in place, no copy) into a `nb × nb` grid of
//! blocks by user bin and item bin, after a seeded random permutation of user
//! and item ids; the ratings inside each block are shuffled once. Every epoch
//! then visits the blocks in `nb` *strata* (DSGD/FPSGD style): a stratum is a
//! set of `nb` blocks that share no user bin and no item bin, so its blocks
//! touch disjoint rows of P, Q and the biases and can run on different threads
//! without locks. The stratum order and the block permutation are drawn per
//! epoch from the seed.
//!
//! Because the blocks of one stratum are independent, *which* thread runs a
//! block does not change the result: for a given seed and grid size the model
//! is bit-for-bit the same with 1 thread or many. The grid size is
//! `max(16, 2·threads, √(ratings/50,000))`, so results are identical for 1–8
//! threads. On big problems (a block's user rows exceed 1 MiB) each block is
//! walked in user order, as LIBMF does, for locality in P. Problems
//! with fewer than 200,000 ratings per thread use fewer workers (same result).
//!
//! The kernel is compiled twice: a portable version (SSE2 on x86-64) and, on
//! x86-64, an AVX2+FMA version picked at run time, so the default build stays
//! portable and still runs at full speed on current CPUs. The two versions
//! round differently (fused multiply-add), so results are reproducible on one
//! machine, not across CPUs with and without FMA.

use crate::data::Rating;
#[cfg(target_arch = "x86_64")]
use crate::model::has_avx2_fma;
use crate::model::{dot_k, madd, EpochStats, Model};
use crate::train::Progress;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;

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
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { step_avx2(p, q, bu, bi, r, rates) };
    }
    update::<false>(p, q, bu, bi, r, rates)
}

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
struct Params {
    pu: *mut f32,
    qi: *mut f32,
    bu: *mut f32,
    bi: *mut f32,
    k: usize,
}

// SAFETY: see the type's doc: access is partitioned by the block schedule.
unsafe impl Send for Params {}
unsafe impl Sync for Params {}

impl Params {
    fn of(model: &mut Model) -> Self {
        Params {
            k: model.factors(),
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
}

/// Below this many ratings per worker, extra threads are not started.
const MIN_RATINGS_PER_THREAD: usize = 200_000;

/// How far ahead (in ratings) the rows are prefetched.
pub(super) const PREFETCH: usize = 8;

#[inline(always)]
pub(super) fn prefetch(ptr: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = len * 4;
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch never faults; the address lies inside the row.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((ptr as *const i8).add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

/// One update for rating `r` (a plain function, not a closure, so that it is
/// inlined into the `target_feature` caller and compiled with its features).
#[inline(always)]
unsafe fn update_at<const FMA: bool>(r: &Rating, m: Params, rates: &Rates) -> f32 {
    let (u, i, k) = (r.user as usize, r.item as usize, m.k);
    let p = std::slice::from_raw_parts_mut(m.pu.add(u * k), k);
    let q = std::slice::from_raw_parts_mut(m.qi.add(i * k), k);
    update::<FMA>(p, q, &mut *m.bu.add(u), &mut *m.bi.add(i), r.value, rates)
}

#[inline(always)]
unsafe fn prefetch_rows(r: Option<&Rating>, m: Params) {
    if let Some(r) = r {
        prefetch(m.pu.add(r.user as usize * m.k), m.k);
        prefetch(m.qi.add(r.item as usize * m.k), m.k);
    }
}

/// Runs SGD over `ratings` in a fixed order; returns Σe² (errors before each update).
///
/// # Safety
/// Every rating's user and item must index rows of `m`, and no other thread
/// may access those rows meanwhile.
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
        let ea = update_at::<FMA>(ra, m, rates);
        let eb = update_at::<FMA>(rb, m, rates);
        sse += (ea * ea) as f64 + (eb * eb) as f64;
    }
    if let Some(r) = b.get(half) {
        let e = update_at::<FMA>(r, m, rates);
        sse += (e * e) as f64;
    }
    sse
}

unsafe fn block_portable(ratings: &[Rating], m: Params, rates: &Rates) -> f64 {
    block_kernel::<false>(ratings, m, rates)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(ratings: &[Rating], m: Params, rates: &Rates) -> f64 {
    block_kernel::<true>(ratings, m, rates)
}

type BlockFn = unsafe fn(&[Rating], Params, &Rates) -> f64;

fn block_fn() -> BlockFn {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return block_avx2;
    }
    block_portable
}

/// One pass over `ratings` in their current order (serial; for the kernel benchmark only).
#[cfg(feature = "bench")]
pub fn epoch(model: &mut Model, ratings: &[Rating], rates: &Rates) -> f64 {
    let (nu, ni) = (model.n_users(), model.n_items());
    assert!(
        ratings
            .iter()
            .all(|r| (r.user as usize) < nu && (r.item as usize) < ni),
        "rating index outside the model"
    );
    let m = Params::of(model);
    // SAFETY: indices checked above; `model` is borrowed mutably, so no one else runs.
    unsafe { block_fn()(ratings, m, rates) }
}

/// The ratings grouped by block, in place.
pub struct Grid {
    /// Bins per side.
    pub nb: usize,
    /// `offsets[b]..offsets[b + 1]` are the ratings of block `b = user_bin·nb + item_bin`.
    pub offsets: Vec<usize>,
}

/// Bins per side for `threads` workers and `n` ratings: at least 16 and
/// 2·threads (so it is the same for 1–8 threads), more for big data so that a
/// block's slices of P and Q stay small (about 50,000 ratings per block).
pub fn grid_size(threads: usize, n: usize) -> usize {
    let by_size = ((n / 50_000) as f64).sqrt().ceil() as usize;
    (2 * threads).max(16).max(by_size).min(4096)
}

/// A block's slice of P larger than this is walked in user order (users in
/// their seeded random rank within the bin), so consecutive updates reuse the
/// same user row and P is read almost sequentially; smaller slices stay in
/// cache anyway and are shuffled instead.
const SORT_ABOVE_BYTES: usize = 1 << 20;

/// A seeded random assignment of `n` ids to `nb` (almost) equal bins: the bin
/// of each id and its rank inside the bin.
fn bins(n: usize, nb: usize, rng: &mut ChaCha8Rng) -> (Vec<u32>, Vec<u32>) {
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(rng);
    let mut bin = vec![0u32; n];
    let mut rank = vec![0u32; n];
    let mut filled = vec![0u32; nb];
    for (pos, &id) in perm.iter().enumerate() {
        let b = pos * nb / n.max(1);
        bin[id as usize] = b as u32;
        rank[id as usize] = filled[b];
        filled[b] += 1;
    }
    (bin, rank)
}

/// Partitions `xs` in place by `key` (< `buckets`), American-flag style (no
/// second buffer); returns the bucket offsets (`buckets + 1` entries).
fn flag_partition<T>(xs: &mut [T], buckets: usize, key: impl Fn(&T) -> usize) -> Vec<usize> {
    let mut offsets = vec![0usize; buckets + 1];
    for x in xs.iter() {
        offsets[key(x) + 1] += 1;
    }
    for b in 0..buckets {
        offsets[b + 1] += offsets[b];
    }
    let mut next = offsets[..buckets].to_vec();
    for b in 0..buckets {
        let end = offsets[b + 1];
        while next[b] < end {
            let t = key(&xs[next[b]]);
            if t == b {
                next[b] += 1;
            } else {
                xs.swap(next[b], next[t]);
                next[t] += 1;
            }
        }
    }
    offsets
}

/// Stable counting sort of `src` by `key` (< `buckets`) into `dst` (same length).
fn scatter<T: Copy>(src: &[T], dst: &mut [T], buckets: usize, key: impl Fn(&T) -> usize) {
    let mut next = vec![0usize; buckets + 1];
    for x in src {
        next[key(x) + 1] += 1;
    }
    for b in 0..buckets {
        next[b + 1] += next[b];
    }
    for x in src {
        let slot = &mut next[key(x)];
        dst[*slot] = *x;
        *slot += 1;
    }
}

impl Grid {
    /// Groups `ratings` into `nb × nb` blocks in place and fixes the order inside
    /// each block: by user when a block's rows of P (`k` floats each) would not
    /// fit in cache, else a seeded shuffle. First an in-place partition by user
    /// bin (no copy of the ratings), then each user bin's segment is split into
    /// its `nb` blocks on `threads` threads, each with a buffer of one segment.
    /// The result does not depend on `threads`.
    pub fn build(
        ratings: &mut [Rating],
        n_users: usize,
        n_items: usize,
        k: usize,
        nb: usize,
        seed: u64,
        threads: usize,
    ) -> Grid {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let (ub, urank) = bins(n_users, nb, &mut rng);
        let (ib, _) = bins(n_items, nb, &mut rng);
        let seg = flag_partition(ratings, nb, |r| ub[r.user as usize] as usize);
        let mut offsets = vec![0usize; nb * nb + 1];
        for r in ratings.iter() {
            offsets[ub[r.user as usize] as usize * nb + ib[r.item as usize] as usize + 1] += 1;
        }
        for b in 0..nb * nb {
            offsets[b + 1] += offsets[b];
        }
        let by_user = n_users.div_ceil(nb) * k * 4 > SORT_ABOVE_BYTES;
        let users_per_bin = n_users.div_ceil(nb).max(1) + 1;
        let block_seed: u64 = rand::Rng::gen(&mut rng);
        // Hand the segments out round-robin; each is finished independently.
        let threads = threads.clamp(1, nb);
        let mut shares: Vec<Vec<(usize, &mut [Rating])>> =
            (0..threads).map(|_| Vec::new()).collect();
        let mut rest = ratings;
        for s in 0..nb {
            let (head, tail) = rest.split_at_mut(seg[s + 1] - seg[s]);
            shares[s % threads].push((s, head));
            rest = tail;
        }
        let finish = |share: Vec<(usize, &mut [Rating])>| {
            let mut buf: Vec<Rating> = Vec::new();
            for (s, segment) in share {
                buf.clear();
                buf.extend_from_slice(segment);
                if by_user {
                    // LSD: by rank of the user in its bin, then (stably) by item bin.
                    let mut tmp = std::mem::take(&mut buf);
                    scatter(segment, &mut tmp, users_per_bin, |r| {
                        urank[r.user as usize] as usize
                    });
                    scatter(&tmp, segment, nb, |r| ib[r.item as usize] as usize);
                    buf = tmp;
                } else {
                    scatter(&buf, segment, nb, |r| ib[r.item as usize] as usize);
                    let base = offsets[s * nb];
                    for j in 0..nb {
                        let b = s * nb + j;
                        let block = &mut segment[offsets[b] - base..offsets[b + 1] - base];
                        let mut rng = ChaCha8Rng::seed_from_u64(
                            block_seed ^ (b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        );
                        block.shuffle(&mut rng);
                    }
                }
            }
        };
        if threads == 1 {
            shares.into_iter().for_each(finish);
        } else {
            std::thread::scope(|sc| {
                for share in shares {
                    sc.spawn(|| finish(share));
                }
            });
        }
        Grid { nb, offsets }
    }

    /// The epoch's block order: `nb` strata of `nb` mutually independent blocks.
    pub fn schedule(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        let nb = self.nb;
        let mut rows: Vec<usize> = (0..nb).collect();
        let mut cols: Vec<usize> = (0..nb).collect();
        let mut shifts: Vec<usize> = (0..nb).collect();
        rows.shuffle(rng);
        cols.shuffle(rng);
        shifts.shuffle(rng);
        shifts
            .iter()
            .map(|&s| (0..nb).map(|j| rows[j] * nb + cols[(j + s) % nb]).collect())
            .collect()
    }
}

/// One epoch over the grid with `threads` workers; returns Σe² over all ratings
/// (each error taken just before its update), summed in a fixed block order.
fn grid_epoch(
    model: &mut Model,
    ratings: &[Rating],
    grid: &Grid,
    strata: &[Vec<usize>],
    rates: &Rates,
    threads: usize,
) -> f64 {
    let m = Params::of(model);
    let kernel = block_fn();
    let nblocks = grid.nb * grid.nb;
    let block_sse: Vec<AtomicU64> = (0..nblocks).map(|_| AtomicU64::new(0)).collect();
    let run = |b: usize| {
        let rs = &ratings[grid.offsets[b]..grid.offsets[b + 1]];
        // SAFETY: indices were checked when the grid was built; blocks of one
        // stratum share no user or item, and strata are separated by a barrier.
        let sse = unsafe { kernel(rs, m, rates) };
        block_sse[b].store(sse.to_bits(), Ordering::Relaxed);
    };
    let threads = threads.clamp(1, grid.nb);
    if threads == 1 {
        for stratum in strata {
            for &b in stratum {
                run(b);
            }
        }
    } else {
        let counters: Vec<AtomicUsize> = strata.iter().map(|_| AtomicUsize::new(0)).collect();
        let barrier = Barrier::new(threads);
        let work = || {
            for (stratum, next) in strata.iter().zip(&counters) {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    if j >= stratum.len() {
                        break;
                    }
                    run(stratum[j]);
                }
                barrier.wait();
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
    }
    block_sse
        .iter()
        .map(|x| f64::from_bits(x.load(Ordering::Relaxed)))
        .sum()
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
    validation: Option<&[Rating]>,
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    let (nu, ni) = (model.n_users(), model.n_items());
    assert!(
        ratings
            .iter()
            .all(|r| (r.user as usize) < nu && (r.item as usize) < ni),
        "rating index outside the model"
    );
    let threads = model.hyper.threads.max(1);
    let nb = grid_size(threads, ratings.len());
    // The result does not depend on the worker count, so small problems (where
    // the per-stratum barriers cost more than the work) run on fewer threads.
    let threads = threads.min(ratings.len().div_ceil(MIN_RATINGS_PER_THREAD).max(1));
    let grid = Grid::build(
        ratings,
        nu,
        ni,
        model.factors(),
        nb,
        model.hyper.seed,
        threads,
    );
    let ratings: &[Rating] = ratings;
    let mut rng = ChaCha8Rng::seed_from_u64(model.hyper.seed ^ 0x5eed_5eed);
    let epochs = model.hyper.epochs;
    for e in 0..epochs {
        let strata = grid.schedule(&mut rng);
        let rates = rates_for(model, e);
        let sse = grid_epoch(model, ratings, &grid, &strata, &rates, threads);
        let stats = if e + 1 == epochs {
            crate::train::epoch_stats_par(model, ratings, validation, e + 1, threads)
        } else {
            // The running estimate: errors measured during the pass.
            EpochStats {
                epoch: e + 1,
                loss: 0.5 * (sse + crate::train::penalty(model)),
                train_rmse: (sse / ratings.len().max(1) as f64).sqrt(),
                validation_rmse: validation.map(|v| crate::train::rmse_of(model, v)),
            }
        };
        if report(model, e + 1, Progress::Full(stats)).is_break() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_groups_every_rating_into_its_block() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        use rand::Rng;
        let mut ratings: Vec<Rating> = (0..5000)
            .map(|_| Rating {
                user: rng.gen_range(0..97),
                item: rng.gen_range(0..53),
                value: rng.gen_range(1..=5) as f32,
            })
            .collect();
        let mut before: Vec<(u32, u32, u32)> = ratings
            .iter()
            .map(|r| (r.user, r.item, r.value.to_bits()))
            .collect();
        let grid = Grid::build(&mut ratings, 97, 53, 8, 5, 3, 2);
        let mut after: Vec<(u32, u32, u32)> = ratings
            .iter()
            .map(|r| (r.user, r.item, r.value.to_bits()))
            .collect();
        before.sort_unstable();
        after.sort_unstable();
        assert_eq!(before, after, "a permutation");
        assert_eq!(*grid.offsets.last().unwrap(), 5000);
        // Within a block all users share a bin: no user appears in two blocks of a row.
        for b in 0..25 {
            for r in &ratings[grid.offsets[b]..grid.offsets[b + 1]] {
                for c in 0..25 {
                    if c / 5 != b / 5 {
                        assert!(ratings[grid.offsets[c]..grid.offsets[c + 1]]
                            .iter()
                            .all(|s| s.user != r.user));
                    }
                }
            }
        }
        // Every stratum covers each row and column bin exactly once.
        for stratum in grid.schedule(&mut rng) {
            let mut rows: Vec<usize> = stratum.iter().map(|b| b / 5).collect();
            let mut cols: Vec<usize> = stratum.iter().map(|b| b % 5).collect();
            rows.sort_unstable();
            cols.sort_unstable();
            assert_eq!(rows, (0..5).collect::<Vec<_>>());
            assert_eq!(cols, (0..5).collect::<Vec<_>>());
        }
    }

    #[test]
    fn threaded_epochs_are_bit_identical_to_serial() {
        use crate::data::IdMap;
        use crate::params::Hyper;
        use rand::Rng;
        let (nu, ni, k) = (300usize, 200usize, 12usize);
        let ids = |n: usize| IdMap::from_ids((0..n).map(|i| i.to_string()).collect()).unwrap();
        let hyper = Hyper {
            factors: k,
            ..Hyper::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut base = Model::zeros(hyper, ids(nu), ids(ni), 3.5);
        for x in base
            .user_factors
            .iter_mut()
            .chain(base.item_factors.iter_mut())
        {
            *x = rng.gen_range(-0.1..0.1);
        }
        let mut ratings: Vec<Rating> = (0..20_000)
            .map(|_| Rating {
                user: rng.gen_range(0..nu as u32),
                item: rng.gen_range(0..ni as u32),
                value: rng.gen_range(1..=5) as f32,
            })
            .collect();
        let grid = Grid::build(&mut ratings, nu, ni, k, 16, 5, 1);
        let rates = rates_for(&base, 0);
        let run = |threads: usize| {
            let mut m = base.clone();
            let mut sched = ChaCha8Rng::seed_from_u64(1);
            let mut sse = Vec::new();
            for _ in 0..3 {
                let strata = grid.schedule(&mut sched);
                sse.push(grid_epoch(
                    &mut m, &ratings, &grid, &strata, &rates, threads,
                ));
            }
            (m, sse)
        };
        let (serial, s1) = run(1);
        for threads in [2, 3, 16] {
            let (par, s2) = run(threads);
            assert_eq!(par.user_factors, serial.user_factors, "{threads} threads");
            assert_eq!(par.item_factors, serial.item_factors, "{threads} threads");
            assert_eq!(par.user_bias, serial.user_bias, "{threads} threads");
            assert_eq!(s1, s2, "{threads} threads");
        }
    }

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
