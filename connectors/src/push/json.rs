//! JSON arrays and NDJSON, decoded by arrow-json against the source's schema.
//!
//! The whole payload is decoded in one pass; only when that fails are its rows decoded one by
//! one, so that the bad rows are named and the good ones kept.

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder};
use serde_json::value::RawValue;

use super::{Decoded, PayloadError, RowError};

/// A JSON array of objects; a payload starting with `{` is read as NDJSON (one or more objects).
pub(super) fn decode_array(payload: &[u8], schema: &SchemaRef) -> Result<Decoded, PayloadError> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {}
        Some(b'{') => return decode_lines(payload, schema),
        None => return decode_rows(&[], schema),
        Some(_) => {
            return Err(PayloadError(
                "expected a JSON array of objects, or objects one per line".into(),
            ))
        }
    }
    let values: Vec<&RawValue> = serde_json::from_slice(payload)
        .map_err(|e| PayloadError(format!("invalid JSON array: {e}")))?;
    let rows: Vec<(usize, &[u8])> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (i + 1, v.get().as_bytes()))
        .collect();
    decode_rows(&rows, schema)
}

/// One JSON object per line; blank lines are skipped, rows are numbered by line.
pub(super) fn decode_lines(payload: &[u8], schema: &SchemaRef) -> Result<Decoded, PayloadError> {
    let rows: Vec<(usize, &[u8])> = payload
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect();
    decode_rows(&rows, schema)
}

fn decoder(schema: &SchemaRef, rows: usize) -> Result<Decoder, PayloadError> {
    ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.max(1))
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| PayloadError(e.to_string()))
}

fn feed(decoder: &mut Decoder, row: &[u8]) -> Result<(), ArrowError> {
    for part in [row, b"\n"] {
        let mut at = 0;
        while at < part.len() {
            let n = decoder.decode(&part[at..])?;
            if n == 0 {
                return Err(ArrowError::JsonError(
                    "trailing data after a JSON value".into(),
                ));
            }
            at += n;
        }
    }
    Ok(())
}

fn message(e: ArrowError) -> String {
    let text = e.to_string();
    text.strip_prefix("Json error: ")
        .unwrap_or(&text)
        .to_string()
}

/// Decodes rows given with their row numbers.
fn decode_rows(rows: &[(usize, &[u8])], schema: &SchemaRef) -> Result<Decoded, PayloadError> {
    let mut all = decoder(schema, rows.len())?;
    let whole = rows
        .iter()
        .try_for_each(|(_, r)| feed(&mut all, r))
        .and_then(|()| all.flush());
    if let Ok(batch) = whole {
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        if batch.num_rows() == rows.len() {
            return Ok(Decoded {
                batch,
                rows: rows.iter().map(|(n, _)| *n).collect(),
                errors: Vec::new(),
            });
        }
    }
    // Some row is bad: decode them one at a time.
    let mut batches = Vec::new();
    let mut numbers = Vec::new();
    let mut errors = Vec::new();
    let mut one = decoder(schema, 1)?;
    for (n, row) in rows {
        let r = feed(&mut one, row).and_then(|()| one.flush());
        match r {
            Ok(Some(b)) if b.num_rows() == 1 => {
                batches.push(b);
                numbers.push(*n);
            }
            Ok(_) => {
                errors.push(RowError {
                    row: *n,
                    message: "expected one JSON object".into(),
                });
                one = decoder(schema, 1)?;
            }
            Err(e) => {
                errors.push(RowError {
                    row: *n,
                    message: message(e),
                });
                one = decoder(schema, 1)?;
            }
        }
    }
    let batch = concat_batches(schema, &batches).map_err(|e| PayloadError(e.to_string()))?;
    Ok(Decoded {
        batch,
        rows: numbers,
        errors,
    })
}
