//! `funkrec train`: fits a model on a ratings file and writes the model file.

use super::{epoch_bar, load, on_epoch_for, write_curve, HyperArgs};
use anyhow::Result;
use clap::Args;
use funkrec_engine::eval::carve_validation;
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
    /// Seeded fraction of the ratings held out as the validation set of early
    /// stopping (--patience); 0 = train on everything without early stopping.
    #[arg(long, value_name = "F", default_value_t = super::eval::DEFAULT_VALIDATION)]
    pub validation: f64,
}

/// `funkrec train`: fits a model on a ratings file and writes it as a model file.
pub fn run(args: TrainArgs) -> Result<()> {
    let hyper = args.hyper.resolve()?;
    let data = load(&args.data, args.format, hyper.scale, args.quiet)?;
    let pb = epoch_bar(hyper.total_epochs(), "train", args.quiet);
    let mut cb = on_epoch_for(&pb);
    if !(0.0..0.5).contains(&args.validation) {
        anyhow::bail!("--validation must be in [0, 0.5), got {}", args.validation);
    }
    let (mut data, validation) = if args.validation > 0.0 && hyper.patience > 0 {
        let (rest, v) = carve_validation(&data, args.validation, hyper.seed);
        (rest, Some(v))
    } else {
        (data, None)
    };
    let n_ratings = data.len();
    let model = train_in_place(&mut data, &hyper, validation.as_deref(), &mut cb)?;
    drop(data);
    pb.finish_and_clear();
    persist::save(&model, &args.out)?;
    if let Some(plot) = &args.plot {
        let series = crate::plot::rmse_series("", &model.report.epochs);
        write_curve(plot, "Learning curve (funkrec train)", &series)?;
    }
    let kept = model.report.kept();
    let stopped = match (
        model.report.best_epoch,
        kept.and_then(|s| s.validation_rmse),
    ) {
        (Some(best), Some(v)) => format!(
            "; best epoch {best} of {} (validation RMSE {v:.4}){}",
            model.report.epochs.len(),
            if model.report.stopped_early {
                ", stopped early"
            } else {
                ""
            }
        ),
        _ => String::new(),
    };
    eprintln!(
        "trained {} users x {} items on {} ratings in {:.2}s (train RMSE {:.4}{stopped}); wrote {}",
        model.n_users(),
        model.n_items(),
        n_ratings,
        model.report.train_seconds,
        kept.map(|s| s.train_rmse).unwrap_or(f64::NAN),
        args.out.display()
    );
    Ok(())
}
