//! History on disk: one table with the in-memory window, checked against DataFusion over the
//! same rows; kill -9 during flushes and compactions; retention; DROP.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::pretty::pretty_format_batches;
use rand::{Rng, SeedableRng};
use tocsin_engine::Clock;
use tocsin_server::state::Config;
use tocsin_sql::StatementResult;

use crate::common::Server;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// 2026-11-21T10:00:00Z.
const T0: i64 = 1_795_255_200_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, true),
        Field::new("v", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn batch(rows: &[(String, String, f64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.3))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The queries asked at every check: whole-table and time-ranged aggregates, raw rows across the
/// memory boundary, `now()`-relative ranges and Grafana's macro expansions.
fn queries(now: i64) -> Vec<String> {
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    vec![
        "SELECT host, metric, count(*), sum(v), min(ts), max(ts) FROM m GROUP BY host, metric".into(),
        format!(
            "SELECT host, count(*), sum(v) FROM m WHERE ts BETWEEN '{}' AND '{}' GROUP BY host",
            at(T0 + 40 * MINUTE),
            at(T0 + 2 * HOUR + 5 * MINUTE)
        ),
        "SELECT * FROM m WHERE ts > now() - INTERVAL '25 minutes'".into(),
        "SELECT host, v, ts FROM m WHERE ts >= now() - INTERVAL '2 hours' AND ts < now() - INTERVAL '1 hour' AND host = 'h1' AND metric = 'cpu'".into(),
        // Grafana's $__timeGroupAlias(ts, 1m) and $__timeFilter(ts) over the last 3 hours.
        format!(
            "SELECT floor(extract(epoch from ts)/60)*60 AS \"time\", host, avg(v) AS cpu FROM m WHERE ts BETWEEN '{}' AND '{}' AND metric = 'cpu' GROUP BY 1, 2 ORDER BY 1",
            at(now - 3 * HOUR),
            at(now)
        ),
        // Today against yesterday's hour, in small: this hour against the one before.
        "SELECT a.host, count(*) FROM m a JOIN m b ON a.host = b.host AND a.metric = b.metric AND b.ts + INTERVAL '1 hour' = a.ts WHERE a.ts > now() - INTERVAL '1 hour' GROUP BY a.host".into(),
    ]
}

/// The ```sql blocks of docs/history.md: the source, the rollups, then queries.
fn doc_sql() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/history.md"))
        .unwrap();
    text.split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim().to_string())
        .collect()
}

/// The rollup views of docs/history.md as DataFusion takes them: without `history`.
fn doc_views() -> Vec<String> {
    let plain = regex::Regex::new(r"WITH \(history = '[^']*'\)").unwrap();
    plain
        .replace_all(&doc_sql()[1], "")
        .split(';')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A server embedded with a manual clock, rows pushed through its ingest path (write-ahead log,
/// window, history) and every accepted row kept for the oracle.
struct Run {
    _dir: tempfile::TempDir,
    app: tocsin_server::state::AppRef,
    clock: Clock,
    rng: rand::rngs::StdRng,
    k: u64,
    accepted: Vec<RecordBatch>,
}

impl Run {
    /// Starts with the DDL (the first block is docs/history.md's source).
    async fn start(seed: u64, ddl: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0 as u64);
        let config = Config {
            data_dir: dir.path().join("data"),
            workers: 2,
            defaults: false,
            clock: clock.clone(),
            history_flush: Duration::from_millis(5),
            ..Config::default()
        };
        let app = tocsin_server::start::open(&config).await.unwrap();
        app.tocsin.execute(ddl).await.unwrap();
        Run {
            _dir: dir,
            app,
            clock,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            k: 0,
            accepted: Vec::new(),
        }
    }

    /// Moves the clock to `now` and pushes `per_series` samples of each of 3 hosts x 2
    /// metrics, `jitter` ms old at most, one in eight up to nine minutes late.
    async fn tick(&mut self, now: i64, per_series: usize, jitter: i64) {
        self.clock.set(now as u64).unwrap();
        let mut rows = Vec::new();
        for h in 0..3 {
            for metric in ["cpu", "mem"] {
                for _ in 0..per_series {
                    let late = if self.rng.gen_ratio(1, 8) {
                        self.rng.gen_range(0..9 * MINUTE)
                    } else {
                        self.rng.gen_range(0..jitter)
                    };
                    self.k += 1;
                    rows.push((
                        format!("h{h}"),
                        metric.to_string(),
                        (self.k % 997) as f64 * 0.25,
                        now - late,
                    ));
                }
            }
        }
        let b = batch(&rows);
        let n = b.num_rows();
        let o = self
            .app
            .ingest
            .push("m", b.clone(), (0..n).collect(), true)
            .await
            .unwrap();
        assert_eq!(o.accepted, n, "{:?}", o.rejected);
        self.accepted.push(b);
    }

    /// DataFusion over every accepted row, with `views` over them, at `now`.
    async fn oracle(&self, now: i64, views: &[String]) -> datafusion::prelude::SessionContext {
        let ctx = tocsin_sql::planner::batch_context(
            vec![(
                "m".into(),
                tocsin_sql::planner::mem_table(schema(), self.accepted.clone()).unwrap(),
            )],
            now,
        )
        .unwrap();
        for v in views {
            ctx.sql(v).await.unwrap();
        }
        ctx
    }

    /// tocsin's answer to `q` equals the oracle's.
    async fn same(&self, oracle: &datafusion::prelude::SessionContext, q: &str, when: &str) {
        let got = match self.app.tocsin.execute(q).await.unwrap().pop().unwrap() {
            StatementResult::Rows { batches, .. } => batches,
            other => panic!("{other:?}"),
        };
        let want = oracle.sql(q).await.unwrap().collect().await.unwrap();
        assert_eq!(sorted(&got), sorted(&want), "{when}: {q}");
    }
}

/// Five hours of samples (some late) with a ten-minute window and a day of history, flushed
/// every few milliseconds while queries run. At every check each query over the table equals
/// DataFusion over the accepted rows; so do the queries of docs/history.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_window_read_as_one_table() {
    let docs = doc_sql();
    assert!(docs.len() >= 4, "{docs:?}");
    assert!(docs[0].starts_with("CREATE SOURCE m "), "{}", docs[0]);
    let doc_queries: Vec<&String> = docs.iter().filter(|d| d.starts_with("SELECT")).collect();
    assert_eq!(doc_queries.len(), 2);
    let mut run = Run::start(27, &docs[0]).await;
    let mut checks = 0;
    for step in 0..=300i64 {
        let now = T0 + step * MINUTE;
        run.tick(now, 1, 50).await;
        if step % 37 == 0 || step == 300 {
            checks += 1;
            let oracle = run.oracle(now, &[]).await;
            for q in queries(now).iter().chain(doc_queries.iter().copied()) {
                run.same(&oracle, q, &format!("at step {step}")).await;
            }
        }
    }
    assert!(checks >= 8);
    // By now the first hours are in files, merged, and the table still reads each row once.
    let rel = run.app.tocsin.history().unwrap().get("m").unwrap();
    let st = rel.stats();
    assert!(st.partitions >= 5, "{st:?}");
    let rows: usize = run.accepted.iter().map(|b| b.num_rows()).sum();
    assert!(st.rows as usize + st.pending_rows as usize >= rows);
}

/// The rollups of docs/history.md (one-minute buckets of the source, hours of those) keep
/// history: at every check, each rollup read as one table (its final buckets from history, the
/// rest computed over its input) equals DataFusion's views over the accepted rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_rollups_read_as_one_table() {
    let docs = doc_sql();
    assert!(docs[1].starts_with("CREATE VIEW m_1m"), "{}", docs[1]);
    let views = doc_views();
    assert_eq!(views.len(), 2);
    let mut run = Run::start(28, &format!("{}; {}", docs[0], docs[1])).await;
    let checks_at = [45, 61, 122, 200, 263, 300];
    for step in 0..=300i64 {
        let now = T0 + step * MINUTE;
        run.tick(now, 3, MINUTE).await;
        // Let the rollups catch up as the clock moves (as they would in real time).
        tokio::time::sleep(Duration::from_millis(2)).await;
        if !checks_at.contains(&step) {
            continue;
        }
        let oracle = run.oracle(now, &views).await;
        for q in [
            "SELECT * FROM m_1m".to_string(),
            "SELECT * FROM m_1h".to_string(),
            format!(
                "SELECT floor(extract(epoch from ts)/300)*300 AS \"time\", host, sum(total) / sum(n) AS cpu FROM m_1m WHERE ts BETWEEN '{}' AND '{}' AND metric = 'cpu' GROUP BY 1, 2 ORDER BY 1",
                at(now - 3 * HOUR),
                at(now)
            ),
            "SELECT host, sum(n), max(max) FROM m_1h WHERE ts > now() - INTERVAL '3 hours' GROUP BY host".into(),
        ] {
            run.same(&oracle, &q, &format!("at step {step}")).await;
        }
    }
    let h = run.app.tocsin.history().unwrap();
    let m1 = h.get("m_1m").unwrap().stats();
    assert!(m1.rows + m1.pending_rows > 1_000, "{m1:?}");
    // At 15:00 the hours from 09:00 (late rows of the first minutes) to 13:00 are final.
    let hours = crate::common::eventually(10, "five closed hours of m_1h", || async {
        let s = h.get("m_1h").unwrap().stats();
        (s.rows + s.pending_rows >= 5 * 6).then_some(s)
    })
    .await;
    assert_eq!(hours.rows + hours.pending_rows, 5 * 6, "{hours:?}");
    assert_eq!(hours.oldest_ms, Some(T0 - HOUR));
}

/// Eight days of samples every twenty minutes: the raw rows past their day are gone, the minute
/// rollup answers Grafana's macro-expanded panel queries over the last 7 days as DataFusion does
/// over every accepted row, and the hour rollup over the whole span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_reads_seven_days_of_the_minute_rollup() {
    let docs = doc_sql();
    let views = doc_views();
    let mut run = Run::start(29, &format!("{}; {}", docs[0], docs[1])).await;
    let days = 8;
    let steps = days * 24 * 3;
    let h = run.app.tocsin.history().unwrap();
    // The clock runs some 10,000 times faster than a real one: every simulated hour, let the
    // rollups write what is final before the raw rows they need leave history.
    let settle = |now: i64| {
        let h = h.clone();
        async move {
            // Generous: CI runs the end-to-end tests side by side on two cores.
            crate::common::eventually(180, "the rollups to catch up", || async {
                let m1 = h.get("m_1m").unwrap().written_through()?;
                let m60 = h.get("m_1h").unwrap().written_through()?;
                (m1 >= now - 12 * MINUTE && m60 >= m1 - HOUR - MINUTE).then_some(())
            })
            .await
        }
    };
    for step in 0..=steps {
        let now = T0 + step * 20 * MINUTE;
        run.tick(now, 1, MINUTE).await;
        if step % 3 == 0 {
            settle(now).await;
        }
    }
    let now = T0 + steps * 20 * MINUTE;
    let oracle = run.oracle(now, &views).await;
    let week = format!("ts BETWEEN '{}' AND '{}'", at(now - 7 * 24 * HOUR), at(now));
    for q in [
        // $__timeGroupAlias(ts, 1h), $__timeFilter(ts) over the last 7 days.
        format!("SELECT floor(extract(epoch from ts)/3600)*3600 AS \"time\", host AS metric, sum(total) / sum(n) AS cpu FROM m_1m WHERE {week} AND metric = 'cpu' GROUP BY 1, 2 ORDER BY 1"),
        format!("SELECT floor(extract(epoch from ts)/86400)*86400 AS \"time\", max(max) AS peak, sum(n) AS samples FROM m_1m WHERE {week} GROUP BY 1 ORDER BY 1"),
        "SELECT host, metric, count(*), sum(n), min(min), max(max) FROM m_1h GROUP BY host, metric".into(),
    ] {
        run.same(&oracle, &q, "after 8 days").await;
    }
    // The raw rows are kept one day: older partitions are gone.
    let raw = h.get("m").unwrap().stats();
    assert!(raw.oldest_ms.unwrap() >= now - 26 * HOUR, "{raw:?}");
    let rows = run
        .app
        .tocsin
        .execute(&format!(
            "SELECT count(*) FROM m WHERE ts < '{}'",
            at(now - 2 * 24 * HOUR)
        ))
        .await
        .unwrap();
    match &rows[0] {
        StatementResult::Rows { batches, .. } => {
            assert_eq!(sorted(batches), vec!["| 0        |".to_string()])
        }
        other => panic!("{other:?}"),
    }
}

async fn count_and_values(s: &Server) -> (u64, Vec<u64>) {
    let rows = s.rows("SELECT v FROM k ORDER BY v").await;
    let vals: Vec<u64> = rows.iter().map(|r| r[0].as_u64().unwrap()).collect();
    (vals.len() as u64, vals)
}

/// kill -9 while rows are flushed and files merged every few milliseconds, three times: after
/// the last restart, once the rows have left the two-second window and are read from history
/// alone, every acknowledged row is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_flush_and_compaction_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--history-flush", "3ms"];
    let mut s = Server::start(&data, &flags).await;
    s.rows(
        "CREATE SOURCE k (host TEXT, v BIGINT) FROM HTTP WITH (retain = '2s', history = '1 hour');
         CREATE VIEW k_1s AS SELECT date_bin(INTERVAL '1 second', ts) AS ts, count(*) AS n FROM k GROUP BY 1 WITH (history = '1 hour')",
    )
    .await;
    let mut acked: Vec<u64> = Vec::new();
    let mut sent = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for round in 0..3 {
        let kill_after = Duration::from_millis(rng.gen_range(400..1200));
        let started = std::time::Instant::now();
        while started.elapsed() < kill_after {
            let body: Vec<String> = (0..200)
                .map(|j| format!("{{\"host\": \"h{}\", \"v\": {}}}", j % 7, sent + j))
                .collect();
            let (st, ack) = s
                .ingest("k", "application/x-ndjson", body.join("\n").into_bytes())
                .await;
            assert_eq!((st, ack["accepted"].as_u64()), (200, Some(200)), "{ack}");
            acked.extend(sent..sent + 200);
            sent += 200;
        }
        // One more batch in flight when the process dies: it may or may not have been taken.
        let addr = s.addr.clone();
        let body: Vec<String> = (0..200)
            .map(|j| format!("{{\"host\": \"x\", \"v\": {}}}", sent + j))
            .collect();
        let inflight = tokio::spawn(async move {
            crate::common::request(
                &addr,
                "POST",
                "/v1/ingest/k",
                Some("application/x-ndjson"),
                body.join("\n").into_bytes(),
            )
            .await
        });
        sent += 200;
        let data_dir = s.kill();
        let _ = inflight.await;
        s = Server::start(&data_dir, &flags).await;
        let _ = round;
    }
    // Past the window: every row now comes from history (files, or pending after the replay).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (n, vals) = count_and_values(&s).await;
    let mut dedup = vals.clone();
    dedup.dedup();
    assert_eq!(dedup.len() as u64, n, "no row twice");
    let missing: Vec<&u64> = acked
        .iter()
        .filter(|v| vals.binary_search(v).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged rows missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(vals.iter().all(|v| *v < sent));
    let files: Vec<String> = walk(&data.join("history"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|f| !f.starts_with("00-")),
        "files were merged: {files:?}"
    );

    // The rollup counted each row once, through the restarts.
    let r = s
        .rows("SELECT sum(n), count(*), count(DISTINCT ts) FROM k_1s")
        .await;
    assert_eq!(r[0][0].as_u64(), Some(n), "{r:?}");
    assert_eq!(r[0][1], r[0][2], "one row per second: {r:?}");

    // What history holds is visible.
    let shown = s.rows("SHOW SOURCES").await;
    let k = shown.iter().find(|r| r[0] == "k").unwrap();
    assert!(
        k[2].as_str().unwrap().starts_with("1 hour: ")
            && k[2].as_str().unwrap().contains(" rows, "),
        "{k:?}"
    );
    let (_, catalog) = s.get("/v1/catalog").await.unwrap();
    let catalog: serde_json::Value = serde_json::from_slice(&catalog).unwrap();
    let h = &catalog["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "k")
        .unwrap()["history"];
    assert_eq!(h["horizon_seconds"], 3600);
    assert!(
        h["rows"].as_u64().unwrap() > 0 && h["bytes"].as_u64().unwrap() > 0,
        "{h}"
    );
    assert!(
        h["oldest"].as_str().unwrap() <= h["newest"].as_str().unwrap(),
        "{h}"
    );
    let listed = s
        .rows("SELECT table_name, horizon_seconds, rows > 0, bytes > 0, oldest <= newest FROM information_schema.tocsin_history ORDER BY 1")
        .await;
    assert_eq!(
        listed,
        vec![
            serde_json::json!(["k", 3600, true, true, true]),
            serde_json::json!(["k_1s", 3600, true, true, true])
        ]
    );
    let (_, metrics) = s.get("/metrics").await.unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("tocsin_history_rows{relation=\"k\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tocsin_history_flushes_total"),
        "{metrics}"
    );
    // EXPLAIN names the files an ad hoc query reads; a range before any row reads none.
    let plan: Vec<String> = s
        .rows("EXPLAIN SELECT count(*) FROM k WHERE ts > now() - INTERVAL '1 hour'")
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("As an ad hoc query now")),
        "{plan:?}"
    );
    assert!(plan.iter().any(|l| l.contains(".parquet")), "{plan:?}");
    let plan: Vec<String> = s
        .rows("EXPLAIN SELECT count(*) FROM k WHERE ts < '2020-01-01'")
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert!(!plan.iter().any(|l| l.contains(".parquet")), "{plan:?}");

    // DROP SOURCE deletes the history; a source created again under the name starts empty.
    s.rows("DROP VIEW k_1s; DROP SOURCE k").await;
    s.rows(
        "CREATE SOURCE k (host TEXT, v BIGINT) FROM HTTP WITH (retain = '2s', history = '1 hour')",
    )
    .await;
    assert_eq!(count_and_values(&s).await.0, 0);
    let dirs: Vec<_> = std::fs::read_dir(data.join("history"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `history` is checked when the source is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let (st, body) = s
        .sql(
            "CREATE SOURCE a (x BIGINT) FROM HTTP WITH (retain = '1 hour', history = '10 minutes')",
        )
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body.to_string()
            .contains("history (10 minutes) must be longer than retain (1 hour)"),
        "{body}"
    );
    let (st, body) = s
        .sql("CREATE SOURCE a (x BIGINT) FROM HTTP WITH (history = 'soon')")
        .await;
    assert_eq!(st, 400, "{body}");

    // Views: only rollups over relations with history.
    s.rows(
        "CREATE SOURCE kept (host TEXT, v DOUBLE) FROM HTTP WITH (history = '1 day');
            CREATE SOURCE plain (host TEXT, v DOUBLE) FROM HTTP",
    )
    .await;
    for (sql, why) in [
        (
            "CREATE VIEW v AS SELECT host, v FROM kept WITH (history = '7 days')",
            "history on a view needs a rollup: its result needs a column ts = date_bin(INTERVAL '...', ts)",
        ),
        (
            "CREATE VIEW v AS SELECT date_bin(INTERVAL '1 minute', ts) AS ts, host, avg(v) FROM plain GROUP BY 1, host WITH (history = '7 days')",
            "give \"plain\" history too",
        ),
        (
            "CREATE VIEW v AS SELECT date_bin(INTERVAL '1 minute', ts) AS ts, host, avg(v) FROM kept GROUP BY 1, host WITH (history = '30s')",
            "history (30s) must be longer than the bucket (1 minute)",
        ),
        (
            "CREATE VIEW v AS SELECT date_bin(INTERVAL '1 minute', k.ts) AS ts, count(*) FROM kept k JOIN plain p ON k.host = p.host GROUP BY 1 WITH (history = '7 days')",
            "it must read one relation, without joins",
        ),
        (
            "CREATE VIEW v AS SELECT date_bin(INTERVAL '1 minute', ts) AS ts, host, avg(v) FROM kept GROUP BY 1, host WITH (retain = '7 days')",
            "unknown option 'retain' for a view: a view takes only history",
        ),
    ] {
        let (st, body) = s.sql(sql).await;
        assert_eq!(st, 400, "{sql}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{sql}: {body}");
    }
    s.rows("CREATE VIEW v AS SELECT date_bin(INTERVAL '1 minute', ts) AS ts, host, avg(v) AS v FROM kept GROUP BY 1, host WITH (history = '7 days')")
        .await;
    let shown = s.rows("SHOW VIEWS").await;
    assert!(
        shown[0][1]
            .as_str()
            .unwrap()
            .ends_with("WITH (history = '7 days')"),
        "{shown:?}"
    );
    assert!(
        shown[0][2].as_str().unwrap().starts_with("7 days: "),
        "{shown:?}"
    );
}

/// A full disk: history writes fail loudly (a log line, `/metrics`, `SHOW SOURCES`) while
/// ingest goes on into the write-ahead log and queries still see every row; once space returns
/// the rows are written. The history directory is a small tmpfs of its own (mounting it needs
/// root, as CI runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_history_writes_loudly_and_they_recover() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let history = data.join("history");
    std::fs::create_dir_all(&history).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&history)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mounting a 1 MiB tmpfs for the history directory needs root"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(history.clone());
    let s = Server::start(&data, &["--history-flush", "50ms"]).await;
    s.rows(
        "CREATE SOURCE f (host TEXT, v BIGINT) FROM HTTP WITH (retain = '2s', history = '1 hour')",
    )
    .await;
    // Fill the disk.
    let filler = history.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let mut sent = 0u64;
    for _ in 0..10 {
        let body: Vec<String> = (0..200)
            .map(|j| format!("{{\"host\": \"h{}\", \"v\": {}}}", j % 5, sent + j))
            .collect();
        let (st, ack) = s
            .ingest("f", "application/x-ndjson", body.join("\n").into_bytes())
            .await;
        assert_eq!((st, ack["accepted"].as_u64()), (200, Some(200)), "{ack}");
        sent += 200;
    }
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    crate::common::eventually(10, "a failed history write", || async {
        let (_, m) = s.get("/metrics").await.ok()?;
        let m = String::from_utf8(m).ok()?;
        (metric(&m, "tocsin_history_failing{relation=\"f\"}") == 1.0
            && metric(&m, "tocsin_history_write_errors_total") >= 1.0)
            .then_some(())
    })
    .await;
    assert!(
        s.log().contains("history of f: writing rows failed"),
        "{}",
        s.log()
    );
    let shown = s.rows("SHOW SOURCES").await;
    assert!(
        shown[0][2].as_str().unwrap().contains("failing: "),
        "{shown:?}"
    );
    // Past the window, the rows are read from history's pending rows.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        s.rows("SELECT count(*), sum(v) FROM f").await[0][0].as_u64(),
        Some(sent)
    );

    // Space returns: the rows are written and the failure clears.
    std::fs::remove_file(&filler).unwrap();
    crate::common::eventually(10, "the rows written once space returned", || async {
        let (_, m) = s.get("/metrics").await.ok()?;
        let m = String::from_utf8(m).ok()?;
        (metric(&m, "tocsin_history_failing{relation=\"f\"}") == 0.0
            && metric(&m, "tocsin_history_pending_rows{relation=\"f\"}") == 0.0
            && metric(&m, "tocsin_history_rows{relation=\"f\"}") == sent as f64)
            .then_some(())
    })
    .await;
    let r = s.rows("SELECT count(*), count(DISTINCT v) FROM f").await;
    assert_eq!(
        (r[0][0].as_u64(), r[0][1].as_u64()),
        (Some(sent), Some(sent))
    );
    drop(s);
}
