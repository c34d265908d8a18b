//! Integration tests of the HTTP service: a real server on a random port, over real HTTP.

mod helpers;

mod errors;
mod guard;
mod import;
mod lifecycle;
mod ratings;
mod recommend;
