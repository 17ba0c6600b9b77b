//! Lowering DataFusion's optimized logical plan into the engine's plan.
//!
//! Every construct is either translated faithfully or refused here, at CREATE time, with an
//! error naming it: a continuous query never gives a wrong answer at run time because of a
//! construct the engine does not understand.
//!
//! Comparisons with `now()` in a WHERE or HAVING conjunction become temporal filters: `x > now() -
//! d` (`now() < x + d`) is an upper bound at which the row is retracted, `x <= now() + d` a lower
//! bound at which it enters.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, NullEquality, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Distinct, Expr, ExprSchemable, JoinType, LogicalPlan, Operator,
};
use datafusion::physical_expr::create_physical_expr;
use tocsin_engine::plan::{AggFunc, Aggregate, JoinKind, MfpStep, Node, Plan, SortKey, TimeBound};
use tocsin_engine::row::batch_to_rows;

use crate::error::{Result, SqlError};
use crate::planner::ContinuousNow;

/// What the lowering needs to know of a name a query reads.
pub trait Relations {
    /// `Some(true)` for a source, `Some(false)` for a view or rule, `None` if unknown; with its schema.
    fn lookup(&self, name: &str) -> Option<(bool, SchemaRef)>;
}

fn arrow(schema: &DFSchemaRef) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

fn phys(expr: &Expr, schema: &DFSchema) -> Result<tocsin_engine::Expr> {
    Ok(create_physical_expr(
        expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?)
}

pub(crate) fn contains_now(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e {
            if f.func.name() == ContinuousNow::NAME {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn no_now(expr: &Expr, place: &str) -> Result<()> {
    if contains_now(expr) {
        return Err(SqlError::unsupported(format!(
            "now() in {place}: a continuous query can only compare a row's time with now(), as in WHERE ts > now() - INTERVAL '1 minute'; to show how old a value is, select a column such as max(ts) and compare it with now() in WHERE or HAVING"
        )));
    }
    Ok(())
}

/// Whether a projection keeps every input column, in order.
fn is_identity(step: &MfpStep, input: &SchemaRef) -> bool {
    let MfpStep::Project { exprs, .. } = step else {
        return false;
    };
    exprs.len() == input.fields().len()
        && exprs.iter().enumerate().all(|(i, e)| {
            e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                .is_some_and(|c| c.index() == i)
        })
}

/// Adds a stateless step on top of `input`, merging into an MFP that is already there.
/// A projection that keeps every column in order only renames them and adds no step.
fn with_step(input: Plan, step: MfpStep, schema: SchemaRef) -> Plan {
    if is_identity(&step, &input.schema) {
        return Plan {
            node: input.node,
            schema,
        };
    }
    match input.node {
        Node::Mfp {
            input: inner,
            mut steps,
        } => {
            steps.push(step);
            Plan {
                node: Node::Mfp {
                    input: inner,
                    steps,
                },
                schema,
            }
        }
        node => {
            let inner = Plan {
                node,
                schema: input.schema,
            };
            Plan {
                node: Node::Mfp {
                    input: Box::new(inner),
                    steps: vec![step],
                },
                schema,
            }
        }
    }
}

/// The constant part of `now() ± interval`, in milliseconds.
fn now_offset(e: &Expr) -> Result<i64> {
    let bad = || {
        SqlError::unsupported(format!(
            "{e}: compare a row's time with now() or now() plus or minus a constant interval"
        ))
    };
    match e {
        Expr::ScalarFunction(f) if f.func.name() == ContinuousNow::NAME => Ok(0),
        Expr::Alias(a) => now_offset(&a.expr),
        // Casts between timestamp types keep the instant; casts to dates or numbers do not.
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(_, _)) => {
            now_offset(&c.expr)
        }
        Expr::TryCast(c) if matches!(c.field.data_type(), DataType::Timestamp(_, _)) => {
            now_offset(&c.expr)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Plus,
            right,
        }) => {
            if contains_now(left) {
                Ok(now_offset(left)? + interval_ms(right).ok_or_else(bad)?)
            } else {
                Ok(interval_ms(left).ok_or_else(bad)? + now_offset(right)?)
            }
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Minus,
            right,
        }) if contains_now(left) => Ok(now_offset(left)? - interval_ms(right).ok_or_else(bad)?),
        _ => Err(bad()),
    }
}

fn interval_ms(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
                Some(i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000)
            }
            ScalarValue::IntervalDayTime(Some(i)) => {
                Some(i64::from(i.days) * 86_400_000 + i64::from(i.milliseconds))
            }
            ScalarValue::DurationSecond(Some(s)) => Some(s * 1000),
            ScalarValue::DurationMillisecond(Some(s)) => Some(*s),
            ScalarValue::DurationMicrosecond(Some(s)) => Some(s / 1000),
            ScalarValue::DurationNanosecond(Some(s)) => Some(s / 1_000_000),
            _ => None,
        },
        Expr::Cast(c) => interval_ms(&c.expr),
        _ => None,
    }
}

/// Turns one conjunct that mentions `now()` into bounds.
fn temporal(
    e: &Expr,
    schema: &DFSchema,
    lower: &mut Vec<TimeBound>,
    upper: &mut Vec<TimeBound>,
) -> Result<()> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(op, Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq) =>
        {
            let (x, now_side, op) = match (contains_now(left), contains_now(right)) {
                (false, true) => (left, right, *op),
                (true, false) => (right, left, op.swap().expect("comparisons swap")),
                _ => return Err(SqlError::unsupported(format!("{e}: now() on both sides of a comparison"))),
            };
            // x op now() + off
            let off = now_offset(now_side)?;
            match x.get_type(schema)? {
                DataType::Timestamp(TimeUnit::Millisecond | TimeUnit::Second, _) => {}
                other => {
                    return Err(SqlError::unsupported(format!(
                        "{e}: compare now() with a millisecond timestamp (such as ts or ts + INTERVAL '1 minute'), not a {other}"
                    )))
                }
            }
            let expr = phys(x, schema)?;
            match op {
                Operator::Gt => upper.push(TimeBound { expr, offset_ms: -off }),
                Operator::GtEq => upper.push(TimeBound { expr, offset_ms: 1 - off }),
                Operator::Lt => lower.push(TimeBound { expr, offset_ms: 1 - off }),
                _ => lower.push(TimeBound { expr, offset_ms: -off }),
            }
            Ok(())
        }
        Expr::Between(b) if !b.negated && !contains_now(&b.expr) => {
            let ge = Expr::BinaryExpr(BinaryExpr::new(b.expr.clone(), Operator::GtEq, b.low.clone()));
            let le = Expr::BinaryExpr(BinaryExpr::new(b.expr.clone(), Operator::LtEq, b.high.clone()));
            temporal(&ge, schema, lower, upper)?;
            temporal(&le, schema, lower, upper)
        }
        _ => Err(SqlError::unsupported(format!(
            "{e}: now() can only appear in comparisons joined by AND, as in ts > now() - INTERVAL '1 minute'"
        ))),
    }
}

fn literal_rows(values: &[Vec<Expr>], schema: &SchemaRef) -> Result<Vec<tocsin_engine::Row>> {
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (c, field) in schema.fields().iter().enumerate() {
        let mut scalars = Vec::new();
        for row in values {
            match &row[c] {
                Expr::Literal(v, _) => scalars.push(v.cast_to(field.data_type())?),
                other => {
                    return Err(SqlError::unsupported(format!(
                        "non-constant expression {other} in VALUES"
                    )))
                }
            }
        }
        columns.push(if scalars.is_empty() {
            datafusion::arrow::array::new_empty_array(field.data_type())
        } else {
            ScalarValue::iter_to_array(scalars)?
        });
    }
    let opts = RecordBatchOptions::new().with_row_count(Some(values.len()));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &opts)
        .map_err(|e| SqlError::plan(e.to_string()))?;
    Ok(batch_to_rows(&batch, None)?)
}

/// A constant argument of an aggregate, such as a percentile or a separator.
fn constant(e: &Expr, what: &str, of: &str) -> Result<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Ok(v.clone()),
        Expr::Cast(c) => Ok(constant(&c.expr, what, of)?.cast_to(c.field.data_type())?),
        other => Err(SqlError::unsupported(format!(
            "{of}: the {what} must be a constant, not {other}"
        ))),
    }
}

/// The fraction of `percentile_cont(p)` and the like: a constant in [0, 1], counted from the
/// top for `WITHIN GROUP (ORDER BY v DESC)`.
fn fraction(e: &Expr, descending: bool, of: &str) -> Result<u64> {
    let p = match constant(e, "percentile", of)?.cast_to(&DataType::Float64)? {
        ScalarValue::Float64(Some(p)) if (0.0..=1.0).contains(&p) => p,
        other => {
            return Err(SqlError::unsupported(format!(
                "{of}: the percentile must be between 0 and 1, not {other}"
            )))
        }
    };
    Ok(if descending { 1.0 - p } else { p }.to_bits())
}

/// Lowers one aggregate call, adding the input columns it reads to `pre` (the reduce's input,
/// after the group keys).
fn aggregate(f: &AggregateFunction, pre: &mut Vec<Expr>) -> Result<Aggregate> {
    let AggregateFunction { func, params } = f;
    let name = func.name().to_lowercase();
    let of = format!("{name}()");
    if params.null_treatment.is_some() {
        return Err(SqlError::unsupported(
            "IGNORE NULLS / RESPECT NULLS on aggregates",
        ));
    }
    for a in &params.args {
        no_now(a, "an aggregate's argument")?;
    }
    // FILTER (WHERE c) passes the argument only on rows where c is true: every aggregate but
    // first_value and last_value skips the NULL it gets elsewhere.
    let filtered = |e: &Expr| -> Result<Expr> {
        let Some(c) = &params.filter else {
            return Ok(e.clone());
        };
        no_now(c, "an aggregate's FILTER")?;
        Ok(datafusion::logical_expr::when((**c).clone(), e.clone()).end()?)
    };
    if params.filter.is_some() && matches!(name.as_str(), "first_value" | "last_value") {
        return Err(SqlError::unsupported(format!(
            "FILTER (WHERE ...) on {name}: put the condition in WHERE, or in a view the rule reads"
        )));
    }
    let mut push = |e: Expr| {
        pre.push(e);
        pre.len() - 1
    };
    let descending = params.order_by.first().is_some_and(|s| !s.asc);
    let args = params.args.as_slice();
    let (func, arg) = match (name.as_str(), args) {
        ("rate", [counter, ts]) => {
            // The time as epoch milliseconds (type coercion made it a millisecond timestamp).
            let ts = push(Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(ts.clone()),
                DataType::Int64,
            )));
            (AggFunc::Rate { ts }, filtered(counter)?)
        }
        ("rate", _) => {
            return Err(SqlError::unsupported(
                "rate takes two arguments: rate(counter, ts)",
            ))
        }
        ("percentile_cont" | "quantile_cont", [v, p]) => (
            AggFunc::PercentileCont {
                p: fraction(p, descending, &of)?,
            },
            filtered(v)?,
        ),
        ("approx_percentile_cont", [v, p]) => (
            AggFunc::ApproxPercentile {
                p: fraction(p, descending, &of)?,
            },
            filtered(v)?,
        ),
        ("string_agg", [v, sep]) => {
            let sep = match constant(sep, "separator", &of)? {
                ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                    s.unwrap_or_default()
                }
                other => {
                    return Err(SqlError::unsupported(format!(
                        "{of}: the separator must be text, not {other}"
                    )))
                }
            };
            let order = sort_keys_of(&params.order_by, false, |e| Ok(push(e.clone())))?;
            (AggFunc::StringAgg { sep, order }, filtered(v)?)
        }
        (regr, [y, x]) if regr.starts_with("regr_") => {
            use tocsin_engine::plan::RegrStat;
            let stat = match regr {
                "regr_slope" => RegrStat::Slope,
                "regr_intercept" => RegrStat::Intercept,
                "regr_count" => RegrStat::Count,
                "regr_r2" => RegrStat::R2,
                "regr_avgx" => RegrStat::AvgX,
                "regr_avgy" => RegrStat::AvgY,
                "regr_sxx" => RegrStat::Sxx,
                "regr_syy" => RegrStat::Syy,
                "regr_sxy" => RegrStat::Sxy,
                other => return Err(SqlError::unsupported(format!("aggregate function {other}"))),
            };
            let x = push(x.clone());
            (AggFunc::Regr { stat, x }, filtered(y)?)
        }
        (_, [] | [_]) => {
            let arg = match args {
                [a] => a.clone(),
                _ => Expr::Literal(ScalarValue::Int64(Some(1)), None),
            };
            let func = match name.as_str() {
                "count" => AggFunc::Count,
                "sum" => AggFunc::Sum,
                "avg" | "mean" => AggFunc::Avg,
                "var" | "var_samp" | "var_sample" | "variance" | "var_pop" | "var_population"
                | "stddev" | "stddev_samp" | "stddev_pop" => AggFunc::Var {
                    sample: !name.ends_with("_pop") && !name.ends_with("_population"),
                    sqrt: name.starts_with("stddev"),
                },
                "min" => AggFunc::Min,
                "max" => AggFunc::Max,
                "bool_and" => AggFunc::BoolAnd,
                "bool_or" => AggFunc::BoolOr,
                "median" => AggFunc::Median,
                "first_value" | "last_value" => {
                    AggFunc::First(sort_keys_of(&params.order_by, name == "last_value", |e| {
                        Ok(push(e.clone()))
                    })?)
                }
                "approx_median" | "approx_distinct" | "approx_percentile_cont_with_weight" => {
                    return Err(SqlError::unsupported(format!(
                        "aggregate function {name}: use median(v), count(DISTINCT v) or approx_percentile_cont(p) WITHIN GROUP (ORDER BY v)"
                    )))
                }
                "array_agg" => {
                    return Err(SqlError::unsupported(
                        "aggregate function array_agg: a continuous query's columns are scalars; use string_agg(v, ',' ORDER BY v)",
                    ))
                }
                other => {
                    return Err(SqlError::unsupported(format!("aggregate function {other}")))
                }
            };
            (func, filtered(&arg)?)
        }
        (_, _) => {
            return Err(SqlError::unsupported(format!(
                "aggregate {name} with {} arguments",
                args.len()
            )))
        }
    };
    Ok(Aggregate {
        func,
        arg: push(arg),
        distinct: params.distinct,
    })
}

/// The column of a join key: a plain column of the side, or an expression added to `extra`
/// (evaluated into a column after the side's own).
fn key_column(e: &Expr, side: &DFSchema, extra: &mut Vec<Expr>) -> Result<usize> {
    if let Expr::Column(c) = e {
        return Ok(side.index_of_column(c)?);
    }
    extra.push(e.clone());
    Ok(side.fields().len() + extra.len() - 1)
}

/// A join side with its expression keys evaluated into extra columns, and its schema.
fn extended(plan: Plan, side: &DFSchemaRef, extra: &[Expr], tag: &str) -> Result<(Plan, DFSchema)> {
    if extra.is_empty() {
        return Ok((plan, side.as_ref().clone()));
    }
    let fields = extra
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(Field::new(
                format!("\u{0}key_{tag}{i}"),
                e.get_type(side.as_ref())?,
                true,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let ext = side.join(&DFSchema::from_unqualified_fields(
        fields.into(),
        Default::default(),
    )?)?;
    let mut exprs = (0..side.fields().len())
        .map(|i| phys(&Expr::Column(side.columns()[i].clone()), side))
        .collect::<Result<Vec<_>>>()?;
    for e in extra {
        exprs.push(phys(e, side)?);
    }
    let schema = arrow(&Arc::new(ext.clone()));
    Ok((
        with_step(
            plan,
            MfpStep::Project {
                exprs,
                schema: schema.clone(),
            },
            schema,
        ),
        ext,
    ))
}

/// Sort keys for `exprs`, each expression's column given by `column`; `flip` reverses the
/// order (`last_value` is the first value in the reversed order).
fn sort_keys_of(
    exprs: &[datafusion::logical_expr::SortExpr],
    flip: bool,
    mut column: impl FnMut(&Expr) -> Result<usize>,
) -> Result<Vec<SortKey>> {
    exprs
        .iter()
        .map(|s| {
            no_now(&s.expr, "ORDER BY")?;
            Ok(SortKey {
                column: column(&s.expr)?,
                descending: s.asc == flip,
                nulls_first: s.nulls_first != flip,
            })
        })
        .collect()
}

/// Keeps the columns `keep` of `plan`, whose schema is `df`, as `schema`.
fn keep_columns(plan: Plan, df: &DFSchema, keep: Vec<usize>, schema: SchemaRef) -> Result<Plan> {
    let exprs = keep
        .into_iter()
        .map(|i| phys(&Expr::Column(df.columns()[i].clone()), df))
        .collect::<Result<Vec<_>>>()?;
    Ok(with_step(
        plan,
        MfpStep::Project {
            exprs,
            schema: schema.clone(),
        },
        schema,
    ))
}

/// `ORDER BY exprs OFFSET offset LIMIT limit` over `input`.
fn top_k(
    input: &LogicalPlan,
    exprs: &[datafusion::logical_expr::SortExpr],
    offset: usize,
    limit: usize,
    schema: SchemaRef,
    rels: &dyn Relations,
) -> Result<Plan> {
    let df = input.schema();
    let mut extra = Vec::new();
    let order = sort_keys_of(exprs, false, |e| key_column(e, df, &mut extra))?;
    let (inner, ext) = extended(lower(input, rels)?, df, &extra, "s")?;
    let plan = Plan {
        node: Node::TopK {
            input: Box::new(inner),
            group: Vec::new(),
            order,
            offset,
            limit,
        },
        schema: arrow(&Arc::new(ext.clone())),
    };
    if extra.is_empty() {
        return Ok(Plan {
            node: plan.node,
            schema,
        });
    }
    keep_columns(plan, &ext, (0..df.fields().len()).collect(), schema)
}

/// The `k` of a `WHERE rn <= k` (or `rn < k + 1`, `rn = 1`) on a `row_number()` of `w`: the rows
/// it keeps are the first `k` of each partition, so only those need numbering.
fn row_number_limit(predicate: &Expr, w: &datafusion::logical_expr::Window) -> Option<usize> {
    use datafusion::logical_expr::expr::WindowFunction;
    let in_width = w.input.schema().fields().len();
    let mut best: Option<usize> = None;
    for c in split_conjunction(predicate) {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = c else {
            continue;
        };
        let (Expr::Column(col), Expr::Literal(v, _)) = (left.as_ref(), right.as_ref()) else {
            continue;
        };
        let Ok(ScalarValue::UInt64(Some(k))) = v.cast_to(&DataType::UInt64) else {
            continue;
        };
        let Ok(i) = w.schema.index_of_column(col) else {
            continue;
        };
        let Some(e) = i.checked_sub(in_width).and_then(|j| w.window_expr.get(j)) else {
            continue;
        };
        let Expr::WindowFunction(wf) = e.clone().unalias_nested().data else {
            continue;
        };
        let WindowFunction { fun, .. } = wf.as_ref();
        if fun.name() != "row_number" {
            continue;
        }
        let k = match op {
            Operator::LtEq => k as usize,
            Operator::Lt => (k as usize).saturating_sub(1),
            Operator::Eq if k == 1 => 1,
            _ => continue,
        };
        best = Some(best.map_or(k, |b| b.min(k)));
    }
    // `lead` looks past the first k rows.
    let leads = w.window_expr.iter().any(|e| {
        matches!(e.clone().unalias_nested().data, Expr::WindowFunction(wf) if wf.fun.name() == "lead")
    });
    best.filter(|_| !leads)
}

/// A value of `DataType` `t` as the engine holds it.
fn datum(v: &ScalarValue, t: &DataType) -> Result<tocsin_engine::row::Datum> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("v", t.clone(), true)]));
    let rows = literal_rows(&[vec![Expr::Literal(v.clone(), None)]], &schema)?;
    Ok(rows[0][0].clone())
}

/// Window functions; with `limit`, only the first `limit` rows of each partition are kept
/// (see [`row_number_limit`]).
fn lower_window(
    w: &datafusion::logical_expr::Window,
    limit: Option<usize>,
    rels: &dyn Relations,
) -> Result<Plan> {
    use datafusion::logical_expr::expr::WindowFunction;
    use tocsin_engine::plan::WindowFunc;
    let df = w.input.schema();
    let mut extra: Vec<Expr> = Vec::new();
    let mut shape: Option<(Vec<Expr>, Vec<datafusion::logical_expr::SortExpr>)> = None;
    let mut partition = Vec::new();
    let mut order = Vec::new();
    let mut funcs = Vec::new();
    for e in &w.window_expr {
        let Expr::WindowFunction(wf) = e.clone().unalias_nested().data else {
            return Err(SqlError::internal(format!("window expression {e}")));
        };
        let WindowFunction { fun, params } = wf.as_ref();
        let name = fun.name().to_lowercase();
        if params.filter.is_some() || params.null_treatment.is_some() || params.distinct {
            return Err(SqlError::unsupported(format!(
                "FILTER, IGNORE NULLS or DISTINCT on the window function {name}"
            )));
        }
        match &shape {
            None => {
                for p in &params.partition_by {
                    no_now(p, "PARTITION BY")?;
                    partition.push(key_column(p, df, &mut extra)?);
                }
                order = sort_keys_of(&params.order_by, false, |e| key_column(e, df, &mut extra))?;
                shape = Some((params.partition_by.clone(), params.order_by.clone()));
            }
            Some((p, o)) if *p == params.partition_by && *o == params.order_by => {}
            Some(_) => {
                return Err(SqlError::unsupported(
                    "window functions over different PARTITION BY or ORDER BY in one query: compute each in its own view",
                ))
            }
        }
        let arg = |i: usize, extra: &mut Vec<Expr>| -> Result<usize> {
            let a = params
                .args
                .get(i)
                .ok_or_else(|| SqlError::unsupported(format!("{name} needs an argument")))?;
            no_now(a, "a window function's argument")?;
            key_column(a, df, extra)
        };
        let func = match name.as_str() {
            "row_number" => WindowFunc::RowNumber,
            "rank" => WindowFunc::Rank,
            "dense_rank" => WindowFunc::DenseRank,
            "lag" | "lead" => {
                let col = arg(0, &mut extra)?;
                let t = params.args[0].get_type(df.as_ref())?;
                let offset = match params.args.get(1) {
                    None => 1,
                    Some(o) => match constant(o, "offset", &name)?.cast_to(&DataType::Int64)? {
                        ScalarValue::Int64(Some(o)) => o,
                        other => {
                            return Err(SqlError::unsupported(format!(
                                "{name}: the offset must be a whole number, not {other}"
                            )))
                        }
                    },
                };
                let default = match params.args.get(2) {
                    None => tocsin_engine::row::Datum::Null,
                    Some(d) => datum(&constant(d, "default", &name)?.cast_to(&t)?, &t)?,
                };
                WindowFunc::Shift {
                    arg: col,
                    offset: if name == "lag" { offset } else { -offset },
                    default,
                }
            }
            "first_value" if params.window_frame.start_bound.is_unbounded() => {
                WindowFunc::FirstValue {
                    arg: arg(0, &mut extra)?,
                }
            }
            other if matches!(fun, datafusion::logical_expr::WindowFunctionDefinition::AggregateUDF(_)) => {
                return Err(SqlError::unsupported(format!(
                    "the aggregate {other} as a window function (OVER): aggregate with GROUP BY in a view and join it back"
                )))
            }
            other => {
                return Err(SqlError::unsupported(format!(
                    "the window function {other} (row_number, rank, dense_rank, lag, lead and first_value are maintained)"
                )))
            }
        };
        funcs.push(func);
    }
    let (mut inner, ext) = extended(lower(&w.input, rels)?, df, &extra, "w")?;
    if let Some(k) = limit {
        inner = Plan {
            node: Node::TopK {
                input: Box::new(inner),
                group: partition.clone(),
                order: order.clone(),
                offset: 0,
                limit: k,
            },
            schema: arrow(&Arc::new(ext.clone())),
        };
    }
    let ext_width = ext.fields().len();
    let nf = funcs.len();
    let win_fields: Vec<Field> = w
        .schema
        .fields()
        .iter()
        .skip(df.fields().len())
        .enumerate()
        .map(|(i, f)| Field::new(format!("\u{0}win{i}"), f.data_type().clone(), true))
        .collect();
    let out_df = ext.join(&DFSchema::from_unqualified_fields(
        win_fields.into(),
        Default::default(),
    )?)?;
    let out_schema = arrow(&Arc::new(out_df.clone()));
    let plan = Plan {
        node: Node::Window {
            input: Box::new(inner),
            partition,
            order,
            funcs,
        },
        schema: out_schema.clone(),
    };
    let schema = arrow(&w.schema);
    if extra.is_empty() {
        return Ok(Plan {
            node: plan.node,
            schema,
        });
    }
    let keep: Vec<usize> = (0..df.fields().len())
        .chain(ext_width..ext_width + nf)
        .collect();
    keep_columns(plan, &out_df, keep, schema)
}

/// Lowers an optimized logical plan.
pub fn lower(plan: &LogicalPlan, rels: &dyn Relations) -> Result<Plan> {
    let schema = arrow(plan.schema());
    match plan {
        LogicalPlan::TableScan(scan) => {
            let name = scan.table_name.table().to_string();
            let (is_source, full) = rels
                .lookup(&name)
                .ok_or_else(|| SqlError::plan(format!("relation \"{name}\" does not exist")))?;
            if scan.fetch.is_some() {
                return Err(SqlError::unsupported("LIMIT in a continuous query"));
            }
            let node = if is_source {
                Node::Source { name }
            } else {
                Node::Relation { name }
            };
            let mut out = Plan {
                node,
                schema: full.clone(),
            };
            if let Some(proj) = &scan.projection {
                let full_df = DFSchema::try_from(full.as_ref().clone())?;
                let exprs = proj
                    .iter()
                    .map(|i| phys(&Expr::Column(full_df.columns()[*i].clone()), &full_df))
                    .collect::<Result<Vec<_>>>()?;
                out = with_step(
                    out,
                    MfpStep::Project {
                        exprs,
                        schema: schema.clone(),
                    },
                    schema.clone(),
                );
            }
            if !scan.filters.is_empty() {
                return Err(SqlError::internal("filters pushed into a scan"));
            }
            Ok(out)
        }
        LogicalPlan::Projection(p) => {
            for e in &p.expr {
                no_now(e, "a SELECT list")?;
            }
            let input = lower(&p.input, rels)?;
            let exprs = p
                .expr
                .iter()
                .map(|e| phys(e, p.input.schema()))
                .collect::<Result<Vec<_>>>()?;
            Ok(with_step(
                input,
                MfpStep::Project {
                    exprs,
                    schema: schema.clone(),
                },
                schema,
            ))
        }
        LogicalPlan::Filter(f) => {
            let input = match f.input.as_ref() {
                LogicalPlan::Window(w) => lower_window(w, row_number_limit(&f.predicate, w), rels)?,
                other => lower(other, rels)?,
            };
            let in_schema = f.input.schema();
            let (timed, plain): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&f.predicate)
                .into_iter()
                .partition(|e| contains_now(e));
            let mut out = input;
            if !plain.is_empty() {
                let pred = plain
                    .into_iter()
                    .cloned()
                    .reduce(Expr::and)
                    .expect("non-empty");
                out = with_step(
                    out,
                    MfpStep::Filter(phys(&pred, in_schema)?),
                    schema.clone(),
                );
            }
            if !timed.is_empty() {
                let (mut lower_b, mut upper_b) = (Vec::new(), Vec::new());
                for e in timed {
                    temporal(e, in_schema, &mut lower_b, &mut upper_b)?;
                }
                out = with_step(
                    out,
                    MfpStep::Temporal {
                        lower: lower_b,
                        upper: upper_b,
                    },
                    schema.clone(),
                );
            }
            Ok(out)
        }
        LogicalPlan::Aggregate(a) => {
            let in_df = a.input.schema();
            let mut pre: Vec<Expr> = Vec::new();
            for g in &a.group_expr {
                if matches!(g, Expr::GroupingSet(_)) {
                    return Err(SqlError::unsupported("GROUPING SETS, CUBE and ROLLUP"));
                }
                no_now(g, "GROUP BY")?;
                pre.push(g.clone());
            }
            let keys = pre.len();
            let mut aggs = Vec::new();
            for ae in &a.aggr_expr {
                let Expr::AggregateFunction(f) = ae.clone().unalias_nested().data else {
                    return Err(SqlError::internal(format!("aggregate expression {ae}")));
                };
                aggs.push(aggregate(&f, &mut pre)?);
            }
            let input = lower(&a.input, rels)?;
            let fields = pre
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    Ok(Field::new(
                        format!("c{i}"),
                        e.get_type(in_df.as_ref())?,
                        true,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let pre_schema: SchemaRef = Arc::new(Schema::new(fields));
            let exprs = pre
                .iter()
                .map(|e| phys(e, in_df))
                .collect::<Result<Vec<_>>>()?;
            let input = with_step(
                input,
                MfpStep::Project {
                    exprs,
                    schema: pre_schema.clone(),
                },
                pre_schema,
            );
            Ok(Plan {
                node: Node::Reduce {
                    input: Box::new(input),
                    keys,
                    aggs,
                },
                schema,
            })
        }
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let keys = input.schema().fields().len();
            let input = lower(input, rels)?;
            Ok(Plan {
                node: Node::Reduce {
                    input: Box::new(input),
                    keys,
                    aggs: Vec::new(),
                },
                schema,
            })
        }
        LogicalPlan::Join(j) => {
            let kind = match j.join_type {
                JoinType::Inner => JoinKind::Inner,
                JoinType::Left => JoinKind::Left,
                JoinType::Right => JoinKind::Right,
                JoinType::Full => JoinKind::Full,
                JoinType::LeftSemi => JoinKind::Semi,
                JoinType::LeftAnti if j.null_aware => JoinKind::NotIn,
                JoinType::LeftAnti => JoinKind::Anti,
                JoinType::LeftMark | JoinType::RightMark => {
                    return Err(SqlError::unsupported(
                        "IN / EXISTS subqueries under OR or NOT (...): write each as a condition joined by AND, or UNION the cases",
                    ))
                }
                other => {
                    return Err(SqlError::unsupported(format!(
                        "{} JOIN",
                        other.to_string().to_uppercase()
                    )))
                }
            };
            if j.null_equality == NullEquality::NullEqualsNull {
                return Err(SqlError::unsupported("joins where NULL equals NULL"));
            }
            if kind == JoinKind::NotIn && (j.on.len() != 1 || j.filter.is_some()) {
                return Err(SqlError::unsupported(
                    "NOT IN over several columns or a correlated subquery: use NOT EXISTS",
                ));
            }
            let (l_df, r_df) = (j.left.schema(), j.right.schema());
            // Keys that are expressions become extra columns at the end of their side.
            let mut left_keys = Vec::new();
            let mut right_keys = Vec::new();
            let (mut l_extra, mut r_extra) = (Vec::new(), Vec::new());
            for (l, r) in &j.on {
                no_now(l, "a join condition")?;
                no_now(r, "a join condition")?;
                left_keys.push(key_column(l, l_df, &mut l_extra)?);
                right_keys.push(key_column(r, r_df, &mut r_extra)?);
            }
            let (left, l_ext) = extended(lower(&j.left, rels)?, l_df, &l_extra, "l")?;
            let (right, r_ext) = extended(lower(&j.right, rels)?, r_df, &r_extra, "r")?;
            let pair_df = l_ext.join(&r_ext)?;
            let filter = match &j.filter {
                None => Vec::new(),
                Some(f) => {
                    no_now(f, "a join condition")?;
                    vec![MfpStep::Filter(phys(f, &pair_df)?)]
                }
            };
            let (lw, lw_ext) = (l_df.fields().len(), l_ext.fields().len());
            let out_df = if kind.keeps_right() { pair_df } else { l_ext };
            let joined = Plan {
                node: Node::Join {
                    left: Box::new(left),
                    right: Box::new(right),
                    left_keys,
                    right_keys,
                    kind,
                    filter,
                },
                schema: arrow(&Arc::new(out_df.clone())),
            };
            if l_extra.is_empty() && r_extra.is_empty() {
                return Ok(Plan {
                    node: joined.node,
                    schema,
                });
            }
            // Leave the key columns out again.
            let mut keep: Vec<usize> = (0..lw).collect();
            if kind.keeps_right() {
                keep.extend(lw_ext..lw_ext + r_df.fields().len());
            }
            keep_columns(joined, &out_df, keep, schema)
        }
        LogicalPlan::Union(u) => {
            let inputs = u
                .inputs
                .iter()
                .map(|i| lower(i, rels))
                .collect::<Result<Vec<_>>>()?;
            Ok(Plan {
                node: Node::Union { inputs },
                schema,
            })
        }
        LogicalPlan::SubqueryAlias(s) => {
            let inner = lower(&s.input, rels)?;
            Ok(Plan {
                node: inner.node,
                schema,
            })
        }
        LogicalPlan::Sort(s) => match s.fetch {
            // A maintained result is a set of rows; ordering it changes nothing.
            None => lower(&s.input, rels),
            Some(limit) => top_k(&s.input, &s.expr, 0, limit, schema, rels),
        },
        LogicalPlan::Limit(l) => {
            use datafusion::logical_expr::{FetchType, SkipType};
            let (SkipType::Literal(offset), FetchType::Literal(fetch)) =
                (l.get_skip_type()?, l.get_fetch_type()?)
            else {
                return Err(SqlError::unsupported(
                    "LIMIT and OFFSET must be constants in a continuous query",
                ));
            };
            let LogicalPlan::Sort(sort) = l.input.as_ref() else {
                return Err(SqlError::unsupported(
                    "LIMIT without ORDER BY in a continuous query: it would keep arbitrary rows; add ORDER BY",
                ));
            };
            let limit = fetch.unwrap_or(usize::MAX / 2);
            top_k(&sort.input, &sort.expr, offset, limit, schema, rels)
        }
        LogicalPlan::Window(w) => lower_window(w, None, rels),
        LogicalPlan::Values(v) => Ok(Plan {
            node: Node::Constant {
                rows: literal_rows(&v.values, &schema)?,
            },
            schema,
        }),
        LogicalPlan::EmptyRelation(e) => {
            let rows = if e.produce_one_row {
                vec![Vec::new().into_boxed_slice()]
            } else {
                Vec::new()
            };
            Ok(Plan {
                node: Node::Constant { rows },
                schema,
            })
        }
        LogicalPlan::Unnest(_) => Err(SqlError::unsupported("UNNEST")),
        LogicalPlan::RecursiveQuery(_) => Err(SqlError::unsupported("recursive queries")),
        LogicalPlan::Subquery(_) => Err(SqlError::unsupported("correlated subqueries")),
        LogicalPlan::Repartition(r) => lower(&r.input, rels),
        other => Err(SqlError::unsupported(format!(
            "{} in a continuous query",
            other.display()
        ))),
    }
}
