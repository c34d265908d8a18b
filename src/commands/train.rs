//! `funkrec train`: fits a model on a ratings file and writes the model file.

use super::{epoch_bar, load, on_epoch_for, write_curve, HyperArgs};
use anyhow::Result;
use clap::Args;
use funkrec_engine::io::Format;
use funkrec_engine::{persist, train_in_place};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// File format (default: detected from the first line).
    #[arg(long, ignore_case = true)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// Also draw the training RMSE per epoch as an SVG plot into this file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

/// `funkrec train`: fits a model on a ratings file and writes it as a model file.
pub fn run(args: TrainArgs) -> Result<()> {
    let hyper = args.hyper.resolve()?;
    let data = load(&args.data, args.format, hyper.scale, args.quiet)?;
    let pb = epoch_bar(hyper.total_epochs(), "train", args.quiet);
    let mut cb = on_epoch_for(&pb);
    let mut data = data;
    let n_ratings = data.len();
    let model = train_in_place(&mut data, &hyper, None, &mut cb)?;
    drop(data);
    pb.finish_and_clear();
    persist::save(&model, &args.out)?;
    if let Some(plot) = &args.plot {
        let series = crate::plot::rmse_series("", &model.report.epochs);
        write_curve(plot, "Learning curve (funkrec train)", &series)?;
    }
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
