//! History on disk: the rows of a relation kept past its in-memory window, as Parquet files
//! partitioned by time under `DATA_DIR/history/<relation>.<generation>/<partition>/`.
//!
//! | module | what it holds |
//! |---|---|
//! | [`files`] | file names, encodings, atomic writes, loading a partition at start |
//! | [`relation`] | one relation's pending rows and files: flush, expiry, compaction choice |
//! | [`compact`] | merging sorted files as a stream |
//! | [`series`] | where each series' rows are in a file, for selective reads |
//! | [`table`] | the table an ad hoc query reads: history, then the in-memory window |
//!
//! The server hands every batch a source with history acknowledges to [`Relation::append`]
//! (after the write-ahead log synced it, with its log position). A background thread writes
//! pending rows to files every few seconds, merges small files and deletes partitions past the
//! horizon. A write-ahead-log segment is deleted only once [`Relation::durable_through`] covers
//! it.

pub mod compact;
pub mod encode;
pub mod files;
pub mod relation;
pub mod series;
pub mod table;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

pub use relation::{Relation, Snapshot, Spec, Stats};
pub use table::HistoryTable;

/// When pending rows are written and files merged.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Pending rows are written once the oldest has waited this long ...
    pub flush_after: Duration,
    /// ... or there are this many.
    pub flush_rows: usize,
    /// This many neighbouring files of one level are merged into one of the next.
    pub fanout: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            flush_after: Duration::from_secs(5),
            flush_rows: 500_000,
            fanout: 8,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub flushes: AtomicU64,
    pub flushed_rows: AtomicU64,
    pub compactions: AtomicU64,
    pub write_errors: AtomicU64,
    pub expired_partitions: AtomicU64,
}

/// A round of one background thread's work; whether there is more to do at once.
type Work = dyn Fn(&History, &tokio::runtime::Runtime) -> bool + Send;

/// Every relation's history in one data dir.
pub struct History {
    dir: PathBuf,
    relations: RwLock<HashMap<String, Arc<Relation>>>,
    pub counters: Counters,
}

/// A relation's directory: its name with every character but `a-z`, `0-9` and `_` written as
/// `~xx` (hex of its UTF-8 bytes), and its generation.
fn relation_dir(name: &str, generation: u64) -> String {
    let mut s = String::new();
    for b in name.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' {
            s.push(b as char);
        } else {
            s.push_str(&format!("~{b:02x}"));
        }
    }
    format!("{s}.{generation}")
}

impl History {
    pub fn open(dir: &Path) -> io::Result<Arc<History>> {
        fs::create_dir_all(dir)?;
        Ok(Arc::new(History {
            dir: dir.to_path_buf(),
            relations: RwLock::new(HashMap::new()),
            counters: Counters::default(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts keeping the history of relation `name` (of catalog generation `generation`),
    /// loading what its directory already holds.
    pub fn create(&self, name: &str, generation: u64, spec: Spec) -> io::Result<Arc<Relation>> {
        let dir = self.dir.join(relation_dir(name, generation));
        let rel = Arc::new(Relation::open(name, generation, dir, spec)?);
        self.relations
            .write()
            .expect("history relations")
            .insert(name.to_string(), rel.clone());
        Ok(rel)
    }

    /// Stops keeping `name`'s history and deletes it.
    pub fn remove(&self, name: &str) {
        let rel = self
            .relations
            .write()
            .expect("history relations")
            .remove(name);
        if let Some(rel) = rel {
            rel.mark_removed();
            for f in rel.state().partitions.values().flatten() {
                f.retire();
            }
            // A flush or merge that began before the drop may still add a file while the
            // directory is deleted; it stops at its next batch, so a few tries suffice.
            for attempt in 1.. {
                match fs::remove_dir_all(&rel.dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt < 100 => {
                        tracing::debug!("history: deleting {} again: {e}", rel.dir.display());
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::warn!("history: cannot delete {}: {e}", rel.dir.display());
                        break;
                    }
                }
            }
        }
    }

    /// Deletes the directories of relations that no longer exist (dropped while tocsin was
    /// down, or by an earlier generation). Call once the catalog has been replayed.
    pub fn sweep(&self) -> io::Result<usize> {
        let live: Vec<PathBuf> = self
            .relations
            .read()
            .expect("history relations")
            .values()
            .map(|r| r.dir.clone())
            .collect();
        let mut removed = 0;
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_dir() && !live.contains(&e.path()) {
                tracing::info!(
                    "history: deleting {}: its relation no longer exists",
                    e.path().display()
                );
                fs::remove_dir_all(e.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Relation>> {
        self.relations
            .read()
            .expect("history relations")
            .get(name)
            .cloned()
    }

    /// The relation `name` of generation `generation`, if it keeps history.
    pub fn get_generation(&self, name: &str, generation: u64) -> Option<Arc<Relation>> {
        self.get(name).filter(|r| r.generation == generation)
    }

    pub fn relations(&self) -> Vec<Arc<Relation>> {
        let mut v: Vec<_> = self
            .relations
            .read()
            .expect("history relations")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One round of background work at time `now_ms`: writes the pending rows that are due,
    /// deletes expired partitions and does one compaction. Returns whether there may be more
    /// compactions to do.
    pub fn maintain(&self, rt: &tokio::runtime::Runtime, now_ms: i64, tuning: &Tuning) -> bool {
        self.write_due(now_ms, tuning);
        self.compact_one(rt, now_ms, tuning)
    }

    /// Writes every relation's pending rows that are due and deletes its expired partitions.
    fn write_due(&self, now_ms: i64, tuning: &Tuning) {
        for rel in self.relations() {
            if rel.flush_due(tuning.flush_rows, tuning.flush_after) {
                match rel.flush() {
                    Ok(rows) => {
                        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .flushed_rows
                            .fetch_add(rows, Ordering::Relaxed);
                    }
                    Err(_) if rel.is_removed() => {}
                    Err(e) => {
                        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        rel.set_failing(Some(e.to_string()));
                        tracing::error!(
                            "history of {}: writing rows failed, they stay in memory and the write-ahead log until it succeeds: {e}",
                            rel.name
                        );
                    }
                }
            }
            let expired = rel.expire(now_ms);
            self.counters
                .expired_partitions
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
    }

    /// Does one compaction of each relation that has one to do; returns whether any did.
    fn compact_one(&self, rt: &tokio::runtime::Runtime, now_ms: i64, tuning: &Tuning) -> bool {
        let mut more = false;
        for rel in self.relations() {
            if let Some((start, inputs, level)) = rel.next_compaction(now_ms, tuning.fanout) {
                match compact::merge(rt, &rel, start, &inputs, level) {
                    Ok(out) => {
                        rel.install_compaction(start, &inputs, out);
                        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
                        more = true;
                    }
                    Err(_) if rel.is_removed() => {}
                    Err(e) => {
                        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        rel.set_failing(Some(e.to_string()));
                        tracing::error!("history of {}: compaction failed: {e}", rel.name);
                    }
                }
            }
        }
        more
    }

    /// Runs the background work until the history is dropped, on two threads: one writes
    /// pending rows and deletes expired partitions, the other merges files, so a long merge
    /// never holds rows back from their flush. `now` gives the time horizons and closed
    /// partitions are judged by (tocsin's clock).
    pub fn start(self: &Arc<Self>, now: impl Fn() -> i64 + Send + Sync + 'static, tuning: Tuning) {
        let now: Arc<dyn Fn() -> i64 + Send + Sync> = Arc::new(now);
        // A flush due by its row count starts within a quarter of a second.
        let tick =
            (tuning.flush_after / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let spawn = |name: &str, work: Box<Work>| {
            let weak: Weak<History> = Arc::downgrade(self);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("history runtime");
                    loop {
                        let Some(h) = weak.upgrade() else { return };
                        let more = work(&h, &rt);
                        drop(h);
                        if !more {
                            std::thread::sleep(tick);
                        }
                    }
                })
                .expect("spawn a history thread");
        };
        let (n, t) = (now.clone(), tuning.clone());
        spawn(
            "tocsin-history",
            Box::new(move |h, _| {
                h.write_due(n(), &t);
                false
            }),
        );
        spawn(
            "tocsin-compact",
            Box::new(move |h, rt| h.compact_one(rt, now(), &tuning)),
        );
    }
}

#[cfg(test)]
mod tests;
