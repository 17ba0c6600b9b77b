//! Receiving SNMP notifications: v1 traps (translated to v2 form as RFC 3584 §3.1 says), v2c
//! traps and informs (acknowledged). A datagram that is not a well-formed notification is
//! counted and dropped; it never stops the receiver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use snmp2::{MessageType, Pdu};
use tokio::net::UdpSocket;

use super::mib::{dotted, mib};
use super::{arcs, Value};
use crate::source::ts_type;

/// Where a trap source listens and which community it accepts (any when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapConfig {
    pub listen: SocketAddr,
    pub community: Option<String>,
}

/// The schema of a `FROM SNMP TRAP` source.
pub fn trap_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), true),
        Field::new("agent", DataType::Utf8, true),
        Field::new("version", DataType::Utf8, true),
        Field::new("trap", DataType::Utf8, true),
        Field::new("trap_oid", DataType::Utf8, true),
        Field::new("uptime", DataType::Int64, true),
        Field::new("varbinds", DataType::Utf8, true),
    ]))
}

/// One received notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The sender's IP address.
    pub agent: String,
    /// `1` or `2c`.
    pub version: &'static str,
    pub trap_oid: Vec<u32>,
    /// sysUpTime.0 (v2) or the time-stamp (v1), in hundredths of a second.
    pub uptime: Option<i64>,
    /// The variable bindings after sysUpTime.0 and snmpTrapOID.0, as a JSON object.
    pub varbinds: String,
}

/// What a datagram was.
#[derive(Debug)]
pub enum Decoded {
    Trap(Notification),
    /// An inform: the notification, the acknowledgement to send back, and its request id.
    Inform {
        notification: Notification,
        ack: Vec<u8>,
        request_id: i32,
    },
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq)]
pub enum Dropped {
    Malformed(String),
    /// Well-formed, but not for this source (other community, other PDU type, SNMPv3).
    Refused(String),
}

const SYS_UPTIME_0: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 3, 0];
const SNMP_TRAP_OID_0: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
const SNMP_TRAPS: [u32; 9] = [1, 3, 6, 1, 6, 3, 1, 1, 5];
const SNMP_TRAP_ENTERPRISE_0: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0];
const SNMP_TRAP_ADDRESS_0: [u32; 10] = [1, 3, 6, 1, 6, 3, 18, 1, 3, 0];

/// JSON object of varbinds: keys are `MODULE::name` for known objects (with the instance, e.g.
/// `IF-MIB::ifIndex`, then `IF-MIB::ifIndex.4` if the name repeats), else the dotted OID.
fn varbinds_json(varbinds: &[(Vec<u32>, Value)]) -> String {
    let m = mib();
    let mut map = serde_json::Map::new();
    for (o, v) in varbinds {
        let key = match m.lookup_instance(o) {
            Some((obj, inst)) => {
                let plain = obj.qualified();
                if map.contains_key(&plain) && !inst.is_empty() {
                    format!("{plain}.{}", dotted(inst))
                } else {
                    plain
                }
            }
            None => dotted(o),
        };
        let syntax = m.lookup_instance(o).map(|(obj, _)| obj.syntax);
        map.insert(key, v.to_json(syntax));
    }
    serde_json::Value::Object(map).to_string()
}

/// Decodes one datagram from `peer`.
pub fn decode(bytes: &[u8], peer: SocketAddr, community: Option<&str>) -> Result<Decoded, Dropped> {
    // The BER decoder is defensive, but a bug in it must not take the receiver down.
    let parsed = std::panic::catch_unwind(|| decode_inner(bytes, peer, community));
    parsed.unwrap_or_else(|_| Err(Dropped::Malformed("undecodable packet".into())))
}

fn decode_inner(
    bytes: &[u8],
    peer: SocketAddr,
    community: Option<&str>,
) -> Result<Decoded, Dropped> {
    let pdu = Pdu::from_bytes(bytes).map_err(|e| match e {
        snmp2::Error::AuthFailure(_) | snmp2::Error::UnsupportedVersion => {
            Dropped::Refused("SNMPv3 notifications are not supported; send v1 or v2c".into())
        }
        e => Dropped::Malformed(e.to_string()),
    })?;
    if let Some(c) = community {
        if pdu.community != c.as_bytes() {
            return Err(Dropped::Refused(format!(
                "community '{}' is not the source's",
                String::from_utf8_lossy(pdu.community)
            )));
        }
    }
    let mut varbinds: Vec<(Vec<u32>, Value)> = Vec::new();
    for (o, v) in pdu.varbinds.clone() {
        let a = arcs(&o).ok_or_else(|| Dropped::Malformed("an OID arc beyond 32 bits".into()))?;
        varbinds.push((a, Value::own(v)));
    }
    let agent = peer.ip().to_canonical().to_string();
    match pdu.message_type {
        MessageType::TrapV1 => {
            let info = pdu
                .v1_trap_info
                .as_ref()
                .ok_or_else(|| Dropped::Malformed("v1 trap without its header".into()))?;
            let enterprise = arcs(&info.enterprise)
                .ok_or_else(|| Dropped::Malformed("bad enterprise OID".into()))?;
            // RFC 3584 §3.1
            let trap_oid = if (0..=5).contains(&info.generic_trap) {
                let mut t = SNMP_TRAPS.to_vec();
                t.push(info.generic_trap as u32 + 1);
                t
            } else if info.generic_trap == 6 && info.specific_trap >= 0 {
                let mut t = enterprise.clone();
                t.push(0);
                t.push(info.specific_trap as u32);
                t
            } else {
                return Err(Dropped::Malformed(format!(
                    "v1 trap with generic-trap {} and specific-trap {}",
                    info.generic_trap, info.specific_trap
                )));
            };
            // RFC 3584 §3.1 appends the v1 header's agent-addr and enterprise.
            if let std::net::IpAddr::V4(a) = info.agent_addr {
                if !a.is_unspecified()
                    && !varbinds.iter().any(|(o, _)| o[..] == SNMP_TRAP_ADDRESS_0)
                {
                    varbinds.push((SNMP_TRAP_ADDRESS_0.to_vec(), Value::Ip(a.octets())));
                }
            }
            if !varbinds
                .iter()
                .any(|(o, _)| o[..] == SNMP_TRAP_ENTERPRISE_0)
            {
                varbinds.push((SNMP_TRAP_ENTERPRISE_0.to_vec(), Value::Oid(enterprise)));
            }
            Ok(Decoded::Trap(Notification {
                agent,
                version: "1",
                trap_oid,
                uptime: Some(info.timestamp as i64),
                varbinds: varbinds_json(&varbinds),
            }))
        }
        MessageType::Trap | MessageType::InformRequest => {
            let mut it = varbinds.into_iter();
            let uptime = match it.next() {
                Some((o, Value::Ticks(t))) if o[..] == SYS_UPTIME_0 => t as i64,
                _ => {
                    return Err(Dropped::Malformed(
                        "the first varbind of a v2 notification must be sysUpTime.0".into(),
                    ))
                }
            };
            let trap_oid = match it.next() {
                Some((o, Value::Oid(t))) if o[..] == SNMP_TRAP_OID_0 => t,
                _ => {
                    return Err(Dropped::Malformed(
                        "the second varbind of a v2 notification must be snmpTrapOID.0".into(),
                    ))
                }
            };
            let rest: Vec<(Vec<u32>, Value)> = it.collect();
            let notification = Notification {
                agent,
                version: "2c",
                trap_oid,
                uptime: Some(uptime),
                varbinds: varbinds_json(&rest),
            };
            if pdu.message_type == MessageType::Trap {
                return Ok(Decoded::Trap(notification));
            }
            let mut ack = pdu.clone();
            ack.message_type = MessageType::Response;
            ack.error_status = 0;
            ack.error_index = 0;
            let ack = ack
                .to_bytes()
                .map_err(|e| Dropped::Malformed(format!("cannot acknowledge the inform: {e}")))?;
            Ok(Decoded::Inform {
                notification,
                ack,
                request_id: pdu.req_id,
            })
        }
        other => Err(Dropped::Refused(format!(
            "a {other:?} PDU sent to a trap port"
        ))),
    }
}

/// Rows of a trap source.
pub fn trap_batch(rows: &[(i64, Notification)]) -> RecordBatch {
    let m = mib();
    let mut agent = StringBuilder::new();
    let mut version = StringBuilder::new();
    let mut trap = StringBuilder::new();
    let mut trap_oid = StringBuilder::new();
    let mut uptime = Int64Builder::new();
    let mut varbinds = StringBuilder::new();
    for (_, n) in rows {
        agent.append_value(&n.agent);
        version.append_value(n.version);
        trap.append_value(m.symbolic(&n.trap_oid));
        trap_oid.append_value(dotted(&n.trap_oid));
        uptime.append_option(n.uptime);
        varbinds.append_value(&n.varbinds);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.0))
                .with_timezone("UTC"),
        ),
        Arc::new(agent.finish()),
        Arc::new(version.finish()),
        Arc::new(trap.finish()),
        Arc::new(trap_oid.finish()),
        Arc::new(uptime.finish()),
        Arc::new(varbinds.finish()),
    ];
    RecordBatch::try_new(trap_schema(), columns).expect("trap rows match the trap schema")
}

/// Counters of a trap receiver, for `/metrics`.
#[derive(Default, Debug)]
pub struct TrapStats {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub refused: AtomicU64,
    pub informs: AtomicU64,
    pub duplicates: AtomicU64,
}

/// How long a received inform's request id is remembered, to drop its retransmissions.
const INFORM_MEMORY: Duration = Duration::from_secs(60);
/// Datagrams taken per batch at most.
const BATCH: usize = 1024;

/// A bound trap socket.
pub struct TrapReceiver {
    socket: UdpSocket,
    community: Option<String>,
    pub stats: Arc<TrapStats>,
    seen: HashMap<(SocketAddr, i32), Instant>,
    buf: Vec<u8>,
}

/// Notifications received together, and the inform acknowledgements to send once they are
/// stored.
pub struct Received {
    pub rows: Vec<(i64, Notification)>,
    pub acks: Vec<(SocketAddr, Vec<u8>)>,
}

impl TrapReceiver {
    pub async fn bind(config: &TrapConfig, stats: Arc<TrapStats>) -> std::io::Result<Self> {
        Ok(TrapReceiver {
            socket: UdpSocket::bind(config.listen).await?,
            community: config.community.clone(),
            stats,
            seen: HashMap::new(),
            buf: vec![0; 65_536],
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits for datagrams and returns the notifications among them (at least one), stamped by
    /// `now_ms()`. Dropped datagrams are counted and logged.
    pub async fn receive(&mut self, now_ms: impl Fn() -> i64) -> std::io::Result<Received> {
        let mut out = Received {
            rows: Vec::new(),
            acks: Vec::new(),
        };
        loop {
            let (n, peer) = if out.rows.is_empty() && out.acks.is_empty() {
                self.socket.recv_from(&mut self.buf).await?
            } else {
                match self.socket.try_recv_from(&mut self.buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                    Err(e) => return Err(e),
                }
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            match decode(&self.buf[..n], peer, self.community.as_deref()) {
                Ok(Decoded::Trap(t)) => out.rows.push((now_ms(), t)),
                Ok(Decoded::Inform {
                    notification,
                    ack,
                    request_id,
                }) => {
                    self.stats.informs.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    if self.seen.len() > 10_000 {
                        self.seen
                            .retain(|_, t| now.duration_since(*t) < INFORM_MEMORY);
                    }
                    let fresh = match self.seen.get(&(peer, request_id)) {
                        Some(t) => now.duration_since(*t) >= INFORM_MEMORY,
                        None => true,
                    };
                    self.seen.insert((peer, request_id), now);
                    if fresh {
                        out.rows.push((now_ms(), notification));
                    } else {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    // Every copy is acknowledged: the first ack may have been lost.
                    out.acks.push((peer, ack));
                }
                Err(Dropped::Malformed(why)) => {
                    let n = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    // The first few, then every 1000th: a flood must not flood the log too.
                    if n <= 10 || n.is_multiple_of(1000) {
                        tracing::warn!("malformed SNMP datagram from {peer} ({n} so far): {why}");
                    }
                }
                Err(Dropped::Refused(why)) => {
                    let n = self.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if n <= 10 || n.is_multiple_of(1000) {
                        tracing::warn!("SNMP datagram from {peer} refused ({n} so far): {why}");
                    }
                }
            }
            if out.rows.len() + out.acks.len() >= BATCH {
                return Ok(out);
            }
        }
    }

    /// Sends inform acknowledgements.
    pub async fn acknowledge(&self, acks: &[(SocketAddr, Vec<u8>)]) {
        for (peer, ack) in acks {
            if let Err(e) = self.socket.send_to(ack, peer).await {
                tracing::warn!("cannot acknowledge an inform to {peer}: {e}");
            }
        }
    }
}
