//! `LOG`: every notification as one structured log line (target `tocsin::alert`), at WARN for a
//! firing alert and INFO for a resolved one; with `group_by`, one line per group, with its counts
//! and every alert's subject. Never fails, so it is the embedded default's sink.

use super::{Group, Notification, Sink, SinkError, SinkOptions, Transition};

pub struct Log {
    name: String,
}

impl Log {
    pub fn new(name: &str, _options: &SinkOptions) -> Result<Self, String> {
        Ok(Log {
            name: name.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Sink for Log {
    async fn send(&self, n: &Notification) -> Result<(), SinkError> {
        let values = serde_json::to_string(&n.values).unwrap_or_default();
        let labels = serde_json::to_string(&n.labels).unwrap_or_default();
        match n.state {
            Transition::Firing => tracing::warn!(
                target: "tocsin::alert",
                sink = %self.name, id = %n.id, rule = %n.rule, state = "firing",
                severity = %n.severity, labels = %labels, values = %values, repeat = n.repeat,
                "{}", n.subject()
            ),
            Transition::Resolved => tracing::info!(
                target: "tocsin::alert",
                sink = %self.name, id = %n.id, rule = %n.rule, state = "resolved",
                severity = %n.severity, labels = %labels, values = %values,
                "{}", n.subject()
            ),
        }
        Ok(())
    }

    async fn send_group(&self, g: &Group) -> Result<(), SinkError> {
        let labels = serde_json::to_string(&g.labels).unwrap_or_default();
        let alerts: Vec<String> = g.alerts.iter().map(|n| n.subject()).collect();
        let ids: Vec<&str> = g.alerts.iter().map(|n| n.id.as_str()).collect();
        let (firing, resolved) = (g.firing(), g.resolved());
        if firing > 0 {
            tracing::warn!(
                target: "tocsin::alert",
                sink = %self.name, group = %labels, firing, resolved, ids = %ids.join(","),
                "{}: {}", g.subject(), alerts.join("; ")
            );
        } else {
            tracing::info!(
                target: "tocsin::alert",
                sink = %self.name, group = %labels, firing, resolved, ids = %ids.join(","),
                "{}: {}", g.subject(), alerts.join("; ")
            );
        }
        Ok(())
    }
}

/// `TO LOG` in the registry (see [`super::SinkConnector`]).
pub struct LogConnector;

impl super::SinkConnector for LogConnector {
    fn name(&self) -> &'static str {
        "LOG"
    }
    fn build(
        &self,
        name: &str,
        options: &super::SinkOptions,
    ) -> crate::Result<Box<dyn super::Sink>> {
        Ok(Box::new(Log::new(name, options)?))
    }
    fn example(&self) -> &'static str {
        "CREATE SINK example TO LOG"
    }
}
