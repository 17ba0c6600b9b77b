//! Rollup views: a view grouped by a `date_bin(...)` bucket of its one input's `ts`, named `ts`,
//! can keep `history`. A bucket's rows depend only on the input rows of that bucket, so once no
//! input row of a bucket can still change, the bucket's rows are final: they are computed once,
//! in batch over the input's history, and written to the view's history.
//!
//! - A source's rows are final once they are older than its retention (a row that arrives later
//!   is refused); a rollup's once they are written. So a bucket of a rollup over a source is
//!   final `width + retain` after it starts, and one over another rollup once that one has
//!   written every bucket it covers.
//! - An ad hoc query reads a rollup as one table: its history for the buckets before its
//!   written mark, and the view's query run over its input (itself one table) for the buckets
//!   from the mark on.
//!
//! Continuous rules and views over a rollup read its in-memory dataflow, as for any view.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::catalog::TableProvider;
use datafusion::datasource::provider_as_source;
use datafusion::datasource::ViewTable;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Query, SelectItem, SetExpr, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::*;

/// The table of a relation, built asynchronously (a rollup's is built over its input's).
type TableFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Arc<dyn TableProvider>>> + Send + 'a>,
>;

/// What makes a view a rollup.
#[derive(Clone, Debug, PartialEq)]
pub struct RollupDef {
    /// The one relation it reads.
    pub input: String,
    /// The bucket width.
    pub width_ms: i64,
    /// How long its rows are kept on disk.
    pub history: Duration,
    /// The view's query, run over the input for a range of buckets.
    pub query: Box<Query>,
}

fn refuse(why: &str) -> SqlError {
    SqlError::plan(format!(
        "history on a view needs a rollup: {why} (e.g. SELECT date_bin(INTERVAL '1 minute', ts) AS ts, host, avg(v) FROM src GROUP BY 1, host)"
    ))
}

fn literal_text(e: &Ast) -> Option<String> {
    match e {
        Ast::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        Ast::Interval(i) => {
            let v = literal_text(&i.value)?;
            Some(match &i.leading_field {
                Some(f) => format!("{v} {f}"),
                None => v,
            })
        }
        _ => None,
    }
}

/// The input and bucket width of a rollup view's query, or why it is not one.
pub fn shape(query: &Query) -> Result<(String, i64)> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(refuse("the query must be one SELECT"));
    };
    if query.with.is_some() || query.limit_clause.is_some() || query.order_by.is_some() {
        return Err(refuse(
            "the query must be one SELECT without WITH, ORDER BY or LIMIT",
        ));
    }
    if select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return Err(refuse("it must read one relation, without joins"));
    }
    let TableFactor::Table { name, .. } = &select.from[0].relation else {
        return Err(refuse("it must read one relation by name"));
    };
    let input = match name.0.last().and_then(|p| p.as_ident()) {
        Some(id) if id.quote_style.is_some() => id.value.clone(),
        Some(id) => id.value.to_lowercase(),
        None => return Err(refuse("it must read one relation by name")),
    };
    let (position, bucket) = select
        .projection
        .iter()
        .enumerate()
        .find_map(|(i, item)| match item {
            SelectItem::ExprWithAlias { expr, alias } if alias.value.eq_ignore_ascii_case("ts") => {
                Some((i + 1, expr))
            }
            _ => None,
        })
        .ok_or_else(|| refuse("its result needs a column ts = date_bin(INTERVAL '...', ts)"))?;
    let Ast::Function(f) = bucket else {
        return Err(refuse("its ts column must be date_bin(INTERVAL '...', ts)"));
    };
    let args: Vec<&Ast> = match &f.args {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let is_ts = |e: &Ast| match e {
        Ast::Identifier(i) => i.value.eq_ignore_ascii_case("ts"),
        Ast::CompoundIdentifier(p) => p.last().is_some_and(|i| i.value.eq_ignore_ascii_case("ts")),
        _ => false,
    };
    if !f.name.to_string().eq_ignore_ascii_case("date_bin") || args.len() != 2 || !is_ts(args[1]) {
        return Err(refuse(
            "its ts column must be date_bin(INTERVAL '...', ts), of the input's ts and without an origin",
        ));
    }
    let width = literal_text(args[0])
        .ok_or_else(|| refuse("the bucket width must be a literal interval"))?;
    let width_ms = crate::options::parse_duration(&width)?.as_millis() as i64;
    if width_ms <= 0 {
        return Err(refuse("the bucket width must be longer than 0"));
    }
    let grouped = match &select.group_by {
        GroupByExpr::Expressions(exprs, _) => exprs.iter().any(|g| {
            is_ts(g)
                || g.to_string() == bucket.to_string()
                || literal_text(g).is_some_and(|n| n == position.to_string())
        }),
        GroupByExpr::All(_) => true,
    };
    if !grouped {
        return Err(refuse("its GROUP BY must include the ts bucket"));
    }
    Ok((input, width_ms))
}

/// The query restricted to input rows with `ts` in `[lo, hi)` (`hi` open when `None`).
pub fn in_range(query: &Query, lo: i64, hi: Option<i64>) -> Result<Query> {
    let mut q = query.clone();
    let SetExpr::Select(select) = q.body.as_mut() else {
        return Err(SqlError::internal("a rollup is one SELECT"));
    };
    let mut cond = format!("ts >= '{}'", tocsin_engine::fmt_ms(lo));
    if let Some(hi) = hi {
        cond += &format!(" AND ts < '{}'", tocsin_engine::fmt_ms(hi));
    }
    let range = Parser::new(&GenericDialect {})
        .try_with_sql(&cond)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| SqlError::internal(e.to_string()))?;
    select.selection = Some(match select.selection.take() {
        Some(w) => Ast::BinaryOp {
            left: Box::new(Ast::Nested(Box::new(w))),
            op: BinaryOperator::And,
            right: Box::new(Ast::Nested(Box::new(range))),
        },
        None => range,
    });
    Ok(q)
}

/// The first bucket at or after `t`... rounded down: the start of `t`'s bucket.
pub fn bucket(t: i64, width_ms: i64) -> i64 {
    t.div_euclid(width_ms) * width_ms
}

impl Tocsin {
    /// The rollup definition of view `name`, if it is one with history.
    pub(crate) fn rollup_of(
        entries: &BTreeMap<String, CatalogEntry>,
        name: &str,
    ) -> Option<RollupDef> {
        match &entries.get(name)?.def {
            ObjectDef::View { rollup, .. } => rollup.clone(),
            _ => None,
        }
    }

    /// How long after a row's `ts` relation `name`'s rows stop changing: a source's retention,
    /// a rollup's width plus its input's.
    pub(crate) fn late_ms(entries: &BTreeMap<String, CatalogEntry>, name: &str) -> i64 {
        match entries.get(name).map(|e| &e.def) {
            Some(ObjectDef::Source { options, .. }) => options.retain.as_millis() as i64,
            Some(ObjectDef::View {
                rollup: Some(r), ..
            }) => r.width_ms + Self::late_ms(entries, &r.input),
            _ => 0,
        }
    }

    /// The sources an ad hoc read of `name` needs in memory: itself, or for a rollup with
    /// history, the sources under it.
    pub(crate) fn read_through(
        entries: &BTreeMap<String, CatalogEntry>,
        name: &str,
    ) -> Vec<String> {
        match Self::rollup_of(entries, name) {
            Some(r) => Self::read_through(entries, &r.input),
            None => vec![name.to_string()],
        }
    }

    /// The table an ad hoc query reads for relation `name`, given the window contents `peeked`
    /// at `time`: a source or view held in memory, a source with history (history below the
    /// window's boundary, then the window), or a rollup with history (its history below its
    /// written mark, then its query over its input from there on).
    pub(crate) fn table_for<'a>(
        &'a self,
        entries: &'a BTreeMap<String, CatalogEntry>,
        peeked: &'a std::collections::HashMap<String, (SchemaRef, Vec<WindowBatch>)>,
        name: &'a str,
        time: u64,
    ) -> TableFuture<'a> {
        Box::pin(async move {
            let history = self.history();
            let rel = history.as_ref().and_then(|h| h.get(name));
            let schema = entries
                .get(name)
                .map(|e| e.schema.clone())
                .ok_or_else(|| SqlError::plan(format!("relation \"{name}\" does not exist")))?;
            if let (Some(rel), Some(r)) = (&rel, Self::rollup_of(entries, name)) {
                // The files, pending rows and mark, taken together.
                let snapshot = rel.snapshot();
                let input = self.table_for(entries, peeked, &r.input, time).await?;
                let ctx = planner::batch_context(vec![(r.input.clone(), input)], time as i64)?;
                let plan = match snapshot.written_through {
                    // Nothing written yet: all of it is computed.
                    None => planner::plan_query(&ctx, &r.query).await?,
                    Some(mark) => {
                        let done = tocsin_history::HistoryTable::new(
                            schema.clone(),
                            rel.spec.ts,
                            snapshot,
                            Vec::new(),
                            mark,
                        );
                        let rest =
                            planner::plan_query(&ctx, &in_range(&r.query, mark, None)?).await?;
                        LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(done)), None)?
                            .union(rest)?
                            .build()?
                    }
                };
                return Ok(Arc::new(ViewTable::new(plan, None)) as Arc<dyn TableProvider>);
            }
            let (s, b) = peeked
                .get(name)
                .cloned()
                .unwrap_or_else(|| (schema.clone(), Vec::new()));
            match rel {
                Some(rel) => Ok(Arc::new(tocsin_history::HistoryTable::new(
                    s,
                    rel.spec.ts,
                    rel.snapshot(),
                    b,
                    time as i64 - rel.spec.late_ms + 1,
                )) as Arc<dyn TableProvider>),
                None => {
                    let ts = s.index_of("ts").ok();
                    Ok(Arc::new(WindowTable::new(s, ts, b)) as Arc<dyn TableProvider>)
                }
            }
        })
    }

    /// Writes the final buckets of every rollup with history: those that no input row can
    /// change any more, computed over the input's history, at most `chunk` of input time per
    /// rollup per call. Returns how many rollups moved on (more may be due).
    pub async fn roll_up(&self, chunk: Duration) -> Result<u64> {
        let Some(history) = self.history() else {
            return Ok(0);
        };
        let entries = self.catalog.lock().await.entries.clone();
        let now = self.engine.now() as i64;
        let mut written = 0;
        // Rollups over sources first, so that one over another rollup sees its newest buckets.
        let mut rollups: Vec<(usize, String, RollupDef)> = entries
            .keys()
            .filter_map(|n| {
                let r = Self::rollup_of(&entries, n)?;
                let mut depth = 0;
                let mut at = r.input.clone();
                while let Some(i) = Self::rollup_of(&entries, &at) {
                    depth += 1;
                    at = i.input;
                }
                Some((depth, n.clone(), r))
            })
            .collect();
        rollups.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, name, r) in rollups {
            let (Some(rel), Some(input)) = (history.get(&name), history.get(&r.input)) else {
                continue;
            };
            // Input rows before `edge` are final.
            let edge = match Self::rollup_of(&entries, &r.input) {
                Some(_) => match input.written_through() {
                    Some(w) => w,
                    // The input has not started writing.
                    None => continue,
                },
                None => now - input.spec.late_ms + 1,
            };
            let edge = bucket(edge, r.width_ms);
            let mark = match rel.written_through() {
                Some(m) => m,
                // A new rollup starts at its input's oldest row, or at the edge if that is
                // older: a late row may still arrive anywhere after the edge.
                None => {
                    let start = input
                        .oldest_ts()
                        .map_or(edge, |t| bucket(t, r.width_ms).min(edge));
                    rel.append_through(start, None);
                    start
                }
            };
            if edge <= mark {
                continue;
            }
            if now - input.spec.horizon_ms > mark {
                tracing::warn!(
                    "rollup {name} is behind its input's history ({} kept): its buckets from {} on may miss rows the input no longer has",
                    crate::options::show_duration(Duration::from_millis(input.spec.horizon_ms as u64)),
                    tocsin_engine::fmt_ms(mark)
                );
            }
            let upto = edge
                .min(bucket(mark + chunk.as_millis() as i64, r.width_ms).max(mark + r.width_ms));
            let input_table = tocsin_history::HistoryTable::new(
                input.spec.schema.clone(),
                input.spec.ts,
                input.snapshot(),
                Vec::new(),
                upto,
            );
            let ctx = planner::batch_context(
                vec![(
                    r.input.clone(),
                    Arc::new(input_table) as Arc<dyn TableProvider>,
                )],
                now,
            )?;
            let plan = planner::plan_query(&ctx, &in_range(&r.query, mark, Some(upto))?).await?;
            let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
            let schema = rel.spec.schema.clone();
            let arrow = |e: datafusion::arrow::error::ArrowError| {
                SqlError::internal(format!("rollup {name}: {e}"))
            };
            let mut rows = Vec::new();
            for b in batches {
                // The batch plan's columns are the view's, maybe with other nullability.
                rows.push(
                    RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(arrow)?,
                );
            }
            let rows = datafusion::arrow::compute::concat_batches(&schema, &rows).map_err(arrow)?;
            written += 1;
            rel.append_through(upto, Some(rows));
        }
        Ok(written)
    }
}
