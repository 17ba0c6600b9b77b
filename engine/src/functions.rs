//! Functions whose meaning must be identical in continuous and batch evaluation: the engine's
//! reduce and the SQL frontend's DataFusion aggregate both call these.

/// One sample of a counter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Counter {
    /// A BIGINT counter. Negative values are read as unsigned 64-bit (SNMP Counter64 values of
    /// 2^63 and more arrive that way).
    Int(i64),
    Float(f64),
}

const WRAP32: u64 = 1 << 32;

impl Counter {
    /// The increase from `prev` to `self`, reading a decrease as a 32-bit wrap when that is a
    /// plausible small step (the previous value was within 2^31 of 2^32), as a 64-bit wrap
    /// likewise, and otherwise as a reset: the counter restarted from 0 (device reboot), so the
    /// increase is the new value.
    fn increase_since(self, prev: Counter) -> f64 {
        match (prev, self) {
            (Counter::Int(p), Counter::Int(n)) => {
                let (p, n) = (p as u64, n as u64);
                if n >= p {
                    (n - p) as f64
                } else if p < WRAP32 && WRAP32 - p + n <= WRAP32 / 2 {
                    (WRAP32 - p + n) as f64
                } else if p >= 1 << 63 && n.wrapping_sub(p) <= 1 << 62 {
                    n.wrapping_sub(p) as f64
                } else {
                    n as f64
                }
            }
            (p, n) => {
                let (p, n) = (p.as_f64(), n.as_f64());
                let w = WRAP32 as f64;
                if n >= p {
                    n - p
                } else if p < w && n >= 0.0 && w - p + n <= w / 2.0 {
                    w - p + n
                } else {
                    n.max(0.0)
                }
            }
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Counter::Int(i) => i as u64 as f64,
            Counter::Float(f) => f,
        }
    }

    fn order(&self, other: &Counter) -> std::cmp::Ordering {
        match (self, other) {
            (Counter::Int(a), Counter::Int(b)) => (*a as u64).cmp(&(*b as u64)),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }
}

/// `rate(counter, ts)`: the counter's increase per second over its samples `(ts in ms, value)`:
/// the sum of increases between consecutive samples in time order (see
/// [`Counter::increase_since`] for wraps and resets) divided by the time from the first sample
/// to the last. `None` with fewer than two samples or no time between them. Samples at the same
/// time are ordered by value, so the result does not depend on arrival order.
pub fn counter_rate(samples: &mut [(i64, Counter)]) -> Option<f64> {
    samples.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.order(&b.1)));
    let (first, last) = (samples.first()?.0, samples.last()?.0);
    if last <= first {
        return None;
    }
    let increase: f64 = samples
        .windows(2)
        .map(|w| w[1].1.increase_since(w[0].1))
        .sum();
    Some(increase * 1000.0 / (last - first) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Counter::{Float, Int};

    fn rate(s: &[(i64, Counter)]) -> Option<f64> {
        counter_rate(&mut s.to_vec())
    }

    #[test]
    fn steady_counter() {
        assert_eq!(rate(&[(0, Int(100)), (10_000, Int(1100))]), Some(100.0));
        // order of arrival does not matter
        assert_eq!(
            rate(&[(20_000, Int(2100)), (0, Int(100)), (10_000, Int(1100))]),
            Some(100.0)
        );
        assert_eq!(rate(&[(0, Float(1.5)), (2_000, Float(3.5))]), Some(1.0));
        assert_eq!(rate(&[(0, Int(5))]), None);
        assert_eq!(rate(&[(1000, Int(5)), (1000, Int(9))]), None);
        assert_eq!(rate(&[]), None);
    }

    #[test]
    fn wraps_and_resets() {
        // Counter32 wrap: 4294967000 -> 704 is 1000 more
        assert_eq!(
            rate(&[(0, Int(4_294_967_000)), (1_000, Int(704))]),
            Some(1000.0)
        );
        // Counter64 past 2^63 is stored negative; its increases still count
        let near = i64::MAX - 99;
        assert_eq!(
            rate(&[(0, Int(near)), (1_000, Int(near.wrapping_add(500)))]),
            Some(500.0)
        );
        // 64-bit wrap
        assert_eq!(rate(&[(0, Int(-100)), (1_000, Int(400))]), Some(500.0));
        // reset: a device reboot starts from 0, the increase is the new value
        assert_eq!(
            rate(&[
                (0, Int(1_000_000)),
                (1_000, Int(2_000_000)),
                (2_000, Int(300))
            ]),
            Some(500_150.0)
        );
        // a small counter dropping is a reset, not a wrap
        assert_eq!(rate(&[(0, Int(500)), (1_000, Int(20))]), Some(20.0));
        assert_eq!(rate(&[(0, Float(500.0)), (1_000, Float(20.0))]), Some(20.0));
        assert_eq!(
            rate(&[(0, Float(4_294_967_000.0)), (1_000, Float(704.0))]),
            Some(1000.0)
        );
    }
}
