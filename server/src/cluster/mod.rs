//! Replicas (docs/ha.md): two or three tocsin servers that hold the same rows. Each batch a
//! replica accepts from a client is written to its log with the time it accepted it, then sent
//! to every peer over a WebSocket on the main port (`GET /v1/cluster`, authenticated with the
//! cluster secret), which writes it to its own log and engine. Rows of collectors every replica
//! runs (`FROM HOST`, `FROM SNMP`) are not sent. A peer that was away is sent what it missed,
//! read back from the log, when it returns; forwarded records are de-duplicated by their origin
//! and sequence number, so a resent record never doubles a row.
//!
//! | module | owns |
//! |---|---|
//! | [`proto`] | the frames on a link |
//! | [`link`] | the links: dialing each peer and sending it this replica's records, taking a peer's |
//! | [`notices`] | the notification log the replicas share, so that each notification is delivered once |
//!
//! The catalog is ordered by a leader: the replica of lowest id among those a majority of the
//! replicas can reach (see [`Cluster::leader`]). A catalog change asked of another replica is
//! sent to the leader, which applies and records it, then has a majority apply it before it
//! answers; every replica relays its catalog log to the others, so one that was away is sent the
//! changes it missed before any row that needs them. Without a majority, catalog changes are
//! refused with the reason.
//!
//! The other replicas are shown in `tocsin_replicas` and under `cluster` in `/v1/catalog`.

pub mod link;
pub mod notices;
pub mod proto;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tocsin_sql::{ErrorKind, Route, SqlError, StatementResult};
use tokio::sync::{mpsc, oneshot};

use crate::catalog_log::CatalogLog;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use tocsin_engine::{Datum, Row, TableWrite};

use crate::state::AppRef;

/// The system table of replicas.
pub const REPLICAS: &str = "tocsin_replicas";

/// When a client's batch is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Ack {
    /// Once it is durable on the replica that took it.
    #[default]
    Local,
    /// Once it is durable on a majority of the replicas.
    Quorum,
}

impl Ack {
    pub fn parse(text: &str) -> Result<Ack, String> {
        match text {
            "local" => Ok(Ack::Local),
            "quorum" => Ok(Ack::Quorum),
            other => Err(format!("--ack {other}: use local or quorum")),
        }
    }
}

/// Another replica as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    pub id: String,
    /// `ws://host:port` or `wss://host:port`.
    pub url: String,
}

/// How this server takes part in a set of replicas.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This replica's id.
    pub id: String,
    pub peers: Vec<PeerConfig>,
    /// What peers present to each other.
    pub secret: String,
    /// How long a peer may be silent before its link is given up and dialed again.
    pub peer_timeout: Duration,
    pub ack: Ack,
    /// A CA certificate (PEM) to trust for `wss://` peers instead of the public roots.
    pub ca_cert: Option<PathBuf>,
}

/// Whether `id` can name a replica: 1 to 64 letters, digits, `-` and `_`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterConfig {
    /// Checks the flags of `tocsin serve` that make it a replica.
    pub fn new(
        id: &str,
        peers: &[String],
        secret: Option<&str>,
        peer_timeout: Duration,
        ack: Ack,
        ca_cert: Option<PathBuf>,
    ) -> Result<ClusterConfig, String> {
        if !valid_id(id) {
            return Err(format!(
                "--replica-id '{id}': use 1 to 64 letters, digits, '-' and '_'"
            ));
        }
        let mut list: Vec<PeerConfig> = Vec::new();
        for p in peers.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (pid, url) = p
                .split_once('=')
                .ok_or_else(|| format!("--peers '{p}': write ID=ws://HOST:PORT"))?;
            let (pid, url) = (pid.trim(), url.trim().trim_end_matches('/'));
            if !valid_id(pid) {
                return Err(format!(
                    "--peers: replica id '{pid}': use 1 to 64 letters, digits, '-' and '_'"
                ));
            }
            if pid == id {
                return Err(format!(
                    "--peers names this replica's own id '{id}': list the other replicas"
                ));
            }
            if list.iter().any(|q| q.id == pid) {
                return Err(format!("--peers names replica '{pid}' twice"));
            }
            if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() < 8 {
                return Err(format!(
                    "--peers: replica '{pid}' at '{url}': the address is ws://HOST:PORT or wss://HOST:PORT"
                ));
            }
            list.push(PeerConfig {
                id: pid.to_string(),
                url: url.to_string(),
            });
        }
        if list.is_empty() || list.len() > 2 {
            return Err(format!(
                "--peers lists {} replica(s): a set of replicas is 2 or 3 servers, so list 1 or 2 others",
                list.len()
            ));
        }
        let secret = secret.map(str::trim).unwrap_or_default();
        if secret.len() < 16 {
            return Err(
                "replicas need --cluster-secret (or TOCSIN_CLUSTER_SECRET) of at least 16 characters, the same on every replica".into(),
            );
        }
        Ok(ClusterConfig {
            id: id.to_string(),
            peers: list,
            secret: secret.to_string(),
            peer_timeout: peer_timeout.max(Duration::from_millis(100)),
            ack,
            ca_cert,
        })
    }
}

/// A replica's settings as `--cluster-config FILE` gives them: `key = value` per line, `#`
/// comments; keys as the flags are named (`peers` may come on several lines).
#[derive(Debug, Default, PartialEq)]
pub struct ClusterFile {
    pub replica_id: Option<String>,
    pub peers: Vec<String>,
    pub cluster_secret: Option<String>,
    pub peer_timeout: Option<String>,
    pub ack: Option<String>,
    pub cluster_ca_cert: Option<PathBuf>,
}

impl ClusterFile {
    pub fn parse(text: &str) -> Result<ClusterFile, String> {
        let mut f = ClusterFile::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: write key = value", n + 1))?;
            let value = value.trim().trim_matches('"').to_string();
            match key.trim() {
                "replica-id" => f.replica_id = Some(value),
                "peers" => f.peers.extend(value.split(',').map(|p| p.trim().to_string())),
                "cluster-secret" => f.cluster_secret = Some(value),
                "peer-timeout" => f.peer_timeout = Some(value),
                "ack" => f.ack = Some(value),
                "cluster-ca-cert" => f.cluster_ca_cert = Some(PathBuf::from(value)),
                other => {
                    return Err(format!(
                        "line {}: unknown key '{other}' (replica-id, peers, cluster-secret, peer-timeout, ack, cluster-ca-cert)",
                        n + 1
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// The state of the link this replica dials to a peer.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkState {
    Connecting,
    Up,
    /// Down, with why.
    Down(String),
}

/// What this replica knows of a peer.
pub struct Peer {
    pub config: PeerConfig,
    link: Mutex<LinkState>,
    /// The newest of this replica's records the peer has acknowledged.
    acked: std::sync::atomic::AtomicU64,
    /// When a frame last came from the peer, either way, epoch ms (0: never).
    contact: AtomicI64,
    /// The newest catalog change the peer has applied, as it said.
    catalog_acked: AtomicU64,
    /// The replica the peer takes for the leader, as it last said ("": none).
    sees: Mutex<String>,
    /// When this replica began to see the peer unreachable (by its own running clock).
    down_since: Mutex<Option<std::time::Instant>>,
    /// Whether the peer sent its notification log since this replica started (or resumed).
    notices_synced: std::sync::atomic::AtomicBool,
    /// Catalog changes (request id, SQL) to send the peer as the leader; taken by the link
    /// that is up.
    statements: mpsc::Sender<(u64, String)>,
    pub(crate) outbox: tokio::sync::Mutex<mpsc::Receiver<(u64, String)>>,
}

impl Peer {
    pub fn state(&self) -> LinkState {
        self.link.lock().expect("link").clone()
    }

    fn set(&self, s: LinkState) {
        *self.link.lock().expect("link") = s;
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    fn ack(&self, seq: u64) {
        self.acked.fetch_max(seq, Ordering::AcqRel);
    }

    fn heard(&self) {
        self.contact.fetch_max(now_ms(), Ordering::Relaxed);
    }

    pub fn last_contact(&self) -> Option<i64> {
        Some(self.contact.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    fn catalog_ack(&self, seq: u64) {
        self.catalog_acked.fetch_max(seq, Ordering::AcqRel);
    }

    fn saw_leader(&self, leader: String) {
        *self.sees.lock().expect("leader") = leader;
    }
}

/// This replica and what it knows of the others.
pub struct Cluster {
    pub config: ClusterConfig,
    pub peers: Vec<Arc<Peer>>,
    /// Logs links refused for their secret at most every 10 s ...
    pub(crate) unauthenticated: crate::limits::Throttled,
    /// ... links refused for what they said ...
    pub(crate) refusals: crate::limits::Throttled,
    /// ... and records refused.
    pub(crate) refused_records: crate::limits::Throttled,
    /// The catalog log every replica holds the same.
    pub catalog: Arc<CatalogLog>,
    /// Catalog changes sent to the leader, waiting for its answer, by request id.
    requests: Mutex<HashMap<u64, oneshot::Sender<String>>>,
    next_request: AtomicU64,
    /// Told when a peer applies a catalog change.
    catalog_acks: tokio::sync::Notify,
    /// Held while a relayed catalog change is applied: changes come over every link.
    pub(crate) applying: tokio::sync::Mutex<()>,
    /// The notification log, and this replica's entries for the links to send.
    pub notices: notices::Notices,
    pub(crate) notice_tx: tokio::sync::broadcast::Sender<notices::Notice>,
    /// Started with an empty data dir, and not yet sent its peers' catalog and rows: it does
    /// not serve clients (see [`Cluster::joining`]).
    joining: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Why this replica does not serve clients yet (`None`: it does). A replica started with an
    /// empty data dir serves once a peer has sent it the catalog and every row it holds (the
    /// first mark it sends comes after them, see `timeline`), and every other peer whose link
    /// is up has too.
    pub fn joining(&self, timeline: &crate::timeline::Timeline) -> Option<String> {
        if !self.joining.load(Ordering::Acquire) {
            return None;
        }
        let sent: Vec<bool> = self
            .peers
            .iter()
            .map(|p| timeline.has_marked(&p.config.id))
            .collect();
        let settled = sent.iter().any(|s| *s)
            && self
                .peers
                .iter()
                .zip(&sent)
                .all(|(p, s)| *s || p.state() != LinkState::Up);
        if settled {
            if !self.joining.swap(false, Ordering::AcqRel) {
                return None;
            }
            tracing::info!(
                "replica {}: its peers sent the catalog (through change #{}) and their rows: serving",
                self.config.id,
                self.catalog.last()
            );
            return None;
        }
        let peers: Vec<String> = self
            .peers
            .iter()
            .zip(&sent)
            .map(|(p, s)| {
                let state = match (s, p.state()) {
                    (true, _) => "sent".to_string(),
                    (false, LinkState::Up) => "link up, sending".to_string(),
                    (false, LinkState::Connecting) => "connecting".to_string(),
                    (false, LinkState::Down(why)) => why,
                };
                format!("{}: {state}", p.config.id)
            })
            .collect();
        Some(format!(
            "replica {} started with an empty data dir and is being sent the catalog and rows of its peers before it serves ({}); see docs/ha.md",
            self.config.id,
            peers.join("; ")
        ))
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Cluster {
    /// `fresh`: the replica started with an empty data dir.
    pub fn new(config: ClusterConfig, catalog: Arc<CatalogLog>, fresh: bool) -> Cluster {
        let peers = config
            .peers
            .iter()
            .map(|p| {
                let (statements, outbox) = mpsc::channel(64);
                Arc::new(Peer {
                    config: p.clone(),
                    link: Mutex::new(LinkState::Connecting),
                    acked: Default::default(),
                    contact: Default::default(),
                    catalog_acked: Default::default(),
                    sees: Mutex::new(String::new()),
                    down_since: Mutex::new(None),
                    notices_synced: Default::default(),
                    statements,
                    outbox: tokio::sync::Mutex::new(outbox),
                })
            })
            .collect();
        Cluster {
            config,
            peers,
            catalog,
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            catalog_acks: tokio::sync::Notify::new(),
            applying: tokio::sync::Mutex::new(()),
            notices: Default::default(),
            notice_tx: tokio::sync::broadcast::channel(1024).0,
            joining: std::sync::atomic::AtomicBool::new(fresh),
            unauthenticated: crate::limits::Throttled::new(Duration::from_secs(10)),
            refusals: crate::limits::Throttled::new(Duration::from_secs(10)),
            refused_records: crate::limits::Throttled::new(Duration::from_secs(10)),
        }
    }

    pub fn peer(&self, id: &str) -> Option<&Arc<Peer>> {
        self.peers.iter().find(|p| p.config.id == id)
    }

    /// Whether this replica hears `peer` and can send to it: its link is up and it said
    /// something within the peer timeout.
    fn reachable(&self, peer: &Peer) -> bool {
        peer.state() == LinkState::Up
            && peer
                .last_contact()
                .is_some_and(|t| now_ms() - t <= self.config.peer_timeout.as_millis() as i64)
    }

    /// The replica that orders the catalog, as this one sees it: the lowest id among this one
    /// and the peers it reaches, when those are a majority of the replicas. This replica takes
    /// itself for the leader only when no peer it reaches takes another for it, so that two
    /// replicas that cannot reach each other never both lead.
    pub fn leader(&self) -> Option<String> {
        let reached: Vec<&Arc<Peer>> = self.peers.iter().filter(|p| self.reachable(p)).collect();
        if reached.len() + 1 < self.majority() {
            return None;
        }
        let lowest = reached
            .iter()
            .map(|p| p.config.id.as_str())
            .chain(std::iter::once(self.config.id.as_str()))
            .min()
            .expect("this replica");
        if lowest != self.config.id {
            return Some(lowest.to_string());
        }
        let disputed = reached.iter().any(|p| {
            let sees = p.sees.lock().expect("leader");
            !sees.is_empty() && *sees != self.config.id
        });
        (!disputed).then(|| self.config.id.clone())
    }

    /// Where a catalog change asked of this replica is made (see `sql::Durability::route`):
    /// here when this replica leads; at the leader, which answers once the change has been
    /// applied here too; refused without a leader.
    pub async fn route(&self, sql: &str) -> Route {
        let leader = match self.leader() {
            Some(l) if l == self.config.id => return Route::Here,
            Some(l) => l,
            None => {
                return Route::Refused(SqlError {
                    kind: ErrorKind::Unavailable,
                    ..SqlError::plan(format!(
                        "catalog changes need a majority of the replicas, and replica {} reaches {} of {}: the change was not made (see docs/ha.md, partitions)",
                        self.config.id,
                        1 + self.peers.iter().filter(|p| self.reachable(p)).count(),
                        self.peers.len() + 1
                    ))
                })
            }
        };
        let Some(peer) = self.peer(&leader) else {
            return Route::Refused(SqlError::plan(format!("no replica {leader}")));
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests.lock().expect("requests").insert(id, tx);
        let wait = self.config.peer_timeout * 2;
        let unavailable = |why: String| {
            Route::Refused(SqlError {
                kind: ErrorKind::Unavailable,
                ..SqlError::plan(format!(
                    "the catalog change was sent to the leader, replica {leader}, and {why}: it may or may not have been made; see SHOW and tocsin_replicas"
                ))
            })
        };
        let answer = async {
            peer.statements
                .send((id, sql.to_string()))
                .await
                .map_err(|_| "the link is gone".to_string())?;
            rx.await.map_err(|_| "the link failed".to_string())
        };
        let answer = match tokio::time::timeout(wait, answer).await {
            Ok(Ok(a)) => a,
            Ok(Err(why)) => {
                self.requests.lock().expect("requests").remove(&id);
                return unavailable(why);
            }
            Err(_) => {
                self.requests.lock().expect("requests").remove(&id);
                return unavailable(format!("no answer came within {wait:?}"));
            }
        };
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        if let Some(e) = v.get("error") {
            let kind = match e["kind"].as_str() {
                Some("parse") => ErrorKind::Parse,
                Some("unsupported") => ErrorKind::Unsupported,
                Some("execution") => ErrorKind::Execution,
                Some("unavailable") => ErrorKind::Unavailable,
                Some("internal") => ErrorKind::Internal,
                _ => ErrorKind::Plan,
            };
            let message = e["message"].as_str().unwrap_or("the leader refused it");
            return Route::Refused(SqlError {
                kind,
                ..SqlError::plan(message)
            });
        }
        let (Some(statement), Some(name), Some(seq)) = (
            v["statement"].as_str(),
            v["name"].as_str(),
            v["seq"].as_u64(),
        ) else {
            return unavailable(format!("answered {answer}"));
        };
        // The client sees its change here once it returns.
        let mut applied = self.catalog.watch();
        let here = applied.wait_for(|last| *last >= seq);
        if tokio::time::timeout(wait, here).await.is_err() {
            return unavailable(format!(
                "made it as change #{seq}, which has not reached this replica within {wait:?}"
            ));
        }
        Route::Done(StatementResult::Ddl {
            statement: statement.to_string(),
            name: name.to_string(),
        })
    }

    /// The leader's answer to a catalog change this replica sent it.
    pub(crate) fn answered(&self, id: u64, outcome: String) {
        if let Some(tx) = self.requests.lock().expect("requests").remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    /// Waits until a majority of the replicas (this one among them) has applied catalog
    /// change `seq`, at most the peer timeout.
    pub async fn confirmed(&self, seq: u64) -> Result<(), String> {
        let majority = self.majority();
        let enough = || {
            1 + self
                .peers
                .iter()
                .filter(|p| p.catalog_acked.load(Ordering::Acquire) >= seq)
                .count()
                >= majority
        };
        let wait = async {
            loop {
                let notified = self.catalog_acks.notified();
                if enough() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.config.peer_timeout, wait)
            .await
            .map_err(|_| {
                format!(
                    "change #{seq} is recorded on this replica but a majority of the replicas did not apply it within {:?}",
                    self.config.peer_timeout
                )
            })
    }

    /// The newest of this replica's records that a majority of the replicas (this one among
    /// them) holds.
    pub fn majority_has(&self) -> u64 {
        let mut acked: Vec<u64> = self.peers.iter().map(|p| p.acked()).collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        // This replica holds all of its records: a majority needs others besides it.
        acked.get(self.majority() - 2).copied().unwrap_or(0)
    }

    /// How many replicas are a majority of them.
    fn majority(&self) -> usize {
        let replicas = self.peers.len() + 1;
        replicas / 2 + 1
    }

    /// Whether this replica has seen `peer` unreachable for the peer timeout, by its own running
    /// clock (a replica that was stopped has not seen anything meanwhile).
    fn away(&self, peer: &Peer) -> bool {
        !self.reachable(peer)
            && peer
                .down_since
                .lock()
                .expect("down since")
                .is_some_and(|d| d.elapsed() >= self.config.peer_timeout)
    }

    /// Notes which peers are reachable; after a gap longer than the peer timeout (this process
    /// was stopped, or starved), what it knew of the peers is stale and is learnt again. Delivery
    /// is told when a peer comes or goes: its turn may have come.
    fn watch_peers(&self, gap: bool, away: &mut Vec<bool>) {
        let now = std::time::Instant::now();
        for p in &self.peers {
            let mut down = p.down_since.lock().expect("down since");
            if gap {
                p.notices_synced.store(false, Ordering::Release);
                *down = None;
            }
            if self.reachable(p) {
                *down = None;
            } else if down.is_none() {
                *down = Some(now);
            }
        }
        let now_away: Vec<bool> = self.peers.iter().map(|p| self.away(p)).collect();
        if now_away != *away {
            *away = now_away;
            self.notices.changed.notify_waiters();
        }
    }

    pub(crate) fn peer_notices(&self, peer: &Peer, json: &str) -> Result<(), String> {
        let list: Vec<notices::Notice> = serde_json::from_str(json)
            .map_err(|e| format!("it sent notification log entries that cannot be read: {e}"))?;
        for n in list {
            if n.replica != peer.config.id {
                return Err(format!(
                    "it sent notification log entries of replica '{}'",
                    n.replica
                ));
            }
            self.notices.peer(n);
        }
        peer.notices_synced.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn peer_applied(&self, peer: &Peer, seq: u64) {
        peer.catalog_ack(seq);
        self.catalog_acks.notify_waiters();
    }

    /// One row per replica, this one first, as `tocsin_replicas` holds them.
    pub fn rows(&self, app: &AppRef) -> Vec<Row> {
        let now = now_ms();
        let leader = self.leader();
        let leads = |id: &str| Datum::Bool(leader.as_deref() == Some(id));
        let mut rows = vec![Box::from([
            Datum::text(&self.config.id),
            Datum::Null,
            Datum::text("self"),
            leads(&self.config.id),
            Datum::Int(0),
            Datum::Int(0),
            Datum::Null,
            Datum::Null,
        ]) as Row];
        for p in &self.peers {
            let (state, detail, lag) = self.status(app, p, now);
            rows.push(Box::from([
                Datum::text(&p.config.id),
                Datum::text(&p.config.url),
                Datum::text(state),
                leads(&p.config.id),
                Datum::Int(lag.rows as i64),
                Datum::Int(lag.ms),
                p.last_contact().map_or(Datum::Null, Datum::Int),
                detail.map_or(Datum::Null, |d| Datum::text(&d)),
            ]));
        }
        rows
    }

    /// A peer's link state, why it is down, and its lag at `now`.
    fn status(
        &self,
        app: &AppRef,
        p: &Peer,
        now: i64,
    ) -> (&'static str, Option<String>, crate::replicate::Lag) {
        let lag = app
            .ingest
            .replication()
            .map(|r| r.lag(p.acked(), now))
            .unwrap_or_default();
        match p.state() {
            LinkState::Connecting => ("connecting", None, lag),
            LinkState::Up => ("up", None, lag),
            LinkState::Down(why) => ("down", Some(why), lag),
        }
    }

    /// The cluster as `/v1/catalog` shows it.
    pub fn describe(&self, app: &AppRef) -> serde_json::Value {
        let now = now_ms();
        serde_json::json!({
            "replica_id": self.config.id,
            "leader": self.leader(),
            "ack": match self.config.ack { Ack::Local => "local", Ack::Quorum => "quorum" },
            "peer_timeout_ms": self.config.peer_timeout.as_millis() as u64,
            "peers": self.peers.iter().map(|p| {
                let (state, detail, lag) = self.status(app, p, now);
                serde_json::json!({
                    "id": p.config.id,
                    "address": p.config.url,
                    "state": state,
                    "detail": detail,
                    "lag_rows": lag.rows,
                    "lag_ms": lag.ms,
                    "last_contact": p.last_contact().map(tocsin_engine::fmt_ms),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

/// How many peer timeouts a replica waits for a live replica ahead of it that holds a
/// notification (it is delivering it, perhaps behind many others) before it sends the
/// notification itself.
const HELD: i64 = 60;

#[async_trait::async_trait]
impl crate::alerts::deliver::Gate for Cluster {
    fn decide(
        &self,
        sink: &str,
        q: &crate::alerts::store::Queued,
        now: i64,
    ) -> crate::alerts::deliver::Decision {
        // Its intent went to the peers when it was queued (`queued`, before any decision).
        let mine = notices::Notice::of(&self.config.id, sink, &q.notification, false);
        // Until every peer has sent its log, or been away for the peer timeout, this replica
        // does not know what they delivered.
        if !self
            .peers
            .iter()
            .all(|p| p.notices_synced.load(Ordering::Acquire) || self.away(p))
        {
            return crate::alerts::deliver::Decision::Wait(now + 100);
        }
        let mut ahead: Vec<(String, bool)> = self
            .peers
            .iter()
            .filter(|p| p.config.id < self.config.id)
            .map(|p| (p.config.id.clone(), !self.away(p)))
            .collect();
        ahead.sort();
        let wait = self.config.peer_timeout.as_millis() as i64;
        let live = ahead.iter().filter(|(_, live)| *live).count() as i64;
        let turn = notices::Turn {
            ahead,
            due: q.queued_at + live * wait,
            held_until: q.queued_at + HELD * wait,
        };
        self.notices.decide(&mine, q.seq, now, &turn)
    }

    fn queued(&self, sink: &str, queued: &[crate::alerts::store::Queued]) {
        for q in queued {
            let n = notices::Notice::of(&self.config.id, sink, &q.notification, false);
            if let Some(n) = self.notices.own(n) {
                let _ = self.notice_tx.send(n);
            }
        }
    }

    fn delivered(&self, sink: &str, n: &tocsin_connectors::sink::Notification) {
        if let Some(e) = self
            .notices
            .own(notices::Notice::of(&self.config.id, sink, n, true))
        {
            let _ = self.notice_tx.send(e);
        }
    }

    async fn changed(&self) {
        self.notices.changed.notified().await
    }
}

/// `tocsin_replicas`'s columns; `id` is its key.
pub const REPLICAS_COLUMNS: &str = "id TEXT, address TEXT, state TEXT, leader BOOLEAN, \
lag_rows BIGINT, lag_ms BIGINT, last_contact TIMESTAMP, detail TEXT";

/// Creates `tocsin_replicas` (on replicas only).
pub async fn create_relation(tocsin: &tocsin_sql::Tocsin) -> tocsin_sql::Result<()> {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let int = |n: &str| Field::new(n, DataType::Int64, true);
    let schema = Arc::new(Schema::new(vec![
        text("id"),
        text("address"),
        text("state"),
        Field::new("leader", DataType::Boolean, true),
        int("lag_rows"),
        int("lag_ms"),
        Field::new("last_contact", tocsin_sql::planner::ts_type(), true),
        text("detail"),
    ]));
    tocsin
        .create_system_table(
            REPLICAS,
            schema,
            &["id"],
            &format!(
                "CREATE TABLE {REPLICAS} ({REPLICAS_COLUMNS}) -- maintained by tocsin: this \
                 replica and its peers (--replica-id, --peers), refreshed every second"
            ),
        )
        .await
}

/// Starts the links to every peer and the refresh of `tocsin_replicas`.
pub fn start(app: &AppRef, cluster: &Arc<Cluster>) -> Result<(), String> {
    let tls = crate::client::tls_config(cluster.config.ca_cert.as_deref())?;
    let Some(replication) = app.ingest.replication().cloned() else {
        return Err("replicas need the ingest path's replication".into());
    };
    for peer in &cluster.peers {
        app.tasks.background(tokio::spawn(link::dial(
            cluster.clone(),
            peer.clone(),
            replication.clone(),
            app.data_dir.join("wal"),
            tls.clone(),
        )));
    }
    let watcher = cluster.clone();
    app.tasks.background(tokio::spawn(async move {
        let every = Duration::from_millis(100);
        let mut last = std::time::Instant::now();
        let mut away = Vec::new();
        loop {
            tokio::time::sleep(every).await;
            let gap = last.elapsed() > watcher.config.peer_timeout;
            if gap {
                tracing::warn!(
                    "replica {}: this process did not run for {:?}: what it knew of its peers is learnt again before it delivers notifications",
                    watcher.config.id,
                    last.elapsed()
                );
            }
            watcher.watch_peers(gap, &mut away);
            last = std::time::Instant::now();
        }
    }));
    let (app2, cluster2) = (app.clone(), cluster.clone());
    app.tasks.background(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut last: Vec<Row> = Vec::new();
        loop {
            every.tick().await;
            let rows = cluster2.rows(&app2);
            if rows != last {
                let write = TableWrite {
                    put: rows.clone(),
                    delete: Vec::new(),
                };
                if let Err(e) = app2.tocsin.engine().write_table(REPLICAS, write) {
                    tracing::error!("{REPLICAS}: {e}");
                }
                last = rows;
            }
            if let Some(min) = cluster2.peers.iter().map(|p| p.acked()).min() {
                replication.forget_through(min);
            }
        }
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, peers: &[&str], secret: Option<&str>) -> Result<ClusterConfig, String> {
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        ClusterConfig::new(id, &peers, secret, Duration::from_secs(5), Ack::Local, None)
    }

    #[test]
    fn replica_flags_are_checked_with_clear_errors() {
        let s = Some("0123456789abcdef");
        let c = config("a", &["b=ws://10.0.0.2:7654/", " c = wss://h:1"], s).unwrap();
        assert_eq!(
            c.peers,
            [
                PeerConfig {
                    id: "b".into(),
                    url: "ws://10.0.0.2:7654".into()
                },
                PeerConfig {
                    id: "c".into(),
                    url: "wss://h:1".into()
                }
            ]
        );
        for (id, peers, secret, why) in [
            ("a b", &["b=ws://h:1"][..], s, "--replica-id"),
            ("a", &["ws://h:1"], s, "ID=ws://"),
            ("a", &["a=ws://h:1"], s, "own id"),
            ("a", &["b=ws://h:1", "b=ws://h:2"], s, "twice"),
            ("a", &["b=http://h:1"], s, "ws://HOST:PORT"),
            ("a", &[], s, "1 or 2 others"),
            (
                "a",
                &["b=ws://h:1", "c=ws://h:2", "d=ws://h:3"],
                s,
                "1 or 2",
            ),
            ("a", &["b=ws://h:1"], None, "--cluster-secret"),
            ("a", &["b=ws://h:1"], Some("short"), "at least 16"),
        ] {
            let e = config(id, peers, secret).unwrap_err();
            assert!(e.contains(why), "{id} {peers:?}: {e}");
        }
        assert_eq!(Ack::parse("quorum"), Ok(Ack::Quorum));
        let f = ClusterFile::parse(
            "# replica a\nreplica-id = a\npeers = b=wss://h-b:7654\npeers = c=wss://h-c:7654\n\ncluster-secret = \"s3cret with spaces\"\nack = quorum\n",
        )
        .unwrap();
        assert_eq!(f.replica_id.as_deref(), Some("a"));
        assert_eq!(f.peers, ["b=wss://h-b:7654", "c=wss://h-c:7654"]);
        assert_eq!(f.cluster_secret.as_deref(), Some("s3cret with spaces"));
        assert_eq!(f.ack.as_deref(), Some("quorum"));
        assert!(ClusterFile::parse("replica_id = a")
            .unwrap_err()
            .contains("line 1: unknown key 'replica_id'"));
        assert!(ClusterFile::parse("\npeers b")
            .unwrap_err()
            .contains("line 2: write key = value"));
        assert!(Ack::parse("all").unwrap_err().contains("local or quorum"));
    }
}
