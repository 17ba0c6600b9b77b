//! Inner and left equi-joins.
//!
//! Both sides are keyed by their join columns and arranged by key (exchanged across workers), and
//! matching pairs are concatenated, left columns first. SQL never matches a NULL key. A left join
//! adds the left rows whose key has no match on the right, padded with NULLs; that set is kept
//! incrementally as an antijoin against the distinct right keys, so a right row arriving later
//! retracts the padded row.

use super::Coll;
use crate::plan::JoinKind;
use crate::row::{Datum, Row};

fn key_of(row: &Row, cols: &[usize]) -> Option<Row> {
    let key: Row = cols.iter().map(|c| row[*c].clone()).collect();
    if key.iter().any(Datum::is_null) {
        None
    } else {
        Some(key)
    }
}

pub(crate) fn render_join<'s>(
    left: Coll<'s>,
    right: Coll<'s>,
    left_keys: &[usize],
    right_keys: &[usize],
    kind: JoinKind,
    right_width: usize,
) -> Coll<'s> {
    let lk = left_keys.to_vec();
    let rk = right_keys.to_vec();
    let l = left
        .clone()
        .flat_map(move |row: Row| key_of(&row, &lk).map(|k| (k, row)));
    let r = right.flat_map(move |row: Row| key_of(&row, &rk).map(|k| (k, row)));
    let matched = l.clone().join_map(r.clone(), |_k, a: &Row, b: &Row| {
        a.iter().chain(b.iter()).cloned().collect::<Row>()
    });
    if kind == JoinKind::Inner {
        return matched;
    }
    let pad = move |a: &Row| {
        a.iter()
            .cloned()
            .chain(std::iter::repeat_n(Datum::Null, right_width))
            .collect::<Row>()
    };
    let pad2 = pad;
    let right_keys_present = r.map(|(k, _)| k).distinct();
    let unmatched = l.antijoin(right_keys_present).map(move |(_, a)| pad(&a));
    let lk = left_keys.to_vec();
    let null_keyed = left
        .filter(move |row: &Row| lk.iter().any(|c| row[*c].is_null()))
        .map(move |a| pad2(&a));
    matched.concat(unmatched).concat(null_keyed)
}
