//! `COPY (...) TO STDOUT` and `SUBSCRIBE`: what may run, and rows streamed as COPY text.

use super::*;

/// A batch's rows in COPY text format, each line starting with `prefix`.
pub(super) fn copy_lines(
    out: &mut String,
    batch: &RecordBatch,
    prefix: &str,
) -> PgWireResult<usize> {
    let formatters = formatters(batch)?;
    for row in 0..batch.num_rows() {
        out.push_str(prefix);
        for (i, col) in batch.columns().iter().enumerate() {
            if i > 0 || !prefix.is_empty() {
                out.push('\t');
            }
            match text_value(col, row, &formatters[i]) {
                None => out.push_str("\\N"),
                Some(v) => {
                    for c in v.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\t' => out.push_str("\\t"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out.push('\n');
    }
    Ok(batch.num_rows())
}

/// What `COPY (...) TO STDOUT` may run, checked before anything runs: statements that answer
/// with rows, and SUBSCRIBE; never one that changes something.
pub(super) fn copyable(located: &Located) -> Result<(), SqlError> {
    if located.statement.returns_rows() || matches!(located.statement, Statement::Subscribe { .. })
    {
        Ok(())
    } else {
        Err(SqlError::new(
            ErrorKind::Unsupported,
            "COPY ... TO STDOUT takes a SELECT, SHOW, EXPLAIN or SUBSCRIBE",
        ))
    }
}

/// `COPY (statement) TO STDOUT`: the statement inside, if that is what the text is.
pub(super) fn copy_to_stdout(text: &str) -> Option<&str> {
    let t = text.trim().trim_end_matches(';').trim_end();
    let head = t.get(..4)?;
    if !head.eq_ignore_ascii_case("copy") {
        return None;
    }
    let rest = t[4..].trim_start().strip_prefix('(')?;
    let lower = rest.to_ascii_lowercase();
    let close = lower.rfind(')')?;
    let tail: Vec<&str> = lower[close + 1..].split_whitespace().collect();
    (tail == ["to", "stdout"]).then(|| &rest[..close])
}

/// Starts a COPY out of `columns` text columns.
pub(super) async fn copy_start<C>(client: &mut C, columns: usize) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let message = CopyOutResponse::new(0, columns as i16, vec![0; columns]);
    client
        .send(PgWireBackendMessage::CopyOutResponse(message))
        .await?;
    Ok(())
}

/// Sends COPY lines, flushed at once.
pub(super) async fn copy_send<C>(client: &mut C, lines: String) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let data = CopyData::new(Bytes::from(lines));
    client.send(PgWireBackendMessage::CopyData(data)).await?;
    Ok(())
}

/// Ends a COPY out of `n` lines.
pub(super) async fn copy_end<C>(client: &mut C, n: usize) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    client
        .send(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(Response::Execution(Tag::new("COPY").with_rows(n)))
}
