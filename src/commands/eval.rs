//! `funkrec eval`: cross-validation or predefined train/test pairs, as a table or JSON.

use super::{epoch_bar, load, on_epoch_for, write_curve, HyperArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use funkrec_engine::eval::{
    evaluate_new_users, evaluate_split, kfold, mean_std, EvalStopping, FoldResult,
};
use funkrec_engine::io::{read_against, Format};
use funkrec_engine::{Dataset, Hyper, Rating, TrainerKind};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// One ratings file to cross-validate.
    #[arg(long, conflicts_with_all = ["train", "test"])]
    pub data: Option<PathBuf>,
    /// Folds for --data.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Training file of a predefined pair (repeatable, paired with --test in order).
    #[arg(long)]
    pub train: Vec<PathBuf>,
    /// Test file of a predefined pair.
    #[arg(long)]
    pub test: Vec<PathBuf>,
    /// File format (default: detected from the first line).
    #[arg(long, ignore_case = true)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also record the validation RMSE after every epoch (in --json output): the test
    /// split's without early stopping, the carved validation set's with it.
    #[arg(long)]
    pub curve: bool,
    /// Draw train and test RMSE per epoch, one line each per fold or split, as an SVG
    /// plot into this file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No progress bars (also none with --json or when stderr is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,
    /// Strict new-user protocol instead of the test files: this seeded fraction of each
    /// training set's users is removed from training, half of each one's ratings are
    /// folded in and the other half tested, beside a retrain that sees the folded half.
    #[arg(long, value_name = "F")]
    pub new_users: Option<f64>,
    /// Early stopping (--patience > 0) never looks at the test ratings: this seeded
    /// fraction of each training split is held out as its validation set (0 = no
    /// early stopping).
    #[arg(long, value_name = "F", default_value_t = DEFAULT_VALIDATION)]
    pub validation: f64,
    /// With early stopping: train once more on the whole training split for the
    /// best epoch count found on the validation set.
    #[arg(long)]
    pub refit: bool,
}

/// The validation fraction of `funkrec eval` and `funkrec train` (docs/accuracy.md).
pub const DEFAULT_VALIDATION: f64 = 0.05;

#[derive(Serialize)]
struct EvalOutput {
    trainer: TrainerKind,
    hyper: Hyper,
    stopping: EvalStopping,
    rmse: f64,
    rmse_std: f64,
    mae: f64,
    mae_std: f64,
    fit_seconds: f64,
    precision_at_10: f64,
    recall_at_10: f64,
    ndcg_at_10: f64,
    folds: Vec<FoldResult>,
}

/// `funkrec eval`: k-fold cross-validation of one file, or predefined train/test pairs.
pub fn run(args: EvalArgs) -> Result<()> {
    let hyper = args.hyper.resolve()?;
    let mut splits: Vec<(String, Dataset, Vec<Rating>)> = Vec::new();
    if let Some(data) = &args.data {
        let all = load(data, args.format, hyper.scale, args.quiet || args.json)?;
        for (f, (tr, te)) in kfold(all.len(), args.folds, hyper.seed)
            .into_iter()
            .enumerate()
        {
            let test = te.iter().map(|&i| all.ratings[i]).collect();
            splits.push((format!("fold {}", f + 1), all.subset(&tr), test));
        }
    } else {
        if args.train.is_empty() || args.train.len() != args.test.len() {
            bail!("give --data FILE, or --train FILE --test FILE pairs (same count)");
        }
        for (tr, te) in args.train.iter().zip(&args.test) {
            let train_set = load(tr, args.format, hyper.scale, args.quiet || args.json)?;
            let test = read_against(te, args.format, &train_set)
                .with_context(|| format!("reading {}", te.display()))?;
            let name = tr
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            splits.push((name, train_set, test));
        }
    }
    if let Some(fraction) = args.new_users {
        return new_users(&splits, fraction, &hyper, &args);
    }
    if !(0.0..0.5).contains(&args.validation) {
        bail!("--validation must be in [0, 0.5), got {}", args.validation);
    }
    let stopping = match (args.validation > 0.0 && hyper.patience > 0, args.refit) {
        (false, _) => EvalStopping::Off,
        (true, false) => EvalStopping::Carve(args.validation),
        (true, true) => EvalStopping::Refit(args.validation),
    };
    let mut folds = Vec::new();
    let quiet = args.quiet || args.json;
    let curve = args.curve || args.plot.is_some();
    for (name, train_set, test) in &splits {
        let pb = epoch_bar(hyper.total_epochs(), name, quiet);
        let mut cb = on_epoch_for(&pb);
        let res = evaluate_split(train_set, test, &hyper, curve, stopping, &mut cb)?;
        pb.finish_and_clear();
        folds.push(res);
    }
    if let Some(plot) = &args.plot {
        let series: Vec<_> = splits
            .iter()
            .zip(&folds)
            .flat_map(|((name, _, _), f)| crate::plot::rmse_series(&format!("{name} "), &f.epochs))
            .collect();
        let title = match stopping {
            EvalStopping::Off => "Learning curves (funkrec eval; validation = test split)",
            _ => "Learning curves (funkrec eval; validation = held-out part of the training split)",
        };
        write_curve(plot, title, &series)?;
    }
    let stat = |f: fn(&FoldResult) -> f64| mean_std(folds.iter().map(f));
    let (rmse, rmse_std) = stat(|f| f.rmse);
    let (mae, mae_std) = stat(|f| f.mae);
    let out = EvalOutput {
        trainer: hyper.trainer,
        hyper: hyper.clone(),
        stopping,
        rmse,
        rmse_std,
        mae,
        mae_std,
        fit_seconds: stat(|f| f.fit_seconds).0,
        precision_at_10: stat(|f| f.precision_at_10).0,
        recall_at_10: stat(|f| f.recall_at_10).0,
        ndcg_at_10: stat(|f| f.ndcg_at_10).0,
        folds,
    };
    if args.json {
        let mut out = out;
        if !args.curve {
            out.folds.iter_mut().for_each(|f| f.epochs.clear());
        }
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "Evaluating RMSE, MAE of {} (k={}, epochs={}, early stopping: {}) on {} split(s).\n",
        hyper.trainer,
        hyper.factors,
        hyper.epochs,
        match stopping {
            EvalStopping::Off => "off".to_owned(),
            EvalStopping::Carve(f) => format!("patience {}, validation {f}", hyper.patience),
            EvalStopping::Refit(f) => format!("patience {}, validation {f}, refit", hyper.patience),
        },
        splits.len()
    );
    print!("{:<14}", "");
    for (name, _, _) in &splits {
        print!("{name:>10}");
    }
    println!("{:>10}{:>10}", "Mean", "Std");
    let row = |label: &str, f: fn(&FoldResult) -> f64, prec: usize| {
        print!("{label:<14}");
        for r in &out.folds {
            print!("{:>10.prec$}", f(r));
        }
        let (m, s) = mean_std(out.folds.iter().map(f));
        println!("{m:>10.prec$}{s:>10.prec$}");
    };
    row("RMSE", |f| f.rmse, 4);
    row("MAE", |f| f.mae, 4);
    row("Precision@10", |f| f.precision_at_10, 4);
    row("Recall@10", |f| f.recall_at_10, 4);
    row("NDCG@10", |f| f.ndcg_at_10, 4);
    row(
        "Best epoch",
        |f| f.best_epoch.map_or(f64::NAN, |e| e as f64),
        0,
    );
    row("Fit time (s)", |f| f.fit_seconds, 2);
    Ok(())
}

/// `--new-users F`: fold-in against a model without the new users, beside a retrain.
fn new_users(
    splits: &[(String, Dataset, Vec<Rating>)],
    fraction: f64,
    hyper: &Hyper,
    args: &EvalArgs,
) -> Result<()> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--new-users must be a fraction in (0, 1), got {fraction}");
    }
    let mut results = Vec::new();
    for (name, train_set, _) in splits {
        let pb = epoch_bar(2 * hyper.total_epochs(), name, args.quiet);
        let mut cb = on_epoch_for(&pb);
        results.push(evaluate_new_users(train_set, fraction, hyper, &mut cb)?);
        pb.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    println!(
        "New users ({fraction} of users, half of their ratings folded in, half tested): {} (k={}, epochs={}).\n",
        hyper.trainer, hyper.factors, hyper.epochs
    );
    print!("{:<22}", "");
    for (name, _, _) in splits {
        print!("{name:>10}");
    }
    println!("{:>10}", "Mean");
    let row =
        |label: &str, f: &dyn Fn(&funkrec_engine::eval::NewUserResult) -> f64, prec: usize| {
            print!("{label:<22}");
            for r in &results {
                print!("{:>10.prec$}", f(r));
            }
            println!("{:>10.prec$}", mean_std(results.iter().map(f)).0);
        };
    row("Fold-in RMSE", &|r| r.fold_in_rmse, 4);
    row("Fold-in (SGD) RMSE", &|r| r.fold_in_sgd_rmse, 4);
    row("Retrain RMSE", &|r| r.retrain_rmse, 4);
    row("New users", &|r| r.new_users as f64, 0);
    row("Test ratings", &|r| r.test_ratings as f64, 0);
    row("Fold-in (µs/user)", &|r| r.fold_in_micros, 1);
    row("Fold-in SGD (µs/user)", &|r| r.fold_in_sgd_micros, 1);
    Ok(())
}
