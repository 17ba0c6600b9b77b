//! The alert manager: turns rules' output changes into alert instances and notifications.
//!
//! A rule's output row is an alert instance, identified by its label columns (see
//! [`tocsin_sql::ObjectDef::Rule`]); the other columns are its values. An instance is `pending`
//! from the row's arrival, `firing` once it has stayed `for`, and resolved when the row goes
//! (after `keep_firing_for`). Timers run on the wall clock, without waiting for new rows.
//!
//! Instances and the notification outbox live in one durable store ([`store`]); a batch of
//! changes is fsynced before any notification it queues is handed to a sink. After a restart a
//! rule's stored instances wait for the rule's first complete output (replayed from the WAL)
//! before anything about them is decided, so pending timers keep their start, firing alerts stay
//! firing, and nothing already delivered is delivered again.
//!
//! | module | owns |
//! |---|---|
//! | [`lifecycle`] | the lifecycle as a pure function: instance and event → new state, notifications, rows |
//! | [`store`] | the durable instances and outbox |
//! | [`deliver`] | one delivery task per sink: outbox order, retries with backoff |
//! | [`relations`] | `tocsin_alerts` and `tocsin_alert_events`, fed from here |

pub mod deliver;
pub mod lifecycle;
pub mod relations;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tocsin_engine::fmt_ms;
use tocsin_engine::{Clock, Row};
use tocsin_sql::options::RuleOptions;
use tocsin_sql::{Silence, SinkStatus};
use tokio::sync::{mpsc, watch, Notify};

use crate::alerts::lifecycle::{fnv, Context, Event, Outcome};
pub use crate::alerts::lifecycle::{render, value_text};
use crate::alerts::store::{Changes, Instance, Queued, State, Store};

/// What the manager needs to know about a rule.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    pub options: RuleOptions,
    /// The columns that identify an instance.
    pub labels: Vec<String>,
}

struct RuleState {
    spec: RuleSpec,
    /// The rule's first complete output has been seen since it was (re)followed.
    synced: bool,
    /// The rule's current rows by instance key: labels, values, multiplicity.
    present: HashMap<String, Present>,
}

/// A rule's current row(s) for one instance.
#[derive(Clone)]
struct Present {
    labels: BTreeMap<String, String>,
    values: BTreeMap<String, Value>,
    /// How many rows have these labels.
    count: i64,
}

/// What one step of the manager produces: store changes and rows for the relations.
#[derive(Default)]
struct Batch {
    changes: Changes,
    out: Vec<Published>,
}

/// A row for one of the alert relations.
#[derive(Debug)]
pub enum Published {
    Event(Value),
    State(Value),
}

#[derive(Default)]
struct SinkCounts {
    delivered: u64,
    failures: u64,
    last_error: Option<String>,
}

struct Inner {
    store: Store,
    rules: HashMap<String, RuleState>,
    silences: Vec<(String, Silence)>,
    sinks: HashMap<String, SinkCounts>,
}

pub struct AlertManager {
    inner: Mutex<Inner>,
    clock: Clock,
    /// Wakes the timer loop when deadlines may have moved.
    timers: Notify,
    /// Bumped whenever the outbox gains entries.
    outbox: watch::Sender<u64>,
    publish: mpsc::UnboundedSender<Published>,
}

/// The key of an instance: rule and labels.
fn key(rule: &str, labels: &BTreeMap<String, String>) -> String {
    format!(
        "{rule}\0{}",
        serde_json::to_string(labels).unwrap_or_default()
    )
}

impl Inner {
    /// Stores what a lifecycle step decided about the instance of `k`, queueing each
    /// notification for every sink of its rule.
    fn apply(&mut self, k: &str, sinks: &[String], o: Outcome, b: &mut Batch) {
        for n in o.notify {
            for sink in sinks {
                let seq = self.store.next_seq;
                self.store.next_seq += 1;
                b.changes.out.push(Queued {
                    seq,
                    sink: sink.clone(),
                    notification: n.clone(),
                });
            }
        }
        b.out.extend(o.published);
        if let Some(i) = o.put {
            b.changes.put.push((k.to_string(), i));
        }
        if o.delete {
            b.changes.del.push(k.to_string());
        }
    }

    /// Runs one lifecycle step for the instance of `k` of rule `spec`.
    fn step(&mut self, spec: &RuleSpec, k: &str, event: Event, now: i64, b: &mut Batch) {
        let existing = self.store.instances.get(k).cloned();
        let cx = Context {
            spec,
            silences: &self.silences,
            now,
        };
        let o = lifecycle::step(&cx, existing, event);
        self.apply(k, &spec.options.sinks, o, b);
    }

    /// Brings the instance of `k` in line with whether the rule has a row for it.
    fn reconcile(&mut self, rule: &str, k: &str, now: i64, b: &mut Batch) {
        let Some(rs) = self.rules.get(rule) else {
            return;
        };
        let spec = rs.spec.clone();
        let event = match rs.present.get(k) {
            Some(p) => Event::Present {
                labels: p.labels.clone(),
                values: p.values.clone(),
            },
            None => Event::Gone,
        };
        self.step(&spec, k, event, now, b);
    }

    /// The next time something is due for an instance.
    fn deadline(&self, spec: &RuleSpec, i: &Instance, now: i64) -> Option<i64> {
        let cx = Context {
            spec,
            silences: &self.silences,
            now,
        };
        lifecycle::deadline(&cx, i)
    }
}

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
        "active_since": fmt_ms(i.active_since),
        "firing_since": i.firing_since.map(fmt_ms),
    })
}

impl AlertManager {
    /// Opens the store in `dir`; rows for the alert relations go to `publish`.
    pub fn open(
        dir: &Path,
        clock: Clock,
        publish: mpsc::UnboundedSender<Published>,
    ) -> std::io::Result<AlertManager> {
        let store = Store::open(dir)?;
        if !store.instances.is_empty() || !store.outbox.is_empty() {
            tracing::info!(
                "alert store: {} alert(s) and {} queued notification(s) resumed",
                store.instances.len(),
                store.outbox.len()
            );
        }
        Ok(AlertManager {
            inner: Mutex::new(Inner {
                store,
                rules: HashMap::new(),
                silences: Vec::new(),
                sinks: HashMap::new(),
            }),
            clock,
            timers: Notify::new(),
            outbox: watch::channel(0).0,
            publish,
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now() as i64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("alert manager")
    }

    /// Writes a batch of changes, then lets delivery and the relations see it.
    fn commit(&self, inner: &mut Inner, b: Batch) {
        let queued = !b.changes.out.is_empty();
        if let Err(e) = inner.store.apply(b.changes) {
            tracing::error!("alert store: a change could not be written durably: {e}");
        }
        for p in b.out {
            let _ = self.publish.send(p);
        }
        if queued {
            self.outbox.send_modify(|n| *n += 1);
        }
        self.timers.notify_one();
    }

    /// Starts (or restarts) following a rule: its instances wait for [`AlertManager::synced`].
    pub fn follow(&self, spec: RuleSpec) {
        let mut inner = self.lock();
        inner.rules.insert(
            spec.name.clone(),
            RuleState {
                spec,
                synced: false,
                present: HashMap::new(),
            },
        );
    }

    /// A rule's output changes at one time.
    pub fn changes(
        &self,
        rule: &str,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        updates: Vec<(Row, isize)>,
    ) {
        let now = self.now();
        let mut inner = self.lock();
        let Some(rs) = inner.rules.get_mut(rule) else {
            return;
        };
        let mut touched = HashSet::new();
        for (row, diff) in updates {
            let Value::Object(obj) = crate::json::row_object(schema, &row) else {
                continue;
            };
            let mut labels = BTreeMap::new();
            let mut values = BTreeMap::new();
            for (name, v) in obj {
                if rs.spec.labels.contains(&name) {
                    labels.insert(name, value_text(&v));
                } else {
                    values.insert(name, v);
                }
            }
            let k = key(rule, &labels);
            let e = rs.present.entry(k.clone()).or_insert(Present {
                labels,
                values: BTreeMap::new(),
                count: 0,
            });
            e.count += diff as i64;
            if diff > 0 {
                e.values = values;
            }
            if e.count <= 0 {
                rs.present.remove(&k);
            }
            touched.insert(k);
        }
        if !rs.synced {
            return;
        }
        let mut b = Batch::default();
        for k in touched {
            inner.reconcile(rule, &k, now, &mut b);
        }
        self.commit(&mut inner, b);
    }

    /// A rule's output is complete up to now: decide about every instance it has or had.
    pub fn synced(&self, rule: &str) {
        let now = self.now();
        let mut inner = self.lock();
        let Some(rs) = inner.rules.get_mut(rule) else {
            return;
        };
        if rs.synced {
            return;
        }
        rs.synced = true;
        let mut keys: HashSet<String> = rs.present.keys().cloned().collect();
        keys.extend(
            inner
                .store
                .instances
                .iter()
                .filter(|(_, i)| i.rule == rule)
                .map(|(k, _)| k.clone()),
        );
        let mut b = Batch::default();
        for k in keys {
            inner.reconcile(rule, &k, now, &mut b);
        }
        self.commit(&mut inner, b);
    }

    /// Keeps only the rules named: the alerts of any other (dropped) rule resolve.
    pub fn retain_rules(&self, rules: &HashSet<String>) {
        let now = self.now();
        let mut inner = self.lock();
        let gone: Vec<(String, Instance)> = inner
            .store
            .instances
            .iter()
            .filter(|(_, i)| !rules.contains(&i.rule))
            .map(|(k, i)| (k.clone(), i.clone()))
            .collect();
        let mut b = Batch::default();
        for (k, i) in gone {
            let spec = match inner.rules.get(&i.rule) {
                Some(rs) => rs.spec.clone(),
                // Not followed since the start: its options are unknown, nobody is told.
                None => RuleSpec {
                    name: i.rule.clone(),
                    options: RuleOptions::parse(Vec::new()).expect("defaults"),
                    labels: Vec::new(),
                },
            };
            inner.step(&spec, &k, Event::Dropped, now, &mut b);
        }
        inner.rules.retain(|name, _| rules.contains(name));
        if !b.changes.is_empty() {
            self.commit(&mut inner, b);
        }
    }

    /// The silences in the catalog.
    pub fn set_silences(&self, silences: Vec<(String, Silence)>) {
        self.lock().silences = silences;
        self.timers.notify_one();
    }

    /// Drops what is queued for sinks that no longer exist.
    pub fn retain_sinks(&self, sinks: &HashSet<String>) {
        let mut inner = self.lock();
        let stale: Vec<u64> = inner
            .store
            .outbox
            .values()
            .filter(|q| !sinks.contains(&q.sink))
            .map(|q| q.seq)
            .collect();
        inner.sinks.retain(|s, _| sinks.contains(s));
        if !stale.is_empty() {
            tracing::warn!(
                "alert outbox: {} notification(s) for dropped sinks discarded",
                stale.len()
            );
            let b = Batch {
                changes: Changes {
                    done: stale,
                    ..Default::default()
                },
                out: Vec::new(),
            };
            self.commit(&mut inner, b);
        }
    }

    /// Runs every due timer; returns when the next one is due.
    pub fn tick(&self) -> i64 {
        let now = self.now();
        let mut inner = self.lock();
        let mut b = Batch::default();
        let due: Vec<(RuleSpec, String)> = inner
            .store
            .instances
            .iter()
            .filter_map(|(k, i)| {
                let rs = inner.rules.get(&i.rule).filter(|r| r.synced)?;
                let d = inner.deadline(&rs.spec, i, now)?;
                (d <= now).then(|| (rs.spec.clone(), k.clone()))
            })
            .collect();
        for (spec, k) in due {
            inner.step(&spec, &k, Event::Tick, now, &mut b);
        }
        if !b.changes.is_empty() || !b.out.is_empty() {
            self.commit(&mut inner, b);
        }
        inner
            .store
            .instances
            .values()
            .filter_map(|i| {
                let rs = inner.rules.get(&i.rule).filter(|r| r.synced)?;
                inner.deadline(&rs.spec, i, now)
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Runs timers for as long as the server runs.
    pub async fn run_timers(&self) {
        loop {
            let next = self.tick();
            let wait = (next - self.now()).clamp(0, 1000) as u64;
            let _ =
                tokio::time::timeout(Duration::from_millis(wait.max(1)), self.timers.notified())
                    .await;
        }
    }

    /// Current instances, for `GET /v1/alerts`.
    pub fn alerts(&self) -> Vec<Value> {
        let inner = self.lock();
        let mut list: Vec<(&String, &Instance)> = inner.store.instances.iter().collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        list.into_iter()
            .map(|(_, i)| alert_json(i, inner.rules.get(&i.rule).map(|r| &r.spec)))
            .collect()
    }

    /// The oldest queued notification for a sink.
    pub fn next_for(&self, sink: &str) -> Option<Queued> {
        self.lock()
            .store
            .outbox
            .values()
            .find(|q| q.sink == sink)
            .cloned()
    }

    /// Waits until the outbox may have new entries.
    pub fn outbox_changes(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    pub fn delivered(&self, sink: &str, seq: u64) {
        let mut inner = self.lock();
        let c = inner.sinks.entry(sink.to_string()).or_default();
        c.delivered += 1;
        c.last_error = None;
        let changes = Changes {
            done: vec![seq],
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
        let queued = inner
            .store
            .outbox
            .values()
            .filter(|q| q.sink == sink)
            .count() as u64;
        let c = inner.sinks.get(sink);
        SinkStatus {
            queued,
            delivered: c.map_or(0, |c| c.delivered),
            failures: c.map_or(0, |c| c.failures),
            last_error: c.and_then(|c| c.last_error.clone()),
        }
    }

    /// Prometheus text: alerts by state, and per sink the queue, deliveries and failures.
    pub fn render_metrics(&self) -> String {
        let inner = self.lock();
        let mut out = crate::metrics::Exposition::default();
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
        for q in inner.store.outbox.values() {
            if !names.contains(&&q.sink) {
                names.push(&q.sink);
            }
        }
        names.sort();
        let queued =
            |n: &String| inner.store.outbox.values().filter(|q| &q.sink == n).count() as u64;
        let per_sink: [PerSink; 3] = [
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
