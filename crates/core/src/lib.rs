//! # runnel-core
//!
//! The pure scheduling core of runnel: it decides which provider call runs
//! next, what happens when it ends, and when an experiment is complete.
//!
//! It is built like a sans-I/O protocol library:
//! - the state machines ([`Replica`], which owns the [`Scheduler`], which
//!   owns one `ExperimentState` per experiment) take
//!   every input through `handle_*` methods with an explicit `now`, hand out
//!   work through `poll_*` methods, and report their next deadline with
//!   `poll_timeout`; they never read a clock and never touch a socket or file;
//! - the outside world is reached only through the port traits of [`ports`]:
//!   [`Store`], [`Provider`], [`Advisor`], [`Clock`] and [`EventSink`];
//! - the [`engine`] is the one async module: a thin loop that feeds port
//!   results into the replica machine, performs the orders it hands out, and
//!   sleeps until the next deadline.
//!
//! **Architecture invariant:** this crate depends on no crate that does I/O
//! (no sqlx, reqwest, hyper, axum, mio; no `std::fs`, `std::net`,
//! `tokio::net`, `tokio::fs`) and reads no clock — time enters through the
//! [`Clock`] port or a `now` argument. CI checks both.
//!
//! The `memory` module (feature `memory`) holds in-memory implementations of
//! the ports (store, provider, advisor) for tests, examples and benchmarks;
//! the store conformance suite of `runnel-store` runs against it to prove it
//! faithful. Production builds do not compile it.

pub mod budget;
pub mod config;
pub mod duration;
pub mod engine;
pub mod error;
mod experiment;
mod fasthash;
pub mod ids;
mod isolation;
mod limited;
#[cfg(feature = "memory")]
pub mod memory;
pub mod outcome;
pub mod ports;
pub mod replica;
pub mod rng;
pub mod scheduler;
pub mod spec;
pub mod work;

pub use budget::{BudgetReport, BudgetView, RateBudget, SharedRate};
pub use config::Config;
pub use engine::{Engine, EngineHandle, Ports};
pub use error::Error;
pub use ids::{
    Claim, DatasetId, Epoch, EvaluatorId, ExampleId, ExperimentId, RateKey, ReplicaId, RunId,
};
pub use outcome::{
    CallReport, LimitScope, Observation, Outcome, OutcomeClass, RateLimitHeaders, Reply, Usage,
};
pub use ports::{
    Acquire, Advisor, AnnotationRecord, ChunkSink, Clock, Departure, EngineEvent, EventSink,
    Finish, LogLevel, NoEvents, Provider, RunRecord, RunWrite, Store, WaitReason, Waiting, Write,
};
pub use replica::{ClaimSource, Order, Replica};
pub use scheduler::{Action, PlanKeys, Scheduler, WriteResult};
pub use spec::{
    CallSpec, EvaluatorSpec, ExampleData, ExperimentPlan, ExperimentStatus, Message, Protocol,
    ProviderKind, QuotaScope,
};
pub use work::{EvalKey, EvalWork, Job, JobKind, TaskKey, TaskWork, WorkKey};

#[cfg(test)]
mod tests;
