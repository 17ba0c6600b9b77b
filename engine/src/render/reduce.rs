//! GROUP BY, DISTINCT, DISTINCT ON and global aggregates.
//!
//! Two strategies, chosen per Reduce node:
//! - **updated in place**: when every aggregate is `count`, `sum`, `avg`, a variance, a `regr_*`,
//!   `bool_and`/`bool_or`, `min`, `max` or a percentile (not DISTINCT), each group keeps state
//!   that an update changes in place ([`super::keyed`]): O(1) or O(log n) per update no matter how
//!   large the group is, with no history kept (logical time is totally ordered, so updates are
//!   applied in time order once their time is complete).
//!   - Sums are integer accumulators: float sums in fixed point (2^-32 resolution, with separate
//!     NaN/±inf counts), so sums and averages are exact under retractions and never drift.
//!     Variances and regressions keep exact sums of squares and products ([`super::moments`]).
//!   - `min`, `max`, `median` and `percentile_cont` keep the group's values in order with a count
//!     each, and read the answer from the ends or walk to the rank from the nearer end;
//!     `approx_percentile_cont` keeps sketch buckets the same way.
//! - **recomputed per group**: anything else (`first_value` and `last_value`, `rate`, `string_agg`,
//!   DISTINCT aggregates) recomputes the group's aggregates from its distinct values with
//!   multiplicities, in a differential reduce.
//!
//! With no GROUP BY keys SQL wants exactly one row, also when the input is empty: a default row
//! (count 0, other aggregates null) is present exactly while the aggregate has no row of its own.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::keyed::{self, KeyCols, KeyedState};
use super::{moments, Coll, Context};
use crate::error::{EngineError, Result};
use crate::functions::{counter_rate, sketch_code, sketch_rank, sketch_value, Counter};
use crate::plan::{AggFunc, Aggregate, SortKey};
use crate::row::{repr_of, Datum, Repr, Row, F64};

const FLOAT_SCALE: f64 = 4294967296.0; // 2^32
/// Floats at least this large (2^90) are beyond the fixed-point range and make the sum NaN.
const FLOAT_LIMIT: f64 = 1237940039285380274899124224.0;

/// Accumulator slots of one aggregate.
fn slots(func: &AggFunc) -> usize {
    match func {
        AggFunc::Count => 1,
        // non-null count, true count
        AggFunc::BoolAnd | AggFunc::BoolOr => 2,
        AggFunc::Var { .. } => moments::VAR_SLOTS,
        AggFunc::Regr { .. } => moments::REGR_SLOTS,
        // non-null count, sum, NaN count, +inf count, -inf count
        _ => 5,
    }
}

fn accumulate(func: &AggFunc, v: &Datum, s: &mut [i128], m: i128) {
    match (func, v) {
        (AggFunc::Var { .. }, _) => moments::var_add(v, s, m),
        (_, Datum::Null) => {}
        (AggFunc::Count, _) => s[0] += m,
        (_, Datum::Int(i)) => {
            s[0] += m;
            s[1] = s[1].wrapping_add(*i as i128 * m);
        }
        (_, Datum::Float(f)) => {
            s[0] += m;
            let f = f.get();
            if f.is_nan() || (f.is_finite() && f.abs() >= FLOAT_LIMIT) {
                s[2] += m
            } else if f == f64::INFINITY {
                s[3] += m
            } else if f == f64::NEG_INFINITY {
                s[4] += m
            } else {
                s[1] = s[1].wrapping_add(((f * FLOAT_SCALE).round() as i128).wrapping_mul(m))
            }
        }
        (_, Datum::Bool(b)) => {
            s[0] += m;
            s[1] += i128::from(*b) * m;
        }
        (_, Datum::Str(_)) => {}
    }
}

fn finalize(func: &AggFunc, input_float: bool, out: &DataType, s: &[i128]) -> Datum {
    match func {
        AggFunc::Count => return Datum::Int(s[0] as i64),
        AggFunc::Regr { stat, .. } => return moments::regr_finish(s, *stat),
        AggFunc::Var { sample, sqrt } => return moments::var_finish(s, *sample, *sqrt),
        _ => {}
    }
    if s[0] == 0 {
        return Datum::Null;
    }
    match func {
        AggFunc::BoolAnd => return Datum::Bool(s[1] == s[0]),
        AggFunc::BoolOr => return Datum::Bool(s[1] > 0),
        _ => {}
    }
    let special = if s[2] != 0 || (s[3] != 0 && s[4] != 0) {
        Some(f64::NAN)
    } else if s[3] != 0 {
        Some(f64::INFINITY)
    } else if s[4] != 0 {
        Some(f64::NEG_INFINITY)
    } else {
        None
    };
    let sum = if input_float {
        s[1] as f64 / FLOAT_SCALE
    } else {
        s[1] as f64
    };
    match (func, repr_of(out)) {
        (AggFunc::Sum, Some(Repr::Int)) => Datum::Int(s[1] as i64),
        (AggFunc::Sum, _) => Datum::Float(F64::new(special.unwrap_or(sum))),
        (_, _) => Datum::Float(F64::new(special.unwrap_or(sum / s[0] as f64))),
    }
}

/// Turns a group's accumulators into its output columns.
struct Finish {
    aggs: Vec<Aggregate>,
    input_float: Vec<bool>,
    out_types: Vec<DataType>,
    /// For each aggregate, the index of its ordered values in a group, if it keeps them.
    values_of: Vec<Option<usize>>,
    /// How many aggregates keep ordered values.
    ordered: usize,
}

/// Whether an aggregate keeps its group's values in order, with counts: min, max and the
/// percentiles (the approximate one keeps sketch buckets).
fn keeps_values(func: &AggFunc) -> bool {
    matches!(
        func,
        AggFunc::Min
            | AggFunc::Max
            | AggFunc::Median
            | AggFunc::PercentileCont { .. }
            | AggFunc::ApproxPercentile { .. }
    )
}

impl Finish {
    fn new(aggs: &[Aggregate], input_float: Vec<bool>, out_types: Vec<DataType>) -> Finish {
        let mut ordered = 0;
        let values_of = aggs
            .iter()
            .map(|a| {
                keeps_values(&a.func).then(|| {
                    ordered += 1;
                    ordered - 1
                })
            })
            .collect();
        Finish {
            aggs: aggs.to_vec(),
            input_float,
            out_types,
            values_of,
            ordered,
        }
    }

    /// Slot 0 counts the group's rows; then each aggregate's slots.
    fn width(&self) -> usize {
        1 + self.aggs.iter().map(|a| slots(&a.func)).sum::<usize>()
    }

    fn add(&self, row: &[Datum], acc: &mut [i128], values: &mut [Counts], m: i128) {
        acc[0] += m;
        let mut off = 1;
        for (i, a) in self.aggs.iter().enumerate() {
            let n = slots(&a.func);
            let s = &mut acc[off..off + n];
            match (&a.func, self.values_of[i]) {
                (AggFunc::Regr { x, .. }, _) => moments::regr_add(&row[a.arg], &row[*x], s, m),
                (func, Some(v)) => {
                    let value = &row[a.arg];
                    if !value.is_null() {
                        s[0] += m;
                        values[v].add(held_as(func, value), m as i64);
                    }
                }
                (func, None) => accumulate(func, &row[a.arg], s, m),
            }
            off += n;
        }
    }

    /// The group's output row, or `None` while it has no rows.
    fn row(&self, key: &[Datum], acc: &[i128], values: &[Counts]) -> Option<Row> {
        if acc[0] == 0 {
            return None;
        }
        let mut row = Vec::with_capacity(key.len() + self.aggs.len());
        row.extend_from_slice(key);
        let mut off = 1;
        for (i, a) in self.aggs.iter().enumerate() {
            let n = slots(&a.func);
            let s = &acc[off..off + n];
            row.push(match self.values_of[i] {
                Some(v) => from_values(&a.func, s[0] as i64, &values[v]),
                None => finalize(&a.func, self.input_float[i], &self.out_types[i], s),
            });
            off += n;
        }
        Some(row.into_boxed_slice())
    }
}

/// An aggregate that keeps its group's values, from those values (`n` of them, not null).
fn from_values(func: &AggFunc, n: i64, values: &Counts) -> Datum {
    match func {
        _ if n == 0 => Datum::Null,
        AggFunc::Min => values.first().cloned().unwrap_or(Datum::Null),
        AggFunc::Max => values.last().cloned().unwrap_or(Datum::Null),
        AggFunc::ApproxPercentile { p } => {
            // The bucket holding the sketch's rank, walked to from the nearer end.
            match values.rank(n, sketch_rank(f64::from_bits(*p), n)) {
                Datum::Int(code) => Datum::Float(F64::new(sketch_value(*code))),
                _ => Datum::Null,
            }
        }
        _ => exact_percentile(func, n, |i| values.rank(n, i)),
    }
}

/// A group's values in order, each with its count: a sorted vector while there are few distinct
/// values (a search and a short move per update, and a walk over contiguous memory to a rank), a
/// B-tree past that.
#[derive(Clone)]
enum Counts {
    Few(Vec<(Datum, i64)>),
    Many(BTreeMap<Datum, i64>),
}

/// How an aggregate that keeps its group's values holds `value`: an approximate percentile by
/// its sketch bucket, the others as it is.
fn held_as(func: &AggFunc, value: &Datum) -> Datum {
    match (func, value) {
        (AggFunc::ApproxPercentile { .. }, Datum::Float(f)) => Datum::Int(sketch_code(f.get())),
        _ => value.clone(),
    }
}

/// Distinct values past which [`Counts`] becomes a B-tree.
const FEW: usize = 256;

impl Counts {
    fn add(&mut self, value: Datum, m: i64) {
        match self {
            Counts::Few(v) => {
                match v.binary_search_by(|(d, _)| d.cmp(&value)) {
                    Ok(i) => {
                        v[i].1 += m;
                        if v[i].1 == 0 {
                            v.remove(i);
                        }
                    }
                    Err(i) => v.insert(i, (value, m)),
                }
                if v.len() > FEW {
                    *self = Counts::Many(v.drain(..).collect());
                }
            }
            Counts::Many(map) => {
                let count = map.entry(value.clone()).or_insert(0);
                *count += m;
                if *count == 0 {
                    map.remove(&value);
                }
            }
        }
    }

    /// How many values there are.
    fn total(&self) -> i64 {
        match self {
            Counts::Few(v) => v.iter().map(|(_, c)| c).sum(),
            Counts::Many(map) => map.values().sum(),
        }
    }

    /// Every value once, as `DISTINCT` sees them.
    fn once_each(&mut self) {
        match self {
            Counts::Few(v) => v.iter_mut().for_each(|(_, c)| *c = 1),
            Counts::Many(map) => map.values_mut().for_each(|c| *c = 1),
        }
    }

    fn first(&self) -> Option<&Datum> {
        match self {
            Counts::Few(v) => v.first().map(|(d, _)| d),
            Counts::Many(map) => map.keys().next(),
        }
    }

    fn last(&self) -> Option<&Datum> {
        match self {
            Counts::Few(v) => v.last().map(|(d, _)| d),
            Counts::Many(map) => map.keys().next_back(),
        }
    }

    /// The value at 0-based rank `i` of the `n` values, walking from the nearer end.
    fn rank(&self, n: i64, i: i64) -> &Datum {
        fn walk<'a>(
            forward: impl Iterator<Item = (&'a Datum, &'a i64)>,
            backward: impl Iterator<Item = (&'a Datum, &'a i64)>,
            n: i64,
            i: i64,
        ) -> Option<&'a Datum> {
            let mut seen = 0;
            if i < n / 2 {
                forward
                    .into_iter()
                    .find(|(_, c)| {
                        seen += **c;
                        seen > i
                    })
                    .map(|(d, _)| d)
            } else {
                backward
                    .into_iter()
                    .find(|(_, c)| {
                        seen += **c;
                        seen >= n - i
                    })
                    .map(|(d, _)| d)
            }
        }
        let found = match self {
            Counts::Few(v) => walk(
                v.iter().map(|(d, c)| (d, c)),
                v.iter().rev().map(|(d, c)| (d, c)),
                n,
                i,
            ),
            Counts::Many(map) => walk(map.iter(), map.iter().rev(), n, i),
        };
        found.or(self.last()).expect("a rank within the values")
    }
}

/// A group's state: its accumulator slots and, for the aggregates that need the group's values
/// in order, a count per value.
struct GroupState {
    acc: Vec<i128>,
    values: Vec<Counts>,
}

impl KeyedState for GroupState {
    type Ctx = Finish;

    fn new(f: &Finish) -> Self {
        GroupState {
            acc: vec![0; f.width()],
            values: vec![Counts::Few(Vec::new()); f.ordered],
        }
    }

    fn update(&mut self, f: &Finish, row: &Row, diff: isize) {
        f.add(row, &mut self.acc, &mut self.values, diff as i128);
    }

    fn output(&self, f: &Finish, key: &[Datum], out: &mut Vec<(Row, isize)>) {
        if let Some(row) = f.row(key, &self.acc, &self.values) {
            out.push((row, 1));
        }
    }

    fn is_empty(&self) -> bool {
        self.acc.iter().all(|x| *x == 0)
    }
}

fn default_value(func: &AggFunc) -> Datum {
    match func {
        AggFunc::Count => Datum::Int(0),
        _ => Datum::Null,
    }
}

fn concat(a: &[Datum], b: &[Datum]) -> Row {
    a.iter().chain(b).cloned().collect()
}

pub(crate) fn render_reduce<'s>(
    ctx: &mut Context<'_, 's>,
    input: Coll<'s>,
    in_schema: &SchemaRef,
    out_schema: &SchemaRef,
    keys: usize,
    aggs: &[Aggregate],
) -> Result<Coll<'s>> {
    for a in aggs {
        let width = in_schema.fields().len();
        let ts_ok = match a.func {
            AggFunc::Rate { ts: c } | AggFunc::Regr { x: c, .. } => c >= keys && c < width,
            _ => true,
        };
        if a.arg < keys || a.arg >= width || !ts_ok {
            return Err(EngineError::Internal(format!(
                "aggregate argument {} out of range",
                a.arg
            )));
        }
    }

    let out_types: Vec<DataType> = out_schema
        .fields()
        .iter()
        .skip(keys)
        .map(|f| f.data_type().clone())
        .collect();
    let input_float: Vec<bool> = aggs
        .iter()
        .map(|a| repr_of(in_schema.field(a.arg).data_type()) == Some(Repr::Float))
        .collect();

    let result = if aggs.iter().all(Aggregate::is_accumulable) {
        let finish = Finish::new(aggs, input_float.clone(), out_types.clone());
        keyed::keyed::<GroupState>(input, "Accumulate", KeyCols::Prefix(keys), finish)
    } else {
        let aggs_r = aggs.to_vec();
        let kv = input.map(move |row: Row| {
            (
                row[..keys].to_vec().into_boxed_slice(),
                row[keys..].to_vec().into_boxed_slice(),
            )
        });
        kv.reduce(
            move |_k: &Row, vals: &[(&Row, isize)], out: &mut Vec<(Row, isize)>| {
                let row: Vec<Datum> = aggs_r
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        group_aggregate(a, a.arg - keys, keys, input_float[i], &out_types[i], vals)
                    })
                    .collect();
                out.push((row.into_boxed_slice(), 1));
            },
        )
        .map(|(k, v): (Row, Row)| concat(&k, &v))
    };

    if keys > 0 {
        return Ok(result);
    }
    // A global aggregate has one row, also over no input.
    let default: Row = aggs.iter().map(|a| default_value(&a.func)).collect();
    let d2 = default.clone();
    let present = result.clone().map(move |_| d2.clone()).negate();
    Ok(result.concat(ctx.constant(vec![default])).concat(present))
}

fn float_of(d: &Datum) -> f64 {
    match d {
        Datum::Int(i) => *i as f64,
        Datum::Float(f) => f.get(),
        _ => f64::NAN,
    }
}

/// `median` and `percentile_cont` as DataFusion computes them, over `n` non-null values of which
/// `at(i)` is the one at 0-based rank `i`.
fn exact_percentile<'a>(func: &AggFunc, n: i64, at: impl Fn(i64) -> &'a Datum) -> Datum {
    if n == 0 {
        return Datum::Null;
    }
    match func {
        AggFunc::Median if n % 2 == 1 => at(n / 2).clone(),
        AggFunc::Median => {
            let (a, b) = (at(n / 2 - 1), at(n / 2));
            Datum::Float(F64::new((float_of(a) + float_of(b)) / 2.0))
        }
        AggFunc::PercentileCont { p } => {
            let p = f64::from_bits(*p);
            let index = p * (n - 1) as f64;
            let (lo, hi) = (index.floor() as i64, index.ceil() as i64);
            if n == 1 || lo == hi || p == 0.0 || p == 1.0 {
                let i = if p == 1.0 { n - 1 } else { lo };
                return Datum::Float(F64::new(float_of(at(i))));
            }
            let (a, b) = (float_of(at(lo)), float_of(at(hi)));
            // DataFusion quantizes the interpolation weight to millionths.
            let weight = ((index - lo as f64) * 1_000_000.0) as usize as f64 / 1_000_000.0;
            Datum::Float(F64::new(a + (b - a) * weight))
        }
        _ => unreachable!("not a percentile"),
    }
}

/// Computes one aggregate over a whole group (values with their multiplicities).
fn group_aggregate(
    a: &Aggregate,
    col: usize,
    keys: usize,
    input_float: bool,
    out: &DataType,
    vals: &[(&Row, isize)],
) -> Datum {
    let present = vals.iter().filter(|(_, m)| *m > 0);
    match &a.func {
        AggFunc::Min => present
            .map(|(v, _)| &v[col])
            .filter(|d| !d.is_null())
            .min()
            .cloned()
            .unwrap_or(Datum::Null),
        AggFunc::Max => present
            .map(|(v, _)| &v[col])
            .filter(|d| !d.is_null())
            .max()
            .cloned()
            .unwrap_or(Datum::Null),
        AggFunc::First(order) => present
            .min_by(|(x, _), (y, _)| compare_by(order, keys, x, y).then_with(|| x.cmp(y)))
            .map(|(v, _)| v[col].clone())
            .unwrap_or(Datum::Null),
        AggFunc::Rate { ts } => {
            let mut samples: Vec<(i64, Counter)> = present
                .filter_map(|(v, _)| match (&v[ts - keys], &v[col]) {
                    (Datum::Int(t), Datum::Int(c)) => Some((*t, Counter::Int(*c))),
                    (Datum::Int(t), Datum::Float(c)) => Some((*t, Counter::Float(c.get()))),
                    _ => None,
                })
                .collect();
            counter_rate(&mut samples).map_or(Datum::Null, |r| Datum::Float(F64::new(r)))
        }
        AggFunc::Median | AggFunc::PercentileCont { .. } | AggFunc::ApproxPercentile { .. } => {
            let mut values = Counts::Few(Vec::new());
            for (v, m) in present.filter(|(v, _)| !v[col].is_null()) {
                values.add(held_as(&a.func, &v[col]), *m as i64);
            }
            if a.distinct {
                values.once_each();
            }
            from_values(&a.func, values.total(), &values)
        }
        AggFunc::StringAgg { sep, order } => {
            let mut rows: Vec<(&Row, isize)> = present
                .filter(|(v, _)| !v[col].is_null())
                .map(|(v, m)| (*v, *m))
                .collect();
            rows.sort_by(|(x, _), (y, _)| {
                compare_by(order, keys, x, y)
                    .then_with(|| x[col].cmp(&y[col]))
                    .then_with(|| x.cmp(y))
            });
            if a.distinct {
                rows.dedup_by(|x, y| x.0[col] == y.0[col]);
            }
            if rows.is_empty() {
                return Datum::Null;
            }
            let mut out = String::new();
            let mut first = true;
            for (v, m) in rows {
                let Datum::Str(text) = &v[col] else { continue };
                for _ in 0..if a.distinct { 1 } else { m } {
                    if !first {
                        out.push_str(sep);
                    }
                    first = false;
                    out.push_str(text);
                }
            }
            Datum::Str(out.into())
        }
        AggFunc::Regr { x, .. } => {
            let mut s = vec![0i128; slots(&a.func)];
            present.for_each(|(v, m)| moments::regr_add(&v[col], &v[x - keys], &mut s, *m as i128));
            finalize(&a.func, input_float, out, &s)
        }
        func => {
            let mut s = vec![0i128; slots(func)];
            if a.distinct {
                let distinct: BTreeSet<&Datum> = present.map(|(v, _)| &v[col]).collect();
                distinct
                    .into_iter()
                    .for_each(|d| accumulate(func, d, &mut s, 1));
            } else {
                present.for_each(|(v, m)| accumulate(func, &v[col], &mut s, *m as i128));
            }
            finalize(func, input_float, out, &s)
        }
    }
}

#[inline]
pub(super) fn compare_by(order: &[SortKey], keys: usize, x: &Row, y: &Row) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for k in order {
        let (a, b) = (&x[k.column - keys], &y[k.column - keys]);
        let ord = match (a.is_null(), b.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (false, true) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (false, false) => {
                if k.descending {
                    b.cmp(a)
                } else {
                    a.cmp(b)
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_find_ranks_from_either_end_and_grow_into_a_tree() {
        let mut few = Counts::Few(Vec::new());
        let mut values: Vec<i64> = (0..600).map(|i| (i * 37) % 300).collect();
        for v in &values {
            few.add(Datum::Int(*v), 1);
        }
        assert!(matches!(few, Counts::Many(_)) || FEW >= 300);
        values.sort();
        let n = values.len() as i64;
        for i in [0, 1, 150, 299, 300, 450, 598, 599] {
            assert_eq!(few.rank(n, i), &Datum::Int(values[i as usize]), "rank {i}");
        }
        for v in &values[..590] {
            few.add(Datum::Int(*v), -1);
        }
        assert_eq!(few.first(), Some(&Datum::Int(values[590])));
        assert_eq!(few.rank(10, 9), &Datum::Int(299));
    }

    #[test]
    fn float_sums_do_not_drift_under_retractions() {
        let mut s = vec![0i128; 5];
        let vals = [0.1, 0.2, 1e9 + 0.3, -7.25, 3.0e-5];
        for _ in 0..1000 {
            for v in vals {
                accumulate(&AggFunc::Sum, &Datum::Float(F64::new(v)), &mut s, 1);
            }
            for v in vals {
                accumulate(&AggFunc::Sum, &Datum::Float(F64::new(v)), &mut s, -1);
            }
        }
        accumulate(&AggFunc::Sum, &Datum::Float(F64::new(93.5)), &mut s, 1);
        assert_eq!(
            finalize(&AggFunc::Sum, true, &DataType::Float64, &s),
            Datum::Float(F64::new(93.5))
        );
        assert_eq!(s[0], 1);
    }

    #[test]
    fn special_floats_are_counted() {
        let mut s = vec![0i128; 5];
        accumulate(
            &AggFunc::Avg,
            &Datum::Float(F64::new(f64::INFINITY)),
            &mut s,
            1,
        );
        accumulate(&AggFunc::Avg, &Datum::Float(F64::new(1.0)), &mut s, 1);
        assert_eq!(
            finalize(&AggFunc::Avg, true, &DataType::Float64, &s),
            Datum::Float(F64::new(f64::INFINITY))
        );
        accumulate(
            &AggFunc::Avg,
            &Datum::Float(F64::new(f64::INFINITY)),
            &mut s,
            -1,
        );
        assert_eq!(
            finalize(&AggFunc::Avg, true, &DataType::Float64, &s),
            Datum::Float(F64::new(1.0))
        );
    }
}
