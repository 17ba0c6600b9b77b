//! Request limits (docs/security.md): what one client may cost the server. Each is a flag of
//! `tocsin serve` with the default below, is exported as `tocsin_limit{limit="..."}`, and each
//! refusal is counted in `tocsin_refused_total{reason="..."}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections allowed beyond `--max-connections` for requests that answer and finish: SQL over
/// HTTP and the PostgreSQL protocol, `/healthz`, `/metrics`. Agents (ingest and WebSockets) are
/// refused in it, so that a fleet holding every slot does not lock the operator out.
pub const CONTROL_RESERVE: u64 = 64;

/// Connections from loopback peers allowed beyond that, so that the operator's own
/// `tocsin sql`, psql and health checks still get in when remote clients have taken the rest.
pub const LOOPBACK_RESERVE: u64 = 32;

/// Files the process keeps open besides connections (WAL segments, the catalog log, SNMP
/// sockets, the runtime's own): the connection limit leaves this many of the open-file limit.
pub const OTHER_FILES: u64 = 256;

/// Whether an address is loopback, an IPv4-mapped one (`::ffff:127.0.0.1`) included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// One open connection, counted in `tocsin_connections_open` until it is dropped. An HTTP
/// connection's slot goes with each request (in [`Conn`]), so a WebSocket keeps it for as long
/// as the socket lives after the upgrade.
pub struct Slot(Arc<AtomicU64>);

impl Slot {
    /// Takes a slot; how many are open with it.
    pub fn take(count: &Arc<AtomicU64>) -> (Slot, u64) {
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        (Slot(count.clone()), n)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection a request came on: its peer, its slot, and whether it was let in on the
/// reserve (no agent requests on it).
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub slot: Arc<Slot>,
    pub reserve: bool,
}

/// How a new connection is let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within `--max-connections`: anything.
    Open,
    /// On the reserve past it: SQL, health and metrics, not agents.
    Reserve,
    /// Past the reserve too.
    Refused,
}

/// How the `n`-th open connection, from `peer`, is let in.
pub fn admit(limits: &Limits, n: u64, peer: IpAddr) -> Admission {
    let max = limits.max_connections as u64;
    let reserve = if is_loopback(peer) {
        CONTROL_RESERVE + LOOPBACK_RESERVE
    } else {
        CONTROL_RESERVE
    };
    if n <= max {
        Admission::Open
    } else if n <= max + reserve {
        Admission::Reserve
    } else {
        Admission::Refused
    }
}

/// The connection limit the open-file limit allows: `wanted`, or less when the soft limit
/// `files` leaves no room for it, its reserves and [`OTHER_FILES`] (a connection accepted past
/// the file limit would fail, and nothing would answer, not even `/healthz`).
pub fn connections_within(wanted: usize, files: Option<u64>) -> usize {
    let Some(files) = files else {
        return wanted;
    };
    let room = files.saturating_sub(CONTROL_RESERVE + LOOPBACK_RESERVE + OTHER_FILES);
    (wanted as u64).min(room).max(1) as usize
}

/// A warning logged at most once per interval, with the number of times it was held back.
pub struct Throttled {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl Throttled {
    pub fn new(every: Duration) -> Self {
        Throttled {
            every,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// Logs `message` unless a warning was logged less than the interval ago.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        let mut last = self.last.lock().expect("throttle");
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        let held = self.held.swap(0, Ordering::Relaxed);
        if held > 0 {
            tracing::warn!("{} ({held} more like it since the last)", message());
        } else {
            tracing::warn!("{}", message());
        }
    }
}

/// The limits one server runs with.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, bytes (`--max-body`): larger ones are answered 413.
    pub max_body: usize,
    /// Longest SQL text of one request or pg query, bytes (`--max-sql`): longer is 413 / 54000.
    pub max_sql: usize,
    /// Largest WebSocket message, bytes (`--max-frame`): the socket is closed with code 1009.
    pub max_frame: usize,
    /// Labels of one series and their length in remote write, OTLP and scrapes
    /// (`--max-labels`, `--max-label-length`).
    pub labels: tocsin_connectors::metrics::Limits,
    /// Open connections on the port (`--max-connections`); past it only SQL, health and
    /// metrics get in ([`CONTROL_RESERVE`]), past that all are answered 503 / 53300.
    pub max_connections: usize,
    /// Time a client has to send its first bytes and a request's headers (`--header-timeout`);
    /// a slower one (slowloris) is disconnected.
    pub header_timeout: Duration,
    /// Changes a subscription may hold for a reader that has not taken them
    /// (`--subscriber-buffer-changes`); past it (or `subscriber_bytes`) the reader is too slow.
    pub subscriber_changes: usize,
    /// About the bytes of those changes (`--subscriber-buffer`).
    pub subscriber_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 64 << 20,
            max_sql: 1 << 20,
            max_frame: 64 << 20,
            labels: tocsin_connectors::metrics::Limits::default(),
            max_connections: 16_384,
            header_timeout: Duration::from_secs(10),
            subscriber_changes: 100_000,
            subscriber_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// The limits as `/metrics` shows them.
    pub fn gauges(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("max_body_bytes", self.max_body as u64),
            ("max_sql_bytes", self.max_sql as u64),
            ("max_frame_bytes", self.max_frame as u64),
            ("max_labels", self.labels.max_labels as u64),
            ("max_label_length_bytes", self.labels.max_label_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("header_timeout_seconds", self.header_timeout.as_secs()),
            ("subscriber_buffer_changes", self.subscriber_changes as u64),
            ("subscriber_buffer_bytes", self.subscriber_bytes as u64),
        ]
    }
}

impl Limits {
    /// Bounds a subscription a client reads (see [`tocsin_engine::Subscription::bound`]).
    pub fn bound(&self, sub: &tocsin_engine::Subscription) {
        sub.bound(self.subscriber_changes, self.subscriber_bytes);
    }
}

/// Raises the soft limit of open files to the hard limit, as a server holding thousands of
/// connections needs (the common default soft limit, 1,024, stops it at about a thousand).
/// Returns the soft and hard limits in effect (`None`: unlimited).
pub fn raise_open_files() -> (Option<u64>, Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    if r.current != r.maximum {
        let raised = Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            let now = getrlimit(Resource::Nofile);
            return (now.current, now.maximum);
        }
    }
    (r.current, r.maximum)
}

/// A size with an optional unit: `65536`, `64KiB`, `64MiB`, `2GiB`, `1.5GB`, `512k`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size: use e.g. 512MiB, 2GiB or 1048576"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{text}': use B, KiB, MiB, GiB (or kB, MB, GB)"
            ))
        }
    };
    Ok((n * factor) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission() {
        let limits = Limits {
            max_connections: 100,
            ..Limits::default()
        };
        let remote: IpAddr = "10.0.0.1".parse().unwrap();
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(admit(&limits, 100, remote), Admission::Open);
        assert_eq!(admit(&limits, 101, remote), Admission::Reserve);
        assert_eq!(admit(&limits, 164, remote), Admission::Reserve);
        assert_eq!(admit(&limits, 165, remote), Admission::Refused);
        assert_eq!(admit(&limits, 165, local), Admission::Reserve);
        assert_eq!(admit(&limits, 196, local), Admission::Reserve);
        assert_eq!(admit(&limits, 197, local), Admission::Refused);
    }

    #[test]
    fn connections_fit_the_file_limit() {
        assert_eq!(connections_within(16_384, None), 16_384);
        assert_eq!(connections_within(16_384, Some(1 << 20)), 16_384);
        assert_eq!(connections_within(16_384, Some(1024)), 1024 - 64 - 32 - 256);
        assert_eq!(connections_within(16_384, Some(100)), 1);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("512k").unwrap(), 512_000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
