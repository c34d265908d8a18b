//! Errors the engine reports: bad input files, bad parameters, bad model files.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The I/O error is part of the message (not a `source`), so it prints once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("invalid hyperparameters: {0}")]
    InvalidHyper(String),
    #[error("no training data: {0}")]
    NoData(String),
    #[error("model file {path}: {message}")]
    ModelFile { path: PathBuf, message: String },
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            error,
        }
    }
}
