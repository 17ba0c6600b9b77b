//! Background work that follows the catalog: a collector per `FROM HOST` source, and a log of
//! every rule's output changes (each inserted row is an alert becoming active, each retracted
//! row one resolving). After every catalog change the running set is reconciled with the
//! catalog: new objects get a task, dropped (or re-created) ones lose theirs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tocsin_connectors::host::HostCollector;
use tocsin_engine::SubscribeEvent;
use tocsin_sql::ObjectDef;
use tokio::task::JoinHandle;

use crate::app::AppRef;
use crate::ingest::IngestError;

/// Running tasks by object name, with the SQL of the object they serve.
#[derive(Default)]
pub struct Tasks {
    running: Mutex<HashMap<String, (String, JoinHandle<()>)>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Ok(r) = self.running.lock() {
            for (_, (_, h)) in r.iter() {
                h.abort();
            }
        }
    }
}

/// Starts and stops tasks so that they match the catalog.
pub async fn reconcile(app: &AppRef) {
    let catalog = app.tocsin.catalog().await;
    let mut wanted: HashMap<String, (String, ObjectDef)> = HashMap::new();
    for e in catalog {
        let needs_task = match &e.def {
            ObjectDef::Source { connector, .. } => connector == "HOST",
            ObjectDef::Rule { .. } => true,
            ObjectDef::View { .. } => false,
        };
        if needs_task {
            wanted.insert(e.name.clone(), (e.sql.clone(), e.def.clone()));
        }
    }
    let mut running = app.tasks.running.lock().expect("tasks");
    running.retain(|name, (sql, handle)| {
        let keep = wanted.get(name).is_some_and(|(s, _)| s == sql) && !handle.is_finished();
        if !keep {
            handle.abort();
        }
        keep
    });
    for (name, (sql, def)) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let handle = match def {
            ObjectDef::Source { options, .. } => {
                let interval = options.interval.unwrap_or(Duration::from_secs(10));
                tokio::spawn(collect_host(app.clone(), name.clone(), interval))
            }
            _ => tokio::spawn(log_rule(app.clone(), name.clone())),
        };
        running.insert(name, (sql, handle));
    }
}

/// Samples this host every `interval` and pushes the rows into the source.
async fn collect_host(app: AppRef, source: String, interval: Duration) {
    let mut collector = HostCollector::new();
    tracing::info!(
        "source {source}: collecting metrics of host {} every {interval:?}",
        collector.host()
    );
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let now = app.tocsin.engine().clock().now() as i64;
        let batch = collector.collect(now);
        let rows = (1..=batch.num_rows()).collect();
        match app.ingest.push(&source, batch, rows, true).await {
            Ok(o) if !o.rejected.is_empty() => {
                tracing::warn!(
                    "source {source}: {} host row(s) refused: {:?}",
                    o.rejected.len(),
                    o.rejected.first()
                )
            }
            Ok(_) => {}
            Err(e @ (IngestError::Refused(_) | IngestError::Stopped)) => {
                tracing::warn!("source {source}: host collector stopped: {e}");
                return;
            }
            Err(e) => tracing::warn!("source {source}: a host sample was not stored: {e}"),
        }
    }
}

/// Logs a rule's output changes.
async fn log_rule(app: AppRef, rule: String) {
    let mut sub = match app.tocsin.subscribe(&rule).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("rule {rule}: cannot follow its output: {e}");
            return;
        }
    };
    let schema = sub.schema().clone();
    while let Some(event) = sub.next().await {
        if let SubscribeEvent::Changes { updates, .. } = event {
            for (row, diff) in updates {
                let row = crate::json::row_object(&schema, &row);
                if diff > 0 {
                    tracing::warn!(target: "tocsin::rule", "rule {rule}: active {row}");
                } else {
                    tracing::info!(target: "tocsin::rule", "rule {rule}: resolved {row}");
                }
            }
        }
    }
}
