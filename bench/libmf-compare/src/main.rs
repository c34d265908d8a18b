//! funkrec SGD vs LIBMF on the same data, in the same process, alternating runs.
//!
//! ```text
//! CXXFLAGS="-O3 -march=native -DUSEAVX" cargo run --release -- \
//!     --train u1.base --test u1.test --factors 100 --epochs 20 --threads 1 --runs 3
//! ```
//!
//! Prints updates/s (ratings × epochs / training seconds), seconds per epoch and
//! test RMSE (both models' predictions clamped to 1..5, as funkrec evaluates)
//! for every run, the medians, and the funkrec/LIBMF ratios.

use funkrec_engine::io::{read_against, read_dataset};
use funkrec_engine::{eval, train, EpochStats, Hyper, Rating, Scale};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    train: PathBuf,
    test: PathBuf,
    factors: usize,
    epochs: usize,
    threads: usize,
    runs: usize,
    lr: Option<f32>,
    reg: Option<f32>,
    lr_decay: Option<f32>,
    init_std: Option<f32>,
    libmf_eta: f32,
    libmf_lambda: f32,
    libmf_bins: i32,
    only: Option<String>,
}

fn parse() -> Args {
    let mut a = Args {
        train: PathBuf::new(),
        test: PathBuf::new(),
        factors: 100,
        epochs: 20,
        threads: 1,
        runs: 3,
        lr: None,
        reg: None,
        lr_decay: None,
        init_std: None,
        libmf_eta: 0.1,
        libmf_lambda: 0.05,
        libmf_bins: 0,
        only: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--train" => a.train = val().into(),
            "--test" => a.test = val().into(),
            "--factors" => a.factors = val().parse().expect("--factors"),
            "--epochs" => a.epochs = val().parse().expect("--epochs"),
            "--threads" => a.threads = val().parse().expect("--threads"),
            "--runs" => a.runs = val().parse().expect("--runs"),
            "--lr" => a.lr = Some(val().parse().expect("--lr")),
            "--reg" => a.reg = Some(val().parse().expect("--reg")),
            "--lr-decay" => a.lr_decay = Some(val().parse().expect("--lr-decay")),
            "--init-std" => a.init_std = Some(val().parse().expect("--init-std")),
            "--libmf-eta" => a.libmf_eta = val().parse().expect("--libmf-eta"),
            "--libmf-lambda" => a.libmf_lambda = val().parse().expect("--libmf-lambda"),
            "--libmf-bins" => a.libmf_bins = val().parse().expect("--libmf-bins"),
            "--only" => a.only = Some(val()),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        !a.train.as_os_str().is_empty() && !a.test.as_os_str().is_empty(),
        "--train FILE --test FILE are required"
    );
    a
}

struct Run {
    seconds: f64,
    rmse: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let a = parse();
    let scale = Scale { min: 1.0, max: 5.0 };
    let t = Instant::now();
    let data = read_dataset(&a.train, None, scale).expect("reading --train");
    let test = read_against(&a.test, None, &data).expect("reading --test");
    eprintln!(
        "loaded {} train / {} test ratings ({} users, {} items) in {:.1}s",
        data.len(),
        test.len(),
        data.n_users(),
        data.n_items(),
        t.elapsed().as_secs_f64()
    );
    let mut hyper = Hyper {
        factors: a.factors,
        epochs: a.epochs,
        threads: a.threads,
        ..Hyper::default()
    };
    if let Some(lr) = a.lr {
        hyper.lr = lr;
        hyper.lr_bias = lr;
    }
    if let Some(reg) = a.reg {
        hyper.reg = reg;
    }
    if let Some(d) = a.lr_decay {
        hyper.lr_decay = d;
    }
    if let Some(s) = a.init_std {
        hyper.init_std = s;
    }
    let bins = if a.libmf_bins > 0 {
        a.libmf_bins
    } else {
        // LIBMF's own rule of thumb: at least 2·threads + 1 bins; 20 by default.
        (2 * a.threads as i32 + 1).max(20)
    };
    let updates = (data.len() * a.epochs) as f64;
    let run_libmf = a.only.as_deref() != Some("funkrec");
    let run_ours = a.only.as_deref() != Some("libmf");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        if run_libmf {
            let mut m = libmf::Matrix::with_capacity(data.len());
            for r in &data.ratings {
                m.push(r.user as i32, r.item as i32, r.value);
            }
            let t = Instant::now();
            let model = libmf::Model::params()
                .factors(a.factors as i32)
                .iterations(a.epochs as i32)
                .threads(a.threads as i32)
                .bins(bins)
                .learning_rate(a.libmf_eta)
                .lambda_p2(a.libmf_lambda)
                .lambda_q2(a.libmf_lambda)
                .quiet(true)
                .fit(&m)
                .expect("LIBMF fit");
            let seconds = t.elapsed().as_secs_f64();
            drop(m);
            let sse: f64 = test
                .iter()
                .map(|r: &Rating| {
                    let (u, i) = (r.user as i32, r.item as i32); // u32::MAX → -1: unknown
                    let p = model.predict(u, i).clamp(1.0, 5.0);
                    (r.value as f64 - p as f64).powi(2)
                })
                .sum();
            let rmse = (sse / test.len() as f64).sqrt();
            eprintln!(
                "run {run}: LIBMF   {seconds:7.2}s  {:6.2} M updates/s  test RMSE {rmse:.4}",
                updates / seconds / 1e6
            );
            theirs.push(Run { seconds, rmse });
        }
        if run_ours {
            let t = Instant::now();
            let model = train(&data, &hyper, None, &mut |_: &EpochStats| {
                ControlFlow::Continue(())
            })
            .expect("funkrec train");
            let seconds = t.elapsed().as_secs_f64();
            let rmse = eval::rmse(&model, &test);
            eprintln!(
                "run {run}: funkrec {seconds:7.2}s  {:6.2} M updates/s  test RMSE {rmse:.4}",
                updates / seconds / 1e6
            );
            ours.push(Run { seconds, rmse });
        }
    }
    println!(
        "data {} ({} ratings), k={}, epochs={}, threads={}, runs={}, LIBMF bins={} eta={} lambda={}, funkrec lr={} reg={} decay={} init_std={}",
        a.train.display(),
        data.len(),
        a.factors,
        a.epochs,
        a.threads,
        a.runs,
        bins,
        a.libmf_eta,
        a.libmf_lambda,
        hyper.lr,
        hyper.reg,
        hyper.lr_decay,
        hyper.init_std
    );
    println!(
        "{:<10}{:>14}{:>14}{:>12}",
        "median", "M updates/s", "s/epoch", "test RMSE"
    );
    let row = |name: &str, runs: &[Run]| -> Option<(f64, f64)> {
        if runs.is_empty() {
            return None;
        }
        let s = median(runs.iter().map(|r| r.seconds).collect());
        let rmse = median(runs.iter().map(|r| r.rmse).collect());
        println!(
            "{name:<10}{:>14.2}{:>14.4}{:>12.4}",
            updates / s / 1e6,
            s / a.epochs as f64,
            rmse
        );
        Some((s, rmse))
    };
    let o = row("funkrec", &ours);
    let l = row("LIBMF", &theirs);
    if let (Some((so, ro)), Some((sl, rl))) = (o, l) {
        println!(
            "ratio funkrec/LIBMF: updates/s {:.2}x, s/epoch {:.2}x, RMSE {:+.4}",
            sl / so,
            so / sl,
            ro - rl
        );
    }
    println!("peak RSS of this process: {} MB", rss_kb() / 1024);
}
