use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::*;

const HOUR: i64 = 3_600_000;
/// 2026-12-06T09:00Z.
const T0: i64 = 1_796_547_600_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("v", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn spec(horizon_ms: i64) -> Spec {
    Spec {
        schema: schema(),
        ts: 2,
        horizon_ms,
        late_ms: 600_000,
        bucket_ms: None,
    }
}

fn batch(rows: &[(String, f64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.2))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

/// `n` rows every 30 s from T0, over five hosts, in batches of 10 (log positions 1, 2, ...).
fn rows(n: usize) -> Vec<(u64, RecordBatch)> {
    let all: Vec<(String, f64, i64)> = (0..n)
        .map(|i| {
            (
                format!("h{}", i % 5),
                i as f64 * 0.5,
                T0 + i as i64 * 30_000,
            )
        })
        .collect();
    all.chunks(10)
        .enumerate()
        .map(|(i, c)| (i as u64 + 1, batch(c)))
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tuning() -> Tuning {
    Tuning {
        flush_after: Duration::ZERO,
        flush_rows: 1,
        fanout: 3,
    }
}

/// A session whose table `m` is the relation's history (no window).
fn over_history(rel: &Relation) -> SessionContext {
    let h = SessionContext::new();
    h.register_table(
        "m",
        Arc::new(HistoryTable::new(
            schema(),
            2,
            rel.snapshot(),
            vec![],
            i64::MAX,
        )),
    )
    .unwrap();
    h
}

/// The answer of `sql` over the relation's history and over the same rows held in memory.
fn both(rel: &Relation, all: &[RecordBatch], sql: &str) -> (String, String) {
    rt().block_on(async {
        let h = over_history(rel);
        let m = SessionContext::new();
        m.register_table(
            "m",
            Arc::new(MemTable::try_new(schema(), vec![all.to_vec()]).unwrap()),
        )
        .unwrap();
        let a = h.sql(sql).await.unwrap().collect().await.unwrap();
        let b = m.sql(sql).await.unwrap().collect().await.unwrap();
        (
            pretty_format_batches(&a).unwrap().to_string(),
            pretty_format_batches(&b).unwrap().to_string(),
        )
    })
}

fn files_read(rel: &Relation, sql: &str) -> usize {
    rt().block_on(async {
        let h = over_history(rel);
        let plan = h
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        pretty_format_batches(&plan)
            .unwrap()
            .to_string()
            .matches(".parquet")
            .count()
    })
}

/// A relation with 24 h of history holding `rows(n)`, flushed every four batches (into hourly
/// partitions).
fn flushed_every_four(
    dir: &std::path::Path,
    n: usize,
) -> (Arc<History>, Arc<Relation>, Vec<(u64, RecordBatch)>) {
    let h = History::open(dir).unwrap();
    let rel = h.create("m", 1, spec(24 * HOUR)).unwrap();
    let input = rows(n);
    for (i, (pos, b)) in input.iter().enumerate() {
        rel.append(*pos, b.clone());
        if i % 4 == 3 {
            rel.flush().unwrap();
        }
    }
    (h, rel, input)
}

const SUMMARY: &str =
    "SELECT host, count(*) AS n, sum(v) AS s, min(ts) AS first, max(ts) AS last FROM m GROUP BY host ORDER BY host";

#[test]
fn flushes_compacts_and_reads_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    // 400 rows over 3 h 20 min: four hourly partitions.
    let (h, rel, input) = flushed_every_four(dir.path(), 400);
    assert_eq!(rel.stats().files, 10, "{:?}", rel.stats());
    let rt = rt();
    let now = T0 + 200 * 60_000;
    while h.maintain(&rt, now, &tuning()) {}
    let s = rel.state();
    let levels: Vec<Vec<u8>> = s
        .partitions
        .values()
        .map(|fs| fs.iter().map(|f| f.level).collect())
        .collect();
    drop(s);
    assert_eq!(levels.len(), 4);
    for closed in &levels[..3] {
        assert_eq!(closed, &vec![files::FINAL_LEVEL], "{levels:?}");
    }
    assert!(
        levels[3].len() < 3,
        "the open partition's files were merged: {levels:?}"
    );
    assert_eq!(rel.stats().rows, 400);
    assert_eq!(rel.durable_through(), 40);

    let all: Vec<RecordBatch> = input.iter().map(|(_, b)| b.clone()).collect();
    let (a, b) = both(&rel, &all, SUMMARY);
    assert_eq!(a, b);
    let ranged = "SELECT host, count(*) AS n, sum(v) AS s FROM m WHERE ts >= '2026-12-06T10:15:00Z' AND ts < '2026-12-06T10:45:00Z' GROUP BY host ORDER BY host";
    let (a, b) = both(&rel, &all, ranged);
    assert_eq!(a, b);
    assert_eq!(
        files_read(&rel, ranged),
        1,
        "one partition holds that half hour"
    );
    let between = "SELECT count(*) FROM m WHERE ts BETWEEN '2026-12-06T09:59:00Z' AND '2026-12-06T11:00:00Z' AND host = 'h1'";
    assert_eq!(both(&rel, &all, between).0, both(&rel, &all, between).1);
    assert_eq!(files_read(&rel, between), 3);

    // Everything is found again after a restart.
    drop(rel);
    drop(h);
    let h = History::open(dir.path()).unwrap();
    let rel = h.create("m", 1, spec(24 * HOUR)).unwrap();
    assert_eq!(rel.stats().rows, 400);
    let (a, b) = both(&rel, &all, SUMMARY);
    assert_eq!(a, b);
}

#[test]
fn a_flush_cut_between_partitions_is_completed_by_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    let rel = h.create("m", 1, spec(24 * HOUR)).unwrap();
    // Rows are 30 s apart, 120 per hour: batches 1-12 fall in the first partition, 13-16 in
    // the second.
    let input = rows(160);
    for (pos, b) in &input[..8] {
        rel.append(*pos, b.clone());
    }
    rel.flush().unwrap();
    for (pos, b) in &input[8..] {
        rel.append(*pos, b.clone());
    }
    rel.flush().unwrap();
    // The crash: the second flush wrote the first partition's file, not the second's.
    let second = rel.dir.join(files::partition_name(T0 + HOUR));
    for f in std::fs::read_dir(&second).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    drop(rel);
    drop(h);

    // The restart replays the whole log.
    let h = History::open(dir.path()).unwrap();
    let rel = h.create("m", 1, spec(24 * HOUR)).unwrap();
    assert_eq!(rel.stats().rows, 120);
    for (pos, b) in &input {
        rel.replay(*pos, b.clone());
    }
    assert_eq!(
        rel.stats().pending_rows,
        40,
        "only the second partition's rows"
    );
    assert_eq!(
        rel.durable_through(),
        12,
        "batch 13 holds the first missing row"
    );
    rel.flush().unwrap();
    assert_eq!(rel.durable_through(), 16);
    let all: Vec<RecordBatch> = input.iter().map(|(_, b)| b.clone()).collect();
    let (a, b) = both(&rel, &all, SUMMARY);
    assert_eq!(a, b);
}

#[test]
fn a_cut_compaction_and_stray_files_are_cleaned_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    let rel = h.create("m", 1, spec(24 * HOUR)).unwrap();
    let input = rows(60);
    for (pos, b) in &input {
        rel.append(*pos, b.clone());
        rel.flush().unwrap();
    }
    let part = rel.dir.join(files::partition_name(T0));
    let saved = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&part).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), saved.path().join(f.file_name())).unwrap();
    }
    let rt = rt();
    while h.maintain(&rt, T0 + 30 * 60_000, &tuning()) {}
    assert!(rel.stats().files < 6);
    // The crash came after the merged files were in place, before their inputs were deleted;
    // a foreign file, a damaged one and a temporary are there too.
    for f in std::fs::read_dir(saved.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), part.join(f.file_name())).unwrap();
    }
    std::fs::write(part.join("notes.txt"), "mine").unwrap();
    std::fs::write(part.join(files::file_name(0, 900, 901)), "not parquet").unwrap();
    std::fs::write(part.join(".00-x.parquet.tmp"), "half").unwrap();
    drop(rel);
    drop(h);

    let h = History::open(dir.path()).unwrap();
    let rel = h.create("m", 1, spec(24 * HOUR)).unwrap();
    let all: Vec<RecordBatch> = input.iter().map(|(_, b)| b.clone()).collect();
    let (a, b) = both(&rel, &all, SUMMARY);
    assert_eq!(a, b, "each row once");
    let names: Vec<String> = std::fs::read_dir(&part)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"notes.txt".to_string()),
        "foreign files are left alone"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    assert_eq!(
        names.len(),
        rel.stats().files as usize + 2,
        "merged inputs are gone; the damaged file is skipped, not deleted: {names:?}"
    );
}

#[test]
fn partitions_past_the_horizon_are_deleted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(dir.path()).unwrap();
    let rel = h.create("m", 1, spec(2 * HOUR)).unwrap();
    for (pos, b) in rows(400) {
        rel.append(pos, b);
    }
    rel.flush().unwrap();
    assert_eq!(rel.stats().partitions, 4);
    // At T0 + 4 h, rows older than T0 + 2 h go: the partitions of T0 and T0 + 1 h.
    assert_eq!(rel.expire(T0 + 4 * HOUR), 2);
    let st = rel.stats();
    assert_eq!((st.partitions, st.oldest_ms), (2, Some(T0 + 2 * HOUR)));
    assert_eq!(st.newest_ms, Some(T0 + 399 * 30_000));
    assert_eq!(st.rows, 400 - 240);
    assert!(!rel.dir.join(files::partition_name(T0)).exists());
    assert!(rel.dir.join(files::partition_name(T0 + 2 * HOUR)).exists());

    // Dropping the relation deletes its directory; a sweep deletes the ones of relations
    // that are gone.
    let other = h.create("gone", 3, spec(2 * HOUR)).unwrap();
    let other_dir = other.dir.clone();
    drop(other);
    h.remove("m");
    assert!(!rel.dir.exists());
    let h = History::open(dir.path()).unwrap();
    assert_eq!(h.sweep().unwrap(), 1);
    assert!(!other_dir.exists());
}

#[test]
fn relation_directories_are_safe_names() {
    assert_eq!(relation_dir("host_1m", 7), "host_1m.7");
    assert_eq!(relation_dir("My Host/x", 2), "~4dy~20~48ost~2fx.2");
}

/// Filters on text columns are answered by the files' series indexes: the answers equal
/// DataFusion's over the same rows held in memory, and a query for one host decodes that host's
/// rows only.
#[test]
fn text_filters_read_only_the_selected_series() {
    let dir = tempfile::tempdir().unwrap();
    let (h, rel, input) = flushed_every_four(dir.path(), 400);
    let rt = rt();
    while h.maintain(&rt, T0 + 200 * 60_000, &tuning()) {}
    assert!(
        rel.snapshot().files.iter().all(|(_, f)| f.series.is_some()),
        "every file has its series index"
    );
    let all: Vec<RecordBatch> = input.iter().map(|(_, b)| b.clone()).collect();
    for sql in [
        "SELECT host, v, ts FROM m WHERE host = 'h1' ORDER BY ts",
        "SELECT v, ts FROM m WHERE host IN ('h1', 'h3') AND v > 10 ORDER BY ts",
        "SELECT host, v FROM m WHERE host LIKE 'h%' AND host <> 'h2' ORDER BY ts",
        "SELECT v FROM m WHERE host = 'nope'",
        "SELECT host, v FROM m WHERE host = 'h1' OR v < 5 ORDER BY ts",
        "SELECT count(*), sum(v) FROM m WHERE host = 'h4' AND ts >= '2026-12-06T10:15:00Z'",
        "SELECT m.v FROM m WHERE m.host = 'h2' AND m.ts < '2026-12-06T10:00:00Z' ORDER BY m.ts",
    ] {
        let (a, b) = both(&rel, &all, sql);
        assert_eq!(a, b, "{sql}");
    }
    let plan = rt.block_on(async {
        let batches = over_history(&rel)
            .sql("EXPLAIN ANALYZE SELECT v FROM m WHERE host = 'h1'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    });
    let scan = plan
        .lines()
        .find(|l| l.contains("DataSourceExec"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        scan.contains("output_rows=80,"),
        "80 of the 400 rows are h1's: {scan}"
    );
}
