//! # runnel-store
//!
//! Persistence for runnel on SQLite (embedded, the default) or PostgreSQL
//! (shared by several replicas), behind the core's [`runnel_core::Store`]
//! port, plus the dataset, experiment and result operations the HTTP API
//! needs (DESIGN §4, §7; API.md).
//!
//! - [`Db`] is the one store type: [`Db::connect`] picks the database from
//!   the URL of a [`StoreConfig`], checks the migrations (refusing a database
//!   migrated by a newer binary) and starts the batch writers.
//! - Every lifecycle transition (start, resume, stop, takeover, heartbeat,
//!   finish, release, delete) is one conditional statement on the database's
//!   clock, followed by a read that says why when it matched nothing
//!   ([`Transition`]).
//! - Run and annotation writes are fenced by the claim's epoch in the same
//!   statement, idempotent, and committed in small batches; a caller hears
//!   back only after its write is committed.
//! - Work reconstruction pages use keyset pagination over indexes, so they
//!   stay fast on million-example datasets.
//!
//! The SQL differs per database; the rules do not: one generic
//! implementation serves both, with a dialect holding the SQL text.
//!
//! **Architecture invariant:** this crate depends on `runnel-core` for the
//! port and the domain types, and on no other runnel crate (not the advisor,
//! the providers nor the server). It makes no scheduling decision.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use runnel_core::{ReplicaId, Store};
//! use runnel_store::{Db, NewExample, StoreConfig, Transition};
//!
//! let db = Db::connect(&StoreConfig::for_url("sqlite::memory:")).await.unwrap();
//! let examples = vec![NewExample::new(serde_json::json!({"question": "2+2?"}))];
//! let dataset = db.create_dataset("arithmetic", &examples).await.unwrap();
//! assert_eq!(dataset.example_count, 1);
//! # let task = serde_json::from_value(serde_json::json!(
//! #     {"provider": "p", "model": "m", "messages": []})).unwrap();
//! let experiment = db
//!     .create_experiment(&runnel_store::NewExperiment {
//!         dataset_id: dataset.id,
//!         name: "first".into(),
//!         repetitions: 2,
//!         max_concurrency: None,
//!         task,
//!         evaluators: vec![],
//!     })
//!     .await
//!     .unwrap();
//! let me = ReplicaId::new("replica-a");
//! let Transition::Done(claim) = db.start(experiment, &me).await.unwrap() else {
//!     panic!("a fresh experiment starts")
//! };
//! // One example × two repetitions lack a successful run.
//! assert_eq!(db.task_page(&claim, None, 100).await.unwrap().len(), 2);
//! db.close().await;
//! # });
//! ```

mod backend;
mod batch;
mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod db;
mod error;
mod postgres;
mod replica;
mod sql;
mod sqlite;
#[cfg(feature = "conformance")]
pub mod testing;
mod types;

/// Re-exports for the `conformance_tests!` macro.
#[cfg(feature = "conformance")]
#[doc(hidden)]
pub mod __private {
    pub use futures;
}

pub use config::{SqliteSynchronous, StoreConfig, redact_url};
pub use db::{DatabaseKind, Db, Heard, Listener, migrate};
pub use error::{Result, StoreError};
pub use replica::{random_replica_id, replica_id_beside, replica_id_file};
pub use types::{
    AnnotationView, ControlEvent, ControlKind, DatasetInfo, ExperimentFilter, ExperimentView,
    LogEntry, NewEvaluator, NewExample, NewExperiment, Progress, RunView, RunsPage, Transition,
};
