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
