//! Engine benchmarks (release build, one worker):
//! (a) a filter rule over Arrow batches;
//! (b) GROUP BY avg over 10,000 keys with a one-minute temporal filter;
//! (c) the same with 1, 100 and 1,000 rules on one source;
//! (d) p99 per host over a one-minute window, exact and approximate, as (b);
//! (e) the top 10 hosts by average CPU over a one-minute window, as (b).
//! Each iteration pushes rows stamped with a manual clock that moves forward one second per
//! batch, so rows also leave the window and the source (retractions are part of the measured
//! work), and ends when every rule has caught up. Set-up happens on first use, so a filter such
//! as `-- a_filter` does not pay for the other groups.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tocsin_benches::Bench;

// tocsin's binary runs on mimalloc too: differential allocates and frees many large buffers,
// which the system allocator serves with fresh pages each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measures pushing `batches` batches of `rows` rows per iteration into a bench made by `setup`,
/// until `names` are current.
fn measure(
    c: &mut Criterion,
    group: &str,
    id: &str,
    rows: usize,
    batches: usize,
    setup: impl Fn() -> (Bench, Vec<String>),
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements((rows * batches) as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let mut state: Option<(Bench, Vec<String>)> = None;
    g.bench_function(id, |bench| {
        let (b, names) = state.get_or_insert_with(&setup);
        bench.iter_custom(|iters| {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let data: Vec<_> = (0..batches).map(|_| b.batch(rows)).collect();
                let t = Instant::now();
                b.push_and_sync(&data, 1_000, &refs);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// `rules` rules of GROUP BY avg over 10,000 keys in a one-minute window, the window filled first.
/// Each rule alerts on its own threshold, from 60 to 79.5 in steps of 0.5: with values uniform in
/// [0, 100) and 60 rows per host in the window, the lowest thresholds fire for a few dozen hosts
/// and the highest for none, as alerting thresholds on the tail of a distribution do.
fn group_by_rules(rules: usize) -> (Bench, Vec<String>) {
    let mut b = Bench::new(1, 10_000);
    let mut names = Vec::new();
    for i in 0..rules {
        let name = format!("hot_{i}");
        b.execute(&format!(
            "CREATE RULE {name} AS SELECT host, avg(v) AS a FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host HAVING avg(v) > {}",
            60.0 + (i % 40) as f64 * 0.5
        ));
        names.push(name);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for _ in 0..60 {
        let data = vec![b.batch(10_000)];
        b.push_and_sync(&data, 1_000, &refs);
    }
    let peek = b.rt.block_on(b.db.engine().peek(&refs)).expect("peek");
    let active: usize = peek
        .relations
        .iter()
        .flat_map(|(_, batches)| batches)
        .map(|b| b.batch.num_rows())
        .sum();
    eprintln!(
        "{rules} rule(s): {active} active alert rows after the warm-up, {} shared aggregation(s)",
        b.db.engine().shared_relations()
    );
    (b, names)
}

fn benches(c: &mut Criterion) {
    measure(c, "a_filter_rule", "filter_1pct", 65_536, 8, || {
        let b = Bench::new(1, 10_000);
        b.execute("CREATE RULE hot AS SELECT host, v FROM m WHERE v > 99.0");
        (b, vec!["hot".into()])
    });
    measure(
        c,
        "b_group_by_avg_10k_keys",
        "temporal_1m",
        10_000,
        10,
        || {
            let mut b = Bench::new(1, 10_000);
            b.execute("CREATE VIEW per_host AS SELECT host, avg(v) AS a FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host");
            for _ in 0..60 {
                let data = vec![b.batch(10_000)];
                b.push_and_sync(&data, 1_000, &["per_host"]);
            }
            (b, vec!["per_host".into()])
        },
    );
    // (d) and (e) read the same rows as (b), so their rows/s compare with (b)'s directly.
    let windowed = |name: &'static str, sql: &'static str| {
        move || {
            let mut b = Bench::new(1, 10_000);
            b.execute(&format!("CREATE VIEW {name} AS {sql}"));
            for _ in 0..60 {
                let data = vec![b.batch(10_000)];
                b.push_and_sync(&data, 1_000, &[name]);
            }
            (b, vec![name.to_string()])
        }
    };
    measure(
        c,
        "d_p99_per_host_10k_keys",
        "exact",
        10_000,
        10,
        windowed(
            "p99_exact",
            "SELECT host, percentile_cont(0.99) WITHIN GROUP (ORDER BY v) AS p99 FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host",
        ),
    );
    measure(
        c,
        "d_p99_per_host_10k_keys",
        "approx",
        10_000,
        10,
        windowed(
            "p99_approx",
            "SELECT host, approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY v) AS p99 FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host",
        ),
    );
    measure(
        c,
        "e_top10_hosts_by_cpu",
        "avg_then_top10",
        10_000,
        10,
        windowed(
            "top10",
            "SELECT host, avg(v) AS a FROM m WHERE ts > now() - INTERVAL '1 minute' GROUP BY host ORDER BY a DESC LIMIT 10",
        ),
    );
    for rules in [1, 100, 1_000] {
        let id = format!("{rules}_rule{}", if rules == 1 { "" } else { "s" });
        measure(c, "c_rules_on_one_source", &id, 10_000, 1, || {
            group_by_rules(rules)
        });
    }
}

criterion_group!(engine, benches);
criterion_main!(engine);
