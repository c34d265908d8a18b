//! funkrec: Funk-SVD matrix factorisation learned by gradient descent, served over HTTP.
pub mod engine;
