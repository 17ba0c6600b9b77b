//! What PostgreSQL clients (psql, drivers, Grafana's PostgreSQL data source) expect of a server
//! besides plain SQL, for ad hoc queries:
//!
//! - `information_schema.{schemata, tables, columns}` and `pg_catalog.{pg_namespace, pg_database,
//!   pg_extension, pg_settings, pg_tables, pg_views}` over tocsin's catalog (sources are tables,
//!   views and rules are views, all in schema `public`). `pg_catalog` tables are also found
//!   unqualified, as in PostgreSQL, unless a relation of the same name exists.
//! - functions: `current_setting`, `version`, `quote_ident`, `parse_ident`, `array_lower`,
//!   `array_upper`, `current_user` (`user`, `session_user`, `current_role`),
//!   `current_database` (`current_catalog`), `current_schema`;
//! - a scalar function in FROM (`FROM string_to_array('a,b', ',') s`) is a one-row table, and a
//!   one-column function in FROM with a table alias names its column after the alias
//!   (`generate_series(1, 3) AS i` has column `i`), as PostgreSQL does.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemorySchemaProvider, TableFunctionArgs, TableFunctionImpl};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue, TableReference};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Query, TableAliasColumnDef, TableFactor, VisitMut, VisitorMut,
};

use crate::error::Result;

/// The PostgreSQL version tocsin answers as: new enough that clients use their current
/// catalog queries, and what `server_version` reports at connection start.
pub const SERVER_VERSION: &str = "14.0";
/// `server_version_num` for [`SERVER_VERSION`].
pub const SERVER_VERSION_NUM: &str = "140000";
/// The one database.
pub const DATABASE: &str = "tocsin";
/// The user name the catalog shows as owner and `current_user` returns.
pub const USER: &str = "tocsin";
/// The schema every source and view is in.
pub const SCHEMA: &str = "public";

/// The settings `current_setting` and `pg_settings` know, with their values.
pub const SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_read_only", "off"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "on"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", SERVER_VERSION),
    ("server_version_num", SERVER_VERSION_NUM),
    ("standard_conforming_strings", "on"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
];

/// `current_setting(name)`: setting names are case-insensitive, as in PostgreSQL.
pub fn setting(name: &str) -> std::result::Result<&'static str, String> {
    let lower = name.to_ascii_lowercase();
    SETTINGS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("unrecognized configuration parameter \"{name}\""))
}

/// How a column type looks to PostgreSQL clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgType {
    /// The type's OID (`pg_type.oid`).
    pub oid: u32,
    /// `information_schema.columns.data_type`.
    pub data_type: &'static str,
    /// `information_schema.columns.udt_name` (`pg_type.typname`).
    pub udt_name: &'static str,
    pub numeric_precision: Option<i32>,
    pub numeric_precision_radix: Option<i32>,
    pub numeric_scale: Option<i32>,
    pub datetime_precision: Option<i32>,
}

impl PgType {
    const fn new(oid: u32, data_type: &'static str, udt_name: &'static str) -> Self {
        PgType {
            oid,
            data_type,
            udt_name,
            numeric_precision: None,
            numeric_precision_radix: None,
            numeric_scale: None,
            datetime_precision: None,
        }
    }
    const fn integer(oid: u32, data_type: &'static str, udt: &'static str, bits: i32) -> Self {
        let mut t = PgType::new(oid, data_type, udt);
        t.numeric_precision = Some(bits);
        t.numeric_precision_radix = Some(2);
        t.numeric_scale = Some(0);
        t
    }
    const fn float(oid: u32, data_type: &'static str, udt: &'static str, bits: i32) -> Self {
        let mut t = PgType::new(oid, data_type, udt);
        t.numeric_precision = Some(bits);
        t.numeric_precision_radix = Some(2);
        t
    }
    const fn timestamp(oid: u32, data_type: &'static str, udt: &'static str, digits: i32) -> Self {
        let mut t = PgType::new(oid, data_type, udt);
        t.datetime_precision = Some(digits);
        t
    }

    pub const TEXT: PgType = PgType::new(25, "text", "text");
    pub const INT8: PgType = PgType::integer(20, "bigint", "int8", 64);
    pub const INT4: PgType = PgType::integer(23, "integer", "int4", 32);
    pub const INT2: PgType = PgType::integer(21, "smallint", "int2", 16);
    pub const FLOAT8: PgType = PgType::float(701, "double precision", "float8", 53);
    pub const FLOAT4: PgType = PgType::float(700, "real", "float4", 24);
    pub const BOOL: PgType = PgType::new(16, "boolean", "bool");
    pub const DATE: PgType = PgType::new(1082, "date", "date");

    /// The PostgreSQL type an Arrow type is shown as: integers, floats, booleans, text,
    /// timestamps and dates as themselves, everything else (decimals, intervals, lists, ...) as
    /// text in Arrow's display form.
    pub fn of(t: &DataType) -> PgType {
        let digits = |u: &TimeUnit| match u {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 3,
            TimeUnit::Microsecond | TimeUnit::Nanosecond => 6,
        };
        match t {
            DataType::Int64 | DataType::UInt32 => Self::INT8,
            DataType::Int32 | DataType::UInt16 => Self::INT4,
            DataType::Int16 | DataType::Int8 | DataType::UInt8 => Self::INT2,
            DataType::Float64 => Self::FLOAT8,
            DataType::Float32 | DataType::Float16 => Self::FLOAT4,
            DataType::Boolean => Self::BOOL,
            DataType::Timestamp(u, Some(_)) => {
                PgType::timestamp(1184, "timestamp with time zone", "timestamptz", digits(u))
            }
            DataType::Timestamp(u, None) => {
                PgType::timestamp(1114, "timestamp without time zone", "timestamp", digits(u))
            }
            DataType::Date32 => Self::DATE,
            _ => Self::TEXT,
        }
    }
}

/// A relation as the PostgreSQL catalog tables show it.
#[derive(Clone, Debug)]
pub struct RelationInfo {
    pub name: String,
    /// A source (`BASE TABLE`), else a view or rule (`VIEW`).
    pub table: bool,
    pub schema: SchemaRef,
    /// For views: the statement that made it.
    pub definition: Option<String>,
}

/// The catalog tables, by schema and name.
const INFORMATION_SCHEMA: &[&str] = &["schemata", "tables", "columns"];
const PG_CATALOG: &[&str] = &[
    "pg_namespace",
    "pg_database",
    "pg_extension",
    "pg_settings",
    "pg_tables",
    "pg_views",
];

/// Which catalog table a table reference names, as `(schema, table)`; `is_relation` says
/// whether a bare name is one of tocsin's relations (which then wins).
pub fn catalog_table(
    r: &TableReference,
    is_relation: impl Fn(&str) -> bool,
) -> Option<(&'static str, &'static str)> {
    let find = |schema: &'static str, list: &[&'static str], name: &str| {
        list.iter().find(|t| **t == name).map(|t| (schema, *t))
    };
    match (r.catalog(), r.schema()) {
        (Some(c), _) if c != DATABASE => None,
        (_, Some("information_schema")) => {
            find("information_schema", INFORMATION_SCHEMA, r.table())
        }
        (_, Some("pg_catalog")) => find("pg_catalog", PG_CATALOG, r.table()),
        (_, None) if !is_relation(r.table()) => find("pg_catalog", PG_CATALOG, r.table()),
        _ => None,
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn int4(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}
fn boolean(name: &str) -> Field {
    Field::new(name, DataType::Boolean, true)
}

fn strings<S: AsRef<str>>(v: impl IntoIterator<Item = Option<S>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}
fn same(value: &str, n: usize) -> ArrayRef {
    Arc::new(StringArray::from(vec![value; n]))
}
fn ints(v: impl IntoIterator<Item = Option<i32>>) -> ArrayRef {
    Arc::new(Int32Array::from_iter(v))
}

/// The contents of a catalog table.
pub fn table_contents(
    schema_name: &str,
    table: &str,
    relations: &[RelationInfo],
) -> Result<(SchemaRef, RecordBatch)> {
    let schemas = [SCHEMA, "information_schema", "pg_catalog"];
    // Every table a client can list: tocsin's relations, then the catalog's own.
    let mut listed: Vec<(&str, &str, &str)> = relations
        .iter()
        .map(|r| {
            (
                SCHEMA,
                r.name.as_str(),
                if r.table { "BASE TABLE" } else { "VIEW" },
            )
        })
        .collect();
    listed.extend(
        INFORMATION_SCHEMA
            .iter()
            .map(|t| ("information_schema", *t, "VIEW")),
    );
    listed.extend(PG_CATALOG.iter().map(|t| ("pg_catalog", *t, "BASE TABLE")));
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = match (schema_name, table) {
        ("information_schema", "schemata") => {
            let n = schemas.len();
            (
                vec![
                    utf8("catalog_name"),
                    utf8("schema_name"),
                    utf8("schema_owner"),
                ],
                vec![
                    same(DATABASE, n),
                    strings(schemas.iter().map(Some)),
                    same(USER, n),
                ],
            )
        }
        ("information_schema", "tables") => {
            let n = listed.len();
            (
                vec![
                    utf8("table_catalog"),
                    utf8("table_schema"),
                    utf8("table_name"),
                    utf8("table_type"),
                    utf8("is_insertable_into"),
                ],
                vec![
                    same(DATABASE, n),
                    strings(listed.iter().map(|l| Some(l.0))),
                    strings(listed.iter().map(|l| Some(l.1))),
                    strings(listed.iter().map(|l| Some(l.2))),
                    strings(
                        listed
                            .iter()
                            .map(|l| Some(if l.2 == "BASE TABLE" { "YES" } else { "NO" })),
                    ),
                ],
            )
        }
        ("information_schema", "columns") => columns_table(relations),
        ("pg_catalog", "pg_namespace") => (
            vec![int4("oid"), utf8("nspname"), int4("nspowner")],
            vec![
                ints([Some(2200), Some(13000), Some(11)]),
                strings(schemas.iter().map(Some)),
                ints([Some(10); 3]),
            ],
        ),
        ("pg_catalog", "pg_database") => (
            vec![
                int4("oid"),
                utf8("datname"),
                boolean("datistemplate"),
                boolean("datallowconn"),
            ],
            vec![
                ints([Some(16384)]),
                same(DATABASE, 1),
                Arc::new(BooleanArray::from(vec![false])),
                Arc::new(BooleanArray::from(vec![true])),
            ],
        ),
        ("pg_catalog", "pg_extension") => (
            vec![
                int4("oid"),
                utf8("extname"),
                int4("extowner"),
                int4("extnamespace"),
                boolean("extrelocatable"),
                utf8("extversion"),
            ],
            vec![
                ints([]),
                strings::<&str>([]),
                ints([]),
                ints([]),
                Arc::new(BooleanArray::from(Vec::<bool>::new())),
                strings::<&str>([]),
            ],
        ),
        ("pg_catalog", "pg_settings") => (
            vec![utf8("name"), utf8("setting")],
            vec![
                strings(SETTINGS.iter().map(|s| Some(s.0))),
                strings(SETTINGS.iter().map(|s| Some(s.1))),
            ],
        ),
        ("pg_catalog", "pg_tables") => {
            let t: Vec<&RelationInfo> = relations.iter().filter(|r| r.table).collect();
            (
                vec![utf8("schemaname"), utf8("tablename"), utf8("tableowner")],
                vec![
                    same(SCHEMA, t.len()),
                    strings(t.iter().map(|r| Some(&r.name))),
                    same(USER, t.len()),
                ],
            )
        }
        ("pg_catalog", "pg_views") => {
            let v: Vec<&RelationInfo> = relations.iter().filter(|r| !r.table).collect();
            (
                vec![
                    utf8("schemaname"),
                    utf8("viewname"),
                    utf8("viewowner"),
                    utf8("definition"),
                ],
                vec![
                    same(SCHEMA, v.len()),
                    strings(v.iter().map(|r| Some(&r.name))),
                    same(USER, v.len()),
                    strings(v.iter().map(|r| r.definition.as_ref())),
                ],
            )
        }
        _ => {
            return Err(crate::error::SqlError::internal(format!(
                "no catalog table {schema_name}.{table}"
            )))
        }
    };
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| crate::error::SqlError::internal(e.to_string()))?;
    Ok((schema, batch))
}

fn columns_table(relations: &[RelationInfo]) -> (Vec<Field>, Vec<ArrayRef>) {
    struct Col<'a> {
        table: &'a str,
        name: &'a str,
        position: i32,
        nullable: bool,
        ty: PgType,
    }
    let cols: Vec<Col> = relations
        .iter()
        .flat_map(|r| {
            r.schema.fields().iter().enumerate().map(|(i, f)| Col {
                table: &r.name,
                name: f.name(),
                position: i as i32 + 1,
                nullable: f.is_nullable(),
                ty: PgType::of(f.data_type()),
            })
        })
        .collect();
    let n = cols.len();
    (
        vec![
            utf8("table_catalog"),
            utf8("table_schema"),
            utf8("table_name"),
            utf8("column_name"),
            int4("ordinal_position"),
            utf8("column_default"),
            utf8("is_nullable"),
            utf8("data_type"),
            int4("character_maximum_length"),
            int4("numeric_precision"),
            int4("numeric_precision_radix"),
            int4("numeric_scale"),
            int4("datetime_precision"),
            utf8("udt_catalog"),
            utf8("udt_schema"),
            utf8("udt_name"),
        ],
        vec![
            same(DATABASE, n),
            same(SCHEMA, n),
            strings(cols.iter().map(|c| Some(c.table))),
            strings(cols.iter().map(|c| Some(c.name))),
            ints(cols.iter().map(|c| Some(c.position))),
            strings::<&str>(cols.iter().map(|_| None)),
            strings(
                cols.iter()
                    .map(|c| Some(if c.nullable { "YES" } else { "NO" })),
            ),
            strings(cols.iter().map(|c| Some(c.ty.data_type))),
            ints(cols.iter().map(|_| None)),
            ints(cols.iter().map(|c| c.ty.numeric_precision)),
            ints(cols.iter().map(|c| c.ty.numeric_precision_radix)),
            ints(cols.iter().map(|c| c.ty.numeric_scale)),
            ints(cols.iter().map(|c| c.ty.datetime_precision)),
            same(DATABASE, n),
            same("pg_catalog", n),
            strings(cols.iter().map(|c| Some(c.ty.udt_name))),
        ],
    )
}

/// Registers the catalog tables a query reads and the PostgreSQL functions in a batch session.
pub fn install(
    ctx: &SessionContext,
    tables: &[(&'static str, &'static str)],
    relations: &[RelationInfo],
    shadowed: &HashSet<String>,
) -> Result<()> {
    let catalog = ctx
        .catalog(DATABASE)
        .ok_or_else(|| crate::error::SqlError::internal("no default catalog"))?;
    for schema in ["information_schema", "pg_catalog"] {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    for (schema, table) in tables {
        let (s, batch) = table_contents(schema, table, relations)?;
        let provider = Arc::new(MemTable::try_new(s, vec![vec![batch]])?);
        ctx.register_table(TableReference::partial(*schema, *table), provider.clone())?;
        if *schema == "pg_catalog" && !shadowed.contains(*table) {
            ctx.register_table(*table, provider)?;
        }
    }
    for f in functions() {
        ctx.register_udf(f);
    }
    for name in FROM_FUNCTIONS {
        ctx.register_udtf(name, Arc::new(ScalarInFrom { name }));
    }
    Ok(())
}

/// Scalar functions that may also stand in FROM as a one-row table.
const FROM_FUNCTIONS: &[&str] = &[
    "string_to_array",
    "regexp_split_to_array",
    "parse_ident",
    "current_setting",
    "current_schema",
    "current_database",
    "version",
];

/// Table functions whose one column takes the name of the table alias.
fn one_column_function(name: &str) -> bool {
    FROM_FUNCTIONS.contains(&name) || matches!(name, "generate_series" | "range")
}

/// Rewrites a query the way PostgreSQL reads it before DataFusion plans it: a one-column function
/// in FROM with an alias and no column list gets its column named after the alias.
pub fn rewrite(query: &mut Query) {
    function_aliases(query);
}

/// The most rows an uncorrelated subquery may return to be replaced by its values.
const INLINE_ROWS: usize = 10_000;

/// Replaces uncorrelated subqueries (`x IN (SELECT ...)`, `(SELECT ...)`, `EXISTS (...)`) by
/// their results, computed first in `ctx`. DataFusion runs subqueries only in some places
/// (not inside CASE in a select list or in ORDER BY, where PostgreSQL clients put them);
/// evaluated once up front they work anywhere. Correlated subqueries (which do not plan on
/// their own) and large results are left to DataFusion.
pub async fn inline_subqueries(ctx: &SessionContext, query: &mut Query) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{Expr as Ast, Visit, Visitor};
    struct Collect(Vec<Query>);
    impl Visitor for Collect {
        type Break = ();
        fn post_visit_expr(&mut self, e: &Ast) -> ControlFlow<()> {
            match e {
                Ast::Subquery(q) | Ast::InSubquery { subquery: q, .. } => {
                    self.0.push((**q).clone())
                }
                Ast::Exists { subquery, .. } => self.0.push((**subquery).clone()),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut found = Collect(Vec::new());
    let _ = Visit::visit(&*query, &mut found);
    if found.0.is_empty() {
        return Ok(());
    }
    let mut results: Vec<Option<Vec<Ast>>> = Vec::with_capacity(found.0.len());
    for q in found.0 {
        results.push(evaluate(ctx, &q).await);
    }
    struct Replace {
        results: std::vec::IntoIter<Option<Vec<Ast>>>,
    }
    impl VisitorMut for Replace {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Ast) -> ControlFlow<()> {
            use datafusion::sql::sqlparser::ast::Value;
            let values = match e {
                Ast::Subquery(_) | Ast::InSubquery { .. } | Ast::Exists { .. } => {
                    match self.results.next().flatten() {
                        Some(v) => v,
                        None => return ControlFlow::Continue(()),
                    }
                }
                _ => return ControlFlow::Continue(()),
            };
            let boolean = |b: bool| Ast::Value(Value::Boolean(b).into());
            *e = match std::mem::replace(e, boolean(false)) {
                Ast::Subquery(_) if values.len() <= 1 => values
                    .into_iter()
                    .next()
                    .unwrap_or(Ast::Value(Value::Null.into())),
                Ast::InSubquery { negated, .. } if values.is_empty() => boolean(negated),
                Ast::InSubquery { expr, negated, .. } => Ast::InList {
                    expr,
                    list: values,
                    negated,
                },
                Ast::Exists { negated, .. } => boolean(values.is_empty() == negated),
                other => other,
            };
            ControlFlow::Continue(())
        }
    }
    let _ = query.visit(&mut Replace {
        results: results.into_iter(),
    });
    Ok(())
}

/// An uncorrelated subquery's first column as SQL literals; `None` when it cannot be run on its
/// own, returns too many rows, or values that have no plain literal.
async fn evaluate(
    ctx: &SessionContext,
    q: &Query,
) -> Option<Vec<datafusion::sql::sqlparser::ast::Expr>> {
    use datafusion::sql::sqlparser::ast::{Expr as Ast, Value};
    let plan = crate::planner::plan_query(ctx, q).await.ok()?;
    let batches = ctx
        .execute_logical_plan(plan)
        .await
        .ok()?
        .collect()
        .await
        .ok()?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > INLINE_ROWS {
        return None;
    }
    let mut out = Vec::with_capacity(rows);
    for b in &batches {
        if b.num_columns() == 0 {
            // EXISTS over a query with no columns: only the row count matters.
            out.extend((0..b.num_rows()).map(|_| Ast::Value(Value::Null.into())));
            continue;
        }
        let col = b.column(0);
        for i in 0..b.num_rows() {
            let v = ScalarValue::try_from_array(col, i).ok()?;
            let literal = match v {
                _ if v.is_null() => Value::Null,
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Value::SingleQuotedString(s),
                ScalarValue::Boolean(Some(b)) => Value::Boolean(b),
                ScalarValue::Int8(_)
                | ScalarValue::Int16(_)
                | ScalarValue::Int32(_)
                | ScalarValue::Int64(_)
                | ScalarValue::UInt8(_)
                | ScalarValue::UInt16(_)
                | ScalarValue::UInt32(_)
                | ScalarValue::UInt64(_) => Value::Number(v.to_string(), false),
                ScalarValue::Float64(Some(f)) if f.is_finite() => {
                    Value::Number(format!("{f:?}"), false)
                }
                _ => return None,
            };
            out.push(Ast::Value(literal.into()));
        }
    }
    Some(out)
}

fn function_aliases(query: &mut Query) {
    struct Aliases;
    impl VisitorMut for Aliases {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                alias: Some(alias),
                args: Some(_),
                ..
            } = t
            {
                let function = name.to_string().to_ascii_lowercase();
                if alias.columns.is_empty() && one_column_function(&function) {
                    alias.columns = vec![TableAliasColumnDef {
                        name: alias.name.clone(),
                        data_type: None,
                    }];
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = query.visit(&mut Aliases);
}

/// A scalar function called in FROM: one row, one column named after the function.
#[derive(Debug)]
struct ScalarInFrom {
    name: &'static str,
}

impl TableFunctionImpl for ScalarInFrom {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let session: &dyn Session = args.session();
        let udf = session
            .scalar_functions()
            .get(self.name)
            .cloned()
            .ok_or_else(|| DataFusionError::Plan(format!("no function {}", self.name)))?;
        let expr = Expr::ScalarFunction(ScalarFunction::new_udf(udf, args.exprs().to_vec()));
        let empty = DFSchema::empty();
        let physical = session.create_physical_expr(expr, &empty)?;
        let one = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let value = physical.evaluate(&one)?.into_array(1)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            self.name,
            value.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![value])?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// The PostgreSQL functions tocsin adds to ad hoc queries.
fn functions() -> Vec<ScalarUDF> {
    let version = format!(
        "PostgreSQL {SERVER_VERSION} (tocsin {}), compatible wire protocol and catalog",
        env!("CARGO_PKG_VERSION")
    );
    vec![
        ScalarUDF::from(Constant::new("version", &[], version)),
        ScalarUDF::from(Constant::new(
            "current_user",
            &["user", "session_user", "current_role"],
            USER.into(),
        )),
        ScalarUDF::from(Constant::new(
            "current_database",
            &["current_catalog"],
            DATABASE.into(),
        )),
        ScalarUDF::from(Constant::new("current_schema", &[], SCHEMA.into())),
        ScalarUDF::from(TextFunction::new(TextKind::CurrentSetting)),
        ScalarUDF::from(TextFunction::new(TextKind::QuoteIdent)),
        ScalarUDF::from(ParseIdent::new()),
        ScalarUDF::from(ArrayBound::new("array_lower", false)),
        ScalarUDF::from(ArrayBound::new("array_upper", true)),
    ]
}

/// A function of no arguments with a fixed value.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    aliases: Vec<String>,
    value: String,
    signature: Signature,
}

impl Constant {
    fn new(name: &'static str, aliases: &[&str], value: String) -> Self {
        Constant {
            name,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            value,
            signature: Signature::nullary(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.value.clone(),
        ))))
    }
    fn simplify(&self, _: Vec<Expr>, _: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        Ok(ExprSimplifyResult::Simplified(Expr::Literal(
            ScalarValue::Utf8(Some(self.value.clone())),
            None,
        )))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TextKind {
    CurrentSetting,
    QuoteIdent,
}

/// A text → text function; NULL gives NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TextFunction {
    kind: TextKind,
    signature: Signature,
}

impl TextFunction {
    fn new(kind: TextKind) -> Self {
        TextFunction {
            kind,
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }
    }
    fn apply(&self, s: &str) -> std::result::Result<String, String> {
        match self.kind {
            TextKind::CurrentSetting => setting(s).map(str::to_string),
            TextKind::QuoteIdent => Ok(quote_ident(s)),
        }
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        match self.kind {
            TextKind::CurrentSetting => "current_setting",
            TextKind::QuoteIdent => "quote_ident",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let input = input.as_string::<i32>();
        let out = input
            .iter()
            .map(|v| v.map(|v| self.apply(v)).transpose())
            .collect::<std::result::Result<StringArray, String>>()
            .map_err(DataFusionError::Execution)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// PostgreSQL's reserved and column-name keywords: `quote_ident` quotes these.
const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// PostgreSQL's `quote_ident`: double-quotes a name unless it is a plain lower-case identifier
/// that is not a keyword.
pub fn quote_ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !KEYWORDS.contains(&s);
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// PostgreSQL's `parse_ident`: splits a qualified name into its parts; quoted parts are kept as
/// written, unquoted ones lower-cased.
pub fn parse_ident(s: &str) -> std::result::Result<Vec<String>, String> {
    let invalid = || format!("string is not a valid identifier: \"{s}\"");
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(invalid()),
                }
            }
            if part.is_empty() {
                return Err(invalid());
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == '.' || c.is_whitespace() {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(invalid());
            }
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return Err(invalid()),
        }
    }
}

fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseIdent {
    signature: Signature,
}

impl ParseIdent {
    fn new() -> Self {
        ParseIdent {
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ParseIdent {
    fn name(&self) -> &str {
        "parse_ident"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(text_list())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let input = input.as_string::<i32>();
        let mut values: Vec<String> = Vec::new();
        let mut offsets = vec![0i32];
        let mut valid = Vec::with_capacity(input.len());
        for v in input.iter() {
            match v {
                Some(v) => {
                    values.extend(parse_ident(v).map_err(DataFusionError::Execution)?);
                    valid.push(true);
                }
                None => valid.push(false),
            }
            offsets.push(values.len() as i32);
        }
        let list = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Utf8, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(StringArray::from(values)),
            Some(valid.into()),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `array_lower(array, dimension)` / `array_upper(...)`: arrays have one dimension and start at
/// 1; an empty or NULL array, or another dimension, gives NULL. The result is a bigint (not
/// PostgreSQL's int), which is what `generate_series` takes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArrayBound {
    name: &'static str,
    upper: bool,
    signature: Signature,
}

impl ArrayBound {
    fn new(name: &'static str, upper: bool) -> Self {
        ArrayBound {
            name,
            upper,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ArrayBound {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !matches!(
            args[0],
            DataType::List(_) | DataType::LargeList(_) | DataType::Null
        ) {
            return Err(DataFusionError::Plan(format!(
                "{}() takes an array, not {}",
                self.name, args[0]
            )));
        }
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let dim = datafusion::arrow::compute::cast(&arrays[1], &DataType::Int64)?;
        let dim = dim.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let lens: Vec<Option<usize>> = match arrays[0].data_type() {
            DataType::List(_) => {
                let l = arrays[0].as_list::<i32>();
                (0..n)
                    .map(|i| (!l.is_null(i)).then(|| l.value_length(i) as usize))
                    .collect()
            }
            DataType::LargeList(_) => {
                let l = arrays[0].as_list::<i64>();
                (0..n)
                    .map(|i| (!l.is_null(i)).then(|| l.value_length(i) as usize))
                    .collect()
            }
            _ => vec![None; n],
        };
        let out: Int64Array = (0..n)
            .map(|i| {
                let len = lens[i].filter(|l| *l > 0)?;
                if dim.is_null(i) || dim.value(i) != 1 {
                    return None;
                }
                Some(if self.upper { len as i64 } else { 1 })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_ident_quotes_what_postgres_quotes() {
        assert_eq!(quote_ident("cpu"), "cpu");
        assert_eq!(quote_ident("if_in_octets_2"), "if_in_octets_2");
        assert_eq!(quote_ident("Cpu"), "\"Cpu\"");
        assert_eq!(quote_ident("time"), "\"time\"");
        assert_eq!(quote_ident("a-b"), "\"a-b\"");
        assert_eq!(quote_ident("2x"), "\"2x\"");
        assert_eq!(quote_ident("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn parse_ident_splits_qualified_names() {
        assert_eq!(parse_ident("public.cpu").unwrap(), vec!["public", "cpu"]);
        assert_eq!(parse_ident("Cpu").unwrap(), vec!["cpu"]);
        assert_eq!(
            parse_ident("\"My Schema\" . \"a.b\"").unwrap(),
            vec!["My Schema", "a.b"]
        );
        assert!(parse_ident("a..b").is_err());
        assert!(parse_ident("\"open").is_err());
    }

    #[test]
    fn settings_are_case_insensitive_and_unknown_ones_fail() {
        assert_eq!(setting("server_version_num").unwrap(), SERVER_VERSION_NUM);
        assert_eq!(setting("TimeZone").unwrap(), "UTC");
        assert!(setting("no_such_thing")
            .unwrap_err()
            .contains("no_such_thing"));
    }
}
