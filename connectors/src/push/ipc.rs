//! Arrow IPC streams: each batch's columns are matched to the source's by name and cast to its
//! types; missing columns are NULL.

use std::io::Cursor;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::compute::{cast_with_options, concat_batches, CastOptions};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use super::{Decoded, PayloadError};

/// Casts that fail on values they cannot convert instead of turning them into NULL.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow::util::display::FormatOptions::new(),
};

pub(super) fn decode(payload: &[u8], schema: &SchemaRef) -> Result<Decoded, PayloadError> {
    uncompressed(payload)?;
    let reader = StreamReader::try_new(Cursor::new(payload), None)
        .map_err(|e| PayloadError(format!("invalid Arrow IPC stream: {e}")))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| PayloadError(format!("invalid Arrow IPC stream: {e}")))?;
        batches.push(conform(&batch, schema)?);
    }
    let batch = concat_batches(schema, &batches).map_err(|e| PayloadError(e.to_string()))?;
    let rows = (1..=batch.num_rows()).collect();
    Ok(Decoded {
        batch,
        rows,
        errors: Vec::new(),
    })
}

/// Refuses streams whose record batches are compressed (lz4, zstd): a small compressed body may
/// declare any size once decompressed, so it would pass every request limit and the memory
/// budget before anything could check it. Uncompressed, what a stream holds is at most its size.
fn uncompressed(payload: &[u8]) -> Result<(), PayloadError> {
    let word = |at: usize| -> Option<i32> {
        Some(i32::from_le_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let mut pos = 0usize;
    while let Some(mut len) = word(pos) {
        pos += 4;
        if len == -1 {
            // The continuation marker before each message's length.
            let Some(l) = word(pos) else { break };
            len = l;
            pos += 4;
        }
        let Ok(len) = usize::try_from(len) else { break };
        if len == 0 {
            break;
        }
        let Some(meta) = payload.get(pos..pos.saturating_add(len)) else {
            break;
        };
        // Malformed framing is left to the reader, which says what is wrong.
        let Ok(message) = arrow::ipc::root_as_message(meta) else {
            break;
        };
        let compressed = message
            .header_as_record_batch()
            .is_some_and(|b| b.compression().is_some())
            || message
                .header_as_dictionary_batch()
                .and_then(|d| d.data())
                .is_some_and(|b| b.compression().is_some());
        if compressed {
            return Err(PayloadError(
                "compressed Arrow IPC record batches (lz4, zstd) are not accepted: send them uncompressed".into(),
            ));
        }
        let Ok(body) = usize::try_from(message.bodyLength()) else {
            break;
        };
        pos = pos.saturating_add(len).saturating_add(body);
    }
    Ok(())
}

/// The batch in the source's schema.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, PayloadError> {
    if batch.schema().fields() == schema.fields() {
        return RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
            .map_err(|e| PayloadError(e.to_string()));
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            Some(c) => cast_with_options(c, f.data_type(), &STRICT).map_err(|e| {
                PayloadError(format!(
                    "column \"{}\": cannot convert {} to {}: {e}",
                    f.name(),
                    c.data_type(),
                    f.data_type()
                ))
            })?,
            None => new_null_array(f.data_type(), batch.num_rows()),
        };
        columns.push(c);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| PayloadError(e.to_string()))
}

/// Appends the batches to `out` as one Arrow IPC stream, the form the `arrow` format reads.
pub fn write_stream(out: &mut Vec<u8>, batches: &[RecordBatch]) -> Result<(), ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let mut w = StreamWriter::try_new(out, &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}
