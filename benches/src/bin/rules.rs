//! Rules at scale, end to end: creates rules on a running `tocsin serve` in steps (1, 100, 1,000,
//! ... rules) and at each step measures what creating rules costs, the CPU the server uses while
//! no data arrives, and the NDJSON rows per second it acknowledges over HTTP.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/rules --listen 127.0.0.1:17900 &
//! rules --server 127.0.0.1:17900 --pid $! --steps 1,100,1000
//! ```
//!
//! Options: `--steps N,N,...` rule counts to measure at (default `1,100,1000`); `--batch N`
//! `CREATE RULE` statements per request (default 250); `--idle N` seconds of no data over which
//! CPU is measured (default 10); `--seconds N` of ingest (default 10) over `--connections N`
//! (default 2) with `--rows N` rows per batch (default 50000) over `--hosts N` hosts (default
//! 5000). Rules are `SELECT host, avg(value) AS v FROM m WHERE ts > now() - INTERVAL '1 minute'
//! GROUP BY host HAVING avg(value) > T WITH (for = '1m')` with T from 90 to 139 (values are
//! 0 to 100, so a few fire), on the source `m (host TEXT, value DOUBLE)` retained 1 minute. Each step's quiet period
//! starts once the previous step's rows have left the retention, so that nothing falls due in it.
//! Prints one Markdown table row per step; CPU is read from `/proc/PID/stat`. Rows per second
//! count the time until the rules have taken every acknowledged row (a read of the first and the
//! last rule waits for that), not only until the rows are acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tocsin_benches::server::{client, cpu_seconds, post, HttpClient};

struct Args {
    server: String,
    pid: u32,
    steps: Vec<usize>,
    batch: usize,
    idle: u64,
    seconds: u64,
    connections: u64,
    rows: usize,
    hosts: usize,
    /// Rules created so far.
    rules_now: usize,
}

fn args() -> Args {
    let mut a = Args {
        server: "127.0.0.1:7654".into(),
        pid: 0,
        steps: vec![1, 100, 1000],
        batch: 250,
        idle: 10,
        seconds: 10,
        connections: 2,
        rows: 50_000,
        hosts: 5_000,
        rules_now: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--server" => a.server = v,
            "--pid" => a.pid = v.parse().expect("--pid N"),
            "--steps" => {
                a.steps = v
                    .split(',')
                    .map(|n| n.trim().parse().expect("--steps N,N,..."))
                    .collect()
            }
            "--batch" => a.batch = v.parse().expect("--batch N"),
            "--idle" => a.idle = v.parse().expect("--idle N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--rows" => a.rows = v.parse().expect("--rows N"),
            "--hosts" => a.hosts = v.parse().expect("--hosts N"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(
        a.pid > 0,
        "--pid of the server is needed to measure its CPU"
    );
    a
}

fn rule(i: usize) -> String {
    format!(
        "CREATE RULE r{i} AS SELECT host, avg(value) AS v FROM m \
         WHERE ts > now() - INTERVAL '1 minute' GROUP BY host HAVING avg(value) > {} \
         WITH (for = '1m')",
        90 + i % 50
    )
}

/// Runs SQL that must succeed; how long the request took.
async fn sql(client: &HttpClient, server: &str, text: String) -> Duration {
    let started = Instant::now();
    let (st, body) = post(
        client,
        format!("http://{server}/v1/sql"),
        "text/plain",
        text.into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    started.elapsed()
}

/// Pushes NDJSON for `seconds` over `connections`; rows acknowledged per second.
async fn ingest(client: &HttpClient, a: &Args) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let (client, acked, server) = (client.clone(), acked.clone(), a.server.clone());
        let (rows, hosts) = (a.rows, a.hosts);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            // A few payloads made up front, so that the load generator is not what is measured.
            let payloads: Vec<Vec<u8>> = (0..4)
                .map(|_| {
                    let mut body = String::with_capacity(rows * 40);
                    for _ in 0..rows {
                        let h = rng.gen_range(0..hosts);
                        let v: f64 = rng.gen_range(0.0..100.0);
                        body.push_str(&format!("{{\"host\":\"h{h}\",\"value\":{v:.2}}}\n"));
                    }
                    body.into_bytes()
                })
                .collect();
            let mut n = 0;
            while Instant::now() < deadline {
                let (st, ack) = post(
                    &client,
                    format!("http://{server}/v1/ingest/m"),
                    "application/x-ndjson",
                    payloads[n % payloads.len()].clone(),
                )
                .await;
                n += 1;
                if st == 200 {
                    let v: serde_json::Value = serde_json::from_slice(&ack).unwrap();
                    acked.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Counted once the rules have taken every acknowledged row: a read of the first and the
    // last rule waits until their dataflows have passed the time of the newest row.
    let last = a.rules_now.saturating_sub(1);
    sql(
        client,
        &a.server,
        format!("SELECT count(*) FROM r0; SELECT count(*) FROM r{last}"),
    )
    .await;
    acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Rows the source `m` retains, from `/metrics`.
async fn retained(client: &HttpClient, server: &str) -> f64 {
    tocsin_benches::server::metric(
        &tocsin_benches::server::metrics(client, &format!("http://{server}")).await,
        "tocsin_source_retained_rows{source=\"m\"} ",
    )
}

#[tokio::main]
async fn main() {
    let mut a = args();
    let client = client();
    sql(
        &client,
        &a.server,
        "CREATE SOURCE m (host TEXT, value DOUBLE) FROM HTTP WITH (retain = '1 minute')".into(),
    )
    .await;
    println!(
        "| rules | creating the last {} (s) | creating the last one alone (ms) | CPU while idle {} s (% of a core) | NDJSON rows/s, acknowledged and taken by the rules |",
        a.batch, a.idle
    );
    println!("|---|---|---|---|---|");
    let mut created = 0;
    for &target in &a.steps {
        let mut last_batch = Duration::ZERO;
        // All but the last rule in requests of `batch`, then the last one on its own.
        while created + 1 < target {
            let n = a.batch.min(target - 1 - created);
            let text: Vec<String> = (created..created + n).map(rule).collect();
            last_batch = sql(&client, &a.server, text.join(";\n")).await;
            created += n;
        }
        let alone = sql(&client, &a.server, rule(created)).await;
        created += 1;
        a.rules_now = created;
        // Let the catalog settle, then measure a quiet period.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = cpu_seconds(a.pid);
        tokio::time::sleep(Duration::from_secs(a.idle)).await;
        let idle = (cpu_seconds(a.pid) - before) / a.idle as f64 * 100.0;
        let rate = ingest(&client, &a).await;
        println!(
            "| {created} | {:.2} | {:.1} | {idle:.0}% | {rate:.0} |",
            last_batch.as_secs_f64(),
            alone.as_secs_f64() * 1000.0,
        );
        // The next step's quiet period starts once this step's rows have left the source's
        // retention (and the rules' windows), so that nothing is due in it.
        let deadline = Instant::now() + Duration::from_secs(300);
        while retained(&client, &a.server).await > 0.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
