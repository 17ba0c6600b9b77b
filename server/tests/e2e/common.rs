//! Starting the real binary and talking to it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A running `tocsin serve`, killed (-9) when dropped.
pub struct Server {
    pub addr: String,
    pub data_dir: PathBuf,
    child: Child,
    log: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server on a free port over `data_dir` (without the embedded default unless
    /// `extra` says otherwise) and waits until it answers.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(free_port(), data_dir, extra).await
    }

    /// [`Server::start`] on a given port.
    pub async fn start_on(port: u16, data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_at("127.0.0.1", port, data_dir, extra).await
    }

    /// [`Server::start`] listening on `ip` (e.g. `0.0.0.0`); the tests reach it at 127.0.0.1.
    pub async fn start_at(ip: &str, port: u16, data_dir: &Path, extra: &[&str]) -> Server {
        let addr = format!("127.0.0.1:{port}");
        let listen = format!("{ip}:{port}");
        let log = data_dir.with_extension(format!("{port}.log"));
        let mut args = vec!["serve", "--listen", &listen, "--workers", "2"];
        let dir = data_dir.to_str().unwrap();
        args.extend(["--data-dir", dir]);
        if !extra.contains(&"--default") {
            args.push("--no-default");
        }
        args.extend(extra.iter().filter(|a| **a != "--default"));
        let child = Command::new(env!("CARGO_BIN_EXE_tocsin"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tocsin");
        let server = Server {
            addr,
            data_dir: data_dir.to_path_buf(),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = server.get("/healthz").await {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "tocsin did not start:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    /// Ends the process the hard way, as a crash would.
    pub fn kill(mut self) -> PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.data_dir.clone()
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
        request(&self.addr, method, path, content_type, body).await
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let (s, _, b) = self.request("GET", path, None, Vec::new()).await?;
        Ok((s, b))
    }

    /// `POST /v1/sql`; the status and the JSON answer.
    pub async fn sql(&self, sql: &str) -> (u16, Value) {
        let (s, _, b) = self
            .request(
                "POST",
                "/v1/sql",
                Some("text/plain"),
                sql.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        (s, serde_json::from_slice(&b).unwrap())
    }

    /// Runs SQL that must succeed; the rows of its last result.
    pub async fn rows(&self, sql: &str) -> Vec<Value> {
        let (s, v) = self.sql(sql).await;
        assert_eq!(s, 200, "{sql}: {v}");
        v["results"].as_array().unwrap().last().unwrap()["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `POST /v1/ingest/{source}`; the status and the JSON answer.
    pub async fn ingest(&self, source: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let (s, _, b) = self
            .request(
                "POST",
                &format!("/v1/ingest/{source}"),
                Some(content_type),
                body,
            )
            .await
            .unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with `stdin` (if any) on its standard input, to the end.
pub fn run_piped(mut command: Command, stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// One HTTP request to `addr`; the status, headers and body.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
    let headers: Vec<(&str, &str)> = content_type
        .map(|c| ("content-type", c))
        .into_iter()
        .collect();
    request_with(addr, method, path, &headers, body).await
}

/// [`request`] with any headers.
pub async fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, headers, body.to_bytes().to_vec()))
}

/// An Arrow IPC stream of the batches.
pub fn ipc(batches: &[RecordBatch]) -> Vec<u8> {
    let mut buf = Vec::new();
    tocsin_connectors::push::write_arrow_stream(&mut buf, batches).unwrap();
    buf
}

/// A batch of `(host TEXT, cpu DOUBLE)` rows.
pub fn cpu_batch(rows: &[(&str, f64)]) -> RecordBatch {
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, false),
        Field::new("cpu", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

/// Row numbers of an ack's errors.
pub fn error_rows(ack: &Value) -> Vec<u64> {
    ack["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["row"].as_u64().unwrap())
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A webhook receiver on a free port: answers 503 to its first `fail_first` requests, then 200;
/// keeps every request's status and JSON body, and when it arrived (epoch ms).
pub struct Receiver {
    pub url: String,
    pub requests: Arc<std::sync::Mutex<Vec<(u16, Value)>>>,
    pub arrived_ms: Arc<std::sync::Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        Self::start_with(fail_first, Duration::ZERO).await
    }

    /// [`Receiver::start`] answering each request only after `delay`.
    pub async fn start_with(fail_first: usize, delay: Duration) -> Receiver {
        use axum::routing::post;
        let requests: Arc<std::sync::Mutex<Vec<(u16, Value)>>> = Default::default();
        let arrived_ms: Arc<std::sync::Mutex<Vec<i64>>> = Default::default();
        let seen = requests.clone();
        let arrived = arrived_ms.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                let arrived = arrived.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let mut seen = seen.lock().unwrap();
                    arrived
                        .lock()
                        .unwrap()
                        .push(chrono::Utc::now().timestamp_millis());
                    let status = if seen.len() < fail_first { 503 } else { 200 };
                    seen.push((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            requests,
            arrived_ms,
            task,
        }
    }

    /// The bodies the receiver accepted (answered 200).
    pub fn accepted(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `port`.
pub async fn wait_for_port(port: u16, what: &str) {
    eventually(30, what, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await
}

/// A real SMTP server (Python's aiosmtpd) on a free port, storing every message in a maildir.
pub struct Smtp {
    pub port: u16,
    pub maildir: PathBuf,
    _peer: Peer,
}

impl Smtp {
    pub async fn start(dir: &Path) -> Smtp {
        let maildir = dir.join("maildir");
        let port = free_port();
        let peer = Peer(
            Command::new("python3")
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                .args(["-c", "aiosmtpd.handlers.Mailbox", maildir.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 -m aiosmtpd (pip install aiosmtpd)"),
        );
        wait_for_port(port, "aiosmtpd").await;
        Smtp {
            port,
            maildir,
            _peer: peer,
        }
    }
}

/// The messages an aiosmtpd `Mailbox` handler stored: (subject, whole text).
pub fn mails(maildir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(maildir.join("new"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .map(|text| {
                    let subject = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Subject: "))
                        .unwrap_or_default()
                        .to_string();
                    (subject, text)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads a WebSocket to its close frame; the close code (`None`: closed without one).
pub async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame: {other:?}"),
        }
    }
}
