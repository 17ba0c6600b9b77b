//! Time moves with no data arriving: after one row and nothing else, a temporal filter retracts
//! the row at its expiry, and a rule's `for` fires and its alert resolves when the row leaves
//! the rule's window. Idle dataflows are not moved by the passing of time; these are moved by
//! the wake-ups their held updates ask for.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, Server};

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fall_due_with_no_data_arriving() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP;
         CREATE VIEW recent AS SELECT host, v, ts FROM m WHERE ts > now() - INTERVAL '2 seconds';
         CREATE RULE hot AS SELECT host, v FROM m WHERE ts > now() - INTERVAL '4 seconds' AND v > 90
           WITH (for = '1s')",
    )
    .await;
    // Rules on another source that never gets a row: they are not moved, and change nothing.
    for i in 0..50 {
        s.rows(&format!(
            "CREATE SOURCE quiet{i} (host TEXT, v DOUBLE) FROM HTTP;
             CREATE RULE quiet_rule{i} AS SELECT host, avg(v) AS v FROM quiet{i}
               WHERE ts > now() - INTERVAL '1 minute' GROUP BY host HAVING avg(v) > 1"
        ))
        .await;
    }
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/subscribe?q=recent", s.addr))
            .await
            .unwrap();
    let (st, ack) = s
        .ingest(
            "m",
            "application/json",
            br#"{"host": "a", "v": 95}"#.to_vec(),
        )
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(1)), "{ack}");

    // The view: the row is inserted, and retracted at exactly ts + 2 s of logical time, with
    // nothing pushed in between.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ts, mut retracted) = (None, None);
    while retracted.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no retraction before the deadline: {other:?}"),
        };
        match frame["diff"].as_i64() {
            Some(1) => ts = Some(ms(&frame["row"]["ts"])),
            Some(-1) => retracted = Some((frame["time"].as_i64().unwrap(), wall_ms())),
            _ => {}
        }
    }
    let ts = ts.expect("the row was inserted before it was retracted");
    let (time, arrived) = retracted.unwrap();
    assert_eq!(time, ts + 2000, "retracted at its expiry in logical time");
    eprintln!(
        "the retraction reached the subscriber {} ms after the row's expiry",
        arrived - (ts + 2000)
    );

    // The rule: pending at once, firing after `for` with nothing else happening, resolved when
    // the row leaves the rule's 4 s window.
    let alert = |state: &'static str| {
        let s = &s;
        move || async move {
            let (_, body) = s.get("/v1/alerts").await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            v["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["rule"] == "hot" && a["state"] == state)
                .cloned()
        }
    };
    let firing = eventually(20, "the alert firing", alert("firing")).await;
    let waited = ms(&firing["firing_since"]) - ms(&firing["active_since"]);
    assert!(waited >= 1000, "fired {waited} ms after it became pending");
    eprintln!("the alert fired {} ms after `for` elapsed", waited - 1000);
    let events = eventually(20, "the alert resolved", || async {
        let rows = s
            .rows("SELECT state, ts FROM tocsin_alert_events WHERE rule = 'hot' ORDER BY ts")
            .await;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    let states: Vec<&str> = events.iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "firing", "resolved"]);
    let resolved_at = ms(&events[2][1]);
    assert!(
        resolved_at >= ts + 4000,
        "resolved {} ms before its row left the window",
        ts + 4000 - resolved_at
    );
    eprintln!(
        "the alert resolved {} ms after its row left the rule's window",
        resolved_at - (ts + 4000)
    );
    // The quiet rules never produced anything.
    let quiet = s
        .rows("SELECT count(*) FROM tocsin_alerts WHERE rule LIKE 'quiet%'")
        .await;
    assert_eq!(quiet, vec![serde_json::json!([0])]);
}
