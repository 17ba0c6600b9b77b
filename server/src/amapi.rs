//! The read side of Alertmanager's API v2, so that Grafana's Alertmanager data source (with
//! implementation "Prometheus") lists tocsin's alerts and silences: `GET /api/v2/status`,
//! `/api/v2/alerts`, `/api/v2/alerts/groups`, `/api/v2/silences` and `/api/v2/silence/{id}`.
//!
//! In this view a rule is the `alertname` label (silence matchers on `rule` show as
//! `alertname`), a sink is a receiver, and a silence's id is its name.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tocsin_sql::options::{Matcher, Silence};

use crate::alerts::FiringAlert;
use crate::state::AppRef;
use tocsin_engine::fmt_ms;

pub fn routes() -> Router<AppRef> {
    Router::new()
        .route("/api/v2/status", get(status))
        .route("/api/v2/alerts", get(alerts))
        .route("/api/v2/alerts/groups", get(groups))
        .route("/api/v2/silences", get(silences))
        .route("/api/v2/silence/{id}", get(silence))
}

/// Alertmanager answers a bad parameter with 400 and a JSON string.
fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(Value::String(message))).into_response()
}

/// The receiver of alerts whose rule names no sink.
const DEFAULT_RECEIVER: &str = "tocsin";

/// `GET /api/v2/status`. `config.original` is a valid Alertmanager configuration whose receivers
/// are tocsin's sinks, because clients parse it.
async fn status(State(app): State<AppRef>) -> Response {
    let mut config = format!("route:\n  receiver: {DEFAULT_RECEIVER}\n  group_by: [alertname]\nreceivers:\n- name: {DEFAULT_RECEIVER}\n");
    for entry in app.tocsin.catalog().await {
        if entry.kind() == tocsin_sql::parser::ObjectKind::Sink {
            config.push_str(&format!("- name: {}\n", Value::String(entry.name)));
        }
    }
    // Replicas show as Alertmanager shows its cluster: this one's name, and the peers it reaches.
    let cluster = match &app.cluster {
        None => json!({"status": "disabled", "peers": []}),
        Some(c) => json!({
            "name": c.config.id,
            "status": "ready",
            "peers": c.peers.iter()
                .filter(|p| p.state() == crate::cluster::LinkState::Up)
                .map(|p| json!({"name": p.config.id, "address": p.config.url}))
                .collect::<Vec<_>>(),
        }),
    };
    Json(json!({
        "cluster": cluster,
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "branch": "",
            "buildUser": "tocsin",
            "buildDate": "",
            "goVersion": "none (tocsin is written in Rust)",
        },
        "config": {"original": config},
        "uptime": fmt_ms(app.started_ms),
    }))
    .into_response()
}

/// One matcher of a `filter` parameter: tocsin's one label matcher ([`Matcher`]), with `rule`
/// meaning `alertname` as in the labels this API shows.
struct LabelMatcher(Matcher);

impl LabelMatcher {
    fn parse(text: &str) -> Result<Self, String> {
        let mut m = Matcher::parse(text).map_err(|e| format!("bad matcher format: {e}"))?;
        if m.label == "rule" {
            m.label = "alertname".into();
        }
        Ok(LabelMatcher(m))
    }

    /// Alertmanager's rule: a missing label has the empty value.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .matches_value(labels.get(&self.0.label).map(String::as_str))
    }
}

/// What `GET /api/v2/alerts` and `/alerts/groups` select.
struct AlertQuery {
    active: bool,
    silenced: bool,
    filters: Vec<LabelMatcher>,
    receiver: Option<regex::Regex>,
}

impl AlertQuery {
    fn parse(raw: Option<String>) -> Result<Self, String> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| e.to_string())?;
        let flag = |name: &str| -> Result<bool, String> {
            match pairs.iter().rev().find(|(k, _)| k == name) {
                None => Ok(true),
                Some((_, v)) => v
                    .parse::<bool>()
                    .map_err(|_| format!("{name}: expected true or false, got {v:?}")),
            }
        };
        let q = AlertQuery {
            active: flag("active")?,
            silenced: flag("silenced")?,
            filters: pairs
                .iter()
                .filter(|(k, _)| k == "filter")
                .map(|(_, v)| LabelMatcher::parse(v))
                .collect::<Result<_, _>>()?,
            receiver: match pairs.iter().find(|(k, _)| k == "receiver") {
                Some((_, r)) => Some(
                    regex::Regex::new(&format!("^(?:{r})$"))
                        .map_err(|e| format!("failed to parse receiver param: {e}"))?,
                ),
                None => None,
            },
        };
        // `inhibited`, `unprocessed` and `muted` are accepted: tocsin has no inhibition, and
        // every alert it shows is processed.
        flag("inhibited")?;
        flag("unprocessed")?;
        Ok(q)
    }

    fn receivers(a: &FiringAlert) -> Vec<String> {
        if a.sinks.is_empty() {
            vec![DEFAULT_RECEIVER.to_string()]
        } else {
            a.sinks.clone()
        }
    }

    fn selects(&self, a: &FiringAlert) -> bool {
        let silenced = !a.silenced_by.is_empty();
        (silenced || self.active)
            && (!silenced || self.silenced)
            && self.filters.iter().all(|m| m.matches(&a.labels))
            && self
                .receiver
                .as_ref()
                .is_none_or(|r| Self::receivers(a).iter().any(|s| r.is_match(s)))
    }
}

fn alert_json(a: &FiringAlert) -> Value {
    let state = if a.silenced_by.is_empty() {
        "active"
    } else {
        "suppressed"
    };
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "receivers": AlertQuery::receivers(a).iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
        "fingerprint": a.fingerprint,
        "startsAt": fmt_ms(a.firing_since),
        "updatedAt": fmt_ms(a.updated),
        "endsAt": fmt_ms(a.valid_until),
        "status": {
            "state": state,
            "silencedBy": a.silenced_by,
            "inhibitedBy": [],
            "mutedBy": [],
        },
    })
}

/// `GET /api/v2/alerts`: firing alerts, by fingerprint.
async fn alerts(State(app): State<AppRef>, RawQuery(raw): RawQuery) -> Response {
    let q = match AlertQuery::parse(raw) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let list: Vec<Value> = app
        .alerts
        .firing()
        .iter()
        .filter(|a| q.selects(a))
        .map(alert_json)
        .collect();
    Json(list).into_response()
}

/// `GET /api/v2/alerts/groups`: firing alerts grouped by receiver (sink) and rule.
async fn groups(State(app): State<AppRef>, RawQuery(raw): RawQuery) -> Response {
    let q = match AlertQuery::parse(raw) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let mut groups: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for a in app.alerts.firing().iter().filter(|a| q.selects(a)) {
        for r in AlertQuery::receivers(a) {
            if q.receiver.as_ref().is_some_and(|re| !re.is_match(&r)) {
                continue;
            }
            let rule = a.labels.get("alertname").cloned().unwrap_or_default();
            groups.entry((r, rule)).or_default().push(alert_json(a));
        }
    }
    let list: Vec<Value> = groups
        .into_iter()
        .map(|((receiver, rule), alerts)| {
            json!({
                "labels": {"alertname": rule},
                "routeLabels": {},
                "receiver": {"name": receiver},
                "alerts": alerts,
            })
        })
        .collect();
    Json(list).into_response()
}

fn silence_state(s: &Silence, now: i64) -> &'static str {
    if s.active(now) {
        "active"
    } else if now < s.starts_ms {
        "pending"
    } else {
        "expired"
    }
}

fn silence_json(name: &str, s: &Silence, now: i64) -> Value {
    json!({
        "id": name,
        "status": {"state": silence_state(s, now)},
        "updatedAt": fmt_ms(s.starts_ms.min(now)),
        "annotations": {},
        "matchers": s.matchers.iter().map(|m| json!({
            "name": if m.label == "rule" { "alertname" } else { m.label.as_str() },
            "value": m.value,
            "isRegex": m.is_regex(),
            "isEqual": m.is_positive(),
        })).collect::<Vec<_>>(),
        "startsAt": fmt_ms(s.starts_ms),
        "endsAt": fmt_ms(s.until_ms),
        "createdBy": "tocsin",
        "comment": s.comment,
    })
}

/// `GET /api/v2/silences`: active ones by end, then pending by start, then expired, latest
/// ended first (Alertmanager's order). `filter` selects silences with a matcher it matches.
async fn silences(State(app): State<AppRef>, RawQuery(raw): RawQuery) -> Response {
    let q = match AlertQuery::parse(raw) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let now = app.alerts.now();
    let mut list = app.alerts.silences();
    list.retain(|(_, s)| {
        q.filters.iter().all(|f| {
            s.matchers.iter().any(|m| {
                let name = if m.label == "rule" {
                    "alertname"
                } else {
                    m.label.as_str()
                };
                name == f.0.label && m.is_positive() && f.0.matches_value(Some(&m.value))
            })
        })
    });
    let rank = |s: &Silence| match silence_state(s, now) {
        "active" => (0, s.until_ms),
        "pending" => (1, s.starts_ms),
        _ => (2, -s.until_ms),
    };
    list.sort_by_key(|(_, s)| rank(s));
    Json(
        list.iter()
            .map(|(n, s)| silence_json(n, s, now))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// `GET /api/v2/silence/{id}`.
async fn silence(State(app): State<AppRef>, Path(id): Path<String>) -> Response {
    let now = app.alerts.now();
    match app.alerts.silences().iter().find(|(n, _)| *n == id) {
        Some((n, s)) => Json(silence_json(n, s, now)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(Value::String(format!("silence {id} not found"))),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matchers_follow_alertmanager() {
        let l = labels(&[("alertname", "high_cpu"), ("host", "web-1")]);
        assert!(LabelMatcher::parse("alertname=\"high_cpu\"")
            .unwrap()
            .matches(&l));
        assert!(LabelMatcher::parse("rule=high_cpu").unwrap().matches(&l));
        assert!(!LabelMatcher::parse("host!=\"web-1\"").unwrap().matches(&l));
        assert!(LabelMatcher::parse("host=~\"web-.*\"").unwrap().matches(&l));
        // Regexes are anchored.
        assert!(!LabelMatcher::parse("host=~\"web\"").unwrap().matches(&l));
        assert!(LabelMatcher::parse("host!~\"db-.*\"").unwrap().matches(&l));
        // A missing label is the empty value.
        assert!(LabelMatcher::parse("zone=\"\"").unwrap().matches(&l));
        assert!(LabelMatcher::parse("{host=\"x\"}").is_err());
        assert!(LabelMatcher::parse("host").is_err());
    }
}
