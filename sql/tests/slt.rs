//! Runs the `.slt` files in `tests/slt/`, and the examples of `docs/sql.md`, `docs/rules.md` and
//! `docs/ingest.md` (each document's ```slt blocks, in order, as one file), against tocsin at 1
//! and at 3 workers.
//!
//! Besides SQL, the files use one test-only statement to move the manual clock:
//! `ADVANCE TIME BY '30s'` or `ADVANCE TIME TO '2026-11-21T10:05:00Z'`. Every file starts at
//! 2026-11-21T10:00:00Z.

mod common;

use std::path::PathBuf;

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tocsin_engine::Clock;
use tocsin_sql::{SqlError, StatementResult, Tocsin};

struct Db {
    db: Tocsin,
    clock: Clock,
}

fn advance(clock: &Clock, rest: &str) -> Result<(), SqlError> {
    let rest = rest.trim().trim_end_matches(';').trim();
    let (how, arg) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| SqlError::plan("ADVANCE TIME BY|TO '...'"))?;
    let arg = arg.trim().trim_matches('\'');
    let target = match how.to_ascii_uppercase().as_str() {
        "BY" => clock.now() + tocsin_sql::options::parse_duration(arg)?.as_millis() as u64,
        "TO" => chrono_ms(arg)?,
        _ => return Err(SqlError::plan("ADVANCE TIME BY|TO '...'")),
    };
    clock.set(target)?;
    Ok(())
}

fn chrono_ms(s: &str) -> Result<u64, SqlError> {
    let v = datafusion::common::ScalarValue::Utf8(Some(s.to_string()))
        .cast_to(&datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            None,
        ))
        .map_err(|e| SqlError::plan(e.to_string()))?;
    match v {
        datafusion::common::ScalarValue::TimestampMillisecond(Some(ms), _) => Ok(ms as u64),
        _ => Err(SqlError::plan(format!("bad time {s}"))),
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let trimmed = sql.trim_start();
        if trimmed.len() > 12 && trimmed[..12].eq_ignore_ascii_case("ADVANCE TIME") {
            advance(&self.clock, &trimmed[12..])?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let mut results = self.db.execute(sql).await?;
        Ok(match results.pop() {
            Some(StatementResult::Rows { schema, batches }) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; schema.fields().len()],
                rows: common::rows_as_strings(&batches),
            },
            Some(StatementResult::Inserted { outcome, .. }) => {
                DBOutput::StatementComplete(outcome.accepted as u64)
            }
            _ => DBOutput::StatementComplete(0),
        })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

/// The ```slt blocks of a document in docs/ (`min` of them at least), written out as one
/// sqllogictest file.
fn docs_examples(doc: &str, min: usize) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("docs/{doc}: {e}"));
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```slt\n") {
        let body = &rest[start + 7..];
        let end = body
            .find("\n```")
            .unwrap_or_else(|| panic!("an slt block in docs/{doc} is not closed"));
        blocks.push(&body[..end]);
        rest = &body[end + 4..];
    }
    assert!(
        blocks.len() >= min,
        "docs/{doc} has only {} examples",
        blocks.len()
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("docs_{}.slt", doc.replace('.', "_")));
    std::fs::write(&out, blocks.join("\n\n") + "\n").expect("write docs examples");
    out
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files.push(docs_examples("sql.md", 10));
    files.push(docs_examples("rules.md", 30));
    files.push(docs_examples("ingest.md", 6));
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        for workers in [1, 3] {
            let mut runner = sqllogictest::Runner::new(move || async move {
                let (db, clock) = common::database(workers);
                Ok::<_, SqlError>(Db { db, clock })
            });
            runner.with_column_validator(|_, _| true);
            match rt.block_on(runner.run_file_async(&file)) {
                Ok(()) => {
                    println!("test {name} ({workers} workers) ... ok");
                    passed += 1;
                }
                Err(e) => {
                    println!("test {name} ({workers} workers) ... FAILED\n{e}\n");
                    failed += 1;
                }
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
