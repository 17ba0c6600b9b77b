//! The sink behind subscriptions: ships a collection's changes and progress to a subscriber.
//!
//! Updates are buffered until the input frontier passes their time, consolidated, and sent with
//! their time; times before the subscription's `as_of` are reported at `as_of`, which makes the
//! first message the snapshot. After each batch the worker reports its frontier, so the
//! subscriber knows when a time is complete on every worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use differential_dataflow::consolidation::consolidate;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use tokio::sync::mpsc::UnboundedSender;

use super::{Coll, Time};
use crate::row::{Datum, Row};

/// The changes sent to a subscriber and not yet taken by it, bounded: once a bound would be
/// passed the subscription is *lagging*, and the workers send it no more changes (only progress),
/// so a subscriber that stops reading costs at most the bound.
#[derive(Debug)]
pub struct Backlog {
    changes: AtomicUsize,
    bytes: AtomicUsize,
    max_changes: AtomicUsize,
    max_bytes: AtomicUsize,
    lagging: AtomicBool,
    /// Changes left out since the subscription began lagging.
    dropped: AtomicU64,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            changes: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_changes: AtomicUsize::new(usize::MAX),
            max_bytes: AtomicUsize::new(usize::MAX),
            lagging: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Backlog {
    /// Sets the bounds (unbounded until set).
    pub fn bound(&self, changes: usize, bytes: usize) {
        self.max_changes.store(changes.max(1), Ordering::Relaxed);
        self.max_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    /// Takes `changes` of `bytes` into the backlog, unless that passes a bound (then the
    /// subscription lags from now on and they are left out).
    fn admit(&self, changes: usize, bytes: usize) -> bool {
        if !self.lagging.load(Ordering::Relaxed) {
            let c = self.changes.fetch_add(changes, Ordering::Relaxed) + changes;
            let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            if c <= self.max_changes.load(Ordering::Relaxed)
                && b <= self.max_bytes.load(Ordering::Relaxed)
            {
                return true;
            }
            self.release(changes, bytes);
            self.lagging.store(true, Ordering::Relaxed);
        }
        self.dropped.fetch_add(changes as u64, Ordering::Relaxed);
        false
    }

    /// The subscriber took `changes` of `bytes`.
    pub(crate) fn release(&self, changes: usize, bytes: usize) {
        self.changes.fetch_sub(changes, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Changes and bytes waiting for the subscriber now.
    pub fn held(&self) -> (usize, usize) {
        (
            self.changes.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether a bound was passed: the subscriber fell behind, and changes were left out.
    pub fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// Changes left out since it began lagging, plus those it held then.
    pub fn behind(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.changes.load(Ordering::Relaxed) as u64
    }
}

/// About how much memory a change takes while it waits for its subscriber.
pub(crate) fn change_bytes(row: &Row) -> usize {
    48 + row
        .iter()
        .map(|d| match d {
            Datum::Str(s) if s.len() > 23 => 32 + s.len(),
            _ => 32,
        })
        .sum::<usize>()
}

/// What one worker tells a subscriber.
#[derive(Debug)]
pub(crate) enum WorkerUpdate {
    /// Changes at one time, complete for this worker, and the changes and bytes the backlog
    /// counts for them (none for the snapshot: it is what subscribing asks for, like a query's
    /// result, and is not held to the bound).
    Changes(Time, Vec<(Row, isize)>, usize, usize),
    /// This worker will send nothing more before this time (`None`: nothing more at all).
    Frontier(Option<Time>),
}

pub(crate) fn render_subscribe(
    coll: Coll<'_>,
    as_of: Time,
    worker: usize,
    tx: UnboundedSender<(usize, WorkerUpdate)>,
    backlog: Arc<Backlog>,
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
            ship(&mut pending, f, as_of, &backlog, &tx, worker);
            if reported != Some(f) {
                reported = Some(f);
                let _ = tx.send((worker, WorkerUpdate::Frontier(f)));
            }
        });
}

/// Sends the changes of every time before the frontier `f` (all for `None`), consolidated: those
/// at `as_of` as the snapshot, the others within the backlog's bound. Whether any time had
/// changes.
pub(crate) fn ship(
    pending: &mut BTreeMap<Time, Vec<(Row, isize)>>,
    f: Option<Time>,
    as_of: Time,
    backlog: &Backlog,
    tx: &UnboundedSender<(usize, WorkerUpdate)>,
    worker: usize,
) -> bool {
    let mut shipped = false;
    while let Some((&t, _)) = pending.first_key_value() {
        if f.is_some_and(|f| t >= f) {
            break;
        }
        let (t, mut changes) = pending.pop_first().expect("non-empty");
        consolidate(&mut changes);
        if changes.is_empty() {
            continue;
        }
        shipped = true;
        if t == as_of {
            let _ = tx.send((worker, WorkerUpdate::Changes(t, changes, 0, 0)));
            continue;
        }
        let (n, bytes) = (
            changes.len(),
            changes.iter().map(|(r, _)| change_bytes(r)).sum(),
        );
        if backlog.admit(n, bytes) {
            let _ = tx.send((worker, WorkerUpdate::Changes(t, changes, n, bytes)));
        }
    }
    shipped
}
