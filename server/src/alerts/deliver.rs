//! Delivery: one task per sink takes the sink's oldest queued notification, hands it to the
//! connector and removes it from the outbox only once the receiver took it. Failures are
//! retried with capped exponential backoff (0.5 s doubling up to 5 min) for as long as the
//! receiver is down; the sink's queue waits behind the failing notification, so a receiver sees
//! an alert's transitions in order. A sink with `group_by` sends one message per group when the
//! group is due (`group_wait`, `group_interval`); its notifications leave the outbox together,
//! once the receiver took the message, so a restart neither loses nor repeats a group.

use std::time::Duration;

use std::collections::HashMap;

use tocsin_connectors::sink::{Group, Grouping, Notification, Sink};
use tocsin_sql::{Options, SinkKinds, SinkStatus};

use crate::alerts::store::Queued;
use crate::alerts::{AlertManager, NextGroup};

/// Retry delays: from the first to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Delivers the notifications queued for sink `name` until the task is stopped.
pub async fn deliver(
    manager: std::sync::Arc<AlertManager>,
    name: String,
    connector: String,
    options: Options,
) {
    let built = match tocsin_connectors::registry::build_sink(&connector, &name, &options) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("sink {name}: cannot start: {e}");
            return;
        }
    };
    match &built.grouping {
        None => one_by_one(&manager, &name, built.sink.as_ref()).await,
        Some(g) => grouped(&manager, &name, built.sink.as_ref(), g).await,
    }
}

/// Each notification by itself, in outbox order.
async fn one_by_one(manager: &AlertManager, name: &str, sink: &dyn Sink) {
    let mut changes = manager.outbox_changes();
    let mut delay = FIRST_RETRY;
    loop {
        let Some(q) = manager.next_for(name) else {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        match sink.send(&q.notification).await {
            Ok(()) => {
                manager.delivered(name, q.seq);
                delay = FIRST_RETRY;
            }
            Err(e) => {
                tracing::warn!(
                    "sink {name}: delivery of {} ({} {}) failed, retrying in {delay:?}: {e}",
                    q.notification.id,
                    q.notification.rule,
                    q.notification.state.as_str()
                );
                manager.failed(name, &e.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One message per group, when the group is due (see [`tocsin_connectors::sink::group`]).
async fn grouped(manager: &AlertManager, name: &str, sink: &dyn Sink, grouping: &Grouping) {
    let mut changes = manager.outbox_changes();
    let mut delay = FIRST_RETRY;
    loop {
        let now = manager.now();
        let (key, queued) = match manager.next_group(name, grouping, now) {
            NextGroup::Due { key, queued } => (key, queued),
            NextGroup::Idle => {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            NextGroup::Wait(at) => {
                let wait = Duration::from_millis((at - now).clamp(1, 60_000) as u64);
                if let Ok(Err(_)) = tokio::time::timeout(wait, changes.changed()).await {
                    return;
                }
                continue;
            }
        };
        let group = make_group(name, grouping, key, &queued);
        match sink.send_group(&group).await {
            Ok(()) => {
                let seqs = queued.iter().map(|q| q.seq).collect();
                manager.delivered_group(name, &group.key, seqs, manager.now());
                delay = FIRST_RETRY;
            }
            Err(e) => {
                tracing::warn!(
                    "sink {name}: delivery of group {} ({} alert(s)) failed, retrying in {delay:?}: {e}",
                    group.key,
                    group.alerts.len()
                );
                manager.failed(name, &e.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// A group's message from its queued notifications: the newest of each alert, in the order the
/// alerts first appear.
fn make_group(sink: &str, grouping: &Grouping, key: String, queued: &[Queued]) -> Group {
    let mut order: Vec<(&str, &std::collections::BTreeMap<String, String>)> = Vec::new();
    let mut newest: HashMap<(&str, &std::collections::BTreeMap<String, String>), &Notification> =
        HashMap::new();
    for q in queued {
        let n = &q.notification;
        let id = (n.rule.as_str(), &n.labels);
        if newest.insert(id, n).is_none() {
            order.push(id);
        }
    }
    Group {
        sink: sink.to_string(),
        labels: queued
            .first()
            .map(|q| grouping.labels(&q.notification))
            .unwrap_or_default(),
        key,
        alerts: order.iter().map(|id| newest[id].clone()).collect(),
    }
}

/// `SHOW SINKS` asks the manager how delivery goes.
pub struct Sinks(pub std::sync::Arc<AlertManager>);

impl SinkKinds for Sinks {
    fn status(&self, name: &str) -> SinkStatus {
        self.0.sink_status(name)
    }
}
