//! Slow readers: WebSocket subscribers that stop reading are closed (or resynced) once they fall
//! behind their buffer, the server's memory does not grow with them, and a subscriber that
//! reads on the same view keeps receiving every change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, Server};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SCHEMA: &str = "
    CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP WITH (retain = '1 hour');
    CREATE VIEW per_host AS SELECT host, max(v) AS v, count(*) AS n FROM m GROUP BY host";

async fn subscribe(s: &Server, extra: &str) -> Ws {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/subscribe?q=per_host{extra}", s.addr))
            .await
            .unwrap();
    ws
}

/// A subscriber's view of the relation: each row (as JSON text) with its multiplicity; a
/// `{"resync": true}` frame starts it over.
#[derive(Default)]
struct Mirror {
    rows: HashMap<String, i64>,
    resyncs: usize,
}

impl Mirror {
    fn apply(&mut self, frame: &Value) {
        if frame["resync"] == true {
            self.rows.clear();
            self.resyncs += 1;
        } else if let Some(diff) = frame["diff"].as_i64() {
            let e = self.rows.entry(frame["row"].to_string()).or_default();
            *e += diff;
            if *e == 0 {
                let key = frame["row"].to_string();
                self.rows.remove(&key);
            }
        }
    }
}

/// The view's contents as the mirror keeps them.
async fn contents(s: &Server) -> HashMap<String, i64> {
    let (st, v) = s.sql("SELECT host, v, n FROM per_host").await;
    assert_eq!(st, 200, "{v}");
    let result = &v["results"][0];
    let columns: Vec<String> = result["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let mut rows = HashMap::new();
    for r in result["rows"].as_array().unwrap() {
        let obj: serde_json::Map<String, Value> = columns
            .iter()
            .cloned()
            .zip(r.as_array().unwrap().iter().cloned())
            .collect();
        *rows.entry(Value::Object(obj).to_string()).or_default() += 1;
    }
    rows
}

/// Pushes 500 rows over 2,000 hosts every 100 ms for `secs`, and reads `reader` all the while,
/// also while a push waits for its acknowledgement, as a client that keeps up does; returns the
/// peak resident memory of the server.
async fn load(s: &Server, secs: u64, reader: &mut Ws, mirror: &mut Mirror) -> u64 {
    let start = Instant::now();
    let mut tick = 0u64;
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let body: String = (0..500)
            .map(|i| {
                let h = (tick * 500 + i) % 2000;
                format!("{{\"host\":\"h{h}\",\"v\":{}}}\n", (tick * 7 + i) % 1000)
            })
            .collect();
        let push = s.ingest("m", "application/x-ndjson", body.into_bytes());
        tokio::pin!(push);
        let (st, ack) = loop {
            tokio::select! {
                answer = &mut push => break answer,
                frame = reader.next() => read(frame, mirror),
            }
        };
        assert_eq!(st, 200, "{ack}");
        tick += 1;
        peak = peak.max(s.rss());
        let next = start + Duration::from_millis(100 * tick);
        while let Ok(frame) = tokio::time::timeout_at(next.into(), reader.next()).await {
            read(frame, mirror);
        }
    }
    peak
}

/// Applies one frame read from a subscriber that is meant to keep up.
fn read(
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    mirror: &mut Mirror,
) {
    match frame {
        Some(Ok(Message::Text(t))) => mirror.apply(&serde_json::from_str(&t).unwrap()),
        Some(Ok(_)) => {}
        other => panic!("the reading subscriber ended: {other:?}"),
    }
}

/// Reads a subscriber until the mirror equals the view's contents. The two are compared when a
/// time is complete (a progress frame) or nothing arrives for a moment, not on every frame: a
/// subscriber that was stalled has many frames to read through.
async fn catch_up(s: &Server, ws: &mut Ws, mirror: &mut Mirror) {
    let want = contents(s).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while mirror.rows != want {
        loop {
            assert!(
                Instant::now() < deadline,
                "the subscriber never matched the view: {} rows mirrored, {} in the view",
                mirror.rows.len(),
                want.len()
            );
            match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let frame: Value = serde_json::from_str(&t).unwrap();
                    mirror.apply(&frame);
                    if frame["progress"] == true {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => break,
                other => panic!("the subscriber ended: {other:?}\n{}", s.log()),
            }
        }
    }
}

/// Reads what a stalled subscriber was sent, to its close frame: (frames read, close code, reason).
async fn drain(ws: &mut Ws) -> (usize, Option<u16>, String) {
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (n, Some(u16::from(f.code)), f.reason.to_string())
            }
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return (n, None, String::new())
            }
            Ok(Some(Ok(_))) => n += 1,
        }
    }
}

/// Starts psql following `per_host` with `COPY (SUBSCRIBE ...) TO STDOUT`, its output to a file.
fn psql_follow(s: &Server, dir: &std::path::Path) -> std::process::Child {
    let port = s.addr.rsplit(':').next().unwrap();
    std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=tocsin dbname=tocsin sslmode=disable"
        ))
        .args(["-X", "-v", "VERBOSITY=verbose", "-c"])
        .arg("COPY (SUBSCRIBE per_host) TO STDOUT")
        .stdout(std::fs::File::create(dir.join("psql.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("psql.err")).unwrap())
        .spawn()
        .expect("psql (postgresql-client) must be installed")
}

/// Sends a signal (STOP, CONT) to a process.
fn signal(child: &std::process::Child, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// Five WebSocket subscribers and a psql following with `COPY (SUBSCRIBE ...)` stop reading on a
/// busy view (psql stopped with SIGSTOP): the server's peak memory stays within 100 MB of the
/// same load without them, each WebSocket is closed with code 1008 and the reason, psql gets
/// SQLSTATE 53400 with the reason, and a subscriber that reads keeps every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_stop_reading_are_closed_and_cost_little() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--subscriber-buffer-changes", "5000"];
    // The same load with one reading subscriber only.
    let base = {
        let s = Server::start(&dir.path().join("a"), &flags).await;
        s.rows(SCHEMA).await;
        let mut reader = subscribe(&s, "").await;
        let mut mirror = Mirror::default();
        let peak = load(&s, 20, &mut reader, &mut mirror).await;
        catch_up(&s, &mut reader, &mut mirror).await;
        peak
    };
    let s = Server::start(&dir.path().join("b"), &flags).await;
    s.rows(SCHEMA).await;
    let mut reader = subscribe(&s, "").await;
    let mut stalled = Vec::new();
    for _ in 0..5 {
        stalled.push(subscribe(&s, "").await);
    }
    let mut psql = psql_follow(&s, dir.path());
    eventually(10, "psql to subscribe", || async {
        let (_, m) = s.get("/metrics").await.ok()?;
        String::from_utf8(m)
            .ok()?
            .contains("tocsin_subscribers_open 7")
            .then_some(())
    })
    .await;
    signal(&psql, "STOP");
    let mut mirror = Mirror::default();
    let peak = load(&s, 20, &mut reader, &mut mirror).await;
    catch_up(&s, &mut reader, &mut mirror).await;
    assert_eq!(mirror.resyncs, 0);
    assert!(
        peak <= base + (100 << 20),
        "peak RSS {} MB with five stalled subscribers, {} MB without",
        peak >> 20,
        base >> 20
    );
    for ws in &mut stalled {
        let (frames, code, reason) = drain(ws).await;
        assert_eq!(code, Some(1008), "after {frames} frames: {reason}");
        assert!(
            reason.starts_with("subscriber too slow: ") && reason.ends_with(" changes behind"),
            "{reason}"
        );
    }
    signal(&psql, "CONT");
    let status = psql.wait().unwrap();
    let err = std::fs::read_to_string(dir.path().join("psql.err")).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("53400") && err.contains("subscriber too slow: "),
        "{err}"
    );
    let (_, metrics) = s.get("/metrics").await.unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("tocsin_subscribers_closed_slow_total 6"),
        "{metrics}"
    );
    assert!(metrics.contains("tocsin_limit{limit=\"subscriber_buffer_changes\"} 5000"));
}

/// `slow=snapshot`: a subscriber that stops reading is not closed; once it reads again it gets
/// `{"resync": true}` and then the view's contents at one time, and follows from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resynced_subscriber_ends_with_the_views_contents() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--subscriber-buffer-changes", "2000"],
    )
    .await;
    s.rows(SCHEMA).await;
    let mut stalled = subscribe(&s, "&slow=snapshot").await;
    let mut reader = subscribe(&s, "").await;
    let mut mirror = Mirror::default();
    load(&s, 15, &mut reader, &mut mirror).await;
    let mut resynced = Mirror::default();
    catch_up(&s, &mut stalled, &mut resynced).await;
    assert!(resynced.resyncs >= 1, "it fell behind and was resynced");
    let (_, metrics) = s.get("/metrics").await.unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        !metrics.contains("tocsin_subscribers_resynced_total 0"),
        "{metrics}"
    );
    // It follows on after the resync.
    let (st, _) = s
        .ingest(
            "m",
            "application/json",
            br#"{"host": "late", "v": 1}"#.to_vec(),
        )
        .await;
    assert_eq!(st, 200);
    eventually(10, "the view to have the late host", || async {
        contents(&s)
            .await
            .keys()
            .any(|r| r.contains("\"late\""))
            .then_some(())
    })
    .await;
    catch_up(&s, &mut stalled, &mut resynced).await;
}
