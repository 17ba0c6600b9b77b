//! The timely worker loop: applies commands from the coordinator in the order it sent them,
//! steps the dataflows, answers peeks once the frontiers allow, and compacts arrangements.
//!
//! Every worker receives the same sequence of DDL commands, so every worker builds the same
//! dataflows in the same order, as timely requires. Data pushes go to one worker each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use differential_dataflow::input::InputSession;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::TraceReader;
use timely::progress::frontier::{Antichain, AntichainRef};
use timely::worker::Worker;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{EngineError, Result};
use crate::plan::Plan;
use crate::render::spans::ArrowSpans;
use crate::render::subscribe::{render_subscribe, Backlog, WorkerUpdate};
use crate::render::{arrange, Context, DataflowErrors, RowTrace, Time};
use crate::row::Row;
use crate::source::{Retained, SourceLog};
use crate::table::{Table, TableWrite};

/// How long an idle worker parks before looking at the clock again.
const PARK: Duration = Duration::from_millis(5);
/// How far behind the write frontier arrangements keep distinct times.
const COMPACTION_LAG_MS: u64 = 1_000;

/// What one worker returns for one relation of a peek.
#[derive(Debug)]
pub(crate) enum PeekPart {
    Batches(Vec<RecordBatch>),
    Rows(Vec<(Row, isize)>),
}

pub(crate) type Reply<T> = UnboundedSender<(usize, Result<T>)>;

/// Rows pushed but not yet taken by a worker; dropping the ticket (with its command) counts them
/// as taken.
pub(crate) struct PushTicket {
    pub pending: Arc<AtomicUsize>,
    pub rows: usize,
}

impl Drop for PushTicket {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.rows, Ordering::SeqCst);
    }
}

pub(crate) enum Command {
    AdvanceTo(Time),
    CreateSource {
        name: String,
        ts_col: usize,
        retain_ms: i64,
        retained: Arc<Retained>,
        reply: Reply<()>,
    },
    CreateRelation {
        name: String,
        plan: Plan,
        reply: Reply<()>,
    },
    CreateTable {
        name: String,
        key: Vec<usize>,
        reply: Reply<()>,
    },
    /// Sent to the first worker only.
    WriteTable {
        name: String,
        time: Time,
        write: TableWrite,
    },
    Subscribe {
        id: u64,
        plan: Plan,
        as_of: Time,
        tx: UnboundedSender<(usize, WorkerUpdate)>,
        backlog: Arc<Backlog>,
        reply: Reply<()>,
    },
    DropSubscription {
        id: u64,
    },
    Drop {
        name: String,
    },
    Push {
        name: String,
        time: Time,
        batch: RecordBatch,
        /// Counts the rows until the worker has taken them.
        _ticket: PushTicket,
    },
    /// Read the relations at `time` once complete (or, with `read` false, only wait for that).
    Peek {
        names: Vec<String>,
        time: Time,
        read: bool,
        reply: Reply<Vec<PeekPart>>,
    },
    /// Evaluation errors of these relations, added up.
    Errors {
        names: Vec<String>,
        reply: Reply<(u64, Option<String>)>,
    },
    /// Per name, the time before which the worker's share of the relation is complete (`None`:
    /// no such relation, `Some(Time::MAX)`: complete for ever).
    Uppers {
        names: Vec<String>,
        reply: Reply<Vec<Option<Time>>>,
    },
    Shutdown,
}

struct PendingPeek {
    names: Vec<String>,
    time: Time,
    read: bool,
    reply: Reply<Vec<PeekPart>>,
}

#[derive(Default)]
struct WorkerState {
    index: usize,
    upper: Time,
    sources: HashMap<String, Rc<RefCell<SourceLog>>>,
    tables: HashMap<String, Table>,
    traces: HashMap<String, RowTrace>,
    dataflows: HashMap<String, usize>,
    subscriptions: HashMap<u64, usize>,
    errors: HashMap<String, Rc<RefCell<DataflowErrors>>>,
    peeks: Vec<PendingPeek>,
    spans: Rc<RefCell<ArrowSpans>>,
    /// The compaction frontier and peek hold last applied; `None` once a trace is added.
    compacted: Option<(Time, Time)>,
}

pub(crate) fn run(worker: &mut Worker, commands: Receiver<Command>) {
    let mut state = WorkerState {
        index: worker.index(),
        ..Default::default()
    };
    'outer: loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => break 'outer,
                Ok(cmd) => state.handle(worker, cmd),
                Err(TryRecvError::Empty) => break,
            }
        }
        worker.step_or_park(Some(PARK));
        state.serve_peeks();
        state.compact();
    }
    state.sources.clear();
    state.tables.clear();
    state.traces.clear();
    for df in worker.installed_dataflows() {
        worker.drop_dataflow(df);
    }
}

impl WorkerState {
    fn handle(&mut self, worker: &mut Worker, cmd: Command) {
        let index = self.index;
        match cmd {
            Command::AdvanceTo(t) => {
                if t > self.upper {
                    self.upper = t;
                    for log in self.sources.values() {
                        log.borrow_mut().advance(t);
                    }
                    for table in self.tables.values_mut() {
                        table.advance(t);
                    }
                }
            }
            Command::CreateSource {
                name,
                ts_col,
                retain_ms,
                retained,
                reply,
            } => {
                let log = SourceLog::new(ts_col, retain_ms, self.upper, retained);
                self.sources.insert(name, Rc::new(RefCell::new(log)));
                let _ = reply.send((index, Ok(())));
            }
            Command::CreateRelation { name, plan, reply } => {
                let errors = Rc::new(RefCell::new(DataflowErrors::default()));
                let df_index = worker.next_dataflow_index();
                let result = worker.dataflow_named::<Time, _, _>(&name, |scope| {
                    let mut ctx = Context {
                        scope,
                        sources: &self.sources,
                        traces: &mut self.traces,
                        spans: self.spans.clone(),
                        errors: errors.clone(),
                    };
                    ctx.render(&plan).map(|coll| arrange(coll, &name))
                });
                let result = match result {
                    Ok(trace) => {
                        self.traces.insert(name.clone(), trace);
                        self.compacted = None;
                        self.dataflows.insert(name.clone(), df_index);
                        self.errors.insert(name, errors);
                        Ok(())
                    }
                    Err(e) => {
                        worker.drop_dataflow(df_index);
                        Err(e)
                    }
                };
                let _ = reply.send((index, result));
            }
            Command::CreateTable { name, key, reply } => {
                let df_index = worker.next_dataflow_index();
                let (mut input, trace) = worker.dataflow_named::<Time, _, _>(&name, |scope| {
                    let mut input = InputSession::new();
                    let coll = input.to_collection(scope);
                    (input, arrange(coll, &name))
                });
                input.advance_to(self.upper);
                self.tables.insert(name.clone(), Table::new(input, key));
                self.traces.insert(name.clone(), trace);
                self.compacted = None;
                self.dataflows.insert(name, df_index);
                let _ = reply.send((index, Ok(())));
            }
            Command::WriteTable { name, time, write } => {
                if let Some(table) = self.tables.get_mut(&name) {
                    table.write(time.max(self.upper), write);
                }
            }
            Command::Subscribe {
                id,
                plan,
                as_of,
                tx,
                backlog,
                reply,
            } => {
                let errors = Rc::new(RefCell::new(DataflowErrors::default()));
                let df_index = worker.next_dataflow_index();
                let result =
                    worker.dataflow_named::<Time, _, _>(&format!("subscribe-{id}"), |scope| {
                        let mut ctx = Context {
                            scope,
                            sources: &self.sources,
                            traces: &mut self.traces,
                            spans: self.spans.clone(),
                            errors,
                        };
                        ctx.render(&plan)
                            .map(|coll| render_subscribe(coll, as_of, index, tx, backlog))
                    });
                if result.is_ok() {
                    self.subscriptions.insert(id, df_index);
                } else {
                    worker.drop_dataflow(df_index);
                }
                let _ = reply.send((index, result));
            }
            Command::DropSubscription { id } => {
                if let Some(df) = self.subscriptions.remove(&id) {
                    worker.drop_dataflow(df);
                }
            }
            Command::Drop { name } => {
                self.sources.remove(&name);
                self.tables.remove(&name);
                self.traces.remove(&name);
                self.errors.remove(&name);
                if let Some(df) = self.dataflows.remove(&name) {
                    worker.drop_dataflow(df);
                }
            }
            Command::Push {
                name, time, batch, ..
            } => {
                if let Some(log) = self.sources.get(&name) {
                    log.borrow_mut().append(time.max(self.upper), batch);
                }
            }
            Command::Peek {
                names,
                time,
                read,
                reply,
            } => self.peeks.push(PendingPeek {
                names,
                time,
                read,
                reply,
            }),
            Command::Errors { names, reply } => {
                let (mut count, mut last) = (0, None);
                for e in names.iter().filter_map(|n| self.errors.get(n)) {
                    let e = e.borrow();
                    count += e.count;
                    last = last.or(e.last.clone());
                }
                let _ = reply.send((index, Ok((count, last))));
            }
            Command::Uppers { names, reply } => {
                let mut upper = Antichain::new();
                let uppers = names
                    .iter()
                    .map(|n| {
                        self.traces.get_mut(n).map(|trace| {
                            trace.read_upper(&mut upper);
                            upper.first().copied().unwrap_or(Time::MAX)
                        })
                    })
                    .collect();
                let _ = reply.send((index, Ok(uppers)));
            }
            Command::Shutdown => {}
        }
    }

    /// Answers the peeks whose time every relation they read has completed.
    fn serve_peeks(&mut self) {
        let mut waiting = Vec::new();
        for peek in std::mem::take(&mut self.peeks) {
            match self.try_peek(&peek) {
                None => waiting.push(peek),
                Some(result) => {
                    let _ = peek.reply.send((self.index, result));
                }
            }
        }
        self.peeks = waiting;
    }

    fn try_peek(&mut self, peek: &PendingPeek) -> Option<Result<Vec<PeekPart>>> {
        let t = peek.time;
        let mut upper = Antichain::new();
        for name in &peek.names {
            if let Some(log) = self.sources.get(name) {
                if log.borrow().upper <= t {
                    return None;
                }
            } else if let Some(trace) = self.traces.get_mut(name) {
                trace.read_upper(&mut upper);
                if upper.less_equal(&t) {
                    return None;
                }
            } else {
                return Some(Err(EngineError::Plan(format!(
                    "relation \"{name}\" does not exist"
                ))));
            }
        }
        let mut parts = Vec::with_capacity(peek.names.len());
        if !peek.read {
            return Some(Ok(parts));
        }
        for name in &peek.names {
            if let Some(log) = self.sources.get(name) {
                match log.borrow().peek(t) {
                    Ok(b) => parts.push(PeekPart::Batches(b)),
                    Err(e) => return Some(Err(e)),
                }
            } else if let Some(trace) = self.traces.get_mut(name) {
                parts.push(PeekPart::Rows(read_trace_at(trace, t)));
            }
        }
        Some(Ok(parts))
    }

    /// Lets arrangements merge history older than a second behind the write frontier, and sources
    /// drop expired rows, but never past the time of a peek that is still waiting.
    /// Nothing is done while neither the frontier nor the hold moved: with many relations this
    /// runs after every step of the worker.
    fn compact(&mut self) {
        let hold = self.peeks.iter().map(|p| p.time).min().unwrap_or(Time::MAX);
        let since = self.upper.saturating_sub(COMPACTION_LAG_MS).min(hold);
        if self.compacted == Some((since, hold)) {
            return;
        }
        self.compacted = Some((since, hold));
        for log in self.sources.values() {
            log.borrow_mut().prune(hold);
        }
        let since = [since];
        for trace in self.traces.values_mut() {
            trace.set_logical_compaction(AntichainRef::new(&since));
            trace.set_physical_compaction(AntichainRef::new(&since));
        }
    }
}

/// The rows of an arrangement at time `t`, with their multiplicities.
fn read_trace_at(trace: &mut RowTrace, t: Time) -> Vec<(Row, isize)> {
    let Some(spans) = trace.spans_through(Antichain::new().borrow()) else {
        return Vec::new();
    };
    let (mut cursor, storage) = cursor_list(spans.into_iter().filter_map(|s| s.inner).collect());
    let mut out = Vec::new();
    for ((row, ()), times) in cursor.to_vec(&storage, |k: &Row| k.clone(), |_| ()) {
        let count: isize = times
            .iter()
            .filter(|(time, _)| *time <= t)
            .map(|(_, d)| *d)
            .sum();
        if count != 0 {
            out.push((row, count));
        }
    }
    out
}
