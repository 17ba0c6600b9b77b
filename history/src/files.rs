//! History files: Parquet files of one partition (a span of `ts`), named after the level they
//! were made at and the range of write-ahead-log positions whose rows they hold:
//! `LL-MINPOS-MAXPOS.parquet` in hexadecimal, inside a directory named after the partition's
//! start (`2026-12-06T2100Z`).
//!
//! A file is written under a hidden temporary name, synced, renamed into place and its directory
//! synced, so a crash leaves either the whole file or none of it (the temporary is deleted at the
//! next start). Rows in a file are sorted by the relation's text columns and then `ts`, so one
//! series is a run of neighbouring rows, compresses well and is found through the page index.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::{lexsort_to_indices, max, min, take_record_batch, SortColumn};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use datafusion::parquet::schema::types::ColumnPath;

use crate::encode::{Encoder, Layout, Part};
use crate::series::{self, SeriesIndex};

/// The level of a file that holds a whole closed partition.
pub const FINAL_LEVEL: u8 = 99;

/// A history file in use. When a compaction or the horizon retires it, it is marked obsolete and
/// deleted once no query holds it any more.
#[derive(Debug)]
pub struct FileMeta {
    pub path: PathBuf,
    pub level: u8,
    pub min_pos: u64,
    pub max_pos: u64,
    pub rows: u64,
    pub bytes: u64,
    /// The oldest and newest `ts` in the file.
    pub min_ts: i64,
    pub max_ts: i64,
    /// Where each series' rows are (none in files written before there was an index).
    pub series: Option<SeriesIndex>,
    obsolete: AtomicBool,
}

/// What a written or loaded file holds.
#[derive(Debug)]
pub struct Contents {
    pub rows: u64,
    pub bytes: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub series: Option<SeriesIndex>,
}

impl FileMeta {
    pub fn new(path: PathBuf, level: u8, min_pos: u64, max_pos: u64, c: Contents) -> Self {
        FileMeta {
            path,
            level,
            min_pos,
            max_pos,
            rows: c.rows,
            bytes: c.bytes,
            min_ts: c.min_ts,
            max_ts: c.max_ts,
            series: c.series,
            obsolete: AtomicBool::new(false),
        }
    }

    /// Deletes the file once the last holder lets go of it.
    pub fn retire(&self) {
        self.obsolete.store(true, Ordering::Relaxed);
    }
}

impl Drop for FileMeta {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Relaxed) {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("history: cannot delete {}: {e}", self.path.display());
                }
            }
        }
    }
}

pub fn file_name(level: u8, min_pos: u64, max_pos: u64) -> String {
    format!("{level:02}-{min_pos:016x}-{max_pos:016x}.parquet")
}

/// `(level, min_pos, max_pos)` of a file name made by [`file_name`].
pub fn parse_file_name(name: &str) -> Option<(u8, u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let mut parts = stem.split('-');
    let level = parts.next().filter(|p| p.len() == 2)?.parse().ok()?;
    let min = u64::from_str_radix(parts.next().filter(|p| p.len() == 16)?, 16).ok()?;
    let max = u64::from_str_radix(parts.next().filter(|p| p.len() == 16)?, 16).ok()?;
    (parts.next().is_none() && min <= max).then_some((level, min, max))
}

const PARTITION_FORMAT: &str = "%Y-%m-%dT%H%MZ";

pub fn partition_name(start_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(start_ms)
        .map(|t| t.format(PARTITION_FORMAT).to_string())
        .unwrap_or_else(|| format!("{start_ms}"))
}

pub fn parse_partition_name(name: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(name, PARTITION_FORMAT)
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// How file columns are encoded (see [`crate::encode`] for what they hold): zstd throughout;
/// text as dictionaries, with statistics per page so a query skips the pages of other series;
/// stored numbers (`#m`) as deltas; each run's shift and kind (`#c`, `#k`) as dictionaries,
/// which store a run once; the doubles kept as they are (`#r`) plain.
pub fn writer_properties(layout: &Layout) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("zstd level 3"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
        .set_data_page_row_count_limit(8 * 1024);
    for (f, part) in layout.physical.fields().iter().zip(layout.parts()) {
        let col = ColumnPath::from(f.name().as_str());
        b = match (part, f.data_type()) {
            (Part::Stored, _) => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_statistics_enabled(col.clone(), EnabledStatistics::None)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED),
            (Part::Shift | Part::Kind, _) => b
                .set_column_dictionary_enabled(col.clone(), true)
                .set_column_statistics_enabled(col, EnabledStatistics::None),
            (Part::Raw, _) | (Part::AsIs, DataType::Float64 | DataType::Float32) => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_statistics_enabled(col.clone(), EnabledStatistics::None)
                .set_column_encoding(col, Encoding::PLAIN),
            (Part::AsIs, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                b.set_column_dictionary_enabled(col, true)
            }
            (Part::AsIs, DataType::Int32 | DataType::Int16 | DataType::Int8) => b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED),
            _ => b,
        };
    }
    b.build()
}

/// A timestamp column in epoch milliseconds, whatever its unit (a rollup's `ts` has the unit
/// its query gives it).
pub fn ts_millis(col: &ArrayRef) -> PrimitiveArray<TimestampMillisecondType> {
    match col.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            col.as_primitive::<TimestampMillisecondType>().clone()
        }
        _ => cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .map(|c| c.as_primitive::<TimestampMillisecondType>().clone())
            .unwrap_or_else(|_| PrimitiveArray::new_null(col.len())),
    }
}

/// The text columns of a schema, in schema order.
pub fn text_columns(schema: &SchemaRef) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8))
        .map(|(i, _)| i)
        .collect()
}

/// The columns rows are sorted by: the text columns with the fewest distinct values in `rows`
/// first (a metric before a host: one metric of every host is then a run of neighbouring rows,
/// as is one series), then `ts`.
pub fn choose_order(schema: &SchemaRef, ts: usize, rows: &[RecordBatch]) -> Vec<usize> {
    let mut text: Vec<(usize, usize)> = text_columns(schema)
        .into_iter()
        .map(|c| {
            let mut seen = std::collections::HashSet::new();
            for b in rows {
                if let Some(a) = b.column(c).as_string_opt::<i32>() {
                    seen.extend(a.iter());
                }
            }
            (seen.len(), c)
        })
        .collect();
    text.sort();
    text.into_iter().map(|(_, c)| c).chain([ts]).collect()
}

/// The order a relation's files are sorted in, kept in `DIR/order` (column names, one per
/// line) from its first flush on.
pub fn read_order(dir: &Path, schema: &SchemaRef) -> Option<Vec<usize>> {
    let text = fs::read_to_string(dir.join("order")).ok()?;
    text.lines()
        .map(|n| schema.index_of(n.trim()).ok())
        .collect()
}

/// Writes the order file into the relation's directory, which must exist: a relation dropped
/// meanwhile is not brought back.
pub fn write_order(dir: &Path, schema: &SchemaRef, order: &[usize]) -> io::Result<()> {
    let text: String = order
        .iter()
        .map(|&i| format!("{}\n", schema.field(i).name()))
        .collect();
    let tmp = dir.join(".order.tmp");
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join("order"))?;
    File::open(dir)?.sync_all()
}

/// A batch sorted by `columns` (ascending, nulls first).
///
/// The text columns of a flush hold few distinct values over many rows (hosts, metrics): each
/// value is replaced by its rank among the batch's distinct values, and the ranks and `ts` are
/// packed into one integer key per row, which sorts many times faster than comparing strings
/// row against row. Columns that do not pack into 128 bits are sorted by Arrow's `lexsort`.
pub fn sort_batch(batch: &RecordBatch, columns: &[usize]) -> io::Result<RecordBatch> {
    let indices = match packed_keys(batch, columns) {
        Some(mut keys) => {
            keys.sort_unstable();
            UInt32Array::from_iter_values(keys.into_iter().map(|(_, i)| i))
        }
        None => {
            let keys: Vec<SortColumn> = columns
                .iter()
                .map(|&i| SortColumn {
                    values: batch.column(i).clone(),
                    options: None,
                })
                .collect();
            lexsort_to_indices(&keys, None).map_err(io::Error::other)?
        }
    };
    take_record_batch(batch, &indices).map_err(io::Error::other)
}

/// Each row's sort key (the columns' order-preserving codes, packed) and its index; none if the
/// columns do not pack.
fn packed_keys(batch: &RecordBatch, columns: &[usize]) -> Option<Vec<(u128, u32)>> {
    let n = batch.num_rows();
    u32::try_from(n).ok()?;
    let mut parts: Vec<(Vec<u64>, u32)> = Vec::new();
    for &c in columns {
        let a = batch.column(c);
        if let Some(s) = a.as_string_opt::<i32>() {
            // Codes in order of first sight, then ranks in string order (0 for null).
            let mut seen: std::collections::HashMap<&str, u64> = Default::default();
            let mut first: Vec<&str> = Vec::new();
            let codes: Vec<u64> = s
                .iter()
                .map(|v| {
                    v.map_or(0, |v| {
                        *seen.entry(v).or_insert_with(|| {
                            first.push(v);
                            first.len() as u64
                        })
                    })
                })
                .collect();
            let mut order: Vec<usize> = (0..first.len()).collect();
            order.sort_unstable_by_key(|&i| first[i]);
            let mut rank = vec![0u64; first.len() + 1];
            for (r, &i) in order.iter().enumerate() {
                rank[i + 1] = r as u64 + 1;
            }
            let bits = 64 - (first.len() as u64).leading_zeros();
            parts.push((codes.into_iter().map(|c| rank[c as usize]).collect(), bits));
        } else if matches!(a.data_type(), DataType::Timestamp(..) | DataType::Int64)
            && a.null_count() == 0
        {
            let data = a.to_data();
            let values: &[i64] = data.buffer::<i64>(0);
            parts.push((values.iter().map(|v| (*v as u64) ^ (1 << 63)).collect(), 64));
        } else {
            return None;
        }
    }
    if parts.iter().map(|(_, b)| *b).sum::<u32>() > 128 {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let key = parts
                    .iter()
                    .fold(0u128, |k, (v, bits)| (k << bits) | v[i] as u128);
                (key, i as u32)
            })
            .collect(),
    )
}

/// The file metadata key that marks a history file and holds its `ts` range (epoch ms).
const TS_RANGE: &str = "tocsin.history.ts";

/// Rows encoded and handed to the Parquet writer at a time.
const WRITE_ROWS: usize = 64 * 1024;

/// Writes the rows `next` gives (already in order, as the relation's columns) as the file `name`
/// in `dir`, whole or not at all. `ts` is the timestamp column; `series` are the columns whose
/// change starts another series.
pub fn write_file(
    dir: &Path,
    name: &str,
    layout: &Layout,
    ts: usize,
    series: Vec<usize>,
    mut next: impl FnMut() -> io::Result<Option<RecordBatch>>,
) -> io::Result<Contents> {
    // The partition's directory, inside the relation's, which must exist: a write racing the
    // relation's DROP fails rather than bring its directory back.
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = ArrowWriter::try_new(
            file,
            layout.physical.clone(),
            Some(writer_properties(layout)),
        )
        .map_err(io::Error::other)?;
        let mut index = match series.is_empty() {
            true => None,
            false => Some(series::Builder::new(&layout.logical, series.clone())?),
        };
        let mut encoder = Encoder::new(layout, series);
        let (mut rows, mut min_ts, mut max_ts) = (0u64, i64::MAX, i64::MIN);
        while let Some(b) = next()? {
            rows += b.num_rows() as u64;
            let t = ts_millis(b.column(ts));
            min_ts = min_ts.min(min(&t).unwrap_or(i64::MAX));
            max_ts = max_ts.max(max(&t).unwrap_or(i64::MIN));
            // In slices, so the encoded columns are allocated in pieces the allocator reuses
            // rather than as fresh memory the size of a whole flush.
            for at in (0..b.num_rows()).step_by(WRITE_ROWS) {
                let b = b.slice(at, WRITE_ROWS.min(b.num_rows() - at));
                let runs = encoder.runs(&b)?;
                if let Some(index) = &mut index {
                    index.push(&b, &runs)?;
                }
                w.write(&encoder.encode_runs(&b, &runs)?)
                    .map_err(io::Error::other)?;
            }
        }
        w.append_key_value_metadata(KeyValue::new(
            TS_RANGE.to_string(),
            format!("{min_ts} {max_ts}"),
        ));
        let index = match index {
            Some(b) => b.finish()?,
            None => None,
        };
        if let Some(index) = &index {
            w.append_key_value_metadata(KeyValue::new(series::KEY.to_string(), index.to_footer()?));
        }
        let file = w.into_inner().map_err(io::Error::other)?;
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        Ok(Contents {
            rows,
            bytes,
            min_ts,
            max_ts,
            series: index,
        })
    })();
    match result {
        Ok(done) => {
            fs::rename(&tmp, dir.join(name))?;
            File::open(dir)?.sync_all()?;
            Ok(done)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What a history file holds, read from its footer; an error if it is not a history file of
/// this layout.
pub fn footer(path: &Path, layout: &Layout) -> io::Result<Contents> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    let reader = SerializedFileReader::new(file).map_err(io::Error::other)?;
    let meta = reader.metadata().file_metadata();
    let names: Vec<String> = meta
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    if !layout.matches(&names) {
        return Err(io::Error::other(
            "its columns are not the ones this relation writes",
        ));
    }
    let kv = |key: &str| {
        meta.key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == key))
            .and_then(|kv| kv.value.as_deref())
    };
    let range = kv(TS_RANGE)
        .and_then(|v| v.split_once(' '))
        .and_then(|(lo, hi)| Some((lo.parse().ok()?, hi.parse().ok()?)))
        .ok_or_else(|| io::Error::other("it has no ts range in its metadata"))?;
    let rows = meta.num_rows().max(0) as u64;
    let series = kv(series::KEY)
        .map(|text| SeriesIndex::from_footer(text, rows, &layout.logical))
        .transpose()?;
    Ok(Contents {
        rows,
        bytes,
        min_ts: range.0,
        max_ts: range.1,
        series,
    })
}

/// The files of one partition directory as found at start: temporaries are deleted, files that
/// are not history files or cannot be read are skipped with a warning, and a file whose position
/// range lies inside another's is deleted (the input of a compaction that was cut short after
/// its output was in place).
pub fn load_partition(dir: &Path, layout: &Layout) -> io::Result<Vec<Arc<FileMeta>>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some((level, min, max)) = parse_file_name(&name) else {
            tracing::warn!("history: skipped {}: not a history file", path.display());
            continue;
        };
        match footer(&path, layout) {
            Ok(c) => found.push(FileMeta::new(path, level, min, max, c)),
            Err(e) => tracing::warn!("history: skipped {}: {e}", path.display()),
        }
    }
    found.sort_by_key(|f| (f.min_pos, std::cmp::Reverse(f.max_pos)));
    let mut kept: Vec<Arc<FileMeta>> = Vec::new();
    for f in found {
        if kept.last().is_some_and(|k| f.max_pos <= k.max_pos) {
            tracing::info!(
                "history: {} was merged into {} before a restart; deleting it",
                f.path.display(),
                kept.last().expect("last").path.display()
            );
            f.retire();
            continue;
        }
        kept.push(Arc::new(f));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = file_name(3, 0x1_0000_0002, 0x2_0000_0000);
        assert_eq!(n, "03-0000000100000002-0000000200000000.parquet");
        assert_eq!(parse_file_name(&n), Some((3, 0x1_0000_0002, 0x2_0000_0000)));
        assert_eq!(parse_file_name("03-2-1.parquet"), None);
        assert_eq!(parse_file_name("notes.txt"), None);
        let p = 1_796_547_600_000; // 2026-12-06T09:00Z
        assert_eq!(partition_name(p), "2026-12-06T0900Z");
        assert_eq!(parse_partition_name(&partition_name(p)), Some(p));
    }

    /// Sorting by packed ranks orders the key columns exactly as Arrow's lexsort does.
    #[test]
    fn packed_sort_orders_as_lexsort() {
        use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let mut x: u64 = 7;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 5000;
        let word = |r: u64| match r % 9 {
            0 => None,
            1 => Some(String::new()),
            2 => Some("é".to_string()),
            k => Some(format!("host-{}", (r / 9) % (k * 7))),
        };
        let a: Vec<Option<String>> = (0..n).map(|_| word(rand())).collect();
        let b: Vec<Option<String>> = (0..n).map(|_| word(rand())).collect();
        let ts: Vec<i64> = (0..n).map(|_| (rand() % 2000) as i64 - 1000).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(a)),
                Arc::new(StringArray::from(b)),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
        )
        .unwrap();
        for order in [vec![0, 1, 2], vec![1, 0, 2], vec![2, 0]] {
            assert!(packed_keys(&batch, &order).is_some());
            let fast = sort_batch(&batch, &order).unwrap();
            let keys: Vec<SortColumn> = order
                .iter()
                .map(|&i| SortColumn {
                    values: batch.column(i).clone(),
                    options: None,
                })
                .collect();
            let slow =
                take_record_batch(&batch, &lexsort_to_indices(&keys, None).unwrap()).unwrap();
            for &c in &order {
                assert_eq!(
                    fast.column(c).as_ref(),
                    slow.column(c).as_ref(),
                    "{order:?}"
                );
            }
        }
    }
}
