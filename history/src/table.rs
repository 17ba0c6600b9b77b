//! The table an ad hoc query reads for a relation with history: rows with `ts` before the
//! boundary from history (its files and its pending rows), rows from the boundary on from the
//! in-memory window, read at one time.
//!
//! The boundary is the oldest `ts` the window still holds at the peek's time (`time - retain +
//! 1 ms`). Every row accepted with an older `ts` arrived before that time (a source refuses rows
//! already past its retention), so history has it, either in a file or pending; and no row of the
//! window is read from history. There is no gap and no row twice.
//!
//! Filters on `ts` choose the partitions to read; filters on text columns go to the Parquet
//! reader, which skips row groups and pages by their statistics. The files' numbers are decoded
//! (see [`crate::encode`]) before the other filters are applied.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit};
use futures_util::future::{BoxFuture, FutureExt};

use crate::compact::partitioned_file;
use crate::files::FileMeta;
use crate::relation::Snapshot;
use crate::series::{SeriesIndex, SeriesKeys};

pub struct HistoryTable {
    schema: SchemaRef,
    ts: usize,
    history: Snapshot,
    memory: Vec<RecordBatch>,
    /// Rows with `ts` below this come from history, the others from memory.
    boundary: i64,
}

impl std::fmt::Debug for HistoryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryTable")
            .field("files", &self.history.files.len())
            .field("boundary", &self.boundary)
            .finish()
    }
}

impl HistoryTable {
    pub fn new(
        schema: SchemaRef,
        ts: usize,
        history: Snapshot,
        memory: Vec<RecordBatch>,
        boundary: i64,
    ) -> Self {
        HistoryTable {
            schema,
            ts,
            history,
            memory,
            boundary,
        }
    }

    fn ts_name(&self) -> &str {
        self.schema.field(self.ts).name()
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

/// The `ts` range (inclusive) the filters allow.
pub fn ts_range(filters: &[Expr], ts: &str) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for f in filters {
        narrow(f, ts, &mut lo, &mut hi);
    }
    (lo, hi)
}

/// Readers whose metadata always comes with the page index, so that the index is read once per
/// file into the metadata cache. (DataFusion asks for the footer alone first and reads the index
/// after pruning row groups, around the cache, at every query.)
#[derive(Debug)]
struct WithPageIndex(Arc<dyn ParquetFileReaderFactory>);

struct PageIndexReader(Box<dyn AsyncFileReader + Send>);

impl ParquetFileReaderFactory for WithPageIndex {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        Ok(Box::new(PageIndexReader(self.0.create_reader(
            partition_index,
            file,
            metadata_size_hint,
            metrics,
        )?)))
    }
}

impl AsyncFileReader for PageIndexReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.0.get_metadata(Some(&options)).await }.boxed()
    }
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter is applied by the scan itself (to the decoded rows of history and to the
    /// rows of memory), so filters on text columns that the series indexes answer are not
    /// evaluated again, and their columns are not read unless the query wants them.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Exact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let filters: Vec<Expr> = filters.iter().cloned().map(unqualified).collect();
        let ts_name = self.ts_name().to_string();
        let (lo, hi) = ts_range(&filters, &ts_name);
        let hi = hi.min(self.boundary - 1);
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        // History files of the partitions the range touches.
        let w = self.history.partition_ms;
        let touched: Vec<&FileMeta> = self
            .history
            .files
            .iter()
            .filter(|(p, f)| {
                lo <= hi && *p <= hi && p.saturating_add(w) > lo && f.min_ts <= hi && f.max_ts >= lo
            })
            .map(|(_, f)| f.as_ref())
            .collect();
        let layout = &self.history.layout;
        // Filters on columns stored as they are (text) select series through the files' series
        // indexes, or else skip row groups and pages by their statistics. All but those the
        // indexes answer are applied to the decoded rows.
        let stored_as_is: Vec<&Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs().iter().all(|c| {
                    self.schema
                        .index_of(&c.name)
                        .is_ok_and(|i| layout.is_plain(i))
                })
            })
            .collect();
        let (files, answered) = select_series(state, &touched, &stored_as_is)?;
        if !files.is_empty() {
            let after: Vec<Expr> = filters
                .iter()
                .filter(|f| !answered.contains(f))
                .cloned()
                .collect();
            // The relation's columns to read: the projection, `ts` for the boundary and what
            // the filters still to apply need.
            let mut wanted = projection.clone();
            for c in after.iter().flat_map(|f| f.column_refs()) {
                let i = self.schema.index_of(&c.name)?;
                if !wanted.contains(&i) {
                    wanted.push(i);
                }
            }
            if !wanted.contains(&self.ts) {
                wanted.push(self.ts);
            }
            let mut read: Vec<usize> = wanted.iter().flat_map(|&i| layout.physical_of(i)).collect();
            read.sort_unstable();
            read.dedup();
            // Footers and page indexes are read once and kept in the runtime's metadata cache
            // (files never change under a name).
            let url = ObjectStoreUrl::local_filesystem();
            let runtime = state.runtime_env();
            let reader = WithPageIndex(Arc::new(CachedParquetFileReaderFactory::new(
                runtime.object_store(&url)?,
                runtime.cache_manager.get_file_metadata_cache(),
            )));
            let mut source = ParquetSource::new(layout.physical.clone())
                .with_parquet_file_reader_factory(Arc::new(reader));
            if let Some(p) = stored_as_is
                .iter()
                .filter(|f| !answered.contains(f))
                .map(|f| (*f).clone())
                .reduce(Expr::and)
            {
                let physical = DFSchema::try_from(layout.physical.as_ref().clone())?;
                source = source.with_predicate(state.create_physical_expr(p, &physical)?);
            }
            let config = FileScanConfigBuilder::new(url, Arc::new(source))
                .with_file_groups(vec![FileGroup::new(files)])
                .with_projection_indices(Some(read.clone()))?
                .build();
            let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
            let decoded: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(
                layout
                    .decode_exprs(&read, &wanted)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
                scan,
            )?);
            let below = col(ts_name.as_str()).lt(lit(ScalarValue::TimestampMillisecond(
                Some(self.boundary),
                Some("UTC".into()),
            )));
            let predicate = after.into_iter().fold(below, Expr::and);
            let decoded_schema = DFSchema::try_from(decoded.schema().as_ref().clone())?;
            let predicate = state.create_physical_expr(predicate, &decoded_schema)?;
            let out: Vec<usize> = projection
                .iter()
                .map(|i| wanted.iter().position(|w| w == i).expect("wanted"))
                .collect();
            let filtered = FilterExecBuilder::new(predicate, decoded)
                .apply_projection(Some(out))?
                .build()?;
            inputs.push(Arc::new(filtered));
        }

        // Pending rows before the boundary, then the window.
        let mut rows: Vec<RecordBatch> = Vec::new();
        if lo <= hi {
            for b in &self.history.pending {
                let ts = crate::files::ts_millis(b.column(self.ts));
                let mask: BooleanArray = ts
                    .iter()
                    .map(|t| Some(t.is_some_and(|t| t >= lo && t <= hi)))
                    .collect();
                match mask.true_count() {
                    0 => {}
                    n if n == b.num_rows() => rows.push(b.clone()),
                    _ => rows.push(filter_record_batch(b, &mask)?),
                }
            }
        }
        rows.extend(self.memory.iter().cloned());
        if rows.is_empty() && !inputs.is_empty() {
            return match inputs.len() {
                1 => Ok(inputs.remove(0)),
                _ => UnionExec::try_new(inputs),
            };
        }
        let memory: Arc<dyn ExecutionPlan> = match filters.into_iter().reduce(Expr::and) {
            Some(p) => {
                let p = state
                    .create_physical_expr(p, &DFSchema::try_from(self.schema.as_ref().clone())?)?;
                let rows = MemorySourceConfig::try_new_exec(&[rows], self.schema.clone(), None)?;
                Arc::new(
                    FilterExecBuilder::new(p, rows)
                        .apply_projection(Some(projection))?
                        .build()?,
                )
            }
            None => {
                MemorySourceConfig::try_new_exec(&[rows], self.schema.clone(), Some(projection))?
            }
        };
        inputs.push(memory);
        UnionExec::try_new(inputs)
    }
}

/// `e` with its columns named without their table (a scan's schema has no qualifiers).
fn unqualified(e: Expr) -> Expr {
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

/// The files to read and, for each, the rows of the series the filters on text columns select
/// (from its series index); files with none of them are left out. Returns the filters the
/// selections answer: none when a file has no index.
fn select_series<'a>(
    state: &dyn Session,
    files: &[&FileMeta],
    filters: &[&'a Expr],
) -> Result<(Vec<PartitionedFile>, Vec<&'a Expr>)> {
    let everything = || files.iter().map(|f| partitioned_file(f)).collect();
    let indexes: Option<Vec<&SeriesIndex>> = files.iter().map(|f| f.series.as_ref()).collect();
    let (Some(indexes), false) = (indexes, filters.is_empty()) else {
        return Ok((everything(), Vec::new()));
    };
    // The series columns are the same in every file of a relation.
    let Some(keys) = indexes.first().map(|i| i.keys.batch.schema()) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let covered: Vec<&Expr> = filters
        .iter()
        .copied()
        .filter(|f| {
            f.column_refs()
                .iter()
                .all(|c| keys.field_with_name(&c.name).is_ok())
        })
        .collect();
    let Some(predicate) = covered.iter().map(|f| (*f).clone()).reduce(Expr::and) else {
        return Ok((everything(), Vec::new()));
    };
    let physical =
        state.create_physical_expr(predicate, &DFSchema::try_from(keys.as_ref().clone())?)?;
    // Files with equal series share their keys: the filters run once per distinct set.
    let mut masks: Vec<(*const SeriesKeys, Vec<bool>)> = Vec::new();
    let mut out = Vec::new();
    for (f, index) in files.iter().zip(indexes) {
        let at = Arc::as_ptr(&index.keys);
        let i = match masks.iter().position(|(k, _)| *k == at) {
            Some(i) => i,
            None => {
                let batch = &index.keys.batch;
                if batch.schema().fields() != keys.fields() {
                    return Err(DataFusionError::Internal(format!(
                        "history file {} has other series columns",
                        f.path.display()
                    )));
                }
                let v = physical.evaluate(batch)?.into_array(batch.num_rows())?;
                let v = v
                    .as_boolean_opt()
                    .ok_or_else(|| DataFusionError::Internal("a filter is not a boolean".into()))?;
                masks.push((at, v.iter().map(|b| b == Some(true)).collect()));
                masks.len() - 1
            }
        };
        if let Some(selection) = index.selection(&masks[i].1) {
            out.push(partitioned_file(f).with_extension(ParquetRowSelection::new(selection)));
        }
    }
    Ok((out, covered))
}
