//! `CREATE SOURCE`.

use crate::*;
use tocsin_connectors::source::Columns;

impl Tocsin {
    /// `CREATE SOURCE`: checks the connector and its options, creates the source and its companions.
    pub(crate) async fn create_source(
        &self,
        name: String,
        columns: Vec<ColumnDef>,
        connector: String,
        options: Options,
    ) -> Result<StatementResult> {
        let mut catalog = self.catalog.lock().await;
        exists_check(&catalog, &name)?;
        let kind = tocsin_connectors::registry::source(&connector).ok_or_else(|| {
            SqlError::plan(format!(
                "unknown connector {connector}: use {}",
                tocsin_connectors::registry::source_names()
            ))
        })?;
        let sql_options = options.clone();
        let opts = SourceOptions::parse(options, kind.as_ref())?;
        if opts.history.is_some() && self.history().is_none() {
            return Err(SqlError::plan(
                "history needs a data dir to keep its files in: run `tocsin serve`",
            ));
        }
        let (schema, companions) = match kind.columns() {
            Columns::Declared => (source_schema(&columns)?, Vec::new()),
            Columns::Derived if !columns.is_empty() => {
                return Err(SqlError::plan(format!(
                    "a {connector} source derives its columns from its options: leave out the column list"
                )))
            }
            Columns::Derived => {
                let d = kind.derive(&opts.connector)?;
                (d.schema, d.companions)
            }
            Columns::Labels => {
                let d = kind.derive(&opts.connector)?;
                let declared = label_columns(&columns)?;
                (tocsin_connectors::metrics::with_labels(&declared)?, d.companions)
            }
        };
        let companions: Vec<(String, SchemaRef)> = companions
            .into_iter()
            .map(|(suffix, s)| (format!("{name}{suffix}"), s))
            .collect();
        for (c, _) in &companions {
            exists_check(&catalog, c)?;
        }
        self.engine
            .create_source(&name, schema.clone(), opts.retain)
            .await?;
        for (i, (c, s)) in companions.iter().enumerate() {
            if let Err(e) = self.engine.create_source(c, s.clone(), opts.retain).await {
                for (made, _) in &companions[..i] {
                    let _ = self.engine.drop_object(made);
                }
                let _ = self.engine.drop_object(&name);
                return Err(e.into());
            }
        }
        let sql = source_sql(&name, &columns, &connector, &sql_options);
        for (c, s) in companions {
            catalog.register(CatalogEntry {
                name: c,
                schema: s,
                sql: sql.clone(),
                def: ObjectDef::Source {
                    connector: connector.clone(),
                    options: opts.clone(),
                    owner: Some(name.clone()),
                },
                system: false,
            });
        }
        Ok(catalog.register(CatalogEntry {
            name,
            schema,
            sql,
            def: ObjectDef::Source {
                connector,
                options: opts,
                owner: None,
            },
            system: false,
        }))
    }
}

/// The declared columns of a metrics source, before the four every one has: without the `ts`
/// that [`source_schema`] adds when it is missing.
fn label_columns(columns: &[ColumnDef]) -> Result<Vec<datafusion::arrow::datatypes::Field>> {
    if columns
        .iter()
        .any(|c| crate::parser::normalize(&c.name) == "ts")
    {
        return Err(SqlError::plan(
            "column \"ts\" is one of the metrics columns every such source has (metric, labels, value, ts): leave it out of the list",
        ));
    }
    let schema = source_schema(columns)?;
    Ok(schema
        .fields()
        .iter()
        .filter(|f| f.name() != "ts")
        .map(|f| f.as_ref().clone())
        .collect())
}
