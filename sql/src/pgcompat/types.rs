//! Arrow types as PostgreSQL types: OIDs, names, sizes, as the wire protocol and the catalog show them.

use super::*;

/// How a column type looks to PostgreSQL clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgType {
    /// The type's OID (`pg_type.oid`).
    pub oid: u32,
    /// `information_schema.columns.data_type`.
    pub data_type: &'static str,
    /// `information_schema.columns.udt_name` (`pg_type.typname`).
    pub udt_name: &'static str,
    pub numeric_precision: Option<i32>,
    pub numeric_precision_radix: Option<i32>,
    pub numeric_scale: Option<i32>,
    pub datetime_precision: Option<i32>,
}

impl PgType {
    const fn new(oid: u32, data_type: &'static str, udt_name: &'static str) -> Self {
        PgType {
            oid,
            data_type,
            udt_name,
            numeric_precision: None,
            numeric_precision_radix: None,
            numeric_scale: None,
            datetime_precision: None,
        }
    }
    const fn integer(oid: u32, data_type: &'static str, udt: &'static str, bits: i32) -> Self {
        let mut t = PgType::new(oid, data_type, udt);
        t.numeric_precision = Some(bits);
        t.numeric_precision_radix = Some(2);
        t.numeric_scale = Some(0);
        t
    }
    const fn float(oid: u32, data_type: &'static str, udt: &'static str, bits: i32) -> Self {
        let mut t = PgType::new(oid, data_type, udt);
        t.numeric_precision = Some(bits);
        t.numeric_precision_radix = Some(2);
        t
    }
    const fn timestamp(oid: u32, data_type: &'static str, udt: &'static str, digits: i32) -> Self {
        let mut t = PgType::new(oid, data_type, udt);
        t.datetime_precision = Some(digits);
        t
    }

    pub const TEXT: PgType = PgType::new(25, "text", "text");
    pub const INT8: PgType = PgType::integer(20, "bigint", "int8", 64);
    pub const INT4: PgType = PgType::integer(23, "integer", "int4", 32);
    pub const INT2: PgType = PgType::integer(21, "smallint", "int2", 16);
    pub const FLOAT8: PgType = PgType::float(701, "double precision", "float8", 53);
    pub const FLOAT4: PgType = PgType::float(700, "real", "float4", 24);
    pub const BOOL: PgType = PgType::new(16, "boolean", "bool");
    pub const DATE: PgType = PgType::new(1082, "date", "date");

    /// The PostgreSQL type an Arrow type is shown as: integers, floats, booleans, text,
    /// timestamps and dates as themselves, everything else (decimals, intervals, lists, ...) as
    /// text in Arrow's display form.
    pub fn of(t: &DataType) -> PgType {
        let digits = |u: &TimeUnit| match u {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 3,
            TimeUnit::Microsecond | TimeUnit::Nanosecond => 6,
        };
        match t {
            DataType::Int64 | DataType::UInt32 => Self::INT8,
            DataType::Int32 | DataType::UInt16 => Self::INT4,
            DataType::Int16 | DataType::Int8 | DataType::UInt8 => Self::INT2,
            DataType::Float64 => Self::FLOAT8,
            DataType::Float32 | DataType::Float16 => Self::FLOAT4,
            DataType::Boolean => Self::BOOL,
            DataType::Timestamp(u, Some(_)) => {
                PgType::timestamp(1184, "timestamp with time zone", "timestamptz", digits(u))
            }
            DataType::Timestamp(u, None) => {
                PgType::timestamp(1114, "timestamp without time zone", "timestamp", digits(u))
            }
            DataType::Date32 => Self::DATE,
            _ => Self::TEXT,
        }
    }
}
