//! The store's error type, and how database errors map onto it and onto the
//! core's [`runnel_core::Error`].

use std::borrow::Cow;

use runnel_core::{DatasetId, ExperimentId};

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused work for a reason that may
    /// pass (connection lost, pool exhausted, database locked or restarting).
    /// Worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The experiment does not exist.
    #[error("experiment {0} not found")]
    ExperimentNotFound(ExperimentId),
    /// The dataset does not exist.
    #[error("dataset {0} not found")]
    DatasetNotFound(DatasetId),
    /// Input the caller supplied is unusable; `field` names it (for example
    /// `examples[3].input`).
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The offending field, in the API's spelling.
        field: String,
        /// Why it is invalid.
        message: String,
    },
    /// The write conflicts with an existing row (for example an evaluator name
    /// already used in the experiment).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back (undecodable row or JSON).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database rejected a statement for a reason that retrying will not
    /// change (a bug in a query, a schema that does not match the binary).
    #[error("database error: {0}")]
    Database(String),
    /// The database has migrations applied that this binary does not know:
    /// it was migrated by a newer runnel.
    #[error(
        "the database is at migration {applied}, newer than this binary's latest ({known}); \
         run the newer runnel, or restore a backup taken before it migrated"
    )]
    MigrationsNewer {
        /// Highest migration version applied to the database.
        applied: i64,
        /// Highest migration version this binary embeds.
        known: i64,
    },
    /// The database lacks migrations this binary needs, and automatic
    /// migration is off.
    #[error(
        "the database is at migration {applied}, older than this binary's {known}; \
         run `runnel migrate` (or `cargo xtask migrate`) first"
    )]
    MigrationsPending {
        /// Highest migration version applied (0 when none).
        applied: i64,
        /// Highest migration version this binary embeds.
        known: i64,
    },
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(String),
    /// A store configuration value is unusable; `key` names it.
    #[error("invalid store configuration `{key}`: {message}")]
    Config {
        /// The offending key under `[store]`.
        key: &'static str,
        /// Why it is invalid.
        message: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        StoreError::Corrupt(message.into())
    }

    /// Maps a sqlx error, using `transient` to recognise database error codes
    /// that are worth retrying (they differ per database).
    pub(crate) fn from_sqlx(error: sqlx::Error, transient: fn(&str) -> bool) -> Self {
        use sqlx::Error as E;
        match error {
            E::Database(db) => {
                let code: Option<Cow<'_, str>> = db.code();
                let message = db.message().to_owned();
                if code.as_deref().is_some_and(transient) {
                    StoreError::Unavailable(message)
                } else if db.is_unique_violation() {
                    StoreError::Conflict(message)
                } else {
                    StoreError::Database(match code {
                        Some(code) => format!("{message} (code {code})"),
                        None => message,
                    })
                }
            }
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed
            | E::BeginFailed => StoreError::Unavailable(error.to_string()),
            E::RowNotFound
            | E::TypeNotFound { .. }
            | E::ColumnIndexOutOfBounds { .. }
            | E::ColumnNotFound(_)
            | E::ColumnDecode { .. }
            | E::Decode(_) => StoreError::Corrupt(error.to_string()),
            E::Configuration(_) => StoreError::Config {
                key: "url",
                message: error.to_string(),
            },
            E::Migrate(e) => StoreError::Migrate(e.to_string()),
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<StoreError> for runnel_core::Error {
    fn from(error: StoreError) -> Self {
        use runnel_core::Error as C;
        match error {
            StoreError::Unavailable(m) => C::StoreUnavailable(m),
            StoreError::ExperimentNotFound(id) => C::NotFound(id),
            StoreError::Corrupt(m) => C::Corrupt(m),
            StoreError::Config { key, message } => C::Config { key, message },
            // The core has no variant for "the database refused this statement
            // for good"; such a failure means the stored state or the schema is
            // not what this code expects, which is what `Corrupt` says.
            other => C::Corrupt(other.to_string()),
        }
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_failures_are_retryable_and_decode_failures_are_not() {
        let never = |_: &str| false;
        assert!(StoreError::from_sqlx(sqlx::Error::PoolTimedOut, never).is_retryable());
        assert!(StoreError::from_sqlx(sqlx::Error::PoolClosed, never).is_retryable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(StoreError::from_sqlx(sqlx::Error::Io(io), never).is_retryable());
        let decode = StoreError::from_sqlx(sqlx::Error::ColumnNotFound("x".into()), never);
        assert!(matches!(decode, StoreError::Corrupt(_)));
        assert!(matches!(
            runnel_core::Error::from(decode),
            runnel_core::Error::Corrupt(_)
        ));
        assert!(matches!(
            runnel_core::Error::from(StoreError::Unavailable("x".into())),
            runnel_core::Error::StoreUnavailable(_)
        ));
    }

    #[test]
    fn migration_messages_say_what_to_do() {
        let newer = StoreError::MigrationsNewer {
            applied: 7,
            known: 3,
        };
        assert!(newer.to_string().contains("newer than this binary"));
        let pending = StoreError::MigrationsPending {
            applied: 0,
            known: 1,
        };
        assert!(pending.to_string().contains("runnel migrate"));
    }
}
