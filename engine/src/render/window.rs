//! `ORDER BY ... LIMIT` (top-k) and window functions.
//!
//! Both order rows within a group. A top-k group keeps its rows in order (with the keyed
//! operator of [`super::keyed`]), so a row arriving or leaving costs a search in its group and a
//! look at the first `offset + limit` rows, never a rescan of the group. Window functions need
//! every row of a partition next to its neighbours, so a change recomputes its partition.

use std::cmp::Ordering;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::keyed::{keyed, KeyCols, KeyedState};
use super::reduce::compare_by;
use super::Coll;
use crate::plan::{SortKey, WindowFunc};
use crate::row::{Datum, Row};

fn in_order(order: &[SortKey], a: &Row, b: &Row) -> Ordering {
    compare_by(order, 0, a, b).then_with(|| a.cmp(b))
}

/// A row as a top-k orders it.
struct InOrder {
    row: Row,
    order: Rc<[SortKey]>,
}

impl PartialEq for InOrder {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InOrder {}

impl PartialOrd for InOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        in_order(&self.order, &self.row, &other.row)
    }
}

struct TopCtx {
    order: Rc<[SortKey]>,
    offset: usize,
    limit: usize,
}

/// A group of a top-k: all its rows in order, with their multiplicities.
struct TopState {
    rows: BTreeMap<InOrder, isize>,
}

impl KeyedState for TopState {
    type Ctx = TopCtx;

    fn new(_: &TopCtx) -> Self {
        TopState {
            rows: BTreeMap::new(),
        }
    }

    fn update(&mut self, ctx: &TopCtx, row: &Row, diff: isize) {
        let key = InOrder {
            row: row.clone(),
            order: ctx.order.clone(),
        };
        match self.rows.entry(key) {
            Entry::Vacant(e) => {
                e.insert(diff);
            }
            Entry::Occupied(mut e) => {
                *e.get_mut() += diff;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    fn output(&self, ctx: &TopCtx, _key: &[Datum], out: &mut Vec<(Row, isize)>) {
        let (mut skip, mut left) = (ctx.offset, ctx.limit);
        for (r, m) in &self.rows {
            if left == 0 {
                break;
            }
            let m = (*m).max(0) as usize;
            let skipped = skip.min(m);
            skip -= skipped;
            let take = (m - skipped).min(left);
            if take > 0 {
                out.push((r.row.clone(), take as isize));
                left -= take;
            }
        }
        out.sort();
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// `ORDER BY ... LIMIT` per group: each group keeps its rows in order, so a row arriving or
/// leaving costs a search in its group and a look at the first `offset + limit` rows.
pub(crate) fn render_topk<'s>(
    input: Coll<'s>,
    group: &[usize],
    order: &[SortKey],
    offset: usize,
    limit: usize,
) -> Coll<'s> {
    let ctx = TopCtx {
        order: order.to_vec().into(),
        offset,
        limit,
    };
    keyed::<TopState>(input, "TopK", KeyCols::Cols(group.to_vec()), ctx)
}

fn key_of(row: &Row, cols: &[usize]) -> Row {
    cols.iter().map(|c| row[*c].clone()).collect()
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
    differential_dataflow::consolidation::consolidate(&mut result);
    out.extend(result);
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
        let ctx = TopCtx {
            order: vec![SortKey {
                column: 0,
                descending: false,
                nulls_first: false,
            }]
            .into(),
            offset: 1,
            limit: 3,
        };
        let mut state = TopState::new(&ctx);
        state.update(&ctx, &row(&[3]), 1);
        state.update(&ctx, &row(&[1]), 2);
        state.update(&ctx, &row(&[2]), 3);
        state.update(&ctx, &row(&[0]), 1);
        state.update(&ctx, &row(&[0]), -1);
        let mut out = Vec::new();
        state.output(&ctx, &[], &mut out);
        assert_eq!(out, vec![(row(&[1]), 1), (row(&[2]), 2)]);
        for (r, m) in [(3, 1), (1, 2), (2, 3)] {
            state.update(&ctx, &row(&[r]), -m);
        }
        assert!(state.is_empty());
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
