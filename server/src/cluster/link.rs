//! The links between replicas. Each replica dials every peer ([`dial`]) and sends it its own
//! records over that link: first those the peer does not hold, read back from the log, then each
//! new one as it becomes durable, falling back to the log whenever the link falls behind. Each
//! replica takes the links its peers dial ([`accept`]) and writes what comes over them through
//! its ingest path, answering each record once it is durable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::proto::{Frame, VERSION};
use super::{now_ms, Cluster, LinkState, Peer};
use crate::ingest::IngestError;
use crate::limits::Conn;
use crate::replicate::Replication;
use crate::state::AppRef;
use tocsin_sql::StatementResult;

use super::proto::PATH;
/// How often each side of a link says it is there: a tenth of the peer timeout (at most a
/// second), so that a peer is heard from well within the slack its silence is given (a fifth:
/// see `timeline`).
fn beat(peer_timeout: Duration) -> tokio::time::Interval {
    let every = (peer_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut beat = tokio::time::interval(every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat
}
/// Records a replica takes from a link before it waits for the oldest to be durable.
const IN_FLIGHT: usize = 64;
/// Records read back from the log at a time while a peer catches up.
const CATCH_UP_CHUNK: usize = 256;
/// A record is at most this large (a log record's limit, with room for the frame).
const MAX_FRAME: usize = crate::records::MAX_RECORD + 4096;

fn binary(f: &Frame) -> Message {
    Message::Binary(f.encode())
}

/// Sends this replica's records to `peer` for as long as the server runs, dialing again with
/// backoff whenever the link fails.
pub async fn dial(
    cluster: Arc<Cluster>,
    peer: Arc<Peer>,
    replication: Arc<Replication>,
    wal: PathBuf,
    tls: Arc<rustls::ClientConfig>,
) {
    let url = format!("{}{PATH}", peer.config.url);
    let mut backoff = Duration::from_millis(100);
    let mut logged: Option<String> = None;
    loop {
        peer.set(LinkState::Connecting);
        let why = match connect(&cluster, &url, &tls).await {
            Ok(ws) => {
                backoff = Duration::from_millis(100);
                send_records(&cluster, &peer, &replication, &wal, ws).await
            }
            Err(e) => e,
        };
        // A peer that stays away is logged once until its link changes.
        if logged.as_deref() != Some(&why) {
            tracing::warn!(
                "replica {}: link to {url}: {why}; dialing again",
                peer.config.id
            );
            logged = Some(why.clone());
        }
        peer.set(LinkState::Down(why));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    cluster: &Cluster,
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Client, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad address: {e}"))?;
    let value = format!("Bearer {}", cluster.config.secret)
        .parse()
        .map_err(|_| "the cluster secret is not a valid header value".to_string())?;
    req.headers_mut().insert(header::AUTHORIZATION, value);
    let mut config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().write_buffer_size(0);
    config.max_message_size = Some(MAX_FRAME);
    config.max_frame_size = Some(MAX_FRAME);
    let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
    let dial =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, Some(connector));
    match tokio::time::timeout(cluster.config.peer_timeout, dial).await {
        Err(_) => Err("no answer to the WebSocket handshake".into()),
        Ok(Err(WsError::Http(r))) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(format!("refused with {}: {}", r.status(), body.trim()))
        }
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// Waits for the next frame, at most the peer timeout; what ends the link is answered as why.
async fn next_frame<S>(stream: &mut S, timeout: Duration, peer: &Peer) -> Result<Frame, String>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    match tokio::time::timeout(timeout, read_frame(stream, peer)).await {
        Err(_) => Err(format!("silent for {timeout:?} (--peer-timeout)")),
        Ok(r) => r,
    }
}

/// The next frame (cancel-safe: nothing is lost when the future is dropped before it is ready).
async fn read_frame<S>(stream: &mut S, peer: &Peer) -> Result<Frame, String>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let msg = match stream.next().await {
            None => return Err("the connection closed".into()),
            Some(Err(e)) => return Err(format!("the connection failed: {e}")),
            Some(Ok(m)) => m,
        };
        peer.heard();
        match msg {
            Message::Binary(b) => return Frame::decode(b).map_err(|e| format!("it sent {e}")),
            Message::Close(c) => {
                return Err(match c {
                    Some(c) => format!("it closed the link: {}", c.reason),
                    None => "it closed the link".into(),
                })
            }
            Message::Text(_) => return Err("it sent text, not a frame of the protocol".into()),
            _ => continue,
        }
    }
}

/// One link's life on the dialing side: the greeting, then catalog changes, records and
/// catalog changes for the leader until it fails.
async fn send_records(
    cluster: &Cluster,
    peer: &Peer,
    replication: &Replication,
    wal: &std::path::Path,
    mut ws: Client,
) -> String {
    let timeout = cluster.config.peer_timeout;
    let hello = Frame::Hello {
        version: VERSION,
        id: cluster.config.id.clone(),
    };
    if let Err(e) = ws.send(binary(&hello)).await {
        return format!("send failed: {e}");
    }
    let welcome = next_frame(&mut ws, timeout, peer).await;
    let (mark, catalog, checksum, own, returned) = match welcome {
        Ok(Frame::Welcome {
            version,
            id,
            mark,
            catalog,
            checksum,
            own,
            returned,
        }) => {
            if version != VERSION {
                return format!(
                    "it speaks version {version} of the protocol, this replica {VERSION}"
                );
            }
            if id != peer.config.id {
                return format!(
                    "the replica there is '{id}', not '{}' as --peers says",
                    peer.config.id
                );
            }
            (mark, catalog, checksum, own, returned)
        }
        Ok(other) => return format!("it answered the greeting with {other:?}"),
        Err(e) => return e,
    };
    if mark > replication.synced() {
        tracing::warn!(
            "replica {}: it holds records of replica id '{}' up to #{mark}, beyond this replica's log: this replica replaced one of its id, and numbers its records above those (rows it took before this link came up stay here)",
            peer.config.id,
            cluster.config.id
        );
        replication.number_above(mark);
    }
    // It lost its own records (it replaced a replica of its id with an empty data dir): those
    // this replica holds are sent back to it.
    let send_back = (replication.mark(&peer.config.id) > own).then_some(returned);
    peer.ack(mark);
    cluster.peer_applied(peer, catalog);
    // The catalog changes it lacks are relayed, when its log is a prefix of this one's (or
    // this one's of its: it relays then).
    let relay_from = match cluster.catalog.checksum(catalog) {
        Some(c) if c != checksum => {
            tracing::error!(
                "replica {}: its catalog log differs from this replica's through change #{catalog}: no catalog change is sent to it; start it with an empty data dir to give it the catalog of the others (docs/ha.md)",
                peer.config.id
            );
            None
        }
        _ => Some(catalog),
    };
    let Ok(mut statements) = peer.outbox.try_lock() else {
        return "another link to it is up".into();
    };
    peer.set(LinkState::Up);
    tracing::info!(
        "replica {}: link up ({} of this replica's records and catalog changes through #{catalog} held there)",
        peer.config.id,
        if mark == 0 {
            "none".to_string()
        } else {
            format!("through #{mark}")
        }
    );
    let (mut sink, mut stream) = ws.split();
    let (need_tx, need) = watch::channel(0);
    let answers = take_answers(cluster, replication, &mut stream, timeout, peer, need_tx);
    let out = Outgoing {
        cluster,
        peer,
        replication,
        wal,
        send_back,
        catalog: relay_from,
        statements: &mut statements,
        need,
    };
    let records = out.send(&mut sink, mark);
    tokio::select! {
        e = answers => e,
        e = records => e,
    }
}

/// Takes the peer's answers to what was sent until the link fails; answers why.
async fn take_answers<S>(
    cluster: &Cluster,
    replication: &Replication,
    stream: &mut S,
    timeout: Duration,
    peer: &Peer,
    need: watch::Sender<u64>,
) -> String
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match next_frame(stream, timeout, peer).await {
            Ok(Frame::Need(at)) => crate::timeline::raise(&need, at),
            Ok(Frame::Ack(seq)) => {
                peer.ack(seq);
                replication.majority_through(cluster.majority_has());
            }
            Ok(Frame::Nack { seq, reason }) => {
                tracing::warn!(
                    "replica {}: refused record #{seq}: {reason}",
                    peer.config.id
                );
                peer.ack(seq);
                replication.majority_through(cluster.majority_has());
            }
            Ok(Frame::CatalogAck(seq)) => cluster.peer_applied(peer, seq),
            Ok(Frame::Done { id, outcome }) => cluster.answered(id, outcome),
            Ok(Frame::Beat { leader, .. }) => peer.saw_leader(leader),
            Ok(other) => return format!("it sent {other:?} on a link it did not dial"),
            Err(e) => return e,
        }
    }
}

/// What a dialed link sends.
struct Outgoing<'a> {
    cluster: &'a Cluster,
    peer: &'a Peer,
    replication: &'a Replication,
    wal: &'a std::path::Path,
    /// The peer lost its own records: those after this one are sent back to it.
    send_back: Option<u64>,
    /// The newest catalog change the peer holds, as far as this link knows (`None`: its
    /// catalog differs, nothing is relayed).
    catalog: Option<u64>,
    statements: &'a mut mpsc::Receiver<(u64, String)>,
    /// The time the peer's engine waits for (see `timeline`).
    need: watch::Receiver<u64>,
}

impl Outgoing<'_> {
    /// Sends the catalog changes the peer lacks.
    async fn relay_catalog<S>(&mut self, sink: &mut S) -> Result<(), String>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let Some(held) = self.catalog else {
            return Ok(());
        };
        if self.cluster.catalog.last() <= held {
            return Ok(());
        }
        for r in self.cluster.catalog.after(held) {
            let json = serde_json::to_string(&r).map_err(|e| e.to_string())?;
            sink.send(binary(&Frame::Catalog(json)))
                .await
                .map_err(|e| format!("send failed: {e}"))?;
            self.catalog = Some(r.seq);
        }
        Ok(())
    }

    /// Sends the replicated records of `origin` (`None`: this replica's) numbered above `after`
    /// with `lsn <= through`, read from the log a chunk at a time, in order, each after the
    /// catalog changes before it; answers the `lsn` of the last one sent. Records whose segment
    /// went with their rows' retention are left out.
    async fn send_logged<S>(
        &mut self,
        sink: &mut S,
        origin: Option<String>,
        after: u64,
        through: u64,
    ) -> Result<Option<u64>, String>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let failed = |e: String| format!("reading the write-ahead log failed: {e}");
        let dir = self.wal.to_path_buf();
        let found = tokio::task::spawn_blocking(move || {
            crate::wal::records_after(&dir, origin.as_deref(), after, through)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| format!("cannot read the write-ahead log: {e}"))?;
        let mut last = None;
        for chunk in found.chunks(CATCH_UP_CHUNK) {
            let located = chunk.to_vec();
            let read = tokio::task::spawn_blocking(move || {
                located
                    .into_iter()
                    .map(|l| (l.lsn, l.read()))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| failed(e.to_string()))?;
            self.relay_catalog(sink).await?;
            for (lsn, payload) in read {
                match payload {
                    Ok(Some(p)) => sink
                        .send(Message::Binary(Bytes::from(p)))
                        .await
                        .map_err(|e| format!("send failed: {e}"))?,
                    // Its segment went with its rows' retention.
                    Ok(None) => {}
                    Err(e) => tracing::warn!("write-ahead log: record #{lsn} not sent: {e}"),
                }
                last = Some(lsn);
            }
        }
        Ok(last)
    }

    /// Sends entries of this replica's notification log.
    async fn send_notices<S>(
        &self,
        sink: &mut S,
        list: Vec<super::notices::Notice>,
    ) -> Result<(), String>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let json = serde_json::to_string(&list).map_err(|e| e.to_string())?;
        sink.send(binary(&Frame::Notices(json)))
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    /// Sends this replica's mark (see `timeline`) if it moved, after the records stamped
    /// before it; `false` when the link fell behind the writer (it reads the log first).
    async fn send_mark<S>(
        &mut self,
        sink: &mut S,
        live: &mut tokio::sync::broadcast::Receiver<Arc<crate::replicate::Forward>>,
        sent: &mut u64,
        marked: &mut u64,
    ) -> Result<bool, String>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let mark = self.replication.timeline.mark();
        if mark <= *marked {
            return Ok(true);
        }
        // Every record stamped before the mark has been published: it is sent first.
        loop {
            match live.try_recv() {
                Ok(f) if f.lsn > *sent => {
                    self.relay_catalog(sink).await?;
                    sink.send(Message::Binary(f.payload.clone()))
                        .await
                        .map_err(|e| format!("send failed: {e}"))?;
                    *sent = f.lsn;
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                Err(TryRecvError::Lagged(_)) => return Ok(false),
            }
        }
        sink.send(binary(&Frame::Mark(mark)))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        *marked = mark;
        Ok(true)
    }

    /// Sends this replica's records after `mark`, then each new one, each after the catalog
    /// changes before it; catalog changes for the leader; its mark when the peer needs it; a
    /// beat every second.
    async fn send<S>(mut self, sink: &mut S, mark: u64) -> String
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        match self.run(sink, mark).await {
            Ok(()) => "tocsin is shutting down".into(),
            Err(e) => e,
        }
    }

    async fn run<S>(&mut self, sink: &mut S, mark: u64) -> Result<(), String>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let failed = |e: WsError| format!("send failed: {e}");
        let mut live = self.replication.subscribe();
        let mut catalog = self.cluster.catalog.watch();
        let mut notices = self.cluster.notice_tx.subscribe();
        let mut sent = mark;
        let mut beat = beat(self.cluster.config.peer_timeout);
        // The time the peer waits for, and the last mark sent to it.
        let (mut want, mut marked) = (0u64, 0u64);
        self.relay_catalog(sink).await?;
        self.send_notices(sink, self.cluster.notices.snapshot())
            .await?;
        if let Some(after) = self.send_back.take() {
            tracing::info!(
                "replica {}: sending back its own records it lost, those this replica holds",
                self.peer.config.id
            );
            let origin = Some(self.peer.config.id.clone());
            self.send_logged(sink, origin, after, u64::MAX).await?;
        }
        loop {
            // What the log holds after `sent`: all of it at first, what was missed after a lag.
            let through = self.replication.synced();
            self.send_logged(sink, None, sent, through).await?;
            sent = sent.max(through);
            loop {
                if want > marked
                    && !self
                        .send_mark(sink, &mut live, &mut sent, &mut marked)
                        .await?
                {
                    break;
                }
                tokio::select! {
                    changed = self.need.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        want = *self.need.borrow_and_update();
                    }
                    // Its clock is ahead of this one's, or this replica's writer is busy: the
                    // mark is looked at again when this clock should have caught up (1 ms to
                    // 1 s), so that a clock far behind does not send a mark every millisecond.
                    _ = tokio::time::sleep(Duration::from_millis(want.saturating_sub(marked).clamp(1, 1000))), if want > marked => {}
                    r = live.recv() => match r {
                        Ok(f) if f.lsn > sent => {
                            self.relay_catalog(sink).await?;
                            sink.send(Message::Binary(f.payload.clone())).await.map_err(failed)?;
                            sent = f.lsn;
                        }
                        Ok(_) => {}
                        // Fell behind the writer: what was missed is read from the log.
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return Ok(()),
                    },
                    changed = catalog.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        self.relay_catalog(sink).await?;
                    }
                    n = notices.recv() => match n {
                        Ok(n) => self.send_notices(sink, vec![n]).await?,
                        Err(RecvError::Lagged(_)) => {
                            self.send_notices(sink, self.cluster.notices.snapshot()).await?
                        }
                        Err(RecvError::Closed) => return Ok(()),
                    },
                    Some((id, sql)) = self.statements.recv() => {
                        sink.send(binary(&Frame::Statement { id, sql })).await.map_err(failed)?;
                    }
                    _ = beat.tick() => {
                        let leader = self.cluster.leader().unwrap_or_default();
                        sink.send(binary(&Frame::Beat { at: now_ms(), leader })).await.map_err(failed)?;
                    }
                }
            }
        }
    }
}

/// `GET /v1/cluster`: a peer's link, for a server that is a replica, with the cluster secret.
pub async fn accept(
    State(app): State<AppRef>,
    conn: Option<Extension<Conn>>,
    mut req: axum::extract::Request,
) -> Response {
    let from = conn
        .as_ref()
        .map_or_else(|| "?".to_string(), |c| c.peer.to_string());
    let Some(cluster) = app.cluster.clone() else {
        return crate::json::error(
            StatusCode::NOT_FOUND,
            "this server is not a replica (see --replica-id and --peers in docs/ha.md)",
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let secret_ok = presented.is_some_and(|p| {
        crate::auth::constant_time_eq(p.as_bytes(), cluster.config.secret.as_bytes())
    });
    if !secret_ok {
        let why = if presented.is_some() {
            "a wrong cluster secret"
        } else {
            "no cluster secret"
        };
        cluster
            .unauthenticated
            .warn(|| format!("refused a replica link from {from}: {why}"));
        app.metrics
            .refused(crate::metrics::Refusal::Unauthenticated);
        let mut r = crate::json::error(
            StatusCode::UNAUTHORIZED,
            "a replica link needs the cluster secret (--cluster-secret) as Authorization: Bearer",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let (response, socket) = match crate::ws::upgrade(&mut req, MAX_FRAME, 0) {
        Ok(u) => u,
        Err(r) => return r,
    };
    tokio::spawn(async move {
        let _conn = conn;
        if let Some(socket) = socket.await {
            take_records(app, cluster, socket, from).await
        }
    });
    response
}

/// One link's life on the taking side: the greeting, then records until it fails.
async fn take_records(
    app: AppRef,
    cluster: Arc<Cluster>,
    mut socket: crate::ws::Socket,
    from: String,
) {
    let timeout = cluster.config.peer_timeout;
    let first = tokio::time::timeout(timeout, socket.ws.next()).await;
    let (peer, origin) = match first {
        Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(b) {
            Ok(Frame::Hello { version, .. }) if version != VERSION => {
                let why =
                    format!("it speaks version {version} of the protocol, this replica {VERSION}");
                return refuse_link(&cluster, &mut socket, &from, why).await;
            }
            Ok(Frame::Hello { id, .. }) => match cluster.peer(&id) {
                Some(p) => (p.clone(), Arc::<str>::from(id.as_str())),
                None => {
                    let why = format!("'{id}' is not among this replica's --peers");
                    return refuse_link(&cluster, &mut socket, &from, why).await;
                }
            },
            Ok(other) => {
                let why = format!("it began with {other:?} instead of a greeting");
                return refuse_link(&cluster, &mut socket, &from, why).await;
            }
            Err(e) => {
                return refuse_link(&cluster, &mut socket, &from, format!("it sent {e}")).await
            }
        },
        Ok(Some(Ok(_))) => {
            let why = "it sent text, not a frame of the protocol".to_string();
            return refuse_link(&cluster, &mut socket, &from, why).await;
        }
        Ok(_) => return,
        Err(_) => {
            let why = format!("no greeting within {timeout:?}");
            return refuse_link(&cluster, &mut socket, &from, why).await;
        }
    };
    peer.heard();
    let Some(replication) = app.ingest.replication() else {
        return;
    };
    let catalog = cluster.catalog.last();
    let welcome = Frame::Welcome {
        version: VERSION,
        id: cluster.config.id.clone(),
        mark: replication.mark(&origin),
        catalog,
        checksum: cluster.catalog.checksum(catalog).unwrap_or_default(),
        own: replication.synced(),
        returned: replication.mark(&cluster.config.id),
    };
    if socket.ws.send(binary(&welcome)).await.is_err() {
        return;
    }
    tracing::info!("replica {origin}: taking its records from {from}");
    replication.timeline.linked(&origin, true);
    let why = take(
        &app,
        &cluster,
        &peer,
        &origin,
        &replication.timeline,
        &mut socket,
    )
    .await;
    replication.timeline.linked(&origin, false);
    tracing::warn!("replica {origin}: link from {from} ended: {why}");
    socket.close(1011, why).await;
}

async fn refuse_link(cluster: &Cluster, socket: &mut crate::ws::Socket, from: &str, why: String) {
    cluster
        .refusals
        .warn(|| format!("refused a replica link from {from}: {why}"));
    socket.close(1008, why).await;
}

/// What a record taken from a peer came to: an `Ack`, or a `Nack` (logged) for a record that
/// can never be taken; an error that may pass (the disk, the memory budget) ends the link so
/// that the peer sends the record again.
fn answer(
    cluster: &Cluster,
    origin: &str,
    seq: u64,
    r: Result<crate::ingest::Outcome, IngestError>,
) -> Result<Frame, String> {
    match r {
        Ok(_) => Ok(Frame::Ack(seq)),
        Err(IngestError::Refused(reason)) => {
            cluster
                .refused_records
                .warn(|| format!("replica {origin}: refused its record #{seq}: {reason}"));
            Ok(Frame::Nack { seq, reason })
        }
        Err(e) => Err(format!("record #{seq} could not be taken: {e}")),
    }
}

/// What comes over a link in order: a record, or the peer's mark after the records before it.
enum Taken {
    Record(Bytes),
    Mark(u64),
}

/// A record being taken: its answer (none for a record sent back).
type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Frame>, String>> + Send>>;

async fn take(
    app: &AppRef,
    cluster: &Arc<Cluster>,
    peer: &Peer,
    origin: &Arc<str>,
    timeline: &crate::timeline::Timeline,
    socket: &mut crate::ws::Socket,
) -> String {
    let timeout = cluster.config.peer_timeout;
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    // Records read and not yet answered.
    let mut outstanding = 0usize;
    let mut beat = beat(timeout);
    let (mut sink, mut stream) = (&mut socket.ws).split();
    // Records are queued on the ingest path one after the other, in the order they came (a
    // record's seq below one already taken counts as held), by a task of their own so that this
    // loop goes on answering and beating while the queue is full; their answers come back here.
    let (records, mut to_queue) = mpsc::unbounded_channel::<Taken>();
    let (queued_tx, mut queued) = mpsc::unbounded_channel::<Pending>();
    let queuer = {
        let (app, cluster, origin) = (app.clone(), cluster.clone(), origin.clone());
        tokio::spawn(async move {
            while let Some(taken) = to_queue.recv().await {
                let payload = match taken {
                    Taken::Record(payload) => payload,
                    Taken::Mark(at) => {
                        if app.ingest.enqueue_mark(origin.clone(), at).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let pending = match forwarded(&app, &cluster, &origin, payload).await {
                    Ok(p) => p,
                    Err(e) => Box::pin(async move { Err(e) }),
                };
                if queued_tx.send(pending).is_err() {
                    return;
                }
            }
        })
    };
    let _stop_queuer = AbortOnDrop(queuer);
    // Answers to the catalog changes the peer asked this replica (as the leader) to make.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Frame>();
    // The peer must say something within the timeout whenever this side is reading.
    let mut deadline = tokio::time::Instant::now() + timeout;
    let failed = |e: WsError| format!("send failed: {e}");
    // The time this replica's engine waits for, asked of the peer as it moves.
    let mut needed = timeline.needed();
    let now_needed = *needed.borrow_and_update();
    if now_needed > 0 {
        if let Err(e) = sink.send(binary(&Frame::Need(now_needed))).await {
            return failed(e);
        }
    }
    // While this side does not read (records wait to be taken), the peer is not silent.
    let mut deaf = None;
    loop {
        let reading = outstanding < IN_FLIGHT;
        match (reading, &deaf) {
            (false, None) => deaf = Some(timeline.deaf(origin)),
            (true, Some(_)) => deaf = None,
            _ => {}
        }
        tokio::select! {
            f = read_frame(&mut stream, peer), if reading => {
                deadline = tokio::time::Instant::now() + timeout;
                timeline.heard(origin);
                match f {
                    Ok(Frame::Record(payload)) => {
                        outstanding += 1;
                        let _ = records.send(Taken::Record(payload));
                    }
                    Ok(Frame::Mark(at)) => {
                        let _ = records.send(Taken::Mark(at));
                    }
                    Ok(Frame::Beat { leader, .. }) => peer.saw_leader(leader),
                    Ok(Frame::Notices(json)) => {
                        if let Err(e) = cluster.peer_notices(peer, &json) {
                            return e;
                        }
                    }
                    Ok(Frame::Catalog(json)) => {
                        let _busy = timeline.deaf(origin);
                        // The rows before a catalog change are taken before it.
                        while outstanding > 0 {
                            let done = tokio::select! {
                                Some(p) = queued.recv() => {
                                    in_flight.push_back(p);
                                    continue;
                                }
                                Some(done) = in_flight.next() => done,
                            };
                            outstanding -= 1;
                            if let Err(e) = send_answer(&mut sink, done).await {
                                return e;
                            }
                        }
                        match apply_catalog(app, cluster, &json).await {
                            Ok(Some(seq)) => {
                                if let Err(e) = sink.send(binary(&Frame::CatalogAck(seq))).await {
                                    return failed(e);
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!("replica {origin}: {e}");
                                return e;
                            }
                        }
                    }
                    Ok(Frame::Statement { id, sql }) => {
                        let (app, done) = (app.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            let outcome = lead(&app, &sql).await;
                            let _ = done.send(Frame::Done { id, outcome });
                        });
                    }
                    Ok(other) => return format!("it sent {other:?} on the link it dialed"),
                    Err(e) => return e,
                }
            }
            Some(p) = queued.recv() => in_flight.push_back(p),
            Some(done) = in_flight.next() => {
                deadline = deadline.max(tokio::time::Instant::now() + timeout);
                // Not reading while records are taken: the peer is waiting on this replica.
                timeline.heard(origin);
                outstanding -= 1;
                if let Err(e) = send_answer(&mut sink, done).await {
                    return e;
                }
            }
            Some(done) = done_rx.recv() => {
                if let Err(e) = sink.send(binary(&done)).await {
                    return failed(e);
                }
            }
            Ok(()) = needed.changed() => {
                let at = *needed.borrow_and_update();
                if let Err(e) = sink.send(binary(&Frame::Need(at))).await {
                    return failed(e);
                }
            }
            _ = tokio::time::sleep_until(deadline), if reading => {
                return format!("silent for {timeout:?} (--peer-timeout)");
            }
            _ = beat.tick() => {
                let leader = cluster.leader().unwrap_or_default();
                if let Err(e) = sink.send(binary(&Frame::Beat { at: now_ms(), leader })).await {
                    return failed(e);
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a record's answer (none for a record sent back); an error that ends the link as why.
async fn send_answer<S>(sink: &mut S, done: Result<Option<Frame>, String>) -> Result<(), String>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    match done? {
        Some(frame) => sink
            .send(binary(&frame))
            .await
            .map_err(|e| format!("send failed: {e}")),
        None => Ok(()),
    }
}

/// Applies a catalog change a peer relayed, if it is the next one this replica lacks: the seq
/// to acknowledge (`None`: a change past the next, which comes again in order).
async fn apply_catalog(app: &AppRef, cluster: &Cluster, json: &str) -> Result<Option<u64>, String> {
    let r: crate::catalog_log::CatalogRecord = serde_json::from_str(json)
        .map_err(|e| format!("it sent a catalog change that cannot be read: {e}"))?;
    let _one_at_a_time = cluster.applying.lock().await;
    let last = cluster.catalog.last();
    if r.seq <= last {
        return Ok(Some(r.seq));
    }
    if r.seq > last + 1 {
        return Ok(None);
    }
    crate::catalog_log::UNROUTED
        .scope(Some(r.seq), app.tocsin.execute(&r.sql))
        .await
        .map_err(|e| {
            format!(
                "catalog change #{} (`{}`) cannot be applied here: {}; this replica's catalog no longer follows the others' (docs/ha.md: replacing a replica)",
                r.seq,
                tocsin_sql::catalog::masked_sql(&r.sql),
                e.message
            )
        })?;
    Ok(Some(r.seq))
}

/// Makes a catalog change a peer sent this replica as the leader: the outcome as `Done`
/// carries it.
async fn lead(app: &AppRef, sql: &str) -> String {
    let error = |kind: &str, message: String| {
        serde_json::json!({"error": {"kind": kind, "message": message}}).to_string()
    };
    if let Some(c) = &app.cluster {
        if c.leader().as_deref() != Some(c.config.id.as_str()) {
            return error(
                "unavailable",
                format!("replica {} is not the leader (any more)", c.config.id),
            );
        }
    }
    match app.tocsin.execute(sql).await {
        Ok(mut results) => match results.pop() {
            Some(StatementResult::Ddl { statement, name }) => {
                let seq = app.cluster.as_ref().map_or(0, |c| c.catalog.last());
                serde_json::json!({"statement": statement, "name": name, "seq": seq}).to_string()
            }
            _ => error(
                "internal",
                "the leader was sent a statement that is not a catalog change".into(),
            ),
        },
        Err(e) => error(&format!("{:?}", e.kind).to_lowercase(), e.message),
    }
}

/// Queues a record from a peer on the ingest path (after the catalog change its source needs);
/// answers the future of its answer once it is durable here.
async fn forwarded(
    app: &AppRef,
    cluster: &Arc<Cluster>,
    origin: &Arc<str>,
    payload: Bytes,
) -> Result<Pending, String> {
    let h = crate::wal::header(&payload)
        .map_err(|e| format!("it sent a record that cannot be read: {e}"))?;
    let seq = h.stamp.seq;
    // A peer sends its own records, and this replica's that it lost (sent back unanswered).
    let returned = h.stamp.origin.as_deref() == Some(cluster.config.id.as_str());
    if (h.stamp.origin.is_some() && !returned) || !h.stamp.replicated || seq == 0 {
        return Err(format!(
            "record #{seq} is neither one of its own replicated records nor one of this replica's"
        ));
    }
    let origin: Arc<str> = if returned {
        Arc::from(cluster.config.id.as_str())
    } else {
        origin.clone()
    };
    let mut batches = crate::wal::batches(&payload[h.body..])
        .map_err(|e| format!("record #{seq}'s rows cannot be read: {e}"))?;
    if batches.len() != 1 {
        return Err(format!(
            "record #{seq} holds {} batches, not one",
            batches.len()
        ));
    }
    let batch = batches.pop().expect("one batch");
    // The source's catalog change reaches this replica before its rows (each link sends it
    // first); rows of a change still on its way over another link wait for it.
    let mut catalog = cluster.catalog.watch();
    let wait = cluster.config.peer_timeout * 2;
    let _ = tokio::time::timeout(wait, catalog.wait_for(|last| *last >= h.generation)).await;
    let queued = app
        .ingest
        .enqueue_forwarded(origin.clone(), seq, h.stamp.at, &h.source, batch)
        .await;
    let cluster = cluster.clone();
    Ok(Box::pin(async move {
        let out = match queued {
            Ok(answer) => answer.await,
            Err(e) => Err(e),
        };
        match answer(&cluster, &origin, seq, out)? {
            _ if returned => Ok(None),
            frame => Ok(Some(frame)),
        }
    }))
}
