//! End-to-end load generator: pushes NDJSON or Arrow IPC over HTTP or WebSocket to a running
//! `tocsin serve` that has one rule on the target source, and reports accepted rows per second.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/load &
//! loadgen --server 127.0.0.1:7654 --format arrow --transport ws --connections 4 --seconds 10
//! ```
//!
//! Options: `--format ndjson|arrow`, `--transport http|ws`, `--connections N` (default 4),
//! `--rows N` rows per batch (default 10000), `--seconds N` (default 10), `--hosts N` distinct
//! hosts (default 1000), `--rule avg|p99|p99approx|top10` the rule `load_hot` (default `avg`:
//! average CPU per host over 10 s above 99; `p99` and `p99approx`: its 99th percentile, exact or
//! approximate, above 99.9; `top10`: the ten hosts with the highest average). The source
//! `load (host TEXT, cpu DOUBLE, ts TIMESTAMP)` and the rule are created when missing, so use a
//! fresh data dir to change the rule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use tocsin_connectors::push::write_arrow_stream;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    server: String,
    arrow: bool,
    ws: bool,
    connections: usize,
    rows: usize,
    seconds: u64,
    hosts: usize,
    rule: String,
}

fn args() -> Args {
    let mut a = Args {
        server: "127.0.0.1:7654".into(),
        arrow: false,
        ws: false,
        connections: 4,
        rows: 10_000,
        seconds: 10,
        hosts: 1_000,
        rule: "avg".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let (k, v) = (
            pair[0].as_str(),
            pair.get(1).map(String::as_str).unwrap_or(""),
        );
        match k {
            "--server" => a.server = v.into(),
            "--format" => a.arrow = v == "arrow",
            "--transport" => a.ws = v == "ws",
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--rows" => a.rows = v.parse().expect("--rows N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--hosts" => a.hosts = v.parse().expect("--hosts N"),
            "--rule" => a.rule = v.into(),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// One payload of `rows` rows (no `ts`: the server stamps arrival time).
fn payload(arrow: bool, rows: usize, hosts: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let host: Vec<String> = (0..rows)
        .map(|_| format!("h{}", rng.gen_range(0..hosts)))
        .collect();
    let cpu: Vec<f64> = (0..rows).map(|_| rng.gen_range(0.0..100.0)).collect();
    if arrow {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, false),
            Field::new("cpu", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(host)),
                Arc::new(Float64Array::from(cpu)),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        write_arrow_stream(&mut buf, &[batch]).unwrap();
        buf
    } else {
        let mut s = String::with_capacity(rows * 32);
        for (h, c) in host.iter().zip(&cpu) {
            s.push_str(&format!("{{\"host\":\"{h}\",\"cpu\":{c:.2}}}\n"));
        }
        s.into_bytes()
    }
}

fn accepted(ack: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(ack).expect("a JSON ack");
    if let Some(e) = v.get("error") {
        panic!("refused: {e}");
    }
    v["accepted"].as_u64().unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let a = args();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    const WINDOW: &str = "FROM load WHERE ts > now() - INTERVAL '10 seconds' GROUP BY host";
    let rule = match a.rule.as_str() {
        "avg" => format!("SELECT host, avg(cpu) AS cpu {WINDOW} HAVING avg(cpu) > 99"),
        "p99" => format!("SELECT host, percentile_cont(0.99) WITHIN GROUP (ORDER BY cpu) AS p99 {WINDOW} HAVING percentile_cont(0.99) WITHIN GROUP (ORDER BY cpu) > 99.9"),
        "p99approx" => format!("SELECT host, approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY cpu) AS p99 {WINDOW} HAVING approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY cpu) > 99.9"),
        "top10" => format!("SELECT host, avg(cpu) AS cpu {WINDOW} ORDER BY cpu DESC LIMIT 10"),
        other => panic!("unknown --rule {other}: avg, p99, p99approx or top10"),
    };
    for stmt in [
        "CREATE SOURCE load (host TEXT, cpu DOUBLE) FROM HTTP WITH (retain = '1m')".to_string(),
        format!("CREATE RULE load_hot AS {rule}"),
    ] {
        let req = hyper::Request::post(format!("http://{}/v1/sql", a.server))
            .body(Full::new(Bytes::from(stmt.clone())))
            .unwrap();
        let resp = client.request(req).await.expect("reach tocsin");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if !status.is_success() && !String::from_utf8_lossy(&body).contains("already exists") {
            panic!("{stmt}: {}", String::from_utf8_lossy(&body));
        }
    }
    let payloads: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..8)
            .map(|i| payload(a.arrow, a.rows, a.hosts, i))
            .collect(),
    );
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let (payloads, total, client) = (payloads.clone(), total.clone(), client.clone());
        let server = a.server.clone();
        let (arrow, ws) = (a.arrow, a.ws);
        tasks.push(tokio::spawn(async move {
            let content_type = if arrow {
                "application/vnd.apache.arrow.stream"
            } else {
                "application/x-ndjson"
            };
            let mut i = c;
            if ws {
                let url = format!(
                    "ws://{server}/v1/ingest/load?format={}",
                    if arrow { "arrow" } else { "ndjson" }
                );
                let (mut sock, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .expect("connect");
                while Instant::now() < deadline {
                    let p = payloads[i % payloads.len()].clone();
                    i += 1;
                    let msg = if arrow {
                        Message::Binary(p.into())
                    } else {
                        Message::Text(String::from_utf8(p).unwrap().into())
                    };
                    sock.send(msg).await.expect("send");
                    let ack = loop {
                        match sock.next().await.expect("open").expect("frame") {
                            Message::Text(t) => break t,
                            _ => continue,
                        }
                    };
                    total.fetch_add(accepted(ack.as_bytes()), Ordering::Relaxed);
                }
            } else {
                while Instant::now() < deadline {
                    let p = payloads[i % payloads.len()].clone();
                    i += 1;
                    let req = hyper::Request::post(format!("http://{server}/v1/ingest/load"))
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(p)))
                        .unwrap();
                    let resp = client.request(req).await.expect("request");
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    total.fetch_add(accepted(&body), Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let rows = total.load(Ordering::Relaxed);
    println!(
        "{} over {}: {} connection(s), {} rows/batch: {rows} rows in {secs:.1} s = {:.0} rows/s",
        if a.arrow { "Arrow IPC" } else { "NDJSON" },
        if a.ws { "WebSocket" } else { "HTTP" },
        a.connections,
        a.rows,
        rows as f64 / secs
    );
}
