//! The web console in a real browser (headless Chromium): each page as a person sees it, with a
//! screenshot of each under `target/console-screenshots/`.

use serde_json::json;

use crate::browser::Browser;
use crate::common::{eventually, Server};

/// The host name the collector reports, as the overview shows it.
async fn this_host(s: &Server) -> String {
    eventually(30, "a host sample", || async {
        let rows = s.rows("SELECT DISTINCT host FROM host").await;
        rows.first().and_then(|r| r[0].as_str()).map(str::to_string)
    })
    .await
}

/// The overview shows this machine's card, and its CPU figure changes between two samples
/// without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_this_host_live() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--default"]).await;
    let host = this_host(&s).await;
    let mut b = Browser::start(1400, 900).await;
    b.goto(&format!("http://{}/", s.addr)).await;
    let card = format!("document.querySelector('.card[data-host={}]')", json!(host));
    b.wait("the host's card", &card).await;
    let cpu = format!("{card}.querySelector('.m .v').textContent");
    let first = b
        .wait("a CPU figure", &format!("{cpu} !== '–' && {cpu}"))
        .await;
    assert!(first.as_str().unwrap().ends_with('%'), "CPU shows {first}");
    b.wait_for(
        40,
        "the CPU figure of a later sample",
        &format!("{cpu} !== {first}"),
    )
    .await;
    b.wait(
        "the reachability dot",
        &format!("{card}.querySelector('.dot.up')"),
    )
    .await;
    b.screenshot("overview").await;
}

/// A rule typed into the editor appears in the rules list; a malformed one shows the server's
/// message with its line and column, and the editor selects the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_created_from_the_editor_and_errors_point_at_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).await;
    s.rows("CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP")
        .await;
    let mut b = Browser::start(1400, 1000).await;
    b.goto(&format!("http://{}/#/rules", s.addr)).await;
    b.type_into(
        "#rule-sql",
        "CREATE RULE hot_cpu AS\n  SELECT host, cpu FROM cpu WHERE cpu > 90",
    )
    .await;
    b.click("#create").await;
    b.wait(
        "the new rule in the list",
        "document.querySelector('.rule[data-name=\"hot_cpu\"]')",
    )
    .await;
    let bad = "CREATE RULE broken AS\n  SELECT host FROM cpu WHERE cpu > > 90";
    let (status, answer) = s.sql(bad).await;
    assert_eq!(status, 400);
    let (line, column) = (
        answer["error"]["line"].clone(),
        answer["error"]["column"].clone(),
    );
    b.type_into("#rule-sql", bad).await;
    b.click("#create").await;
    let where_ = b
        .wait(
            "the error's position",
            "document.querySelector('#rule-result .where')?.textContent",
        )
        .await;
    assert_eq!(where_, json!(format!("line {line}, column {column}")));
    let message = b
        .eval("document.querySelector('#rule-result .error b').textContent")
        .await;
    assert_eq!(message, answer["error"]["message"]);
    // The editor's selection starts where the error points.
    let start = b
        .eval("document.querySelector('#rule-sql').selectionStart")
        .await;
    let lines: Vec<&str> = bad.lines().collect();
    let want = lines[..line.as_u64().unwrap() as usize - 1]
        .iter()
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + column.as_u64().unwrap() as usize
        - 1;
    assert_eq!(start, json!(want));
    assert!(
        s.rows("SHOW RULES").await.len() == 1,
        "the broken rule was not created"
    );
    b.screenshot("rules").await;
}

/// A row pushed over HTTP that fires a rule shows on the alerts page within 2 s without a
/// reload; a silence made there from the alert's labels silences it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_show_live_and_a_silence_made_there_suppresses_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).await;
    s.rows(
        "CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP;
         CREATE RULE hot AS SELECT host, cpu FROM cpu WHERE cpu > 90
           WITH (summary = 'CPU {{cpu}} on {{host}}')",
    )
    .await;
    let mut b = Browser::start(1400, 1000).await;
    b.goto(&format!("http://{}/#/alerts", s.addr)).await;
    b.wait(
        "the empty alert list",
        "document.querySelector('#alerts')?.textContent.includes('No alert')",
    )
    .await;
    let pushed = std::time::Instant::now();
    let (st, _) = s
        .ingest(
            "cpu",
            "application/json",
            br#"[{"host":"web1","cpu":97}]"#.to_vec(),
        )
        .await;
    assert_eq!(st, 200);
    b.wait_for(
        2,
        "the alert on the page",
        "document.querySelector('#alerts tr.alert.firing[data-rule=\"hot\"]')",
    )
    .await;
    let shown_after = pushed.elapsed();
    assert!(
        shown_after.as_millis() <= 2000,
        "shown after {shown_after:?}"
    );
    let text = b
        .eval("document.querySelector('#alerts').textContent")
        .await;
    assert!(text.as_str().unwrap().contains("CPU 97 on web1"), "{text}");
    b.screenshot("alerts-firing").await;
    b.click("#alerts button.silence").await;
    let matchers = b
        .eval("document.querySelector('#silence-form input[name=matchers]').value")
        .await;
    assert_eq!(matchers, json!(r#"rule="hot", host="web1""#));
    b.click("#silence-form button[type=submit]").await;
    b.wait(
        "the silence in the list",
        "document.querySelector('#silences tr[data-silence]')",
    )
    .await;
    b.wait(
        "the alert marked silenced",
        "document.querySelector('#alerts tr.alert .state.silenced')",
    )
    .await;
    let alerts = s.get("/v1/alerts").await.unwrap().1;
    let alerts: serde_json::Value = serde_json::from_slice(&alerts).unwrap();
    assert_eq!(alerts["alerts"][0]["silenced"], json!(true), "{alerts}");
    b.screenshot("alerts-silenced").await;
    // Expiring it from the page ends it.
    b.click("#silences button.expire").await;
    b.wait(
        "the silence gone",
        "document.querySelector('#silences')?.textContent.includes('No silences')",
    )
    .await;
}

/// Host detail draws its charts over 5 minutes (from the source) and 24 hours (from the
/// per-minute rollup), with yesterday's overlay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_detail_charts_five_minutes_and_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--default"]).await;
    let host = this_host(&s).await;
    let mut b = Browser::start(1400, 1200).await;
    let base = format!("http://{}/#/host/{}", s.addr, host);
    b.goto(&format!("{base}?range=5m")).await;
    let charts = "document.querySelectorAll('.chart .uplot').length";
    let n = b.wait("the 5-minute charts", charts).await;
    assert!(n.as_u64().unwrap() >= 4, "{n} charts");
    let cpu = b
        .eval("[...document.querySelectorAll('.chart .u-title')].map(t => t.textContent)")
        .await;
    assert!(
        cpu.as_array().unwrap().contains(&json!("CPU busy %")),
        "{cpu}"
    );
    b.screenshot("host-5m").await;
    // The 24-hour range reads host_1m; its first minute is there once a minute has begun.
    eventually(90, "a minute in host_1m", || async {
        (!s.rows("SELECT * FROM host_1m LIMIT 1").await.is_empty()).then_some(())
    })
    .await;
    b.goto(&format!("{base}?range=24h&compare=1")).await;
    let n = b.wait("the 24-hour charts", charts).await;
    assert!(n.as_u64().unwrap() >= 4, "{n} charts");
    assert_eq!(
        b.eval("document.querySelector('#compare').checked").await,
        json!(true)
    );
    b.screenshot("host-24h").await;
    // The back button returns to the 5-minute range.
    b.eval("history.back()").await;
    b.wait(
        "the 5-minute range again",
        "location.hash.includes('range=5m') && document.querySelector('a.btn.active')?.dataset.range === '5m'",
    )
    .await;
}

/// With tokens configured the console shows no data until a token is entered; a wrong one is
/// refused; with a read token the overview follows live data through the WebSocket, which
/// carries the token as its subprotocol. The console's own files are at most 300 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_asks_for_a_token_and_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--default", "--read-token", "rd-secret"]).await;
    let mut b = Browser::start(1400, 900).await;
    b.goto(&format!("http://{}/", s.addr)).await;
    assert_eq!(b.eval("window.tocsinConsole.page").await, json!("signin"));
    assert_eq!(
        b.eval("document.querySelectorAll('.card').length").await,
        json!(0)
    );
    b.screenshot("signin").await;
    b.type_into("#token", "wrong").await;
    b.click(".signin button").await;
    b.wait(
        "the refusal",
        "document.querySelector('.signin .error')?.textContent.includes('refused')",
    )
    .await;
    b.type_into("#token", "rd-secret").await;
    b.click(".signin button").await;
    b.wait("a host card", "document.querySelector('.card .dot.up')")
        .await;
    b.wait(
        "the live subscription",
        "document.querySelector('#conn').textContent.includes('live')",
    )
    .await;
    // What the browser transferred of the console's own files (the document and /console/).
    let bytes = b
        .eval(
            "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
               .filter(e => new URL(e.name).pathname === '/' || new URL(e.name).pathname.startsWith('/console/'))
               .reduce((n, e) => n + e.decodedBodySize, 0)",
        )
        .await;
    let bytes = bytes.as_u64().unwrap();
    assert!(bytes > 50_000, "only {bytes} bytes counted");
    assert!(bytes <= 300_000, "the console is {bytes} bytes");
    println!("console transfer: {bytes} bytes");
}

/// The console's files need no credential and forbid framing and foreign scripts; the API
/// behind them still needs the token, which a WebSocket may carry as its subprotocol, and a page
/// of another origin cannot use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_public_and_the_api_is_not() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--read-token", "rd-secret"]).await;
    let (status, headers, body) = s.request("GET", "/", None, Vec::new()).await.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("/console/app.js"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    let (status, _, js) = s
        .request("GET", "/console/api.js", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!js.is_empty());
    assert_eq!(s.get("/console/nope.js").await.unwrap().0, 404);
    assert_eq!(s.get("/v1/catalog").await.unwrap().0, 401);
    let url = format!("ws://{}/v1/subscribe?q=SELECT%201%20AS%20x", s.addr);
    let connect = |protocols: &str, origin: Option<String>| {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    // base64url("rd-secret") = "cmQtc2VjcmV0"
    let (_, answer) = connect(
        "tocsin, bearer.cmQtc2VjcmV0",
        Some(format!("http://{}", s.addr)),
    )
    .await
    .expect("the token in the subprotocol is accepted");
    assert_eq!(answer.headers()["sec-websocket-protocol"], "tocsin");
    for (protocols, origin, want) in [
        ("tocsin", None, 401),
        ("tocsin, bearer.d3Jvbmc", None, 401),
        (
            "tocsin, bearer.cmQtc2VjcmV0",
            Some("http://evil.example".to_string()),
            403,
        ),
    ] {
        match connect(protocols, origin).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), want, "{protocols}")
            }
            other => panic!("{protocols}: {:?}", other.map(|(_, r)| r.status())),
        }
    }
}

/// The SQL editor shows a result as a table and, with a timestamp and numbers, as a chart; its
/// live mode follows new rows; its history survives a reload. The sources page shows a source's
/// rows and why its last rows were rejected. Host detail lists the host's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_editor_sources_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).await;
    // Processes named in `processes` are listed whether or not they are among the busiest.
    s.rows(
        "CREATE SOURCE host FROM HOST WITH (interval = '1s', processes = 'tocsin');
         CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP",
    )
    .await;
    let (st, _) = s
        .ingest(
            "cpu",
            "application/x-ndjson",
            b"{\"host\":\"a\",\"cpu\":12.5}\n{\"host\":\"b\",\"cpu\":20}\n".to_vec(),
        )
        .await;
    assert_eq!(st, 200);
    let mut b = Browser::start(1400, 1000).await;
    b.goto(&format!("http://{}/#/sql", s.addr)).await;
    b.type_into("#sql", "SELECT ts, host, cpu FROM cpu ORDER BY host")
        .await;
    b.click("#run").await;
    b.wait(
        "the result table",
        "document.querySelectorAll('#result table.grid tbody tr').length === 2",
    )
    .await;
    b.wait(
        "the chart",
        "document.querySelector('#result .chart .uplot')",
    )
    .await;
    let series = b
        .eval("[...document.querySelectorAll('#result .u-legend .u-series th')].map(t => t.textContent.trim()).filter(t => t)")
        .await;
    assert!(
        series.to_string().contains("a cpu") && series.to_string().contains("b cpu"),
        "{series}"
    );
    b.screenshot("sql").await;
    // Live: a row pushed now shows up without running the query again.
    b.click("#live").await;
    b.click("#run").await;
    b.wait(
        "the live result",
        "document.querySelector('#result p')?.textContent.startsWith('live')",
    )
    .await;
    let (st, _) = s
        .ingest(
            "cpu",
            "application/x-ndjson",
            b"{\"host\":\"c\",\"cpu\":99}\n".to_vec(),
        )
        .await;
    assert_eq!(st, 200);
    b.wait(
        "the pushed row",
        "document.querySelectorAll('#result table.grid tbody tr').length === 3",
    )
    .await;
    // The history is kept across a reload.
    b.goto(&format!("http://{}/#/sql", s.addr)).await;
    let history = b
        .eval("document.querySelector('ul.history li')?.textContent")
        .await;
    assert_eq!(
        history,
        json!("SELECT ts, host, cpu FROM cpu ORDER BY host")
    );

    // A row the source refuses, and why, on the sources page.
    let (st, ack) = s
        .ingest(
            "cpu",
            "application/x-ndjson",
            b"{\"host\":\"d\",\"cpu\":1,\"ts\":\"2020-01-01T00:00:00Z\"}\n".to_vec(),
        )
        .await;
    assert_eq!(st, 200, "{ack}");
    assert_eq!(ack["rejected"], json!(1));
    b.goto(&format!("http://{}/#/sources", s.addr)).await;
    let why = b
        .wait(
            "the rejection",
            "document.querySelector('#rejections')?.textContent",
        )
        .await;
    assert!(why.as_str().unwrap().contains("late"), "{why}");
    assert!(b
        .eval("document.querySelector('#wal').textContent")
        .await
        .as_str()
        .unwrap()
        .contains("segment"),);
    b.screenshot("sources").await;

    // This machine's processes, this server among them (listed by name).
    let host = this_host(&s).await;
    b.goto(&format!("http://{}/#/host/{}", s.addr, host)).await;
    b.wait_for(
        40,
        "the process table",
        "document.querySelectorAll('#processes tbody tr').length > 0",
    )
    .await;
    let pid = s.pid();
    let names = b
        .eval("[...document.querySelectorAll('#processes tbody tr')].map(r => r.dataset.pid)")
        .await;
    assert!(
        names.as_array().unwrap().contains(&json!(pid.to_string())),
        "tocsin (pid {pid}) is not among {names}"
    );
    b.screenshot("host-processes").await;
}
