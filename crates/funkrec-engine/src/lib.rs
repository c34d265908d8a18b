//! The recommendation engine: data, model, trainers and evaluation (no web, no database).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod data;
pub mod error;
pub mod eval;
pub mod foldin;
pub mod io;
pub mod model;
pub mod params;
pub mod persist;
pub mod synth;
pub mod topn;
pub mod train;

pub use data::{Dataset, IdMap, Rating};
pub use error::EngineError;
pub use model::{EpochStats, Model, Params, Prediction, TrainReport};
pub use params::{Hyper, Scale, TrainerKind};
pub use train::{train, train_in_place};
