//! Errors as PostgreSQL clients expect them: SQLSTATEs by kind, positions in the text.

use super::*;

/// The SQLSTATE for an error, by its kind and, for planning errors, what it is about.
pub(super) fn sqlstate(e: &SqlError) -> &'static str {
    match e.kind {
        ErrorKind::Parse => "42601",
        ErrorKind::Plan => {
            let m = e.message.to_ascii_lowercase();
            if m.contains("no field named") || m.contains("has no column") {
                "42703"
            } else if m.contains("not found") || m.contains("does not exist") {
                if m.contains("table") || m.contains("source") || m.contains("view") {
                    "42P01"
                } else {
                    "42704"
                }
            } else if m.contains("already exists") {
                "42710"
            } else {
                "42000"
            }
        }
        ErrorKind::Unsupported => "0A000",
        ErrorKind::Execution => "22000",
        ErrorKind::Unavailable => "57P03",
        ErrorKind::Internal => "XX000",
    }
}

/// An error as pg sends it: the same message as the HTTP API, with its position in the text.
pub(super) fn error_info(e: &SqlError, text: &str) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".into(), sqlstate(e).into(), e.message.clone());
    if let (Some(line), Some(column)) = (e.line, e.column) {
        // PostgreSQL's position: characters from the start of the text, from 1.
        let before: usize = text
            .split_inclusive('\n')
            .take(line.saturating_sub(1) as usize)
            .map(|l| l.chars().count())
            .sum();
        info.position = Some((before + column as usize).to_string());
    }
    info
}

pub(super) fn user_error(e: &SqlError, text: &str) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e, text)))
}
