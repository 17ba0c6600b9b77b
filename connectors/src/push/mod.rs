//! Decoding pushed payloads into Arrow batches in a source's schema.
//!
//! Every decoder maps the payload's fields onto the source's columns by name: missing columns are
//! NULL, unknown fields are ignored, and a row without `ts` (or with a null `ts`) gets the
//! ingestion time. A row that cannot be decoded is refused with its row number (1-based: the
//! element of a JSON array, the line of NDJSON and line protocol, the row of the Arrow stream)
//! and the field at fault; the payload's other rows are kept.

pub mod connector;
mod influx;
mod ipc;
mod json;
mod lineproto;

pub use ipc::write_stream as write_arrow_stream;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};

/// A payload format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A JSON array of objects (a single object is taken as one row).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Influx line protocol; `precision` is the unit of its timestamps.
    Influx(Precision),
    /// An Arrow IPC stream.
    Arrow,
}

/// The unit of Influx line protocol timestamps (InfluxDB's `precision` parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    /// InfluxDB v1's `m` and `h`.
    Minutes,
    Hours,
    /// InfluxDB 3's `auto`: the unit is guessed from the magnitude (a time after 1970 + 5e9 s
    /// in seconds is read as milliseconds, and so on).
    Auto,
}

impl Precision {
    pub fn parse(text: &str) -> Option<Precision> {
        Some(match text {
            "ns" | "n" | "nanosecond" => Precision::Nanoseconds,
            "us" | "u" | "µs" | "microsecond" => Precision::Microseconds,
            "ms" | "millisecond" => Precision::Milliseconds,
            "s" | "second" => Precision::Seconds,
            "m" | "minute" => Precision::Minutes,
            "h" | "hour" => Precision::Hours,
            "auto" => Precision::Auto,
            _ => return None,
        })
    }

    fn to_ms(self, t: i64) -> i64 {
        match self {
            Precision::Nanoseconds => t.div_euclid(1_000_000),
            Precision::Microseconds => t.div_euclid(1_000),
            Precision::Milliseconds => t,
            Precision::Seconds => t.saturating_mul(1_000),
            Precision::Minutes => t.saturating_mul(60_000),
            Precision::Hours => t.saturating_mul(3_600_000),
            Precision::Auto => match t.unsigned_abs() {
                0..5_000_000_000 => t.saturating_mul(1_000),
                5_000_000_000..5_000_000_000_000 => t,
                5_000_000_000_000..5_000_000_000_000_000 => t.div_euclid(1_000),
                _ => t.div_euclid(1_000_000),
            },
        }
    }
}

impl Format {
    /// The format a `Content-Type` names (parameters such as `; charset=utf-8` are ignored).
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Some(match mime.as_str() {
            "application/json" => Format::Json,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Format::Ndjson,
            "text/plain" => Format::Influx(Precision::default()),
            "application/vnd.apache.arrow.stream" => Format::Arrow,
            _ => return None,
        })
    }

    /// The format a source's `format` option names: `json`, `ndjson`, `influx`, `arrow`.
    pub fn from_name(name: &str) -> Option<Format> {
        Some(match name {
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "influx" => Format::Influx(Precision::default()),
            "arrow" => Format::Arrow,
            _ => return None,
        })
    }
}

/// A measurement's name and its lines, each with its 1-based line number.
pub type Measurement<'a> = (String, Vec<(usize, &'a str)>);

/// A payload's lines by measurement, and the lines whose measurement cannot be read.
pub type ByMeasurement<'a> = (Vec<Measurement<'a>>, Vec<RowError>);

/// Line protocol written to several sources, one per measurement (InfluxDB's write APIs): the
/// lines of each measurement with their 1-based line numbers, in the order measurements first
/// appear. Payloads that are not UTF-8 are refused.
pub fn influx_by_measurement(payload: &[u8]) -> Result<ByMeasurement<'_>, PayloadError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| PayloadError(format!("line protocol must be UTF-8: {e}")))?;
    Ok(influx::by_measurement(text))
}

/// Decodes lines of one measurement (see [`influx_by_measurement`]) into a source's schema.
pub fn decode_influx_lines(
    lines: &[(usize, &str)],
    schema: &SchemaRef,
    precision: Precision,
    now_ms: i64,
) -> Result<Decoded, PayloadError> {
    let working = offset_zones(schema);
    let decoded = influx::decode_lines(lines.iter().copied(), &working, precision)?;
    finish(decoded, schema, now_ms)
}

/// A row refused while decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct RowError {
    /// 1-based row number in the payload.
    pub row: usize,
    pub message: String,
}

/// A decoded payload.
#[derive(Debug)]
pub struct Decoded {
    /// The good rows, in the source's schema, `ts` filled in.
    pub batch: RecordBatch,
    /// For each row of `batch`, its 1-based row number in the payload.
    pub rows: Vec<usize>,
    /// Rows that could not be decoded.
    pub errors: Vec<RowError>,
}

/// A payload that could not be read at all (not JSON, not an Arrow stream, ...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// Decodes a payload into the source's schema; rows without `ts` get `now_ms`.
pub fn decode(
    format: Format,
    payload: &[u8],
    schema: &SchemaRef,
    now_ms: i64,
) -> Result<Decoded, PayloadError> {
    let working = offset_zones(schema);
    let decoded = match format {
        Format::Json => json::decode_array(payload, &working)?,
        Format::Ndjson => json::decode_lines(payload, &working)?,
        Format::Influx(precision) => influx::decode(payload, &working, precision)?,
        Format::Arrow => ipc::decode(payload, &working)?,
    };
    finish(decoded, schema, now_ms)
}

/// The schema with named UTC time zones written as offsets: arrow parses and casts timestamps
/// into offset zones without a time zone database, and the instants are the same.
fn offset_zones(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(unit, Some(tz)) if is_utc(tz) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(*unit, Some("+00:00".into()))),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "utc" | "Z" | "Etc/UTC" | "+00:00")
}

/// Puts the decoded rows in the source's schema and gives every row with a null `ts` the
/// ingestion time.
fn finish(mut decoded: Decoded, schema: &SchemaRef, now_ms: i64) -> Result<Decoded, PayloadError> {
    let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
    for (c, f) in columns.iter_mut().zip(schema.fields()) {
        let DataType::Timestamp(TimeUnit::Millisecond, tz) = f.data_type() else {
            continue;
        };
        let ts = c.as_primitive::<TimestampMillisecondType>();
        let fill = f.name() == "ts" && ts.null_count() > 0;
        if !fill && c.data_type() == f.data_type() {
            continue;
        }
        let relabelled = if fill {
            ts.iter()
                .map(|t| Some(t.unwrap_or(now_ms)))
                .collect::<TimestampMillisecondArray>()
        } else {
            ts.clone()
        };
        *c = Arc::new(relabelled.with_timezone_opt(tz.clone()));
    }
    decoded.batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| PayloadError(e.to_string()))?;
    Ok(decoded)
}

#[cfg(test)]
mod tests;
