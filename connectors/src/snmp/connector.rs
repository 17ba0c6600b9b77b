//! `FROM SNMP` (polling devices every `interval`, with a `<name>_status` companion) and
//! `FROM SNMP TRAP` (receiving traps and informs on a UDP port).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::snmp::poll::Poller;
use crate::snmp::trap::{trap_batch, trap_schema, TrapReceiver};
use crate::snmp::{self, PollConfig, Target};
use crate::source::{
    each_target, Derived, Listening, Options, PushError, Running, SourceConnector, Task,
};

pub struct Snmp;

impl SourceConnector for Snmp {
    fn name(&self) -> &'static str {
        "SNMP"
    }
    fn options(&self) -> &'static [&'static str] {
        snmp::POLL_OPTIONS
    }
    fn collecting(&self) -> bool {
        true
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example FROM SNMP WITH (targets = 'sw1=127.0.0.1:16161', community = 'public', table = 'IF-MIB::ifTable', interval = '30s')"
    }
    fn derive(&self, options: &Options) -> crate::Result<Derived> {
        let c = snmp::poll_config(options)?;
        Ok(Derived {
            schema: c.schema,
            companions: vec![(snmp::STATUS_SUFFIX.to_string(), snmp::status_schema())],
        })
    }
    fn run(&self, source: Running) -> Option<Task> {
        Some(Box::pin(poll(Arc::new(source))))
    }
}

pub struct SnmpTrap;

impl SourceConnector for SnmpTrap {
    fn name(&self) -> &'static str {
        "SNMP TRAP"
    }
    fn options(&self) -> &'static [&'static str] {
        snmp::TRAP_OPTIONS
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example FROM SNMP TRAP WITH (listen = '127.0.0.1:16162', community = 'public')"
    }
    fn derive(&self, options: &Options) -> crate::Result<Derived> {
        snmp::trap_config(options)?;
        Ok(Derived {
            schema: trap_schema(),
            companions: Vec::new(),
        })
    }
    fn run(&self, source: Running) -> Option<Task> {
        Some(Box::pin(receive(source)))
    }
}

/// Polls every target of a `FROM SNMP` source every `interval`: each target on its own task,
/// their first polls spread over the interval, so a slow or dead device delays only itself.
async fn poll(source: Arc<Running>) {
    let config = match snmp::poll_config(&source.options) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!("source {}: cannot poll: {e}", source.name);
            return;
        }
    };
    tracing::info!(
        "source {}: polling {} SNMP target(s) every {:?}",
        source.name,
        config.targets.len(),
        source.interval
    );
    let targets = config.targets.clone();
    each_target(source.interval, targets, |target, offset| {
        poll_target(source.clone(), config.clone(), target, offset)
    })
    .await;
}

async fn poll_target(
    source: Arc<Running>,
    config: Arc<PollConfig>,
    target: Target,
    offset: Duration,
) {
    let status = format!("{}{}", source.name, snmp::STATUS_SUFFIX);
    let counters = &source.counters;
    let mut poller = Poller::new(config, target);
    tokio::time::sleep(offset).await;
    let mut every = tokio::time::interval(source.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last poll's error, so the log says when a target starts and stops failing.
    let mut failing: Option<String> = None;
    loop {
        every.tick().await;
        let now = source.output.now();
        let out = poller.poll(now).await;
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let device = &poller.target().device;
        if out.status.error.is_some() {
            counters.poll_failures.fetch_add(1, Ordering::Relaxed);
        }
        if out.status.error != failing {
            match &out.status.error {
                Some(e) => tracing::warn!("source {}: polling {device} fails: {e}", source.name),
                None => tracing::info!("source {}: polling {device} works again", source.name),
            }
            failing.clone_from(&out.status.error);
        }
        if let Some(batch) = out.batch.filter(|b| b.num_rows() > 0) {
            if let Err(PushError::Gone(_)) = source.push(&source.name, batch).await {
                return;
            }
        }
        let rows = snmp::status_batch(&[out.status], now);
        if let Err(PushError::Gone(_)) = source.push(&status, rows).await {
            return;
        }
    }
}

/// Receives traps and informs for a `FROM SNMP TRAP` source. An inform is acknowledged once
/// its row is stored, so a sender retries what tocsin did not keep.
async fn receive(source: Running) {
    let config = match snmp::trap_config(&source.options) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("source {}: cannot receive traps: {e}", source.name);
            return;
        }
    };
    // A port in use or not allowed is retried every 5 s, so the source starts receiving once the
    // port is free; the log says so once.
    let mut logged = false;
    let mut receiver = loop {
        match TrapReceiver::bind(&config, source.counters.traps.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                if !logged {
                    tracing::error!(
                        "source {}: cannot listen for traps on {}: {e}{}; retrying every 5s",
                        source.name,
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
    let _listening = Listening::new(source.counters.clone());
    tracing::info!(
        "source {}: receiving SNMP traps on {}",
        source.name,
        receiver.local_addr().map_or(config.listen, |a| a)
    );
    loop {
        let received = match receiver.receive(|| source.output.now()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("source {}: receiving traps: {e}", source.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !received.rows.is_empty() {
            match source.push(&source.name, trap_batch(&received.rows)).await {
                Ok(()) => {}
                Err(PushError::Gone(_)) => return,
                // Not stored: no acknowledgement, so informs are sent again.
                Err(PushError::NotStored(_)) => continue,
            }
        }
        receiver.acknowledge(&received.acks).await;
    }
}
