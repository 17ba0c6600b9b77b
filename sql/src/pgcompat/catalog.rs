//! `information_schema` and `pg_catalog` tables over tocsin's catalog.

use super::*;

/// A relation as the PostgreSQL catalog tables show it.
#[derive(Clone, Debug)]
pub struct RelationInfo {
    pub name: String,
    /// A source (`BASE TABLE`), else a view or rule (`VIEW`).
    pub table: bool,
    pub schema: SchemaRef,
    /// For views: the statement that made it.
    pub definition: Option<String>,
    /// What it keeps in history: the horizon and the sizes.
    pub history: Option<(i64, tocsin_history::Stats)>,
}

/// The catalog tables, by schema and name.
pub(super) const INFORMATION_SCHEMA: &[&str] = &["schemata", "tables", "columns", "tocsin_history"];
pub(super) const PG_CATALOG: &[&str] = &[
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

pub(super) fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
pub(super) fn int4(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}
pub(super) fn boolean(name: &str) -> Field {
    Field::new(name, DataType::Boolean, true)
}

pub(super) fn strings<S: AsRef<str>>(v: impl IntoIterator<Item = Option<S>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}
pub(super) fn same(value: &str, n: usize) -> ArrayRef {
    Arc::new(StringArray::from(vec![value; n]))
}
pub(super) fn ints(v: impl IntoIterator<Item = Option<i32>>) -> ArrayRef {
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
        ("information_schema", "tocsin_history") => history_table(relations),
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

pub(super) fn columns_table(relations: &[RelationInfo]) -> (Vec<Field>, Vec<ArrayRef>) {
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

/// `information_schema.tocsin_history`: one row per relation that keeps history.
fn history_table(relations: &[RelationInfo]) -> (Vec<Field>, Vec<ArrayRef>) {
    let kept: Vec<(&str, i64, &tocsin_history::Stats)> = relations
        .iter()
        .filter_map(|r| r.history.as_ref().map(|(h, s)| (r.name.as_str(), *h, s)))
        .collect();
    let int8 = |name: &str| Field::new(name, DataType::Int64, true);
    let time = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        )
    };
    let longs = |f: &dyn Fn(&tocsin_history::Stats) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(kept.iter().map(|k| f(k.2))))
    };
    let times = |f: &dyn Fn(&tocsin_history::Stats) -> Option<i64>| -> ArrayRef {
        Arc::new(
            datafusion::arrow::array::TimestampMillisecondArray::from_iter(
                kept.iter().map(|k| f(k.2)),
            )
            .with_timezone("UTC"),
        )
    };
    (
        vec![
            utf8("table_name"),
            int8("horizon_seconds"),
            int8("rows"),
            int8("bytes"),
            int8("files"),
            int8("partitions"),
            time("oldest"),
            time("newest"),
            int8("pending_rows"),
            Field::new("flush_lag_seconds", DataType::Float64, true),
            utf8("error"),
        ],
        vec![
            strings(kept.iter().map(|k| Some(k.0))),
            Arc::new(Int64Array::from_iter_values(
                kept.iter().map(|k| k.1 / 1000),
            )),
            longs(&|s| s.rows as i64),
            longs(&|s| s.bytes as i64),
            longs(&|s| s.files as i64),
            longs(&|s| s.partitions as i64),
            times(&|s| s.oldest_ms),
            times(&|s| s.newest_ms),
            longs(&|s| s.pending_rows as i64),
            Arc::new(datafusion::arrow::array::Float64Array::from_iter_values(
                kept.iter().map(|k| k.2.flush_lag_secs),
            )),
            strings(kept.iter().map(|k| k.2.failing.as_deref())),
        ],
    )
}
