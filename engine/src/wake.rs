//! When dataflows move: time advances without waking every dataflow.
//!
//! The ticker keeps every source's upper at the clock's time, but a dataflow's readers only move
//! their capabilities (which makes timely propagate progress through every operator of the
//! dataflow) when the dataflow has something to do:
//!
//! - rows were pushed to a source or written to a table it reads (the next advance names them);
//! - an operator holds updates dated for later (a temporal filter's retraction, retention) and
//!   one of them falls due: the operator asks for a wake-up at that time here, and the advance
//!   that passes it names the dataflow;
//! - a peek or subscription reads it (the worker forces it and the dataflows it reads).
//!
//! An idle dataflow costs nothing, however many there are; a thousand rules on a quiet source
//! are not scheduled at all between rows. Wake-ups are asked for by workers and taken by the
//! ticker, which names the due dataflows in the advance it sends to every worker: a dataflow's
//! frontier is the least over all workers, so every worker must move it, including those whose
//! operators hold nothing.
//!
//! Times are rounded up to [`QUANTUM_MS`]: an operator with a minute of retractions pending asks
//! at most once per quantum, and a retraction takes effect within a quantum (plus scheduling) of
//! its time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

/// Logical time in milliseconds (the engine's timestamp; `wake` depends on nothing else).
type Time = u64;

/// Wake-up times are rounded up to a multiple of this many milliseconds.
pub const QUANTUM_MS: u64 = 10;

/// The dataflows to move and when, shared by the workers (which ask) and the ticker (which
/// takes what is due).
#[derive(Default)]
pub(crate) struct Wakeups {
    inner: Mutex<Due>,
    /// Unparked when a wake-up earlier than any other is asked for.
    ticker: OnceLock<Thread>,
}

#[derive(Default)]
struct Due {
    by_time: BTreeMap<Time, Vec<Arc<str>>>,
    /// The earliest time asked for each dataflow.
    earliest: HashMap<Arc<str>, Time>,
}

impl Wakeups {
    pub fn set_ticker(&self, ticker: Thread) {
        let _ = self.ticker.set(ticker);
    }

    /// Asks for `dataflow` to be moved once the time passes `at` (rounded up to the quantum).
    pub fn ask(&self, dataflow: &Arc<str>, at: Time) {
        let at = at.div_ceil(QUANTUM_MS).saturating_mul(QUANTUM_MS);
        let mut due = self.inner.lock().expect("wake-ups");
        if due.earliest.get(dataflow).is_some_and(|&t| t <= at) {
            return;
        }
        let first = due.by_time.first_key_value().is_none_or(|(&t, _)| at < t);
        due.earliest.insert(dataflow.clone(), at);
        due.by_time.entry(at).or_default().push(dataflow.clone());
        drop(due);
        if first {
            self.wake_ticker();
        }
    }

    /// Unparks the ticker (rows were pushed: the next millisecond completes them).
    pub fn wake_ticker(&self) {
        if let Some(t) = self.ticker.get() {
            t.unpark();
        }
    }

    /// The earliest time a wake-up was asked for: an advance past it has work to do.
    pub fn next(&self) -> Option<Time> {
        let due = self.inner.lock().expect("wake-ups");
        due.by_time.first_key_value().map(|(&t, _)| t)
    }

    /// Takes the dataflows due before `upper`, each once.
    pub fn take_before(&self, upper: Time) -> Vec<Arc<str>> {
        let mut due = self.inner.lock().expect("wake-ups");
        let later = due.by_time.split_off(&upper);
        let now = std::mem::replace(&mut due.by_time, later);
        let mut out = Vec::new();
        for (t, names) in now {
            for n in names {
                // A dataflow asked again for an earlier time is due at that one only.
                if due.earliest.get(&n) == Some(&t) {
                    due.earliest.remove(&n);
                    out.push(n);
                }
            }
        }
        out
    }
}

/// What the operators of one dataflow use to ask for wake-ups.
#[derive(Clone)]
pub(crate) struct Alarm {
    dataflow: Arc<str>,
    wakeups: Arc<Wakeups>,
}

impl Alarm {
    pub fn new(dataflow: &str, wakeups: Arc<Wakeups>) -> Self {
        Alarm {
            dataflow: dataflow.into(),
            wakeups,
        }
    }

    /// An operator's pending wake-up: asks when the operator's earliest held time is earlier than
    /// what it asked for, and forgets what it asked once the frontier has passed it.
    pub fn keep(&self, asked: &mut Option<Time>, first: Option<Time>, frontier: Option<Time>) {
        if asked.is_some_and(|a| frontier.is_none_or(|f| a < f)) {
            *asked = None;
        }
        if let Some(t) = first {
            if asked.is_none_or(|a| t < a) {
                self.wakeups.ask(&self.dataflow, t);
                *asked = Some(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_dataflows_are_taken_once_at_their_earliest_time() {
        let w = Wakeups::default();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        w.ask(&a, 25);
        w.ask(&a, 40);
        w.ask(&b, 31);
        assert_eq!(w.next(), Some(30), "rounded up to the quantum");
        assert!(w.take_before(30).is_empty(), "30 is not passed before 30");
        assert_eq!(w.take_before(31), vec![a.clone()]);
        // Asked earlier than before: due at the earlier time only.
        w.ask(&b, 12);
        assert_eq!(w.take_before(21), vec![b.clone()]);
        assert!(
            w.take_before(1_000).is_empty(),
            "b's later time was superseded"
        );
        assert_eq!(w.next(), None);
    }

    #[test]
    fn an_operator_asks_again_only_after_its_wake_up() {
        let w = Arc::new(Wakeups::default());
        let alarm = Alarm::new("r", w.clone());
        let mut asked = None;
        alarm.keep(&mut asked, Some(105), Some(100));
        assert_eq!(asked, Some(105));
        alarm.keep(&mut asked, Some(107), Some(101));
        assert_eq!(asked, Some(105), "a later time waits for the first wake-up");
        assert_eq!(w.take_before(111).len(), 1);
        alarm.keep(&mut asked, None, Some(111));
        assert_eq!(asked, None, "woken, and nothing held");
        alarm.keep(&mut asked, Some(130), Some(111));
        assert_eq!(asked, Some(130));
        assert_eq!(w.next(), Some(130));
    }
}
