//! History on disk, measured through a running server: generated host metrics (hosts x
//! metrics every 5 s, realistic values) pushed over HTTP as Arrow IPC into a source with
//! history, then the bytes per row on disk and two Grafana-style range queries over HTTP.
//!
//! The server is tocsin's own, embedded with a manual clock so that hours of data-time pass in
//! seconds: the clock follows the data as it is pushed, as a real one would (the window holds
//! the last `retain`, history the rest). Everything else (the HTTP port, ingest, the
//! write-ahead log, flushes, merges, queries) is what `tocsin serve` runs.
//!
//! With `--compare`, the same rows go to the stores operators would pick instead, in the same
//! run: VictoriaMetrics (`victoria-metrics`, imported with `/api/v1/import/prometheus`, then a
//! forced merge) and Prometheus's TSDB (`promtool tsdb create-blocks-from openmetrics`, then
//! `prometheus` over those blocks), with their bytes on disk and the same two queries through
//! their `query_range`.
//!
//! ```text
//! cargo run --release -p tocsin-benches --bin histbench -- --hosts 1000 --metrics 20 --hours 2 --compare
//! ```
//!
//! `--rate N` pushes N rows per second (to see whether flushes keep up at that rate), `--hold S`
//! keeps the server up S seconds after measuring (for a profiler). `--memory` keeps the whole
//! span in the window instead (`retain` an hour longer than the data, no history) and queries it
//! there, with the memory it takes per row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::ipc::writer::StreamWriter;
use rand::{Rng, SeedableRng};
use tocsin_benches::server::{self, client, free_port, get, post, HttpClient};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 2026-11-20T00:00:00Z: data starts here.
const START: i64 = 1_795_132_800_000;
const STEP_MS: i64 = 5_000;

struct Args {
    hosts: usize,
    metrics: usize,
    hours: f64,
    workers: usize,
    dir: std::path::PathBuf,
    runs: usize,
    compare: bool,
    without_prometheus: bool,
    /// Rows per second to push at (0: as fast as the server takes them).
    rate: f64,
    /// Seconds to keep the server up after measuring, for a profiler.
    hold: u64,
    /// Keep the rows in the window, without history.
    memory: bool,
}

fn args() -> Args {
    let mut a = Args {
        hosts: 1000,
        metrics: 20,
        hours: 2.0,
        workers: 2,
        dir: std::env::temp_dir().join("tocsin-histbench"),
        runs: 10,
        compare: false,
        without_prometheus: false,
        rate: 0.0,
        hold: 0,
        memory: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--hosts" => a.hosts = v.parse().expect("--hosts N"),
            "--metrics" => a.metrics = v.parse().expect("--metrics N"),
            "--hours" => a.hours = v.parse().expect("--hours H"),
            "--workers" => a.workers = v.parse().expect("--workers N"),
            "--dir" => a.dir = v.into(),
            "--runs" => a.runs = v.parse().expect("--runs N"),
            "--rate" => a.rate = v.parse().expect("--rate ROWS_PER_SECOND"),
            "--hold" => a.hold = v.parse().expect("--hold SECONDS"),
            "--memory" => {
                a.memory = true;
                i += 1;
                continue;
            }
            "--compare" => {
                a.compare = true;
                i += 1;
                continue;
            }
            // VictoriaMetrics alone: promtool needs the whole span as text, twice, and hours
            // for a day of 1,000 hosts.
            "--compare-vm" => {
                a.compare = true;
                a.without_prometheus = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
}

/// The kinds of metric a host reports, as collectors report them.
#[derive(Clone, Copy)]
enum Kind {
    /// A busy percentage measured as an f32 (cpu): 37.54999923706055, moving every sample.
    Percent,
    /// A percentage that moves now and then (memory, disk, swap; iowait is mostly 0).
    SlowPercent(f64),
    /// A byte or packet counter that only grows by whole numbers, up to this much per sample.
    Counter(f64),
    /// A counter that seldom moves (errors).
    RareCounter,
    /// A load average with two decimals.
    Load,
    /// A temperature in tenths of a degree.
    Temperature,
    /// A small whole number that moves now and then (processes).
    Gauge,
}

const KINDS: [(&str, Kind); 20] = [
    ("cpu_percent", Kind::Percent),
    ("cpu_user_percent", Kind::Percent),
    ("cpu_system_percent", Kind::Percent),
    ("cpu_iowait_percent", Kind::SlowPercent(0.05)),
    ("mem_used_percent", Kind::SlowPercent(0.5)),
    ("swap_used_percent", Kind::SlowPercent(0.01)),
    ("disk_used_percent", Kind::SlowPercent(0.05)),
    ("disk_read_bytes", Kind::Counter(2e6)),
    ("disk_write_bytes", Kind::Counter(5e6)),
    ("net_rx_bytes", Kind::Counter(1e7)),
    ("net_tx_bytes", Kind::Counter(1e7)),
    ("net_rx_packets", Kind::Counter(1e4)),
    ("net_tx_packets", Kind::Counter(1e4)),
    ("net_rx_errors", Kind::RareCounter),
    ("load_1m", Kind::Load),
    ("load_5m", Kind::Load),
    ("load_15m", Kind::Load),
    ("temp_cpu_celsius", Kind::Temperature),
    ("temp_board_celsius", Kind::Temperature),
    ("processes", Kind::Gauge),
];

/// Each series' state, stepped every 5 s.
struct Gen {
    rng: rand::rngs::StdRng,
    hosts: Vec<String>,
    metrics: Vec<(String, Kind)>,
    state: Vec<f64>,
}

impl Gen {
    fn new(hosts: usize, metrics: usize) -> Gen {
        let mut rng = rand::rngs::StdRng::seed_from_u64(27);
        let metrics: Vec<(String, Kind)> = (0..metrics)
            .map(|i| {
                let (n, k) = KINDS[i % KINDS.len()];
                let name = if i < KINDS.len() {
                    n.to_string()
                } else {
                    format!("{n}_{}", i / KINDS.len())
                };
                (name, k)
            })
            .collect();
        let state = (0..hosts * metrics.len())
            .map(|i| match metrics[i % metrics.len()].1 {
                Kind::Percent | Kind::SlowPercent(_) => rng.gen_range(5.0..60.0),
                Kind::Counter(_) => rng.gen_range(1e6..1e12f64).floor(),
                Kind::RareCounter => rng.gen_range(0.0..100.0f64).floor(),
                Kind::Load => rng.gen_range(0.1..4.0),
                Kind::Temperature => rng.gen_range(35.0..60.0),
                Kind::Gauge => rng.gen_range(80.0..400.0f64).floor(),
            })
            .collect();
        Gen {
            rng,
            hosts: (0..hosts).map(|h| format!("host-{h:04}")).collect(),
            metrics,
            state,
        }
    }

    /// The samples of one 5 s step at `t`.
    fn step(&mut self, t: i64) -> RecordBatch {
        let n = self.state.len();
        let m = self.metrics.len();
        let (mut host, mut metric, mut value, mut ts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for i in 0..n {
            let (h, k) = (i / m, i % m);
            let s = &mut self.state[i];
            let rng = &mut self.rng;
            let v = match self.metrics[k].1 {
                Kind::Percent => {
                    *s = (*s + rng.gen_range(-3.0..3.0)).clamp(0.0, 100.0);
                    *s as f32 as f64
                }
                Kind::SlowPercent(p) => {
                    if rng.gen_bool(p) {
                        *s = (*s + rng.gen_range(-1.0..1.0)).clamp(0.0, 100.0);
                    }
                    *s as f32 as f64
                }
                Kind::Counter(max) => {
                    *s += rng.gen_range(0.0..max).floor();
                    *s
                }
                Kind::RareCounter => {
                    if rng.gen_bool(0.001) {
                        *s += 1.0;
                    }
                    *s
                }
                Kind::Load => {
                    *s = (*s + rng.gen_range(-0.05..0.05)).max(0.0);
                    (*s * 100.0).round() / 100.0
                }
                Kind::Temperature => {
                    if rng.gen_bool(0.5) {
                        *s = (*s + rng.gen_range(-0.5..0.5)).clamp(20.0, 95.0);
                    }
                    (*s * 10.0).round() / 10.0
                }
                Kind::Gauge => {
                    if rng.gen_bool(0.3) {
                        *s = (*s + rng.gen_range(-3.0..3.0)).round().max(1.0);
                    }
                    *s
                }
            };
            host.push(self.hosts[h].as_str());
            metric.push(self.metrics[k].0.as_str());
            value.push(v);
            // A few ms of jitter, as a collector's clock gives.
            ts.push(t + h as i64 % 7 + self.rng.gen_range(0..4));
        }
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(host)),
                Arc::new(StringArray::from(metric)),
                Arc::new(Float64Array::from(value)),
                Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }
}

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

fn csv_bytes(batch: &RecordBatch) -> usize {
    let host = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let metric = batch
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let value = batch
        .column(2)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let ts = batch
        .column(3)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .unwrap();
    (0..batch.num_rows())
        .map(|i| {
            // host,metric,value,epoch-ms
            host.value(i).len()
                + metric.value(i).len()
                + format!("{}", value.value(i)).len()
                + format!("{}", ts.value(i)).len()
                + 4
        })
        .sum()
}

async fn sql(c: &HttpClient, base: &str, q: &str) -> (Duration, serde_json::Value) {
    let t = Instant::now();
    let (st, body) = post(
        c,
        format!("{base}/v1/sql"),
        "text/plain",
        q.as_bytes().to_vec(),
    )
    .await;
    let took = t.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(st, 200, "{q}: {v}");
    (took, v)
}

async fn metric(c: &HttpClient, base: &str, name: &str) -> f64 {
    server::metric(&server::metrics(c, base).await, name)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let a = args();
    let _ = std::fs::remove_dir_all(&a.dir);
    let clock = tocsin_engine::Clock::manual(START as u64);
    let config = tocsin_server::state::Config {
        data_dir: a.dir.clone(),
        workers: a.workers,
        defaults: false,
        clock: clock.clone(),
        memory_limit: 16 << 30,
        ..Default::default()
    };
    let app = tocsin_server::start::open(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let backend = tocsin_server::pg::Backend::new(app.clone(), None);
    tokio::spawn(tocsin_server::listen::run(
        listener,
        app.clone(),
        backend,
        None,
    ));
    let c = client();
    let keep = if a.memory {
        format!("retain = '{} minutes'", (a.hours * 60.0).ceil() as u64 + 60)
    } else {
        "retain = '5 minutes', history = '2 days'".to_string()
    };
    sql(
        &c,
        &base,
        &format!("CREATE SOURCE hm (host TEXT, metric TEXT, value DOUBLE) FROM HTTP WITH ({keep})"),
    )
    .await;

    let steps = (a.hours * 3600.0 * 1000.0 / STEP_MS as f64) as i64;
    let mut gen = Gen::new(a.hosts, a.metrics);
    let (mut rows, mut ipc_bytes, mut csv) = (0usize, 0usize, 0usize);
    let mut max_lag = 0.0f64;
    let started = Instant::now();
    let mut last_report = Instant::now();
    for s in 0..steps {
        let t = START + s * STEP_MS;
        clock.set((t + 1_000) as u64).unwrap();
        let batch = gen.step(t);
        rows += batch.num_rows();
        csv += csv_bytes(&batch);
        let body = ipc(&batch);
        ipc_bytes += body.len();
        let (st, ack) = post(
            &c,
            format!("{base}/v1/ingest/hm"),
            "application/vnd.apache.arrow.stream",
            body,
        )
        .await;
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&ack));
        if a.rate > 0.0 {
            let due = started + Duration::from_secs_f64(rows as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if last_report.elapsed() > Duration::from_secs(2) && !a.memory {
            last_report = Instant::now();
            let lag = metric(
                &c,
                &base,
                "tocsin_history_flush_lag_seconds{relation=\"hm\"}",
            )
            .await;
            max_lag = max_lag.max(lag);
            eprintln!(
                "{:.1}% of the data: {rows} rows, {:.0} rows/s, flush lag {lag:.1} s",
                100.0 * s as f64 / steps as f64,
                rows as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let ingest = started.elapsed();
    let end = START + steps * STEP_MS;
    if a.memory {
        // The window holds every row: measure it there.
        clock.set((end + 1_000) as u64).unwrap();
        let retained = metric(&c, &base, "tocsin_source_retained_bytes{source=\"hm\"}").await;
        println!(
            "\n{} hosts x {} metrics every 5 s for {} h, held in memory: {rows} rows, {:.2} M rows/s pushed over HTTP ({:.1} s), {:.1} B of memory per row",
            a.hosts,
            a.metrics,
            a.hours,
            rows as f64 / ingest.as_secs_f64() / 1e6,
            ingest.as_secs_f64(),
            retained / rows as f64
        );
        queries(&a, &c, &base, end).await;
        hold(&a, &base).await;
        return;
    }
    // Close every partition (its end plus the retention passes) and let the merges finish.
    clock.set((end + 2 * 3_600_000) as u64).unwrap();
    let settle = Instant::now();
    loop {
        let pending = metric(&c, &base, "tocsin_history_pending_rows{relation=\"hm\"}").await;
        let on_disk = metric(&c, &base, "tocsin_history_rows{relation=\"hm\"}").await;
        let files = metric(&c, &base, "tocsin_history_files{relation=\"hm\"}").await;
        let parts = (a.hours.ceil() as usize + 1) as f64;
        if pending == 0.0 && on_disk as usize == rows && files <= parts {
            break;
        }
        if settle.elapsed() > Duration::from_secs(600) {
            eprintln!("merges did not finish: {files} files, {pending} pending");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = settle.elapsed();
    let bytes = metric(&c, &base, "tocsin_history_bytes{relation=\"hm\"}").await;
    let files = metric(&c, &base, "tocsin_history_files{relation=\"hm\"}").await;

    println!(
        "\n{} hosts x {} metrics every 5 s for {} h: {rows} rows, {:.2} M rows/s pushed over HTTP ({:.1} s), max flush lag seen {max_lag:.1} s, merges done {:.1} s after",
        a.hosts,
        a.metrics,
        a.hours,
        rows as f64 / ingest.as_secs_f64() / 1e6,
        ingest.as_secs_f64(),
        settled.as_secs_f64()
    );
    println!(
        "\n| form | bytes per row |\n|---|---|\n| history (Parquet, {files} files) | {:.2} |\n| Arrow IPC as pushed | {:.2} |\n| CSV (host,metric,value,epoch ms) | {:.2} |",
        bytes / rows as f64,
        ipc_bytes as f64 / rows as f64,
        csv as f64 / rows as f64
    );
    queries(&a, &c, &base, end).await;
    if a.compare {
        compare(&a, steps, rows, &c).await;
    }
    hold(&a, &base).await;
}

/// Keeps the server up `--hold` seconds, for a profiler.
async fn hold(a: &Args, base: &str) {
    if a.hold > 0 {
        eprintln!("the server stays up at {base} for {} s", a.hold);
        tokio::time::sleep(Duration::from_secs(a.hold)).await;
    }
}

/// The queries over the whole span, each run `a.runs` times after a first, through the HTTP API.
async fn queries(a: &Args, c: &HttpClient, base: &str, end: i64) {
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let range = format!("ts BETWEEN '{}' AND '{}'", at(START), at(end));
    let series = format!(
        "SELECT ts AS \"time\", value FROM hm WHERE {range} AND host = 'host-0042' AND metric = 'cpu_percent' ORDER BY 1"
    );
    let hosts: Vec<String> = (0..a.hosts.min(100))
        .map(|h| format!("'host-{h:04}'"))
        .collect();
    let grouped = format!(
        "SELECT floor(extract(epoch from ts)/60)*60 AS \"time\", host AS metric, avg(value) AS cpu FROM hm WHERE {range} AND metric = 'cpu_percent' AND host IN ({}) GROUP BY 1, 2 ORDER BY 1",
        hosts.join(", ")
    );
    // What every query costs: no relation, and the relation with no row selected.
    let nothing = "SELECT 1".to_string();
    let no_rows = format!(
        "SELECT ts AS \"time\", value FROM hm WHERE {range} AND host = 'nohost' ORDER BY 1"
    );
    let mut report = Vec::new();
    for (name, q) in [
        ("`SELECT 1`", &nothing),
        ("no row of hm", &no_rows),
        ("one series", &series),
        ("1-minute averages, 100 hosts", &grouped),
    ] {
        let (first, v) = sql(c, base, q).await;
        let n = v["results"][0]["rows"].as_array().map_or(0, Vec::len);
        let mut times = Vec::new();
        for _ in 0..a.runs {
            times.push(sql(c, base, q).await.0);
        }
        report.push(format!(
            "| {name} | {n} | {:.1} ms | {:.1} ms |",
            first.as_secs_f64() * 1e3,
            median(times).as_secs_f64() * 1e3
        ));
    }
    println!(
        "\n| query over HTTP | rows | first | median of {} |\n|---|---|---|---|",
        a.runs
    );
    for r in report {
        println!("{r}");
    }
}

/// Bytes of the files under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += du(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// Starts a store's server (output discarded) and waits until `ready` answers on `port`;
/// returns the process and its base URL.
async fn start_store(
    c: &HttpClient,
    program: &str,
    args: &[String],
    port: u16,
    ready: &str,
) -> (std::process::Child, String) {
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (Debian package {program}): {e}"));
    let base = format!("http://127.0.0.1:{port}");
    wait_up(c, format!("{base}{ready}"), program).await;
    (child, base)
}

async fn wait_up(c: &HttpClient, url: String, what: &str) {
    let t = Instant::now();
    while get(c, url.clone()).await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Times `runs` GETs of a `query_range` URL: the first and the median, and the series count.
async fn time_range(c: &HttpClient, url: &str, runs: usize) -> (Duration, Duration, usize, usize) {
    let t = Instant::now();
    let (st, body) = get(c, url.to_string()).await;
    let first = t.elapsed();
    assert_eq!(st, 200, "{url}: {}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let series = v["data"]["result"].as_array().map_or(0, Vec::len);
    let points = v["data"]["result"].as_array().map_or(0, |r| {
        r.iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum()
    });
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        get(c, url.to_string()).await;
        times.push(t.elapsed());
    }
    (first, median(times), series, points)
}

/// The same rows in VictoriaMetrics and in Prometheus's TSDB, measured the same way.
async fn compare(a: &Args, steps: i64, rows: usize, c: &HttpClient) {
    let root = a.dir.join("compare");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let end = START + steps * STEP_MS;

    // VictoriaMetrics, fed the rows in Prometheus's text format with millisecond timestamps.
    let vm_port = free_port();
    let vm_dir = root.join("vm");
    let (mut vm, vm_base) = start_store(
        c,
        "victoria-metrics",
        &[
            format!("-storageDataPath={}", vm_dir.display()),
            format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            "-retentionPeriod=100y".into(),
            "-search.disableCache".into(),
        ],
        vm_port,
        "/health",
    )
    .await;
    // OpenMetrics for promtool: one file per metric family (families must not interleave).
    let om_dir = root.join("om");
    std::fs::create_dir_all(&om_dir).unwrap();
    let mut gen = Gen::new(a.hosts, a.metrics);
    let mut families: Vec<std::io::BufWriter<std::fs::File>> = gen
        .metrics
        .iter()
        .filter(|_| !a.without_prometheus)
        .map(|(m, _)| {
            std::io::BufWriter::new(std::fs::File::create(om_dir.join(format!("{m}.om"))).unwrap())
        })
        .collect();
    let started = Instant::now();
    let mut text = String::new();
    for s in 0..steps {
        let b = gen.step(START + s * STEP_MS);
        let host = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let metric = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let value = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        let ts = b
            .column(3)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            use std::fmt::Write as _;
            use std::io::Write as _;
            let (h, m, v, t) = (host.value(i), metric.value(i), value.value(i), ts.value(i));
            let _ = writeln!(text, "{m}{{host=\"{h}\"}} {v} {t}");
            if !a.without_prometheus {
                let _ = writeln!(
                    families[i % a.metrics],
                    "{m}{{host=\"{h}\"}} {v} {}.{:03}",
                    t / 1000,
                    t % 1000
                );
            }
        }
        if text.len() > 8 << 20 || s == steps - 1 {
            let (st, body) = post(
                c,
                format!("{vm_base}/api/v1/import/prometheus"),
                "text/plain",
                std::mem::take(&mut text).into_bytes(),
            )
            .await;
            assert!(st == 204 || st == 200, "{}", String::from_utf8_lossy(&body));
        }
    }
    let vm_import = started.elapsed();
    get(c, format!("{vm_base}/internal/force_flush")).await;
    let months: Vec<String> = {
        let (sy, sm) = {
            let d = chrono::DateTime::from_timestamp_millis(START).unwrap();
            (d.format("%Y").to_string(), d.format("%m").to_string())
        };
        vec![format!("{sy}_{sm}")]
    };
    for m in &months {
        get(
            c,
            format!("{vm_base}/internal/force_merge?partition_prefix={m}"),
        )
        .await;
    }
    // The forced merge runs in the background: wait for the size to settle.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = du(&vm_dir);
        if now == last {
            break;
        }
        last = now;
    }
    let vm_bytes = du(&vm_dir.join("data")) + du(&vm_dir.join("indexdb"));

    // Prometheus: blocks made by promtool from the OpenMetrics families, then the server.
    let mut stores = vec![(
        "VictoriaMetrics 1.79 (forced merge)",
        vm_base.clone(),
        vm_bytes,
        vm_import,
    )];
    let mut prom = None;
    if !a.without_prometheus {
        for f in &mut families {
            use std::io::Write as _;
            f.flush().unwrap();
        }
        drop(families);
        let om = root.join("all.om");
        {
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&om).unwrap());
            for (m, _) in &gen.metrics {
                writeln!(out, "# TYPE {m} gauge").unwrap();
                let mut f = std::fs::File::open(om_dir.join(format!("{m}.om"))).unwrap();
                std::io::copy(&mut f, &mut out).unwrap();
            }
            writeln!(out, "# EOF").unwrap();
        }
        let _ = std::fs::remove_dir_all(&om_dir);
        let prom_dir = root.join("prom");
        let t = Instant::now();
        let made = std::process::Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&prom_dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("promtool (Debian package prometheus)");
        assert!(made.success(), "promtool failed");
        let prom_import = t.elapsed();
        let _ = std::fs::remove_file(&om);
        let prom_bytes = du(&prom_dir);
        let prom_port = free_port();
        let config = root.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1h\n").unwrap();
        let (server, prom_base) = start_store(
            c,
            "prometheus",
            &[
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", prom_dir.display()),
                "--storage.tsdb.retention.time=100y".into(),
                format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ],
            prom_port,
            "/-/ready",
        )
        .await;
        stores.push((
            "Prometheus 2.42 TSDB (promtool blocks)",
            prom_base,
            prom_bytes,
            prom_import,
        ));
        prom = Some(server);
    }
    let _ = std::fs::remove_dir_all(&om_dir);

    let (s, e) = (START / 1000, end / 1000);
    let hosts = format!(
        "host-0({})",
        (0..a.hosts.min(100))
            .map(|h| format!("{h:03}"))
            .collect::<Vec<_>>()
            .join("|")
    );
    let enc = |q: &str| {
        q.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('|', "%7C")
            .replace('[', "%5B")
            .replace(']', "%5D")
            .replace(' ', "%20")
    };
    let one = enc("cpu_percent{host=\"host-0042\"}");
    let avg = enc(&format!(
        "avg_over_time(cpu_percent{{host=~\"{hosts}\"}}[1m])"
    ));
    println!("\n| store | bytes per row on disk | load | one series, {} h | 1-minute averages, 100 hosts |\n|---|---|---|---|---|", a.hours);
    for (name, base, bytes, load) in stores {
        let (f1, m1, _, p1) = time_range(
            c,
            &format!("{base}/api/v1/query_range?query={one}&start={s}&end={e}&step=5"),
            a.runs,
        )
        .await;
        let (f2, m2, n2, p2) = time_range(
            c,
            &format!("{base}/api/v1/query_range?query={avg}&start={s}&end={e}&step=60"),
            a.runs,
        )
        .await;
        println!(
            "| {name} | {:.2} | {:.1} s | {:.1} ms (first {:.1} ms, {p1} points) | {:.1} ms (first {:.1} ms, {n2} series, {p2} points) |",
            bytes as f64 / rows as f64,
            load.as_secs_f64(),
            m1.as_secs_f64() * 1e3,
            f1.as_secs_f64() * 1e3,
            m2.as_secs_f64() * 1e3,
            f2.as_secs_f64() * 1e3,
        );
    }
    let _ = vm.kill();
    let _ = vm.wait();
    if let Some(mut prom) = prom {
        let _ = prom.kill();
        let _ = prom.wait();
    }
}
