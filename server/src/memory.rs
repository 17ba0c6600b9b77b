//! The memory budget (`--memory-limit`, docs/security.md): ingest is refused before the process
//! would grow past the limit, instead of the kernel killing it.
//!
//! Two readings are held against the limit before a batch is accepted (before it is written to the
//! WAL, so a refused batch leaves no trace):
//! - the Arrow memory of every source's retained rows plus the batch's, counted exactly by the
//!   engine as rows arrive and expire: the state that grows with data;
//! - the process's resident memory, read from `/proc/self/status` every 250 ms: everything else
//!   (groups of rules, alert state, queries in flight) that also grows.
//!
//! Start-up applies the first reading to the write-ahead log: when its segments hold more than
//! half the limit, the oldest are left on disk but not fed (see [`segments_to_skip`]), so a process
//! whose data outgrew its memory starts with its newest rows instead of being killed again.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tocsin_engine::Engine;

/// Half of the machine's memory (or of the cgroup's limit, when that is lower).
pub fn default_limit() -> u64 {
    let total = meminfo_total().unwrap_or(8 << 30);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(total, |c| c.min(total)) / 2
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&text, "MemTotal:")
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's resident memory, bytes (Linux; `None` elsewhere).
pub fn resident() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&text, "VmRSS:")
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The budget ingest checks before it accepts a batch.
pub struct Budget {
    limit: u64,
    engine: Engine,
    resident: Arc<AtomicU64>,
    /// Bytes of batches admitted and not yet answered: counted until the engine counts them, so
    /// that batches admitted at the same time cannot pass the limit together.
    inflight: AtomicU64,
}

/// A batch's place in the budget, held until the batch is answered.
pub struct Reservation {
    budget: std::sync::Arc<Budget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .inflight
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Budget {
    /// A budget of `limit` bytes; samples the resident memory in the background.
    pub fn start(limit: u64, engine: Engine) -> Budget {
        let resident = Arc::new(AtomicU64::new(self::resident().unwrap_or(0)));
        let sampled = Arc::downgrade(&resident);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let Some(r) = sampled.upgrade() else { return };
                r.store(self::resident().unwrap_or(0), Ordering::Relaxed);
            }
        });
        Budget {
            limit,
            engine,
            resident,
            inflight: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The resident memory at the last sample.
    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Whether `source` may take a batch of `bytes` more Arrow memory; the refusal says why,
    /// naming the source and what it retains.
    pub fn admit(
        self: &std::sync::Arc<Self>,
        source: &str,
        bytes: u64,
    ) -> Result<Reservation, String> {
        let inflight = self.inflight.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let reservation = Reservation {
            budget: self.clone(),
            bytes,
        };
        let retained = self.engine.retained_bytes();
        let resident = self.resident();
        if retained.saturating_add(inflight) <= self.limit && resident <= self.limit {
            return Ok(reservation);
        }
        drop(reservation);
        let (rows, held) = self
            .engine
            .retained()
            .into_iter()
            .find(|(n, _, _)| n == source)
            .map_or((0, 0), |(_, r, b)| (r, b));
        let over = if resident > self.limit {
            format!("tocsin uses {} of memory", human(resident))
        } else {
            format!(
                "sources retain {} and batches being stored add {}",
                human(retained),
                human(inflight)
            )
        };
        Err(format!(
            "memory limit reached ({over}, limit {} set by --memory-limit): source \"{source}\" retains {rows} rows in {}; nothing of this batch was accepted. Rows leave as their retention passes: retry later, shorten the sources' retain or raise --memory-limit",
            human(self.limit),
            human(held),
        ))
    }
}

/// The write-ahead log's segments, oldest first, as (id, bytes).
fn segments(dir: &Path) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let id = e.file_name().into_string().ok()?;
                    let id: u64 = id.strip_suffix(".seg")?.parse().ok()?;
                    Some((id, e.metadata().ok()?.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The segments (oldest first) that start-up leaves unfed so that the newest rows that fit in
/// `limit` are replayed: the oldest whole segments until the rest is at most `limit` bytes on
/// disk (Arrow IPC on disk is about the size of the Arrow memory it becomes). Returns the first
/// segment id to feed and what was skipped as (segments, bytes).
pub fn segments_to_skip(dir: &Path, limit: u64) -> (u64, u64, u64) {
    let all = segments(dir);
    let mut total: u64 = all.iter().map(|(_, b)| b).sum();
    let (mut skipped, mut skipped_bytes) = (0, 0);
    for (id, bytes) in &all {
        if total <= limit {
            return (*id, skipped, skipped_bytes);
        }
        total -= bytes;
        skipped += 1;
        skipped_bytes += bytes;
    }
    (u64::MAX, skipped, skipped_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_segments_that_fit_are_fed() {
        let dir = tempfile::tempdir().unwrap();
        for (id, size) in [(1, 300), (2, 300), (3, 200), (4, 100)] {
            std::fs::write(dir.path().join(format!("{id:016}.seg")), vec![0u8; size]).unwrap();
        }
        assert_eq!(segments_to_skip(dir.path(), 10_000), (1, 0, 0));
        assert_eq!(segments_to_skip(dir.path(), 600), (2, 1, 300));
        assert_eq!(segments_to_skip(dir.path(), 300), (3, 2, 600));
        assert_eq!(segments_to_skip(dir.path(), 50), (u64::MAX, 4, 900));
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert!(default_limit() > 0);
        assert!(resident().unwrap_or(1) > 0);
    }
}
