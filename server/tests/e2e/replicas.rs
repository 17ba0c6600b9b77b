//! Replicas (docs/ha.md): real `tocsin serve` processes on loopback that share every pushed row.

use std::collections::HashMap;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tocsin_server::cluster::proto::{Frame, VERSION};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, free_port, Server};

const SECRET: &str = "replica-secret-0123456789";

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Starts replica `me` on `port` with its peers as (id, port).
async fn replica(me: &str, port: u16, peers: &[(&str, u16)], data: &Path) -> Server {
    replica_with(me, port, peers, data, &[]).await
}

/// [`replica`] with more flags.
async fn replica_with(
    me: &str,
    port: u16,
    peers: &[(&str, u16)],
    data: &Path,
    extra: &[&str],
) -> Server {
    let peers = peers
        .iter()
        .map(|(id, p)| format!("{id}=ws://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "--replica-id",
        me,
        "--peers",
        &peers,
        "--cluster-secret",
        SECRET,
        "--peer-timeout",
        "2s",
    ];
    args.extend(extra);
    Server::start_on(port, data, &args).await
}

const CATALOG: &str = "CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP WITH (retain = '1h');
CREATE VIEW per_host AS SELECT host, count(*) AS n, sum(cpu) AS total FROM cpu GROUP BY host";

/// A batch of NDJSON rows, some with their own `ts` and most stamped by the replica that takes
/// them.
fn rows(batch: usize, n: usize) -> Vec<u8> {
    (0..n)
        .map(|j| {
            let i = batch * n + j;
            if i.is_multiple_of(5) {
                format!(
                    "{{\"host\": \"h{}\", \"cpu\": {}, \"ts\": {}}}\n",
                    i % 7,
                    i % 97,
                    chrono_now() - 1_800_000 - i as i64
                )
            } else {
                format!("{{\"host\": \"h{}\", \"cpu\": {}}}\n", i % 7, i % 97)
            }
        })
        .collect::<String>()
        .into_bytes()
}

async fn push(s: &Server, batch: usize) {
    let (st, ack) = s
        .ingest("cpu", "application/x-ndjson", rows(batch, 50))
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(50)), "{ack}");
}

/// Every row of `cpu` (with the `ts` it was given) and the view, in a fixed order (nothing
/// while the replica does not have them yet).
async fn contents(s: &Server) -> (Vec<Value>, Vec<Value>) {
    let rows = |q: &'static str| async move {
        let (st, v) = s.sql(q).await;
        if st != 200 {
            return Vec::new();
        }
        v["results"][0]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    (
        rows("SELECT host, cpu, ts FROM cpu ORDER BY ts, host, cpu").await,
        rows("SELECT * FROM per_host ORDER BY host").await,
    )
}

/// Waits until both replicas hold `n` rows and the same rows and view contents.
async fn converged(a: &Server, b: &Server, n: usize, what: &str) {
    eventually(20, what, || async {
        let (ca, cb) = (contents(a).await, contents(b).await);
        (ca.0.len() == n && ca == cb).then_some(())
    })
    .await;
}

/// Waits until every replica of `all` takes `leader` for the leader.
async fn leads(all: &[&Server], leader: &str) {
    for s in all {
        ready(s).await;
        eventually(15, "a leader", || async {
            let r = s.rows("SELECT id FROM tocsin_replicas WHERE leader").await;
            (r.len() == 1 && r[0][0] == leader).then_some(())
        })
        .await;
    }
}

/// Waits for a replica to serve (`/readyz`): one started with an empty data dir serves once its
/// peers sent it their catalog and rows.
async fn ready(s: &Server) {
    eventually(20, "the replica to serve", || async {
        let (status, _) = s.get("/readyz").await.ok()?;
        (status == 200).then_some(())
    })
    .await;
}

/// The other replica as `tocsin_replicas` shows it: state and lag in rows.
async fn peer_row(s: &Server, id: &str) -> (String, i64) {
    let r = s
        .rows(&format!(
            "SELECT state, lag_rows FROM tocsin_replicas WHERE id = '{id}'"
        ))
        .await;
    (
        r[0][0].as_str().unwrap().to_string(),
        r[0][1].as_i64().unwrap(),
    )
}

/// Rows pushed to either replica reach the other with the time their origin gave them; a
/// replica killed with -9 is sent what it missed when it returns, and a record sent again is
/// never taken twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_rows_reach_every_replica_and_a_returning_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = replica("a", pa, &[("b", pb)], &da).await;
    let b = replica("b", pb, &[("a", pa)], &db).await;
    leads(&[&a, &b], "a").await;
    // Made at b, ordered by the leader a: both hold it when b answers.
    b.rows(CATALOG).await;
    for s in [&a, &b] {
        assert_eq!(s.rows("SHOW VIEWS").await.len(), 1);
    }
    for i in 0..40usize {
        push(if i.is_multiple_of(3) { &b } else { &a }, i).await;
    }
    converged(&a, &b, 2_000, "both replicas to hold the 2,000 rows").await;
    eventually(10, "b to be up with no lag", || async {
        (peer_row(&a, "b").await == ("up".to_string(), 0)).then_some(())
    })
    .await;
    let own = a
        .rows("SELECT id, state FROM tocsin_replicas WHERE id = 'a'")
        .await;
    assert_eq!(own[0][1], "self");
    // A collector every replica runs is not forwarded: each replica holds its own samples.
    a.rows("CREATE SOURCE here FROM HOST WITH (interval = '300ms')")
        .await;
    let samples = |s: &Server| {
        let s = s.addr.clone();
        async move {
            let (_, _, body) = crate::common::request(
                &s,
                "POST",
                "/v1/sql",
                Some("text/plain"),
                b"SELECT DISTINCT ts FROM here ORDER BY ts".to_vec(),
            )
            .await
            .unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            v["results"][0]["rows"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    let (ha, hb) = eventually(15, "both replicas to sample", || async {
        let (ha, hb) = (samples(&a).await, samples(&b).await);
        (ha.len() >= 5 && hb.len() >= 5).then_some((ha, hb))
    })
    .await;
    assert!(
        ha.iter().filter(|t| hb.contains(t)).count() < ha.len().min(hb.len()),
        "the replicas hold the same samples: a collector's rows were forwarded\n{ha:?}\n{hb:?}"
    );
    let shown = a.rows("SHOW REPLICAS").await;
    assert_eq!(
        (
            shown[0][0].as_str(),
            shown[1][0].as_str(),
            shown[1][2].as_str()
        ),
        (Some("a"), Some("b"), Some("up"))
    );

    // b dies; a takes more rows, and shows b behind by them.
    b.kill();
    for i in 40..50 {
        push(&a, i).await;
    }
    eventually(10, "a to show b down and 500 rows behind", || async {
        let (state, lag) = peer_row(&a, "b").await;
        (state != "up" && lag == 500).then_some(())
    })
    .await;
    // Without b, a has no majority: catalog changes are refused with the reason.
    let (st, e) = a
        .sql("CREATE VIEW lonely AS SELECT count(*) AS n FROM cpu")
        .await;
    assert_eq!(st, 503, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("need a majority of the replicas"),
        "{message}"
    );
    let (_, status) = a.get("/api/v2/status").await.unwrap();
    let status: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["cluster"]["name"], "a");
    assert_eq!(
        status["cluster"]["peers"],
        serde_json::json!([]),
        "b is down"
    );
    let (_, catalog) = a.get("/v1/catalog").await.unwrap();
    let catalog: Value = serde_json::from_slice(&catalog).unwrap();
    assert_eq!(catalog["cluster"]["replica_id"], "a");
    assert_eq!(catalog["cluster"]["peers"][0]["id"], "b");
    assert_eq!(catalog["cluster"]["peers"][0]["lag_rows"], 500);

    // b returns and catches up; then a dies and returns, and b's records are sent again from
    // what a's log holds: none is taken twice.
    let b = replica("b", pb, &[("a", pa)], &db).await;
    converged(&a, &b, 2_500, "b to catch up to 2,500 rows").await;
    // A catalog change made at the leader reaches b too.
    leads(&[&a, &b], "a").await;
    a.rows("CREATE VIEW busy AS SELECT host FROM cpu WHERE cpu > 90")
        .await;
    for s in [&a, &b] {
        assert_eq!(s.rows("SHOW VIEWS").await.len(), 2);
    }
    a.kill();
    push(&b, 50).await;
    let a = replica("a", pa, &[("b", pb)], &da).await;
    push(&a, 51).await;
    converged(
        &a,
        &b,
        2_600,
        "both replicas to hold 2,600 rows after a's restart",
    )
    .await;
    assert!(
        a.log().contains("replica b: link up"),
        "a's log:\n{}",
        a.log()
    );
}

/// A link without the secret, with the wrong one, speaking garbage, from an unknown replica or
/// with rows for a source that does not exist is refused with a logged reason; the replica goes
/// on taking good records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a = replica("a", pa, &[("b", pb)], &dir.path().join("a")).await;
    let b = replica("b", pb, &[("a", pa)], &dir.path().join("b")).await;
    leads(&[&a, &b], "a").await;
    a.rows("CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP")
        .await;
    let url = format!("ws://127.0.0.1:{pa}/v1/cluster");
    let dial = |secret: Option<&str>| {
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(s) = secret {
            req.headers_mut()
                .insert("authorization", format!("Bearer {s}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    for (secret, why) in [
        (None, "no cluster secret"),
        (Some("not-the-secret-at-all"), "a wrong cluster secret"),
    ] {
        match dial(secret).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 401);
                let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
                assert!(body.contains("cluster secret"), "{body}");
            }
            other => panic!("a link with {secret:?} was not refused: {other:?}"),
        }
        if secret.is_none() {
            assert!(
                eventually(5, "the refusal to be logged", || async {
                    a.log().contains(why).then_some(true)
                })
                .await
            );
        }
    }

    // Garbage, and a replica a does not know: closed with the reason, which is logged.
    let (mut ws, _) = dial(Some(SECRET)).await.unwrap();
    ws.send(Message::Binary(b"GET / HTTP/1.1".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(crate::common::close_code(&mut ws).await, Some(1008));
    let (mut ws, _) = dial(Some(SECRET)).await.unwrap();
    let hello = |id: &str| Frame::Hello {
        version: VERSION,
        id: id.into(),
    };
    ws.send(Message::Binary(hello("z").encode())).await.unwrap();
    assert_eq!(crate::common::close_code(&mut ws).await, Some(1008));
    eventually(5, "the garbage to be logged", || async {
        let log = a.log();
        log.contains("refused a replica link")
            .then_some(())
            .filter(|_| log.contains("unknown frame kind 71"))
    })
    .await;

    // As replica b (the real one is linked too): a record for a source a does not have is
    // refused, the next one is taken, once.
    let (mut ws, _) = dial(Some(SECRET)).await.unwrap();
    ws.send(Message::Binary(hello("b").encode())).await.unwrap();
    let welcome = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => break Frame::decode(b).unwrap(),
            _ => continue,
        }
    };
    assert!(
        matches!(&welcome, Frame::Welcome { id, mark: 0, catalog: 1, .. } if id == "a"),
        "{welcome:?}"
    );
    let record = |source: &str, lsn: u64| {
        use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("cpu", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let now = chrono_now();
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(StringArray::from(vec!["x", "y"])),
                std::sync::Arc::new(Float64Array::from(vec![1.0, 2.0])),
                std::sync::Arc::new(
                    TimestampMillisecondArray::from(vec![now, now]).with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let stamp = tocsin_server::wal::Stamp {
            lsn,
            seq: lsn,
            at: now,
            replicated: true,
            origin: None,
        };
        tocsin_server::wal::encode(source, 1, &stamp, &batch).unwrap()
    };
    for (source, lsn) in [("nope", 5), ("cpu", 6), ("cpu", 6)] {
        ws.send(Message::Binary(record(source, lsn).into()))
            .await
            .unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < 3 {
        if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
            match Frame::decode(b).unwrap() {
                Frame::Beat { .. } | Frame::Need(_) => {}
                f => answers.push(f),
            }
        }
    }
    assert!(
        matches!(&answers[0], Frame::Nack { seq: 5, reason } if reason.contains("\"nope\" does not exist")),
        "{answers:?}"
    );
    assert_eq!(answers[1..], [Frame::Ack(6), Frame::Ack(6)]);
    let n = a.rows("SELECT count(*) AS n FROM cpu").await;
    assert_eq!(n[0][0], 2, "the record sent twice is taken once: {n:?}");
    eventually(5, "the refused record to be logged", || async {
        a.log()
            .contains("replica b: refused its record #5")
            .then_some(())
    })
    .await;
    // The cluster keeps working: rows pushed to the real b reach a.
    let (st, ack) = b
        .ingest(
            "cpu",
            "application/x-ndjson",
            b"{\"host\": \"b\", \"cpu\": 1}\n{\"host\": \"b\", \"cpu\": 2}\n".to_vec(),
        )
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(2)), "{ack}");
    eventually(10, "b's rows to reach a", || async {
        let n = a.rows("SELECT count(*) FROM cpu").await;
        (n[0][0] == 4).then_some(())
    })
    .await;
}

/// The agent's samples a replica holds.
async fn samples(s: &Server) -> u64 {
    s.rows("SELECT count(DISTINCT ts) FROM remote WHERE metric = 'cpu_percent' AND device = ''")
        .await[0][0]
        .as_u64()
        .unwrap()
}

/// `tocsin agent --server ws://a,ws://b` pushes to the first replica and, when it dies, to the
/// next; its samples reach both replicas while both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_between_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a = replica("a", pa, &[("b", pb)], &dir.path().join("a")).await;
    let b = replica("b", pb, &[("a", pa)], &dir.path().join("b")).await;
    leads(&[&a, &b], "a").await;
    // The replicas' own collector samples once an hour; the rest are the agent's.
    a.rows("CREATE SOURCE remote FROM HOST WITH (interval = '1h')")
        .await;
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args([
            "agent",
            "--server",
            &format!("ws://127.0.0.1:{pa},ws://127.0.0.1:{pb}"),
            "--source",
            "remote",
            "--interval",
            "200ms",
            "--processes",
            "none",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(30, "the agent's samples at b, through a", || async {
        (samples(&b).await >= 5).then_some(())
    })
    .await;
    a.kill();
    let before = samples(&b).await;
    eventually(30, "the agent's samples at b after a died", || async {
        (samples(&b).await >= before + 5).then_some(())
    })
    .await;
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// With `--ack quorum` a batch is acknowledged once the other replica holds it too; without it,
/// the client is told so after the peer timeout, and the rows reach the other replica when it
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_acknowledges_once_a_majority_holds_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let quorum = ["--ack", "quorum"];
    let a = replica_with("a", pa, &[("b", pb)], &da, &quorum).await;
    let b = replica_with("b", pb, &[("a", pa)], &db, &quorum).await;
    leads(&[&a, &b], "a").await;
    b.rows(CATALOG).await;
    for i in 0..5 {
        push(&a, i).await;
        // Acknowledged by a majority: b already holds the rows.
        let n = b.rows("SELECT count(*) FROM cpu").await;
        assert_eq!(n[0][0], 50 * (i + 1) as u64);
    }
    b.kill();
    let (st, e) = a.ingest("cpu", "application/x-ndjson", rows(5, 50)).await;
    assert_eq!(st, 503, "{e}");
    assert!(e.to_string().contains("did not confirm"), "{e}");
    let b = replica_with("b", pb, &[("a", pa)], &db, &quorum).await;
    converged(&a, &b, 300, "the unconfirmed rows to reach b").await;
    push(&a, 6).await;
}

/// The rule of the notification tests: an alert per host whose latest value is over 50, to a
/// webhook, and by email too when an SMTP server's port is given.
fn alerting(hook: &str, smtp: Option<u16>) -> String {
    let (mail, sinks) = match smtp {
        Some(port) => (
            format!("CREATE SINK mail TO EMAIL WITH (server = 'smtp://127.0.0.1:{port}', from = 'tocsin@example.com', to = 'ops@example.com');"),
            "hook, mail",
        ),
        None => (String::new(), "hook"),
    };
    format!(
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP;
         CREATE VIEW latest AS SELECT DISTINCT ON (host) host, v FROM m ORDER BY host, ts DESC;
         CREATE SINK hook TO WEBHOOK WITH (url = '{hook}');
         {mail}
         CREATE RULE hot AS SELECT host, v FROM latest WHERE v > 50 WITH (sink = '{sinks}')"
    )
}

/// Pushes `v` for `hosts`, each batch of 25 hosts to one replica or the other at random.
async fn set_hosts(replicas: &[&Server], hosts: std::ops::Range<usize>, v: f64, seed: &mut u64) {
    let hosts: Vec<usize> = hosts.collect();
    for chunk in hosts.chunks(25) {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let s = replicas[(*seed >> 33) as usize % replicas.len()];
        let body: String = chunk
            .iter()
            .map(|h| format!("{{\"host\": \"h{h:03}\", \"v\": {v}}}\n"))
            .collect();
        let (st, ack) = s
            .ingest("m", "application/x-ndjson", body.into_bytes())
            .await;
        assert_eq!(st, 200, "{ack}");
    }
}

/// Each webhook notification's (host, state) and id, and how often each id came.
fn hook_notifications(
    hook: &crate::common::Receiver,
) -> (Vec<(String, String)>, HashMap<String, usize>) {
    let mut transitions = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for body in hook.accepted() {
        transitions.push((
            body["labels"]["host"].as_str().unwrap().to_string(),
            body["state"].as_str().unwrap().to_string(),
        ));
        *ids.entry(body["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    (transitions, ids)
}

/// The ids in the mails aiosmtpd stored, and how often each came.
fn mail_ids(maildir: &Path) -> HashMap<String, usize> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (_, text) in crate::common::mails(maildir) {
        let id = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("notification id: "))
            .unwrap()
            .to_string();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

/// What `tocsin_alerts` holds that every replica computes alike.
async fn alert_states(s: &Server) -> Vec<Value> {
    s.rows("SELECT rule, labels, state, values_json FROM tocsin_alerts ORDER BY labels")
        .await
}

/// Two replicas, 1,000 alert transitions from rows pushed to either at random: each
/// notification arrives once at the webhook and once at aiosmtpd, and the replicas agree on the
/// alerts and the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_notification_arrives_once_from_two_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let hook = crate::common::Receiver::start(0).await;
    let smtp = crate::common::Smtp::start(dir.path()).await;
    let (pa, pb) = (free_port(), free_port());
    let a = replica("a", pa, &[("b", pb)], &dir.path().join("a")).await;
    let b = replica("b", pb, &[("a", pa)], &dir.path().join("b")).await;
    leads(&[&a, &b], "a").await;
    b.rows(&alerting(&hook.url, Some(smtp.port))).await;
    let mut seed = 7;
    set_hosts(&[&a, &b], 0..500, 90.0, &mut seed).await;
    eventually(60, "500 firing notifications", || async {
        (hook.accepted().len() >= 500).then_some(())
    })
    .await;
    // Each replica stamped every alert alike, to the millisecond: the same input at the same
    // times (docs/ha.md).
    let firing = "SELECT * FROM tocsin_alerts ORDER BY labels";
    eventually(10, "500 firing alerts on both replicas", || async {
        let (fa, fb) = (a.rows(firing).await, b.rows(firing).await);
        (fa.len() == 500 && fb.len() == 500).then_some(())
    })
    .await;
    assert_eq!(a.rows(firing).await, b.rows(firing).await);
    set_hosts(&[&a, &b], 0..500, 10.0, &mut seed).await;
    eventually(
        60,
        "1,000 notifications at the webhook and by mail",
        || async {
            (hook.accepted().len() >= 1_000 && mail_ids(&smtp.maildir).len() >= 1_000).then_some(())
        },
    )
    .await;
    // Longer than the second replica's turn: nothing more comes.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (transitions, ids) = hook_notifications(&hook);
    assert_eq!(
        transitions.len(),
        1_000,
        "each transition once at the webhook"
    );
    assert_eq!(ids.len(), 1_000);
    let distinct: std::collections::BTreeSet<_> = transitions.iter().collect();
    assert_eq!(distinct.len(), 1_000, "500 hosts, firing and resolved");
    let mails = mail_ids(&smtp.maildir);
    assert_eq!(mails.len(), 1_000);
    assert!(mails.values().all(|n| *n == 1), "a mail came twice");
    assert!(
        mails.keys().all(|id| ids.contains_key(id)),
        "mail and webhook carry the same ids"
    );
    assert_eq!(alert_states(&a).await, alert_states(&b).await);
    assert_eq!(
        a.rows("SELECT * FROM latest ORDER BY host").await,
        b.rows("SELECT * FROM latest ORDER BY host").await
    );
    // Every transition, with its times, on both: each replica computed each notification's id
    // (rule, labels, transition, time) itself.
    let events = "SELECT * FROM tocsin_alert_events ORDER BY ts, labels, state";
    let (ea, eb) = (a.rows(events).await, b.rows(events).await);
    assert_eq!(
        ea.len(),
        1_500,
        "pending, firing and resolved for 500 hosts"
    );
    assert_eq!(ea, eb);
    // Every forwarded row was taken at its origin's time: none came after its peer's slack.
    for s in [&a, &b] {
        let text = String::from_utf8(s.get("/metrics").await.unwrap().1).unwrap();
        assert!(
            text.lines()
                .any(|l| l == "tocsin_replica_rows_late_total 0"),
            "rows taken late: {}",
            text.lines()
                .filter(|l| l.starts_with("tocsin_replica_rows_late"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// `kill -9` of the delivering replica in the middle of a burst: every notification arrives,
/// duplicates are at most those in flight at the kill (with the same id, so the receiver can drop
/// them), and the killed replica catches up after a restart without sending any again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_delivering_replica_loses_no_notification() {
    let dir = tempfile::tempdir().unwrap();
    // 20 ms a notification: the burst of 300 takes 6 s.
    let hook = crate::common::Receiver::start_with(0, std::time::Duration::from_millis(20)).await;
    let (pa, pb) = (free_port(), free_port());
    let da = dir.path().join("a");
    let a = replica("a", pa, &[("b", pb)], &da).await;
    let b = replica("b", pb, &[("a", pa)], &dir.path().join("b")).await;
    leads(&[&a, &b], "a").await;
    a.rows(&alerting(&hook.url, None)).await;
    let mut seed = 11;
    set_hosts(&[&a, &b], 0..300, 90.0, &mut seed).await;
    eventually(30, "a to be in the middle of the burst", || async {
        (hook.accepted().len() >= 60).then_some(())
    })
    .await;
    a.kill();
    let at_kill = hook.accepted().len();
    for i in 0..600 {
        let (transitions, _) = hook_notifications(&hook);
        let distinct: std::collections::BTreeSet<_> = transitions.iter().collect();
        if distinct.len() == 300 {
            break;
        }
        assert!(
            i < 599,
            "{} of 300 notifications, {at_kill} at the kill",
            distinct.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (transitions, ids) = hook_notifications(&hook);
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        transitions.len() - 300 <= 2,
        "{} duplicates: more than were in flight at the kill (after {at_kill}): {twice:?}",
        transitions.len() - 300
    );
    assert_eq!(ids.len(), 300, "a duplicate has the id of the first");
    // a returns: it catches up on what b took, and sends nothing b delivered.
    set_hosts(&[&b], 300..310, 90.0, &mut seed).await;
    let a = replica("a", pa, &[("b", pb)], &da).await;
    eventually(10, "a's view to equal b's", || async {
        let q = "SELECT * FROM latest ORDER BY host";
        let (va, vb) = (a.rows(q).await, b.rows(q).await);
        (va.len() == 310 && va == vb).then_some(())
    })
    .await;
    eventually(30, "the 10 new notifications", || async {
        (hook_notifications(&hook).1.len() == 310).then_some(())
    })
    .await;
    let before = hook.accepted().len();
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(
        hook.accepted().len(),
        before,
        "a sent again what b delivered"
    );
    assert_eq!(alert_states(&a).await, alert_states(&b).await);
}

/// A replica stopped (SIGSTOP) for 30 s: the other delivers on time meanwhile; when it resumes
/// nothing is lost, it catches up, and it sends nothing the other delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_neither_delays_nor_repeats_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let hook = crate::common::Receiver::start(0).await;
    let (pa, pb) = (free_port(), free_port());
    let a = replica("a", pa, &[("b", pb)], &dir.path().join("a")).await;
    let b = replica("b", pb, &[("a", pa)], &dir.path().join("b")).await;
    leads(&[&a, &b], "a").await;
    a.rows(&alerting(&hook.url, None)).await;
    let signal = |sig: &str, pid: u32| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    signal("-STOP", a.pid());
    let stopped = std::time::Instant::now();
    let mut seed = 3;
    set_hosts(&[&b], 0..50, 90.0, &mut seed).await;
    eventually(15, "b to deliver while a is stopped", || async {
        (hook.accepted().len() == 50).then_some(())
    })
    .await;
    // Time to resolve half of them too, all while a is stopped.
    set_hosts(&[&b], 0..25, 10.0, &mut seed).await;
    eventually(10, "b to deliver the resolutions", || async {
        (hook.accepted().len() == 75).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    signal("-CONT", a.pid());
    eventually(15, "a to catch up", || async {
        let q = "SELECT * FROM latest ORDER BY host";
        let (va, vb) = (a.rows(q).await, b.rows(q).await);
        (va.len() == 50 && va == vb).then_some(())
    })
    .await;
    eventually(10, "a's alerts to equal b's", || async {
        (alert_states(&a).await == alert_states(&b).await).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let (transitions, ids) = hook_notifications(&hook);
    assert_eq!(transitions.len(), 75, "a sent again what b delivered");
    assert_eq!(ids.len(), 75);
}

/// The catalog as `/v1/catalog` shows it, without what differs between replicas (ingest counts,
/// the cluster as each sees it).
async fn catalog(s: &Server) -> Value {
    let (_, body) = s.get("/v1/catalog").await.unwrap();
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    for source in v["sources"].as_array_mut().unwrap() {
        source.as_object_mut().unwrap().remove("ingest");
    }
    v.as_object_mut().unwrap().remove("cluster");
    v
}

/// A third replica started with an empty data dir reaches the catalog, the views and the alert
/// state the other two hold, and sends no notification they delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_replica_joins() {
    let dir = tempfile::tempdir().unwrap();
    let hook = crate::common::Receiver::start(0).await;
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = replica("a", pa, &[("b", pb), ("c", pc)], &dir.path().join("a")).await;
    let b = replica("b", pb, &[("a", pa), ("c", pc)], &dir.path().join("b")).await;
    leads(&[&a, &b], "a").await;
    b.rows(&alerting(&hook.url, None)).await;
    let mut seed = 5;
    set_hosts(&[&a, &b], 0..100, 90.0, &mut seed).await;
    set_hosts(&[&a, &b], 0..40, 10.0, &mut seed).await;
    eventually(20, "140 notifications", || async {
        (hook.accepted().len() >= 140).then_some(())
    })
    .await;
    let c = replica("c", pc, &[("a", pa), ("b", pb)], &dir.path().join("c")).await;
    // c answers nothing until its peers sent it their catalog and rows: its first answer holds
    // all of them.
    let q = "SELECT * FROM latest ORDER BY host";
    let first = eventually(20, "c to serve", || async {
        let (status, v) = c.sql(q).await;
        if status == 503 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("empty data dir")),
                "{v}"
            );
        }
        (status == 200).then(|| v["results"][0]["rows"].clone())
    })
    .await;
    assert_eq!(first.as_array().map(Vec::len), Some(100), "{first}");
    assert_eq!(first, Value::Array(a.rows(q).await));
    eventually(20, "c to reach a's catalog, view and alerts", || async {
        let q = "SELECT * FROM latest ORDER BY host";
        (catalog(&c).await == catalog(&a).await
            && c.rows(q).await == a.rows(q).await
            && alert_states(&c).await == alert_states(&a).await)
            .then_some(())
    })
    .await;
    assert_eq!(alert_states(&c).await.len(), 60);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(hook.accepted().len(), 140, "c sent again what a delivered");
}

/// A dead replica replaced by a new one of the same id with an empty data dir: it is sent the
/// catalog and rows, and the rows it takes reach the other replica (numbered above those of the
/// replica it replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_replica_takes_part_again() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = replica("a", pa, &[("b", pb)], &da).await;
    let b = replica("b", pb, &[("a", pa)], &db).await;
    leads(&[&a, &b], "a").await;
    a.rows(CATALOG).await;
    for i in 0..4 {
        push(&b, i).await;
    }
    converged(&a, &b, 200, "b's rows at a").await;
    b.kill();
    std::fs::remove_dir_all(&db).unwrap();
    let b = replica("b", pb, &[("a", pa)], &db).await;
    ready(&b).await;
    converged(&a, &b, 200, "the new b to be sent the catalog and rows").await;
    for i in 4..6 {
        push(&b, i).await;
    }
    converged(&a, &b, 300, "the new b's rows at a").await;
    assert!(b.log().contains("replaced one of its id"), "{}", b.log());
}

/// `--cluster-config FILE` gives a replica's settings; a bad file or `--peers` without an id is
/// refused at start with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_settings_come_from_a_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let file = dir.path().join("cluster.conf");
    std::fs::write(
        &file,
        format!(
            "# replica a\nreplica-id = a\npeers = b=ws://127.0.0.1:{pb}\ncluster-secret = {SECRET}\npeer-timeout = 3s\nack = quorum\n"
        ),
    )
    .unwrap();
    let a = Server::start_on(
        pa,
        &dir.path().join("a"),
        &["--cluster-config", file.to_str().unwrap()],
    )
    .await;
    // Its data dir is empty and its peer is not up: it does not serve yet, and says why.
    let (status, body) = a.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(a.get("/healthz").await.unwrap().0, 200);
    let (status, v) = a.sql("SELECT 1").await;
    assert_eq!(status, 503);
    let why = v["error"]["message"].as_str().unwrap().to_string();
    assert!(
        why.contains("empty data dir") && why.contains("b: "),
        "{why}"
    );
    let pg = format!("host=127.0.0.1 port={pa} user=grafana dbname=tocsin sslmode=disable");
    let e = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused while joining");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW),
        "{e}"
    );
    let b = replica("b", pb, &[("a", pa)], &dir.path().join("b")).await;
    ready(&a).await;
    ready(&b).await;
    let (_, catalog) = a.get("/v1/catalog").await.unwrap();
    let catalog: Value = serde_json::from_slice(&catalog).unwrap();
    assert_eq!(catalog["cluster"]["replica_id"], "a");
    assert_eq!(catalog["cluster"]["ack"], "quorum");
    assert_eq!(catalog["cluster"]["peer_timeout_ms"], 3000);
    assert_eq!(
        catalog["cluster"]["peers"][0]["address"],
        format!("ws://127.0.0.1:{pb}")
    );
    std::fs::write(&file, "replica-id = a\npeer = b=ws://h:1\n").unwrap();
    for (args, why) in [
        (
            vec!["--cluster-config", file.to_str().unwrap()],
            "line 2: unknown key 'peer'",
        ),
        (vec!["--peers", "b=ws://h:1"], "--peers needs --replica-id"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
            .arg("serve")
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path().join("x"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

/// Records forwarded while the receiving replica's ingest queue is full are taken in the order
/// they were sent, so none is mistaken for one already held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_keeps_forwarded_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let small = ["--ingest-queue", "1"];
    let a = replica_with("a", pa, &[("b", pb)], &dir.path().join("a"), &small).await;
    let b = replica_with("b", pb, &[("a", pa)], &dir.path().join("b"), &small).await;
    leads(&[&a, &b], "a").await;
    a.rows(CATALOG).await;
    // Four clients at once, 2,000 rows a batch, as a load generator pushes.
    for round in 0..20 {
        let pushes = (0..4).map(|i| {
            let a = &a;
            async move {
                let (st, ack) = a
                    .ingest("cpu", "application/x-ndjson", rows(round * 4 + i, 2_000))
                    .await;
                assert_eq!(st, 200, "{ack}");
                ack["accepted"].as_u64().unwrap()
            }
        });
        futures_util::future::join_all(pushes).await;
    }
    let n = a.rows("SELECT count(*) FROM cpu").await[0][0]
        .as_u64()
        .unwrap() as usize;
    converged(&a, &b, n, "every batch at b").await;
}

/// Replicas with `--tls-cert` link over wss:// and check each other's certificate against
/// `--cluster-ca-cert`; one that does not trust the certificate does not link, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_link_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    crate::security::make_certificates(dir.path());
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (pa, pb) = (free_port(), free_port());
    let tls = |me: &str, port: u16, peer: (&str, u16), ca: bool| {
        let mut args = vec![
            "--replica-id".to_string(),
            me.to_string(),
            "--peers".to_string(),
            format!("{}=wss://localhost:{}", peer.0, peer.1),
            "--cluster-secret".to_string(),
            SECRET.to_string(),
            "--peer-timeout".to_string(),
            "2s".to_string(),
            "--tls-cert".to_string(),
            file("cert.pem"),
            "--tls-key".to_string(),
            file("key.pem"),
        ];
        if ca {
            args.extend(["--cluster-ca-cert".to_string(), file("ca.pem")]);
        }
        (port, args)
    };
    let (port, args) = tls("a", pa, ("b", pb), true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = Server::start_on(port, &dir.path().join("a"), &args).await;
    // b does not trust the CA: its link to a fails on the certificate.
    let (port, args) = tls("b", pb, ("a", pa), false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Server::start_on(port, &dir.path().join("b"), &args).await;
    // a's link to b carries a's catalog and rows: b serves.
    ready(&b).await;
    eventually(10, "b to say why it cannot link", || async {
        let r = b
            .rows("SELECT state, detail FROM tocsin_replicas WHERE id = 'a'")
            .await;
        let detail = r[0][1].as_str().unwrap_or_default().to_string();
        (r[0][0] == "down" && detail.to_lowercase().contains("certificate")).then_some(())
    })
    .await;
    drop(b);
    let (port, args) = tls("b", pb, ("a", pa), true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Server::start_on(port, &dir.path().join("b"), &args).await;
    leads(&[&a, &b], "a").await;
    b.rows(CATALOG).await;
    push(&a, 0).await;
    push(&b, 1).await;
    converged(&a, &b, 100, "rows over wss:// both ways").await;
}
