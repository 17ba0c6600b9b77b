//! SNMP against real net-snmp: `snmpd` as the polled device (compared with `snmpbulkwalk` of the
//! same table), `snmptrap`/`snmpinform` as trap senders, 10,000 random datagrams at the trap
//! port, and the link-down-to-email demo through a real SMTP server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{eventually, mails, Peer, Server, Smtp};

/// A free UDP port on the loopback.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `snmpd` on a loopback port, with SNMPv3 users; killed when dropped.
struct Snmpd {
    port: u16,
    dir: PathBuf,
    peer: Option<Peer>,
}

impl Snmpd {
    async fn start(dir: &Path) -> Snmpd {
        let mut s = Snmpd {
            port: free_udp_port(),
            dir: dir.to_path_buf(),
            peer: None,
        };
        s.run().await;
        s
    }

    async fn run(&mut self) {
        let conf = self.dir.join("snmpd.conf");
        std::fs::write(
            &conf,
            format!(
                "agentAddress udp:127.0.0.1:{}
rocommunity public 127.0.0.1
sysLocation tocsin test lab
sysContact ops@example.invalid
sysName tocsin-snmpd
sysServices 72
createUser v3user SHA \"authpass123\" AES \"privpass123\"
rouser v3user priv
",
                self.port
            ),
        )
        .unwrap();
        let persist = self.dir.join("persist");
        std::fs::create_dir_all(&persist).unwrap();
        let child = Command::new("snmpd")
            .args(["-f", "-Lf"])
            .arg(self.dir.join("snmpd.log"))
            .args(["-C", "-c"])
            .arg(&conf)
            .args(["-I", "-smux"])
            .env("SNMP_PERSISTENT_DIR", &persist)
            .env("MIBS", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("snmpd (apt-get install snmpd)");
        self.peer = Some(Peer(child));
        let port = self.port;
        eventually(30, "snmpd answering", || async move {
            let out = snmp_tool("snmpget")
                .args(["-v2c", "-c", "public", "-t", "0.2", "-r", "0"])
                .arg(format!("127.0.0.1:{port}"))
                .arg(".1.3.6.1.2.1.1.3.0")
                .output()
                .unwrap();
            out.status.success().then_some(())
        })
        .await;
    }

    fn stop(&mut self) {
        self.peer = None;
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A net-snmp command-line tool with a private persistent directory.
fn snmp_tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.env(
        "SNMP_PERSISTENT_DIR",
        std::env::temp_dir().join("tocsin-snmp-tools"),
    );
    c
}

/// `snmpbulkwalk -OnetxU` of a subtree: numeric OID (without the leading dot) → (type, value).
fn bulkwalk(agent: &str, oid: &str) -> BTreeMap<String, (String, String)> {
    let out = snmp_tool("snmpbulkwalk")
        .args(["-v2c", "-c", "public", "-OnetxU", "-Cr25", agent, oid])
        .output()
        .expect("snmpbulkwalk (apt-get install snmp)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut walk = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (oid, rest) = line.split_once(" = ").unwrap();
        let (ty, value) = match rest.split_once(": ") {
            Some((t, v)) if !t.contains(' ') => (t.to_string(), v.trim().to_string()),
            _ => ("".into(), rest.trim().to_string()),
        };
        walk.insert(oid.trim_start_matches('.').to_string(), (ty, value));
    }
    walk
}

/// The text of a `Hex-STRING` as tocsin shows a DisplayString, or as its colon-hex form.
fn hex_bytes(v: &str) -> Vec<u8> {
    v.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// The latest row of each device in a status relation.
async fn latest_status(s: &Server, source: &str) -> BTreeMap<String, Value> {
    s.rows(&format!(
        "SELECT DISTINCT ON (device) device, up, error, rtt_ms, ts FROM {source} ORDER BY device, ts DESC"
    ))
    .await
    .into_iter()
    .map(|r| (r[0].as_str().unwrap().to_string(), r))
    .collect()
}

fn column_names(s: &[Value]) -> Vec<String> {
    s.iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

/// The ifTable rows tocsin polls equal what `snmpbulkwalk` returns for the same table; the
/// schema is derived from the MIB and the status relation reports the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iftable_rows_equal_snmpbulkwalk() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Snmpd::start(dir.path()).await;
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(&format!(
        "CREATE SOURCE ifaces FROM SNMP WITH (targets = 'sw1={}', community = 'public', table = 'IF-MIB::ifTable', interval = '1s')",
        agent.address()
    ))
    .await;
    let cols = column_names(&s.rows("SHOW COLUMNS FROM ifaces").await);
    assert_eq!(
        &cols[..6],
        ["ts", "device", "if_index", "if_descr", "if_type", "if_mtu"]
    );
    assert!(
        cols.contains(&"if_oper_status".to_string()) && cols.contains(&"if_in_octets".to_string())
    );
    assert_eq!(
        column_names(&s.rows("SHOW COLUMNS FROM ifaces_status").await),
        ["ts", "device", "up", "error", "rtt_ms"]
    );

    let q = "SELECT if_index, if_descr, if_type, if_mtu, if_speed, if_phys_address, if_admin_status, if_oper_status, if_specific, if_in_octets, device
             FROM ifaces WHERE ts = (SELECT max(ts) FROM ifaces) ORDER BY if_index";
    let rows = eventually(20, "a poll of ifTable", || async {
        Some(s.rows(q).await).filter(|r| !r.is_empty())
    })
    .await;
    let walk = bulkwalk(&agent.address(), ".1.3.6.1.2.1.2.2");
    let walked_indexes: BTreeSet<i64> = walk
        .keys()
        .filter_map(|o| o.strip_prefix("1.3.6.1.2.1.2.2.1.1."))
        .map(|i| i.parse().unwrap())
        .collect();
    let polled_indexes: BTreeSet<i64> = rows.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert_eq!(polled_indexes, walked_indexes);
    assert!(!polled_indexes.is_empty());
    let value = |col: u32, index: i64| walk[&format!("1.3.6.1.2.1.2.2.1.{col}.{index}")].clone();
    for r in &rows {
        let i = r[0].as_i64().unwrap();
        assert_eq!(r[10], "sw1");
        // DisplayString: the hex bytes snmpbulkwalk printed, as text
        let (_, d) = value(2, i);
        let descr = if d == "\"\"" {
            Vec::new()
        } else {
            hex_bytes(&d)
        };
        assert_eq!(r[1].as_str().unwrap().as_bytes(), descr, "ifDescr.{i}");
        for (pos, col) in [(2, 3), (3, 4), (4, 5), (6, 7), (7, 8)] {
            let (_, v) = value(col, i);
            assert_eq!(
                r[pos].as_i64().unwrap().to_string(),
                v,
                "column {col} of {i}"
            );
        }
        // PhysAddress: colon-separated hex of the same bytes
        let (_, mac) = value(6, i);
        let mac = if mac == "\"\"" {
            Vec::new()
        } else {
            hex_bytes(&mac)
        };
        let shown: Vec<u8> = r[5]
            .as_str()
            .unwrap()
            .split(':')
            .filter(|b| !b.is_empty())
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(shown, mac, "ifPhysAddress.{i}");
        let (ty, oid) = value(22, i);
        assert_eq!(
            (ty.as_str(), format!(".{}", r[8].as_str().unwrap())),
            ("OID", oid)
        );
        let (ty, _) = value(10, i);
        assert_eq!(ty, "Counter32");
        assert!(r[9].as_i64().unwrap() >= 0);
    }
    let status = latest_status(&s, "ifaces_status").await;
    let st = &status["sw1"];
    assert_eq!(
        (st[1].as_bool(), st[2].is_null()),
        (Some(true), true),
        "{st}"
    );
    assert!(st[3].as_f64().unwrap() > 0.0);
}

/// A stopped agent makes the next poll's status row `up = false` with the reason; after the
/// agent restarts, polls are up again. GET sources give one row per poll; SNMPv1 and SNMPv3
/// work against the same agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_down_and_up_and_scalar_gets() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Snmpd::start(dir.path()).await;
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let addr = agent.address();
    s.rows(&format!(
        "CREATE SOURCE sys FROM SNMP WITH (targets = 'a={addr}', oids = 'SNMPv2-MIB::sysName.0, sysUpTime, sysLocation.0, missing=1.3.6.1.2.1.1.99.0:bigint', interval = '1s', timeout = '300ms', retries = '1');
         CREATE SOURCE sys1 FROM SNMP WITH (targets = 'a={addr}', version = '1', oids = 'sysName.0, missing=1.3.6.1.2.1.1.99.0', interval = '1s');
         CREATE SOURCE sys3 FROM SNMP WITH (targets = 'a={addr}', version = '3', user = 'v3user', auth = 'sha', auth_password = 'authpass123', priv = 'aes', priv_password = 'privpass123', oids = 'sysName.0', interval = '1s');
         CREATE SOURCE bad3 FROM SNMP WITH (targets = 'a={addr}', version = '3', user = 'v3user', auth = 'sha', auth_password = 'wrongpass123', oids = 'sysName.0', interval = '1s', timeout = '300ms', retries = '0')"
    ))
    .await;
    assert_eq!(
        column_names(&s.rows("SHOW COLUMNS FROM sys").await),
        [
            "ts",
            "device",
            "sys_name",
            "sys_up_time",
            "sys_location",
            "missing"
        ]
    );
    for source in ["sys", "sys1", "sys3"] {
        let row = eventually(20, source, || async {
            s.rows(&format!("SELECT device, sys_name FROM {source} LIMIT 1"))
                .await
                .pop()
        })
        .await;
        assert_eq!(row, serde_json::json!(["a", "tocsin-snmpd"]), "{source}");
    }
    let row = s
        .rows("SELECT sys_up_time, sys_location, missing FROM sys ORDER BY ts DESC LIMIT 1")
        .await
        .pop()
        .unwrap();
    assert!(row[0].as_i64().unwrap() > 0);
    assert_eq!(row[1], "tocsin test lab");
    assert!(row[2].is_null(), "noSuchObject is NULL: {row}");
    let v1 = s.rows("SELECT missing FROM sys1 LIMIT 1").await;
    assert!(v1[0][0].is_null(), "v1 noSuchName is NULL: {v1:?}");
    let bad = eventually(20, "the bad v3 status", || async {
        latest_status(&s, "bad3_status").await.remove("a")
    })
    .await;
    // the agent answers, refusing the credentials
    assert_eq!(bad[1], true, "{bad}");
    assert!(
        bad[2].as_str().unwrap().contains("authentication failed"),
        "{bad}"
    );

    // polls are up; stop the agent
    eventually(10, "sys up", || async {
        latest_status(&s, "sys_status")
            .await
            .remove("a")
            .filter(|r| r[1] == true)
    })
    .await;
    agent.stop();
    let stopped = chrono::Utc::now().timestamp_millis();
    let first_after = eventually(15, "a poll after the agent stopped", || async {
        s.rows(&format!(
            "SELECT up, error FROM sys_status WHERE ts > to_timestamp_millis({stopped}) ORDER BY ts LIMIT 1"
        ))
        .await
        .pop()
    })
    .await;
    assert_eq!(
        first_after[0], false,
        "the first poll after the stop: {first_after}"
    );
    assert!(!first_after[1].as_str().unwrap().is_empty());

    agent.run().await;
    let restarted = chrono::Utc::now().timestamp_millis();
    eventually(15, "sys up again", || async {
        s.rows(&format!(
            "SELECT up FROM sys_status WHERE ts > to_timestamp_millis({restarted}) AND up"
        ))
        .await
        .pop()
    })
    .await;
    // "device not answering" as an ordinary rule over the status relation
    let (code, body) = s
        .sql("CREATE RULE unreachable AS SELECT device, error FROM sys_status WHERE NOT up AND ts > now() - INTERVAL '10 seconds'")
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.sql("DROP SOURCE sys_status").await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("belongs to source sys"));
    let (code, body) = s.sql("DROP SOURCE sys").await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    s.rows("DROP RULE unreachable; DROP SOURCE sys").await;
    let (code, _) = s.sql("SELECT * FROM sys_status").await;
    assert_eq!(code, 400, "the companion is dropped with its source");
}

/// Runs a net-snmp command line given as one string; `''` is an empty argument.
fn send_trap(line: &str) -> std::process::Output {
    let args: Vec<&str> = line
        .split_whitespace()
        .map(|a| if a == "''" { "" } else { a })
        .collect();
    snmp_tool(args[0])
        .args(&args[1..])
        .output()
        .expect("snmptrap (apt-get install snmp)")
}

async fn metric(s: &Server, name: &str, source: &str) -> u64 {
    let (_, body) = s.get("/metrics").await.unwrap();
    let prefix = format!("{name}{{source=\"{source}\"}} ");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

/// v2c and v1 traps and an inform arrive as rows; the inform is acknowledged (snmpinform exits
/// 0); the wrong community is refused; 10,000 random datagrams do not stop the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_informs_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let port = free_udp_port();
    let to = format!("127.0.0.1:{port}");
    s.rows(&format!(
        "CREATE SOURCE traps FROM SNMP TRAP WITH (listen = '{to}', community = 'public')"
    ))
    .await;
    eventually(10, "the trap port", || async {
        (metric(&s, "tocsin_snmp_trap_listening", "traps").await == 1).then_some(())
    })
    .await;
    let linkdown = format!(
        "snmptrap -v 2c -c public {to} '' .1.3.6.1.6.3.1.1.5.3 .1.3.6.1.2.1.2.2.1.1.4 i 4 \
         .1.3.6.1.2.1.2.2.1.7.4 i 1 .1.3.6.1.2.1.2.2.1.8.4 i 2 .1.3.6.1.2.1.2.2.1.2.4 s eth3"
    );
    assert!(send_trap(&linkdown).status.success());
    let v1 = format!(
        "snmptrap -v 1 -c public {to} .1.3.6.1.6.3.1.1.5 127.0.0.1 2 0 4242 .1.3.6.1.2.1.2.2.1.1.7 i 7"
    );
    assert!(send_trap(&v1).status.success());
    let inform = format!(
        "snmpinform -v 2c -c public -t 1 -r 0 {to} '' .1.3.6.1.6.3.1.1.5.4 .1.3.6.1.2.1.2.2.1.1.4 i 4"
    );
    let acked = send_trap(&inform);
    assert!(
        acked.status.success(),
        "snmpinform got no acknowledgement: {}",
        String::from_utf8_lossy(&acked.stderr)
    );
    let wrong = format!("snmptrap -v 2c -c secret {to} '' .1.3.6.1.6.3.1.1.5.1");
    assert!(send_trap(&wrong).status.success());

    let q = "SELECT agent, version, trap, trap_oid, uptime, json_get_int(varbinds, 'IF-MIB::ifIndex') AS if_index,
                    json_get_str(varbinds, 'IF-MIB::ifDescr') AS descr, varbinds
             FROM traps ORDER BY trap, version";
    let rows = eventually(10, "three notifications", || async {
        Some(s.rows(q).await).filter(|r| r.len() >= 3)
    })
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (down_v1, down_v2, up) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(
        down_v2.as_array().unwrap()[..7],
        serde_json::json!([
            "127.0.0.1",
            "2c",
            "IF-MIB::linkDown",
            "1.3.6.1.6.3.1.1.5.3",
            down_v2[4],
            4,
            "eth3"
        ])
        .as_array()
        .unwrap()[..]
    );
    assert!(down_v2[4].as_i64().unwrap() > 0);
    let vb: Value = serde_json::from_str(down_v2[7].as_str().unwrap()).unwrap();
    assert_eq!(vb["IF-MIB::ifOperStatus"], 2);
    assert_eq!(
        down_v1.as_array().unwrap()[..6],
        serde_json::json!([
            "127.0.0.1",
            "1",
            "IF-MIB::linkDown",
            "1.3.6.1.6.3.1.1.5.3",
            4242,
            7
        ])
        .as_array()
        .unwrap()[..]
    );
    assert_eq!(
        up.as_array().unwrap()[..6],
        serde_json::json!([
            "127.0.0.1",
            "2c",
            "IF-MIB::linkUp",
            "1.3.6.1.6.3.1.1.5.4",
            up[4],
            4
        ])
        .as_array()
        .unwrap()[..]
    );
    assert_eq!(
        metric(&s, "tocsin_snmp_trap_refused_total", "traps").await,
        1
    );
    assert_eq!(metric(&s, "tocsin_snmp_informs_total", "traps").await, 1);

    // 10,000 random datagrams, paced so the socket buffer never overflows
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = metric(&s, "tocsin_snmp_trap_datagrams_total", "traps").await;
    let mut sent = 0u64;
    for _ in 0..50 {
        for _ in 0..200 {
            let len = rng.gen_range(0..300);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len > 2 && rng.gen_bool(0.5) {
                bytes[0] = 0x30; // a SEQUENCE, to get past the first check
            }
            sock.send_to(&bytes, &to).unwrap();
            sent += 1;
        }
        eventually(10, "the receiver catching up", || async {
            (metric(&s, "tocsin_snmp_trap_datagrams_total", "traps").await >= before + sent)
                .then_some(())
        })
        .await;
    }
    let bad = metric(&s, "tocsin_snmp_trap_malformed_total", "traps").await
        + metric(&s, "tocsin_snmp_trap_refused_total", "traps").await;
    assert_eq!(
        bad,
        10_000 + 1,
        "every random datagram is counted as malformed or refused"
    );
    assert!(send_trap(&linkdown).status.success());
    eventually(10, "a trap after the garbage", || async {
        Some(s.rows("SELECT count(*) FROM traps").await).filter(|r| r[0][0] == 4)
    })
    .await;
}

/// The demo: a device's interface goes down, it sends `IF-MIB::linkDown`, a rule sees it and an
/// email is on its way. Prints how long it took from the trap to the message on the SMTP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_trap_to_email() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Snmpd::start(dir.path()).await;
    let smtp = Smtp::start(dir.path()).await;
    let s = Server::start(&dir.path().join("data"), &[]).await;
    let trap_port = free_udp_port();
    let sql = format!(
        "CREATE SOURCE ifaces FROM SNMP WITH (targets = 'sw1={}', table = 'IF-MIB::ifTable', interval = '5s');
         CREATE SOURCE traps FROM SNMP TRAP WITH (listen = '127.0.0.1:{trap_port}', community = 'public');
         CREATE SINK oncall TO EMAIL WITH (server = 'smtp://127.0.0.1:{}', from = 'tocsin@example.com', to = 'noc@example.com');
         CREATE RULE link_down AS
           SELECT agent, json_get_int(varbinds, 'IF-MIB::ifIndex') AS if_index
           FROM traps
           WHERE trap = 'IF-MIB::linkDown' AND ts > now() - INTERVAL '10 minutes'
           WITH (severity = 'critical', sink = 'oncall', labels = 'agent, if_index', summary = 'link down on {{{{agent}}}} ifIndex {{{{if_index}}}}')",
        agent.address(),
        smtp.port
    );
    s.rows(&sql).await;
    eventually(10, "the trap port", || async {
        (metric(&s, "tocsin_snmp_trap_listening", "traps").await == 1).then_some(())
    })
    .await;
    // the interface the trap names exists on the polled device
    let if_index = eventually(20, "ifTable polled", || async {
        s.rows("SELECT max(if_index) FROM ifaces").await[0][0].as_i64()
    })
    .await;
    let to = format!("127.0.0.1:{trap_port}");
    let index = if_index.to_string();
    let started = Instant::now();
    let out = send_trap(&format!(
        "snmptrap -v 2c -c public {to} '' .1.3.6.1.6.3.1.1.5.3 .1.3.6.1.2.1.2.2.1.1.{index} i {index} \
         .1.3.6.1.2.1.2.2.1.8.{index} i 2"
    ));
    assert!(out.status.success());
    let mail = loop {
        if let Some(m) = mails(&smtp.maildir).pop() {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no email:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let took = started.elapsed();
    println!(
        "link down trap to email on the SMTP server: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_eq!(
        mail.0,
        format!("[FIRING] link_down: link down on 127.0.0.1 ifIndex {if_index}")
    );
    assert!(mail.1.contains("noc@example.com"));
}

/// `kill -9` and a restart: an SNMP source's rows and its status relation's rows are replayed
/// from the write-ahead log, polling resumes, and a dropped SNMP source (with its status
/// relation) stays dropped, also when re-created under the same name with other options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snmp_sources_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Nothing answers on this port: every poll writes a status row, and no data rows.
    let nobody = format!("127.0.0.1:{}", free_udp_port());
    let s = Server::start(&data, &[]).await;
    s.rows(&format!(
        "CREATE SOURCE gone FROM SNMP WITH (targets = 'x={nobody}', oids = 'sysName.0', interval = '300ms', timeout = '100ms', retries = '0', retain = '1h');
         CREATE SOURCE dev FROM SNMP WITH (targets = 'x={nobody}', oids = 'sysName.0', interval = '300ms', timeout = '100ms', retries = '0', retain = '1h')"
    ))
    .await;
    eventually(20, "a status row of gone", || async {
        s.rows("SELECT count(*) FROM gone_status")
            .await
            .pop()
            .filter(|r| r[0].as_i64() > Some(0))
    })
    .await;
    // In one request: the old source's poller must not write into the new one.
    s.rows(&format!(
        "DROP SOURCE gone; CREATE SOURCE gone FROM SNMP WITH (targets = 'y={nobody}', table = 'ifTable', interval = '1h')"
    ))
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let stray = s
        .rows("SELECT count(*) FROM gone_status WHERE device = 'x'")
        .await;
    assert_eq!(
        stray[0][0], 0,
        "the dropped source's poller wrote into the new one"
    );
    let before = eventually(20, "status rows", || async {
        s.rows("SELECT count(*) FROM dev_status WHERE NOT up")
            .await
            .pop()
            .and_then(|r| r[0].as_i64())
            .filter(|n| *n >= 3)
    })
    .await;
    let killed = chrono::Utc::now().timestamp_millis();
    let data = s.kill();
    let s = Server::start(&data, &[]).await;
    // Only replayed rows can be older than the kill.
    let after = s
        .rows(&format!(
            "SELECT count(*) FROM dev_status WHERE ts <= to_timestamp_millis({killed})"
        ))
        .await[0][0]
        .as_i64()
        .unwrap();
    assert!(
        after >= before,
        "{after} status rows replayed, {before} stored before"
    );
    let restarted = chrono::Utc::now().timestamp_millis();
    eventually(20, "polling again", || async {
        s.rows(&format!(
            "SELECT count(*) FROM dev_status WHERE ts > to_timestamp_millis({restarted})"
        ))
        .await
        .pop()
        .filter(|r| r[0].as_i64() > Some(0))
    })
    .await;
    // The re-created `gone` is the ifTable one, and its status has none of the old rows.
    let cols = column_names(&s.rows("SHOW COLUMNS FROM gone").await);
    assert_eq!(cols[2], "if_index");
    let old = s
        .rows("SELECT count(*) FROM gone_status WHERE device = 'x'")
        .await;
    assert_eq!(
        old[0][0], 0,
        "rows of the dropped source came back: {old:?}"
    );
}
