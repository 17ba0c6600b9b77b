//! The notification log replicas share, so that each notification reaches its receiver once.
//!
//! Every replica runs the same rules on the same rows, so each one queues the same notifications.
//! Before it sends one, a replica tells the others (an intent: sink, rule, labels, transition,
//! when the alert became active, its id), and after the receiver took it, that it was delivered.
//! A replica's notification is matched with another's intent for the same sink, rule, labels,
//! transition and reminder whose alerts became active within [`WINDOW_MS`] of each other (the
//! closest one, each intent matched once, so that an alert that fires twice is two
//! notifications). The first live replica in order of id delivers at once; the one at position
//! `p` waits `p` times the peer timeout after queueing and then delivers only what the log does
//! not show as delivered, with the id of the first replica's intent where it has one, so that a
//! receiver can drop a notification sent twice when a replica died in the middle of delivery.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tocsin_connectors::sink::Notification;

use crate::alerts::deliver::Decision;

/// Two replicas' notifications of the same transition are the same if their alerts became
/// active this close together (rows forwarded between replicas arrive within milliseconds; polled
/// sources are sampled by each replica on its own).
pub const WINDOW_MS: i64 = 60_000;
/// Entries each replica keeps of its own, and of each peer's.
const KEPT: usize = 20_000;

/// One entry of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    pub replica: String,
    pub sink: String,
    pub id: String,
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    /// `pending`, `firing`, `resolved`.
    pub state: String,
    pub repeat: u32,
    pub active_since: i64,
    pub delivered: bool,
}

impl Notice {
    pub fn of(replica: &str, sink: &str, n: &Notification, delivered: bool) -> Notice {
        Notice {
            replica: replica.to_string(),
            sink: sink.to_string(),
            id: n.id.clone(),
            rule: n.rule.clone(),
            labels: n.labels.clone(),
            state: n.state.as_str().to_string(),
            repeat: n.repeat,
            active_since: n.active_since,
            delivered,
        }
    }

    /// The same notification of the same replica (its id may have changed to the one it was
    /// sent with).
    fn same_entry(&self, other: &Notice) -> bool {
        self.sink == other.sink
            && self.rule == other.rule
            && self.state == other.state
            && self.repeat == other.repeat
            && self.active_since == other.active_since
            && self.labels == other.labels
    }

    /// What [`Notice::same_transition`] compares but the time, hashed: the index of the log.
    fn key(&self) -> u64 {
        let labels = serde_json::to_string(&self.labels).unwrap_or_default();
        let repeat = self.repeat.to_string();
        tocsin_connectors::sink::fnv(&[&self.sink, &self.rule, &self.state, &repeat, &labels])
    }

    fn same_transition(&self, other: &Notice) -> bool {
        self.sink == other.sink
            && self.rule == other.rule
            && self.state == other.state
            && self.repeat == other.repeat
            && self.labels == other.labels
            && (self.active_since - other.active_since).abs() <= WINDOW_MS
    }
}

/// When a replica's turn to send a notification comes.
pub struct Turn {
    /// The replicas before this one in order, and whether each is live.
    pub ahead: Vec<(String, bool)>,
    /// Queued, plus the peer timeout for each live replica ahead.
    pub due: i64,
    /// While a live replica ahead holds the same notification (it is delivering it), this one
    /// waits until this time.
    pub held_until: i64,
}

/// One replica's entries, newest last, each with the local outbox seq that claimed it (a
/// peer's), indexed by [`Notice::key`] so that an alert storm does not make every decision read
/// the whole log.
#[derive(Default)]
struct Entries {
    list: VecDeque<(Notice, Option<u64>)>,
    /// The position (counted since the start) of the first entry of `list`.
    first: u64,
    /// Positions by key.
    by_key: HashMap<u64, Vec<u64>>,
    /// The position each outbox seq claimed.
    claims: HashMap<u64, u64>,
}

impl Entries {
    fn push(&mut self, n: Notice) {
        let at = self.first + self.list.len() as u64;
        self.by_key.entry(n.key()).or_default().push(at);
        self.list.push_back((n, None));
        if self.list.len() > KEPT {
            if let Some((old, claim)) = self.list.pop_front() {
                let key = old.key();
                if let Some(v) = self.by_key.get_mut(&key) {
                    v.retain(|p| *p != self.first);
                    if v.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
                if let Some(seq) = claim {
                    self.claims.remove(&seq);
                }
            }
            self.first += 1;
        }
    }

    /// The positions of the entries with the key of `n`.
    fn candidates(&self, n: &Notice) -> Vec<u64> {
        self.by_key.get(&n.key()).cloned().unwrap_or_default()
    }

    fn at(&mut self, pos: u64) -> Option<&mut (Notice, Option<u64>)> {
        let i = pos.checked_sub(self.first)?;
        self.list.get_mut(i as usize)
    }

    /// The entry of the same notification of the same replica as `n`.
    fn entry(&mut self, n: &Notice) -> Option<&mut Notice> {
        let pos = self.candidates(n).into_iter().rev().find(|p| {
            let i = (p - self.first) as usize;
            self.list.get(i).is_some_and(|(e, _)| e.same_entry(n))
        })?;
        self.at(pos).map(|(e, _)| e)
    }
}

#[derive(Default)]
struct Log {
    /// This replica's entries.
    own: Entries,
    /// Each peer's entries.
    peers: HashMap<String, Entries>,
}

/// The log: this replica's entries and those its peers sent.
#[derive(Default)]
pub struct Notices {
    log: Mutex<Log>,
    /// Told when a peer's entry arrives.
    pub changed: tokio::sync::Notify,
}

impl Notices {
    /// Takes a peer's entry (an intent, or a delivery).
    pub fn peer(&self, n: Notice) {
        let mut log = self.log.lock().expect("notices");
        let list = log.peers.entry(n.replica.clone()).or_default();
        match list.entry(&n) {
            Some(e) => {
                if n.delivered {
                    e.delivered = true;
                    e.id = n.id;
                }
            }
            None => list.push(n),
        }
        drop(log);
        self.changed.notify_waiters();
    }

    /// Records this replica's entry; answers it when it is news for the peers (new, or newly
    /// delivered).
    pub fn own(&self, n: Notice) -> Option<Notice> {
        let mut log = self.log.lock().expect("notices");
        match log.own.entry(&n) {
            Some(e) if e.delivered || !n.delivered => None,
            Some(e) => {
                e.delivered = true;
                e.id = n.id.clone();
                Some(n)
            }
            None => {
                log.own.push(n.clone());
                Some(n)
            }
        }
    }

    /// This replica's entries, for a peer that just linked.
    pub fn snapshot(&self) -> Vec<Notice> {
        self.log
            .lock()
            .expect("notices")
            .own
            .list
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Decides about this replica's queued notification `mine` (outbox `seq`) at `now`, in its
    /// `turn`.
    pub fn decide(&self, mine: &Notice, seq: u64, now: i64, turn: &Turn) -> Decision {
        let mut log = self.log.lock().expect("notices");
        let mut delivered = false;
        let mut held = false;
        let mut adopted: Option<(usize, String)> = None;
        for (replica, list) in log.peers.iter_mut() {
            // The entry this notification claimed, or the closest unclaimed one.
            let claimed = list.claims.get(&seq).copied();
            let found = claimed.or_else(|| {
                list.candidates(mine)
                    .into_iter()
                    .filter_map(|p| {
                        let i = (p - list.first) as usize;
                        let (e, c) = list.list.get(i)?;
                        (c.is_none() && e.same_transition(mine))
                            .then(|| (p, (e.active_since - mine.active_since).abs()))
                    })
                    .min_by_key(|(_, d)| *d)
                    .map(|(p, _)| p)
            });
            let Some(pos) = found else { continue };
            list.claims.insert(seq, pos);
            let Some((e, claim)) = list.at(pos) else {
                continue;
            };
            *claim = Some(seq);
            delivered |= e.delivered;
            if let Some(rank) = turn.ahead.iter().position(|(a, _)| a == replica) {
                held |= turn.ahead[rank].1;
                if adopted.as_ref().is_none_or(|(r, _)| rank < *r) {
                    adopted = Some((rank, e.id.clone()));
                }
            }
        }
        if delivered {
            return Decision::Skip;
        }
        if held && now < turn.held_until {
            return Decision::Wait(turn.held_until);
        }
        if now < turn.due {
            return Decision::Wait(turn.due);
        }
        Decision::Send(adopted.map_or_else(|| mine.id.clone(), |(_, id)| id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn due at `due`, behind `ahead` (dead, so that nothing is held).
    fn turn(due: i64, ahead: &[&str]) -> Turn {
        Turn {
            ahead: ahead.iter().map(|a| (a.to_string(), false)).collect(),
            due,
            held_until: 0,
        }
    }

    fn notice(replica: &str, id: &str, state: &str, active_since: i64) -> Notice {
        Notice {
            replica: replica.into(),
            sink: "hook".into(),
            id: id.into(),
            rule: "hot".into(),
            labels: BTreeMap::from([("host".to_string(), "h1".to_string())]),
            state: state.into(),
            repeat: 0,
            active_since,
            delivered: false,
        }
    }

    #[test]
    fn the_first_live_replica_sends_the_others_wait_and_skip_what_it_delivered() {
        let log = Notices::default();
        let mine = notice("b", "b1", "firing", 1_000);
        // b is second: it waits its turn.
        assert_eq!(
            log.decide(&mine, 1, 1_500, &turn(6_000, &["a"])),
            Decision::Wait(6_000)
        );
        // a's intent arrives: b would send with a's id if a never delivered ...
        log.peer(notice("a", "a1", "firing", 1_003));
        assert_eq!(
            log.decide(&mine, 1, 6_000, &turn(6_000, &["a"])),
            Decision::Send("a1".into())
        );
        // ... and skips it once a says it did.
        let mut done = notice("a", "a1", "firing", 1_003);
        done.delivered = true;
        log.peer(done);
        assert_eq!(
            log.decide(&mine, 1, 6_000, &turn(6_000, &["a"])),
            Decision::Skip
        );
        // While a live replica ahead holds the notification, this one waits for it.
        let mine2 = notice("b", "b2", "firing", 50_000);
        log.peer(notice("a", "a3", "firing", 50_001));
        let held = Turn {
            ahead: vec![("a".into(), true)],
            due: 52_000,
            held_until: 110_000,
        };
        assert_eq!(
            log.decide(&mine2, 2, 60_000, &held),
            Decision::Wait(110_000)
        );
        assert_eq!(
            log.decide(&mine2, 2, 110_000, &held),
            Decision::Send("a3".into())
        );
        // The first replica in order sends at once, with its own id.
        let first = notice("a", "a2", "resolved", 1_003);
        assert_eq!(
            log.decide(&first, 7, 9_000, &turn(9_000, &[])),
            Decision::Send("a2".into())
        );
    }

    #[test]
    fn an_alert_that_fires_twice_is_two_notifications() {
        let log = Notices::default();
        let mut first = notice("a", "a1", "firing", 1_000);
        first.delivered = true;
        log.peer(first);
        // b's first firing matches a's first; its second (10 s later) matches nothing a sent.
        let one = notice("b", "b1", "firing", 1_002);
        let two = notice("b", "b2", "firing", 11_000);
        assert_eq!(
            log.decide(&one, 1, 99_000, &turn(5_000, &["a"])),
            Decision::Skip
        );
        assert_eq!(
            log.decide(&two, 2, 99_000, &turn(5_000, &["a"])),
            Decision::Send("b2".into())
        );
        // Another transition, sink or an alert far apart in time is not matched either.
        let other = notice("b", "b3", "resolved", 1_002);
        assert_eq!(
            log.decide(&other, 3, 99_000, &turn(5_000, &["a"])),
            Decision::Send("b3".into())
        );
        let far = notice("b", "b4", "firing", 1_000 + WINDOW_MS + 1);
        assert_eq!(
            log.decide(&far, 4, 99_000, &turn(5_000, &["a"])),
            Decision::Send("b4".into())
        );
        assert_eq!(log.snapshot(), Vec::new());
        assert_eq!(log.own(one.clone()), Some(one.clone()));
        assert_eq!(log.own(one.clone()), None);
        let mut sent = one.clone();
        sent.delivered = true;
        assert_eq!(log.own(sent.clone()), Some(sent.clone()));
        assert_eq!(log.snapshot(), [sent]);
    }

    #[test]
    fn the_log_keeps_its_newest_entries_and_finds_them_by_transition() {
        let log = Notices::default();
        let host = |i: usize| {
            let mut n = notice("a", &format!("a{i}"), "firing", 1_000);
            n.labels = BTreeMap::from([("host".to_string(), format!("h{i}"))]);
            n.delivered = true;
            n
        };
        for i in 0..=KEPT {
            log.peer(host(i));
        }
        let mine = |i: usize| {
            let mut n = host(i);
            n.replica = "b".into();
            n.id = format!("b{i}");
            n.delivered = false;
            n
        };
        // The oldest entry went: b would send it; the others are found delivered.
        assert_eq!(
            log.decide(&mine(0), 1, 99_000, &turn(5_000, &["a"])),
            Decision::Send("b0".into())
        );
        for (seq, i) in [(2, 1), (3, KEPT / 2), (4, KEPT)] {
            assert_eq!(
                log.decide(&mine(i), seq, 99_000, &turn(5_000, &["a"])),
                Decision::Skip,
                "h{i}"
            );
        }
        // An entry told again (delivered) is updated, not added.
        log.peer(host(KEPT));
        let kept = log.log.lock().unwrap().peers["a"].list.len();
        assert_eq!(kept, KEPT);
    }
}
