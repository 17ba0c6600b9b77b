//! The Alertmanager API v2 read side, checked against the field names and shapes of
//! Alertmanager's OpenAPI spec (api/v2/openapi.yaml): every response is parsed into structs that
//! mirror the spec's definitions, refusing unknown fields and requiring the required ones.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::common::{eventually, Server};

type LabelSet = BTreeMap<String, String>;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AlertmanagerStatus {
    cluster: ClusterStatus,
    version_info: VersionInfo,
    config: AlertmanagerConfig,
    uptime: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ClusterStatus {
    #[serde(default)]
    name: Option<String>,
    status: String,
    #[serde(default)]
    peers: Vec<PeerStatus>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PeerStatus {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    address: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VersionInfo {
    version: String,
    revision: String,
    branch: String,
    build_user: String,
    build_date: String,
    go_version: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AlertmanagerConfig {
    original: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GettableAlert {
    labels: LabelSet,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
    annotations: LabelSet,
    receivers: Vec<ReceiverReference>,
    fingerprint: String,
    starts_at: String,
    updated_at: String,
    ends_at: String,
    status: AlertStatus,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AlertStatus {
    state: String,
    silenced_by: Vec<String>,
    inhibited_by: Vec<String>,
    muted_by: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ReceiverReference {
    name: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AlertGroup {
    labels: LabelSet,
    route_labels: LabelSet,
    receiver: ReceiverReference,
    alerts: Vec<GettableAlert>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GettableSilence {
    id: String,
    status: SilenceStatus,
    updated_at: String,
    annotations: LabelSet,
    matchers: Vec<Matcher>,
    starts_at: String,
    ends_at: String,
    created_by: String,
    comment: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SilenceStatus {
    state: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Matcher {
    name: String,
    value: String,
    is_regex: bool,
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

fn time(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

async fn get<T: serde::de::DeserializeOwned>(s: &Server, path: &str) -> T {
    let (st, headers, body) = s.request("GET", path, None, Vec::new()).await.unwrap();
    assert_eq!(st, 200, "{path}: {}", String::from_utf8_lossy(&body));
    let ct = headers["content-type"].to_str().unwrap();
    assert!(ct.contains("json"), "{path}: {ct}");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)))
}

/// Two firing alerts (one silenced) and a pending one, seen through every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_api_lists_alerts_and_silences() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows(
        "CREATE SOURCE cpu (host TEXT, cpu DOUBLE) FROM HTTP;
         CREATE SINK pager TO LOG;
         CREATE RULE hot AS SELECT host, max(cpu) AS cpu FROM cpu GROUP BY host HAVING max(cpu) > 90
           WITH (for = '0s', severity = 'critical', sink = 'pager', summary = 'CPU {{cpu}} on {{host}}');
         CREATE RULE warm AS SELECT host, max(cpu) AS cpu FROM cpu GROUP BY host HAVING max(cpu) > 50
           WITH (for = '1h', sink = 'pager');
         CREATE SILENCE quiet_b WITH (matchers = 'rule=hot, host=b', until = '1h', comment = 'maintenance');
         CREATE SILENCE later WITH (matchers = 'host=c', starts = '30m', until = '2h')",
    )
    .await;
    let body = br#"[{"host": "a", "cpu": 97}, {"host": "b", "cpu": 95}]"#.to_vec();
    let (st, _) = s.ingest("cpu", "application/json", body).await;
    assert_eq!(st, 200);

    let alerts: Vec<GettableAlert> = eventually(20, "two firing alerts", || async {
        let a: Vec<GettableAlert> = get(&s, "/api/v2/alerts").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    // Pending alerts (warm, for 1h) are not listed; firing ones are, by fingerprint.
    let mut fingerprints: Vec<&str> = alerts.iter().map(|a| a.fingerprint.as_str()).collect();
    fingerprints.sort();
    assert_eq!(
        fingerprints,
        alerts
            .iter()
            .map(|a| a.fingerprint.as_str())
            .collect::<Vec<_>>()
    );
    let by_host: BTreeMap<&str, &GettableAlert> = alerts
        .iter()
        .map(|a| (a.labels["host"].as_str(), a))
        .collect();
    let a = by_host["a"];
    assert_eq!(a.labels["alertname"], "hot");
    assert_eq!(a.labels["severity"], "critical");
    assert_eq!(a.annotations["summary"], "CPU 97 on a");
    assert_eq!(a.receivers[0].name, "pager");
    assert_eq!(a.status.state, "active");
    assert!(a.status.silenced_by.is_empty() && a.status.inhibited_by.is_empty());
    assert!(a.status.muted_by.is_empty() && a.generator_url.is_none());
    assert!(time(&a.starts_at) <= time(&a.updated_at));
    assert!(time(&a.ends_at) > time(&a.starts_at));
    let b = by_host["b"];
    assert_eq!(b.status.state, "suppressed");
    assert_eq!(b.status.silenced_by, vec!["quiet_b"]);

    // Filters, as Grafana sends them.
    let only_a: Vec<GettableAlert> = get(&s, "/api/v2/alerts?filter=host%3D%22a%22").await;
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].labels["host"], "a");
    let regex: Vec<GettableAlert> = get(
        &s,
        "/api/v2/alerts?filter=alertname%3D~%22h.*%22&filter=host%21%3D%22a%22",
    )
    .await;
    assert_eq!(regex.len(), 1);
    assert_eq!(regex[0].labels["host"], "b");
    let unsilenced: Vec<GettableAlert> = get(&s, "/api/v2/alerts?silenced=false").await;
    assert_eq!(unsilenced.len(), 1);
    let suppressed_only: Vec<GettableAlert> = get(&s, "/api/v2/alerts?active=false").await;
    assert_eq!(suppressed_only.len(), 1);
    assert_eq!(suppressed_only[0].labels["host"], "b");
    let none: Vec<GettableAlert> = get(&s, "/api/v2/alerts?receiver=other").await;
    assert!(none.is_empty());
    let (st, _, _) = s
        .request(
            "GET",
            "/api/v2/alerts?filter=%7Bhost%3Da%7D",
            None,
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(st, 400);

    let groups: Vec<AlertGroup> = get(&s, "/api/v2/alerts/groups").await;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].receiver.name, "pager");
    assert_eq!(groups[0].labels["alertname"], "hot");
    assert!(groups[0].route_labels.is_empty());
    assert_eq!(groups[0].alerts.len(), 2);

    let silences: Vec<GettableSilence> = get(&s, "/api/v2/silences").await;
    let ids: Vec<&str> = silences.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["quiet_b", "later"]);
    let q = &silences[0];
    assert_eq!(q.status.state, "active");
    assert_eq!(q.comment, "maintenance");
    assert_eq!(q.created_by, "tocsin");
    assert!(q.annotations.is_empty());
    assert!(time(&q.updated_at) <= time(&q.ends_at) && time(&q.starts_at) < time(&q.ends_at));
    let m: Vec<(&str, &str, bool, bool)> = q
        .matchers
        .iter()
        .map(|m| (m.name.as_str(), m.value.as_str(), m.is_regex, m.is_equal))
        .collect();
    assert_eq!(
        m,
        vec![
            ("alertname", "hot", false, true),
            ("host", "b", false, true)
        ]
    );
    assert_eq!(silences[1].status.state, "pending");
    let one: GettableSilence = get(&s, "/api/v2/silence/later").await;
    assert_eq!(one.id, "later");
    let (st, _, _) = s
        .request("GET", "/api/v2/silence/nope", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(st, 404);

    let status: AlertmanagerStatus = get(&s, "/api/v2/status").await;
    assert_eq!(status.cluster.status, "disabled");
    assert!(status.cluster.name.is_none() && status.cluster.peers.is_empty());
    assert!(!status.version_info.version.is_empty());
    let _ = (
        &status.version_info.revision,
        &status.version_info.branch,
        &status.version_info.build_user,
        &status.version_info.build_date,
        &status.version_info.go_version,
    );
    assert!(time(&status.uptime) <= chrono::Utc::now().timestamp_millis());
    // The configuration is a valid Alertmanager configuration: the real one's checker agrees.
    let config = dir.path().join("am.yml");
    std::fs::write(&config, &status.config.original).unwrap();
    assert!(status.config.original.contains("- name: \"pager\""));
    let check = std::process::Command::new("amtool")
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .expect("amtool (from prometheus-alertmanager) is needed for this test");
    assert!(
        check.status.success(),
        "{}\n{}",
        status.config.original,
        String::from_utf8_lossy(&check.stdout)
    );
    // Grafana's health check for the "Prometheus" implementation wants this one to be absent.
    let (st, _, _) = s
        .request("GET", "/alertmanager/api/v2/status", None, Vec::new())
        .await
        .unwrap();
    assert_eq!(st, 404);
}
