//! Subscriptions: a rule's output changes reach a subscriber as the data and the clock move —
//! the snapshot first, then each change with its time, and progress.

mod common;

use std::time::Duration;

use tocsin_engine::{Datum, Row, SubscribeEvent, Subscription};
use tocsin_sql::StatementResult;

/// The next batch of changes (skipping progress), as (host, value, diff); fails after 20 s.
async fn next_changes(sub: &mut Subscription) -> (u64, Vec<(String, String, isize)>) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a change within 20 s")
            .expect("subscription open");
        if let SubscribeEvent::Changes { time, updates } = ev {
            let mut out: Vec<(String, String, isize)> = updates
                .iter()
                .map(|(r, d)| (fmt(r, 0), fmt(r, 1), *d))
                .collect();
            out.sort();
            return (time, out);
        }
    }
}

fn fmt(row: &Row, i: usize) -> String {
    match &row[i] {
        Datum::Str(s) => s.to_string(),
        Datum::Float(f) => f.get().to_string(),
        Datum::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn ms(s: &str) -> u64 {
    let secs = |t: &str| -> u64 {
        let p: Vec<u64> = t.split(':').map(|x| x.parse().unwrap()).collect();
        p[0] * 3600 + p[1] * 60 + p[2]
    };
    common::START_MS + (secs(s) - secs("10:00:00")) * 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_output_changes_reach_subscribers() {
    for workers in [1, 3] {
        let (db, clock) = common::database(workers);
        db.execute(
            "CREATE SOURCE cpu (host TEXT, cpu DOUBLE, ts TIMESTAMP) FROM WEBSOCKET;
             CREATE RULE hot AS SELECT host, max(cpu) AS cpu FROM cpu WHERE ts > now() - INTERVAL '30 seconds' GROUP BY host HAVING max(cpu) > 90;
             INSERT INTO cpu VALUES ('a', 95.0, '2026-11-21T09:59:50Z'), ('b', 10.0, '2026-11-21T09:59:50Z')",
        )
        .await
        .unwrap();
        let mut sub = db.subscribe("hot").await.unwrap();

        // The snapshot.
        let (t0, snapshot) = next_changes(&mut sub).await;
        assert_eq!(
            snapshot,
            vec![("a".into(), "95".into(), 1)],
            "workers={workers}"
        );

        // A value change retracts the old row and inserts the new one, at one time.
        db.execute("INSERT INTO cpu VALUES ('a', 97.0, '2026-11-21T10:00:00Z'), ('b', 99.0, '2026-11-21T10:00:00Z')").await.unwrap();
        // The manual clock only moves when told; a second passes.
        clock.set(ms("10:00:01")).unwrap();
        let (t1, changes) = next_changes(&mut sub).await;
        assert!(t1 > t0);
        assert_eq!(
            changes,
            vec![
                ("a".into(), "95".into(), -1),
                ("a".into(), "97".into(), 1),
                ("b".into(), "99".into(), 1)
            ],
            "workers={workers}"
        );

        // Time alone retracts rows: at 10:00:30 both samples of 10:00:00 leave the window.
        clock.set(ms("10:00:31")).unwrap();
        let (t2, changes) = next_changes(&mut sub).await;
        assert_eq!(
            t2,
            ms("10:00:30"),
            "the retraction happens exactly when the window passes"
        );
        assert_eq!(
            changes,
            vec![("a".into(), "97".into(), -1), ("b".into(), "99".into(), -1)],
            "workers={workers}"
        );

        // Progress follows the clock without new rows.
        clock.set(ms("10:00:40")).unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .unwrap()
                .unwrap()
            {
                SubscribeEvent::Progress(t) if t >= ms("10:00:40") => break,
                SubscribeEvent::Progress(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }

        // Dropping the rule ends the subscription.
        db.execute("DROP RULE hot").await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(ev) = sub.next().await {
                assert!(matches!(ev, SubscribeEvent::Progress(_)), "{ev:?}");
            }
        })
        .await;
        assert!(
            end.is_ok(),
            "the subscription ends when its rule is dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_a_query() {
    let (db, clock) = common::database(2);
    db.execute("CREATE SOURCE cpu (host TEXT, cpu DOUBLE, ts TIMESTAMP) FROM WEBSOCKET")
        .await
        .unwrap();
    let mut results = db
        .execute("SUBSCRIBE TO (SELECT host, count(*) AS n FROM cpu GROUP BY host)")
        .await
        .unwrap();
    let Some(StatementResult::Subscribe(mut sub)) = results.pop() else {
        panic!("expected a subscription")
    };
    assert_eq!(sub.schema().field(1).name(), "n");
    db.execute("INSERT INTO cpu (host, cpu) VALUES ('x', 1.0), ('x', 2.0)")
        .await
        .unwrap();
    clock.set(clock.now() + 1000).unwrap();
    let (_, changes) = next_changes(&mut sub).await;
    assert_eq!(changes, vec![("x".into(), "2".into(), 1)]);
}
