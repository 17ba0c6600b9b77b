//! Results as JSON: numbers, strings, booleans and null; timestamps as RFC 3339 strings in UTC
//! with milliseconds (`2026-11-21T10:00:00.000Z`).

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::ArrayFormatter;
use serde_json::{json, Map, Value};
use tocsin_engine::{fmt_ms, write_ms, Datum};

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A JSON string of `s`, escaped as JSON requires.
fn put_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to memory");
}

/// A JSON number, or null for NaN and the infinities.
fn put_float(out: &mut Vec<u8>, f: f64) {
    match f.is_finite() {
        true => serde_json::to_writer(&mut *out, &f).expect("writing to memory"),
        false => out.extend_from_slice(b"null"),
    }
}

fn put_ms(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    write_ms(out, ms);
    out.push(b'"');
}

/// Writes value `i` of column `a` (not null) as JSON.
fn put_value(out: &mut Vec<u8>, a: &ArrayRef, i: usize) {
    macro_rules! int {
        ($t:ty) => {
            serde_json::to_writer(&mut *out, &a.as_primitive::<$t>().value(i))
                .expect("writing to memory")
        };
    }
    match a.data_type() {
        DataType::Boolean => out.extend_from_slice(match a.as_boolean().value(i) {
            true => b"true",
            false => b"false",
        }),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => put_float(out, a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => put_float(out, a.as_primitive::<Float64Type>().value(i)),
        DataType::Timestamp(TimeUnit::Second, _) => {
            put_ms(out, a.as_primitive::<TimestampSecondType>().value(i) * 1000)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            put_ms(out, a.as_primitive::<TimestampMillisecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => put_ms(
            out,
            a.as_primitive::<TimestampMicrosecondType>()
                .value(i)
                .div_euclid(1000),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => put_ms(
            out,
            a.as_primitive::<TimestampNanosecondType>()
                .value(i)
                .div_euclid(1_000_000),
        ),
        DataType::Utf8 => put_str(out, a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => put_str(out, a.as_string::<i64>().value(i)),
        DataType::Utf8View => put_str(out, a.as_string_view().value(i)),
        _ => match ArrayFormatter::try_new(a.as_ref(), &Default::default()) {
            Ok(f) => put_str(out, &f.value(i).to_string()),
            Err(_) => out.extend_from_slice(b"null"),
        },
    }
}

/// The rows of batches as a JSON array of arrays, written straight into `out` (numbers,
/// strings, booleans and null; timestamps as strings).
pub fn write_rows(out: &mut Vec<u8>, batches: &[RecordBatch]) {
    out.push(b'[');
    let mut first = true;
    for b in batches {
        for row in 0..b.num_rows() {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.push(b'[');
            for (c, a) in b.columns().iter().enumerate() {
                if c > 0 {
                    out.push(b',');
                }
                match a.is_null(row) || a.data_type() == &DataType::Null {
                    true => out.extend_from_slice(b"null"),
                    false => put_value(out, a, row),
                }
            }
            out.push(b']');
        }
    }
    out.push(b']');
}

/// An engine row as a JSON object keyed by column name.
pub fn row_object(schema: &SchemaRef, row: &[Datum]) -> Value {
    let mut m = Map::new();
    for (f, d) in schema.fields().iter().zip(row) {
        let v = match d {
            Datum::Null => Value::Null,
            Datum::Bool(b) => Value::Bool(*b),
            Datum::Int(i) => match f.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, _) => json!(fmt_ms(*i)),
                _ => json!(i),
            },
            Datum::Float(x) => float(x.get()),
            Datum::Str(s) => json!(s.as_str()),
        };
        m.insert(f.name().clone(), v);
    }
    Value::Object(m)
}

/// An error answer: `{"error": {"message": "..."}}` with `status`.
pub fn error(
    status: axum::http::StatusCode,
    message: impl Into<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        axum::Json(serde_json::json!({"error": {"message": message.into()}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };

    use super::*;

    /// Rows written straight as text parse back to the values, nulls, escapes and
    /// non-finite numbers included, across batches.
    #[test]
    fn rows_are_valid_json_of_every_kind() {
        let batch = |s: Vec<Option<&str>>, f: Vec<Option<f64>>| {
            RecordBatch::try_from_iter(vec![
                ("s", Arc::new(StringArray::from(s)) as ArrayRef),
                ("f", Arc::new(Float64Array::from(f)) as ArrayRef),
                (
                    "i",
                    Arc::new(Int64Array::from(vec![Some(-7), None])) as ArrayRef,
                ),
                (
                    "b",
                    Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef,
                ),
                (
                    "t",
                    Arc::new(TimestampMillisecondArray::from(vec![
                        Some(1_796_547_600_123),
                        None,
                    ])) as ArrayRef,
                ),
            ])
            .unwrap()
        };
        let a = batch(
            vec![Some("a\"b\\c\n"), None],
            vec![Some(1.5), Some(f64::NAN)],
        );
        let b = batch(vec![Some("ü"), Some("")], vec![Some(f64::INFINITY), None]);
        let mut out = Vec::new();
        write_rows(&mut out, &[a, b]);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!([
                ["a\"b\\c\n", 1.5, -7, true, "2026-12-06T09:00:00.123Z"],
                [null, null, null, null, null],
                ["ü", null, -7, true, "2026-12-06T09:00:00.123Z"],
                ["", null, null, null, null],
            ])
        );
        let mut empty = Vec::new();
        write_rows(&mut empty, &[]);
        assert_eq!(empty, b"[]");
    }
}
