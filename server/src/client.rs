//! `tocsin sql`: a thin client of `POST /v1/sql` that prints results as aligned tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The TLS settings of `tocsin sql` and `tocsin agent` for `https://` and `wss://` servers: the
/// public web roots, or only the CA of `--ca-cert` (a PEM file) when one is given.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("no certificate in {}", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How `tocsin sql` reaches a server.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Bearer token, for a server with credentials.
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for `https://`, instead of the public web roots.
    pub ca_cert: Option<PathBuf>,
}

/// Posts a body to `server` + `path` (`http://` or `https://`); returns the status and the body.
pub async fn post(
    server: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    options: &ClientOptions,
) -> Result<(u16, Vec<u8>), String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls_config(options.ca_cert.as_deref())?).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);
    let url = format!("{}{path}", base_url(server));
    let mut req = hyper::Request::post(&url).header("content-type", content_type);
    if let Some(t) = &options.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| {
        format!(
            "cannot reach tocsin at {url}: {}",
            tocsin_connectors::sink::webhook::error_chain(&e)
        )
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

/// `http(s)://host:port` from `host:port`, `http(s)://host:port` or `ws(s)://host:port`.
pub fn base_url(server: &str) -> String {
    let s = server.trim_end_matches('/');
    if let Some(rest) = s.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = s.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if s.starts_with("http://") || s.starts_with("https://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders a `rows` result as an aligned table.
pub fn table(result: &Value) -> String {
    let columns: Vec<String> = result["columns"]
        .as_array()
        .map(|c| c.iter().map(|c| cell(&c["name"])).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|r| r.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    out.push_str(&line(&columns));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

/// Runs SQL against a server and prints the results; the error (with its position) is returned
/// as text.
pub async fn run_sql(server: &str, sql: &str, options: &ClientOptions) -> Result<String, String> {
    let (status, body) = post(
        server,
        "/v1/sql",
        "text/plain",
        sql.as_bytes().to_vec(),
        options,
    )
    .await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))?;
    if let Some(e) = v.get("error") {
        let mut msg = format!("ERROR: {}", cell(&e["message"]));
        if let (Some(l), Some(c)) = (e["line"].as_u64(), e["column"].as_u64()) {
            msg.push_str(&format!("\n  at line {l}, column {c}"));
            if let Some(text) = sql.lines().nth(l as usize - 1) {
                msg.push_str(&format!(
                    "\n  {text}\n  {}^",
                    " ".repeat(c.saturating_sub(1) as usize)
                ));
            }
        }
        if let Some(s) = e["statement"].as_u64() {
            msg.push_str(&format!("\n  (statement {})", s + 1));
        }
        return Err(msg);
    }
    let mut out = String::new();
    for r in v["results"].as_array().into_iter().flatten() {
        match r["kind"].as_str() {
            Some("rows") => out.push_str(&table(r)),
            Some("ddl") => {
                out.push_str(&format!("{} {}\n", cell(&r["statement"]), cell(&r["name"])))
            }
            Some("insert") => out.push_str(&format!("INSERT {}\n", cell(&r["accepted"]))),
            _ => out.push_str(&format!("{r}\n")),
        }
    }
    Ok(out)
}
