//! The tocsin server: one port for HTTP, WebSocket ingest and subscriptions (and, told apart by
//! its first bytes, the PostgreSQL wire protocol); the durable catalog log and write-ahead log;
//! the host collector; the `tocsin` CLI's client commands.
//!
//! | module | owns |
//! |---|---|
//! | [`state`] | the configuration and the state every handler and task shares |
//! | [`start`] | start-up: replaying the catalog and WAL, the embedded default, the listener |
//! | [`listen`] | the listening port: protocol detection, TLS, connection and header limits |
//! | [`auth`] | credentials and scopes, the Host and Origin checks every request passes |
//! | [`limits`] | request limits and their defaults |
//! | [`memory`] | the memory budget ingest is checked against |
//! | [`http`] | the HTTP and WebSocket API |
//! | [`push`] | the ingest endpoints: `/v1/ingest/<source>` over HTTP and WebSocket, decompression, protocol sources |
//! | [`writes`] | the paths other tools write to: Prometheus remote write, OTLP, InfluxDB v1/v2/v3 |
//! | [`pg`] | the PostgreSQL wire protocol: authentication and roles, errors, encoding, COPY, the extended protocol |
//! | [`console`] | the web console's embedded files |
//! | [`amapi`] | the read side of Alertmanager's API v2 |
//! | [`ingest`] | the bounded ingest queue and the group-commit writer |
//! | [`wal`], [`catalog_log`], [`records`] | durable files |
//! | [`cluster`], [`replicate`], [`timeline`] | replicas: the links between them, what the ingest writer shares with them, their shared time |
//! | [`sources`] | the connectors tocsin runs itself: `FROM HOST`, `FROM SNMP`, `FROM SNMP TRAP` |
//! | [`alerts`] | the alert manager: the pure lifecycle, the durable store and outbox, grouped delivery, `tocsin_alerts` and `tocsin_alert_events` |
//! | [`json`] | results as JSON |
//! | [`tasks`] | source tasks, rule followers and sink deliveries that follow the catalog |
//! | [`metrics`] | Prometheus metrics about tocsin itself |
//! | [`client`], [`agent`] | `tocsin sql` and `tocsin agent` |

pub mod agent;
pub mod alerts;
pub mod amapi;
pub mod auth;
pub mod catalog_log;
pub mod client;
pub mod cluster;
pub mod console;
pub mod http;
pub mod ingest;
pub mod json;
pub mod limits;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod pg;
pub mod push;
pub mod records;
pub mod replicate;
pub mod sources;
pub mod start;
pub mod state;
pub mod tasks;
pub mod timeline;
pub mod wal;
pub mod writes;
pub mod ws;
