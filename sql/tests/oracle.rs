//! The oracle: for random streams of rows (which also expire by retention) and random queries
//! drawn from the supported constructs, the incrementally maintained result of each view must
//! equal DataFusion evaluating the same SQL in batch over the rows live at the same time, with
//! `now()` that time — at 1 and at 4 workers.

mod common;

use std::sync::Arc;

use datafusion::arrow::array::{
    Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tocsin_sql::planner::{batch_context, mem_table};

const RETAIN_MS: i64 = 60_000;

#[derive(Clone, Debug)]
struct Sample {
    host: String,
    dc: String,
    v: Option<f64>,
    n: Option<i64>,
    ts: i64,
}

fn queries(rng: &mut StdRng) -> Vec<String> {
    let c = rng.gen_range(20..80);
    let k = rng.gen_range(5..40);
    let h = rng.gen_range(35..50);
    vec![
        format!("SELECT host, v FROM m WHERE v > {c}"),
        "SELECT host, count(*) AS c, count(v) AS cv, sum(n) AS s, avg(v) AS a, min(v) AS lo, max(v) AS hi FROM m GROUP BY host".into(),
        "SELECT dc, count(DISTINCT host) AS h FROM m GROUP BY dc".into(),
        format!("SELECT host, avg(v) AS a, count(*) AS c FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY host HAVING avg(v) > {h}"),
        "SELECT DISTINCT dc, host FROM m WHERE n % 2 = 0".into(),
        "SELECT host, date_bin(INTERVAL '30 seconds', ts) AS w, count(*) AS c, sum(v) AS s FROM m GROUP BY host, w".into(),
        format!("SELECT m.host, o.team, m.v FROM m JOIN owners o ON m.host = o.host WHERE m.v < {c}"),
        "SELECT o.host, o.team, m.n FROM owners o LEFT JOIN m ON o.host = m.host".into(),
        "SELECT host, CASE WHEN v > 50 THEN 'hi' WHEN v IS NULL THEN 'none' ELSE 'lo' END AS lvl, count(*) AS c FROM m GROUP BY 1, 2".into(),
        "SELECT host, v FROM m WHERE v > 90 UNION ALL SELECT host, v FROM m WHERE n > 5".into(),
        format!("SELECT count(*) AS c, max(v) AS mx, sum(n) AS s FROM m WHERE ts <= now() - INTERVAL '{k} seconds'"),
        "SELECT dc, max(a) AS top, count(*) AS hosts FROM (SELECT dc, host, avg(v) AS a FROM m GROUP BY dc, host) AS t GROUP BY dc".into(),
        "SELECT DISTINCT ON (host) host, v, ts FROM m ORDER BY host, ts DESC".into(),
        format!("SELECT upper(host) AS h, round(v * 2) / 2 AS r, n + 1 AS n1 FROM m WHERE v BETWEEN {c} AND {} AND host <> 'h3'", c + 15),
        format!("SELECT host, min(ts) AS first, max(ts) AS last FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY host"),
        "SELECT host, rate(n, ts) AS rn, rate(v, ts) AS rv, count(*) AS c FROM m GROUP BY host".into(),
        format!("SELECT dc, rate(n * 1000, ts) AS r FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY dc"),
        format!("SELECT host, stddev(v) AS sd, var_pop(v) AS vp, stddev_pop(n) AS sn FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY host"),
        format!("SELECT host, median(v) AS md, percentile_cont(0.9) WITHIN GROUP (ORDER BY v) AS p90, percentile_cont(0.25) WITHIN GROUP (ORDER BY n DESC) AS p25, approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY v) AS p99 FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY host"),
        "SELECT dc, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY v) AS p50, approx_percentile_cont(n, 0.95) AS p95 FROM m GROUP BY dc".into(),
        // With a DISTINCT aggregate beside them, the group is recomputed from its rows.
        "SELECT host, median(v) AS md, median(DISTINCT n) AS mdn, percentile_cont(0.3) WITHIN GROUP (ORDER BY n) AS p30, approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY v) AS p90, count(DISTINCT dc) AS dcs FROM m GROUP BY host".into(),
        format!("SELECT host, bool_and(v > 50) AS all_hi, bool_or(n > 8) AS any_n, count(*) FILTER (WHERE v > {c}) AS c_hi, sum(n) FILTER (WHERE v < {c}) AS s_lo, string_agg(dc, ',' ORDER BY dc) AS dcs FROM m GROUP BY host"),
        "SELECT host, v FROM m WHERE host IN (SELECT host FROM owners WHERE team = 'web')".into(),
        format!("SELECT o.host, o.team FROM owners o WHERE NOT EXISTS (SELECT 1 FROM m WHERE m.host = o.host AND m.v > {c})"),
        "SELECT host, n FROM m WHERE n NOT IN (SELECT n FROM m WHERE v > 85 AND host = 'h2')".into(),
        format!("SELECT host, v FROM m WHERE EXISTS (SELECT 1 FROM owners o WHERE o.host = m.host AND o.team < m.dc)"),
        format!("SELECT o.host, o.team, m.v FROM owners o FULL JOIN m ON o.host = m.host AND m.v > {c}"),
        "SELECT m.host, m.n, o.team FROM m RIGHT JOIN owners o ON upper(m.host) = upper(o.host) AND m.n < 3".into(),
        "SELECT dc, first_value(v ORDER BY ts, n, host) AS f, last_value(n ORDER BY ts, v, host) AS l FROM m GROUP BY dc".into(),
        "SELECT host, v, ts FROM m ORDER BY v DESC, ts, host, n LIMIT 5".into(),
        "SELECT dc, host, a FROM (SELECT dc, host, avg(v) AS a FROM m GROUP BY dc, host) t ORDER BY a DESC NULLS LAST, host LIMIT 3 OFFSET 1".into(),
        "SELECT * FROM (SELECT host, v, ts, row_number() OVER (PARTITION BY host ORDER BY ts DESC, v, n, dc) AS rn FROM m) t WHERE rn <= 2".into(),
        format!("SELECT host, ts, v - lag(v) OVER (PARTITION BY host ORDER BY ts, v, n, dc) AS d, lead(n, 2, -1) OVER (PARTITION BY host ORDER BY ts, v, n, dc) AS ahead, dense_rank() OVER (PARTITION BY host ORDER BY ts, v, n, dc) AS r FROM m WHERE ts > now() - INTERVAL '{k} seconds'"),
        format!("SELECT host, regr_slope(v, extract(epoch FROM ts)) AS sl, regr_intercept(v, extract(epoch FROM ts) - 1795000000) AS ic, regr_r2(n, v) AS r2, regr_count(v, n) AS rc FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY host"),
    ]
}

/// Rules on one shared aggregation, each with its own condition: more of them than it takes for
/// the aggregation's changes to be indexed by value, so conditions that bound a column are answered
/// from the index once enough of them exist, and scanned before.
fn thresholds(rng: &mut StdRng) -> Vec<String> {
    let k = rng.gen_range(10..40);
    (0..18)
        .map(|i| {
            // No average of tenths equals the threshold, whose side an average would otherwise
            // depend on how its sum was rounded (exact fixed point here, floats in the batch).
            let x = format!("{}.0137", rng.gen_range(30..70));
            let c = rng.gen_range(1..6);
            let having = match i % 9 {
                0 => format!("avg(v) > {x}"),
                1 => format!("avg(v) >= {x}"),
                2 => format!("{x} < avg(v)"),
                3 => format!("avg(v) < {x}"),
                4 => format!("avg(v) <= {x} AND count(*) > {c}"),
                5 => format!("count(*) = {}", c * 3),
                6 => format!("sum(n) > {} AND avg(v) < {x}", c * 4),
                7 => format!("avg(v) > {x} OR sum(n) < {c}"),
                _ => format!("count(*) >= {} AND host <> 'h{c}'", c * 3),
            };
            format!("SELECT host, avg(v) AS a, sum(n) AS s, count(*) AS c FROM m WHERE ts > now() - INTERVAL '{k} seconds' GROUP BY host HAVING {having}")
        })
        .collect()
}

fn batch(schema: &SchemaRef, rows: &[Sample]) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.host.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.dc.as_str()),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.v).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.n).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.ts).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

/// Rows as comparable values: floats are compared with a tolerance (sums are kept in fixed point).
#[derive(Debug, Clone)]
enum V {
    S(String),
    F(f64),
}

fn values(batches: &[RecordBatch]) -> Vec<Vec<V>> {
    let strings = common::rows_as_strings(batches);
    let mut out: Vec<Vec<V>> = strings
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|s| s.parse::<f64>().map(V::F).unwrap_or(V::S(s)))
                .collect()
        })
        .collect();
    let key = |r: &Vec<V>| -> String {
        r.iter()
            .map(|v| match v {
                V::S(s) => s.clone(),
                V::F(f) => format!("{f:.2}"),
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    out.sort_by_key(key);
    out
}

fn same(a: &[Vec<V>], b: &[Vec<V>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| match (p, q) {
                    (V::S(s), V::S(t)) => s == t,
                    // Floats are printed to 6 decimals: values that differ in the 7th may
                    // round a unit apart.
                    (V::F(f), V::F(g)) => (f - g).abs() <= 2e-6 * f.abs().max(g.abs()).max(1.0),
                    _ => false,
                })
        })
}

async fn run(workers: usize, seed: u64) {
    let mut compared_rows = 0usize;
    let mut nonempty_checks = vec![0usize; 0];
    let (db, clock) = common::database(workers);
    let mut rng = StdRng::seed_from_u64(seed);
    db.execute("CREATE SOURCE m (host TEXT, dc TEXT, v DOUBLE, n BIGINT, ts TIMESTAMP) FROM WEBSOCKET WITH (retain = '1 minute');
                CREATE SOURCE owners (host TEXT, team TEXT) FROM WEBSOCKET WITH (retain = '1 day')")
        .await
        .unwrap();
    let base = queries(&mut rng);
    let family = thresholds(&mut rng);
    // Half the views exist before any data, half are created midway (they must replay the source):
    // half of the threshold rules each.
    let (b, f) = (base.len() / 2, family.len() / 2);
    let qs: Vec<String> = [&base[..b], &family[..f], &base[b..], &family[f..]].concat();
    let (early, late) = qs.split_at(b + f);
    for (i, q) in early.iter().enumerate() {
        db.execute(&format!("CREATE VIEW q{i} AS {q}"))
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    let m_schema = db.engine().schema("m").unwrap();
    let mut live: Vec<Sample> = Vec::new();
    let mut owners: Vec<(String, String, i64)> = Vec::new();
    let mut ts_counter = 0i64;
    let steps = 48;
    for step in 0..steps {
        if step == steps / 3 {
            for (j, q) in late.iter().enumerate() {
                let i = early.len() + j;
                db.execute(&format!("CREATE VIEW q{i} AS {q}"))
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
            }
        }
        if step == steps * 2 / 3 {
            // Views leave and come back while data flows: the ones that stay are unaffected,
            // and a view created again starts from the current rows.
            for i in [b, b + 1, qs.len() - 1] {
                db.execute(&format!("DROP VIEW q{i}")).await.unwrap();
            }
            for i in [b, qs.len() - 1] {
                db.execute(&format!("CREATE VIEW q{i} AS {}", qs[i]))
                    .await
                    .unwrap();
            }
            db.execute(&format!("CREATE VIEW q{} AS {}", b + 1, qs[b + 1]))
                .await
                .unwrap();
        }
        if rng.gen_bool(0.15) {
            let host = format!("h{}", rng.gen_range(0..10));
            let team = ["web", "db", "ml"][rng.gen_range(0..3)].to_string();
            db.execute(&format!(
                "INSERT INTO owners (host, team) VALUES ('{host}', '{team}')"
            ))
            .await
            .unwrap();
            owners.push((host, team, 0));
        }
        let now = clock.now() as i64;
        let n = rng.gen_range(0..40);
        let mut rows = Vec::new();
        for _ in 0..n {
            ts_counter += 1;
            // Mostly recent, sometimes late (within retention) and sometimes too late to accept.
            let age = if rng.gen_bool(0.1) {
                rng.gen_range(55_000..70_000)
            } else {
                rng.gen_range(0..30_000)
            };
            rows.push(Sample {
                host: format!("h{}", rng.gen_range(0..8)),
                dc: ["eu", "us", "ap"][rng.gen_range(0..3)].to_string(),
                v: if rng.gen_bool(0.05) {
                    None
                } else {
                    Some(f64::from(rng.gen_range(0..1000)) / 10.0)
                },
                n: if rng.gen_bool(0.1) {
                    None
                } else {
                    Some(rng.gen_range(0..10))
                },
                // Distinct timestamps, so DISTINCT ON has no ties.
                ts: now - age - ts_counter % 997,
            });
        }
        if !rows.is_empty() {
            let outcome = db.engine().push("m", batch(&m_schema, &rows)).unwrap();
            let rejected: Vec<usize> = outcome.rejected.iter().map(|(i, _)| *i).collect();
            for (i, r) in rows.into_iter().enumerate() {
                if !rejected.contains(&i) {
                    live.push(r);
                } else {
                    assert!(
                        r.ts + RETAIN_MS <= outcome.time as i64,
                        "row {r:?} rejected without being late"
                    );
                }
            }
        }
        clock.set(clock.now() + rng.gen_range(0..5_000)).unwrap();
        if step % 4 != 3 {
            continue;
        }
        let created = if step >= steps / 3 {
            qs.len()
        } else {
            early.len()
        };
        for (i, q) in qs.iter().enumerate().take(created) {
            let name = format!("q{i}");
            let peek = db.engine().peek(&[name.as_str()]).await.unwrap();
            let t = peek.time as i64;
            let got: Vec<RecordBatch> = peek.relations[0]
                .1
                .iter()
                .map(|w| w.batch.clone())
                .collect();
            let got = values(&got);
            live.retain(|r| r.ts + RETAIN_MS > t);
            let m_batch = batch(&m_schema, &live);
            let o_schema = db.engine().schema("owners").unwrap();
            let o_rows: Vec<&(String, String, i64)> = owners.iter().collect();
            let o_batch = RecordBatch::try_new(
                o_schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        o_rows.iter().map(|o| o.0.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        o_rows.iter().map(|o| o.1.as_str()),
                    )),
                    Arc::new(
                        TimestampMillisecondArray::from(vec![
                            common::START_MS as i64;
                            o_rows.len()
                        ])
                        .with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap();
            let ctx = batch_context(
                vec![
                    (
                        "m".into(),
                        mem_table(m_schema.clone(), vec![m_batch]).unwrap(),
                    ),
                    ("owners".into(), mem_table(o_schema, vec![o_batch]).unwrap()),
                ],
                t,
            )
            .unwrap();
            let expected = ctx.sql(q).await.unwrap().collect().await.unwrap();
            let want = values(&expected);
            compared_rows += want.len();
            if nonempty_checks.len() < qs.len() {
                nonempty_checks.resize(qs.len(), 0);
            }
            nonempty_checks[i] += usize::from(!want.is_empty());
            assert!(
                same(&got, &want),
                "workers={workers} seed={seed} step={step} t={t}\nquery: {q}\nincremental: {got:?}\nbatch:       {want:?}"
            );
        }
    }
    // The comparison must have had something to compare: every query saw rows at some check.
    println!("workers={workers} seed={seed}: compared {compared_rows} rows; non-empty checks per query {nonempty_checks:?}");
    assert!(compared_rows > 1000, "only {compared_rows} rows compared");
    // Every query of the base set saw rows at some check, and most threshold rules did (an
    // equality may never hold; its empty result is still compared).
    let is_base = |i: usize| i < b || (b + f..b + f + base.len() - b).contains(&i);
    assert!(
        (0..qs.len()).all(|i| !is_base(i) || nonempty_checks[i] > 0),
        "a query never had rows: {nonempty_checks:?}"
    );
    let family_seen = (0..qs.len()).filter(|&i| !is_base(i) && nonempty_checks[i] > 0);
    assert!(
        family_seen.count() >= family.len() * 2 / 3,
        "threshold rules rarely had rows: {nonempty_checks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_equals_batch_one_worker() {
    for seed in [1, 2] {
        run(1, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_equals_batch_four_workers() {
    for seed in [1, 3] {
        run(4, seed).await;
    }
}
