//! The engine's error type: one enum, variants are categories.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Errors the engine reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request names something that does not exist or already exists, or is otherwise invalid.
    #[error("{0}")]
    Plan(String),
    /// A construct the engine cannot run continuously (yet).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Evaluating data failed (a bad cast, a division error, a malformed batch).
    #[error("execution error: {0}")]
    Execution(String),
    /// The engine has stopped or a worker failed.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant inside the engine.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<ArrowError> for EngineError {
    fn from(e: ArrowError) -> Self {
        EngineError::Execution(e.to_string())
    }
}

impl From<DataFusionError> for EngineError {
    fn from(e: DataFusionError) -> Self {
        EngineError::Execution(e.to_string())
    }
}
