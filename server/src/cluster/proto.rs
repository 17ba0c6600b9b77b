//! The frames replicas exchange over `GET /v1/cluster`, each one binary WebSocket message.
//!
//! A link carries one replica's records to another: the dialing replica sends `Hello`, the
//! other answers `Welcome` with the newest of the dialer's records it holds, and the dialer then
//! sends its records after that one, in order; each is answered `Ack` once it is durable there
//! (or `Nack` with the reason, when it can never be taken). Both sides send `Beat` every second,
//! so that either notices a silent peer.
//!
//! | frame | bytes |
//! |---|---|
//! | `Hello` | `1`, version `u8`, id length `u8`, id |
//! | `Welcome` | `2`, version `u8`, id length `u8`, id, mark `u64` |
//! | `Ack` | `4`, seq `u64` |
//! | `Nack` | `5`, seq `u64`, reason (UTF-8) |
//! | `Beat` | `6`, the sender's clock, epoch ms `i64` |
//! | record | the record as the sender's write-ahead log holds it (see `wal::header`); it begins with eight `0xff` bytes |
//!
//! Integers are little-endian. A record is sent as its log holds it, without a copy.

use bytes::Bytes;

/// The version of this protocol; a peer of another version is refused.
pub const VERSION: u8 = 1;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const ACK: u8 = 4;
const NACK: u8 = 5;
const BEAT: u8 = 6;
/// The first byte of a record (the first of its eight `0xff`).
const RECORD: u8 = 0xff;

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello { version: u8, id: String },
    Welcome { version: u8, id: String, mark: u64 },
    Record(Bytes),
    Ack(u64),
    Nack { seq: u64, reason: String },
    Beat(i64),
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
            } => {
                out.push(WELCOME);
                id(&mut out, *version, i);
                out.extend_from_slice(&mark.to_le_bytes());
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
            Frame::Beat(at) => {
                out.push(BEAT);
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
                exact(end + 8, Frame::Welcome { version, id, mark })
            }
            ACK => exact(9, Frame::Ack(u64_at(1)?)),
            NACK => {
                let seq = u64_at(1)?;
                let reason = String::from_utf8_lossy(&data[9..]).into_owned();
                Ok(Frame::Nack { seq, reason })
            }
            BEAT => exact(9, Frame::Beat(u64_at(1)? as i64)),
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
            },
            Frame::Record(Bytes::from(
                [[0xffu8; 8].as_slice(), b"rest of a record"].concat(),
            )),
            Frame::Ack(77),
            Frame::Nack {
                seq: 5,
                reason: "source \"x\" does not exist".into(),
            },
            Frame::Beat(1_700_000_000_000),
        ];
        for f in frames {
            assert_eq!(Frame::decode(f.encode()).unwrap(), f);
        }
        for (garbage, why) in [
            (&b""[..], "empty"),
            (b"GET / HTTP/1.1", "unknown frame kind 71"),
            (&[1, 1, 9, b'a'], "cut short"),
            (&[4, 1, 2, 3], "cut short"),
            (&[6, 0, 0, 0, 0, 0, 0, 0, 0, 9], "1 bytes too many"),
            (&[0xff, 0xff, 1], "unknown frame kind 255"),
            (&[1, 1, 2, 0xc3, 0x28], "not UTF-8"),
        ] {
            let e = Frame::decode(Bytes::copy_from_slice(garbage)).unwrap_err();
            assert!(e.contains(why), "{garbage:?}: {e}");
        }
    }
}
