//! The alert manager: turns rules' output changes into alert instances and notifications.
//!
//! A rule's output row is an alert instance, identified by its label columns (see
//! [`tocsin_sql::ObjectDef::Rule`]); the other columns are its values. An instance is `pending`
//! from the row's arrival, `firing` once it has stayed `for`, and resolved when the row goes
//! (after `keep_firing_for`). An alert that appears or goes is stepped at the engine's logical
//! time it did, changes of its values alone once per batch taken, and each timer at its deadline
//! (it runs once the wall clock reaches it, without waiting for new rows); an alert fires at its
//! deadline. So replicas that take the same rows at the same times (see `timeline`) stamp every
//! transition alike.
//!
//! Instances and the notification outbox live in one durable store ([`store`]); a batch of
//! changes is fsynced before any notification it queues is handed to a sink. After a restart a
//! rule's stored instances wait for the rule's first complete output (replayed from the WAL)
//! before anything about them is decided, so pending timers keep their start, firing alerts stay
//! firing, and nothing already delivered is delivered again.
//!
//! | module | owns |
//! |---|---|
//! | this file | the manager: rules' changes into lifecycle steps, deadlines, inhibition, value changes written at a bounded rate |
//! | [`lifecycle`] | the lifecycle as a pure function: instance and event → new state, notifications, transitions |
//! | [`store`] | the durable instances, outbox and notification groups |
//! | [`outbox`] | what delivery asks of the outbox: the next notification, the next due group |
//! | [`deliver`] | one delivery task per sink: one by one or by group, retries with backoff |
//! | [`relations`] | `tocsin_alerts` (a table) and `tocsin_alert_events` (a source), fed from here |
//! | [`views`] | `GET /v1/alerts`, the Alertmanager API's firing alerts, metrics |

pub mod deliver;
pub mod lifecycle;
pub mod outbox;
pub mod relations;
pub mod store;
pub mod views;

pub use outbox::NextGroup;
pub use views::{alert_json, FiringAlert};

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tocsin_engine::{Clock, Datum, Engine, Row};
use tocsin_sql::options::RuleOptions;
use tocsin_sql::Silence;
use tokio::sync::{mpsc, watch, Notify};

pub use crate::alerts::lifecycle::{render, value_text};
use crate::alerts::lifecycle::{Context, Event};
use crate::alerts::store::{Changes, Instance, Queued, State, Store};

/// A rule's output changes, as its follower hands them to the alert thread (see
/// [`AlertManager::start`]).
pub struct RuleChanges {
    pub rule: String,
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// By logical time in time order, each time's changes consolidated (each row once, with its
    /// net multiplicity).
    pub times: Vec<(i64, Vec<(Row, isize)>)>,
    /// The rule's output is complete up to now (see [`AlertManager::synced`]).
    pub synced: bool,
}

/// What the alert thread is handed.
enum Work {
    Changes(RuleChanges),
    /// A timer or the value interval may be due.
    Tick,
}

/// Rule changes the alert thread takes under one lock and one fsync, at most: a storm's backlog
/// is taken in rounds, between which delivery and the API get the lock.
const ROUND_ROWS: usize = 10_000;

/// Rule changes handed over and not yet taken, at most: a rule's follower waits beyond that
/// (and gathers its later changes into its next hand-over).
const QUEUED_CHANGES: usize = 16;

/// What the manager needs to know about a rule.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    pub options: RuleOptions,
    /// The columns that identify an instance.
    pub labels: Vec<String>,
}

pub(crate) struct RuleState {
    spec: RuleSpec,
    /// The rule's first complete output has been seen since it was (re)followed.
    synced: bool,
    /// The rule's current rows by instance key: labels, values, multiplicity.
    present: HashMap<String, Present>,
    /// Sets of output changes taken from the rule, and the rows they changed.
    evaluations: u64,
    changed_rows: u64,
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

/// A change to one of the alert relations.
#[derive(Debug)]
pub enum Published {
    /// A transition: a row of `tocsin_alert_events`.
    Event(Value),
    /// An instance's row of `tocsin_alerts` by its key (rule, labels); `None`: it is gone.
    Alert { key: Row, row: Option<Row> },
}

#[derive(Default)]
struct SinkCounts {
    delivered: u64,
    /// Messages sent: one per notification, or one per group.
    messages: u64,
    /// Notifications another replica delivered (see `deliver::Gate`).
    delivered_elsewhere: u64,
    failures: u64,
    last_error: Option<String>,
}

/// The firing alerts of an inhibiting rule, as the values of the labels it shares with a rule it
/// inhibits: by (inhibiting rule, shared label names). Built when first asked, dropped when the
/// inhibiting rule's firing alerts change.
type Inhibitors = HashMap<(String, Vec<String>), HashSet<Vec<String>>>;

struct Inner {
    store: Store,
    rules: HashMap<String, RuleState>,
    silences: Vec<(String, Silence)>,
    sinks: HashMap<String, SinkCounts>,
    /// The keys of each rule's instances.
    by_rule: HashMap<String, HashSet<String>>,
    /// Instances whose values changed since they were last written (to the store and to
    /// `tocsin_alerts`): written together every value interval.
    later: HashSet<String>,
    /// Each instance's next deadline, and the instances by deadline.
    deadlines: HashMap<String, i64>,
    due: BTreeSet<(i64, String)>,
    inhibitors: RefCell<Inhibitors>,
    /// Rules whose firing alerts changed since the last commit.
    firing_changed: HashSet<String>,
}

pub struct AlertManager {
    inner: Mutex<Inner>,
    clock: Clock,
    /// What the rules run on: a timer runs once the engine has taken every row before it.
    engine: Engine,
    /// How often value changes are written (see [`Inner::later`]).
    value_interval: Duration,
    /// Wakes the timer loop when deadlines may have moved.
    timers: Notify,
    /// What the alert thread is handed, and (until it starts) what it takes them from.
    work: mpsc::Sender<Work>,
    queue: Mutex<Option<mpsc::Receiver<Work>>>,
    /// When the alert thread next has a timer or value write due.
    next_due: watch::Sender<i64>,
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

/// An instance's key in `tocsin_alerts`: rule and labels (as JSON text).
fn table_key(i: &Instance) -> Row {
    let labels = serde_json::to_string(&i.labels).unwrap_or_default();
    vec![Datum::text(&i.rule), Datum::text(&labels)].into_boxed_slice()
}

/// An instance's row of `tocsin_alerts` (see [`relations::ALERTS_COLUMNS`]).
fn table_row(spec: Option<&RuleSpec>, i: &Instance) -> Row {
    let severity = spec.map(|s| s.options.severity.as_str()).unwrap_or("");
    let text = |t: Option<&String>| {
        t.map(|t| render(t, i, i.state.as_str(), severity))
            .unwrap_or_default()
    };
    let time = |t: Option<i64>| t.map_or(Datum::Null, Datum::Int);
    let o = spec.map(|s| &s.options);
    vec![
        Datum::text(&i.rule),
        Datum::text(&serde_json::to_string(&i.labels).unwrap_or_default()),
        Datum::text(i.state.as_str()),
        Datum::text(severity),
        Datum::text(&text(o.and_then(|o| o.summary.as_ref()))),
        Datum::text(&text(o.and_then(|o| o.description.as_ref()))),
        Datum::text(&serde_json::to_string(&i.values).unwrap_or_default()),
        Datum::Bool(i.silenced),
        Datum::Bool(i.inhibited),
        Datum::Int(i.active_since),
        time(i.firing_since),
        Datum::Int(i.published),
    ]
    .into_boxed_slice()
}

impl Inner {
    /// Whether a rule that `spec` names in `inhibit` fires with the same values of the labels
    /// the two rules share.
    fn inhibited(&self, spec: &RuleSpec, labels: &BTreeMap<String, String>) -> bool {
        spec.options.inhibit.iter().any(|a| {
            let Some(source) = self.rules.get(a) else {
                return false;
            };
            let shared: Vec<String> = spec
                .labels
                .iter()
                .filter(|l| source.spec.labels.contains(l))
                .cloned()
                .collect();
            let project = |labels: &BTreeMap<String, String>| -> Vec<String> {
                shared
                    .iter()
                    .map(|l| labels.get(l).cloned().unwrap_or_default())
                    .collect()
            };
            let probe = project(labels);
            let mut cache = self.inhibitors.borrow_mut();
            cache
                .entry((a.clone(), shared.clone()))
                .or_insert_with(|| {
                    self.by_rule
                        .get(a)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| self.store.instances.get(k))
                        .filter(|i| i.state == State::Firing)
                        .map(|i| project(&i.labels))
                        .collect()
                })
                .contains(&probe)
        })
    }

    /// What a lifecycle step of an instance with `labels` (none: nothing to step) knows.
    fn context<'a>(
        &'a self,
        spec: &'a RuleSpec,
        labels: Option<&BTreeMap<String, String>>,
        now: i64,
    ) -> Context<'a> {
        Context {
            spec,
            silences: &self.silences,
            now,
            inhibited: labels.is_some_and(|l| self.inhibited(spec, l)),
        }
    }

    /// Runs one lifecycle step for the instance of `k` of rule `spec`, and records what it
    /// decided: notifications queued for every sink of the rule, transitions, the instance
    /// written now (or, if only its values changed, at the next value interval).
    fn step(&mut self, spec: &RuleSpec, k: &str, event: Event, now: i64, b: &mut Batch) {
        let existing = self.store.instances.get(k).cloned();
        let o = {
            let labels = match (&existing, &event) {
                (Some(i), _) => Some(&i.labels),
                (None, Event::Present { labels, .. }) => Some(labels),
                (None, _) => None,
            };
            let cx = self.context(spec, labels, now);
            lifecycle::step(&cx, existing.clone(), event)
        };
        for n in o.notify {
            for sink in &spec.options.sinks {
                let seq = self.store.next_seq;
                self.store.next_seq += 1;
                b.changes.out.push(Queued {
                    seq,
                    sink: sink.clone(),
                    queued_at: now,
                    notification: n.clone(),
                });
            }
        }
        b.out.extend(o.events.into_iter().map(Published::Event));
        let was_firing = existing.as_ref().is_some_and(|i| i.state == State::Firing);
        let mut is_firing = was_firing;
        if o.delete {
            if let Some(i) = &existing {
                b.out.push(Published::Alert {
                    key: table_key(i),
                    row: None,
                });
                if let Some(keys) = self.by_rule.get_mut(&i.rule) {
                    keys.remove(k);
                }
            }
            self.store.instances.remove(k);
            self.later.remove(k);
            b.changes.instances.push((k.to_string(), None));
            is_firing = false;
        } else if let Some(i) = o.put {
            is_firing = i.state == State::Firing;
            if o.urgent {
                self.later.remove(k);
                b.out.push(Published::Alert {
                    key: table_key(&i),
                    row: Some(table_row(Some(spec), &i)),
                });
                b.changes.instances.push((k.to_string(), Some(i.clone())));
            } else {
                self.later.insert(k.to_string());
            }
            self.by_rule
                .entry(i.rule.clone())
                .or_default()
                .insert(k.to_string());
            self.store.instances.insert(k.to_string(), i);
        }
        if was_firing != is_firing {
            self.firing_changed.insert(spec.name.clone());
            self.inhibitors
                .borrow_mut()
                .retain(|(rule, _), _| *rule != spec.name);
        }
        self.set_deadline(k, now);
    }

    /// Files the instance of `k` under its next deadline (none while its rule is not synced).
    fn set_deadline(&mut self, k: &str, now: i64) {
        if let Some(old) = self.deadlines.remove(k) {
            self.due.remove(&(old, k.to_string()));
        }
        let Some(i) = self.store.instances.get(k) else {
            return;
        };
        let Some(rs) = self.rules.get(&i.rule).filter(|r| r.synced) else {
            return;
        };
        let cx = self.context(&rs.spec, Some(&i.labels), now);
        if let Some(d) = lifecycle::deadline(&cx, i) {
            self.deadlines.insert(k.to_string(), d);
            self.due.insert((d, k.to_string()));
        }
    }

    /// Makes every instance due now, for example when the silences change.
    fn due_now(&mut self, keys: Vec<String>, now: i64) {
        for k in keys {
            if let Some(old) = self.deadlines.insert(k.clone(), now) {
                self.due.remove(&(old, k.clone()));
            }
            self.due.insert((now, k));
        }
    }

    /// A rule's changes at logical time `now` (see [`AlertManager::changes`]).
    fn changes_at(
        &mut self,
        rule: &str,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        now: i64,
        updates: Vec<(Row, isize)>,
        b: &mut Batch,
        later: &mut HashMap<String, i64>,
    ) {
        let Some(rs) = self.rules.get_mut(rule) else {
            return;
        };
        rs.evaluations += 1;
        rs.changed_rows += updates.len() as u64;
        let mut touched = HashSet::new();
        // Retractions first, so that a row replaced by another with the same labels ends with
        // the new values.
        let mut updates = updates;
        updates.sort_by_key(|(_, d)| *d > 0);
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
        for k in touched {
            // An alert that appears or goes is stepped at its time; one whose values alone
            // changed, once for all its changes taken together, at the time of the last.
            let is = self
                .rules
                .get(rule)
                .is_some_and(|r| r.present.contains_key(&k));
            if self.store.instances.contains_key(&k) == is {
                later.insert(k, now);
                continue;
            }
            later.remove(&k);
            self.reconcile(rule, &k, now, b);
        }
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
}

impl AlertManager {
    /// Opens the store in `dir`; changes to the alert relations go to `publish`. Changes of an
    /// alert's values alone are written at most once per `value_interval`.
    pub fn open(
        dir: &Path,
        engine: Engine,
        value_interval: Duration,
        publish: mpsc::UnboundedSender<Published>,
    ) -> std::io::Result<AlertManager> {
        let store = Store::open(dir)?;
        let (work, queue) = mpsc::channel(QUEUED_CHANGES);
        if !store.instances.is_empty() || !store.outbox.is_empty() {
            tracing::info!(
                "alert store: {} alert(s) and {} queued notification(s) resumed",
                store.instances.len(),
                store.outbox.len()
            );
        }
        let mut by_rule: HashMap<String, HashSet<String>> = HashMap::new();
        for (k, i) in &store.instances {
            by_rule.entry(i.rule.clone()).or_default().insert(k.clone());
        }
        Ok(AlertManager {
            inner: Mutex::new(Inner {
                store,
                rules: HashMap::new(),
                silences: Vec::new(),
                sinks: HashMap::new(),
                by_rule,
                later: HashSet::new(),
                deadlines: HashMap::new(),
                due: BTreeSet::new(),
                inhibitors: RefCell::new(HashMap::new()),
                firing_changed: HashSet::new(),
            }),
            clock: engine.clock().clone(),
            engine,
            value_interval,
            timers: Notify::new(),
            work,
            queue: Mutex::new(Some(queue)),
            next_due: watch::channel(i64::MAX).0,
            outbox: watch::channel(0).0,
            publish,
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now() as i64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, Inner>> {
        self.inner.try_lock()
    }

    /// Writes a batch of changes, then lets delivery and the relations see it. The alerts of
    /// rules that an inhibiting rule's changed alerts hold back (or release) are due at once.
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
        let changed = std::mem::take(&mut inner.firing_changed);
        if !changed.is_empty() {
            let targets: Vec<String> = inner
                .rules
                .values()
                .filter(|r| r.spec.options.inhibit.iter().any(|a| changed.contains(a)))
                .flat_map(|r| inner.by_rule.get(&r.spec.name).into_iter().flatten())
                .cloned()
                .collect();
            let now = self.now();
            inner.due_now(targets, now);
        }
        self.timers.notify_one();
    }

    /// Starts (or restarts) following a rule: its instances wait for [`AlertManager::synced`].
    pub fn follow(&self, spec: RuleSpec) {
        let mut inner = self.lock();
        inner.inhibitors.borrow_mut().clear();
        inner.rules.insert(
            spec.name.clone(),
            RuleState {
                spec,
                synced: false,
                present: HashMap::new(),
                evaluations: 0,
                changed_rows: 0,
            },
        );
    }

    /// Hands a rule's output changes to the alert thread; waits while it is behind.
    pub async fn take(&self, changes: RuleChanges) {
        let _ = self.work.send(Work::Changes(changes)).await;
    }

    /// Starts the alert thread. It takes the rules' output changes, runs the timers and writes
    /// value changes, on a thread of its own: an alert storm's work (and its fsyncs) never holds
    /// up the async runtime, which serves the connections and the replicas' links.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(queue) = self.queue.lock().take() else {
            return Ok(());
        };
        let manager = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("tocsin-alerts".into())
            .spawn(move || run(manager, queue))?;
        Ok(())
    }

    /// Takes what the rules' followers handed over, under one lock and one fsync.
    fn take_work(&self, work: Vec<Work>) {
        let mut inner = self.lock();
        let mut b = Batch::default();
        for w in work {
            if let Work::Changes(c) = w {
                self.changes(&mut inner, &c.rule, &c.schema, c.times, &mut b);
                if c.synced {
                    self.synced(&mut inner, &c.rule, &mut b);
                }
            }
        }
        if !b.changes.is_empty() || !b.out.is_empty() {
            self.commit(&mut inner, b);
        }
        // Whoever waits for the manager (delivery, the API) goes next.
        MutexGuard::unlock_fair(inner);
    }

    /// A rule's output changes, by the logical time they happened at in time order (each time's
    /// consolidated: each row once, with its net multiplicity). An alert that appears or goes is
    /// stepped at the time it did, which every replica shares: the same input makes the same
    /// transitions at the same times, and so the same notification ids. Changes of an alert's
    /// values alone are stepped once, at the time of the last, so that a busy rule costs a step
    /// per changed alert rather than one per change.
    fn changes(
        &self,
        inner: &mut Inner,
        rule: &str,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        times: Vec<(i64, Vec<(Row, isize)>)>,
        b: &mut Batch,
    ) {
        let mut later = HashMap::new();
        for (now, updates) in times {
            inner.changes_at(rule, schema, now, updates, b, &mut later);
        }
        for (k, now) in later {
            inner.reconcile(rule, &k, now, b);
        }
    }

    /// A rule's output is complete up to now: decide about every instance it has or had, and
    /// (re)write their rows of `tocsin_alerts` with the rule's texts.
    fn synced(&self, inner: &mut Inner, rule: &str, b: &mut Batch) {
        let now = self.now();
        let Some(rs) = inner.rules.get_mut(rule) else {
            return;
        };
        if rs.synced {
            return;
        }
        rs.synced = true;
        let spec = rs.spec.clone();
        let mut keys: HashSet<String> = rs.present.keys().cloned().collect();
        keys.extend(inner.by_rule.get(rule).into_iter().flatten().cloned());
        for k in keys {
            inner.reconcile(rule, &k, now, b);
        }
        for k in inner.by_rule.get(rule).into_iter().flatten() {
            if let Some(i) = inner.store.instances.get(k) {
                b.out.push(Published::Alert {
                    key: table_key(i),
                    row: Some(table_row(Some(&spec), i)),
                });
            }
        }
    }

    /// Keeps only the rules named: the alerts of any other (dropped) rule resolve.
    pub fn retain_rules(&self, rules: &HashSet<String>) {
        let now = self.now();
        let mut inner = self.lock();
        let gone: Vec<(String, String)> = inner
            .store
            .instances
            .iter()
            .filter(|(_, i)| !rules.contains(&i.rule))
            .map(|(k, i)| (k.clone(), i.rule.clone()))
            .collect();
        let mut b = Batch::default();
        for (k, rule) in gone {
            let spec = match inner.rules.get(&rule) {
                Some(rs) => rs.spec.clone(),
                // Not followed since the start: its options are unknown, nobody is told.
                None => RuleSpec {
                    name: rule.clone(),
                    options: RuleOptions::parse(Vec::new()).expect("defaults"),
                    labels: Vec::new(),
                },
            };
            inner.step(&spec, &k, Event::Dropped, now, &mut b);
        }
        inner.rules.retain(|name, _| rules.contains(name));
        inner
            .by_rule
            .retain(|name, keys| rules.contains(name) || !keys.is_empty());
        if !b.changes.is_empty() || !b.out.is_empty() {
            self.commit(&mut inner, b);
        }
    }

    /// The silences in the catalog: every alert is looked at again.
    pub fn set_silences(&self, silences: Vec<(String, Silence)>) {
        let now = self.now();
        let mut inner = self.lock();
        if inner.silences == silences {
            return;
        }
        inner.silences = silences;
        let keys: Vec<String> = inner.deadlines.keys().cloned().collect();
        inner.due_now(keys, now);
        drop(inner);
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

    /// Runs every due timer, each at its deadline (not at the moment it runs, so that replicas
    /// stamp its transition alike); returns when the next one is due.
    pub fn tick(&self) -> i64 {
        let mut now = self.now();
        if self.lock().due.first().is_some_and(|(d, _)| *d <= now) {
            // Every row stamped before the deadline is in the engine first (a replica's engine
            // waits for its peers' rows: see `timeline`), so that a row's change before the
            // deadline is not overtaken by the timer.
            now = now.min(self.engine.advance_now() as i64 - 1);
        }
        let mut inner = self.lock();
        let mut due = Vec::new();
        while let Some((d, _)) = inner.due.first() {
            if *d > now {
                break;
            }
            let (d, k) = inner.due.pop_first().expect("first");
            inner.deadlines.remove(&k);
            due.push((d, k));
        }
        let mut b = Batch::default();
        for (d, k) in due {
            let Some((rule, published)) = inner
                .store
                .instances
                .get(&k)
                .map(|i| (i.rule.clone(), i.published))
            else {
                continue;
            };
            let Some(spec) = inner
                .rules
                .get(&rule)
                .filter(|r| r.synced)
                .map(|r| r.spec.clone())
            else {
                continue;
            };
            // Never before what the instance last saw (its row's changes may have come first).
            inner.step(&spec, &k, Event::Tick, d.max(published), &mut b);
        }
        if !b.changes.is_empty() || !b.out.is_empty() {
            self.commit(&mut inner, b);
        }
        inner.due.first().map_or(i64::MAX, |(d, _)| *d)
    }

    /// Writes the instances whose values changed since they were last written: to the store
    /// (one fsync) and to `tocsin_alerts`.
    pub fn flush_values(&self) {
        let mut inner = self.lock();
        if inner.later.is_empty() {
            return;
        }
        let mut b = Batch::default();
        for k in std::mem::take(&mut inner.later) {
            let Some(i) = inner.store.instances.get(&k) else {
                continue;
            };
            let spec = inner.rules.get(&i.rule).map(|r| &r.spec);
            b.out.push(Published::Alert {
                key: table_key(i),
                row: Some(table_row(spec, i)),
            });
            b.changes.instances.push((k, Some(i.clone())));
        }
        self.commit(&mut inner, b);
    }

    /// Wakes the alert thread when a timer or the value interval is due, for as long as the
    /// server runs (the thread does the work: see [`AlertManager::start`]).
    pub async fn run_timers(&self) {
        let mut due = self.next_due.subscribe();
        loop {
            let next = *due.borrow_and_update();
            // A timer held back by the engine (see `tick`) is looked at again within 2 ms.
            let wait = next.saturating_sub(self.now()).clamp(2, 1000) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = self.timers.notified() => {}
                Ok(()) = due.changed() => continue,
            }
            // A full queue: the thread is busy, and ticks after what it takes.
            let _ = self.work.try_send(Work::Tick);
        }
    }
}

/// The alert thread: takes what it is handed in rounds, then runs the timers due and, every
/// value interval, writes value changes.
fn run(manager: Weak<AlertManager>, mut queue: mpsc::Receiver<Work>) {
    let mut next_flush: Option<i64> = None;
    while let Some(first) = queue.blocking_recv() {
        let Some(m) = manager.upgrade() else {
            return;
        };
        let size = |w: &Work| match w {
            Work::Changes(c) => c.times.iter().map(|(_, u)| u.len()).sum::<usize>().max(1),
            Work::Tick => 0,
        };
        let mut rows = size(&first);
        let mut work = vec![first];
        while rows < ROUND_ROWS {
            match queue.try_recv() {
                Ok(w) => {
                    rows += size(&w);
                    work.push(w);
                }
                Err(_) => break,
            }
        }
        m.take_work(work);
        let next = m.tick();
        let now = m.now();
        let interval = m.value_interval.as_millis().max(1) as i64;
        let flush = *next_flush.get_or_insert(now + interval);
        if now >= flush {
            m.flush_values();
            next_flush = Some(now + interval);
        }
        m.next_due
            .send_replace(next.min(next_flush.unwrap_or(i64::MAX)));
    }
}
