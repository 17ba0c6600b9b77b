//! Starting a tocsin server: the engine and catalog, the durable catalog log and WAL replayed
//! into them, the ingest writer, the embedded default on a new data dir, and the listener.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use tocsin_engine::{Engine, EngineConfig, PushOutcome};
use tocsin_sql::{Access, DdlChange, Durability, Route, Tocsin};

use crate::alerts::deliver::Sinks;
use crate::alerts::{relations, AlertManager};
use crate::auth::BrowserPolicy;
use crate::catalog_log::{track, CatalogLog, Generations, UNROUTED};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::state::{App, AppRef, Config};
use crate::tasks::Tasks;
use crate::wal::Wal;
use tocsin_history::History;

/// Hands catalog changes to the catalog log and `INSERT`ed rows to the ingest path. Once the
/// server runs, every change also brings the running tasks in line with the catalog, whichever
/// front end (HTTP, pg) made it.
struct ServerDurability {
    log: Arc<CatalogLog>,
    generations: Generations,
    history: Arc<History>,
    ingest: Ingest,
    app: std::sync::OnceLock<std::sync::Weak<App>>,
}

#[async_trait::async_trait]
impl Durability for ServerDurability {
    /// Replicas make catalog changes at their leader (see `cluster`), but for those relayed
    /// from it and the embedded default.
    async fn route(&self, sql: &str) -> Route {
        if UNROUTED.try_with(|_| ()).is_ok() {
            return Route::Here;
        }
        match self.app.get().and_then(std::sync::Weak::upgrade) {
            Some(app) => match &app.cluster {
                Some(c) => c.route(sql).await,
                None => Route::Here,
            },
            None => Route::Here,
        }
    }

    async fn ddl(&self, change: &DdlChange) -> Result<(), String> {
        let relayed = UNROUTED.try_with(|at| *at);
        let seq = self
            .log
            .append(
                &change.statement,
                &change.name,
                &change.sql,
                relayed.ok().flatten(),
            )
            .map_err(|e| e.to_string())?;
        // History starts before the source takes rows (it takes none until `track`).
        if let Some(app) = self.app.get().and_then(std::sync::Weak::upgrade) {
            let names = std::iter::once(&change.name).chain(&change.companions);
            match change.statement.as_str() {
                "CREATE SOURCE" | "CREATE VIEW" => {
                    for n in names {
                        if let Some(spec) = app.tocsin.history_spec(n).await {
                            self.history
                                .create(n, seq, spec)
                                .map_err(|e| format!("history of {n}: {e}"))?;
                        }
                    }
                }
                "DROP SOURCE" | "DROP VIEW" => names.for_each(|n| self.history.remove(n)),
                _ => {}
            }
        }
        track(
            &self.generations,
            &change.statement,
            &change.name,
            &change.companions,
            seq,
        );
        if let Some(app) = self.app.get().and_then(std::sync::Weak::upgrade) {
            crate::tasks::apply(&app, change).await;
            // The leader answers once a majority of the replicas has the change.
            if let (Some(c), Err(_)) = (&app.cluster, relayed) {
                c.confirmed(seq).await?;
            }
        }
        Ok(())
    }

    async fn insert(&self, source: &str, batch: RecordBatch) -> Result<PushOutcome, String> {
        let rows = (0..batch.num_rows()).collect();
        let o = self
            .ingest
            .push(source, batch, rows, true)
            .await
            .map_err(|e| e.to_string())?;
        Ok(PushOutcome {
            accepted: o.accepted,
            rejected: o.rejected,
            time: 0,
        })
    }
}

/// The embedded default: this host's metrics, views over them and starter rules.
pub const DEFAULT_SQL: &str = include_str!("default.sql");

/// Opens the data dir and starts everything but the listener.
pub async fn open(config: &Config) -> Result<AppRef, String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    let lock_path = config.data_dir.join("LOCK");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        format!(
            "data dir {} is in use by another tocsin process",
            config.data_dir.display()
        )
    })?;
    // A replica's time waits for its peers' (see `timeline`): one that is heard from at most
    // the peer timeout behind the clock, a silent one at most a fifth of it.
    let timeline = config.cluster.as_ref().map(|c| {
        Arc::new(crate::timeline::Timeline::new(
            config.clock.clone(),
            c.peer_timeout / 5,
            c.peer_timeout,
        ))
    });
    let engine = Engine::start(EngineConfig {
        workers: config.workers.max(1),
        clock: config.clock.clone(),
        frontier: timeline
            .clone()
            .map(|t| t as Arc<dyn tocsin_engine::Frontier>),
        ..EngineConfig::default()
    })
    .map_err(|e| e.to_string())?;
    if let Some(t) = &timeline {
        t.attach(engine.releaser());
    }
    let tocsin = Arc::new(Tocsin::new(engine.clone()));
    let history_dir = config.data_dir.join("history");
    let history = History::open(&history_dir)
        .map_err(|e| format!("cannot open history in {}: {e}", history_dir.display()))?;
    tocsin.set_history(history.clone());
    let metrics = Arc::new(Metrics::default());

    // tocsin's own relations and the alert manager, before the catalog that may use them.
    relations::create(&tocsin)
        .await
        .map_err(|e| format!("cannot create the alert relations: {e}"))?;
    if config.cluster.is_some() {
        crate::cluster::create_relation(&tocsin)
            .await
            .map_err(|e| format!("cannot create {}: {e}", crate::cluster::REPLICAS))?;
    }
    let (publish, published) = tokio::sync::mpsc::unbounded_channel();
    let alerts_dir = config.data_dir.join("alerts");
    let alerts = Arc::new(
        AlertManager::open(
            &alerts_dir,
            engine.clone(),
            config.alert_value_interval,
            publish,
        )
        .map_err(|e| {
            format!(
                "cannot open the alert store in {}: {e}",
                alerts_dir.display()
            )
        })?,
    );
    tocsin.set_sinks(Arc::new(Sinks(alerts.clone())));

    // The catalog, as the log recorded it.
    let (log, records) = CatalogLog::open(&config.data_dir)
        .map_err(|e| format!("cannot open the catalog log: {e}"))?;
    let log = Arc::new(log);
    let fresh = records.is_empty();
    let generations: Generations = Default::default();
    for s in relations::SOURCES {
        // System sources are never re-created: their rows are always of generation 0.
        generations
            .write()
            .expect("generations")
            .insert(s.to_string(), 0);
    }
    for r in &records {
        // Companions of a dropped source are known before the drop, of a created one after.
        let mut companions = tocsin.companions(&r.name).await;
        if let Err(e) = tocsin.execute(&r.sql).await {
            // Starting without an object the operator created (a rule that would stay silent,
            // a source whose stored rows would be pruned) is worse than not starting.
            return Err(format!(
                "catalog log {}: change {} (`{}`) cannot be replayed: {}; tocsin will not start \
                 without it (move the data dir aside to start empty)",
                config.data_dir.join("catalog.log").display(),
                r.seq,
                tocsin_sql::catalog::masked_sql(&r.sql),
                e.message
            ));
        }
        companions.extend(tocsin.companions(&r.name).await);
        track(&generations, &r.statement, &r.name, &companions, r.seq);
    }
    if !records.is_empty() {
        tracing::info!(
            "catalog: replayed {} change(s) from {}",
            records.len(),
            config.data_dir.join("catalog.log").display()
        );
    }

    // History of the sources and views that keep one; directories of dropped ones go.
    {
        let mut live = generations.read().expect("generations").clone();
        for r in &records {
            match r.statement.as_str() {
                "CREATE VIEW" => {
                    live.insert(r.name.clone(), r.seq);
                }
                "DROP VIEW" => {
                    live.remove(&r.name);
                }
                _ => {}
            }
        }
        for (name, generation) in &live {
            if let Some(spec) = tocsin.history_spec(name).await {
                history.create(name, *generation, spec).map_err(|e| {
                    format!(
                        "cannot open the history of {name} in {}: {e}",
                        history_dir.display()
                    )
                })?;
            }
        }
        history
            .sweep()
            .map_err(|e| format!("history in {}: {e}", history_dir.display()))?;
    }

    // The rows, as the WAL holds them.
    let wal_dir = config.data_dir.join("wal");
    let (mut fed, mut expired) = (0usize, 0usize);
    // Half the budget: what the replayed rows become (groups of views and rules) and the rows
    // that arrive next need the other half.
    let (replay_from, skipped, skipped_bytes) =
        crate::memory::segments_to_skip(&wal_dir, config.memory_limit / 2);
    if skipped > 0 {
        tracing::warn!(
            "write-ahead log: {skipped} oldest segment(s) ({}) left unread so that the newest rows fit in half of --memory-limit {}; they stay on disk until their rows pass retention",
            crate::memory::human(skipped_bytes),
            crate::memory::human(config.memory_limit)
        );
    }
    let wal = {
        let live = generations.read().expect("generations").clone();
        Wal::open(&wal_dir, replay_from, |r| {
            if live.get(r.source) != Some(&r.generation) {
                return;
            }
            if let Some(rel) = history.get_generation(r.source, r.generation) {
                rel.replay(r.pos, r.batch.clone());
            }
            if !r.in_memory {
                return;
            }
            match engine.push(r.source, r.batch) {
                Ok(o) => {
                    fed += o.accepted;
                    expired += o.rejected.len();
                }
                Err(e) => tracing::warn!("WAL replay into {}: {e}", r.source),
            }
        })
        .map_err(|e| {
            format!(
                "cannot open the write-ahead log in {}: {e}",
                wal_dir.display()
            )
        })?
    };
    if fed + expired > 0 {
        tracing::info!(
            "write-ahead log: re-fed {fed} row(s); {expired} had passed their retention"
        );
    }
    {
        let engine = engine.clone();
        history.start(
            move || engine.now() as i64,
            tocsin_history::Tuning {
                flush_after: config.history_flush,
                ..Default::default()
            },
        );
    }
    let ingest = Ingest::start(
        engine.clone(),
        wal,
        history.clone(),
        generations.clone(),
        metrics.clone(),
        config.ingest_queue,
        config.ingest_wait,
        Arc::new(crate::memory::Budget::start(
            config.memory_limit,
            engine.clone(),
        )),
        config
            .cluster
            .as_ref()
            .zip(timeline)
            .map(|(c, timeline)| crate::ingest::Replicas {
                quorum: (c.ack == crate::cluster::Ack::Quorum).then_some(c.peer_timeout),
                timeline,
            }),
    );
    let durability = Arc::new(ServerDurability {
        log: log.clone(),
        generations,
        history,
        ingest: ingest.clone(),
        app: std::sync::OnceLock::new(),
    });
    tocsin.set_durability(durability.clone());
    let app = Arc::new(App {
        tocsin,
        ingest,
        metrics,
        tasks: Tasks::default(),
        alerts,
        credentials: config.credentials.clone(),
        browser: BrowserPolicy {
            loopback: config.listen.ip().is_loopback(),
            allow_origin: config.allow_origin.clone(),
            allow_host: config.allow_host.clone(),
        },
        limits: config.limits.clone(),
        connection_warning: crate::limits::Throttled::new(std::time::Duration::from_secs(10)),
        started_ms: chrono::Utc::now().timestamp_millis(),
        data_dir: config.data_dir.clone(),
        cluster: config
            .cluster
            .clone()
            .map(|c| Arc::new(crate::cluster::Cluster::new(c, log.clone(), fresh))),
        _lock: lock,
    });
    let _ = durability.app.set(Arc::downgrade(&app));
    app.tasks
        .background(tokio::spawn(relations::publish(app.clone(), published)));
    // Final buckets of rollup views with history, an hour of input at a time.
    let rollups = app.tocsin.clone();
    let every = config.history_flush.clamp(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_secs(1),
    );
    app.tasks.background(tokio::spawn(async move {
        let mut failing = false;
        loop {
            match rollups.roll_up(std::time::Duration::from_secs(3600)).await {
                Ok(n) => {
                    failing = false;
                    if n > 0 {
                        // More may be due (a rollup catching up on its input, an hour at a
                        // time).
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!("rollup history: {e}");
                }
                Err(_) => {}
            }
            tokio::time::sleep(every).await;
        }
    }));
    app.alerts
        .start()
        .map_err(|e| format!("cannot start the alert thread: {e}"))?;
    let timers = app.alerts.clone();
    app.tasks
        .background(tokio::spawn(async move { timers.run_timers().await }));
    if fresh && config.defaults {
        // Each replica starts its new data dir with the same default, so their catalog logs
        // begin alike.
        UNROUTED
            .scope(None, app.tocsin.execute(DEFAULT_SQL))
            .await
            .map_err(|e| format!("the embedded default failed: {e}"))?;
        tracing::info!("new data dir: created the embedded default (source `host` with 24 h of history, views `host_1m` (7 days of history), `host_1h` (90 days), `host_latest`, `host_cpu`, rules `high_cpu`, `low_disk_free`, `memory_pressure` notifying sink `log`)");
    }
    crate::tasks::reconcile(&app).await;
    if let Some(cluster) = &app.cluster {
        crate::cluster::start(&app, cluster)?;
        tracing::info!(
            "replica {}: peers {}; acknowledging ingest {}",
            cluster.config.id,
            cluster
                .peers
                .iter()
                .map(|p| format!("{} at {}", p.config.id, p.config.url))
                .collect::<Vec<_>>()
                .join(", "),
            match cluster.config.ack {
                crate::cluster::Ack::Local => "once durable here (--ack local)",
                crate::cluster::Ack::Quorum => "once durable on a majority (--ack quorum)",
            }
        );
        if fresh {
            tracing::info!(
                "replica {}: the data dir is new: clients are answered 503 (and /readyz) until a peer has sent its catalog and rows; the links to the peers are logged as they come up or fail",
                cluster.config.id
            );
        }
    }
    Ok(app)
}

/// Opens the data dir, binds the address(es) and serves until the process ends.
pub async fn serve(mut config: Config) -> Result<(), String> {
    let (soft, hard) = crate::limits::raise_open_files();
    let text = |n: Option<u64>| n.map_or("unlimited".to_string(), |n| n.to_string());
    let wanted = config.limits.max_connections;
    let fits = crate::limits::connections_within(wanted, soft);
    if fits < wanted {
        tracing::warn!(
            "open files: the limit is {} (hard {}), too low for --max-connections {wanted} with its reserves and the files tocsin keeps open: serving at most {fits} connections; raise it (systemd: LimitNOFILE=65536)",
            text(soft),
            text(hard),
        );
        config.limits.max_connections = fits;
    } else {
        tracing::info!(
            "open files: limit {} (hard {}); up to {wanted} connections (--max-connections) and a reserve of {} for SQL",
            text(soft),
            text(hard),
            crate::limits::CONTROL_RESERVE
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let pg_listener = match config.pg_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (--pg-listen): {e}"))?,
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::listen::Tls::load(cert, key)?),
        None => None,
    };
    let app = open(&config).await?;
    tracing::info!(
        "tocsin listening on {addr}: HTTP API, WebSocket ingest and subscriptions, and the PostgreSQL protocol (psql -h {} -p {} -U tocsin); data dir {}",
        addr.ip(),
        addr.port(),
        config.data_dir.display()
    );
    let mut addrs = vec![addr];
    if let Some(l) = &pg_listener {
        let a = l.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("PostgreSQL protocol also on {a}");
        addrs.push(a);
    }
    let open_to_network = addrs.iter().any(|a| !a.ip().is_loopback());
    let c = &config.credentials;
    if !c.any() {
        tracing::info!(
            "no credentials configured (--admin-token, --write-token, --read-token, --pg-user, --pg-password): anyone who can connect can read and change everything"
        );
    } else {
        let scopes = |a: Access| c.tokens.iter().filter(|(_, s)| *s == a).count();
        tracing::info!(
            "credentials: {} admin, {} write and {} read token(s), {} pg user(s){}; reads {}",
            scopes(Access::Admin),
            scopes(Access::Write),
            scopes(Access::Read),
            c.pg_users.len(),
            if c.pg_password.is_some() {
                ", --pg-password for other pg user names"
            } else {
                ""
            },
            if c.read_open {
                "are open to anyone (--read-open)"
            } else {
                "need a credential"
            }
        );
    }
    tracing::info!(
        "memory budget: {} (--memory-limit); ingest is refused beyond it, see docs/security.md",
        crate::memory::human(config.memory_limit)
    );
    if !open_to_network {
        tracing::info!("listening on loopback only: other machines cannot reach this address; browsers are held to Host and Origin checks");
    } else {
        if !c.any() {
            tracing::warn!(
                "listening beyond loopback without credentials: anyone on the network can change rules and sinks; set --admin-token (and --pg-user) or listen on 127.0.0.1"
            );
        }
        if tls.is_none() {
            tracing::warn!(
                "listening beyond loopback without TLS: tokens, passwords and data cross the network in clear text; set --tls-cert and --tls-key"
            );
        }
    }
    tracing::info!("try: tocsin sql 'SELECT * FROM host_cpu'    (or curl -d 'SHOW RULES' http://{addr}/v1/sql)");
    if tls.is_some() {
        tracing::info!(
            "TLS on: https:// and wss:// on {addr}, PostgreSQL clients with sslmode=require or verify-full; plain text is refused from other machines"
        );
    }
    let backend = crate::pg::Backend::new(app.clone(), tls.as_ref().map(|t| t.pg.clone()));
    if let Some(l) = pg_listener {
        let (app, backend) = (app.clone(), backend.clone());
        tokio::spawn(crate::listen::run_pg(l, app, backend));
    }
    crate::listen::run(listener, app, backend, tls).await
}
