//! Compact rows for the stateful part of a dataflow, and their conversion to and from Arrow.
//!
//! Stateless operators work on Arrow `RecordBatch`es; stateful operators (reduce, join, distinct,
//! arrangements) work on differential collections of [`Row`]s. A row is a boxed slice of
//! fixed-width [`Datum`]s. Strings of up to 23 bytes (host names, interface names, most label
//! values) are held inline in the datum, so rows of them need no allocation of their own and
//! compare without following a pointer; longer strings are reference counted, so one that repeats
//! in consecutive rows of a batch is stored once. The Arrow type of every column is known from the
//! plan's schema, so a datum only records the value's representation (integer, float, string,
//! boolean), never its logical type: timestamps and dates are integers in their Arrow unit.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, StringArray, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde::{Deserialize, Serialize};
pub use smol_str::SmolStr;

use crate::error::{EngineError, Result};

/// A float with a total order (`f64::total_cmp`), so it can be a key in an arrangement.
/// `-0.0` is stored as `0.0` and every NaN as the canonical NaN, so equal SQL values compare equal.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct F64(f64);

impl F64 {
    pub fn new(v: f64) -> Self {
        if v == 0.0 {
            F64(0.0)
        } else if v.is_nan() {
            F64(f64::NAN)
        } else {
            F64(v)
        }
    }
    pub fn get(self) -> f64 {
        self.0
    }
}
impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// One value of a row. `Null` sorts first, then booleans, integers, floats and strings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Float(F64),
    Str(SmolStr),
}

impl Datum {
    fn rank(&self) -> u8 {
        match self {
            Datum::Null => 0,
            Datum::Bool(_) => 1,
            Datum::Int(_) => 2,
            Datum::Float(_) => 3,
            Datum::Str(_) => 4,
        }
    }
}

// Written out rather than derived so that the order is fixed by `rank` and hashing by the values
// alone, whatever the enum's layout.
impl PartialEq for Datum {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Datum::Null, Datum::Null) => true,
            (Datum::Bool(a), Datum::Bool(b)) => a == b,
            (Datum::Int(a), Datum::Int(b)) => a == b,
            (Datum::Float(a), Datum::Float(b)) => a == b,
            (Datum::Str(a), Datum::Str(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Datum {}
impl Hash for Datum {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Datum::Null => {}
            Datum::Bool(b) => b.hash(state),
            Datum::Int(i) => i.hash(state),
            Datum::Float(f) => f.hash(state),
            Datum::Str(s) => s.as_str().hash(state),
        }
    }
}
impl PartialOrd for Datum {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Datum {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Datum::Bool(a), Datum::Bool(b)) => a.cmp(b),
            (Datum::Int(a), Datum::Int(b)) => a.cmp(b),
            (Datum::Float(a), Datum::Float(b)) => a.cmp(b),
            (Datum::Str(a), Datum::Str(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl Datum {
    pub fn is_null(&self) -> bool {
        matches!(self, Datum::Null)
    }

    /// A text value.
    pub fn text(s: &str) -> Datum {
        Datum::Str(SmolStr::new(s))
    }
}

/// A row of datums, in the column order of the schema it belongs to.
pub type Row = Box<[Datum]>;

/// How a column of an Arrow type is held in a [`Datum`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

/// The representation of an Arrow type, or `None` when rows cannot hold it.
pub fn repr_of(dt: &DataType) -> Option<Repr> {
    use DataType::*;
    Some(match dt {
        Null => Repr::Null,
        Boolean => Repr::Bool,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Repr::Int,
        Timestamp(_, _) | Date32 | Date64 => Repr::Int,
        Float16 | Float32 | Float64 => Repr::Float,
        Utf8 | LargeUtf8 | Utf8View => Repr::Str,
        _ => return None,
    })
}

/// Checks that every column of `schema` can be held in rows.
pub fn check_schema(schema: &SchemaRef) -> Result<()> {
    for f in schema.fields() {
        if repr_of(f.data_type()).is_none() {
            return Err(EngineError::Unsupported(format!(
                "column \"{}\" has type {} which continuous queries cannot hold yet",
                f.name(),
                f.data_type()
            )));
        }
    }
    Ok(())
}

fn canonical(repr: Repr) -> DataType {
    match repr {
        Repr::Null => DataType::Null,
        Repr::Bool => DataType::Boolean,
        Repr::Int => DataType::Int64,
        Repr::Float => DataType::Float64,
        Repr::Str => DataType::Utf8,
    }
}

/// Casts an array to the canonical Arrow type of its representation.
fn to_canonical(array: &ArrayRef) -> Result<(Repr, ArrayRef)> {
    let repr = repr_of(array.data_type())
        .ok_or_else(|| EngineError::Unsupported(format!("values of type {}", array.data_type())))?;
    let target = canonical(repr);
    let arr = if array.data_type() == &target {
        array.clone()
    } else {
        match array.data_type() {
            // Arrow casts dates to integers through their own width; go through Int32 for Date32.
            DataType::Date32 => cast(&cast(array, &DataType::Int32)?, &target)?,
            _ => cast(array, &target)?,
        }
    };
    Ok((repr, arr))
}

/// Appends the datums of column `array` to each of `rows` (one row per array slot).
fn push_column(rows: &mut [Vec<Datum>], array: &ArrayRef, selection: Option<&[u32]>) -> Result<()> {
    let (repr, arr) = to_canonical(array)?;
    let idx = |i: usize| selection.map_or(i, |s| s[i] as usize);
    match repr {
        Repr::Null => rows.iter_mut().for_each(|r| r.push(Datum::Null)),
        Repr::Bool => {
            let a = arr.as_any().downcast_ref::<BooleanArray>().expect("bool");
            for (i, r) in rows.iter_mut().enumerate() {
                let j = idx(i);
                r.push(if a.is_null(j) {
                    Datum::Null
                } else {
                    Datum::Bool(a.value(j))
                });
            }
        }
        Repr::Int => {
            let a = arr.as_any().downcast_ref::<Int64Array>().expect("int");
            for (i, r) in rows.iter_mut().enumerate() {
                let j = idx(i);
                r.push(if a.is_null(j) {
                    Datum::Null
                } else {
                    Datum::Int(a.value(j))
                });
            }
        }
        Repr::Float => {
            let a = arr.as_any().downcast_ref::<Float64Array>().expect("float");
            for (i, r) in rows.iter_mut().enumerate() {
                let j = idx(i);
                r.push(if a.is_null(j) {
                    Datum::Null
                } else {
                    Datum::Float(F64::new(a.value(j)))
                });
            }
        }
        Repr::Str => {
            let a = arr.as_any().downcast_ref::<StringArray>().expect("str");
            // Consecutive equal long strings share one allocation.
            let mut last: Option<SmolStr> = None;
            for (i, r) in rows.iter_mut().enumerate() {
                let j = idx(i);
                if a.is_null(j) {
                    r.push(Datum::Null);
                    continue;
                }
                let v = a.value(j);
                let s = match &last {
                    _ if v.len() <= SmolStr::INLINE_CAP => SmolStr::new_inline(v),
                    Some(l) if l.as_str() == v => l.clone(),
                    _ => {
                        let s = SmolStr::new(v);
                        last = Some(s.clone());
                        s
                    }
                };
                r.push(Datum::Str(s));
            }
        }
    }
    Ok(())
}

/// Converts the rows of `batch` (or only the rows at `selection`) into [`Row`]s.
pub fn batch_to_rows(batch: &RecordBatch, selection: Option<&[u32]>) -> Result<Vec<Row>> {
    let n = selection.map_or(batch.num_rows(), |s| s.len());
    let mut rows: Vec<Vec<Datum>> = (0..n)
        .map(|_| Vec::with_capacity(batch.num_columns()))
        .collect();
    for col in batch.columns() {
        push_column(&mut rows, col, selection)?;
    }
    Ok(rows.into_iter().map(Vec::into_boxed_slice).collect())
}

/// Builds a `RecordBatch` of `schema` from rows.
pub fn rows_to_batch<'a, I>(schema: &SchemaRef, rows: I) -> Result<RecordBatch>
where
    I: IntoIterator<Item = &'a [Datum]>,
    I::IntoIter: Clone,
{
    let rows = rows.into_iter();
    let n = rows.clone().count();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (c, field) in schema.fields().iter().enumerate() {
        let repr = repr_of(field.data_type()).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "column \"{}\" of type {}",
                field.name(),
                field.data_type()
            ))
        })?;
        let bad = |d: &Datum| {
            EngineError::Internal(format!(
                "column \"{}\" ({}) holds {d:?}",
                field.name(),
                field.data_type()
            ))
        };
        let arr: ArrayRef = match repr {
            Repr::Null => Arc::new(datafusion::arrow::array::NullArray::new(n)),
            Repr::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                for r in rows.clone() {
                    match &r[c] {
                        Datum::Null => b.append_null(),
                        Datum::Bool(v) => b.append_value(*v),
                        d => return Err(bad(d)),
                    }
                }
                Arc::new(b.finish())
            }
            Repr::Int => {
                let mut b = Int64Builder::with_capacity(n);
                for r in rows.clone() {
                    match &r[c] {
                        Datum::Null => b.append_null(),
                        Datum::Int(v) => b.append_value(*v),
                        d => return Err(bad(d)),
                    }
                }
                Arc::new(b.finish())
            }
            Repr::Float => {
                let mut b = Float64Builder::with_capacity(n);
                for r in rows.clone() {
                    match &r[c] {
                        Datum::Null => b.append_null(),
                        Datum::Float(v) => b.append_value(v.get()),
                        d => return Err(bad(d)),
                    }
                }
                Arc::new(b.finish())
            }
            Repr::Str => {
                let mut b = StringBuilder::with_capacity(n, n * 8);
                for r in rows.clone() {
                    match &r[c] {
                        Datum::Null => b.append_null(),
                        Datum::Str(v) => b.append_value(v.as_str()),
                        d => return Err(bad(d)),
                    }
                }
                Arc::new(b.finish())
            }
        };
        let arr = if arr.data_type() == field.data_type() {
            arr
        } else if field.data_type() == &DataType::Date32 {
            cast(&cast(&arr, &DataType::Int32)?, field.data_type())?
        } else {
            cast(&arr, field.data_type())?
        };
        columns.push(arr);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    #[test]
    fn datums_are_three_words() {
        assert_eq!(std::mem::size_of::<Datum>(), 24);
    }

    #[test]
    fn short_and_long_strings_compare_by_value() {
        let long = "a-label-value-longer-than-twenty-three-bytes";
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec![
                long, long, "b", "a", long,
            ]))],
        )
        .unwrap();
        let rows = batch_to_rows(&batch, None).unwrap();
        let s = |i: usize| &rows[i][0];
        assert_eq!(s(0), s(1));
        assert_eq!(s(0), s(4));
        assert_eq!(s(0), &Datum::Str(SmolStr::new(long)));
        assert!(
            s(3) < s(0) && s(0) < s(2),
            "byte order, whatever the representation"
        );
        use std::hash::BuildHasher;
        let h = |d: &Datum| foldhash::fast::FixedState::with_seed(1).hash_one(d);
        assert_eq!(h(s(0)), h(&Datum::Str(SmolStr::new(long))));
    }

    #[test]
    fn round_trip_through_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int32, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("a")])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(-0.0), None])),
                Arc::new(datafusion::arrow::array::Int32Array::from(vec![
                    Some(1),
                    None,
                    Some(-7),
                ])),
                Arc::new(TimestampMillisecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let rows = batch_to_rows(&batch, None).unwrap();
        assert_eq!(rows[1][0], Datum::Null);
        assert_eq!(rows[1][1], Datum::Float(F64::new(0.0)));
        assert_eq!(rows[2][2], Datum::Int(-7));
        let back = rows_to_batch(&schema, rows.iter().map(|r| &r[..])).unwrap();
        assert_eq!(back.column(0), batch.column(0));
        assert_eq!(back.column(2), batch.column(2));
        assert_eq!(back.column(3), batch.column(3));
        let sel = batch_to_rows(&batch, Some(&[2])).unwrap();
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0][3], Datum::Int(3));
    }
}
