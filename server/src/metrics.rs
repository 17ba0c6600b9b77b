//! tocsin's own metrics, served as Prometheus text at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tocsin_connectors::source::Counters;

/// Upper bounds (seconds) of the ingest latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How many refusals of each source [`Metrics::source_ingest`] keeps.
pub const LAST_ERRORS: usize = 5;

#[derive(Default, Clone, Copy)]
struct SourceCounts {
    accepted: u64,
    rejected: u64,
    batches: u64,
}

/// Name, type, help and reading of one per-source SNMP metric.
type SnmpMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Counters) -> u64,
);

/// Name, help and reading of one per-source gauge of retained rows.
type PerSource = (&'static str, &'static str, fn(&(String, u64, u64)) -> u64);

/// Why a request or connection was refused before its handler ran (docs/security.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// A non-loopback `Host` on a loopback address (DNS rebinding).
    Host,
    /// A foreign `Origin` or a cross-site fetch.
    Origin,
    /// No credential, or one that is not valid.
    Unauthenticated,
    /// A credential whose scope does not allow the request.
    Forbidden,
    /// A request body over `--max-body`.
    BodyTooLarge,
    /// SQL text over `--max-sql`.
    SqlTooLong,
    /// A WebSocket message over `--max-frame`.
    FrameTooLarge,
    /// A connection over `--max-connections`.
    ConnectionLimit,
    /// Request headers not complete within `--header-timeout`.
    HeaderTimeout,
    /// Ingest refused because retained rows would pass `--memory-limit`.
    Memory,
    /// Plain text from another machine on a port that speaks TLS.
    NotTls,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::Host,
        Refusal::Origin,
        Refusal::Unauthenticated,
        Refusal::Forbidden,
        Refusal::BodyTooLarge,
        Refusal::SqlTooLong,
        Refusal::FrameTooLarge,
        Refusal::ConnectionLimit,
        Refusal::HeaderTimeout,
        Refusal::Memory,
        Refusal::NotTls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Forbidden => "forbidden",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::SqlTooLong => "sql_too_long",
            Refusal::FrameTooLarge => "frame_too_large",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::Memory => "memory_limit",
            Refusal::NotTls => "not_tls",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    refusals: [AtomicU64; Refusal::ALL.len()],
    sources: Mutex<BTreeMap<String, SourceCounts>>,
    /// The last reasons rows of each source were refused: when (epoch ms) and why.
    errors: Mutex<BTreeMap<String, std::collections::VecDeque<(i64, String)>>>,
    snmp: Mutex<BTreeMap<String, Arc<Counters>>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    pub http_requests: AtomicU64,
    pub ingest_refused_full: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_syncs: AtomicU64,
    /// A peer's rows taken into the engine later than their origin's time (the engine had passed
    /// it: they came after the slack), and by how much in all, ms.
    pub rows_late: AtomicU64,
    pub rows_late_ms: AtomicU64,
    pub wal_segments: AtomicU64,
    pub connections: AtomicU64,
    /// Connections open now, on every port.
    pub connections_open: Arc<AtomicU64>,
    pub connections_unrecognized: AtomicU64,
    /// The backlogs of the subscriptions clients read (WebSocket and PostgreSQL).
    subscribers: Mutex<Vec<std::sync::Weak<tocsin_engine::Backlog>>>,
    /// Subscribers that fell behind their buffer: closed, and resynced.
    pub subscribers_closed_slow: AtomicU64,
    pub subscribers_resynced: AtomicU64,
}

/// Gauges read when the metrics are rendered.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub engine_pending_rows: usize,
    pub dataflows: usize,
    pub workers: usize,
    /// Each limit by name, in its unit (bytes, connections, seconds).
    pub limits: Vec<(&'static str, u64)>,
    /// Each source's retained rows and their Arrow memory.
    pub retained: Vec<(String, u64, u64)>,
    /// `--memory-limit`, bytes.
    pub memory_limit: u64,
    /// The process's resident memory, bytes.
    pub resident: u64,
    /// Each relation's history, and the history's counters.
    pub history: Vec<(String, tocsin_history::Stats)>,
    pub history_counters: [u64; 5],
}

impl Metrics {
    /// Counts one batch pushed to a source.
    pub fn ingested(&self, source: &str, accepted: usize, rejected: usize, latency: Duration) {
        {
            let mut s = self.sources.lock().expect("metrics");
            let c = s.entry(source.to_string()).or_default();
            c.accepted += accepted as u64;
            c.rejected += rejected as u64;
            c.batches += 1;
        }
        let secs = latency.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counters of a running source, made on first use.
    pub fn source(&self, source: &str) -> Arc<Counters> {
        self.snmp
            .lock()
            .expect("metrics")
            .entry(source.to_string())
            .or_default()
            .clone()
    }

    /// Counts a subscription a client reads while it lives.
    pub fn subscriber(&self, backlog: &Arc<tocsin_engine::Backlog>) {
        let mut list = self.subscribers.lock().expect("subscribers");
        list.retain(|b| b.strong_count() > 0);
        list.push(Arc::downgrade(backlog));
    }

    /// Open subscriptions, and the changes and bytes they hold.
    fn subscriber_backlogs(&self) -> (u64, u64, u64) {
        let mut list = self.subscribers.lock().expect("subscribers");
        list.retain(|b| b.strong_count() > 0);
        list.iter()
            .filter_map(|b| b.upgrade())
            .fold((0, 0, 0), |(n, c, b), backlog| {
                let (hc, hb) = backlog.held();
                (n + 1, c + hc as u64, b + hb as u64)
            })
    }

    /// Counts one refused request or connection.
    pub fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Rows refused before they reached the queue (payloads that could not be decoded).
    pub fn rejected(&self, source: &str, rows: usize) {
        let mut s = self.sources.lock().expect("metrics");
        s.entry(source.to_string()).or_default().rejected += rows as u64;
    }

    /// Keeps why rows of `source` were refused, among its last [`LAST_ERRORS`].
    pub fn error(&self, source: &str, message: &str) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut e = self.errors.lock().expect("metrics");
        let list = e.entry(source.to_string()).or_default();
        if list.len() == LAST_ERRORS {
            list.pop_front();
        }
        list.push_back((at, message.to_string()));
    }

    /// A source's rows accepted and refused since the start, and its last refusals (oldest
    /// first).
    pub fn source_ingest(&self, source: &str) -> (u64, u64, Vec<(i64, String)>) {
        let c = self
            .sources
            .lock()
            .expect("metrics")
            .get(source)
            .copied()
            .unwrap_or_default();
        let errors = self
            .errors
            .lock()
            .expect("metrics")
            .get(source)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        (c.accepted, c.rejected, errors)
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = Exposition::default();
        let sources = self.sources.lock().expect("metrics").clone();
        let mut counter = |name: &str, help: &str, f: &dyn Fn(&SourceCounts) -> u64| {
            out.family(name, "counter", help);
            for (s, c) in &sources {
                out.sample(name, &[("source", s)], f(c));
            }
        };
        counter(
            "tocsin_ingest_rows_accepted_total",
            "Rows accepted (durable) per source.",
            &|c| c.accepted,
        );
        counter(
            "tocsin_ingest_rows_rejected_total",
            "Rows refused per source (undecodable, late, too far in the future).",
            &|c| c.rejected,
        );
        counter(
            "tocsin_ingest_batches_total",
            "Batches written per source.",
            &|c| c.batches,
        );
        let plain = [
            (
                "tocsin_ingest_refused_queue_full_total",
                "counter",
                "Ingest requests answered 503 because the queue stayed full.",
                self.ingest_refused_full.load(Ordering::Relaxed),
            ),
            (
                "tocsin_wal_bytes_total",
                "counter",
                "Bytes appended to the write-ahead log since start.",
                self.wal_bytes.load(Ordering::Relaxed),
            ),
            (
                "tocsin_wal_syncs_total",
                "counter",
                "Group commits (fsyncs) of the write-ahead log.",
                self.wal_syncs.load(Ordering::Relaxed),
            ),
            (
                "tocsin_replica_rows_late_total",
                "counter",
                "Rows of a peer replica taken into the engine later than their origin's time, because they arrived after the engine had moved past it (their alerts' times, and so notification ids, may differ from the peer's).",
                self.rows_late.load(Ordering::Relaxed),
            ),
            (
                "tocsin_replica_rows_late_ms_total",
                "counter",
                "How much later than their stamp those rows were taken, summed over batches, ms.",
                self.rows_late_ms.load(Ordering::Relaxed),
            ),
            (
                "tocsin_wal_segments",
                "gauge",
                "Write-ahead log segment files on disk.",
                self.wal_segments.load(Ordering::Relaxed),
            ),
            (
                "tocsin_http_requests_total",
                "counter",
                "HTTP requests served.",
                self.http_requests.load(Ordering::Relaxed),
            ),
            (
                "tocsin_connections_total",
                "counter",
                "Connections accepted.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "tocsin_connections_open",
                "gauge",
                "Connections open now (HTTP, WebSocket and PostgreSQL).",
                self.connections_open.load(Ordering::Relaxed),
            ),
            (
                "tocsin_connections_unrecognized_total",
                "counter",
                "Connections closed because their first bytes were no known protocol.",
                self.connections_unrecognized.load(Ordering::Relaxed),
            ),
            (
                "tocsin_ingest_queue_depth",
                "gauge",
                "Batches waiting to be written and pushed.",
                g.queue_depth as u64,
            ),
            (
                "tocsin_ingest_queue_capacity",
                "gauge",
                "Capacity of the ingest queue.",
                g.queue_capacity as u64,
            ),
            (
                "tocsin_engine_pending_rows",
                "gauge",
                "Rows pushed that no worker has taken yet.",
                g.engine_pending_rows as u64,
            ),
            (
                "tocsin_dataflows",
                "gauge",
                "Sources, views and rules running as dataflows.",
                g.dataflows as u64,
            ),
            (
                "tocsin_workers",
                "gauge",
                "Timely worker threads.",
                g.workers as u64,
            ),
        ];
        let (open, held_changes, held_bytes) = self.subscriber_backlogs();
        let subscribers = [
            (
                "tocsin_subscribers_open",
                "gauge",
                "Subscriptions clients read now (WebSocket and PostgreSQL).",
                open,
            ),
            (
                "tocsin_subscriber_buffered_changes",
                "gauge",
                "Changes waiting for subscribers to read them, over all subscriptions.",
                held_changes,
            ),
            (
                "tocsin_subscriber_buffered_bytes",
                "gauge",
                "About the memory of those changes.",
                held_bytes,
            ),
            (
                "tocsin_subscribers_closed_slow_total",
                "counter",
                "Subscribers closed because they fell behind their buffer.",
                self.subscribers_closed_slow.load(Ordering::Relaxed),
            ),
            (
                "tocsin_subscribers_resynced_total",
                "counter",
                "Subscribers that fell behind their buffer and were sent a fresh snapshot.",
                self.subscribers_resynced.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in plain.into_iter().chain(subscribers) {
            out.family(name, kind, help);
            out.sample(name, &[], v);
        }
        let name = "tocsin_refused_total";
        out.family(
            name,
            "counter",
            "Requests and connections refused before they were served, by reason (see docs/security.md).",
        );
        for r in Refusal::ALL {
            out.sample(
                name,
                &[("reason", r.as_str())],
                self.refusals[r as usize].load(Ordering::Relaxed),
            );
        }
        let per_source: [PerSource; 2] = [
            (
                "tocsin_source_retained_rows",
                "Rows a source holds for its retention window.",
                |r| r.1,
            ),
            (
                "tocsin_source_retained_bytes",
                "Arrow memory of the rows a source holds for its retention window.",
                |r| r.2,
            ),
        ];
        for (name, help, value) in per_source {
            out.family(name, "gauge", help);
            for r in &g.retained {
                out.sample(name, &[("source", &r.0)], value(r));
            }
        }
        type PerHistory = (
            &'static str,
            &'static str,
            fn(&tocsin_history::Stats) -> f64,
        );
        let per_history: [PerHistory; 6] = [
            (
                "tocsin_history_rows",
                "Rows a relation keeps in history files.",
                |s| s.rows as f64,
            ),
            (
                "tocsin_history_bytes",
                "Bytes of a relation's history files.",
                |s| s.bytes as f64,
            ),
            (
                "tocsin_history_files",
                "History files of a relation.",
                |s| s.files as f64,
            ),
            (
                "tocsin_history_pending_rows",
                "Accepted rows not yet written to history files (they are in the write-ahead log).",
                |s| s.pending_rows as f64,
            ),
            (
                "tocsin_history_flush_lag_seconds",
                "How long the oldest row not yet in history files has waited.",
                |s| s.flush_lag_secs,
            ),
            (
                "tocsin_history_failing",
                "1 while the last write of a relation's history failed (see the log).",
                |s| if s.failing.is_some() { 1.0 } else { 0.0 },
            ),
        ];
        for (name, help, value) in per_history {
            out.family(name, "gauge", help);
            for (rel, st) in &g.history {
                out.sample(name, &[("relation", rel)], value(st));
            }
        }
        for (i, (name, help)) in [
            ("tocsin_history_flushes_total", "Writes of pending rows to history files."),
            ("tocsin_history_flushed_rows_total", "Rows written to history files."),
            ("tocsin_history_compactions_total", "History files merged into bigger ones."),
            (
                "tocsin_history_write_errors_total",
                "History writes that failed (a full disk, say); the rows stay in the write-ahead log and are written again.",
            ),
            ("tocsin_history_expired_partitions_total", "History partitions deleted past their horizon."),
        ]
        .into_iter()
        .enumerate()
        {
            out.family(name, "counter", help);
            out.sample(name, &[], g.history_counters[i]);
        }
        for (name, help, v) in [
            (
                "tocsin_memory_limit_bytes",
                "The memory budget (--memory-limit): ingest is refused beyond it.",
                g.memory_limit,
            ),
            (
                "tocsin_memory_resident_bytes",
                "The process's resident memory, as the budget last read it.",
                g.resident,
            ),
        ] {
            out.family(name, "gauge", help);
            out.sample(name, &[], v);
        }
        let name = "tocsin_limit";
        out.family(
            name,
            "gauge",
            "The request limits this server runs with (docs/security.md).",
        );
        for (limit, v) in &g.limits {
            out.sample(name, &[("limit", limit)], v);
        }
        let snmp = self.snmp.lock().expect("metrics").clone();
        let snmp_counters: [SnmpMetric; 8] = [
            (
                "tocsin_snmp_polls_total",
                "counter",
                "Polls of SNMP targets.",
                |c| c.polls.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_poll_failures_total",
                "counter",
                "Polls that failed (timeout, network, agent or protocol error).",
                |c| c.poll_failures.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_trap_listening",
                "gauge",
                "1 while a trap source's socket is bound.",
                |c| c.listening.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_trap_datagrams_total",
                "counter",
                "Datagrams received on a trap port.",
                |c| c.traps.received.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_trap_malformed_total",
                "counter",
                "Datagrams on a trap port that were not well-formed notifications.",
                |c| c.traps.malformed.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_trap_refused_total",
                "counter",
                "Well-formed datagrams refused (other community, SNMPv3, not a notification).",
                |c| c.traps.refused.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_informs_total",
                "counter",
                "Informs received (each copy is acknowledged).",
                |c| c.traps.informs.load(Ordering::Relaxed),
            ),
            (
                "tocsin_snmp_inform_duplicates_total",
                "counter",
                "Retransmitted informs recognised and not stored twice.",
                |c| c.traps.duplicates.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, f) in snmp_counters {
            out.family(name, kind, help);
            for (s, c) in &snmp {
                out.sample(name, &[("source", s)], f(c));
            }
        }
        let name = "tocsin_ingest_latency_seconds";
        out.family(
            name,
            "histogram",
            "From a batch entering the ingest queue to its acknowledgement (durable and pushed).",
        );
        let bucket = format!("{name}_bucket");
        for (i, b) in BUCKETS.iter().enumerate() {
            out.sample(
                &bucket,
                &[("le", &b.to_string())],
                self.latency_buckets[i].load(Ordering::Relaxed),
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        out.sample(&bucket, &[("le", "+Inf")], count);
        out.sample(
            &format!("{name}_sum"),
            &[],
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out.sample(&format!("{name}_count"), &[], count);
        out.finish()
    }
}

/// The one writer of Prometheus' text format: families with their help and type, samples with
/// escaped label values (a quoted sink or source name may hold `"`, `\\` or a line break).
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts a family: `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of `name` with its labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    pub fn finish(self) -> String {
        self.0
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.family("tocsin_sink_queued", "gauge", "Notifications waiting.");
        out.sample("tocsin_sink_queued", &[("sink", "a\"b\\c\nd")], 3);
        out.sample("tocsin_workers", &[], 2);
        assert_eq!(
            out.finish(),
            "# HELP tocsin_sink_queued Notifications waiting.\n# TYPE tocsin_sink_queued gauge\n\
             tocsin_sink_queued{sink=\"a\\\"b\\\\c\\nd\"} 3\ntocsin_workers 2\n"
        );
    }
}
