//! Reading part of a source's window: an ad hoc query copies only the rows its filters select.
//!
//! Every worker numbers the series of each source it holds: each distinct combination of the
//! source's text columns gets a number the first time a row brings it. Every batch of the log
//! carries the numbers of its rows beside it and its rows in the order of those numbers (8 bytes
//! a row in all), with its oldest and newest `ts`. A query evaluates its filters on text columns
//! once per series, over the list of the series (a few thousand rows, not one per retained row),
//! and skips the batches its `ts` filters exclude. In each batch left it finds the few series it
//! selected by binary search in the batch's order, or, when it selected many, passes over the
//! rows' numbers; it copies only the rows found. Its other filters then see only those rows.
//!
//! A worker's numbering grows with every series it sees. Once most of its series have no row
//! left in the window (hosts renamed, containers gone), it starts a new numbering; the batches
//! numbered by the old one keep it until they expire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, PrimitiveArray, RecordBatch, UInt32Array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{filter_record_batch, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::error::{EngineError, Result};
use crate::source::Retained;

/// Rows gathered from many batches go out in batches of this many.
const GATHER_ROWS: usize = 8192;

/// Whether a column of this type names a series.
fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The series one worker has numbered for a source (one numbering of them): shared by the
/// worker, which adds series, and queries, which read them.
pub struct SeriesDict {
    /// The text columns' positions in the source's schema.
    columns: Vec<usize>,
    /// The text columns alone.
    schema: SchemaRef,
    converter: RowConverter,
    keys: Mutex<Keys>,
    /// What this numbering adds to the source's retained memory.
    bytes: AtomicU64,
    retained: Arc<Retained>,
}

struct Keys {
    /// Series `i` is row `i`.
    rows: Rows,
    /// The series as columns, as of the last query that asked.
    batch: Option<RecordBatch>,
}

impl std::fmt::Debug for SeriesDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesDict")
            .field("columns", &self.columns)
            .finish()
    }
}

impl Drop for SeriesDict {
    fn drop(&mut self) {
        self.retained.sub(0, self.bytes.load(Ordering::Relaxed));
    }
}

impl SeriesDict {
    /// The series as a batch of the text columns: row `i` is series `i`. Holds every series
    /// numbered before the call.
    pub fn series(&self) -> Result<RecordBatch> {
        let mut keys = self.keys.lock().expect("series keys");
        if let Some(b) = &keys.batch {
            if b.num_rows() == keys.rows.num_rows() {
                return Ok(b.clone());
            }
        }
        let columns = self.converter.convert_rows(keys.rows.iter())?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        keys.batch = Some(batch.clone());
        Ok(batch)
    }
}

/// A worker's numbering of a source's series, as it adds to it.
pub(crate) struct Numbering {
    source: SchemaRef,
    dict: Arc<SeriesDict>,
    ids: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    /// For each series, the sequence number of the last batch that had it.
    last_seen: Vec<u64>,
    /// For each series, the series that followed it in the last batch that had it (`u32::MAX`:
    /// none). Scrapes, polls and agents send their series in the same order each time, so a row
    /// is first compared with the series its predecessor's successor was: one comparison with
    /// the next key in the list, not a hash and a probe of a table of every series.
    next: Vec<u32>,
}

impl Numbering {
    /// A numbering for a source with this schema; none when it has no text column.
    pub fn new(source: SchemaRef, retained: Arc<Retained>) -> Result<Option<Numbering>> {
        let columns: Vec<usize> = source
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| is_text(f.data_type()))
            .map(|(i, _)| i)
            .collect();
        if columns.is_empty() {
            return Ok(None);
        }
        let schema = Arc::new(source.project(&columns)?);
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let rows = converter.empty_rows(0, 0);
        Ok(Some(Numbering {
            source,
            dict: Arc::new(SeriesDict {
                columns,
                schema,
                converter,
                keys: Mutex::new(Keys { rows, batch: None }),
                bytes: AtomicU64::new(0),
                retained,
            }),
            ids: HashMap::default(),
            last_seen: Vec::new(),
            next: Vec::new(),
        }))
    }

    /// The series numbers of a batch's rows; `seq` is the batch's place in the log.
    pub fn number(&mut self, batch: &RecordBatch, seq: u64) -> Result<BatchSeries> {
        let dict = &self.dict;
        let columns: Vec<_> = dict
            .columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = dict.converter.convert_columns(&columns)?;
        let mut ids = Vec::with_capacity(batch.num_rows());
        let mut added = 0u64;
        let mut keys = dict.keys.lock().expect("series keys");
        let mut prev: Option<u32> = None;
        for row in rows.iter() {
            let guess = prev
                .map(|p| self.next[p as usize])
                .filter(|&n| n != u32::MAX && keys.rows.row(n as usize) == row);
            let id = match guess.or_else(|| self.ids.get(row.as_ref()).copied()) {
                Some(id) => id,
                None => {
                    let id = u32::try_from(self.last_seen.len()).map_err(|_| {
                        EngineError::Internal("more than 2^32 series on one worker".into())
                    })?;
                    self.ids.insert(row.as_ref().into(), id);
                    self.last_seen.push(seq);
                    self.next.push(u32::MAX);
                    keys.rows.push(row);
                    // The key in the map and in the list, the map's slot and the successor.
                    added += 2 * row.as_ref().len() as u64 + 36;
                    id
                }
            };
            self.last_seen[id as usize] = seq;
            if let Some(p) = prev {
                self.next[p as usize] = id;
            }
            prev = Some(id);
            ids.push(id);
        }
        drop(keys);
        if added > 0 {
            dict.bytes.fetch_add(added, Ordering::Relaxed);
            dict.retained.add(0, added);
        }
        Ok(BatchSeries::new(dict.clone(), &ids))
    }

    /// Starts a new numbering when more than half of the (many) series numbered have no row in
    /// the log from `oldest` on.
    pub fn renew_if_sparse(&mut self, oldest: u64) -> Result<()> {
        let total = self.last_seen.len();
        if total < 1024 {
            return Ok(());
        }
        let live = self.last_seen.iter().filter(|&&s| s >= oldest).count();
        if live * 2 < total {
            let retained = self.dict.retained.clone();
            if let Some(fresh) = Numbering::new(self.source.clone(), retained)? {
                *self = fresh;
            }
        }
        Ok(())
    }
}

/// The series of a batch's rows: their series numbers, ascending, each with its row (rows of one
/// series in arrival order), so that a series' rows are found without looking at the others.
#[derive(Clone, Debug)]
pub struct BatchSeries {
    pub dict: Arc<SeriesDict>,
    /// Series numbers, ascending.
    pub sorted: UInt32Array,
    /// The row of each.
    pub order: UInt32Array,
}

impl BatchSeries {
    /// The series of rows whose series numbers are `ids`.
    fn new(dict: Arc<SeriesDict>, ids: &[u32]) -> Self {
        let mut keyed: Vec<u64> = ids
            .iter()
            .enumerate()
            .map(|(r, &id)| (u64::from(id) << 32) | r as u64)
            .collect();
        keyed.sort_unstable();
        BatchSeries {
            dict,
            sorted: keyed.iter().map(|&k| (k >> 32) as u32).collect(),
            order: keyed.iter().map(|&k| k as u32).collect(),
        }
    }

    /// Each row's series number.
    fn ids(&self) -> Vec<u32> {
        let mut ids = vec![0; self.sorted.len()];
        for (&id, &r) in self.sorted.values().iter().zip(self.order.values()) {
            ids[r as usize] = id;
        }
        ids
    }

    /// The memory of the numbers and the order.
    pub fn bytes(&self) -> u64 {
        8 * self.sorted.len() as u64
    }
}

/// The first place in `sorted` whose value is at least `id`, searched from where `id` would be
/// if the values were spread evenly (series numbers are dense, so it is close), widening
/// until it is bracketed.
fn lower_bound(sorted: &[u32], id: u32, from: usize) -> usize {
    let n = sorted.len();
    let (first, last) = match (sorted.get(from), sorted.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return n,
    };
    if id <= first {
        return from;
    }
    if id > last {
        return n;
    }
    let span = (last - first) as u64;
    let guess = from + ((id - first) as u64 * (n - 1 - from) as u64 / span.max(1)) as usize;
    let (mut lo, mut hi);
    if sorted[guess] < id {
        // In (guess, n).
        lo = guess + 1;
        hi = n;
        let mut step = 1;
        while guess + step < n {
            if sorted[guess + step] >= id {
                hi = guess + step;
                break;
            }
            lo = guess + step + 1;
            step *= 2;
        }
    } else {
        // In [from, guess].
        lo = from;
        hi = guess;
        let mut step = 1;
        while step <= guess - from {
            if sorted[guess - step] < id {
                lo = guess - step + 1;
                break;
            }
            hi = guess - step;
            step *= 2;
        }
    }
    lo + sorted[lo..hi].partition_point(|&v| v < id)
}

/// A batch of a relation's rows as a peek returns it: for a source, with its rows' series and
/// the range of their `ts`.
#[derive(Clone, Debug)]
pub struct WindowBatch {
    pub batch: RecordBatch,
    /// The oldest and newest `ts` (inclusive), when known.
    pub ts_range: Option<(i64, i64)>,
    pub series: Option<BatchSeries>,
}

impl WindowBatch {
    /// Rows with nothing known about them.
    pub fn plain(batch: RecordBatch) -> Self {
        WindowBatch {
            batch,
            ts_range: None,
            series: None,
        }
    }

    /// Rows with their `ts` (in milliseconds) and nothing else known about them.
    pub fn timed(batch: RecordBatch, ts: &PrimitiveArray<TimestampMillisecondType>) -> Self {
        WindowBatch {
            batch,
            ts_range: Some(ts_bounds(ts)),
            series: None,
        }
    }

    /// Only the rows whose `ts` (this batch's, in milliseconds) is within `[lo, hi]`; none when
    /// no row is.
    pub fn within(
        &self,
        ts: &PrimitiveArray<TimestampMillisecondType>,
        lo: i64,
        hi: i64,
    ) -> Result<Option<WindowBatch>> {
        let (min, max) = self.ts_range.unwrap_or((i64::MIN, i64::MAX));
        if min >= lo && max <= hi && ts.null_count() == 0 {
            return Ok(Some(self.clone()));
        }
        let mask = BooleanArray::new(ts_within(ts, lo, hi), None);
        if mask.true_count() == 0 {
            return Ok(None);
        }
        let mut part = self.filter(&mask)?;
        part.ts_range = Some((min.max(lo), max.min(hi)));
        Ok(Some(part))
    }

    /// Only the rows of `mask`.
    fn filter(&self, mask: &BooleanArray) -> Result<WindowBatch> {
        let series = match &self.series {
            Some(s) => {
                let ids = UInt32Array::from(s.ids());
                let kept = datafusion::arrow::compute::filter(&ids, mask)?;
                let kept: &UInt32Array = kept.as_primitive();
                Some(BatchSeries::new(s.dict.clone(), kept.values()))
            }
            None => None,
        };
        Ok(WindowBatch {
            batch: filter_record_batch(&self.batch, mask)?,
            ts_range: self.ts_range,
            series,
        })
    }
}

/// A timestamp literal in epoch milliseconds (rounded down for finer units).
fn literal_ms(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(m), _) => Some(*m),
        ScalarValue::TimestampMicrosecond(Some(u), _) => Some(u.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(n), _) => Some(n.div_euclid(1_000_000)),
        _ => None,
    }
}

/// Whether `e` is the `ts` column, possibly cast to another timestamp unit.
fn is_ts(e: &Expr, ts: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == ts,
        Expr::Cast(c) => is_ts(&c.expr, ts),
        Expr::TryCast(c) => is_ts(&c.expr, ts),
        _ => false,
    }
}

/// Narrows `[lo, hi]` (inclusive milliseconds) by what a filter says about `ts`.
fn narrow(e: &Expr, ts: &str, lo: &mut i64, hi: &mut i64) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(left, ts, lo, hi);
                narrow(right, ts, lo, hi);
                return;
            }
            let (op, v) = if is_ts(left, ts) {
                match literal_ms(right) {
                    Some(v) => (*op, v),
                    None => return,
                }
            } else if is_ts(right, ts) {
                match (literal_ms(left), op.swap()) {
                    (Some(v), Some(op)) => (op, v),
                    _ => return,
                }
            } else {
                return;
            };
            // A literal finer than milliseconds was rounded down: `ts > v` then still holds
            // for `ts = v + 1 ms`, so bounds stay inclusive of every row that may pass.
            match op {
                Operator::Gt => *lo = (*lo).max(v),
                Operator::GtEq => *lo = (*lo).max(v),
                Operator::Lt | Operator::LtEq => *hi = (*hi).min(v.saturating_add(1)),
                Operator::Eq => {
                    *lo = (*lo).max(v);
                    *hi = (*hi).min(v.saturating_add(1));
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_ts(expr, ts) => {
            if let Some(v) = literal_ms(low) {
                *lo = (*lo).max(v);
            }
            if let Some(v) = literal_ms(high) {
                *hi = (*hi).min(v.saturating_add(1));
            }
        }
        _ => {}
    }
}

/// The `ts` range (inclusive) the filters allow: every row they pass is in it.
pub fn ts_range(filters: &[Expr], ts: &str) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for f in filters {
        narrow(f, ts, &mut lo, &mut hi);
    }
    (lo, hi)
}

/// `e` with its columns named without their table (a scan's schema has no qualifiers).
pub fn unqualified(e: Expr) -> Expr {
    e.transform(|e| {
        Ok(match e {
            Expr::Column(c) if c.relation.is_some() => Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            )),
            e => Transformed::no(e),
        })
    })
    .map(|t| t.data)
    .unwrap_or_else(|e| panic!("renaming columns cannot fail: {e}"))
}

/// The columns a scan is asked for: those of `projection`, or all of `schema`'s.
pub fn projected(projection: Option<&Vec<usize>>, schema: &SchemaRef) -> Vec<usize> {
    match projection {
        Some(p) => p.clone(),
        None => (0..schema.fields().len()).collect(),
    }
}

/// The oldest and newest of these times (nulls aside): `(i64::MAX, i64::MIN)` when there is
/// none.
pub fn ts_bounds(ts: &PrimitiveArray<TimestampMillisecondType>) -> (i64, i64) {
    ts.iter()
        .flatten()
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)))
}

/// Whether a filter can be answered once per series rather than once per row: it reads only
/// columns for which `is_series` holds (at least one), and gives the same answer each time.
pub fn by_series(f: &Expr, is_series: impl Fn(&str) -> bool) -> bool {
    let cols = f.column_refs();
    !cols.is_empty() && !f.is_volatile() && cols.iter().all(|c| is_series(&c.name))
}

/// For each series (row of `series`), whether a boolean expression passes it.
pub fn passed(p: &Arc<dyn PhysicalExpr>, series: &RecordBatch) -> DfResult<Vec<bool>> {
    Ok(valid_true(&passes(p, series)?).iter().collect())
}

/// Which rows of `batch` a boolean expression passes.
pub fn passes(p: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> DfResult<BooleanArray> {
    let v = p.evaluate(batch)?.into_array(batch.num_rows())?;
    v.as_boolean_opt()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("a filter is not a boolean".into()))
}

/// The series one numbering's filters select.
struct Selected {
    dict: *const SeriesDict,
    /// By series number.
    passed: Vec<bool>,
    /// The numbers of the series passed, ascending.
    ids: Vec<u32>,
}

/// Whether finding `wanted` series in a batch of `n` rows by search is cheaper than one pass
/// over its rows' series numbers: a search starts close to its place (series numbers are dense)
/// and costs about as much as passing over a few dozen rows.
fn looks_up(wanted: usize, n: usize) -> bool {
    wanted.saturating_mul(32) < n
}

/// Whether row `r`'s `ts` is within `[lo, hi]`.
fn in_range(ts: &PrimitiveArray<TimestampMillisecondType>, r: usize, lo: i64, hi: i64) -> bool {
    ts.is_valid(r) && (lo..=hi).contains(&ts.value(r))
}

/// The rows whose `ts` is within `[lo, hi]`, a word of 64 rows at a time.
fn ts_within(ts: &PrimitiveArray<TimestampMillisecondType>, lo: i64, hi: i64) -> BooleanBuffer {
    let within = BooleanBuffer::collect_bool(ts.len(), |i| (lo..=hi).contains(&ts.values()[i]));
    match ts.nulls() {
        Some(nulls) => &within & nulls.inner(),
        None => within,
    }
}

/// The rows a filter's answer passes: true, not null.
fn valid_true(m: &BooleanArray) -> BooleanBuffer {
    match m.nulls() {
        Some(nulls) => m.values() & nulls.inner(),
        None => m.values().clone(),
    }
}

/// A relation's rows in memory as a table. Every filter is applied by the scan: those on text
/// columns once per series, those on `ts` first to whole batches.
#[derive(Debug)]
pub struct WindowTable {
    schema: SchemaRef,
    ts: Option<usize>,
    batches: Vec<WindowBatch>,
}

impl WindowTable {
    /// `ts` is the position of the column the batches' time ranges are of.
    pub fn new(schema: SchemaRef, ts: Option<usize>, batches: Vec<WindowBatch>) -> Self {
        WindowTable {
            schema,
            ts,
            batches,
        }
    }

    /// The rows the filters select, projected.
    pub fn read(
        &self,
        state: &dyn Session,
        projection: &[usize],
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = &self.schema;
        let filters: Vec<Expr> = filters.iter().cloned().map(unqualified).collect();
        let (lo, hi) = match self.ts {
            Some(t) => ts_range(&filters, schema.field(t).name()),
            None => (i64::MIN, i64::MAX),
        };
        // Filters on text columns alone are answered here, by series.
        let (text, rest): (Vec<Expr>, Vec<Expr>) = filters.into_iter().partition(|f| {
            by_series(f, |c| {
                schema
                    .field_with_name(c)
                    .is_ok_and(|f| is_text(f.data_type()))
            })
        });
        let text = text.into_iter().reduce(Expr::and);
        let on_rows =
            match &text {
                Some(p) => Some(state.create_physical_expr(
                    p.clone(),
                    &DFSchema::try_from(schema.as_ref().clone())?,
                )?),
                None => None,
            };
        // The series each numbering's series filters select, evaluated once per numbering.
        let mut selected: Vec<Selected> = Vec::new();
        let mut whole: Vec<RecordBatch> = Vec::new();
        let mut sources: Vec<&RecordBatch> = Vec::new();
        let mut picks: Vec<(usize, usize)> = Vec::new();
        for b in &self.batches {
            let inside = match b.ts_range {
                Some((min, max)) if lo > hi || max < lo || min > hi => continue,
                Some((min, max)) => min >= lo && max <= hi,
                None => true,
            };
            let by_series: Option<&Selected> = match (&text, &b.series) {
                (Some(p), Some(s)) => {
                    let at = Arc::as_ptr(&s.dict);
                    let i = match selected.iter().position(|d| d.dict == at) {
                        Some(i) => i,
                        None => {
                            let series = s.dict.series().map_err(to_df)?;
                            let physical = state.create_physical_expr(
                                p.clone(),
                                &DFSchema::try_from(series.schema().as_ref().clone())?,
                            )?;
                            let passed = passed(&physical, &series)?;
                            let ids = (0..passed.len() as u32).filter(|&i| passed[i as usize]);
                            selected.push(Selected {
                                dict: at,
                                ids: ids.collect(),
                                passed,
                            });
                            selected.len() - 1
                        }
                    };
                    Some(&selected[i])
                }
                _ => None,
            };
            let by_rows = match (&on_rows, &b.series) {
                (Some(p), None) => Some(passes(p, &b.batch)?),
                _ => None,
            };
            if by_series.is_none() && by_rows.is_none() && inside {
                whole.push(b.batch.clone());
                continue;
            }
            let n = b.batch.num_rows();
            let ts = match (inside, self.ts) {
                (false, Some(t)) => Some(
                    b.batch
                        .column(t)
                        .as_primitive_opt::<TimestampMillisecondType>()
                        .ok_or_else(|| DataFusionError::Internal("ts is not in ms".into()))?,
                ),
                _ => None,
            };
            let at = sources.len();
            let before = picks.len();
            let in_ts = |r: usize| ts.is_none_or(|ts| in_range(ts, r, lo, hi));
            match (by_series, &b.series) {
                (Some(sel), Some(s)) => {
                    let (sorted, order) = (s.sorted.values(), s.order.values());
                    if looks_up(sel.ids.len(), n) {
                        // Each selected series' rows, found by search.
                        let mut from = 0;
                        for &id in &sel.ids {
                            from = lower_bound(sorted, id, from);
                            let to = lower_bound(sorted, id + 1, from);
                            picks.extend(
                                order[from..to]
                                    .iter()
                                    .map(|&r| r as usize)
                                    .filter(|&r| in_ts(r))
                                    .map(|r| (at, r)),
                            );
                            from = to;
                        }
                    } else {
                        // One pass over the series numbers.
                        picks.extend(
                            sorted
                                .iter()
                                .zip(order)
                                .filter(|(&id, _)| sel.passed.get(id as usize) == Some(&true))
                                .map(|(_, &r)| r as usize)
                                .filter(|&r| in_ts(r))
                                .map(|r| (at, r)),
                        );
                    }
                }
                _ => {
                    // The rows to keep, a word of 64 rows at a time.
                    let mut keep = BooleanBuffer::new_set(n);
                    if let Some(m) = &by_rows {
                        keep = &keep & &valid_true(m);
                    }
                    if let Some(ts) = ts {
                        keep = &keep & &ts_within(ts, lo, hi);
                    }
                    picks.extend(keep.set_indices().map(|r| (at, r)));
                }
            }
            match picks.len() - before {
                0 => {}
                k if k == n => {
                    picks.truncate(before);
                    whole.push(b.batch.clone());
                }
                _ => sources.push(&b.batch),
            }
        }
        for chunk in picks.chunks(GATHER_ROWS) {
            whole.push(interleave_record_batch(&sources, chunk)?);
        }
        let rest = rest.into_iter().reduce(Expr::and);
        Ok(match rest {
            Some(p) => {
                let p =
                    state.create_physical_expr(p, &DFSchema::try_from(schema.as_ref().clone())?)?;
                let rows = MemorySourceConfig::try_new_exec(&[whole], schema.clone(), None)?;
                Arc::new(
                    FilterExecBuilder::new(p, rows)
                        .apply_projection(Some(projection.to_vec()))?
                        .build()?,
                )
            }
            None => MemorySourceConfig::try_new_exec(
                &[whole],
                schema.clone(),
                Some(projection.to_vec()),
            )?,
        })
    }
}

fn to_df(e: EngineError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.read(state, &projected(projection, &self.schema), filters)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::source::SourceLog;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("metric", DataType::Utf8, true),
            Field::new("value", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]))
    }

    /// `n` rows at about `t`: hosts `h0`.. (some null), three metrics, a few ms of jitter.
    fn batch(seed: &mut u64, n: usize, hosts: u64, t: i64) -> RecordBatch {
        let mut next = || {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *seed >> 33
        };
        let mut host = Vec::new();
        let mut metric = Vec::new();
        let mut value = Vec::new();
        let mut ts = Vec::new();
        for _ in 0..n {
            let h = next() % (hosts + 1);
            host.push((h < hosts).then(|| format!("h{h}")));
            metric.push(Some(format!("m{}", next() % 3)));
            value.push((next() % 100) as f64);
            ts.push(t + (next() % 400) as i64);
        }
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(host)),
                Arc::new(StringArray::from(metric)),
                Arc::new(Float64Array::from(value)),
                Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    /// A series keeps its number whatever the order its rows come in: the same order as before
    /// (where the successor of the row before is tried first), another order, new series among
    /// known ones, a series repeated in a row.
    #[test]
    fn a_series_keeps_its_number_in_any_order() {
        let retained = Arc::new(Retained::new(Arc::new(AtomicU64::new(0))));
        let mut numbering = Numbering::new(schema(), retained).unwrap().unwrap();
        let rows = |hosts: &[&str]| {
            let n = hosts.len();
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from(hosts.to_vec())),
                    Arc::new(StringArray::from(vec!["m"; n])),
                    Arc::new(Float64Array::from(vec![1.0; n])),
                    Arc::new(TimestampMillisecondArray::from(vec![0; n]).with_timezone("UTC")),
                ],
            )
            .unwrap()
        };
        let mut known: HashMap<String, u32> = HashMap::new();
        for (seq, hosts) in [
            &["a", "b", "c", "d"][..],
            &["a", "b", "c", "d"],
            &["a", "c", "b", "d"],
            &["a", "x", "b", "c", "y", "d"],
            &["d", "d", "a", "b", "c", "a"],
            &["a", "x", "b", "c", "y", "d"],
        ]
        .into_iter()
        .enumerate()
        {
            let ids = numbering.number(&rows(hosts), seq as u64).unwrap().ids();
            for (h, id) in hosts.iter().zip(ids) {
                let before = *known.entry(h.to_string()).or_insert(id);
                assert_eq!(before, id, "{h} in {hosts:?}");
            }
            let distinct: std::collections::HashSet<u32> = known.values().copied().collect();
            assert_eq!(distinct.len(), known.len(), "one number a series");
        }
    }

    async fn answer(table: Arc<dyn TableProvider>, q: &str) -> String {
        let ctx = SessionContext::new();
        ctx.register_table("m", table).unwrap();
        let rows = ctx.sql(q).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&rows).unwrap().to_string()
    }

    /// Every query answers over the window table as over the same rows in a plain table.
    async fn agree(peeked: &[WindowBatch]) {
        let plain: Vec<RecordBatch> = peeked.iter().map(|w| w.batch.clone()).collect();
        let window = Arc::new(WindowTable::new(schema(), Some(3), peeked.to_vec()));
        let mem = Arc::new(MemTable::try_new(schema(), vec![plain]).unwrap());
        let order = " ORDER BY host, metric, value, ts";
        for q in [
            "SELECT * FROM m",
            "SELECT * FROM m WHERE host = 'h1'",
            "SELECT value FROM m WHERE host = 'h1' AND metric = 'm2'",
            "SELECT * FROM m WHERE host IN ('h1', 'h3') AND metric <> 'm0'",
            "SELECT * FROM m WHERE host LIKE 'h1%' OR metric = 'm1'",
            "SELECT * FROM m WHERE host IS NULL",
            "SELECT * FROM m WHERE host = 'h2' OR value > 90",
            "SELECT * FROM m WHERE host = 'nohost'",
            "SELECT * FROM m WHERE ts >= '1970-01-01T00:00:05Z' AND ts < '1970-01-01T00:00:09.100Z'",
            "SELECT * FROM m WHERE host = 'h4' AND ts BETWEEN '1970-01-01T00:00:06Z' AND '1970-01-01T00:00:07.200Z'",
            "SELECT * FROM m WHERE m.host = 'h0' AND value < 50",
        ] {
            let (q, o) = if q.starts_with("SELECT *") {
                (format!("{q}{order}"), "")
            } else {
                (q.to_string(), " ORDER BY 1")
            };
            let q = format!("{q}{o}");
            assert_eq!(
                answer(window.clone(), &q).await,
                answer(mem.clone(), &q).await,
                "{q}"
            );
        }
        let q = "SELECT host, metric, count(*), sum(value) FROM m WHERE metric = 'm1' GROUP BY 1, 2 ORDER BY 1, 2";
        assert_eq!(answer(window, q).await, answer(mem, q).await);
    }

    #[test]
    fn lower_bound_finds_the_first_place_at_least_the_value() {
        let mut seed = 3u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..2_000 {
            let n = next(60) as usize;
            let spread = 1 + next(40);
            let mut v: Vec<u32> = (0..n).map(|_| next(spread) as u32).collect();
            v.sort_unstable();
            let from = next(n as u64 + 1) as usize;
            for id in 0..spread as u32 + 2 {
                let want = from + v[from..].partition_point(|&x| x < id);
                assert_eq!(lower_bound(&v, id, from), want, "{v:?} {id} from {from}");
            }
        }
    }

    #[tokio::test]
    async fn filtered_reads_answer_as_plain_scans_and_copy_only_their_rows() {
        let total = Arc::new(AtomicU64::new(0));
        let retained = Arc::new(Retained::new(total.clone()));
        let mut log = SourceLog::new(3, 4_000, 0, retained.clone());
        let mut seed = 7;
        for i in 0..40u64 {
            log.append(i * 250, batch(&mut seed, 200, 8, i as i64 * 250));
        }
        log.advance(10_000);
        // At 9,999 the rows before 6,000 have expired: some batches only in part.
        let peeked = log.peek(9_999).unwrap();
        assert!(peeked.iter().all(|w| w.series.is_some()));
        agree(&peeked).await;

        // The read hands on the selected rows alone, no other filter left to apply.
        let ctx = SessionContext::new();
        let state = ctx.state();
        let table = WindowTable::new(schema(), Some(3), peeked.clone());
        let filters = [datafusion::prelude::col("host").eq(datafusion::prelude::lit("h1"))];
        let plan = table.read(&state, &[0, 2], &filters).unwrap();
        let out: usize = collect(plan, ctx.task_ctx())
            .await
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        let expected: usize = peeked
            .iter()
            .map(|w| {
                let hosts = w.batch.column(0).as_string::<i32>();
                hosts.iter().filter(|h| *h == Some("h1")).count()
            })
            .sum();
        assert!(expected > 0);
        assert_eq!(out, expected);
        // The batches, 8 bytes a row for their series, and the series themselves.
        let rows: u64 = (0..40).map(|_| 200).sum();
        let batches: u64 = log
            .read_from(0)
            .0
            .map(|e| crate::source::batch_bytes(&e.batch))
            .sum();
        let series = retained.bytes() - batches - 8 * rows;
        assert!(
            series > 0 && series < 27 * 100,
            "{series} bytes for 27 series"
        );
    }

    #[tokio::test]
    async fn a_numbering_mostly_of_gone_series_is_renewed() {
        let total = Arc::new(AtomicU64::new(0));
        let retained = Arc::new(Retained::new(total.clone()));
        let mut log = SourceLog::new(3, 1_000, 0, retained.clone());
        let mut seed = 11;
        // 3,000 hosts once, then 4 of them.
        log.append(0, batch(&mut seed, 20_000, 3_000, 0));
        let first = log.peek(0).unwrap()[0].series.clone().unwrap().dict;
        for i in 1..200u64 {
            log.advance(i * 100);
            log.append(i * 100, batch(&mut seed, 50, 4, i as i64 * 100));
            log.prune(i * 100);
        }
        log.advance(20_000);
        let peeked = log.peek(19_950).unwrap();
        let dicts: Vec<*const SeriesDict> = peeked
            .iter()
            .map(|w| Arc::as_ptr(&w.series.as_ref().unwrap().dict))
            .collect();
        assert!(
            !dicts.contains(&Arc::as_ptr(&first)),
            "the first numbering was left"
        );
        let last = peeked.last().unwrap().series.as_ref().unwrap();
        assert!(
            last.dict.series().unwrap().num_rows() <= 15,
            "4 hosts and none, 3 metrics"
        );
        agree(&peeked).await;
        drop((first, peeked));
        drop(log);
        assert_eq!(total.load(Ordering::Relaxed), 0, "all of it given back");
    }
}
