//! End-to-end tests of `runnel serve`: the real binary on a free loopback
//! port, the simulated provider over real sockets, SQLite and PostgreSQL.
//! PostgreSQL variants need `RUNNEL_TEST_POSTGRES_URL` (or `cargo xtask test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod crash;
mod input;
mod isolation;
mod lifecycle;
mod ops;
mod outage;
mod quota;
mod replicas;
mod resume;
mod run;
mod secrets;
