//! `FROM PROMETHEUS SCRAPE`: scrapes targets every `interval` as Prometheus does, into the
//! metrics shape, with a `<source>_status` companion holding one row per target per scrape.
//!
//! Each target has its own task, their first scrapes spread over the interval, so a slow or dead
//! target delays only itself. A scrape asks for OpenMetrics or the text format with gzip, reads
//! at most [`MAX_BODY`] bytes within `timeout`, and adds `job` and `instance` to every sample (a
//! sample's own `job` or `instance` becomes `exported_job` / `exported_instance`, as Prometheus
//! does without `honor_labels`). Timestamps in the exposition are kept; samples without one get
//! the scrape's time. Like Prometheus, every scrape also writes `up` (1 or 0),
//! `scrape_duration_seconds` and `scrape_samples_scraped`. What the targets scraped within
//! [`GATHER`] is written together, one sync of the write-ahead log for all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::exposition::{self, Flavor};
use crate::metrics::{Limits, Rows};
use crate::source::{
    each_target, Columns, Derived, Options, PushError, Running, SourceConnector, Task,
};

/// The most a target's answer may hold, decompressed.
pub const MAX_BODY: usize = 64 << 20;

/// The name suffix of the companion status relation.
pub const STATUS_SUFFIX: &str = "_status";

const OPTIONS: &[&str] = &[
    "targets",
    "path",
    "scheme",
    "timeout",
    "job",
    "bearer_token",
    "username",
    "password",
];

/// `FROM PROMETHEUS SCRAPE`.
pub struct PrometheusScrape;

impl SourceConnector for PrometheusScrape {
    fn name(&self) -> &'static str {
        "PROMETHEUS SCRAPE"
    }
    fn options(&self) -> &'static [&'static str] {
        OPTIONS
    }
    fn collecting(&self) -> bool {
        true
    }
    fn columns(&self) -> Columns {
        Columns::Labels
    }
    fn example(&self) -> &'static str {
        "CREATE SOURCE example (instance TEXT) FROM PROMETHEUS SCRAPE WITH (targets = '127.0.0.1:9100', interval = '15s')"
    }
    fn derive(&self, options: &Options) -> crate::Result<Derived> {
        config(options, "example", Duration::from_secs(15))?;
        Ok(Derived {
            schema: crate::metrics::schema(),
            companions: vec![(STATUS_SUFFIX.to_string(), status_schema())],
        })
    }
    fn run(&self, source: Running) -> Option<Task> {
        Some(Box::pin(scrape(Arc::new(source))))
    }
}

/// A scrape source's options, checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub targets: Vec<String>,
    pub scheme: String,
    pub path: String,
    pub timeout: Duration,
    pub job: String,
    /// The `Authorization` header, when a token or user is given.
    authorization: Option<String>,
}

fn get<'a>(options: &'a Options, key: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Parses and checks a scrape source's options; `name` is the source's (the default `job`).
pub fn config(options: &Options, name: &str, interval: Duration) -> Result<Config, String> {
    let targets: Vec<String> = get(options, "targets")
        .unwrap_or("")
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        return Err("a PROMETHEUS SCRAPE source needs targets = 'host:port, ...'".into());
    }
    for t in &targets {
        if t.contains('/') || t.contains(char::is_whitespace) || t.contains('@') {
            return Err(format!(
                "target '{t}' is not host:port (the scheme and path are the options scheme and path)"
            ));
        }
    }
    let scheme = get(options, "scheme")
        .unwrap_or("http")
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme '{scheme}': use http or https"));
    }
    let path = get(options, "path").unwrap_or("/metrics").to_string();
    if !path.starts_with('/') {
        return Err(format!("path '{path}' must start with '/'"));
    }
    let timeout = match get(options, "timeout") {
        Some(t) => crate::duration::parse(t).map_err(|e| e.to_string())?,
        None => interval.min(Duration::from_secs(10)),
    };
    if timeout.is_zero() || timeout > interval {
        return Err(format!(
            "timeout ({timeout:?}) must be longer than 0 and at most the interval ({interval:?})"
        ));
    }
    let authorization = match (
        get(options, "bearer_token"),
        get(options, "username"),
        get(options, "password"),
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("give bearer_token or username and password, not both".into())
        }
        (Some(t), None, None) => Some(format!("Bearer {t}")),
        (None, Some(u), p) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", p.unwrap_or("")))
        )),
        (None, None, Some(_)) => return Err("password needs a username".into()),
        (None, None, None) => None,
    };
    Ok(Config {
        targets,
        scheme,
        path,
        timeout,
        job: get(options, "job").unwrap_or(name).to_string(),
        authorization,
    })
}

/// The companion relation: one row per target per scrape.
pub fn status_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("target", DataType::Utf8, true),
        Field::new("up", DataType::Boolean, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("samples", DataType::Int64, true),
        Field::new("ts", crate::source::ts_type(), true),
    ]))
}

/// How one scrape of one target went.
#[derive(Clone, Debug, PartialEq)]
pub struct Scraped {
    pub target: String,
    pub error: Option<String>,
    pub duration_ms: f64,
    pub samples: usize,
}

fn status_batch(s: &Scraped, now_ms: i64) -> RecordBatch {
    let mut target = StringBuilder::new();
    let mut up = BooleanBuilder::new();
    let mut error = StringBuilder::new();
    let mut duration = Float64Builder::new();
    let mut samples = Int64Builder::new();
    target.append_value(&s.target);
    up.append_value(s.error.is_none());
    error.append_option(s.error.as_deref());
    duration.append_value(s.duration_ms);
    samples.append_value(s.samples as i64);
    let columns: Vec<ArrayRef> = vec![
        std::sync::Arc::new(target.finish()),
        std::sync::Arc::new(up.finish()),
        std::sync::Arc::new(error.finish()),
        std::sync::Arc::new(duration.finish()),
        std::sync::Arc::new(samples.finish()),
        std::sync::Arc::new(TimestampMillisecondArray::from(vec![now_ms]).with_timezone("UTC")),
    ];
    RecordBatch::try_new(status_schema(), columns).expect("status rows match their schema")
}

/// The rows of one scraped body: every sample with `job` and `instance`.
pub fn rows(
    body: &str,
    flavor: Flavor,
    schema: &SchemaRef,
    job: &str,
    instance: &str,
    now_ms: i64,
    limits: &Limits,
) -> Result<Rows, String> {
    // About a sample a line, and room for Prometheus' three series about the scrape.
    let lines = body.bytes().filter(|&b| b == b'\n').count();
    let mut rows = Rows::with_capacity(schema, lines + 4);
    let mut spare: Vec<(&str, &str)> = Vec::new();
    let mut n = 0;
    exposition::each(body, flavor, |s| {
        n += 1;
        // The labels borrow from this sample alone; the vector's memory serves them all.
        let mut labels = reuse(std::mem::take(&mut spare));
        for (k, v) in &s.labels {
            let k: &str = match k.as_ref() {
                "job" => "exported_job",
                "instance" => "exported_instance",
                k => k,
            };
            labels.push((k, v));
        }
        labels.push(("job", job));
        labels.push(("instance", instance));
        limits
            .check(labels.iter().copied())
            .map_err(|e| format!("sample {}: {e}", s.name))?;
        crate::metrics::sort_labels(&mut labels, |l| l.0);
        rows.series(&s.name, labels.iter().copied());
        rows.sample(s.value, s.ts_ms.unwrap_or(now_ms), n);
        spare = reuse(labels);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// An empty vector of pairs of borrowed strings on the memory of another, whatever the lifetimes
/// (collecting in place keeps the allocation).
fn reuse<'b>(mut v: Vec<(&str, &str)>) -> Vec<(&'b str, &'b str)> {
    v.clear();
    v.into_iter().map(|_| ("", "")).collect()
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<bytes::Bytes>,
>;

/// What a target answered: the body and its content type.
async fn fetch(
    client: &HttpClient,
    config: &Config,
    target: &str,
) -> Result<(String, Flavor), String> {
    let url = format!("{}://{target}{}", config.scheme, config.path);
    let mut req = hyper::Request::get(&url)
        .header(
            hyper::header::ACCEPT,
            "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .header(hyper::header::ACCEPT_ENCODING, "gzip")
        .header(hyper::header::USER_AGENT, "tocsin")
        .header(
            "x-prometheus-scrape-timeout-seconds",
            format!("{}", config.timeout.as_secs_f64()),
        );
    if let Some(a) = &config.authorization {
        req = req.header(hyper::header::AUTHORIZATION, a);
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad request for {url}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| crate::sink::webhook::error_chain(&e))?;
    let status = resp.status();
    if status != hyper::StatusCode::OK {
        return Err(format!("server returned HTTP status {status}"));
    }
    let header = |h| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let flavor = Flavor::from_content_type(&header(hyper::header::CONTENT_TYPE));
    let encoding = header(hyper::header::CONTENT_ENCODING);
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let body =
        crate::compression::decompress(&encoding, body, MAX_BODY).map_err(|e| e.to_string())?;
    let text =
        String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())?;
    Ok((text, flavor))
}

/// Scrapes every target of a source every `interval`.
async fn scrape(source: Arc<Running>) {
    let config = match config(&source.options, &source.name, source.interval) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!("source {}: cannot scrape: {e}", source.name);
            return;
        }
    };
    let https = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
    {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::warn!("source {}: TLS set-up: {e}", source.name);
            return;
        }
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(https);
    tracing::info!(
        "source {}: scraping {} target(s) every {:?}",
        source.name,
        config.targets.len(),
        source.interval
    );
    let targets = config.targets.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(targets.len().clamp(16, 4096));
    let scrapes = each_target(source.interval, targets, |target, offset| {
        scrape_target(
            source.clone(),
            config.clone(),
            client.clone(),
            tx.clone(),
            target,
            offset,
        )
    });
    // The writer ends when the source is gone; the scrapes then end with it.
    tokio::select! {
        _ = scrapes => {}
        _ = write(source.clone(), rx) => {}
    }
}

/// How long the writer gathers scraped rows before it writes them: the scrapes of many targets
/// go to disk together, one sync for all of them rather than one each.
const GATHER: Duration = Duration::from_millis(250);

/// Writes what the targets scraped: what arrives within [`GATHER`] of the first, as one batch
/// per relation (`false`: the source, `true`: its status). Ends when the source is gone.
async fn write(source: Arc<Running>, mut rx: tokio::sync::mpsc::Receiver<(bool, RecordBatch)>) {
    let status = format!("{}{STATUS_SUFFIX}", source.name);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut gathered: [Vec<RecordBatch>; 2] = [Vec::new(), Vec::new()];
        let (is_status, batch) = first;
        gathered[usize::from(is_status)].push(batch);
        let deadline = tokio::time::Instant::now() + GATHER;
        while let Ok(Some((is_status, batch))) = tokio::time::timeout_at(deadline, rx.recv()).await
        {
            gathered[usize::from(is_status)].push(batch);
        }
        for (relation, batches) in [(&source.name, &gathered[0]), (&status, &gathered[1])] {
            let Some(first) = batches.first() else {
                continue;
            };
            let batch = match arrow::compute::concat_batches(&first.schema(), batches) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("source {}: {e}", source.name);
                    continue;
                }
            };
            if let Err(PushError::Gone(_)) = source.push(relation, batch).await {
                return;
            }
        }
    }
}

/// Scrapes one target every `interval`, from `offset` on.
async fn scrape_target(
    source: Arc<Running>,
    config: Arc<Config>,
    client: HttpClient,
    out: tokio::sync::mpsc::Sender<(bool, RecordBatch)>,
    target: String,
    offset: Duration,
) {
    let schema = source.schema.clone();
    tokio::time::sleep(offset).await;
    let mut every = tokio::time::interval(source.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    loop {
        every.tick().await;
        let now = source.output.now();
        let started = Instant::now();
        let fetched =
            match tokio::time::timeout(config.timeout, fetch(&client, &config, &target)).await {
                Ok(r) => r,
                Err(_) => Err(format!("scrape timed out after {:?}", config.timeout)),
            };
        let built = fetched.and_then(|(body, flavor)| {
            rows(
                &body,
                flavor,
                &schema,
                &config.job,
                &target,
                now,
                &source.limits,
            )
        });
        let duration = started.elapsed();
        let (mut rows, error) = match built {
            Ok(r) => (r, None),
            Err(e) => (Rows::new(&schema), Some(e)),
        };
        let samples = rows.len();
        // Prometheus' own series about the scrape.
        let base = [("instance", target.as_str()), ("job", config.job.as_str())];
        for (name, value) in [
            ("scrape_duration_seconds", duration.as_secs_f64()),
            ("scrape_samples_scraped", samples as f64),
            ("up", if error.is_none() { 1.0 } else { 0.0 }),
        ] {
            rows.series(name, base.iter().copied());
            rows.sample(value, now, 0);
        }
        if error != failing {
            match &error {
                Some(e) => tracing::warn!("source {}: scraping {target} fails: {e}", source.name),
                None => tracing::info!("source {}: scraping {target} works again", source.name),
            }
            failing = error.clone();
        }
        let (batch, _) = rows.finish();
        let s = Scraped {
            target: target.clone(),
            error,
            duration_ms: duration.as_secs_f64() * 1000.0,
            samples,
        };
        // The writer is gone with the source.
        if out.send((false, batch)).await.is_err()
            || out.send((true, status_batch(&s, now))).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn options_are_checked() {
        let opts = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let i = Duration::from_secs(15);
        let c = config(&opts(&[("targets", "a:9100, b:9100")]), "node", i).unwrap();
        assert_eq!(c.targets, ["a:9100", "b:9100"]);
        assert_eq!(
            (c.job.as_str(), c.path.as_str(), c.timeout),
            ("node", "/metrics", Duration::from_secs(10))
        );
        let c = config(
            &opts(&[("targets", "a:1"), ("username", "u"), ("password", "p")]),
            "n",
            i,
        )
        .unwrap();
        assert_eq!(c.authorization.as_deref(), Some("Basic dTpw"));
        for (bad, says) in [
            (opts(&[]), "needs targets"),
            (
                opts(&[("targets", "http://a:1/metrics")]),
                "is not host:port",
            ),
            (
                opts(&[("targets", "a:1"), ("scheme", "ftp")]),
                "use http or https",
            ),
            (
                opts(&[("targets", "a:1"), ("timeout", "1m")]),
                "at most the interval",
            ),
            (
                opts(&[("targets", "a:1"), ("bearer_token", "t"), ("username", "u")]),
                "not both",
            ),
        ] {
            let e = config(&bad, "n", i).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn samples_get_job_and_instance() {
        let schema = crate::metrics::schema();
        let body = "up 1\nfoo{job=\"x\",b=\"2\"} 3 1700000000000\n";
        let (batch, _) = rows(
            body,
            Flavor::Text,
            &schema,
            "node",
            "h:9100",
            5,
            &Limits::default(),
        )
        .unwrap()
        .finish();
        let labels = batch.column(1).as_string::<i32>();
        assert_eq!(labels.value(0), r#"{"instance":"h:9100","job":"node"}"#);
        assert_eq!(
            labels.value(1),
            r#"{"b":"2","exported_job":"x","instance":"h:9100","job":"node"}"#
        );
        let ts = batch
            .column(3)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        assert_eq!((ts.value(0), ts.value(1)), (5, 1_700_000_000_000));
    }
}
