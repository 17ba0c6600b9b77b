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
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
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
use tocsin_engine::window::{
    by_series, passed, projected, ts_range, unqualified, WindowBatch, WindowTable,
};

pub struct HistoryTable {
    schema: SchemaRef,
    ts: usize,
    history: Snapshot,
    memory: Vec<WindowBatch>,
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
        memory: Vec<WindowBatch>,
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
        let projection = projected(projection, &self.schema);
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
                .with_file_groups(file_groups(files, readers()))
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
        let mut rows: Vec<WindowBatch> = Vec::new();
        for b in &self.history.pending {
            let ts = crate::files::ts_millis(b.column(self.ts));
            let pending = WindowBatch::timed(b.clone(), &ts);
            if let Some(b) = pending
                .within(&ts, i64::MIN, self.boundary - 1)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
            {
                rows.push(b);
            }
        }
        rows.extend(self.memory.iter().cloned());
        if rows.is_empty() && !inputs.is_empty() {
            return match inputs.len() {
                1 => Ok(inputs.remove(0)),
                _ => UnionExec::try_new(inputs),
            };
        }
        let memory = WindowTable::new(self.schema.clone(), Some(self.ts), rows);
        inputs.push(memory.read(state, &projection, &filters)?);
        UnionExec::try_new(inputs)
    }
}

/// A file to read, with the rows it has to read.
type ToRead = (PartitionedFile, u64);

/// How many readers decode a query's history files at once: one per core.
fn readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `files` (with the rows each has to read) in at most `n` groups of consecutive files, each
/// with about as many rows to read: each group is read by its own task, and the rest of the
/// plan (filters, partial aggregates) runs on each group's rows as they come.
fn file_groups(files: Vec<ToRead>, n: usize) -> Vec<FileGroup> {
    let total: u64 = files.iter().map(|(_, rows)| rows).sum();
    let n = n.clamp(1, files.len().max(1)) as u64;
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new()];
    let mut done = 0u64;
    for (file, rows) in files {
        // A group is full once the rows read so far reach its share of the total.
        let share = total * groups.len() as u64 / n;
        if done >= share && (groups.len() as u64) < n && !groups.last().expect("a group").is_empty()
        {
            groups.push(Vec::new());
        }
        groups.last_mut().expect("a group").push(file);
        done += rows;
    }
    groups.into_iter().map(FileGroup::new).collect()
}

/// The files to read, each with the rows it has to read: the rows of the series the filters on
/// text columns select (from its series index); files with none of them are left out. Returns
/// the filters the selections answer: none when a file has no index.
fn select_series<'a>(
    state: &dyn Session,
    files: &[&FileMeta],
    filters: &[&'a Expr],
) -> Result<(Vec<ToRead>, Vec<&'a Expr>)> {
    let everything = || {
        files
            .iter()
            .map(|f| (partitioned_file(f), f.rows))
            .collect()
    };
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
        .filter(|f| by_series(f, |c| keys.field_with_name(c).is_ok()))
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
                masks.push((at, passed(&physical, batch)?));
                masks.len() - 1
            }
        };
        if let Some(selection) = index.selection(&masks[i].1) {
            let rows = selection.row_count() as u64;
            out.push((
                partitioned_file(f).with_extension(ParquetRowSelection::new(selection)),
                rows,
            ));
        }
    }
    Ok((out, covered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(rows: &[u64], n: usize) -> Vec<Vec<String>> {
        let files = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (PartitionedFile::new(format!("f{i}"), 1), r))
            .collect();
        file_groups(files, n)
            .iter()
            .map(|g| {
                g.files()
                    .iter()
                    .map(|f| f.object_meta.location.to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn file_groups_share_the_rows_in_order() {
        assert_eq!(
            groups(&[10, 10, 10, 10], 2),
            [vec!["f0", "f1"], vec!["f2", "f3"]]
        );
        assert_eq!(
            groups(&[100, 1, 1, 1], 2),
            [vec!["f0"], vec!["f1", "f2", "f3"]]
        );
        assert_eq!(
            groups(&[5, 5], 8),
            [vec!["f0"], vec!["f1"]],
            "no more groups than files"
        );
        assert_eq!(groups(&[5, 0, 0], 2), [vec!["f0"], vec!["f1", "f2"]]);
        assert_eq!(groups(&[1, 2, 3, 4, 5, 6], 1).len(), 1);
        assert_eq!(groups(&[1, 1, 1, 1, 1, 1, 1, 1, 1], 3).len(), 3);
    }
}
