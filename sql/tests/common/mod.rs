//! Helpers shared by the SQL tests: a database on a manual clock, and result formatting.
#![allow(dead_code)]

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use tocsin_engine::{Clock, Engine, EngineConfig};
use tocsin_sql::Tocsin;

/// 2026-11-21T10:00:00Z, where every test's clock starts.
pub const START_MS: u64 = 1_795_255_200_000;

pub fn database(workers: usize) -> (Tocsin, Clock) {
    let clock = Clock::manual(START_MS);
    let engine = Engine::start(EngineConfig {
        workers,
        clock: clock.clone(),
        ..Default::default()
    })
    .expect("engine starts");
    let db = Tocsin::new(engine);
    db.set_sinks(std::sync::Arc::new(Connectors));
    (db, clock)
}

/// Sinks are accepted (their options checked by the real connectors); nothing is delivered here.
struct Connectors;

impl tocsin_sql::SinkKinds for Connectors {
    fn status(&self, _: &str) -> tocsin_sql::SinkStatus {
        tocsin_sql::SinkStatus::default()
    }
}

/// Formats a float with at most six decimals, without trailing zeros.
pub fn format_float(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return v.to_string();
    }
    let s = format!("{:.6}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Every row of the batches as strings; NULL for nulls.
pub fn rows_as_strings(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| match c.data_type() {
                        DataType::Float64 if !c.is_null(r) => {
                            format_float(c.as_primitive::<Float64Type>().value(r))
                        }
                        _ => f.value(r).to_string(),
                    })
                    .collect(),
            );
        }
    }
    out
}
