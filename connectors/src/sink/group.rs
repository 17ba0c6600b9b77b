//! Grouped notifications, in the style of Alertmanager: a sink with `group_by` sends one message
//! per group of alerts instead of one per alert.
//!
//! - `group_by`: label names (`rule` is the rule's name, `severity` its severity); the alerts
//!   with the same values of them form a group. `'...'` groups nothing: each alert is a group
//!   of its own (it still waits `group_wait`, so its quick transitions are sent together).
//! - `group_wait` (default 10s): a group's first message waits this long after its first
//!   notification, for the rest of a storm to join.
//! - `group_interval` (default 5m): after a group's message, the next one about the same group
//!   waits this long. A group quiet for a whole `group_interval` starts over with `group_wait`.
//!
//! A message carries the newest notification of every alert of the group that changed since its
//! last message, with counts of firing and resolved alerts.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{fnv, rfc3339, Notification, SinkOptions, Transition};

/// How a sink groups its notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// The label names that make a group; `None` for `'...'` (each alert alone).
    pub by: Option<Vec<String>>,
    pub wait: Duration,
    pub interval: Duration,
}

impl Grouping {
    /// The grouping options of a sink: `None` without `group_by` (every notification is sent
    /// by itself, at once).
    pub fn from_options(options: &SinkOptions) -> Result<Option<Grouping>, String> {
        let by = options.get("group_by");
        let wait = options.duration("group_wait", Duration::from_secs(10))?;
        let interval = options.duration("group_interval", Duration::from_secs(300))?;
        let Some(by) = by else {
            for key in ["group_wait", "group_interval"] {
                if options.has(key) {
                    return Err(format!(
                        "option '{key}' needs group_by, e.g. group_by = 'rule' (or '...' for each \
                         alert alone)"
                    ));
                }
            }
            return Ok(None);
        };
        let by = match by.trim() {
            "..." => None,
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|s| s.trim().to_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect();
                if names.is_empty() {
                    return Err(
                        "option 'group_by' names no label: use e.g. 'rule', 'rule, host' or '...'"
                            .into(),
                    );
                }
                Some(names)
            }
        };
        Ok(Some(Grouping { by, wait, interval }))
    }

    /// The labels that make `n`'s group: the `group_by` labels (an alert without one has it
    /// empty), or for `'...'` the alert's own identity (rule and labels).
    pub fn labels(&self, n: &Notification) -> BTreeMap<String, String> {
        let value = |name: &str| match name {
            "rule" | "alertname" => n.rule.clone(),
            "severity" => n.severity.clone(),
            _ => n.labels.get(name).cloned().unwrap_or_default(),
        };
        match &self.by {
            Some(names) => names.iter().map(|l| (l.clone(), value(l))).collect(),
            None => {
                let mut all = n.labels.clone();
                all.insert("rule".into(), n.rule.clone());
                all
            }
        }
    }

    /// The stable text key of `n`'s group.
    pub fn key(&self, n: &Notification) -> String {
        serde_json::to_string(&self.labels(n)).unwrap_or_default()
    }
}

/// The notifications of one group, sent as one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The sink's name (Alertmanager's `receiver`).
    pub sink: String,
    /// The values of the `group_by` labels.
    pub labels: BTreeMap<String, String>,
    /// The group's key (stable for the same labels).
    pub key: String,
    /// The newest notification of each alert that changed, in the order they were made.
    pub alerts: Vec<Notification>,
}

impl Group {
    pub fn firing(&self) -> usize {
        self.alerts
            .iter()
            .filter(|n| n.state == Transition::Firing)
            .count()
    }

    pub fn resolved(&self) -> usize {
        self.alerts.len() - self.firing()
    }

    /// Stable for the same group and the same notifications (so a receiver can drop a message
    /// delivered twice): a hash of the key and the notifications' ids.
    pub fn id(&self) -> String {
        let mut parts = vec![self.key.as_str()];
        parts.extend(self.alerts.iter().map(|n| n.id.as_str()));
        format!("{:016x}", fnv(&parts))
    }

    /// `[FIRING:3, RESOLVED:1] rule=high_cpu`.
    pub fn subject(&self) -> String {
        let mut counts = Vec::new();
        if self.firing() > 0 {
            counts.push(format!("FIRING:{}", self.firing()));
        }
        if self.resolved() > 0 {
            counts.push(format!("RESOLVED:{}", self.resolved()));
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("[{}] {}", counts.join(", "), labels.join(", "))
    }

    /// Plain text: the subject, then each alert's own text.
    pub fn text(&self) -> String {
        let mut t = format!(
            "{}\n\n{} alert(s): {} firing, {} resolved.\n",
            self.subject(),
            self.alerts.len(),
            self.firing(),
            self.resolved()
        );
        for (i, n) in self.alerts.iter().enumerate() {
            t.push_str(&format!(
                "\n-- {} of {} --------------------------------\n",
                i + 1,
                self.alerts.len()
            ));
            t.push_str(&n.text());
        }
        t
    }

    /// Alertmanager's webhook payload (version 4), so that receivers written for Alertmanager
    /// parse it: `status`, `groupLabels`, `commonLabels`, `commonAnnotations` and `alerts`.
    pub fn to_json(&self) -> serde_json::Value {
        let alerts: Vec<serde_json::Value> = self.alerts.iter().map(webhook_alert).collect();
        let common = |field: &str| -> serde_json::Map<String, serde_json::Value> {
            let mut it = alerts.iter().filter_map(|a| a[field].as_object());
            let Some(first) = it.next() else {
                return Default::default();
            };
            let mut out = first.clone();
            for other in it {
                out.retain(|k, v| other.get(k) == Some(v));
            }
            out
        };
        serde_json::json!({
            "version": "4",
            "groupKey": format!("{}:{}", self.sink, self.key),
            "id": self.id(),
            "truncatedAlerts": 0,
            "status": if self.firing() > 0 { "firing" } else { "resolved" },
            "receiver": self.sink,
            "groupLabels": self.labels,
            "commonLabels": common("labels"),
            "commonAnnotations": common("annotations"),
            "externalURL": "",
            "alerts": alerts,
        })
    }
}

/// Labels of an alert as Alertmanager has them: the alert's labels plus `alertname` (the rule)
/// and `severity`.
pub fn alert_labels(n: &Notification) -> serde_json::Map<String, serde_json::Value> {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), n.rule.clone().into());
    labels.insert("severity".into(), n.severity.clone().into());
    for (k, v) in &n.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    labels
}

/// Annotations of an alert as tocsin gives them to Alertmanager: its values, summary,
/// description and tocsin's notification id.
pub fn alert_annotations(n: &Notification) -> serde_json::Map<String, serde_json::Value> {
    let mut annotations = serde_json::Map::new();
    for (k, v) in &n.values {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        annotations.insert(k.clone(), v.into());
    }
    if !n.summary.is_empty() {
        annotations.insert("summary".into(), n.summary.clone().into());
    }
    if !n.description.is_empty() {
        annotations.insert("description".into(), n.description.clone().into());
    }
    annotations.insert("tocsin_id".into(), n.id.clone().into());
    annotations
}

/// One alert of Alertmanager's webhook payload.
fn webhook_alert(n: &Notification) -> serde_json::Value {
    let labels = alert_labels(n);
    let identity = serde_json::to_string(&labels).unwrap_or_default();
    serde_json::json!({
        "status": n.state.as_str(),
        "labels": labels,
        "annotations": alert_annotations(n),
        "startsAt": rfc3339(n.active_since),
        // Alertmanager's zero time for an alert that has not ended.
        "endsAt": n.resolved_at.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339),
        "generatorURL": "",
        "fingerprint": format!("{:016x}", fnv(&[&identity])),
    })
}
