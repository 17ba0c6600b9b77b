//! The engine's plan: a small tree of relational operators that the SQL frontend lowers
//! DataFusion's optimized logical plan into, and that [`crate::render`] turns into a dataflow.
//!
//! Every node carries the Arrow schema of the rows it produces. Scalar expressions are DataFusion
//! physical expressions, bound to the schema of the node's input, so the stateless part of a plan
//! (filters, projections, every scalar function) is evaluated vectorized on record batches.
//!
//! ```text
//!   Source ──► Mfp (filter, project, temporal bounds on now()) ──► Reduce / Join / Union ──► Mfp ──► ...
//!   Relation (a view's shared arrangement) ──► ...
//! ```

use std::fmt::{self, Write};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::row::Row;

/// The prefix of shared relations' internal names; no SQL identifier starts with it.
const PREFIX: char = '\u{0}';

/// The internal name of shared relation `n` (see `share`).
pub(crate) fn shared_name(n: u64) -> String {
    format!("{PREFIX}shared-{n}")
}

/// Whether `name` is a shared relation's internal name.
pub(crate) fn is_shared(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// How a shared relation's internal name is shown (`EXPLAIN`).
pub fn display_name(name: &str) -> Option<String> {
    name.strip_prefix(PREFIX)
        .and_then(|n| n.strip_prefix("shared-"))
        .map(|n| format!("shared#{n}"))
}

/// A scalar expression evaluated on record batches.
pub type Expr = Arc<dyn PhysicalExpr>;

/// A bound on `now()` computed from a row: `expr` evaluates to a timestamp (or integer
/// milliseconds), and `offset_ms` is added to it.
#[derive(Clone, Debug, Eq)]
pub struct TimeBound {
    pub expr: Expr,
    pub offset_ms: i64,
}

/// One stateless step of a [`Node::Mfp`], applied to record batches in order.
#[derive(Clone, Debug, Eq)]
pub enum MfpStep {
    /// Keep the rows for which the predicate is true (null counts as false).
    Filter(Expr),
    /// Replace the batch by the values of these expressions, with this schema.
    Project { exprs: Vec<Expr>, schema: SchemaRef },
    /// A temporal filter: the row is present while every `lower <= now()` and every `now() < upper`.
    /// Rows enter the result when `now()` reaches the greatest lower bound and are retracted when it
    /// reaches the least upper bound, without re-scanning anything.
    Temporal {
        lower: Vec<TimeBound>,
        upper: Vec<TimeBound>,
    },
}

/// Expressions compare by what they compute (DataFusion's `PartialEq for dyn PhysicalExpr`); a
/// derived `PartialEq` cannot compare `Arc<dyn PhysicalExpr>` fields, so these are written out.
fn same(a: &Expr, b: &Expr) -> bool {
    a.as_ref() == b.as_ref()
}

fn same_all(a: &[Expr], b: &[Expr]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
}

impl PartialEq for TimeBound {
    fn eq(&self, other: &Self) -> bool {
        same(&self.expr, &other.expr) && self.offset_ms == other.offset_ms
    }
}

impl PartialEq for MfpStep {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (MfpStep::Filter(a), MfpStep::Filter(b)) => same(a, b),
            (
                MfpStep::Project { exprs, schema },
                MfpStep::Project {
                    exprs: e2,
                    schema: s2,
                },
            ) => same_all(exprs, e2) && schema == s2,
            (
                MfpStep::Temporal { lower, upper },
                MfpStep::Temporal {
                    lower: l2,
                    upper: u2,
                },
            ) => lower == l2 && upper == u2,
            _ => false,
        }
    }
}

impl Hash for TimeBound {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.as_ref().hash(state);
        self.offset_ms.hash(state);
    }
}

impl Hash for MfpStep {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            MfpStep::Filter(e) => e.as_ref().hash(state),
            MfpStep::Project { exprs, schema } => {
                for e in exprs {
                    e.as_ref().hash(state);
                }
                schema.hash(state);
            }
            MfpStep::Temporal { lower, upper } => {
                lower.hash(state);
                upper.hash(state);
            }
        }
    }
}

/// How a join treats rows without a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JoinKind {
    Inner,
    /// Left rows without a match are kept, padded with nulls.
    Left,
    /// Right rows without a match are kept, padded with nulls.
    Right,
    /// Rows of either side without a match are kept, padded with nulls.
    Full,
    /// The left rows that have a match (`IN`, `EXISTS`); the output is the left columns.
    Semi,
    /// The left rows that have no match (`NOT EXISTS`); the output is the left columns.
    Anti,
    /// `NOT IN` on one key, with SQL's nulls: no row while the right side has a NULL key, and a
    /// left row with a NULL key only while the right side is empty.
    NotIn,
}

impl JoinKind {
    /// Whether the output has the right side's columns.
    pub fn keeps_right(self) -> bool {
        !matches!(self, JoinKind::Semi | JoinKind::Anti | JoinKind::NotIn)
    }
}

/// Sort order of one column, for `first_value(... ORDER BY ...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SortKey {
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

/// An aggregate function.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// The argument's value on the first row of the group in this order (what DataFusion makes of
    /// `DISTINCT ON`): the row the ordering puts first, ties broken by the whole row.
    First(Vec<SortKey>),
    /// Variance (`sqrt`: standard deviation) of the sample (`sample`: divided by n - 1, null
    /// below two values) or of the population (divided by n).
    Var {
        sample: bool,
        sqrt: bool,
    },
    /// `bool_and`: true when every non-null value is true.
    BoolAnd,
    /// `bool_or`: true when some value is true.
    BoolOr,
    /// `median`: the middle value, or the mean of the two middle values (the argument is a
    /// float: DataFusion casts integers).
    Median,
    /// `percentile_cont(p)`: the value at rank `p * (n - 1)` of the ordered values, interpolated
    /// linearly between the two values around it. `p` is held as its bits (`f64::to_bits`).
    PercentileCont {
        p: u64,
    },
    /// `approx_percentile_cont(p)`: [`crate::functions::Sketch`]'s estimate, within 1% of the
    /// value at rank `floor(p * (n - 1))`; the group keeps a count per sketch bucket.
    ApproxPercentile {
        p: u64,
    },
    /// `string_agg(v, sep ORDER BY ...)`: the non-null values joined by `sep`, in this order
    /// (ties, and no order at all, by value).
    StringAgg {
        sep: String,
        order: Vec<SortKey>,
    },
    /// `regr_*(y, x)`: least-squares regression of the argument (y) on column `x` of the
    /// reduce's input, over the rows where both are non-null.
    Regr {
        stat: RegrStat,
        x: usize,
    },
    /// `rate(counter, ts)`: the counter's increase per second (see
    /// [`crate::functions::counter_rate`]); `ts` is a column of the reduce's input holding epoch
    /// milliseconds.
    Rate {
        ts: usize,
    },
}

/// What a `regr_*` aggregate reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegrStat {
    Slope,
    Intercept,
    Count,
    R2,
    AvgX,
    AvgY,
    Sxx,
    Syy,
    Sxy,
}

/// A window function of a [`Node::Window`]: its value for each row of a partition in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WindowFunc {
    /// 1, 2, 3, ... in order (rows equal in the order are numbered by the whole row).
    RowNumber,
    /// 1 + the number of rows before the row's peers (rows equal in the order).
    Rank,
    /// 1 + the number of distinct peers before the row's.
    DenseRank,
    /// Column `arg` of the row `offset` rows before (`lag`) or after (`lead`, a negative
    /// offset), or `default` where there is none.
    Shift {
        arg: usize,
        offset: i64,
        default: crate::row::Datum,
    },
    /// Column `arg` of the partition's first row in order.
    FirstValue { arg: usize },
}

/// One aggregate of a [`Node::Reduce`]. `arg` is a column of the reduce's input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Aggregate {
    pub func: AggFunc,
    pub arg: usize,
    pub distinct: bool,
}

impl Aggregate {
    /// Aggregates that a group keeps up to date update by update, without revisiting its rows:
    /// sums of differences, or counts of values in order (min, max, percentiles).
    pub fn is_accumulable(&self) -> bool {
        !self.distinct
            && matches!(
                self.func,
                AggFunc::Count
                    | AggFunc::Sum
                    | AggFunc::Avg
                    | AggFunc::Var { .. }
                    | AggFunc::BoolAnd
                    | AggFunc::BoolOr
                    | AggFunc::Regr { .. }
                    | AggFunc::Min
                    | AggFunc::Max
                    | AggFunc::Median
                    | AggFunc::PercentileCont { .. }
                    | AggFunc::ApproxPercentile { .. }
            )
    }
}

fn names(schema: &SchemaRef, cols: &[usize]) -> String {
    cols.iter()
        .map(|c| schema.field(*c).name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sort_names(schema: &SchemaRef, order: &[SortKey]) -> String {
    order
        .iter()
        .map(|k| {
            format!(
                "{}{}",
                schema.field(k.column).name(),
                if k.descending { " DESC" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A plan node and the schema of its output. Two plans are equal (and hash alike) when they are
/// the same tree: every operator, expression, literal, type and name they read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    pub node: Node,
    pub schema: SchemaRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The live rows of a source: each row is present from its arrival until `ts + retain`.
    Source { name: String },
    /// The contents of a view or rule, read from its shared arrangement.
    Relation { name: String },
    /// Map, filter and project, vectorized.
    Mfp {
        input: Box<Plan>,
        steps: Vec<MfpStep>,
    },
    /// GROUP BY the first `keys` input columns; the output is the key columns followed by one
    /// column per aggregate. With `keys == 0` there is exactly one output row, also for no input.
    Reduce {
        input: Box<Plan>,
        keys: usize,
        aggs: Vec<Aggregate>,
    },
    /// Equi-join on `left_keys[i] = right_keys[i]`; the output is the left columns, then the
    /// right (only the left for semi and anti joins). `filter` holds [`MfpStep::Filter`]s over a
    /// matched pair's columns (left, then right) that a pair must also pass to be a match.
    Join {
        left: Box<Plan>,
        right: Box<Plan>,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        kind: JoinKind,
        filter: Vec<MfpStep>,
    },
    /// `ORDER BY ... LIMIT`: of each group of rows equal in the `group` columns (one group with
    /// none), the rows from `offset` to `offset + limit` in `order` (rows equal in the order
    /// ordered by the whole row). Each group keeps its rows in order, so a change costs a search
    /// and a look at the first `offset + limit` rows, not a rescan of the group.
    TopK {
        input: Box<Plan>,
        group: Vec<usize>,
        order: Vec<SortKey>,
        offset: usize,
        limit: usize,
    },
    /// Window functions: every input row, followed by one column per function, computed over the
    /// rows with equal `partition` columns in `order`.
    Window {
        input: Box<Plan>,
        partition: Vec<usize>,
        order: Vec<SortKey>,
        funcs: Vec<WindowFunc>,
    },
    /// UNION ALL.
    Union { inputs: Vec<Plan> },
    /// A fixed set of rows.
    Constant { rows: Vec<Row> },
}

impl Plan {
    /// The sources and relations this plan reads, each once, in first-use order.
    pub fn dependencies(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut |p| {
            if let Node::Source { name } | Node::Relation { name } = &p.node {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        });
        out
    }

    fn visit(&self, f: &mut impl FnMut(&Plan)) {
        f(self);
        match &self.node {
            Node::Source { .. } | Node::Relation { .. } | Node::Constant { .. } => {}
            Node::Mfp { input, .. }
            | Node::Reduce { input, .. }
            | Node::TopK { input, .. }
            | Node::Window { input, .. } => input.visit(f),
            Node::Join { left, right, .. } => {
                left.visit(f);
                right.visit(f);
            }
            Node::Union { inputs } => inputs.iter().for_each(|i| i.visit(f)),
        }
    }

    /// A readable, indented description of the dataflow this plan renders to (`EXPLAIN`).
    pub fn explain(&self) -> String {
        self.explain_with(&|_| None)
    }

    /// [`Plan::explain`], showing each shared relation `expand` knows (by internal name) with its
    /// plan and number of users.
    pub(crate) fn explain_with(&self, expand: &dyn Fn(&str) -> Option<(Plan, usize)>) -> String {
        let mut s = String::new();
        self.explain_into(&mut s, 0, expand)
            .expect("writing to a string");
        s
    }

    fn explain_into(
        &self,
        s: &mut String,
        depth: usize,
        expand: &dyn Fn(&str) -> Option<(Plan, usize)>,
    ) -> fmt::Result {
        let pad = "  ".repeat(depth);
        let cols = |schema: &SchemaRef| {
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.node {
            Node::Source { name } => writeln!(
                s,
                "{pad}Source {name} [{}] (retained rows)",
                cols(&self.schema)
            )?,
            Node::Relation { name } => match (display_name(name), expand(name)) {
                (Some(shown), Some((plan, users))) => {
                    writeln!(
                        s,
                        "{pad}Shared arrangement {shown} [{}] (maintained once for {users} user{})",
                        cols(&self.schema),
                        if users == 1 { "" } else { "s" }
                    )?;
                    plan.explain_into(s, depth + 1, expand)?;
                }
                _ => writeln!(
                    s,
                    "{pad}Arrangement {name} [{}] (shared)",
                    cols(&self.schema)
                )?,
            },
            Node::Constant { rows } => writeln!(s, "{pad}Constant {} rows", rows.len())?,
            Node::Mfp { input, steps } => {
                writeln!(s, "{pad}Map/Filter/Project (vectorized)")?;
                for step in steps {
                    match step {
                        MfpStep::Filter(e) => writeln!(s, "{pad}| filter: {e}")?,
                        MfpStep::Project { exprs, schema } => {
                            let items: Vec<String> = exprs
                                .iter()
                                .zip(schema.fields())
                                .map(|(e, f)| format!("{e} AS {}", f.name()))
                                .collect();
                            writeln!(s, "{pad}| project: {}", items.join(", "))?
                        }
                        MfpStep::Temporal { lower, upper } => {
                            let mut parts: Vec<String> = lower
                                .iter()
                                .map(|b| format!("now() >= {} {:+}ms", b.expr, b.offset_ms))
                                .collect();
                            parts.extend(
                                upper
                                    .iter()
                                    .map(|b| format!("now() < {} {:+}ms", b.expr, b.offset_ms)),
                            );
                            writeln!(
                                s,
                                "{pad}| temporal filter: {} (delayed retractions)",
                                parts.join(" AND ")
                            )?
                        }
                    }
                }
                input.explain_into(s, depth + 1, expand)?;
            }
            Node::Reduce { input, keys, aggs } => {
                let key_names: Vec<&str> = input
                    .schema
                    .fields()
                    .iter()
                    .take(*keys)
                    .map(|f| f.name().as_str())
                    .collect();
                let agg_names: Vec<String> = aggs
                    .iter()
                    .map(|a| {
                        format!(
                            "{:?}({}{})",
                            a.func,
                            if a.distinct { "DISTINCT " } else { "" },
                            input.schema.field(a.arg).name()
                        )
                    })
                    .collect();
                let how = if aggs.iter().all(Aggregate::is_accumulable) {
                    "updated in place"
                } else {
                    "recomputed per group"
                };
                writeln!(
                    s,
                    "{pad}Reduce group by [{}] aggregates [{}] ({how}, exchanged by key)",
                    key_names.join(", "),
                    agg_names.join(", ")
                )?;
                input.explain_into(s, depth + 1, expand)?;
            }
            Node::Join {
                left,
                right,
                left_keys,
                right_keys,
                kind,
                filter,
            } => {
                let mut on: Vec<String> = left_keys
                    .iter()
                    .zip(right_keys)
                    .map(|(l, r)| {
                        format!(
                            "{} = {}",
                            left.schema.field(*l).name(),
                            right.schema.field(*r).name()
                        )
                    })
                    .collect();
                for f in filter {
                    if let MfpStep::Filter(e) = f {
                        on.push(e.to_string());
                    }
                }
                writeln!(
                    s,
                    "{pad}{kind:?} Join on [{}] (arranged by key)",
                    on.join(", ")
                )?;
                left.explain_into(s, depth + 1, expand)?;
                right.explain_into(s, depth + 1, expand)?;
            }
            Node::TopK {
                input,
                group,
                order,
                offset,
                limit,
            } => {
                writeln!(
                    s,
                    "{pad}TopK group by [{}] order by [{}] offset {offset} limit {limit} (rows kept in order per group)",
                    names(&input.schema, group),
                    sort_names(&input.schema, order)
                )?;
                input.explain_into(s, depth + 1, expand)?;
            }
            Node::Window {
                input,
                partition,
                order,
                funcs,
            } => {
                writeln!(
                    s,
                    "{pad}Window partition by [{}] order by [{}] functions {funcs:?} (per-partition reduce)",
                    names(&input.schema, partition),
                    sort_names(&input.schema, order)
                )?;
                input.explain_into(s, depth + 1, expand)?;
            }
            Node::Union { inputs } => {
                writeln!(s, "{pad}Union All")?;
                for i in inputs {
                    i.explain_into(s, depth + 1, expand)?;
                }
            }
        }
        Ok(())
    }
}
