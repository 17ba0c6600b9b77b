//! The `tocsin` command: `serve`, `sql`, `agent`.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tocsin_server::app::{serve, Config};

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
        /// Password PostgreSQL clients must give (any user name); without it, no authentication.
        #[arg(long, env = "TOCSIN_PG_PASSWORD", hide_env_values = true)]
        pg_password: Option<String>,
        /// PEM certificate (chain) for TLS on the PostgreSQL protocol; with --pg-tls-key.
        #[arg(long, requires = "pg_tls_key")]
        pg_tls_cert: Option<PathBuf>,
        /// PEM private key for --pg-tls-cert.
        #[arg(long, requires = "pg_tls_cert")]
        pg_tls_key: Option<PathBuf>,
        /// Bearer token(s), comma-separated, that HTTP requests which change something
        /// (POST /v1/sql, ingest) must carry as `Authorization: Bearer TOKEN`.
        #[arg(
            long,
            env = "TOCSIN_HTTP_TOKEN",
            hide_env_values = true,
            value_delimiter = ','
        )]
        http_token: Vec<String>,
    },
    /// Run SQL on a server and print the results (reads stdin when no SQL is given).
    Sql {
        /// The SQL; `-` or nothing reads it from stdin.
        sql: Option<String>,
        /// The server's address.
        #[arg(long, default_value = "127.0.0.1:7654", env = "TOCSIN_SERVER")]
        server: String,
        /// Bearer token for a server started with --http-token.
        #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Push this host's metrics to a server.
    Agent {
        /// The server, e.g. ws://10.0.0.5:7654.
        #[arg(long)]
        server: String,
        /// The source to push to (it needs the host schema, e.g. `CREATE SOURCE host FROM HOST`).
        #[arg(long, default_value = "host")]
        source: String,
        /// How often to sample (e.g. 5s).
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Bearer token for a server started with --http-token.
        #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
                pg_tls_cert,
                pg_tls_key,
                http_token,
            } => {
                let mut config = Config {
                    listen,
                    data_dir,
                    ingest_queue,
                    ingest_wait: duration(&ingest_wait)?,
                    defaults: !no_default,
                    pg_listen,
                    pg_password: pg_password.filter(|p| !p.is_empty()),
                    pg_tls: pg_tls_cert.zip(pg_tls_key),
                    http_tokens: http_token
                        .into_iter()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect(),
                    ..Config::default()
                };
                if let Some(w) = workers {
                    config.workers = w;
                }
                serve(config).await
            }
            Command::Sql { sql, server, token } => {
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
                let out = tocsin_server::client::run_sql(&server, &sql, token.as_deref()).await?;
                print!("{out}");
                Ok(())
            }
            Command::Agent {
                server,
                source,
                interval,
                token,
            } => {
                tocsin_server::agent::run(tocsin_server::agent::AgentConfig {
                    server,
                    source,
                    interval: duration(&interval)?,
                    token,
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
