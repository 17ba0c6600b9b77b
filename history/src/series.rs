//! The series index of a history file: its runs of one series (rows with equal text columns,
//! neighbours because a file is sorted by them), each with the row it starts at.
//!
//! A query's filters on text columns are evaluated on the index, one row per series, instead of
//! on the rows: the rows of the series they select become the file's row selection, and the
//! Parquet reader decodes only the pages holding them. One series out of 20,000 reads 1/20,000
//! of a file, where the statistics of the pages alone would keep every page whose range of
//! hosts or metrics spans the value.
//!
//! The index is written into the file's footer (`tocsin.history.series`: an Arrow IPC stream of
//! the series columns and a `rows` column, zstd-compressed, in base64), so it is made with the
//! file and cannot disagree with it. Files of one relation usually hold the same series, so the
//! series columns of equal indexes are held once in memory (see [`SeriesKeys`]) and a query
//! evaluates its filters once per distinct set.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use base64::Engine;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::concat_batches;
#[cfg(test)]
use datafusion::arrow::compute::partition;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};

/// The footer key the index is stored under.
pub const KEY: &str = "tocsin.history.series";

/// The series columns of an index, one row per run, shared by every file whose runs are the
/// same series in the same order.
#[derive(Debug)]
pub struct SeriesKeys {
    pub batch: RecordBatch,
    hash: u64,
}

/// The runs of one file.
#[derive(Debug)]
pub struct SeriesIndex {
    pub keys: Arc<SeriesKeys>,
    /// Where each run starts, and the file's row count last.
    pub starts: Vec<u64>,
}

impl SeriesIndex {
    fn new(batch: RecordBatch, rows: &UInt64Array) -> Self {
        let mut starts = Vec::with_capacity(rows.len() + 1);
        let mut at = 0;
        starts.push(0);
        for n in rows.values() {
            at += n;
            starts.push(at);
        }
        SeriesIndex {
            keys: intern(batch),
            starts,
        }
    }

    /// The rows of the runs `selected` (one flag per run) as a selection over the whole file,
    /// or `None` when no run is selected.
    pub fn selection(&self, selected: &[bool]) -> Option<RowSelection> {
        let mut selectors = Vec::new();
        let mut at = 0u64;
        for (i, &s) in selected.iter().enumerate() {
            if !s {
                continue;
            }
            let (from, to) = (self.starts[i], self.starts[i + 1]);
            if from > at {
                selectors.push(RowSelector::skip((from - at) as usize));
            }
            if to > from {
                selectors.push(RowSelector::select((to - from) as usize));
            }
            at = to;
        }
        if !selectors.iter().any(|s| !s.skip) {
            return None;
        }
        let total = *self.starts.last().expect("starts has the row count");
        if total > at {
            selectors.push(RowSelector::skip((total - at) as usize));
        }
        Some(RowSelection::from(selectors))
    }

    /// The index as stored in a footer.
    pub fn to_footer(&self) -> io::Result<String> {
        let rows: UInt64Array = self.starts.windows(2).map(|w| w[1] - w[0]).collect();
        let keys = &self.keys.batch;
        let mut fields: Vec<Field> = keys
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("rows", DataType::UInt64, false));
        let mut columns = keys.columns().to_vec();
        columns.push(Arc::new(rows));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(io::Error::other)?;
        let mut ipc = Vec::new();
        let mut w = StreamWriter::try_new(&mut ipc, &batch.schema()).map_err(io::Error::other)?;
        w.write(&batch).map_err(io::Error::other)?;
        w.finish().map_err(io::Error::other)?;
        drop(w);
        let packed = zstd::bulk::compress(&ipc, 3)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(packed))
    }

    /// The index stored in a footer, checked against the file's row count and the relation's
    /// columns.
    pub fn from_footer(text: &str, file_rows: u64, relation: &Schema) -> io::Result<Self> {
        let bad = |why: &str| io::Error::other(format!("its series index {why}"));
        let packed = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| bad("is not base64"))?;
        let ipc = zstd::stream::decode_all(packed.as_slice())?;
        let mut r = StreamReader::try_new(ipc.as_slice(), None).map_err(io::Error::other)?;
        let batch = r
            .next()
            .ok_or_else(|| bad("is empty"))?
            .map_err(io::Error::other)?;
        let n = batch.num_columns();
        let keys = batch
            .project(&(0..n - 1).collect::<Vec<_>>())
            .map_err(io::Error::other)?;
        if keys.schema().fields().iter().any(|f| {
            relation
                .field_with_name(f.name())
                .map_or(true, |r| r.data_type() != f.data_type())
        }) {
            return Err(bad("has columns the relation does not have"));
        }
        let rows = batch
            .column(n - 1)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| bad("has no row counts"))?;
        let index = SeriesIndex::new(keys, rows);
        if index.starts.last() != Some(&file_rows) {
            return Err(bad("does not count the file's rows"));
        }
        Ok(index)
    }
}

/// Collects a file's runs from its sorted batches as they are written.
pub struct Builder {
    series: Vec<usize>,
    /// The index's columns: the series columns of the written batches.
    schema: SchemaRef,
    converter: RowConverter,
    /// The series of the last run so far, to join a run cut by a batch boundary.
    last: Option<OwnedRow>,
    keys: Vec<RecordBatch>,
    rows: Vec<u64>,
}

impl Builder {
    /// `series`: the columns of the written batches that make a series (not empty).
    pub fn new(schema: &Schema, series: Vec<usize>) -> io::Result<Self> {
        let fields = series
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let schema = Arc::new(schema.project(&series).map_err(io::Error::other)?);
        Ok(Builder {
            series,
            schema,
            converter: RowConverter::new(fields).map_err(io::Error::other)?,
            last: None,
            keys: Vec::new(),
            rows: Vec::new(),
        })
    }

    /// Adds the next batch; `runs`: its runs of one series (as [`partition`] finds them).
    pub fn push(&mut self, batch: &RecordBatch, runs: &[Range<usize>]) -> io::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let cols: Vec<ArrayRef> = self
            .series
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let mut runs = runs.to_vec();
        let first = self
            .converter
            .convert_columns(&cols.iter().map(|c| c.slice(0, 1)).collect::<Vec<_>>())
            .map_err(io::Error::other)?;
        if self.last.as_ref().is_some_and(|l| l.row() == first.row(0)) {
            let joined = runs.remove(0);
            *self.rows.last_mut().expect("a run") += joined.len() as u64;
        }
        if runs.is_empty() {
            return Ok(());
        }
        let starts: Vec<u64> = runs.iter().map(|r| r.start as u64).collect();
        let take = UInt64Array::from(starts);
        let picked: Vec<ArrayRef> = cols
            .iter()
            .map(|c| datafusion::arrow::compute::take(c, &take, None))
            .collect::<Result<_, _>>()
            .map_err(io::Error::other)?;
        self.keys
            .push(RecordBatch::try_new(self.schema.clone(), picked).map_err(io::Error::other)?);
        self.rows.extend(runs.iter().map(|r| r.len() as u64));
        let end = batch.num_rows() - 1;
        let last = self
            .converter
            .convert_columns(&cols.iter().map(|c| c.slice(end, 1)).collect::<Vec<_>>())
            .map_err(io::Error::other)?;
        self.last = Some(last.row(0).owned());
        Ok(())
    }

    /// The index of what was pushed; `None` if nothing was.
    pub fn finish(self) -> io::Result<Option<SeriesIndex>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let keys = concat_batches(&self.schema, &self.keys).map_err(io::Error::other)?;
        Ok(Some(SeriesIndex::new(keys, &UInt64Array::from(self.rows))))
    }
}

/// Equal series columns held once: the live key sets by hash.
fn intern(batch: RecordBatch) -> Arc<SeriesKeys> {
    static LIVE: OnceLock<Mutex<HashMap<u64, Vec<Weak<SeriesKeys>>>>> = OnceLock::new();
    let hash = hash_batch(&batch);
    let mut live = LIVE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    live.retain(|_, v| {
        v.retain(|w| w.strong_count() > 0);
        !v.is_empty()
    });
    let same = live.entry(hash).or_default();
    if let Some(k) = same
        .iter()
        .filter_map(Weak::upgrade)
        .find(|k| k.hash == hash && k.batch == batch)
    {
        return k;
    }
    let keys = Arc::new(SeriesKeys { batch, hash });
    same.push(Arc::downgrade(&keys));
    keys
}

fn hash_batch(batch: &RecordBatch) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x7069_6e64).build_hasher();
    batch.num_rows().hash(&mut h);
    for c in batch.columns() {
        match c.as_string_opt::<i32>() {
            Some(s) => {
                for v in s.iter() {
                    v.hash(&mut h);
                }
            }
            None => c.to_data().buffers().iter().for_each(|b| b.hash(&mut h)),
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn batch(hosts: &[&str], metrics: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("metric", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(hosts.to_vec())),
                Arc::new(StringArray::from(metrics.to_vec())),
                Arc::new(Int64Array::from_iter_values(0..hosts.len() as i64)),
            ],
        )
        .unwrap()
    }

    /// Runs cut by a batch boundary are one run; the footer form reads back to the same index;
    /// a selection covers exactly the rows of the selected runs.
    #[test]
    fn runs_round_trip_and_select() {
        let a = batch(&["a", "a", "b"], &["x", "x", "x"]);
        let b = batch(&["b", "b", "c"], &["x", "y", "y"]);
        let mut builder = Builder::new(&a.schema(), vec![0, 1]).unwrap();
        let runs = |b: &RecordBatch| {
            partition(&[b.column(0).clone(), b.column(1).clone()])
                .unwrap()
                .ranges()
        };
        builder.push(&a, &runs(&a)).unwrap();
        builder.push(&b, &runs(&b)).unwrap();
        let index = builder.finish().unwrap().unwrap();
        assert_eq!(index.starts, vec![0, 2, 4, 5, 6]);
        let keys = index.keys.batch.column(0).as_string::<i32>();
        assert_eq!(
            keys.iter().flatten().collect::<Vec<_>>(),
            ["a", "b", "b", "c"]
        );

        let text = index.to_footer().unwrap();
        let schema = index.keys.batch.schema();
        let back = SeriesIndex::from_footer(&text, 6, &schema).unwrap();
        assert_eq!(back.starts, index.starts);
        assert!(
            Arc::ptr_eq(&back.keys, &index.keys),
            "equal keys are held once"
        );
        assert!(SeriesIndex::from_footer(&text, 7, &schema).is_err());

        let s = index.selection(&[false, true, false, true]).unwrap();
        let selectors: Vec<RowSelector> = s.into();
        assert_eq!(
            selectors,
            [
                RowSelector::skip(2),
                RowSelector::select(2),
                RowSelector::skip(1),
                RowSelector::select(1)
            ]
        );
        assert!(index.selection(&[false; 4]).is_none());
    }
}
