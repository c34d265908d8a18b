//! The command line: argument parsing, dispatch to one module per subcommand, and what
//! several subcommands share (hyperparameter flags, progress bars, the async runtime).

mod eval;
mod healthcheck;
mod import;
mod serve;
mod synth;
mod train;

pub use healthcheck::{healthcheck_command, healthz_url};
pub use import::import_command;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use funkrec_engine::io::{read_dataset, Format};
use funkrec_engine::{Dataset, EpochStats, Hyper, Scale, TrainerKind};
use indicatif::{ProgressBar, ProgressStyle};
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
        /// File format (default: detected from the first line).
        #[arg(long, ignore_case = true)]
        format: Option<Format>,
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
    Eval(eval::EvalArgs),
    /// Train on a ratings file and write a model file.
    Train(train::TrainArgs),
    /// Write a synthetic ratings file (planted low-rank model, skewed popularity).
    Synth(synth::SynthArgs),
}

/// Hyperparameters; anything not given keeps the shipped default.
#[derive(Args, Debug, Clone, Default)]
pub struct HyperArgs {
    /// Trainer (default: sgd).
    #[arg(long, ignore_case = true)]
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
    /// Early stopping: stop after this many epochs without a better validation RMSE
    /// and keep the best epoch (0 = off; needs a validation set, see --validation).
    #[arg(long)]
    pub patience: Option<usize>,
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
            patience,
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

pub(crate) fn epoch_bar(epochs: usize, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(epochs as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed}, ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

pub(crate) fn load(
    path: &Path,
    format: Option<Format>,
    scale: Scale,
    quiet: bool,
) -> Result<Dataset> {
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

pub(crate) fn on_epoch_for(pb: &ProgressBar) -> impl FnMut(&EpochStats) -> ControlFlow<()> + '_ {
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

/// Writes `series` as an SVG learning curve (RMSE per epoch) to `path`.
pub(crate) fn write_curve(path: &Path, title: &str, series: &[crate::plot::Series]) -> Result<()> {
    let svg = crate::plot::svg(&crate::plot::Chart {
        title,
        x_label: "epoch",
        y_label: "RMSE",
        series,
    });
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("funkrec-rt")
        .build()
        .context("starting the async runtime")
}

/// Parses the command line and runs the command.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve::run(None),
        Some(Command::Serve { config }) => serve::run(config),
        Some(Command::Import {
            file,
            format,
            config,
        }) => import_command(file, format, config),
        Some(Command::Healthcheck { url, config }) => healthcheck_command(url, config),
        Some(Command::Eval(a)) => eval::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Synth(a)) => synth::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use funkrec_engine::io::Format;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("funkrec").chain(args.iter().copied()))
    }

    #[test]
    fn format_and_trainer_accept_their_names_and_aliases_in_any_case() {
        for (name, want) in [
            ("tab", Format::Tab),
            ("ML100K", Format::Tab),
            ("udata", Format::Tab),
            ("tsv", Format::Tab),
            ("dat", Format::Dat),
            ("ml1m", Format::Dat),
            ("ml10m", Format::Dat),
            ("CSV", Format::Csv),
        ] {
            let Some(Command::Import { format, .. }) =
                parse(&["import", "f", "--format", name]).unwrap().command
            else {
                panic!("not an import");
            };
            assert_eq!(format, Some(want), "{name}");
        }
        let Some(Command::Eval(args)) = parse(&["eval", "--data", "f", "--trainer", "FUNK"])
            .unwrap()
            .command
        else {
            panic!("not an eval");
        };
        assert_eq!(args.hyper.trainer, Some(TrainerKind::Funk));
        let err = parse(&["eval", "--data", "f", "--trainer", "als"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("possible values: sgd, gd, funk, svdpp"),
            "{err}"
        );
    }

    #[test]
    fn help_lists_the_possible_values() {
        let mut cmd = Cli::command();
        let eval = cmd
            .find_subcommand_mut("eval")
            .unwrap()
            .render_help()
            .to_string();
        assert!(
            eval.contains("possible values: sgd, gd, funk, svdpp"),
            "{eval}"
        );
        assert!(eval.contains("possible values: tab, dat, csv"), "{eval}");
        let import = cmd
            .find_subcommand_mut("import")
            .unwrap()
            .render_help()
            .to_string();
        assert!(
            import.contains("possible values: tab, dat, csv"),
            "{import}"
        );
    }
}
