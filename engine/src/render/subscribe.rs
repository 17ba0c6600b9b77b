//! The sink behind subscriptions: ships a collection's changes and progress to a subscriber.
//!
//! Updates are buffered until the input frontier passes their time, consolidated, and sent with
//! their time; times before the subscription's `as_of` are reported at `as_of`, which makes the
//! first message the snapshot. After each batch the worker reports its frontier, so the
//! subscriber knows when a time is complete on every worker.

use std::collections::BTreeMap;

use differential_dataflow::consolidation::consolidate;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use tokio::sync::mpsc::UnboundedSender;

use super::{Coll, Time};
use crate::row::Row;

/// What one worker tells a subscriber.
#[derive(Debug)]
pub(crate) enum WorkerUpdate {
    /// Changes at one time, complete for this worker.
    Changes(Time, Vec<(Row, isize)>),
    /// This worker will send nothing more before this time (`None`: nothing more at all).
    Frontier(Option<Time>),
}

pub(crate) fn render_subscribe(
    coll: Coll<'_>,
    as_of: Time,
    worker: usize,
    tx: UnboundedSender<(usize, WorkerUpdate)>,
) {
    let mut pending: BTreeMap<Time, Vec<(Row, isize)>> = BTreeMap::new();
    let mut reported: Option<Option<Time>> = None;
    coll.inner
        .sink(Pipeline, "Subscribe", move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for (row, t, d) in data.drain(..) {
                    pending.entry(t.max(as_of)).or_default().push((row, d));
                }
            });
            let f = frontier.frontier().iter().next().copied();
            while let Some((&t, _)) = pending.first_key_value() {
                if f.is_some_and(|f| t >= f) {
                    break;
                }
                let (t, mut changes) = pending.pop_first().expect("non-empty");
                consolidate(&mut changes);
                if !changes.is_empty() {
                    let _ = tx.send((worker, WorkerUpdate::Changes(t, changes)));
                }
            }
            if reported != Some(f) {
                reported = Some(f);
                let _ = tx.send((worker, WorkerUpdate::Frontier(f)));
            }
        });
}
