//! The write-ahead log of accepted rows: numbered segment files in `DATA_DIR/wal`, each a
//! sequence of records holding one batch as an Arrow IPC stream, tagged with its source and the
//! source's generation. Batches are appended and synced in groups (group commit) before they are
//! acknowledged. Sources with different retentions write to different segments, and a segment is
//! deleted once every row in it is past its source's retention (or its source is gone), so a
//! source kept for a week never holds the segments of one kept for minutes. At start the
//! remaining segments are re-fed to the sources.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::time::Instant;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::max;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::ipc::reader::StreamReader;

use tocsin_connectors::push::write_arrow_stream;

use crate::records::{read_records, RecordWriter};

/// A segment is closed once it holds this many bytes ...
const SEGMENT_BYTES: u64 = 64 << 20;
/// ... or is this old, so that retention can delete old rows soon after they expire.
const SEGMENT_SECS: u64 = 30;

/// The newest `ts` and the last record's position per (source, generation) in a segment.
type Newest = HashMap<(String, u64), (i64, u64)>;

/// A record's position in the log: its segment and its index in the segment. A source always
/// writes to the segments of its retention, one after the other, so its positions grow.
pub fn position(segment: u64, record: u32) -> u64 {
    (segment << 32) | record as u64
}

/// The segment being written for one retention.
struct Lane {
    writer: RecordWriter,
    id: u64,
    records: u32,
    newest: Newest,
    opened: Instant,
    unsynced: bool,
}

pub struct Wal {
    dir: PathBuf,
    /// The next record's `lsn`: this start's incarnation in the high bits, a count below.
    next_lsn: u64,
    /// The newest `seq` recorded of each other replica (the replicas' rows this one holds).
    pub marks: HashMap<String, u64>,
    /// The open segment of each retention (ms) written since its last roll.
    lanes: BTreeMap<i64, Lane>,
    next_id: u64,
    closed: BTreeMap<u64, Newest>,
    /// Bytes appended since start.
    pub bytes: u64,
    pub syncs: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

/// The first eight bytes of a record that carries a [`Stamp`] (a record without one begins with
/// its generation, which is never `u64::MAX`).
const STAMPED: u64 = u64::MAX;
/// The version of the stamped record format.
const STAMP_VERSION: u8 = 2;
/// Flag bit: the record's rows are shared with the other replicas.
const REPLICATED: u8 = 1;

/// Where a record's rows came from, written ahead of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stamp {
    /// This replica's number for the record: it grows with every record written, across
    /// restarts (see [`Wal::open`]).
    pub lsn: u64,
    /// The replica that accepted the rows from a client; `None`: this one.
    pub origin: Option<String>,
    /// The origin's number for the batch (its `lsn`); for a record of this replica, `lsn`.
    pub seq: u64,
    /// When the origin accepted the batch, epoch ms.
    pub at: i64,
    /// Whether the rows are shared with the other replicas (pushed rows are; rows of collectors
    /// every replica runs, and tocsin's own relations, are not).
    pub replicated: bool,
}

/// A record's header: its stamp (records written before stamps have `lsn` 0), source and
/// generation, and where its Arrow IPC stream begins in the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub stamp: Stamp,
    pub generation: u64,
    pub source: String,
    pub body: usize,
}

/// A record's payload: the stamp, source and generation, and the batch as an Arrow IPC stream.
pub fn encode(
    source: &str,
    generation: u64,
    stamp: &Stamp,
    batch: &RecordBatch,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128 + batch.get_array_memory_size());
    let origin = stamp.origin.as_deref().unwrap_or("");
    if origin.len() > u8::MAX as usize {
        return Err(io::Error::other("replica id longer than 255 bytes"));
    }
    out.extend_from_slice(&STAMPED.to_le_bytes());
    out.push(STAMP_VERSION);
    out.push(if stamp.replicated { REPLICATED } else { 0 });
    out.extend_from_slice(&stamp.lsn.to_le_bytes());
    out.extend_from_slice(&stamp.seq.to_le_bytes());
    out.extend_from_slice(&stamp.at.to_le_bytes());
    out.push(origin.len() as u8);
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(source.len() as u16).to_le_bytes());
    out.extend_from_slice(source.as_bytes());
    write_arrow_stream(&mut out, std::slice::from_ref(batch)).map_err(io::Error::other)?;
    Ok(out)
}

/// Reads a record's header (of either format) without its rows.
pub fn header(payload: &[u8]) -> io::Result<Header> {
    let bad = || io::Error::other("WAL record is malformed");
    let mut at = 0usize;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let s = payload.get(at..at + n).ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let first = u64_of(take(8)?);
    let (stamp, generation) = if first == STAMPED {
        let version = take(1)?[0];
        if version != STAMP_VERSION {
            return Err(io::Error::other(format!(
                "WAL record of unknown version {version}"
            )));
        }
        let flags = take(1)?[0];
        let lsn = u64_of(take(8)?);
        let seq = u64_of(take(8)?);
        let at = u64_of(take(8)?) as i64;
        let n = take(1)?[0] as usize;
        let origin = std::str::from_utf8(take(n)?).map_err(|_| bad())?;
        let stamp = Stamp {
            lsn,
            origin: (!origin.is_empty()).then(|| origin.to_string()),
            seq,
            at,
            replicated: flags & REPLICATED != 0,
        };
        (stamp, u64_of(take(8)?))
    } else {
        (Stamp::default(), first)
    };
    let n = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let source = std::str::from_utf8(take(n)?)
        .map_err(|_| bad())?
        .to_string();
    Ok(Header {
        stamp,
        generation,
        source,
        body: at,
    })
}

/// The batches of a record's Arrow IPC stream (the payload from [`Header::body`]).
pub fn batches(body: &[u8]) -> io::Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(Cursor::new(body), None).map_err(io::Error::other)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)
}

fn decode(payload: &[u8]) -> io::Result<(Header, Vec<RecordBatch>)> {
    let h = header(payload)?;
    let b = batches(&payload[h.body..])?;
    Ok((h, b))
}

/// Records the newest `ts` of a batch of a source, at position `pos`, in a segment's map.
fn note_newest(newest: &mut Newest, source: &str, generation: u64, pos: u64, batch: &RecordBatch) {
    let t = batch
        .schema()
        .index_of("ts")
        .ok()
        .and_then(|i| {
            batch
                .column(i)
                .as_primitive_opt::<TimestampMillisecondType>()
                .and_then(max)
        })
        .unwrap_or(i64::MIN);
    let e = newest
        .entry((source.to_string(), generation))
        .or_insert((t, pos));
    *e = (e.0.max(t), e.1.max(pos));
}

/// How many low bits of an `lsn` count records within one incarnation (a start of the log).
const INCARNATION_SHIFT: u32 = 40;

/// Reads, advances and durably writes the log's incarnation (`DATA_DIR/wal/incarnation`), so
/// that every start numbers its records above the last one's whether or not its segments are
/// still there.
fn next_incarnation(dir: &Path) -> io::Result<u64> {
    let path = dir.join("incarnation");
    let last = match fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse::<u64>()
            .map_err(|_| io::Error::other(format!("{} does not hold a number", path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = last + 1;
    if next >= 1 << (64 - INCARNATION_SHIFT) {
        return Err(io::Error::other("the WAL's incarnations are exhausted"));
    }
    let tmp = dir.join("incarnation.tmp");
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(next)
}

/// What [`Wal::append`] wrote: the record's position, and its payload (what a replica is sent).
pub struct Appended {
    pub pos: u64,
    pub payload: Vec<u8>,
}

/// A replayed batch: its source, generation and position, and whether it is to be fed to
/// the engine (segments before `replay_from` are read for history and deletion only).
pub struct Replayed<'a> {
    pub source: &'a str,
    pub generation: u64,
    pub pos: u64,
    pub batch: RecordBatch,
    pub in_memory: bool,
}

/// Whether a closed segment's rows may all go: for each source in it, `keep(source,
/// generation, newest ts, last position)` says whether it still needs them.
pub type Keep<'a> = dyn Fn(&str, u64, i64, u64) -> bool + 'a;

impl Wal {
    /// Opens the log in `dir`, feeding every batch in the order they were written for each
    /// source; those of segments before `replay_from` are marked as not for the engine (see
    /// `memory::segments_to_skip`): history may still need them.
    pub fn open(
        dir: &Path,
        replay_from: u64,
        mut feed: impl FnMut(Replayed<'_>),
    ) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let incarnation = next_incarnation(dir)?;
        let mut marks = HashMap::new();
        let mut closed = BTreeMap::new();
        for &id in &ids {
            let path = segment_path(dir, id);
            let records = read_records(&path)?;
            if let Some(torn) = records.torn {
                tracing::warn!(
                    "WAL segment {}: dropped a torn last record: {torn}",
                    path.display()
                );
            }
            let mut newest = Newest::new();
            for (index, p) in records.payloads.iter().enumerate() {
                let pos = position(id, index as u32);
                match decode(p) {
                    Ok((h, batches)) => {
                        if let Some(o) = &h.stamp.origin {
                            let m = marks.entry(o.clone()).or_insert(0);
                            *m = (*m).max(h.stamp.seq);
                        }
                        let (name, generation) = (h.source, h.generation);
                        for b in batches {
                            note_newest(&mut newest, &name, generation, pos, &b);
                            feed(Replayed {
                                source: &name,
                                generation,
                                pos,
                                batch: b,
                                in_memory: id >= replay_from,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!("WAL segment {}: skipped a record: {e}", path.display())
                    }
                }
            }
            closed.insert(id, newest);
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            next_lsn: incarnation << INCARNATION_SHIFT,
            marks,
            lanes: BTreeMap::new(),
            next_id: ids.last().map_or(1, |l| l + 1),
            closed,
            bytes: 0,
            syncs: 0,
        })
    }

    /// Appends a batch of a source retained `retain_ms` (durable after the next `sync`); returns
    /// its position. Rows of sources with different retentions go to different segments, so
    /// that a segment is deleted when its rows expire, however long other sources keep theirs.
    pub fn append(
        &mut self,
        source: &str,
        generation: u64,
        retain_ms: i64,
        batch: &RecordBatch,
        stamp: &mut Stamp,
    ) -> io::Result<Appended> {
        stamp.lsn = self.next_lsn;
        if stamp.origin.is_none() {
            stamp.seq = stamp.lsn;
        }
        let payload = encode(source, generation, stamp, batch)?;
        let lane = match self.lanes.entry(retain_ms) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let id = self.next_id;
                self.next_id += 1;
                v.insert(Lane {
                    writer: RecordWriter::append_to(&segment_path(&self.dir, id))?,
                    id,
                    records: 0,
                    newest: Newest::new(),
                    opened: Instant::now(),
                    unsynced: false,
                })
            }
        };
        lane.writer.append(&payload)?;
        let pos = position(lane.id, lane.records);
        lane.records += 1;
        lane.unsynced = true;
        note_newest(&mut lane.newest, source, generation, pos, batch);
        self.bytes += payload.len() as u64;
        if lane.records == u32::MAX {
            self.close(retain_ms)?;
        }
        self.next_lsn += 1;
        if let Some(o) = &stamp.origin {
            let m = self.marks.entry(o.clone()).or_insert(0);
            *m = (*m).max(stamp.seq);
        }
        Ok(Appended { pos, payload })
    }

    /// Makes every appended batch durable.
    pub fn sync(&mut self) -> io::Result<()> {
        for lane in self.lanes.values_mut().filter(|l| l.unsynced) {
            lane.writer.sync()?;
            lane.unsynced = false;
            self.syncs += 1;
        }
        Ok(())
    }

    /// Closes segments that are big or old enough, and deletes closed segments none of whose
    /// sources still needs their rows (see [`Keep`]). Returns the number of segments deleted.
    pub fn maintain(&mut self, keep: &Keep<'_>) -> io::Result<usize> {
        let full: Vec<i64> = self
            .lanes
            .iter()
            .filter(|(_, l)| {
                l.writer.len() >= SEGMENT_BYTES || l.opened.elapsed().as_secs() >= SEGMENT_SECS
            })
            .map(|(r, _)| *r)
            .collect();
        for r in full {
            self.close(r)?;
        }
        let expired: Vec<u64> = self
            .closed
            .iter()
            .filter(|(_, newest)| {
                !newest
                    .iter()
                    .any(|((s, g), (t, pos))| keep(s, *g, *t, *pos))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            fs::remove_file(segment_path(&self.dir, *id))?;
            self.closed.remove(id);
        }
        Ok(expired.len())
    }

    /// Closes the open segment of retention `r`: the next batch of that retention starts another.
    fn close(&mut self, r: i64) -> io::Result<()> {
        if let Some(mut lane) = self.lanes.remove(&r) {
            if lane.unsynced {
                lane.writer.sync()?;
                self.syncs += 1;
            }
            self.closed.insert(lane.id, lane.newest);
        }
        Ok(())
    }

    /// Closes every open segment.
    pub fn roll(&mut self) -> io::Result<()> {
        let open: Vec<i64> = self.lanes.keys().copied().collect();
        for r in open {
            self.close(r)?;
        }
        Ok(())
    }

    /// Numbers the next records above `lsn`: a replica that replaced another of its id (with
    /// an empty data dir) continues above the records the others hold of the one it replaced.
    pub fn number_above(&mut self, lsn: u64) {
        self.next_lsn = self.next_lsn.max(lsn + 1);
    }

    /// The `lsn` of the last record appended (below this start's first if none was).
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segments on disk (closed and open).
    pub fn segments(&self) -> usize {
        self.closed.len() + self.lanes.len()
    }
}

/// A replicated record, as [`records_after`] found it.
#[derive(Clone)]
pub struct Located {
    pub lsn: u64,
    path: std::sync::Arc<PathBuf>,
    offset: u64,
    len: u32,
}

impl Located {
    /// The record's payload; `None` if its segment has been deleted meanwhile (its rows expired).
    pub fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match crate::records::read_at(&self.path, self.offset, self.len) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The longest record header [`records_after`] reads to find a record's stamp.
const HEADER_PREFIX: usize = 4096;

/// The replicated records of `origin` (`None`: this replica) in the log in `dir` whose number
/// (`seq`, which is the `lsn` of this replica's own) is above `after`, with `lsn <= through`, in
/// `lsn` order (the order they were written in, across the segments of every retention): for
/// this replica's own, what a replica that has them through `after` is sent to catch up. Read
/// while the log is written: records past `through` (not yet synced) are left out.
pub fn records_after(
    dir: &Path,
    origin: Option<&str>,
    after: u64,
    through: u64,
) -> io::Result<Vec<Located>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(".seg") {
            continue;
        }
        let path = std::sync::Arc::new(entry.path());
        let scanned = crate::records::scan(&path, HEADER_PREFIX, |offset, len, prefix| {
            let Ok(h) = header(prefix) else { return };
            let s = &h.stamp;
            if s.replicated && s.origin.as_deref() == origin && s.seq > after && s.lsn <= through {
                out.push(Located {
                    lsn: s.lsn,
                    path: path.clone(),
                    offset,
                    len,
                });
            }
        });
        match scanned {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    out.sort_unstable_by_key(|l| l.lsn);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..ts.len() as i64)),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec()).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    fn replay(dir: &Path) -> (Wal, Vec<(String, u64, usize)>) {
        let mut seen = Vec::new();
        let wal = Wal::open(dir, 0, |r| {
            seen.push((r.source.to_string(), r.generation, r.batch.num_rows()))
        })
        .unwrap();
        (wal, seen)
    }

    /// Keeps a segment while a source's rows are within its retention at `now`.
    fn retained(
        now: i64,
        retain: impl Fn(&str, u64) -> Option<i64>,
    ) -> impl Fn(&str, u64, i64, u64) -> bool {
        move |s, g, t, _| retain(s, g).is_some_and(|r| t.saturating_add(r) > now)
    }

    #[test]
    fn segments_are_replayed_in_order_and_pruned_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, seen) = replay(dir.path());
        assert!(seen.is_empty());
        wal.append(
            "a",
            1,
            1_000,
            &batch(&[1_000, 2_000]),
            &mut Stamp::default(),
        )
        .unwrap();
        wal.append("b", 7, 1_000, &batch(&[5_000]), &mut Stamp::default())
            .unwrap();
        wal.sync().unwrap();
        wal.roll().unwrap();
        wal.append(
            "a",
            1,
            1_000,
            &batch(&[10_000, 11_000, 12_000]),
            &mut Stamp::default(),
        )
        .unwrap();
        wal.sync().unwrap();
        drop(wal);

        let (mut wal, seen) = replay(dir.path());
        assert_eq!(
            seen,
            [("a".into(), 1, 2), ("b".into(), 7, 1), ("a".into(), 1, 3)]
        );
        // Retention 1 s: at 5,500 ms the first segment still holds b's row at 5,000.
        let retain = |_: &str, _: u64| Some(1_000);
        assert_eq!(wal.maintain(&retained(5_500, retain)).unwrap(), 0);
        assert_eq!(wal.maintain(&retained(6_000, retain)).unwrap(), 1);
        // The second segment's rows (up to 12,000) outlive 12,999 but not 13,000.
        assert_eq!(wal.maintain(&retained(12_999, retain)).unwrap(), 0);
        assert_eq!(wal.maintain(&retained(13_000, retain)).unwrap(), 1);
        drop(wal);
        let (mut wal, seen) = replay(dir.path());
        assert!(seen.is_empty(), "{seen:?}");
        // A dropped source's rows go at once.
        wal.append(
            "gone",
            3,
            1_000,
            &batch(&[i64::MAX / 2]),
            &mut Stamp::default(),
        )
        .unwrap();
        wal.roll().unwrap();
        assert_eq!(
            wal.maintain(&retained(0, |s, _| (s != "gone").then_some(1_000)))
                .unwrap(),
            1
        );
    }

    /// Stamps survive the log; `lsn`s grow across restarts; a replica's marks are the newest
    /// `seq` of each origin; the records to send a peer are this replica's replicated ones after
    /// its mark, in `lsn` order across retentions, and only those synced.
    #[test]
    fn stamps_marks_and_records_for_a_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay(dir.path());
        let own = |replicated| Stamp {
            at: 42,
            replicated,
            ..Stamp::default()
        };
        let peer = |seq| Stamp {
            origin: Some("b".into()),
            seq,
            at: 7,
            replicated: true,
            ..Stamp::default()
        };
        let mut lsns = Vec::new();
        for (retain, mut stamp) in [
            (1_000, own(true)),
            (5_000, own(true)),
            (1_000, peer(9)),
            (1_000, own(false)),
            (5_000, peer(12)),
            (1_000, own(true)),
        ] {
            wal.append("a", 1, retain, &batch(&[1_000]), &mut stamp)
                .unwrap();
            lsns.push(stamp.lsn);
            if stamp.origin.is_none() {
                assert_eq!(stamp.seq, stamp.lsn);
            }
        }
        assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1), "{lsns:?}");
        assert_eq!(wal.marks.get("b"), Some(&12));
        wal.sync().unwrap();
        let found = |after, through| -> Vec<u64> {
            records_after(dir.path(), None, after, through)
                .unwrap()
                .iter()
                .map(|l| l.lsn)
                .collect()
        };
        assert_eq!(found(0, u64::MAX), [lsns[0], lsns[1], lsns[5]]);
        assert_eq!(found(lsns[0], lsns[4]), [lsns[1]]);
        let l = records_after(dir.path(), None, lsns[4], u64::MAX).unwrap();
        let payload = l[0].read().unwrap().unwrap();
        let h = header(&payload).unwrap();
        assert_eq!(
            (h.source.as_str(), h.stamp.at, h.stamp.lsn),
            ("a", 42, lsns[5])
        );
        assert_eq!(batches(&payload[h.body..]).unwrap()[0].num_rows(), 1);
        let last = wal.last_lsn();
        drop(wal);
        let (wal, seen) = replay(dir.path());
        assert_eq!(seen.len(), 6);
        assert_eq!(wal.marks.get("b"), Some(&12));
        assert!(wal.last_lsn() < wal.next_lsn && wal.next_lsn > last);
        assert_eq!(wal.next_lsn >> INCARNATION_SHIFT, 2);
    }

    #[test]
    fn a_long_retention_does_not_keep_the_segments_of_short_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = replay(dir.path());
        let retain = |s: &str, _: u64| Some(if s == "events" { 7 * 86_400_000 } else { 1_000 });
        for t in [1_000, 2_000, 3_000] {
            wal.append("m", 1, 1_000, &batch(&[t]), &mut Stamp::default())
                .unwrap();
            wal.append(
                "events",
                1,
                7 * 86_400_000,
                &batch(&[t]),
                &mut Stamp::default(),
            )
            .unwrap();
        }
        wal.sync().unwrap();
        wal.roll().unwrap();
        assert_eq!(wal.segments(), 2, "one segment per retention");
        assert_eq!(
            wal.maintain(&retained(10_000, retain)).unwrap(),
            1,
            "m's rows expired; the events' segment stays"
        );
        drop(wal);
        let (_, seen) = replay(dir.path());
        assert_eq!(seen, vec![("events".to_string(), 1, 1); 3]);
    }
}
