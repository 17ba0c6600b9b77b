//! Background work that follows the catalog: a collector, poller or receiver per `FROM HOST`,
//! `FROM SNMP` and `FROM SNMP TRAP` source, a follower per rule feeding the alert manager, and a
//! delivery task per sink. After every catalog change the
//! running set is reconciled with the catalog: new objects get a task, dropped (or re-created)
//! ones lose theirs, and the alert manager learns the current rules, sinks and silences.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use datafusion::arrow::datatypes::SchemaRef;
use tocsin_engine::SubscribeEvent;
use tocsin_sql::{DdlChange, ObjectDef, ObjectKind};
use tokio::task::JoinHandle;

use crate::alerts::RuleSpec;
use crate::sources;
use crate::state::AppRef;

/// Running tasks by object name, with the SQL of the object they serve; and tasks that run for
/// as long as the server does.
#[derive(Default)]
pub struct Tasks {
    running: Mutex<HashMap<String, (String, JoinHandle<()>)>>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

impl Tasks {
    /// Keeps a task that runs until the server stops.
    pub fn background(&self, handle: JoinHandle<()>) {
        self.background.lock().expect("tasks").push(handle);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Ok(r) = self.running.lock() {
            for (_, (_, h)) in r.iter() {
                h.abort();
            }
        }
        if let Ok(b) = self.background.lock() {
            for h in b.iter() {
                h.abort();
            }
        }
    }
}

/// Brings the running tasks up to date after one catalog change. A new rule only needs its own
/// follower, so creating one costs the same however many objects the catalog holds; any other
/// change reconciles everything.
pub async fn apply(app: &AppRef, change: &DdlChange) {
    if change.kind == ObjectKind::Rule && change.statement.starts_with("CREATE") {
        if let Some(e) = app.tocsin.entry(&change.name).await {
            if let ObjectDef::Rule {
                options, labels, ..
            } = e.def
            {
                let handle = start_rule(app, &e.name, options, labels);
                let mut running = app.tasks.running.lock().expect("tasks");
                if let Some((_, old)) = running.insert(e.name, (e.sql, handle)) {
                    old.abort();
                }
                return;
            }
        }
    }
    reconcile(app).await
}

/// Starts and stops tasks so that they match the catalog.
pub async fn reconcile(app: &AppRef) {
    let catalog = app.tocsin.catalog().await;
    let mut wanted: HashMap<String, (String, ObjectDef, SchemaRef)> = HashMap::new();
    let (mut rules, mut sinks, mut silences) = (HashSet::new(), HashSet::new(), Vec::new());
    let mut companions: HashMap<String, Vec<String>> = HashMap::new();
    for e in &catalog {
        if let ObjectDef::Source {
            owner: Some(owner), ..
        } = &e.def
        {
            companions
                .entry(owner.clone())
                .or_default()
                .push(e.name.clone());
        }
    }
    for e in catalog {
        let needs_task = match &e.def {
            // Every source whose connector produces rows itself; not its companions.
            ObjectDef::Source {
                connector, owner, ..
            } => owner.is_none() && tocsin_connectors::registry::source(connector).is_some(),
            ObjectDef::Rule { .. } => rules.insert(e.name.clone()),
            ObjectDef::Sink { .. } => sinks.insert(e.name.clone()),
            ObjectDef::Silence(s) => {
                silences.push((e.name.clone(), s.clone()));
                false
            }
            ObjectDef::View { .. } | ObjectDef::Table { .. } => false,
        };
        if needs_task {
            wanted.insert(
                e.name.clone(),
                (e.sql.clone(), e.def.clone(), e.schema.clone()),
            );
        }
    }
    app.alerts.set_silences(silences);
    app.alerts.retain_rules(&rules);
    app.alerts.retain_sinks(&sinks);
    let mut running = app.tasks.running.lock().expect("tasks");
    running.retain(|name, (sql, handle)| {
        let keep = wanted.get(name).is_some_and(|(s, ..)| s == sql) && !handle.is_finished();
        if !keep {
            handle.abort();
        }
        keep
    });
    for (name, (sql, def, schema)) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let handle = match def {
            ObjectDef::Source {
                connector, options, ..
            } => {
                let Some(kind) = tocsin_connectors::registry::source(&connector) else {
                    continue;
                };
                let task = sources::task(
                    app,
                    kind.as_ref(),
                    &name,
                    schema,
                    companions.get(&name).cloned().unwrap_or_default(),
                    options.interval,
                    options.connector,
                );
                match task {
                    Some(t) => tokio::spawn(t),
                    None => continue,
                }
            }
            ObjectDef::Rule {
                options, labels, ..
            } => start_rule(app, &name, options, labels),
            ObjectDef::Sink { connector, options } => {
                tokio::spawn(crate::alerts::deliver::deliver(
                    app.alerts.clone(),
                    name.clone(),
                    connector,
                    options,
                    app.cluster
                        .clone()
                        .map(|c| c as std::sync::Arc<dyn crate::alerts::deliver::Gate>),
                ))
            }
            ObjectDef::View { .. } | ObjectDef::Table { .. } | ObjectDef::Silence(_) => continue,
        };
        running.insert(name, (sql, handle));
    }
}

/// Tells the alert manager about a rule and starts following its output.
fn start_rule(
    app: &AppRef,
    name: &str,
    options: tocsin_sql::options::RuleOptions,
    labels: Vec<String>,
) -> JoinHandle<()> {
    app.alerts.follow(RuleSpec {
        name: name.to_string(),
        options,
        labels,
    });
    tokio::spawn(follow_rule(app.clone(), name.to_string()))
}

/// Feeds a rule's output changes to the alert manager; its first progress after the snapshot
/// tells the manager that the rule's output is complete. Whatever the subscription has ready is
/// taken at once and consolidated per time: the manager steps each time's changes at that time
/// (the engine's logical time, which replicas share: see `timeline`).
async fn follow_rule(app: AppRef, rule: String) {
    use futures_util::FutureExt;
    let mut sub = match app.tocsin.follow(&rule).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("rule {rule}: cannot follow its output: {e}");
            return;
        }
    };
    let schema = sub.schema().clone();
    let mut changes: BTreeMap<u64, HashMap<tocsin_engine::Row, isize>> = BTreeMap::new();
    while let Some(first) = sub.next().await {
        let mut progress = false;
        let mut event = Some(first);
        let mut taken = 0;
        while let Some(e) = event.take() {
            taken += 1;
            match e {
                SubscribeEvent::Changes { time, updates } => {
                    let at = changes.entry(time).or_default();
                    for (row, diff) in updates {
                        *at.entry(row).or_default() += diff;
                    }
                }
                SubscribeEvent::Progress(_) => progress = true,
                // A rule's follower is never bounded.
                SubscribeEvent::Lagged { .. } => {}
            }
            if taken < 1024 {
                event = sub.next().now_or_never().flatten();
            }
        }
        let updates: Vec<_> = std::mem::take(&mut changes)
            .into_iter()
            .map(|(t, at)| (t as i64, at.into_iter().filter(|(_, d)| *d != 0).collect()))
            .filter(|(_, at): &(i64, Vec<_>)| !at.is_empty())
            .collect();
        if !updates.is_empty() || progress {
            app.alerts
                .take(crate::alerts::RuleChanges {
                    rule: rule.clone(),
                    schema: schema.clone(),
                    times: updates,
                    synced: progress,
                })
                .await;
        }
    }
}
