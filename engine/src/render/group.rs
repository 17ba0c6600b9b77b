//! Groups: the views and rules that only filter and project one shared aggregation, run as one
//! dataflow.
//!
//! A thousand threshold rules over one aggregation (see `crate::share`) differ only in their
//! condition. Each as a dataflow of its own would import the aggregation's arrangement, filter it
//! and arrange its output, and every one of those dataflows would be scheduled, and its progress
//! tracked, whenever the aggregation moved: the cost of a change, of an advance and of creating
//! the next rule would grow with the number of rules. Instead, each shared aggregation that such
//! *members* read gets one group dataflow:
//!
//! ```text
//!   shared aggregation X ──► Fan (every member's map/filter/project, over one Arrow form of
//!        each batch) ──► exchange by member ──► one arrangement G ──► Dispatch (subscribers)
//! ```
//!
//! - Each member has a tag (a number no other member of any group had before), and its rows are
//!   held in G prefixed by it: `[tag, ...row]`. All of a member's rows are on one worker (its
//!   *owner*, the tag modulo the workers), so a subscriber to a member hears from that worker
//!   alone, and only when the member's output changes, not whenever the aggregation moves.
//! - A member joins at the worker's upper `s` when its command arrives: no change of X at `s` or
//!   later has reached the fan yet, so the fan applies those to it as they come, and once it has
//!   seen X up to `s` it reads X's arrangement for everything before `s` and emits the member's
//!   rows of that at `s`. A member leaves the same way: changes before its time `u` are applied,
//!   later ones are not, and the rows of X before `u` are retracted at `u`. So a member's output
//!   is its plan's output over X from the moment it was created.
//! - Reading a member (a peek, another dataflow, a subscription) reads G's rows with its tag.
//!   Subscriptions to a member are served by the dispatch operator, without a dataflow each.
//!
//! Creating a rule therefore costs the same with ten thousand rules present as with none, and a
//! change of the aggregation costs one dataflow's scheduling plus each member's own condition.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::trace::{Navigable, TraceReader};
use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Scope;
use timely::progress::frontier::{Antichain, AntichainRef};
use timely::scheduling::Activator;
use tokio::sync::mpsc::UnboundedSender;

use super::spans::{self, RangeProbe, INDEX_READERS};
use super::subscribe::{ship, Backlog, WorkerUpdate};
use super::{eval_span, mfp_into, DataflowErrors, RowTrace, Time, UpdateBuilder};
use crate::error::EngineError;
use crate::plan::{MfpStep, Node, Plan};
use crate::row::{rows_to_batch, Datum, Row};

/// A member's plan, if it can be a member: a map/filter/project (without bounds on `now()`) of a
/// shared aggregation. Returns the aggregation's name, its schema and the steps.
pub(crate) fn member_shape(plan: &Plan) -> Option<(&str, &SchemaRef, &[MfpStep])> {
    let Node::Mfp { input, steps } = &plan.node else {
        return None;
    };
    let Node::Relation { name } = &input.node else {
        return None;
    };
    if !crate::plan::is_shared(name) || steps.iter().any(|s| matches!(s, MfpStep::Temporal { .. }))
    {
        return None;
    }
    Some((name, &input.schema, steps))
}

/// The worker that holds a member's rows.
pub(crate) fn owner(tag: i64, workers: usize) -> usize {
    (tag as u64 % workers as u64) as usize
}

/// A member's rows in G: its tag, then the row.
fn tagged(tag: i64, row: &[Datum]) -> Row {
    let mut r = Vec::with_capacity(row.len() + 1);
    r.push(Datum::Int(tag));
    r.extend_from_slice(row);
    r.into()
}

/// A row of G without its tag, if it is `tag`'s.
pub(crate) fn untagged(tag: i64, row: &[Datum]) -> Option<Row> {
    (tag_of(row) == tag).then(|| row[1..].into())
}

/// The tag of a row of G.
fn tag_of(row: &[Datum]) -> i64 {
    match row.first() {
        Some(Datum::Int(t)) => *t,
        _ => i64::MIN,
    }
}

/// The rows of G that belong to `tag` at time `t` (everything for `t` = `Time::MAX`), without
/// the tag, with their multiplicities.
pub(crate) fn read_member_at(trace: &mut RowTrace, tag: i64, t: Time) -> Vec<(Row, isize)> {
    let Some(spans) = trace.spans_through(Antichain::new().borrow()) else {
        return Vec::new();
    };
    let (mut cursor, storage) = cursor_list(spans.into_iter().filter_map(|s| s.inner).collect());
    let start: Row = vec![Datum::Int(tag)].into();
    cursor.seek_key(&storage, &start);
    let mut out = Vec::new();
    while let Some(key) = cursor.get_key(&storage) {
        if tag_of(key) != tag {
            break;
        }
        let mut count = 0;
        cursor.map_times(&storage, |time, d| {
            if *time <= t {
                count += *d;
            }
        });
        if count != 0 {
            out.push((key[1..].into(), count));
        }
        cursor.step_key(&storage);
    }
    out
}

/// Every row of an arrangement before time `s`, with its multiplicity.
fn read_before(trace: &mut RowTrace, s: Time) -> Vec<(Row, isize)> {
    if s == 0 {
        return Vec::new();
    }
    super::read_trace_at(trace, s - 1)
}

struct Member {
    steps: Vec<MfpStep>,
    probe: Option<RangeProbe>,
    errors: Rc<RefCell<DataflowErrors>>,
    /// Changes of the aggregation before this time are in the member's first rows.
    start: Time,
    /// Set when the member leaves: changes from this time on are not its own.
    until: Option<Time>,
}

/// A join or leave waiting for the fan to have seen the aggregation up to its time.
#[derive(Clone, Copy)]
struct Pending {
    tag: i64,
    time: Time,
    /// +1: emit the member's rows of the aggregation before `time`; -1: retract them.
    sign: isize,
}

/// A subscriber to a member, on the member's owner.
struct Tap {
    tag: i64,
    as_of: Time,
    tx: UnboundedSender<(usize, WorkerUpdate)>,
    backlog: Arc<Backlog>,
    /// Report progress only after changes (and once after the snapshot), not at every move.
    sparse: bool,
    snapshot_sent: bool,
    pending: BTreeMap<Time, Vec<(Row, isize)>>,
    reported: Option<Option<Time>>,
    unreported: bool,
}

/// What the worker and a group's operators share.
#[derive(Default)]
pub(crate) struct GroupState {
    members: BTreeMap<i64, Member>,
    pending: Vec<Pending>,
    taps: HashMap<u64, Tap>,
    by_tag: HashMap<i64, Vec<u64>>,
    fan: Option<Activator>,
    dispatch: Option<Activator>,
}

impl GroupState {
    /// Adds a member whose rows start at `start` (the worker's upper).
    pub fn join(
        &mut self,
        tag: i64,
        steps: Vec<MfpStep>,
        schema: &SchemaRef,
        errors: Rc<RefCell<DataflowErrors>>,
        start: Time,
    ) {
        let probe = match steps.first() {
            Some(MfpStep::Filter(pred)) => RangeProbe::find(pred, schema),
            _ => None,
        };
        self.members.insert(
            tag,
            Member {
                steps,
                probe,
                errors,
                start,
                until: None,
            },
        );
        self.pending.push(Pending {
            tag,
            time: start,
            sign: 1,
        });
        self.wake_fan();
    }

    /// Removes a member from `until` (the worker's upper) on.
    pub fn leave(&mut self, tag: i64, until: Time) {
        if let Some(m) = self.members.get_mut(&tag) {
            m.until = Some(until);
            self.pending.push(Pending {
                tag,
                time: until,
                sign: -1,
            });
            self.wake_fan();
        }
    }

    /// Serves a subscription to a member from this worker (its owner).
    pub fn tap(
        &mut self,
        id: u64,
        tag: i64,
        as_of: Time,
        tx: UnboundedSender<(usize, WorkerUpdate)>,
        backlog: Arc<Backlog>,
        sparse: bool,
    ) {
        self.taps.insert(
            id,
            Tap {
                tag,
                as_of,
                tx,
                backlog,
                sparse,
                snapshot_sent: false,
                pending: BTreeMap::new(),
                reported: None,
                unreported: false,
            },
        );
        self.by_tag.entry(tag).or_default().push(id);
        if let Some(a) = &self.dispatch {
            a.activate();
        }
    }

    pub fn untap(&mut self, id: u64) {
        if let Some(t) = self.taps.remove(&id) {
            if let Some(ids) = self.by_tag.get_mut(&t.tag) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_tag.remove(&t.tag);
                }
            }
        }
    }

    fn wake_fan(&self) {
        if let Some(a) = &self.fan {
            a.activate();
        }
    }
}

/// Renders a group over the shared aggregation `x` (whose rows have `schema`): returns G's
/// arrangement.
pub(crate) fn render_group<'s>(
    scope: Scope<'s, Time>,
    x_name: &str,
    x: &mut RowTrace,
    schema: SchemaRef,
    spans_cache: &Rc<RefCell<spans::ArrowSpans>>,
    state: &Rc<RefCell<GroupState>>,
    worker: usize,
) -> RowTrace {
    let arranged = x.import_named(scope, x_name);
    let mut x_handle = x.clone();
    let reader = spans::Reader::new(spans_cache, x_name);
    let fan_state = state.clone();
    let fanned = arranged.stream.unary_frontier::<UpdateBuilder, _, _, _>(
        Pipeline,
        "Fan",
        move |cap, info| {
            fan_state.borrow_mut().fan = Some(scope.activator_for(info.address));
            let mut held: Option<Capability<Time>> = Some(cap);
            let mut seen: Time = 0;
            let mut buffer = Vec::new();
            let mut out = Vec::new();
            move |(input, frontier), output| {
                let mut st = fan_state.borrow_mut();
                let indexed = st.members.len() >= INDEX_READERS;
                input.for_each(|cap, data| {
                    for span in data.iter() {
                        seen = span.upper().first().copied().unwrap_or(Time::MAX);
                        let Some(batch) = span.inner.as_ref() else {
                            continue;
                        };
                        let arrow = match reader.read(batch, &schema) {
                            Ok(a) => a,
                            Err(e) => {
                                for m in st.members.values() {
                                    let e = EngineError::Execution(e.to_string());
                                    super::record_error(&m.errors, e);
                                }
                                continue;
                            }
                        };
                        for (tag, m) in st.members.iter() {
                            let probe = m.probe.as_ref().filter(|_| indexed);
                            eval_span(&arrow, &m.steps, probe, &mut buffer, &m.errors);
                            for (row, t, d) in buffer.drain(..) {
                                if t >= m.start && m.until.is_none_or(|u| t < u) {
                                    out.push((tagged(*tag, &row), t, d));
                                }
                            }
                        }
                    }
                    if !out.is_empty() {
                        output.session(&cap).give_container(&mut out);
                    }
                });
                let upper = frontier.frontier().first().copied();
                // Joins and leaves whose time the fan has seen the aggregation up to: from the
                // spans taken (data may come ahead of progress), or from the frontier (an
                // arrangement announces progress without data by its frontier alone).
                let st = &mut *st;
                let mut ready: Vec<Pending> = Vec::new();
                st.pending.retain_mut(|p| {
                    let now = p.time <= seen || upper.is_none_or(|u| p.time <= u);
                    if now {
                        ready.push(*p);
                    }
                    !now
                });
                ready.sort_by_key(|p| p.time);
                let mut at = 0;
                while at < ready.len() {
                    let time = ready[at].time;
                    let rows = read_before(&mut x_handle, time);
                    let batch = rows_to_batch(&schema, rows.iter().map(|(r, _)| &r[..]));
                    while at < ready.len() && ready[at].time == time {
                        let p = &ready[at];
                        at += 1;
                        let Some(m) = st.members.get(&p.tag) else {
                            continue;
                        };
                        match &batch {
                            Ok(b) if b.num_rows() > 0 => {
                                let info = super::mfp::RowInfo {
                                    time: &|_| time,
                                    diff: &|i| rows[i].1 * p.sign,
                                    expiry: &|_| None,
                                };
                                mfp_into(&m.steps, b, &info, &mut buffer, &m.errors);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let e = EngineError::Execution(e.to_string());
                                super::record_error(&m.errors, e);
                            }
                        }
                        let tag = p.tag;
                        out.extend(buffer.drain(..).map(|(r, t, d)| (tagged(tag, &r), t, d)));
                        if p.sign < 0 {
                            st.members.remove(&p.tag);
                        }
                    }
                    if let (false, Some(cap)) = (out.is_empty(), held.as_ref()) {
                        output.session(&cap.delayed(&time)).give_container(&mut out);
                    }
                    out.clear();
                }
                // The capability stays at the earliest join or leave still waiting, and X's
                // arrangement keeps the distinctions the fan will read for them.
                let hold = st.pending.iter().map(|p| p.time).min();
                let least = match (upper, hold) {
                    (Some(u), Some(h)) => Some(u.min(h)),
                    (u, h) => u.or(h),
                };
                match least {
                    Some(t) => {
                        if let Some(c) = &mut held {
                            if *c.time() < t {
                                c.downgrade(&t);
                            }
                        }
                        let since = [t.saturating_sub(1)];
                        x_handle.set_logical_compaction(AntichainRef::new(&since));
                        x_handle.set_physical_compaction(AntichainRef::new(&since));
                    }
                    None => {
                        held = None;
                        x_handle.set_logical_compaction(AntichainRef::new(&[]));
                        x_handle.set_physical_compaction(AntichainRef::new(&[]));
                    }
                }
            }
        },
    );
    let exchange = Exchange::new(|u: &((Row, ()), Time, isize)| tag_of(&u.0 .0) as u64);
    let arranged = arrange_core::<_, _, KeyBatcher<Row, Time, isize>, KeySpine<Row, Time, isize>>(
        fanned.as_collection().map(|r| (r, ())).inner,
        exchange,
        "Arrange group",
        KeyBatcher::new,
    );
    let trace = arranged.trace.clone();
    render_dispatch(
        scope,
        arranged.stream,
        arranged.trace,
        state.clone(),
        worker,
    );
    trace
}

/// Serves the taps of a group on this worker: snapshots once G is complete at their time, then
/// each member's changes once their time is complete, with progress.
fn render_dispatch<'s>(
    scope: Scope<'s, Time>,
    stream: timely::dataflow::Stream<'s, Time, Vec<differential_dataflow::trace::SpanOf<RowTrace>>>,
    mut g: RowTrace,
    state: Rc<RefCell<GroupState>>,
    worker: usize,
) {
    stream.unary_frontier::<UpdateBuilder, _, _, _>(Pipeline, "Dispatch", move |_cap, info| {
        state.borrow_mut().dispatch = Some(scope.activator_for(info.address));
        move |(input, frontier), _output| {
            let mut st = state.borrow_mut();
            let st = &mut *st;
            input.for_each(|_cap, data| {
                for batch in data.iter().filter_map(|s| s.inner.as_ref()) {
                    let mut cursor = batch.cursor();
                    while let Some(key) = cursor.get_key(batch) {
                        if let Some(ids) = st.by_tag.get(&tag_of(key)) {
                            for id in ids {
                                let Some(tap) = st.taps.get_mut(id) else {
                                    continue;
                                };
                                let row: Row = key[1..].into();
                                cursor.map_times(batch, |t, d| {
                                    if *t > tap.as_of {
                                        tap.pending.entry(*t).or_default().push((row.clone(), *d));
                                    }
                                });
                            }
                        }
                        cursor.step_key(batch);
                    }
                }
            });
            let f = frontier.frontier().first().copied();
            let mut hold = f.map_or(Time::MAX, |f| f.saturating_sub(1));
            for tap in st.taps.values_mut() {
                if !tap.snapshot_sent {
                    if f.is_some_and(|f| f <= tap.as_of) {
                        hold = hold.min(tap.as_of);
                        continue;
                    }
                    let rows = read_member_at(&mut g, tap.tag, tap.as_of);
                    if !rows.is_empty() {
                        let _ = tap
                            .tx
                            .send((worker, WorkerUpdate::Changes(tap.as_of, rows, 0, 0)));
                    }
                    tap.snapshot_sent = true;
                    tap.unreported = true;
                }
                // Tap changes are all after `as_of` (the snapshot is read above).
                if ship(
                    &mut tap.pending,
                    f,
                    tap.as_of,
                    &tap.backlog,
                    &tap.tx,
                    worker,
                ) {
                    tap.unreported = true;
                }
                let report = if tap.sparse {
                    tap.unreported || f.is_none()
                } else {
                    tap.reported != Some(f)
                };
                if report && tap.reported != Some(f) {
                    tap.reported = Some(f);
                    let _ = tap.tx.send((worker, WorkerUpdate::Frontier(f)));
                }
                tap.unreported = false;
            }
            let since = [hold];
            let since = if f.is_none() { &[][..] } else { &since[..] };
            g.set_logical_compaction(AntichainRef::new(since));
            g.set_physical_compaction(AntichainRef::new(since));
        }
    });
}
