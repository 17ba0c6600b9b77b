//! Source connectors: what may follow `FROM` in `CREATE SOURCE`. Every kind implements the one
//! [`SourceConnector`] trait and is listed once in [`crate::registry::sources`]; the SQL front end reads the list
//! to check a source's options and derive its schema, and the server reads it to run the
//! connectors that produce rows themselves. Adding a kind is a folder with its implementation
//! and one line in the registry (docs/connectors.md).
//!
//! | kind | where rows come from | schema |
//! |---|---|---|
//! | `HTTP`, `WEBSOCKET` | pushed by clients ([`crate::push`]) | declared columns |
//! | `HOST` | this machine, sampled every `interval` ([`crate::host`]) | fixed |
//! | `SNMP` | devices polled every `interval` ([`crate::snmp`]) | from the polled objects; companion `<name>_status` |
//! | `SNMP TRAP` | traps and informs received on a UDP port ([`crate::snmp::trap`]) | fixed |
//! | `PROMETHEUS` | remote write, pushed ([`crate::prometheus`]) | metrics shape, declared label columns first |
//! | `PROMETHEUS SCRAPE` | exporters scraped every `interval` ([`crate::prometheus::scrape`]) | metrics shape; companion `<name>_status` |
//! | `OTLP` | OTLP/HTTP metrics, pushed ([`crate::otlp`]) | metrics shape, declared label columns first |

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::snmp::trap::TrapStats;

/// The type of every source's `ts` column: milliseconds, UTC (as the SQL front end declares it).
pub fn ts_type() -> arrow::datatypes::DataType {
    arrow::datatypes::DataType::Timestamp(
        arrow::datatypes::TimeUnit::Millisecond,
        Some("UTC".into()),
    )
}

/// `key = 'value'` options of a source, keys lowercased.
pub type Options = [(String, String)];

/// A task that runs a source until it is dropped (aborted).
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a connector derives from a source's options.
pub struct Derived {
    pub schema: SchemaRef,
    /// Relations created and dropped with the source, named `<source><suffix>`, with their schema.
    pub companions: Vec<(String, SchemaRef)>,
}

/// One kind of source.
pub trait SourceConnector: Send + Sync {
    /// The words after `FROM`, upper case: `HOST`, `SNMP TRAP`.
    fn name(&self) -> &'static str;
    /// The options it takes besides those every source takes (`format`, `retain`, and `interval`
    /// when it is [`collecting`](SourceConnector::collecting)).
    fn options(&self) -> &'static [&'static str] {
        &[]
    }
    /// Where its sources' columns come from.
    fn columns(&self) -> Columns {
        Columns::Derived
    }
    /// Whether it samples every `interval` (default 10s).
    fn collecting(&self) -> bool {
        false
    }
    /// Checks the connector's own options; answers the schema (ignored for
    /// [`Columns::Declared`], appended to the declared label columns for [`Columns::Labels`])
    /// and companion relations, or an error shown to the user as it is.
    fn derive(&self, options: &Options) -> crate::Result<Derived>;
    /// A `CREATE SOURCE example ...` statement of this kind, run by the registry test and shown
    /// in docs/connectors.md.
    fn example(&self) -> &'static str;
    /// The task that produces a source's rows, for connectors that produce them themselves;
    /// `None` for those whose rows are pushed by clients.
    fn run(&self, _source: Running) -> Option<Task> {
        None
    }
    /// The protocol its pushed payloads are in, for kinds that speak one (remote write, OTLP);
    /// `None` for those that take the generic formats (JSON, NDJSON, line protocol, Arrow).
    fn protocol(&self) -> Option<&'static dyn Protocol> {
        None
    }
}

/// Where a source's columns come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// The statement declares them (`CREATE SOURCE s (host TEXT, ...) FROM HTTP`).
    Declared,
    /// The connector derives them from its options; a column list is refused.
    Derived,
    /// The metrics shape ([`crate::metrics`]): declared TEXT columns, each filled from the label
    /// of its name, then the derived columns.
    Labels,
}

/// A payload pushed to a protocol source, decompressed.
pub struct Payload<'a> {
    /// The request's `Content-Type`, lower case, parameters included.
    pub content_type: &'a str,
    pub body: bytes::Bytes,
    pub limits: crate::metrics::Limits,
    /// The time rows without one get, epoch milliseconds.
    pub now_ms: i64,
}

/// A wire protocol a source kind takes at `POST /v1/ingest/<source>`.
pub trait Protocol: Send + Sync {
    /// Decodes a payload into the source's schema. A payload that is wrong as a whole (not the
    /// protocol, not UTF-8, a series over the limits) is an error and nothing of it is stored;
    /// [`Decoded::errors`](crate::push::Decoded) lists parts that were left out while the rest
    /// is stored.
    fn decode(
        &self,
        payload: &Payload<'_>,
        schema: &SchemaRef,
    ) -> Result<crate::push::Decoded, crate::push::PayloadError>;
}

/// Why rows were not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The source is gone (dropped, or dropped and created again): the task should end.
    Gone(String),
    /// Not stored this time (the disk failed, the memory budget is reached): the task goes on and
    /// its next rows may be.
    NotStored(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Gone(m) | PushError::NotStored(m) => f.write_str(m),
        }
    }
}

/// Where a running source's rows go, as the server provides it.
#[async_trait::async_trait]
pub trait Output: Send + Sync {
    /// Stores rows in `relation`: the source itself or one of its companions. `Ok` once they are
    /// durable.
    async fn push(&self, relation: &str, batch: RecordBatch) -> Result<(), PushError>;
    /// The time rows are stamped with when they carry none, epoch milliseconds.
    fn now(&self) -> i64;
}

/// Counters of a running source, exported by the server (`tocsin_snmp_*`).
#[derive(Default)]
pub struct Counters {
    /// Polls of targets.
    pub polls: AtomicU64,
    /// Polls that failed (timeout, network, agent or protocol error).
    pub poll_failures: AtomicU64,
    /// 1 while a receiver's socket is bound.
    pub listening: AtomicU64,
    /// What a trap receiver saw.
    pub traps: Arc<TrapStats>,
}

/// A source to run: its name, options, where its rows go and what it counts.
pub struct Running {
    pub name: String,
    /// The source's schema, as its statement made it (declared columns included).
    pub schema: SchemaRef,
    /// How often to sample, for collecting connectors.
    pub interval: Duration,
    /// The connector's own options (see [`SourceConnector::options`]).
    pub options: Vec<(String, String)>,
    pub output: Arc<dyn Output>,
    pub counters: Arc<Counters>,
    /// The label limits of metrics sources (`--max-labels`, `--max-label-length`).
    pub limits: crate::metrics::Limits,
}

impl Running {
    /// Pushes rows into the source itself (`relation` = its name) or a companion, and logs rows
    /// that were not stored; [`PushError::Gone`] says the task should end.
    pub async fn push(&self, relation: &str, batch: RecordBatch) -> Result<(), PushError> {
        let r = self.output.push(relation, batch).await;
        match &r {
            Err(PushError::Gone(e)) => tracing::warn!("source {}: stopped: {e}", self.name),
            Err(PushError::NotStored(e)) => {
                tracing::warn!("source {}: rows were not stored: {e}", self.name)
            }
            Ok(()) => {}
        }
        r
    }
}

/// Runs `run(target, offset)` for every target, each on its own task, their offsets spread over
/// `interval` (so a slow or dead target delays only itself, and the targets' work does not all
/// fall on one instant); returns when every task has, and stops them all when dropped (when the
/// source is dropped).
pub async fn each_target<T, F, Fut>(interval: Duration, targets: Vec<T>, run: F)
where
    F: Fn(T, Duration) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let n = targets.len().max(1) as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in targets.into_iter().enumerate() {
        tasks.spawn(run(target, interval * i as u32 / n));
    }
    while tasks.join_next().await.is_some() {}
}

/// Marks a source as listening ([`Counters::listening`]) for as long as it lives.
pub struct Listening(Arc<Counters>);

impl Listening {
    pub fn new(c: Arc<Counters>) -> Self {
        c.listening.store(1, Ordering::Relaxed);
        Listening(c)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.listening.store(0, Ordering::Relaxed);
    }
}
