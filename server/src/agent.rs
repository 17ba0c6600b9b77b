//! `tocsin agent`: collects this host's metrics and its busiest processes and pushes them to a
//! tocsin server over the WebSocket ingest endpoint as Arrow IPC frames (metrics to the source,
//! processes to `<source>_processes`, each over its own connection), reconnecting with capped
//! exponential backoff. Given several servers (replicas, docs/ha.md), it pushes to the first it
//! reaches and moves to the next when that one fails. Samples taken while disconnected are kept
//! (up to a limit, oldest dropped with a warning) and sent after reconnecting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use futures_util::{SinkExt, StreamExt};
use tocsin_connectors::host::{HostCollector, PROCESSES_SUFFIX};
use tocsin_connectors::push::write_arrow_stream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// Samples kept while the server cannot be reached.
const MAX_BACKLOG: usize = 10_000;

pub struct AgentConfig {
    /// `ws://host:port` of the server, or of each replica, comma-separated.
    pub server: String,
    pub source: String,
    pub interval: Duration,
    /// Processes named besides the busiest (`None`: send no processes).
    pub processes: Option<Vec<String>>,
    /// Bearer token (scope write) for a server with credentials.
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for `wss://`, instead of the public web roots.
    pub ca_cert: Option<std::path::PathBuf>,
}

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    write_arrow_stream(&mut buf, std::slice::from_ref(batch)).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn ws_url(server: &str, source: &str) -> String {
    let s = server.trim_end_matches('/');
    let s = if s.contains("://") {
        s.to_string()
    } else {
        format!("ws://{s}")
    };
    format!("{s}/v1/ingest/{source}")
}

/// Batches waiting for one ingest endpoint, and a wake-up for its sender.
#[derive(Clone, Default)]
struct Queue {
    batches: Arc<Mutex<VecDeque<RecordBatch>>>,
    ready: Arc<Notify>,
}

impl Queue {
    fn push(&self, batch: RecordBatch) {
        {
            let mut b = self.batches.lock().expect("backlog");
            b.push_back(batch);
            if b.len() > MAX_BACKLOG {
                b.pop_front();
                tracing::warn!("agent: {MAX_BACKLOG} samples waiting; dropped the oldest");
            }
        }
        self.ready.notify_one();
    }
}

/// Samples every `interval` into the queues (processes only with `processes`), whether or not
/// the server is reachable.
fn start_sampler(
    interval: Duration,
    metrics: Queue,
    processes: Option<(Vec<String>, Queue)>,
) -> String {
    let mut collector = HostCollector::new();
    let host = collector.host().to_string();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            metrics.push(collector.collect(now));
            if let Some((names, queue)) = &processes {
                queue.push(collector.processes(names, now));
            }
        }
    });
    host
}

/// Sends the backlog over one connection until it fails.
async fn drain(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    queue: &Queue,
) -> String {
    loop {
        let next = queue.batches.lock().expect("backlog").front().cloned();
        let Some(batch) = next else {
            queue.ready.notified().await;
            continue;
        };
        let frame = match ipc(&batch) {
            Ok(f) => f,
            Err(e) => return format!("cannot encode a sample: {e}"),
        };
        if let Err(e) = ws.send(Message::Binary(frame.into())).await {
            return format!("send failed: {e}");
        }
        let ack = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break t,
                Some(Ok(_)) => continue,
                _ => return "connection closed before the ack".into(),
            }
        };
        let v: serde_json::Value = serde_json::from_str(&ack).unwrap_or_default();
        if let Some(e) = v.get("error") {
            // Kept and sent again after a backoff: the server may be short of disk, or the
            // source may be re-created.
            return format!("the server refused the sample: {e}");
        }
        if v["rejected"].as_u64().unwrap_or(0) > 0 {
            tracing::warn!("agent: rows rejected: {}", v["errors"]);
        }
        queue.batches.lock().expect("backlog").pop_front();
    }
}

/// The WebSocket handshake request, with the bearer token when there is one.
fn request(
    url: &str,
    token: Option<&str>,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        req.headers_mut().insert("authorization", value);
    }
    Ok(req)
}

/// The ingest URL of `source` on each server of a comma-separated list.
fn ws_urls(servers: &str, source: &str) -> Vec<String> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| ws_url(s, source))
        .collect()
}

pub async fn run(config: AgentConfig) -> Result<(), String> {
    let urls = ws_urls(&config.server, &config.source);
    if urls.is_empty() {
        return Err("agent: --server names no server".into());
    }
    let metrics = Queue::default();
    let processes = config
        .processes
        .clone()
        .map(|names| (names, Queue::default()));
    let host = start_sampler(config.interval, metrics.clone(), processes.clone());
    tracing::info!(
        "agent: pushing metrics of {host} to {} every {:?}",
        urls.join(" or "),
        config.interval
    );
    let tls = crate::client::tls_config(config.ca_cert.as_deref())?;
    let token = config.token.as_deref();
    match processes {
        Some((_, queue)) => {
            let urls_p = ws_urls(
                &config.server,
                &format!("{}{PROCESSES_SUFFIX}", config.source),
            );
            let (a, b) = tokio::join!(
                send(&urls, token, &tls, &metrics),
                send(&urls_p, token, &tls, &queue)
            );
            a.and(b)
        }
        None => send(&urls, token, &tls, &metrics).await,
    }
}

/// Sends a queue to the first of `urls` that takes it for as long as the agent runs, moving to
/// the next when one fails and waiting with backoff once every one has.
async fn send(
    urls: &[String],
    token: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
    queue: &Queue,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(500);
    for (i, url) in urls.iter().enumerate().cycle() {
        let request = match request(url, token) {
            Ok(r) => r,
            Err(e) => return Err(format!("agent: bad server address {url}: {e}")),
        };
        let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
        match tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
            .await
        {
            Ok((mut ws, _)) => {
                tracing::info!("agent: connected to {url}");
                backoff = Duration::from_millis(500);
                let why = drain(&mut ws, queue).await;
                tracing::warn!("agent: {url}: {why}");
            }
            Err(e) => tracing::warn!("agent: cannot connect to {url}: {e}"),
        }
        // The next server at once; after the last, a pause that grows while none answers.
        if i + 1 == urls.len() {
            tracing::warn!("agent: trying again in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    Ok(())
}
