use super::*;
use crate::registry::build_sink as build;

fn notification(state: Transition) -> Notification {
    Notification {
        id: "abc".into(),
        rule: "hot_cpu".into(),
        state,
        severity: "critical".into(),
        labels: [("host".to_string(), "db1".to_string())].into(),
        values: [("cpu".to_string(), serde_json::json!(97.5))].into(),
        summary: "CPU 97.5% on db1".into(),
        description: String::new(),
        active_since: 1_763_800_000_000,
        firing_since: Some(1_763_800_030_000),
        resolved_at: (state == Transition::Resolved).then_some(1_763_800_090_000),
        repeat: 0,
        valid_until: (state == Transition::Firing).then_some(1_763_828_830_000),
    }
}

fn opts(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn subject_and_body_name_rule_labels_values_and_times() {
    let n = notification(Transition::Firing);
    assert_eq!(n.subject(), "[FIRING] hot_cpu: CPU 97.5% on db1");
    let r = notification(Transition::Resolved);
    assert_eq!(r.subject(), "[RESOLVED] hot_cpu: CPU 97.5% on db1");
    let text = r.text();
    for part in [
        "host = db1",
        "cpu = 97.5",
        "active since:  2025-11-22T08:26:40.000Z",
        "resolved at:   2025-11-22T08:28:10.000Z",
        "notification id: abc",
    ] {
        assert!(text.contains(part), "{part} missing in\n{text}");
    }
    let j = n.to_json();
    assert_eq!(j["state"], "firing");
    assert_eq!(j["labels"]["host"], "db1");
    assert_eq!(j["firing_since"], "2025-11-22T08:27:10.000Z");
    assert!(j["resolved_at"].is_null());
}

#[test]
fn alertmanager_payload_has_alertname_and_ends_when_resolved() {
    let a = webhook::alertmanager_alerts(&notification(Transition::Resolved));
    let a = &a[0];
    assert_eq!(a["labels"]["alertname"], "hot_cpu");
    assert_eq!(a["labels"]["host"], "db1");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["annotations"]["cpu"], "97.5");
    assert_eq!(a["endsAt"], "2025-11-22T08:28:10.000Z");
    let f = webhook::alertmanager_alerts(&notification(Transition::Firing));
    assert_eq!(f[0]["endsAt"], "2025-11-22T16:27:10.000Z");
}

/// The email transport's connection pool lives on the tokio runtime, as it does in the server.
#[tokio::test]
async fn options_are_checked_when_the_sink_is_built() {
    let err = |c: &str, kv: &[(&str, &str)]| build(c, "s", &opts(kv)).err().unwrap().to_string();
    assert!(err("WEBHOOK", &[]).contains("option 'url' is required"));
    assert!(err("WEBHOOK", &[("url", "ftp://x")]).contains("invalid url"));
    assert!(err("WEBHOOK", &[("url", "http://x"), ("format", "xml")]).contains("unknown format"));
    assert!(
        err("WEBHOOK", &[("url", "http://x"), ("headers", "nocolon")]).contains("invalid header")
    );
    assert!(err("WEBHOOK", &[("url", "http://x"), ("timout", "1s")])
        .contains("unknown option 'timout'"));
    assert!(
        err("EMAIL", &[("server", "smtp://h:25"), ("from", "a@b.c")]).contains("'to' is required")
    );
    assert!(err(
        "EMAIL",
        &[("server", "imap://h"), ("from", "a@b.c"), ("to", "x@y.z")]
    )
    .contains("not smtp"));
    assert!(err(
        "EMAIL",
        &[
            ("server", "smtp://h"),
            ("from", "not an address"),
            ("to", "x@y.z")
        ]
    )
    .contains("invalid address"));
    assert!(err("PAGER", &[]).contains("unknown sink connector"));
    assert!(build(
        "WEBHOOK",
        "s",
        &opts(&[
            ("url", "https://hooks.example.com/x"),
            ("format", "slack"),
            ("headers", "Authorization: Bearer t; X-Team: ops"),
            ("timeout", "5s")
        ])
    )
    .is_ok());
    assert!(build(
        "EMAIL",
        "s",
        &opts(&[
            ("server", "smtps://mail.example.com"),
            ("tls", "tls"),
            ("username", "u"),
            ("password", "p"),
            ("from", "tocsin@example.com"),
            ("to", "a@example.com, b@example.com")
        ])
    )
    .is_ok());
    assert!(build("LOG", "s", &[]).is_ok());
}

#[tokio::test]
async fn grouping_options_are_read_for_every_sink_and_checked() {
    let grouping = |c: &str, kv: &[(&str, &str)]| build(c, "s", &opts(kv)).map(|b| b.grouping);
    assert_eq!(
        grouping("LOG", &[]).unwrap(),
        None,
        "no group_by: one by one"
    );
    let g = grouping("LOG", &[("group_by", "rule, Host"), ("group_wait", "2s")])
        .unwrap()
        .unwrap();
    assert_eq!(g.by, Some(vec!["rule".to_string(), "host".to_string()]));
    assert_eq!(g.wait, std::time::Duration::from_secs(2));
    assert_eq!(g.interval, std::time::Duration::from_secs(300));
    let each = grouping("WEBHOOK", &[("url", "http://x"), ("group_by", "...")])
        .unwrap()
        .unwrap();
    assert_eq!(each.by, None);
    let err = |c: &str, kv: &[(&str, &str)]| build(c, "s", &opts(kv)).err().unwrap().to_string();
    assert!(err("LOG", &[("group_wait", "2s")]).contains("needs group_by"));
    assert!(err("LOG", &[("group_by", " , ")]).contains("names no label"));
    assert!(err("LOG", &[("group_by", "rule"), ("group_wait", "soon")]).contains("group_wait"));
    assert!(err(
        "WEBHOOK",
        &[
            ("url", "http://x"),
            ("format", "alertmanager"),
            ("group_by", "rule")
        ]
    )
    .contains("Alertmanager groups"));
}

#[test]
fn a_group_is_one_message_with_every_alert_and_counts() {
    let g = Grouping {
        by: Some(vec!["rule".into()]),
        wait: std::time::Duration::from_secs(10),
        interval: std::time::Duration::from_secs(300),
    };
    let a = notification(Transition::Firing);
    let mut b = notification(Transition::Resolved);
    b.labels.insert("host".into(), "db2".into());
    b.id = "def".into();
    assert_eq!(g.key(&a), g.key(&b), "grouped by rule alone");
    assert_eq!(g.key(&a), r#"{"rule":"hot_cpu"}"#);
    let group = Group {
        sink: "oncall".into(),
        labels: g.labels(&a),
        key: g.key(&a),
        alerts: vec![a.clone(), b.clone()],
    };
    assert_eq!(group.subject(), "[FIRING:1, RESOLVED:1] rule=hot_cpu");
    let text = group.text();
    assert!(
        text.contains("host = db1") && text.contains("host = db2"),
        "{text}"
    );
    let j = group.to_json();
    assert_eq!(j["version"], "4");
    assert_eq!(j["status"], "firing");
    assert_eq!(j["receiver"], "oncall");
    assert_eq!(j["groupLabels"]["rule"], "hot_cpu");
    assert_eq!(j["commonLabels"]["alertname"], "hot_cpu");
    assert!(
        j["commonLabels"].get("host").is_none(),
        "host differs between the alerts"
    );
    let alerts = j["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["status"], "firing");
    assert_eq!(alerts[0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(alerts[1]["status"], "resolved");
    assert_eq!(alerts[1]["labels"]["host"], "db2");
    assert_eq!(alerts[1]["annotations"]["tocsin_id"], "def");
    assert_ne!(alerts[0]["fingerprint"], alerts[1]["fingerprint"]);
    assert_eq!(group.id(), group.clone().id(), "stable");
    let each = Grouping { by: None, ..g };
    assert_ne!(each.key(&a), each.key(&b), "'...': each alert alone");
}
