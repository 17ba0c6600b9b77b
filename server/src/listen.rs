//! The one listening port. A connection's first bytes tell its protocol: an HTTP request line
//! starts with an upper-case method name, a PostgreSQL startup packet or SSLRequest with a zero
//! length byte. Connections that are neither are closed and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::app::AppRef;
use crate::pg::Backend;

/// A connection that sends nothing for this long is closed.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// The protocol a connection's first byte announces.
#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Postgres,
    Unknown,
}

pub fn sniff(first: u8) -> Protocol {
    match first {
        b'A'..=b'Z' => Protocol::Http,
        0 => Protocol::Postgres,
        _ => Protocol::Unknown,
    }
}

/// Accepts the next connection; errors (out of file descriptors and the like) wait instead of
/// spinning.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn run(listener: TcpListener, app: AppRef, backend: Arc<Backend>) -> Result<(), String> {
    let router = crate::http::router(app.clone());
    loop {
        let stream = accept(&listener).await;
        app.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let app = app.clone();
        let backend = backend.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            let n = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            if n == 0 {
                return;
            }
            match sniff(first[0]) {
                Protocol::Http => serve_http(stream, router).await,
                Protocol::Postgres => crate::pg::serve(stream, backend).await,
                Protocol::Unknown => {
                    app.metrics
                        .connections_unrecognized
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

async fn serve_http(stream: TcpStream, router: axum::Router) {
    let service = TowerToHyperService::new(router);
    let _ = Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

/// `--pg-listen`: a port that serves only the PostgreSQL protocol.
pub async fn run_pg(listener: TcpListener, app: AppRef, backend: Arc<Backend>) {
    loop {
        let stream = accept(&listener).await;
        app.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        // Each connection in its own task: a panic on a malformed message ends only that one.
        tokio::spawn(crate::pg::serve(stream, backend.clone()));
    }
}
