use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{cpu_batch, ipc, Server};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ingest_acks_every_frame_and_survives_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows("CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM WEBSOCKET")
        .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest/cpu", s.addr))
        .await
        .unwrap();
    // JSON array in a text frame, one bad row.
    ws.send(Message::Text(
        r#"[{"host": "a", "cpu": 1}, {"host": "a", "cpu": []}, {"host": "b", "cpu": 2}]"#.into(),
    ))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["accepted"], 2, "{ack}");
    assert_eq!(ack["rejected"], 1, "{ack}");
    assert_eq!(ack["errors"][0]["row"], 2);
    // A frame that is not JSON at all: an ack with the error, and the connection stays.
    ws.send(Message::Text("this is not json".into()))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["accepted"], 0, "{ack}");
    assert!(ack["error"].as_str().is_some(), "{ack}");
    // NDJSON in a text frame.
    ws.send(Message::Text(
        "{\"host\": \"c\", \"cpu\": 3}\n{\"host\": \"c\", \"cpu\": 4}".into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["accepted"], 2);
    // Arrow IPC in a binary frame; then a broken one.
    ws.send(Message::Binary(ipc(&[cpu_batch(&[("d", 5.0)])]).into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["accepted"], 1);
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert!(next_json(&mut ws).await["error"].is_string());
    ws.close(None).await.unwrap();

    // Line protocol over a WebSocket with ?format=influx.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest/cpu?format=influx", s.addr))
            .await
            .unwrap();
    ws.send(Message::Text(
        "cpu,host=e cpu=6\ncpu,host=e cpu=oops".into(),
    ))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{ack}"
    );

    let rows = s
        .rows("SELECT host, sum(cpu) FROM cpu GROUP BY host ORDER BY host")
        .await;
    assert_eq!(
        rows,
        [
            json!(["a", 1.0]),
            json!(["b", 2.0]),
            json!(["c", 7.0]),
            json!(["d", 5.0]),
            json!(["e", 6.0])
        ]
    );
    // An unknown source is refused before the upgrade.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest/nope", s.addr))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stream_the_snapshot_then_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(
        "CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM WEBSOCKET;
         CREATE VIEW hot AS SELECT host, max(cpu) AS cpu FROM cpu GROUP BY host HAVING max(cpu) > 90",
    )
    .await;
    s.ingest(
        "cpu",
        "application/json",
        br#"[{"host": "a", "cpu": 95}]"#.to_vec(),
    )
    .await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/subscribe?q=hot", s.addr))
            .await
            .unwrap();
    let first = next_json(&mut ws).await;
    assert_eq!(first["diff"], 1, "{first}");
    assert_eq!(first["row"], json!({"host": "a", "cpu": 95.0}));
    let t0 = first["time"].as_u64().unwrap();
    // Progress follows.
    loop {
        let f = next_json(&mut ws).await;
        if f["progress"] == true {
            assert!(f["time"].as_u64().unwrap() > t0);
            break;
        }
    }
    // A new hot host: its row arrives as a change.
    s.ingest(
        "cpu",
        "application/json",
        br#"[{"host": "b", "cpu": 99}, {"host": "c", "cpu": 10}]"#.to_vec(),
    )
    .await;
    loop {
        let f = next_json(&mut ws).await;
        if f.get("row").is_some() {
            assert_eq!(f["diff"], 1);
            assert_eq!(f["row"], json!({"host": "b", "cpu": 99.0}));
            break;
        }
    }
    ws.close(None).await.unwrap();

    // A SELECT can be followed too; a bad one is refused before the upgrade.
    let q = "SELECT%20host%20FROM%20cpu%20WHERE%20cpu%20%3C%2050";
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/subscribe?q={q}", s.addr))
            .await
            .unwrap();
    let f = next_json(&mut ws).await;
    assert_eq!(f["row"], json!({"host": "c"}));
    // A subscriber sends nothing but control frames: a large message closes it with 1009.
    ws.send(Message::binary(vec![0u8; 100 << 10]))
        .await
        .unwrap();
    assert_eq!(crate::common::close_code(&mut ws).await, Some(1009));
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/v1/subscribe?q=nope", s.addr))
            .await
            .is_err()
    );
}
