//! Fold-in speed: one user's ridge solve against fixed items at the shipped k = 300.
//! `cargo bench -p funkrec-engine --bench foldin -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use funkrec_engine::foldin::fold_in;
use funkrec_engine::{Hyper, IdMap, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn model(items: usize, k: usize) -> Model {
    let ids = IdMap::from_ids((0..items).map(|i| i.to_string()).collect()).unwrap();
    let hyper = Hyper {
        factors: k,
        ..Hyper::default()
    };
    let mut m = Model::zeros(hyper, IdMap::new(), ids, 3.6);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for x in m.item_factors.iter_mut() {
        *x = rng.gen_range(-0.2..0.2);
    }
    for x in m.item_bias.iter_mut() {
        *x = rng.gen_range(-0.5..0.5);
    }
    m
}

fn bench(c: &mut Criterion) {
    let m = model(2000, 300);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut g = c.benchmark_group("fold_in_k300");
    for n in [10usize, 50, 200, 1000] {
        let ratings: Vec<(u32, f32)> = (0..n)
            .map(|_| (rng.gen_range(0..2000), rng.gen_range(1..=5) as f32))
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &ratings, |b, r| {
            b.iter(|| fold_in(black_box(&m), black_box(r)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
