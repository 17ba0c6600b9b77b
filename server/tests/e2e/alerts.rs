//! Alerts end to end: the real binary, a real SMTP server (Python's aiosmtpd), a real
//! Alertmanager, and webhook receivers that fail on purpose.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    eventually, free_port, mails, request, wait_for_port, Peer, Receiver, Server, Smtp,
};

/// A source, the latest cpu per host, and `hot`: hosts whose latest cpu is above 90. Its label
/// is `host` (the text column); `cpu` is its value.
const SCHEMA: &str = "
    CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP;
    CREATE VIEW latest AS SELECT DISTINCT ON (host) host, cpu FROM cpu ORDER BY host, ts DESC";

fn rule(for_: &str, sinks: &str) -> String {
    format!(
        "CREATE RULE hot AS SELECT host, cpu FROM latest WHERE cpu > 90
           WITH (for = '{for_}', severity = 'critical', sink = '{sinks}',
                 summary = 'CPU {{{{cpu}}}}% on {{{{host}}}}', description = 'state {{{{state}}}} of {{{{rule}}}}')"
    )
}

async fn push(s: &Server, host: &str, cpu: f64) {
    let (st, ack) = s
        .ingest(
            "cpu",
            "application/json",
            format!("{{\"host\": \"{host}\", \"cpu\": {cpu}}}").into_bytes(),
        )
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(1)), "{ack}");
}

/// The alerts `GET /v1/alerts` lists, by host label.
async fn alerts(s: &Server) -> HashMap<String, Value> {
    let (_, body) = s.get("/v1/alerts").await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["labels"]["host"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// `for = '2s'`: pending, firing after 2 s (not before), one email; a value change sends
/// nothing; the row going away sends one resolved email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_per_transition_through_a_real_smtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path()).await;
    let (smtp_port, maildir) = (smtp.port, smtp.maildir.clone());
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(&format!(
        "{SCHEMA};
         CREATE SINK mail TO EMAIL WITH (server = 'smtp://127.0.0.1:{smtp_port}', from = 'tocsin@example.com', to = 'ops@example.com, dba@example.com');
         {}",
        rule("2s", "mail")
    ))
    .await;
    push(&s, "db1", 97.0).await;
    let a = eventually(10, "a pending alert", || async {
        alerts(&s).await.remove("db1")
    })
    .await;
    assert_eq!(a["state"], "pending", "{a}");
    assert_eq!(a["summary"], "CPU 97% on db1");
    let firing = eventually(10, "the alert firing", || async {
        alerts(&s)
            .await
            .remove("db1")
            .filter(|a| a["state"] == "firing")
    })
    .await;
    let waited = ms(&firing["firing_since"]) - ms(&firing["active_since"]);
    assert!(waited >= 2000, "fired {waited} ms after it became pending");
    let sent = eventually(10, "the firing email", || async {
        Some(mails(&maildir)).filter(|m| !m.is_empty())
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "[FIRING] hot: CPU 97% on db1");
    for part in [
        "host = db1",
        "cpu = 97",
        "state:         firing",
        "severity:      critical",
        "state firing of hot",
        "To: ops@example.com, dba@example.com",
    ] {
        assert!(sent[0].1.contains(part), "{part} not in\n{}", sent[0].1);
    }
    // A new value updates the alert without a new email.
    push(&s, "db1", 99.0).await;
    eventually(10, "the new value", || async {
        alerts(&s)
            .await
            .remove("db1")
            .filter(|a| a["values"]["cpu"] == 99.0)
    })
    .await;
    push(&s, "db1", 20.0).await;
    let sent = eventually(10, "the resolved email", || async {
        Some(mails(&maildir)).filter(|m| m.len() >= 2)
    })
    .await;
    assert!(alerts(&s).await.is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_now = mails(&maildir);
    assert_eq!(
        sent_now.len(),
        2,
        "exactly one email per transition: {sent_now:?}"
    );
    let resolved = sent.iter().find(|m| m.0.starts_with("[RESOLVED]")).unwrap();
    assert_eq!(resolved.0, "[RESOLVED] hot: CPU 99% on db1");
    assert!(resolved.1.contains("resolved at:"), "{}", resolved.1);
    // The transitions are in tocsin_alert_events, in order.
    let events = s
        .rows("SELECT state FROM tocsin_alert_events WHERE rule = 'hot' ORDER BY ts")
        .await;
    assert_eq!(
        events,
        vec![
            serde_json::json!(["pending"]),
            serde_json::json!(["firing"]),
            serde_json::json!(["resolved"])
        ]
    );
}

/// A receiver that fails its first requests gets every notification once it recovers, each id
/// once; the failures show in SHOW SINKS and /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_notifications_survive_a_failing_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(3).await;
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(&format!(
        "{SCHEMA};
         CREATE SINK hook TO WEBHOOK WITH (url = '{}', format = 'json', headers = 'Authorization: Bearer t');
         {}",
        hook.url,
        rule("0s", "hook")
    ))
    .await;
    for h in ["a", "b", "c"] {
        push(&s, h, 95.0).await;
    }
    eventually(10, "three alerts", || async {
        let a = alerts(&s).await;
        (a.len() == 3).then_some(())
    })
    .await;
    push(&s, "a", 10.0).await;
    let got = eventually(30, "four notifications accepted", || async {
        Some(hook.accepted()).filter(|a| a.len() >= 4)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = hook.accepted();
    assert_eq!(got_now.len(), 4, "{got_now:?}");
    let mut ids: Vec<&str> = got.iter().map(|n| n["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        4,
        "one notification per transition, none twice: {got:?}"
    );
    let transitions: Vec<(String, String)> = got
        .iter()
        .map(|n| {
            (
                n["labels"]["host"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for t in [
        ("a", "firing"),
        ("b", "firing"),
        ("c", "firing"),
        ("a", "resolved"),
    ] {
        assert!(
            transitions.contains(&(t.0.to_string(), t.1.to_string())),
            "{t:?} missing: {transitions:?}"
        );
    }
    // a's resolve came after its firing.
    let pos = |st: &str| {
        transitions
            .iter()
            .position(|t| t.0 == "a" && t.1 == st)
            .unwrap()
    };
    assert!(pos("firing") < pos("resolved"));
    assert!(
        hook.requests.lock().unwrap().len() >= 7,
        "3 refused + 4 accepted"
    );
    let sinks = s.rows("SHOW SINKS").await;
    assert_eq!(sinks[0][0], "hook");
    assert_eq!(sinks[0][2], "0", "queue drained: {sinks:?}");
    assert_eq!(sinks[0][3], "4");
    assert_eq!(sinks[0][4], "3");
    assert!(sinks[0][6]
        .as_str()
        .unwrap()
        .contains("headers = '********'"));
    let (_, metrics) = s.get("/metrics").await.unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("tocsin_sink_failures_total{sink=\"hook\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tocsin_sink_delivered_total{sink=\"hook\"} 4"),
        "{metrics}"
    );
}

/// A real Alertmanager takes tocsin's alerts in its API v2 format and lists them; a resolve
/// ends them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_lists_tocsins_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
    )
    .unwrap();
    let am_port = free_port();
    let _am = Peer(
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("am").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (apt-get install prometheus-alertmanager)"),
    );
    wait_for_port(am_port, "alertmanager").await;
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(&format!(
        "{SCHEMA};
         CREATE SINK am TO WEBHOOK WITH (url = 'http://127.0.0.1:{am_port}/api/v2/alerts', format = 'alertmanager');
         {}",
        rule("0s", "am")
    ))
    .await;
    push(&s, "db7", 99.5).await;
    let am = format!("127.0.0.1:{am_port}");
    let listed = eventually(20, "the alert in Alertmanager", || async {
        let (_, _, body) = request(&am, "GET", "/api/v2/alerts", None, Vec::new())
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&body).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "hot")
            .cloned()
    })
    .await;
    assert_eq!(listed["labels"]["host"], "db7", "{listed}");
    assert_eq!(listed["labels"]["severity"], "critical");
    assert_eq!(listed["annotations"]["summary"], "CPU 99.5% on db7");
    assert_eq!(listed["annotations"]["cpu"], "99.5");
    assert_eq!(listed["status"]["state"], "active");
    push(&s, "db7", 1.0).await;
    eventually(20, "the alert resolved in Alertmanager", || async {
        let (_, _, body) = request(&am, "GET", "/api/v2/alerts", None, Vec::new())
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&body).ok()?;
        v.as_array()?
            .iter()
            .all(|a| a["labels"]["alertname"] != "hot")
            .then_some(())
    })
    .await;
}

/// `kill -9` with one alert pending and one firing: after the restart the pending one fires at
/// its original deadline, the firing one stays firing, and nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_pending_timers_and_firing_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hook = Receiver::start(0).await;
    let s = Server::start(&data, &[]).await;
    s.rows(&format!(
        "{SCHEMA};
         CREATE SINK hook TO WEBHOOK WITH (url = '{}');
         {}",
        hook.url,
        rule("6s", "hook")
    ))
    .await;
    push(&s, "a", 95.0).await;
    eventually(15, "a firing and notified", || async {
        (hook.accepted().len() == 1).then_some(())
    })
    .await;
    push(&s, "b", 96.0).await;
    let b_before = eventually(10, "b pending", || async { alerts(&s).await.remove("b") }).await;
    assert_eq!(b_before["state"], "pending");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data = s.kill();
    let s = Server::start(&data, &[]).await;
    let now = alerts(&s).await;
    assert_eq!(now["a"]["state"], "firing", "{now:?}");
    assert_eq!(
        now["b"]["active_since"], b_before["active_since"],
        "b's timer kept its start"
    );
    let b = eventually(15, "b firing", || async {
        alerts(&s)
            .await
            .remove("b")
            .filter(|b| b["state"] == "firing")
    })
    .await;
    let waited = ms(&b["firing_since"]) - ms(&b["active_since"]);
    // Restarting the timer would fire 6 s after the restart, 7 s or more after the start.
    assert!(
        (6000..6900).contains(&waited),
        "b fired {waited} ms after it became pending"
    );
    eventually(10, "b's notification", || async {
        (hook.accepted().len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = hook.accepted();
    let hosts: Vec<&str> = got
        .iter()
        .map(|n| n["labels"]["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        vec!["a", "b"],
        "one firing notification each: {got:?}"
    );
}

/// A silence keeps matching alerts from notifying (they still fire and show as silenced) and
/// leaves the others alone; once it is dropped, the held-back notification goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_suppress_matching_alerts_only() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(0).await;
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(&format!(
        "{SCHEMA};
         CREATE SINK hook TO WEBHOOK WITH (url = '{}');
         {};
         CREATE SILENCE quiet_a WITH (matchers = 'rule=hot, host=a', until = '1h', comment = 'maintenance')",
        hook.url,
        rule("0s", "hook")
    ))
    .await;
    push(&s, "a", 95.0).await;
    push(&s, "b", 95.0).await;
    eventually(10, "b notified", || async {
        (!hook.accepted().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = hook.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["labels"]["host"], "b");
    let now = alerts(&s).await;
    assert_eq!(
        (now["a"]["state"].as_str(), now["a"]["silenced"].as_bool()),
        (Some("firing"), Some(true))
    );
    assert_eq!(now["b"]["silenced"], false);
    let shown = s
        .rows("SELECT labels, silenced FROM tocsin_alerts ORDER BY labels")
        .await;
    assert_eq!(
        shown,
        vec![
            serde_json::json!(["{\"host\":\"a\"}", true]),
            serde_json::json!(["{\"host\":\"b\"}", false])
        ]
    );
    s.rows("DROP SILENCE quiet_a").await;
    let got = eventually(10, "a notified once the silence is gone", || async {
        Some(hook.accepted()).filter(|g| g.len() == 2)
    })
    .await;
    assert_eq!(got[1]["labels"]["host"], "a");
}

/// Each rule's evaluations, changed rows and lag are in `/metrics`, and its lag in `SHOW RULES`:
/// 0 once the rule has taken every accepted row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_lag_and_evaluations_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(
        "CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP;
         CREATE RULE hot AS SELECT host, cpu FROM cpu WHERE cpu > 90 WITH (for = '0s')",
    )
    .await;
    push(&s, "a", 95.0).await;
    push(&s, "b", 10.0).await;
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{rule=\"hot\"}} ")))
            .and_then(|v| v.parse().ok())
    };
    eventually(10, "the rule to have taken both rows", || async {
        let text = String::from_utf8(s.get("/metrics").await.ok()?.1).ok()?;
        let evaluations = metric(&text, "tocsin_rule_evaluations_total")?;
        let changed = metric(&text, "tocsin_rule_output_changes_total")?;
        let lag = metric(&text, "tocsin_rule_lag_seconds")?;
        (evaluations >= 1.0 && changed == 1.0 && lag == 0.0).then_some(())
    })
    .await;
    // A read of the rule waits until it has taken every row; then its lag is 0.
    s.rows("SELECT count(*) FROM hot").await;
    let rules = s.rows("SHOW RULES").await;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0][0], "hot");
    assert_eq!(rules[0][2], "0 ms", "{:?}", rules[0]);
}
