//! Command-line interface: argument parsing, the engine commands (eval, train) and dispatch to the service.

use crate::service;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use funkrec_engine::eval::{evaluate_split, kfold, mean_std, FoldResult};
use funkrec_engine::io::{read_against, read_dataset, Format};
use funkrec_engine::{
    persist, train_in_place, Dataset, EpochStats, Hyper, Rating, Scale, TrainerKind,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "funkrec",
    version,
    about = "Funk-SVD recommendations: train, evaluate, serve"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP service (the default when no command is given).
    Serve {
        /// A TOML file layered over the built-in defaults (e.g. config/production.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Bulk-load a MovieLens/CSV ratings file into the configured store.
    Import {
        file: PathBuf,
        /// tab, dat or csv (default: detected).
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Probe /healthz (exit 0 when healthy); used by the container HEALTHCHECK.
    Healthcheck {
        /// URL to probe (default: /healthz at the configured bind address).
        url: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Cross-validate or evaluate on predefined train/test pairs.
    Eval(EvalArgs),
    /// Train on a ratings file and write a model file.
    Train(TrainArgs),
    /// Write a synthetic ratings file (planted low-rank model, skewed popularity).
    Synth(SynthArgs),
}

/// Netflix size: --users 480189 --items 17770 --ratings 100480507.
#[derive(Args, Debug)]
pub struct SynthArgs {
    #[arg(long, default_value_t = 480_189)]
    pub users: u32,
    #[arg(long, default_value_t = 17_770)]
    pub items: u32,
    #[arg(long, default_value_t = 100_480_507)]
    pub ratings: u64,
    /// Rank of the planted model.
    #[arg(long, default_value_t = 20)]
    pub factors: usize,
    /// Standard deviation of the Gaussian noise added before rounding to 1..5.
    #[arg(long, default_value_t = 0.5)]
    pub noise: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output file (tab-separated user, item, rating, timestamp).
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of ratings written to --holdout-out instead (e.g. 0.01).
    #[arg(long, default_value_t = 0.0, requires = "holdout_out")]
    pub holdout: f64,
    #[arg(long)]
    pub holdout_out: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

/// Hyperparameters; anything not given keeps the shipped default.
#[derive(Args, Debug, Clone, Default)]
pub struct HyperArgs {
    /// sgd (default), gd or funk
    #[arg(long)]
    pub trainer: Option<TrainerKind>,
    #[arg(long)]
    pub factors: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate for factors (and biases unless --lr-bias is given).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub lr_bias: Option<f32>,
    /// Regularisation for factors.
    #[arg(long)]
    pub reg: Option<f32>,
    #[arg(long)]
    pub reg_bias: Option<f32>,
    #[arg(long)]
    pub lr_decay: Option<f32>,
    #[arg(long)]
    pub init_std: Option<f32>,
    /// Plain Funk r̂ = p·q without μ and biases.
    #[arg(long)]
    pub unbiased: bool,
    /// funk: sweeps over all factors (1 = classic; more = backfitting).
    #[arg(long)]
    pub funk_cycles: Option<usize>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Rating scale LO,HI (e.g. 0.5,5).
    #[arg(long, value_parser = Scale::parse)]
    pub scale: Option<Scale>,
}

impl HyperArgs {
    /// The trainer's shipped defaults with every given flag applied on top.
    pub fn resolve(&self) -> Result<Hyper> {
        self.apply(Hyper::for_trainer(self.trainer.unwrap_or_default()))
    }

    pub fn apply(&self, mut h: Hyper) -> Result<Hyper> {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { h.$f = v; })* };
        }
        set!(
            trainer,
            factors,
            epochs,
            lr_bias,
            reg,
            reg_bias,
            lr_decay,
            init_std,
            funk_cycles,
            threads,
            seed,
            scale
        );
        if let Some(lr) = self.lr {
            h.lr = lr;
            if self.lr_bias.is_none() {
                h.lr_bias = lr;
            }
        }
        if self.unbiased {
            h.biased = false;
        }
        h.validate().map_err(anyhow::Error::msg)?;
        Ok(h)
    }
}

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
    /// tab, dat or csv (default: detected).
    #[arg(long)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also record the test RMSE after every epoch (in --json output).
    #[arg(long)]
    pub curve: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub hyper: HyperArgs,
    #[arg(long, short)]
    pub quiet: bool,
}

fn epoch_bar(epochs: usize, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(epochs as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

fn load(path: &Path, format: Option<Format>, scale: Scale, quiet: bool) -> Result<Dataset> {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    pb.set_message(format!("loading {}", path.display()));
    let ds = read_dataset(path, format, scale)?;
    pb.finish_and_clear();
    Ok(ds)
}

fn on_epoch_for(pb: &ProgressBar) -> impl FnMut(&EpochStats) -> ControlFlow<()> + '_ {
    move |s: &EpochStats| {
        pb.set_position(s.epoch as u64);
        let v = s
            .validation_rmse
            .map(|v| format!(" val {v:.4}"))
            .unwrap_or_default();
        pb.set_message(format!("loss {:.1} rmse {:.4}{v}", s.loss, s.train_rmse));
        ControlFlow::Continue(())
    }
}

#[derive(Serialize)]
struct EvalOutput {
    trainer: TrainerKind,
    hyper: Hyper,
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

fn total_epochs(h: &Hyper) -> usize {
    match h.trainer {
        TrainerKind::Funk => h.epochs * (h.factors * h.funk_cycles + usize::from(h.biased)),
        _ => h.epochs,
    }
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let hyper = args.hyper.resolve()?;
    let mut splits: Vec<(String, Dataset, Vec<Rating>)> = Vec::new();
    if let Some(data) = &args.data {
        let all = load(data, args.format, hyper.scale, args.quiet)?;
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
            let train_set = load(tr, args.format, hyper.scale, args.quiet)?;
            let test = read_against(te, args.format, &train_set)
                .with_context(|| format!("reading {}", te.display()))?;
            let name = tr
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            splits.push((name, train_set, test));
        }
    }
    let mut folds = Vec::new();
    for (name, train_set, test) in &splits {
        let pb = epoch_bar(total_epochs(&hyper), name, args.quiet);
        let mut cb = on_epoch_for(&pb);
        let res = evaluate_split(train_set, test, &hyper, args.curve, &mut cb)?;
        pb.finish_and_clear();
        folds.push(res);
    }
    let stat = |f: fn(&FoldResult) -> f64| mean_std(folds.iter().map(f));
    let (rmse, rmse_std) = stat(|f| f.rmse);
    let (mae, mae_std) = stat(|f| f.mae);
    let out = EvalOutput {
        trainer: hyper.trainer,
        hyper: hyper.clone(),
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
        "Evaluating RMSE, MAE of {} (k={}, epochs={}) on {} split(s).\n",
        hyper.trainer,
        hyper.factors,
        hyper.epochs,
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
    row("Fit time (s)", |f| f.fit_seconds, 2);
    Ok(())
}

pub fn train_cmd(args: TrainArgs) -> Result<()> {
    let hyper = args.hyper.resolve()?;
    let data = load(&args.data, args.format, hyper.scale, args.quiet)?;
    let pb = epoch_bar(total_epochs(&hyper), "train", args.quiet);
    let mut cb = on_epoch_for(&pb);
    let mut data = data;
    let n_ratings = data.len();
    let model = train_in_place(&mut data, &hyper, None, &mut cb)?;
    drop(data);
    pb.finish_and_clear();
    persist::save(&model, &args.out)?;
    let last = model
        .report
        .last()
        .map(|s| s.train_rmse)
        .unwrap_or(f64::NAN);
    eprintln!(
        "trained {} users x {} items on {} ratings in {:.2}s (train RMSE {:.4}); wrote {}",
        model.n_users(),
        model.n_items(),
        n_ratings,
        model.report.train_seconds,
        last,
        args.out.display()
    );
    Ok(())
}

pub fn synth_cmd(args: SynthArgs) -> Result<()> {
    use funkrec_engine::synth::{write_synthetic, SynthSpec};
    use std::fs::File;
    use std::io::BufWriter;
    let spec = SynthSpec {
        users: args.users,
        items: args.items,
        ratings: args.ratings,
        factors: args.factors,
        noise: args.noise,
        seed: args.seed,
        holdout: if args.holdout_out.is_some() {
            args.holdout
        } else {
            0.0
        },
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    let create = |p: &Path| -> Result<BufWriter<File>> {
        let f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
        Ok(BufWriter::with_capacity(1 << 20, f))
    };
    let mut out = create(&args.out)?;
    let mut holdout = args.holdout_out.as_deref().map(create).transpose()?;
    let pb = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.ratings)
    };
    pb.set_style(
        ProgressStyle::with_template("synth [{bar:30}] {pos}/{len} ratings ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let sum = write_synthetic(&spec, &mut out, holdout.as_mut(), &mut |n| {
        pb.set_position(n)
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} ratings to {} ({} held out) in {:.1}s; ratings 1..5: {:?}",
        sum.train,
        args.out.display(),
        sum.holdout,
        start.elapsed().as_secs_f64(),
        sum.histogram
    );
    Ok(())
}

/// Parses the command line and runs the command.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => service::serve_command(None),
        Some(Command::Serve { config }) => service::serve_command(config),
        Some(Command::Import {
            file,
            format,
            config,
        }) => service::import_command(file, format, config),
        Some(Command::Healthcheck { url, config }) => service::healthcheck_command(url, config),
        Some(Command::Eval(a)) => eval(a),
        Some(Command::Train(a)) => train_cmd(a),
        Some(Command::Synth(a)) => synth_cmd(a),
    }
}
