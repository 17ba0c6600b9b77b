//! Shared set-up for tocsin's benchmarks: an engine on a manual clock with one worker, and
//! batches of metric rows over a fixed set of keys; and ([`server`]) what the end-to-end
//! benchmarks use to talk to a running `tocsin serve` and read its process.

use std::sync::Arc;

pub mod browser;

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

/// Talking to a running `tocsin serve`, and reading its process from `/proc`.
pub mod server {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

    /// A port free on loopback now.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub fn client() -> HttpClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// When the first notification about each host (its `host` label) arrived.
    pub type Arrivals =
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>;

    /// Serves a webhook receiver on loopback that notes when each host's first notification
    /// arrives; its URL and the arrivals.
    pub async fn webhook() -> (String, Arrivals) {
        let arrivals: Arrivals = Default::default();
        let seen = arrivals.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let at = std::time::Instant::now();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(h) = v["labels"]["host"].as_str() {
                        seen.lock().unwrap().entry(h.to_string()).or_insert(at);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, arrivals)
    }

    /// POSTs `body`; the status and the answer's body.
    pub async fn post(client: &HttpClient, url: String, ct: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let req = hyper::Request::post(url)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        answer(client.request(req).await.expect("reach tocsin")).await
    }

    /// GETs `url`; the status and the answer's body (0 and nothing when it cannot be reached).
    pub async fn get(client: &HttpClient, url: String) -> (u16, Vec<u8>) {
        let req = hyper::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        match client.request(req).await {
            Ok(resp) => answer(resp).await,
            Err(_) => (0, Vec::new()),
        }
    }

    /// The status and body of an answer.
    async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> (u16, Vec<u8>) {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    /// The Prometheus text of `base/metrics` (empty when the server cannot be reached).
    pub async fn metrics(client: &HttpClient, base: &str) -> String {
        let (_, body) = get(client, format!("{base}/metrics")).await;
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The sum of the samples in Prometheus `text` whose line starts with `prefix`.
    pub fn metric(text: &str, prefix: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory of a process, MB.
    pub fn rss_mb(pid: u32) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// CPU time a process has used so far (user and system, all threads), seconds. `/proc`
    /// counts it in ticks of 1/100 s (`USER_HZ`, 100 on Linux).
    pub fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 11 and 12 (from 0) after the name.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }
}
