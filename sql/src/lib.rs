//! tocsin's SQL frontend: parses tocsin's dialect, plans SELECTs with DataFusion against the
//! catalog, lowers them into the engine's plan, and runs ad hoc queries over peeked contents.
//!
//! | module | owns |
//! |---|---|
//! | [`parser`] | statements, on top of sqlparser |
//! | [`planner`] | DataFusion sessions and tocsin's `now()` |
//! | [`lower`] | DataFusion logical plan → engine plan; refuses what it cannot run |
//! | [`catalog`] | sources, views and rules with their SQL |
//! | `ddl` | `CREATE` and `DROP`, one module per kind of object |
//! | `show` | `SHOW` and `EXPLAIN` |
//! | `session` | `SUBSCRIBE` |
//! | [`options`] | `WITH (...)` options and durations |
//! | [`functions`] | tocsin's SQL functions registered with DataFusion |
//! | [`runs`] | ad hoc `GROUP BY`s that look up each run of equal keys once |
//! | [`pgcompat`] | what PostgreSQL clients expect: types, `pg_catalog` and `information_schema` tables, query rewriting, functions |
//! | [`error`] | the error type with statement, line and column |
//!
//! [`Tocsin`] is the embeddable API the server calls.

pub mod catalog;
mod ddl;
pub mod error;
pub mod functions;
pub mod lower;
pub mod options;
pub mod parser;
pub mod pgcompat;
pub mod planner;
pub mod rollup;
pub mod runs;
mod session;
mod show;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{ColumnDef, Query};
use tocsin_engine::plan::Node;
use tocsin_engine::{Engine, Plan, PushOutcome, Subscription, WindowBatch, WindowTable};
use tokio::sync::Mutex;

use crate::catalog::{source_schema, Catalog};
pub use crate::catalog::{CatalogEntry, ObjectDef};
pub use crate::error::{ErrorKind, Result, SqlError};
pub use crate::options::{MatchOp, Matcher, Silence};
use crate::options::{RuleOptions, SourceOptions};
pub use crate::parser::ObjectKind;
pub use crate::parser::Options;
pub use crate::parser::{Access, Located};
use crate::parser::{Statement, SubscribeTarget};
use crate::pgcompat::quote_ident;

/// Casts that fail on values they cannot convert instead of turning them into NULL.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: datafusion::arrow::util::display::FormatOptions::new(),
};

/// What one statement returned.
pub enum StatementResult {
    /// A statement that changed the catalog (or a session setting).
    Ddl { statement: String, name: String },
    /// Rows: `SELECT`, `SHOW`, `EXPLAIN`.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// `INSERT INTO source`: rows pushed.
    Inserted {
        source: String,
        outcome: PushOutcome,
    },
    /// `SUBSCRIBE TO ...`.
    Subscribe(Subscription),
}

impl std::fmt::Debug for StatementResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatementResult::Ddl { statement, name } => write!(f, "Ddl({statement} {name})"),
            StatementResult::Rows { batches, .. } => {
                write!(
                    f,
                    "Rows({} rows)",
                    batches.iter().map(RecordBatch::num_rows).sum::<usize>()
                )
            }
            StatementResult::Inserted { source, outcome } => {
                write!(f, "Inserted({source}: {outcome:?})")
            }
            StatementResult::Subscribe(_) => write!(f, "Subscribe"),
        }
    }
}

/// A change to the catalog, as the durability hook receives it.
#[derive(Clone, Debug)]
pub struct DdlChange {
    /// `CREATE SOURCE`, `DROP VIEW`, ...
    pub statement: String,
    pub kind: ObjectKind,
    pub name: String,
    /// The statement to replay to make the change again.
    pub sql: String,
    /// Relations created or dropped with this one (a `FROM SNMP` source's `<name>_status`).
    pub companions: Vec<String>,
}

/// What the server plugs in to make changes durable: every catalog change is handed over (in the
/// order they were applied) before the statement returns, and `INSERT`ed rows go through `insert`
/// instead of straight into the engine.
#[async_trait::async_trait]
pub trait Durability: Send + Sync {
    /// Where a catalog change (its SQL text) is to be made, asked before it is applied: here,
    /// or elsewhere (by another replica, which orders the catalog), or nowhere.
    async fn route(&self, _sql: &str) -> Route {
        Route::Here
    }
    async fn ddl(&self, change: &DdlChange) -> std::result::Result<(), String>;
    async fn insert(
        &self,
        source: &str,
        batch: RecordBatch,
    ) -> std::result::Result<PushOutcome, String>;
}

/// The answer of [`Durability::route`].
pub enum Route {
    /// Apply the change here.
    Here,
    /// The change was made elsewhere, and has been applied here too: its result.
    Done(StatementResult),
    /// The change was not made: why.
    Refused(SqlError),
}

/// Delivery state of one sink, for `SHOW SINKS`.
#[derive(Clone, Debug, Default)]
pub struct SinkStatus {
    /// Notifications written to the outbox and not yet delivered.
    pub queued: u64,
    pub delivered: u64,
    /// Failed delivery attempts.
    pub failures: u64,
    pub last_error: Option<String>,
}

/// What delivers notifications to sinks (the server's alert manager); the sink connectors
/// themselves are in [`tocsin_connectors::registry`].
pub trait SinkKinds: Send + Sync {
    /// How delivery to the sink named `name` is going.
    fn status(&self, name: &str) -> SinkStatus;
}

/// Names of objects tocsin makes itself start with this.
pub const SYSTEM_PREFIX: &str = "tocsin_";

/// A tocsin database: the engine plus the catalog.
pub struct Tocsin {
    engine: Engine,
    catalog: Mutex<Catalog>,
    /// Held across a catalog change and its hand-over to `durability`, so they happen in one order.
    ddl: Mutex<()>,
    durability: std::sync::RwLock<Option<Arc<dyn Durability>>>,
    /// The sink connectors, registered by the server.
    sinks: std::sync::RwLock<Option<Arc<dyn SinkKinds>>>,
    /// History on disk, when tocsin has a data dir.
    history: std::sync::RwLock<Option<Arc<tocsin_history::History>>>,
}

fn text_rows(columns: &[&str], rows: Vec<Vec<String>>) -> Result<StatementResult> {
    text_rows_nullable(
        columns,
        rows.into_iter()
            .map(|r| r.into_iter().map(Some).collect())
            .collect(),
    )
}

/// Rows of text columns, `None` as NULL.
fn text_rows_nullable(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Result<StatementResult> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(*c, DataType::Utf8, rows.iter().any(|r| r[i].is_none())))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| Arc::new(StringArray::from_iter(rows.iter().map(|r| r[i].as_deref()))) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| SqlError::internal(e.to_string()))?;
    Ok(StatementResult::Rows {
        schema,
        batches: vec![batch],
    })
}

/// `CREATE SOURCE name (columns) FROM connector WITH (options)`, as the catalog log records it.
pub(crate) fn source_sql(
    name: &str,
    columns: &[ColumnDef],
    connector: &str,
    options: &[(String, String)],
) -> String {
    let cols: Vec<String> = columns.iter().map(ToString::to_string).collect();
    let cols = if cols.is_empty() {
        String::new()
    } else {
        format!(" ({})", cols.join(", "))
    };
    format!(
        "CREATE SOURCE {}{cols} FROM {connector}{}",
        quote_ident(name),
        options_sql(options)
    )
}

/// `CREATE SINK name TO connector WITH (options)`, as the catalog log records it.
pub(crate) fn sink_sql(name: &str, connector: &str, options: &[(String, String)]) -> String {
    format!(
        "CREATE SINK {} TO {connector}{}",
        quote_ident(name),
        options_sql(options)
    )
}

pub(crate) fn options_sql(options: &[(String, String)]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let items: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''")))
        .collect();
    format!(" WITH ({})", items.join(", "))
}

impl Tocsin {
    pub fn new(engine: Engine) -> Self {
        Tocsin {
            engine,
            catalog: Mutex::new(Catalog::default()),
            ddl: Mutex::new(()),
            durability: std::sync::RwLock::new(None),
            sinks: Default::default(),
            history: Default::default(),
        }
    }

    /// Where relations with `history` keep it; without one, `history` is refused.
    pub fn set_history(&self, history: Arc<tocsin_history::History>) {
        *self.history.write().expect("history") = Some(history);
    }

    pub fn history(&self) -> Option<Arc<tocsin_history::History>> {
        self.history.read().expect("history").clone()
    }

    /// What the history of relation `name` is made of, if it keeps one.
    pub async fn history_spec(&self, name: &str) -> Option<tocsin_history::Spec> {
        let catalog = self.catalog.lock().await;
        let e = catalog.entries.get(name)?;
        let horizon = match &e.def {
            ObjectDef::Source { options, .. } => options.history?,
            ObjectDef::View { rollup, .. } => rollup.as_ref()?.history,
            _ => return None,
        };
        Some(tocsin_history::Spec {
            schema: e.schema.clone(),
            ts: e.schema.index_of("ts").ok()?,
            horizon_ms: horizon.as_millis() as i64,
            late_ms: Self::late_ms(&catalog.entries, name),
            bucket_ms: Self::rollup_of(&catalog.entries, name).map(|r| r.width_ms),
        })
    }

    /// Registers the sink connectors `CREATE SINK` can use.
    pub fn set_sinks(&self, sinks: Arc<dyn SinkKinds>) {
        *self.sinks.write().expect("sinks") = Some(sinks);
    }

    fn sinks(&self) -> Option<Arc<dyn SinkKinds>> {
        self.sinks.read().expect("sinks").clone()
    }

    /// Creates objects tocsin itself provides (`tocsin_alerts`, ...): not handed to the
    /// durability hook, listed as system objects, refused by `DROP`.
    pub async fn create_system(&self, sql: &str) -> Result<()> {
        for Located {
            statement, start, ..
        } in parser::parse(sql)?
        {
            let r = self
                .execute_statement(statement)
                .await
                .map_err(|e| e.at(start.line, start.column))?;
            if let StatementResult::Ddl { name, .. } = r {
                if let Some(e) = self.catalog.lock().await.entries.get_mut(&name) {
                    e.system = true;
                }
            }
        }
        Ok(())
    }

    /// Creates a table tocsin maintains itself (see [`tocsin_engine::table`]), listed with the
    /// views; `sql` is the statement shown for it.
    pub async fn create_system_table(
        &self,
        name: &str,
        schema: SchemaRef,
        key: &[&str],
        sql: &str,
    ) -> Result<()> {
        let mut catalog = self.catalog.lock().await;
        self.engine.create_table(name, schema.clone(), key).await?;
        catalog.register(CatalogEntry {
            name: name.to_string(),
            schema,
            sql: sql.to_string(),
            def: ObjectDef::Table {
                key: key.iter().map(|k| k.to_string()).collect(),
            },
            system: true,
        });
        Ok(())
    }

    /// Hands every later catalog change and `INSERT` to `durability`.
    pub fn set_durability(&self, durability: Arc<dyn Durability>) {
        *self.durability.write().expect("durability") = Some(durability);
    }

    fn durability(&self) -> Option<Arc<dyn Durability>> {
        self.durability.read().expect("durability").clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Every catalog entry, in name order.
    pub async fn catalog(&self) -> Vec<CatalogEntry> {
        self.catalog
            .lock()
            .await
            .entries
            .values()
            .cloned()
            .collect()
    }

    /// The relations made with `name` and dropped with it (a `FROM SNMP` source's status).
    pub async fn companions(&self, name: &str) -> Vec<String> {
        self.catalog.lock().await.companions(name)
    }

    /// One catalog entry.
    pub async fn entry(&self, name: &str) -> Option<CatalogEntry> {
        self.catalog.lock().await.entries.get(name).cloned()
    }

    /// Runs one or more `;`-separated statements. Statements before a failing one stay applied;
    /// the error names the failing statement and, where known, the line and column.
    pub async fn execute(&self, sql: &str) -> Result<Vec<StatementResult>> {
        self.execute_parsed(parser::parse(sql)?).await
    }

    /// Runs statements [`parser::parse`] gave, as [`Tocsin::execute`] does: for callers that
    /// look at the statements first.
    pub async fn execute_parsed(&self, statements: Vec<Located>) -> Result<Vec<StatementResult>> {
        let mut out = Vec::with_capacity(statements.len());
        for (
            i,
            Located {
                statement,
                start,
                text,
            },
        ) in statements.into_iter().enumerate()
        {
            let r = self
                .execute_logged(statement, &text)
                .await
                .map_err(|e| e.at(start.line, start.column).in_statement(i))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Executes a statement (`text`: as it was written); a catalog change is offered to the
    /// durability hook's [`Durability::route`] first, and once applied here handed to its
    /// [`Durability::ddl`] before returning.
    async fn execute_logged(&self, statement: Statement, text: &str) -> Result<StatementResult> {
        let drop_target = match &statement {
            Statement::Drop { name, kind, .. } => Some((name.clone(), *kind)),
            Statement::CreateSource { name, .. }
            | Statement::CreateView { name, .. }
            | Statement::CreateRule { name, .. }
            | Statement::CreateSink { name, .. }
            | Statement::CreateSilence { name, .. } => {
                if name.starts_with(SYSTEM_PREFIX) {
                    return Err(SqlError::plan(format!(
                        "\"{name}\": names starting with {SYSTEM_PREFIX} are reserved for tocsin's own relations"
                    )));
                }
                None
            }
            _ => return self.execute_statement(statement).await,
        };
        if let Some(durability) = self.durability() {
            match durability.route(text).await {
                Route::Here => {}
                Route::Done(r) => return Ok(r),
                Route::Refused(e) => return Err(e),
            }
        }
        let _order = self.ddl.lock().await;
        let mut dropped_companions = Vec::new();
        if let Some((name, _)) = &drop_target {
            if !self.catalog.lock().await.entries.contains_key(name) {
                // Nothing to drop (IF EXISTS) or an error: nothing to record.
                return self.execute_statement(statement).await;
            }
            dropped_companions = self.companions(name).await;
        }
        let r = self.execute_statement(statement).await?;
        let Some(durability) = self.durability() else {
            return Ok(r);
        };
        let StatementResult::Ddl { statement, name } = &r else {
            return Ok(r);
        };
        let change = match drop_target {
            Some((_, kind)) => DdlChange {
                statement: statement.clone(),
                kind,
                name: name.clone(),
                sql: format!("DROP {} {}", kind.as_str(), quote_ident(name)),
                companions: dropped_companions,
            },
            None => {
                let catalog = self.catalog.lock().await;
                let e = catalog
                    .entries
                    .get(name)
                    .ok_or_else(|| SqlError::internal("created object is not in the catalog"))?;
                let companions = catalog.companions(name);
                DdlChange {
                    statement: statement.clone(),
                    kind: e.kind(),
                    name: name.clone(),
                    sql: e.sql.clone(),
                    companions,
                }
            }
        };
        durability.ddl(&change).await.map_err(|e| {
            SqlError::internal(format!(
                "{statement} {name} was applied but could not be recorded durably: {e}"
            ))
        })?;
        Ok(r)
    }

    async fn plan_continuous(&self, catalog: &Catalog, query: &Query) -> Result<Plan> {
        // Only what the query names is given to the planner: planning costs the same however
        // many relations the catalog holds.
        let refs = planner::referenced_tables(query)?;
        let relations = catalog.named_relations(&refs);
        let ctx =
            planner::continuous_context(relations.iter().map(|(n, s)| (n.as_str(), s.clone())))?;
        let logical = planner::plan_query(&ctx, query).await?;
        let optimized = ctx.state().optimize(&logical)?;
        let plan = lower::lower(&optimized, catalog)?;
        let mut seen = std::collections::HashSet::new();
        for f in plan.schema.fields() {
            if !seen.insert(f.name().clone()) {
                return Err(SqlError::plan(format!(
                    "column name \"{}\" appears twice in the result: give one an alias",
                    f.name()
                )));
            }
        }
        Ok(plan)
    }

    async fn execute_statement(&self, statement: Statement) -> Result<StatementResult> {
        match statement {
            Statement::CreateSource {
                name,
                columns,
                connector,
                options,
            } => self.create_source(name, columns, connector, options).await,
            Statement::CreateView {
                name,
                query,
                options,
            } => self.create_view(name, query, options).await,
            Statement::CreateRule {
                name,
                query,
                options,
            } => self.create_rule(name, query, options).await,
            Statement::CreateSink {
                name,
                connector,
                options,
            } => self.create_sink(name, connector, options).await,
            Statement::CreateSilence { name, options } => self.create_silence(name, options).await,
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => self.drop_object(kind, name, if_exists).await,
            Statement::Show {
                kind: ObjectKind::Sink,
            } => self.show_sinks().await,
            Statement::Show {
                kind: ObjectKind::Silence,
            } => self.show_silences().await,
            Statement::Show { kind } => self.show(kind).await,
            Statement::ShowAlerts => self.show_alerts().await,
            Statement::ShowReplicas => self.show_replicas().await,
            Statement::ShowColumns { name } => self.show_columns(name).await,
            Statement::Explain { kind, name } => self.explain(kind, name).await,
            Statement::ExplainQuery { query } => self.explain_query(query).await,
            Statement::Subscribe { target } => self.subscribe_to(target).await,
            Statement::Insert {
                source,
                columns,
                query,
            } => self.insert(&source, &columns, &query).await,
            Statement::Query { query } => {
                let (schema, batches) = self.query(&query).await?;
                Ok(StatementResult::Rows { schema, batches })
            }
            Statement::Set => Ok(StatementResult::Ddl {
                statement: "SET".into(),
                name: String::new(),
            }),
            Statement::Transaction(what) => Ok(StatementResult::Ddl {
                statement: what.into(),
                name: String::new(),
            }),
        }
    }

    /// Runs an ad hoc query: peeks every relation it reads at one time, then lets DataFusion run it
    /// in batch over those rows, with `now()` the peek's time.
    pub async fn query(&self, query: &Query) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.query_with(query, Vec::new()).await
    }

    /// [`Tocsin::query`] with values for the parameters `$1`, `$2`, ...
    pub async fn query_with(
        &self,
        query: &Query,
        params: Vec<ScalarValue>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let (ctx, query) = self.batch_session(query, true).await?;
        let mut plan = planner::plan_query(&ctx, &query).await?;
        if !params.is_empty() {
            plan = plan.with_param_values(params)?;
        }
        let df = ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }

    /// The types of an ad hoc query's parameters (`$1` first; `None` where the query does not
    /// imply one) and its result columns, without running it.
    pub async fn describe_query(
        &self,
        query: &Query,
    ) -> Result<(Vec<Option<DataType>>, SchemaRef)> {
        let (ctx, query) = self.batch_session(query, false).await?;
        let plan = planner::plan_query(&ctx, &query).await?;
        let types = plan.get_parameter_types()?;
        let count = types
            .keys()
            .filter_map(|k| k.strip_prefix('$')?.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let params = (1..=count)
            .map(|i| types.get(&format!("${i}")).cloned().flatten())
            .collect();
        Ok((params, Arc::new(plan.schema().as_arrow().clone())))
    }

    /// A batch session for an ad hoc query: the relations it reads (peeked, or empty when only
    /// planning), the PostgreSQL catalog tables it reads, and the PostgreSQL functions. Returns
    /// the query as PostgreSQL reads it (see [`pgcompat::rewrite`]).
    async fn batch_session(
        &self,
        query: &Query,
        peek: bool,
    ) -> Result<(datafusion::prelude::SessionContext, Query)> {
        let mut query = query.clone();
        pgcompat::rewrite(&mut query);
        let refs = planner::referenced_tables(&query)?;
        let (relations, entries, pg_tables, listed, names) = {
            let catalog = self.catalog.lock().await;
            let is_relation = |n: &str| catalog.entries.get(n).is_some_and(|e| e.is_relation());
            let relations = catalog.named_relations(&refs);
            // The entries of the relations read, and of the inputs under rollups.
            let mut entries = std::collections::BTreeMap::new();
            let mut todo: Vec<String> = relations.iter().map(|(n, _)| n.clone()).collect();
            while let Some(n) = todo.pop() {
                if let Some(e) = catalog.entries.get(&n) {
                    if let ObjectDef::View {
                        rollup: Some(r), ..
                    } = &e.def
                    {
                        todo.push(r.input.clone());
                    }
                    entries.insert(n, e.clone());
                }
            }
            let mut pg_tables: Vec<(&'static str, &'static str)> = refs
                .iter()
                .filter_map(|r| pgcompat::catalog_table(r, is_relation))
                .collect();
            pg_tables.sort();
            pg_tables.dedup();
            // Only a query that reads the catalog tables needs the whole catalog.
            let listed: Vec<pgcompat::RelationInfo> = if pg_tables.is_empty() {
                Vec::new()
            } else {
                catalog
                    .entries
                    .values()
                    .filter(|e| e.is_relation())
                    .map(|e| pgcompat::RelationInfo {
                        history: self.history().and_then(|h| {
                            let rel = h.get(&e.name)?;
                            Some((rel.spec.horizon_ms, rel.stats()))
                        }),
                        name: e.name.clone(),
                        table: e.kind() == ObjectKind::Source,
                        schema: e.schema.clone(),
                        definition: (e.kind() != ObjectKind::Source).then(|| e.sql.clone()),
                    })
                    .collect()
            };
            let names: std::collections::HashSet<String> =
                listed.iter().map(|r| r.name.clone()).collect();
            (relations, entries, pg_tables, listed, names)
        };
        let (tables, now) = if peek {
            // What is read in memory: the relations, or for a rollup with history the sources
            // under it.
            let mut read: Vec<String> = relations
                .iter()
                .flat_map(|(n, _)| Self::read_through(&entries, n))
                .collect();
            read.sort();
            read.dedup();
            let refs: Vec<&str> = read.iter().map(String::as_str).collect();
            let peek = self.engine.peek(&refs).await?;
            let peeked: std::collections::HashMap<String, (SchemaRef, Vec<WindowBatch>)> =
                read.into_iter().zip(peek.relations).collect();
            // History is read after the window (see `tocsin_history::table`).
            let mut tables = Vec::new();
            for (n, _) in relations {
                let table = self.table_for(&entries, &peeked, &n, peek.time).await?;
                tables.push((n, table));
            }
            (tables, peek.time)
        } else {
            let mut tables = Vec::new();
            for (n, s) in relations {
                tables.push((n, planner::mem_table(s, Vec::new())?));
            }
            (tables, self.engine.clock().now())
        };
        let ctx = planner::batch_context(tables, now as i64)?;
        pgcompat::install(&ctx, &pg_tables, &listed, &names)?;
        pgcompat::inline_subqueries(&ctx, &mut query).await?;
        Ok((ctx, query))
    }

    /// `INSERT INTO source [(columns)] VALUES ... | SELECT ...`: evaluates the rows, fills missing
    /// columns with NULL and a missing `ts` with the current time, and pushes them. Rows the
    /// source refuses (late, too far in the future) make the statement fail with their reasons;
    /// the other rows are kept.
    async fn insert(
        &self,
        source: &str,
        columns: &[String],
        query: &Query,
    ) -> Result<StatementResult> {
        let schema = {
            let catalog = self.catalog.lock().await;
            match catalog.entries.get(source) {
                Some(e) if e.system => {
                    return Err(SqlError::plan(format!(
                        "\"{source}\" is written by tocsin itself and takes no rows"
                    )))
                }
                Some(e) if e.kind() == ObjectKind::Source => e.schema.clone(),
                Some(_) => {
                    return Err(SqlError::plan(format!(
                        "\"{source}\" is not a source: only sources take rows"
                    )))
                }
                None => {
                    return Err(SqlError::plan(format!(
                        "source \"{source}\" does not exist"
                    )))
                }
            }
        };
        let (vschema, batches) = self.query(query).await?;
        let names: Vec<String> = if columns.is_empty() {
            schema
                .fields()
                .iter()
                .take(vschema.fields().len())
                .map(|f| f.name().clone())
                .collect()
        } else {
            columns.to_vec()
        };
        if names.len() != vschema.fields().len() {
            return Err(SqlError::plan(format!(
                "INSERT names {} columns but gives {} values per row",
                names.len(),
                vschema.fields().len()
            )));
        }
        for n in &names {
            if schema.index_of(n).is_err() {
                return Err(SqlError::plan(format!(
                    "source \"{source}\" has no column \"{n}\""
                )));
            }
        }
        // The ingestion time is the wall clock's; the engine's logical time may run a few ms ahead.
        let now = self.engine.clock().now() as i64;
        let mut total = PushOutcome::default();
        let mut offset = 0;
        for b in batches {
            let n = b.num_rows();
            let mut arrays = Vec::with_capacity(schema.fields().len());
            for f in schema.fields() {
                let arr: ArrayRef = match names.iter().position(|c| c == f.name()) {
                    Some(i) => cast_with_options(b.column(i), f.data_type(), &STRICT)
                        .map_err(|e| SqlError::plan(format!("column \"{}\": {e}", f.name())))?,
                    None if f.name() == "ts" => Arc::new(
                        datafusion::arrow::array::TimestampMillisecondArray::from(vec![now; n])
                            .with_timezone("UTC"),
                    ),
                    None => datafusion::arrow::array::new_null_array(f.data_type(), n),
                };
                arrays.push(arr);
            }
            let batch = RecordBatch::try_new(schema.clone(), arrays)
                .map_err(|e| SqlError::plan(e.to_string()))?;
            let outcome = match self.durability() {
                Some(d) => d
                    .insert(source, batch)
                    .await
                    .map_err(|e| SqlError::new(ErrorKind::Execution, e))?,
                None => self.engine.push(source, batch)?,
            };
            total.accepted += outcome.accepted;
            total.time = outcome.time;
            total
                .rejected
                .extend(outcome.rejected.into_iter().map(|(r, m)| (r + offset, m)));
            offset += n;
        }
        if !total.rejected.is_empty() {
            let reasons: Vec<String> = total
                .rejected
                .iter()
                .map(|(r, m)| format!("row {}: {m}", r + 1))
                .collect();
            return Err(SqlError::new(
                ErrorKind::Execution,
                format!(
                    "{} row(s) rejected ({}); {} row(s) accepted",
                    total.rejected.len(),
                    reasons.join("; "),
                    total.accepted
                ),
            ));
        }
        Ok(StatementResult::Inserted {
            source: source.to_string(),
            outcome: total,
        })
    }

    /// Subscribes to a rule's or view's output changes.
    pub async fn subscribe(&self, name: &str) -> Result<Subscription> {
        match self
            .execute_statement(Statement::Subscribe {
                target: SubscribeTarget::Name(name.to_string()),
            })
            .await?
        {
            StatementResult::Subscribe(s) => Ok(s),
            _ => Err(SqlError::internal("subscribe returned no subscription")),
        }
    }

    /// Follows a relation's changes, with progress reported only after changes (and once after
    /// the snapshot): what the alert manager needs of each rule, at a cost that does not grow
    /// with the number of rules.
    pub async fn follow(&self, name: &str) -> Result<Subscription> {
        let plan = session::read_plan(&*self.catalog.lock().await, name.to_string())?;
        Ok(self.engine.follow(plan).await?)
    }
}

/// What `SHOW ALERTS` runs.
const SHOW_ALERTS: &str = "SELECT * FROM tocsin_alerts ORDER BY rule, labels";
const SHOW_REPLICAS: &str = "SELECT * FROM tocsin_replicas ORDER BY id";

/// The columns that identify a rule's alert instances: the `labels` option, else the GROUP BY
/// columns (found by following the plan's output columns down to a grouping's keys), else the
/// text columns.
fn alert_labels(plan: &Plan, options: &RuleOptions) -> Vec<String> {
    if let Some(l) = &options.labels {
        return l.clone();
    }
    let names = |idx: Vec<usize>| -> Vec<String> {
        idx.into_iter()
            .map(|i| plan.schema.field(i).name().clone())
            .collect()
    };
    match group_columns(plan) {
        Some(keys) if !keys.is_empty() => names(keys),
        _ => plan
            .schema
            .fields()
            .iter()
            .filter(|f| {
                matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
            })
            .map(|f| f.name().clone())
            .collect(),
    }
}

/// The output columns of `plan` that are grouping keys of the reduce it ends in, if it does.
fn group_columns(plan: &Plan) -> Option<Vec<usize>> {
    use datafusion::physical_expr::expressions::Column;
    use tocsin_engine::plan::MfpStep;
    match &plan.node {
        Node::Reduce { keys, .. } => Some((0..*keys).collect()),
        Node::Mfp { input, steps } => {
            let mut keys = group_columns(input)?;
            for step in steps {
                if let MfpStep::Project { exprs, .. } = step {
                    keys = exprs
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| {
                            e.downcast_ref::<Column>()
                                .is_some_and(|c| keys.contains(&c.index()))
                        })
                        .map(|(i, _)| i)
                        .collect();
                }
            }
            Some(keys)
        }
        _ => None,
    }
}

fn exists_check(catalog: &Catalog, name: &str) -> Result<()> {
    if let Some(e) = catalog.entries.get(name) {
        return Err(SqlError::plan(format!(
            "{} \"{name}\" already exists",
            e.kind().as_str().to_lowercase()
        )));
    }
    Ok(())
}

/// The SQL name of an Arrow type, as tocsin reports column types.
pub fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int16 | DataType::Int8 => "smallint".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Float32 => "real".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        other => other.to_string().to_lowercase(),
    }
}
