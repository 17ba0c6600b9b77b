//! Scraping many exporters: this program serves `--targets` exporters (default 1,000) of
//! `--series` series each (default 500), each on a loopback address of its own
//! (127.0.1.1:9179, 127.0.1.2:9179, ...), and has a running scraper scrape them every
//! `--interval` (default 15s) for `--seconds` (default 120, after one interval to settle). It
//! reports the scraper's CPU per million samples it was served.
//!
//! ```sh
//! tocsin serve --no-default --data-dir /tmp/sb --listen 127.0.0.1:7654 &
//! scrapebench --scraper tocsin --server 127.0.0.1:7654
//! scrapebench --scraper prometheus      # starts Debian's prometheus on the same targets
//! ```
//!
//! The exporters answer the text format as node_exporter does (gzip when asked), every value
//! changing from one scrape to the next. Their own CPU is this process's, not counted.

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tocsin_benches::server::{self, client, post};

struct Args {
    scraper: String,
    server: String,
    targets: usize,
    series: usize,
    interval: u64,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        scraper: "tocsin".into(),
        server: "127.0.0.1:7654".into(),
        targets: 1000,
        series: 500,
        interval: 15,
        seconds: 120,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--scraper" => a.scraper = v,
            "--server" => a.server = v,
            "--targets" => a.targets = v.parse().expect("--targets N"),
            "--series" => a.series = v.parse().expect("--series N"),
            "--interval" => a.interval = v.parse().expect("--interval SECONDS"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

const PORT: u16 = 9179;

fn address(i: usize) -> String {
    format!("127.0.{}.{}:{PORT}", 1 + i / 250, 1 + i % 250)
}

/// One exporter's answer: `series` samples in ten metrics, values from `tick`.
fn exposition(target: usize, series: usize, tick: u64) -> String {
    let mut out = String::with_capacity(series * 80);
    for m in 0..10 {
        out.push_str(&format!(
            "# HELP bench_metric_{m} A benchmark gauge.\n# TYPE bench_metric_{m} gauge\n"
        ));
        for s in (0..series).filter(|s| s % 10 == m) {
            out.push_str(&format!(
                "bench_metric_{m}{{device=\"dev{s}\",mode=\"{}\"}} {}\n",
                ["user", "system", "idle"][s % 3],
                (tick * 7 + (target * series + s) as u64) % 100_000
            ));
        }
    }
    out
}

async fn serve(i: usize, series: usize, served: Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind(address(i))
        .await
        .unwrap_or_else(|e| panic!("bind {}: {e}", address(i)));
    let tick = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (tick, served) = (tick.clone(), served.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let t = tick.fetch_add(1, Ordering::Relaxed);
                served.fetch_add(series as u64, Ordering::Relaxed);
                let gzip = req
                    .headers()
                    .get(hyper::header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("gzip"));
                async move {
                    let text = exposition(i, series, t);
                    let mut resp = hyper::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8");
                    let body = if gzip {
                        resp = resp.header("content-encoding", "gzip");
                        let mut e =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        e.write_all(text.as_bytes()).unwrap();
                        e.finish().unwrap()
                    } else {
                        text.into_bytes()
                    };
                    Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap())
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let served = Arc::new(AtomicU64::new(0));
    for i in 0..a.targets {
        tokio::spawn(serve(i, a.series, served.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let targets: Vec<String> = (0..a.targets).map(address).collect();
    let dir = tempfile::tempdir().unwrap();
    let (pid, _child) = if a.scraper == "tocsin" {
        let c = client();
        let (st, body) = post(
            &c,
            format!("http://{}/v1/sql", a.server),
            "text/plain",
            format!(
                "CREATE SOURCE scraped FROM PROMETHEUS SCRAPE WITH (targets = '{}', interval = '{}s', retain = '1 minute')",
                targets.join(","),
                a.interval
            )
            .into_bytes(),
        )
        .await;
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("tocsin[^ ]* serve .*{}", a.server)])
            .output()
            .expect("pgrep");
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("the tocsin serve process listening on --server, on this machine");
        (pid, None)
    } else {
        let config = dir.path().join("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {}s\nscrape_configs:\n  - job_name: bench\n    static_configs:\n      - targets: [{}]\n",
                a.interval,
                list.join(", ")
            ),
        )
        .unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9178")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus)");
        (child.id(), Some(Kill(child)))
    };
    // One interval for every target's first scrape, then the measurement.
    tokio::time::sleep(Duration::from_secs(a.interval + 2)).await;
    let (cpu0, served0, t0) = (
        server::cpu_seconds(pid),
        served.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let cpu = server::cpu_seconds(pid) - cpu0;
    let samples = served.load(Ordering::Relaxed) - served0;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}: {} targets x {} series every {} s: {samples} samples served in {secs:.0} s ({:.0}/s); scraper CPU {cpu:.2} s ({:.1}% of a core) = {:.3} CPU-s per million samples; RSS {:.0} MB",
        a.scraper,
        a.targets,
        a.series,
        a.interval,
        samples as f64 / secs,
        cpu * 100.0 / secs,
        cpu / (samples as f64 / 1e6),
        server::rss_mb(pid)
    );
    if a.scraper == "tocsin" {
        let c = client();
        let _ = post(
            &c,
            format!("http://{}/v1/sql", a.server),
            "text/plain",
            b"DROP SOURCE scraped".to_vec(),
        )
        .await;
    }
}

/// A child process killed when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
