//! `CREATE VIEW` and `CREATE RULE`: continuous queries planned into dataflows.

use crate::*;

impl Tocsin {
    /// `CREATE VIEW`: plans the query as a continuous dataflow.
    pub(crate) async fn create_view(
        &self,
        name: String,
        query: Box<Query>,
        options: Options,
    ) -> Result<StatementResult> {
        let mut catalog = self.catalog.lock().await;
        exists_check(&catalog, &name)?;
        let plan = self.plan_continuous(&catalog, &query).await?;
        let rollup = match options.iter().find(|(k, _)| k == "history") {
            Some((_, h)) => Some(self.rollup_def(&catalog, &query, h)?),
            None => None,
        };
        if rollup.is_some() && plan.schema.index_of("ts").is_err() {
            return Err(SqlError::plan("history on a view needs a ts column"));
        }
        self.engine.create_relation(&name, plan.clone()).await?;
        let sql = format!(
            "CREATE VIEW {} AS {query}{}",
            quote_ident(&name),
            options_sql(&options)
        );
        Ok(catalog.register(CatalogEntry {
            name,
            schema: plan.schema.clone(),
            sql,
            def: ObjectDef::View {
                plan: Arc::new(plan),
                rollup,
            },
            system: false,
        }))
    }

    /// Checks that a view with `history` is a rollup over a relation that keeps history.
    fn rollup_def(
        &self,
        catalog: &Catalog,
        query: &Query,
        history: &str,
    ) -> Result<crate::rollup::RollupDef> {
        let horizon = crate::options::parse_duration(history)?;
        if self.history().is_none() {
            return Err(SqlError::plan(
                "history needs a data dir to keep its files in: run `tocsin serve`",
            ));
        }
        let (input, width_ms) = crate::rollup::shape(query)?;
        let keeps_history = match catalog.entries.get(&input).map(|e| &e.def) {
            Some(ObjectDef::Source { options, .. }) => options.history.is_some(),
            Some(ObjectDef::View { rollup, .. }) => rollup.is_some(),
            _ => false,
        };
        if !keeps_history {
            return Err(SqlError::plan(format!(
                "history on a rollup is computed from its input's history: give \"{input}\" history too (a source WITH (history = ...), or a rollup view with history)"
            )));
        }
        if horizon.as_millis() as i64 <= width_ms {
            return Err(SqlError::plan(format!(
                "history ({}) must be longer than the bucket ({})",
                crate::options::show_duration(horizon),
                crate::options::show_duration(std::time::Duration::from_millis(width_ms as u64))
            )));
        }
        Ok(crate::rollup::RollupDef {
            input,
            width_ms,
            history: horizon,
            query: Box::new(query.clone()),
        })
    }

    /// `CREATE RULE`: a continuous query whose rows are alerts, with its options and sinks checked.
    pub(crate) async fn create_rule(
        &self,
        name: String,
        query: Box<Query>,
        options: Options,
    ) -> Result<StatementResult> {
        let mut catalog = self.catalog.lock().await;
        exists_check(&catalog, &name)?;
        let sql_options = options.clone();
        let opts = RuleOptions::parse(options)?;
        let plan = self.plan_continuous(&catalog, &query).await?;
        if let Some(labels) = &opts.labels {
            for l in labels {
                if plan.schema.index_of(l).is_err() {
                    return Err(SqlError::plan(format!(
                        "label \"{l}\" is not a column of the rule's result"
                    )));
                }
            }
        }
        for sink in &opts.sinks {
            expect_kind(&catalog, sink, ObjectKind::Sink, "").map_err(|e| match e {
                None => SqlError::plan(format!(
                    "sink \"{sink}\" does not exist: create it first with CREATE SINK {sink} TO ..."
                )),
                Some(e) => e,
            })?;
        }
        for rule in &opts.inhibit {
            if *rule == name {
                return Err(SqlError::plan(format!(
                    "rule \"{name}\" cannot inhibit itself"
                )));
            }
            expect_kind(&catalog, rule, ObjectKind::Rule, "inhibit: ").map_err(|e| match e {
                None => SqlError::plan(format!(
                    "inhibit: rule \"{rule}\" does not exist: create the inhibiting rule first"
                )),
                Some(e) => e,
            })?;
        }
        let labels = alert_labels(&plan, &opts);
        self.engine.create_relation(&name, plan.clone()).await?;
        let sql = format!(
            "CREATE RULE {} AS {query}{}",
            quote_ident(&name),
            options_sql(&sql_options)
        );
        Ok(catalog.register(CatalogEntry {
            name,
            schema: plan.schema.clone(),
            sql,
            def: ObjectDef::Rule {
                plan: Arc::new(plan),
                options: opts,
                labels,
            },
            system: false,
        }))
    }
}

/// Checks that `name` is an object of `kind`: `Err(None)` when nothing has that name, an error
/// (its message after `prefix`) when something else does.
fn expect_kind(
    catalog: &Catalog,
    name: &str,
    kind: ObjectKind,
    prefix: &str,
) -> std::result::Result<(), Option<SqlError>> {
    match catalog.entries.get(name) {
        Some(e) if e.kind() == kind => Ok(()),
        Some(e) => Err(Some(SqlError::plan(format!(
            "{prefix}\"{name}\" is a {}, not a {}",
            e.kind().as_str().to_lowercase(),
            kind.as_str().to_lowercase()
        )))),
        None => Err(None),
    }
}
