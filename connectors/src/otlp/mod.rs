//! OpenTelemetry: `FROM OTLP` takes OTLP/HTTP metrics (`ExportMetricsServiceRequest`, protobuf
//! or JSON) at `POST /v1/ingest/<source>` (and `POST /v1/metrics` for the source named `otlp`)
//! into the metrics shape ([`crate::metrics`]), the way OpenTelemetry's Prometheus
//! compatibility describes it:
//!
//! - a gauge or sum point is one row, `metric` the metric's name as sent;
//! - a histogram point is a `<name>_bucket` row per bound with an `le` label (cumulative, the
//!   last one `+Inf`), a `<name>_sum` row when it has a sum and a `<name>_count` row;
//! - a summary point is a `<name>` row per quantile with a `quantile` label, `<name>_sum` and
//!   `<name>_count`;
//! - the resource's `service.name` (after `service.namespace/` when there is one) is the `job`
//!   label, `service.instance.id` the `instance` label; its other attributes, the scope's name
//!   and version (`otel_scope_name`, `otel_scope_version`) and the point's attributes are
//!   labels too, a point's attribute winning over the resource's of the same key;
//! - a point flagged "no recorded value" is not a value and is left out; exponential
//!   histograms are not read, and their points are answered as rejected (partial success).

mod json;
pub mod proto;

use arrow::datatypes::SchemaRef;
use prost::Message;

use crate::metrics::{Limits, Rows};
use crate::push::{Decoded, PayloadError, RowError};
use crate::source::{Columns, Derived, Options, Payload, Protocol, SourceConnector};
use proto::*;

/// `FROM OTLP`.
pub struct Otlp;

impl SourceConnector for Otlp {
    fn name(&self) -> &'static str {
        "OTLP"
    }
    fn columns(&self) -> Columns {
        Columns::Labels
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example (job TEXT) FROM OTLP WITH (retain = '10 minutes')"
    }
    fn derive(&self, _: &Options) -> crate::Result<Derived> {
        Ok(Derived {
            schema: crate::metrics::schema(),
            companions: Vec::new(),
        })
    }
    fn protocol(&self) -> Option<&'static dyn Protocol> {
        Some(&OtlpHttp)
    }
}

/// Whether a `Content-Type` (lower case) is OTLP's JSON encoding; otherwise protobuf.
pub fn is_json(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or("").trim() == "application/json"
}

pub struct OtlpHttp;

impl Protocol for OtlpHttp {
    fn decode(&self, payload: &Payload<'_>, schema: &SchemaRef) -> Result<Decoded, PayloadError> {
        let mime = payload.content_type.split(';').next().unwrap_or("").trim();
        let request = match mime {
            "application/json" => json::request(&payload.body)
                .map_err(|e| PayloadError(format!("not an OTLP JSON metrics request: {e}")))?,
            "application/x-protobuf" | "" => {
                ExportMetricsServiceRequest::decode(payload.body.clone()).map_err(|e| {
                    PayloadError(format!("not an OTLP protobuf metrics request: {e}"))
                })?
            }
            other => {
                return Err(PayloadError(format!(
                    "OTLP/HTTP is sent as application/x-protobuf or application/json, not '{other}'"
                )))
            }
        };
        rows(&request, schema, &payload.limits, payload.now_ms)
    }
}

/// The answer to an export: `ExportMetricsServiceResponse`, with a partial success when points
/// were rejected, in the request's encoding.
pub fn answer(json: bool, rejected: usize, message: &str) -> Vec<u8> {
    let partial = (rejected > 0).then(|| ExportMetricsPartialSuccess {
        rejected_data_points: rejected as i64,
        error_message: message.to_string(),
    });
    if json {
        let body = match partial {
            Some(p) => serde_json::json!({"partialSuccess": {
                "rejectedDataPoints": p.rejected_data_points.to_string(),
                "errorMessage": p.error_message,
            }}),
            None => serde_json::json!({}),
        };
        return body.to_string().into_bytes();
    }
    ExportMetricsServiceResponse {
        partial_success: partial,
    }
    .encode_to_vec()
}

/// The body of a refused export: a `google.rpc.Status` in the request's encoding.
pub fn status(json: bool, code: i32, message: &str) -> Vec<u8> {
    if json {
        return serde_json::json!({"code": code, "message": message})
            .to_string()
            .into_bytes();
    }
    Status {
        code,
        message: message.to_string(),
    }
    .encode_to_vec()
}

/// An attribute's value as label text: strings as they are, other values as JSON.
fn text(v: &Option<AnyValue>) -> String {
    fn json(v: &AnyValue) -> serde_json::Value {
        match &v.value {
            None => serde_json::Value::Null,
            Some(Any::String(s)) => s.clone().into(),
            Some(Any::Bool(b)) => (*b).into(),
            Some(Any::Int(i)) => (*i).into(),
            Some(Any::Double(d)) => serde_json::Number::from_f64(*d)
                .map_or_else(|| d.to_string().into(), serde_json::Value::Number),
            Some(Any::Array(a)) => a.values.iter().map(json).collect(),
            Some(Any::KvList(l)) => l
                .values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map_or(serde_json::Value::Null, json);
                    (kv.key.clone(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            Some(Any::Bytes(b)) => String::from_utf8_lossy(b).into_owned().into(),
        }
    }
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::String(s)) => s.clone(),
        None => String::new(),
        Some(_) => json(v.as_ref().expect("a value")).to_string(),
    }
}

/// Sets a label, replacing one of the same name.
fn set(labels: &mut Vec<(String, String)>, k: &str, v: String) {
    match labels.iter_mut().find(|(n, _)| n == k) {
        Some(l) => l.1 = v,
        None => labels.push((k.to_string(), v)),
    }
}

/// The labels every point of a resource and scope has.
fn resource_labels(
    resource: Option<&Resource>,
    scope: Option<&InstrumentationScope>,
) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
    let get = |k: &str| attrs.iter().find(|a| a.key == k).map(|a| text(&a.value));
    for a in attrs {
        match a.key.as_str() {
            "service.name" | "service.namespace" | "service.instance.id" => {}
            k => set(&mut labels, k, text(&a.value)),
        }
    }
    if let Some(name) = get("service.name") {
        let job = match get("service.namespace") {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name,
        };
        set(&mut labels, "job", job);
    }
    if let Some(id) = get("service.instance.id") {
        set(&mut labels, "instance", id);
    }
    if let Some(s) = scope {
        if !s.name.is_empty() {
            set(&mut labels, "otel_scope_name", s.name.clone());
        }
        if !s.version.is_empty() {
            set(&mut labels, "otel_scope_version", s.version.clone());
        }
    }
    labels
}

/// A bound or quantile as Prometheus writes it: `0.5`, `1`, `+Inf`.
fn number_label(f: f64) -> String {
    if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        f.to_string()
    }
}

/// Builds the rows of a request, numbering points from 1 across it.
struct Builder<'a> {
    rows: Rows,
    limits: &'a Limits,
    now_ms: i64,
    point: usize,
    labels: Vec<(String, String)>,
    rejected: Vec<RowError>,
}

impl Builder<'_> {
    /// Starts a point: the resource's labels with the point's attributes over them.
    fn point(
        &mut self,
        base: &[(String, String)],
        attributes: &[KeyValue],
    ) -> Result<(), PayloadError> {
        self.point += 1;
        self.labels.clear();
        self.labels.extend_from_slice(base);
        for a in attributes {
            set(&mut self.labels, &a.key, text(&a.value));
        }
        let n = self.point;
        self.limits
            .check(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| PayloadError(format!("data point {n}: {e}")))
    }

    fn ts(&self, nanos: u64) -> i64 {
        if nanos == 0 {
            self.now_ms
        } else {
            (nanos / 1_000_000) as i64
        }
    }

    /// One row of the current point, with an extra label (`le`, `quantile`) when given.
    fn row(&mut self, name: &str, extra: Option<(&str, String)>, value: f64, ts: i64) {
        let mut labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some((k, v)) = &extra {
            labels.retain(|(n, _)| n != k);
            labels.push((k, v.as_str()));
        }
        crate::metrics::sort_labels(&mut labels, |l| l.0);
        self.rows.series(name, labels.into_iter());
        self.rows.sample(value, ts, self.point);
    }

    fn reject(&mut self, message: String) {
        self.rejected.push(RowError {
            row: self.point,
            message,
        });
    }
}

fn rows(
    request: &ExportMetricsServiceRequest,
    schema: &SchemaRef,
    limits: &Limits,
    now_ms: i64,
) -> Result<Decoded, PayloadError> {
    let mut b = Builder {
        rows: Rows::new(schema),
        limits,
        now_ms,
        point: 0,
        labels: Vec::new(),
        rejected: Vec::new(),
    };
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            let base = resource_labels(rm.resource.as_ref(), sm.scope.as_ref());
            for m in &sm.metrics {
                metric(&mut b, &base, m)?;
            }
        }
    }
    let (batch, origins) = b.rows.finish();
    Ok(Decoded {
        batch,
        rows: origins,
        errors: b.rejected,
    })
}

fn metric(b: &mut Builder<'_>, base: &[(String, String)], m: &Metric) -> Result<(), PayloadError> {
    let name = m.name.as_str();
    if name.is_empty() {
        return Err(PayloadError(format!(
            "a metric without a name (after data point {})",
            b.point
        )));
    }
    let numbers = |b: &mut Builder<'_>, points: &[NumberDataPoint]| -> Result<(), PayloadError> {
        for p in points {
            b.point(base, &p.attributes)?;
            if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                continue;
            }
            let value = match p.value {
                Some(NumberValue::AsDouble(d)) => d,
                Some(NumberValue::AsInt(i)) => i as f64,
                None => {
                    b.reject(format!(
                        "{name}: a data point with neither asDouble nor asInt"
                    ));
                    continue;
                }
            };
            let ts = b.ts(p.time_unix_nano);
            b.row(name, None, value, ts);
        }
        Ok(())
    };
    match &m.data {
        None => {}
        Some(Data::Gauge(g)) => numbers(b, &g.data_points)?,
        Some(Data::Sum(s)) => numbers(b, &s.data_points)?,
        Some(Data::Histogram(h)) => {
            let (bucket, sum, count) = (
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            );
            for p in &h.data_points {
                b.point(base, &p.attributes)?;
                if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                    continue;
                }
                if !p.bucket_counts.is_empty()
                    && p.bucket_counts.len() != p.explicit_bounds.len() + 1
                {
                    b.reject(format!(
                        "{name}: a histogram point with {} bucket counts for {} bounds (there must be one more count than bounds)",
                        p.bucket_counts.len(),
                        p.explicit_bounds.len()
                    ));
                    continue;
                }
                let ts = b.ts(p.time_unix_nano);
                let mut cumulative = 0u64;
                for (c, bound) in p.bucket_counts.iter().zip(&p.explicit_bounds) {
                    cumulative = cumulative.saturating_add(*c);
                    b.row(
                        &bucket,
                        Some(("le", number_label(*bound))),
                        cumulative as f64,
                        ts,
                    );
                }
                b.row(&bucket, Some(("le", "+Inf".into())), p.count as f64, ts);
                if let Some(s) = p.sum {
                    b.row(&sum, None, s, ts);
                }
                b.row(&count, None, p.count as f64, ts);
            }
        }
        Some(Data::Summary(s)) => {
            let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
            for p in &s.data_points {
                b.point(base, &p.attributes)?;
                if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                    continue;
                }
                let ts = b.ts(p.time_unix_nano);
                for q in &p.quantile_values {
                    b.row(
                        name,
                        Some(("quantile", number_label(q.quantile))),
                        q.value,
                        ts,
                    );
                }
                b.row(&sum, None, p.sum, ts);
                b.row(&count, None, p.count as f64, ts);
            }
        }
        Some(Data::ExponentialHistogram(e)) => {
            for _ in &e.data_points {
                b.point += 1;
                b.reject(format!("{name}: exponential histograms are not read"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
