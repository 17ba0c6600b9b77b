//! Arrow forms of a shared arrangement's batches, built once per batch on a worker and read by
//! every dataflow that maps or filters the arrangement.
//!
//! Many rules read one shared aggregation (see `crate::share`) and apply their own condition to its
//! changes. Each rule's map/filter evaluates vectorized on record batches; converting the changes
//! to Arrow once per arrangement batch, rather than once per rule, leaves each rule only its own
//! predicate to evaluate. An entry is evicted once every reader registered at the time has read it,
//! or when nothing but this cache holds the batch any more (its readers went away).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use differential_dataflow::trace::{Cursor, Navigable, TraceReader};

use super::{RowTrace, Time};
use crate::error::Result;
use crate::row::{rows_to_batch, Row};

/// A batch of an arrangement of rows.
pub(crate) type RowBatch = <RowTrace as TraceReader>::Batch;

/// One arrangement batch as Arrow: a row per update, with its time and multiplicity.
pub(crate) struct ArrowSpan {
    pub batch: RecordBatch,
    pub times: Vec<Time>,
    pub diffs: Vec<isize>,
}

impl ArrowSpan {
    fn build(batch: &RowBatch, schema: &SchemaRef) -> Result<ArrowSpan> {
        let (mut rows, mut times, mut diffs): (Vec<&Row>, Vec<Time>, Vec<isize>) =
            Default::default();
        let mut cursor = batch.cursor();
        while let Some(key) = cursor.get_key(batch) {
            while cursor.get_val(batch).is_some() {
                cursor.map_times(batch, |t, d| {
                    rows.push(key);
                    times.push(*t);
                    diffs.push(*d);
                });
                cursor.step_val(batch);
            }
            cursor.step_key(batch);
        }
        Ok(ArrowSpan {
            batch: rows_to_batch(schema, rows.iter().map(|r| &r[..]))?,
            times,
            diffs,
        })
    }
}

struct Entry {
    /// Holds the batch, so its address is not reused while the entry exists.
    pinned: RowBatch,
    span: Rc<ArrowSpan>,
    /// Readers that have not read it yet.
    unread: usize,
}

/// The cache of one worker.
#[derive(Default)]
pub(crate) struct ArrowSpans {
    entries: HashMap<usize, Entry>,
    /// Registered readers per relation.
    readers: HashMap<String, usize>,
}

/// Keeps a reader registered while it lives.
pub(crate) struct Reader {
    cache: Rc<RefCell<ArrowSpans>>,
    relation: String,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut c = self.cache.borrow_mut();
        if let Some(n) = c.readers.get_mut(&self.relation) {
            *n -= 1;
            if *n == 0 {
                c.readers.remove(&self.relation);
            }
        }
    }
}

impl Reader {
    pub fn new(cache: &Rc<RefCell<ArrowSpans>>, relation: &str) -> Reader {
        *cache
            .borrow_mut()
            .readers
            .entry(relation.to_string())
            .or_default() += 1;
        Reader {
            cache: cache.clone(),
            relation: relation.to_string(),
        }
    }

    /// The Arrow form of `batch` (of this reader's relation, whose rows have `schema`).
    pub fn read(&self, batch: &RowBatch, schema: &SchemaRef) -> Result<Rc<ArrowSpan>> {
        let mut c = self.cache.borrow_mut();
        let id = Rc::as_ptr(batch) as *const () as usize;
        if let Some(e) = c.entries.get_mut(&id) {
            let span = e.span.clone();
            e.unread = e.unread.saturating_sub(1);
            if e.unread == 0 {
                c.entries.remove(&id);
            }
            return Ok(span);
        }
        let span = Rc::new(ArrowSpan::build(batch, schema)?);
        let unread = c.readers.get(&self.relation).copied().unwrap_or(1) - 1;
        c.entries
            .retain(|_, e| e.unread > 0 && Rc::strong_count(&e.pinned) > 1);
        if unread > 0 {
            c.entries.insert(
                id,
                Entry {
                    pinned: batch.clone(),
                    span: span.clone(),
                    unread,
                },
            );
        }
        Ok(span)
    }
}
