//! Alert-storm load: many hosts push NDJSON over HTTP into a source that many threshold rules
//! read, so that tens of thousands of alert instances fire at once, and the server's resident
//! memory, the rows it acknowledges and the notifications it delivers are sampled over time.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/storm --listen 127.0.0.1:17800 &
//! storm --server 127.0.0.1:17800 --pid $! --rules 100 --hosts 500 --rate 20000 --seconds 180
//! ```
//!
//! Options: `--rules N` (default 100) rules `SELECT host, avg(v) AS v FROM m WHERE ts > now() -
//! INTERVAL '20 seconds' GROUP BY host HAVING avg(v) > T WITH (for = '5s', sink = 'log')` with T
//! from 50 to 80; `--hosts N` (default 500) hosts, each drifting around its own level in [0, 100);
//! `--rate N` rows/s offered (default 20000) over `--connections N` (default 2); `--seconds N`
//! (default 180); `--sample N` seconds between samples (default 10); `--group` makes the sink
//! `log` group by rule (`group_wait` 10 s). The source is `m (host TEXT, v DOUBLE)`, retained 1
//! minute. Prints one Markdown table row per sample.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tocsin_benches::server::{metric, metrics, post, rss_mb, HttpClient};

struct Args {
    server: String,
    pid: Option<u32>,
    rules: usize,
    hosts: usize,
    rate: u64,
    connections: u64,
    seconds: u64,
    sample: u64,
    group: bool,
}

fn args() -> Args {
    let mut a = Args {
        server: "127.0.0.1:7654".into(),
        pid: None,
        rules: 100,
        hosts: 500,
        rate: 20_000,
        connections: 2,
        seconds: 180,
        sample: 10,
        group: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        let mut take = 2;
        match argv[i].as_str() {
            "--server" => a.server = v,
            "--pid" => a.pid = Some(v.parse().expect("--pid N")),
            "--rules" => a.rules = v.parse().expect("--rules N"),
            "--hosts" => a.hosts = v.parse().expect("--hosts N"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--sample" => a.sample = v.parse().expect("--sample N"),
            "--group" => {
                a.group = true;
                take = 1;
            }
            other => panic!("unknown option {other}"),
        }
        i += take;
    }
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let client: HttpClient = tocsin_benches::server::client();
    let sink = if a.group {
        "CREATE SINK log TO LOG WITH (group_by = 'rule')"
    } else {
        "CREATE SINK log TO LOG"
    };
    let mut setup = vec![
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP WITH (retain = '1 minute')".to_string(),
        sink.to_string(),
    ];
    for i in 0..a.rules {
        let t = 50.0 + 30.0 * i as f64 / a.rules.max(1) as f64;
        setup.push(format!(
            "CREATE RULE r{i} AS SELECT host, avg(v) AS v FROM m \
             WHERE ts > now() - INTERVAL '20 seconds' GROUP BY host HAVING avg(v) > {t} \
             WITH (for = '5s', sink = 'log')"
        ));
    }
    let (st, body) = post(
        &client,
        format!("http://{}/v1/sql", a.server),
        "text/plain",
        setup.join(";\n").into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    // 10 batches per second per connection.
    let per_batch = (a.rate / a.connections / 10).max(1) as usize;
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let (client, acked, server) = (client.clone(), acked.clone(), a.server.clone());
        let hosts = a.hosts;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let levels: Vec<f64> = {
                let mut r = rand::rngs::StdRng::seed_from_u64(42);
                (0..hosts).map(|_| r.gen_range(0.0..100.0)).collect()
            };
            let mut batch = 0u64;
            while Instant::now() < deadline {
                let mut body = String::with_capacity(per_batch * 32);
                for _ in 0..per_batch {
                    let h = rng.gen_range(0..hosts);
                    let v = levels[h] + rng.gen_range(-5.0..5.0);
                    body.push_str(&format!("{{\"host\":\"h{h}\",\"v\":{v:.2}}}\n"));
                }
                let (st, ack) = post(
                    &client,
                    format!("http://{server}/v1/ingest/m"),
                    "application/x-ndjson",
                    body.into_bytes(),
                )
                .await;
                if st == 200 {
                    let v: serde_json::Value = serde_json::from_slice(&ack).unwrap();
                    acked.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
                batch += 1;
                let next = started + Duration::from_millis(100 * batch);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }));
    }
    println!(
        "| s | RSS MB | rows/s acknowledged | alerts firing | notifications delivered (total) | messages sent (total) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut last = 0;
    let mut tick = 1;
    while Instant::now() < deadline {
        let at = started + Duration::from_secs(a.sample * tick);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        tick += 1;
        let now = acked.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / a.sample as f64;
        last = now;
        let text = metrics(&client, &format!("http://{}", a.server)).await;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            started.elapsed().as_secs(),
            a.pid.map_or(0.0, rss_mb),
            rate,
            metric(&text, "tocsin_alerts{state=\"firing\"}"),
            metric(&text, "tocsin_sink_delivered_total{sink=\"log\"}"),
            metric(&text, "tocsin_sink_messages_total{sink=\"log\"}"),
        );
    }
    for t in tasks {
        t.await.unwrap();
    }
}
