//! The coordinator: the engine's public, thread-safe handle.
//!
//! It owns time. Every command goes to the workers through per-worker FIFO channels under one
//! lock, so all workers see DDL in the same order and see data before the time advance that
//! completes it. A ticker advances time when there is something to complete: within a
//! millisecond of a push (the next millisecond completes it), when an operator's held update
//! falls due (see [`crate::wake`]), and otherwise every `tick` (default 1 s) so that retention
//! and compaction follow the clock. An advance moves only the dataflows that have work at it. A
//! peek at time `T` first advances every input past `T` and moves what it reads, then asks each
//! worker for its share once its frontiers have passed `T`, which makes the result consistent
//! across relations and workers. A [`Frontier`] (replicas) may hold time back: advances past it,
//! a read's among them, are made when it moves on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use differential_dataflow::consolidation::consolidate;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{EngineError, Result};
use crate::plan::Plan;
use crate::render::subscribe::{Backlog, WorkerUpdate};
use crate::render::Time;
use crate::row::{check_schema, rows_to_batch, Row};
use crate::share::Shares;
use crate::source::Retained;
use crate::table::TableWrite;
use crate::wake::Wakeups;
use crate::window::WindowBatch;
use crate::worker::{self, Command, PeekPart, PushTicket};

/// Where each worker's share of a peek arrives.
type PeekReplies = UnboundedReceiver<(usize, Result<Vec<PeekPart>>)>;

/// Rows stamped further than this into the future are rejected.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// Where the engine reads the time from.
#[derive(Clone, Debug)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Clock(None)
    }
    /// A clock that only moves when told to (tests, replays).
    pub fn manual(start_ms: u64) -> Self {
        Clock(Some(Arc::new(AtomicU64::new(start_ms))))
    }
    /// Milliseconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
    /// Moves a manual clock forward to `ms` (never backwards).
    pub fn set(&self, ms: u64) -> Result<()> {
        match &self.0 {
            Some(t) => {
                t.fetch_max(ms, Ordering::SeqCst);
                Ok(())
            }
            None => Err(EngineError::Plan("the system clock cannot be set".into())),
        }
    }
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }
}

/// What holds the engine's time back: a replica's time may not pass what its peers have
/// promised (every row they send later is stamped no earlier), so that rows forwarded with the
/// time their origin gave them still land at that time, and every replica computes the same
/// changes at the same times.
pub trait Frontier: Send + Sync {
    /// The engine's inputs may advance to this time and no further (`now`: the clock).
    fn limit(&self, now: u64) -> u64;
    /// The engine would advance to `to` but [`Frontier::limit`] holds it (asked each time it
    /// is held; the frontier asks its peers and calls [`Release::release`] when it moved).
    fn wanted(&self, to: u64);
}

/// Tells an engine that its frontier moved: the advances it held back are made now.
pub struct Release(Weak<Shared>);

impl Release {
    pub fn release(&self) {
        if let Some(s) = self.0.upgrade() {
            if s.holding.load(Ordering::Acquire) {
                s.wakeups.wake_ticker();
            }
        }
    }
}

/// How to run the engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// Timely worker threads.
    pub workers: usize,
    /// How often time advances when nothing else moves it (no pushes, nothing falling due), for
    /// retention and compaction. Pushes and wake-ups advance it within a millisecond.
    pub tick: Duration,
    pub clock: Clock,
    /// What holds time back (replicas); `None`: time follows the clock alone.
    pub frontier: Option<Arc<dyn Frontier>>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("workers", &self.workers)
            .field("tick", &self.tick)
            .field("clock", &self.clock)
            .field("frontier", &self.frontier.is_some())
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tick: Duration::from_secs(1),
            clock: Clock::system(),
            frontier: None,
        }
    }
}

/// What the engine knows of an object it runs.
#[derive(Clone, Debug)]
struct Object {
    schema: SchemaRef,
    source: Option<SourceInfo>,
    deps: Vec<String>,
    /// A view's or rule's plan as its dataflow runs it (shared aggregations as relations).
    plan: Option<Plan>,
    /// The shared relations `plan` uses (see [`Shares`]).
    uses: Vec<String>,
    /// A source's retained rows and bytes, counted by the workers.
    retained: Option<Arc<Retained>>,
    /// A table's key columns.
    key: Option<Vec<usize>>,
}

#[derive(Clone, Copy, Debug)]
struct SourceInfo {
    ts_col: usize,
    retain_ms: i64,
}

struct Coord {
    senders: Vec<Sender<Command>>,
    /// Every input has been told to advance to this time.
    upper: Time,
    next_worker: usize,
    next_subscription: u64,
    objects: HashMap<String, Object>,
    /// The latest time any row was pushed at.
    last_push: Time,
    /// The upper when a view or rule was last created: reads happen no earlier, since a group's
    /// member has rows from that time on (see [`crate::render::group`]).
    created: Time,
    /// Per source or table, the latest time rows were pushed or written at.
    pushed_at: HashMap<String, Time>,
    /// Sources and tables that took rows at these times, not yet completed by an advance.
    pushed: HashMap<String, Time>,
    /// An advance the frontier held back (a read's or the ticker's), made once it allows.
    held: Time,
    /// Reads the frontier held back: their time and the relations they read.
    held_reads: Vec<(Time, Vec<Arc<str>>)>,
    /// Live subscriptions and what they read; dropping what one reads ends it.
    subscriptions: HashMap<u64, Vec<String>>,
    /// Aggregations shared by views and rules.
    shares: Shares,
}

struct Shared {
    clock: Clock,
    frontier: Option<Arc<dyn Frontier>>,
    /// The frontier holds an advance back (see [`Release`]).
    holding: AtomicBool,
    workers: usize,
    coord: Mutex<Coord>,
    threads: Vec<Thread>,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    stop: AtomicBool,
    ticker: Mutex<Option<JoinHandle<()>>>,
    /// Rows pushed that no worker has taken yet.
    pending: Arc<AtomicUsize>,
    /// Arrow memory of every source's retained rows (see [`Retained`]).
    retained_bytes: Arc<AtomicU64>,
    /// Dataflows to move when their held updates fall due.
    wakeups: Arc<Wakeups>,
    /// The backlogs of the followers (see [`Engine::follow`]).
    followers: Mutex<Vec<std::sync::Weak<Backlog>>>,
}

/// A running engine. Cheap to clone; the workers stop when the last clone (and subscription) is gone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// The result of pushing a batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PushOutcome {
    pub accepted: usize,
    /// Rows that were refused, by row number in the batch, with the reason.
    pub rejected: Vec<(usize, String)>,
    /// The logical time the accepted rows arrived at.
    pub time: u64,
}

/// The contents of relations at one logical time.
#[derive(Debug)]
pub struct PeekResult {
    pub time: u64,
    /// Per relation asked for, in order: its schema and rows (for a source, with what lets a
    /// query read only some of them).
    pub relations: Vec<(SchemaRef, Vec<WindowBatch>)>,
}

impl Coord {
    fn broadcast(&self, shared_threads: &[Thread], mk: impl Fn() -> Command) -> Result<()> {
        for (tx, th) in self.senders.iter().zip(shared_threads) {
            tx.send(mk())
                .map_err(|_| EngineError::Unavailable("a worker has stopped".into()))?;
            th.unpark();
        }
        Ok(())
    }

    /// The time a read (peek or subscription snapshot) happens at: no earlier than the clock, than
    /// any row already pushed, or than what the inputs have completed. The inputs are advanced
    /// past it at once (so time may run a millisecond ahead of the clock), and the workers move
    /// what the read needs when they get it.
    fn read_time(&mut self, shared: &Shared, reads: &[String]) -> Result<Time> {
        let time = shared
            .clock
            .now()
            .max(self.upper.saturating_sub(1))
            .max(self.last_push)
            .max(self.created);
        self.advance(shared, time + 1)?;
        if self.upper <= time {
            // Held by the frontier: what the read needs moves with each advance until it is
            // past the read.
            self.held_reads
                .push((time, reads.iter().map(|r| Arc::from(r.as_str())).collect()));
        }
        Ok(time)
    }

    /// Advances every input to `to`, or as far as the frontier allows (the rest is made when it
    /// allows); the sources and tables pushed before `to`, and the dataflows due before it,
    /// move there.
    fn advance(&mut self, shared: &Shared, to: Time) -> Result<()> {
        let to = match &shared.frontier {
            Some(f) => {
                let limit = f.limit(shared.clock.now());
                if to > limit {
                    self.held = self.held.max(to);
                    shared.holding.store(true, Ordering::Release);
                    f.wanted(self.held);
                }
                to.min(limit)
            }
            None => to,
        };
        if to <= self.upper {
            return Ok(());
        }
        self.upper = to;
        if self.held <= to {
            self.held = 0;
            shared.holding.store(false, Ordering::Release);
        }
        let mut pushed = Vec::new();
        self.pushed.retain(|name, at| {
            let complete = *at < to;
            if complete {
                pushed.push(name.clone());
            }
            !complete
        });
        let pushed: Arc<[String]> = pushed.into();
        let mut due = shared.wakeups.take_before(to);
        for (_, reads) in &self.held_reads {
            due.extend(reads.iter().cloned());
        }
        self.held_reads.retain(|(t, _)| *t >= to);
        let due: Arc<[Arc<str>]> = due.into();
        self.broadcast(&shared.threads, || Command::AdvanceTo {
            to,
            pushed: pushed.clone(),
            due: due.clone(),
        })
    }

    /// Notes rows pushed to (or written to) `name` at `time`: the next advance past it completes
    /// them. Wakes the ticker when nothing else was waiting to complete.
    fn pushed(&mut self, shared: &Shared, name: &str, time: Time) {
        self.last_push = self.last_push.max(time);
        if self.pushed.is_empty() {
            shared.wakeups.wake_ticker();
        }
        for map in [&mut self.pushed, &mut self.pushed_at] {
            match map.get_mut(name) {
                Some(t) => *t = (*t).max(time),
                None => {
                    map.insert(name.to_string(), time);
                }
            }
        }
    }

    /// When the ticker next has something to do, in logical milliseconds: an advance past the
    /// earliest push or wake-up not yet completed, or the idle `tick` after the last advance.
    fn next_advance(&self, shared: &Shared, tick: u64) -> Time {
        let pending = self.pushed.values().min().copied();
        let due = shared.wakeups.next();
        [pending, due]
            .into_iter()
            .flatten()
            .map(|t| t + 1)
            .min()
            .unwrap_or(Time::MAX)
            .min(self.upper + tick)
    }
}

/// Advances time when something needs it (see the module's documentation), until the engine is
/// dropped. Parks in between; pushes and wake-ups earlier than its plan unpark it.
fn tick(shared: Weak<Shared>, tick: Duration) {
    let tick_ms = tick.as_millis().max(1) as u64;
    loop {
        let wait = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut c) = shared.coord.lock() else {
                return;
            };
            let now = shared.clock.now();
            let mut to = c.held;
            if now >= c.next_advance(&shared, tick_ms) {
                to = to.max(now);
            }
            if to > c.upper {
                let _ = c.advance(&shared, to);
            }
            let next = c.next_advance(&shared, tick_ms);
            if c.held > c.upper {
                // Held by the frontier: it releases the ticker when it moves; the peers'
                // promises that hold it also lapse with the clock, looked at every 20 ms.
                Duration::from_millis(20)
            } else if shared.clock.is_manual() {
                // A manual clock moves without telling the ticker: look again soon.
                Duration::from_millis(next.saturating_sub(now).clamp(1, 10))
            } else {
                until_millisecond(next.saturating_sub(now))
            }
        };
        std::thread::park_timeout(wait);
    }
}

/// How long until the system clock has moved `ms` milliseconds on (to the start of that
/// millisecond), at least a tenth of a millisecond.
fn until_millisecond(ms: u64) -> Duration {
    if ms == 0 {
        return Duration::from_micros(100);
    }
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    Duration::from_nanos(
        (ms * 1_000_000)
            .saturating_sub(u64::from(into))
            .max(100_000),
    )
}

/// The rows of a batch a source takes at `time`, and the ones it refuses with reasons.
fn admit(
    batch: RecordBatch,
    info: SourceInfo,
    time: Time,
) -> Result<(RecordBatch, Vec<(usize, String)>)> {
    let ts = batch
        .column(info.ts_col)
        .as_primitive::<TimestampMillisecondType>();
    let now = time as i64;
    let mut rejected = Vec::new();
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let reason = if ts.is_null(i) {
                Some("ts is null".to_string())
            } else {
                let t = ts.value(i);
                if t.saturating_add(info.retain_ms) <= now {
                    Some(format!(
                        "late: ts {} is older than the source's retention of {} ms",
                        fmt_ms(t),
                        info.retain_ms
                    ))
                } else if t > now + MAX_FUTURE_MS {
                    Some(format!(
                        "ts {} is more than 5 minutes in the future",
                        fmt_ms(t)
                    ))
                } else {
                    None
                }
            };
            if let Some(r) = &reason {
                rejected.push((i, r.clone()));
            }
            Some(reason.is_none())
        })
        .collect();
    let batch = if rejected.is_empty() {
        batch
    } else {
        filter_record_batch(&batch, &keep)?
    };
    Ok((batch, rejected))
}

async fn collect<T>(mut rx: UnboundedReceiver<(usize, Result<T>)>, n: usize) -> Result<Vec<T>> {
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (w, r) = rx
            .recv()
            .await
            .ok_or_else(|| EngineError::Unavailable("a worker stopped before answering".into()))?;
        out[w] = Some(r?);
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every worker answered"))
        .collect())
}

/// Waits for `n` acknowledgements (several per worker); the first error if any failed.
async fn collect_units(mut rx: UnboundedReceiver<(usize, Result<()>)>, n: usize) -> Result<()> {
    for _ in 0..n {
        let (_, r) = rx
            .recv()
            .await
            .ok_or_else(|| EngineError::Unavailable("a worker stopped before answering".into()))?;
        r?;
    }
    Ok(())
}

impl Engine {
    /// Starts the workers.
    pub fn start(config: EngineConfig) -> Result<Engine> {
        let workers = config.workers.max(1);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = std::sync::mpsc::channel();
            senders.push(tx);
            receivers.push(Some(rx));
        }
        let receivers = Arc::new(Mutex::new(receivers));
        let wakeups = Arc::new(Wakeups::default());
        let worker_wakeups = wakeups.clone();
        let (thread_tx, thread_rx) = std::sync::mpsc::channel();
        let thread_tx = Mutex::new(thread_tx);
        let guards = timely::execute(timely::Config::process(workers), move |w| {
            let rx = receivers.lock().expect("receivers")[w.index()]
                .take()
                .expect("one receiver per worker");
            let _ = thread_tx
                .lock()
                .expect("thread tx")
                .send((w.index(), std::thread::current()));
            worker::run(w, rx, worker_wakeups.clone());
        })
        .map_err(EngineError::Unavailable)?;
        let mut threads: Vec<Option<Thread>> = vec![None; workers];
        for _ in 0..workers {
            let (i, t) = thread_rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| EngineError::Unavailable("workers did not start".into()))?;
            threads[i] = Some(t);
        }
        let now = config.clock.now();
        let shared = Arc::new(Shared {
            followers: Mutex::new(Vec::new()),
            clock: config.clock,
            frontier: config.frontier,
            holding: AtomicBool::new(false),
            workers,
            coord: Mutex::new(Coord {
                senders,
                upper: 0,
                next_worker: 0,
                next_subscription: 0,
                objects: HashMap::new(),
                subscriptions: HashMap::new(),
                shares: Shares::default(),
                last_push: 0,
                created: 0,
                pushed_at: HashMap::new(),
                pushed: HashMap::new(),
                held: 0,
                held_reads: Vec::new(),
            }),
            threads: threads.into_iter().map(|t| t.expect("thread")).collect(),
            guards: Mutex::new(Some(guards)),
            stop: AtomicBool::new(false),
            ticker: Mutex::new(None),
            pending: Arc::new(AtomicUsize::new(0)),
            retained_bytes: Arc::new(AtomicU64::new(0)),
            wakeups,
        });
        let engine = Engine { shared };
        engine.coord()?.advance(&engine.shared, now)?;
        let weak: Weak<Shared> = Arc::downgrade(&engine.shared);
        let idle = config.tick;
        let ticker = std::thread::Builder::new()
            .name("tocsin-ticker".into())
            .spawn(move || tick(weak, idle))
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        engine.shared.wakeups.set_ticker(ticker.thread().clone());
        *engine.shared.ticker.lock().expect("ticker") = Some(ticker);
        Ok(engine)
    }

    fn coord(&self) -> Result<MutexGuard<'_, Coord>> {
        self.shared
            .coord
            .lock()
            .map_err(|_| EngineError::Unavailable("engine state poisoned".into()))
    }

    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// What tells the engine that its frontier (see [`Frontier`]) moved, without keeping the
    /// engine running.
    pub fn releaser(&self) -> Release {
        Release(Arc::downgrade(&self.shared))
    }

    /// Advances every input past now (as a read does), as far as the frontier allows; the time
    /// they advanced to (every row pushed before it is in the engine).
    pub fn advance_now(&self) -> u64 {
        let Ok(mut c) = self.coord() else {
            return 0;
        };
        let _ = c.advance(&self.shared, self.shared.clock.now() + 1);
        c.upper
    }

    /// The engine's current logical time (milliseconds): what `now()` means right now.
    pub fn now(&self) -> u64 {
        let upper = self.coord().map_or(0, |c| c.upper);
        self.shared.clock.now().max(upper)
    }

    /// Whether an object of this name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.coord().is_ok_and(|c| c.objects.contains_key(name))
    }

    /// The schema of a source, view or rule.
    pub fn schema(&self, name: &str) -> Option<SchemaRef> {
        self.coord()
            .ok()?
            .objects
            .get(name)
            .map(|o| o.schema.clone())
    }

    /// Creates a source. Its schema must have a `ts` column of type
    /// `Timestamp(Millisecond, "UTC")`; rows leave it `retain` after their `ts`.
    pub async fn create_source(
        &self,
        name: &str,
        schema: SchemaRef,
        retain: Duration,
    ) -> Result<()> {
        check_schema(&schema)?;
        let ts_col = schema
            .index_of("ts")
            .map_err(|_| EngineError::Plan(format!("source \"{name}\" has no ts column")))?;
        if !matches!(
            schema.field(ts_col).data_type(),
            DataType::Timestamp(TimeUnit::Millisecond, Some(_))
        ) {
            return Err(EngineError::Plan(format!(
                "the ts column of source \"{name}\" must be a UTC timestamp in milliseconds"
            )));
        }
        let retain_ms = i64::try_from(retain.as_millis())
            .map_err(|_| EngineError::Plan("retention too long".into()))?;
        let (reply, rx) = unbounded_channel();
        {
            let mut c = self.coord()?;
            if c.objects.contains_key(name) {
                return Err(EngineError::Plan(format!("\"{name}\" already exists")));
            }
            let retained = Arc::new(Retained::new(self.shared.retained_bytes.clone()));
            c.broadcast(&self.shared.threads, || Command::CreateSource {
                name: name.to_string(),
                ts_col,
                retain_ms,
                retained: retained.clone(),
                reply: reply.clone(),
            })?;
            c.objects.insert(
                name.to_string(),
                Object {
                    schema: schema.clone(),
                    source: Some(SourceInfo { ts_col, retain_ms }),
                    deps: Vec::new(),
                    plan: None,
                    uses: Vec::new(),
                    retained: Some(retained),
                    key: None,
                },
            );
        }
        collect(rx, self.shared.workers).await.map(|_| ())
    }

    /// Creates a table (see [`crate::table`]): rows replaced in place by the `key` columns, read
    /// like a view.
    pub async fn create_table(&self, name: &str, schema: SchemaRef, key: &[&str]) -> Result<()> {
        check_schema(&schema)?;
        let key = key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    EngineError::Plan(format!("table \"{name}\" has no key column \"{k}\""))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        let (reply, rx) = unbounded_channel();
        {
            let mut c = self.coord()?;
            if c.objects.contains_key(name) {
                return Err(EngineError::Plan(format!("\"{name}\" already exists")));
            }
            c.broadcast(&self.shared.threads, || Command::CreateTable {
                name: name.to_string(),
                key: key.clone(),
                reply: reply.clone(),
            })?;
            c.objects.insert(
                name.to_string(),
                Object {
                    schema,
                    source: None,
                    deps: Vec::new(),
                    plan: None,
                    uses: Vec::new(),
                    retained: None,
                    key: Some(key),
                },
            );
        }
        collect(rx, self.shared.workers).await.map(|_| ())
    }

    /// Writes to a table: the rows put replace the rows of their keys, the keys deleted leave.
    /// Reads that start after the call see the write.
    pub fn write_table(&self, name: &str, write: TableWrite) -> Result<()> {
        if write.is_empty() {
            return Ok(());
        }
        let mut c = self.coord()?;
        let obj = c
            .objects
            .get(name)
            .ok_or_else(|| EngineError::Plan(format!("table \"{name}\" does not exist")))?;
        let key = obj
            .key
            .as_ref()
            .ok_or_else(|| EngineError::Plan(format!("\"{name}\" is not a table")))?;
        let width = obj.schema.fields().len();
        if let Some(r) = write.put.iter().find(|r| r.len() != width) {
            return Err(EngineError::Plan(format!(
                "a row of {} values written to table \"{name}\" of {width} columns",
                r.len()
            )));
        }
        if let Some(k) = write.delete.iter().find(|k| k.len() != key.len()) {
            return Err(EngineError::Plan(format!(
                "a key of {} values deleted from table \"{name}\" keyed by {} columns",
                k.len(),
                key.len()
            )));
        }
        let time = self.shared.clock.now().max(c.upper);
        c.pushed(&self.shared, name, time);
        c.senders[0]
            .send(Command::WriteTable {
                name: name.to_string(),
                time,
                write,
            })
            .map_err(|_| EngineError::Unavailable("a worker has stopped".into()))?;
        self.shared.threads[0].unpark();
        Ok(())
    }

    fn check_plan(c: &Coord, plan: &Plan) -> Result<Vec<String>> {
        let deps = plan.dependencies();
        for d in &deps {
            if !c.objects.contains_key(d) {
                return Err(EngineError::Plan(format!(
                    "relation \"{d}\" does not exist"
                )));
            }
        }
        check_schema(&plan.schema)?;
        Ok(deps)
    }

    /// Creates a view or rule: a dataflow maintaining `plan`, arranged so that peeks, subscriptions
    /// and other dataflows share it. Aggregations below the plan's root are shared with every
    /// other view and rule that contains the same one (see [`crate::share`]).
    pub async fn create_relation(&self, name: &str, plan: Plan) -> Result<()> {
        let (reply, rx) = unbounded_channel();
        let dataflows = {
            let mut c = self.coord()?;
            if c.objects.contains_key(name) {
                return Err(EngineError::Plan(format!("\"{name}\" already exists")));
            }
            let deps = Self::check_plan(&c, &plan)?;
            let schema = plan.schema.clone();
            let shared = c.shares.share(&plan);
            c.created = c.upper;
            let mut create = shared.create;
            create.push((name.to_string(), shared.plan.clone()));
            for (n, p) in &create {
                c.broadcast(&self.shared.threads, || Command::CreateRelation {
                    name: n.clone(),
                    plan: p.clone(),
                    reply: reply.clone(),
                })?;
            }
            c.objects.insert(
                name.to_string(),
                Object {
                    schema,
                    source: None,
                    deps,
                    plan: Some(shared.plan),
                    uses: shared.uses,
                    retained: None,
                    key: None,
                },
            );
            create.len()
        };
        if let Err(e) = collect_units(rx, self.shared.workers * dataflows).await {
            let _ = self.drop_object(name);
            return Err(e);
        }
        Ok(())
    }

    /// How a view or rule runs (`EXPLAIN`), with the shared aggregations it reads and how many
    /// views and rules share each. `None` for sources and unknown names.
    pub fn explain(&self, name: &str) -> Option<String> {
        let c = self.coord().ok()?;
        let plan = c.objects.get(name)?.plan.as_ref()?;
        Some(plan.explain_with(&|n| c.shares.get(n).map(|(p, u)| (p.clone(), u))))
    }

    /// The number of shared aggregations running.
    pub fn shared_relations(&self) -> usize {
        self.coord().map(|c| c.shares.len()).unwrap_or(0)
    }

    /// Drops a source, view or rule. Fails while another object reads it.
    pub fn drop_object(&self, name: &str) -> Result<()> {
        let mut c = self.coord()?;
        if !c.objects.contains_key(name) {
            return Err(EngineError::Plan(format!("\"{name}\" does not exist")));
        }
        let mut users: Vec<&String> = c
            .objects
            .iter()
            .filter(|(_, o)| o.deps.iter().any(|d| d == name))
            .map(|(n, _)| n)
            .collect();
        if !users.is_empty() {
            users.sort();
            let users: Vec<&str> = users.iter().map(|s| s.as_str()).collect();
            return Err(EngineError::Plan(format!(
                "cannot drop \"{name}\": {} depend(s) on it",
                users.join(", ")
            )));
        }
        let ended: Vec<u64> = c
            .subscriptions
            .iter()
            .filter(|(_, deps)| deps.iter().any(|d| d == name))
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            c.subscriptions.remove(&id);
            c.broadcast(&self.shared.threads, || Command::DropSubscription { id })?;
        }
        c.broadcast(&self.shared.threads, || Command::Drop {
            name: name.to_string(),
        })?;
        let object = c.objects.remove(name).expect("checked above");
        c.pushed.remove(name);
        c.pushed_at.remove(name);
        for n in c.shares.release(&object.uses) {
            c.broadcast(&self.shared.threads, || Command::Drop { name: n.clone() })?;
        }
        Ok(())
    }

    /// The retention of a source (how long a row stays after its `ts`).
    pub fn retention(&self, name: &str) -> Option<Duration> {
        let c = self.coord().ok()?;
        let info = c.objects.get(name)?.source?;
        Some(Duration::from_millis(info.retain_ms.max(0) as u64))
    }

    /// Arrow memory of the rows every source retains now, in bytes (rows pushed but not yet
    /// taken by a worker are not counted: see [`Engine::pending_rows`]).
    pub fn retained_bytes(&self) -> u64 {
        self.shared.retained_bytes.load(Ordering::Relaxed)
    }

    /// Each source's retained rows and their Arrow memory: (name, rows, bytes), by name.
    pub fn retained(&self) -> Vec<(String, u64, u64)> {
        let Ok(c) = self.coord() else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64, u64)> = c
            .objects
            .iter()
            .filter_map(|(n, o)| {
                o.retained
                    .as_ref()
                    .map(|r| (n.clone(), r.rows(), r.bytes()))
            })
            .collect();
        out.sort();
        out
    }

    /// Rows pushed that the workers have not taken yet: what a producer waits on to apply
    /// backpressure instead of queueing without bound.
    pub fn pending_rows(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Changes the followers (see [`Engine::follow`]) have been sent and not yet taken.
    pub fn followers_behind(&self) -> usize {
        let Ok(mut list) = self.shared.followers.lock() else {
            return 0;
        };
        list.retain(|b| b.strong_count() > 0);
        list.iter()
            .filter_map(|b| b.upgrade())
            .map(|b| b.held().0)
            .sum()
    }

    /// Checks a batch against a source without pushing it: the rows the source would take, and
    /// the rows it refuses (null `ts`, already older than the retention, more than five minutes
    /// in the future) by row number with the reason.
    pub fn admit(
        &self,
        name: &str,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        self.admit_at(name, batch, None)
    }

    /// [`Engine::admit`] as of `at` (the time the rows will be pushed at, see
    /// [`Engine::push_at`]) rather than now.
    pub fn admit_at(
        &self,
        name: &str,
        batch: RecordBatch,
        at: Option<u64>,
    ) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let c = self.coord()?;
        let time = at.unwrap_or_else(|| self.shared.clock.now()).max(c.upper);
        let info = Self::source_info(&c, name, &batch)?;
        admit(batch, info, time)
    }

    /// The source a batch is pushed to, checked to exist and to have the batch's schema.
    fn source_info(c: &Coord, name: &str, batch: &RecordBatch) -> Result<SourceInfo> {
        let obj = c
            .objects
            .get(name)
            .ok_or_else(|| EngineError::Plan(format!("source \"{name}\" does not exist")))?;
        let info = obj
            .source
            .ok_or_else(|| EngineError::Plan(format!("\"{name}\" is not a source")))?;
        if batch.schema().fields() != obj.schema.fields() {
            return Err(EngineError::Plan(format!(
                "batch schema does not match source \"{name}\": expected {:?}, got {:?}",
                obj.schema
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>(),
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            )));
        }
        Ok(info)
    }

    /// Pushes a batch of rows into a source. Rows whose `ts` is null, already older than the
    /// source's retention, or more than five minutes in the future are rejected with a reason;
    /// the others are accepted.
    pub fn push(&self, name: &str, batch: RecordBatch) -> Result<PushOutcome> {
        self.push_at(name, batch, None)
    }

    /// [`Engine::push`] at logical time `at` (`None`: now), or at the current upper if time has
    /// already passed `at`: the outcome's `time` says which.
    pub fn push_at(&self, name: &str, batch: RecordBatch, at: Option<u64>) -> Result<PushOutcome> {
        let mut c = self.coord()?;
        let time = at.unwrap_or_else(|| self.shared.clock.now()).max(c.upper);
        let info = Self::source_info(&c, name, &batch)?;
        let (batch, rejected) = admit(batch, info, time)?;
        let accepted = batch.num_rows();
        if accepted > 0 {
            c.pushed(&self.shared, name, time);
            let w = c.next_worker;
            c.next_worker = (w + 1) % self.shared.workers;
            self.shared.pending.fetch_add(accepted, Ordering::SeqCst);
            let ticket = PushTicket {
                pending: self.shared.pending.clone(),
                rows: accepted,
            };
            c.senders[w]
                .send(Command::Push {
                    name: name.to_string(),
                    time,
                    batch,
                    _ticket: ticket,
                })
                .map_err(|_| EngineError::Unavailable("a worker has stopped".into()))?;
            self.shared.threads[w].unpark();
        }
        Ok(PushOutcome {
            accepted,
            rejected,
            time,
        })
    }

    /// Asks every worker for relations at a time that includes every row pushed before the call;
    /// the replies come once each worker's frontiers have passed that time.
    fn request_peek(
        &self,
        names: &[&str],
        read: bool,
    ) -> Result<(u64, Vec<SchemaRef>, PeekReplies)> {
        let (reply, rx) = unbounded_channel();
        let (time, schemas) = {
            let mut c = self.coord()?;
            let mut schemas = Vec::new();
            for n in names {
                let o = c
                    .objects
                    .get(*n)
                    .ok_or_else(|| EngineError::Plan(format!("relation \"{n}\" does not exist")))?;
                schemas.push(o.schema.clone());
            }
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let time = c.read_time(&self.shared, &names)?;
            c.broadcast(&self.shared.threads, || Command::Peek {
                names: names.clone(),
                time,
                read,
                reply: reply.clone(),
            })?;
            (time, schemas)
        };
        Ok((time, schemas, rx))
    }

    /// Waits until the relations are current: every row pushed before the call is reflected in
    /// them, and every time up to now has been processed. Returns that time.
    pub async fn sync(&self, names: &[&str]) -> Result<u64> {
        let (time, _, rx) = self.request_peek(names, false)?;
        collect(rx, self.shared.workers).await?;
        Ok(time)
    }

    /// Reads the contents of relations (sources, views, rules) at one consistent time that
    /// includes every row pushed before the call.
    pub async fn peek(&self, names: &[&str]) -> Result<PeekResult> {
        let (time, schemas, rx) = self.request_peek(names, true)?;
        let parts = collect(rx, self.shared.workers).await?;
        let mut relations = Vec::new();
        for (i, schema) in schemas.into_iter().enumerate() {
            let mut batches = Vec::new();
            let mut rows: Vec<(Row, isize)> = Vec::new();
            for worker_parts in &parts {
                match &worker_parts[i] {
                    PeekPart::Batches(b) => batches.extend(b.iter().cloned()),
                    PeekPart::Rows(r) => rows.extend(r.iter().cloned()),
                }
            }
            if !rows.is_empty() {
                consolidate(&mut rows);
                let mut expanded: Vec<&Row> = Vec::new();
                for (r, n) in &rows {
                    if *n < 0 {
                        return Err(EngineError::Internal(format!(
                            "negative multiplicity {n} for a row of {}",
                            names[i]
                        )));
                    }
                    expanded.extend(std::iter::repeat_n(r, *n as usize));
                }
                batches.push(WindowBatch::plain(rows_to_batch(
                    &schema,
                    expanded.iter().map(|r| &r[..]),
                )?));
            }
            relations.push((schema, batches));
        }
        Ok(PeekResult { time, relations })
    }

    /// Subscribes to the changes of a plan (typically a relation): first the snapshot at the
    /// current time, then every change with its time, and progress as times complete.
    pub async fn subscribe(&self, plan: Plan) -> Result<Subscription> {
        self.subscribe_with(plan, false).await
    }

    /// Follows a relation's changes as [`Engine::subscribe`] does, but reports progress only
    /// when it completes changes (and once after the snapshot), not every time the relation
    /// moves, when the relation is a member of a group (see [`crate::render::group`]): for
    /// followers of many relations that act on changes alone.
    pub async fn follow(&self, plan: Plan) -> Result<Subscription> {
        self.subscribe_with(plan, true).await
    }

    async fn subscribe_with(&self, plan: Plan, sparse: bool) -> Result<Subscription> {
        let (tx, updates) = unbounded_channel();
        let (reply, rx) = unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let (id, as_of) = {
            let mut c = self.coord()?;
            let deps = Self::check_plan(&c, &plan)?;
            let id = c.next_subscription;
            c.next_subscription += 1;
            c.subscriptions.insert(id, deps.clone());
            // The snapshot is the contents at `as_of`; rows pushed from now on land after it.
            let as_of = c.read_time(&self.shared, &deps)?;
            c.broadcast(&self.shared.threads, || Command::Subscribe {
                id,
                plan: plan.clone(),
                as_of,
                sparse,
                tx: tx.clone(),
                backlog: backlog.clone(),
                reply: reply.clone(),
            })?;
            (id, as_of)
        };
        if sparse {
            if let Ok(mut list) = self.shared.followers.lock() {
                list.retain(|b| b.strong_count() > 0);
                list.push(Arc::downgrade(&backlog));
            }
        }
        let sub = Subscription {
            engine: self.clone(),
            id,
            schema: plan.schema.clone(),
            updates,
            frontiers: vec![Some(as_of); self.shared.workers],
            pending: BTreeMap::new(),
            ready: Default::default(),
            reported: as_of,
            backlog,
            ended: false,
        };
        collect(rx, self.shared.workers).await?;
        Ok(sub)
    }

    /// Evaluation errors a view or rule met (count, last message): rows it had to leave out.
    pub async fn errors(&self, name: &str) -> Result<(u64, Option<String>)> {
        let (reply, rx) = unbounded_channel();
        {
            let c = self.coord()?;
            // Rows an aggregation shared with other relations left out are left out of each.
            let mut names = vec![name.to_string()];
            if let Some(o) = c.objects.get(name) {
                names.extend(c.shares.closure(&o.uses));
            }
            c.broadcast(&self.shared.threads, || Command::Errors {
                names: names.clone(),
                reply: reply.clone(),
            })?;
        }
        let per_worker = collect(rx, self.shared.workers).await?;
        let count = per_worker.iter().map(|(c, _)| c).sum();
        Ok((count, per_worker.into_iter().find_map(|(_, l)| l)))
    }
}

impl Engine {
    /// How far each relation's maintained contents are behind the newest pushed row, in
    /// milliseconds of logical time (0: it has taken every row pushed so far; `None`: no such
    /// relation, or one that has not completed its first time yet). Asked of every worker at
    /// once, so it costs one round trip however many relations are named.
    pub async fn lag(&self, names: &[String]) -> Result<Vec<Option<u64>>> {
        let (reply, rx) = unbounded_channel();
        let newest: Vec<Time> = {
            let c = self.coord()?;
            c.broadcast(&self.shared.threads, || Command::Uppers {
                names: names.to_vec(),
                reply: reply.clone(),
            })?;
            names.iter().map(|n| c.newest_push(n)).collect()
        };
        let per_worker = collect(rx, self.shared.workers).await?;
        Ok((0..names.len())
            .map(|i| {
                let upper = per_worker
                    .iter()
                    .map(|w| w.get(i).copied().flatten())
                    .try_fold(Time::MAX, |m, u| u.map(|u| m.min(u)))?;
                // Complete before `upper`: every row pushed at a time before it is taken.
                (upper > 0).then(|| (newest[i] + 1).saturating_sub(upper))
            })
            .collect())
    }
}

impl Coord {
    /// The latest time rows were pushed to any source or table `name` reads (0: never).
    fn newest_push(&self, name: &str) -> Time {
        let mut newest = 0;
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![name];
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            newest = newest.max(self.pushed_at.get(n).copied().unwrap_or(0));
            if let Some(o) = self.objects.get(n) {
                todo.extend(o.deps.iter().map(String::as_str));
            }
        }
        newest
    }
}

/// `2026-11-21T10:00:00.000Z` for epoch milliseconds (the number itself when out of range).
pub fn fmt_ms(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_ms(&mut out, ms);
    String::from_utf8(out).expect("a timestamp is ASCII")
}

/// [`fmt_ms`] appended to `out`.
pub fn write_ms(out: &mut Vec<u8>, ms: i64) {
    use chrono::{Datelike, Timelike};
    match datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime(ms) {
        None => out.extend_from_slice(ms.to_string().as_bytes()),
        // Written digit by digit: an answer of many timestamps spent most of its encoding
        // time in the formatting machinery.
        Some(d) if (0..=9999).contains(&d.year()) => {
            let mut text = *b"0000-00-00T00:00:00.000Z";
            let mut put = |at: usize, width: usize, mut v: u32| {
                for i in (at..at + width).rev() {
                    text[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                }
            };
            put(0, 4, d.year() as u32);
            put(5, 2, d.month());
            put(8, 2, d.day());
            put(11, 2, d.hour());
            put(14, 2, d.minute());
            put(17, 2, d.second());
            put(20, 3, d.nanosecond() / 1_000_000 % 1000);
            out.extend_from_slice(&text);
        }
        Some(d) => out.extend_from_slice(d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().as_bytes()),
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(c) = self.coord.lock() {
            let _ = c.broadcast(&self.threads, || Command::Shutdown);
        }
        if let Some(g) = self.guards.lock().ok().and_then(|mut g| g.take()) {
            drop(g.join());
        }
    }
}

/// One event of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeEvent {
    /// The changes at one time (the first event holds the snapshot). Diff +1 inserts, -1 retracts.
    Changes {
        time: u64,
        updates: Vec<(Row, isize)>,
    },
    /// Every change before this time has been reported.
    Progress(u64),
    /// The subscriber fell behind its bound (see [`Subscription::bound`]): changes were left out,
    /// about this many. The subscription ends here; subscribe again for a fresh snapshot.
    Lagged { behind: u64 },
}

/// Changes of one time not yet complete on every worker, with the changes and bytes the backlog
/// counts for them.
type Held = (Vec<(Row, isize)>, usize, usize);

/// A live subscription. Dropping it stops the dataflow behind it.
pub struct Subscription {
    engine: Engine,
    id: u64,
    schema: SchemaRef,
    updates: UnboundedReceiver<(usize, WorkerUpdate)>,
    frontiers: Vec<Option<Time>>,
    /// Changes per time until every worker is past it, with what the backlog counts for them.
    pending: BTreeMap<Time, Held>,
    /// Events to hand out, with the changes and bytes the backlog counts for each.
    ready: std::collections::VecDeque<(SubscribeEvent, usize, usize)>,
    reported: Time,
    backlog: Arc<Backlog>,
    ended: bool,
}

impl Subscription {
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Bounds the changes waiting for this subscriber (unbounded until set): past `changes`
    /// changes or about `bytes` bytes of them, the subscription lags, the workers send it no more
    /// changes, and [`Subscription::next`] answers [`SubscribeEvent::Lagged`].
    pub fn bound(&self, changes: usize, bytes: usize) {
        self.backlog.bound(changes, bytes);
    }

    /// The backlog: what waits for this subscriber, and whether it lags.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// The next event, or `None` once the subscription can produce nothing more (also when
    /// what it reads is dropped, and after [`SubscribeEvent::Lagged`]).
    pub async fn next(&mut self) -> Option<SubscribeEvent> {
        loop {
            if self.ended {
                return None;
            }
            if self.backlog.lagging() {
                self.ended = true;
                let behind = self.backlog.behind();
                for (_, c, b) in std::mem::take(&mut self.ready) {
                    self.backlog.release(c, b);
                }
                for (_, (_, c, b)) in std::mem::take(&mut self.pending) {
                    self.backlog.release(c, b);
                }
                return Some(SubscribeEvent::Lagged { behind });
            }
            if let Some((e, c, b)) = self.ready.pop_front() {
                self.backlog.release(c, b);
                return Some(e);
            }
            let Some((w, u)) = self.updates.recv().await else {
                self.ended = true;
                return None;
            };
            match u {
                WorkerUpdate::Changes(t, changes, counted, bytes) => {
                    let e = self.pending.entry(t).or_default();
                    e.1 += counted;
                    e.2 += bytes;
                    e.0.extend(changes);
                }
                WorkerUpdate::Frontier(f) => {
                    self.frontiers[w] = f;
                    // The least frontier over all workers; None means all are done.
                    let min = self.frontiers.iter().flatten().min().copied();
                    let all_done = self.frontiers.iter().all(Option::is_none);
                    while let Some((&t, _)) = self.pending.first_key_value() {
                        if !all_done && min.is_some_and(|m| t >= m) {
                            break;
                        }
                        let (t, (mut updates, c, b)) = self.pending.pop_first().expect("non-empty");
                        consolidate(&mut updates);
                        if updates.is_empty() {
                            self.backlog.release(c, b);
                        } else {
                            self.ready.push_back((
                                SubscribeEvent::Changes { time: t, updates },
                                c,
                                b,
                            ));
                        }
                    }
                    match min {
                        Some(m) if m > self.reported => {
                            self.reported = m;
                            self.ready.push_back((SubscribeEvent::Progress(m), 0, 0));
                        }
                        None if all_done => {
                            self.ended = self.ready.is_empty();
                            if let Some((e, c, b)) = self.ready.pop_front() {
                                self.backlog.release(c, b);
                                return Some(e);
                            }
                            return None;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut c) = self.engine.coord() {
            let id = self.id;
            if c.subscriptions.remove(&id).is_some() {
                let _ = c.broadcast(&self.engine.shared.threads, || Command::DropSubscription {
                    id,
                });
            }
        }
    }
}

#[cfg(test)]
mod fmt_tests {
    #[test]
    fn timestamps_are_written_as_strftime_writes_them() {
        for ms in [
            0,
            1,
            -1,
            999,
            1_796_547_600_123,
            -62_135_596_800_000, // 0001-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01
            -62_198_755_200_000, // year -1
            i64::MAX,
        ] {
            let slow = datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
                .map_or_else(
                    || ms.to_string(),
                    |d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                );
            assert_eq!(super::fmt_ms(ms), slow, "{ms}");
        }
    }
}
