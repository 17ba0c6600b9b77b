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

/// A JSON number, or null for NaN and the infinities. Whole numbers below 10^15 are written as
/// an integer and `.0`, as serde_json writes them, without its general float formatting.
fn put_float(out: &mut Vec<u8>, f: f64) {
    if !f.is_finite() {
        out.extend_from_slice(b"null");
    } else if f.trunc() == f && f.abs() < 1e15 && f != 0.0 {
        put_int(out, f as i64);
        out.extend_from_slice(b".0");
    } else {
        serde_json::to_writer(&mut *out, &f).expect("writing to memory");
    }
}

fn put_int(out: &mut Vec<u8>, i: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
}

fn put_ms(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    write_ms(out, ms);
    out.push(b'"');
}

/// Writes value `i` (not null) of the column it was made for.
type Put<'a> = Box<dyn Fn(&mut Vec<u8>, usize) + 'a>;

/// The writer of column `a`'s values, its type resolved once.
fn writer(a: &ArrayRef) -> Put<'_> {
    macro_rules! int {
        ($t:ty) => {{
            let v = a.as_primitive::<$t>();
            Box::new(move |out, i| put_int(out, v.value(i)))
        }};
    }
    macro_rules! ms {
        ($t:ty, $ms:expr) => {{
            let v = a.as_primitive::<$t>();
            Box::new(move |out, i| put_ms(out, $ms(v.value(i))))
        }};
    }
    match a.data_type() {
        DataType::Boolean => {
            let v = a.as_boolean();
            Box::new(move |out, i| {
                out.extend_from_slice(match v.value(i) {
                    true => b"true",
                    false => b"false",
                })
            })
        }
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => {
            let v = a.as_primitive::<Float32Type>();
            Box::new(move |out, i| put_float(out, v.value(i) as f64))
        }
        DataType::Float64 => {
            let v = a.as_primitive::<Float64Type>();
            Box::new(move |out, i| put_float(out, v.value(i)))
        }
        DataType::Timestamp(TimeUnit::Second, _) => {
            ms!(TimestampSecondType, |s: i64| s * 1000)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            ms!(TimestampMillisecondType, |ms: i64| ms)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            ms!(TimestampMicrosecondType, |us: i64| us.div_euclid(1000))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            ms!(TimestampNanosecondType, |ns: i64| ns.div_euclid(1_000_000))
        }
        DataType::Utf8 => {
            let v = a.as_string::<i32>();
            Box::new(move |out, i| put_str(out, v.value(i)))
        }
        DataType::LargeUtf8 => {
            let v = a.as_string::<i64>();
            Box::new(move |out, i| put_str(out, v.value(i)))
        }
        DataType::Utf8View => {
            let v = a.as_string_view();
            Box::new(move |out, i| put_str(out, v.value(i)))
        }
        DataType::Null => Box::new(|out, _| out.extend_from_slice(b"null")),
        _ => match ArrayFormatter::try_new(a.as_ref(), &Default::default()) {
            Ok(f) => Box::new(move |out, i| put_str(out, &f.value(i).to_string())),
            Err(_) => Box::new(|out, _| out.extend_from_slice(b"null")),
        },
    }
}

/// The rows of batches as a JSON array of arrays, written straight into `out` (numbers,
/// strings, booleans and null; timestamps as strings).
pub fn write_rows(out: &mut Vec<u8>, batches: &[RecordBatch]) {
    out.push(b'[');
    let mut first = true;
    for b in batches {
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|a| (a.logical_nulls(), writer(a)))
            .collect();
        for row in 0..b.num_rows() {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.push(b'[');
            for (c, (nulls, put)) in columns.iter().enumerate() {
                if c > 0 {
                    out.push(b',');
                }
                match nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                    true => out.extend_from_slice(b"null"),
                    false => put(out, row),
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

/// One subscription change as its WebSocket frame, `{"time": T, "diff": D, "row": {...}}`, the
/// row's columns in schema order, written straight to text.
pub fn change_frame(schema: &SchemaRef, time: u64, diff: isize, row: &[Datum]) -> String {
    let mut out = Vec::with_capacity(64 + 24 * row.len());
    out.extend_from_slice(b"{\"time\":");
    put_int(&mut out, time);
    out.extend_from_slice(b",\"diff\":");
    put_int(&mut out, diff);
    out.extend_from_slice(b",\"row\":{");
    for (i, (f, d)) in schema.fields().iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put_str(&mut out, f.name());
        out.push(b':');
        match d {
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Datum::Int(i) => match f.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, _) => put_ms(&mut out, *i),
                _ => put_int(&mut out, *i),
            },
            Datum::Float(x) => put_float(&mut out, x.get()),
            Datum::Str(s) => put_str(&mut out, s.as_str()),
        }
    }
    out.extend_from_slice(b"}}");
    String::from_utf8(out).expect("JSON written from UTF-8 text is UTF-8")
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

    /// Whole numbers take a shorter way to the same text as serde_json's, and every other
    /// double goes through serde_json.
    #[test]
    fn doubles_are_written_as_serde_json_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            60.0,
            1_795_132_800.0,
            999_999_999_999_999.0,
            1e15,
            -1e15,
            1e16,
            9_007_199_254_740_993.0,
            0.5,
            -2.25,
            1e-7,
            f64::MAX,
            f64::MIN_POSITIVE,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            values.extend([f, f.trunc(), (x % 2_000_000_000_000_000) as f64 - 1e15]);
        }
        for f in values.into_iter().filter(|f| f.is_finite()) {
            let mut ours = Vec::new();
            put_float(&mut ours, f);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&f).unwrap(),
                "{f:?}"
            );
        }
    }

    /// A change frame written straight to text is the object the row's JSON value gives.
    #[test]
    fn change_frames_hold_the_row_as_json() {
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("up", DataType::Boolean, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        for row in [
            vec![
                Datum::Str("we\"b\n1".into()),
                Datum::Float(tocsin_engine::row::F64::new(97.25)),
                Datum::Int(-3),
                Datum::Bool(false),
                Datum::Int(1_796_547_600_123),
            ],
            vec![
                Datum::Null,
                Datum::Float(tocsin_engine::row::F64::new(f64::NAN)),
                Datum::Null,
                Datum::Null,
                Datum::Null,
            ],
        ] {
            let text = change_frame(&schema, 17, -1, &row);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v,
                json!({"time": 17, "diff": -1, "row": row_object(&schema, &row)})
            );
        }
    }
}
