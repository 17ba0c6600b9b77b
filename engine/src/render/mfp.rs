//! Vectorized map/filter/project, and temporal filters turned into delayed retractions.
//!
//! [`eval_mfp`] runs a list of [`MfpStep`]s over one record batch with DataFusion physical
//! expressions and remembers, for each output row, which input row it came from and the bounds
//! on `now()` within which it is present. [`emit_updates`] turns that into differential updates:
//! a row that arrives at time `t` with bounds `[lower, upper)` is inserted at `max(t, lower)` and
//! retracted at `upper`. Retractions are emitted at once with a future time; arrangements and
//! subscriptions downstream hold them until the frontier reaches that time.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{cast, filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::error::{EngineError, Result};
use crate::plan::{MfpStep, TimeBound};
use crate::row::{batch_to_rows, Row};

/// The result of running an MFP over a batch.
pub(crate) struct MfpOutput {
    pub batch: RecordBatch,
    /// For each output row, the index of the input row it came from.
    pub selection: Vec<u32>,
    /// Per output row: `now()` must be at least this (milliseconds).
    pub lower: Option<Vec<i64>>,
    /// Per output row: `now()` must be less than this (milliseconds).
    pub upper: Option<Vec<i64>>,
}

/// Converts timestamps (any unit, rounded up to whole milliseconds) or integers (milliseconds).
fn bound_millis(array: &ArrayRef) -> Result<Int64Array> {
    let per_ms: i64 = match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => -1000,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 1,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000,
        DataType::Int64 | DataType::Int32 => 1,
        other => {
            return Err(EngineError::Execution(format!(
                "a bound on now() evaluated to {other}, not a timestamp"
            )))
        }
    };
    let raw = cast(array, &DataType::Int64)?;
    let raw = raw.as_primitive::<Int64Type>();
    Ok(match per_ms {
        1 => raw.clone(),
        s if s < 0 => raw.unary(|v| v.saturating_mul(-s)),
        d => raw.unary(|v| v.div_euclid(d) + i64::from(v.rem_euclid(d) != 0)),
    })
}

fn eval_bounds(
    batch: &RecordBatch,
    bounds: &[TimeBound],
    into: &mut Option<Vec<i64>>,
    pick_max: bool,
) -> Result<()> {
    for b in bounds {
        let arr = b.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let ms = bound_millis(&arr)?;
        let vals = into.get_or_insert_with(|| {
            vec![if pick_max { i64::MIN } else { i64::MAX }; batch.num_rows()]
        });
        for (i, v) in vals.iter_mut().enumerate() {
            // A null bound can never be satisfied: the row is never present.
            let x = if ms.is_null(i) {
                if pick_max {
                    i64::MAX
                } else {
                    i64::MIN
                }
            } else {
                ms.value(i).saturating_add(b.offset_ms)
            };
            *v = if pick_max { (*v).max(x) } else { (*v).min(x) };
        }
    }
    Ok(())
}

/// Runs `steps` over `batch`.
pub(crate) fn eval_mfp(steps: &[MfpStep], batch: &RecordBatch) -> Result<MfpOutput> {
    let mut current = batch.clone();
    let mut selection: Option<UInt32Array> = None;
    let mut lower: Option<Vec<i64>> = None;
    let mut upper: Option<Vec<i64>> = None;
    for step in steps {
        match step {
            MfpStep::Filter(pred) => {
                let mask = pred.evaluate(&current)?.into_array(current.num_rows())?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        EngineError::Execution(format!("filter {pred} is not boolean"))
                    })?;
                let mask = if mask.null_count() > 0 {
                    prep_null_mask_filter(mask)
                } else {
                    mask.clone()
                };
                if mask.true_count() == current.num_rows() {
                    continue;
                }
                let sel = selection
                    .unwrap_or_else(|| UInt32Array::from_iter_values(0..current.num_rows() as u32));
                let sel = datafusion::arrow::compute::filter(&sel, &mask)?;
                selection = Some(sel.as_primitive().clone());
                for bounds in [&mut lower, &mut upper].into_iter().flatten() {
                    *bounds = bounds
                        .iter()
                        .zip(mask.values().iter())
                        .filter(|(_, m)| *m)
                        .map(|(v, _)| *v)
                        .collect();
                }
                current = filter_record_batch(&current, &mask)?;
            }
            MfpStep::Project { exprs, schema } => {
                let n = current.num_rows();
                let columns = exprs
                    .iter()
                    .map(|e| Ok(e.evaluate(&current)?.into_array(n)?))
                    .collect::<Result<Vec<_>>>()?;
                let columns = columns
                    .into_iter()
                    .zip(schema.fields())
                    .map(|(c, f)| {
                        if c.data_type() == f.data_type() {
                            Ok(c)
                        } else {
                            cast(&c, f.data_type())
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let options = RecordBatchOptions::new().with_row_count(Some(n));
                current = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
            }
            MfpStep::Temporal {
                lower: lo,
                upper: hi,
            } => {
                eval_bounds(&current, lo, &mut lower, true)?;
                eval_bounds(&current, hi, &mut upper, false)?;
            }
        }
    }
    let selection = match selection {
        Some(s) => s.values().to_vec(),
        None => (0..current.num_rows() as u32).collect(),
    };
    Ok(MfpOutput {
        batch: current,
        selection,
        lower,
        upper,
    })
}

/// Runs the MFP and produces differential updates. `time_of(i)` and `diff_of(i)` give the time
/// and multiplicity of input row `i`. Rows whose evaluation fails are reported to `on_error` and
/// left out, one row at a time, so one bad value does not drop its neighbours.
pub(crate) fn mfp_updates(
    steps: &[MfpStep],
    batch: &RecordBatch,
    rows: &RowInfo<'_>,
    out: &mut Vec<(Row, u64, isize)>,
    on_error: &mut dyn FnMut(EngineError),
) {
    match eval_mfp(steps, batch).and_then(|o| emit_updates(o, rows, out)) {
        Ok(()) => {}
        Err(_) if batch.num_rows() > 1 => {
            for i in 0..batch.num_rows() {
                let one = batch.slice(i, 1);
                let info = RowInfo {
                    time: &|_| (rows.time)(i),
                    diff: &|_| (rows.diff)(i),
                    expiry: &|_| (rows.expiry)(i),
                };
                if let Err(e) = eval_mfp(steps, &one).and_then(|o| emit_updates(o, &info, out)) {
                    on_error(e);
                }
            }
        }
        Err(e) => on_error(e),
    }
}

/// What the MFP's caller knows of each input row, by index.
pub(crate) struct RowInfo<'a> {
    /// The time the row arrived at.
    pub time: &'a dyn Fn(usize) -> u64,
    pub diff: &'a dyn Fn(usize) -> isize,
    /// When the row leaves regardless of the query (a source's retention), if it does.
    /// Applied to the rows that pass, so filtered-out rows cost nothing.
    pub expiry: &'a dyn Fn(usize) -> Option<i64>,
}

fn emit_updates(o: MfpOutput, info: &RowInfo<'_>, out: &mut Vec<(Row, u64, isize)>) -> Result<()> {
    let rows = batch_to_rows(&o.batch, None)?;
    for (i, row) in rows.into_iter().enumerate() {
        let src = o.selection[i] as usize;
        let t = (info.time)(src);
        let d = (info.diff)(src);
        let start = match &o.lower {
            Some(l) => t.max(l[i].max(0) as u64),
            None => t,
        };
        let upper = match (o.upper.as_ref().map(|u| u[i]), (info.expiry)(src)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match upper {
            Some(end) => {
                if end <= start as i64 {
                    continue;
                }
                out.push((row.clone(), start, d));
                out.push((row, end as u64, -d));
            }
            None => out.push((row, start, d)),
        }
    }
    Ok(())
}
