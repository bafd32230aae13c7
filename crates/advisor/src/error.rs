//! The error type at the advisor's boundary: invalid configuration and
//! unusable snapshots. Asking for a permit and recording an outcome never fail.

/// Errors of `runnel-advisor`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdvisorError {
    /// A configuration value is invalid; `key` names it as written in the
    /// configuration (for example `providers.openai.rpm`).
    #[error("invalid advisor configuration `{key}`: {message}")]
    Config {
        /// The offending key.
        key: String,
        /// Why it is invalid.
        message: String,
    },
    /// A persisted snapshot entry cannot be restored; `key` is the rate-limit
    /// key of the entry and `field` the unusable value.
    #[error("snapshot of rate-limit key `{key}` has an invalid `{field}`: {message}")]
    Snapshot {
        /// The rate-limit key of the entry.
        key: String,
        /// The field that is wrong.
        field: &'static str,
        /// Why it is unusable.
        message: String,
    },
}
