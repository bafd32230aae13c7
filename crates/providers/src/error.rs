//! The error type at this crate's boundary. Failed calls are not errors
//! (they are `Outcome`s); errors are configuration that cannot work.

/// Why a [`crate::Providers`] registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A value of a `[providers.NAME]` entry is invalid; names the key.
    #[error("invalid configuration `providers.{entry}.{key}`: {message}")]
    InvalidEntry {
        /// The entry's name.
        entry: String,
        /// The offending key.
        key: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// A registry-wide setting is invalid; names the key.
    #[error("invalid provider setting `{key}`: {message}")]
    InvalidSetting {
        /// The offending key.
        key: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// The HTTP client of an entry could not be built (TLS set-up failed).
    #[error("provider `{entry}`: cannot build its HTTP client: {message}")]
    HttpClient {
        /// The entry's name.
        entry: String,
        /// What failed.
        message: String,
    },
}
