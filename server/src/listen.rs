//! The one listening port. A connection's first bytes tell its protocol: an HTTP request line
//! starts with an upper-case method name, a PostgreSQL startup packet or SSLRequest with a zero
//! length byte, a TLS ClientHello with 0x16. Connections that are none of these are closed and
//! counted.
//!
//! With `--tls-cert`/`--tls-key`, a ClientHello is answered with TLS and the HTTP (and WebSocket)
//! inside it served; PostgreSQL clients ask for TLS with an SSLRequest, which the pg side answers.
//! Plain text from another machine is then refused (HTTP with a 400 that says to use https://,
//! pg in its startup), so a misconfigured client cannot send a password in clear.
//!
//! Limits (docs/security.md): at most `--max-connections` open at once for anything, and a
//! reserve past it for requests that answer and finish (SQL over HTTP and pg, `/healthz`,
//! `/metrics`), on which agents (ingest, WebSockets) are refused; past the reserve every
//! connection is answered 503, or SQLSTATE 53300 over pg. A client that does not send its first
//! bytes, or an HTTP request's headers, within `--header-timeout` is disconnected.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::limits::{is_loopback, Admission, Conn, Slot};
use crate::metrics::Refusal;
use crate::pg::Backend;
use crate::state::AppRef;

/// The protocol a connection's first byte announces.
#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Postgres,
    Tls,
    Unknown,
}

pub fn sniff(first: u8) -> Protocol {
    match first {
        b'A'..=b'Z' => Protocol::Http,
        0 => Protocol::Postgres,
        0x16 => Protocol::Tls,
        _ => Protocol::Unknown,
    }
}

/// TLS for the port, from one certificate and key: HTTP over TLS, and pg's SSLRequest.
pub struct Tls {
    pub pg: TlsAcceptor,
    http: TlsAcceptor,
}

impl Tls {
    /// Reads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
        let config = |alpn: &[&[u8]]| -> Result<TlsAcceptor, String> {
            let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("the certificate and key do not make a TLS configuration: {e}"))?;
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(c)))
        };
        Ok(Tls {
            // What libpq 17 asks for.
            pg: config(&[b"postgresql"])?,
            http: config(&[b"http/1.1"])?,
        })
    }
}

/// Accepts the next connection; errors (out of file descriptors and the like) wait instead of
/// spinning.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(s) => return s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the main port until the process ends.
pub async fn run(
    listener: TcpListener,
    app: AppRef,
    backend: Arc<Backend>,
    tls: Option<Tls>,
) -> Result<(), String> {
    let router = crate::http::router(app.clone());
    let tls = tls.map(Arc::new);
    loop {
        let (stream, peer) = accept(&listener).await;
        app.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let (slot, n) = Slot::take(&app.metrics.connections_open);
        let _ = stream.set_nodelay(true);
        let (router, app, backend, tls) =
            (router.clone(), app.clone(), backend.clone(), tls.clone());
        tokio::spawn(async move {
            let admission = crate::limits::admit(&app.limits, n, peer.ip());
            let conn = Conn {
                peer,
                slot: Arc::new(slot),
                reserve: admission == Admission::Reserve,
            };
            let timeout = app.limits.header_timeout;
            let mut first = [0u8; 1];
            let n_read = match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return,
                Err(_) => {
                    app.metrics.refused(Refusal::HeaderTimeout);
                    return;
                }
            };
            if n_read == 0 {
                return;
            }
            let protocol = sniff(first[0]);
            if admission == Admission::Refused && protocol != Protocol::Unknown {
                let message = app.refuse_connection(peer, false);
                match protocol {
                    Protocol::Http => Box::pin(refuse_http(stream, 503, &message)).await,
                    Protocol::Postgres => Box::pin(refuse_pg(stream, "53300", &message)).await,
                    _ => {}
                }
                return;
            }
            match protocol {
                Protocol::Http if tls.is_some() && !is_loopback(peer.ip()) => {
                    app.metrics.refused(Refusal::NotTls);
                    let refusal = "this port speaks TLS: use https:// or wss://";
                    Box::pin(refuse_http(stream, 400, refusal)).await;
                }
                Protocol::Http => {
                    Box::pin(serve_http(TokioIo::new(stream), router, &app, conn)).await
                }
                Protocol::Tls => match &tls {
                    Some(tls) => {
                        match tokio::time::timeout(timeout, Box::pin(tls.http.accept(stream))).await
                        {
                            Ok(Ok(s)) => {
                                Box::pin(serve_http(TokioIo::new(s), router, &app, conn)).await
                            }
                            Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                            Err(_) => app.metrics.refused(Refusal::HeaderTimeout),
                        }
                    }
                    None => {
                        app.metrics
                            .connections_unrecognized
                            .fetch_add(1, Ordering::Relaxed);
                    }
                },
                Protocol::Postgres => {
                    // The slot is held for as long as the session lasts.
                    let _conn = conn;
                    Box::pin(crate::pg::serve(stream, backend)).await
                }
                Protocol::Unknown => {
                    app.metrics
                        .connections_unrecognized
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on a connection (HTTP/2 is not offered: its preface would hold a connection
/// with no header timeout). Each request carries the connection ([`Conn`]): the guard reads its
/// peer, and a WebSocket keeps its slot after the upgrade.
async fn serve_http<S>(io: TokioIo<S>, router: axum::Router, app: &AppRef, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().oneshot(req)
    });
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.limits.header_timeout);
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_timeout())
        {
            app.metrics.refused(Refusal::HeaderTimeout);
        }
    }
}

/// Reads what the client sent so far (so that closing does not reset the connection before the
/// answer is read), answers `status` with a JSON error and closes.
async fn refuse_http(mut stream: TcpStream, status: u16, message: &str) {
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    let body = serde_json::json!({"error": {"message": message}}).to_string();
    let reason = match status {
        400 => "Bad Request",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One pg packet without a type byte (startup, SSLRequest): its body after the length.
async fn read_packet(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let n = u32::from_be_bytes(len) as usize;
    if !(8..=10_000).contains(&n) {
        return None;
    }
    let mut rest = vec![0u8; n - 4];
    stream.read_exact(&mut rest).await.ok()?;
    Some(rest)
}

/// Answers a pg client's startup with a FATAL error (declining TLS first if it asks), as
/// PostgreSQL does when it has too many connections.
async fn refuse_pg(mut stream: TcpStream, code: &str, message: &str) {
    let deadline = Duration::from_secs(5);
    let Ok(Some(mut packet)) = tokio::time::timeout(deadline, read_packet(&mut stream)).await
    else {
        return;
    };
    // SSLRequest or GSSENCRequest: decline, then the startup packet follows.
    if packet.len() == 4 && packet[..2] == [0x04, 0xd2] {
        if stream.write_all(b"N").await.is_err() {
            return;
        }
        match tokio::time::timeout(deadline, read_packet(&mut stream)).await {
            Ok(Some(p)) => packet = p,
            _ => return,
        }
    }
    let _ = packet;
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&fields);
    let _ = stream.write_all(&msg).await;
    let _ = stream.shutdown().await;
}

/// `--pg-listen`: a port that serves only the PostgreSQL protocol.
pub async fn run_pg(listener: TcpListener, app: AppRef, backend: Arc<Backend>) {
    loop {
        let (stream, peer) = accept(&listener).await;
        app.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let (slot, n) = Slot::take(&app.metrics.connections_open);
        let _ = stream.set_nodelay(true);
        let (app, backend) = (app.clone(), backend.clone());
        // Each connection in its own task: a panic on a malformed message ends only that one.
        tokio::spawn(async move {
            let _slot = slot;
            if crate::limits::admit(&app.limits, n, peer.ip()) == Admission::Refused {
                let message = app.refuse_connection(peer, false);
                refuse_pg(stream, "53300", &message).await;
                return;
            }
            crate::pg::serve(stream, backend).await
        });
    }
}
