//! The error type at the core's boundary. Failed provider calls are not
//! errors (they are [`crate::Outcome`]s); errors are misuse, invalid
//! configuration and infrastructure faults reported through the ports.

use crate::ids::ExperimentId;

/// Errors of the core and of the ports it defines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The store could not be reached or a call to it failed in a way that is
    /// worth retrying (connection lost, database restarting, pool timeout).
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// The experiment does not exist (any more).
    #[error("experiment {0} not found")]
    NotFound(ExperimentId),
    /// Stored data could not be interpreted (bad JSON in a row, broken invariant).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A configuration value is invalid; `key` names it.
    #[error("invalid configuration `{key}`: {message}")]
    Config {
        /// The offending key, as written in `runnel.toml`.
        key: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// The engine has shut down and takes no more commands.
    #[error("the engine has shut down")]
    EngineGone,
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::StoreUnavailable(_))
    }
}
