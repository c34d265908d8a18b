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

use clap::{Parser, ValueEnum};
use funkrec_engine::io::{read_against, read_dataset};
use funkrec_engine::{eval, train, EpochStats, Hyper, Rating, Scale};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

/// funkrec SGD vs LIBMF on the same data, alternating runs.
#[derive(Parser, Debug)]
struct Args {
    /// Training ratings file (any format funkrec reads).
    #[arg(long)]
    train: PathBuf,
    /// Test ratings file.
    #[arg(long)]
    test: PathBuf,
    #[arg(long, default_value_t = 100)]
    factors: usize,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Runs of each library (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// funkrec learning rate for factors and biases (default: funkrec's).
    #[arg(long)]
    lr: Option<f32>,
    /// funkrec regularisation (default: funkrec's).
    #[arg(long)]
    reg: Option<f32>,
    #[arg(long)]
    lr_decay: Option<f32>,
    #[arg(long)]
    init_std: Option<f32>,
    /// LIBMF learning rate.
    #[arg(long, default_value_t = 0.1)]
    libmf_eta: f32,
    /// LIBMF L2 penalty on P and Q.
    #[arg(long, default_value_t = 0.05)]
    libmf_lambda: f32,
    /// LIBMF bins (0: max(2·threads + 1, 20)).
    #[arg(long, default_value_t = 0)]
    libmf_bins: i32,
    /// Run only one of the two.
    #[arg(long)]
    only: Option<Only>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Only {
    Funkrec,
    Libmf,
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
    let a = Args::parse();
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
    let run_libmf = a.only != Some(Only::Funkrec);
    let run_ours = a.only != Some(Only::Libmf);
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
