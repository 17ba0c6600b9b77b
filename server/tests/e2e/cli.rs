use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{eventually, free_port, run_piped, Server};

fn tocsin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tocsin"));
    command.args(args);
    let out = run_piped(command, stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tocsin_sql_prints_tables_and_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let server = s.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        let a = tocsin(
            &["sql", "--server", &server, "CREATE SOURCE t (name TEXT, v DOUBLE) FROM HTTP; INSERT INTO t (name, v) VALUES ('alpha', 1.5), ('b', NULL)"],
            None,
        );
        let b = tocsin(&["sql", "--server", &server], Some("SELECT name, v FROM t ORDER BY name"));
        let c = tocsin(&["sql", "--server", &server, "SELECT name\nFROM t WHERE name = = 'x'"], None);
        (a, b, c)
    })
    .await
    .unwrap();
    let (a, b, c) = out;
    assert_eq!(a.0, 0, "{a:?}");
    assert_eq!(a.1, "CREATE SOURCE t\nINSERT 2\n");
    assert_eq!(b.0, 0, "{b:?}");
    assert_eq!(
        b.1,
        "name  | v\n------+-----\nalpha | 1.5\nb     | NULL\n(2 rows)\n"
    );
    assert_eq!(c.0, 1);
    assert!(c.2.contains("at line 2, column 21"), "{}", c.2);
}

/// The agent samples while the server is down, connects when it comes up, and delivers what it
/// collected meanwhile: metrics, and processes into `<source>_processes` (itself among them, as
/// it names itself in `--processes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_and_delivers_its_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args([
            "agent",
            "--server",
            &format!("ws://127.0.0.1:{port}"),
            "--source",
            "remote",
            "--interval",
            "300ms",
            "--processes",
            "tocsin",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let it sample a few times with nobody listening.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = Server::start_on(port, &dir.path().join("data"), &[]).await;
    s.rows("CREATE SOURCE remote FROM HOST WITH (interval = '1h')")
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let rows = s.rows("SELECT count(DISTINCT ts) FROM remote WHERE metric = 'cpu_percent' AND device = ''").await;
        let n = rows[0][0].as_u64().unwrap();
        if n >= 5 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "agent delivered {n} samples\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pid = agent.id();
    let procs = eventually(30, "the agent's processes", || async {
        let rows = s
            .rows(&format!(
                "SELECT name, mem_bytes > 0 FROM remote_processes WHERE pid = {pid} LIMIT 1"
            ))
            .await;
        rows.first().cloned()
    })
    .await;
    assert_eq!(procs, json!(["tocsin", true]));
    agent.kill().unwrap();
    agent.wait().unwrap();
    // Samples from before the server was up arrived (stamped when they were taken).
    let rows = s
        .rows("SELECT count(*) > 0 FROM remote WHERE metric = 'mem_total_bytes' AND value > 0")
        .await;
    assert_eq!(rows, [json!([true])], "{samples} samples");
}
