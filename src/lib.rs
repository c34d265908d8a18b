//! funkrec: Funk-SVD matrix factorisation learned by gradient descent, served over HTTP.
pub mod cli;
pub mod engine;
