use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::Server;

/// 10,000 connections that send random bytes (some starting like an HTTP request): the server
/// closes or answers them and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_port_do_not_hurt() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows("CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP")
        .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    for i in 0..10_000u32 {
        let len = rng.gen_range(1..512);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        match i % 4 {
            // Starts like an HTTP request line.
            0 => bytes
                .splice(0..0, b"POST /v1/ingest/cpu HTTP/1.1\r\n".iter().copied())
                .for_each(drop),
            1 => bytes.splice(0..0, b"GET ".iter().copied()).for_each(drop),
            // Starts like a PostgreSQL startup packet.
            2 => bytes[0] = 0,
            _ => {}
        }
        let addr = s.addr.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            let _ = c.write_all(&bytes).await;
            let _ = c.shutdown().await;
            let mut sink = [0u8; 1024];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut sink)).await;
        }));
        if tasks.len() >= 64 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Still serving, and still ingesting.
    let (st, _) = s.get("/healthz").await.unwrap();
    assert_eq!(st, 200, "{}", s.log());
    let (st, ack) = s
        .ingest(
            "cpu",
            "application/json",
            br#"[{"host": "a", "cpu": 1}]"#.to_vec(),
        )
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(1)));
    // Garbage bodies on the API get a 4xx answer.
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    for ct in [
        "application/json",
        "application/x-ndjson",
        "text/plain",
        "application/vnd.apache.arrow.stream",
    ] {
        for _ in 0..25 {
            let body: Vec<u8> = (0..rng.gen_range(1..2048)).map(|_| rng.gen()).collect();
            let (st, _) = s.ingest("cpu", ct, body).await;
            assert!(st == 200 || st == 400, "{ct}: {st}");
        }
    }
    let (st, _) = s.sql("\u{0}\u{1}garbage;;; SELECT").await;
    assert_eq!(st, 400);
    assert_eq!(
        s.rows("SELECT count(*) FROM cpu WHERE host = 'a'").await,
        [serde_json::json!([1])]
    );
}
