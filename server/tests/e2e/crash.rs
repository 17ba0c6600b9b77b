use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{cpu_batch, ipc, Server};

/// The catalog (without each source's ingest counters, which count since the process started),
/// a view's contents and row counts.
async fn state(s: &Server) -> (Value, Vec<Value>, Vec<Value>) {
    let (_, catalog) = s.get("/v1/catalog").await.unwrap();
    let mut catalog: Value = serde_json::from_slice(&catalog).unwrap();
    for source in catalog["sources"].as_array_mut().unwrap() {
        source.as_object_mut().unwrap().remove("ingest");
    }
    let view = s.rows("SELECT * FROM per_host ORDER BY host").await;
    let counts = s
        .rows("SELECT (SELECT count(*) FROM cpu) AS cpu, (SELECT count(*) FROM mem) AS mem, (SELECT count(*) FROM hot) AS hot")
        .await;
    (catalog, view, counts)
}

/// `kill -9` and a restart on the same data dir: catalog, view contents and row counts are
/// identical; a torn record at the end of the logs is dropped with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]).await;
    s.rows(
        "CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM WEBSOCKET WITH (retain = '1h');
         CREATE SOURCE mem (host TEXT, used BIGINT) FROM HTTP;
         CREATE SOURCE scratch (x BIGINT) FROM HTTP;
         CREATE VIEW per_host AS SELECT host, count(*) AS n, avg(cpu) AS cpu, max(cpu) AS peak FROM cpu GROUP BY host;
         CREATE RULE hot AS SELECT host, max(cpu) AS cpu FROM cpu GROUP BY host HAVING max(cpu) > 90 WITH (for = '10s', severity = 'critical');
         DROP SOURCE scratch;
         CREATE SOURCE scratch (y TEXT) FROM HTTP",
    )
    .await;
    for i in 0..20 {
        let body: Vec<String> = (0..500)
            .map(|j| {
                format!(
                    "{{\"host\": \"h{}\", \"cpu\": {}}}",
                    j % 7,
                    (i * 500 + j) % 100
                )
            })
            .collect();
        let (st, ack) = s
            .ingest("cpu", "application/x-ndjson", body.join("\n").into_bytes())
            .await;
        assert_eq!((st, ack["accepted"].as_u64()), (200, Some(500)), "{ack}");
    }
    let (st, ack) = s
        .ingest(
            "mem",
            "text/plain",
            b"mem,host=a used=5i\nmem,host=b used=7i\n".to_vec(),
        )
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(2)));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest/cpu", s.addr))
        .await
        .unwrap();
    ws.send(Message::Binary(
        ipc(&[cpu_batch(&[("ws", 99.0), ("ws", 1.0)])]).into(),
    ))
    .await
    .unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("\"accepted\":2"), "{ack}");
    s.rows("INSERT INTO mem (host, used) VALUES ('c', 9)").await;

    let before = state(&s).await;
    assert_eq!(before.2, [serde_json::json!([10_002, 3, 8])]);
    let data = s.kill();

    // A crash in the middle of an append leaves a torn record at the end of each log.
    let newest_segment = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    for f in [data.join("catalog.log"), newest_segment] {
        let mut f = std::fs::OpenOptions::new().append(true).open(f).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap();
    }

    let s = Server::start(&data, &[]).await;
    let after = state(&s).await;
    assert_eq!(before, after);
    assert!(s.log().contains("torn last record"), "{}", s.log());
    // The re-created source got none of the dropped one's rows, and ingest goes on.
    assert_eq!(
        s.rows("SELECT count(*) FROM scratch").await,
        [serde_json::json!([0])]
    );
    let (st, ack) = s
        .ingest(
            "cpu",
            "application/json",
            br#"[{"host": "new", "cpu": 1}]"#.to_vec(),
        )
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(1)));

    // And a second crash keeps the new rows too.
    let data = s.kill();
    let s = Server::start(&data, &[]).await;
    assert_eq!(
        s.rows("SELECT count(*) FROM cpu").await,
        [serde_json::json!([10_003])]
    );
}

/// A second server on the same data dir refuses to start instead of corrupting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_serves_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _s = Server::start(&data, &[]).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another tocsin process"), "{err}");
}
