//! SNMP polling against a real net-snmp `snmpd` started by this program on a loopback port:
//!
//! 1. **Walk**: the time for tocsin's poller (the same code a `FROM SNMP` source runs, including
//!    turning the walk into an Arrow batch) to walk a table of `--rows` rows, against
//!    net-snmp's own `snmpbulkwalk` on the same table in the same run, runs interleaved, both
//!    with max-repetitions 25. The table is `nsExtendOutLine` of `extend big seq 1 N`.
//! 2. **Polls per second**: `--targets` targets (all this agent) polled concurrently with a GET of
//!    sysUpTime.0 and sysName.0, as many rounds as fit in `--seconds`.
//!
//! ```sh
//! cargo build --release -p tocsin-benches --bin snmpbench
//! target/release/snmpbench --rows 10000 --runs 21 --targets 1000 --seconds 10
//! ```
//! Needs `snmpd` and `snmpbulkwalk` (Debian packages `snmpd` and `snmp`).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tocsin_connectors::snmp::poll::Poller;
use tocsin_connectors::snmp::{poll_config, Target};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn opts(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::main]
async fn main() {
    let (mut rows, mut runs, mut targets, mut seconds) = (10_000usize, 21usize, 1000usize, 10u64);
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--rows" => rows = v.parse().expect("--rows N"),
            "--runs" => runs = v.parse().expect("--runs N"),
            "--targets" => targets = v.parse().expect("--targets N"),
            "--seconds" => seconds = v.parse().expect("--seconds N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = std::env::temp_dir().join(format!("tocsin-snmpbench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("persist")).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        dir.join("snmpd.conf"),
        format!(
            "agentAddress udp:{addr}\nrocommunity public 127.0.0.1\nsysName bench\nextend big /usr/bin/seq 1 {rows}\n"
        ),
    )
    .unwrap();
    let _agent = Agent(
        Command::new("snmpd")
            .args(["-f", "-Lf"])
            .arg(dir.join("snmpd.log"))
            .args(["-C", "-c"])
            .arg(dir.join("snmpd.conf"))
            .args(["-I", "-smux"])
            .env("SNMP_PERSISTENT_DIR", dir.join("persist"))
            .env("MIBS", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("snmpd"),
    );
    let table = "1.3.6.1.4.1.8072.1.3.2.4";
    let column = format!(".{table}.1.2");
    let walk_cmd = || {
        let mut c = Command::new("snmpbulkwalk");
        c.args([
            "-v2c", "-c", "public", "-Cr25", "-On", "-Oq", &addr, &column,
        ])
        .env("SNMP_PERSISTENT_DIR", dir.join("persist"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        c
    };
    // Wait for the agent, and warm its extend cache up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = walk_cmd().output().unwrap();
        if out.status.success() && out.stdout.split(|b| *b == b'\n').count() > rows {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snmpd did not answer with {rows} rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let config = Arc::new(
        poll_config(&opts(&[
            ("targets", addr.clone()),
            ("table", table.to_string()),
            ("columns", "line=2:text".to_string()),
            ("max_repetitions", "25".to_string()),
        ]))
        .unwrap(),
    );
    let target = Target {
        device: "bench".into(),
        address: addr.clone(),
    };
    let mut poller = Poller::new(config, target);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let out = poller.poll(0).await;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let batch = out.batch.expect("the walk succeeds");
        assert_eq!(batch.num_rows(), rows, "{:?}", out.status);
        ours.push(took);
        let t = Instant::now();
        let out = walk_cmd().output().unwrap();
        theirs.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success());
    }
    let (o, t) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "walk of {rows} rows, max-repetitions 25, {runs} runs each: tocsin median {o:.1} ms (min {:.1}), snmpbulkwalk median {t:.1} ms (min {:.1}); ratio {:.2}",
        ours.iter().copied().fold(f64::INFINITY, f64::min),
        theirs.iter().copied().fold(f64::INFINITY, f64::min),
        o / t
    );

    let names: Vec<String> = (0..targets).map(|i| format!("t{i}={addr}")).collect();
    let config = Arc::new(
        poll_config(&opts(&[
            ("targets", names.join(",")),
            ("oids", "sysUpTime.0, sysName.0".to_string()),
        ]))
        .unwrap(),
    );
    let pollers: Vec<Poller> = config
        .targets
        .iter()
        .map(|t| Poller::new(config.clone(), t.clone()))
        .collect();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut p in pollers {
        tasks.spawn(async move {
            let (mut polls, mut failed) = (0u64, 0u64);
            while start.elapsed() < Duration::from_secs(seconds) {
                let out = p.poll(0).await;
                polls += 1;
                failed += u64::from(!out.status.up);
            }
            (polls, failed)
        });
    }
    let (mut polls, mut failed) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (p, f) = r.unwrap();
        polls += p;
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{targets} targets polled concurrently (GET of 2 OIDs) for {secs:.1} s: {polls} polls, {:.0} polls/s, {failed} failed",
        polls as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}
