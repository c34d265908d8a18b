//! Micro-benchmarks of the hot kernels. Keep runs short:
//! `cargo bench -p funkrec-engine --features bench --bench kernels -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use funkrec_engine::train::sgd::{self, Rates};
use funkrec_engine::{Hyper, IdMap, Model, Rating};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ids(n: usize) -> IdMap {
    IdMap::from_ids((0..n).map(|i| i.to_string()).collect()).unwrap()
}

/// A model with N(0, 0.1²)-ish random factors and biases.
fn random_model(users: usize, items: usize, k: usize, seed: u64) -> Model {
    let hyper = Hyper {
        factors: k,
        ..Hyper::default()
    };
    let mut m = Model::zeros(hyper, ids(users), ids(items), 3.6);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for x in m.user_factors.iter_mut().chain(m.item_factors.iter_mut()) {
        *x = rng.gen_range(-0.2..0.2);
    }
    for x in m.user_bias.iter_mut().chain(m.item_bias.iter_mut()) {
        *x = rng.gen_range(-0.5..0.5);
    }
    m
}

fn rates() -> Rates {
    Rates {
        lr: 0.005,
        lr_bias: 0.005,
        reg: 0.05,
        reg_bias: 0.01,
        mu: 3.6,
        biased: true,
    }
}

fn sgd_update(c: &mut Criterion) {
    let k = 100;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut p: Vec<f32> = (0..k).map(|_| rng.gen_range(-0.2..0.2)).collect();
    let mut q: Vec<f32> = (0..k).map(|_| rng.gen_range(-0.2..0.2)).collect();
    let (mut bu, mut bi) = (0.1f32, -0.1f32);
    let rates = rates();
    let mut g = c.benchmark_group("sgd");
    g.throughput(Throughput::Elements(1));
    g.bench_function("update_k100", |b| {
        b.iter(|| {
            sgd::step(
                &mut p,
                &mut q,
                &mut bu,
                &mut bi,
                black_box(4.0),
                black_box(&rates),
            )
        })
    });
    g.finish();
}

fn sgd_epoch(c: &mut Criterion) {
    let (users, items, n, k) = (2_000, 1_000, 100_000, 100);
    let mut model = random_model(users, items, k, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let ratings: Vec<Rating> = (0..n)
        .map(|_| Rating {
            user: rng.gen_range(0..users as u32),
            item: rng.gen_range(0..items as u32),
            value: rng.gen_range(1..=5) as f32,
        })
        .collect();
    let rates = Rates {
        lr: 0.001,
        ..rates()
    };
    let mut g = c.benchmark_group("sgd");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(20);
    g.bench_function("epoch_100k_k100", |b| {
        b.iter(|| sgd::epoch(&mut model, black_box(&ratings), &rates))
    });
    g.finish();
}

fn top_n(c: &mut Criterion) {
    let (items, k) = (17_770, 100);
    let model = random_model(1, items, k, 4);
    // A user who rated 200 items: skipped through a per-user bitset.
    let mut rated = vec![false; items];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..200 {
        rated[rng.gen_range(0..items)] = true;
    }
    let mut g = c.benchmark_group("top_n");
    g.throughput(Throughput::Elements(items as u64));
    g.bench_function("top10_17770_items_k100", |b| {
        b.iter(|| model.top_n(black_box(0), 10, |i| rated[i as usize]))
    });
    let index = funkrec_engine::topn::ItemIndex::new(&model);
    g.bench_function("top10_17770_items_k100_int8_index", |b| {
        b.iter(|| index.top_n(&model, black_box(0), 10, |i| rated[i as usize]))
    });
    g.finish();
}

criterion_group!(benches, sgd_update, sgd_epoch, top_n);
criterion_main!(benches);
