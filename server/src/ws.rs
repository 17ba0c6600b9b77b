//! WebSocket connections whose buffers follow their traffic (docs/operations.md, connection
//! costs): an idle socket holds a 4 KiB read buffer, and one that has just received a large
//! message gives that memory back once the message is handled.
//!
//! A WebSocket library reads frames into a buffer that grows to the largest message it has
//! received and keeps that size for as long as the socket lives: an agent that once sent a 50 MB
//! batch would hold 50 MB while it idles. Two pieces avoid that:
//!
//! - [`Bounded`] sits under the WebSocket and ends every read at the end of the frame being
//!   read, so when a message has been returned no byte of the next frame is buffered above it.
//! - [`Socket::renew`] then starts the protocol over on the same connection with a fresh, small
//!   buffer; nothing is lost, because nothing was read ahead.
//!
//! The upgrade itself ([`upgrade`]) answers the handshake (RFC 6455 section 4.2) and hands the
//! raw connection over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::SinkExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The buffer a WebSocket reads frames into to begin with; a larger message grows it until it
/// has been handled.
pub const READ_BUFFER: usize = 4 << 10;

/// The subprotocol a browser offers with its token (`new WebSocket(url, ["tocsin",
/// "bearer.BASE64URL(TOKEN)"])`, as a browser cannot set `Authorization` on a WebSocket); the
/// handshake answers with it, and the token goes where an `Authorization` header would.
pub const PROTOCOL: &str = "tocsin";

/// The largest frame header: two bytes, eight of extended length, four of mask.
const MAX_HEADER: usize = 14;

/// A connection that lets each read go no further than the end of the frame it is in.
pub struct Bounded<S> {
    io: S,
    /// The header read so far (`have` bytes of it), while between payloads.
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
}

impl<S> Bounded<S> {
    pub fn new(io: S) -> Self {
        Bounded {
            io,
            header: [0; MAX_HEADER],
            have: 0,
            left: 0,
        }
    }
}

/// The length of a frame header that begins with `h` (at least its first two bytes, or 2).
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let extended = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length a complete header announces.
fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = if this.left > 0 {
            usize::try_from(this.left).unwrap_or(usize::MAX)
        } else {
            header_len(&this.header[..this.have]) - this.have
        };
        let cap = want.min(buf.remaining());
        if cap == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = {
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(cap));
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
            let got = part.filled();
            if this.left > 0 {
                this.left -= got.len() as u64;
            } else {
                this.header[this.have..this.have + got.len()].copy_from_slice(got);
                this.have += got.len();
                let header = &this.header[..this.have];
                if this.have >= 2 && this.have == header_len(header) {
                    this.left = payload_len(header);
                    this.have = 0;
                }
            }
            got.len()
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An upgraded server-side WebSocket over [`Bounded`].
pub struct Socket {
    pub ws: WebSocketStream<Bounded<TokioIo<Upgraded>>>,
    config: WebSocketConfig,
}

impl Socket {
    /// Gives back what a large message grew the read buffer to: the protocol starts over on the
    /// same connection with a buffer of [`READ_BUFFER`]. Call it between messages, after the
    /// replies to them were sent (a send flushes).
    pub async fn renew(self) -> Socket {
        let io = self.ws.into_inner();
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(self.config)).await;
        Socket {
            ws,
            config: self.config,
        }
    }
}

/// How long a client that stopped reading has to take a close frame (what was already sent
/// comes first) before the connection is dropped without it.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Socket {
    /// Closes the socket with a code and reason, giving up after [`CLOSE_WAIT`].
    pub async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let send = self.ws.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(CLOSE_WAIT, send).await;
    }
}

/// The configuration of a server socket taking messages up to `max_message` bytes and gathering
/// up to `write_buffer` bytes of frames before it writes them to the connection (0: each frame is
/// written as it is sent).
fn config(max_message: usize, write_buffer: usize) -> WebSocketConfig {
    let mut c = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(write_buffer);
    c.max_message_size = Some(max_message);
    c.max_frame_size = Some(max_message);
    c
}

/// Why a request is not a WebSocket handshake, if it is not.
fn refusal(headers: &HeaderMap) -> Option<&'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Some(
            "this endpoint takes a WebSocket (GET with Connection: Upgrade and Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Some("unsupported WebSocket version: use 13");
    }
    if headers.get(header::SEC_WEBSOCKET_KEY).is_none() {
        return Some("the WebSocket handshake has no Sec-WebSocket-Key");
    }
    None
}

/// Answers a WebSocket handshake: the `101 Switching Protocols` response, and the socket once
/// the client has it. A request that is not a handshake is refused with 400 (426 for another
/// protocol version) and the reason. Frames sent are gathered up to `write_buffer` bytes until a
/// flush (see [`config`]).
// The refusal is the answer the handler returns as it is: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub fn upgrade(
    req: &mut axum::extract::Request,
    max_message: usize,
    write_buffer: usize,
) -> Result<(Response, impl Future<Output = Option<Socket>> + Send), Response> {
    if let Some(reason) = refusal(req.headers()) {
        let status = if reason.starts_with("unsupported") {
            StatusCode::UPGRADE_REQUIRED
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut r = crate::json::error(status, reason);
        if status == StatusCode::UPGRADE_REQUIRED {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        return Err(r);
    }
    let key = req.headers()[header::SEC_WEBSOCKET_KEY].as_bytes();
    let accept = derive_accept_key(key);
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    let on_upgrade = hyper::upgrade::on(req);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    if offered {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(PROTOCOL),
        );
    }
    let config = config(max_message, write_buffer);
    let socket = async move {
        let io = match on_upgrade.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                return None;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            Bounded::new(TokioIo::new(io)),
            Role::Server,
            Some(config),
        )
        .await;
        Some(Socket { ws, config })
    };
    Ok((response, socket))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    /// Reads stop at every frame's end, whatever the buffer offered, for each length form.
    #[tokio::test]
    async fn reads_end_at_frame_boundaries() {
        let frames = [
            frame(5, true),
            frame(300, true),
            frame(70_000, false),
            frame(0, true),
        ];
        let wire: Vec<u8> = frames.concat();
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&wire).await.unwrap();
        drop(client);
        let mut bounded = Bounded::new(server);
        let mut ends = Vec::new();
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = bounded.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            if bounded.have == 0 && bounded.left == 0 {
                ends.push(total);
            }
        }
        let mut expected = Vec::new();
        let mut at = 0;
        for f in &frames {
            at += f.len();
            expected.push(at);
        }
        assert_eq!(ends, expected);
        assert_eq!(total, wire.len());
    }

    #[test]
    fn header_lengths() {
        assert_eq!(header_len(&[0x81]), 2);
        assert_eq!(header_len(&[0x81, 0x85]), 6);
        assert_eq!(header_len(&[0x81, 0x80 | 126]), 8);
        assert_eq!(header_len(&[0x81, 0x80 | 127]), 14);
        assert_eq!(header_len(&[0x81, 127]), 10);
        assert_eq!(payload_len(&[0x81, 126, 1, 0]), 256);
        assert_eq!(payload_len(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]), 65_536);
    }
}
