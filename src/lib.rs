//! funkrec: Funk-SVD matrix factorisation learned by gradient descent, served over HTTP.
#![deny(unsafe_op_in_unsafe_fn)]
pub mod auth;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod domain;
pub mod fdlimit;
pub mod foldin;
pub mod forget;
pub mod http;
pub mod listcache;
pub mod malloc;
pub mod metrics;
pub mod plot;
pub mod rated;
pub mod snapshot;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod worker;
