//! tocsin's connectors. They know nothing of the engine: sources produce Arrow `RecordBatch`es in
//! a source's schema, and the server pushes them; sinks take alert notifications and deliver them.
//!
//! | module | owns |
//! |---|---|
//! | [`compression`] | request bodies in gzip, deflate, zstd and snappy, decompressed up to a limit |
//! | [`metrics`] | the metrics shape of Prometheus and OpenTelemetry sources: `(metric, labels, value, ts)` |
//! | [`otlp`] | OTLP/HTTP metrics (`FROM OTLP`) |
//! | [`prometheus`] | Prometheus remote write (`FROM PROMETHEUS`) |
//! | [`error`] | the crate's error: options, payloads, deliveries |
//! | [`duration`] | the one duration parser of options and flags |
//! | [`push`] | decoding pushed payloads (JSON, NDJSON, Influx line protocol, Arrow IPC) into batches |
//! | [`host`] | the host collector behind `FROM HOST` and `tocsin agent` |
//! | [`registry`] | the one list of source connectors and the one list of sink connectors |
//! | [`secrets`] | which option values are secrets, and how they are shown |
//! | [`sink`] | notification sinks: email, webhook (JSON, Alertmanager, Slack), log |
//! | [`snmp`] | SNMP polling (`FROM SNMP`) and trap reception (`FROM SNMP TRAP`), the built-in MIB names |
//! | [`source`] | the [`source::SourceConnector`] trait and the registry of every source kind |

pub mod compression;
pub mod duration;
pub mod error;
pub mod host;
pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod push;
pub mod registry;
pub mod secrets;
pub mod sink;
pub mod snmp;
pub mod source;

pub use error::{Error, Result};
