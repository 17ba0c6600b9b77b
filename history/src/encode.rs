//! How rows are laid out in history files.
//!
//! Text columns are written as they are, dictionary-encoded, so a query's equality filters on
//! them prune pages through their statistics. Numbers are rewritten first, because Parquet's
//! own encodings waste most of their bits on time series sorted by series:
//!
//! - A delta encoding packs each block of 128 deltas at the width of its widest one, less the
//!   block's smallest. Where one series ends and the next begins, the value jumps (`ts` back to
//!   the partition's start, a counter to another host's count), and that one jump widens the
//!   whole block. So every run of rows of one series is stored shifted by a constant of its own
//!   (`#c`, the same for the whole run, which a dictionary stores once): the run continues where
//!   the previous one ended, one ordinary step further. The stored column (`#m`) is then one
//!   smooth sequence, and its deltas are the series' own steps.
//! - A float is stored as an integer where it is one exactly: a whole number or a decimal with
//!   up to six places (a load average of `1.23` is `123` at scale 2), or the bits of an `f32`
//!   when the value is one (a collector's percentages). Each run starts with the kind that
//!   holds its first values (`#k`: the scale 0..=6, or 7 for `f32` bits, per row and so stored
//!   once per run), a value that kind does not hold changes it from that row on, and a value no
//!   kind holds is kept as it is in `#r`. Every value is checked to come back bit for bit (`-0.0`, NaN and
//!   infinities included) before it is stored as an integer.
//!
//! Numbers have no statistics in the files: a partition's `ts` range is kept in the file's
//! metadata, and within a partition rows are sorted by series, so every page spans most of the
//! partition's time anyway.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    make_array, Array, ArrayData, ArrayRef, AsArray, Float64Array, Int64Array, Int8Array,
    RecordBatch,
};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::partition;
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Int8Type, Schema, SchemaRef,
};
use datafusion::common::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

/// Runs shorter than this are stored unshifted: a shift per row would cost more than it saves.
const MIN_RUN: usize = 16;
/// The most decimal places a float is stored with as an integer.
const MAX_SCALE: i8 = 6;
/// The `#k` of a run stored as `f32` bits.
const F32: i8 = 7;
const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
/// Integers up to this magnitude are exact as floats.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// How one column of a relation is stored: the index of its first column in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    /// As it is.
    Plain(usize),
    /// `#m`, `#c`: a timestamp or integer.
    Int(usize),
    /// `#m`, `#c`, `#k`, `#r`: a double.
    Float(usize),
}

/// What a file column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// A column of the relation, as it is.
    AsIs,
    /// `#m`: the stored integers.
    Stored,
    /// `#c`: each run's shift.
    Shift,
    /// `#k`: each row's kind of double.
    Kind,
    /// `#r`: the doubles kept as they are.
    Raw,
}

/// The columns of a relation's history files, and how each of the relation's columns is
/// stored in them.
#[derive(Debug)]
pub struct Layout {
    pub logical: SchemaRef,
    pub physical: SchemaRef,
    cols: Vec<Col>,
}

impl Layout {
    pub fn new(logical: SchemaRef) -> Layout {
        // File columns are named `NAME#m` and so on, with more `#` where a relation's own column
        // (or another file column) already has that name: a name must say one column.
        let mut taken: std::collections::HashSet<String> =
            logical.fields().iter().map(|f| f.name().clone()).collect();
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for f in logical.fields() {
            let at = fields.len();
            let parts: &[(&str, DataType, bool)] = match f.data_type() {
                DataType::Timestamp(..) | DataType::Int64 => &[
                    ("m", DataType::Int64, f.is_nullable()),
                    ("c", DataType::Int64, false),
                ],
                DataType::Float64 => &[
                    ("m", DataType::Int64, true),
                    ("c", DataType::Int64, false),
                    ("k", DataType::Int8, false),
                    ("r", DataType::Float64, true),
                ],
                _ => {
                    fields.push(f.as_ref().clone().with_metadata(Default::default()));
                    cols.push(Col::Plain(at));
                    continue;
                }
            };
            let names = (1..)
                .map(|n| {
                    let sep = "#".repeat(n);
                    parts
                        .iter()
                        .map(|(suffix, ..)| format!("{}{sep}{suffix}", f.name()))
                        .collect::<Vec<_>>()
                })
                .find(|names| names.iter().all(|n| !taken.contains(n)))
                .expect("a free name");
            for (name, (_, t, nullable)) in names.into_iter().zip(parts) {
                taken.insert(name.clone());
                fields.push(Field::new(name, t.clone(), *nullable));
            }
            cols.push(if parts.len() == 2 {
                Col::Int(at)
            } else {
                Col::Float(at)
            });
        }
        Layout {
            logical,
            physical: Arc::new(Schema::new(fields)),
            cols,
        }
    }

    /// Whether column `i` is stored as it is (so filters on it can go to the Parquet reader).
    pub fn is_plain(&self, i: usize) -> bool {
        matches!(self.cols[i], Col::Plain(_))
    }

    /// The file columns that hold column `i`.
    pub fn physical_of(&self, i: usize) -> Range<usize> {
        match self.cols[i] {
            Col::Plain(at) => at..at + 1,
            Col::Int(at) => at..at + 2,
            Col::Float(at) => at..at + 4,
        }
    }

    /// What each file column holds, in file order.
    pub fn parts(&self) -> impl Iterator<Item = Part> + '_ {
        self.cols
            .iter()
            .flat_map(|c| match c {
                Col::Plain(_) => &[Part::AsIs][..],
                Col::Int(_) => &[Part::Stored, Part::Shift][..],
                Col::Float(_) => &[Part::Stored, Part::Shift, Part::Kind, Part::Raw][..],
            })
            .copied()
    }

    /// Whether a file's columns (by name) are the ones this layout writes.
    pub fn matches(&self, names: &[String]) -> bool {
        names.len() == self.physical.fields().len()
            && names
                .iter()
                .zip(self.physical.fields())
                .all(|(n, f)| n == f.name())
    }

    /// Expressions that turn the file columns `read` (indices into the physical schema, in
    /// order, as a scan projected them) back into the relation's columns `wanted`.
    pub fn decode_exprs(
        &self,
        read: &[usize],
        wanted: &[usize],
    ) -> io::Result<Vec<(Arc<dyn PhysicalExpr>, String)>> {
        let input = Schema::new(
            read.iter()
                .map(|&i| self.physical.field(i).clone())
                .collect::<Vec<_>>(),
        );
        // By position in what was read: a relation's own column may be named like a file
        // column of another (`v#m` beside a double `v`).
        let column = |p: usize| -> io::Result<Arc<dyn PhysicalExpr>> {
            let at = read
                .iter()
                .position(|&r| r == p)
                .ok_or_else(|| io::Error::other("a file column needed was not read"))?;
            Ok(Arc::new(Column::new(input.field(at).name(), at)))
        };
        wanted
            .iter()
            .map(|&i| {
                let field = self.logical.field(i);
                let expr: Arc<dyn PhysicalExpr> = match self.cols[i] {
                    Col::Plain(at) => column(at)?,
                    Col::Int(_) | Col::Float(_) => {
                        let args = self
                            .physical_of(i)
                            .map(column)
                            .collect::<io::Result<Vec<_>>>()?;
                        let udf = Arc::new(ScalarUDF::new_from_impl(Decode::new(
                            field.data_type().clone(),
                            args.len(),
                        )));
                        Arc::new(ScalarFunctionExpr::new(
                            "history_decode",
                            udf,
                            args,
                            Arc::new(field.as_ref().clone()),
                            Arc::new(ConfigOptions::default()),
                        ))
                    }
                };
                Ok((expr, field.name().clone()))
            })
            .collect()
    }
}

/// Turns batches of a relation's rows, in file order, into batches of file columns. It keeps
/// where each stored sequence ended, so a file's batches continue one another.
pub struct Encoder<'a> {
    layout: &'a Layout,
    /// Per column: the last value stored in its `#m`.
    last: Vec<Option<i64>>,
    /// The columns whose change starts a new run (the text columns rows are sorted by).
    series: Vec<usize>,
}

impl<'a> Encoder<'a> {
    pub fn new(layout: &'a Layout, series: Vec<usize>) -> Self {
        Encoder {
            layout,
            last: vec![None; layout.cols.len()],
            series,
        }
    }

    #[cfg(test)]
    pub fn encode(&mut self, batch: &RecordBatch) -> io::Result<RecordBatch> {
        let runs = self.runs(batch)?;
        self.encode_runs(batch, &runs)
    }

    /// The runs of one series in `batch` (all of it when there are no series columns).
    pub fn runs(&self, batch: &RecordBatch) -> io::Result<Vec<Range<usize>>> {
        if self.series.is_empty() || batch.num_rows() == 0 {
            return Ok(std::iter::once(0..batch.num_rows()).collect());
        }
        let keys: Vec<ArrayRef> = self
            .series
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        Ok(partition(&keys).map_err(io::Error::other)?.ranges())
    }

    /// [`Encoder::encode`] with the batch's [`Encoder::runs`] given.
    pub fn encode_runs(
        &mut self,
        batch: &RecordBatch,
        runs: &[Range<usize>],
    ) -> io::Result<RecordBatch> {
        let mut out: Vec<ArrayRef> = Vec::with_capacity(self.layout.physical.fields().len());
        for (i, col) in self.layout.cols.iter().enumerate() {
            let a = batch.column(i);
            match col {
                Col::Plain(_) => out.push(a.clone()),
                Col::Int(_) => {
                    let v = a.to_data();
                    let v = Int64Array::from(
                        v.into_builder()
                            .data_type(DataType::Int64)
                            .build()
                            .map_err(io::Error::other)?,
                    );
                    let (m, c) = shift(v.iter(), runs, &mut self.last[i]);
                    out.push(Arc::new(m));
                    out.push(Arc::new(c));
                }
                Col::Float(_) => {
                    let v = a
                        .as_primitive_opt::<Float64Type>()
                        .ok_or_else(|| io::Error::other("a double column is not f64"))?;
                    let (ints, kinds, rest) = as_integers(v, runs);
                    let (m, c) = shift(ints.into_iter(), runs, &mut self.last[i]);
                    out.push(Arc::new(m));
                    out.push(Arc::new(c));
                    out.push(Arc::new(Int8Array::from(kinds)));
                    out.push(Arc::new(rest));
                }
            }
        }
        RecordBatch::try_new(self.layout.physical.clone(), out).map_err(io::Error::other)
    }
}

/// Stores each run of `values` shifted so it continues where the stored sequence ended one
/// ordinary step further (`last` is where it ended, and is moved to where it ends now).
fn shift(
    values: impl Iterator<Item = Option<i64>>,
    runs: &[Range<usize>],
    last: &mut Option<i64>,
) -> (Int64Array, Int64Array) {
    let values: Vec<Option<i64>> = values.collect();
    let mut m = Vec::with_capacity(values.len());
    let mut c = Vec::with_capacity(values.len());
    for r in runs {
        let mut present = values[r.clone()].iter().flatten();
        let first = present.next().copied();
        let second = present.next().copied();
        let n = 2 + present.count();
        let shift = match (first, second, *last) {
            (Some(x0), Some(x1), Some(l)) if n >= MIN_RUN => {
                x0.wrapping_sub(l.wrapping_add(x1.wrapping_sub(x0)))
            }
            _ => 0,
        };
        for v in &values[r.clone()] {
            let s = v.map(|v| v.wrapping_sub(shift));
            if s.is_some() {
                *last = s;
            }
            m.push(s);
            c.push(shift);
        }
    }
    (Int64Array::from(m), Int64Array::from(c))
}

/// `v` as `m / 10^scale` with `m` an integer, if that gives `v` back bit for bit.
fn at_scale(v: f64, scale: i8) -> Option<i64> {
    let p = POW10[scale as usize];
    let m = (v * p).round();
    if m.is_nan() || m.abs() >= EXACT {
        return None;
    }
    let m = m as i64;
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

/// The bits of `v` as an `f32`, if it is one.
fn as_f32(v: f64) -> Option<i64> {
    let f = v as f32;
    ((f as f64).to_bits() == v.to_bits()).then_some(f.to_bits() as i32 as i64)
}

/// The kind that stores `v` as an integer: the fewest decimal places that hold it, else the bits
/// of an `f32`; none if neither does.
fn kind_of(v: f64) -> Option<i8> {
    (0..=MAX_SCALE)
        .find(|&s| at_scale(v, s).is_some())
        .or_else(|| as_f32(v).map(|_| F32))
}

/// `v` as an integer of `kind`, if it is one.
fn as_kind(v: f64, kind: i8) -> Option<i64> {
    if kind == F32 {
        as_f32(v)
    } else {
        at_scale(v, kind)
    }
}

/// Each value as an integer, the kind of each row, and the values stored as they are.
///
/// A run starts with the kind that holds its first few values (the most decimal places any of
/// them needs, or `f32` where most need that). A later value that the kind does not hold
/// changes it from that row on; a value no kind holds is stored as it is.
fn as_integers(
    v: &Float64Array,
    runs: &[Range<usize>],
) -> (Vec<Option<i64>>, Vec<i8>, Float64Array) {
    let mut ints = Vec::with_capacity(v.len());
    let mut kinds = Vec::with_capacity(v.len());
    let mut rest = Vec::with_capacity(v.len());
    for r in runs {
        let (mut scale, mut decimals, mut floats) = (-1i8, 0usize, 0usize);
        for x in v.slice(r.start, r.len()).iter().flatten().take(8) {
            match kind_of(x) {
                Some(F32) => floats += 1,
                Some(s) => {
                    scale = scale.max(s);
                    decimals += 1;
                }
                None => {}
            }
        }
        let mut kind = if scale >= 0 && decimals >= floats {
            scale
        } else {
            F32
        };
        for x in v.slice(r.start, r.len()).iter() {
            let int = x.and_then(|x| {
                as_kind(x, kind).or_else(|| {
                    let k = kind_of(x)?;
                    kind = if k != F32 && kind != F32 {
                        k.max(kind)
                    } else {
                        k
                    };
                    as_kind(x, kind)
                })
            });
            rest.push(if int.is_none() { x } else { None });
            ints.push(int);
            kinds.push(kind);
        }
    }
    (ints, kinds, Float64Array::from(rest))
}

/// A column of type `to` from its file columns (`#m`, `#c`, and for doubles `#k`, `#r`).
fn decode(to: &DataType, parts: &[ArrayRef]) -> io::Result<ArrayRef> {
    let bad = || io::Error::other("history file columns of the wrong type");
    let m = parts[0].as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
    let c = parts[1].as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
    // Whole columns at a time, without a branch on nulls: a null's slot holds whatever the
    // arithmetic gives, and the null buffer hides it.
    let (mv, cv) = (m.values(), c.values());
    if parts.len() == 2 {
        let values: ScalarBuffer<i64> =
            mv.iter().zip(cv).map(|(m, c)| m.wrapping_add(*c)).collect();
        let data = ArrayData::builder(to.clone())
            .len(m.len())
            .add_buffer(values.into_inner())
            .nulls(m.nulls().cloned())
            .build()
            .map_err(io::Error::other)?;
        return Ok(make_array(data));
    }
    let k = parts[2].as_primitive_opt::<Int8Type>().ok_or_else(bad)?;
    let r = parts[3].as_primitive_opt::<Float64Type>().ok_or_else(bad)?;
    let (kv, rv) = (k.values(), r.values());
    let number = |i: usize| {
        let x = mv[i].wrapping_add(cv[i]);
        match kv[i] {
            F32 => f32::from_bits(x as i32 as u32) as f64,
            k => x as f64 / POW10[k.clamp(0, MAX_SCALE) as usize],
        }
    };
    // A value is the integer's when there is one, else the double kept as it was.
    let (values, nulls): (ScalarBuffer<f64>, _) = match m.nulls() {
        None => ((0..m.len()).map(number).collect(), None),
        Some(ints) => {
            let values = (0..m.len())
                .map(|i| match ints.is_valid(i) {
                    true => number(i),
                    false => rv[i],
                })
                .collect();
            let valid = match r.nulls() {
                Some(rest) => ints.inner() | rest.inner(),
                None => BooleanBuffer::new_set(m.len()),
            };
            (
                values,
                Some(NullBuffer::new(valid)).filter(|n| n.null_count() > 0),
            )
        }
    };
    Ok(Arc::new(Float64Array::new(values, nulls)))
}

/// `history_decode(#m, #c[, #k, #r])`: a column of a history file back as the relation's.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Decode {
    to: DataType,
    signature: Signature,
}

impl Decode {
    fn new(to: DataType, args: usize) -> Self {
        Decode {
            to,
            signature: Signature::any(args, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Decode {
    fn name(&self) -> &str {
        "history_decode"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.to.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let parts = ColumnarValue::values_to_arrays(&args.args)?;
        Ok(ColumnarValue::Array(decode(&self.to, &parts).map_err(
            |e| datafusion::error::DataFusionError::External(Box::new(e)),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::TimeUnit;

    /// A batch of the relation's columns from a batch of all file columns.
    fn decode_all(layout: &Layout, batch: &RecordBatch) -> RecordBatch {
        let columns = (0..layout.cols.len())
            .map(|i| {
                let parts: Vec<ArrayRef> = layout
                    .physical_of(i)
                    .map(|p| batch.column(p).clone())
                    .collect();
                match layout.cols[i] {
                    Col::Plain(_) => parts[0].clone(),
                    _ => decode(layout.logical.field(i).data_type(), &parts).unwrap(),
                }
            })
            .collect();
        RecordBatch::try_new(layout.logical.clone(), columns).unwrap()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]))
    }

    /// Every kind of double, in runs long and short, with nulls, comes back bit for bit, across
    /// batches that continue one another.
    #[test]
    fn values_come_back_bit_for_bit() {
        let specials = [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            1e300,
            -2.5,
            0.1,
            9_007_199_254_740_993.0,
            37.54999923706055,
        ];
        let mut host = Vec::new();
        let mut v = Vec::new();
        let mut n = Vec::new();
        let mut ts = Vec::new();
        let mut x: u64 = 27;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for series in 0..40u64 {
            let len = [1, 2, 15, 16, 17, 300][series as usize % 6];
            let mut s = (rand() % 1000) as f64;
            for i in 0..len {
                host.push(Some(format!("h{series:02}")));
                let r = rand();
                v.push(match series % 8 {
                    _ if r % 97 == 0 => None,
                    0 => Some(specials[(r % specials.len() as u64) as usize]),
                    1 => {
                        s += (r % 1000) as f64;
                        Some(s)
                    }
                    2 => Some(((s + (r % 300) as f64 / 100.0) * 100.0).round() / 100.0),
                    3 => Some((s / 7.0 + (r % 5) as f64) as f32 as f64),
                    4 => Some(f64::from_bits(r)),
                    5 if i % 5 == 0 => Some(f64::from_bits(r)),
                    5 => Some((r % 10) as f64),
                    _ => Some(-((r % 100_000) as f64) / 1000.0),
                });
                n.push((r % 13 != 0).then_some((r as i64).wrapping_mul(series as i64)));
                ts.push(1_796_547_600_000 + i as i64 * 5000 + (r % 4) as i64);
            }
        }
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(host)),
                Arc::new(Float64Array::from(v)),
                Arc::new(Int64Array::from(n)),
                Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let layout = Layout::new(schema());
        let mut enc = Encoder::new(&layout, vec![0]);
        let mut at = 0;
        for len in [5, 700, 1, batch.num_rows()] {
            let len = len.min(batch.num_rows() - at);
            let part = batch.slice(at, len);
            at += len;
            let stored = enc.encode(&part).unwrap();
            assert_eq!(stored.schema(), layout.physical);
            let back = decode_all(&layout, &stored);
            assert_eq!(back.num_rows(), part.num_rows());
            for c in 0..part.num_columns() {
                if c == 1 {
                    let (a, b) = (
                        part.column(c).as_primitive::<Float64Type>(),
                        back.column(c).as_primitive::<Float64Type>(),
                    );
                    for i in 0..a.len() {
                        assert_eq!(a.is_valid(i), b.is_valid(i), "row {i}");
                        assert_eq!(
                            a.value(i).to_bits(),
                            b.value(i).to_bits(),
                            "row {i}: {} {}",
                            a.value(i),
                            b.value(i)
                        );
                    }
                } else {
                    assert_eq!(
                        part.column(c).as_ref(),
                        back.column(c).as_ref(),
                        "column {c}"
                    );
                }
            }
            if at == batch.num_rows() {
                break;
            }
        }
        assert_eq!(at, batch.num_rows());
    }

    /// A long run is stored as one smooth sequence: it continues the previous run one ordinary
    /// step further, whatever the jump between the two series.
    #[test]
    fn runs_continue_one_another() {
        let layout = Layout::new(schema());
        let rows = 64;
        let host: Vec<&str> = (0..2 * rows)
            .map(|i| if i < rows { "a" } else { "b" })
            .collect();
        let v: Vec<f64> = (0..2 * rows)
            .map(|i| {
                if i < rows {
                    1e12 + i as f64 * 10.0
                } else {
                    5.0 + i as f64 * 10.0
                }
            })
            .collect();
        let ts: Vec<i64> = (0..2 * rows).map(|i| (i % rows) as i64 * 5000).collect();
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(host)),
                Arc::new(Float64Array::from(v)),
                Arc::new(Int64Array::from(vec![None::<i64>; 2 * rows])),
                Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let stored = Encoder::new(&layout, vec![0]).encode(&batch).unwrap();
        for (col, step) in [("v#m", 10), ("ts#m", 5000)] {
            let m = stored
                .column_by_name(col)
                .unwrap()
                .as_primitive::<Int64Type>();
            for i in 1..m.len() {
                assert_eq!(m.value(i) - m.value(i - 1), step, "{col} row {i}");
            }
        }
        let k = stored
            .column_by_name("v#k")
            .unwrap()
            .as_primitive::<Int8Type>();
        assert!(k.values().iter().all(|k| *k == 0));
    }

    /// A relation's own column may be named like a file column (`v#m` beside a double `v`): the
    /// file columns take other names, the file is written, and the columns come back.
    #[test]
    fn own_columns_named_like_file_columns() {
        let logical = Arc::new(Schema::new(vec![
            Field::new("v#m", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            logical.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "b"])),
                Arc::new(Float64Array::from(vec![1.5, 0.1, -7.0])),
                Arc::new(TimestampMillisecondArray::from(vec![5, 10, 5]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let layout = Layout::new(logical);
        let names: Vec<&String> = layout.physical.fields().iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            ["v#m", "v##m", "v##c", "v##k", "v##r", "ts#m", "ts#c"]
        );
        let dir = std::env::temp_dir().join(format!("tocsin-encode-{}", std::process::id()));
        let mut once = Some(batch.clone());
        let c =
            crate::files::write_file(&dir, "f.parquet", &layout, 2, vec![0], || Ok(once.take()))
                .unwrap();
        assert_eq!(c.rows, 3);
        let _ = std::fs::remove_dir_all(&dir);
        let stored = Encoder::new(&layout, vec![0]).encode(&batch).unwrap();
        let all: Vec<usize> = (0..layout.physical.fields().len()).collect();
        for (i, (expr, name)) in layout
            .decode_exprs(&all, &[0, 1, 2])
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(name, batch.schema().field(i).name());
            let back = expr.evaluate(&stored).unwrap().into_array(3).unwrap();
            assert_eq!(back.as_ref(), batch.column(i).as_ref(), "{name}");
        }
    }
}
