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
    writer: Mutex<(RecordWriter, u64)>,
}

impl CatalogLog {
    /// Opens the log in `dir`, returning it with the records it holds.
    pub fn open(dir: &Path) -> io::Result<(CatalogLog, Vec<CatalogRecord>)> {
        let path = dir.join("catalog.log");
        let mut records = Vec::new();
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
                records.push(rec);
            }
        }
        let next = records.last().map_or(1, |r| r.seq + 1);
        let writer = RecordWriter::append_to(&path)?;
        Ok((
            CatalogLog {
                writer: Mutex::new((writer, next)),
            },
            records,
        ))
    }

    /// Appends a change and waits until it is on disk; returns its `seq`.
    pub fn append(&self, statement: &str, name: &str, sql: &str) -> io::Result<u64> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| io::Error::other("catalog log poisoned"))?;
        let seq = w.1;
        let rec = CatalogRecord {
            seq,
            statement: statement.to_string(),
            name: name.to_string(),
            sql: sql.to_string(),
        };
        let payload = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        w.0.append(&payload)?;
        w.0.sync()?;
        w.1 += 1;
        Ok(seq)
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
