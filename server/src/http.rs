//! The HTTP API (see docs/http.md): SQL, ingest (HTTP and WebSocket), subscriptions, catalog,
//! metrics and liveness.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tocsin_engine::SubscribeEvent;
use tocsin_sql::{sql_type_name, ErrorKind, ObjectKind, SqlError, StatementResult};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::auth::Caller;
use crate::limits::Conn;
use crate::metrics::Refusal as Refused;
use crate::state::AppRef;

pub fn router(app: AppRef) -> Router {
    let max_body = app.limits.max_body;
    Router::new()
        .route("/v1/sql", post(sql))
        .route(
            "/v1/ingest/{source}",
            post(crate::push::ingest_http).get(crate::push::ingest_ws),
        )
        .merge(crate::writes::routes())
        .route("/v1/subscribe", get(subscribe))
        .route("/v1/catalog", get(catalog))
        .route("/v1/alerts", get(alerts))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            crate::cluster::proto::PATH,
            get(crate::cluster::link::accept),
        )
        .route("/metrics", get(metrics))
        .merge(crate::amapi::routes())
        .merge(crate::console::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: see docs/http.md") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            serve_when_ready,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::auth::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_requests,
        ))
        .with_state(app)
}

/// `GET /readyz` (no credential): `200 ready` once the server serves clients; `503` while it
/// does not (a replica started with an empty data dir, before its peers sent it their catalog
/// and rows). Who its peers are and how their links fare is told only with a credential.
async fn readyz(State(app): State<AppRef>) -> Response {
    match app.joining() {
        None => "ready\n".into_response(),
        Some(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "joining: this replica started with an empty data dir and is being sent the catalog and rows of its peers before it serves (docs/ha.md)",
        ),
    }
}

/// While a replica joins (see [`crate::state::App::joining`]), refuses every request that
/// passed the credential check but `/metrics`, with why.
async fn serve_when_ready(
    State(app): State<AppRef>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let always = [
        "/healthz",
        "/readyz",
        "/metrics",
        crate::cluster::proto::PATH,
    ];
    if !always.contains(&path) {
        if let Some(why) = app.joining() {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, why);
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
    }
    next.run(req).await
}

/// Counts requests, and refuses agents' requests (ingest and WebSockets) on a connection let in
/// on the reserve past `--max-connections` (see [`crate::limits::CONTROL_RESERVE`]).
async fn count_requests(
    State(app): State<AppRef>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    app.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let reserve = req.extensions().get::<Conn>().filter(|c| c.reserve);
    if let Some(conn) = reserve {
        if is_agent(&req) {
            let message = app.refuse_connection(conn.peer, true);
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
            let h = r.headers_mut();
            h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Whether a request is an agent's: ingest, or a WebSocket (held open for as long as it lives).
fn is_agent(req: &axum::extract::Request) -> bool {
    let path = req.uri().path();
    path.starts_with("/v1/ingest/")
        || crate::writes::PATHS.contains(&path)
        || req.headers().contains_key(header::UPGRADE)
}

/// Bodies over `--max-body` are answered 413 with the limit, whether their `Content-Length`
/// says so up front or the body turns out longer while it is read.
async fn limit_body(
    State(app): State<AppRef>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let max = app.limits.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = match declared {
        Some(n) if n > max as u64 => None,
        _ => Some(next.run(req).await),
    };
    match response {
        Some(r) if r.status() != StatusCode::PAYLOAD_TOO_LARGE => r,
        // axum's own answer for a body that grew past the limit is plain text: say it in JSON.
        Some(r)
            if r.headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|c| c.as_bytes().starts_with(b"application/json")) =>
        {
            r
        }
        _ => {
            app.metrics.refused(Refused::BodyTooLarge);
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the limit of {max} bytes (--max-body); send smaller batches"
                ),
            )
        }
    }
}

use crate::json::error;

fn sql_error_body(e: &SqlError) -> Value {
    json!({"error": {
        "message": e.message,
        "kind": format!("{:?}", e.kind).to_lowercase(),
        "statement": e.statement,
        "line": e.line,
        "column": e.column,
    }})
}

fn sql_error(e: &SqlError) -> Response {
    let status = match e.kind {
        ErrorKind::Parse | ErrorKind::Plan | ErrorKind::Unsupported | ErrorKind::Execution => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(sql_error_body(e))).into_response()
}

/// `POST /v1/sql`: SQL text, or `{"sql": "..."}`.
async fn sql(
    State(app): State<AppRef>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > app.limits.max_sql {
        app.metrics.refused(Refused::SqlTooLong);
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the SQL text is {} bytes, over the limit of {} (--max-sql): send it in several requests",
                body.len(),
                app.limits.max_sql
            ),
        );
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.trim_ascii_start().starts_with(b"{");
    let text = if is_json {
        #[derive(serde::Deserialize)]
        struct Body {
            sql: String,
        }
        match serde_json::from_slice::<Body>(&body) {
            Ok(b) => b.sql,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"sql\": \"...\"}}: {e}"),
                )
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(t) => t,
            Err(_) => return error(StatusCode::BAD_REQUEST, "the SQL text is not UTF-8"),
        }
    };
    let statements = match tocsin_sql::parser::parse(&text) {
        Ok(st) => st,
        Err(e) => return sql_error(&e),
    };
    // The guard admitted the caller; each statement must be within its scope, checked before
    // any runs.
    let Some(Extension(caller)) = caller else {
        return error(StatusCode::UNAUTHORIZED, "this request needs a token");
    };
    if let Some((i, need)) = crate::auth::first_denied(caller.scope, &statements) {
        let (status, why) = if caller.anonymous {
            app.metrics.refused(Refused::Unauthenticated);
            (StatusCode::UNAUTHORIZED, "without a token".to_string())
        } else {
            app.metrics.refused(Refused::Forbidden);
            (
                StatusCode::FORBIDDEN,
                format!("a {} credential", caller.scope.as_str()),
            )
        };
        let mut e = SqlError::new(
            ErrorKind::Plan,
            format!(
                "permission denied: {why} may not run this statement, it needs scope {}",
                need.as_str()
            ),
        );
        e.statement = i;
        e.line = Some(statements[i].start.line);
        e.column = Some(statements[i].start.column);
        return (status, Json(sql_error_body(&e))).into_response();
    }
    if let Some(i) = statements
        .iter()
        .position(|s| matches!(s.statement, tocsin_sql::parser::Statement::Subscribe { .. }))
    {
        let mut e = SqlError::new(
            ErrorKind::Unsupported,
            "SUBSCRIBE streams changes: use the WebSocket endpoint GET /v1/subscribe?q=...",
        );
        e.statement = i;
        e.line = Some(statements[i].start.line);
        e.column = Some(statements[i].start.column);
        return sql_error(&e);
    }
    // Each catalog change brings the running tasks in line (see `start::ServerDurability`).
    let result = app.tocsin.execute_parsed(statements).await;
    let results = match result {
        Ok(r) => r,
        Err(e) => return sql_error(&e),
    };
    // Written straight into the body: the rows of a large answer as JSON values first and
    // then as text took as long as the query itself.
    let mut body = b"{\"results\":[".to_vec();
    for (i, r) in results.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let value = match r {
            StatementResult::Ddl { statement, name } => {
                json!({"kind": "ddl", "statement": statement, "name": name})
            }
            StatementResult::Rows { schema, batches } => {
                let columns: Vec<Value> = schema
                    .fields()
                    .iter()
                    .map(|f| json!({"name": f.name(), "type": sql_type_name(f.data_type())}))
                    .collect();
                body.extend_from_slice(b"{\"columns\":");
                serde_json::to_writer(&mut body, &columns).expect("writing to memory");
                body.extend_from_slice(b",\"kind\":\"rows\",\"rows\":");
                crate::json::write_rows(&mut body, &batches);
                body.push(b'}');
                continue;
            }
            StatementResult::Inserted { source, outcome } => {
                json!({"kind": "insert", "source": source, "accepted": outcome.accepted})
            }
            StatementResult::Subscribe(_) => {
                let mut e = SqlError::new(ErrorKind::Internal, "SUBSCRIBE over HTTP");
                e.statement = i;
                return sql_error(&e);
            }
        };
        serde_json::to_writer(&mut body, &value).expect("writing to memory");
    }
    body.extend_from_slice(b"]}");
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A subscriber sends nothing but control frames: a larger message is refused (1009) rather
/// than buffered.
const SUBSCRIBER_MESSAGE: usize = 64 << 10;

/// Bytes of change frames a subscriber's socket gathers before writing them: the frames of one
/// time go out in a few writes rather than one each.
const SUBSCRIBER_WRITE_BUFFER: usize = 32 << 10;

/// What to do with a subscriber that falls behind its buffer (`?slow=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slow {
    /// Close the socket with code 1008 and the reason (the default).
    Close,
    /// Drop what it missed; once it reads again, send `{"resync": true}` and a fresh snapshot.
    Snapshot,
}

/// `GET /v1/subscribe?q=NAME_OR_SELECT[&slow=close|snapshot]` (WebSocket).
async fn subscribe(
    State(app): State<AppRef>,
    Query(params): Query<HashMap<String, String>>,
    conn: Option<Extension<Conn>>,
    mut req: axum::extract::Request,
) -> Response {
    let Some(q) = params.get("q") else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the view, rule, source or SELECT to follow as ?q=",
        );
    };
    let slow = match params.get("slow").map(String::as_str) {
        None | Some("close") => Slow::Close,
        Some("snapshot") => Slow::Snapshot,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown slow '{other}': use close or snapshot"),
            )
        }
    };
    // The text is parsed on its own into a name or one query, and the statement built from
    // what was parsed: nothing the client sends is pasted into SQL.
    let target = match tocsin_sql::parser::parse_subscribe_target(q) {
        Ok(t) => t,
        Err(e) => return sql_error(&e),
    };
    let (response, socket) =
        match crate::ws::upgrade(&mut req, SUBSCRIBER_MESSAGE, SUBSCRIBER_WRITE_BUFFER) {
            Ok(u) => u,
            Err(r) => return r,
        };
    let sub = match open_subscription(&app, &target).await {
        Ok(s) => s,
        Err(e) => return sql_error(&e),
    };
    tokio::spawn(async move {
        let _conn = conn;
        if let Some(socket) = socket.await {
            follow(app, target, sub, socket, slow).await
        }
    });
    response
}

/// Subscribes to `target`, bounded by the subscriber buffer and counted in the metrics.
async fn open_subscription(
    app: &AppRef,
    target: &tocsin_sql::parser::SubscribeTarget,
) -> Result<tocsin_engine::Subscription, tocsin_sql::SqlError> {
    let statement = tocsin_sql::Located {
        statement: tocsin_sql::parser::Statement::Subscribe {
            target: target.clone(),
        },
        start: datafusion::sql::sqlparser::tokenizer::Location::new(1, 1),
        text: String::new(),
    };
    match app.tocsin.execute_parsed(vec![statement]).await?.pop() {
        Some(StatementResult::Subscribe(s)) => {
            app.limits.bound(&s);
            app.metrics.subscriber(s.backlog());
            Ok(s)
        }
        _ => Err(tocsin_sql::SqlError::internal(
            "SUBSCRIBE gave no subscription",
        )),
    }
}

/// Why a subscriber's socket stops.
enum Stop {
    /// The client went away.
    Gone,
    /// The subscription fell behind while the client was not reading.
    Lagged,
}

/// Sends frames and flushes them. With [`Slow::Close`], gives up when the subscription starts
/// lagging while the client does not take them: a client that stopped reading cannot be sent a
/// close frame.
async fn send_watching(
    socket: &mut crate::ws::Socket,
    frames: Vec<String>,
    backlog: &tocsin_engine::Backlog,
    slow: Slow,
) -> Result<(), Stop> {
    let ws = &mut socket.ws;
    let send = async move {
        for f in frames {
            ws.feed(WsMessage::text(f)).await?;
        }
        ws.flush().await
    };
    tokio::pin!(send);
    loop {
        tokio::select! {
            r = &mut send => return r.map_err(|_| Stop::Gone),
            _ = tokio::time::sleep(Duration::from_millis(200)), if slow == Slow::Close => {
                if backlog.lagging() {
                    return Err(Stop::Lagged);
                }
            }
        }
    }
}

async fn follow(
    app: AppRef,
    target: tocsin_sql::parser::SubscribeTarget,
    mut sub: tocsin_engine::Subscription,
    mut socket: crate::ws::Socket,
    slow: Slow,
) {
    let mut schema = sub.schema().clone();
    loop {
        tokio::select! {
            event = sub.next() => {
                let Some(event) = event else { break };
                let frames: Vec<String> = match event {
                    SubscribeEvent::Changes { time, updates } => updates
                        .iter()
                        .map(|(row, diff)| crate::json::change_frame(&schema, time, *diff, row))
                        .collect(),
                    SubscribeEvent::Progress(t) => vec![json!({"time": t, "progress": true}).to_string()],
                    SubscribeEvent::Lagged { behind } if slow == Slow::Snapshot => {
                        app.metrics.subscribers_resynced.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("subscriber resynced: {behind} change(s) behind its buffer");
                        match open_subscription(&app, &target).await {
                            Ok(s) => {
                                sub = s;
                                schema = sub.schema().clone();
                                vec![json!({"resync": true}).to_string()]
                            }
                            Err(e) => {
                                socket.close(1011, e.to_string()).await;
                                return;
                            }
                        }
                    }
                    SubscribeEvent::Lagged { behind } => {
                        return close_slow(&app, &mut socket, behind).await;
                    }
                };
                let backlog = sub.backlog().clone();
                match send_watching(&mut socket, frames, &backlog, slow).await {
                    Ok(()) => {}
                    Err(Stop::Gone) => return,
                    Err(Stop::Lagged) => {
                        return close_slow(&app, &mut socket, backlog.behind()).await;
                    }
                }
            }
            msg = socket.ws.next() => match msg {
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Err(e)) => {
                    if matches!(e, WsError::Capacity(_)) {
                        socket.close(1009, format!("message larger than {SUBSCRIBER_MESSAGE} bytes")).await;
                    }
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.ws.send(WsMessage::Close(None)).await;
}

/// Closes a subscriber that fell `behind` its buffer with code 1008 and the reason, and counts it.
async fn close_slow(app: &AppRef, socket: &mut crate::ws::Socket, behind: u64) {
    app.metrics
        .subscribers_closed_slow
        .fetch_add(1, Ordering::Relaxed);
    let reason = format!("subscriber too slow: {behind} changes behind");
    tracing::info!("subscriber closed: {reason}");
    socket.close(1008, reason).await;
}

/// `GET /v1/alerts`: the current alert instances.
async fn alerts(State(app): State<AppRef>) -> Response {
    Json(json!({ "alerts": app.alerts.alerts() })).into_response()
}

/// `GET /v1/catalog`.
async fn catalog(State(app): State<AppRef>) -> Response {
    let mut groups: HashMap<&str, Vec<Value>> = HashMap::new();
    let history = app.tocsin.history();
    for e in app.tocsin.catalog().await {
        let at = |ms: Option<i64>| ms.map(tocsin_engine::fmt_ms);
        let kept = history.as_ref().and_then(|h| h.get(&e.name)).map(|rel| {
            let st = rel.stats();
            json!({
                "horizon_seconds": rel.spec.horizon_ms / 1000,
                "rows": st.rows,
                "bytes": st.bytes,
                "files": st.files,
                "partitions": st.partitions,
                "oldest": at(st.oldest_ms),
                "newest": at(st.newest_ms),
                "pending_rows": st.pending_rows,
                "flush_lag_seconds": st.flush_lag_secs,
                "error": st.failing,
            })
        });
        let key = match e.kind() {
            ObjectKind::Source => "sources",
            ObjectKind::View => "views",
            ObjectKind::Rule => "rules",
            ObjectKind::Sink => "sinks",
            ObjectKind::Silence => "silences",
        };
        groups.entry(key).or_default().push(json!({
            "name": e.name,
            "sql": e.display_sql(),
            "system": e.system,
            "columns": e.schema.fields().iter().map(|f| json!({"name": f.name(), "type": sql_type_name(f.data_type())})).collect::<Vec<_>>(),
            "history": kept,
            "ingest": (key == "sources").then(|| {
                let (accepted, rejected, errors) = app.metrics.source_ingest(&e.name);
                json!({
                    "rows_accepted": accepted,
                    "rows_rejected": rejected,
                    "last_errors": errors.iter().map(|(at, m)| json!({"at": tocsin_engine::fmt_ms(*at), "message": m})).collect::<Vec<_>>(),
                })
            }),
        }));
    }
    let mut out = serde_json::Map::new();
    for key in ["sources", "views", "rules", "sinks", "silences"] {
        out.insert(
            key.into(),
            Value::Array(groups.remove(key).unwrap_or_default()),
        );
    }
    if let Some(c) = &app.cluster {
        out.insert("cluster".into(), c.describe(&app));
    }
    Json(Value::Object(out)).into_response()
}

/// Each relation's history sizes.
fn history_stats(app: &crate::state::App) -> Vec<(String, tocsin_history::Stats)> {
    app.tocsin.history().map_or_else(Vec::new, |h| {
        h.relations()
            .iter()
            .map(|r| (r.name.clone(), r.stats()))
            .collect()
    })
}

/// `GET /metrics`.
async fn metrics(State(app): State<AppRef>) -> Response {
    let catalog = app.tocsin.catalog().await;
    let gauges = crate::metrics::Gauges {
        queue_depth: app.ingest.depth(),
        queue_capacity: app.ingest.capacity(),
        engine_pending_rows: app.tocsin.engine().pending_rows(),
        dataflows: catalog.len(),
        workers: app.tocsin.engine().workers(),
        limits: app.limits.gauges(),
        retained: app.tocsin.engine().retained(),
        memory_limit: app.ingest.budget().limit(),
        resident: app.ingest.budget().resident(),
        history: history_stats(&app),
        history_counters: app.tocsin.history().map_or([0; 5], |h| {
            let c = &h.counters;
            [
                &c.flushes,
                &c.flushed_rows,
                &c.compactions,
                &c.write_errors,
                &c.expired_partitions,
            ]
            .map(|v| v.load(std::sync::atomic::Ordering::Relaxed))
        }),
    };
    let rules = app.alerts.rule_names();
    let lags = app.tocsin.engine().lag(&rules).await.unwrap_or_default();
    let lag = rules
        .into_iter()
        .zip(lags)
        .filter_map(|(r, l)| Some((r, l?)))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&gauges) + &app.alerts.render_metrics(&lag),
    )
        .into_response()
}
