//! Engine benchmarks (release build, one worker):
//! (a) a filter rule over Arrow batches;
//! (b) GROUP BY avg over 10,000 keys with a one-minute temporal filter;
//! (c) the same with 1, 100 and 1,000 rules on one source.
//! Each iteration pushes rows stamped with a manual clock that moves forward, so rows also
//! leave the window and the source (retractions are part of the measured work), and ends when
//! every rule has caught up.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tocsin_benches::Bench;

fn filter_rule(c: &mut Criterion) {
    let mut g = c.benchmark_group("a_filter_rule");
    let mut b = Bench::new(1, 10_000);
    b.execute("CREATE RULE hot AS SELECT host, v FROM m WHERE v > 99.0");
    let rows_per_batch = 65_536;
    let batches = 8;
    g.throughput(Throughput::Elements((rows_per_batch * batches) as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(20));
    g.bench_function("filter_1pct", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let data: Vec<_> = (0..batches).map(|_| b.batch(rows_per_batch)).collect();
                let t = Instant::now();
                b.push_and_sync(&data, 1_000, &["hot"]);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn group_by(c: &mut Criterion, rules: usize, rows_per_iter: usize) {
    let mut g = c.benchmark_group("c_rules_on_one_source");
    let mut b = Bench::new(1, 10_000);
    let mut names = Vec::new();
    for i in 0..rules {
        let name = format!("hot_{i}");
        b.execute(&format!(
            "CREATE RULE {name} AS SELECT host, avg(v) AS a FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host HAVING avg(v) > {}",
            40 + i % 20
        ));
        names.push(name);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows_per_batch = 10_000;
    let batches = rows_per_iter / rows_per_batch;
    // Fill the one-minute window first, so iterations measure the steady state (inserts + expiries);
    // with a thousand rules that takes too long, so they start from a partly filled window.
    let warm_up = if rules >= 1_000 { 5 } else { 60 };
    for _ in 0..warm_up {
        let data = vec![b.batch(rows_per_batch)];
        b.push_and_sync(&data, 1_000, &refs);
    }
    g.throughput(Throughput::Elements(rows_per_iter as u64));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(if rules > 100 { 60 } else { 20 }));
    g.bench_function(format!("{rules}_rules"), |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let data: Vec<_> = (0..batches).map(|_| b.batch(rows_per_batch)).collect();
                let t = Instant::now();
                b.push_and_sync(&data, 1_000, &refs);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn group_by_avg(c: &mut Criterion) {
    let mut g = c.benchmark_group("b_group_by_avg_10k_keys");
    let mut b = Bench::new(1, 10_000);
    b.execute("CREATE VIEW per_host AS SELECT host, avg(v) AS a FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host");
    for _ in 0..60 {
        let data = vec![b.batch(10_000)];
        b.push_and_sync(&data, 1_000, &["per_host"]);
    }
    g.throughput(Throughput::Elements(100_000));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("temporal_1m", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let data: Vec<_> = (0..10).map(|_| b.batch(10_000)).collect();
                let t = Instant::now();
                b.push_and_sync(&data, 1_000, &["per_host"]);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn rules(c: &mut Criterion) {
    group_by(c, 1, 100_000);
    group_by(c, 100, 100_000);
    group_by(c, 1_000, 10_000);
}

criterion_group!(benches, filter_rule, group_by_avg, rules);
criterion_main!(benches);
