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
//!
//! | module | owns |
//! |---|---|
//! | `types` | Arrow types as PostgreSQL types |
//! | `catalog` | the `information_schema` and `pg_catalog` tables |
//! | `rewrite` | functions in FROM, uncorrelated subqueries |
//! | `functions` | the PostgreSQL functions |

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

mod catalog;
mod functions;
mod rewrite;
mod types;

pub use catalog::*;
pub use functions::*;
pub use rewrite::*;
pub use types::*;

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
