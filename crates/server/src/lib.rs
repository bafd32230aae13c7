//! # runnel-server
//!
//! The `runnel` binary as a library: configuration ([`config`]), the HTTP API
//! ([`api::app`]), the command line ([`cli`]), observability ([`telemetry`])
//! and the wiring that builds the adapters and hands them to the engine
//! ([`runtime`]). `runnel demo` ([`demo`]) and `runnel run FILE`
//! ([`oneshot`]) run one experiment in-process, follow its engine events
//! ([`follow`]) and summarise it from the database ([`summary`]);
//! `examples/in_process.rs` does the same from a program of one's own.
//!
//! **Architecture invariant:** this crate is thin. It parses configuration,
//! builds the store, providers and advisor, starts the core's engine, and
//! exposes the HTTP API and the CLI. No scheduling decision lives here: which
//! call runs next, retries, backoff, rate limits and completion are decided in
//! `runnel-core` and `runnel-advisor`.

pub mod api;
pub mod budget;
pub mod bus;
pub mod cli;
pub mod config;
pub mod demo;
pub mod follow;
pub mod lifecycle;
pub mod oneshot;
pub mod runtime;
pub mod state;
pub mod summary;
pub mod telemetry;

pub use api::app;
pub use config::RunnelConfig;
pub use runtime::Runtime;
pub use state::AppState;
