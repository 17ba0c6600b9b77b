//! Shared set-up for tocsin's benchmarks: an engine on a manual clock with one worker, and
//! batches of metric rows over a fixed set of keys.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::SchemaRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tocsin_engine::{Clock, Engine, EngineConfig};
use tocsin_sql::Tocsin;

/// 2026-11-21T10:00:00Z.
pub const START_MS: u64 = 1_795_255_200_000;

/// A database with source `m (host TEXT, v DOUBLE, ts TIMESTAMP)` retained for one minute.
pub struct Bench {
    pub rt: tokio::runtime::Runtime,
    pub db: Tocsin,
    pub clock: Clock,
    pub schema: SchemaRef,
    hosts: Vec<String>,
    rng: StdRng,
}

impl Bench {
    pub fn new(workers: usize, keys: usize) -> Bench {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let clock = Clock::manual(START_MS);
        let engine = Engine::start(EngineConfig {
            workers,
            clock: clock.clone(),
            ..Default::default()
        })
        .expect("engine");
        let db = Tocsin::new(engine);
        rt.block_on(db.execute("CREATE SOURCE m (host TEXT, v DOUBLE, ts TIMESTAMP) FROM WEBSOCKET WITH (retain = '1 minute')"))
            .expect("source");
        let schema = db.engine().schema("m").expect("schema");
        Bench {
            rt,
            db,
            clock,
            schema,
            hosts: (0..keys).map(|k| format!("host-{k:05}")).collect(),
            rng: StdRng::seed_from_u64(7),
        }
    }

    pub fn execute(&self, sql: &str) {
        self.rt
            .block_on(self.db.execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A batch of `rows` rows stamped with the clock's time, keys cycling through all hosts.
    pub fn batch(&mut self, rows: usize) -> RecordBatch {
        let now = self.clock.now() as i64;
        let start = self.rng.gen_range(0..self.hosts.len());
        let hosts = StringArray::from_iter_values(
            (0..rows).map(|i| self.hosts[(start + i) % self.hosts.len()].as_str()),
        );
        let v = Float64Array::from_iter_values(
            (0..rows).map(|_| f64::from(self.rng.gen_range(0..10_000u32)) / 100.0),
        );
        let ts = TimestampMillisecondArray::from(vec![now; rows]).with_timezone("UTC");
        RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(hosts), Arc::new(v), Arc::new(ts)],
        )
        .expect("batch")
    }

    /// Pushes batches, moving the clock `step_ms` after each, then waits until `names` are current.
    pub fn push_and_sync(&self, batches: &[RecordBatch], step_ms: u64, names: &[&str]) {
        for b in batches {
            let outcome = self.db.engine().push("m", b.clone()).expect("push");
            assert_eq!(outcome.accepted, b.num_rows());
            self.clock
                .set(self.clock.now() + step_ms)
                .expect("manual clock");
        }
        self.rt
            .block_on(self.db.engine().sync(names))
            .expect("sync");
    }
}
