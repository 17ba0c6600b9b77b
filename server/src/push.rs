//! The ingest endpoints: `POST /v1/ingest/<source>` and its WebSocket. A payload is
//! decompressed (`Content-Encoding`), decoded into the source's schema (the generic formats, or
//! the source kind's protocol: remote write, OTLP) and its good rows queued; the answer comes
//! once they are on disk (see [`crate::ingest`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use datafusion::arrow::datatypes::SchemaRef;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tocsin_connectors::compression::DecompressError;
use tocsin_connectors::push::{decode, Decoded, Format, PayloadError, Precision};
use tocsin_connectors::source::{Payload, Protocol};
use tocsin_sql::ObjectDef;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::ingest::IngestError;
use crate::json::error;
use crate::limits::Conn;
use crate::metrics::Refusal as Refused;
use crate::state::AppRef;

/// The ack of one pushed payload.
fn ack(accepted: usize, mut errors: Vec<(usize, String)>) -> Value {
    errors.sort_by_key(|(r, _)| *r);
    json!({
        "accepted": accepted,
        "rejected": errors.len(),
        "errors": errors.into_iter().map(|(row, message)| json!({"row": row, "message": message})).collect::<Vec<_>>(),
    })
}

/// Why a payload got no ack.
pub enum Refusal {
    NotFound(String),
    BadPayload(String),
    /// The body is over `--max-body`, compressed or once decompressed.
    TooLarge(String),
    /// A `Content-Encoding` tocsin does not read.
    Unsupported(String),
    Full,
    Memory(String),
    Unavailable(String),
    Failed(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::BadPayload(_) => StatusCode::BAD_REQUEST,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Full | Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Memory(_) => StatusCode::INSUFFICIENT_STORAGE,
            Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer with `body` in place of tocsin's JSON error, `Retry-After` when it is
    /// worth retrying soon.
    pub fn with_body(&self, content_type: &str, body: Vec<u8>) -> Response {
        let mut r = (
            self.status(),
            [(header::CONTENT_TYPE, content_type.to_string())],
            body,
        )
            .into_response();
        if matches!(self, Refusal::Full) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }

    pub fn response(self) -> Response {
        let status = self.status();
        let full = matches!(self, Refusal::Full);
        let mut r = error(status, self.message());
        if full {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::NotFound(m)
            | Refusal::BadPayload(m)
            | Refusal::TooLarge(m)
            | Refusal::Unsupported(m)
            | Refusal::Memory(m)
            | Refusal::Unavailable(m)
            | Refusal::Failed(m) => m.clone(),
            Refusal::Full => IngestError::Full.to_string(),
        }
    }
}

/// A source that takes rows, as a request finds it.
pub struct Target {
    pub schema: SchemaRef,
    /// Its default payload format.
    pub format: String,
    /// Its kind, as written after `FROM`.
    pub kind: String,
    /// The kind's protocol, for sources that speak one (remote write, OTLP).
    pub protocol: Option<&'static dyn Protocol>,
}

/// The source's schema, default format and kind, or 404.
pub async fn source_of(app: &AppRef, source: &str) -> Result<Target, Refusal> {
    match app.tocsin.entry(source).await {
        Some(e) => match &e.def {
            ObjectDef::Source { .. } if e.system => Err(Refusal::NotFound(format!(
                "\"{source}\" is written by tocsin itself and takes no rows"
            ))),
            ObjectDef::Source {
                options,
                connector,
                owner,
            } => {
                // A companion (`<source>_status`) takes rows as the generic formats read them.
                let protocol = match owner {
                    None => {
                        tocsin_connectors::registry::source(connector).and_then(|c| c.protocol())
                    }
                    Some(_) => None,
                };
                Ok(Target {
                    schema: e.schema.clone(),
                    format: options.format.clone(),
                    kind: connector.to_uppercase(),
                    protocol,
                })
            }
            _ => Err(Refusal::NotFound(format!(
                "\"{source}\" is a {}, not a source: only sources take rows",
                e.kind().as_str().to_lowercase()
            ))),
        },
        None => Err(Refusal::NotFound(format!(
            "source \"{source}\" does not exist"
        ))),
    }
}

/// The request body decompressed as its `Content-Encoding` says, up to `--max-body`.
pub async fn decompressed(
    app: &AppRef,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Bytes, Refusal> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    let limit = app.limits.max_body;
    let out = tokio::task::spawn_blocking(move || {
        tocsin_connectors::compression::decompress(&encoding, body, limit)
    })
    .await
    .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    out.map_err(|e| match e {
        DecompressError::TooLarge(_) => {
            app.metrics.refused(Refused::BodyTooLarge);
            Refusal::TooLarge(format!("{e}; send smaller batches"))
        }
        DecompressError::Unsupported(_) => Refusal::Unsupported(e.to_string()),
        DecompressError::Corrupt(..) => Refusal::BadPayload(e.to_string()),
    })
}

pub fn precision(params: &HashMap<String, String>) -> Result<Precision, Refusal> {
    match params.get("precision") {
        None => Ok(Precision::default()),
        Some(p) => Precision::parse(p).ok_or_else(|| {
            Refusal::BadPayload(format!("unknown precision '{p}': use ns, us, ms or s"))
        }),
    }
}

fn with_precision(f: Format, p: Precision) -> Format {
    match f {
        Format::Influx(_) => Format::Influx(p),
        other => other,
    }
}

/// Decodes off the async threads; a payload that cannot be read at all is counted as the
/// source's error and refused.
pub async fn decode_blocking(
    app: &AppRef,
    source: &str,
    decode: impl FnOnce() -> Result<Decoded, PayloadError> + Send + 'static,
) -> Result<Decoded, Refusal> {
    tokio::task::spawn_blocking(decode)
        .await
        .map_err(|e| Refusal::Unavailable(e.to_string()))?
        .map_err(|e| {
            app.metrics.error(source, &e.0);
            Refusal::BadPayload(e.0)
        })
}

/// Pushes decoded rows into a source: the rows accepted and those refused (by payload row
/// number, with the reason), the decoder's and the source's.
pub async fn push_decoded(
    app: &AppRef,
    source: &str,
    decoded: Decoded,
    patient: bool,
) -> Result<(usize, Vec<(usize, String)>), Refusal> {
    let Decoded {
        batch,
        rows,
        errors,
    } = decoded;
    let mut errors: Vec<(usize, String)> = errors.into_iter().map(|e| (e.row, e.message)).collect();
    if !errors.is_empty() {
        app.metrics.rejected(source, errors.len());
        for (row, why) in errors.iter().take(crate::metrics::LAST_ERRORS) {
            app.metrics.error(source, &format!("row {row}: {why}"));
        }
    }
    if batch.num_rows() == 0 {
        return Ok((0, errors));
    }
    match app.ingest.push(source, batch, rows, patient).await {
        Ok(o) => {
            errors.extend(o.rejected);
            Ok((o.accepted, errors))
        }
        Err(IngestError::Full) => {
            app.metrics
                .ingest_refused_full
                .fetch_add(1, Ordering::Relaxed);
            Err(Refusal::Full)
        }
        Err(IngestError::Memory(m)) => Err(Refusal::Memory(m)),
        Err(IngestError::Refused(m)) if m.contains("does not exist") => Err(Refusal::NotFound(m)),
        Err(IngestError::Refused(m)) => Err(Refusal::BadPayload(m)),
        Err(IngestError::Failed(m)) => Err(Refusal::Failed(m)),
        Err(IngestError::Unconfirmed(m)) => Err(Refusal::Unavailable(m)),
        Err(e @ IngestError::Stopped) => Err(Refusal::Unavailable(e.to_string())),
    }
}

/// Decodes a payload in one of the generic formats against the source's schema and pushes its
/// good rows; answers the ack.
async fn push_payload(
    app: &AppRef,
    source: &str,
    schema: SchemaRef,
    format: Format,
    payload: Bytes,
    patient: bool,
) -> Result<Value, Refusal> {
    let now = app.tocsin.engine().clock().now() as i64;
    let decoded =
        decode_blocking(app, source, move || decode(format, &payload, &schema, now)).await?;
    let (accepted, errors) = push_decoded(app, source, decoded, patient).await?;
    Ok(ack(accepted, errors))
}

/// `POST /v1/ingest/{source}`.
pub async fn ingest_http(
    State(app): State<AppRef>,
    Path(source): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(&app, &source, None, &params, &headers, body).await
}

/// A `POST` of a payload to a source. With `kind`, the source must be of that kind (for the
/// paths other tools write to, which name no source).
pub async fn ingest(
    app: &AppRef,
    source: &str,
    kind: Option<&str>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let target = match source_of(app, source).await {
        Ok(t) if kind.is_some_and(|k| k != t.kind) => {
            let k = kind.unwrap_or_default();
            return Refusal::NotFound(format!(
                "this path writes to the {k} source named \"{source}\", and \"{source}\" is a {} source: create it with CREATE SOURCE {source} FROM {k}",
                t.kind
            ))
            .response();
        }
        Ok(t) => t,
        Err(Refusal::NotFound(m)) if kind.is_some() => {
            let k = kind.unwrap_or_default();
            return Refusal::NotFound(format!(
                "{m}: create it with CREATE SOURCE {source} FROM {k}"
            ))
            .response();
        }
        Err(r) => return r.response(),
    };
    if let Some(protocol) = target.protocol {
        return ingest_protocol(app, source, target, protocol, &content_type, headers, body).await;
    }
    let run = async {
        let body = decompressed(app, headers, body).await?;
        let p = precision(params)?;
        let default = &target.format;
        let format = match (params.get("format"), content_type.as_str()) {
            (Some(f), _) => Format::from_name(f).ok_or_else(|| {
                Refusal::BadPayload(format!(
                    "unknown format '{f}': use json, ndjson, influx or arrow"
                ))
            })?,
            (None, "") => Format::from_name(default).unwrap_or(Format::Json),
            (None, ct) => match Format::from_content_type(ct) {
                Some(f) => f,
                // curl's default for -d; fall back to the source's format.
                None if ct.starts_with("application/x-www-form-urlencoded") => {
                    Format::from_name(default).unwrap_or(Format::Json)
                }
                None => return Err(Refusal::BadPayload(format!(
                    "unsupported Content-Type '{ct}': use application/json, application/x-ndjson, text/plain (Influx line protocol) or application/vnd.apache.arrow.stream"
                ))),
            },
        };
        push_payload(
            app,
            source,
            target.schema,
            with_precision(format, p),
            body,
            false,
        )
        .await
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.response(),
    }
}

/// A payload for a source whose kind speaks a protocol: decoded by it, answered as it says
/// (OTLP's response messages) or with tocsin's JSON ack.
async fn ingest_protocol(
    app: &AppRef,
    source: &str,
    target: Target,
    protocol: &'static dyn Protocol,
    content_type: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let otlp = target.kind == "OTLP";
    let json = tocsin_connectors::otlp::is_json(content_type);
    let answer_type = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    let run = async {
        let body = decompressed(app, headers, body).await?;
        let payload_type = content_type.to_string();
        let limits = app.limits.labels;
        let now_ms = app.tocsin.engine().clock().now() as i64;
        let schema = target.schema.clone();
        let decoded = decode_blocking(app, source, move || {
            let payload = Payload {
                content_type: &payload_type,
                body,
                limits,
                now_ms,
            };
            protocol.decode(&payload, &schema)
        })
        .await?;
        push_decoded(app, source, decoded, false).await
    };
    match run.await {
        Ok((_, errors)) if otlp => {
            let message = errors
                .iter()
                .take(3)
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let body = tocsin_connectors::otlp::answer(json, errors.len(), &message);
            ([(header::CONTENT_TYPE, answer_type)], body).into_response()
        }
        Ok((accepted, errors)) => {
            let mut r = Json(ack(accepted, errors)).into_response();
            if tocsin_connectors::prometheus::remote_write::is_v2(content_type) {
                let h = r.headers_mut();
                h.insert(
                    "x-prometheus-remote-write-samples-written",
                    header::HeaderValue::from(accepted),
                );
                h.insert(
                    "x-prometheus-remote-write-histograms-written",
                    header::HeaderValue::from(0),
                );
                h.insert(
                    "x-prometheus-remote-write-exemplars-written",
                    header::HeaderValue::from(0),
                );
            }
            r
        }
        Err(r) if otlp => {
            // google.rpc.Code: INVALID_ARGUMENT for what cannot be read, UNAVAILABLE otherwise.
            let code = if r.status().is_client_error() { 3 } else { 14 };
            let body = tocsin_connectors::otlp::status(json, code, &r.message());
            r.with_body(answer_type, body)
        }
        Err(r) => r.response(),
    }
}

/// `GET /v1/ingest/{source}` (WebSocket): one payload per frame, one ack per frame. Text frames
/// are JSON/NDJSON (or line protocol when the source's format is `influx`), binary frames Arrow
/// IPC; `?format=` overrides both.
pub async fn ingest_ws(
    State(app): State<AppRef>,
    Path(source): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    conn: Option<Extension<Conn>>,
    mut req: axum::extract::Request,
) -> Response {
    let default = match source_of(&app, &source).await {
        Ok(t) if t.protocol.is_some() => {
            return Refusal::BadPayload(format!(
                "a {} source takes its protocol over HTTP: POST to /v1/ingest/{source}",
                t.kind
            ))
            .response()
        }
        Ok(t) => t.format,
        Err(r) => return r.response(),
    };
    let p = match precision(&params) {
        Ok(p) => p,
        Err(r) => return r.response(),
    };
    let forced = match params.get("format").map(|f| (f, Format::from_name(f))) {
        Some((_, Some(f))) => Some(with_precision(f, p)),
        Some((f, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown format '{f}': use json, ndjson, influx or arrow"),
            )
        }
        None => None,
    };
    let text_format = match Format::from_name(&default) {
        Some(f @ (Format::Json | Format::Ndjson | Format::Influx(_))) => with_precision(f, p),
        _ => Format::Json,
    };
    let (response, socket) = match crate::ws::upgrade(&mut req, app.limits.max_frame, 0) {
        Ok(u) => u,
        Err(r) => return r,
    };
    tokio::spawn(async move {
        // The connection's slot stays taken for as long as the socket lives.
        let _conn = conn;
        if let Some(socket) = socket.await {
            ingest_socket(app, source, socket, forced, text_format).await
        }
    });
    response
}

async fn ingest_socket(
    app: AppRef,
    source: String,
    mut socket: crate::ws::Socket,
    forced: Option<Format>,
    text_format: Format,
) {
    while let Some(msg) = socket.ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                if matches!(e, WsError::Capacity(_)) {
                    app.metrics.refused(Refused::FrameTooLarge);
                    let reason = format!(
                        "message larger than {} bytes (--max-frame)",
                        app.limits.max_frame
                    );
                    socket.close(1009, reason).await;
                }
                break;
            }
        };
        let size = msg.len();
        let (format, payload) = match msg {
            WsMessage::Text(t) => (forced.unwrap_or(text_format), Bytes::from(t)),
            WsMessage::Binary(b) => (forced.unwrap_or(Format::Arrow), b),
            WsMessage::Close(_) => break,
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
        };
        // Looked up per frame: the source may be dropped or re-created while the socket is open.
        let pushed = match source_of(&app, &source).await {
            Ok(t) if t.protocol.is_some() => Err(Refusal::BadPayload(format!(
                "\"{source}\" is now a {} source, which takes its protocol over HTTP",
                t.kind
            ))),
            Ok(t) => push_payload(&app, &source, t.schema, format, payload, true).await,
            Err(r) => Err(r),
        };
        let reply = match pushed {
            Ok(v) => v,
            Err(r) => {
                let mut v = ack(0, Vec::new());
                v["error"] = json!(r.message());
                v
            }
        };
        if socket
            .ws
            .send(WsMessage::text(reply.to_string()))
            .await
            .is_err()
        {
            break;
        }
        // A message larger than the read buffer grew it: give that back before waiting.
        if size > crate::ws::READ_BUFFER {
            socket = socket.renew().await;
        }
    }
}
