//! Many agents: 10,000 idle WebSocket ingest connections held open at once (with the default
//! limits) cost little memory, SQL answers while they connect, and each can still push a row; a
//! socket that received a large message gives the memory back.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::common::Server;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const AGENTS: usize = 10_000;

/// Opens a WebSocket to `/v1/ingest/m`. The client keeps its own buffers small: 10,000 of
/// them live in this process too.
async fn agent(addr: &str) -> Ws {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{addr}/v1/ingest/m");
    let mut tries = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), false).await
        {
            Ok((ws, _)) => return ws,
            Err(e) => {
                tries += 1;
                assert!(tries < 5, "agent connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Sends one row and reads its acknowledgement.
async fn push(ws: &mut Ws, host: usize) -> Value {
    let row = format!(r#"{{"host": "h{host}", "v": {host}}}"#);
    ws.send(Message::text(row)).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("agent {host}: no acknowledgement: {other:?}"),
        }
    }
}

/// Raises this process's open-file limit: the test holds 10,000 sockets itself.
fn open_files() {
    let (soft, hard) = tocsin_server::limits::raise_open_files();
    let need = AGENTS as u64 + 1_000;
    assert!(
        soft.is_none_or(|s| s >= need),
        "this test needs {need} open files, and the limit is {soft:?} (hard {hard:?}): raise it \
         (ulimit -Hn) to run it"
    );
}

/// A server (default limits) with the source `m` agents push to, settled; its resident memory.
async fn settled(dir: &std::path::Path) -> (Server, u64) {
    let s = Server::start(&dir.join("d"), &[]).await;
    s.rows("CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP WITH (retain = '1 hour')")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = s.rss();
    (s, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_idle_agents_fit() {
    open_files();
    let dir = tempfile::tempdir().unwrap();
    let (s, before) = settled(dir.path()).await;

    let started = Instant::now();
    let mut agents: Vec<Ws> = Vec::with_capacity(AGENTS);
    while agents.len() < AGENTS {
        let n = (AGENTS - agents.len()).min(500);
        let batch = futures_util::future::join_all((0..n).map(|_| agent(&s.addr))).await;
        agents.extend(batch);
        // SQL answers while the agents connect.
        let rows = s.rows("SELECT count(*) AS n FROM m").await;
        assert_eq!(rows[0][0], 0);
    }
    let connected = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = s.rss();
    let grown = after.saturating_sub(before);
    eprintln!(
        "{AGENTS} idle agents connected in {connected:?}: RSS {} MB -> {} MB, {} KiB each",
        before >> 20,
        after >> 20,
        grown / AGENTS as u64 / 1024
    );
    let open = s.get("/metrics").await.unwrap().1;
    let open = String::from_utf8(open).unwrap();
    let line = open
        .lines()
        .find(|l| l.starts_with("tocsin_connections_open "))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= AGENTS as u64),
        "{line}"
    );
    assert!(
        grown <= 320 << 20,
        "{AGENTS} idle agents grew the server by {} MB (at most 320 MB)",
        grown >> 20
    );

    // Every one of them can still push a row.
    let mut acked = 0;
    for (chunk_index, chunk) in agents.chunks_mut(500).enumerate() {
        let acks = futures_util::future::join_all(
            chunk
                .iter_mut()
                .enumerate()
                .map(|(i, ws)| push(ws, chunk_index * 500 + i)),
        )
        .await;
        for ack in acks {
            assert_eq!(ack["accepted"], 1, "{ack}");
            acked += 1;
        }
    }
    assert_eq!(acked, AGENTS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pushed = s.rss();
    eprintln!(
        "after each pushed a row: RSS {} MB, {} KiB each",
        pushed >> 20,
        pushed.saturating_sub(before) / AGENTS as u64 / 1024
    );
    let rows = s
        .rows("SELECT count(*) AS n, count(DISTINCT host) AS hosts FROM m")
        .await;
    assert_eq!(rows[0][0], AGENTS as u64);
    assert_eq!(rows[0][1], AGENTS as u64);
    drop(agents);
}

/// A socket that received a large message gives its buffer back, and loses nothing doing so:
/// a row sent right behind the large message, without waiting for its answer, is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_given_back() {
    const SOCKETS: usize = 20;
    const LARGE: usize = 6 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (s, before) = settled(dir.path()).await;
    let mut sockets = Vec::new();
    for i in 0..SOCKETS {
        let mut ws = agent(&s.addr).await;
        // Not Arrow IPC: refused with a reason, after the whole message was read.
        ws.send(Message::binary(vec![0xffu8; LARGE])).await.unwrap();
        let row = format!(r#"{{"host": "after{i}", "v": {i}}}"#);
        ws.send(Message::text(row)).await.unwrap();
        let mut acks = Vec::new();
        while acks.len() < 2 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => acks.push(serde_json::from_str::<Value>(&t).unwrap()),
                Some(Ok(_)) => continue,
                other => panic!("socket {i}: {other:?}"),
            }
        }
        assert_eq!(acks[0]["accepted"], 0, "{}", acks[0]);
        assert!(acks[0]["error"].is_string(), "{}", acks[0]);
        assert_eq!(acks[1]["accepted"], 1, "{}", acks[1]);
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = s.rss().saturating_sub(before);
    eprintln!(
        "{SOCKETS} sockets that each received {} MB, still open: RSS grew {} MB",
        LARGE >> 20,
        grown >> 20
    );
    // Kept, they would hold 120 MB.
    assert!(
        grown < (SOCKETS * LARGE / 2) as u64,
        "{SOCKETS} open sockets hold {} MB after their large messages",
        grown >> 20
    );
    let rows = s.rows("SELECT count(*) FROM m").await;
    assert_eq!(rows[0][0], SOCKETS as u64);
    // They still work.
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(push(ws, 100 + i).await["accepted"], 1);
    }
}

/// An idle HTTP keep-alive connection, after a request, costs at most 32 KiB, and is closed
/// once idle for the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_small() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 4_000;
    open_files();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--header-timeout", "20s"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = s.rss();
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = s.rss().saturating_sub(before);
    let each = grown / CONNECTIONS as u64;
    eprintln!(
        "{CONNECTIONS} idle keep-alive connections: RSS grew {} MB, {} KiB each",
        grown >> 20,
        each >> 10
    );
    assert!(each <= 32 << 10, "{} KiB each", each >> 10);
}
