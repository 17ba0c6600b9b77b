use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::common::Server;

/// A one-batch queue that refuses at once when full: concurrent producers get 503 with
/// Retry-After, retry, and every row that was acknowledged is in the source afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        Server::start(
            &dir.path().join("data"),
            &["--ingest-queue", "1", "--ingest-wait", "0s"],
        )
        .await,
    );
    s.rows("CREATE SOURCE load (producer BIGINT, seq BIGINT) FROM HTTP")
        .await;
    let refused = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    const PRODUCERS: usize = 12;
    const BATCHES: usize = 25;
    const ROWS: usize = 2_000;
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (s, refused, accepted) = (s.clone(), refused.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let body: Vec<String> = (0..ROWS)
                    .map(|r| format!("{{\"producer\": {p}, \"seq\": {}}}", b * ROWS + r))
                    .collect();
                let body = body.join("\n").into_bytes();
                loop {
                    let (st, headers, reply) = s
                        .request(
                            "POST",
                            "/v1/ingest/load",
                            Some("application/x-ndjson"),
                            body.clone(),
                        )
                        .await
                        .unwrap();
                    if st == 503 {
                        assert_eq!(headers.get("retry-after").unwrap(), "1");
                        refused.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&reply));
                    let ack: serde_json::Value = serde_json::from_slice(&reply).unwrap();
                    accepted
                        .fetch_add(ack["accepted"].as_u64().unwrap() as usize, Ordering::SeqCst);
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = PRODUCERS * BATCHES * ROWS;
    assert_eq!(accepted.load(Ordering::SeqCst), total);
    assert!(refused.load(Ordering::SeqCst) > 0, "the queue never filled");
    let rows = s
        .rows("SELECT count(*), count(DISTINCT producer * 1000000 + seq) FROM load")
        .await;
    assert_eq!(rows, [json!([total, total])]);
    let (_, m) = s.get("/metrics").await.unwrap();
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains(&format!(
            "tocsin_ingest_rows_accepted_total{{source=\"load\"}} {total}"
        )),
        "{m}"
    );
    assert!(
        !m.contains("tocsin_ingest_refused_queue_full_total 0\n"),
        "{m}"
    );
}
