//! A source's retained rows on one worker.
//!
//! Sources are append-only: rows arrive and leave when `ts + retain` passes. Each worker keeps its
//! share of a source as a log of the record batches pushed to it, each stamped with the logical
//! time it arrived at. The log is the one copy of the source's state: every dataflow that reads the
//! source replays it when it starts and then follows it, and peeks read it directly, so a hundred
//! rules on one source share one copy of its rows instead of each arranging their own.
//!
//! Entries leave the log once every row in them has expired and every reader has read them.
//!
//! Every worker's log of a source counts what it holds in the source's [`Retained`]: rows, and
//! the Arrow memory of their batches. The counts go up on append and down when entries leave (or
//! the log is dropped with its source), so they are exact at all times; the server budgets memory
//! with them (`--memory-limit`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;
use timely::scheduling::Activator;

use crate::error::Result;
use crate::window::{ts_bounds, BatchSeries, Numbering, WindowBatch};

pub(crate) struct Entry {
    pub time: u64,
    pub batch: RecordBatch,
    /// The oldest and newest `ts` of its rows.
    ts_range: (i64, i64),
    /// Its rows' series (for a source with text columns).
    series: Option<BatchSeries>,
    /// The time at which the last row of this entry expires.
    pub expires: i64,
    /// The batch's Arrow memory and its series numbers, as counted in [`Retained`].
    bytes: u64,
}

/// The memory a batch's rows take: each column's bytes within its slice. A batch decoded from
/// Arrow IPC (ingest, the write-ahead log) is a slice of one message buffer that every column
/// shares, and counting the buffer's whole capacity for each column would count it many times.
pub fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}

/// What one source holds on every worker: rows and the Arrow memory of their batches. The
/// engine-wide total of every source is kept beside it.
#[derive(Debug)]
pub struct Retained {
    rows: AtomicU64,
    bytes: AtomicU64,
    total: Arc<AtomicU64>,
}

impl Retained {
    pub(crate) fn new(total: Arc<AtomicU64>) -> Self {
        Retained {
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total,
        }
    }

    /// Rows retained now.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Bytes of Arrow memory retained now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, rows: u64, bytes: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, rows: u64, bytes: u64) {
        self.rows.fetch_sub(rows, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }
}

pub(crate) struct SourceLog {
    pub ts_col: usize,
    pub retain_ms: i64,
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    base_seq: u64,
    /// Every entry appended from now on has a time at least this.
    pub upper: u64,
    readers: Vec<(Weak<Cell<u64>>, Activator)>,
    retained: Arc<Retained>,
    /// The numbering of the source's series, made at the first batch (none without text
    /// columns).
    numbering: Option<Option<Numbering>>,
    /// When to see next whether the numbering holds mostly series gone from the log.
    renew_at: u64,
}

impl Drop for SourceLog {
    fn drop(&mut self) {
        for e in &self.entries {
            self.retained.sub(e.batch.num_rows() as u64, e.bytes);
        }
    }
}

impl SourceLog {
    pub fn new(ts_col: usize, retain_ms: i64, upper: u64, retained: Arc<Retained>) -> Self {
        SourceLog {
            ts_col,
            retain_ms,
            entries: VecDeque::new(),
            base_seq: 0,
            upper,
            readers: Vec::new(),
            retained,
            numbering: None,
            renew_at: 0,
        }
    }

    /// The `ts` column of a batch, in epoch milliseconds.
    pub fn ts_millis<'a>(
        &self,
        batch: &'a RecordBatch,
    ) -> &'a datafusion::arrow::array::PrimitiveArray<TimestampMillisecondType> {
        batch
            .column(self.ts_col)
            .as_primitive::<TimestampMillisecondType>()
    }

    pub fn append(&mut self, time: u64, batch: RecordBatch) {
        debug_assert!(time >= self.upper);
        let ts = self.ts_millis(&batch);
        let (min_ts, max_ts) = ts_bounds(ts);
        let expires = max_ts.saturating_add(self.retain_ms);
        let seq = self.base_seq + self.entries.len() as u64;
        let retained = &self.retained;
        let numbering = self.numbering.get_or_insert_with(|| {
            Numbering::new(batch.schema(), retained.clone()).unwrap_or_else(|e| {
                tracing::warn!("a source's series are not numbered: {e}");
                None
            })
        });
        let series = numbering.as_mut().and_then(|n| {
            n.number(&batch, seq)
                .map_err(|e| tracing::warn!("a batch's series are not numbered: {e}"))
                .ok()
        });
        let bytes = batch_bytes(&batch) + series.as_ref().map_or(0, BatchSeries::bytes);
        self.retained.add(batch.num_rows() as u64, bytes);
        self.entries.push_back(Entry {
            time,
            batch,
            ts_range: (min_ts, max_ts),
            series,
            expires,
            bytes,
        });
        self.wake_readers();
    }

    /// Every entry appended from now on has a time at least `upper`. The readers are not woken:
    /// a dataflow moves when it has something to do (see [`crate::wake`]).
    pub fn advance(&mut self, upper: u64) {
        self.upper = self.upper.max(upper);
    }

    /// Wakes every reader (it reads new entries and moves to the upper); forgets dropped ones.
    pub fn wake_readers(&mut self) {
        self.readers.retain(|(cursor, act)| {
            let alive = cursor.strong_count() > 0;
            if alive {
                act.activate();
            }
            alive
        });
    }

    /// Registers a reader starting at the beginning of the retained log; returns its cursor.
    pub fn register(&mut self, activator: Activator) -> Rc<Cell<u64>> {
        let cursor = Rc::new(Cell::new(self.base_seq));
        self.readers.push((Rc::downgrade(&cursor), activator));
        cursor
    }

    /// Entries from sequence number `from` on, and the sequence number after the last one.
    pub fn read_from(&self, from: u64) -> (impl Iterator<Item = &Entry>, u64) {
        let skip = from.saturating_sub(self.base_seq) as usize;
        (
            self.entries.iter().skip(skip),
            self.base_seq + self.entries.len() as u64,
        )
    }

    /// Drops entries whose rows have all expired by `hold` (at most the upper) and that every
    /// reader has read. `hold` is kept at or below the time of any peek still waiting.
    pub fn prune(&mut self, hold: u64) {
        let hold = hold.min(self.upper);
        if self
            .entries
            .front()
            .is_none_or(|front| front.expires > hold as i64)
        {
            return;
        }
        let min_cursor = self
            .readers
            .iter()
            .filter_map(|(c, _)| c.upgrade().map(|c| c.get()))
            .min()
            .unwrap_or(u64::MAX);
        while let Some(front) = self.entries.front() {
            if front.expires <= hold as i64 && self.base_seq < min_cursor {
                let e = self.entries.pop_front().expect("front");
                self.retained.sub(e.batch.num_rows() as u64, e.bytes);
                self.base_seq += 1;
            } else {
                break;
            }
        }
        // About once per turn of the log.
        if self.base_seq >= self.renew_at {
            self.renew_at = self.base_seq + (self.entries.len() as u64).max(64);
            if let Some(Some(n)) = &mut self.numbering {
                if let Err(e) = n.renew_if_sparse(self.base_seq) {
                    tracing::warn!("a source's series are not numbered again: {e}");
                }
            }
        }
    }

    /// The rows present at time `at`: arrived at or before `at` and not yet expired.
    pub fn peek(&self, at: u64) -> Result<Vec<WindowBatch>> {
        let mut out = Vec::new();
        // Rows from this `ts` on have not expired.
        let live = (at as i64).saturating_sub(self.retain_ms).saturating_add(1);
        for e in &self.entries {
            if e.time > at || e.expires <= at as i64 {
                continue;
            }
            let whole = WindowBatch {
                batch: e.batch.clone(),
                ts_range: Some(e.ts_range),
                series: e.series.clone(),
            };
            if let Some(w) = whole.within(self.ts_millis(&e.batch), live, i64::MAX)? {
                out.push(w);
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let v = Int64Array::from_iter_values(0..ts.len() as i64);
        let t = TimestampMillisecondArray::from(ts.to_vec()).with_timezone("UTC");
        RecordBatch::try_new(schema, vec![Arc::new(v), Arc::new(t)]).unwrap()
    }

    #[test]
    fn peeks_see_arrived_unexpired_rows_and_pruning_waits_for_peeks() {
        // Rows are retained 100 ms after their ts.
        let total = Arc::new(AtomicU64::new(0));
        let retained = Arc::new(Retained::new(total.clone()));
        let mut log = SourceLog::new(1, 100, 1_000, retained.clone());
        log.append(1_000, batch(&[950, 990]));
        log.advance(1_010);
        log.append(1_010, batch(&[1_005]));
        log.advance(1_020);
        let rows = |b: Vec<WindowBatch>| b.iter().map(|w| w.batch.num_rows()).sum::<usize>();
        assert_eq!(
            rows(log.peek(1_000).unwrap()),
            2,
            "the second batch arrived after 1000"
        );
        assert_eq!(rows(log.peek(1_060).unwrap()), 2, "ts 950 expired at 1050");
        assert_eq!(rows(log.peek(1_095).unwrap()), 1, "ts 990 expired at 1090");

        log.advance(1_200);
        // A peek still waiting at 1060 keeps what it needs.
        log.prune(1_060);
        assert_eq!(
            log.len(),
            2,
            "the first batch still has a live row (ts 990) at 1060"
        );
        assert_eq!(rows(log.peek(1_060).unwrap()), 2);
        assert_eq!(retained.rows(), 3);
        assert!(retained.bytes() > 0);
        log.prune(u64::MAX);
        assert_eq!(log.len(), 0, "everything expired by 1200");
        assert_eq!((retained.rows(), retained.bytes()), (0, 0));
        assert_eq!(total.load(Ordering::Relaxed), 0);
        log.append(1_200, batch(&[1_190]));
        assert_eq!(retained.rows(), 1);
        drop(log);
        assert_eq!(
            (retained.rows(), total.load(Ordering::Relaxed)),
            (0, 0),
            "a dropped source's rows are no longer counted"
        );
    }
}
