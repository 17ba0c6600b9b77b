//! Replicas (docs/ha.md), measured through two `tocsin serve` processes this program starts on
//! loopback:
//!
//! - **lag**: a row pushed to replica `a` (timed from the moment `a` acknowledged it, so after
//!   its fsync) until it arrives in a subscription on replica `b`, and in one on `a` itself
//!   (each replica's engine waits for the other's mark, see docs/ha.md#time), and the same into
//!   a single server first, for comparison; `--samples` rows `--interval-ms` apart; p50, p99,
//!   max.
//! - **failover**: replica `a` (first in order, the one that delivers) is killed with -9, and at
//!   that moment a row making a new alert is pushed to `b`; the time from the kill to that alert's
//!   notification arriving at a webhook served by this program, `--rounds` times (`a` is started
//!   again between rounds).
//!
//! ```sh
//! habench --tocsin target/release/tocsin --dir /tmp/habench --samples 1000 --rounds 5
//! ```
//!
//! Ingest throughput with a replica is the load generator's, pointed at `a` of two replicas
//! (docs/benchmarks.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tocsin_benches::server::{self, free_port, HttpClient};

const SECRET: &str = "habench-cluster-secret-0123";

struct Replica {
    id: &'static str,
    addr: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    tocsin: &Path,
    dir: &Path,
    id: &'static str,
    port: u16,
    peer: Option<(&str, u16)>,
    peer_timeout: &str,
) -> Replica {
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    let mut cmd = Command::new(tocsin);
    cmd.args(["serve", "--no-default", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join(id));
    if let Some((peer, port)) = peer {
        cmd.args(["--replica-id", id, "--peers"])
            .arg(format!("{peer}=ws://127.0.0.1:{port}"))
            .args(["--cluster-secret", SECRET, "--peer-timeout", peer_timeout]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tocsin");
    Replica {
        id,
        addr: format!("127.0.0.1:{port}"),
        child,
    }
}

/// POSTs `body` to `path` of the server at `addr` (SQL to `/v1/sql`, NDJSON rows to an ingest
/// path); the status and the answer as text.
async fn post(client: &HttpClient, addr: &str, path: &str, body: String) -> (u16, String) {
    let ct = if path == "/v1/sql" {
        "text/plain"
    } else {
        "application/x-ndjson"
    };
    let (status, body) = server::post(
        client,
        format!("http://{addr}{path}"),
        ct,
        body.into_bytes(),
    )
    .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until a server answers.
async fn started(client: &HttpClient, r: &Replica, deadline: Instant) {
    while server::get(client, format!("http://{}/healthz", r.addr))
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "replica {} did not start", r.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both replicas answer and take `a` for the leader.
async fn linked(client: &HttpClient, replicas: &[&Replica]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in replicas {
        started(client, r, deadline).await;
        loop {
            let (st, body) = post(
                client,
                &r.addr,
                "/v1/sql",
                "SELECT id FROM tocsin_replicas WHERE leader".into(),
            )
            .await;
            if st == 200 && body.contains("[\"a\"]") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never saw a lead",
                r.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn percentiles(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return "no samples".into();
    }
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    format!(
        "samples {}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        ms[ms.len() - 1]
    )
}

/// When each row `n` of `probe` arrived in a subscription.
type Seen = Arc<Mutex<HashMap<i64, Instant>>>;

/// Subscribes to `probe` on the server at `addr`, noting when each row arrives.
async fn watch(addr: &str) -> Seen {
    let url = format!("ws://{addr}/v1/subscribe?q=SELECT%20n%20FROM%20probe");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("subscribe");
    let seen_at: Seen = Default::default();
    let seen = seen_at.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let at = Instant::now();
            if let Ok(text) = m.to_text() {
                // One frame per change: {"time": ..., "diff": 1, "row": {"n": ...}}.
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                if let (Some(1), Some(n)) = (v["diff"].as_i64(), v["row"]["n"].as_i64()) {
                    seen.lock().unwrap().entry(n).or_insert(at);
                }
            }
        }
    });
    seen_at
}

/// Pushes a row of `fo` for `host` to the server at `addr`: a new alert of `fo_rule`.
async fn alert(client: &HttpClient, addr: &str, host: &str) {
    let row = format!("{{\"host\": \"{host}\", \"v\": 1}}");
    let (st, body) = post(client, addr, "/v1/ingest/fo", row).await;
    assert_eq!(st, 200, "{body}");
}

/// The source the lag is measured with.
const PROBE: &str = "CREATE SOURCE probe (n BIGINT) FROM HTTP;";

/// Pushes `samples` rows to `probe` on the server at `push`, `interval_ms` apart, each timed from
/// its acknowledgement until it arrives in a subscription on each server of `watch_at`: the
/// times in ms, per server.
async fn probe(
    client: &HttpClient,
    push: &str,
    watch_at: &[&str],
    samples: usize,
    interval_ms: u64,
) -> Vec<Vec<f64>> {
    let mut watched = Vec::new();
    for addr in watch_at {
        watched.push(watch(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut acked = HashMap::new();
    for n in 0..samples as i64 {
        let (st, body) = post(client, push, "/v1/ingest/probe", format!("{{\"n\": {n}}}")).await;
        assert_eq!(st, 200, "{body}");
        acked.insert(n, Instant::now());
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    watched
        .iter()
        .map(|seen| {
            let seen = seen.lock().unwrap();
            acked
                .iter()
                .filter_map(|(n, t)| {
                    seen.get(n)
                        .map(|s| s.saturating_duration_since(*t).as_secs_f64() * 1e3)
                })
                .collect()
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let mut tocsin = PathBuf::from("target/release/tocsin");
    let mut dir = PathBuf::from("/tmp/habench");
    let (mut samples, mut interval_ms, mut rounds) = (1000usize, 20u64, 5usize);
    let mut peer_timeout = "5s".to_string();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--tocsin" => tocsin = v.into(),
            "--dir" => dir = v.into(),
            "--samples" => samples = v.parse().expect("--samples N"),
            "--interval-ms" => interval_ms = v.parse().expect("--interval-ms N"),
            "--rounds" => rounds = v.parse().expect("--rounds N"),
            "--peer-timeout" => peer_timeout = v,
            other => panic!(
                "unknown argument {other}: --tocsin PATH --dir DIR --samples N --interval-ms N --rounds N --peer-timeout D"
            ),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let client = server::client();
    // The same rows into a single server, for comparison.
    let single = start(&tocsin, &dir, "single", free_port(), None, &peer_timeout);
    started(&client, &single, Instant::now() + Duration::from_secs(60)).await;
    let (st, body) = post(&client, &single.addr, "/v1/sql", PROBE.to_string()).await;
    assert_eq!(st, 200, "{body}");
    let lags = probe(&client, &single.addr, &[&single.addr], samples, interval_ms).await;
    println!(
        "single server (acknowledged -> in its own subscription): {}",
        percentiles(lags[0].clone())
    );
    drop(single);
    let (pa, pb) = (free_port(), free_port());
    let mut a = start(&tocsin, &dir, "a", pa, Some(("b", pb)), &peer_timeout);
    let b = start(&tocsin, &dir, "b", pb, Some(("a", pa)), &peer_timeout);
    linked(&client, &[&a, &b]).await;

    // The webhook the failover rounds are timed at.
    let (hook, arrivals) = server::webhook().await;
    let (st, body) = post(
        &client,
        &a.addr,
        "/v1/sql",
        format!(
            "{PROBE}
             CREATE SOURCE fo (host TEXT, v DOUBLE) FROM HTTP;
             CREATE SINK fo_hook TO WEBHOOK WITH (url = '{hook}');
             CREATE RULE fo_rule AS SELECT host, v FROM fo WHERE v > 0 WITH (sink = 'fo_hook')"
        ),
    )
    .await;
    assert_eq!(st, 200, "{body}");

    // Lag: pushed to a, seen in a subscription on b and in one on a.
    let lags = probe(&client, &a.addr, &[&b.addr, &a.addr], samples, interval_ms).await;
    println!(
        "replication lag (acknowledged by a -> in b's subscription): {}",
        percentiles(lags[0].clone())
    );
    println!(
        "on the origin (acknowledged by a -> in a's own subscription): {}",
        percentiles(lags[1].clone())
    );

    // Failover: kill -9 of a; a new alert pushed to b at that moment.
    let mut times = Vec::new();
    for round in 0..rounds {
        let host = format!("round{round}");
        let warm = format!("warm{round}");
        alert(&client, &a.addr, &warm).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !arrivals.lock().unwrap().contains_key(&warm) {
            assert!(
                Instant::now() < deadline,
                "the warm-up notification did not come"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        let killed = Instant::now();
        alert(&client, &b.addr, &host).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let arrived = loop {
            if let Some(t) = arrivals.lock().unwrap().get(&host) {
                break *t;
            }
            assert!(Instant::now() < deadline, "no notification from b");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let ms = arrived.saturating_duration_since(killed).as_secs_f64() * 1e3;
        println!("failover round {round}: kill -9 of a -> b's notification {ms:.0} ms");
        times.push(ms);
        drop(a);
        a = start(&tocsin, &dir, "a", pa, Some(("b", pb)), &peer_timeout);
        linked(&client, &[&a, &b]).await;
    }
    println!(
        "failover (kill -9 of the delivering replica -> the other's first notification): {}",
        percentiles(times)
    );
}
