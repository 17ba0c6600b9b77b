//! Rendering plans into timely/differential dataflows.
//!
//! Invariant every file here relies on: a rendered relation is a differential collection of
//! [`Row`]s whose columns follow the producing plan node's Arrow schema, with timestamps in logical
//! milliseconds. Updates may carry times later than the capability they are sent under (temporal
//! filters and retention send their retractions ahead); every consumer either arranges them or
//! buffers them until the frontier passes.
//!
//! | file | renders |
//! |---|---|
//! | `mod.rs` | sources (log replay + follow), relations (shared arrangements), constants, unions, the dispatch |
//! | `mfp.rs` | vectorized map/filter/project and temporal bounds |
//! | `reduce.rs` | GROUP BY, DISTINCT, DISTINCT ON, global aggregates |
//! | `join.rs` | inner and left equi-joins |
//! | `spans.rs` | Arrow forms of shared arrangement batches, built once for every reader, and their value indexes for range filters |
//! | `subscribe.rs` | the sink that ships a collection's changes and progress to a subscriber |

pub(crate) mod group;
pub(crate) mod join;
pub(crate) mod keyed;
pub(crate) mod mfp;
mod moments;
pub(crate) mod reduce;
pub(crate) mod spans;
pub(crate) mod subscribe;
pub(crate) mod window;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use datafusion::arrow::array::{AsArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::{source, Operator};
use timely::dataflow::operators::{Capability, ToStream};
use timely::dataflow::Scope;
use timely::progress::Antichain;

use crate::error::{EngineError, Result};
use crate::plan::{MfpStep, Node, Plan};
use crate::row::{rows_to_batch, Row};
use crate::source::SourceLog;
use crate::wake::Alarm;

/// Logical time: milliseconds.
pub(crate) type Time = u64;
/// A rendered relation.
pub(crate) type Coll<'s> = VecCollection<'s, Time, Row, isize>;
/// The shared arrangement of a view's or rule's rows.
pub(crate) type RowTrace = TraceAgent<KeySpine<Row, Time, isize>>;

/// Arranges a relation's rows for peeks, subscriptions and other dataflows to share.
pub(crate) fn arrange(coll: Coll<'_>, name: &str) -> RowTrace {
    coll.arrange_by_self_named(&format!("Arrange {name}")).trace
}
pub(crate) type UpdateBuilder = CapacityContainerBuilder<Vec<(Row, Time, isize)>>;

/// Errors met while a dataflow evaluates data, reported instead of losing them silently.
#[derive(Default, Debug)]
pub struct DataflowErrors {
    pub count: u64,
    pub last: Option<String>,
}

/// What rendering needs from the worker.
pub(crate) struct Context<'a, 's> {
    pub scope: Scope<'s, Time>,
    pub sources: &'a HashMap<String, Rc<RefCell<SourceLog>>>,
    pub traces: &'a mut HashMap<String, RowTrace>,
    /// Members of groups (see [`group`]): by name, the group's arrangement and the member's tag.
    pub members: &'a HashMap<String, (String, i64)>,
    pub spans: Rc<RefCell<spans::ArrowSpans>>,
    pub errors: Rc<RefCell<DataflowErrors>>,
    /// Asks for the dataflow to be moved when updates its operators hold fall due.
    pub alarm: Alarm,
    /// The activators of the dataflow's source readers: activating them moves the dataflow.
    pub readers: Rc<RefCell<Vec<timely::scheduling::Activator>>>,
}

impl<'s> Context<'_, 's> {
    pub fn render(&mut self, plan: &Plan) -> Result<Coll<'s>> {
        match &plan.node {
            Node::Source { name } => self.render_source(name, &[]),
            Node::Mfp { input, steps } => match &input.node {
                Node::Source { name } => self.render_source(name, steps),
                Node::Relation { name } if !self.members.contains_key(name) => {
                    self.render_relation_mfp(name, input.schema.clone(), steps.clone())
                }
                _ => {
                    let coll = self.render(input)?;
                    Ok(self.render_mfp(coll, input.schema.clone(), steps.clone()))
                }
            },
            Node::Relation { name } if self.members.contains_key(name) => {
                let (group, tag) = self.members[name].clone();
                let trace = self.traces.get_mut(&group).ok_or_else(|| {
                    EngineError::Plan(format!("relation \"{name}\" does not exist"))
                })?;
                Ok(trace
                    .import_named(self.scope, name)
                    .flat_map_ref(move |k, _| group::untagged(tag, k)))
            }
            Node::Relation { name } => {
                let trace = self.traces.get_mut(name).ok_or_else(|| {
                    EngineError::Plan(format!("relation \"{name}\" does not exist"))
                })?;
                Ok(trace
                    .import_named(self.scope, name)
                    .as_collection(|k, _| k.clone()))
            }
            Node::Constant { rows } => Ok(self.constant(rows.clone())),
            Node::Union { inputs } => {
                let mut colls = Vec::with_capacity(inputs.len());
                for i in inputs {
                    colls.push(self.render(i)?);
                }
                Ok(differential_dataflow::collection::concatenate(
                    self.scope, colls,
                ))
            }
            Node::Reduce { input, keys, aggs } => {
                let coll = self.render(input)?;
                reduce::render_reduce(self, coll, &input.schema, &plan.schema, *keys, aggs)
            }
            Node::TopK {
                input,
                group,
                order,
                offset,
                limit,
            } => {
                let coll = self.render(input)?;
                Ok(window::render_topk(coll, group, order, *offset, *limit))
            }
            Node::Window {
                input,
                partition,
                order,
                funcs,
            } => {
                let coll = self.render(input)?;
                Ok(window::render_window(coll, partition, order, funcs))
            }
            Node::Join {
                left,
                right,
                left_keys,
                right_keys,
                kind,
                filter,
            } => {
                let l = self.render(left)?;
                let r = self.render(right)?;
                let widths = (left.schema.fields().len(), right.schema.fields().len());
                let mut pairs = join::matched(l.clone(), r.clone(), left_keys, right_keys);
                if !filter.is_empty() {
                    let fields: Vec<_> = left
                        .schema
                        .fields()
                        .iter()
                        .chain(right.schema.fields())
                        .cloned()
                        .collect();
                    let schema =
                        std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
                    pairs = self.render_mfp(pairs, schema, filter.clone());
                }
                Ok(join::render_join(
                    l,
                    r,
                    pairs,
                    left_keys,
                    right_keys,
                    *kind,
                    widths,
                    !filter.is_empty(),
                ))
            }
        }
    }

    /// Rows present from the start of the dataflow, produced by worker 0 only.
    pub fn constant(&self, rows: Vec<Row>) -> Coll<'s> {
        let rows = if self.scope.index() == 0 {
            rows
        } else {
            Vec::new()
        };
        rows.into_iter()
            .map(|r| (r, 0, 1isize))
            .to_stream(self.scope)
            .container::<Vec<_>>()
            .as_collection()
    }

    /// Replays a source's retained log and then follows it, applying `steps` to each batch.
    /// Every row that passes is retracted at `ts + retain` at the latest (retention), computed
    /// only for the rows that pass.
    fn render_source(&mut self, name: &str, steps: &[MfpStep]) -> Result<Coll<'s>> {
        let log = self
            .sources
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::Plan(format!("source \"{name}\" does not exist")))?;
        let (ts_col, retain_ms) = {
            let l = log.borrow();
            (l.ts_col, l.retain_ms)
        };
        let all_steps = steps.to_vec();
        let scope = self.scope;
        let errors = self.errors.clone();
        let alarm = self.alarm.clone();
        let readers = self.readers.clone();
        let stream =
            source::<_, UpdateBuilder, _, _>(scope, &format!("Read {name}"), move |cap, info| {
                let activator = scope.activator_for(info.address);
                readers.borrow_mut().push(activator.clone());
                let cursor = log.borrow_mut().register(activator);
                // The capability starts at the beginning of time, so the retained rows are
                // replayed at the times they arrived; it follows the source's upper from then on.
                let mut cap = cap;
                let mut buffer = Vec::new();
                let mut delayed = Delayed::default();
                let mut asked = None;
                move |output| {
                    let log = log.borrow();
                    let (entries, end) = log.read_from(cursor.get());
                    for e in entries {
                        let t = e.time.max(*cap.time());
                        let ts = e
                            .batch
                            .column(ts_col)
                            .as_primitive::<TimestampMillisecondType>();
                        let info = mfp::RowInfo {
                            time: &|_| t,
                            diff: &|_| 1,
                            expiry: &|i| Some(ts.value(i).saturating_add(retain_ms)),
                        };
                        mfp_into(&all_steps, &e.batch, &info, &mut buffer, &errors);
                        let mut session = output.session(&cap);
                        for (row, time, diff) in buffer.drain(..) {
                            if time <= t {
                                session.give((row, time, diff));
                            } else {
                                delayed.hold(row, time, diff);
                            }
                        }
                    }
                    cursor.set(end);
                    if log.upper > *cap.time() {
                        // Updates that fall due before the new upper go out under the old capability.
                        output
                            .session(&cap)
                            .give_iterator(delayed.take_before(Some(log.upper)));
                        cap.downgrade(&log.upper);
                    }
                    alarm.keep(&mut asked, delayed.first(), Some(*cap.time()));
                }
            });
        Ok(stream.as_collection())
    }

    /// Map/filter/project over rows: rows are gathered into a record batch per message and
    /// evaluated vectorized.
    pub fn render_mfp(
        &self,
        coll: Coll<'s>,
        schema: datafusion::arrow::datatypes::SchemaRef,
        steps: Vec<MfpStep>,
    ) -> Coll<'s> {
        if steps.is_empty() {
            return coll;
        }
        let errors = self.errors.clone();
        mfp_operator(
            coll.inner,
            self.alarm.clone(),
            move |data: &mut Vec<(Row, Time, isize)>, buffer| {
                let batch = match rows_to_batch(&schema, data.iter().map(|(r, _, _)| &r[..])) {
                    Ok(b) => b,
                    Err(e) => return record_error(&errors, e),
                };
                let info = mfp::RowInfo {
                    time: &|i| data[i].1,
                    diff: &|i| data[i].2,
                    expiry: &|_| None,
                };
                mfp_into(&steps, &batch, &info, buffer, &errors);
            },
        )
    }

    /// Map/filter/project over a view's, rule's or shared aggregation's arrangement: each of its
    /// batches is converted to Arrow once per worker, however many dataflows read it (see
    /// [`spans`]), and only the rows that pass become rows again.
    fn render_relation_mfp(
        &mut self,
        name: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        steps: Vec<MfpStep>,
    ) -> Result<Coll<'s>> {
        let trace = self
            .traces
            .get_mut(name)
            .ok_or_else(|| EngineError::Plan(format!("relation \"{name}\" does not exist")))?;
        let arranged = trace.import_named(self.scope, name);
        let reader = spans::Reader::new(&self.spans, name);
        let probe = match steps.first() {
            Some(MfpStep::Filter(pred)) => spans::RangeProbe::find(pred, &schema),
            _ => None,
        };
        let errors = self.errors.clone();
        Ok(mfp_operator(
            arranged.stream,
            self.alarm.clone(),
            move |data: &mut Vec<differential_dataflow::trace::SpanOf<RowTrace>>, buffer| {
                for batch in data.iter().filter_map(|s| s.inner.as_ref()) {
                    match reader.read(batch, &schema) {
                        Ok(span) => {
                            let probe = probe.as_ref().filter(|_| reader.indexed());
                            eval_span(&span, &steps, probe, buffer, &errors);
                        }
                        Err(e) => return record_error(&errors, e),
                    }
                }
            },
        ))
    }
}

/// Applies `steps` to the Arrow form of an arrangement batch. With a `probe` (the span is
/// indexed), only the rows in the filter's range are evaluated.
pub(crate) fn eval_span(
    span: &spans::ArrowSpan,
    steps: &[MfpStep],
    probe: Option<&spans::RangeProbe>,
    buffer: &mut Vec<(Row, Time, isize)>,
    errors: &Rc<RefCell<DataflowErrors>>,
) {
    let (part, picked) = match probe {
        Some(p) => {
            let rows = span.candidates(p);
            if rows.is_empty() {
                return;
            }
            let rows = UInt32Array::from(rows);
            match take_record_batch(&span.batch, &rows) {
                Ok(b) => (b, Some(rows)),
                Err(e) => return record_error(errors, e.into()),
            }
        }
        None => (span.batch.clone(), None),
    };
    let at = |i: usize| picked.as_ref().map_or(i, |p| p.value(i) as usize);
    let info = mfp::RowInfo {
        time: &|i| span.times[at(i)],
        diff: &|i| span.diffs[at(i)],
        expiry: &|_| None,
    };
    mfp_into(steps, &part, &info, buffer, errors);
}

/// An operator that turns each input message into updates with `eval` and sends them on, holding
/// back the updates dated after the message's time until the frontier reaches them (and asking
/// `alarm` to move the dataflow then).
fn mfp_operator<'s, C, F>(
    stream: timely::dataflow::Stream<'s, Time, C>,
    alarm: Alarm,
    mut eval: F,
) -> Coll<'s>
where
    C: timely::Container + 'static,
    F: FnMut(&mut C, &mut Vec<(Row, Time, isize)>) + 'static,
{
    stream
        .unary_frontier::<UpdateBuilder, _, _, _>(Pipeline, "Mfp", move |_cap, _info| {
            let mut buffer = Vec::new();
            let mut delayed = Delayed::default();
            // A capability at the earliest held update, while there is one.
            let mut held: Option<Capability<Time>> = None;
            let mut asked = None;
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    eval(data, &mut buffer);
                    let Some(&now) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for (row, time, diff) in buffer.drain(..) {
                        if time <= now {
                            session.give((row, time, diff));
                        } else {
                            if held.as_ref().is_none_or(|h| time < *h.time()) {
                                held = Some(cap.delayed(&time, 0));
                            }
                            delayed.hold(row, time, diff);
                        }
                    }
                });
                let upper = frontier.frontier().iter().next().copied();
                if let Some(h) = &mut held {
                    output.session(h).give_iterator(delayed.take_before(upper));
                    match delayed.first() {
                        Some(t) => h.downgrade(&t),
                        None => held = None,
                    }
                }
                alarm.keep(&mut asked, delayed.first(), upper);
            }
        })
        .as_collection()
}

/// Updates dated after the moment they are produced (retractions by temporal filters and
/// retention, delayed insertions), held by the operator that made them until they fall due.
///
/// Sending them downstream at once would be correct, but every arrangement would then carry
/// them in its batcher and re-examine all of them each time the frontier moves: with a one-minute
/// window that is a minute of updates re-sorted every tick. Held here, in time order, each is
/// touched once more when it falls due.
#[derive(Default)]
pub(crate) struct Delayed {
    pending: BTreeMap<Time, Vec<(Row, isize)>>,
}

impl Delayed {
    pub(crate) fn hold(&mut self, row: Row, time: Time, diff: isize) {
        self.pending.entry(time).or_default().push((row, diff));
    }

    pub(crate) fn first(&self) -> Option<Time> {
        self.pending.first_key_value().map(|(t, _)| *t)
    }

    /// Removes and returns the updates with times before `upper` (all of them for `None`),
    /// grouped by time in time order.
    pub(crate) fn take_times_before(
        &mut self,
        upper: Option<Time>,
    ) -> BTreeMap<Time, Vec<(Row, isize)>> {
        match upper {
            Some(u) => {
                let later = self.pending.split_off(&u);
                std::mem::replace(&mut self.pending, later)
            }
            None => std::mem::take(&mut self.pending),
        }
    }

    /// Removes and returns the updates with times before `upper` (all of them for `None`).
    fn take_before(&mut self, upper: Option<Time>) -> impl Iterator<Item = (Row, Time, isize)> {
        self.take_times_before(upper)
            .into_iter()
            .flat_map(|(t, rows)| rows.into_iter().map(move |(r, d)| (r, t, d)))
    }
}

fn mfp_into(
    steps: &[MfpStep],
    batch: &datafusion::arrow::record_batch::RecordBatch,
    info: &mfp::RowInfo<'_>,
    out: &mut Vec<(Row, Time, isize)>,
    errors: &Rc<RefCell<DataflowErrors>>,
) {
    mfp::mfp_updates(steps, batch, info, out, &mut |e| record_error(errors, e));
}

pub(crate) fn record_error(errors: &Rc<RefCell<DataflowErrors>>, e: EngineError) {
    let mut errs = errors.borrow_mut();
    if errs.count == 0 || errs.count.is_power_of_two() {
        tracing::warn!(error = %e, occurrences = errs.count + 1, "a row could not be evaluated and was left out");
    }
    errs.count += 1;
    errs.last = Some(e.to_string());
}

/// The rows of an arrangement at time `t`, with their multiplicities.
pub(crate) fn read_trace_at(trace: &mut RowTrace, t: Time) -> Vec<(Row, isize)> {
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
