//! `funkrec synth`: a synthetic ratings file (planted low-rank model, skewed popularity).

use anyhow::{Context, Result};
use clap::Args;
use funkrec_engine::synth::{write_synthetic, SynthSpec};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

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

/// `funkrec synth`: writes a synthetic ratings file.
pub fn run(args: SynthArgs) -> Result<()> {
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
