//! Arrow forms of a shared arrangement's batches, built once per batch on a worker and read by
//! every dataflow that maps or filters the arrangement.
//!
//! Many rules read one shared aggregation (see `crate::share`) and apply their own condition to its
//! changes. Each rule's map/filter evaluates vectorized on record batches; converting the changes
//! to Arrow once per arrangement batch, rather than once per rule, leaves each rule only its own
//! predicate to evaluate. An entry is evicted once every reader registered at the time has read it,
//! or when nothing but this cache holds the batch any more (its readers went away).
//!
//! With many readers, most conditions are thresholds on one column (`HAVING avg(cpu) > 90`, one
//! per rule and severity), and each would still scan every change. So once a relation has
//! [`INDEX_READERS`] readers, a span also sorts a column's values, once, the first time a reader's
//! filter implies a range on it ([`RangeProbe`]); each reader then finds the rows in its range
//! by binary search and evaluates its whole condition on those rows alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use differential_dataflow::trace::{Cursor, Navigable, TraceReader};

use super::{RowTrace, Time};
use crate::error::Result;
use crate::plan::Expr;
use crate::row::{rows_to_batch, Row, F64};

/// Readers of one relation from which its spans are indexed for range conditions: below this,
/// scanning every change once per reader costs less than sorting them.
pub(crate) const INDEX_READERS: usize = 16;

/// A batch of an arrangement of rows.
pub(crate) type RowBatch = <RowTrace as TraceReader>::Batch;

/// One arrangement batch as Arrow: a row per update, with its time and multiplicity.
pub(crate) struct ArrowSpan {
    pub batch: RecordBatch,
    pub times: Vec<Time>,
    pub diffs: Vec<isize>,
    /// Columns sorted for range probes, by column index, built when first probed.
    sorted: RefCell<HashMap<usize, Rc<Sorted>>>,
}

impl ArrowSpan {
    fn build(batch: &RowBatch, schema: &SchemaRef) -> Result<ArrowSpan> {
        let (mut rows, mut times, mut diffs): (Vec<&Row>, Vec<Time>, Vec<isize>) =
            Default::default();
        let mut cursor = batch.cursor();
        while let Some(key) = cursor.get_key(batch) {
            while cursor.get_val(batch).is_some() {
                cursor.map_times(batch, |t, d| {
                    rows.push(key);
                    times.push(*t);
                    diffs.push(*d);
                });
                cursor.step_val(batch);
            }
            cursor.step_key(batch);
        }
        Ok(ArrowSpan {
            batch: rows_to_batch(schema, rows.iter().map(|r| &r[..]))?,
            times,
            diffs,
            sorted: RefCell::default(),
        })
    }

    /// The rows (ascending) that may satisfy `probe`: a superset of those that do.
    pub fn candidates(&self, probe: &RangeProbe) -> Vec<u32> {
        let sorted = self
            .sorted
            .borrow_mut()
            .entry(probe.column)
            .or_insert_with(|| Rc::new(Sorted::build(self.batch.column(probe.column))))
            .clone();
        let mut rows = match (&sorted.keys, probe.value) {
            (Keys::Float(k), Key::Float(v)) => {
                range(k, &sorted.perm, probe.op, v, |x| x.get().is_nan())
            }
            (Keys::Int(k), Key::Int(v)) => range(k, &sorted.perm, probe.op, v, |_| false),
            // The probe was made for the column's type; a mismatch would be a bug, so keep all.
            _ => (0..self.batch.num_rows() as u32).collect(),
        };
        rows.sort_unstable();
        rows
    }
}

/// A condition `column op value` implied by a filter: only rows satisfying it can pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RangeProbe {
    pub column: usize,
    pub op: RangeOp,
    pub value: Key,
}

/// Which side of the value passes; `>` and `>=` (and `<`, `<=`) probe the same rows, the filter
/// itself deciding about the value's own rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RangeOp {
    Above,
    Below,
    Equal,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Key {
    Float(F64),
    Int(i64),
}

impl RangeProbe {
    /// A range on a `DOUBLE` or `BIGINT` column compared with a constant, in `pred` or one of the
    /// conjuncts of `pred` (any one of them bounds the rows that pass).
    pub fn find(pred: &Expr, schema: &SchemaRef) -> Option<RangeProbe> {
        let b = pred.downcast_ref::<BinaryExpr>()?;
        let (col, lit, flipped) = match (column_of(b.left()), literal_of(b.right())) {
            (Some(c), Some(l)) => (c, l, false),
            _ if *b.op() == Operator::And => {
                return Self::find(b.left(), schema).or_else(|| Self::find(b.right(), schema))
            }
            _ => (column_of(b.right())?, literal_of(b.left())?, true),
        };
        let op = match (b.op(), flipped) {
            (Operator::Gt | Operator::GtEq, false) | (Operator::Lt | Operator::LtEq, true) => {
                RangeOp::Above
            }
            (Operator::Lt | Operator::LtEq, false) | (Operator::Gt | Operator::GtEq, true) => {
                RangeOp::Below
            }
            (Operator::Eq, _) => RangeOp::Equal,
            _ => return None,
        };
        let value = match (schema.field(col).data_type(), lit) {
            (DataType::Float64, ScalarValue::Float64(Some(v))) => Key::Float(F64::new(*v)),
            (DataType::Int64, ScalarValue::Int64(Some(v))) => Key::Int(*v),
            _ => return None,
        };
        Some(RangeProbe {
            column: col,
            op,
            value,
        })
    }
}

fn column_of(e: &Expr) -> Option<usize> {
    e.downcast_ref::<Column>().map(Column::index)
}

fn literal_of(e: &Expr) -> Option<&ScalarValue> {
    e.downcast_ref::<Literal>().map(Literal::value)
}

/// One column's non-null values in ascending order (floats in total order, NaN last), with the
/// row each came from.
struct Sorted {
    keys: Keys,
    perm: Vec<u32>,
}

enum Keys {
    Float(Vec<F64>),
    Int(Vec<i64>),
}

impl Sorted {
    fn build(array: &dyn Array) -> Sorted {
        fn sort<T: Ord + Copy>(values: impl Iterator<Item = (usize, T)>) -> (Vec<T>, Vec<u32>) {
            let mut pairs: Vec<(T, u32)> = values.map(|(i, v)| (v, i as u32)).collect();
            pairs.sort_unstable();
            pairs.into_iter().unzip()
        }
        let valid = |i: &usize| array.is_valid(*i);
        match array.data_type() {
            DataType::Float64 => {
                let a = array.as_primitive::<Float64Type>();
                let (keys, perm) = sort(
                    (0..a.len())
                        .filter(valid)
                        .map(|i| (i, F64::new(a.value(i)))),
                );
                Sorted {
                    keys: Keys::Float(keys),
                    perm,
                }
            }
            DataType::Int64 => {
                let a = array.as_primitive::<Int64Type>();
                let (keys, perm) = sort((0..a.len()).filter(valid).map(|i| (i, a.value(i))));
                Sorted {
                    keys: Keys::Int(keys),
                    perm,
                }
            }
            // Probes are only made for the two types above.
            _ => Sorted {
                keys: Keys::Int(Vec::new()),
                perm: Vec::new(),
            },
        }
    }
}

/// The rows whose sorted key is on `op`'s side of `v` or equal to it, and the NaN rows for the
/// lower side and equality too, so that whatever a comparison makes of NaN, no passing row is
/// missed.
fn range<T: Ord + Copy>(
    keys: &[T],
    perm: &[u32],
    op: RangeOp,
    v: T,
    is_nan: impl Fn(&T) -> bool,
) -> Vec<u32> {
    let lo = keys.partition_point(|k| *k < v);
    let hi = keys.partition_point(|k| *k <= v);
    let nan = keys.partition_point(|k| !is_nan(k));
    match op {
        RangeOp::Above => perm[lo..].to_vec(),
        RangeOp::Below => perm[..hi]
            .iter()
            .chain(&perm[nan.max(hi)..])
            .copied()
            .collect(),
        RangeOp::Equal => perm[lo..hi]
            .iter()
            .chain(&perm[nan.max(hi)..])
            .copied()
            .collect(),
    }
}

struct Entry {
    /// Holds the batch, so its address is not reused while the entry exists.
    pinned: RowBatch,
    span: Rc<ArrowSpan>,
    /// Readers that have not read it yet.
    unread: usize,
}

/// The cache of one worker.
#[derive(Default)]
pub(crate) struct ArrowSpans {
    entries: HashMap<usize, Entry>,
    /// Registered readers per relation.
    readers: HashMap<String, usize>,
}

/// Keeps a reader registered while it lives.
pub(crate) struct Reader {
    cache: Rc<RefCell<ArrowSpans>>,
    relation: String,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut c = self.cache.borrow_mut();
        if let Some(n) = c.readers.get_mut(&self.relation) {
            *n -= 1;
            if *n == 0 {
                c.readers.remove(&self.relation);
            }
        }
    }
}

impl Reader {
    pub fn new(cache: &Rc<RefCell<ArrowSpans>>, relation: &str) -> Reader {
        *cache
            .borrow_mut()
            .readers
            .entry(relation.to_string())
            .or_default() += 1;
        Reader {
            cache: cache.clone(),
            relation: relation.to_string(),
        }
    }

    /// Whether the relation has enough readers for its spans to be indexed.
    pub fn indexed(&self) -> bool {
        self.cache
            .borrow()
            .readers
            .get(&self.relation)
            .is_some_and(|n| *n >= INDEX_READERS)
    }

    /// The Arrow form of `batch` (of this reader's relation, whose rows have `schema`).
    pub fn read(&self, batch: &RowBatch, schema: &SchemaRef) -> Result<Rc<ArrowSpan>> {
        let mut c = self.cache.borrow_mut();
        let id = Rc::as_ptr(batch) as *const () as usize;
        if let Some(e) = c.entries.get_mut(&id) {
            let span = e.span.clone();
            e.unread = e.unread.saturating_sub(1);
            if e.unread == 0 {
                c.entries.remove(&id);
            }
            return Ok(span);
        }
        let span = Rc::new(ArrowSpan::build(batch, schema)?);
        let unread = c.readers.get(&self.relation).copied().unwrap_or(1) - 1;
        c.entries
            .retain(|_, e| e.unread > 0 && Rc::strong_count(&e.pinned) > 1);
        if unread > 0 {
            c.entries.insert(
                id,
                Entry {
                    pinned: batch.clone(),
                    span: span.clone(),
                    unread,
                },
            );
        }
        Ok(span)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn span(batch: RecordBatch) -> ArrowSpan {
        let n = batch.num_rows();
        ArrowSpan {
            batch,
            times: vec![0; n],
            diffs: vec![1; n],
            sorted: RefCell::default(),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("a", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    fn cmp(left: Expr, op: Operator, right: Expr) -> Expr {
        Arc::new(BinaryExpr::new(left, op, right))
    }

    fn col(i: usize) -> Expr {
        Arc::new(Column::new(["host", "a", "n"][i], i))
    }

    fn lit(v: ScalarValue) -> Expr {
        Arc::new(Literal::new(v))
    }

    #[test]
    fn probes_are_found_in_comparisons_and_conjuncts() {
        let s = schema();
        let f = |x: f64| lit(ScalarValue::Float64(Some(x)));
        let probe = |e: &Expr| RangeProbe::find(e, &s);
        let above = probe(&cmp(col(1), Operator::Gt, f(90.0))).unwrap();
        assert_eq!((above.column, above.op), (1, RangeOp::Above));
        assert_eq!(above.value, Key::Float(F64::new(90.0)));
        // `90 > a` is `a < 90`.
        let flipped = probe(&cmp(f(90.0), Operator::Gt, col(1))).unwrap();
        assert_eq!(flipped.op, RangeOp::Below);
        let n_eq = cmp(col(2), Operator::Eq, lit(ScalarValue::Int64(Some(3))));
        let host_ne = cmp(
            col(0),
            Operator::NotEq,
            lit(ScalarValue::Utf8(Some("x".into()))),
        );
        let both = probe(&cmp(host_ne.clone(), Operator::And, n_eq)).unwrap();
        assert_eq!(
            (both.column, both.op, both.value),
            (2, RangeOp::Equal, Key::Int(3))
        );
        // No range: a string column, an inequality, a disjunction, a literal of another type.
        assert_eq!(probe(&host_ne), None);
        assert_eq!(probe(&cmp(col(1), Operator::NotEq, f(1.0))), None);
        let either = cmp(
            cmp(col(1), Operator::Gt, f(1.0)),
            Operator::Or,
            cmp(col(1), Operator::Lt, f(0.0)),
        );
        assert_eq!(probe(&either), None);
        assert_eq!(
            probe(&cmp(col(1), Operator::Gt, lit(ScalarValue::Int64(Some(1))))),
            None
        );
    }

    #[test]
    fn candidates_cover_every_row_on_the_probed_side() {
        let values = vec![
            Some(3.0),
            Some(f64::NAN),
            None,
            Some(1.0),
            Some(0.0),
            Some(5.0),
            Some(1.0),
        ];
        let ints = vec![Some(3), Some(9), None, Some(1), Some(0), Some(5), Some(1)];
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec!["h"; 7])),
                Arc::new(Float64Array::from(values)),
                Arc::new(Int64Array::from(ints)),
            ],
        )
        .unwrap();
        let span = span(batch);
        let at = |column, op, value| span.candidates(&RangeProbe { column, op, value });
        let f = |x: f64| Key::Float(F64::new(x));
        // Equal values are kept on both sides (the filter decides `>` against `>=`); NaN, which
        // sorts last, is kept for every side; nulls never.
        assert_eq!(at(1, RangeOp::Above, f(1.0)), vec![0, 1, 3, 5, 6]);
        assert_eq!(at(1, RangeOp::Below, f(1.0)), vec![1, 3, 4, 6]);
        assert_eq!(at(1, RangeOp::Equal, f(-0.0)), vec![1, 4]);
        assert_eq!(at(1, RangeOp::Above, f(9.0)), vec![1]);
        assert_eq!(at(2, RangeOp::Above, Key::Int(4)), vec![1, 5]);
        assert_eq!(at(2, RangeOp::Below, Key::Int(0)), vec![4]);
        assert_eq!(at(2, RangeOp::Equal, Key::Int(2)), Vec::<u32>::new());
    }
}
