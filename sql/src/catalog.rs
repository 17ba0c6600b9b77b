//! The catalog: every source, view, rule, sink and silence with the SQL that made it.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast::{ColumnDef, DataType as SqlType};
use tocsin_engine::Plan;

use crate::error::{Result, SqlError};
use crate::lower::Relations;
use crate::options::{RuleOptions, Silence, SourceOptions};
use crate::parser::Options;
use crate::parser::{normalize, ObjectKind};
use crate::planner::ts_type;

#[derive(Clone, Debug)]
pub enum ObjectDef {
    Source {
        connector: String,
        options: SourceOptions,
        /// Set on a relation made with another source (`<name>_status` of a `FROM SNMP`
        /// source): it is created and dropped with its owner, and has no task of its own.
        owner: Option<String>,
    },
    /// Plans are shared, not copied, when the catalog is read.
    View {
        plan: Arc<Plan>,
        /// Set on a rollup view that keeps history.
        rollup: Option<crate::rollup::RollupDef>,
    },
    Rule {
        plan: Arc<Plan>,
        options: RuleOptions,
        /// The columns that identify an alert instance: the `labels` option, else the GROUP BY
        /// columns, else the text columns. The other columns are its values.
        labels: Vec<String>,
    },
    /// A notification sink; its options are checked by the connector that delivers to it.
    Sink {
        connector: String,
        options: Options,
    },
    Silence(Silence),
    /// A table tocsin maintains itself (`tocsin_alerts`): rows replaced in place by `key`. Read
    /// like a view; never created, written or dropped by statements.
    Table {
        key: Vec<String>,
    },
}

/// One catalog entry.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    pub name: String,
    pub schema: SchemaRef,
    /// The statement that created it, as tocsin re-prints it.
    pub sql: String,
    pub def: ObjectDef,
    /// Made by tocsin itself (`tocsin_alerts`, ...): not recorded, cannot be dropped.
    pub system: bool,
}

impl CatalogEntry {
    pub fn kind(&self) -> ObjectKind {
        match self.def {
            ObjectDef::Source { .. } => ObjectKind::Source,
            ObjectDef::View { .. } | ObjectDef::Table { .. } => ObjectKind::View,
            ObjectDef::Rule { .. } => ObjectKind::Rule,
            ObjectDef::Sink { .. } => ObjectKind::Sink,
            ObjectDef::Silence(_) => ObjectKind::Silence,
        }
    }
    pub fn plan(&self) -> Option<&Plan> {
        match &self.def {
            ObjectDef::View { plan, .. } | ObjectDef::Rule { plan, .. } => Some(plan),
            _ => None,
        }
    }

    /// The statement as shown to users (`SHOW`, the HTTP catalog, messages): option values that
    /// are secrets (passwords, SNMP communities, tokens in headers and webhook URLs) are masked,
    /// see [`tocsin_connectors::secrets`]. [`CatalogEntry::sql`] keeps them.
    pub fn display_sql(&self) -> String {
        masked_sql(&self.sql)
    }

    /// Sources, views and rules: what queries can read.
    pub fn is_relation(&self) -> bool {
        matches!(
            self.kind(),
            ObjectKind::Source | ObjectKind::View | ObjectKind::Rule
        )
    }
}

#[derive(Default, Debug)]
pub struct Catalog {
    pub entries: BTreeMap<String, CatalogEntry>,
}

impl Relations for Catalog {
    fn lookup(&self, name: &str) -> Option<(bool, SchemaRef)> {
        self.entries
            .get(name)
            .filter(|e| e.is_relation())
            .map(|e| (e.kind() == ObjectKind::Source, e.schema.clone()))
    }
}

impl Catalog {
    /// Adds a newly created object; answers with the statement's result.
    pub fn register(&mut self, entry: CatalogEntry) -> crate::StatementResult {
        let statement = format!("CREATE {}", entry.kind().as_str());
        let name = entry.name.clone();
        self.entries.insert(name.clone(), entry);
        crate::StatementResult::Ddl { statement, name }
    }

    /// The relations made with `name` and dropped with it. Only sources have them, so for
    /// anything else the catalog is not searched.
    pub fn companions(&self, name: &str) -> Vec<String> {
        if self
            .entries
            .get(name)
            .is_none_or(|e| e.kind() != ObjectKind::Source)
        {
            return Vec::new();
        }
        self.entries
            .values()
            .filter(|e| matches!(&e.def, ObjectDef::Source { owner: Some(o), .. } if o == name))
            .map(|e| e.name.clone())
            .collect()
    }

    /// The relations among the tables a query names, each once, by name: what planning it needs.
    pub fn named_relations(&self, refs: &[TableReference]) -> Vec<(String, SchemaRef)> {
        let mut names: Vec<&str> = refs
            .iter()
            .filter_map(crate::planner::relation_name)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| self.entries.get(n).filter(|e| e.is_relation()))
            .map(|e| (e.name.clone(), e.schema.clone()))
            .collect()
    }
}

/// The Arrow type of a column type in `CREATE SOURCE`.
fn column_type(t: &SqlType) -> Option<DataType> {
    use SqlType::*;
    Some(match t {
        Text | Varchar(_) | String(_) | Char(_) | CharVarying(_) | Character(_)
        | CharacterVarying(_) => DataType::Utf8,
        BigInt(_) | Int(_) | Integer(_) | SmallInt(_) | TinyInt(_) | Int2(_) | Int4(_)
        | Int8(_) | Int16 | Int32 | Int64 => DataType::Int64,
        Double(_) | DoublePrecision | Float(_) | Real | Float4 | Float8 | Float32 | Float64 => {
            DataType::Float64
        }
        Boolean | Bool => DataType::Boolean,
        Timestamp(_, _) | TimestampNtz(_) | Datetime(_) => ts_type(),
        _ => return None,
    })
}

/// The schema of a source from its column list; `ts TIMESTAMP` is added when not declared.
pub fn source_schema(columns: &[ColumnDef]) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = Vec::new();
    for c in columns {
        let name = normalize(&c.name);
        if fields.iter().any(|f| f.name() == &name) {
            return Err(SqlError::plan(format!(
                "column \"{name}\" is declared twice"
            )));
        }
        let dt = column_type(&c.data_type).ok_or_else(|| {
            SqlError::unsupported(format!(
                "column type {} (of \"{name}\"): use TEXT, BIGINT, DOUBLE, BOOLEAN or TIMESTAMP",
                c.data_type
            ))
        })?;
        if name == "ts" && dt != ts_type() {
            return Err(SqlError::plan(format!(
                "column ts must be a TIMESTAMP, not {}",
                c.data_type
            )));
        }
        fields.push(Field::new(name, dt, true));
    }
    if !fields.iter().any(|f| f.name() == "ts") {
        fields.push(Field::new("ts", ts_type(), true));
    }
    Ok(std::sync::Arc::new(Schema::new(fields)))
}

/// A `CREATE SOURCE` or `CREATE SINK` statement with its secret option values masked; other
/// statements as they are.
pub fn masked_sql(sql: &str) -> String {
    let mask = |options: &[(String, String)]| -> Vec<(String, String)> {
        options
            .iter()
            .map(|(k, v)| (k.clone(), tocsin_connectors::secrets::shown(k, v)))
            .collect()
    };
    let statement = crate::parser::parse(sql)
        .ok()
        .filter(|s| s.len() == 1)
        .and_then(|mut s| s.pop())
        .map(|l| l.statement);
    match statement {
        Some(crate::parser::Statement::CreateSource {
            name,
            columns,
            connector,
            options,
        }) => crate::source_sql(&name, &columns, &connector, &mask(&options)),
        Some(crate::parser::Statement::CreateSink {
            name,
            connector,
            options,
        }) => crate::sink_sql(&name, &connector, &mask(&options)),
        _ => sql.to_string(),
    }
}
