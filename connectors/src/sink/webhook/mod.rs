//! `WEBHOOK`: an HTTP(S) POST per notification.
//!
//! Options: `url` (http or https), `format` = `json` (tocsin's payload, the default),
//! `alertmanager` (an Alertmanager API v2 `postableAlert` array: point `url` at
//! `http://alertmanager:9093/api/v2/alerts`) or `slack` (an incoming-webhook message);
//! `headers` = `'Authorization: Bearer abc; X-Team: ops'`; `timeout` (default 10s).
//! Any 2xx answer is a delivery; anything else (or no answer within the timeout) is retried.
//!
//! With `group_by` (see [`super::group`]), one POST carries a group: in the `json` format
//! Alertmanager's webhook payload (`alerts` array, `groupLabels`, ...), in the `slack` format
//! one message listing the alerts. The `alertmanager` format sends alerts one by one and refuses
//! grouping: Alertmanager groups them itself.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::group::{alert_annotations, alert_labels};
use super::{rfc3339, Group, Notification, Sink, SinkError, SinkOptions, Transition};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Alertmanager,
    Slack,
}

pub struct Webhook {
    url: Uri,
    format: Format,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Parses `'Name: value; Name2: value2'`.
fn parse_headers(text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| format!("invalid header '{part}': use 'Name: value; Name2: value2'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name '{}'", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid value for header '{name}'"))?;
        out.push((name, value));
    }
    Ok(out)
}

impl Webhook {
    /// The URL as messages show it: without what may be a token (see [`crate::secrets`]).
    fn shown_url(&self) -> String {
        crate::secrets::shown("url", &self.url.to_string())
    }

    pub fn new(options: &SinkOptions) -> Result<Self, String> {
        let url_text = options.required("url", "http://127.0.0.1:9000/alerts")?;
        let url: Uri = url_text
            .parse()
            .map_err(|e| format!("invalid url '{url_text}': {e}"))?;
        match url.scheme_str() {
            Some("http" | "https") if url.host().is_some() => {}
            _ => {
                return Err(format!(
                    "invalid url '{url_text}': use http://host[:port]/path or https://..."
                ))
            }
        }
        let format = match options
            .get("format")
            .unwrap_or("json")
            .to_lowercase()
            .as_str()
        {
            "json" => Format::Json,
            "alertmanager" => Format::Alertmanager,
            "slack" => Format::Slack,
            other => {
                return Err(format!(
                    "unknown format '{other}': use json, alertmanager or slack"
                ))
            }
        };
        if format == Format::Alertmanager && options.has("group_by") {
            return Err(
                "option 'group_by' does not go with format 'alertmanager': Alertmanager \
                        groups the alerts it receives itself (use its route's group_by)"
                    .into(),
            );
        }
        let headers = options.get("headers").map(parse_headers).transpose()?;
        let timeout = options.duration("timeout", Duration::from_secs(10))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS set-up: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Webhook {
            url,
            format,
            headers: headers.unwrap_or_default(),
            timeout,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The request body for a notification in this sink's format.
    pub fn body(&self, n: &Notification) -> serde_json::Value {
        match self.format {
            Format::Json => n.to_json(),
            Format::Alertmanager => alertmanager_alerts(n),
            Format::Slack => {
                let emoji = match n.state {
                    Transition::Firing => ":red_circle:",
                    Transition::Resolved => ":large_green_circle:",
                };
                serde_json::json!({ "text": format!("{emoji} *{}*\n```{}```", n.subject(), n.text()) })
            }
        }
    }

    /// The request body for a group in this sink's format.
    pub fn group_body(&self, g: &Group) -> serde_json::Value {
        match self.format {
            Format::Slack => {
                let emoji = if g.firing() > 0 {
                    ":red_circle:"
                } else {
                    ":large_green_circle:"
                };
                let lines: Vec<String> = g
                    .alerts
                    .iter()
                    .map(|n| format!("• {}", n.subject()))
                    .collect();
                serde_json::json!({ "text": format!("{emoji} *{}*\n{}", g.subject(), lines.join("\n")) })
            }
            // Refused at build; a group is Alertmanager's webhook payload otherwise.
            Format::Json | Format::Alertmanager => g.to_json(),
        }
    }

    /// POSTs a body; `Ok` on any 2xx answer.
    async fn post(&self, body: &serde_json::Value, id: &str) -> Result<(), SinkError> {
        let body = serde_json::to_vec(body).map_err(|e| SinkError::new(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tocsin/", env!("CARGO_PKG_VERSION")))
            .header("X-Tocsin-Id", id);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SinkError::new(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                SinkError::new(format!("POST {}: {}", self.shown_url(), error_chain(&e)))
            })?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            if status.is_success() {
                return Ok(());
            }
            let text = body
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned())
                .unwrap_or_default();
            Err(SinkError::new(format!(
                "POST {} answered {status}: {}",
                self.shown_url(),
                text.trim()
            )))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                SinkError::new(format!(
                    "POST {}: no answer within {:?}",
                    self.shown_url(),
                    self.timeout
                ))
            })?
    }
}

/// An Alertmanager API v2 `postableAlerts` body: labels are the alert's labels plus `alertname`
/// (the rule) and `severity`; annotations hold summary, description, the values and tocsin's id.
pub fn alertmanager_alerts(n: &Notification) -> serde_json::Value {
    let labels = alert_labels(n);
    let annotations = alert_annotations(n);
    let ends = match n.state {
        Transition::Resolved => n.resolved_at,
        Transition::Firing => n.valid_until,
    };
    let mut alert = serde_json::json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(n.active_since),
    });
    if let Some(e) = ends {
        alert["endsAt"] = rfc3339(e).into();
    }
    serde_json::json!([alert])
}

#[async_trait::async_trait]
impl Sink for Webhook {
    async fn send(&self, n: &Notification) -> Result<(), SinkError> {
        self.post(&self.body(n), &n.id).await
    }

    async fn send_group(&self, g: &Group) -> Result<(), SinkError> {
        self.post(&self.group_body(g), &g.id()).await
    }
}

/// An error with its sources, `a: b: c` (a TLS failure hides under "client error (Connect)").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `TO WEBHOOK` in the registry (see [`super::SinkConnector`]).
pub struct WebhookConnector;

impl super::SinkConnector for WebhookConnector {
    fn name(&self) -> &'static str {
        "WEBHOOK"
    }
    fn build(
        &self,
        _name: &str,
        options: &super::SinkOptions,
    ) -> crate::Result<Box<dyn super::Sink>> {
        Ok(Box::new(Webhook::new(options)?))
    }
    fn example(&self) -> &'static str {
        "CREATE SINK example TO WEBHOOK WITH (url = 'http://127.0.0.1:9000/alerts', format = 'json')"
    }
}
