//! End-to-end load of the paths other tools write to: Prometheus remote write (to tocsin, to
//! VictoriaMetrics or to Prometheus' own receiver, the same requests) and InfluxDB v2 line
//! protocol with gzip.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/wb &
//! writebench --server 127.0.0.1:7654 --protocol remote-write --requests 200 --series 10000 --connections 2
//! victoria-metrics -storageDataPath /tmp/vm -httpListenAddr 127.0.0.1:8428 &
//! writebench --server 127.0.0.1:8428 --target other --protocol remote-write
//! writebench --server 127.0.0.1:7654 --protocol influx --requests 200 --series 10000 --connections 2
//! ```
//!
//! Every request is built and compressed before the clock starts. Against tocsin the source
//! (`rwb FROM PROMETHEUS`, or `ilp (host, region, usage, system, idle)` for line protocol) and a
//! view counting its rows are created, and two times are reported: until every request was
//! acknowledged (durable in the WAL), and until the view counted every sample exactly once.
//! Against another server (`--target other`) the first only: the time to acknowledge.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tocsin_connectors::prometheus::remote_write::{Label, Sample, TimeSeries, WriteRequest};

struct Args {
    server: String,
    protocol: String,
    tocsin: bool,
    requests: usize,
    series: usize,
    connections: usize,
    path: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        server: "127.0.0.1:7654".into(),
        protocol: "remote-write".into(),
        tocsin: true,
        requests: 200,
        series: 10_000,
        connections: 2,
        path: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--server" => a.server = v,
            "--protocol" => a.protocol = v,
            "--target" => a.tocsin = v == "tocsin",
            "--requests" => a.requests = v.parse().expect("--requests N"),
            "--series" => a.series = v.parse().expect("--series N"),
            "--connections" => a.connections = v.parse().expect("--connections N"),
            "--path" => a.path = Some(v),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn label(k: &str, v: &str) -> Label {
    Label {
        name: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

/// Request `r` of connection `shard`: every series of that shard once, at a time of its own (a
/// scrape of 10,000 series, as one of Prometheus' shards sends it). Each connection sends the
/// requests of its shard in order, so every series' samples arrive in time order, as a
/// receiver that refuses out-of-order samples (Prometheus) needs.
fn remote_write(r: usize, shard: usize, series: usize, base_ms: i64) -> Vec<u8> {
    let request = WriteRequest {
        timeseries: (0..series)
            .map(|i| TimeSeries {
                labels: vec![
                    label("__name__", &format!("rwb_metric_{}", i % 100)),
                    label("instance", &format!("host{}-{shard}:9100", i / 100)),
                    label("job", "node"),
                    label("region", ["eu", "us", "ap"][i % 3]),
                ],
                samples: vec![Sample {
                    value: (r * series + i) as f64,
                    timestamp: base_ms + r as i64,
                }],
                histograms: vec![],
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap()
}

/// Request `r` in line protocol, gzip-compressed: `series` lines as Telegraf's `cpu` input
/// writes them.
fn influx(r: usize, series: usize, base_ms: i64) -> Vec<u8> {
    let mut text = String::with_capacity(series * 96);
    for i in 0..series {
        text.push_str(&format!(
            "ilp,host=host{},region={} usage={}.5,system=1.25,idle={} {}\n",
            i,
            ["eu", "us", "ap"][i % 3],
            i % 100,
            r,
            base_ms + r as i64
        ));
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

async fn sql(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    server: &str,
    stmt: &str,
) -> serde_json::Value {
    let req = hyper::Request::post(format!("http://{server}/v1/sql"))
        .body(Full::new(Bytes::from(stmt.to_string())))
        .unwrap();
    let resp = client.request(req).await.expect("reach tocsin");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).expect("a JSON answer")
}

#[tokio::main]
async fn main() {
    let a = args();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let remote = a.protocol == "remote-write";
    let (source, ddl) = if remote {
        (
            "rwb",
            "CREATE SOURCE rwb FROM PROMETHEUS WITH (retain = '1 hour')",
        )
    } else {
        ("ilp", "CREATE SOURCE ilp (host TEXT, region TEXT, usage DOUBLE, system DOUBLE, idle DOUBLE) FROM HTTP WITH (retain = '1 hour')")
    };
    if a.tocsin {
        for stmt in [
            ddl.to_string(),
            format!("CREATE VIEW {source}_count AS SELECT count(*) AS n FROM {source}"),
        ] {
            let v = sql(&client, &a.server, &stmt).await;
            if v.get("error").is_some() && !v.to_string().contains("already exists") {
                panic!("{stmt}: {v}");
            }
        }
    }
    let before = if a.tocsin {
        sql(&client, &a.server, &format!("SELECT n FROM {source}_count")).await["results"][0]
            ["rows"][0][0]
            .as_u64()
            .unwrap_or(0)
    } else {
        0
    };
    let base_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - a.requests as i64;
    let built = Instant::now();
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..a.requests)
            .map(|r| {
                Bytes::from(if remote {
                    remote_write(r, r % a.connections, a.series, base_ms)
                } else {
                    influx(r, a.series, base_ms)
                })
            })
            .collect(),
    );
    let bytes: usize = bodies.iter().map(Bytes::len).sum();
    eprintln!(
        "built {} requests ({:.1} MB compressed) in {:.1} s",
        a.requests,
        bytes as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );
    let path = a.path.clone().unwrap_or_else(|| {
        if remote {
            if a.tocsin {
                format!("/v1/ingest/{source}")
            } else {
                "/api/v1/write".into()
            }
        } else {
            "/api/v2/write?org=o&bucket=b&precision=ms".into()
        }
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let (bodies, client) = (bodies.clone(), client.clone());
        let url = format!("http://{}{path}", a.server);
        let connections = a.connections;
        tasks.push(tokio::spawn(async move {
            for body in bodies.iter().skip(c).step_by(connections) {
                loop {
                    let mut req = hyper::Request::post(&url);
                    req = if remote {
                        req.header("content-type", "application/x-protobuf")
                            .header("content-encoding", "snappy")
                            .header("x-prometheus-remote-write-version", "0.1.0")
                    } else {
                        req.header("content-type", "text/plain; charset=utf-8")
                            .header("content-encoding", "gzip")
                    };
                    let resp = client
                        .request(req.body(Full::new(body.clone())).unwrap())
                        .await
                        .expect("request");
                    let status = resp.status();
                    let text = resp.into_body().collect().await.unwrap().to_bytes();
                    if status.as_u16() == 503 || status.as_u16() == 429 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    assert!(
                        status.is_success(),
                        "{status}: {}",
                        String::from_utf8_lossy(&text)
                    );
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = started.elapsed().as_secs_f64();
    let samples = (a.requests * a.series) as f64;
    println!(
        "{} to {}: {} requests x {} series, {} connections: acknowledged in {acked:.2} s = {:.0} samples/s",
        if remote { "remote write" } else { "line protocol v2 (gzip)" },
        if a.tocsin { "tocsin" } else { a.server.as_str() },
        a.requests,
        a.series,
        a.connections,
        samples / acked
    );
    if a.tocsin {
        let want = before + a.requests as u64 * a.series as u64;
        loop {
            let n = sql(&client, &a.server, &format!("SELECT n FROM {source}_count")).await
                ["results"][0]["rows"][0][0]
                .as_u64()
                .unwrap_or(0);
            if n >= want {
                assert_eq!(n, want, "the view counted more samples than were sent");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counted = started.elapsed().as_secs_f64();
        println!(
            "counted once by the view in {counted:.2} s = {:.0} samples/s",
            samples / counted
        );
    }
}
