//! An operator that keeps state per key and applies updates to it in time order.
//!
//! Updates are exchanged by key, held until their time is complete, and then applied time by
//! time: each key touched at a time reports its output rows before and after, and the difference
//! is emitted at that time. Logical time is totally ordered, so no history is kept: a retraction
//! costs what its insertion cost, whatever the key's size. GROUP BY aggregates
//! ([`super::reduce`]) and top-k ([`super::window`]) are such states.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use differential_dataflow::AsCollection;
use foldhash::fast::FixedState;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

use super::{Coll, Delayed, Time, UpdateBuilder};
use crate::row::{Datum, Row};

/// The seed of the hash that places a key on a worker. Fixed, so every process agrees.
const SEED: u64 = 0x7c51;

fn key_hash(key: &[Datum]) -> u64 {
    FixedState::with_seed(SEED).hash_one(key)
}

/// The columns of a row that make its key.
#[derive(Clone)]
pub(crate) enum KeyCols {
    /// The first n columns.
    Prefix(usize),
    Cols(Vec<usize>),
}

impl KeyCols {
    /// The hash that places a row's key on a worker, computed without building the key.
    fn route(&self, row: &Row) -> u64 {
        match self {
            KeyCols::Prefix(n) => key_hash(&row[..*n]),
            KeyCols::Cols(cols) => {
                let mut h = FixedState::with_seed(SEED).build_hasher();
                cols.iter().for_each(|c| row[*c].hash(&mut h));
                h.finish()
            }
        }
    }

    fn key<'a>(&self, row: &'a Row, buf: &'a mut Vec<Datum>) -> &'a [Datum] {
        match self {
            KeyCols::Prefix(n) => &row[..*n],
            KeyCols::Cols(cols) => {
                buf.clear();
                buf.extend(cols.iter().map(|c| row[*c].clone()));
                buf
            }
        }
    }
}

/// What the operator keeps for one key.
pub(crate) trait KeyedState: 'static {
    /// What every key's state shares (the aggregates, the order).
    type Ctx: 'static;
    fn new(ctx: &Self::Ctx) -> Self;
    /// Applies one update (`diff` copies of `row`, removed when negative).
    fn update(&mut self, ctx: &Self::Ctx, row: &Row, diff: isize);
    /// The rows the key produces now, with their multiplicities, sorted.
    fn output(&self, ctx: &Self::Ctx, key: &[Datum], out: &mut Vec<(Row, isize)>);
    /// Whether the state holds nothing, so the key can be forgotten.
    fn is_empty(&self) -> bool;
}

struct Slot<S> {
    key: Row,
    state: S,
    /// The last round of updates that touched the key.
    round: u64,
}

/// Emits `after - before` (both sorted by row) at `time`; rows in both with the same
/// multiplicity are left out.
fn emit_difference(
    before: impl Iterator<Item = (Row, isize)>,
    after: impl Iterator<Item = (Row, isize)>,
    time: Time,
    give: &mut impl FnMut((Row, Time, isize)),
) {
    let mut b = before.peekable();
    let mut a = after.peekable();
    loop {
        let order = match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((rb, _)), Some((ra, _))) => rb.cmp(ra),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (r, m) = b.next().expect("peeked");
                give((r, time, -m));
            }
            std::cmp::Ordering::Greater => {
                let (r, m) = a.next().expect("peeked");
                give((r, time, m));
            }
            std::cmp::Ordering::Equal => {
                let ((r, mb), (_, ma)) = (b.next().expect("peeked"), a.next().expect("peeked"));
                if ma != mb {
                    give((r, time, ma - mb));
                }
            }
        }
    }
}

/// Keeps an `S` per key of `input`'s rows and produces the rows the states produce.
pub(crate) fn keyed<'s, S: KeyedState>(
    input: Coll<'s>,
    name: &str,
    keys: KeyCols,
    ctx: S::Ctx,
) -> Coll<'s> {
    let k2 = keys.clone();
    let exchange = Exchange::new(move |(row, _, _): &(Row, Time, isize)| k2.route(row));
    input
        .inner
        .unary_frontier::<UpdateBuilder, _, _, _>(exchange, name, move |_cap, _info| {
            let mut pending = Delayed::default();
            // A capability at the earliest pending time, while there is one.
            let mut held: Option<Capability<Time>> = None;
            let mut index: HashMap<Row, usize, FixedState> = HashMap::default();
            let mut slots: Vec<Option<Slot<S>>> = Vec::new();
            let mut free: Vec<usize> = Vec::new();
            // The keys touched at the time being applied, with how many rows of `before` are
            // their output before it.
            let mut touched: Vec<(usize, usize)> = Vec::new();
            let mut before: Vec<(Row, isize)> = Vec::new();
            let mut after: Vec<(Row, isize)> = Vec::new();
            // Numbers the times applied, so a key knows whether it is in `touched` already.
            let mut round = 0u64;
            let mut buf: Vec<Datum> = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (row, time, diff) in data.drain(..) {
                        if held.as_ref().is_none_or(|h| time < *h.time()) {
                            held = Some(cap.delayed(&time, 0));
                        }
                        pending.hold(row, time, diff);
                    }
                });
                let Some(cap) = held.as_mut() else { return };
                let due = pending.take_times_before(frontier.frontier().iter().next().copied());
                let mut session = output.session(cap);
                let mut give = |u| session.give(u);
                for (time, updates) in due {
                    round += 1;
                    for (row, diff) in updates {
                        let key = keys.key(&row, &mut buf);
                        let i = match index.get(key) {
                            Some(i) => *i,
                            None => {
                                let slot = Slot {
                                    key: key.to_vec().into_boxed_slice(),
                                    state: S::new(&ctx),
                                    round: 0,
                                };
                                let i = match free.pop() {
                                    Some(i) => {
                                        slots[i] = Some(slot);
                                        i
                                    }
                                    None => {
                                        slots.push(Some(slot));
                                        slots.len() - 1
                                    }
                                };
                                index.insert(key.to_vec().into_boxed_slice(), i);
                                i
                            }
                        };
                        let slot = slots[i].as_mut().expect("a live slot");
                        if slot.round != round {
                            slot.round = round;
                            let len = before.len();
                            slot.state.output(&ctx, &slot.key, &mut before);
                            touched.push((i, before.len() - len));
                        }
                        slot.state.update(&ctx, &row, diff);
                    }
                    let mut befores = before.drain(..);
                    for (i, len) in touched.drain(..) {
                        let slot = slots[i].as_ref().expect("a live slot");
                        slot.state.output(&ctx, &slot.key, &mut after);
                        emit_difference(
                            befores.by_ref().take(len),
                            after.drain(..),
                            time,
                            &mut give,
                        );
                        if slot.state.is_empty() {
                            index.remove(&slot.key);
                            slots[i] = None;
                            free.push(i);
                        }
                    }
                }
                drop(session);
                match pending.first() {
                    Some(t) => cap.downgrade(&t),
                    None => held = None,
                }
            }
        })
        .as_collection()
}
