//! The frames replicas exchange over `GET /v1/cluster`, each one binary WebSocket message.
//!
//! A link carries one replica's records to another: the dialing replica sends `Hello`, the
//! other answers `Welcome` with the newest of the dialer's records it holds and how far its
//! catalog log goes, and the dialer then sends the catalog changes it lacks and its records
//! after that one, in order; each record is answered `Ack` once it is durable there (or `Nack`
//! with the reason, when it can never be taken), each catalog change `CatalogAck` once it is
//! applied. A replica that is not the leader sends a `Statement` (a catalog change a client asked
//! of it) to the leader over its link, and is answered `Done`. Both sides send `Beat` every
//! second with the replica they take for the leader, so that either notices a silent peer. The
//! taking replica sends `Need` when its engine waits for a time, and the dialer answers with its
//! `Mark` once its records stamped before it have been sent (see `timeline`).
//!
//! | frame | bytes |
//! |---|---|
//! | `Hello` | `1`, version `u8`, id length `u8`, id |
//! | `Welcome` | `2`, version `u8`, id length `u8`, id, mark `u64`, catalog seq `u64`, catalog checksum `u32`, its own log's last `lsn` `u64`, the newest of its own records sent back to it `u64` |
//! | `Ack` | `4`, seq `u64` |
//! | `Nack` | `5`, seq `u64`, reason (UTF-8) |
//! | `Beat` | `6`, the sender's clock, epoch ms `i64`, the leader it sees (UTF-8, empty: none) |
//! | `Statement` | `7`, request id `u64`, SQL (UTF-8) |
//! | `Done` | `8`, request id `u64`, the outcome (JSON) |
//! | `Catalog` | `9`, a catalog log record (JSON) |
//! | `CatalogAck` | `10`, seq `u64` |
//! | `Notices` | `11`, entries of the sender's notification log (JSON array, see `notices`); the first after `Welcome` holds all it keeps |
//! | `Need` | `12`, epoch ms `u64`: the taking replica's engine waits for that time (see `timeline`) |
//! | `Mark` | `13`, epoch ms `u64`: every record the dialing replica sends after it is stamped no earlier |
//! | record | the record as the sender's write-ahead log holds it (see `wal::header`); it begins with eight `0xff` bytes |
//!
//! Integers are little-endian. A record is sent as its log holds it, without a copy.

use bytes::Bytes;

/// The path of the link endpoint on the main port.
pub const PATH: &str = "/v1/cluster";

/// The version of this protocol; a peer of another version is refused.
pub const VERSION: u8 = 2;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const ACK: u8 = 4;
const NACK: u8 = 5;
const BEAT: u8 = 6;
const STATEMENT: u8 = 7;
const DONE: u8 = 8;
const CATALOG: u8 = 9;
const CATALOG_ACK: u8 = 10;
const NOTICES: u8 = 11;
const NEED: u8 = 12;
const MARK: u8 = 13;
/// The first byte of a record (the first of its eight `0xff`).
const RECORD: u8 = 0xff;

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello {
        version: u8,
        id: String,
    },
    Welcome {
        version: u8,
        id: String,
        mark: u64,
        catalog: u64,
        checksum: u32,
        /// The last `lsn` of the welcoming replica's log ...
        own: u64,
        /// ... and the newest of its own records it was sent back (by a replica that held them
        /// when it had lost them: it replaced a replica of its id).
        returned: u64,
    },
    Record(Bytes),
    Ack(u64),
    Nack {
        seq: u64,
        reason: String,
    },
    Beat {
        at: i64,
        leader: String,
    },
    Statement {
        id: u64,
        sql: String,
    },
    Done {
        id: u64,
        outcome: String,
    },
    Catalog(String),
    CatalogAck(u64),
    Notices(String),
    Need(u64),
    Mark(u64),
}

impl Frame {
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        let id = |out: &mut Vec<u8>, version: u8, id: &str| {
            out.push(version);
            out.push(id.len().min(255) as u8);
            out.extend_from_slice(&id.as_bytes()[..id.len().min(255)]);
        };
        match self {
            Frame::Hello { version, id: i } => {
                out.push(HELLO);
                id(&mut out, *version, i);
            }
            Frame::Welcome {
                version,
                id: i,
                mark,
                catalog,
                checksum,
                own,
                returned,
            } => {
                out.push(WELCOME);
                id(&mut out, *version, i);
                out.extend_from_slice(&mark.to_le_bytes());
                out.extend_from_slice(&catalog.to_le_bytes());
                out.extend_from_slice(&checksum.to_le_bytes());
                out.extend_from_slice(&own.to_le_bytes());
                out.extend_from_slice(&returned.to_le_bytes());
            }
            Frame::Record(payload) => return payload.clone(),
            Frame::Ack(seq) => {
                out.push(ACK);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Frame::Nack { seq, reason } => {
                out.push(NACK);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::Beat { at, leader } => {
                out.push(BEAT);
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(leader.as_bytes());
            }
            Frame::Statement { id, sql: text } | Frame::Done { id, outcome: text } => {
                out.push(if matches!(self, Frame::Statement { .. }) {
                    STATEMENT
                } else {
                    DONE
                });
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Frame::Catalog(json) | Frame::Notices(json) => {
                out.push(if matches!(self, Frame::Catalog(_)) {
                    CATALOG
                } else {
                    NOTICES
                });
                out.extend_from_slice(json.as_bytes());
            }
            Frame::CatalogAck(seq) => {
                out.push(CATALOG_ACK);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Frame::Need(at) => {
                out.push(NEED);
                out.extend_from_slice(&at.to_le_bytes());
            }
            Frame::Mark(at) => {
                out.push(MARK);
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        Bytes::from(out)
    }

    /// Reads a frame; what is not one is answered with why.
    pub fn decode(data: Bytes) -> Result<Frame, String> {
        let Some(&kind) = data.first() else {
            return Err("an empty frame".into());
        };
        let short = || format!("a frame of kind {kind} cut short ({} bytes)", data.len());
        let u64_at = |at: usize| -> Result<u64, String> {
            data.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(short)
        };
        let id_at = |at: usize| -> Result<(u8, String, usize), String> {
            let version = *data.get(at).ok_or_else(short)?;
            let n = *data.get(at + 1).ok_or_else(short)? as usize;
            let id = data.get(at + 2..at + 2 + n).ok_or_else(short)?;
            let id = std::str::from_utf8(id)
                .map_err(|_| "a replica id that is not UTF-8".to_string())?;
            Ok((version, id.to_string(), at + 2 + n))
        };
        let text_from = |at: usize| -> Result<String, String> {
            std::str::from_utf8(data.get(at..).ok_or_else(short)?)
                .map(str::to_string)
                .map_err(|_| format!("a frame of kind {kind} whose text is not UTF-8"))
        };
        let exact = |end: usize, f: Frame| {
            if end == data.len() {
                Ok(f)
            } else {
                Err(format!(
                    "a frame of kind {kind} with {} bytes too many",
                    data.len() - end
                ))
            }
        };
        match kind {
            HELLO => {
                let (version, id, end) = id_at(1)?;
                exact(end, Frame::Hello { version, id })
            }
            WELCOME => {
                let (version, id, end) = id_at(1)?;
                let mark = u64_at(end)?;
                let catalog = u64_at(end + 8)?;
                let checksum = data
                    .get(end + 16..end + 20)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(short)?;
                let own = u64_at(end + 20)?;
                let returned = u64_at(end + 28)?;
                exact(
                    end + 36,
                    Frame::Welcome {
                        version,
                        id,
                        mark,
                        catalog,
                        checksum,
                        own,
                        returned,
                    },
                )
            }
            ACK => exact(9, Frame::Ack(u64_at(1)?)),
            NACK => {
                let seq = u64_at(1)?;
                let reason = String::from_utf8_lossy(&data[9..]).into_owned();
                Ok(Frame::Nack { seq, reason })
            }
            BEAT => Ok(Frame::Beat {
                at: u64_at(1)? as i64,
                leader: text_from(9)?,
            }),
            STATEMENT => Ok(Frame::Statement {
                id: u64_at(1)?,
                sql: text_from(9)?,
            }),
            DONE => Ok(Frame::Done {
                id: u64_at(1)?,
                outcome: text_from(9)?,
            }),
            CATALOG => Ok(Frame::Catalog(text_from(1)?)),
            NOTICES => Ok(Frame::Notices(text_from(1)?)),
            CATALOG_ACK => exact(9, Frame::CatalogAck(u64_at(1)?)),
            NEED => exact(9, Frame::Need(u64_at(1)?)),
            MARK => exact(9, Frame::Mark(u64_at(1)?)),
            RECORD if data.len() >= 8 && data[..8] == [RECORD; 8] => Ok(Frame::Record(data)),
            other => Err(format!("an unknown frame kind {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused_with_a_reason() {
        let frames = [
            Frame::Hello {
                version: VERSION,
                id: "a".into(),
            },
            Frame::Welcome {
                version: VERSION,
                id: "replica-b".into(),
                mark: u64::MAX - 3,
                catalog: 12,
                checksum: 0xdead_beef,
                own: 99,
                returned: 7,
            },
            Frame::Record(Bytes::from(
                [[0xffu8; 8].as_slice(), b"rest of a record"].concat(),
            )),
            Frame::Ack(77),
            Frame::Nack {
                seq: 5,
                reason: "source \"x\" does not exist".into(),
            },
            Frame::Beat {
                at: 1_700_000_000_000,
                leader: "a".into(),
            },
            Frame::Beat {
                at: 5,
                leader: String::new(),
            },
            Frame::Statement {
                id: 3,
                sql: "DROP VIEW v".into(),
            },
            Frame::Done {
                id: 3,
                outcome: "{}".into(),
            },
            Frame::Catalog("{\"seq\": 1}".into()),
            Frame::CatalogAck(1),
            Frame::Notices("[]".into()),
            Frame::Need(1_765_000_000_123),
            Frame::Mark(1_765_000_000_124),
        ];
        for f in frames {
            assert_eq!(Frame::decode(f.encode()).unwrap(), f);
        }
        for (garbage, why) in [
            (&b""[..], "empty"),
            (b"GET / HTTP/1.1", "unknown frame kind 71"),
            (&[1, 1, 9, b'a'], "cut short"),
            (&[4, 1, 2, 3], "cut short"),
            (&[10, 0, 0, 0, 0, 0, 0, 0, 0, 9], "1 bytes too many"),
            (&[9, 0xff], "not UTF-8"),
            (&[0xff, 0xff, 1], "unknown frame kind 255"),
            (&[1, 1, 2, 0xc3, 0x28], "not UTF-8"),
        ] {
            let e = Frame::decode(Bytes::copy_from_slice(garbage)).unwrap_err();
            assert!(e.contains(why), "{garbage:?}: {e}");
        }
    }
}
