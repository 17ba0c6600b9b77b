//! Request limits (docs/security.md): what one client may cost the server. Each is a flag of
//! `tocsin serve` with the default below, is exported as `tocsin_limit{limit="..."}`, and each
//! refusal is counted in `tocsin_refused_total{reason="..."}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections from loopback peers allowed beyond `--max-connections`, so that the operator's
/// own `tocsin sql`, psql and health checks still get in when clients have taken every slot.
pub const LOOPBACK_RESERVE: u64 = 32;

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

/// The connection a request came on: its peer and its slot.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub slot: Arc<Slot>,
}

/// Whether the `n`-th open connection, from `peer`, is over the limit.
pub fn over(limits: &Limits, n: u64, peer: IpAddr) -> bool {
    let max = limits.max_connections as u64;
    n > max && !(is_loopback(peer) && n <= max + LOOPBACK_RESERVE)
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
    /// Open connections on the port (`--max-connections`); more are answered 503 / 53300.
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
            max_connections: 4096,
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
