//! Equi-joins: inner, left, right, full, semi (`IN`, `EXISTS`), anti (`NOT EXISTS`) and `NOT IN`.
//!
//! Both sides are keyed by their join columns and arranged by key (exchanged across workers), and
//! matching pairs are concatenated, left columns first; a pair must also pass the join's other
//! conditions, if any. SQL never matches a NULL key. Every other kind is derived from the matched
//! pairs, incrementally: the left rows with a match are a semijoin (against the distinct right
//! keys, or, with other conditions, against the distinct left halves of the matched pairs), and
//! the rows without one are the side minus those, so a row arriving on one side later retracts the
//! padded or anti-joined rows it now matches.

use super::Coll;
use crate::plan::JoinKind;
use crate::row::{Datum, Row};

/// Whether a row's key has a NULL: SQL never matches such a key.
fn has_null_key(row: &Row, cols: &[usize]) -> bool {
    cols.iter().any(|c| row[*c].is_null())
}

fn key_of(row: &Row, cols: &[usize]) -> Option<Row> {
    (!has_null_key(row, cols)).then(|| cols.iter().map(|c| row[*c].clone()).collect())
}

type Keyed<'s> = differential_dataflow::VecCollection<'s, super::Time, (Row, Row), isize>;

fn keyed<'s>(side: Coll<'s>, cols: &[usize]) -> Keyed<'s> {
    let cols = cols.to_vec();
    side.flat_map(move |row: Row| key_of(&row, &cols).map(|k| (k, row)))
}

/// The pairs of left and right rows whose keys are equal (and not NULL), concatenated.
pub(crate) fn matched<'s>(
    left: Coll<'s>,
    right: Coll<'s>,
    left_keys: &[usize],
    right_keys: &[usize],
) -> Coll<'s> {
    keyed(left, left_keys).join_map(keyed(right, right_keys), |_k, a: &Row, b: &Row| {
        a.iter().chain(b.iter()).cloned().collect::<Row>()
    })
}

/// One side of a join and how to find its rows that have a match.
struct Side<'s> {
    rows: Coll<'s>,
    keys: Vec<usize>,
    /// Where the side's columns are in a matched pair.
    range: std::ops::Range<usize>,
}

impl<'s> Side<'s> {
    /// The side's rows with a match: with no other conditions, those whose key the other side
    /// has; otherwise those that are the side's half of a matched pair.
    fn with_match(&self, other: &Side<'s>, pairs: &Coll<'s>, filtered: bool) -> Coll<'s> {
        if filtered {
            let range = self.range.clone();
            let halves = pairs
                .clone()
                .map(move |p: Row| p[range.clone()].to_vec().into_boxed_slice());
            return self
                .rows
                .clone()
                .map(|r| (r, ()))
                .semijoin(halves.distinct())
                .map(|(r, ())| r);
        }
        let other_keys = keyed(other.rows.clone(), &other.keys)
            .map(|(k, _)| k)
            .distinct();
        keyed(self.rows.clone(), &self.keys)
            .semijoin(other_keys)
            .map(|(_, r)| r)
    }

    /// The side's rows without a match (including those with a NULL key).
    fn without_match(&self, other: &Side<'s>, pairs: &Coll<'s>, filtered: bool) -> Coll<'s> {
        self.rows
            .clone()
            .concat(self.with_match(other, pairs, filtered).negate())
    }
}

/// Renders a join whose matched pairs (after the join's other conditions) are `pairs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn render_join<'s>(
    left: Coll<'s>,
    right: Coll<'s>,
    pairs: Coll<'s>,
    left_keys: &[usize],
    right_keys: &[usize],
    kind: JoinKind,
    widths: (usize, usize),
    filtered: bool,
) -> Coll<'s> {
    let (lw, rw) = widths;
    let l = Side {
        rows: left,
        keys: left_keys.to_vec(),
        range: 0..lw,
    };
    let r = Side {
        rows: right,
        keys: right_keys.to_vec(),
        range: lw..lw + rw,
    };
    let pad_right = move |a: Row| {
        a.iter()
            .cloned()
            .chain(std::iter::repeat_n(Datum::Null, rw))
            .collect::<Row>()
    };
    let pad_left = move |b: Row| {
        std::iter::repeat_n(Datum::Null, lw)
            .chain(b.iter().cloned())
            .collect::<Row>()
    };
    match kind {
        JoinKind::Inner => pairs,
        JoinKind::Semi => l.with_match(&r, &pairs, filtered),
        JoinKind::Anti => l.without_match(&r, &pairs, filtered),
        JoinKind::Left => pairs
            .clone()
            .concat(l.without_match(&r, &pairs, filtered).map(pad_right)),
        JoinKind::Right => pairs
            .clone()
            .concat(r.without_match(&l, &pairs, filtered).map(pad_left)),
        JoinKind::Full => pairs
            .clone()
            .concat(l.without_match(&r, &pairs, filtered).map(pad_right))
            .concat(r.without_match(&l, &pairs, filtered).map(pad_left)),
        JoinKind::NotIn => not_in(&l, &r, &pairs, filtered),
    }
}

/// `x NOT IN (SELECT y ...)`: true when y has no NULL and no value equal to x; with x NULL, true
/// only when the subquery is empty.
fn not_in<'s>(l: &Side<'s>, r: &Side<'s>, pairs: &Coll<'s>, filtered: bool) -> Coll<'s> {
    let rk = r.keys.clone();
    let right_has_null = r
        .rows
        .clone()
        .filter(move |row: &Row| has_null_key(row, &rk))
        .map(|_| ())
        .distinct();
    let right_has_rows = r.rows.clone().map(|_| ()).distinct();
    let lk = l.keys.clone();
    let lk2 = l.keys.clone();
    let unmatched = l
        .without_match(r, pairs, filtered)
        .filter(move |row: &Row| !has_null_key(row, &lk))
        .map(|row| ((), row))
        .antijoin(right_has_null)
        .map(|((), row)| row);
    let null_keyed = l
        .rows
        .clone()
        .filter(move |row: &Row| has_null_key(row, &lk2))
        .map(|row| ((), row))
        .antijoin(right_has_rows)
        .map(|((), row)| row);
    unmatched.concat(null_keyed)
}
