//! Queries rewritten the way PostgreSQL reads them before DataFusion plans them: functions in FROM,
//! their column names, and uncorrelated subqueries replaced by their results.

use super::*;

/// Scalar functions that may also stand in FROM as a one-row table.
pub(super) const FROM_FUNCTIONS: &[&str] = &[
    "string_to_array",
    "regexp_split_to_array",
    "parse_ident",
    "current_setting",
    "current_schema",
    "current_database",
    "version",
];

/// Table functions whose one column takes the name of the table alias.
pub(super) fn one_column_function(name: &str) -> bool {
    FROM_FUNCTIONS.contains(&name) || matches!(name, "generate_series" | "range")
}

/// Rewrites a query the way PostgreSQL reads it before DataFusion plans it: a one-column function
/// in FROM with an alias and no column list gets its column named after the alias.
pub fn rewrite(query: &mut Query) {
    function_aliases(query);
}

/// The most rows an uncorrelated subquery may return to be replaced by its values.
pub(super) const INLINE_ROWS: usize = 10_000;

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
pub(super) async fn evaluate(
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

pub(super) fn function_aliases(query: &mut Query) {
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
pub(super) struct ScalarInFrom {
    pub(super) name: &'static str,
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
