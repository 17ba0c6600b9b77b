//! The console's overview with many hosts, measured in headless Chromium as an operator meets
//! it: a running `tocsin serve` takes samples of `--hosts` hosts once a second over HTTP, and
//! the overview page follows them. Reports when the first cards were painted, then every 10 s:
//! samples the page applied per second, how old the newest sample was when it was applied and
//! when it was painted (the page falling behind would show as growing ages), the page's drawing
//! time, and the CPU of Chromium (every process of it) and of the server.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/console &
//! consolebench --server 127.0.0.1:7654 --hosts 1000 --seconds 180
//! ```
//!
//! Creates the source `fleet (host, metric, device, value)`, which the overview shows like a
//! `FROM HOST` source; each sample of a host is 10 rows (CPU, memory, two disks, two
//! interfaces in and out, two sensors).

use std::time::{Duration, Instant};

use serde_json::Value;
use tocsin_benches::browser::Browser;
use tocsin_benches::server::{self, client, post};

/// CPU seconds of a process and every process below it.
fn tree_cpu_seconds(root: u32) -> f64 {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            parent.insert(pid, ppid);
        }
    }
    let below = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p != 0 && p != pid => pid = p,
            _ => return false,
        }
    };
    parent
        .keys()
        .filter(|p| below(**p))
        .map(|p| server::cpu_seconds(*p))
        .sum()
}

/// One sample of every host, as NDJSON (no `ts`: the server stamps the time it took them).
fn sample(hosts: usize, tick: u64) -> Vec<u8> {
    let mut out = String::with_capacity(hosts * 600);
    for h in 0..hosts {
        let wave = ((tick as f64 / 10.0) + h as f64).sin();
        let host = format!("host-{h:04}");
        let mut row = |metric: &str, device: &str, value: f64| {
            out.push_str(&format!(
                "{{\"host\":\"{host}\",\"metric\":\"{metric}\",\"device\":\"{device}\",\"value\":{value}}}\n"
            ));
        };
        row("cpu_percent", "", 50.0 + 45.0 * wave);
        row("mem_used_percent", "", 60.0 + 10.0 * wave);
        row("disk_used_percent", "/", 40.0 + (h % 50) as f64);
        row("disk_used_percent", "/data", 20.0 + (h % 70) as f64);
        let bytes = (tick * 1_000_000 + h as u64 * 1000) as f64;
        row("net_rx_bytes", "eth0", bytes);
        row("net_tx_bytes", "eth0", bytes / 2.0);
        row("net_rx_bytes", "eth1", bytes / 4.0);
        row("net_tx_bytes", "eth1", bytes / 8.0);
        row("temperature_celsius", "cpu", 55.0 + 10.0 * wave);
        row("temperature_celsius", "board", 40.0);
    }
    out.into_bytes()
}

#[tokio::main]
async fn main() {
    let mut addr = "127.0.0.1:7654".to_string();
    let (mut hosts, mut seconds) = (1000usize, 180u64);
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--server" => addr = v,
            "--hosts" => hosts = v.parse().expect("--hosts N"),
            "--seconds" => seconds = v.parse().expect("--seconds N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let base = format!("http://{addr}");
    let http = client();
    let (st, body) = post(
        &http,
        format!("{base}/v1/sql"),
        "text/plain",
        b"CREATE SOURCE fleet (host TEXT, metric TEXT, device TEXT, value DOUBLE) FROM HTTP WITH (retain = '5 minutes')".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let server_pid: u32 = {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("tocsin[^ ]* serve .*{addr}")])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("the tocsin serve process listening on --server, on this machine")
    };

    // Samples of every host once a second, from now to the end.
    let pusher = {
        let http = http.clone();
        let url = format!("{base}/v1/ingest/fleet");
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick = 0u64;
            loop {
                every.tick().await;
                let (st, body) = post(
                    &http,
                    url.clone(),
                    "application/x-ndjson",
                    sample(hosts, tick),
                )
                .await;
                assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
                tick += 1;
            }
        })
    };
    // Let the sparklines' minutes fill.
    tokio::time::sleep(Duration::from_secs(20)).await;

    let mut b = Browser::start(1400, 900).await;
    let opened = Instant::now();
    b.goto(&format!("{base}/")).await;
    b.wait_for(
        60,
        "every card",
        &format!("document.querySelectorAll('.card').length >= {hosts} && window.tocsinConsole.stats.firstRenderMs"),
    )
    .await;
    let all_cards = opened.elapsed();
    let first: Value = b.eval("window.tocsinConsole.stats.firstRenderMs").await;
    println!(
        "first render: {} ms after navigation began; every one of {hosts} cards in the DOM {} ms after the navigation was asked for",
        first,
        all_cards.as_millis()
    );
    let heap0 = b.metrics().await["JSHeapUsedSize"];
    let windows = seconds / 10;
    let mut paint_lags = Vec::new();
    let mut rates = Vec::new();
    let (mut chrome_cpu, mut server_cpu) =
        (tree_cpu_seconds(b.pid()), server::cpu_seconds(server_pid));
    b.eval("Object.assign(window.tocsinConsole.stats, {maxLagMs: 0, paintLagMs: 0, draws: 0, drawMs: 0, rows: 0}) && true")
        .await;
    let mut at = Instant::now();
    println!("window  rows/s  applied-age-max-ms  painted-age-max-ms  draws  draw-ms/s  chromium-cpu%  server-cpu%");
    for w in 1..=windows {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let s: Value = b
            .eval("(() => { const s = window.tocsinConsole.stats; const c = {...s}; Object.assign(s, {maxLagMs: 0, paintLagMs: 0, draws: 0, drawMs: 0, rows: 0}); return c; })()")
            .await;
        let dt = at.elapsed().as_secs_f64();
        at = Instant::now();
        let (c, sv) = (tree_cpu_seconds(b.pid()), server::cpu_seconds(server_pid));
        let rate = s["rows"].as_f64().unwrap() / dt;
        println!(
            "{w:>6}  {rate:>6.0}  {:>18}  {:>18}  {:>5}  {:>9.1}  {:>13.1}  {:>11.1}",
            s["maxLagMs"],
            s["paintLagMs"],
            s["draws"],
            s["drawMs"].as_f64().unwrap() / dt,
            (c - chrome_cpu) * 100.0 / dt,
            (sv - server_cpu) * 100.0 / dt,
        );
        chrome_cpu = c;
        server_cpu = sv;
        paint_lags.push(s["paintLagMs"].as_f64().unwrap());
        rates.push(rate);
    }
    let heap1 = b.metrics().await["JSHeapUsedSize"];
    paint_lags.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    println!(
        "over {} windows: painted age max, median {:.0} ms, worst {:.0} ms; samples applied per second median {:.0} (pushed {hosts}/s); JS heap {:.1} MB then {:.1} MB",
        paint_lags.len(),
        paint_lags[paint_lags.len() / 2],
        paint_lags[paint_lags.len() - 1],
        rates[rates.len() / 2],
        heap0 / 1e6,
        heap1 / 1e6
    );
    // Where the page's time goes: 10 s of the V8 sampling profiler, self time per function.
    b.call("Profiler.enable", serde_json::json!({})).await;
    b.call("Profiler.start", serde_json::json!({})).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let profile = b.call("Profiler.stop", serde_json::json!({})).await;
    let nodes = profile["profile"]["nodes"].as_array().unwrap();
    let total: f64 = nodes
        .iter()
        .map(|n| n["hitCount"].as_f64().unwrap_or(0.0))
        .sum();
    let mut by_fn: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    for n in nodes {
        let f = &n["callFrame"];
        let url = f["url"].as_str().unwrap_or("");
        let name = format!(
            "{} {}:{}",
            f["functionName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("(anonymous)"),
            url.rsplit('/').next().unwrap_or(""),
            f["lineNumber"].as_i64().unwrap_or(0) + 1
        );
        *by_fn.entry(name).or_default() += n["hitCount"].as_f64().unwrap_or(0.0);
    }
    let mut top: Vec<_> = by_fn.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("page time by function (self, 10 s sampled):");
    for (name, hits) in top.iter().take(12) {
        println!("  {:>5.1}%  {name}", hits * 100.0 / total);
    }
    b.screenshot(&format!("overview-{hosts}")).await;
    pusher.abort();
}
