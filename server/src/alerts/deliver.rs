//! Delivery: one task per sink takes the sink's oldest queued notification, hands it to the
//! connector and removes it from the outbox only once the receiver took it. Failures are
//! retried with capped exponential backoff (0.5 s doubling up to 5 min) for as long as the
//! receiver is down; the sink's queue waits behind the failing notification, so a receiver sees
//! an alert's transitions in order. A sink with `group_by` sends one message per group when the
//! group is due (`group_wait`, `group_interval`); its notifications leave the outbox together,
//! once the receiver took the message, so a restart neither loses nor repeats a group.
//!
//! On a replica a [`Gate`] decides before each send: the replicas share what they delivered, so
//! that each notification reaches its receiver once (see `cluster::notices`).

use std::time::Duration;

use std::collections::HashMap;

use tocsin_connectors::sink::{Group, Grouping, Notification, Sink};
use tocsin_sql::{Options, SinkKinds, SinkStatus};

use crate::alerts::store::Queued;
use crate::alerts::{AlertManager, NextGroup};

/// Retry delays: from the first to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What a replica is to do with a queued notification.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Send it, with this id.
    Send(String),
    /// Another replica delivered it.
    Skip,
    /// Ask again at this time (epoch ms), unless [`Gate::changed`] says so first.
    Wait(i64),
}

/// Decides, on a replica, whether and when this one sends a notification (see
/// `cluster::notices`).
#[async_trait::async_trait]
pub trait Gate: Send + Sync {
    /// Notifications queued for `sink` since the last call: the other replicas are told.
    fn queued(&self, sink: &str, queued: &[Queued]);
    fn decide(&self, sink: &str, q: &Queued, now: i64) -> Decision;
    /// The receiver took `n` (with the id it was sent with).
    fn delivered(&self, sink: &str, n: &Notification);
    /// Returns when what the gate knows changed.
    async fn changed(&self);
}

/// Delivers the notifications queued for sink `name` until the task is stopped.
pub async fn deliver(
    manager: std::sync::Arc<AlertManager>,
    name: String,
    connector: String,
    options: Options,
    gate: Option<std::sync::Arc<dyn Gate>>,
) {
    let built = match tocsin_connectors::registry::build_sink(&connector, &name, &options) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("sink {name}: cannot start: {e}");
            return;
        }
    };
    let gate = gate.as_deref();
    match &built.grouping {
        None => one_by_one(&manager, &name, built.sink.as_ref(), gate).await,
        Some(g) => grouped(&manager, &name, built.sink.as_ref(), g, gate).await,
    }
}

/// Waits until `at` (epoch ms), the outbox or the gate changes; false when the outbox is gone.
async fn wait_until(
    manager: &AlertManager,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    gate: Option<&dyn Gate>,
    at: i64,
) -> bool {
    let wait = Duration::from_millis((at - manager.now()).clamp(1, 60_000) as u64);
    let gate_changed = async {
        match gate {
            Some(g) => g.changed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        c = changes.changed() => c.is_ok(),
        _ = gate_changed => true,
    }
}

/// Tells the gate of the notifications queued for the sink after `announced` (an outbox seq):
/// the gate decides only about notifications it was told of.
fn announce(manager: &AlertManager, sink: &str, gate: Option<&dyn Gate>, announced: &mut u64) {
    if let Some(g) = gate {
        let new = manager.queued_after(sink, *announced);
        if let Some(last) = new.last() {
            *announced = last.seq;
            g.queued(sink, &new);
        }
    }
}

/// Notifications a one-by-one sink takes from the outbox at a time. Each is recorded as
/// delivered as soon as the receiver took it, unless the manager is busy taking an alert storm's
/// changes: then they are recorded together (one wait for the manager and one fsync), and a
/// crash meanwhile sends them again (at least once).
const BATCH: usize = 64;

/// Each notification by itself, in outbox order.
async fn one_by_one(manager: &AlertManager, name: &str, sink: &dyn Sink, gate: Option<&dyn Gate>) {
    let mut changes = manager.outbox_changes();
    let mut delay = FIRST_RETRY;
    let mut announced = 0;
    loop {
        let queued = manager.next_for(name, BATCH);
        if queued.is_empty() {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        // Everything queued so far is told before anything is decided.
        announce(manager, name, gate, &mut announced);
        let (mut sent, mut skipped) = (Vec::new(), Vec::new());
        let (mut wait, mut failed) = (None, None);
        for q in queued {
            let mut n = q.notification.clone();
            match gate.map(|g| g.decide(name, &q, manager.now())) {
                None => {}
                Some(Decision::Send(id)) => n.id = id,
                Some(Decision::Skip) => {
                    skipped.push(q.seq);
                    continue;
                }
                // The later ones wait behind it, in outbox order.
                Some(Decision::Wait(at)) => {
                    wait = Some(at);
                    break;
                }
            }
            match sink.send(&n).await {
                Ok(()) => {
                    sent.push(q.seq);
                    manager.delivered_if_free(name, &mut sent);
                    if let Some(g) = gate {
                        g.delivered(name, &n);
                    }
                    delay = FIRST_RETRY;
                }
                Err(e) => {
                    tracing::warn!(
                        "sink {name}: delivery of {} ({} {}) failed, retrying in {delay:?}: {e}",
                        q.notification.id,
                        q.notification.rule,
                        q.notification.state.as_str()
                    );
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if !skipped.is_empty() {
            manager.done_elsewhere(name, skipped);
        }
        if !sent.is_empty() {
            manager.delivered(name, sent);
        }
        if let Some(e) = failed {
            manager.failed(name, &e);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        } else if let Some(at) = wait {
            if !wait_until(manager, &mut changes, gate, at).await {
                return;
            }
        }
    }
}

/// One message per group, when the group is due (see [`tocsin_connectors::sink::group`]). On a
/// replica, the group waits for the latest of its notifications' turns, and leaves out those
/// another replica delivered.
async fn grouped(
    manager: &AlertManager,
    name: &str,
    sink: &dyn Sink,
    grouping: &Grouping,
    gate: Option<&dyn Gate>,
) {
    let mut changes = manager.outbox_changes();
    let mut delay = FIRST_RETRY;
    let mut announced = 0;
    loop {
        announce(manager, name, gate, &mut announced);
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
        let mut queued = queued;
        if let Some(g) = gate {
            // The group's notifications are told before anything is decided about them.
            announce(manager, name, gate, &mut announced);
            let mut later = None;
            let mut skipped = Vec::new();
            let mut kept = Vec::new();
            for mut q in queued {
                match g.decide(name, &q, now) {
                    Decision::Send(id) => {
                        q.notification.id = id;
                        kept.push(q);
                    }
                    Decision::Skip => skipped.push(q.seq),
                    Decision::Wait(at) => later = Some(later.map_or(at, |l: i64| l.max(at))),
                }
            }
            if !skipped.is_empty() {
                manager.done_elsewhere(name, skipped);
            }
            if let Some(at) = later {
                if !wait_until(manager, &mut changes, gate, at).await {
                    return;
                }
                continue;
            }
            if kept.is_empty() {
                continue;
            }
            queued = kept;
        }
        let group = make_group(name, grouping, key, &queued);
        match sink.send_group(&group).await {
            Ok(()) => {
                let seqs = queued.iter().map(|q| q.seq).collect();
                manager.delivered_group(name, &group.key, seqs, manager.now());
                if let Some(g) = gate {
                    for q in &queued {
                        g.delivered(name, &q.notification);
                    }
                }
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
