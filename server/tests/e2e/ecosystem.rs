//! The tools operators already run, unmodified: Prometheus remote-writing its own scrape,
//! InfluxDB's Python client and line protocol over v1, v2 and v3, the OpenTelemetry Python SDK
//! over OTLP/HTTP; and what a hostile sender gets.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use tocsin_connectors::prometheus::remote_write::{Label, Sample, TimeSeries, WriteRequest};

use crate::common::*;

fn label(k: &str, v: &str) -> Label {
    Label {
        name: k.as_bytes().to_vec().into(),
        value: v.as_bytes().to_vec().into(),
    }
}

/// A remote write body, snappy-compressed: `series` series of metric `name` with one sample
/// each at `ts`.
fn remote_write(name: &str, series: usize, ts: i64) -> Vec<u8> {
    let request = WriteRequest {
        timeseries: (0..series)
            .map(|i| TimeSeries {
                labels: vec![
                    label("__name__", name),
                    label("instance", &format!("host{i}:9100")),
                    label("job", "node"),
                ],
                samples: vec![Sample {
                    value: i as f64,
                    timestamp: ts,
                }],
                histograms: vec![],
            })
            .collect(),
    };
    snappy(&request.encode_to_vec())
}

fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

async fn post(
    s: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    request_with(&s.addr, "POST", path, headers, body)
        .await
        .unwrap()
}

const RW: [(&str, &str); 2] = [
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
];

async fn count(s: &Server, sql: &str) -> i64 {
    s.rows(sql).await[0][0].as_i64().unwrap()
}

/// Runs a Python program to its end; its standard output, or a failure with its errors.
fn python(program: &str) -> String {
    let out = run_piped(
        {
            let mut c = Command::new("python3");
            c.arg("-");
            c
        },
        Some(program),
    );
    assert!(
        out.status.success(),
        "python3 failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_every_raw_sample_it_stores() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded default has the `prometheus` source: no DDL.
    let s = Server::start(&dir.path().join("data"), &["--default"]).await;
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: prom\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
             remote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            s.addr
        ),
    )
    .unwrap();
    let _prometheus = Peer(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (apt-get install prometheus)"),
    );
    eventually(90, "remote-written scrapes of `up`", || async {
        (count(&s, "SELECT count(*) FROM prometheus WHERE metric = 'up'").await >= 5).then_some(())
    })
    .await;
    // Prometheus's raw samples of some series, as its API answers a range selector.
    let selector = r#"{job="prom",__name__=~"up|scrape_duration_seconds|scrape_samples_scraped|prometheus_http_requests_total|go_goroutines"}[1h]"#;
    let path = format!(
        "/api/v1/query?query={}",
        selector
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let (status, body) = {
        let (st, _, b) = request(&format!("127.0.0.1:{port}"), "GET", &path, None, Vec::new())
            .await
            .unwrap();
        (st, b)
    };
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    // (metric, labels without __name__) -> [(ms, value)]
    let mut stored: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
    for series in answer["data"]["result"].as_array().unwrap() {
        let mut labels = series["metric"].as_object().unwrap().clone();
        let name = labels
            .remove("__name__")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let key = (name, Value::Object(labels).to_string());
        for v in series["values"].as_array().unwrap() {
            let ms = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
            let value: f64 = v[1].as_str().unwrap().parse().unwrap();
            stored.entry(key.clone()).or_default().push((ms, value));
        }
    }
    let samples: usize = stored.values().map(Vec::len).sum();
    assert!(stored.len() >= 5 && samples >= 20, "{stored:?}");
    // Every one of them reaches tocsin, with the same millisecond and value, once.
    let sql = "SELECT metric, labels, value, CAST(round(extract(epoch FROM ts) * 1000) AS BIGINT) FROM prometheus WHERE metric IN ('up', 'scrape_duration_seconds', 'scrape_samples_scraped', 'prometheus_http_requests_total', 'go_goroutines') AND labels LIKE '%\"job\":\"prom\"%'";
    let mut missing = Vec::new();
    for _ in 0..300 {
        let mut got: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
        for r in s.rows(sql).await {
            let key = (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
            );
            let v = r[2].as_f64().unwrap_or(f64::NAN);
            got.entry(key)
                .or_default()
                .push((r[3].as_i64().unwrap(), v));
        }
        missing.clear();
        for (key, want) in &stored {
            let first = want.iter().map(|s| s.0).min().unwrap();
            let last = want.iter().map(|s| s.0).max().unwrap();
            let mut have: Vec<(i64, f64)> = got
                .get(key)
                .map(|v| {
                    v.iter()
                        .copied()
                        .filter(|s| s.0 >= first && s.0 <= last)
                        .collect()
                })
                .unwrap_or_default();
            have.sort_by_key(|a| a.0);
            let mut want = want.clone();
            want.sort_by_key(|a| a.0);
            let same = have.len() == want.len()
                && have
                    .iter()
                    .zip(&want)
                    .all(|(h, w)| h.0 == w.0 && (h.1 == w.1 || (h.1.is_nan() && w.1.is_nan())));
            if !same {
                missing.push(format!("{key:?}: prometheus {want:?}, tocsin {have:?}"));
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_is_acknowledged_once_durable_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]).await;
    // Without the source, the path says how to make it.
    let (st, _, b) = post(&s, "/api/v1/write", &RW, remote_write("up", 3, 1_000)).await;
    assert_eq!(st, 404);
    let text = String::from_utf8_lossy(&b);
    assert!(
        text.contains("CREATE SOURCE prometheus FROM PROMETHEUS"),
        "{text}"
    );
    s.rows("CREATE SOURCE prometheus (instance TEXT) FROM PROMETHEUS WITH (retain = '100 days')")
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for batch in 0..5 {
        let (st, _, b) = post(
            &s,
            "/api/v1/write",
            &RW,
            remote_write("node_load1", 1000, now - batch),
        )
        .await;
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        let ack: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(ack["accepted"], 1000);
    }
    let data = s.kill();
    let s = Server::start(&data, &[]).await;
    assert_eq!(count(&s, "SELECT count(*) FROM prometheus").await, 5000);
    // The declared column holds its label; the labels are the JSON of every label but the name.
    let rows = s
        .rows(
            "SELECT instance, labels, value FROM prometheus WHERE instance = 'host7:9100' LIMIT 1",
        )
        .await;
    assert_eq!(
        rows,
        [json!([
            "host7:9100",
            "{\"instance\":\"host7:9100\",\"job\":\"node\"}",
            7.0
        ])]
    );
    // A label read with the JSON functions, and the labels as a GROUP BY key.
    let rows = s
        .rows("SELECT json_get_str(labels, 'job') AS job, count(DISTINCT labels) FROM prometheus GROUP BY 1")
        .await;
    assert_eq!(rows, [json!(["node", 1000])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_get_a_clear_4xx_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--max-body", "8MiB", "--write-token", "w1"],
    )
    .await;
    let admin = |sql: &'static str| async move { sql };
    let _ = admin;
    let auth = ("authorization", "Bearer w1");
    let (st, _, b) = post(
        &s,
        "/v1/sql",
        &[auth, ("content-type", "text/plain")],
        b"CREATE SOURCE prometheus FROM PROMETHEUS".to_vec(),
    )
    .await;
    // The write token may not create sources: start again with the catalog made open.
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&b));
    drop(s);
    let s = Server::start(&dir.path().join("data2"), &["--max-body", "8MiB"]).await;
    s.rows(
        "CREATE SOURCE prometheus FROM PROMETHEUS; CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP",
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let good = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![label("__name__", "up")],
            samples: vec![Sample {
                value: 1.0,
                timestamp: now,
            }],
            histograms: vec![],
        }],
    }
    .encode_to_vec();
    let not_utf8 = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![
                label("__name__", "up"),
                Label {
                    name: b"job".to_vec().into(),
                    value: b"\xc3\x28".to_vec().into(),
                },
            ],
            samples: vec![Sample {
                value: 1.0,
                timestamp: 5,
            }],
            histograms: vec![],
        }],
    }
    .encode_to_vec();
    let wide = WriteRequest {
        timeseries: vec![
            TimeSeries {
                labels: vec![label("__name__", "fine")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
                histograms: vec![],
            },
            TimeSeries {
                labels: (0..10_000).map(|i| label(&format!("l{i}"), "v")).collect(),
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
                histograms: vec![],
            },
        ],
    }
    .encode_to_vec();
    type Case<'a> = (&'a str, Vec<u8>, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "corrupt snappy",
            b"\x0a\xff\xff\xff".to_vec(),
            &RW,
            400,
            "not valid snappy",
        ),
        (
            "truncated protobuf",
            snappy(&good[..good.len() - 4]),
            &RW,
            400,
            "not a remote write request",
        ),
        ("invalid UTF-8", snappy(&not_utf8), &RW, 400, "not UTF-8"),
        ("10,000 labels", snappy(&wide), &RW, 400, "10000 labels"),
        (
            "unknown encoding",
            good.clone(),
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "br"),
            ],
            415,
            "unsupported Content-Encoding",
        ),
    ];
    for (what, body, headers, status, says) in cases {
        let (st, _, b) = post(&s, "/api/v1/write", headers, body).await;
        let text = String::from_utf8_lossy(&b);
        assert_eq!(st, status, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
    }
    assert_eq!(count(&s, "SELECT count(*) FROM prometheus").await, 0);
    // The last errors are shown with the source.
    let (_, b) = s.get("/v1/catalog").await.unwrap();
    let catalog: Value = serde_json::from_slice(&b).unwrap();
    let errors = catalog["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "prometheus")
        .unwrap()["ingest"]["last_errors"]
        .to_string();
    assert!(errors.contains("10000 labels"), "{errors}");
    // A gzip bomb: 1 MB that expands to 1 GB, refused with 413 having produced at most the
    // limit; the memory stays flat.
    let member = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b'\n'; 64 << 20]).unwrap();
        e.finish().unwrap()
    };
    let bomb: Vec<u8> = member.repeat(16);
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let before = s.rss();
    for _ in 0..5 {
        let (st, _, b) = post(
            &s,
            "/v1/ingest/m",
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "gzip"),
            ],
            bomb.clone(),
        )
        .await;
        let text = String::from_utf8_lossy(&b);
        assert_eq!(st, 413, "{text}");
        assert!(
            text.contains("decompresses to more than the limit of 8388608 bytes"),
            "{text}"
        );
    }
    let grown = s.rss().saturating_sub(before);
    assert!(grown < 100 << 20, "RSS grew {grown} bytes over five bombs");
    assert_eq!(count(&s, "SELECT count(*) FROM m").await, 0);
    // A page of another origin may not write.
    let mut body = vec![];
    body.extend_from_slice(&snappy(&good));
    let (st, _, _) = post(
        &s,
        "/api/v1/write",
        &[RW[0], RW[1], ("origin", "https://evil.example")],
        body,
    )
    .await;
    assert_eq!(st, 403);
    // And the good payload goes in.
    let (st, _, _) = post(&s, "/api/v1/write", &RW, snappy(&good)).await;
    assert_eq!(st, 200);
    assert_eq!(count(&s, "SELECT count(*) FROM prometheus").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoints_need_the_write_scope_and_take_influx_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--admin-token",
            "a1",
            "--write-token",
            "w1",
            "--read-token",
            "r1",
        ],
    )
    .await;
    let (st, _, b) = post(
        &s,
        "/v1/sql",
        &[("authorization", "Bearer a1"), ("content-type", "text/plain")],
        b"CREATE SOURCE prometheus FROM PROMETHEUS; CREATE SOURCE otlp FROM OTLP; CREATE SOURCE cpu (host TEXT, usage DOUBLE) FROM HTTP".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let line = b"cpu,host=a usage=1".to_vec();
    for path in [
        "/write",
        "/api/v2/write?bucket=b&org=o",
        "/api/v3/write_lp?db=d",
        "/api/v1/write",
        "/v1/metrics",
    ] {
        let (st, _, _) = post(&s, path, &[], line.clone()).await;
        assert_eq!(st, 401, "{path} without a token");
        let (st, _, _) = post(&s, path, &[("authorization", "Token r1")], line.clone()).await;
        assert_eq!(st, 403, "{path} with a read token");
    }
    let (st, _, b) = post(
        &s,
        "/api/v2/write?bucket=b&org=o&precision=s",
        &[("authorization", "Token w1")],
        line,
    )
    .await;
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_clients_write_over_v1_v2_and_v3() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows("CREATE SOURCE cpu (host TEXT, usage DOUBLE, cores BIGINT) FROM HTTP WITH (retain = '100000 days'); CREATE SOURCE mem (host TEXT, used DOUBLE) FROM HTTP WITH (retain = '100000 days')")
        .await;
    // InfluxDB's own Python client, v2 API with gzip on: a batch across two measurements, then
    // a partial write, which the client reports as InfluxDB's 400.
    let out = python(&format!(
        r#"
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
with InfluxDBClient(url="http://{addr}", token="none", org="o", enable_gzip=True) as c:
    w = c.write_api(write_options=SYNCHRONOUS)
    w.write(bucket="b", record=[
        Point("cpu").tag("host", "py1").field("usage", 1.5).field("cores", 8).time(1700000000, WritePrecision.S),
        Point("mem").tag("host", "py1").field("used", 0.25).time(1700000000, WritePrecision.S),
    ], write_precision=WritePrecision.S)
    try:
        w.write(bucket="b", record="cpu,host=py2 usage=2.5 1700000001000000000\nnosuch v=1 1700000001000000000\ncpu,host=py3 usage=\"hot\" 1700000001000000000")
        print("no error")
    except ApiException as e:
        print(e.status)
        print(e.body)
"#,
        addr = s.addr
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("400"), "{out}");
    let body: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(body["code"], "invalid");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("partial write: 1 lines written, 2 not"),
        "{message}"
    );
    assert!(
        message.contains("line 2: source \"nosuch\" does not exist"),
        "{message}"
    );
    assert!(message.contains("line 3: field \"usage\""), "{message}");
    let rows = s.rows("SELECT host, usage, cores, CAST(extract(epoch FROM ts) AS BIGINT) FROM cpu ORDER BY host").await;
    assert_eq!(
        rows,
        [
            json!(["py1", 1.5, 8, 1700000000]),
            json!(["py2", 2.5, null, 1700000001])
        ]
    );
    assert_eq!(
        s.rows("SELECT host, used FROM mem").await,
        [json!(["py1", 0.25])]
    );
    // Each precision of each API, the same instant.
    let cases: [(&str, &str, &str); 16] = [
        ("/write?db=d", "n", "1700000100000000000"),
        ("/write?db=d", "u", "1700000100000000"),
        ("/write?db=d", "ms", "1700000100000"),
        ("/write?db=d", "s", "1700000100"),
        ("/write?db=d", "m", "28333335"),
        ("/write?db=d", "h", "472222"),
        ("/api/v2/write?bucket=b&org=o", "ns", "1700000100000000000"),
        ("/api/v2/write?bucket=b&org=o", "us", "1700000100000000"),
        ("/api/v2/write?bucket=b&org=o", "ms", "1700000100000"),
        ("/api/v2/write?bucket=b&org=o", "s", "1700000100"),
        ("/api/v3/write_lp?db=d", "nanosecond", "1700000100000000000"),
        ("/api/v3/write_lp?db=d", "microsecond", "1700000100000000"),
        ("/api/v3/write_lp?db=d", "millisecond", "1700000100000"),
        ("/api/v3/write_lp?db=d", "second", "1700000100"),
        ("/api/v3/write_lp?db=d", "auto", "1700000100000"),
        ("/api/v3/write_lp?db=d", "auto", "1700000100"),
    ];
    for (i, (path, precision, t)) in cases.iter().enumerate() {
        let body = format!("cpu,host=p{i} usage={i} {t}\n");
        let (st, _, b) = post(
            &s,
            &format!("{path}&precision={precision}"),
            &[],
            body.into_bytes(),
        )
        .await;
        assert_eq!(
            st,
            204,
            "{path} {precision}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    let rows = s
        .rows("SELECT host, CAST(extract(epoch FROM ts) AS BIGINT) FROM cpu WHERE host LIKE 'p%' AND host NOT LIKE 'py%' ORDER BY usage")
        .await;
    let expect: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, p, _))| {
            // Minutes and hours cannot say the instant to the second.
            let t = match *p {
                "m" => 28333335 * 60,
                "h" => 472222 * 3600,
                _ => 1700000100,
            };
            json!([format!("p{i}"), t])
        })
        .collect();
    assert_eq!(rows, expect);
    // v1 and v3 answer a partial write with `error` too; a bad precision is refused whole.
    let (st, _, b) = post(
        &s,
        "/write?db=d",
        &[],
        b"cpu,host=z usage=1\ncpu,host=z usage=T\n".to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    let (st, _, b) = post(
        &s,
        "/api/v2/write?bucket=b&precision=ks",
        &[],
        b"cpu usage=1".to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("use ns, us, ms, s"),
        "{v}"
    );
    assert_eq!(
        count(&s, "SELECT count(*) FROM cpu WHERE host = 'z'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_exports_counters_and_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows("CREATE SOURCE otlp (job TEXT, region TEXT) FROM OTLP WITH (retain = '100000 days')")
        .await;
    python(&format!(
        r#"
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
exporter = OTLPMetricExporter(endpoint="http://{addr}/v1/metrics")
results = []
export = exporter.export
def recorded(*a, **k):
    r = export(*a, **k)
    results.append(r)
    return r
exporter.export = recorded
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3600000)
provider = MeterProvider(resource=Resource.create({{"service.name": "shop", "service.instance.id": "i-1"}}), metric_readers=[reader])
meter = provider.get_meter("checkout")
orders = meter.create_counter("orders")
orders.add(3, {{"region": "eu"}})
orders.add(2, {{"region": "us"}})
depth = meter.create_up_down_counter("queue_depth")
depth.add(5)
depth.add(-2)
latency = meter.create_histogram("latency_ms")
for v in [1, 7, 30, 700]:
    latency.record(v)
# Shutting down exports once more, the last time.
provider.shutdown()
assert results and all(r == MetricExportResult.SUCCESS for r in results), results
"#,
        addr = s.addr
    ));
    let rows = s
        .rows("SELECT metric, region, value FROM otlp WHERE metric IN ('orders', 'queue_depth') ORDER BY metric, region")
        .await;
    assert_eq!(
        rows,
        [
            json!(["orders", "eu", 3.0]),
            json!(["orders", "us", 2.0]),
            json!(["queue_depth", null, 3.0])
        ]
    );
    let rows = s
        .rows("SELECT DISTINCT job, json_get_str(labels, 'instance'), json_get_str(labels, 'otel_scope_name') FROM otlp")
        .await;
    assert_eq!(rows, [json!(["shop", "i-1", "checkout"])]);
    let rows = s
        .rows("SELECT json_get_str(labels, 'le'), value FROM otlp WHERE metric = 'latency_ms_bucket' AND json_get_str(labels, 'le') IN ('0', '5', '10', '50', '750', '+Inf') ORDER BY value, json_get_str(labels, 'le')")
        .await;
    assert_eq!(
        rows,
        [
            json!(["0", 0.0]),
            json!(["5", 1.0]),
            json!(["10", 2.0]),
            json!(["50", 3.0]),
            json!(["+Inf", 4.0]),
            json!(["750", 4.0])
        ]
    );
    let rows = s
        .rows("SELECT metric, value FROM otlp WHERE metric IN ('latency_ms_sum', 'latency_ms_count') ORDER BY metric")
        .await;
    assert_eq!(
        rows,
        [
            json!(["latency_ms_count", 4.0]),
            json!(["latency_ms_sum", 738.0])
        ]
    );
    // A JSON body, answered in JSON; an exponential histogram is a partial success.
    let body = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cli"}}]},
      "scopeMetrics":[{"metrics":[
        {"name":"temp","gauge":{"dataPoints":[{"asDouble":21.5,"timeUnixNano":"1700000000000000000"}]}},
        {"name":"sizes","exponentialHistogram":{"dataPoints":[{"count":"1"}]}}]}]}]}"#;
    let (st, h, b) = post(
        &s,
        "/v1/metrics",
        &[("content-type", "application/json")],
        body.as_bytes().to_vec(),
    )
    .await;
    // `/v1/metrics` is the path of the source named `otlp`.
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedDataPoints"], "1");
    assert!(
        v["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exponential"),
        "{v}"
    );
    let rows = s.rows("SELECT job, value, CAST(extract(epoch FROM ts) AS BIGINT) FROM otlp WHERE metric = 'temp'").await;
    assert_eq!(rows, [json!(["cli", 21.5, 1700000000])]);
    // A broken body is refused with a google.rpc.Status in the request's encoding.
    let (st, h, b) = post(
        &s,
        "/v1/metrics",
        &[("content-type", "application/json")],
        b"{\"resourceMetrics\": 1}".to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(h["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["code"], 3);
    assert!(
        v["message"].as_str().unwrap().contains("must be an array"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporter_is_scraped_and_its_death_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let port = free_port();
    let exporter = Peer(
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (apt-get install prometheus-node-exporter)"),
    );
    wait_for_port(port, "node_exporter").await;
    s.rows(&format!(
        "CREATE SOURCE node (instance TEXT) FROM PROMETHEUS SCRAPE WITH (targets = '127.0.0.1:{port}', interval = '1s')"
    ))
    .await;
    // What node_exporter serves, read with tocsin's parser from its own answer.
    let (st, _, body) = request(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/metrics",
        None,
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    let served = tocsin_connectors::prometheus::exposition::parse(
        &text,
        tocsin_connectors::prometheus::exposition::Flavor::Text,
    )
    .unwrap();
    assert!(served.len() > 100, "{}", served.len());
    let names: std::collections::BTreeSet<String> =
        served.iter().map(|s| s.name.to_string()).collect();
    let instance = format!("127.0.0.1:{port}");
    let missing = eventually(30, "every metric name node_exporter serves", || {
        let (s, names) = (&s, &names);
        async move {
            let have: std::collections::BTreeSet<String> = s
                .rows("SELECT DISTINCT metric FROM node")
                .await
                .iter()
                .map(|r| r[0].as_str().unwrap().to_string())
                .collect();
            let missing: Vec<&String> = names.iter().filter(|n| !have.contains(*n)).collect();
            missing.is_empty().then_some(missing.len())
        }
    })
    .await;
    assert_eq!(missing, 0);
    // Constants equal what /metrics shows, labels and all.
    for s0 in served
        .iter()
        .filter(|x| x.name.ends_with("_info") || x.name == "node_memory_MemTotal_bytes")
    {
        let mut labels: BTreeMap<String, String> = s0
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert("job".into(), "node".into());
        labels.insert("instance".into(), instance.clone());
        let json = serde_json::to_string(&labels).unwrap();
        let rows = s
            .rows(&format!(
                "SELECT DISTINCT value, instance FROM node WHERE metric = '{}' AND labels = '{}'",
                s0.name,
                json.replace('\'', "''")
            ))
            .await;
        assert_eq!(rows, [json!([s0.value, instance])], "{} {json}", s0.name);
    }
    let rows = s
        .rows("SELECT DISTINCT value FROM node WHERE metric = 'up'")
        .await;
    assert_eq!(rows, [json!([1.0])]);
    // The status says each scrape worked, with its size.
    let rows = s
        .rows("SELECT target, bool_and(up), min(samples) > 100, max(duration_ms) > 0 FROM node_status GROUP BY target")
        .await;
    assert_eq!(rows, [json!([instance, true, true, true])]);
    // Killed, the target is down with the reason, and `up` is 0.
    drop(exporter);
    let error = eventually(30, "a failed scrape", || {
        let s = &s;
        async move {
            let rows = s
                .rows("SELECT error FROM node_status WHERE NOT up ORDER BY ts DESC LIMIT 1")
                .await;
            rows.first()
                .map(|r| r[0].as_str().unwrap_or_default().to_string())
        }
    })
    .await;
    assert!(error.to_lowercase().contains("connect"), "{error}");
    let rows = s
        .rows("SELECT count(*) > 0 FROM node WHERE metric = 'up' AND value = 0")
        .await;
    assert_eq!(rows, [json!([true])]);
    // Scrape credentials are secrets: shown masked, never in the log.
    s.rows(&format!(
        "CREATE SOURCE guarded FROM PROMETHEUS SCRAPE WITH (targets = '127.0.0.1:{port}', interval = '1s', bearer_token = 'tok-s3cret'); \
         CREATE SOURCE basic FROM PROMETHEUS SCRAPE WITH (targets = '127.0.0.1:{port}', interval = '1s', username = 'u', password = 'pw-s3cret')"
    ))
    .await;
    eventually(30, "failed scrapes of the guarded sources", || {
        let s = &s;
        async move {
            let n = count(s, "SELECT count(*) FROM guarded_status").await
                + count(s, "SELECT count(*) FROM basic_status").await;
            (n >= 4).then_some(())
        }
    })
    .await;
    let (_, b) = s.get("/v1/catalog").await.unwrap();
    let shown =
        String::from_utf8_lossy(&b).to_string() + &format!("{:?}", s.rows("SHOW SOURCES").await);
    assert!(shown.contains("bearer_token = '********'"), "{shown}");
    assert!(
        !shown.contains("s3cret") && !s.log().contains("s3cret"),
        "{shown}\n{}",
        s.log()
    );
}
