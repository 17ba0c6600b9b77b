//! The connector registries are complete: every registered source and sink kind's example
//! statement is created, listed by SHOW, replayed from the catalog log after kill -9, and
//! dropped, on the real binary.

use serde_json::Value;

use crate::common::Server;

/// The names in the first column of a SHOW.
async fn listed(s: &Server, show: &str) -> Vec<String> {
    s.rows(show)
        .await
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_kind_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &[]).await;
    let sources = tocsin_connectors::registry::sources();
    let sinks = tocsin_connectors::registry::sinks();
    assert!(sources.len() >= 5 && sinks.len() >= 3);
    for kind in sources {
        let (st, v) = s.sql(kind.example()).await;
        assert_eq!(st, 200, "{}: {v}", kind.example());
        assert!(listed(&s, "SHOW SOURCES")
            .await
            .contains(&"example".to_string()));
        let data = s.kill();
        s = Server::start(&data, &[]).await;
        let catalog: Value =
            serde_json::from_slice(&s.get("/v1/catalog").await.unwrap().1).unwrap();
        let source = catalog["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "example")
            .unwrap_or_else(|| panic!("{} was not replayed: {catalog}", kind.name()));
        assert!(
            source["sql"]
                .as_str()
                .unwrap()
                .contains(&format!("FROM {}", kind.name())),
            "{source}"
        );
        s.rows("DROP SOURCE example").await;
        assert!(!listed(&s, "SHOW SOURCES")
            .await
            .contains(&"example".to_string()));
    }
    for kind in sinks {
        let (st, v) = s.sql(kind.example()).await;
        assert_eq!(st, 200, "{}: {v}", kind.example());
        let data = s.kill();
        s = Server::start(&data, &[]).await;
        let rows = s.rows("SHOW SINKS").await;
        let row = rows
            .iter()
            .find(|r| r[0] == "example")
            .unwrap_or_else(|| panic!("{} was not replayed", kind.name()));
        assert_eq!(row[1], kind.name());
        s.rows("DROP SINK example").await;
        assert!(!listed(&s, "SHOW SINKS")
            .await
            .contains(&"example".to_string()));
    }
    // What is not registered is refused with the list of what is.
    let (st, v) = s.sql("CREATE SOURCE k (v BIGINT) FROM KAFKA").await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&tocsin_connectors::registry::source_names()));
    let (st, v) = s.sql("CREATE SINK p TO PAGERDUTY").await;
    assert_eq!(st, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&tocsin_connectors::registry::sink_names()));
}
