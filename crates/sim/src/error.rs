//! The crate's one error type: everything that can go wrong when starting,
//! configuring or running the simulator (never a simulated provider fault,
//! which is a response, not an error).

use std::net::SocketAddr;

/// Why the simulator could not start or accept a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A configuration value is out of range or inconsistent; `key` names it.
    #[error("invalid sim config `{key}`: {message}")]
    Config {
        /// Dotted path of the offending key, e.g. `faults.reset_rate`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration document (file or admin patch) does not parse or names
    /// an unknown key.
    #[error("invalid sim config document: {0}")]
    Document(String),
    /// A configuration file could not be read.
    #[error("cannot read sim config file {path}: {source}")]
    ConfigFile {
        /// The file named on the command line.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Waiting for Ctrl-C failed (no signal handler could be installed).
    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(std::io::Error),
    /// The Tokio runtime for [`crate::run_blocking`] could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl Error {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}
