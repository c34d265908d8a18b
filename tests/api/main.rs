//! Integration tests of the HTTP service: a real server on a random port, over real HTTP.

mod helpers;

mod dashboard;
mod errors;
mod foldin;
mod forget;
mod guard;
mod hardening;
mod hostile;
mod import;
mod ingest;
mod lifecycle;
mod openapi;
mod pg_fault;
mod postgres;
mod ratings;
mod recommend;
mod replicas;
mod versions;
