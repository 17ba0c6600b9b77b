//! Sources whose connector runs inside tocsin: `FROM HOST` (this machine's metrics), `FROM SNMP`
//! (polling devices) and `FROM SNMP TRAP` (a trap receiver). Each has a [`SourceKind`] that
//! checks its options and derives its schema at `CREATE SOURCE`, and a task that produces its
//! rows, started and stopped by [`crate::tasks::reconcile`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use tocsin_connectors::host::HostCollector;
use tocsin_connectors::snmp::poll::Poller;
use tocsin_connectors::snmp::trap::{trap_batch, trap_schema, TrapReceiver};
use tocsin_connectors::snmp::{self, PollConfig, Target};
use tocsin_sql::{DerivedSource, Options, SourceKind, Tocsin};

use crate::ingest::IngestError;
use crate::state::AppRef;

struct Host;

impl SourceKind for Host {
    fn options(&self) -> &'static [&'static str] {
        &[]
    }
    fn collecting(&self) -> bool {
        true
    }
    fn derive(&self, _: &Options) -> Result<DerivedSource, String> {
        Ok(DerivedSource {
            schema: tocsin_connectors::host::host_schema(),
            companions: Vec::new(),
        })
    }
}

struct Snmp;

impl SourceKind for Snmp {
    fn options(&self) -> &'static [&'static str] {
        snmp::POLL_OPTIONS
    }
    fn collecting(&self) -> bool {
        true
    }
    fn derive(&self, options: &Options) -> Result<DerivedSource, String> {
        let c = snmp::poll_config(options)?;
        Ok(DerivedSource {
            schema: c.schema,
            companions: vec![(snmp::STATUS_SUFFIX.to_string(), snmp::status_schema())],
        })
    }
}

struct SnmpTrap;

impl SourceKind for SnmpTrap {
    fn options(&self) -> &'static [&'static str] {
        snmp::TRAP_OPTIONS
    }
    fn collecting(&self) -> bool {
        false
    }
    fn derive(&self, options: &Options) -> Result<DerivedSource, String> {
        snmp::trap_config(options)?;
        Ok(DerivedSource {
            schema: trap_schema(),
            companions: Vec::new(),
        })
    }
}

/// Makes `HOST`, `SNMP` and `SNMP TRAP` available to `CREATE SOURCE`.
pub fn register(tocsin: &Tocsin) {
    tocsin.register_connector("HOST", Arc::new(Host));
    tocsin.register_connector("SNMP", Arc::new(Snmp));
    tocsin.register_connector("SNMP TRAP", Arc::new(SnmpTrap));
}

/// Where a connector task's rows go: a source as it was when the task started.
struct Destination {
    source: String,
    generation: Option<u64>,
}

impl Destination {
    fn new(app: &AppRef, source: &str) -> Self {
        Destination {
            source: source.to_string(),
            generation: app.ingest.generation(source),
        }
    }
}

/// Pushes rows a connector made; `Err(true)` when the source is gone (dropped, or dropped and
/// created again) and the task should end.
async fn push(app: &AppRef, into: &Destination, batch: RecordBatch) -> Result<(), bool> {
    let rows = (1..=batch.num_rows()).collect();
    let source = &into.source;
    match app
        .ingest
        .push_to(source, into.generation, batch, rows, true)
        .await
    {
        Ok(o) if !o.rejected.is_empty() => {
            tracing::warn!(
                "source {source}: {} row(s) refused: {:?}",
                o.rejected.len(),
                o.rejected.first()
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e @ (IngestError::Refused(_) | IngestError::Stopped)) => {
            tracing::warn!("source {source}: stopped: {e}");
            Err(true)
        }
        Err(e) => {
            tracing::warn!("source {source}: rows were not stored: {e}");
            Err(false)
        }
    }
}

fn now_ms(app: &AppRef) -> i64 {
    app.tocsin.engine().clock().now() as i64
}

/// Samples this host every `interval` and pushes the rows into the source.
pub async fn collect_host(app: AppRef, source: String, interval: Duration) {
    let mut collector = HostCollector::new();
    tracing::info!(
        "source {source}: collecting metrics of host {} every {interval:?}",
        collector.host()
    );
    let into = Destination::new(&app, &source);
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let batch = collector.collect(now_ms(&app));
        if push(&app, &into, batch).await == Err(true) {
            return;
        }
    }
}

/// Polls every target of a `FROM SNMP` source every `interval`: each target on its own task,
/// their first polls spread over the interval, so a slow or dead device delays only itself.
pub async fn poll_snmp(app: AppRef, source: String, interval: Duration, options: Options) {
    let config = match snmp::poll_config(&options) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!("source {source}: cannot poll: {e}");
            return;
        }
    };
    tracing::info!(
        "source {source}: polling {} SNMP target(s) every {interval:?}",
        config.targets.len()
    );
    let n = config.targets.len() as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in config.targets.iter().enumerate() {
        let offset = interval * i as u32 / n.max(1);
        tasks.spawn(poll_target(
            app.clone(),
            source.clone(),
            config.clone(),
            target.clone(),
            interval,
            offset,
        ));
    }
    // Dropping the set (when the source is dropped) stops every target's task.
    while tasks.join_next().await.is_some() {}
}

async fn poll_target(
    app: AppRef,
    source: String,
    config: Arc<PollConfig>,
    target: Target,
    interval: Duration,
    offset: Duration,
) {
    let into = Destination::new(&app, &source);
    let status = Destination::new(&app, &format!("{source}{}", snmp::STATUS_SUFFIX));
    let counters = app.metrics.snmp(&source);
    let mut poller = Poller::new(config, target);
    tokio::time::sleep(offset).await;
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last poll's error, so the log says when a target starts and stops failing.
    let mut failing: Option<String> = None;
    loop {
        every.tick().await;
        let now = now_ms(&app);
        let out = poller.poll(now).await;
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let device = &poller.target().device;
        if out.status.error.is_some() {
            counters.poll_failures.fetch_add(1, Ordering::Relaxed);
        }
        if out.status.error != failing {
            match &out.status.error {
                Some(e) => tracing::warn!("source {source}: polling {device} fails: {e}"),
                None => tracing::info!("source {source}: polling {device} works again"),
            }
            failing.clone_from(&out.status.error);
        }
        if let Some(batch) = out.batch.filter(|b| b.num_rows() > 0) {
            if push(&app, &into, batch).await == Err(true) {
                return;
            }
        }
        let rows = snmp::status_batch(&[out.status], now);
        if push(&app, &status, rows).await == Err(true) {
            return;
        }
    }
}

/// Receives traps and informs for a `FROM SNMP TRAP` source. An inform is acknowledged once
/// its row is stored, so a sender retries what tocsin did not keep.
pub async fn receive_traps(app: AppRef, source: String, options: Options) {
    let config = match snmp::trap_config(&options) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("source {source}: cannot receive traps: {e}");
            return;
        }
    };
    let counters = app.metrics.snmp(&source);
    let into = Destination::new(&app, &source);
    // A port in use or not allowed is retried every 5 s, so the source starts receiving once the
    // port is free; the log says so once.
    let mut logged = false;
    let mut receiver = loop {
        match TrapReceiver::bind(&config, counters.traps.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                if !logged {
                    tracing::error!(
                        "source {source}: cannot listen for traps on {}: {e}{}; retrying every 5s",
                        config.listen,
                        if config.listen.port() < 1024 {
                            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                        } else {
                            ""
                        }
                    );
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let _listening = Listening::new(counters.clone());
    tracing::info!(
        "source {source}: receiving SNMP traps on {}",
        receiver.local_addr().map_or(config.listen, |a| a)
    );
    loop {
        let received = match receiver.receive(|| now_ms(&app)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("source {source}: receiving traps: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !received.rows.is_empty() {
            match push(&app, &into, trap_batch(&received.rows)).await {
                Ok(()) => {}
                Err(true) => return,
                // Not stored: no acknowledgement, so informs are sent again.
                Err(false) => continue,
            }
        }
        receiver.acknowledge(&received.acks).await;
    }
}

/// Marks a trap source as listening (`tocsin_snmp_trap_listening`) for as long as it lives.
struct Listening(Arc<crate::metrics::SnmpCounters>);

impl Listening {
    fn new(c: Arc<crate::metrics::SnmpCounters>) -> Self {
        c.listening.store(1, Ordering::Relaxed);
        Listening(c)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.listening.store(0, Ordering::Relaxed);
    }
}
