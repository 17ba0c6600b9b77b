//! The replicas' shared time. Every row a replica accepts is stamped with the time it took it,
//! and every replica pushes it into its engine at that time, its origin's as much as its
//! peers'. Identical input at identical times makes identical changes at identical times, so
//! every replica stamps an alert's transitions alike, and a notification's id (rule, labels,
//! transition, time) is the same wherever it is computed.
//!
//! For a forwarded row to land at its origin's time, a replica's engine may not have passed it
//! when the row arrives. So each replica holds its engine's time (see
//! [`tocsin_engine::Frontier`]) at the promises its peers make: a peer's *mark* says that every
//! row it sends from then on is stamped at the mark or later. The engine asks for a mark when
//! it needs to move on (a read, rows to complete, a timer); the peer answers on the link that
//! carries its rows, after the rows stamped before the mark. A replica's own rows hold it too,
//! from their stamp until they are in its engine.
//!
//! A peer that is heard from holds its replicas at its mark, at most the peer timeout behind
//! the clock: the mark may trail because the peer is busy, or because this replica is (its
//! marks are taken in order behind its rows, which wait in this replica's ingest queue), and
//! either way its rows still land at their origin's time. A peer that falls silent holds them
//! at most the slack (a fifth of `--peer-timeout`) after it was last heard from, and not at all
//! once its link is down. Rows that come later than that land at the time they arrive
//! (`tocsin_replica_rows_late_total` counts them), and their alerts' times (and so the ids) may
//! differ by as much, which the shared notification log's matching covers.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tocsin_engine::{Clock, Frontier, Release};
use tokio::sync::watch;

/// A replica's time, as its ingest writer, its links and its engine share it.
pub struct Timeline {
    clock: Clock,
    /// How far a silent peer holds the engine behind the clock, ms.
    slack: u64,
    /// How far a peer that is heard from holds it, ms.
    lag: u64,
    times: Mutex<Times>,
    release: OnceLock<Release>,
    /// The time the engine waits for: sent to the peers, which answer with their marks.
    needed: watch::Sender<u64>,
}

#[derive(Default)]
struct Times {
    /// Every stamp and mark handed out is at least this: later ones never go below it.
    floor: u64,
    /// The writer is stamping a group of batches from this time on (`None`: it is idle).
    busy: Option<u64>,
    /// The linked peers.
    peers: HashMap<String, Linked>,
    /// The peers that have sent a mark since the start: what they sent before it is here.
    marked: std::collections::HashSet<String>,
}

/// A linked peer, as it holds the engine.
#[derive(Default)]
struct Linked {
    /// Its links up (a new one may come up before an old one is found dead).
    links: usize,
    /// Its latest mark (`None`: no mark yet).
    mark: Option<u64>,
    /// When a frame last came from it, by the clock.
    heard: u64,
    /// Links on which this replica does not read for now (busy taking what came before):
    /// while there is one, the peer is not taken as silent.
    deaf: usize,
}

impl Linked {
    /// The time this peer holds the engine at: its mark, or the clock less the lag while it is
    /// heard from, less the slack once it is silent.
    fn holds(&self, now: u64, slack: u64, lag: u64) -> u64 {
        let within = if self.deaf > 0 || now.saturating_sub(self.heard) <= slack {
            lag
        } else {
            slack
        };
        self.mark.unwrap_or(0).max(now.saturating_sub(within))
    }
}

impl Timeline {
    /// `slack`: how far a silent peer holds the engine behind the clock; `lag`: how far one that
    /// is heard from does (at least the slack).
    pub fn new(clock: Clock, slack: std::time::Duration, lag: std::time::Duration) -> Timeline {
        Timeline {
            clock,
            slack: slack.as_millis() as u64,
            lag: lag.max(slack).as_millis() as u64,
            times: Mutex::new(Times::default()),
            release: OnceLock::new(),
            needed: watch::channel(0).0,
        }
    }

    /// Tells the engine whenever the limit may have moved.
    pub fn attach(&self, release: Release) {
        let _ = self.release.set(release);
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().expect("timeline")
    }

    fn released(&self) {
        if let Some(r) = self.release.get() {
            r.release();
        }
    }

    /// The writer starts a group: the engine does not pass its stamps until [`Timeline::end`].
    pub fn begin(&self) {
        let now = self.clock.now();
        let mut t = self.times();
        let from = now.max(t.floor);
        t.busy = Some(from);
    }

    /// A stamp for a batch of the group begun: no earlier than any stamp or mark before it.
    pub fn stamp(&self) -> u64 {
        let now = self.clock.now();
        let mut t = self.times();
        let at = now.max(t.floor).max(t.busy.unwrap_or(0));
        t.floor = at;
        at
    }

    /// The group's batches are in the engine (or refused).
    pub fn end(&self) {
        self.times().busy = None;
        self.released();
    }

    /// What this replica promises its peers: every record it sends from now on is stamped at
    /// this time or later (given once the records stamped before it have been sent).
    pub fn mark(&self) -> u64 {
        let now = self.clock.now();
        let mut t = self.times();
        let free = now.max(t.floor);
        let m = t.busy.map_or(free, |b| b.min(free));
        t.floor = t.floor.max(m);
        m
    }

    /// A peer's link is up (its marks count) or down (they no longer do).
    pub fn linked(&self, peer: &str, up: bool) {
        let now = self.clock.now();
        {
            let mut t = self.times();
            let linked = t.peers.entry(peer.to_string()).or_default();
            if up {
                linked.links += 1;
                linked.heard = linked.heard.max(now);
            } else {
                linked.links = linked.links.saturating_sub(1);
                if linked.links == 0 {
                    t.peers.remove(peer);
                }
            }
        }
        self.released();
    }

    /// A frame came from a linked peer (or one of its records was taken): it is not silent.
    pub fn heard(&self, peer: &str) {
        let now = self.clock.now();
        if let Some(linked) = self.times().peers.get_mut(peer) {
            linked.heard = linked.heard.max(now);
        }
    }

    /// A peer's mark, taken after the rows it sent before it.
    pub fn peer_mark(&self, peer: &str, mark: u64) {
        {
            let mut t = self.times();
            t.marked.insert(peer.to_string());
            let Some(linked) = t.peers.get_mut(peer) else {
                return;
            };
            linked.mark = Some(linked.mark.map_or(mark, |m| m.max(mark)));
        }
        self.released();
    }

    /// This replica stops reading a peer's link for a while (it is busy taking what came
    /// before): the peer is not silent until the guard is dropped, and it reads again.
    pub fn deaf<'a>(&'a self, peer: &'a str) -> Deaf<'a> {
        if let Some(linked) = self.times().peers.get_mut(peer) {
            linked.deaf += 1;
        }
        Deaf {
            timeline: self,
            peer,
        }
    }

    /// Whether `peer` has sent a mark since the start: the catalog and the records it sent
    /// before it are in this replica.
    pub fn has_marked(&self, peer: &str) -> bool {
        self.times().marked.contains(peer)
    }

    /// The time the engine waits for; changes when it waits for a later one.
    pub fn needed(&self) -> watch::Receiver<u64> {
        self.needed.subscribe()
    }
}

/// See [`Timeline::deaf`].
pub struct Deaf<'a> {
    timeline: &'a Timeline,
    peer: &'a str,
}

impl Drop for Deaf<'_> {
    fn drop(&mut self) {
        let now = self.timeline.clock.now();
        if let Some(linked) = self.timeline.times().peers.get_mut(self.peer) {
            linked.deaf = linked.deaf.saturating_sub(1);
            linked.heard = linked.heard.max(now);
        }
    }
}

impl Frontier for Timeline {
    fn limit(&self, now: u64) -> u64 {
        let t = self.times();
        let held = t
            .peers
            .values()
            .map(|p| p.holds(now, self.slack, self.lag))
            .min()
            .unwrap_or(u64::MAX);
        t.busy.map_or(held, |b| b.min(held))
    }

    fn wanted(&self, to: u64) {
        raise(&self.needed, to);
    }
}

/// Moves a watched time on to `to`, telling the watchers only when it moved.
pub(crate) fn raise(time: &watch::Sender<u64>, to: u64) {
    time.send_if_modified(|n| {
        let later = to > *n;
        if later {
            *n = to;
        }
        later
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_and_marks_never_go_back_and_hold_the_engine() {
        let clock = Clock::manual(1_000);
        let tl = Timeline::new(
            clock.clone(),
            Duration::from_millis(200),
            Duration::from_millis(1_000),
        );
        // Alone: the clock.
        assert_eq!(tl.limit(1_000), u64::MAX);
        tl.begin();
        let a = tl.stamp();
        assert_eq!(a, 1_000);
        // A group being stamped holds the engine at its start, and the mark with it.
        assert_eq!(tl.limit(1_005), 1_000);
        clock.set(1_010).unwrap();
        assert_eq!(tl.mark(), 1_000);
        let b = tl.stamp();
        assert!(b >= a && b >= 1_000);
        tl.end();
        assert_eq!(tl.mark(), 1_010);
        // A mark handed out is a floor for the stamps after it, even if the clock goes back.
        let back = Clock::manual(2_000);
        let tl = Timeline::new(
            back.clone(),
            Duration::from_millis(200),
            Duration::from_millis(1_000),
        );
        assert_eq!(tl.mark(), 2_000);
        let tl2 = Timeline::new(
            Clock::manual(1_500),
            Duration::from_millis(200),
            Duration::from_millis(1_000),
        );
        tl2.times().floor = 2_000;
        tl2.begin();
        assert_eq!(tl2.stamp(), 2_000);
        tl2.end();
    }

    #[test]
    fn linked_peers_hold_the_engine_at_their_marks_within_the_slack() {
        let clock = Clock::manual(10_000);
        let ms = Duration::from_millis;
        let tl = Timeline::new(clock.clone(), ms(200), ms(1_000));
        tl.linked("b", true);
        // No mark yet, heard from: the lag behind the clock.
        assert_eq!(tl.limit(10_000), 9_000);
        tl.peer_mark("b", 9_990);
        assert_eq!(tl.limit(10_000), 9_990);
        // Marks only move on.
        tl.peer_mark("b", 9_900);
        assert_eq!(tl.limit(10_000), 9_990);
        // A peer heard from holds the engine at its mark, however busy (within the lag)...
        clock.set(10_150).unwrap();
        tl.heard("b");
        assert_eq!(tl.limit(10_300), 9_990);
        // ... a silent one lapses with the clock, a slack after it was last heard...
        assert_eq!(tl.limit(10_500), 10_300);
        // ... and one heard from, the lag behind.
        clock.set(11_100).unwrap();
        tl.heard("b");
        assert_eq!(tl.limit(11_100), 10_100);
        // A peer this replica does not read for now is not silent, however long.
        {
            let _busy = tl.deaf("b");
            assert_eq!(tl.limit(11_800), 10_800);
            clock.set(11_800).unwrap();
        }
        // It is heard from when it is read again.
        assert_eq!(tl.limit(12_000), 11_000);
        assert_eq!(tl.limit(12_100), 11_900);
        tl.linked("c", true);
        tl.peer_mark("c", 9_950);
        assert_eq!(tl.limit(10_000), 9_950);
        // A peer whose link is down no longer counts; its marks are forgotten. One with a second
        // link up still counts when the first goes.
        tl.linked("b", true);
        tl.linked("b", false);
        assert_eq!(tl.limit(10_000), 9_950);
        tl.linked("c", false);
        tl.peer_mark("c", 1);
        tl.heard("c");
        assert_eq!(tl.limit(10_000), 9_990);
        tl.linked("b", false);
        assert_eq!(tl.limit(10_000), u64::MAX);
    }

    #[test]
    fn the_time_waited_for_only_moves_on() {
        let tl = Timeline::new(
            Clock::manual(0),
            Duration::from_millis(200),
            Duration::from_millis(1_000),
        );
        let mut rx = tl.needed();
        tl.wanted(50);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 50);
        tl.wanted(40);
        assert!(!rx.has_changed().unwrap());
    }
}
