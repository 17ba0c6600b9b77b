//! Alert latency: the time from a row being accepted by `tocsin serve` to its notification
//! arriving at a webhook receiver (which includes the local HTTP POST), for a rule with
//! `for = '0s'`. Reports p50, p99 and max.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/lat &
//! alertlat --server 127.0.0.1:7654 --samples 1000 --interval-ms 20
//! ```
//!
//! Every sample is one row of a new host, so it makes a new alert and one firing notification.
//! `--rule filter` (the default) is `SELECT host, v FROM lat WHERE v > 0`, a dataflow of its own;
//! `--rule grouped` is `SELECT host, max(v) AS v FROM lat GROUP BY host HAVING max(v) > 0`, a
//! member of the group of its shared aggregation (its rows go through the aggregation, the
//! group's evaluation and the group's arrangement).
//! Creates the source `lat`, the sink `lat_hook` (pointing at this program) and the rule
//! `lat_rule`; drop them to run again on the same server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() {
    let mut server = "127.0.0.1:7654".to_string();
    let (mut samples, mut interval_ms) = (1000usize, 20u64);
    let mut rule = "filter".to_string();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--server" => server = v,
            "--samples" => samples = v.parse().expect("--samples N"),
            "--interval-ms" => interval_ms = v.parse().expect("--interval-ms N"),
            "--rule" => rule = v,
            other => panic!("unknown argument {other}"),
        }
    }
    // The receiver notes when each host's notification arrives.
    let (hook, arrivals) = tocsin_benches::server::webhook().await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |path: String, body: String| {
        let client = client.clone();
        let url = format!("http://{server}{path}");
        async move {
            let req = hyper::Request::post(url)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = client.request(req).await.expect("reach tocsin");
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(status.is_success(), "{}", String::from_utf8_lossy(&body));
        }
    };
    let query = match rule.as_str() {
        "filter" => "SELECT host, v FROM lat WHERE v > 0",
        "grouped" => "SELECT host, max(v) AS v FROM lat GROUP BY host HAVING max(v) > 0",
        other => panic!("--rule filter|grouped, not {other}"),
    };
    post(
        "/v1/sql".into(),
        format!(
            "CREATE SOURCE lat (host TEXT, v DOUBLE) FROM HTTP;
             CREATE SINK lat_hook TO WEBHOOK WITH (url = '{hook}');
             CREATE RULE lat_rule AS {query} WITH (for = '0s', sink = 'lat_hook')"
        ),
    )
    .await;
    let mut accepted_at = HashMap::new();
    let tag = std::process::id();
    for i in 0..samples {
        let host = format!("h{tag}-{i}");
        post(
            "/v1/ingest/lat".into(),
            format!("{{\"host\": \"{host}\", \"v\": 1}}"),
        )
        .await;
        accepted_at.insert(host, Instant::now());
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < samples && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrivals = arrivals.lock().unwrap();
    let mut lat: Vec<f64> = accepted_at
        .iter()
        .filter_map(|(h, t)| {
            arrivals
                .get(h)
                .map(|a| a.saturating_duration_since(*t).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    assert!(!lat.is_empty(), "no notification arrived");
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "samples {} (of {samples} sent)  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        lat[lat.len() - 1]
    );
}
