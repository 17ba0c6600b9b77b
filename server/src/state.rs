//! The server's state: how it was configured ([`Config`]) and what every connection handler and
//! task shares ([`App`], behind an [`AppRef`]). Start-up (`start`) builds it; everything else
//! reads it, so this module depends on the parts it holds and nothing depends back on start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tocsin_sql::Tocsin;

use crate::alerts::AlertManager;
use crate::auth::{BrowserPolicy, Credentials};
use crate::ingest::Ingest;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// How `tocsin serve` runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Timely worker threads (default: one per core).
    pub workers: usize,
    /// Batches the ingest queue holds before producers wait.
    pub ingest_queue: usize,
    /// How long an HTTP ingest request waits for room in a full queue before the 503.
    pub ingest_wait: Duration,
    /// Create the embedded default (host source, starter views and rules) on a new data dir.
    pub defaults: bool,
    /// A second address that serves only the PostgreSQL protocol.
    pub pg_listen: Option<SocketAddr>,
    /// Tokens, pg users and whether reads are open (none configured: everyone is admin).
    pub credentials: Credentials,
    /// Origins allowed besides the server's own (`--allow-origin`).
    pub allow_origin: Vec<String>,
    /// Host names allowed on a loopback address besides loopback ones (`--allow-host`).
    pub allow_host: Vec<String>,
    /// PEM certificate chain and private key: TLS for HTTP, WebSocket and the PostgreSQL
    /// protocol on the one port (and on `--pg-listen`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Request sizes, connections and header time.
    pub limits: Limits,
    /// The memory budget, bytes: ingest is refused beyond it (see `memory`).
    pub memory_limit: u64,
    /// How often changes of a live alert's values alone are written to `tocsin_alerts` and the
    /// alert store (transitions are written at once).
    pub alert_value_interval: Duration,
    /// How long accepted rows wait before they are written to history files.
    pub history_flush: Duration,
    /// Where time comes from: the system clock, or a manual one for tests that embed the server.
    pub clock: tocsin_engine::Clock,
    /// Set when this server is one of several replicas (`--replica-id`, `--peers`).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7654".parse().expect("address"),
            data_dir: PathBuf::from("tocsin-data"),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ingest_queue: 256,
            ingest_wait: Duration::from_secs(5),
            defaults: true,
            pg_listen: None,
            credentials: Credentials::default(),
            allow_origin: Vec::new(),
            allow_host: Vec::new(),
            tls: None,
            limits: Limits::default(),
            memory_limit: crate::memory::default_limit(),
            alert_value_interval: Duration::from_secs(1),
            history_flush: Duration::from_secs(5),
            clock: tocsin_engine::Clock::system(),
            cluster: None,
        }
    }
}

/// Everything a connection handler needs.
pub struct App {
    pub tocsin: Arc<Tocsin>,
    pub ingest: Ingest,
    pub metrics: Arc<Metrics>,
    pub tasks: Tasks,
    pub alerts: Arc<AlertManager>,
    /// Who may do what.
    pub credentials: Credentials,
    /// The Host and Origin checks.
    pub browser: BrowserPolicy,
    /// Request sizes, connections and header time.
    pub limits: Limits,
    /// The warning logged when connections are refused at the limit (at most every 10 s).
    pub connection_warning: crate::limits::Throttled,
    /// When the server started, epoch ms.
    pub started_ms: i64,
    pub data_dir: std::path::PathBuf,
    /// This replica and its peers, when it is one.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Held (locked) for as long as the server runs, so that two servers never share a data dir.
    pub(crate) _lock: std::fs::File,
}

pub type AppRef = Arc<App>;

impl App {
    /// Why this server does not serve clients yet: a replica started with an empty data dir
    /// that its peers are still sending their catalog and rows (`None`: it serves).
    pub fn joining(&self) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let replication = self.ingest.replication()?;
        cluster.joining(&replication.timeline)
    }

    /// Counts and logs a connection refused at the limit; the message it is answered with.
    /// `agent`: an agent's request on the reserve, rather than a connection past the reserve.
    pub fn refuse_connection(&self, peer: SocketAddr, agent: bool) -> String {
        self.metrics
            .refused(crate::metrics::Refusal::ConnectionLimit);
        let max = self.limits.max_connections;
        let message = if agent {
            format!(
                "tocsin has {max} connections open, its limit (--max-connections): agents (ingest and WebSockets) are refused until some close; SQL, /healthz and /metrics still answer"
            )
        } else {
            format!(
                "tocsin has {max} connections open, its limit (--max-connections), and its reserve for SQL is taken too: try again shortly"
            )
        };
        self.connection_warning
            .warn(|| format!("refused a connection from {peer}: {message}"));
        message
    }
}
