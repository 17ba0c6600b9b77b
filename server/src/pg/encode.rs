//! Arrow results as pg rows: wire types, text and binary values, command tags.

use super::*;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
pub(super) const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
pub(super) const PG_EPOCH_DAYS: i32 = 10_957;

/// The type a column is sent as (see [`PgType::of`]).
pub(super) fn wire_type(t: &DataType) -> Type {
    Type::from_oid(PgType::of(t).oid).unwrap_or(Type::TEXT)
}

pub(super) fn fields(schema: &SchemaRef, format: Option<&Format>) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = match format {
                Some(Format::Individual(v)) if i >= v.len() => FieldFormat::Text,
                Some(fmt) => fmt.format_for(i),
                None => FieldFormat::Text,
            };
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                wire_type(f.data_type()),
                format,
            )
        })
        .collect()
}

/// `2026-11-21 10:00:00.000+00`, as PostgreSQL prints a timestamptz in UTC.
pub(super) fn pg_timestamp(ms: i64, zone: bool) -> String {
    let s = tocsin_engine::fmt_ms(ms).replacen('T', " ", 1);
    let s = s.trim_end_matches('Z');
    if zone {
        format!("{s}+00")
    } else {
        s.to_string()
    }
}

/// Rows of Arrow batches as pg data rows, typed as [`fields`] says.
pub(super) fn data_rows(
    schema: Arc<Vec<FieldInfo>>,
    batches: &[RecordBatch],
) -> PgWireResult<Vec<PgWireResult<pgwire::messages::data::DataRow>>> {
    let mut encoder = DataRowEncoder::new(schema.clone());
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = formatters(batch)?;
        for row in 0..batch.num_rows() {
            for (i, col) in batch.columns().iter().enumerate() {
                let binary = schema[i].format() == FieldFormat::Binary;
                encode_value(&mut encoder, col, row, binary, &formatters[i])?;
            }
            rows.push(Ok(encoder.take_row()));
        }
    }
    Ok(rows)
}

pub(super) fn encode_value(
    enc: &mut DataRowEncoder,
    col: &ArrayRef,
    row: usize,
    binary: bool,
    formatter: &ArrayFormatter,
) -> PgWireResult<()> {
    if !binary || col.is_null(row) {
        return enc.encode_field(&text_value(col, row, formatter));
    }
    macro_rules! prim {
        ($t:ty, $as:ty) => {
            enc.encode_field(&(col.as_primitive::<$t>().value(row) as $as))
        };
    }
    match col.data_type() {
        DataType::Boolean => enc.encode_field(&col.as_boolean().value(row)),
        DataType::Int8 => prim!(Int8Type, i16),
        DataType::UInt8 => prim!(UInt8Type, i16),
        DataType::Int16 => prim!(Int16Type, i16),
        DataType::Int32 => prim!(Int32Type, i32),
        DataType::UInt16 => prim!(UInt16Type, i32),
        DataType::Int64 => prim!(Int64Type, i64),
        DataType::UInt32 => prim!(UInt32Type, i64),
        DataType::Float32 => prim!(Float32Type, f32),
        DataType::Float64 => prim!(Float64Type, f64),
        DataType::Timestamp(..) => {
            let ms = timestamp_ms(col, row).unwrap_or_default();
            enc.encode_field(&(ms * 1000 - PG_EPOCH_US))
        }
        DataType::Date32 => {
            enc.encode_field(&(col.as_primitive::<Date32Type>().value(row) - PG_EPOCH_DAYS))
        }
        // Everything else is text (see `wire_type`).
        _ => enc.encode_field(&text_value(col, row, formatter)),
    }
}

/// A timestamp value in epoch milliseconds.
pub(super) fn timestamp_ms(col: &ArrayRef, row: usize) -> Option<i64> {
    Some(match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            col.as_primitive::<TimestampSecondType>().value(row) * 1000
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            col.as_primitive::<TimestampMillisecondType>().value(row)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            col.as_primitive::<TimestampMicrosecondType>().value(row) / 1000
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            col.as_primitive::<TimestampNanosecondType>().value(row) / 1_000_000
        }
        _ => return None,
    })
}

/// A value in PostgreSQL's text format; `None` is NULL.
pub(super) fn text_value(col: &ArrayRef, row: usize, formatter: &ArrayFormatter) -> Option<String> {
    if col.is_null(row) {
        return None;
    }
    let float = |x: f64| {
        if x.is_nan() {
            "NaN".to_string()
        } else if x.is_infinite() {
            if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        } else {
            x.to_string()
        }
    };
    Some(match col.data_type() {
        DataType::Boolean => if col.as_boolean().value(row) {
            "t"
        } else {
            "f"
        }
        .to_string(),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => float(col.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Timestamp(_, zone) => pg_timestamp(timestamp_ms(col, row)?, zone.is_some()),
        _ => formatter.value(row).to_string(),
    })
}

/// Formatters for a batch's columns.
pub(super) fn formatters(batch: &RecordBatch) -> PgWireResult<Vec<ArrayFormatter<'_>>> {
    batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))
}

/// A result's rows as a pg response.
pub(super) fn rows_response(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Option<&Format>,
) -> PgWireResult<Response> {
    let fields = Arc::new(fields(schema, format));
    let rows = data_rows(fields.clone(), batches)?;
    Ok(Response::Query(QueryResponse::new(
        fields,
        stream::iter(rows),
    )))
}

/// The command tag PostgreSQL clients expect for a statement that returned no rows.
pub(super) fn tag(result: &StatementResult) -> Tag {
    match result {
        StatementResult::Ddl { statement, .. } => Tag::new(statement),
        StatementResult::Inserted { outcome, .. } => {
            Tag::new("INSERT").with_oid(0).with_rows(outcome.accepted)
        }
        _ => Tag::new("SELECT"),
    }
}
