//! OTLP's JSON encoding read into the protobuf messages ([`super::proto`]), as the OTLP
//! specification describes it: field names in lowerCamelCase (the proto names are accepted
//! too), 64-bit integers as decimal strings or numbers, enums as numbers or names, the `oneof`s
//! as sibling keys (`"gauge": {...}`, `"asDouble": 1.5`).

use serde_json::{Map, Value};

use super::proto::*;

type Obj = Map<String, Value>;

fn field<'a>(o: &'a Obj, camel: &str, snake: &str) -> Option<&'a Value> {
    o.get(camel)
        .or_else(|| o.get(snake))
        .filter(|v| !v.is_null())
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Obj, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be a JSON object"))
}

fn list<'a>(o: &'a Obj, camel: &str, snake: &str) -> Result<&'a [Value], String> {
    match field(o, camel, snake) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("\"{camel}\" must be an array")),
    }
}

fn string(o: &Obj, camel: &str, snake: &str) -> Result<String, String> {
    match field(o, camel, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("\"{camel}\" must be a string")),
    }
}

/// A 64-bit integer: a decimal string or a number.
fn int(o: &Obj, camel: &str, snake: &str) -> Result<Option<i128>, String> {
    let bad = || format!("\"{camel}\" must be an integer (a number or a decimal string)");
    match field(o, camel, snake) {
        None => Ok(None),
        Some(Value::String(s)) => s.trim().parse::<i128>().map(Some).map_err(|_| bad()),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn uint64(o: &Obj, camel: &str, snake: &str) -> Result<u64, String> {
    int(o, camel, snake)?
        .map_or(Ok(0), u64::try_from)
        .map_err(|_| format!("\"{camel}\" is out of range"))
}

fn int64(o: &Obj, camel: &str, snake: &str) -> Result<Option<i64>, String> {
    int(o, camel, snake)?
        .map(i64::try_from)
        .transpose()
        .map_err(|_| format!("\"{camel}\" is out of range"))
}

/// A double: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` or a decimal string.
fn double_value(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("\"{what}\" is not a number")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            s => s.parse().map_err(|_| format!("\"{what}\" is not a number")),
        },
        _ => Err(format!("\"{what}\" must be a number")),
    }
}

fn double(o: &Obj, camel: &str, snake: &str) -> Result<Option<f64>, String> {
    field(o, camel, snake)
        .map(|v| double_value(v, camel))
        .transpose()
}

fn uint32(o: &Obj, camel: &str, snake: &str) -> Result<u32, String> {
    int(o, camel, snake)?
        .map_or(Ok(0), u32::try_from)
        .map_err(|_| format!("\"{camel}\" is out of range"))
}

/// An enum: its number or its name (`AGGREGATION_TEMPORALITY_CUMULATIVE`).
fn temporality(o: &Obj) -> Result<i32, String> {
    match field(o, "aggregationTemporality", "aggregation_temporality") {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| "\"aggregationTemporality\" is out of range".into()),
        Some(Value::String(s)) => match s.as_str() {
            "AGGREGATION_TEMPORALITY_UNSPECIFIED" => Ok(0),
            "AGGREGATION_TEMPORALITY_DELTA" => Ok(1),
            "AGGREGATION_TEMPORALITY_CUMULATIVE" => Ok(2),
            other => Err(format!("unknown aggregationTemporality \"{other}\"")),
        },
        Some(_) => Err("\"aggregationTemporality\" must be a number or a name".into()),
    }
}

fn any_value(v: &Value) -> Result<AnyValue, String> {
    let o = object(v, "an attribute value")?;
    let value = if let Some(s) = field(o, "stringValue", "string_value") {
        Some(Any::String(
            s.as_str()
                .ok_or("\"stringValue\" must be a string")?
                .to_string(),
        ))
    } else if let Some(b) = field(o, "boolValue", "bool_value") {
        Some(Any::Bool(
            b.as_bool().ok_or("\"boolValue\" must be true or false")?,
        ))
    } else if let Some(i) = int64(o, "intValue", "int_value")? {
        Some(Any::Int(i))
    } else if let Some(d) = double(o, "doubleValue", "double_value")? {
        Some(Any::Double(d))
    } else if let Some(a) = field(o, "arrayValue", "array_value") {
        let values = list(object(a, "arrayValue")?, "values", "values")?
            .iter()
            .map(any_value)
            .collect::<Result<_, _>>()?;
        Some(Any::Array(ArrayValue { values }))
    } else if let Some(l) = field(o, "kvlistValue", "kvlist_value") {
        Some(Any::KvList(KeyValueList {
            values: key_values(object(l, "kvlistValue")?, "values", "values")?,
        }))
    } else if let Some(b) = field(o, "bytesValue", "bytes_value") {
        // base64 in JSON; kept as its text.
        Some(Any::Bytes(
            b.as_str()
                .ok_or("\"bytesValue\" must be a string")?
                .as_bytes()
                .to_vec(),
        ))
    } else {
        None
    };
    Ok(AnyValue { value })
}

fn key_values(o: &Obj, camel: &str, snake: &str) -> Result<Vec<KeyValue>, String> {
    list(o, camel, snake)?
        .iter()
        .map(|kv| {
            let kv = object(kv, "an attribute")?;
            Ok(KeyValue {
                key: string(kv, "key", "key")?,
                value: field(kv, "value", "value").map(any_value).transpose()?,
            })
        })
        .collect()
}

fn attributes(o: &Obj) -> Result<Vec<KeyValue>, String> {
    key_values(o, "attributes", "attributes")
}

fn number_point(v: &Value) -> Result<NumberDataPoint, String> {
    let o = object(v, "a data point")?;
    let value = if let Some(d) = double(o, "asDouble", "as_double")? {
        Some(NumberValue::AsDouble(d))
    } else {
        int64(o, "asInt", "as_int")?.map(NumberValue::AsInt)
    };
    Ok(NumberDataPoint {
        attributes: attributes(o)?,
        time_unix_nano: uint64(o, "timeUnixNano", "time_unix_nano")?,
        value,
        flags: uint32(o, "flags", "flags")?,
    })
}

fn points<T>(o: &Obj, each: impl Fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
    list(o, "dataPoints", "data_points")?
        .iter()
        .map(each)
        .collect()
}

fn histogram_point(v: &Value) -> Result<HistogramDataPoint, String> {
    let o = object(v, "a data point")?;
    let bucket_counts = list(o, "bucketCounts", "bucket_counts")?
        .iter()
        .map(|c| {
            let mut one = Obj::new();
            one.insert("c".into(), c.clone());
            uint64(&one, "c", "c").map_err(|_| "\"bucketCounts\" must hold integers".to_string())
        })
        .collect::<Result<_, _>>()?;
    let explicit_bounds = list(o, "explicitBounds", "explicit_bounds")?
        .iter()
        .map(|b| double_value(b, "explicitBounds"))
        .collect::<Result<_, _>>()?;
    Ok(HistogramDataPoint {
        attributes: attributes(o)?,
        time_unix_nano: uint64(o, "timeUnixNano", "time_unix_nano")?,
        count: uint64(o, "count", "count")?,
        sum: double(o, "sum", "sum")?,
        bucket_counts,
        explicit_bounds,
        flags: uint32(o, "flags", "flags")?,
    })
}

fn summary_point(v: &Value) -> Result<SummaryDataPoint, String> {
    let o = object(v, "a data point")?;
    let quantile_values = list(o, "quantileValues", "quantile_values")?
        .iter()
        .map(|q| {
            let q = object(q, "a quantile value")?;
            Ok(ValueAtQuantile {
                quantile: double(q, "quantile", "quantile")?.unwrap_or(0.0),
                value: double(q, "value", "value")?.unwrap_or(0.0),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(SummaryDataPoint {
        attributes: attributes(o)?,
        time_unix_nano: uint64(o, "timeUnixNano", "time_unix_nano")?,
        count: uint64(o, "count", "count")?,
        sum: double(o, "sum", "sum")?.unwrap_or(0.0),
        quantile_values,
        flags: uint32(o, "flags", "flags")?,
    })
}

fn metric(v: &Value) -> Result<Metric, String> {
    let o = object(v, "a metric")?;
    let data = if let Some(g) = field(o, "gauge", "gauge") {
        Some(Data::Gauge(Gauge {
            data_points: points(object(g, "gauge")?, number_point)?,
        }))
    } else if let Some(s) = field(o, "sum", "sum") {
        let s = object(s, "sum")?;
        Some(Data::Sum(Sum {
            data_points: points(s, number_point)?,
            aggregation_temporality: temporality(s)?,
            is_monotonic: field(s, "isMonotonic", "is_monotonic")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }))
    } else if let Some(h) = field(o, "histogram", "histogram") {
        let h = object(h, "histogram")?;
        Some(Data::Histogram(Histogram {
            data_points: points(h, histogram_point)?,
            aggregation_temporality: temporality(h)?,
        }))
    } else if let Some(e) = field(o, "exponentialHistogram", "exponential_histogram") {
        let n = list(
            object(e, "exponentialHistogram")?,
            "dataPoints",
            "data_points",
        )?
        .len();
        Some(Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![Vec::new(); n],
        }))
    } else if let Some(s) = field(o, "summary", "summary") {
        Some(Data::Summary(Summary {
            data_points: points(object(s, "summary")?, summary_point)?,
        }))
    } else {
        None
    };
    Ok(Metric {
        name: string(o, "name", "name")?,
        unit: string(o, "unit", "unit")?,
        data,
    })
}

/// Reads an `ExportMetricsServiceRequest` in OTLP's JSON encoding.
pub fn request(body: &[u8]) -> Result<ExportMetricsServiceRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let o = object(&v, "the request")?;
    let resource_metrics = list(o, "resourceMetrics", "resource_metrics")?
        .iter()
        .map(|rm| {
            let rm = object(rm, "a resourceMetrics")?;
            let resource = field(rm, "resource", "resource")
                .map(|r| {
                    Ok::<_, String>(Resource {
                        attributes: attributes(object(r, "resource")?)?,
                    })
                })
                .transpose()?;
            let scope_metrics = list(rm, "scopeMetrics", "scope_metrics")?
                .iter()
                .map(|sm| {
                    let sm = object(sm, "a scopeMetrics")?;
                    let scope = field(sm, "scope", "scope")
                        .map(|s| {
                            let s = object(s, "scope")?;
                            Ok::<_, String>(InstrumentationScope {
                                name: string(s, "name", "name")?,
                                version: string(s, "version", "version")?,
                            })
                        })
                        .transpose()?;
                    let metrics = list(sm, "metrics", "metrics")?
                        .iter()
                        .map(metric)
                        .collect::<Result<_, _>>()?;
                    Ok(ScopeMetrics { scope, metrics })
                })
                .collect::<Result<_, String>>()?;
            Ok(ResourceMetrics {
                resource,
                scope_metrics,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ExportMetricsServiceRequest { resource_metrics })
}
