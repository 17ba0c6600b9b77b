//! Results as JSON: numbers, strings, booleans and null; timestamps as RFC 3339 strings in UTC
//! with milliseconds (`2026-11-21T10:00:00.000Z`).

use datafusion::arrow::array::{Array, ArrayAccessor, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::ArrayFormatter;
use serde_json::{json, Map, Value};
use tocsin_engine::{fmt_ms, Datum};

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn strings<'a>(n: usize, s: impl ArrayAccessor<Item = &'a str>) -> Vec<Value> {
    (0..n)
        .map(|i| {
            if s.is_null(i) {
                Value::Null
            } else {
                json!(s.value(i))
            }
        })
        .collect()
}

/// One column's values as JSON.
fn column_values(a: &ArrayRef) -> Vec<Value> {
    let n = a.len();
    macro_rules! prim {
        ($t:ty, $f:expr) => {{
            let p = a.as_primitive::<$t>();
            (0..n)
                .map(|i| {
                    if p.is_null(i) {
                        Value::Null
                    } else {
                        $f(p.value(i))
                    }
                })
                .collect()
        }};
    }
    match a.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => {
            let b = a.as_boolean();
            (0..n)
                .map(|i| {
                    if b.is_null(i) {
                        Value::Null
                    } else {
                        Value::Bool(b.value(i))
                    }
                })
                .collect()
        }
        DataType::Int8 => prim!(Int8Type, |v| json!(v)),
        DataType::Int16 => prim!(Int16Type, |v| json!(v)),
        DataType::Int32 => prim!(Int32Type, |v| json!(v)),
        DataType::Int64 => prim!(Int64Type, |v| json!(v)),
        DataType::UInt8 => prim!(UInt8Type, |v| json!(v)),
        DataType::UInt16 => prim!(UInt16Type, |v| json!(v)),
        DataType::UInt32 => prim!(UInt32Type, |v| json!(v)),
        DataType::UInt64 => prim!(UInt64Type, |v| json!(v)),
        DataType::Float32 => prim!(Float32Type, |v: f32| float(v as f64)),
        DataType::Float64 => prim!(Float64Type, float),
        DataType::Timestamp(TimeUnit::Second, _) => {
            prim!(TimestampSecondType, |v: i64| json!(fmt_ms(v * 1000)))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            prim!(TimestampMillisecondType, |v| json!(fmt_ms(v)))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            prim!(TimestampMicrosecondType, |v: i64| json!(fmt_ms(
                v.div_euclid(1000)
            )))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            prim!(TimestampNanosecondType, |v: i64| json!(fmt_ms(
                v.div_euclid(1_000_000)
            )))
        }
        DataType::Utf8 => strings(n, a.as_string::<i32>()),
        DataType::LargeUtf8 => strings(n, a.as_string::<i64>()),
        DataType::Utf8View => strings(n, a.as_string_view()),
        _ => {
            let options = Default::default();
            match ArrayFormatter::try_new(a.as_ref(), &options) {
                Ok(f) => (0..n)
                    .map(|i| {
                        if a.is_null(i) {
                            Value::Null
                        } else {
                            json!(f.value(i).to_string())
                        }
                    })
                    .collect(),
                Err(_) => vec![Value::Null; n],
            }
        }
    }
}

/// The rows of batches as arrays of JSON values.
pub fn rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let mut columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| column_values(c).into_iter())
            .collect();
        for _ in 0..b.num_rows() {
            out.push(Value::Array(
                columns
                    .iter_mut()
                    .map(|c| c.next().unwrap_or(Value::Null))
                    .collect(),
            ));
        }
    }
    out
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
