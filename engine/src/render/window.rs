//! `ORDER BY ... LIMIT` (top-k) and window functions.
//!
//! Both sort rows within a group. Top-k is kept as Materialize keeps it, by a hierarchy of
//! reductions: rows are spread over 4096 buckets of each group by a hash of the row, each bucket
//! keeps its own top rows, then 256 buckets keep the top of those, then 16, then the group. A row
//! arriving or leaving rescans its bucket of the first stage and a few top lists above it, never
//! the whole group. Window functions need every row of a partition in order, so a change
//! recomputes its partition.

use std::cmp::Ordering;

use super::reduce::{compare_by, key_hash};
use super::Coll;
use crate::plan::{SortKey, WindowFunc};
use crate::row::{Datum, Row};

/// Buckets of the stages of top-k below the group's own.
const STAGES: [u64; 3] = [4096, 256, 16];

fn in_order(order: &[SortKey], a: &Row, b: &Row) -> Ordering {
    compare_by(order, 0, a, b).then_with(|| a.cmp(b))
}

/// The rows of `vals` from `offset` to `offset + limit` in order, with their multiplicities.
fn top(
    vals: &[(&Row, isize)],
    order: &[SortKey],
    offset: usize,
    limit: usize,
    out: &mut Vec<(Row, isize)>,
) {
    let mut rows: Vec<(&Row, usize)> = vals
        .iter()
        .filter(|(_, m)| *m > 0)
        .map(|(r, m)| (*r, *m as usize))
        .collect();
    rows.sort_by(|a, b| in_order(order, a.0, b.0));
    let (mut skip, mut left) = (offset, limit);
    for (row, m) in rows {
        if left == 0 {
            break;
        }
        let skipped = skip.min(m);
        skip -= skipped;
        let take = (m - skipped).min(left);
        if take > 0 {
            out.push((row.clone(), take as isize));
            left -= take;
        }
    }
}

fn key_of(row: &Row, cols: &[usize]) -> Row {
    cols.iter().map(|c| row[*c].clone()).collect()
}

pub(crate) fn render_topk<'s>(
    input: Coll<'s>,
    group: &[usize],
    order: &[SortKey],
    offset: usize,
    limit: usize,
) -> Coll<'s> {
    let total = offset + limit;
    let group = group.to_vec();
    let mut stage = input.map(move |row: Row| (key_of(&row, &group), row));
    for buckets in STAGES {
        let order = order.to_vec();
        stage = stage
            .map(move |(key, row): (Row, Row)| {
                let bucket = Datum::Int((key_hash(&row) % buckets) as i64);
                let key: Row = key.iter().cloned().chain([bucket]).collect();
                (key, row)
            })
            .reduce(move |_k, vals: &[(&Row, isize)], out| top(vals, &order, 0, total, out))
            .map(|(key, row): (Row, Row)| (key[..key.len() - 1].to_vec().into_boxed_slice(), row));
    }
    let order = order.to_vec();
    stage
        .reduce(move |_k, vals: &[(&Row, isize)], out| top(vals, &order, offset, limit, out))
        .map(|(_, row): (Row, Row)| row)
}

/// The window functions' values for each row of one partition, in order.
fn window_rows(
    vals: &[(&Row, isize)],
    order: &[SortKey],
    funcs: &[WindowFunc],
    out: &mut Vec<(Row, isize)>,
) {
    let mut rows: Vec<&Row> = Vec::new();
    let mut sorted: Vec<(&Row, isize)> = vals.iter().filter(|(_, m)| *m > 0).cloned().collect();
    sorted.sort_by(|a, b| in_order(order, a.0, b.0));
    for (row, m) in sorted {
        rows.extend(std::iter::repeat_n(row, m as usize));
    }
    let (mut rank, mut dense) = (0i64, 0i64);
    let mut result: Vec<(Row, isize)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if i == 0 || compare_by(order, 0, rows[i - 1], row) != Ordering::Equal {
            rank = i as i64 + 1;
            dense += 1;
        }
        let mut full: Vec<Datum> = row.to_vec();
        for f in funcs {
            full.push(match f {
                WindowFunc::RowNumber => Datum::Int(i as i64 + 1),
                WindowFunc::Rank => Datum::Int(rank),
                WindowFunc::DenseRank => Datum::Int(dense),
                WindowFunc::Shift {
                    arg,
                    offset,
                    default,
                } => {
                    let j = i as i64 - offset;
                    if j >= 0 && (j as usize) < rows.len() {
                        rows[j as usize][*arg].clone()
                    } else {
                        default.clone()
                    }
                }
                WindowFunc::FirstValue { arg } => rows[0][*arg].clone(),
            });
        }
        result.push((full.into_boxed_slice(), 1));
    }
    // Equal rows with equal values (rank and lag of duplicates) are one row with a multiplicity.
    result.sort();
    for (row, m) in result {
        match out.last_mut() {
            Some((last, n)) if *last == row => *n += m,
            _ => out.push((row, m)),
        }
    }
}

pub(crate) fn render_window<'s>(
    input: Coll<'s>,
    partition: &[usize],
    order: &[SortKey],
    funcs: &[WindowFunc],
) -> Coll<'s> {
    let partition = partition.to_vec();
    let (order, funcs) = (order.to_vec(), funcs.to_vec());
    input
        .map(move |row: Row| (key_of(&row, &partition), row))
        .reduce(move |_k, vals: &[(&Row, isize)], out| window_rows(vals, &order, &funcs, out))
        .map(|(_, row): (Row, Row)| row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[i64]) -> Row {
        v.iter().map(|x| Datum::Int(*x)).collect()
    }

    #[test]
    fn top_skips_and_takes_across_multiplicities() {
        let (a, b, c) = (row(&[3]), row(&[1]), row(&[2]));
        let vals = vec![(&a, 1), (&b, 2), (&c, 3)];
        let order = [SortKey {
            column: 0,
            descending: false,
            nulls_first: false,
        }];
        let mut out = Vec::new();
        top(&vals, &order, 1, 3, &mut out);
        assert_eq!(out, vec![(row(&[1]), 1), (row(&[2]), 2)]);
    }

    #[test]
    fn ranks_and_shifts_follow_the_order() {
        let (a, b, c) = (row(&[10, 1]), row(&[20, 2]), row(&[20, 3]));
        let vals = vec![(&a, 1), (&b, 1), (&c, 1)];
        let order = [SortKey {
            column: 0,
            descending: false,
            nulls_first: false,
        }];
        let funcs = [
            WindowFunc::RowNumber,
            WindowFunc::Rank,
            WindowFunc::DenseRank,
            WindowFunc::Shift {
                arg: 1,
                offset: 1,
                default: Datum::Null,
            },
        ];
        let mut out = Vec::new();
        window_rows(&vals, &order, &funcs, &mut out);
        let rows: Vec<Vec<Datum>> = out.into_iter().map(|(r, _)| r.to_vec()).collect();
        let i = Datum::Int;
        assert_eq!(
            rows,
            vec![
                vec![i(10), i(1), i(1), i(1), i(1), Datum::Null],
                vec![i(20), i(2), i(2), i(2), i(2), i(1)],
                vec![i(20), i(3), i(3), i(2), i(2), i(2)],
            ]
        );
    }
}
