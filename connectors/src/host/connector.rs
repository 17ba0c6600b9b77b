//! `FROM HOST`: this machine's metrics, sampled every `interval`, and its busiest processes into
//! `<source>_processes` (`processes = 'nginx, postgres'` adds processes by name, `'none'` leaves
//! the relation out).

use crate::host::{host_schema, process_names, processes_schema, HostCollector, PROCESSES_SUFFIX};
use crate::source::{Derived, Options, PushError, Running, SourceConnector, Task};

pub struct Host;

/// The `processes` option's value, if given.
fn processes_option(options: &Options) -> Option<&str> {
    options
        .iter()
        .find(|(k, _)| k == "processes")
        .map(|(_, v)| v.as_str())
}

impl SourceConnector for Host {
    fn name(&self) -> &'static str {
        "HOST"
    }
    fn options(&self) -> &'static [&'static str] {
        &["processes"]
    }
    fn collecting(&self) -> bool {
        true
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example FROM HOST WITH (interval = '5s', processes = 'nginx, postgres')"
    }
    fn derive(&self, options: &Options) -> crate::Result<Derived> {
        let companions = match process_names(processes_option(options)) {
            Some(_) => vec![(PROCESSES_SUFFIX.to_string(), processes_schema())],
            None => Vec::new(),
        };
        Ok(Derived {
            schema: host_schema(),
            companions,
        })
    }
    fn run(&self, source: Running) -> Option<Task> {
        Some(Box::pin(collect(source)))
    }
}

/// Samples this host every `interval` and pushes the rows into the source, and its processes
/// into `<source>_processes`.
async fn collect(source: Running) {
    let mut collector = HostCollector::new();
    let names = process_names(processes_option(&source.options));
    let processes = format!("{}{PROCESSES_SUFFIX}", source.name);
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
        let now = source.output.now();
        let batch = collector.collect(now);
        if let Err(PushError::Gone(_)) = source.push(&source.name, batch).await {
            return;
        }
        if let Some(names) = &names {
            let batch = collector.processes(names, now);
            if let Err(PushError::Gone(_)) = source.push(&processes, batch).await {
                return;
            }
        }
    }
}
