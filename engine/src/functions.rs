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

/// The relative accuracy of [`Sketch`]: an estimate is within 1% of the value it stands for.
pub const SKETCH_ACCURACY: f64 = 0.01;
/// Values closer to zero than this share the zero bucket.
const SKETCH_MIN: f64 = 1e-9;
/// Added to a bucket's index so that positive values have positive codes.
const SKETCH_OFFSET: i64 = 1 << 40;
const CODE_NAN: i64 = i64::MAX;
const CODE_INF: i64 = i64::MAX - 1;
const CODE_NEG_INF: i64 = i64::MIN + 1;

fn ln_gamma() -> f64 {
    ((1.0 + SKETCH_ACCURACY) / (1.0 - SKETCH_ACCURACY)).ln()
}

/// A quantile sketch with relative error guarantees (the DDSketch mapping): value `v > 0` falls in
/// bucket `ceil(log_γ v)` with `γ = (1 + α) / (1 - α)`, whose representative `2γ^k / (γ + 1)` is
/// within `α` of every value in it; negative values mirror positive ones. A sketch is only bucket
/// counts, so adding and removing a value are exact inverses: a sketch over a sliding window
/// answers as if built from the rows in the window. Buckets are numbered by [`sketch_code`] in
/// the order of the values they hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sketch {
    buckets: std::collections::BTreeMap<i64, i64>,
    count: i64,
}

/// The bucket code of a value: codes order as the values do (NaN last, as in `f64::total_cmp`).
pub fn sketch_code(v: f64) -> i64 {
    if v.is_nan() {
        CODE_NAN
    } else if v == f64::INFINITY {
        CODE_INF
    } else if v == f64::NEG_INFINITY {
        CODE_NEG_INF
    } else if v.abs() < SKETCH_MIN {
        0
    } else {
        let code = SKETCH_OFFSET + (v.abs().ln() / ln_gamma()).ceil() as i64;
        if v > 0.0 {
            code
        } else {
            -code
        }
    }
}

/// The value a bucket stands for.
pub fn sketch_value(code: i64) -> f64 {
    match code {
        CODE_NAN => f64::NAN,
        CODE_INF => f64::INFINITY,
        CODE_NEG_INF => f64::NEG_INFINITY,
        0 => 0.0,
        c => {
            let k = (c.abs() - SKETCH_OFFSET) as f64;
            let g = ln_gamma();
            let v = 2.0 * (k * g).exp() / (g.exp() + 1.0);
            if c > 0 {
                v
            } else {
                -v
            }
        }
    }
}

impl Sketch {
    /// Adds `m` copies of the value in bucket `code` (`m < 0` removes them).
    pub fn add_code(&mut self, code: i64, m: i64) {
        let c = self.buckets.entry(code).or_insert(0);
        *c += m;
        if *c == 0 {
            self.buckets.remove(&code);
        }
        self.count += m;
    }

    pub fn add(&mut self, v: f64, m: i64) {
        self.add_code(sketch_code(v), m)
    }

    /// The buckets with their counts, in value order.
    pub fn buckets(&self) -> impl Iterator<Item = (i64, i64)> + Clone + '_ {
        self.buckets.iter().map(|(k, c)| (*k, *c))
    }

    /// The estimate of the value at rank `floor(p * (n - 1))` (0-based) of the `n` values, or
    /// `None` for no values.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        sketch_quantile(self.buckets(), p)
    }
}

/// The 0-based rank whose value a sketch estimates for fraction `p` of `n` values.
pub fn sketch_rank(p: f64, n: i64) -> i64 {
    (p * (n - 1) as f64).floor() as i64
}

/// [`Sketch::quantile`] over buckets given in value order with their counts.
pub fn sketch_quantile(buckets: impl Iterator<Item = (i64, i64)> + Clone, p: f64) -> Option<f64> {
    let n: i64 = buckets.clone().map(|(_, c)| c).sum();
    if n <= 0 {
        return None;
    }
    let rank = sketch_rank(p, n);
    let mut seen = 0;
    let mut last = None;
    for (code, c) in buckets {
        seen += c;
        last = Some(code);
        if seen > rank {
            break;
        }
    }
    last.map(sketch_value)
}

#[cfg(test)]
mod sketch_tests {
    use super::*;

    /// The value at rank floor(p * (n - 1)) of sorted `v`.
    fn exact(v: &[f64], p: f64) -> f64 {
        v[(p * (v.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn estimates_are_within_the_stated_error() {
        // Latencies spread over six orders of magnitude, negative values and zero.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut values: Vec<f64> = (0..20_000)
            .map(|_| {
                let u = (next() % 1_000_000) as f64 / 1_000_000.0;
                10f64.powf(u * 6.0 - 3.0) * if next() % 10 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        values.push(0.0);
        let mut sketch = Sketch::default();
        for v in &values {
            sketch.add(*v, 1);
        }
        values.sort_by(f64::total_cmp);
        for p in [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let (got, want) = (sketch.quantile(p).unwrap(), exact(&values, p));
            assert!(
                (got - want).abs() <= SKETCH_ACCURACY * want.abs() * (1.0 + 1e-9),
                "p={p}: {got} against {want}"
            );
        }
    }

    #[test]
    fn removing_values_gives_the_sketch_of_the_rest() {
        let mut window = Sketch::default();
        let mut rest = Sketch::default();
        for i in 0..1000 {
            let v = (i as f64).sqrt() * 3.7 - 10.0;
            window.add(v, 1);
            if i >= 400 {
                rest.add(v, 1);
            }
        }
        for i in 0..400 {
            window.add((i as f64).sqrt() * 3.7 - 10.0, -1);
        }
        assert_eq!(window, rest);
        assert_eq!(window.quantile(0.99), rest.quantile(0.99));
        let mut empty = Sketch::default();
        empty.add(5.0, 1);
        empty.add(5.0, -1);
        assert_eq!(empty, Sketch::default());
        assert_eq!(empty.quantile(0.5), None);
    }

    #[test]
    fn codes_order_as_values() {
        let vals = [
            f64::NEG_INFINITY,
            -1e300,
            -3.0,
            -1e-3,
            0.0,
            1e-3,
            2.0,
            2.1,
            1e300,
            f64::INFINITY,
            f64::NAN,
        ];
        for w in vals.windows(2) {
            assert!(sketch_code(w[0]) <= sketch_code(w[1]), "{} {}", w[0], w[1]);
        }
        assert!(sketch_value(sketch_code(f64::NAN)).is_nan());
        assert_eq!(sketch_value(sketch_code(0.0)), 0.0);
    }
}
