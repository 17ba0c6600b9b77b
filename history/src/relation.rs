//! One relation's history: the rows acknowledged but not yet in files (pending), and the files
//! of each partition.
//!
//! Positions are the write-ahead log's (segment and record), which grow with every batch a source
//! takes. A flush writes the pending rows up to some position as one new file per partition they
//! fall in; within a partition, files therefore hold disjoint, growing position ranges, and the
//! highest position in a partition's files tells which of the log's rows that partition already
//! has. After a crash the log is replayed and each row goes back to pending only if its partition
//! does not have it yet, so no row is missing and none is counted twice, even when a flush was
//! cut short between two partitions.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use datafusion::arrow::array::{BooleanArray, PrimitiveArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};

use crate::encode::Layout;
use crate::files::{self, FileMeta};

/// What the history of a relation is made of.
#[derive(Clone, Debug)]
pub struct Spec {
    pub schema: SchemaRef,
    /// The `ts` column.
    pub ts: usize,
    /// Rows are kept this long after their `ts`.
    pub horizon_ms: i64,
    /// No row arrives later than this after its `ts` (the source's retention): a partition whose
    /// end is this far in the past is closed and compacted into one file.
    pub late_ms: i64,
    /// For a relation written bucket by bucket (a rollup view): the bucket width.
    pub bucket_ms: Option<i64>,
}

impl Spec {
    /// Partitions are an hour wide for histories up to two days, a day wide beyond.
    pub fn partition_ms(&self) -> i64 {
        if self.horizon_ms <= 2 * 86_400_000 {
            3_600_000
        } else {
            86_400_000
        }
    }
}

struct Pending {
    pos: u64,
    batch: RecordBatch,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    pending: VecDeque<Pending>,
    pending_rows: usize,
    /// The highest position appended (or found already durable).
    seen: u64,
    pub partitions: BTreeMap<i64, Vec<Arc<FileMeta>>>,
    /// The last write error, until a write succeeds.
    pub failing: Option<String>,
    /// For a relation written bucket by bucket (a rollup view): every bucket that starts before
    /// this is written (to files or pending).
    written_through: Option<i64>,
}

impl State {
    /// Takes the rows of log position `pos` (none: the position is passed, nothing to keep).
    fn take(&mut self, pos: u64, rows: Option<RecordBatch>) {
        self.seen = self.seen.max(pos);
        if let Some(batch) = rows.filter(|b| b.num_rows() > 0) {
            self.pending_rows += batch.num_rows();
            self.pending.push_back(Pending {
                pos,
                batch,
                since: Instant::now(),
            });
        }
    }
}

/// What a query reads of a relation's history: its files and its pending rows, taken together.
#[derive(Clone)]
pub struct Snapshot {
    /// How the files hold the relation's columns.
    pub layout: Arc<Layout>,
    /// Files by partition start.
    pub files: Vec<(i64, Arc<FileMeta>)>,
    pub pending: Vec<RecordBatch>,
    pub partition_ms: i64,
    /// See [`Relation::written_through`].
    pub written_through: Option<i64>,
}

/// Sizes and state of one relation's history, for `SHOW`, `/v1/catalog` and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub horizon_ms: i64,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    pub partitions: u64,
    /// The oldest and newest `ts` in the files.
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    pub pending_rows: u64,
    /// Seconds the oldest pending row has waited for a flush.
    pub flush_lag_secs: f64,
    pub failing: Option<String>,
}

impl Stats {
    /// One line for `SHOW SOURCES`: `1 day: 1234 rows, 56.7 KiB in 3 files, 2026-11-21T10:00:00Z
    /// to 2026-11-21T15:00:00Z; 12 rows pending`.
    pub fn summary(&self, horizon: &str) -> String {
        let at = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map_or_else(
                    || "-".to_string(),
                    |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                )
        };
        let mut s = format!(
            "{horizon}: {} rows, {} in {} files",
            self.rows,
            human_bytes(self.bytes),
            self.files
        );
        if self.files > 0 {
            s += &format!(", {} to {}", at(self.oldest_ms), at(self.newest_ms));
        }
        if self.pending_rows > 0 {
            s += &format!("; {} rows pending", self.pending_rows);
        }
        if let Some(e) = &self.failing {
            s += &format!("; failing: {e}");
        }
        s
    }
}

/// `56.7 KiB`.
pub fn human_bytes(b: u64) -> String {
    let mut v = b as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return if unit == "B" {
                format!("{b} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

pub struct Relation {
    pub name: String,
    pub generation: u64,
    pub dir: PathBuf,
    pub spec: Spec,
    pub layout: Arc<Layout>,
    /// The sort order of its files: chosen at the first flush, then kept.
    sort: std::sync::OnceLock<Vec<usize>>,
    state: Mutex<State>,
    /// Set once the relation is dropped: writes stop, and a failure is no longer an error.
    removed: std::sync::atomic::AtomicBool,
}

impl Relation {
    /// Opens (creating if needed) the relation's directory and loads its files.
    pub fn open(name: &str, generation: u64, dir: PathBuf, spec: Spec) -> io::Result<Relation> {
        fs::create_dir_all(&dir)?;
        let layout = Arc::new(Layout::new(spec.schema.clone()));
        let mut partitions = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname == "order" || fname.starts_with('.') {
                continue;
            }
            let Some(start) = files::parse_partition_name(&fname) else {
                tracing::warn!(
                    "history: skipped {}: not a partition directory",
                    entry.path().display()
                );
                continue;
            };
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let found = files::load_partition(&entry.path(), &layout)?;
            if !found.is_empty() {
                partitions.insert(start, found);
            }
        }
        let sort = std::sync::OnceLock::new();
        match files::read_order(&dir, &spec.schema) {
            Some(o) => {
                let _ = sort.set(o);
            }
            // Files without an order file (deleted by hand) are taken to be in schema order.
            None if !partitions.is_empty() => {
                let o: Vec<usize> = files::text_columns(&spec.schema)
                    .into_iter()
                    .chain([spec.ts])
                    .collect();
                files::write_order(&dir, &spec.schema, &o)?;
                let _ = sort.set(o);
            }
            None => {}
        }
        Ok(Relation {
            name: name.to_string(),
            generation,
            dir,
            spec,
            layout,
            sort,
            state: Mutex::new(State {
                partitions,
                ..State::default()
            }),
            removed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the relation was dropped (its directory is being or has been deleted).
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("history state")
    }

    fn partition_of(&self, ts: i64) -> i64 {
        let w = self.spec.partition_ms();
        ts.div_euclid(w) * w
    }

    fn ts(&self, batch: &RecordBatch) -> PrimitiveArray<TimestampMillisecondType> {
        files::ts_millis(batch.column(self.spec.ts))
    }

    /// Takes an acknowledged batch at log position `pos`.
    pub fn append(&self, pos: u64, batch: RecordBatch) {
        self.append_pushed(pos, || ((), Some(batch)))
    }

    /// Runs `push`, which hands a batch at log position `pos` to the in-memory window and gives
    /// back the rows the window took, and takes those rows, in one step for queries: a query
    /// takes its snapshot of history after reading the window, so it cannot see a row gone from
    /// the window that history does not have yet.
    pub fn append_pushed<T>(&self, pos: u64, push: impl FnOnce() -> (T, Option<RecordBatch>)) -> T {
        let mut s = self.state();
        let (out, took) = push();
        s.take(pos, took);
        out
    }

    /// For a rollup: every bucket that starts before this is written. After a restart, the
    /// bucket after the newest one in the files (rows that were pending are computed again).
    pub fn written_through(&self) -> Option<i64> {
        self.mark(&self.state())
    }

    fn mark(&self, s: &State) -> Option<i64> {
        let width = self.spec.bucket_ms?;
        s.written_through.or_else(|| {
            s.partitions
                .values()
                .flatten()
                .map(|f| f.max_ts)
                .max()
                .map(|t| t - t.rem_euclid(width) + width)
        })
    }

    /// For a rollup: takes the rows of the buckets up to `upto` (exclusive) and marks them
    /// written, in one step for queries.
    pub fn append_through(&self, upto: i64, rows: Option<RecordBatch>) {
        let mut s = self.state();
        s.take(upto.max(0) as u64, rows);
        s.written_through = Some(upto);
    }

    /// The oldest `ts` in history, files or pending.
    pub fn oldest_ts(&self) -> Option<i64> {
        let s = self.state();
        let files = s.partitions.values().flatten().map(|f| f.min_ts).min();
        let pending = s
            .pending
            .iter()
            .filter_map(|p| datafusion::arrow::compute::min(&self.ts(&p.batch)))
            .min();
        files.into_iter().chain(pending).min()
    }

    /// Takes a batch replayed from the log after a restart: only the rows whose partition does
    /// not hold position `pos` yet.
    pub fn replay(&self, pos: u64, batch: RecordBatch) {
        let mask: BooleanArray = {
            // The highest position each partition holds, found once for the batch.
            let held: BTreeMap<i64, u64> = self
                .state()
                .partitions
                .iter()
                .filter_map(|(p, fs)| Some((*p, fs.iter().map(|f| f.max_pos).max()?)))
                .collect();
            self.ts(&batch)
                .iter()
                .map(|t| {
                    Some(
                        t.is_some_and(|t| held.get(&self.partition_of(t)).is_none_or(|m| pos > *m)),
                    )
                })
                .collect()
        };
        let batch = if mask.true_count() == batch.num_rows() {
            batch
        } else {
            match filter_record_batch(&batch, &mask) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("history replay of {}: {e}", self.name);
                    return;
                }
            }
        };
        self.append(pos, batch);
    }

    /// Every log position up to this one is durable in history (or was never this relation's).
    pub fn durable_through(&self) -> u64 {
        let s = self.state();
        match s.pending.front() {
            Some(p) => p.pos.saturating_sub(1),
            None => s.seen,
        }
    }

    /// The files and pending rows a query reads.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.state();
        Snapshot {
            layout: self.layout.clone(),
            files: s
                .partitions
                .iter()
                .flat_map(|(p, fs)| fs.iter().map(move |f| (*p, f.clone())))
                .collect(),
            pending: s.pending.iter().map(|p| p.batch.clone()).collect(),
            partition_ms: self.spec.partition_ms(),
            written_through: self.mark(&s),
        }
    }

    pub fn stats(&self) -> Stats {
        let s = self.state();
        let all = s.partitions.values().flatten();
        Stats {
            horizon_ms: self.spec.horizon_ms,
            files: all.clone().count() as u64,
            rows: all.clone().map(|f| f.rows).sum(),
            bytes: all.map(|f| f.bytes).sum(),
            partitions: s.partitions.len() as u64,
            oldest_ms: s.partitions.values().flatten().map(|f| f.min_ts).min(),
            newest_ms: s.partitions.values().flatten().map(|f| f.max_ts).max(),
            pending_rows: s.pending_rows as u64,
            flush_lag_secs: s
                .pending
                .front()
                .map_or(0.0, |p| p.since.elapsed().as_secs_f64()),
            failing: s.failing.clone(),
        }
    }

    /// Whether pending rows should be written now: there are `rows` of them, or the oldest has
    /// waited `wait`.
    pub fn flush_due(&self, rows: usize, wait: std::time::Duration) -> bool {
        let s = self.state();
        s.pending_rows >= rows || s.pending.front().is_some_and(|p| p.since.elapsed() >= wait)
    }

    /// Writes every pending row to one new file per partition. On failure nothing is installed,
    /// the files already written by this flush are deleted, and the rows stay pending.
    pub fn flush(&self) -> io::Result<u64> {
        if self.is_removed() {
            return Ok(0);
        }
        let (batches, upto) = {
            let s = self.state();
            let Some(last) = s.pending.back() else {
                return Ok(0);
            };
            let upto = last.pos;
            let b: Vec<(u64, RecordBatch)> =
                s.pending.iter().map(|p| (p.pos, p.batch.clone())).collect();
            (b, upto)
        };
        // Rows by partition, with the positions they came from.
        let mut parts: BTreeMap<i64, (u64, u64, Vec<RecordBatch>)> = BTreeMap::new();
        for (pos, batch) in &batches {
            let ts = self.ts(batch);
            let keys: Vec<i64> = ts
                .iter()
                .map(|t| self.partition_of(t.unwrap_or(0)))
                .collect();
            let first = keys[0];
            if keys.iter().all(|k| *k == first) {
                let e = parts.entry(first).or_insert((*pos, *pos, Vec::new()));
                e.1 = *pos;
                e.2.push(batch.clone());
                continue;
            }
            let mut distinct = keys.clone();
            distinct.sort_unstable();
            distinct.dedup();
            for k in distinct {
                let mask: BooleanArray = keys.iter().map(|x| Some(*x == k)).collect();
                let part = filter_record_batch(batch, &mask).map_err(io::Error::other)?;
                let e = parts.entry(k).or_insert((*pos, *pos, Vec::new()));
                e.1 = *pos;
                e.2.push(part);
            }
        }
        if self.sort.get().is_none() {
            let rows: Vec<RecordBatch> = batches.iter().map(|(_, b)| b.clone()).collect();
            let order = files::choose_order(&self.spec.schema, self.spec.ts, &rows);
            files::write_order(&self.dir, &self.spec.schema, &order)?;
            let _ = self.sort.set(order);
        }
        let mut written: Vec<(i64, Arc<FileMeta>)> = Vec::new();
        let mut rows = 0;
        let result = (|| -> io::Result<()> {
            for (start, (min, max, batches)) in parts {
                let all = concat_batches(&self.spec.schema, &batches).map_err(io::Error::other)?;
                let sorted = files::sort_batch(&all, self.sort())?;
                let dir = self.dir.join(files::partition_name(start));
                let name = files::file_name(0, min, max);
                let mut once = Some(sorted);
                let c = files::write_file(
                    &dir,
                    &name,
                    &self.layout,
                    self.spec.ts,
                    self.series(),
                    || Ok(once.take()),
                )?;
                rows += c.rows;
                written.push((
                    start,
                    Arc::new(FileMeta::new(dir.join(name), 0, min, max, c)),
                ));
            }
            Ok(())
        })();
        let mut s = self.state();
        if let Err(e) = result {
            for (_, f) in &written {
                f.retire();
            }
            s.failing = Some(e.to_string());
            return Err(e);
        }
        s.failing = None;
        for (start, f) in written {
            s.partitions.entry(start).or_default().push(f);
        }
        while s.pending.front().is_some_and(|p| p.pos <= upto) {
            let p = s.pending.pop_front().expect("front");
            s.pending_rows -= p.batch.num_rows();
        }
        Ok(rows)
    }

    /// Deletes the partitions that end before `now - horizon`; returns how many.
    pub fn expire(&self, now_ms: i64) -> usize {
        let edge = now_ms.saturating_sub(self.spec.horizon_ms);
        let w = self.spec.partition_ms();
        let mut s = self.state();
        let old: Vec<i64> = s
            .partitions
            .keys()
            .copied()
            .filter(|p| p + w <= edge)
            .collect();
        for p in &old {
            for f in s.partitions.remove(p).unwrap_or_default() {
                f.retire();
            }
        }
        drop(s);
        // Directories of deleted partitions go once their files are gone (a query may still
        // hold some); empty ones left by a crash go too.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let held = files::parse_partition_name(&e.file_name().to_string_lossy())
                    .is_some_and(|p| self.state().partitions.contains_key(&p));
                if !held {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        old.len()
    }

    /// The next compaction to do, if any: `(partition, files, level)`. A closed partition (its
    /// end plus the late-row bound has passed) with more than one file is merged whole into one
    /// final file; in an open one, `fanout` neighbouring files of one level become one file of
    /// the next level.
    pub fn next_compaction(
        &self,
        now_ms: i64,
        fanout: usize,
    ) -> Option<(i64, Vec<Arc<FileMeta>>, u8)> {
        let w = self.spec.partition_ms();
        let s = self.state();
        for (p, fs) in &s.partitions {
            let closed = p + w + self.spec.late_ms <= now_ms;
            if closed {
                if fs.len() > 1 {
                    return Some((*p, sorted_by_pos(fs), files::FINAL_LEVEL));
                }
                continue;
            }
            let fs = sorted_by_pos(fs);
            let mut i = 0;
            while i < fs.len() {
                let level = fs[i].level;
                let run = fs[i..].iter().take_while(|f| f.level == level).count();
                if run >= fanout && level < files::FINAL_LEVEL - 1 {
                    return Some((*p, fs[i..i + fanout].to_vec(), level + 1));
                }
                i += run;
            }
        }
        None
    }

    /// Replaces `inputs` (neighbouring files of partition `start`) with `output`, once it is
    /// written. The inputs are deleted when no query holds them.
    pub fn install_compaction(&self, start: i64, inputs: &[Arc<FileMeta>], output: FileMeta) {
        let mut s = self.state();
        let Some(fs) = s.partitions.get_mut(&start) else {
            // The partition expired meanwhile.
            output.retire();
            return;
        };
        fs.retain(|f| !inputs.iter().any(|i| Arc::ptr_eq(i, f)));
        for i in inputs {
            i.retire();
        }
        fs.push(Arc::new(output));
    }

    /// The sort order of the relation's files (schema order until the first flush chose one).
    pub fn sort(&self) -> &[usize] {
        match self.sort.get() {
            Some(o) => o,
            None => &[],
        }
    }

    /// The columns whose change starts another series in the files: the sort columns but `ts`.
    pub fn series(&self) -> Vec<usize> {
        self.sort()
            .iter()
            .copied()
            .filter(|&i| i != self.spec.ts)
            .collect()
    }

    pub(crate) fn set_failing(&self, e: Option<String>) {
        self.state().failing = e;
    }
}

fn sorted_by_pos(fs: &[Arc<FileMeta>]) -> Vec<Arc<FileMeta>> {
    let mut v = fs.to_vec();
    v.sort_by_key(|f| f.min_pos);
    v
}
