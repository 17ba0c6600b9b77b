//! Functions tocsin adds to SQL, in continuous and batch planning alike:
//!
//! - `rate(counter, ts)`: an aggregate turning a monotonically increasing counter into its
//!   increase per second, with 32- and 64-bit wraps and resets handled
//!   ([`tocsin_engine::functions::counter_rate`], the same code the engine runs);
//! - `approx_percentile_cont(p) WITHIN GROUP (ORDER BY v)` (also `approx_percentile_cont(v, p)`):
//!   [`tocsin_engine::functions::Sketch`]'s estimate, within 1% of the exact value, the same
//!   sketch the engine maintains (it replaces DataFusion's t-digest, so that an ad hoc query and a
//!   view agree);
//! - the JSON functions of `datafusion-functions-json` that return plain types
//!   (`json_get_str`, `json_get_int`, `json_get_float`, `json_get_bool`, `json_get_json`,
//!   `json_as_text`, `json_contains`, `json_length`), for trap varbinds and other JSON text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type, TimeUnit};
use datafusion::common::{plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use tocsin_engine::functions::{counter_rate, Counter, Sketch};

/// Registers tocsin's functions in a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(Rate::new()));
    ctx.register_udaf(AggregateUDF::from(ApproxPercentile::new()));
    use datafusion_functions_json::udfs;
    for f in [
        udfs::json_get_str_udf(),
        udfs::json_get_int_udf(),
        udfs::json_get_float_udf(),
        udfs::json_get_bool_udf(),
        udfs::json_get_json_udf(),
        udfs::json_as_text_udf(),
        udfs::json_contains_udf(),
        udfs::json_length_udf(),
    ] {
        ctx.register_udf(f.as_ref().clone());
    }
}

/// `rate(counter, ts)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    signature: Signature,
}

impl Rate {
    pub const NAME: &'static str = "rate";
    fn new() -> Self {
        Rate {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(t, true)))
}

impl AggregateUDFImpl for Rate {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        let [counter, ts] = args else {
            return plan_err!("rate(counter, ts) takes two arguments: the counter and its time");
        };
        let counter = match counter {
            DataType::Null
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => DataType::Int64,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(_, _) => DataType::Float64,
            other => {
                return plan_err!("rate(counter, ts): the counter must be a number, not {other}")
            }
        };
        if !matches!(ts, DataType::Timestamp(_, _) | DataType::Null) {
            return plan_err!("rate(counter, ts): ts must be a timestamp, not {ts}");
        }
        Ok(vec![counter, ts_type()])
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, _: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("ts", list_of(DataType::Int64), true)),
            Arc::new(Field::new("ints", list_of(DataType::Int64), true)),
            Arc::new(Field::new("floats", list_of(DataType::Float64), true)),
        ])
    }
    fn accumulator(&self, _: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(RateAccumulator::default()))
    }
}

#[derive(Debug, Default)]
struct RateAccumulator {
    samples: Vec<(i64, Counter)>,
}

impl RateAccumulator {
    /// Adds the rows of a counter column and a time column (epoch ms); nulls are skipped.
    fn add(&mut self, counter: &dyn Array, ts: &Int64Array) {
        for i in 0..ts.len() {
            if ts.is_null(i) || counter.is_null(i) {
                continue;
            }
            let c = match counter.data_type() {
                DataType::Float64 => Counter::Float(counter.as_primitive::<Float64Type>().value(i)),
                _ => Counter::Int(counter.as_primitive::<Int64Type>().value(i)),
            };
            self.samples.push((ts.value(i), c));
        }
    }
}

fn one_list(values: ArrayRef) -> ScalarValue {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let offsets = OffsetBuffer::from_lengths([values.len()]);
    ScalarValue::List(Arc::new(ListArray::new(field, offsets, values, None)))
}

impl Accumulator for RateAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let ts = datafusion::arrow::compute::cast(&values[1], &DataType::Int64)?;
        let counter = match values[0].data_type() {
            DataType::Float64 | DataType::Int64 => values[0].clone(),
            _ => datafusion::arrow::compute::cast(&values[0], &DataType::Int64)?,
        };
        self.add(counter.as_ref(), ts.as_primitive::<Int64Type>());
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Float64(counter_rate(&mut self.samples)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.samples.capacity() * std::mem::size_of::<(i64, Counter)>()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let ts = Int64Array::from_iter_values(self.samples.iter().map(|s| s.0));
        let ints: Int64Array = self
            .samples
            .iter()
            .map(|s| match s.1 {
                Counter::Int(i) => Some(i),
                Counter::Float(_) => None,
            })
            .collect();
        let floats: Float64Array = self
            .samples
            .iter()
            .map(|s| match s.1 {
                Counter::Float(f) => Some(f),
                Counter::Int(_) => None,
            })
            .collect();
        Ok(vec![
            one_list(Arc::new(ts)),
            one_list(Arc::new(ints)),
            one_list(Arc::new(floats)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let (ts, ints, floats) = (
            states[0].as_list::<i32>(),
            states[1].as_list::<i32>(),
            states[2].as_list::<i32>(),
        );
        for row in 0..ts.len() {
            if ts.is_null(row) {
                continue;
            }
            let t = ts.value(row);
            let t = t.as_primitive::<Int64Type>();
            let i = ints.value(row);
            let i = i.as_primitive::<Int64Type>();
            let f = floats.value(row);
            let f = f.as_primitive::<Float64Type>();
            for k in 0..t.len() {
                let c = if i.is_valid(k) {
                    Counter::Int(i.value(k))
                } else if f.is_valid(k) {
                    Counter::Float(f.value(k))
                } else {
                    continue;
                };
                self.samples.push((t.value(k), c));
            }
        }
        Ok(())
    }
}

/// `approx_percentile_cont`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ApproxPercentile {
    signature: Signature,
}

impl ApproxPercentile {
    pub const NAME: &'static str = "approx_percentile_cont";
    fn new() -> Self {
        ApproxPercentile {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for ApproxPercentile {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn supports_within_group_clause(&self) -> bool {
        true
    }
    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        match args {
            [v, p] if (v.is_numeric() || v.is_null()) && (p.is_numeric() || p.is_null()) => {
                Ok(vec![DataType::Float64, DataType::Float64])
            }
            [_, _, _] => plan_err!(
                "approx_percentile_cont takes no centroid count: tocsin's sketch keeps every estimate within 1% of the exact value"
            ),
            _ => plan_err!(
                "approx_percentile_cont(p) WITHIN GROUP (ORDER BY v) takes a numeric v and a fraction p"
            ),
        }
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, _: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("codes", list_of(DataType::Int64), true)),
            Arc::new(Field::new("counts", list_of(DataType::Int64), true)),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        use datafusion::physical_expr::expressions::Literal;
        let p = args
            .exprs
            .get(1)
            .and_then(|e| e.downcast_ref::<Literal>())
            .and_then(|l| match l.value().cast_to(&DataType::Float64) {
                Ok(ScalarValue::Float64(Some(p))) if (0.0..=1.0).contains(&p) => Some(p),
                _ => None,
            });
        let Some(p) = p else {
            return plan_err!(
                "approx_percentile_cont: the percentile must be a constant between 0 and 1"
            );
        };
        let descending = args.order_bys.first().is_some_and(|s| s.options.descending);
        Ok(Box::new(SketchAccumulator {
            p: if descending { 1.0 - p } else { p },
            sketch: Sketch::default(),
        }))
    }
}

#[derive(Debug)]
struct SketchAccumulator {
    p: f64,
    sketch: Sketch,
}

impl Accumulator for SketchAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let v = datafusion::arrow::compute::cast(&values[0], &DataType::Float64)?;
        for x in v.as_primitive::<Float64Type>().iter().flatten() {
            self.sketch.add(x, 1);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Float64(self.sketch.quantile(self.p)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.buckets().count() * 32
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let codes = Int64Array::from_iter_values(self.sketch.buckets().map(|b| b.0));
        let counts = Int64Array::from_iter_values(self.sketch.buckets().map(|b| b.1));
        Ok(vec![one_list(Arc::new(codes)), one_list(Arc::new(counts))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let (codes, counts) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        for row in 0..codes.len() {
            if codes.is_null(row) {
                continue;
            }
            let (k, c) = (codes.value(row), counts.value(row));
            let (k, c) = (k.as_primitive::<Int64Type>(), c.as_primitive::<Int64Type>());
            for i in 0..k.len() {
                self.sketch.add_code(k.value(i), c.value(i));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_merge() {
        let mut a = RateAccumulator::default();
        a.update_batch(&[
            Arc::new(Int64Array::from(vec![Some(100), None, Some(4_294_967_000)])),
            Arc::new(
                datafusion::arrow::array::TimestampMillisecondArray::from(vec![0, 500, 1000])
                    .with_timezone("UTC"),
            ),
        ])
        .unwrap();
        let state: Vec<ArrayRef> = a
            .state()
            .unwrap()
            .into_iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        let mut b = RateAccumulator::default();
        b.merge_batch(&state).unwrap();
        assert_eq!(b.samples, a.samples);
        assert_eq!(
            b.evaluate().unwrap(),
            ScalarValue::Float64(Some(4_294_966_900.0))
        );
    }
}
