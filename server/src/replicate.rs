//! What the ingest writer shares with the links to other replicas (see `cluster`): the records
//! this replica accepted from clients, published once they are durable; how far its log is
//! durable; how far each peer has acknowledged, from which its lag is told; and the newest record
//! of each other replica this one holds (its marks), against which forwarded records are
//! de-duplicated.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Records a link may fall behind the writer before it reads them back from the log instead.
const LIVE: usize = 256;
/// Records of this replica whose acknowledgement is tracked for the lag; past it the oldest are
/// forgotten (a peer down that long is behind by at least that much).
const TRACKED: usize = 1 << 20;

/// A record of this replica, durable, to be sent to every peer.
#[derive(Debug)]
pub struct Forward {
    pub lsn: u64,
    /// The record as the log holds it (see `wal::header`): what a peer is sent.
    pub payload: Bytes,
}

/// One tracked record: its `lsn`, the rows of this replica's records before it, and when it was
/// accepted.
struct Tracked {
    lsn: u64,
    before: u64,
    at: i64,
}

/// How far behind a peer is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    pub rows: u64,
    /// Age of the oldest record it has not acknowledged, ms.
    pub ms: i64,
}

/// A client's answer held until a majority of the replicas has its batch (`--ack quorum`).
pub trait Held: Send {
    /// Gives the answer.
    fn give(self: Box<Self>);
    /// Whether the client stopped waiting for it.
    fn abandoned(&self) -> bool;
}

/// Answers held for a majority, by the `lsn` of their batch.
type HeldAnswers = std::collections::BTreeMap<u64, Vec<Box<dyn Held>>>;

/// The shared side of replication. Cheap to share behind an `Arc`.
pub struct Replication {
    /// With `--ack quorum`: how long a client waits for a majority before it is told no.
    pub quorum: Option<std::time::Duration>,
    /// Answers held for a majority, by the `lsn` of their batch, and the `lsn` through which a
    /// majority has every batch.
    held: Mutex<(HeldAnswers, u64)>,
    live: broadcast::Sender<Arc<Forward>>,
    synced: AtomicU64,
    /// The writer numbers records above this (see [`Replication::number_above`]).
    floor: AtomicU64,
    tracked: Mutex<(VecDeque<Tracked>, u64)>,
    /// The newest `seq` of each other replica that this one holds durably.
    marks: Mutex<HashMap<String, u64>>,
    /// The replicas' shared time.
    pub timeline: Arc<crate::timeline::Timeline>,
}

impl Replication {
    /// `synced`: the last `lsn` of the log as it was opened.
    pub fn new(
        synced: u64,
        marks: HashMap<String, u64>,
        quorum: Option<std::time::Duration>,
        timeline: Arc<crate::timeline::Timeline>,
    ) -> Replication {
        Replication {
            quorum,
            held: Mutex::new((Default::default(), 0)),
            live: broadcast::channel(LIVE).0,
            synced: AtomicU64::new(synced),
            floor: AtomicU64::new(0),
            tracked: Mutex::new((VecDeque::new(), 0)),
            marks: Mutex::new(marks),
            timeline,
        }
    }

    /// The records published from now on (a receiver that falls [`LIVE`] behind is told it
    /// lagged, and reads the log instead).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Forward>> {
        self.live.subscribe()
    }

    /// A peer holds records of this replica's id up to `lsn`, more than this replica wrote: it
    /// replaced another replica of its id. Its next records are numbered above them, so that the
    /// peer does not take them for ones it has.
    pub fn number_above(&self, lsn: u64) {
        self.floor.fetch_max(lsn, Ordering::AcqRel);
    }

    /// See [`Replication::number_above`].
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// The `lsn` through which the log is durable.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// The newest `seq` of `origin` held here durably (0: none).
    pub fn mark(&self, origin: &str) -> u64 {
        self.marks
            .lock()
            .expect("marks")
            .get(origin)
            .copied()
            .unwrap_or(0)
    }

    /// After a sync: the log is durable through `synced`, the marks are `marks`, and `records`
    /// (this replica's replicated records of the group, in order: `lsn`, rows, accepted at, the
    /// record) go to the peers.
    pub(crate) fn synced_through(
        &self,
        synced: u64,
        marks: &HashMap<String, u64>,
        records: Vec<(u64, u64, i64, Vec<u8>)>,
    ) {
        {
            let mut m = self.marks.lock().expect("marks");
            for (o, s) in marks {
                m.insert(o.clone(), *s);
            }
        }
        if !records.is_empty() {
            let mut t = self.tracked.lock().expect("tracked");
            let (list, total) = &mut *t;
            for (lsn, rows, at, _) in &records {
                list.push_back(Tracked {
                    lsn: *lsn,
                    before: *total,
                    at: *at,
                });
                *total += rows;
            }
            while list.len() > TRACKED {
                list.pop_front();
            }
        }
        self.synced.store(synced, Ordering::Release);
        for (lsn, _, _, payload) in records {
            // No receiver: no link is up; they read the log when one is.
            let _ = self.live.send(Arc::new(Forward {
                lsn,
                payload: Bytes::from(payload),
            }));
        }
    }

    /// How far behind a peer that acknowledged through `acked` is, at `now` (epoch ms).
    pub fn lag(&self, acked: u64, now: i64) -> Lag {
        let t = self.tracked.lock().expect("tracked");
        let (list, total) = &*t;
        let first = list.partition_point(|r| r.lsn <= acked);
        match list.get(first) {
            Some(r) => Lag {
                rows: total - r.before,
                ms: (now - r.at).max(0),
            },
            None => Lag::default(),
        }
    }

    /// Answers `reply` with `outcome` once a majority holds the batch `lsn`.
    pub(crate) fn answer_at_quorum(&self, lsn: u64, reply: Box<dyn Held>) {
        let mut h = self.held.lock().expect("held");
        if lsn <= h.1 {
            drop(h);
            reply.give();
            return;
        }
        // Clients that gave up waiting (see `ingest`) leave their answers behind.
        if h.0.len() >= 1024 && h.0.len().is_power_of_two() {
            h.0.retain(|_, v| {
                v.retain(|r| !r.abandoned());
                !v.is_empty()
            });
        }
        h.0.entry(lsn).or_default().push(reply);
    }

    /// A majority of the replicas has every batch of this one through `lsn`.
    pub fn majority_through(&self, lsn: u64) {
        let ready = {
            let mut h = self.held.lock().expect("held");
            if lsn <= h.1 {
                return;
            }
            h.1 = lsn;
            let later = h.0.split_off(&(lsn + 1));
            std::mem::replace(&mut h.0, later)
        };
        for held in ready.into_values().flatten() {
            held.give();
        }
    }

    /// Forgets the tracked records every peer has acknowledged (`acked`: the lowest).
    pub fn forget_through(&self, acked: u64) {
        let mut t = self.tracked.lock().expect("tracked");
        while t.0.front().is_some_and(|r| r.lsn <= acked) {
            t.0.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_the_rows_and_age_of_what_a_peer_has_not_acknowledged() {
        let timeline = Arc::new(crate::timeline::Timeline::new(
            tocsin_engine::Clock::manual(0),
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
        ));
        let r = Replication::new(0, HashMap::from([("b".to_string(), 4)]), None, timeline);
        assert_eq!(r.mark("b"), 4);
        assert_eq!(r.mark("c"), 0);
        let mut rx = r.subscribe();
        r.synced_through(
            12,
            &HashMap::from([("c".to_string(), 9)]),
            vec![(10, 5, 1_000, vec![1]), (12, 7, 2_000, vec![2])],
        );
        assert_eq!(r.synced(), 12);
        assert_eq!((r.mark("b"), r.mark("c")), (4, 9));
        assert_eq!(rx.try_recv().unwrap().lsn, 10);
        assert_eq!(&rx.try_recv().unwrap().payload[..], [2]);
        assert_eq!(
            r.lag(0, 3_000),
            Lag {
                rows: 12,
                ms: 2_000
            }
        );
        assert_eq!(r.lag(10, 3_000), Lag { rows: 7, ms: 1_000 });
        assert_eq!(r.lag(11, 3_000), Lag { rows: 7, ms: 1_000 });
        assert_eq!(r.lag(12, 3_000), Lag::default());
        r.forget_through(10);
        assert_eq!(r.lag(10, 3_000), Lag { rows: 7, ms: 1_000 });
    }
}
