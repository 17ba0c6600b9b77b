//! Merging files of a partition into one: the files are each sorted the same way, so DataFusion
//! reads them side by side and merges their rows in order as a stream, and the merged file is
//! written as it comes, without holding the partition in memory.

use std::io;
use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::ExecutionPlan;
use futures_util::StreamExt;

use crate::files::{self, FileMeta};
use crate::relation::Relation;

/// The sort order of every history file of `rel`.
pub fn ordering(rel: &Relation) -> io::Result<LexOrdering> {
    let schema = &rel.spec.schema;
    let exprs = rel
        .sort()
        .iter()
        .map(|&i| {
            Ok(PhysicalSortExpr::new(
                col(schema.field(i).name(), schema).map_err(io::Error::other)?,
                SortOptions::default(),
            ))
        })
        .collect::<io::Result<Vec<_>>>()?;
    LexOrdering::new(exprs).ok_or_else(|| io::Error::other("no sort columns"))
}

/// A file for each path, as DataFusion's scan takes it.
pub fn partitioned_file(f: &FileMeta) -> PartitionedFile {
    PartitionedFile::new(f.path.to_string_lossy().into_owned(), f.bytes)
}

/// Writes the rows of `inputs` (files of partition `start`) merged in order as one file of
/// `level`; returns it, not yet installed.
pub fn merge(
    rt: &tokio::runtime::Runtime,
    rel: &Relation,
    start: i64,
    inputs: &[Arc<FileMeta>],
    level: u8,
) -> io::Result<FileMeta> {
    let layout = &rel.layout;
    let order = ordering(rel)?;
    let groups = inputs
        .iter()
        .map(|f| FileGroup::new(vec![partitioned_file(f)]))
        .collect();
    let config = FileScanConfigBuilder::new(
        ObjectStoreUrl::local_filesystem(),
        Arc::new(ParquetSource::new(layout.physical.clone())),
    )
    .with_file_groups(groups)
    .build();
    let scan = DataSourceExec::from_data_source(config);
    let all: Vec<usize> = (0..layout.physical.fields().len()).collect();
    let every: Vec<usize> = (0..layout.logical.fields().len()).collect();
    let decoded = ProjectionExec::try_new(
        layout.decode_exprs(&all, &every)?,
        scan as Arc<dyn ExecutionPlan>,
    )
    .map_err(io::Error::other)?;
    let merged = SortPreservingMergeExec::new(order, Arc::new(decoded));
    let min = inputs.iter().map(|f| f.min_pos).min().unwrap_or(0);
    let max = inputs.iter().map(|f| f.max_pos).max().unwrap_or(0);
    let dir = rel.dir.join(files::partition_name(start));
    let name = files::file_name(level, min, max);
    let _guard = rt.enter();
    let mut stream = merged
        .execute(0, Arc::new(TaskContext::default()))
        .map_err(io::Error::other)?;
    let c = files::write_file(&dir, &name, layout, rel.spec.ts, rel.series(), || {
        if rel.is_removed() {
            return Err(io::Error::other("the relation was dropped"));
        }
        rt.block_on(stream.next())
            .transpose()
            .map_err(io::Error::other)
    })?;
    let expected: u64 = inputs.iter().map(|f| f.rows).sum();
    if c.rows != expected {
        let _ = std::fs::remove_file(dir.join(&name));
        return Err(io::Error::other(format!(
            "merged {} rows out of {expected}; the inputs are kept",
            c.rows
        )));
    }
    Ok(FileMeta::new(dir.join(name), level, min, max, c))
}
