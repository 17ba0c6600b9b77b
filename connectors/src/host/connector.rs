//! `FROM HOST`: this machine's metrics, sampled every `interval`.

use crate::host::{host_schema, HostCollector};
use crate::source::{Derived, Options, PushError, Running, SourceConnector, Task};

pub struct Host;

impl SourceConnector for Host {
    fn name(&self) -> &'static str {
        "HOST"
    }
    fn collecting(&self) -> bool {
        true
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example FROM HOST WITH (interval = '5s')"
    }
    fn derive(&self, _: &Options) -> crate::Result<Derived> {
        Ok(Derived {
            schema: host_schema(),
            companions: Vec::new(),
        })
    }
    fn run(&self, source: Running) -> Option<Task> {
        Some(Box::pin(collect(source)))
    }
}

/// Samples this host every `interval` and pushes the rows into the source.
async fn collect(source: Running) {
    let mut collector = HostCollector::new();
    tracing::info!(
        "source {}: collecting metrics of host {} every {:?}",
        source.name,
        collector.host(),
        source.interval
    );
    let mut every = tokio::time::interval(source.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let batch = collector.collect(source.output.now());
        if let Err(PushError::Gone(_)) = source.push(&source.name, batch).await {
            return;
        }
    }
}
