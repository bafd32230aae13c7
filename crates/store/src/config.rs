//! The store's configuration (`[store]` in `runnel.toml`), with documented
//! defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// How to reach the database and how to batch writes.
///
/// ```
/// let config: runnel_store::StoreConfig =
///     serde_json::from_str(r#"{"url": "sqlite://demo.db", "batch_window": "5ms"}"#).unwrap();
/// assert_eq!(config.batch_size, 64);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Database URL: `sqlite://runnel.db` (a file, created when missing),
    /// `sqlite::memory:` (a private in-memory database, for experiments), or
    /// `postgres://user@host:5432/db`. Default `sqlite://runnel.db`.
    pub url: String,
    /// Most connections the pool opens. Default 10.
    pub max_connections: u32,
    /// Connections kept open when idle. Default 0.
    pub min_connections: u32,
    /// How long a caller waits for a free connection before the call fails as
    /// unavailable. Default 10s.
    #[serde(with = "runnel_core::config::duration")]
    pub acquire_timeout: Duration,
    /// How long the readiness check (`/readyz`) waits for the database before
    /// reporting it unavailable. Default 2s.
    #[serde(with = "runnel_core::config::duration")]
    pub ready_timeout: Duration,
    /// SQLite only: how long a statement waits for another writer to finish
    /// before failing as unavailable. Default 5s.
    #[serde(with = "runnel_core::config::duration")]
    pub busy_timeout: Duration,
    /// Most run/annotation writes committed together in one transaction.
    /// Default 64.
    pub batch_size: usize,
    /// How long the first write of a group waits for company before the group
    /// is committed anyway. Default 2ms.
    #[serde(with = "runnel_core::config::duration")]
    pub batch_window: Duration,
    /// Writes queued for the batch writers before callers wait. Default 1024.
    pub batch_queue: usize,
    /// Batch writers working in parallel on PostgreSQL, each committing its
    /// own groups (more can help where commits wait long for the disk).
    /// SQLite always uses one: it has one writer at a time, and a second
    /// would only wait for the lock. Default 1.
    pub batch_writers: usize,
    /// Apply pending migrations when connecting. When false, connecting to a
    /// database that lacks migrations fails with a message to run
    /// `runnel migrate`. Default true.
    pub auto_migrate: bool,
    /// SQLite only: how hard a commit waits for the disk (`PRAGMA
    /// synchronous`): `off`, `normal`, `full` or `extra`. With the
    /// write-ahead log `normal` never corrupts the database but may lose the
    /// last commits on a power cut (not on a crash of runnel); `full` keeps
    /// them at the cost of one more disk flush per commit. Default `normal`.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Smallest number of examples (or runs) read per step when the work of
    /// an experiment is reconstructed. Steps start at the page size within
    /// these bounds and double while the scan finds little missing work.
    /// Default 256.
    pub scan_chunk_min: usize,
    /// Largest step of that scan: bigger steps cross finished work in fewer
    /// statements but read more rows each. Default 16384.
    pub scan_chunk_max: usize,
    /// How often a lifecycle change (start, stop, resume, delete) is tried
    /// again when the row changed between its statement and the read that
    /// explains why it did not apply; after that the call fails as
    /// unavailable. Default 5.
    pub transition_tries: usize,
    /// Examples inserted per multi-row statement when a dataset is
    /// imported (each binds 4 values; at most 8191, which keeps a statement
    /// under SQLite's bind limit). Default 500.
    pub examples_per_statement: usize,
    /// Imports of at least this many examples refresh PostgreSQL's planner
    /// statistics (`ANALYZE`) at once instead of waiting for autovacuum.
    /// Default 10000.
    pub analyze_after: usize,
    /// Largest page of runs, logs or examples one read returns; also the
    /// largest `limit` the HTTP API accepts. Default 1000.
    pub max_page: usize,
    /// Runs read per page while `runs.jsonl` streams an experiment's results
    /// (no connection is held between pages); cut to `max_page`. Default 500.
    pub export_page: usize,
}

/// SQLite's `PRAGMA synchronous` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// No flush: fastest; an OS crash or power cut may corrupt the database.
    Off,
    /// Flush at checkpoints (safe with the write-ahead log runnel uses).
    Normal,
    /// Flush at every commit.
    Full,
    /// Like `full`, and the directory too.
    Extra,
}

/// Most pool connections (far above any database's own limit).
const MAX_CONNECTIONS: u32 = 10_000;
/// Longest `acquire_timeout` or `busy_timeout`.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Most writes queued for the batch writers.
const MAX_QUEUE: usize = 1_000_000;
/// Most batch writer tasks.
const MAX_WRITERS: usize = 64;
/// Bind parameters one statement may carry: SQLite's limit
/// (`SQLITE_MAX_VARIABLE_NUMBER`, 32766 since 3.32) is the lower of the two
/// databases' (PostgreSQL's wire protocol counts them in 16 bits). A limit
/// of the database, not a setting.
pub(crate) const MAX_BINDS: usize = 32_766;
/// Values bound per imported example (dataset, input, expected, metadata).
pub(crate) const BINDS_PER_EXAMPLE: usize = 4;
/// Largest page or scan step (far more rows than one response should hold).
const MAX_ROWS: usize = 1_000_000;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://runnel.db".to_owned(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(5),
            batch_size: 64,
            batch_window: Duration::from_millis(2),
            batch_queue: 1024,
            batch_writers: 1,
            auto_migrate: true,
            sqlite_synchronous: SqliteSynchronous::Normal,
            scan_chunk_min: 256,
            scan_chunk_max: 16_384,
            transition_tries: 5,
            examples_per_statement: 500,
            analyze_after: 10_000,
            max_page: 1000,
            export_page: 500,
        }
    }
}

impl StoreConfig {
    /// A default configuration for `url`.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks every value; the error names the offending key. Upper bounds
    /// keep absurd values from panicking further down (a huge `batch_queue`
    /// or `max_connections` is allocated up front, SQLite takes its busy
    /// timeout in 32-bit milliseconds, and a wait near `u64::MAX` seconds
    /// overflows the clock).
    pub fn validate(&self) -> Result<(), StoreError> {
        fn bad(key: &'static str, message: impl Into<String>) -> Result<(), StoreError> {
            Err(StoreError::Config {
                key,
                message: message.into(),
            })
        }
        if crate::db::DatabaseKind::of_url(&self.url).is_none() {
            return bad(
                "url",
                format!(
                    "`{}` is not a database URL (use sqlite://FILE, sqlite::memory: or postgres://…)",
                    redact_url(&self.url)
                ),
            );
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return bad(
                "max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            );
        }
        if self.min_connections > self.max_connections {
            return bad("min_connections", "must not exceed max_connections");
        }
        if self.acquire_timeout.is_zero() || self.acquire_timeout > MAX_WAIT {
            return bad(
                "acquire_timeout",
                "must be greater than zero and at most 24h",
            );
        }
        if self.ready_timeout.is_zero() || self.ready_timeout > MAX_WAIT {
            return bad("ready_timeout", "must be greater than zero and at most 24h");
        }
        if self.busy_timeout > MAX_WAIT {
            return bad("busy_timeout", "must be at most 24h");
        }
        if !(1..=1000).contains(&self.batch_size) {
            return bad("batch_size", "must be between 1 and 1000");
        }
        if self.batch_window > Duration::from_secs(1) {
            return bad(
                "batch_window",
                "must be at most 1s (a few milliseconds is typical)",
            );
        }
        if self.batch_queue < self.batch_size || self.batch_queue > MAX_QUEUE {
            return bad(
                "batch_queue",
                format!("must be at least batch_size and at most {MAX_QUEUE}"),
            );
        }
        if !(1..=MAX_WRITERS).contains(&self.batch_writers) {
            return bad(
                "batch_writers",
                format!("must be between 1 and {MAX_WRITERS}"),
            );
        }
        if !(1..=MAX_ROWS).contains(&self.scan_chunk_min) {
            return bad(
                "scan_chunk_min",
                format!("must be between 1 and {MAX_ROWS}"),
            );
        }
        if !(self.scan_chunk_min..=MAX_ROWS).contains(&self.scan_chunk_max) {
            return bad(
                "scan_chunk_max",
                format!("must be at least scan_chunk_min and at most {MAX_ROWS}"),
            );
        }
        if !(1..=100).contains(&self.transition_tries) {
            return bad("transition_tries", "must be between 1 and 100");
        }
        let most_examples = MAX_BINDS / BINDS_PER_EXAMPLE;
        if !(1..=most_examples).contains(&self.examples_per_statement) {
            return bad(
                "examples_per_statement",
                format!(
                    "must be between 1 and {most_examples} (each example binds \
                     {BINDS_PER_EXAMPLE} values; SQLite allows {MAX_BINDS} per statement)"
                ),
            );
        }
        if !(1..=MAX_ROWS).contains(&self.max_page) {
            return bad("max_page", format!("must be between 1 and {MAX_ROWS}"));
        }
        if !(1..=MAX_ROWS).contains(&self.export_page) {
            return bad("export_page", format!("must be between 1 and {MAX_ROWS}"));
        }
        Ok(())
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            let masked = if user_info.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_durations_read_as_text() {
        StoreConfig::default().validate().unwrap();
        let c: StoreConfig =
            serde_json::from_str(r#"{"batch_window": "10ms", "busy_timeout": 2}"#).unwrap();
        assert_eq!(c.batch_window, Duration::from_millis(10));
        assert_eq!(c.busy_timeout, Duration::from_secs(2));
        let err = serde_json::from_str::<StoreConfig>(r#"{"batch_sise": 3}"#).unwrap_err();
        assert!(err.to_string().contains("batch_sise"));
    }

    #[test]
    fn validation_names_the_key() {
        let key = |c: StoreConfig| match c.validate() {
            Err(StoreError::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(key(StoreConfig::for_url("mysql://x")), "url");
        let c = StoreConfig {
            batch_size: 0,
            ..StoreConfig::default()
        };
        assert_eq!(key(c), "batch_size");
        let c = StoreConfig {
            batch_queue: 10,
            ..StoreConfig::default()
        };
        assert_eq!(key(c), "batch_queue");
        let base = StoreConfig::default;
        for (c, k) in [
            (
                StoreConfig {
                    scan_chunk_min: 0,
                    ..base()
                },
                "scan_chunk_min",
            ),
            (
                StoreConfig {
                    scan_chunk_max: 100,
                    ..base()
                },
                "scan_chunk_max",
            ),
            (
                StoreConfig {
                    transition_tries: 0,
                    ..base()
                },
                "transition_tries",
            ),
            (
                StoreConfig {
                    examples_per_statement: 8192,
                    ..base()
                },
                "examples_per_statement",
            ),
            (
                StoreConfig {
                    max_page: 0,
                    ..base()
                },
                "max_page",
            ),
            (
                StoreConfig {
                    export_page: 0,
                    ..base()
                },
                "export_page",
            ),
        ] {
            assert_eq!(key(c), k);
        }
        let c: StoreConfig = serde_json::from_str(r#"{"sqlite_synchronous": "full"}"#).unwrap();
        assert_eq!(c.sqlite_synchronous, SqliteSynchronous::Full);
        let err =
            serde_json::from_str::<StoreConfig>(r#"{"sqlite_synchronous": "always"}"#).unwrap_err();
        assert!(err.to_string().contains("always"), "{err}");
    }

    /// Regression (found by `cargo xtask chaos`'s configuration fuzzing):
    /// these values were accepted and then panicked or aborted at start.
    #[test]
    fn absurdly_large_values_are_refused_naming_the_key() {
        let key = |c: StoreConfig| match c.validate() {
            Err(StoreError::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        };
        let huge = Duration::from_secs(i64::MAX as u64);
        let base = StoreConfig::default;
        for (c, k) in [
            (
                StoreConfig {
                    batch_queue: usize::MAX,
                    ..base()
                },
                "batch_queue",
            ),
            (
                StoreConfig {
                    max_connections: u32::MAX,
                    ..base()
                },
                "max_connections",
            ),
            (
                StoreConfig {
                    acquire_timeout: huge,
                    ..base()
                },
                "acquire_timeout",
            ),
            (
                StoreConfig {
                    busy_timeout: huge,
                    ..base()
                },
                "busy_timeout",
            ),
            (
                StoreConfig {
                    batch_writers: 1 << 40,
                    ..base()
                },
                "batch_writers",
            ),
        ] {
            assert_eq!(key(c), k);
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://me:secret@db:5432/x?sslmode=require"),
            "postgres://me:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact_url("sqlite://runnel.db"), "sqlite://runnel.db");
        let err = StoreConfig::for_url("mysql://u:pw@h/x")
            .validate()
            .unwrap_err();
        assert!(!err.to_string().contains("pw"));
    }
}
