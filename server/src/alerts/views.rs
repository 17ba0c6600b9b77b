//! What the alert manager shows: `GET /v1/alerts`, the Alertmanager API's view of firing
//! alerts, and the alert and sink metrics.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use tocsin_engine::fmt_ms;
use tocsin_sql::Silence;

use super::lifecycle::{self, fnv, render};
use super::store::{Instance, State};
use super::{AlertManager, RuleSpec};

/// An instance as `GET /v1/alerts` shows it.
pub fn alert_json(i: &Instance, spec: Option<&RuleSpec>) -> Value {
    let severity = spec.map(|s| s.options.severity.clone()).unwrap_or_default();
    let summary = spec
        .and_then(|s| s.options.summary.as_deref())
        .map(|t| render(t, i, i.state.as_str(), &severity))
        .unwrap_or_default();
    json!({
        "rule": i.rule,
        "labels": i.labels,
        "values": i.values,
        "state": i.state.as_str(),
        "severity": severity,
        "summary": summary,
        "silenced": i.silenced,
        "inhibited": i.inhibited,
        "active_since": fmt_ms(i.active_since),
        "firing_since": i.firing_since.map(fmt_ms),
    })
}

impl AlertManager {
    /// Current instances, for `GET /v1/alerts`.
    pub fn alerts(&self) -> Vec<Value> {
        let inner = self.lock();
        let mut list: Vec<(&String, &Instance)> = inner.store.instances.iter().collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        list.into_iter()
            .map(|(_, i)| alert_json(i, inner.rules.get(&i.rule).map(|r| &r.spec)))
            .collect()
    }

    /// The rules followed, by name.
    pub fn rule_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().rules.keys().cloned().collect();
        names.sort();
        names
    }

    /// Prometheus text: alerts by state; per rule its evaluations, changed rows and `lag` (ms,
    /// by name, from the engine); per sink the queue, deliveries and failures.
    pub fn render_metrics(&self, lag: &HashMap<String, u64>) -> String {
        let inner = self.lock();
        let mut out = crate::metrics::Exposition::default();
        let mut rules: Vec<(&String, &super::RuleState)> = inner.rules.iter().collect();
        rules.sort_by(|a, b| a.0.cmp(b.0));
        let per_rule: [PerRule; 2] = [
            (
                "tocsin_rule_evaluations_total",
                "Sets of output changes the alert manager took from the rule.",
                &|r| r.evaluations,
            ),
            (
                "tocsin_rule_output_changes_total",
                "Rows of the rule's output inserted or retracted.",
                &|r| r.changed_rows,
            ),
        ];
        for (name, help, value) in per_rule {
            out.family(name, "counter", help);
            for (rule, r) in &rules {
                out.sample(name, &[("rule", rule)], value(r));
            }
        }
        out.family(
            "tocsin_rule_lag_seconds",
            "gauge",
            "How far the rule's output is behind the newest accepted row.",
        );
        for (rule, _) in &rules {
            if let Some(ms) = lag.get(*rule) {
                out.sample(
                    "tocsin_rule_lag_seconds",
                    &[("rule", rule)],
                    *ms as f64 / 1000.0,
                );
            }
        }
        let count = |st: State| {
            inner
                .store
                .instances
                .values()
                .filter(|i| i.state == st)
                .count()
        };
        out.family("tocsin_alerts", "gauge", "Alert instances by state.");
        for st in [State::Pending, State::Firing] {
            out.sample("tocsin_alerts", &[("state", st.as_str())], count(st));
        }
        let mut names: Vec<&String> = inner.sinks.keys().collect();
        for sink in inner.store.by_sink.keys() {
            if !names.contains(&sink) {
                names.push(sink);
            }
        }
        names.sort();
        let queued = |n: &String| inner.store.by_sink.get(n).map_or(0, |s| s.len()) as u64;
        let per_sink: [PerSink; 4] = [
            (
                "tocsin_sink_queued",
                "gauge",
                "Notifications waiting in the outbox.",
                &queued,
            ),
            (
                "tocsin_sink_delivered_total",
                "counter",
                "Notifications delivered.",
                &|n| inner.sinks.get(n).map_or(0, |c| c.delivered),
            ),
            (
                "tocsin_sink_messages_total",
                "counter",
                "Messages sent: one per notification, or one per group for a sink with group_by.",
                &|n| inner.sinks.get(n).map_or(0, |c| c.messages),
            ),
            (
                "tocsin_sink_failures_total",
                "counter",
                "Failed delivery attempts.",
                &|n| inner.sinks.get(n).map_or(0, |c| c.failures),
            ),
        ];
        for (name, kind, help, value) in per_sink {
            out.family(name, kind, help);
            for n in &names {
                out.sample(name, &[("sink", n)], value(n));
            }
        }
        out.finish()
    }
}

/// Name, help and reading of one per-rule counter.
type PerRule<'a> = (&'a str, &'a str, &'a dyn Fn(&super::RuleState) -> u64);

/// Name, type, help and reading of one per-sink metric.
type PerSink<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&String) -> u64);

/// A firing alert as the Alertmanager API shows it.
pub struct FiringAlert {
    /// `alertname` (the rule), `severity` when the rule has one, and the instance's labels.
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description`, rendered, when the rule has them.
    pub annotations: BTreeMap<String, String>,
    /// The rule's sinks.
    pub sinks: Vec<String>,
    /// Stable per instance: rule and labels.
    pub fingerprint: String,
    pub firing_since: i64,
    /// When its state was last written.
    pub updated: i64,
    /// Until when it holds without news: as the Alertmanager webhook format's `endsAt`.
    pub valid_until: i64,
    /// The active silences that match it.
    pub silenced_by: Vec<String>,
}

impl AlertManager {
    /// Firing alerts (pending ones are not sent anywhere yet, so Alertmanager clients do not see
    /// them), ordered by fingerprint.
    pub fn firing(&self) -> Vec<FiringAlert> {
        let inner = self.lock();
        let now = self.now();
        let mut out: Vec<FiringAlert> = inner
            .store
            .instances
            .values()
            .filter(|i| i.state == State::Firing)
            .map(|i| {
                let spec = inner.rules.get(&i.rule).map(|r| &r.spec);
                let severity = spec.map(|s| s.options.severity.clone()).unwrap_or_default();
                let mut labels = i.labels.clone();
                labels.insert("alertname".into(), i.rule.clone());
                if !severity.is_empty() {
                    labels.insert("severity".into(), severity.clone());
                }
                let mut annotations = BTreeMap::new();
                if let Some(o) = spec.map(|s| &s.options) {
                    for (k, t) in [("summary", &o.summary), ("description", &o.description)] {
                        if let Some(t) = t {
                            annotations.insert(k.to_string(), render(t, i, "firing", &severity));
                        }
                    }
                }
                let labels_json = serde_json::to_string(&i.labels).unwrap_or_default();
                let firing_since = i.firing_since.unwrap_or(i.active_since);
                FiringAlert {
                    labels,
                    annotations,
                    sinks: spec.map(|s| s.options.sinks.clone()).unwrap_or_default(),
                    fingerprint: format!("{:016x}", fnv(&[&i.rule, &labels_json])),
                    firing_since,
                    updated: i.published.max(firing_since),
                    valid_until: now.saturating_add(
                        2 * spec.map_or(0, |s| s.options.repeat.as_millis() as i64),
                    ),
                    silenced_by: lifecycle::silenced_by(&inner.silences, i, &severity, now)
                        .cloned()
                        .collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        out
    }

    /// The silences in the catalog, by name.
    pub fn silences(&self) -> Vec<(String, Silence)> {
        self.lock().silences.clone()
    }
}
