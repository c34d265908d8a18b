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

mod grid;
mod kernel;

pub use grid::{grid_size, Grid, Schedule};
pub(crate) use kernel::{prefetch, PREFETCH};
pub use kernel::{step, Rates};

use crate::data::Rating;
use crate::model::{EpochStats, Model};
use crate::train::Progress;
use kernel::{block_fn, Params};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;

/// Below this many ratings per worker, extra threads are not started.
const MIN_RATINGS_PER_THREAD: usize = 200_000;

/// Panics unless every rating's user and item index a row of `model`.
fn assert_in_model(model: &Model, ratings: &[Rating]) {
    let (nu, ni) = (model.n_users(), model.n_items());
    assert!(
        ratings
            .iter()
            .all(|r| (r.user as usize) < nu && (r.item as usize) < ni),
        "rating index outside the model"
    );
}

/// One pass over `ratings` in their current order (serial; for the kernel benchmark only).
#[cfg(feature = "bench")]
pub fn epoch(model: &mut Model, ratings: &[Rating], rates: &Rates) -> f64 {
    assert_in_model(model, ratings);
    let m = Params::of(model);
    // SAFETY: every rating's indices were checked against the model above, and
    // `model` is borrowed mutably for the whole call, so no one else touches it.
    unsafe { block_fn()(ratings, m, rates) }
}

/// One epoch over the grid with `threads` workers; returns Σe² over all ratings
/// (each error taken just before its update), summed in a fixed block order.
fn grid_epoch(
    model: &mut Model,
    grid: &Grid<'_>,
    schedule: &Schedule,
    rates: &Rates,
    threads: usize,
) -> f64 {
    let m = Params::of(model);
    assert!(
        grid.n_users() <= m.n_users() && grid.n_items() <= m.n_items(),
        "the grid's ids exceed the model"
    );
    assert_eq!(schedule.nb(), grid.nb, "a schedule of another grid");
    let kernel = block_fn();
    let nblocks = grid.nb * grid.nb;
    let block_sse: Vec<AtomicU64> = (0..nblocks).map(|_| AtomicU64::new(0)).collect();
    let run = |b: usize| {
        // SAFETY: `Grid::build` indexed tables of `grid.n_users()` users and
        // `grid.n_items()` items with every rating (it panics otherwise), and the
        // model has at least that many rows (asserted above); `model` is borrowed
        // mutably, so only these workers touch it. The blocks of one stratum share
        // no user or item bin (`Grid::schedule` builds it so, for this `nb`), so
        // concurrent blocks touch disjoint rows, and strata are separated by a
        // barrier (or run on one thread).
        let sse = unsafe { kernel(grid.block(b), m, rates) };
        block_sse[b].store(sse.to_bits(), Ordering::Relaxed);
    };
    let strata = schedule.strata();
    let threads = threads.clamp(1, grid.nb);
    if threads == 1 {
        for stratum in strata {
            for &b in stratum {
                run(b);
            }
        }
    } else {
        // Scoped threads rather than rayon: at 2 threads, rayon's epoch took
        // 1.05× the scoped pool's time (median of 8 ratios: 100 K, 400 K and 3 M
        // ratings, k = 50, 2-core machine, 2026-11-30), so the pool stays.
        // `FUNKREC_POOL_DATA=FILE cargo test -p funkrec-engine --lib pool_compare -- --ignored --nocapture`
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

pub(crate) fn rates_for(model: &Model, epoch: usize) -> Rates {
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

/// Trains `model` by SGD on `ratings` (reordered into the grid), reporting every epoch.
pub(crate) fn run(
    model: &mut Model,
    ratings: &mut [Rating],
    validation: Option<&[Rating]>,
    report: &mut dyn FnMut(&Model, usize, Progress) -> ControlFlow<()>,
) {
    assert_in_model(model, ratings);
    let (nu, ni) = (model.n_users(), model.n_items());
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
    let ratings = grid.ratings();
    let mut rng = ChaCha8Rng::seed_from_u64(model.hyper.seed ^ 0x5eed_5eed);
    let epochs = model.hyper.epochs;
    for e in 0..epochs {
        let schedule = grid.schedule(&mut rng);
        let rates = rates_for(model, e);
        let sse = grid_epoch(model, &grid, &schedule, &rates, threads);
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
                let schedule = grid.schedule(&mut sched);
                sse.push(grid_epoch(&mut m, &grid, &schedule, &rates, threads));
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
    #[should_panic(expected = "exceed the model")]
    fn an_epoch_refuses_a_grid_wider_than_the_model() {
        use crate::data::IdMap;
        use crate::params::Hyper;
        let ids = |n: usize| IdMap::from_ids((0..n).map(|i| i.to_string()).collect()).unwrap();
        let mut ratings = vec![Rating {
            user: 5,
            item: 1,
            value: 4.0,
        }];
        let grid = Grid::build(&mut ratings, 6, 2, 4, 2, 1, 1);
        let mut small = Model::zeros(Hyper::default(), ids(3), ids(2), 3.0);
        let schedule = grid.schedule(&mut ChaCha8Rng::seed_from_u64(1));
        let rates = rates_for(&small, 0);
        grid_epoch(&mut small, &grid, &schedule, &rates, 1);
    }

    /// Scoped threads (this module's `grid_epoch`, `epoch_stats_par`) against
    /// rayon for the same work, alternating, medians of the runs; also checks
    /// that both give bit-identical results. A measurement, not a check of speed:
    /// `FUNKREC_POOL_DATA=FILE cargo test -p funkrec-engine --lib pool_compare -- --ignored --nocapture`
    /// (default data: ../shared/data/ml-100k/u.data next to the repository).
    #[test]
    #[ignore = "a timing comparison; run by hand"]
    fn pool_compare() {
        use crate::params::Hyper;
        use rayon::prelude::*;
        use std::time::Instant;
        let path = std::env::var("FUNKREC_POOL_DATA").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/ml-100k/u.data"
            )
            .into()
        });
        let runs: usize = std::env::var("FUNKREC_POOL_RUNS").map_or(7, |v| v.parse().unwrap());
        let threads = 2;
        let data = crate::io::read_dataset(path.as_ref(), None, Default::default()).unwrap();
        let hyper = Hyper {
            factors: 50,
            threads,
            ..Hyper::default()
        };
        let base = crate::train::init_model_from(&data.users, &data.items, &data.ratings, &hyper);
        let mut ratings = data.ratings.clone();
        let nb = grid_size(threads, ratings.len());
        let grid = Grid::build(
            &mut ratings,
            data.n_users(),
            data.n_items(),
            50,
            nb,
            1,
            threads,
        );
        let rates = rates_for(&base, 0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let rayon_epoch = |model: &mut Model, schedule: &Schedule| -> f64 {
            let m = Params::of(model);
            let kernel = block_fn();
            let block_sse: Vec<AtomicU64> = (0..nb * nb).map(|_| AtomicU64::new(0)).collect();
            pool.install(|| {
                for stratum in schedule.strata() {
                    stratum.par_iter().for_each(|&b| {
                        // SAFETY: as in `grid_epoch`: the model covers the grid's ids,
                        // the stratum's blocks share no rows, and `for_each` returns
                        // only when the whole stratum is done.
                        let sse = unsafe { kernel(grid.block(b), m, &rates) };
                        block_sse[b].store(sse.to_bits(), Ordering::Relaxed);
                    });
                }
            });
            block_sse
                .iter()
                .map(|x| f64::from_bits(x.load(Ordering::Relaxed)))
                .sum()
        };
        let rayon_stats = |model: &Model, train: &[Rating]| -> f64 {
            let chunk = train.len().div_ceil(threads);
            let parts: Vec<f64> = pool.install(|| {
                train
                    .par_chunks(chunk)
                    .map(|c| crate::train::sse_of(model, c))
                    .collect()
            });
            parts.into_iter().sum()
        };
        let median = |mut xs: Vec<f64>| {
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        let (mut scoped_sgd, mut rayon_sgd, mut scoped_st, mut rayon_st) =
            (vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            let schedule = grid.schedule(&mut ChaCha8Rng::seed_from_u64(run as u64));
            let (mut a, mut b) = (base.clone(), base.clone());
            let order = [run % 2 == 0, run % 2 == 1];
            let (mut ea, mut eb) = (0.0, 0.0);
            for scoped_first in order {
                let t = Instant::now();
                if scoped_first {
                    ea = grid_epoch(&mut a, &grid, &schedule, &rates, threads);
                    scoped_sgd.push(t.elapsed().as_secs_f64());
                } else {
                    eb = rayon_epoch(&mut b, &schedule);
                    rayon_sgd.push(t.elapsed().as_secs_f64());
                }
            }
            assert_eq!(ea.to_bits(), eb.to_bits());
            assert_eq!(a.user_factors, b.user_factors);
            let (mut sa, mut sb) = (0.0, 0.0);
            for scoped_first in order {
                let t = Instant::now();
                if scoped_first {
                    let st = crate::train::epoch_stats_par(&a, grid.ratings(), None, 1, threads);
                    sa = st.train_rmse;
                    scoped_st.push(t.elapsed().as_secs_f64());
                } else {
                    let sse = rayon_stats(&b, grid.ratings());
                    sb = (sse / grid.ratings().len() as f64).sqrt();
                    rayon_st.push(t.elapsed().as_secs_f64());
                }
            }
            assert_eq!(sa.to_bits(), sb.to_bits());
        }
        let (s1, r1, s2, r2) = (
            median(scoped_sgd),
            median(rayon_sgd),
            median(scoped_st),
            median(rayon_st),
        );
        println!(
            "{} ratings, {threads} threads, {runs} runs: SGD epoch scoped {:.1} ms, rayon {:.1} ms (rayon/scoped {:.3}); stats scoped {:.2} ms, rayon {:.2} ms (rayon/scoped {:.3})",
            grid.ratings().len(),
            s1 * 1e3,
            r1 * 1e3,
            r1 / s1,
            s2 * 1e3,
            r2 * 1e3,
            r2 / s2
        );
    }
}
