//! The timely worker loop: applies commands from the coordinator in the order it sent them,
//! steps the dataflows, answers peeks once the frontiers allow, and compacts arrangements.
//!
//! Every worker receives the same sequence of DDL commands, so every worker builds the same
//! dataflows in the same order, as timely requires. Data pushes go to one worker each.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use differential_dataflow::input::InputSession;
use differential_dataflow::trace::TraceReader;
use timely::progress::frontier::{Antichain, AntichainRef};
use timely::scheduling::Activator;
use timely::worker::Worker;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{EngineError, Result};
use crate::plan::{MfpStep, Node, Plan};
use crate::render::group::{self, GroupState};
use crate::render::spans::ArrowSpans;
use crate::render::subscribe::{render_subscribe, Backlog, WorkerUpdate};
use crate::render::{arrange, read_trace_at, Context, DataflowErrors, RowTrace, Time};
use crate::row::Row;
use crate::source::{Retained, SourceLog};
use crate::table::{Table, TableWrite};
use crate::wake::{Alarm, Wakeups};

/// How often a worker with a peek waiting looks at its frontiers when nothing else wakes it.
const PEEK_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// How far behind the write frontier arrangements keep distinct times; the compaction frontier
/// moves in steps of this, so that compacting every arrangement happens about once a second.
const COMPACTION_LAG_MS: u64 = 1_000;

/// What one worker returns for one relation of a peek.
#[derive(Debug)]
pub(crate) enum PeekPart {
    Batches(Vec<crate::window::WindowBatch>),
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
    /// Every source's and table's upper is now `to`. The sources and tables named in `pushed`
    /// took rows since the last advance, and the dataflows in `due` hold updates that fall due
    /// before `to`: those move to `to` (see [`crate::wake`]); the others stay where they are.
    AdvanceTo {
        to: Time,
        pushed: Arc<[String]>,
        due: Arc<[Arc<str>]>,
    },
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
        /// Progress only after changes (and once after the snapshot), not at every move: honoured
        /// for members of groups, whose rows one worker holds (a dataflow's subscription hears
        /// from every worker, and each must report its progress).
        sparse: bool,
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

/// What moves a dataflow: activating its source readers, and moving what it reads.
struct Moves {
    readers: Rc<RefCell<Vec<Activator>>>,
    /// The relations and tables it reads.
    reads: Vec<String>,
}

/// A group dataflow (see [`crate::render::group`]): what it and the worker share.
struct Group {
    state: Rc<RefCell<GroupState>>,
    dataflow: usize,
}

/// The name of the group dataflow (and arrangement) over shared relation `x`.
fn group_name(x: &str) -> String {
    format!("{x}/group")
}

struct WorkerState {
    index: usize,
    peers: usize,
    upper: Time,
    wakeups: Arc<Wakeups>,
    /// Per dataflow (a relation's name, or `subscribe-ID`), what moves it.
    moves: HashMap<String, Moves>,
    sources: HashMap<String, Rc<RefCell<SourceLog>>>,
    tables: HashMap<String, Table>,
    traces: HashMap<String, RowTrace>,
    dataflows: HashMap<String, usize>,
    subscriptions: HashMap<u64, usize>,
    /// Groups by name, members by name (their group's name and tag), and subscriptions served
    /// by a group (by id, the group's name).
    groups: HashMap<String, Group>,
    members: HashMap<String, (String, i64)>,
    taps: HashMap<u64, (String, bool)>,
    /// Groups with subscribers that see progress as time passes (not only after changes): they
    /// move at every advance, by how many such subscribers each has.
    dense: HashMap<String, usize>,
    next_tag: i64,
    errors: HashMap<String, Rc<RefCell<DataflowErrors>>>,
    peeks: Vec<PendingPeek>,
    spans: Rc<RefCell<ArrowSpans>>,
    /// The arrangements' compaction frontier last applied.
    compacted: Time,
    /// The time sources last dropped expired rows at.
    pruned: Time,
}

pub(crate) fn run(worker: &mut Worker, commands: Receiver<Command>, wakeups: Arc<Wakeups>) {
    let mut state = WorkerState {
        index: worker.index(),
        peers: worker.peers(),
        upper: 0,
        wakeups,
        moves: HashMap::new(),
        sources: HashMap::new(),
        tables: HashMap::new(),
        traces: HashMap::new(),
        dataflows: HashMap::new(),
        subscriptions: HashMap::new(),
        groups: HashMap::new(),
        members: HashMap::new(),
        taps: HashMap::new(),
        dense: HashMap::new(),
        next_tag: 0,
        errors: HashMap::new(),
        peeks: Vec::new(),
        spans: Rc::default(),
        compacted: 0,
        pruned: 0,
    };
    'outer: loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => break 'outer,
                Ok(cmd) => state.handle(worker, cmd),
                Err(TryRecvError::Empty) => break,
            }
        }
        // A peek of nothing but sources, or of relations already complete, needs no step.
        state.serve_peeks();
        // Parks until a command, a message from another worker or an activation arrives: time
        // moves only by commands (see `crate::wake`). A peek still waiting is looked at again
        // after every step, and at least every few milliseconds.
        let park = (!state.peeks.is_empty()).then_some(PEEK_POLL);
        worker.step_or_park(park);
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
            Command::AdvanceTo { to, pushed, due } => {
                if to > self.upper {
                    self.upper = to;
                    for log in self.sources.values() {
                        log.borrow_mut().advance(to);
                    }
                }
                for name in pushed.iter() {
                    if let Some(log) = self.sources.get(name) {
                        log.borrow_mut().wake_readers();
                    }
                }
                // Pushed tables move like the dataflows due (a source is neither: no-op).
                let names = pushed.iter().map(String::as_str);
                let dense: Vec<String> = self.dense.keys().cloned().collect();
                let names = names.chain(dense.iter().map(String::as_str));
                self.move_dataflows(names.chain(due.iter().map(|d| &**d)));
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
                if let Some((x, schema, steps)) = group::member_shape(&plan) {
                    if self.traces.contains_key(x) {
                        let (x, schema, steps) = (x.to_string(), schema.clone(), steps.to_vec());
                        self.join(worker, name, &x, &schema, steps);
                        let _ = reply.send((index, Ok(())));
                        return;
                    }
                }
                let errors = Rc::new(RefCell::new(DataflowErrors::default()));
                let (df_index, readers, result) =
                    self.build(worker, &name, &plan, errors.clone(), |coll| {
                        arrange(coll, &name)
                    });
                let result = match result {
                    Ok(trace) => {
                        self.traces.insert(name.clone(), trace);
                        self.moves.insert(
                            name.clone(),
                            Moves {
                                readers,
                                reads: self.reads(&plan),
                            },
                        );
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
                sparse,
                tx,
                backlog,
                reply,
            } => {
                if let Node::Relation { name } = &plan.node {
                    if let Some((gname, tag)) = self.members.get(name).cloned() {
                        // Served by the group's dispatch, on the worker holding the member's
                        // rows; the others have nothing to say.
                        if group::owner(tag, self.peers) == index {
                            if let Some(g) = self.groups.get(&gname) {
                                g.state
                                    .borrow_mut()
                                    .tap(id, tag, as_of, tx, backlog, sparse);
                            }
                        } else {
                            let _ = tx.send((index, WorkerUpdate::Frontier(None)));
                        }
                        // Every worker moves the group for it: its frontier is the least of all.
                        if !sparse {
                            *self.dense.entry(gname.clone()).or_default() += 1;
                        }
                        self.taps.insert(id, (gname, sparse));
                        self.move_dataflows([name.as_str()]);
                        let _ = reply.send((index, Ok(())));
                        return;
                    }
                }
                let df_name = subscription_name(id);
                let errors = Rc::new(RefCell::new(DataflowErrors::default()));
                let (df_index, readers, result) =
                    self.build(worker, &df_name, &plan, errors, |coll| {
                        render_subscribe(coll, as_of, index, tx, backlog)
                    });
                if result.is_ok() {
                    self.subscriptions.insert(id, df_index);
                    let reads = self.reads(&plan);
                    // The snapshot needs what it reads complete at `as_of`.
                    self.move_dataflows(reads.iter().map(String::as_str));
                    self.moves.insert(df_name, Moves { readers, reads });
                } else {
                    worker.drop_dataflow(df_index);
                }
                let _ = reply.send((index, result));
            }
            Command::DropSubscription { id } => {
                self.moves.remove(&subscription_name(id));
                if let Some(df) = self.subscriptions.remove(&id) {
                    worker.drop_dataflow(df);
                }
                if let Some((gname, sparse)) = self.taps.remove(&id) {
                    if !sparse {
                        if let Some(n) = self.dense.get_mut(&gname) {
                            *n -= 1;
                            if *n == 0 {
                                self.dense.remove(&gname);
                            }
                        }
                    }
                    if let Some(g) = self.groups.get(&gname) {
                        g.state.borrow_mut().untap(id);
                    }
                }
            }
            Command::Drop { name } => {
                if let Some((gname, tag)) = self.members.remove(&name) {
                    if let Some(g) = self.groups.get(&gname) {
                        g.state.borrow_mut().leave(tag, self.upper);
                    }
                }
                if let Some(g) = self.groups.remove(&group_name(&name)) {
                    self.dense.remove(&group_name(&name));
                    self.traces.remove(&group_name(&name));
                    self.moves.remove(&group_name(&name));
                    worker.drop_dataflow(g.dataflow);
                }
                self.sources.remove(&name);
                self.tables.remove(&name);
                self.traces.remove(&name);
                self.errors.remove(&name);
                self.moves.remove(&name);
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
            } => {
                // The coordinator advanced every input past `time` first; what the peek reads
                // moves there now.
                self.move_dataflows(names.iter().map(String::as_str));
                self.peeks.push(PendingPeek {
                    names,
                    time,
                    read,
                    reply,
                })
            }
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
                        self.trace_of(n).map(|(trace, _)| {
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

    /// Renders `plan` as a dataflow named `df_name`, finished by `finish`: the dataflow's index,
    /// the activators of its source readers, and what `finish` made of it.
    fn build<R>(
        &mut self,
        worker: &mut Worker,
        df_name: &str,
        plan: &Plan,
        errors: Rc<RefCell<DataflowErrors>>,
        finish: impl FnOnce(crate::render::Coll<'_>) -> R,
    ) -> (usize, Rc<RefCell<Vec<Activator>>>, Result<R>) {
        let readers = Rc::default();
        let df_index = worker.next_dataflow_index();
        let result = worker.dataflow_named::<Time, _, _>(df_name, |scope| {
            let mut ctx = Context {
                scope,
                sources: &self.sources,
                traces: &mut self.traces,
                members: &self.members,
                spans: self.spans.clone(),
                errors,
                alarm: Alarm::new(df_name, self.wakeups.clone()),
                readers: Rc::clone(&readers),
            };
            ctx.render(plan).map(finish)
        });
        (df_index, readers, result)
    }

    /// Makes the view or rule `name` a member of the group over shared relation `x`, creating the
    /// group's dataflow with its first member.
    fn join(
        &mut self,
        worker: &mut Worker,
        name: String,
        x: &str,
        schema: &SchemaRef,
        steps: Vec<MfpStep>,
    ) {
        let gname = group_name(x);
        if !self.groups.contains_key(&gname) {
            let state = Rc::new(RefCell::new(GroupState::default()));
            let dataflow = worker.next_dataflow_index();
            let trace = worker.dataflow_named::<Time, _, _>(&gname, |scope| {
                let xt = self.traces.get_mut(x).expect("checked by the caller");
                group::render_group(
                    scope,
                    x,
                    xt,
                    schema.clone(),
                    &self.spans,
                    &state,
                    self.index,
                )
            });
            self.traces.insert(gname.clone(), trace);
            self.moves.insert(
                gname.clone(),
                Moves {
                    readers: Rc::default(),
                    reads: vec![x.to_string()],
                },
            );
            self.groups.insert(gname.clone(), Group { state, dataflow });
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let errors = Rc::new(RefCell::new(DataflowErrors::default()));
        self.groups[&gname]
            .state
            .borrow_mut()
            .join(tag, steps, schema, errors.clone(), self.upper);
        self.moves.insert(
            name.clone(),
            Moves {
                readers: Rc::default(),
                reads: vec![gname.clone()],
            },
        );
        self.errors.insert(name.clone(), errors);
        self.members.insert(name, (gname, tag));
    }

    /// The arrangement holding a view's or rule's rows, and the member's tag when it is held in a
    /// group's.
    fn trace_of(&mut self, name: &str) -> Option<(&mut RowTrace, Option<i64>)> {
        match self.members.get(name) {
            Some((gname, tag)) => self.traces.get_mut(gname).map(|t| (t, Some(*tag))),
            None => self.traces.get_mut(name).map(|t| (t, None)),
        }
    }

    /// The relations and tables a plan reads (its sources are read by the dataflow's own readers).
    fn reads(&self, plan: &Plan) -> Vec<String> {
        plan.dependencies()
            .into_iter()
            .filter(|d| !self.sources.contains_key(d))
            .collect()
    }

    /// Moves dataflows (or tables) to the current upper, and what they read, each once.
    fn move_dataflows<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) {
        let mut moved = HashSet::new();
        for name in names {
            self.move_dataflow(name, &mut moved);
        }
    }

    /// Moves a dataflow (or table) and what it reads, unless it is in `moved` already.
    fn move_dataflow(&mut self, name: &str, moved: &mut HashSet<String>) {
        if !moved.insert(name.to_string()) {
            return;
        }
        if let Some(table) = self.tables.get_mut(name) {
            table.advance(self.upper);
            return;
        }
        let Some(m) = self.moves.get(name) else {
            return;
        };
        for r in m.readers.borrow().iter() {
            r.activate();
        }
        for read in m.reads.clone() {
            self.move_dataflow(&read, moved);
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
            } else if let Some((trace, _)) = self.trace_of(name) {
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
            } else if let Some((trace, tag)) = self.trace_of(name) {
                parts.push(PeekPart::Rows(match tag {
                    Some(tag) => group::read_member_at(trace, tag, t),
                    None => read_trace_at(trace, t),
                }));
            }
        }
        Some(Ok(parts))
    }

    /// Lets arrangements merge history older than a second behind the write frontier, and sources
    /// drop expired rows, but never past the time of a peek that is still waiting. The
    /// arrangements' frontier moves in whole seconds: compacting every arrangement costs as much
    /// as there are relations, so it happens about once a second, not at every advance.
    fn compact(&mut self) {
        let hold = self.peeks.iter().map(|p| p.time).min().unwrap_or(Time::MAX);
        let pruned = hold.min(self.upper);
        if self.pruned != pruned {
            self.pruned = pruned;
            for log in self.sources.values() {
                log.borrow_mut().prune(hold);
            }
        }
        let lagged = self.upper.saturating_sub(COMPACTION_LAG_MS);
        let since = (lagged - lagged % COMPACTION_LAG_MS).min(hold);
        if self.compacted == since {
            return;
        }
        self.compacted = since;
        let since = [since];
        for trace in self.traces.values_mut() {
            trace.set_logical_compaction(AntichainRef::new(&since));
            trace.set_physical_compaction(AntichainRef::new(&since));
        }
    }
}

/// The dataflow of a subscription.
fn subscription_name(id: u64) -> String {
    format!("subscribe-{id}")
}
