//! `tocsin agent`: collects this host's metrics and pushes them to a tocsin server over the
//! WebSocket ingest endpoint as Arrow IPC frames, reconnecting with capped exponential backoff.
//! Samples taken while disconnected are kept (up to a limit, oldest dropped with a warning) and
//! sent after reconnecting.

use std::collections::VecDeque;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::writer::StreamWriter;
use futures_util::{SinkExt, StreamExt};
use tocsin_connectors::host::HostCollector;
use tokio_tungstenite::tungstenite::Message;

/// Samples kept while the server cannot be reached.
const MAX_BACKLOG: usize = 10_000;

pub struct AgentConfig {
    /// `ws://host:port` of the server.
    pub server: String,
    pub source: String,
    pub interval: Duration,
}

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut w = StreamWriter::try_new(&mut buf, &batch.schema()).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    drop(w);
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

pub async fn run(config: AgentConfig) -> Result<(), String> {
    let url = ws_url(&config.server, &config.source);
    let mut collector = HostCollector::new();
    let mut backlog: VecDeque<RecordBatch> = VecDeque::new();
    let mut backoff = Duration::from_millis(500);
    let mut every = tokio::time::interval(config.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        "agent: pushing metrics of {} to {url} every {:?}",
        collector.host(),
        config.interval
    );
    loop {
        let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(c) => {
                tracing::info!("agent: connected to {url}");
                backoff = Duration::from_millis(500);
                c
            }
            Err(e) => {
                tracing::warn!("agent: cannot connect to {url}: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        'connected: loop {
            every.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            backlog.push_back(collector.collect(now));
            if backlog.len() > MAX_BACKLOG {
                backlog.pop_front();
                tracing::warn!("agent: backlog full, dropped the oldest sample");
            }
            while let Some(batch) = backlog.front() {
                let frame = ipc(batch)?;
                if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                    tracing::warn!("agent: send failed: {e}; reconnecting");
                    break 'connected;
                }
                let ack = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => break Some(t),
                        Some(Ok(_)) => continue,
                        _ => break None,
                    }
                };
                let Some(ack) = ack else {
                    tracing::warn!("agent: connection closed before the ack; reconnecting");
                    break 'connected;
                };
                let v: serde_json::Value = serde_json::from_str(&ack).unwrap_or_default();
                if let Some(e) = v.get("error") {
                    return Err(format!("the server refused the agent's rows: {e}"));
                }
                if v["rejected"].as_u64().unwrap_or(0) > 0 {
                    tracing::warn!("agent: rows rejected: {}", v["errors"]);
                }
                backlog.pop_front();
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
