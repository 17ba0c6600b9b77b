//! The error of the connectors crate: what was wrong, by category. Messages are written for the
//! user who wrote the statement or sent the payload, and are shown as they are.

use crate::push::PayloadError;
use crate::sink::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option of `CREATE SOURCE` or `CREATE SINK` (or its value) is wrong, or a connector
    /// is unknown; the message names it and how to write it.
    #[error("{0}")]
    Options(String),
    /// A pushed payload cannot be read at all.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A notification was not delivered (it is retried).
    #[error(transparent)]
    Delivery(#[from] SinkError),
}

/// Option checks are written as `Result<_, String>` inside a connector; `?` makes them
/// [`Error::Options`] at the crate's boundary.
impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Options(message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
