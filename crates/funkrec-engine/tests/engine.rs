//! The lecture's claims about the engine, checked on synthetic problems made here.

#[path = "support/svd.rs"]
mod svd;

use funkrec_engine::train::{
    gradient, objective_f64, svdpp_gradient, svdpp_objective, train, Gradient, Objective,
    SvdppParams,
};
use funkrec_engine::{eval, Dataset, EpochStats, Hyper, Model, Rating, Scale, TrainerKind};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::ops::ControlFlow;

const ALL: [TrainerKind; 4] = [
    TrainerKind::Sgd,
    TrainerKind::Gd,
    TrainerKind::Funk,
    TrainerKind::Svdpp,
];

fn quiet(_: &EpochStats) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn wide() -> Scale {
    Scale {
        min: -1e3,
        max: 1e3,
    }
}

fn normal_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize, std: f64) -> Array2<f64> {
    let n = Normal::new(0.0, std).unwrap();
    Array2::from_shape_fn((rows, cols), |_| n.sample(rng))
}

/// Ids "u0".."u{n}" and "i0".."i{m}" interned in order, so index = row.
fn dataset_from(entries: impl IntoIterator<Item = (usize, usize, f64)>) -> Dataset {
    let mut ds = Dataset::new();
    for (u, i, r) in entries {
        ds.push(&format!("u{u}"), &format!("i{i}"), r as f32);
    }
    ds
}

// ---------------------------------------------------------------- gradient check

fn param_count(t: &Gradient) -> usize {
    t.user_bias.len() + t.item_bias.len() + t.user_factors.len() + t.item_factors.len()
}

fn param_mut(t: &mut Gradient, mut j: usize) -> &mut f64 {
    let nb = t.user_bias.len();
    if j < nb {
        return &mut t.user_bias[j];
    }
    j -= nb;
    let nb = t.item_bias.len();
    if j < nb {
        return &mut t.item_bias[j];
    }
    j -= nb;
    let n = t.user_factors.len();
    if j < n {
        return t.user_factors.iter_mut().nth(j).unwrap();
    }
    j -= n;
    t.item_factors.iter_mut().nth(j).unwrap()
}

#[test]
fn analytic_gradient_matches_symmetric_difference_quotient_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (nu, ni, k) = (7, 6, 3);
    let mut ratings = Vec::new();
    for u in 0..nu {
        for i in 0..ni {
            if rng.gen_bool(0.5) {
                ratings.push(Rating {
                    user: u,
                    item: i,
                    value: rng.gen_range(1..=5) as f32,
                });
            }
        }
    }
    for biased in [true, false] {
        let theta = Gradient {
            user_bias: normal_matrix(&mut rng, 1, nu as usize, 0.5)
                .row(0)
                .to_owned(),
            item_bias: normal_matrix(&mut rng, 1, ni as usize, 0.5)
                .row(0)
                .to_owned(),
            user_factors: normal_matrix(&mut rng, nu as usize, k, 0.7),
            item_factors: normal_matrix(&mut rng, ni as usize, k, 0.7),
        };
        let obj = Objective {
            mu: 3.2,
            reg: 0.13,
            reg_bias: 0.07,
            biased,
        };
        let g = gradient(&theta, &obj, &ratings);
        let h = 1e-5;
        let mut worst = 0.0f64;
        for j in 0..param_count(&theta) {
            let mut plus = theta.clone();
            *param_mut(&mut plus, j) += h;
            let mut minus = theta.clone();
            *param_mut(&mut minus, j) -= h;
            let numeric = (objective_f64(&plus, &obj, &ratings)
                - objective_f64(&minus, &obj, &ratings))
                / (2.0 * h);
            let analytic = *param_mut(&mut g.clone(), j);
            let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-8);
            // Unbiased: bias gradients are exactly zero both ways.
            worst = worst.max(rel);
            assert!(
                rel < 1e-6,
                "param {j} (biased={biased}): analytic {analytic} numeric {numeric}"
            );
        }
        assert!(worst < 1e-6);
    }
}

/// Every SVD++ parameter (biases, raw P, Q, then Y) by flat index.
fn svdpp_param_mut(t: &mut SvdppParams, j: usize) -> &mut f64 {
    let n = param_count(&t.base);
    if j < n {
        return param_mut(&mut t.base, j);
    }
    t.implicit.iter_mut().nth(j - n).unwrap()
}

#[test]
fn svdpp_gradient_matches_symmetric_difference_quotient_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (nu, ni, k) = (6, 7, 3);
    let mut ratings = Vec::new();
    for u in 0..nu {
        for i in 0..ni {
            // user 5 rates nothing: its p_u only feels the penalty
            if u < 5 && rng.gen_bool(0.5) {
                ratings.push(Rating {
                    user: u,
                    item: i,
                    value: rng.gen_range(1..=5) as f32,
                });
            }
        }
    }
    for biased in [true, false] {
        let theta = SvdppParams {
            base: Gradient {
                user_bias: normal_matrix(&mut rng, 1, nu as usize, 0.5)
                    .row(0)
                    .to_owned(),
                item_bias: normal_matrix(&mut rng, 1, ni as usize, 0.5)
                    .row(0)
                    .to_owned(),
                user_factors: normal_matrix(&mut rng, nu as usize, k, 0.7),
                item_factors: normal_matrix(&mut rng, ni as usize, k, 0.7),
            },
            implicit: normal_matrix(&mut rng, ni as usize, k, 0.7),
        };
        let obj = Objective {
            mu: 3.2,
            reg: 0.13,
            reg_bias: 0.07,
            biased,
        };
        let g = svdpp_gradient(&theta, &obj, &ratings);
        let h = 1e-5;
        let count = param_count(&theta.base) + theta.implicit.len();
        let mut nonzero_y = 0;
        for j in 0..count {
            let mut plus = theta.clone();
            *svdpp_param_mut(&mut plus, j) += h;
            let mut minus = theta.clone();
            *svdpp_param_mut(&mut minus, j) -= h;
            let numeric = (svdpp_objective(&plus, &obj, &ratings)
                - svdpp_objective(&minus, &obj, &ratings))
                / (2.0 * h);
            let analytic = *svdpp_param_mut(&mut g.clone(), j);
            let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-8);
            assert!(
                rel < 1e-6,
                "param {j} of {count} (biased={biased}): analytic {analytic} numeric {numeric}"
            );
            if j >= param_count(&theta.base) && analytic.abs() > 1e-3 {
                nonzero_y += 1;
            }
        }
        // Y's gradient carries data terms, not only the penalty's.
        assert!(nonzero_y > theta.implicit.len() / 2, "{nonzero_y}");
    }
    // With Y = 0 the SVD++ objective is the plain one.
    let plain = Gradient {
        user_bias: normal_matrix(&mut rng, 1, nu as usize, 0.5)
            .row(0)
            .to_owned(),
        item_bias: normal_matrix(&mut rng, 1, ni as usize, 0.5)
            .row(0)
            .to_owned(),
        user_factors: normal_matrix(&mut rng, nu as usize, k, 0.7),
        item_factors: normal_matrix(&mut rng, ni as usize, k, 0.7),
    };
    let obj = Objective {
        mu: 3.0,
        reg: 0.1,
        reg_bias: 0.05,
        biased: true,
    };
    let with_y = SvdppParams {
        base: plain.clone(),
        implicit: Array2::zeros((ni as usize, k)),
    };
    let a = svdpp_objective(&with_y, &obj, &ratings);
    let b = objective_f64(&plain, &obj, &ratings);
    assert!((a - b).abs() < 1e-9 * b, "{a} vs {b}");
}

// ---------------------------------------------------------------- Eckart–Young

#[test]
fn gd_on_a_fully_observed_matrix_reaches_the_truncated_svd() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (m, n, rank) = (60, 40, 5);
    let a = normal_matrix(&mut rng, m, rank, 1.0).dot(&normal_matrix(&mut rng, rank, n, 1.0))
        + normal_matrix(&mut rng, m, n, 0.1);
    let ds = dataset_from(
        (0..m)
            .flat_map(|u| (0..n).map(move |i| (u, i)))
            .map(|(u, i)| (u, i, a[[u, i]])),
    );

    // Oracle: exact SVD from nalgebra.
    let oracle = nalgebra::DMatrix::from_fn(m, n, |i, j| a[[i, j]]).svd(false, false);
    let mut sv: Vec<f64> = oracle.singular_values.iter().copied().collect();
    sv.sort_by(|x, y| y.total_cmp(x));
    let best = sv[rank..].iter().map(|s| s * s).sum::<f64>().sqrt();

    let hyper = Hyper {
        trainer: TrainerKind::Gd,
        factors: rank,
        epochs: 3000,
        lr: 0.01,
        reg: 0.0,
        reg_bias: 0.0,
        init_std: 0.1,
        biased: false,
        scale: wide(),
        ..Hyper::default()
    };
    let model = train(&ds, &hyper, None, &mut quiet).unwrap();
    let p = model.user_factors.mapv(f64::from);
    let q = model.item_factors.mapv(f64::from);
    let err = (&a - &p.dot(&q.t())).mapv(|x| x * x).sum().sqrt();
    assert!(
        err <= best * 1.01,
        "gd error {err} vs best rank-{rank} error {best}"
    );
    assert!(
        err >= best * (1.0 - 1e-6),
        "cannot beat Eckart–Young: {err} < {best}"
    );

    // U, Σ, V recovered from Û, V̂.
    let s = svd::from_factors(&model.user_factors, &model.item_factors);
    for (j, (ours, exact)) in s.sigma.iter().zip(&sv[..rank]).enumerate() {
        let rel = (ours - exact).abs() / exact;
        assert!(rel < 0.01, "sigma[{j}] = {ours} vs oracle {exact}");
    }
    let eye = Array2::<f64>::eye(rank);
    assert!(
        (&s.u.t().dot(&s.u) - &eye).mapv(f64::abs).sum() < 1e-8,
        "U orthonormal"
    );
    assert!(
        (&s.v.t().dot(&s.v) - &eye).mapv(f64::abs).sum() < 1e-8,
        "V orthonormal"
    );
    let recon = (&s.reconstruct() - &p.dot(&q.t())).mapv(f64::abs).sum();
    assert!(recon < 1e-6 * (m * n) as f64, "UΣVᵀ = ÛV̂ᵀ, off by {recon}");
}

// ---------------------------------------------------------------- planted model

struct Planted {
    train: Dataset,
    test: Vec<Rating>,
    sigma: f64,
}

/// μ + b_u + b_i + p_u·q_i + N(0, σ²) on a sparse sample; 10% held out.
fn planted(seed: u64) -> Planted {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (nu, ni, rank, sigma) = (300, 200, 3, 0.25);
    let p = normal_matrix(&mut rng, nu, rank, 0.7);
    let q = normal_matrix(&mut rng, ni, rank, 0.7);
    let bu = normal_matrix(&mut rng, nu, 1, 0.3);
    let bi = normal_matrix(&mut rng, ni, 1, 0.3);
    let noise = Normal::new(0.0, sigma).unwrap();
    let mut all = Vec::new();
    for u in 0..nu {
        for i in 0..ni {
            if rng.gen_bool(0.3) {
                let r = 3.0
                    + bu[[u, 0]]
                    + bi[[i, 0]]
                    + p.row(u).dot(&q.row(i))
                    + noise.sample(&mut rng);
                all.push((u, i, r, rng.gen_bool(0.1)));
            }
        }
    }
    let train = dataset_from(all.iter().filter(|e| !e.3).map(|e| (e.0, e.1, e.2)));
    let test = all
        .iter()
        .filter(|e| e.3)
        .map(|&(u, i, r, _)| Rating {
            user: train.users.get(&format!("u{u}")).unwrap_or(u32::MAX),
            item: train.items.get(&format!("i{i}")).unwrap_or(u32::MAX),
            value: r as f32,
        })
        .collect();
    Planted { train, test, sigma }
}

fn planted_hyper(trainer: TrainerKind) -> Hyper {
    let base = Hyper {
        factors: 3,
        scale: wide(),
        seed: 7,
        ..Hyper::default()
    };
    match trainer {
        TrainerKind::Sgd => Hyper {
            epochs: 120,
            lr: 0.01,
            lr_bias: 0.01,
            reg: 0.02,
            reg_bias: 0.01,
            lr_decay: 0.99,
            init_std: 0.1,
            ..base
        },
        TrainerKind::Gd => Hyper {
            trainer,
            epochs: 600,
            lr: 1e-3,
            reg: 0.5,
            reg_bias: 0.5,
            init_std: 0.1,
            ..base
        },
        TrainerKind::Svdpp => Hyper {
            trainer,
            epochs: 120,
            lr: 0.01,
            lr_bias: 0.01,
            reg: 0.02,
            reg_bias: 0.01,
            lr_decay: 0.99,
            init_std: 0.1,
            ..base
        },
        TrainerKind::Funk => Hyper {
            trainer,
            epochs: 50,
            funk_cycles: 4,
            lr: 0.01,
            lr_bias: 0.01,
            reg: 0.02,
            reg_bias: 0.01,
            lr_decay: 0.99,
            init_std: 0.1,
            ..base
        },
    }
}

#[test]
fn every_trainer_recovers_a_planted_model_to_the_noise_level() {
    let data = planted(3);
    for trainer in ALL {
        let model = train(&data.train, &planted_hyper(trainer), None, &mut quiet).unwrap();
        let rmse = eval::rmse(&model, &data.test);
        assert!(
            rmse <= data.sigma * 1.15,
            "{trainer}: held-out RMSE {rmse:.4} vs noise σ {}",
            data.sigma
        );
    }
}

/// μ + b_u + b_i + q_i·(p_u + |N(u)|^-½ Σ_{j∈N(u)} y_j) + N(0, σ²), N(u) the user's
/// training items; 10% held out (chosen before the values, so N(u) is known).
fn planted_svdpp(seed: u64) -> Planted {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (nu, ni, rank, sigma) = (300, 200, 3, 0.25);
    let p = normal_matrix(&mut rng, nu, rank, 0.5);
    let q = normal_matrix(&mut rng, ni, rank, 0.7);
    let y = normal_matrix(&mut rng, ni, rank, 0.7);
    let bu = normal_matrix(&mut rng, nu, 1, 0.3);
    let bi = normal_matrix(&mut rng, ni, 1, 0.3);
    let noise = Normal::new(0.0, sigma).unwrap();
    let mut all = Vec::new();
    for u in 0..nu {
        let mut rated: Vec<(usize, bool)> = Vec::new();
        for i in 0..ni {
            if rng.gen_bool(0.3) {
                rated.push((i, rng.gen_bool(0.1)));
            }
        }
        let train_items: Vec<usize> = rated.iter().filter(|e| !e.1).map(|e| e.0).collect();
        let mut z = p.row(u).to_owned();
        let c = 1.0 / (train_items.len().max(1) as f64).sqrt();
        for &j in &train_items {
            z.scaled_add(c, &y.row(j));
        }
        for (i, held) in rated {
            let r = 3.0 + bu[[u, 0]] + bi[[i, 0]] + z.dot(&q.row(i)) + noise.sample(&mut rng);
            all.push((u, i, r, held));
        }
    }
    let train = dataset_from(all.iter().filter(|e| !e.3).map(|e| (e.0, e.1, e.2)));
    let test = all
        .iter()
        .filter(|e| e.3)
        .map(|&(u, i, r, _)| Rating {
            user: train.users.get(&format!("u{u}")).unwrap_or(u32::MAX),
            item: train.items.get(&format!("i{i}")).unwrap_or(u32::MAX),
            value: r as f32,
        })
        .collect();
    Planted { train, test, sigma }
}

/// SVD++ fits data generated by an SVD++ model to the noise level, and the fitted
/// model's implicit factors carry the signal: its users' vectors minus their implicit
/// terms predict worse than the full vectors.
#[test]
fn svdpp_recovers_a_planted_svdpp_model_to_the_noise_level() {
    let data = planted_svdpp(13);
    let model = train(
        &data.train,
        &planted_hyper(TrainerKind::Svdpp),
        None,
        &mut quiet,
    )
    .unwrap();
    let rmse = eval::rmse(&model, &data.test);
    assert!(
        rmse <= data.sigma * 1.15,
        "svdpp: held-out RMSE {rmse:.4} vs noise σ {}",
        data.sigma
    );
    let mut rated = vec![Vec::new(); model.n_users()];
    for r in &data.train.ratings {
        rated[r.user as usize].push(r.item);
    }
    let mut raw = model.clone();
    for (u, items) in rated.iter().enumerate() {
        let s = model.implicit_term(items.iter().copied()).unwrap();
        for (x, s) in raw.user_factors.row_mut(u).iter_mut().zip(&s) {
            *x -= s;
        }
    }
    let without = eval::rmse(&raw, &data.test);
    assert!(without > rmse * 1.2, "without Y {without:.4} vs {rmse:.4}");
}

fn baseline_loss(ds: &Dataset) -> f64 {
    let mu = ds.mean();
    0.5 * ds
        .ratings
        .iter()
        .map(|r| (r.value as f64 - mu).powi(2))
        .sum::<f64>()
}

#[test]
fn gd_loss_never_increases() {
    let data = planted(4);
    let hyper = Hyper {
        epochs: 200,
        ..planted_hyper(TrainerKind::Gd)
    };
    let model = train(&data.train, &hyper, None, &mut quiet).unwrap();
    let losses: Vec<f64> = model.report.epochs.iter().map(|e| e.loss).collect();
    assert!(losses.len() > 100, "ran {} epochs", losses.len());
    for w in losses.windows(2) {
        assert!(w[1] <= w[0], "loss rose from {} to {}", w[0], w[1]);
    }
    assert!(*losses.last().unwrap() < 0.2 * baseline_loss(&data.train));
}

#[test]
fn sgd_and_funk_end_well_below_where_they_start() {
    let data = planted(5);
    for trainer in [TrainerKind::Sgd, TrainerKind::Funk, TrainerKind::Svdpp] {
        let model = train(&data.train, &planted_hyper(trainer), None, &mut quiet).unwrap();
        let first = model.report.epochs.first().unwrap().loss;
        let last = model.report.epochs.last().unwrap().loss;
        let start = baseline_loss(&data.train);
        assert!(last < 0.2 * start, "{trainer}: {last} vs baseline {start}");
        assert!(
            last < 0.5 * first,
            "{trainer}: {last} vs first epoch {first}"
        );
    }
}

#[test]
fn training_is_deterministic_for_a_seed_with_one_thread() {
    let data = planted(6);
    for trainer in ALL {
        let h = Hyper {
            epochs: 5,
            threads: 1,
            ..planted_hyper(trainer)
        };
        let a = train(&data.train, &h, None, &mut quiet).unwrap();
        let b = train(&data.train, &h, None, &mut quiet).unwrap();
        assert_eq!(a.user_factors, b.user_factors, "{trainer}");
        assert_eq!(a.item_bias, b.item_bias, "{trainer}");
        let c = train(&data.train, &Hyper { seed: 99, ..h }, None, &mut quiet).unwrap();
        assert_ne!(
            a.user_factors, c.user_factors,
            "{trainer}: seed has no effect"
        );
    }
}

#[test]
fn validation_rmse_is_reported_per_epoch() {
    let data = planted(7);
    for trainer in ALL {
        let h = Hyper {
            epochs: 4,
            ..planted_hyper(trainer)
        };
        let mut seen = Vec::new();
        let model = train(&data.train, &h, Some(&data.test), &mut |s: &EpochStats| {
            seen.push(*s);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, model.report.epochs);
        let last = seen.last().unwrap();
        let direct = eval::rmse(&model, &data.test);
        assert!(
            (last.validation_rmse.unwrap() - direct).abs() < 1e-3,
            "{trainer}: {last:?} vs {direct}"
        );
    }
}

#[test]
fn callback_break_stops_training() {
    let data = planted(8);
    let h = Hyper {
        epochs: 50,
        ..planted_hyper(TrainerKind::Sgd)
    };
    let model = train(&data.train, &h, None, &mut |s: &EpochStats| {
        if s.epoch == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(model.report.epochs.len(), 3);
}

/// Too many factors and no regularisation: the validation RMSE turns up early.
fn overfitting(trainer: TrainerKind, patience: usize) -> Hyper {
    let h = planted_hyper(trainer);
    Hyper {
        factors: 30,
        reg: 0.0,
        patience,
        epochs: match trainer {
            TrainerKind::Funk => 8,
            _ => h.epochs,
        },
        funk_cycles: 1,
        lr: if trainer == TrainerKind::Sgd {
            0.03
        } else {
            h.lr
        },
        lr_decay: 1.0,
        ..h
    }
}

#[test]
fn early_stopping_keeps_the_best_epoch_for_every_trainer() {
    let data = planted(9);
    for trainer in [TrainerKind::Sgd, TrainerKind::Gd, TrainerKind::Funk] {
        let h = overfitting(trainer, 3);
        let mut calls = 0;
        let model = train(&data.train, &h, Some(&data.test), &mut |_: &EpochStats| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        let r = &model.report;
        assert_eq!(
            calls,
            r.epochs.len(),
            "{trainer}: the caller saw every epoch"
        );
        let best = r.best_epoch.expect("early stopping was on");
        let at = r.epochs.iter().position(|e| e.epoch == best).unwrap();
        let curve: Vec<f64> = r
            .epochs
            .iter()
            .map(|e| e.validation_rmse.unwrap())
            .collect();
        // the epochs early stopping judges: every one, or each funk factor's last
        let judged = |e: usize| trainer != TrainerKind::Funk || e % h.epochs == 0;
        let min = r
            .epochs
            .iter()
            .filter(|e| judged(e.epoch))
            .map(|e| e.validation_rmse.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(
            curve[at], min,
            "{trainer}: the best epoch has the lowest RMSE"
        );
        assert_eq!(r.kept().unwrap().epoch, best);
        // the model holds the best epoch's parameters, not the last epoch's
        let now = eval::rmse(&model, &data.test);
        assert!((now - min).abs() < 1e-4, "{trainer}: {now} vs best {min}");
        if r.stopped_early {
            // funk's patience counts factors: judged after each factor's last epoch
            let per = if trainer == TrainerKind::Funk {
                h.epochs
            } else {
                1
            };
            assert_eq!(
                r.epochs.len(),
                at + 1 + 3 * per,
                "{trainer}: stopped 3 judged epochs after the best"
            );
            assert!(r.epochs.len() < h.total_epochs());
        }
        if trainer == TrainerKind::Sgd {
            assert!(r.stopped_early, "sgd overfits this problem: {curve:?}");
            assert!(*curve.last().unwrap() > min);
        }
    }
}

#[test]
fn patience_zero_or_no_validation_runs_every_epoch() {
    let data = planted(9);
    let h = overfitting(TrainerKind::Sgd, 0);
    let model = train(&data.train, &h, Some(&data.test), &mut quiet).unwrap();
    assert_eq!(model.report.epochs.len(), h.epochs);
    assert_eq!(
        (model.report.best_epoch, model.report.stopped_early),
        (None, false)
    );
    let h = overfitting(TrainerKind::Sgd, 3);
    let model = train(&data.train, &h, None, &mut quiet).unwrap();
    assert_eq!(
        model.report.epochs.len(),
        h.epochs,
        "no validation set: no early stopping"
    );
    assert_eq!(model.report.best_epoch, None);
}

#[test]
fn eval_never_stops_on_the_test_ratings() {
    let data = planted(9);
    let h = overfitting(TrainerKind::Sgd, 3);
    // Off: patience is ignored even though the test ratings are tracked
    let off = eval::evaluate_split(
        &data.train,
        &data.test,
        &h,
        true,
        eval::EvalStopping::Off,
        &mut quiet,
    )
    .unwrap();
    assert_eq!(off.epochs.len(), h.epochs);
    assert_eq!(off.best_epoch, None);
    // Carve: the validation set is a seeded part of the training split
    let carve = eval::EvalStopping::Carve(0.1);
    let a = eval::evaluate_split(&data.train, &data.test, &h, true, carve, &mut quiet).unwrap();
    let b = eval::evaluate_split(&data.train, &data.test, &h, false, carve, &mut quiet).unwrap();
    assert!(a.stopped_early && a.epochs.len() < h.epochs);
    assert_eq!(a.rmse, b.rmse, "tracking the test set changes nothing");
    assert_eq!(a.best_epoch, b.best_epoch);
    assert!(
        a.rmse < off.rmse,
        "stopping at the best epoch beats overfitting: {} vs {}",
        a.rmse,
        off.rmse
    );
    let (rest, validation) = eval::carve_validation(&data.train, 0.1, h.seed);
    assert_eq!(rest.len() + validation.len(), data.train.len());
    assert!((validation.len() as f64 - 0.1 * data.train.len() as f64).abs() < 1.0);
    // Refit: the best epoch count, then the whole training split
    let r = eval::evaluate_split(
        &data.train,
        &data.test,
        &h,
        false,
        eval::EvalStopping::Refit(0.1),
        &mut quiet,
    )
    .unwrap();
    assert_eq!(r.best_epoch, a.best_epoch);
    assert_eq!(
        r.epochs.len(),
        a.best_epoch.unwrap(),
        "refit runs exactly the best epoch count"
    );
}

// ---------------------------------------------------------------- model behaviour

#[test]
fn unknown_ids_drop_their_terms_and_predictions_are_clamped() {
    let data = planted(9);
    let h = Hyper {
        scale: Scale { min: 1.0, max: 5.0 },
        epochs: 10,
        ..planted_hyper(TrainerKind::Sgd)
    };
    let m: Model = train(&data.train, &h, None, &mut quiet).unwrap();
    let both = m.predict("u1", "i1");
    assert!(both.known_user && both.known_item);
    let nu = m.predict("nobody", "i1");
    assert!(!nu.known_user && nu.known_item);
    assert!(
        (nu.rating
            - (m.global_mean + m.item_bias[m.items.get("i1").unwrap() as usize]).clamp(1.0, 5.0))
        .abs()
            < 1e-6
    );
    let none = m.predict("nobody", "nothing");
    assert!((none.rating - m.global_mean.clamp(1.0, 5.0)).abs() < 1e-6);
    for u in 0..50 {
        for i in 0..50 {
            let r = m.predict(&format!("u{u}"), &format!("i{i}")).rating;
            assert!((1.0..=5.0).contains(&r));
        }
    }
}

#[test]
fn top_n_matches_a_full_sort_and_skips_excluded_items() {
    let data = planted(10);
    let m = train(
        &data.train,
        &Hyper {
            epochs: 10,
            ..planted_hyper(TrainerKind::Sgd)
        },
        None,
        &mut quiet,
    )
    .unwrap();
    for u in [0u32, 5, 17] {
        let excluded = |i: u32| i % 3 == 0;
        let top = m.top_n(u, 10, excluded);
        let mut all: Vec<(u32, f32)> = (0..m.n_items() as u32)
            .filter(|&i| !excluded(i))
            .map(|i| (i, m.raw_predict(Some(u), Some(i))))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        let expect: Vec<u32> = all.iter().take(10).map(|x| x.0).collect();
        assert_eq!(top.iter().map(|x| x.0).collect::<Vec<_>>(), expect);
        assert!(top.iter().all(|(i, _)| !excluded(*i)));
    }
}

// ---------------------------------------------------------------- parallel SGD

#[test]
fn parallel_sgd_is_deterministic_and_matches_serial() {
    let data = planted(11);
    let h = planted_hyper(TrainerKind::Sgd);
    let serial = train(
        &data.train,
        &Hyper {
            threads: 1,
            ..h.clone()
        },
        None,
        &mut quiet,
    )
    .unwrap();
    let par = |threads: usize| {
        train(
            &data.train,
            &Hyper {
                threads,
                ..h.clone()
            },
            None,
            &mut quiet,
        )
        .unwrap()
    };
    let (a, b) = (par(3), par(3));
    assert_eq!(a.user_factors, b.user_factors, "same seed, same threads");
    assert_eq!(a.item_bias, b.item_bias);
    // The block schedule does not depend on the thread count (up to 8 threads):
    // the blocks of a stratum are independent, so the result is bit-identical.
    // (This small set runs on one worker; the unit test
    // `threaded_epochs_are_bit_identical_to_serial` drives real threads.)
    assert_eq!(a.user_factors, serial.user_factors);
    assert_eq!(par(2).item_factors, serial.item_factors);
    // More threads than that use a finer grid: a different order, same quality.
    let wide = par(12);
    let (rs, rw) = (
        eval::rmse(&serial, &data.test),
        eval::rmse(&wide, &data.test),
    );
    assert!(
        (rw - rs).abs() <= 0.02 * rs,
        "serial {rs:.4} vs 12 threads {rw:.4}"
    );
    assert!(rw <= data.sigma * 1.15, "12 threads: {rw:.4}");
}

#[test]
fn training_in_place_equals_training_on_a_copy() {
    let data = planted(12);
    let h = Hyper {
        epochs: 5,
        ..planted_hyper(TrainerKind::Sgd)
    };
    let a = train(&data.train, &h, None, &mut quiet).unwrap();
    let mut owned = data.train.clone();
    let b = funkrec_engine::train_in_place(&mut owned, &h, None, &mut quiet).unwrap();
    assert_eq!(a.user_factors, b.user_factors);
    assert_eq!(a.report.epochs, b.report.epochs);
    assert_eq!(owned.len(), data.train.len());
}

// ---------------------------------------------------------------- fold-in

/// Strict new-user protocol on the planted model: users never seen in training,
/// folded in from half their ratings, predict the other half about as well as a
/// retrain that saw the same half, close to the noise level.
#[test]
fn new_users_folded_in_predict_as_well_as_a_retrain() {
    for (pl, trainer) in [
        (planted(11), TrainerKind::Sgd),
        (planted_svdpp(11), TrainerKind::Svdpp),
    ] {
        new_users_case(pl, trainer);
    }
}

fn new_users_case(pl: Planted, trainer: TrainerKind) {
    let hyper = planted_hyper(trainer);
    let r = eval::evaluate_new_users(&pl.train, 0.2, &hyper, &mut quiet).unwrap();
    assert!(r.new_users >= 50, "{r:?}");
    assert!(r.test_ratings > 1000, "{r:?}");
    assert!(
        r.fold_in_rmse < r.retrain_rmse * 1.05,
        "{trainer}: fold-in {} vs retrain {}",
        r.fold_in_rmse,
        r.retrain_rmse
    );
    assert!(r.fold_in_rmse < 2.0 * pl.sigma + 0.2, "{r:?}");
    assert!(r.fold_in_sgd_rmse.is_finite(), "{r:?}");
}
