//! Grouping by runs: an ad hoc query's `GROUP BY` looks up each run of rows with equal keys
//! once, rather than each row.
//!
//! History files and the window's reads by series give rows series by series, and within a
//! series in time order (docs/history.md, docs/sql.md "Reading results"). So consecutive rows
//! mostly share their group: `GROUP BY host, date_bin('1 minute', ts)` over 5 s samples sees
//! runs of 12 equal keys. DataFusion's hash aggregation hashes and compares the keys of every
//! row, which over a day of history was the largest part of such a query.
//!
//! [`RunAggregates`] replaces each aggregation that reads raw rows (DataFusion's `Partial`,
//! `Single` and `SinglePartitioned` modes) by a [`RunAggregateExec`] with the same groups,
//! aggregates, schema and properties. Per input batch, it finds the runs of equal keys (Arrow's
//! `partition`), interns the first row of each run in DataFusion's own group table, gives every
//! row of the run that group, and updates DataFusion's own accumulators with the batch. The
//! groups and the accumulated states are therefore exactly DataFusion's, rows being added in the
//! same order. When runs are short (rows in no useful order), each row is interned, as
//! DataFusion would.
//!
//! Left to DataFusion: grouping sets, aggregates without a groups accumulator, `DISTINCT` or
//! `ORDER BY` within an aggregate, limits pushed into the aggregation, dynamic filters, and
//! input in the order of the groups (DataFusion's streaming modes). The groups are counted in
//! the query's memory pool; unlike DataFusion's, they are never spilled to disk.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{partition, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::utils::evaluate_expressions_to_arrays;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, InputOrderMode,
    PlanProperties,
};
use futures_util::{stream, StreamExt};

/// Keys are interned per run when the runs of a batch average at least this many rows.
const RUN_ROWS: usize = 4;

/// The physical optimizer rule that puts [`RunAggregateExec`] where it applies. It runs after
/// DataFusion's own rules.
#[derive(Debug, Default)]
pub struct RunAggregates;

impl PhysicalOptimizerRule for RunAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(agg) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            if !by_runs(agg) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(RunAggregateExec::new(
                Arc::new(agg.clone()),
            )?)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "run_aggregates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether an aggregation can be computed by runs: it reads raw rows, has one list of group
/// expressions, and its aggregates are plain groups accumulators.
fn by_runs(agg: &AggregateExec) -> bool {
    let raw = matches!(
        agg.mode(),
        AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
    );
    let groups = agg.group_expr();
    raw && groups.is_single()
        && !groups.expr().is_empty()
        && agg.limit_options().is_none()
        && agg.dynamic_expressions_produced().is_empty()
        && *agg.input_order_mode() == InputOrderMode::Linear
        && agg.aggr_expr().iter().all(|a| {
            a.groups_accumulator_supported() && !a.is_distinct() && a.order_bys().is_empty()
        })
}

/// An aggregation of raw rows whose keys are interned once per run of equal keys. It is the
/// [`AggregateExec`] it replaces in all but how the rows find their groups.
#[derive(Debug)]
pub struct RunAggregateExec {
    agg: Arc<AggregateExec>,
    /// The group table's schema.
    group_schema: SchemaRef,
}

impl RunAggregateExec {
    pub fn new(agg: Arc<AggregateExec>) -> Result<Self> {
        let group_schema = agg.group_expr().group_schema(&agg.input_schema())?;
        Ok(Self { agg, group_schema })
    }

    /// Whether the output is each group's state for a final aggregation (else its values).
    fn partial(&self) -> bool {
        matches!(self.agg.mode(), AggregateMode::Partial)
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Run")?;
        self.agg.fmt_as(t, f)
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &str {
        "RunAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.agg.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.agg.maintains_input_order()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        self.agg.benefits_from_input_partitioning()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = self.agg.clone().replace_children(children, options)?;
        let agg = agg
            .downcast_ref::<AggregateExec>()
            .expect("an aggregation")
            .clone();
        Ok(Arc::new(Self::new(Arc::new(agg))?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, context.clone())?;
        let reservation = MemoryConsumer::new(format!("RunAggregateExec[{partition}]"))
            .register(context.memory_pool());
        let table = Table {
            keys: self.agg.group_expr().input_exprs(),
            groups: new_group_values(self.group_schema.clone(), &GroupOrdering::None)?,
            aggregates: self
                .agg
                .aggr_expr()
                .iter()
                .zip(self.agg.filter_expr())
                .map(|(a, filter)| {
                    Ok(Aggregate {
                        arguments: a.expressions(),
                        filter: filter.clone(),
                        accumulator: a.create_groups_accumulator()?,
                    })
                })
                .collect::<Result<_>>()?,
            schema: self.agg.schema(),
            partial: self.partial(),
            run_groups: Vec::new(),
            row_groups: Vec::new(),
        };
        let state = State {
            input,
            table,
            reservation,
            out: VecDeque::new(),
            batch_size: context.session_config().batch_size(),
            done: false,
        };
        let batches = stream::try_unfold(state, |mut s| async move {
            loop {
                if let Some(b) = s.out.pop_front() {
                    return Ok(Some((b, s)));
                }
                if s.done {
                    return Ok(None);
                }
                match s.input.next().await {
                    Some(batch) => {
                        s.table.add(&batch?)?;
                        s.reservation.try_resize(s.table.size())?;
                    }
                    None => {
                        s.emit()?;
                        s.done = true;
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.agg.schema(),
            batches,
        )))
    }
}

/// An aggregate's inputs and its accumulator over every group.
struct Aggregate {
    arguments: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    accumulator: Box<dyn GroupsAccumulator>,
}

/// The groups seen so far and their accumulators.
struct Table {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    groups: Box<dyn GroupValues>,
    aggregates: Vec<Aggregate>,
    schema: SchemaRef,
    partial: bool,
    /// Scratch: the group of each run, then of each row, of the batch being added.
    run_groups: Vec<usize>,
    row_groups: Vec<usize>,
}

impl Table {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys = evaluate_expressions_to_arrays(&self.keys, batch)?;
        let runs = partition(&keys)?.ranges();
        if runs.len() * RUN_ROWS <= n {
            let starts = UInt32Array::from_iter_values(runs.iter().map(|r| r.start as u32));
            let firsts = keys
                .iter()
                .map(|k| take(k.as_ref(), &starts, None))
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            self.groups.intern(&firsts, &mut self.run_groups)?;
            self.row_groups.clear();
            for (run, &group) in runs.iter().zip(&self.run_groups) {
                self.row_groups
                    .extend(std::iter::repeat_n(group, run.len()));
            }
        } else {
            self.groups.intern(&keys, &mut self.row_groups)?;
        }
        let total = self.groups.len();
        for a in &mut self.aggregates {
            let values = evaluate_expressions_to_arrays(&a.arguments, batch)?;
            let filter = a
                .filter
                .as_ref()
                .map(|f| f.evaluate(batch)?.into_array(n))
                .transpose()?;
            a.accumulator.update_batch(
                &values,
                &self.row_groups,
                filter.as_ref().map(|f| f.as_boolean()),
                total,
            )?;
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.groups.size()
            + self
                .aggregates
                .iter()
                .map(|a| a.accumulator.size())
                .sum::<usize>()
            + (self.run_groups.capacity() + self.row_groups.capacity()) * size_of::<usize>()
    }

    /// Every group with its states (partial) or values, and an empty table.
    fn take_all(&mut self) -> Result<Option<RecordBatch>> {
        if self.groups.is_empty() {
            return Ok(None);
        }
        let mut columns = self.groups.emit(EmitTo::All)?;
        for a in &mut self.aggregates {
            if self.partial {
                columns.extend(a.accumulator.state(EmitTo::All)?);
            } else {
                columns.push(a.accumulator.evaluate(EmitTo::All)?);
            }
        }
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

struct State {
    input: SendableRecordBatchStream,
    table: Table,
    reservation: MemoryReservation,
    out: VecDeque<RecordBatch>,
    batch_size: usize,
    done: bool,
}

impl State {
    /// Hands every group on, in batches of the session's batch size.
    fn emit(&mut self) -> Result<()> {
        if let Some(all) = self.table.take_all()? {
            let mut at = 0;
            while at < all.num_rows() {
                let len = self.batch_size.min(all.num_rows() - at);
                self.out.push_back(all.slice(at, len));
                at += len;
            }
        }
        self.reservation.resize(self.table.size());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Rows of two hosts every 5 s over 3 minutes, host by host (runs of 12 a minute) or
    /// interleaved (runs of 1), with a missing value.
    fn rows(series_by_series: bool) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("value", DataType::Float64, true),
        ]));
        let mut rows: Vec<(Option<&str>, i64, Option<f64>)> = Vec::new();
        for h in [Some("a"), None, Some("b")] {
            for i in 0..36i64 {
                let v = if i == 7 { None } else { Some(i as f64 * 0.5) };
                rows.push((h, i * 5_000, v));
            }
        }
        if !series_by_series {
            rows.sort_by_key(|r| r.1);
        }
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.1))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    /// The answer to `sql` over `batch` cut into `partitions`, planned with the rule or without,
    /// and whether the plan aggregates by runs.
    async fn run(rule: bool, partitions: usize, batch: RecordBatch, sql: &str) -> (bool, String) {
        let config = SessionConfig::new().with_target_partitions(1);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if rule {
            state = state.with_physical_optimizer_rule(Arc::new(RunAggregates));
        }
        let ctx = SessionContext::new_with_state(state.build());
        // Split the rows into several batches and partitions, so that runs cross both.
        let n = batch.num_rows();
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        let mut at = 0;
        let mut i = 0;
        while at < n {
            let len = 17.min(n - at);
            parts[i % partitions].push(batch.slice(at, len));
            at += len;
            i += 1;
        }
        let table = MemTable::try_new(batch.schema(), parts).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let answer = pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (shown.contains("RunAggregateExec"), answer)
    }

    /// The answers are DataFusion's own, with rows in runs and not, in one partition (a single
    /// aggregation) and in three (partial, then final), with nulls among keys and values and
    /// with an aggregate's `FILTER`.
    #[tokio::test]
    async fn grouping_by_runs_gives_datafusions_answers() {
        let queries = [
            "SELECT host, date_bin(INTERVAL '1 minute', ts) AS m, avg(value) AS a, min(value), \
             max(value), count(value), count(*), sum(value) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT host, count(*) FILTER (WHERE value > 3) AS n, sum(value) FROM t \
             GROUP BY host ORDER BY host",
            "SELECT floor(extract(epoch from ts) / 60) * 60 AS m, avg(value) FROM t \
             GROUP BY 1 ORDER BY 1",
            // DISTINCT becomes a grouping of its own below the aggregate.
            "SELECT count(DISTINCT host) FROM t",
        ];
        for sql in queries {
            for series_by_series in [true, false] {
                for partitions in [1, 3] {
                    let want = run(false, partitions, rows(series_by_series), sql).await;
                    let got = run(true, partitions, rows(series_by_series), sql).await;
                    assert!(got.0 && !want.0, "{sql}");
                    assert_eq!(got.1, want.1, "{sql}, partitions {partitions}");
                }
            }
        }
    }

    /// What the rule leaves to DataFusion.
    #[tokio::test]
    async fn aggregations_not_by_runs_are_left_alone() {
        for sql in [
            "SELECT count(*), avg(value) FROM t",
            "SELECT host, ts, count(*) FROM t GROUP BY ROLLUP (host, ts)",
            "SELECT host, array_agg(value ORDER BY ts) FROM t GROUP BY host",
        ] {
            let (by_runs, answer) = run(true, 3, rows(true), sql).await;
            assert!(!by_runs, "{sql}");
            assert_eq!(answer, run(false, 3, rows(true), sql).await.1, "{sql}");
        }
    }
}
