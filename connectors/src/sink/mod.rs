//! Notification sinks: where alert notifications go. Every connector lives in its own folder
//! behind the one [`Sink`] trait; [`build`] makes a sink from the options of `CREATE SINK`
//! (and so also checks them when the sink is created).
//!
//! | connector | delivers |
//! |---|---|
//! | `EMAIL` | a plain-text email per notification (or per group), over SMTP (lettre) |
//! | `WEBHOOK` | an HTTP POST per notification (or per group): tocsin's JSON, Alertmanager's API v2 alerts, or a Slack message |
//! | `LOG` | a structured log line |
//!
//! Every sink also takes the grouping options of [`group`] (`group_by`, `group_wait`,
//! `group_interval`); [`crate::registry::build_sink`] reads them.

pub mod email;
pub mod group;
pub mod log;
pub mod webhook;

pub use group::{Group, Grouping};

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a notification tells: an alert started firing (or still fires, for a repeat) or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Firing,
    Resolved,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Firing => "firing",
            Transition::Resolved => "resolved",
        }
    }
}

/// One notification about one alert instance. Times are epoch milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable across retries and restarts: the same transition of the same alert always has the
    /// same id (rule, labels, state and the alert's start), so receivers can drop duplicates.
    pub id: String,
    pub rule: String,
    pub state: Transition,
    pub severity: String,
    /// What identifies the alert instance.
    pub labels: BTreeMap<String, String>,
    /// The rule's other columns, as of the notification.
    pub values: BTreeMap<String, serde_json::Value>,
    pub summary: String,
    pub description: String,
    /// When the rule's row appeared (the alert became pending).
    pub active_since: i64,
    pub firing_since: Option<i64>,
    pub resolved_at: Option<i64>,
    /// 0 for the transition itself, n for the n-th reminder of a firing alert (same id).
    pub repeat: u32,
    /// For a firing alert: until when it is known to fire without a further notification (the next
    /// reminder is due well before). Receivers that expire alerts (Alertmanager) use it.
    pub valid_until: Option<i64>,
}

/// FNV-1a, 64 bits, over `parts` each followed by a zero byte: stable across versions and
/// platforms, for notification ids, group ids and alert fingerprints.
pub fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

impl Notification {
    /// `[FIRING] rule: summary` (the labels when there is no summary).
    pub fn subject(&self) -> String {
        let what = if self.summary.is_empty() {
            self.labels_text()
        } else {
            self.summary.clone()
        };
        let tag = self.state.as_str().to_uppercase();
        if what.is_empty() {
            format!("[{tag}] {}", self.rule)
        } else {
            format!("[{tag}] {}: {what}", self.rule)
        }
    }

    /// `host=db1, mount=/`.
    pub fn labels_text(&self) -> String {
        let l: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        l.join(", ")
    }

    /// A plain-text rendering: subject, state, times, labels, values, description and id.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(t, "{}\n", self.subject());
        let _ = writeln!(t, "rule:          {}", self.rule);
        let _ = writeln!(t, "state:         {}", self.state.as_str());
        let _ = writeln!(t, "severity:      {}", self.severity);
        let _ = writeln!(t, "active since:  {}", rfc3339(self.active_since));
        if let Some(f) = self.firing_since {
            let _ = writeln!(t, "firing since:  {}", rfc3339(f));
        }
        if let Some(r) = self.resolved_at {
            let _ = writeln!(t, "resolved at:   {}", rfc3339(r));
        }
        if self.repeat > 0 {
            let _ = writeln!(t, "reminder:      #{}", self.repeat);
        }
        let _ = writeln!(t, "\nlabels:");
        for (k, v) in &self.labels {
            let _ = writeln!(t, "  {k} = {v}");
        }
        if !self.values.is_empty() {
            let _ = writeln!(t, "\nvalues:");
            for (k, v) in &self.values {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = writeln!(t, "  {k} = {v}");
            }
        }
        if !self.description.is_empty() {
            let _ = writeln!(t, "\n{}", self.description);
        }
        let _ = writeln!(t, "\nnotification id: {}", self.id);
        t
    }

    /// tocsin's JSON payload (docs/alerts.md): times as RFC 3339 strings.
    pub fn to_json(&self) -> serde_json::Value {
        let time = |t: Option<i64>| t.map_or(serde_json::Value::Null, |t| rfc3339(t).into());
        serde_json::json!({
            "version": 1,
            "id": self.id,
            "rule": self.rule,
            "state": self.state.as_str(),
            "severity": self.severity,
            "labels": self.labels,
            "values": self.values,
            "summary": self.summary,
            "description": self.description,
            "active_since": rfc3339(self.active_since),
            "firing_since": time(self.firing_since),
            "resolved_at": time(self.resolved_at),
            "repeat": self.repeat,
        })
    }
}

/// Why a delivery failed. Every failure is retried; the message is shown in `SHOW SINKS`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    pub fn new(msg: impl Into<String>) -> Self {
        SinkError(msg.into())
    }
}

/// A notification connector.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Delivers one notification; `Ok` only once the receiver has taken it.
    async fn send(&self, notification: &Notification) -> Result<(), SinkError>;
    /// Delivers a group's notifications as one message (a sink with `group_by`); `Ok` only once
    /// the receiver has taken it.
    async fn send_group(&self, group: &Group) -> Result<(), SinkError>;
}

/// A sink made from its options, with how it groups notifications.
pub struct BuiltSink {
    pub sink: Box<dyn Sink>,
    pub grouping: Option<Grouping>,
}

/// One kind of sink: what may follow `TO` in `CREATE SINK`. Every kind is listed once in
/// [`crate::registry::sinks`].
pub trait SinkConnector: Send + Sync {
    /// The word after `TO`, upper case: `EMAIL`.
    fn name(&self) -> &'static str;
    /// Makes the sink `name` from its options, taking each option it knows from `options`
    /// (unknown ones are then refused); the error names the option that is wrong.
    fn build(&self, name: &str, options: &SinkOptions) -> crate::Result<Box<dyn Sink>>;
    /// A `CREATE SINK example TO ...` statement of this kind, run by the registry test and shown
    /// in docs/connectors.md.
    fn example(&self) -> &'static str;
}

/// The options of a sink, taken one by one so that unknown keys are reported.
pub struct SinkOptions<'a> {
    options: &'a [(String, String)],
    known: std::cell::RefCell<Vec<&'static str>>,
}

impl<'a> SinkOptions<'a> {
    pub(crate) fn new(options: &'a [(String, String)]) -> Self {
        SinkOptions {
            options,
            known: Default::default(),
        }
    }

    pub fn get(&self, key: &'static str) -> Option<&'a str> {
        self.known.borrow_mut().push(key);
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the option is given (without taking it).
    pub fn has(&self, key: &str) -> bool {
        self.options.iter().any(|(k, _)| k == key)
    }

    pub fn required(&self, key: &'static str, example: &str) -> Result<&'a str, String> {
        self.get(key)
            .ok_or_else(|| format!("option '{key}' is required, e.g. {key} = '{example}'"))
    }

    /// A duration option such as `'10s'`, `'500ms'` or `'10 minutes'` ([`crate::duration`]).
    pub fn duration(&self, key: &'static str, default: Duration) -> Result<Duration, String> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        crate::duration::positive(key, v).map_err(|e| e.to_string())
    }

    pub(crate) fn finish(&self, what: &str) -> Result<(), String> {
        let known = self.known.borrow();
        if let Some((k, _)) = self
            .options
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            let mut names: Vec<&str> = known.clone();
            names.dedup();
            return Err(format!(
                "unknown option '{k}' for {what}; known options: {}",
                names.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
