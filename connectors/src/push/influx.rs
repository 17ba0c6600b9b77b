//! Influx line protocol: `measurement,tag=v field=1.5,other="x" 1700000000000000000`.
//!
//! The measurement goes to a `measurement` column when the source has one; tags and fields go to
//! the columns of the same name; the timestamp (in the request's precision, nanoseconds by
//! default) goes to `ts`. Tags and fields the source has no column for are ignored.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use super::lineproto::{measurement, split, FieldValue, Line};
use super::{ByMeasurement, Decoded, Measurement, PayloadError, Precision, RowError};

#[derive(Clone, Debug)]
enum Value<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

enum Column {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder, Option<Arc<str>>),
}

impl Column {
    fn new(t: &DataType) -> Result<Column, PayloadError> {
        Ok(match t {
            DataType::Utf8 => Column::Str(StringBuilder::new()),
            DataType::Int64 => Column::Int(Int64Builder::new()),
            DataType::Float64 => Column::Float(Float64Builder::new()),
            DataType::Boolean => Column::Bool(BooleanBuilder::new()),
            DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                Column::Ts(TimestampMillisecondBuilder::new(), tz.clone())
            }
            other => {
                return Err(PayloadError(format!(
                    "line protocol cannot fill a column of type {other}"
                )))
            }
        })
    }

    /// Converts a value to this column's type.
    fn convert<'a>(&self, v: Value<'a>) -> Result<Value<'a>, String> {
        Ok(match (self, v) {
            (Column::Str(_), Value::Str(s)) => Value::Str(s),
            (Column::Str(_), Value::Int(i)) => Value::Str(i.to_string().into()),
            (Column::Str(_), Value::Float(f)) => Value::Str(f.to_string().into()),
            (Column::Str(_), Value::Bool(b)) => Value::Str(b.to_string().into()),
            (Column::Int(_) | Column::Ts(..), Value::Int(i)) => Value::Int(i),
            (Column::Int(_) | Column::Ts(..), Value::Float(f))
                if f.fract() == 0.0 && f.abs() < 9.2e18 =>
            {
                Value::Int(f as i64)
            }
            (Column::Float(_), Value::Float(f)) => Value::Float(f),
            (Column::Float(_), Value::Int(i)) => Value::Float(i as f64),
            (Column::Bool(_), Value::Bool(b)) => Value::Bool(b),
            (c, v) => {
                let want = match c {
                    Column::Str(_) => "text",
                    Column::Int(_) => "an integer",
                    Column::Float(_) => "a number",
                    Column::Bool(_) => "a boolean",
                    Column::Ts(..) => "epoch milliseconds",
                };
                return Err(format!("expected {want}, got {v:?}"));
            }
        })
    }

    fn append(&mut self, v: Option<Value<'_>>) {
        match (self, v) {
            (Column::Str(b), Some(Value::Str(s))) => b.append_value(s),
            (Column::Int(b), Some(Value::Int(i))) => b.append_value(i),
            (Column::Float(b), Some(Value::Float(f))) => b.append_value(f),
            (Column::Bool(b), Some(Value::Bool(x))) => b.append_value(x),
            (Column::Ts(b, _), Some(Value::Int(i))) => b.append_value(i),
            (Column::Str(b), _) => b.append_null(),
            (Column::Int(b), _) => b.append_null(),
            (Column::Float(b), _) => b.append_null(),
            (Column::Bool(b), _) => b.append_null(),
            (Column::Ts(b, _), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Str(mut b) => Arc::new(b.finish()),
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Float(mut b) => Arc::new(b.finish()),
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Ts(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
        }
    }
}

fn field_value<'a>(v: &FieldValue<'a>) -> Value<'a> {
    match v {
        FieldValue::Int(i) => Value::Int(*i),
        FieldValue::UInt(u) => i64::try_from(*u).map_or(Value::Float(*u as f64), Value::Int),
        FieldValue::Float(f) => Value::Float(*f),
        FieldValue::Str(s) => Value::Str(s.clone()),
        FieldValue::Bool(b) => Value::Bool(*b),
    }
}

/// Puts the values of one line in `values`, one per column of the schema; an error names the
/// field at fault.
fn line_values<'a>(
    line: &Line<'a>,
    schema: &SchemaRef,
    columns: &[Column],
    precision: Precision,
    values: &mut [Option<Value<'a>>],
) -> Result<(), String> {
    values.iter_mut().for_each(|v| *v = None);
    let mut set = |name: &str, v: Value<'a>, what: &str| -> Result<(), String> {
        // Not `index_of`, whose miss (a line's `measurement`, an unknown tag) formats an error
        // naming every column.
        if let Some((i, _)) = schema.column_with_name(name) {
            let v = columns[i]
                .convert(v)
                .map_err(|e| format!("{what} \"{name}\": {e}"))?;
            values[i] = Some(v);
        }
        Ok(())
    };
    set(
        "measurement",
        Value::Str(line.measurement.clone()),
        "measurement",
    )?;
    for (k, v) in &line.tags {
        set(k, Value::Str(v.clone()), "tag")?;
    }
    for (k, v) in &line.fields {
        if k == "ts" {
            return Err("field \"ts\": give the time as the line's timestamp".into());
        }
        set(k, field_value(v), "field")?;
    }
    if let Some(t) = line.timestamp {
        set("ts", Value::Int(precision.to_ms(t)), "timestamp")?;
    }
    Ok(())
}

pub(super) fn decode(
    payload: &[u8],
    schema: &SchemaRef,
    precision: Precision,
) -> Result<Decoded, PayloadError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| PayloadError(format!("line protocol must be UTF-8: {e}")))?;
    decode_lines(
        split(text).enumerate().map(|(i, l)| (i + 1, l)),
        schema,
        precision,
    )
}

/// Decodes lines, each with its 1-based line number in the payload.
pub(super) fn decode_lines<'a>(
    lines: impl Iterator<Item = (usize, &'a str)>,
    schema: &SchemaRef,
    precision: Precision,
) -> Result<Decoded, PayloadError> {
    let mut columns = schema
        .fields()
        .iter()
        .map(|f| Column::new(f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut line = Line::default();
    let mut values: Vec<Option<Value<'a>>> = vec![None; columns.len()];
    for (n, raw) in lines {
        let read = match line.parse(raw) {
            Ok(true) => line_values(&line, schema, &columns, precision, &mut values).map(|()| true),
            other => other,
        };
        match read {
            Ok(false) => {}
            Ok(true) => {
                for (c, v) in columns.iter_mut().zip(values.iter_mut()) {
                    c.append(v.take());
                }
                rows.push(n);
            }
            Err(message) => errors.push(RowError { row: n, message }),
        }
    }
    let arrays = columns.into_iter().map(Column::finish).collect();
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| PayloadError(e.to_string()))?;
    Ok(Decoded {
        batch,
        rows,
        errors,
    })
}

/// The lines of a payload by measurement, in the order measurements first appear, each line
/// with its 1-based number; and the lines without a measurement that can be read.
pub(super) fn by_measurement(text: &str) -> ByMeasurement<'_> {
    let mut groups: Vec<Measurement<'_>> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in split(text).enumerate() {
        let m = match measurement(line) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(message) => {
                errors.push(RowError {
                    row: i + 1,
                    message,
                });
                continue;
            }
        };
        match groups.iter_mut().rev().find(|(g, _)| *g == m) {
            Some((_, lines)) => lines.push((i + 1, line)),
            None => groups.push((m.into_owned(), vec![(i + 1, line)])),
        }
    }
    (groups, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_grouped_by_measurement() {
        let text = "cpu,host=a v=1 1\n\n# note\nmem v=2 2\ncpu v=3 3\nmy\\ disk\\,x,t=1 v=4\n";
        let (groups, errors) = by_measurement(text);
        assert!(errors.is_empty());
        let names: Vec<&str> = groups.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names, ["cpu", "mem", "my disk,x"]);
        let cpu: Vec<usize> = groups[0].1.iter().map(|(n, _)| *n).collect();
        assert_eq!(cpu, [1, 5]);
        assert_eq!(groups[1].1[0].0, 4);
    }
}
