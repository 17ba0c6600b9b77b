//! The alert relations every query and view can read:
//!
//! - `tocsin_alert_events`: every transition (`pending`, `firing`, `resolved`) with its time,
//!   retained 7 days;
//! - `tocsin_alerts`: the current instances, a view over `tocsin_alert_state`, where the alert
//!   manager writes an instance's whole state whenever it changes (and at least daily, so that a
//!   long-firing alert outlives the 7-day retention).
//!
//! They are ordinary sources and views, made by tocsin at start (never recorded in the catalog
//! log, never droppable); their rows go through the ingest path and the WAL like any other.

use serde_json::Value;
use tocsin_connectors::push::{decode, Format};
use tokio::sync::mpsc;

use crate::alerts::Published;
use crate::state::AppRef;

/// The system sources, fed only by the alert manager.
pub const SOURCES: [&str; 2] = ["tocsin_alert_events", "tocsin_alert_state"];

/// Creates the relations.
pub const SQL: &str = "
CREATE SOURCE tocsin_alert_events (
  rule TEXT, labels TEXT, state TEXT, severity TEXT, summary TEXT, description TEXT,
  values_json TEXT, silenced BOOLEAN, active_since TIMESTAMP, firing_since TIMESTAMP, ts TIMESTAMP
) FROM HTTP WITH (retain = '7 days');
CREATE SOURCE tocsin_alert_state (
  rule TEXT, labels TEXT, state TEXT, severity TEXT, summary TEXT, description TEXT,
  values_json TEXT, silenced BOOLEAN, active_since TIMESTAMP, firing_since TIMESTAMP, ts TIMESTAMP
) FROM HTTP WITH (retain = '7 days');
CREATE VIEW tocsin_alerts AS
  SELECT rule, labels, state, severity, summary, description, values_json, silenced,
         active_since, firing_since, ts AS updated_at
  FROM (SELECT DISTINCT ON (rule, labels) * FROM tocsin_alert_state ORDER BY rule, labels, ts DESC) latest
  WHERE state <> 'resolved';
";

/// Writes the manager's rows into the relations, in the order they were made.
pub async fn publish(app: AppRef, mut rx: mpsc::UnboundedReceiver<Published>) {
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 1024).await > 0 {
        let (mut events, mut states) = (Vec::new(), Vec::new());
        for p in buf.drain(..) {
            match p {
                Published::Event(v) => events.push(v),
                Published::State(v) => states.push(v),
            }
        }
        for (source, rows) in [(SOURCES[0], events), (SOURCES[1], states)] {
            if !rows.is_empty() {
                write(&app, source, &rows).await;
            }
        }
    }
}

async fn write(app: &AppRef, source: &str, rows: &[Value]) {
    let Some(schema) = app.tocsin.engine().schema(source) else {
        return;
    };
    let payload: Vec<u8> = rows
        .iter()
        .flat_map(|r| {
            let mut line = serde_json::to_vec(r).unwrap_or_default();
            line.push(b'\n');
            line
        })
        .collect();
    let now = app.tocsin.engine().clock().now() as i64;
    let decoded = match decode(Format::Ndjson, &payload, &schema, now) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("{source}: alert rows could not be encoded: {e}");
            return;
        }
    };
    if let Some(e) = decoded.errors.first() {
        tracing::error!("{source}: an alert row could not be encoded: {}", e.message);
    }
    if let Err(e) = app
        .ingest
        .push(source, decoded.batch, decoded.rows, true)
        .await
    {
        tracing::warn!("{source}: {} alert row(s) not stored: {e}", rows.len());
    }
}
