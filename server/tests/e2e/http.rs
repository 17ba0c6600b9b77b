use serde_json::json;

use crate::common::{cpu_batch, error_rows, ipc, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_over_http_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(
        "CREATE SOURCE cpu (host TEXT, cpu DOUBLE, n BIGINT) FROM HTTP;
         CREATE VIEW per_host AS SELECT host, count(*) AS rows, sum(cpu) AS cpu FROM cpu GROUP BY host",
    )
    .await;

    // JSON array: rows 2 (bad number), 4 (not an object) and 5 (late) are refused.
    let (st, ack) = s
        .ingest(
            "cpu",
            "application/json",
            br#"[{"host": "a", "cpu": 1.5},
                 {"host": "a", "cpu": "hot"},
                 {"host": "a", "cpu": 2.5, "ts": 1795255100000, "ignored": 1},
                 [1, 2],
                 {"host": "a", "cpu": 9, "ts": "2020-01-01T00:00:00Z"},
                 {"host": "a", "cpu": 4}]"#
                .to_vec(),
        )
        .await;
    assert_eq!(st, 200, "{ack}");
    // ts 1795255100000 is 2026-11-20: older than the default retention of 5 minutes.
    assert_eq!(
        (ack["accepted"].as_u64(), ack["rejected"].as_u64()),
        (Some(2), Some(4)),
        "{ack}"
    );
    assert_eq!(error_rows(&ack), [2, 3, 4, 5]);
    assert!(
        ack["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cpu"),
        "{ack}"
    );
    assert!(
        ack["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("late"),
        "{ack}"
    );

    // NDJSON, rows numbered by line; RFC 3339 and epoch-millisecond timestamps.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ndjson = format!(
        "{{\"host\": \"b\", \"cpu\": 1, \"ts\": {now}}}\n\n{{\"host\": \"b\", \"cpu\": 2, \"n\": \"x\"}}\n{{\"host\": \"b\", \"cpu\": 3}}\n"
    );
    let (st, ack) = s
        .ingest("cpu", "application/x-ndjson", ndjson.into_bytes())
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        (ack["accepted"].as_u64(), ack["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{ack}"
    );
    assert_eq!(error_rows(&ack), [3]);

    // Influx line protocol: tags and fields by name, a bad field type names the field.
    let lines = format!(
        "cpu,host=c cpu=10,n=1i {}\ncpu,host=c cpu=\"high\"\ncpu,host=c cpu=20\n",
        now * 1_000_000
    );
    let (st, ack) = s.ingest("cpu", "text/plain", lines.into_bytes()).await;
    assert_eq!(st, 200);
    assert_eq!(
        (ack["accepted"].as_u64(), ack["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{ack}"
    );
    assert_eq!(error_rows(&ack), [2]);
    assert!(
        ack["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("field \"cpu\""),
        "{ack}"
    );

    // Arrow IPC: columns by name, ts stamped on arrival.
    let stream = ipc(&[
        cpu_batch(&[("d", 1.0), ("d", 2.0)]),
        cpu_batch(&[("d", 3.0)]),
    ]);
    let (st, ack) = s
        .ingest("cpu", "application/vnd.apache.arrow.stream", stream)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        (ack["accepted"].as_u64(), ack["rejected"].as_u64()),
        (Some(3), Some(0)),
        "{ack}"
    );

    let rows = s.rows("SELECT * FROM per_host ORDER BY host").await;
    assert_eq!(
        rows,
        [
            json!(["a", 2, 5.5]),
            json!(["b", 2, 4.0]),
            json!(["c", 2, 30.0]),
            json!(["d", 3, 6.0])
        ]
    );
    let rows = s.rows("SELECT count(*) FROM cpu WHERE n IS NOT NULL").await;
    assert_eq!(rows, [json!([1])]);

    // Unknown source, a view, a payload that is not JSON, an unknown content type.
    let (st, ack) = s.ingest("nope", "application/json", b"[]".to_vec()).await;
    assert_eq!(st, 404);
    assert!(ack["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let (st, _) = s
        .ingest("per_host", "application/json", b"[]".to_vec())
        .await;
    assert_eq!(st, 404);
    let (st, ack) = s
        .ingest("cpu", "application/json", b"[{\"host\": ".to_vec())
        .await;
    assert_eq!(st, 400, "{ack}");
    let (st, _) = s.ingest("cpu", "image/png", b"x".to_vec()).await;
    assert_eq!(st, 400);
    let (st, ack) = s
        .ingest(
            "cpu",
            "application/vnd.apache.arrow.stream",
            b"garbage".to_vec(),
        )
        .await;
    assert_eq!(st, 400, "{ack}");

    // The counters agree.
    let (_, m) = s.get("/metrics").await.unwrap();
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("tocsin_ingest_rows_accepted_total{source=\"cpu\"} 9"),
        "{m}"
    );
    assert!(
        m.contains("tocsin_ingest_rows_rejected_total{source=\"cpu\"} 6"),
        "{m}"
    );
    assert!(m.contains("tocsin_ingest_latency_seconds_count"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_endpoint_results_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let (st, v) = s
        .sql("CREATE SOURCE m (k TEXT, v DOUBLE) FROM WEBSOCKET WITH (retain = '10m'); SELECT 1 AS one, 'x' AS two")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["results"][0],
        json!({"kind": "ddl", "statement": "CREATE SOURCE", "name": "m"})
    );
    assert_eq!(
        v["results"][1],
        json!({"kind": "rows", "columns": [{"name": "one", "type": "bigint"}, {"name": "two", "type": "text"}], "rows": [[1, "x"]]})
    );
    // JSON body form.
    let (st, _, b) = s
        .request(
            "POST",
            "/v1/sql",
            Some("application/json"),
            br#"{"sql": "INSERT INTO m (k, v) VALUES ('a', 1.5)"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let rows = s.rows("SELECT k, v, ts IS NOT NULL FROM m").await;
    assert_eq!(rows, [json!(["a", 1.5, true])]);

    // A malformed statement: 400 with its index, line and column; a request that does not
    // parse runs nothing.
    let (st, v) = s
        .sql("CREATE VIEW early AS SELECT k FROM m;\nSELECT k\n  FROM m WHERE k = = 1")
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["kind"], "parse");
    assert_eq!(v["error"]["statement"], 1);
    assert_eq!(v["error"]["line"], 3, "{v}");
    assert_eq!(v["error"]["column"], 20, "{v}"); // the second `=`
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    // A statement that fails to plan stops the request; the ones before it stay applied.
    let (st, v) = s
        .sql("CREATE VIEW ok AS SELECT k FROM m;\nCREATE VIEW bad AS SELECT nope FROM m")
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["statement"], 1);
    assert_eq!(v["error"]["line"], 2, "{v}");
    let (st, v) = s.sql("SHOW VIEWS").await;
    assert_eq!(st, 200);
    assert_eq!(
        v["results"][0]["rows"],
        json!([["ok", "CREATE VIEW ok AS SELECT k FROM m", null]])
    );
    // Planning errors name the problem.
    let (st, v) = s.sql("SELECT nope FROM m").await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );

    // The catalog lists objects with their SQL and columns.
    let (st, b) = s.get("/v1/catalog").await.unwrap();
    assert_eq!(st, 200);
    let c: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(c["sources"][0]["name"], "m");
    assert!(c["sources"][0]["sql"]
        .as_str()
        .unwrap()
        .contains("retain = '10m'"));
    assert_eq!(
        c["sources"][0]["columns"][2],
        json!({"name": "ts", "type": "timestamptz"})
    );
    assert_eq!(c["views"][0]["name"], "ok");
    assert_eq!(c["rules"], json!([]));
    let (st, _) = s.get("/no/such/thing").await.unwrap();
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_collects_host_metrics_and_runs_starter_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--default"]).await;
    let names: Vec<String> = s
        .rows("SHOW RULES")
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["high_cpu", "low_disk_free", "memory_pressure"]);
    // The collector samples every 5 s; wait for the first sample.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows = s
            .rows("SELECT count(DISTINCT metric) FROM host WHERE metric IN ('cpu_percent', 'mem_used_percent', 'disk_free_bytes', 'load_1m')")
            .await;
        if rows == [json!([4])] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no host rows: {rows:?}\n{}",
            s.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let rows = s
        .rows("SELECT cpu_percent >= 0 AND cpu_percent <= 100, samples >= 1 FROM host_cpu")
        .await;
    assert_eq!(rows, [json!([true, true])]);
    // The history tiers: host keeps a day, host_1m a week, host_1h 90 days; the minute rollup
    // already answers for the minute in progress.
    let shown = s.rows("SHOW VIEWS").await;
    let tier = |name: &str| {
        shown
            .iter()
            .find(|r| r[0] == name)
            .and_then(|r| r[2].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    assert!(tier("host_1m").starts_with("7 days: "), "{shown:?}");
    assert!(tier("host_1h").starts_with("90 days: "), "{shown:?}");
    let rows = s
        .rows("SELECT count(*) > 0, min(samples) >= 1 FROM host_1m WHERE metric = 'cpu_percent'")
        .await;
    assert_eq!(rows, [json!([true, true])]);
    // The panel queries of docs/grafana.md for the minute and hour tiers, as Grafana sends
    // them for the last 7 days.
    let range = "ts BETWEEN '2026-01-01T00:00:00Z' AND '2099-01-01T00:00:00Z'";
    for q in [
        format!("SELECT floor(extract(epoch from ts)/300)*300 AS \"time\", host AS metric, sum(total) / sum(samples) AS cpu FROM host_1m WHERE {range} AND metric = 'cpu_percent' AND device = '' GROUP BY 1, 2 ORDER BY 1"),
        format!("SELECT floor(extract(epoch from ts)/3600)*3600 AS \"time\", host AS metric, sum(total) / sum(samples) AS cpu, max(max) AS peak FROM host_1h WHERE {range} AND metric = 'cpu_percent' AND device = '' GROUP BY 1, 2 ORDER BY 1"),
    ] {
        s.rows(&q).await;
    }
    let rows = s
        .rows(&format!(
            "SELECT count(*) >= 1 FROM host_1m WHERE {range} AND metric = 'cpu_percent'"
        ))
        .await;
    assert_eq!(rows, [json!([true])]);
    // Every starter rule is evaluated: each can be read (they may well be empty on a healthy host).
    for r in ["high_cpu", "low_disk_free", "memory_pressure"] {
        s.rows(&format!("SELECT count(*) FROM {r}")).await;
    }
    assert!(
        s.log().contains("collecting metrics of host"),
        "{}",
        s.log()
    );
}
