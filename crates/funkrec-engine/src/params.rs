//! Hyperparameters shared by every trainer, plus the rating scale and trainer choice.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which optimiser learns the factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum TrainerKind {
    /// Stochastic gradient descent, one update per rating (default).
    #[default]
    Sgd,
    /// Full-batch gradient descent with a backtracking line search.
    Gd,
    /// Simon Funk's feature-at-a-time training on cached residuals.
    Funk,
    /// SVD++ (Koren 2008): SGD with implicit feedback from the items each user rated.
    Svdpp,
}

impl TrainerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainerKind::Sgd => "sgd",
            TrainerKind::Gd => "gd",
            TrainerKind::Funk => "funk",
            TrainerKind::Svdpp => "svdpp",
        }
    }
}

impl fmt::Display for TrainerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The closed interval ratings live in; predictions are clamped to it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Scale {
    pub min: f32,
    pub max: f32,
}

impl Default for Scale {
    fn default() -> Self {
        Scale { min: 1.0, max: 5.0 }
    }
}

impl Scale {
    /// Parses `LO,HI` (e.g. `0.5,5`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (lo, hi) = s
            .split_once(',')
            .ok_or_else(|| format!("scale {s:?}: expected LO,HI"))?;
        let min: f32 = lo
            .trim()
            .parse()
            .map_err(|_| format!("scale {s:?}: bad LO"))?;
        let max: f32 = hi
            .trim()
            .parse()
            .map_err(|_| format!("scale {s:?}: bad HI"))?;
        let scale = Scale { min, max };
        scale.validate()?;
        Ok(scale)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.min.is_finite() && self.max.is_finite() && self.min < self.max) {
            return Err(format!(
                "scale must be finite with min < max, got {}..{}",
                self.min, self.max
            ));
        }
        Ok(())
    }

    pub fn contains(&self, v: f32) -> bool {
        v.is_finite() && v >= self.min && v <= self.max
    }

    pub fn clamp(&self, v: f32) -> f32 {
        v.clamp(self.min, self.max)
    }
}

/// The shipped `patience` (docs/accuracy.md, "Early stopping").
pub const DEFAULT_PATIENCE: usize = 5;

/// Hyperparameters for all trainers. Defaults were chosen by measurement on the
/// MovieLens 100K folds u1–u5 (see docs/accuracy.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Hyper {
    pub trainer: TrainerKind,
    /// Latent factors per user and item (k).
    pub factors: usize,
    /// Passes over the data (for `funk`: passes per factor).
    pub epochs: usize,
    /// Step size for factor updates (for `gd`: the initial trial step).
    pub lr: f32,
    /// Step size for bias updates.
    pub lr_bias: f32,
    /// L2 regularisation of the factors.
    pub reg: f32,
    /// L2 regularisation of the biases.
    pub reg_bias: f32,
    /// Multiply both step sizes by this after every epoch (1 = constant).
    pub lr_decay: f32,
    /// Standard deviation of the Gaussian factor initialisation.
    pub init_std: f32,
    /// Learn μ + b_u + b_i (Koren) or plain p_u·q_i (Funk).
    pub biased: bool,
    /// `funk` only: sweeps over all factors (1 = classic Funk; more = backfitting).
    pub funk_cycles: usize,
    pub seed: u64,
    /// Worker threads for training (the result does not depend on the count).
    pub threads: usize,
    /// Early stopping: end the run when the validation RMSE has not improved for
    /// this many epochs (for `funk`: factors, judged after each factor's last epoch)
    /// and keep the best epoch's parameters; 0 = off. Needs a validation set
    /// (otherwise ignored).
    pub patience: usize,
    pub scale: Scale,
}

impl Default for Hyper {
    /// The shipped `sgd` defaults (mean RMSE 0.906 on MovieLens 100K u1–u5).
    fn default() -> Self {
        Hyper {
            trainer: TrainerKind::Sgd,
            factors: 300,
            epochs: 100,
            lr: 0.01,
            lr_bias: 0.003,
            reg: 0.1,
            reg_bias: 0.02,
            lr_decay: 0.98,
            init_std: 0.02,
            biased: true,
            funk_cycles: 1,
            seed: 42,
            threads: 1,
            patience: DEFAULT_PATIENCE,
            scale: Scale::default(),
        }
    }
}

impl Hyper {
    /// Shipped defaults for `trainer`, each chosen by measurement (docs/accuracy.md).
    /// `gd` penalises each parameter once (not once per rating as SGD does), so its
    /// regularisation is on a larger scale.
    pub fn for_trainer(trainer: TrainerKind) -> Hyper {
        let sgd = Hyper::default();
        match trainer {
            TrainerKind::Sgd => sgd,
            TrainerKind::Gd => Hyper {
                trainer,
                factors: 50,
                epochs: 300,
                lr: 0.001,
                lr_bias: 0.001,
                reg: 15.0,
                reg_bias: 1.0,
                lr_decay: 1.0,
                init_std: 0.1,
                ..sgd
            },
            TrainerKind::Funk => Hyper {
                trainer,
                factors: 60,
                epochs: 40,
                lr: 0.007,
                lr_bias: 0.007,
                reg: 0.05,
                reg_bias: 0.02,
                lr_decay: 1.0,
                init_std: 0.05,
                ..sgd
            },
            // Tuned on MovieLens 100K u1–u5 (docs/accuracy.md, SVD++).
            TrainerKind::Svdpp => Hyper {
                trainer,
                factors: 500,
                reg: 0.11,
                reg_bias: 0.005,
                lr_decay: 0.95,
                ..sgd
            },
        }
    }

    /// Epoch callbacks a run makes: `funk` reports every epoch of every factor (and of the
    /// bias-only phase) in every cycle; the others one per epoch.
    pub fn total_epochs(&self) -> usize {
        match self.trainer {
            TrainerKind::Funk => {
                self.epochs * (self.factors * self.funk_cycles + usize::from(self.biased))
            }
            TrainerKind::Sgd | TrainerKind::Gd | TrainerKind::Svdpp => self.epochs,
        }
    }

    /// Checks every field; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be finite and > 0, got {v}"))
            }
        };
        let nonneg = |name: &str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be finite and >= 0, got {v}"))
            }
        };
        if self.factors == 0 || self.factors > 4096 {
            return Err(format!("factors must be in 1..=4096, got {}", self.factors));
        }
        if self.epochs == 0 || self.epochs > 100_000 {
            return Err(format!("epochs must be in 1..=100000, got {}", self.epochs));
        }
        pos("lr", self.lr)?;
        pos("lr_bias", self.lr_bias)?;
        nonneg("reg", self.reg)?;
        nonneg("reg_bias", self.reg_bias)?;
        pos("lr_decay", self.lr_decay)?;
        nonneg("init_std", self.init_std)?;
        if self.funk_cycles == 0 || self.funk_cycles > 1000 {
            return Err(format!(
                "funk_cycles must be in 1..=1000, got {}",
                self.funk_cycles
            ));
        }
        if self.patience > 100_000 {
            return Err(format!(
                "patience must be in 0..=100000, got {}",
                self.patience
            ));
        }
        if self.threads == 0 || self.threads > 1024 {
            return Err(format!("threads must be in 1..=1024, got {}", self.threads));
        }
        self.scale.validate()
    }
}
