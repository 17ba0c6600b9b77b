//! Polling one device: GET of scalars, GETBULK (GETNEXT for v1) walks of tables, each request
//! bounded by `timeout` and retried `retries` times on a fresh socket, so a late reply to an
//! abandoned request can never be taken for the answer to the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use snmp2::{AsyncSession, Oid};

use super::mib::{dotted, Syntax};
use super::{
    arcs, column_array, ColumnType, Index, PollConfig, Polled, Status, Target, Value, Version,
};

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq)]
pub enum PollError {
    /// No answer within the timeout, after every retry.
    Timeout { timeout: Duration, attempts: u32 },
    /// The socket failed (on Linux, a receive error right away means nothing listens there).
    Network(String),
    /// The agent answered with an error status.
    Agent { status: u32, index: u32 },
    /// The answer could not be used (wrong type, bad OIDs, a walk that went backwards).
    Protocol(String),
    /// SNMPv3 authentication or encryption failed.
    Auth(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Timeout { timeout, attempts } => write!(
                f,
                "no response within {timeout:?} ({attempts} attempt{})",
                if *attempts == 1 { "" } else { "s" }
            ),
            PollError::Network(e) => write!(f, "{e}"),
            PollError::Agent { status, index } => write!(
                f,
                "agent error {} ({status}) at varbind {index}",
                error_status_name(*status)
            ),
            PollError::Protocol(e) => write!(f, "protocol error: {e}"),
            PollError::Auth(e) => write!(f, "SNMPv3: {e}"),
        }
    }
}

/// RFC 3416 error-status names.
pub fn error_status_name(status: u32) -> &'static str {
    const NAMES: [&str; 19] = [
        "noError",
        "tooBig",
        "noSuchName",
        "badValue",
        "readOnly",
        "genErr",
        "noAccess",
        "wrongType",
        "wrongLength",
        "wrongEncoding",
        "wrongValue",
        "noCreation",
        "inconsistentValue",
        "resourceUnavailable",
        "commitFailed",
        "undoFailed",
        "authorizationError",
        "notWritable",
        "inconsistentName",
    ];
    NAMES.get(status as usize).copied().unwrap_or("unknown")
}

const TOO_BIG: u32 = 1;
const NO_SUCH_NAME: u32 = 2;
/// OIDs per GET request, so a request never grows past what agents answer.
const GET_CHUNK: usize = 32;

enum Request {
    Get(Vec<Vec<u32>>),
    Next(Vec<u32>),
    Bulk(Vec<u32>, u32),
}

struct Response {
    error_status: u32,
    error_index: u32,
    varbinds: Vec<(Vec<u32>, Value)>,
}

fn oid(arcs: &[u32]) -> Result<Oid<'static>, PollError> {
    let a: Vec<u64> = arcs.iter().map(|x| *x as u64).collect();
    Oid::from(&a)
        .map_err(|e| PollError::Protocol(format!("cannot encode OID {}: {e:?}", dotted(arcs))))
}

/// Request ids start at a different place for every socket.
fn request_id() -> i32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(7919, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    ((t ^ n.rotate_left(16)) & 0x3fff_ffff) as i32
}

fn classify(e: snmp2::Error) -> PollError {
    match e {
        snmp2::Error::Send => PollError::Network("send failed".into()),
        snmp2::Error::Receive => PollError::Network(
            "receive failed: nothing answers on that port (ICMP unreachable)".into(),
        ),
        snmp2::Error::AuthFailure(k) => PollError::Auth(format!(
            "authentication failed ({k:?}): check user, auth, auth_password, priv and priv_password"
        )),
        snmp2::Error::Crypto(c) => PollError::Auth(format!("decryption failed: {c}")),
        other => PollError::Protocol(other.to_string()),
    }
}

/// Polls one target. Holds its session between requests (SNMPv3 keeps it between polls too,
/// since engine discovery and key derivation are costly).
pub struct Poller {
    config: Arc<PollConfig>,
    target: Target,
    session: Option<AsyncSession>,
}

/// What one poll produced.
pub struct PollOutcome {
    /// The rows, when the poll succeeded (possibly none).
    pub batch: Option<RecordBatch>,
    pub status: Status,
}

impl Poller {
    pub fn new(config: Arc<PollConfig>, target: Target) -> Self {
        Poller {
            config,
            target,
            session: None,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn connect(&self) -> Result<AsyncSession, PollError> {
        let c = &self.config;
        let addr = self.target.address.as_str();
        let net = |e: std::io::Error| PollError::Network(format!("cannot reach {addr}: {e}"));
        Ok(match c.version {
            Version::V1 => AsyncSession::new_v1(addr, c.community.as_bytes(), request_id())
                .await
                .map_err(net)?,
            Version::V2c => AsyncSession::new_v2c(addr, c.community.as_bytes(), request_id())
                .await
                .map_err(net)?,
            Version::V3 => {
                let sec = c.security.clone().expect("v3 has security");
                let mut s = AsyncSession::new_v3(addr, request_id(), sec)
                    .await
                    .map_err(net)?;
                match tokio::time::timeout(c.timeout, s.init()).await {
                    Err(_) => {
                        return Err(PollError::Timeout {
                            timeout: c.timeout,
                            attempts: 1,
                        })
                    }
                    Ok(Err(e)) => return Err(classify(e)),
                    Ok(Ok(())) => {}
                }
                s
            }
        })
    }

    async fn send(session: &mut AsyncSession, req: &Request) -> Result<Response, snmp2::Error> {
        let pdu = match req {
            Request::Get(oids) => {
                let owned: Vec<Oid<'static>> = oids
                    .iter()
                    .map(|o| oid(o).map_err(|_| snmp2::Error::ValueOutOfRange))
                    .collect::<Result<_, _>>()?;
                let refs: Vec<&Oid<'_>> = owned.iter().collect();
                session.get_many(&refs).await?
            }
            Request::Next(o) => {
                let o = oid(o).map_err(|_| snmp2::Error::ValueOutOfRange)?;
                session.getnext(&o).await?
            }
            Request::Bulk(o, n) => {
                let o = oid(o).map_err(|_| snmp2::Error::ValueOutOfRange)?;
                session.getbulk(&[&o], 0, *n).await?
            }
        };
        let mut varbinds = Vec::new();
        for (o, v) in pdu.varbinds {
            let a = arcs(&o).ok_or(snmp2::Error::ValueOutOfRange)?;
            varbinds.push((a, Value::own(v)));
        }
        Ok(Response {
            error_status: pdu.error_status,
            error_index: pdu.error_index,
            varbinds,
        })
    }

    /// One request, with the timeout and retries; a failed attempt drops the session.
    async fn request(&mut self, req: &Request) -> Result<Response, PollError> {
        let (timeout, retries) = (self.config.timeout, self.config.retries);
        let mut last = None;
        let mut auth_refreshes = 0;
        let mut attempt = 0;
        while attempt <= retries {
            attempt += 1;
            if self.session.is_none() {
                match self.connect().await {
                    Ok(s) => self.session = Some(s),
                    Err(e @ PollError::Timeout { .. }) => {
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let session = self.session.as_mut().expect("connected");
            match tokio::time::timeout(timeout, Self::send(session, req)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(snmp2::Error::AuthUpdated)) if auth_refreshes < 2 => {
                    // The agent rebooted or its clock moved: the session learnt the new engine
                    // time; send again.
                    auth_refreshes += 1;
                    attempt -= 1;
                }
                Ok(Err(e)) => {
                    self.session = None;
                    let e = classify(e);
                    if matches!(e, PollError::Auth(_)) {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(_) => {
                    self.session = None;
                    last = Some(PollError::Timeout {
                        timeout,
                        attempts: attempt,
                    });
                }
            }
        }
        // Every attempt went unanswered unless another failure was seen last.
        Err(last
            .filter(|e| !matches!(e, PollError::Timeout { .. }))
            .unwrap_or(PollError::Timeout {
                timeout,
                attempts: retries + 1,
            }))
    }

    /// Walks the subtree under `root`: every (OID, value) in it, in order.
    pub async fn walk(&mut self, root: &[u32]) -> Result<Vec<(Vec<u32>, Value)>, PollError> {
        let mut out: Vec<(Vec<u32>, Value)> = Vec::new();
        let mut cursor = root.to_vec();
        let mut reps = self.config.max_repetitions;
        loop {
            let req = if self.config.version == Version::V1 {
                Request::Next(cursor.clone())
            } else {
                Request::Bulk(cursor.clone(), reps)
            };
            let r = self.request(&req).await?;
            match r.error_status {
                0 => {}
                NO_SUCH_NAME if self.config.version == Version::V1 => return Ok(out),
                TOO_BIG if reps > 1 => {
                    reps = (reps / 2).max(1);
                    continue;
                }
                status => {
                    return Err(PollError::Agent {
                        status,
                        index: r.error_index,
                    })
                }
            }
            if r.varbinds.is_empty() {
                return Ok(out);
            }
            for (o, v) in r.varbinds {
                if v == Value::EndOfMibView || !o.starts_with(root) {
                    return Ok(out);
                }
                if o <= cursor {
                    return Err(PollError::Protocol(format!(
                        "the agent's walk went backwards ({} after {})",
                        dotted(&o),
                        dotted(&cursor)
                    )));
                }
                cursor.clone_from(&o);
                out.push((o, v));
            }
        }
    }

    /// GETs `oids`; a value the agent does not have is `None`.
    async fn get(&mut self, oids: &[Vec<u32>]) -> Result<Vec<Option<Value>>, PollError> {
        let mut out: Vec<Option<Value>> = vec![None; oids.len()];
        for (chunk_no, chunk) in oids.chunks(GET_CHUNK).enumerate() {
            // v1 answers noSuchName for the whole request: drop that OID and ask again.
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            while !pending.is_empty() {
                let req = Request::Get(pending.iter().map(|i| chunk[*i].clone()).collect());
                let r = self.request(&req).await?;
                if r.error_status == NO_SUCH_NAME && r.error_index >= 1 {
                    let bad = r.error_index as usize - 1;
                    if bad < pending.len() {
                        pending.remove(bad);
                        continue;
                    }
                }
                if r.error_status != 0 {
                    return Err(PollError::Agent {
                        status: r.error_status,
                        index: r.error_index,
                    });
                }
                if r.varbinds.len() != pending.len() {
                    return Err(PollError::Protocol(format!(
                        "asked for {} OIDs, got {} back",
                        pending.len(),
                        r.varbinds.len()
                    )));
                }
                for (i, (o, v)) in pending.iter().zip(r.varbinds) {
                    if o != chunk[*i] {
                        return Err(PollError::Protocol(format!(
                            "asked for {}, got {} back",
                            dotted(&chunk[*i]),
                            dotted(&o)
                        )));
                    }
                    if !matches!(
                        v,
                        Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView
                    ) {
                        out[chunk_no * GET_CHUNK + i] = Some(v);
                    }
                }
                break;
            }
        }
        Ok(out)
    }

    /// Polls the target once; rows are stamped `now_ms`.
    pub async fn poll(&mut self, now_ms: i64) -> PollOutcome {
        let started = Instant::now();
        let result = self.poll_rows(now_ms).await;
        let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
        if self.config.version != Version::V3 {
            // v1/v2c sockets are cheap: one per poll keeps thousands of idle targets from
            // holding thousands of descriptors.
            self.session = None;
        }
        let device = self.target.device.clone();
        match result {
            Ok(batch) => PollOutcome {
                batch: Some(batch),
                status: Status {
                    device,
                    up: true,
                    error: None,
                    rtt_ms: Some(rtt_ms),
                },
            },
            Err(e) => {
                // `up`: the device answered, even if not with data (an error status, an SNMPv3
                // report refusing the credentials).
                let up = matches!(
                    e,
                    PollError::Agent { .. } | PollError::Protocol(_) | PollError::Auth(_)
                );
                PollOutcome {
                    batch: None,
                    status: Status {
                        device,
                        up,
                        error: Some(e.to_string()),
                        rtt_ms: up.then_some(rtt_ms),
                    },
                }
            }
        }
    }

    async fn poll_rows(&mut self, now_ms: i64) -> Result<RecordBatch, PollError> {
        let config = self.config.clone();
        match &config.polled {
            Polled::Get { columns } => {
                let oids: Vec<Vec<u32>> = columns.iter().map(|c| c.oid.clone()).collect();
                let values = self.get(&oids).await?;
                let mut arrays: Vec<ArrayRef> = vec![
                    Arc::new(TimestampMillisecondArray::from(vec![now_ms]).with_timezone("UTC")),
                    Arc::new(StringArray::from(vec![self.target.device.as_str()])),
                ];
                for (c, v) in columns.iter().zip(&values) {
                    arrays.push(column_array(c.ty, c.syntax, std::iter::once(v.as_ref())));
                }
                RecordBatch::try_new(config.schema.clone(), arrays)
                    .map_err(|e| PollError::Protocol(e.to_string()))
            }
            Polled::Table {
                table,
                roots,
                index,
                columns,
            } => {
                let mut varbinds = Vec::new();
                for root in roots {
                    varbinds.extend(self.walk(root).await?);
                }
                Ok(table_batch(
                    &config,
                    &self.target.device,
                    table,
                    index,
                    columns,
                    varbinds,
                    now_ms,
                ))
            }
        }
    }
}

/// Turns a table walk into rows: one per index, columns by their sub-identifier.
pub(crate) fn table_batch(
    config: &PollConfig,
    device: &str,
    table: &[u32],
    index: &Index,
    columns: &[super::Column],
    varbinds: Vec<(Vec<u32>, Value)>,
    now_ms: i64,
) -> RecordBatch {
    let entry_len = table.len() + 1;
    let position: HashMap<u32, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.oid[0], i))
        .collect();
    let mut rows: BTreeMap<Vec<u32>, Vec<Option<Value>>> = BTreeMap::new();
    for (o, v) in varbinds {
        if o.len() <= entry_len || o[entry_len - 1] != 1 || !o.starts_with(table) {
            continue;
        }
        let instance = o[entry_len + 1..].to_vec();
        let row = rows
            .entry(instance)
            .or_insert_with(|| vec![None; columns.len()]);
        if let Some(p) = position.get(&o[entry_len]) {
            if !matches!(v, Value::NoSuchObject | Value::NoSuchInstance) {
                row[*p] = Some(v);
            }
        }
    }
    let n = rows.len();
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![now_ms; n]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![device; n])),
    ];
    match index {
        Index::Raw => arrays.push(Arc::new(StringArray::from_iter_values(
            rows.keys().map(|k| dotted(k)),
        ))),
        Index::Objects(objs) => {
            let decoded: Vec<Vec<Option<Value>>> =
                rows.keys().map(|k| decode_index(k, objs)).collect();
            for (i, (_, syntax)) in objs.iter().enumerate() {
                arrays.push(column_array(
                    if syntax.is_integer() {
                        ColumnType::BigInt
                    } else {
                        ColumnType::Text
                    },
                    Some(*syntax),
                    decoded.iter().map(|d| d[i].as_ref()),
                ));
            }
        }
    }
    for (i, c) in columns.iter().enumerate() {
        arrays.push(column_array(
            c.ty,
            c.syntax,
            rows.values().map(|r| r[i].as_ref()),
        ));
    }
    RecordBatch::try_new(config.schema.clone(), arrays).expect("table rows match the schema")
}

/// Decodes a row's instance suffix into its index values (RFC 2578 §7.7): integers are one
/// arc, IP addresses four, strings and OIDs are length-prefixed.
fn decode_index(instance: &[u32], objects: &[(String, Syntax)]) -> Vec<Option<Value>> {
    let mut rest = instance;
    let mut out = Vec::with_capacity(objects.len());
    for (_, syntax) in objects {
        let v = match syntax {
            Syntax::IpAddress if rest.len() >= 4 => {
                let ip: Option<Vec<u8>> = rest[..4].iter().map(|a| u8::try_from(*a).ok()).collect();
                rest = &rest[4..];
                ip.map(|b| Value::Ip([b[0], b[1], b[2], b[3]]))
            }
            Syntax::Text | Syntax::Hex | Syntax::Oid if !rest.is_empty() => {
                let len = rest[0] as usize;
                if rest.len() > len {
                    let body = &rest[1..=len];
                    rest = &rest[len + 1..];
                    if *syntax == Syntax::Oid {
                        Some(Value::Oid(body.to_vec()))
                    } else {
                        body.iter()
                            .map(|a| u8::try_from(*a).ok())
                            .collect::<Option<Vec<u8>>>()
                            .map(Value::Bytes)
                    }
                } else {
                    None
                }
            }
            _ if !rest.is_empty() => {
                let v = rest[0];
                rest = &rest[1..];
                Some(Value::Int(v as i64))
            }
            _ => None,
        };
        out.push(v);
    }
    out
}
