//! The outbox as delivery sees it: the next notification of a sink, or the next group that is
//! due for a grouping sink, and what a delivery or a failure records.

use std::collections::HashMap;

use tocsin_connectors::sink::Grouping;
use tocsin_sql::SinkStatus;
use tokio::sync::watch;

use super::store::{Changes, Queued};
use super::{AlertManager, Inner};

/// What a grouping sink is to do next.
#[derive(Debug)]
pub enum NextGroup {
    /// Nothing is queued.
    Idle,
    /// A group is due at this time.
    Wait(i64),
    /// This group's message is due: its queued notifications, oldest first.
    Due { key: String, queued: Vec<Queued> },
}

impl AlertManager {
    /// The oldest notifications queued for a sink, at most `max`.
    pub fn next_for(&self, sink: &str, max: usize) -> Vec<Queued> {
        let inner = self.lock();
        let Some(seqs) = inner.store.by_sink.get(sink) else {
            return Vec::new();
        };
        seqs.iter()
            .take(max)
            .filter_map(|s| inner.store.outbox.get(s).cloned())
            .collect()
    }

    /// The notifications queued for a sink after outbox seq `after`, oldest first.
    pub fn queued_after(&self, sink: &str, after: u64) -> Vec<Queued> {
        let inner = self.lock();
        let Some(seqs) = inner.store.by_sink.get(sink) else {
            return Vec::new();
        };
        seqs.range(after + 1..)
            .filter_map(|s| inner.store.outbox.get(s).cloned())
            .collect()
    }

    /// For a grouping sink: the group whose message is due first, if one is due at `now` (the
    /// group's queued notifications, oldest first), else when the next one will be.
    pub fn next_group(&self, sink: &str, grouping: &Grouping, now: i64) -> NextGroup {
        let mut inner = self.lock();
        let interval = grouping.interval.as_millis() as i64;
        let wait = grouping.wait.as_millis() as i64;
        // Groups quiet for a whole interval start over.
        inner
            .store
            .groups
            .retain(|(s, _), at| s != sink || *at + interval > now);
        let Some(seqs) = inner.store.by_sink.get(sink) else {
            return NextGroup::Idle;
        };
        let mut groups: HashMap<String, Vec<&Queued>> = HashMap::new();
        for q in seqs.iter().filter_map(|s| inner.store.outbox.get(s)) {
            groups
                .entry(grouping.key(&q.notification))
                .or_default()
                .push(q);
        }
        let mut first: Option<(i64, String)> = None;
        for (key, queued) in &groups {
            let oldest = queued.iter().map(|q| q.queued_at).min().unwrap_or(now);
            let due = match inner.store.groups.get(&(sink.to_string(), key.clone())) {
                Some(sent) => (sent + interval).max(oldest),
                None => oldest + wait,
            };
            if first.as_ref().is_none_or(|(d, _)| due < *d) {
                first = Some((due, key.clone()));
            }
        }
        match first {
            None => NextGroup::Idle,
            Some((due, _)) if due > now => NextGroup::Wait(due),
            Some((_, key)) => {
                let queued: Vec<Queued> = groups[&key].iter().map(|q| (*q).clone()).collect();
                NextGroup::Due { key, queued }
            }
        }
    }

    /// A group's message was delivered: its notifications leave the outbox, and the group's
    /// next message waits `group_interval` from `now`.
    pub fn delivered_group(&self, sink: &str, key: &str, seqs: Vec<u64>, now: i64) {
        let mut inner = self.lock();
        let c = inner.sinks.entry(sink.to_string()).or_default();
        c.delivered += seqs.len() as u64;
        c.messages += 1;
        c.last_error = None;
        let changes = Changes {
            done: seqs,
            groups: vec![(sink.to_string(), key.to_string(), now)],
            ..Default::default()
        };
        if let Err(e) = inner.store.apply(changes) {
            tracing::error!("alert store: a delivery could not be recorded: {e}");
        }
    }

    /// Waits until the outbox may have new entries.
    pub fn outbox_changes(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    /// The receiver took these notifications (one message each): they leave the outbox (one
    /// fsync).
    pub fn delivered(&self, sink: &str, seqs: Vec<u64>) {
        Self::record_delivered(&mut self.lock(), sink, seqs);
    }

    /// [`AlertManager::delivered`] at once if nothing holds the manager (`seqs` is emptied),
    /// else nothing (an alert storm's changes are being taken): they are recorded later, with
    /// the next ones.
    pub fn delivered_if_free(&self, sink: &str, seqs: &mut Vec<u64>) {
        if let Some(mut inner) = self.try_lock() {
            Self::record_delivered(&mut inner, sink, std::mem::take(seqs));
        }
    }

    fn record_delivered(inner: &mut Inner, sink: &str, seqs: Vec<u64>) {
        let c = inner.sinks.entry(sink.to_string()).or_default();
        c.delivered += seqs.len() as u64;
        c.messages += seqs.len() as u64;
        c.last_error = None;
        let changes = Changes {
            done: seqs,
            ..Default::default()
        };
        if let Err(e) = inner.store.apply(changes) {
            tracing::error!("alert store: a delivery could not be recorded: {e}");
        }
    }

    /// Notifications another replica delivered leave the outbox (see `deliver::Gate`).
    pub fn done_elsewhere(&self, sink: &str, seqs: Vec<u64>) {
        let mut inner = self.lock();
        let c = inner.sinks.entry(sink.to_string()).or_default();
        c.delivered_elsewhere += seqs.len() as u64;
        let changes = Changes {
            done: seqs,
            ..Default::default()
        };
        if let Err(e) = inner.store.apply(changes) {
            tracing::error!("alert store: a delivery could not be recorded: {e}");
        }
    }

    pub fn failed(&self, sink: &str, error: &str) {
        let mut inner = self.lock();
        let c = inner.sinks.entry(sink.to_string()).or_default();
        c.failures += 1;
        c.last_error = Some(error.to_string());
    }

    pub fn sink_status(&self, sink: &str) -> SinkStatus {
        let inner = self.lock();
        let queued = inner.store.by_sink.get(sink).map_or(0, |s| s.len()) as u64;
        let c = inner.sinks.get(sink);
        SinkStatus {
            queued,
            delivered: c.map_or(0, |c| c.delivered),
            failures: c.map_or(0, |c| c.failures),
            last_error: c.and_then(|c| c.last_error.clone()),
        }
    }
}
