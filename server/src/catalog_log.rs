//! The durable catalog: every applied `CREATE`/`DROP`, in order, as a record of
//! `catalog.log` in the data dir. At start the records are replayed to rebuild the catalog.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::records::{read_records, RecordWriter};

/// One catalog change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogRecord {
    /// Position in the log; a source's rows in the WAL carry the `seq` of the `CREATE SOURCE`
    /// that made it, so rows of a dropped source never reach a new one of the same name.
    pub seq: u64,
    /// `CREATE SOURCE`, `DROP VIEW`, ...
    pub statement: String,
    pub name: String,
    pub sql: String,
}

pub struct CatalogLog {
    state: Mutex<Logged>,
    last: tokio::sync::watch::Sender<u64>,
}

struct Logged {
    writer: RecordWriter,
    /// Every record, in order, with the chained checksum of the log through it.
    records: Vec<(CatalogRecord, u32)>,
}

tokio::task_local! {
    /// Set while a catalog change is applied here without being routed (see
    /// `sql::Durability::route`): `Some(seq)` for a change another replica recorded at `seq`,
    /// `None` for the embedded default a new data dir starts with.
    pub static UNROUTED: Option<u64>;
}

/// The checksum of a log through a record: of the checksum through the one before, and the
/// record as it is written.
fn chain(before: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&before.to_le_bytes());
    h.update(payload);
    h.finalize()
}

impl CatalogLog {
    /// Opens the log in `dir`, returning it with the records it holds.
    pub fn open(dir: &Path) -> io::Result<(CatalogLog, Vec<CatalogRecord>)> {
        let path = dir.join("catalog.log");
        let mut records = Vec::new();
        let mut sum = 0;
        if path.exists() {
            let r = read_records(&path)?;
            if let Some(torn) = r.torn {
                tracing::warn!(
                    "catalog log {}: dropped a torn last record: {torn}",
                    path.display()
                );
            }
            for p in r.payloads {
                let rec: CatalogRecord = serde_json::from_slice(&p).map_err(|e| {
                    io::Error::other(format!("catalog log {}: bad record: {e}", path.display()))
                })?;
                sum = chain(sum, &p);
                records.push((rec, sum));
            }
        }
        let writer = RecordWriter::append_to(&path)?;
        let last = records.last().map_or(0, |r| r.0.seq);
        let list = records.iter().map(|r| r.0.clone()).collect();
        Ok((
            CatalogLog {
                state: Mutex::new(Logged { writer, records }),
                last: tokio::sync::watch::channel(last).0,
            },
            list,
        ))
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Logged>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("catalog log poisoned"))
    }

    /// Appends a change and waits until it is on disk; returns its `seq`: the next one, or `at`
    /// for a change another replica recorded (which must be the next one).
    pub fn append(
        &self,
        statement: &str,
        name: &str,
        sql: &str,
        at: Option<u64>,
    ) -> io::Result<u64> {
        let mut w = self.lock()?;
        let next = w.records.last().map_or(1, |r| r.0.seq + 1);
        let seq = at.unwrap_or(next);
        if seq != next {
            return Err(io::Error::other(format!(
                "change #{seq} does not follow the catalog log's last, #{}",
                next - 1
            )));
        }
        let rec = CatalogRecord {
            seq,
            statement: statement.to_string(),
            name: name.to_string(),
            sql: sql.to_string(),
        };
        let payload = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        w.writer.append(&payload)?;
        w.writer.sync()?;
        let sum = chain(w.records.last().map_or(0, |r| r.1), &payload);
        w.records.push((rec, sum));
        drop(w);
        self.last.send_replace(seq);
        Ok(seq)
    }

    /// The `seq` of the last change (0: none).
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// Told of every change appended.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// The checksum of the log through change `seq` (0 through none), if it has that change.
    pub fn checksum(&self, seq: u64) -> Option<u32> {
        let w = self.lock().ok()?;
        if seq == 0 {
            return Some(0);
        }
        w.records.iter().find(|r| r.0.seq == seq).map(|r| r.1)
    }

    /// The changes after `seq`, in order.
    pub fn after(&self, seq: u64) -> Vec<CatalogRecord> {
        self.lock()
            .map(|w| {
                w.records
                    .iter()
                    .filter(|r| r.0.seq > seq)
                    .map(|r| r.0.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The live generation (`seq` of its `CREATE SOURCE`) of every source.
pub type Generations = std::sync::Arc<std::sync::RwLock<HashMap<String, u64>>>;

/// Applies one record to the generations map: a source and the relations made or dropped with
/// it (`companions`) share the record's generation.
pub fn track(
    generations: &Generations,
    statement: &str,
    name: &str,
    companions: &[String],
    seq: u64,
) {
    let mut g = generations.write().expect("generations");
    for n in std::iter::once(name).chain(companions.iter().map(String::as_str)) {
        match statement {
            "CREATE SOURCE" => {
                g.insert(n.to_string(), seq);
            }
            "DROP SOURCE" => {
                g.remove(n);
            }
            _ => {}
        }
    }
}
