//! `SHOW` and `EXPLAIN`: what the catalog holds and how it runs.

use crate::*;

impl Tocsin {
    /// `SHOW SINKS`: each sink with its delivery state.
    pub(crate) async fn show_sinks(&self) -> Result<StatementResult> {
        let catalog = self.catalog.lock().await;
        let sinks = self.sinks();
        let rows = catalog
            .entries
            .values()
            .filter_map(|e| match &e.def {
                ObjectDef::Sink { connector, .. } => {
                    let st = sinks
                        .as_ref()
                        .map(|s| s.status(&e.name))
                        .unwrap_or_default();
                    Some(vec![
                        Some(e.name.clone()),
                        Some(connector.clone()),
                        Some(st.queued.to_string()),
                        Some(st.delivered.to_string()),
                        Some(st.failures.to_string()),
                        st.last_error,
                        Some(e.display_sql()),
                    ])
                }
                _ => None,
            })
            .collect();
        text_rows_nullable(
            &[
                "name",
                "connector",
                "queued",
                "delivered",
                "failures",
                "last_error",
                "sql",
            ],
            rows,
        )
    }

    /// `SHOW SILENCES`: each silence with its state now.
    pub(crate) async fn show_silences(&self) -> Result<StatementResult> {
        let catalog = self.catalog.lock().await;
        let now = self.engine.clock().now() as i64;
        let rows = catalog
            .entries
            .values()
            .filter_map(|e| match &e.def {
                ObjectDef::Silence(s) => Some(vec![
                    e.name.clone(),
                    s.matchers_text(),
                    match () {
                        _ if s.active(now) => "active",
                        _ if now < s.starts_ms => "pending",
                        _ => "expired",
                    }
                    .to_string(),
                    tocsin_engine::fmt_ms(s.starts_ms),
                    tocsin_engine::fmt_ms(s.until_ms),
                    s.comment.clone(),
                ]),
                _ => None,
            })
            .collect();
        text_rows(
            &["name", "matchers", "state", "starts", "until", "comment"],
            rows,
        )
    }

    /// `SHOW SOURCES`, `SHOW VIEWS`, `SHOW RULES`: names and statements; for rules also how far
    /// each one's output is behind the newest accepted row (`lag`, e.g. `0 ms`).
    pub(crate) async fn show(&self, kind: ObjectKind) -> Result<StatementResult> {
        let rows: Vec<Vec<String>> = {
            let catalog = self.catalog.lock().await;
            catalog
                .entries
                .values()
                .filter(|e| e.kind() == kind && !e.system)
                .map(|e| vec![e.name.clone(), e.display_sql()])
                .collect()
        };
        if kind == ObjectKind::Source || kind == ObjectKind::View {
            let history = self.history();
            let mut with = Vec::new();
            for r in rows {
                let h = history.as_ref().and_then(|h| h.get(&r[0])).map(|rel| {
                    rel.stats().summary(&crate::options::show_duration(
                        std::time::Duration::from_millis(rel.spec.horizon_ms as u64),
                    ))
                });
                let mut r: Vec<Option<String>> = r.into_iter().map(Some).collect();
                r.push(h);
                with.push(r);
            }
            return text_rows_nullable(&["name", "sql", "history"], with);
        }
        if kind != ObjectKind::Rule {
            return text_rows(&["name", "sql"], rows);
        }
        let names: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
        let lags = self.engine().lag(&names).await?;
        let rows = rows
            .into_iter()
            .zip(lags)
            .map(|(mut r, lag)| {
                r.push(lag.map_or_else(String::new, |ms| format!("{ms} ms")));
                r
            })
            .collect();
        text_rows(&["name", "sql", "lag"], rows)
    }

    /// `SHOW ALERTS`: the alert manager's current instances.
    pub(crate) async fn show_alerts(&self) -> Result<StatementResult> {
        self.show_system(
            "tocsin_alerts",
            SHOW_ALERTS,
            "SHOW ALERTS: alerts are kept by the alert manager of tocsin serve",
        )
        .await
    }

    /// `SHOW REPLICAS`.
    pub(crate) async fn show_replicas(&self) -> Result<StatementResult> {
        self.show_system(
            "tocsin_replicas",
            SHOW_REPLICAS,
            "SHOW REPLICAS: this server is not a replica (see --replica-id and --peers in docs/ha.md)",
        )
        .await
    }

    /// A `SHOW` that reads a relation tocsin keeps (`relation`, with `query`), or says why it
    /// has none.
    async fn show_system(
        &self,
        relation: &str,
        query: &str,
        missing: &str,
    ) -> Result<StatementResult> {
        if !self.catalog.lock().await.entries.contains_key(relation) {
            return Err(SqlError::unsupported(missing));
        }
        let query = match parser::parse(query)?.pop().map(|l| l.statement) {
            Some(Statement::Query { query }) => query,
            _ => return Err(SqlError::internal("SHOW query")),
        };
        let (schema, batches) = self.query(&query).await?;
        Ok(StatementResult::Rows { schema, batches })
    }

    /// `SHOW COLUMNS FROM name`.
    pub(crate) async fn show_columns(&self, name: String) -> Result<StatementResult> {
        let catalog = self.catalog.lock().await;
        let e = catalog
            .entries
            .get(&name)
            .filter(|e| e.is_relation())
            .ok_or_else(|| SqlError::plan(format!("relation \"{name}\" does not exist")))?;
        let rows = e
            .schema
            .fields()
            .iter()
            .map(|f| {
                vec![
                    f.name().clone(),
                    sql_type_name(f.data_type()),
                    f.is_nullable().to_string(),
                ]
            })
            .collect();
        text_rows(&["name", "type", "nullable"], rows)
    }

    /// `EXPLAIN RULE name` (and views, sources): the dataflow it runs as.
    pub(crate) async fn explain(
        &self,
        kind: Option<ObjectKind>,
        name: String,
    ) -> Result<StatementResult> {
        let catalog = self.catalog.lock().await;
        let e = catalog
            .entries
            .get(&name)
            .ok_or_else(|| SqlError::plan(format!("\"{name}\" does not exist")))?;
        if !e.is_relation() {
            return Err(SqlError::plan(format!(
                "\"{name}\" is a {}: it runs no dataflow (SHOW {}S shows it)",
                e.kind().as_str().to_lowercase(),
                e.kind().as_str()
            )));
        }
        if let Some(k) = kind {
            if k != e.kind() {
                return Err(SqlError::plan(format!(
                    "\"{name}\" is a {}",
                    e.kind().as_str().to_lowercase()
                )));
            }
        }
        // The engine shows the plan as it runs, with the aggregations it shares.
        let text = match (self.engine.explain(&name), e.plan()) {
            (Some(text), _) => text,
            (None, Some(p)) => p.explain(),
            (None, None) => Plan {
                node: Node::Source { name: name.clone() },
                schema: e.schema.clone(),
            }
            .explain(),
        };
        text_rows(
            &["plan"],
            text.lines().map(|l| vec![l.to_string()]).collect(),
        )
    }

    /// `EXPLAIN SELECT ...`: the dataflow a query would run as; when it reads a relation with
    /// history, also what it reads as an ad hoc query now (the history files it picks).
    pub(crate) async fn explain_query(&self, query: Box<Query>) -> Result<StatementResult> {
        let (plan, with_history) = {
            let catalog = self.catalog.lock().await;
            let plan = self.plan_continuous(&catalog, &query).await?;
            let refs = planner::referenced_tables(&query)?;
            let history = self.history();
            let with_history = catalog
                .named_relations(&refs)
                .iter()
                .any(|(n, _)| history.as_ref().is_some_and(|h| h.get(n).is_some()));
            (plan, with_history)
        };
        let mut lines: Vec<Vec<String>> = plan
            .explain()
            .lines()
            .map(|l| vec![l.to_string()])
            .collect();
        if with_history {
            let (ctx, query) = self.batch_session(&query, true).await?;
            let logical = planner::plan_query(&ctx, &query).await?;
            let physical = ctx.state().create_physical_plan(&logical).await?;
            lines.push(vec!["As an ad hoc query now, it reads:".to_string()]);
            let shown = datafusion::physical_plan::displayable(physical.as_ref())
                .indent(true)
                .to_string();
            lines.extend(shown.lines().map(|l| vec![format!("  {l}")]));
        }
        text_rows(&["plan"], lines)
    }
}
