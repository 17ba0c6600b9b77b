//! The `tocsin` command: `serve`, `sql`, `agent`.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tocsin_server::auth::{Credentials, PgUser};
use tocsin_server::limits::{parse_size, Limits};
use tocsin_server::start::serve;
use tocsin_server::state::Config;
use tocsin_sql::Access;

// Built without transparent huge pages (`no_thp`): mimalloc otherwise advises huge pages for its
// arenas, and every first touch of a 2 MiB page zeroes all of it; under a sustained write load
// that zeroing was 44% of the server's CPU, and rows held in memory took 35% more of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tocsin",
    version,
    about = "Real-time monitoring and alerting with continuous SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `serve` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP API, WebSocket ingest and subscriptions on one address.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7654")]
        listen: SocketAddr,
        /// Directory for the catalog log and the write-ahead log.
        #[arg(long, default_value = "tocsin-data")]
        data_dir: PathBuf,
        /// Timely worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Batches the ingest queue holds before producers wait.
        #[arg(long, default_value_t = 256)]
        ingest_queue: usize,
        /// How long an HTTP ingest request waits for room in a full queue before it is answered
        /// 503 with Retry-After (e.g. 5s, 500ms, 0s).
        #[arg(long, default_value = "5s")]
        ingest_wait: String,
        /// Do not create the embedded default (host source, starter views and rules) on a new
        /// data dir.
        #[arg(long)]
        no_default: bool,
        /// A second address that serves only the PostgreSQL protocol (it is also served on
        /// --listen).
        #[arg(long)]
        pg_listen: Option<SocketAddr>,
        /// Password PostgreSQL clients must give for any user name not given with --pg-user;
        /// such clients have the admin role.
        #[arg(long, env = "TOCSIN_PG_PASSWORD", hide_env_values = true)]
        pg_password: Option<String>,
        /// A PostgreSQL user, NAME:ROLE:PASSWORD with ROLE admin, write or read (repeat it, or
        /// separate several with commas in TOCSIN_PG_USERS). Clients authenticate with
        /// SCRAM-SHA-256.
        #[arg(
            long = "pg-user",
            env = "TOCSIN_PG_USERS",
            hide_env_values = true,
            value_delimiter = ','
        )]
        pg_users: Vec<String>,
        /// PEM certificate (chain): TLS for HTTP, WebSocket and the PostgreSQL protocol on the
        /// one port; with --tls-key.
        #[arg(long, alias = "pg-tls-cert", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, alias = "pg-tls-key", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Bearer token(s) of scope admin (everything: DDL, silences, ingest, reads),
        /// comma-separated.
        #[arg(
            long,
            alias = "http-token",
            env = "TOCSIN_ADMIN_TOKEN",
            hide_env_values = true,
            value_delimiter = ','
        )]
        admin_token: Vec<String>,
        /// Bearer token(s) of scope write (ingest only: agents and devices), comma-separated.
        #[arg(
            long,
            env = "TOCSIN_WRITE_TOKEN",
            hide_env_values = true,
            value_delimiter = ','
        )]
        write_token: Vec<String>,
        /// Bearer token(s) of scope read (queries, subscriptions, alerts, catalog, /metrics),
        /// comma-separated.
        #[arg(
            long,
            env = "TOCSIN_READ_TOKEN",
            hide_env_values = true,
            value_delimiter = ','
        )]
        read_token: Vec<String>,
        /// Let reads (queries, subscriptions, alerts, catalog, /metrics, pg users not
        /// configured) through without a credential even when credentials are configured.
        #[arg(long)]
        read_open: bool,
        /// An origin (e.g. https://grafana.example:3000) whose web pages may use the API
        /// besides the server's own; `*` allows every origin. Repeat or comma-separate.
        #[arg(long, value_delimiter = ',')]
        allow_origin: Vec<String>,
        /// A host name the server answers to on a loopback address besides localhost,
        /// 127.0.0.1 and ::1. Repeat or comma-separate.
        #[arg(long, value_delimiter = ',')]
        allow_host: Vec<String>,
        /// Largest request body (e.g. 64MiB).
        #[arg(long, default_value = "64MiB")]
        max_body: String,
        /// Longest SQL text of one request or query (e.g. 1MiB).
        #[arg(long, default_value = "1MiB")]
        max_sql: String,
        /// Largest WebSocket message (e.g. 64MiB).
        #[arg(long, default_value = "64MiB")]
        max_frame: String,
        /// Most labels one series may have in remote write, OTLP and scrapes (`__name__`
        /// included); a request with more is refused whole.
        #[arg(long, default_value_t = 128)]
        max_labels: usize,
        /// Longest label name or value, bytes, in remote write, OTLP and scrapes.
        #[arg(long, default_value_t = 4096)]
        max_label_length: usize,
        /// Open connections the port accepts at once for anything; past it a reserve of 64 (96
        /// from loopback) takes SQL, /healthz and /metrics but refuses agents. Lowered to fit
        /// the open-file limit.
        #[arg(long, default_value_t = 16_384)]
        max_connections: usize,
        /// Time a client has to send its first bytes and each request's headers.
        #[arg(long, default_value = "10s")]
        header_timeout: String,
        /// Memory budget (e.g. 4GiB): ingest is refused when the sources' retained rows, or the
        /// process's resident memory, would pass it (default: half of the machine's memory).
        #[arg(long, env = "TOCSIN_MEMORY_LIMIT")]
        memory_limit: Option<String>,
        /// How often a live alert's changed values (and nothing else) are written to
        /// tocsin_alerts and the alert store; transitions are written at once.
        #[arg(long, default_value = "1s")]
        alert_value_interval: String,
        /// How long accepted rows of a source with `history` wait before they are written to
        /// its files (they are in the write-ahead log meanwhile, and queries see them).
        #[arg(long, default_value = "5s")]
        history_flush: String,
        /// Changes a subscription may hold for a client that has not read them; a client that
        /// falls further behind is closed (or resynced, if it asked for that).
        #[arg(long, default_value_t = 100_000)]
        subscriber_buffer_changes: usize,
        /// About the bytes those changes may take (e.g. 16MiB).
        #[arg(long, default_value = "16MiB")]
        subscriber_buffer: String,
        /// A file with this replica's settings, `key = value` per line: replica-id, peers,
        /// cluster-secret, peer-timeout, ack, cluster-ca-cert (flags given too win).
        #[arg(long)]
        cluster_config: Option<PathBuf>,
        /// This server's id among its replicas (with --peers; see docs/ha.md).
        #[arg(long)]
        replica_id: Option<String>,
        /// The other replicas, ID=ws://HOST:PORT (wss:// with TLS), comma-separated: a set of
        /// replicas is 2 or 3 servers.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// The secret replicas present to each other (at least 16 characters, the same on
        /// every replica); a link without it is refused.
        #[arg(long, env = "TOCSIN_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
        /// How long a peer may be silent before its link is dropped and dialed again (default
        /// 5s).
        #[arg(long)]
        peer_timeout: Option<String>,
        /// When a client's batch is acknowledged: once durable on this replica (local, the
        /// default) or on a majority of replicas (quorum).
        #[arg(long)]
        ack: Option<String>,
        /// CA certificate (PEM) to trust for wss:// peers instead of the public roots.
        #[arg(long, env = "TOCSIN_CLUSTER_CA_CERT")]
        cluster_ca_cert: Option<PathBuf>,
    },
    /// Run SQL on a server and print the results (reads stdin when no SQL is given).
    Sql {
        /// The SQL; `-` or nothing reads it from stdin.
        sql: Option<String>,
        /// The server's address.
        #[arg(long, default_value = "127.0.0.1:7654", env = "TOCSIN_SERVER")]
        server: String,
        /// Bearer token for a server with credentials (scope admin for DDL, read for queries).
        #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) to trust for an https:// server instead of the public roots.
        #[arg(long, env = "TOCSIN_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
    /// Push this host's metrics to a server.
    Agent {
        /// The server, e.g. ws://10.0.0.5:7654 or wss://tocsin.example:7654; for replicas each of
        /// them, comma-separated (ws://a:7654,ws://b:7654): the agent pushes to the first it
        /// reaches and moves on when it fails.
        #[arg(long)]
        server: String,
        /// The source to push to (it needs the host schema, e.g. `CREATE SOURCE host FROM HOST`).
        #[arg(long, default_value = "host")]
        source: String,
        /// How often to sample (e.g. 5s).
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Processes to send to `<source>_processes` besides the 20 busiest by CPU and by
        /// memory (`nginx,postgres`), or `none` to send none, as the source's `processes` option.
        #[arg(long, default_value = "")]
        processes: String,
        /// Bearer token (scope write) for a server with credentials.
        #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) to trust for a wss:// server instead of the public roots.
        #[arg(long, env = "TOCSIN_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    tocsin_sql::options::parse_duration(text).map_err(|e| e.message)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                listen,
                data_dir,
                workers,
                ingest_queue,
                ingest_wait,
                no_default,
                pg_listen,
                pg_password,
                pg_users,
                tls_cert,
                tls_key,
                admin_token,
                write_token,
                read_token,
                read_open,
                allow_origin,
                allow_host,
                max_body,
                max_sql,
                max_frame,
                max_labels,
                max_label_length,
                max_connections,
                header_timeout,
                memory_limit,
                alert_value_interval,
                history_flush,
                subscriber_buffer_changes,
                subscriber_buffer,
                cluster_config,
                replica_id,
                peers,
                cluster_secret,
                peer_timeout,
                ack,
                cluster_ca_cert,
            } => {
                let file = match &cluster_config {
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| format!("--cluster-config {}: {e}", path.display()))?;
                        tocsin_server::cluster::ClusterFile::parse(&text)
                            .map_err(|e| format!("--cluster-config {}: {e}", path.display()))?
                    }
                    None => Default::default(),
                };
                let peers = if peers.is_empty() { file.peers } else { peers };
                let cluster = match replica_id.or(file.replica_id) {
                    Some(id) => Some(tocsin_server::cluster::ClusterConfig::new(
                        &id,
                        &peers,
                        cluster_secret.or(file.cluster_secret).as_deref(),
                        duration(
                            peer_timeout
                                .or(file.peer_timeout)
                                .as_deref()
                                .unwrap_or("5s"),
                        )?,
                        tocsin_server::cluster::Ack::parse(
                            ack.or(file.ack).as_deref().unwrap_or("local"),
                        )?,
                        cluster_ca_cert.or(file.cluster_ca_cert),
                    )?),
                    None if !peers.is_empty() => {
                        return Err("--peers needs --replica-id: this replica's own id".into())
                    }
                    None => None,
                };
                let mut tokens = Vec::new();
                // TOCSIN_HTTP_TOKEN is what --http-token (now --admin-token) was read from.
                let admin_token = if admin_token.is_empty() {
                    std::env::var("TOCSIN_HTTP_TOKEN")
                        .map(|v| v.split(',').map(str::to_string).collect())
                        .unwrap_or_default()
                } else {
                    admin_token
                };
                for (list, scope) in [
                    (admin_token, Access::Admin),
                    (write_token, Access::Write),
                    (read_token, Access::Read),
                ] {
                    tokens.extend(
                        list.into_iter()
                            .map(|t| t.trim().to_string())
                            .filter(|t| !t.is_empty())
                            .map(|t| (t, scope)),
                    );
                }
                let pg_users = pg_users
                    .iter()
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| PgUser::parse(u.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                let size = |flag: &str, text: &str| {
                    parse_size(text)
                        .map(|n| n as usize)
                        .map_err(|e| format!("--{flag}: {e}"))
                };
                let mut config = Config {
                    listen,
                    data_dir,
                    ingest_queue,
                    ingest_wait: duration(&ingest_wait)?,
                    defaults: !no_default,
                    pg_listen,
                    credentials: Credentials {
                        tokens,
                        pg_users,
                        pg_password: pg_password.filter(|p| !p.is_empty()),
                        read_open,
                    },
                    allow_origin: allow_origin
                        .into_iter()
                        .map(|o| o.trim().trim_end_matches('/').to_string())
                        .filter(|o| !o.is_empty())
                        .collect(),
                    allow_host: allow_host
                        .into_iter()
                        .map(|h| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                        .collect(),
                    tls: tls_cert.zip(tls_key),
                    limits: Limits {
                        max_body: size("max-body", &max_body)?,
                        max_sql: size("max-sql", &max_sql)?,
                        max_frame: size("max-frame", &max_frame)?,
                        labels: tocsin_connectors::metrics::Limits {
                            max_labels: max_labels.max(1),
                            max_label_bytes: max_label_length.max(1),
                        },
                        max_connections: max_connections.max(1),
                        header_timeout: duration(&header_timeout)?,
                        subscriber_changes: subscriber_buffer_changes.max(1),
                        subscriber_bytes: size("subscriber-buffer", &subscriber_buffer)?,
                    },
                    memory_limit: match memory_limit {
                        Some(m) => parse_size(&m).map_err(|e| format!("--memory-limit: {e}"))?,
                        None => tocsin_server::memory::default_limit(),
                    },
                    alert_value_interval: duration(&alert_value_interval)?,
                    history_flush: duration(&history_flush)?,
                    cluster,
                    ..Config::default()
                };
                if let Some(w) = workers {
                    config.workers = w;
                }
                serve(config).await
            }
            Command::Sql {
                sql,
                server,
                token,
                ca_cert,
            } => {
                let sql = match sql.as_deref() {
                    None | Some("-") => {
                        let mut s = String::new();
                        std::io::stdin()
                            .read_to_string(&mut s)
                            .map_err(|e| e.to_string())?;
                        s
                    }
                    Some(s) => s.to_string(),
                };
                let options = tocsin_server::client::ClientOptions { token, ca_cert };
                let out = tocsin_server::client::run_sql(&server, &sql, &options).await?;
                print!("{out}");
                Ok(())
            }
            Command::Agent {
                server,
                source,
                interval,
                processes,
                token,
                ca_cert,
            } => {
                tocsin_server::agent::run(tocsin_server::agent::AgentConfig {
                    server,
                    source,
                    interval: duration(&interval)?,
                    processes: tocsin_connectors::host::process_names(Some(&processes)),
                    token,
                    ca_cert,
                })
                .await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
