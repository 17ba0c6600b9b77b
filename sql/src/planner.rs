//! DataFusion sessions for tocsin: one to plan continuous queries against the catalog's schemas,
//! one to run ad hoc queries in batch over peeked rows.
//!
//! `now()` means the engine's logical time. In continuous planning it is a volatile function that
//! DataFusion's optimizer leaves alone, so the lowering can find it and turn comparisons with it
//! into temporal filters. In batch queries it is the peek's time, folded to a constant.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::empty::EmptyTable;
use datafusion::catalog::TableProvider;
use datafusion::common::{ScalarValue, TableReference};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{Query, Statement as AstStatement};

use crate::error::Result;

/// The type of `now()` and of every `ts` column.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `now()` in continuous queries: the logical time, never folded to a constant.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ContinuousNow {
    signature: Signature,
    aliases: Vec<String>,
}

impl ContinuousNow {
    pub const NAME: &'static str = "now";
    fn new() -> Self {
        ContinuousNow {
            signature: Signature::nullary(Volatility::Volatile),
            aliases: vec!["current_timestamp".into()],
        }
    }
}

impl ScalarUDFImpl for ContinuousNow {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(ts_type())
    }
    fn return_field_from_args(&self, _: ReturnFieldArgs) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), ts_type(), false)))
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Plan(
            "now() in a continuous query can only be compared with a row's time, as in ts > now() - INTERVAL '1 minute'".into(),
        ))
    }
}

/// `now()` in batch queries: a fixed time (the peek's).
#[derive(Debug, PartialEq, Eq, Hash)]
struct FixedNow {
    signature: Signature,
    aliases: Vec<String>,
    ms: i64,
}

impl FixedNow {
    fn value(&self) -> ScalarValue {
        ScalarValue::TimestampMillisecond(Some(self.ms), Some("UTC".into()))
    }
}

impl ScalarUDFImpl for FixedNow {
    fn name(&self) -> &str {
        "now"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(ts_type())
    }
    fn return_field_from_args(&self, _: ReturnFieldArgs) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), ts_type(), false)))
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value()))
    }
    fn simplify(&self, _: Vec<Expr>, _: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        Ok(ExprSimplifyResult::Simplified(Expr::Literal(
            self.value(),
            None,
        )))
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    c.options_mut().sql_parser.collect_spans = true;
    c
}

/// A session that knows the relations' schemas, for planning continuous queries.
pub fn continuous_context<'a>(
    relations: impl IntoIterator<Item = (&'a str, SchemaRef)>,
) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(config());
    ctx.register_udf(ScalarUDF::from(ContinuousNow::new()));
    crate::functions::register(&ctx);
    for (name, schema) in relations {
        ctx.register_table(name, Arc::new(EmptyTable::new(schema)))?;
    }
    Ok(ctx)
}

/// A table of fixed rows.
pub fn mem_table(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// The runtime every ad hoc query shares, so that what it caches (the footers and page indexes
/// of history files) outlives one query.
fn runtime() -> Arc<datafusion::execution::runtime_env::RuntimeEnv> {
    static RUNTIME: std::sync::OnceLock<Arc<datafusion::execution::runtime_env::RuntimeEnv>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default()))
        .clone()
}

/// A session over fixed contents, where `now()` is `now_ms`. Its catalog is named as tocsin's
/// database, so `tocsin.public.name` resolves too.
pub fn batch_context(
    tables: Vec<(String, Arc<dyn TableProvider>)>,
    now_ms: i64,
) -> Result<SessionContext> {
    let mut config = config()
        .with_default_catalog_and_schema(crate::pgcompat::DATABASE, crate::pgcompat::SCHEMA);
    // `::timestamptz` and times without an offset are UTC, as tocsin's times are.
    config.options_mut().execution.time_zone = Some("UTC".into());
    // A history scan reads its files in groups of its own, one task per core, each group whole
    // files (a file's series index selects its rows, which byte ranges would cut across); with
    // one target partition the optimizer would otherwise put every file back into one group.
    config.options_mut().optimizer.repartition_file_scans = false;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime())
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(crate::runs::RunAggregates))
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udf(ScalarUDF::from(FixedNow {
        signature: Signature::nullary(Volatility::Stable),
        aliases: vec!["current_timestamp".into()],
        ms: now_ms,
    }));
    crate::functions::register(&ctx);
    for (name, table) in tables {
        ctx.register_table(name.as_str(), table)?;
    }
    Ok(ctx)
}

fn statement(query: &Query) -> datafusion::sql::parser::Statement {
    datafusion::sql::parser::Statement::Statement(Box::new(AstStatement::Query(Box::new(
        query.clone(),
    ))))
}

/// DataFusion's logical plan for a query (not yet optimized).
pub async fn plan_query(ctx: &SessionContext, query: &Query) -> Result<LogicalPlan> {
    Ok(ctx.state().statement_to_plan(statement(query)).await?)
}

/// The tables a query reads, normalized (unquoted names lowercased, as the planner resolves
/// them; CTE names are not tables).
pub fn referenced_tables(query: &Query) -> Result<Vec<TableReference>> {
    let (tables, _ctes) =
        datafusion::sql::resolve::resolve_table_references(&statement(query), true)?;
    Ok(tables)
}

/// The name of one of tocsin's relations a table reference names: a bare name, or one in schema
/// `public` (of database `tocsin`).
pub fn relation_name(r: &TableReference) -> Option<&str> {
    use crate::pgcompat::{DATABASE, SCHEMA};
    match (r.catalog(), r.schema()) {
        (None | Some(DATABASE), None | Some(SCHEMA)) => Some(r.table()),
        _ => None,
    }
}
