//! The alert relations every query and view can read:
//!
//! - `tocsin_alerts`: the current instances, one row per instance, replaced in place when the
//!   instance changes (a table, see [`tocsin_engine::table`]) and removed when it resolves. It is
//!   rebuilt from the alert store at start, so it never goes through the WAL.
//! - `tocsin_alert_events`: every transition (`pending`, `firing`, `resolved`) with its time,
//!   retained 7 days; an ordinary source whose rows go through the ingest path and the WAL.
//!
//! Both are made by tocsin at start (never recorded in the catalog log, never droppable).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;
use tocsin_connectors::push::{decode, Format};
use tocsin_engine::{Row, TableWrite};
use tocsin_sql::planner::ts_type;
use tocsin_sql::Tocsin;
use tokio::sync::mpsc;

use crate::alerts::Published;
use crate::state::AppRef;

/// The system source of transitions.
pub const EVENTS: &str = "tocsin_alert_events";
/// The table of current instances.
pub const ALERTS: &str = "tocsin_alerts";
/// The system sources, fed only by the alert manager.
pub const SOURCES: [&str; 1] = [EVENTS];

/// `tocsin_alerts`'s columns; `rule` and `labels` are its key.
pub const ALERTS_COLUMNS: &str = "rule TEXT, labels TEXT, state TEXT, severity TEXT, \
summary TEXT, description TEXT, values_json TEXT, silenced BOOLEAN, inhibited BOOLEAN, \
active_since TIMESTAMP, firing_since TIMESTAMP, updated_at TIMESTAMP";

fn alerts_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let flag = |n: &str| Field::new(n, DataType::Boolean, true);
    let time = |n: &str| Field::new(n, ts_type(), true);
    Arc::new(Schema::new(vec![
        text("rule"),
        text("labels"),
        text("state"),
        text("severity"),
        text("summary"),
        text("description"),
        text("values_json"),
        flag("silenced"),
        flag("inhibited"),
        time("active_since"),
        time("firing_since"),
        time("updated_at"),
    ]))
}

/// Creates the relations.
pub async fn create(tocsin: &Tocsin) -> tocsin_sql::Result<()> {
    tocsin
        .create_system(
            "CREATE SOURCE tocsin_alert_events (
  rule TEXT, labels TEXT, state TEXT, severity TEXT, summary TEXT, description TEXT,
  values_json TEXT, silenced BOOLEAN, inhibited BOOLEAN, active_since TIMESTAMP,
  firing_since TIMESTAMP, ts TIMESTAMP
) FROM HTTP WITH (retain = '7 days')",
        )
        .await?;
    tocsin
        .create_system_table(
            ALERTS,
            alerts_schema(),
            &["rule", "labels"],
            &format!(
                "CREATE TABLE {ALERTS} ({ALERTS_COLUMNS}) -- maintained by tocsin: one row per \
                 alert instance, keyed by rule and labels"
            ),
        )
        .await
}

/// Writes the manager's changes into the relations, in the order they were made: transitions
/// through the ingest path, instances straight into the table (the newest row of each key of a
/// batch winning).
pub async fn publish(app: AppRef, mut rx: mpsc::UnboundedReceiver<Published>) {
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 4096).await > 0 {
        let mut events = Vec::new();
        let mut alerts: HashMap<Row, Option<Row>> = HashMap::new();
        for p in buf.drain(..) {
            match p {
                Published::Event(v) => events.push(v),
                Published::Alert { key, row } => {
                    alerts.insert(key, row);
                }
            }
        }
        if !alerts.is_empty() {
            let mut write = TableWrite::default();
            for (key, row) in alerts {
                match row {
                    Some(r) => write.put.push(r),
                    None => write.delete.push(key),
                }
            }
            if let Err(e) = app.tocsin.engine().write_table(ALERTS, write) {
                tracing::error!("{ALERTS}: alert rows could not be written: {e}");
            }
        }
        if !events.is_empty() {
            write_events(&app, &events).await;
        }
    }
}

async fn write_events(app: &AppRef, rows: &[Value]) {
    let Some(schema) = app.tocsin.engine().schema(EVENTS) else {
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
            tracing::error!("{EVENTS}: alert rows could not be encoded: {e}");
            return;
        }
    };
    if let Some(e) = decoded.errors.first() {
        tracing::error!("{EVENTS}: an alert row could not be encoded: {}", e.message);
    }
    if let Err(e) = app
        .ingest
        .push(EVENTS, decoded.batch, decoded.rows, true)
        .await
    {
        tracing::warn!("{EVENTS}: {} alert row(s) not stored: {e}", rows.len());
    }
}
