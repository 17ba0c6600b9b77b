//! The registries of connectors: every source kind and every sink kind, each listed once. The
//! SQL front end reads them to check `CREATE SOURCE` and `CREATE SINK`; the server reads them to
//! run sources and deliver to sinks. Adding a connector is its folder and one line here
//! (docs/connectors.md).

use std::sync::{Arc, OnceLock};

use crate::sink::SinkConnector;
use crate::source::SourceConnector;

/// Every source connector, the one list.
pub fn sources() -> &'static [Arc<dyn SourceConnector>] {
    static REGISTRY: OnceLock<Vec<Arc<dyn SourceConnector>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        vec![
            Arc::new(crate::push::connector::Push("WEBSOCKET")),
            Arc::new(crate::push::connector::Push("HTTP")),
            Arc::new(crate::host::connector::Host),
            Arc::new(crate::snmp::connector::Snmp),
            Arc::new(crate::snmp::connector::SnmpTrap),
            Arc::new(crate::prometheus::Prometheus),
            Arc::new(crate::prometheus::PrometheusScrape),
            Arc::new(crate::otlp::Otlp),
        ]
    })
}

/// The connector named `name` (as written after `FROM`, any case).
pub fn source(name: &str) -> Option<&'static Arc<dyn SourceConnector>> {
    sources()
        .iter()
        .find(|c| c.name().eq_ignore_ascii_case(name))
}

/// The names of every connector, for messages: `WEBSOCKET, HTTP, HOST, SNMP or SNMP TRAP`.
pub fn source_names() -> String {
    or_list(sources().iter().map(|c| c.name()).collect())
}

/// `A, B or C`.
fn or_list(names: Vec<&str>) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// Every sink connector, the one list.
pub fn sinks() -> &'static [&'static dyn SinkConnector] {
    &[
        &crate::sink::email::EmailConnector,
        &crate::sink::webhook::WebhookConnector,
        &crate::sink::log::LogConnector,
    ]
}

/// The names of every sink connector, for messages: `EMAIL, WEBHOOK or LOG`.
pub fn sink_names() -> String {
    or_list(sinks().iter().map(|c| c.name()).collect())
}

/// Builds the sink `name` of a connector from its `WITH (...)` options; the error names the
/// option that is wrong.
pub fn build_sink(
    connector: &str,
    name: &str,
    options: &[(String, String)],
) -> crate::Result<crate::sink::BuiltSink> {
    let kind = sinks()
        .iter()
        .find(|c| c.name().eq_ignore_ascii_case(connector))
        .ok_or_else(|| format!("unknown sink connector {connector}: use {}", sink_names()))?;
    let opts = crate::sink::SinkOptions::new(options);
    let sink = kind.build(name, &opts)?;
    let grouping = crate::sink::Grouping::from_options(&opts)?;
    opts.finish(&format!("a {} sink", kind.name()))?;
    Ok(crate::sink::BuiltSink { sink, grouping })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_each_kind_once() {
        let mut seen: Vec<&str> = sources().iter().map(|c| c.name()).collect();
        seen.sort_unstable();
        let n = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), n, "a kind is registered twice");
        assert!(source("snmp trap").is_some());
        assert_eq!(
            source_names(),
            "WEBSOCKET, HTTP, HOST, SNMP, SNMP TRAP, PROMETHEUS, PROMETHEUS SCRAPE or OTLP"
        );
        assert_eq!(sink_names(), "EMAIL, WEBHOOK or LOG");
        for c in sources() {
            // A connector that derives its schema needs options that at least parse; one that
            // declares columns ignores them.
            if c.columns() == crate::source::Columns::Declared {
                assert!(c.derive(&[]).is_ok(), "{}", c.name());
            }
        }
    }
}
