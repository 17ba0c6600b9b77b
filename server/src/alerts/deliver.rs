//! Delivery: one task per sink takes the sink's oldest queued notification, hands it to the
//! connector and removes it from the outbox only once the receiver took it. Failures are
//! retried with capped exponential backoff (0.5 s doubling up to 5 min) for as long as the
//! receiver is down; the sink's queue waits behind the failing notification, so a receiver sees
//! an alert's transitions in order.

use std::time::Duration;

use tocsin_connectors::sink::Sink;
use tocsin_sql::{Options, SinkKinds, SinkStatus};

use crate::alerts::AlertManager;

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
    let sink: Box<dyn Sink> =
        match tocsin_connectors::registry::build_sink(&connector, &name, &options) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("sink {name}: cannot start: {e}");
                return;
            }
        };
    let mut changes = manager.outbox_changes();
    let mut delay = FIRST_RETRY;
    loop {
        let Some(q) = manager.next_for(&name) else {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        match sink.send(&q.notification).await {
            Ok(()) => {
                manager.delivered(&name, q.seq);
                delay = FIRST_RETRY;
            }
            Err(e) => {
                tracing::warn!(
                    "sink {name}: delivery of {} ({} {}) failed, retrying in {delay:?}: {e}",
                    q.notification.id,
                    q.notification.rule,
                    q.notification.state.as_str()
                );
                manager.failed(&name, &e.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// `SHOW SINKS` asks the manager how delivery goes.
pub struct Sinks(pub std::sync::Arc<AlertManager>);

impl SinkKinds for Sinks {
    fn status(&self, name: &str) -> SinkStatus {
        self.0.sink_status(name)
    }
}
