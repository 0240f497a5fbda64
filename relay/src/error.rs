//! [`RelayError`]: why the relay could not start, or stopped with an error.

use crate::storage::StorageError;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A file or socket failed.
    #[error("{0}")]
    Io(String),
    /// Certificate or key problems.
    #[error("TLS: {0}")]
    Tls(String),
    /// The storage failed to open.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
