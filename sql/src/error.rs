//! The SQL frontend's error type: a category, a message, and where the problem is.

use std::fmt;

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use tocsin_engine::EngineError;

/// What kind of problem an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not valid SQL.
    Parse,
    /// Valid SQL that does not make sense here: unknown names, type errors, bad options.
    Plan,
    /// A construct tocsin cannot run (yet).
    Unsupported,
    /// Running the statement failed.
    Execution,
    /// The engine is not available.
    Unavailable,
    /// A bug.
    Internal,
}

/// An error in one statement of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    pub kind: ErrorKind,
    pub message: String,
    /// Index (from 0) of the statement in the request.
    pub statement: usize,
    /// 1-based position in the request text, where known.
    pub line: Option<u64>,
    pub column: Option<u64>,
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

impl SqlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SqlError {
            kind,
            message: message.into(),
            statement: 0,
            line: None,
            column: None,
        }
    }
    pub fn plan(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Plan, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn at(mut self, line: u64, column: u64) -> Self {
        if self.line.is_none() && line > 0 {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }
    pub fn in_statement(mut self, statement: usize) -> Self {
        self.statement = statement;
        self
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == ErrorKind::Unsupported {
            write!(f, "unsupported: ")?;
        }
        write!(f, "{}", self.message)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, " (line {l}, column {c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SqlError {}

/// Pulls "Line: 3, Column: 14" out of a sqlparser or DataFusion message.
fn position_in(message: &str) -> Option<(u64, u64, String)> {
    let at = message.find("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let clean = message[..at]
        .trim_end()
        .trim_end_matches(" at")
        .trim_end()
        .to_string();
    Some((line.trim().parse().ok()?, col.parse().ok()?, clean))
}

/// A connector's refusal (an option, a payload) is a planning error shown as it is.
impl From<tocsin_connectors::Error> for SqlError {
    fn from(e: tocsin_connectors::Error) -> Self {
        SqlError::plan(e.to_string())
    }
}

impl From<ParserError> for SqlError {
    fn from(e: ParserError) -> Self {
        let msg = match e {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
            ParserError::RecursionLimitExceeded => "statement nested too deeply".to_string(),
        };
        match position_in(&msg) {
            Some((l, c, m)) => SqlError::new(ErrorKind::Parse, m).at(l, c),
            None => SqlError::new(ErrorKind::Parse, msg),
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        let span = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|s| (s.start.line, s.start.column));
        let e = e.find_root();
        let kind = match e {
            DataFusionError::SQL(..) => ErrorKind::Parse,
            DataFusionError::NotImplemented(_) => ErrorKind::Unsupported,
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => ErrorKind::Execution,
            DataFusionError::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::Plan,
        };
        let msg = match e {
            DataFusionError::SQL(p, _) => return SqlError::from(p.as_ref().clone()),
            DataFusionError::Plan(m)
            | DataFusionError::NotImplemented(m)
            | DataFusionError::Execution(m) => m.clone(),
            DataFusionError::SchemaError(s, _) => s.to_string(),
            other => other.to_string(),
        };
        let mut err = match position_in(&msg) {
            Some((l, c, m)) => SqlError::new(kind, m).at(l, c),
            None => SqlError::new(kind, msg),
        };
        if let Some((l, c)) = span {
            err = err.at(l, c);
        }
        err
    }
}

impl From<EngineError> for SqlError {
    fn from(e: EngineError) -> Self {
        let (kind, m) = match e {
            EngineError::Plan(m) => (ErrorKind::Plan, m),
            EngineError::Unsupported(m) => (ErrorKind::Unsupported, m),
            EngineError::Execution(m) => (ErrorKind::Execution, m),
            EngineError::Unavailable(m) => (ErrorKind::Unavailable, m),
            EngineError::Internal(m) => (ErrorKind::Internal, m),
        };
        SqlError::new(kind, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_extracted() {
        let e = SqlError::from(ParserError::ParserError(
            "Expected: an expression, found: FROM at Line: 2, Column: 8".into(),
        ));
        assert_eq!((e.line, e.column), (Some(2), Some(8)));
        assert_eq!(e.message, "Expected: an expression, found: FROM");
    }
}
