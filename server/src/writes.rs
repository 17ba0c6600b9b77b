//! The paths other tools write to, so they need no change but the address (docs/ingest.md):
//!
//! | path | who writes | where the rows go |
//! |---|---|---|
//! | `POST /api/v1/write` | Prometheus, Grafana Alloy, vmagent (remote write) | the `PROMETHEUS` source named `prometheus` |
//! | `POST /v1/metrics` | OpenTelemetry SDKs and the Collector (OTLP/HTTP) | the `OTLP` source named `otlp` |
//! | `POST /write` | InfluxDB 1.x clients, Telegraf `outputs.influxdb` | each line to the source named after its measurement |
//! | `POST /api/v2/write` | InfluxDB 2.x clients, Telegraf `outputs.influxdb_v2` | likewise |
//! | `POST /api/v3/write_lp` | InfluxDB 3 clients | likewise |
//!
//! Each needs the write scope and passes the Origin checks, as `/v1/ingest/<source>` does
//! ([`crate::auth`]).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::json;
use tocsin_connectors::push::{decode_influx_lines, influx_by_measurement, Precision};

use crate::push::{decompressed, Refusal};
use crate::state::AppRef;

/// Every path of this module: they take rows, as `/v1/ingest/` does.
pub const PATHS: [&str; 5] = [
    "/api/v1/write",
    "/v1/metrics",
    "/write",
    "/api/v2/write",
    "/api/v3/write_lp",
];

pub fn routes() -> Router<AppRef> {
    Router::new()
        .route("/api/v1/write", post(remote_write))
        .route("/v1/metrics", post(otlp))
        .route("/write", post(influx_v1))
        .route("/api/v2/write", post(influx_v2))
        .route("/api/v3/write_lp", post(influx_v3))
}

/// `POST /api/v1/write`: remote write into the source named `prometheus`.
async fn remote_write(
    State(app): State<AppRef>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    crate::push::ingest(
        &app,
        "prometheus",
        Some("PROMETHEUS"),
        &params,
        &headers,
        body,
    )
    .await
}

/// `POST /v1/metrics`: OTLP/HTTP into the source named `otlp`.
async fn otlp(
    State(app): State<AppRef>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    crate::push::ingest(&app, "otlp", Some("OTLP"), &params, &headers, body).await
}

type Request = (
    State<AppRef>,
    Query<HashMap<String, String>>,
    HeaderMap,
    Bytes,
);

/// `POST /write`.
async fn influx_v1(
    s: State<AppRef>,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    influx((s, q, h, b), Api::V1).await
}

/// `POST /api/v2/write`.
async fn influx_v2(
    s: State<AppRef>,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    influx((s, q, h, b), Api::V2).await
}

/// `POST /api/v3/write_lp`.
async fn influx_v3(
    s: State<AppRef>,
    q: Query<HashMap<String, String>>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    influx((s, q, h, b), Api::V3).await
}

/// Which of InfluxDB's write APIs a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    V1,
    V2,
    V3,
}

impl Api {
    /// The precision a request asks for, in the API's own words (v1: n, u, ms, s, m, h; v2: ns,
    /// us, ms, s; v3: auto, nanosecond, microsecond, millisecond, second).
    fn precision(self, params: &HashMap<String, String>) -> Result<Precision, String> {
        let default = match self {
            Api::V3 => Precision::Auto,
            _ => Precision::Nanoseconds,
        };
        let Some(p) = params.get("precision") else {
            return Ok(default);
        };
        let allowed: &[&str] = match self {
            Api::V1 => &["n", "ns", "u", "us", "ms", "s", "m", "h"],
            Api::V2 => &["ns", "us", "ms", "s"],
            Api::V3 => &["auto", "nanosecond", "microsecond", "millisecond", "second"],
        };
        match Precision::parse(p) {
            Some(precision) if allowed.contains(&p.as_str()) => Ok(precision),
            _ => Err(format!(
                "unknown precision '{p}': use {}",
                allowed.join(", ")
            )),
        }
    }

    /// InfluxDB's error answer: a JSON body with `code` and `message` (and `error`, which v1
    /// and v3 clients read).
    fn error(self, status: StatusCode, code: &str, message: &str) -> Response {
        let body = match self {
            Api::V2 => json!({"code": code, "message": message}),
            Api::V1 | Api::V3 => json!({"code": code, "message": message, "error": message}),
        };
        (status, axum::Json(body)).into_response()
    }
}

/// InfluxDB's error code for a status.
fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        413 => "request too large",
        415 => "unsupported media type",
        503 => "unavailable",
        _ => "internal error",
    }
}

/// Line protocol to the sources named after its measurements. The good lines are stored;
/// when any line is not, the answer is a 400 partial-write error naming each with its line
/// number (the first ten), as InfluxDB answers.
async fn influx(request: Request, api: Api) -> Response {
    let (State(app), Query(params), headers, body) = request;
    let refused = |r: Refusal| {
        let status = r.status();
        let mut resp = api.error(status, code(status), &r.message());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    };
    let precision = match api.precision(&params) {
        Ok(p) => p,
        Err(m) => return api.error(StatusCode::BAD_REQUEST, "invalid", &m),
    };
    let body = match decompressed(&app, &headers, body).await {
        Ok(b) => b,
        Err(r) => return refused(r),
    };
    let (groups, unread) = match influx_by_measurement(&body) {
        Ok(g) => g,
        Err(e) => return api.error(StatusCode::BAD_REQUEST, "invalid", &e.0),
    };
    let now = app.tocsin.engine().clock().now() as i64;
    let mut written = 0usize;
    let mut errors: Vec<(usize, String)> = unread.into_iter().map(|e| (e.row, e.message)).collect();
    for (measurement, lines) in &groups {
        let target = match crate::push::source_of(&app, measurement).await {
            Ok(t) if t.protocol.is_none() => t,
            Ok(t) => {
                let why = format!(
                    "\"{measurement}\" is a {} source, which takes its own protocol, not line protocol",
                    t.kind
                );
                errors.extend(lines.iter().map(|(n, _)| (*n, why.clone())));
                continue;
            }
            Err(Refusal::NotFound(m)) => {
                let why = format!(
                    "{m}: each line goes to the source named after its measurement (CREATE SOURCE {measurement} (...) FROM HTTP)"
                );
                errors.extend(lines.iter().map(|(n, _)| (*n, why.clone())));
                continue;
            }
            Err(r) => return refused(r),
        };
        let decoded = match decode_influx_lines(lines, &target.schema, precision, now) {
            Ok(d) => d,
            Err(e) => {
                errors.extend(lines.iter().map(|(n, _)| (*n, e.0.clone())));
                continue;
            }
        };
        match crate::push::push_decoded(&app, measurement, decoded, false).await {
            Ok((accepted, refused_rows)) => {
                written += accepted;
                errors.extend(refused_rows);
            }
            // Lines already written stay written; the client is told what was not.
            Err(r) if written > 0 || !errors.is_empty() => {
                let why = r.message();
                errors.extend(lines.iter().map(|(n, _)| (*n, why.clone())));
            }
            Err(r) => return refused(r),
        }
    }
    if errors.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    errors.sort_by_key(|(n, _)| *n);
    let lines: Vec<String> = errors
        .iter()
        .take(10)
        .map(|(n, m)| format!("line {n}: {m}"))
        .collect();
    let more = if errors.len() > 10 {
        format!(" (and {} more)", errors.len() - 10)
    } else {
        String::new()
    };
    let message = format!(
        "partial write: {} lines written, {} not: {}{more}",
        written,
        errors.len(),
        lines.join("; ")
    );
    api.error(StatusCode::BAD_REQUEST, "invalid", &message)
}
