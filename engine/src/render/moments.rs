//! Moments kept exactly, for variances and regressions under retractions.
//!
//! Each value `v` becomes the integer `u = round(v * 2^32)`, and a group keeps `n`, `Σu` and the
//! products `Σu²` (and `Σuw` for two columns) as 256-bit integers. Adding and removing a row are
//! exact inverses, so a group never drifts however long rows come and go, and the deviations
//! `n·Σu² - (Σu)²` are computed without cancellation: a variance of values near 10^9 that differ
//! by 10^-3 is as accurate as one of values near 0. Values of 2^62 and more (and NaN) make the
//! result NaN; infinities make it NaN as well, as in DataFusion.

use datafusion::arrow::datatypes::i256;

use crate::plan::RegrStat;
use crate::row::{Datum, F64};

const SCALE: f64 = 4294967296.0; // 2^32
const LIMIT: f64 = 4611686018427387904.0; // 2^62
const TWO_128: f64 = 340282366920938463463374607431768211456.0;

/// The fixed-point form of a value, or `None` for one the moments cannot hold.
fn fixed(v: &Datum) -> Option<Option<i128>> {
    match v {
        Datum::Null => None,
        Datum::Int(i) => Some(Some(i128::from(*i) << 32)),
        Datum::Float(f) => {
            let f = f.get();
            Some((f.is_finite() && f.abs() < LIMIT).then(|| (f * SCALE).round() as i128))
        }
        Datum::Bool(b) => Some(Some(i128::from(*b) << 32)),
        Datum::Str(_) => None,
    }
}

fn wide(s: &[i128]) -> i256 {
    i256::from_parts(s[0] as u128, s[1])
}

fn add_wide(s: &mut [i128], v: i256) {
    let (lo, hi) = wide(s).wrapping_add(v).to_parts();
    s[0] = lo as i128;
    s[1] = hi;
}

fn to_f64(v: i256) -> f64 {
    // Of a negative number, the low half alone is near 2^128: convert the magnitude instead.
    if v.is_negative() {
        return -to_f64(v.wrapping_neg());
    }
    let (lo, hi) = v.to_parts();
    hi as f64 * TWO_128 + lo as f64
}

fn product(a: i128, b: i128, m: i128) -> i256 {
    i256::from_i128(a)
        .wrapping_mul(i256::from_i128(b))
        .wrapping_mul(i256::from_i128(m))
}

/// `n·Σuw - Σu·Σw`: n² times the covariance, at scale 2^64. `None` past 256 bits.
fn deviations(n: i128, su: i128, sw: i128, suw: i256) -> Option<i256> {
    i256::from_i128(n)
        .checked_mul(suw)?
        .checked_sub(i256::from_i128(su).checked_mul(i256::from_i128(sw))?)
}

/// [`deviations`] as a float, falling back to floating point when it does not fit.
fn deviations_f64(n: i128, su: i128, sw: i128, suw: i256) -> f64 {
    match deviations(n, su, sw, suw) {
        Some(d) => to_f64(d),
        None => {
            let nf = n as f64;
            let (su, sw) = (su as f64, sw as f64);
            nf * to_f64(suw) - su * sw
        }
    }
}

/// Slots of a variance: count of values, NaN or out-of-range values, infinities, `Σu`, `Σu²`.
pub(super) const VAR_SLOTS: usize = 5;

pub(super) fn var_add(v: &Datum, s: &mut [i128], m: i128) {
    let Some(u) = fixed(v) else { return };
    s[0] += m;
    match u {
        None => s[1] += m,
        Some(u) => {
            s[2] = s[2].wrapping_add(u.wrapping_mul(m));
            add_wide(&mut s[3..5], product(u, u, m));
        }
    }
}

pub(super) fn var_finish(s: &[i128], sample: bool, sqrt: bool) -> Datum {
    let n = s[0];
    if n == 0 || (sample && n < 2) {
        return Datum::Null;
    }
    if s[1] != 0 {
        return Datum::Float(F64::new(f64::NAN));
    }
    let d = deviations_f64(n, s[2], s[2], wide(&s[3..5])).max(0.0);
    let nf = n as f64;
    let var = d / SCALE / SCALE / nf / if sample { nf - 1.0 } else { nf };
    Datum::Float(F64::new(if sqrt { var.sqrt() } else { var }))
}

/// Slots of a regression: pairs, pairs with a value the moments cannot hold, `Σx`, `Σy`, `Σx²`,
/// `Σy²`, `Σxy`.
pub(super) const REGR_SLOTS: usize = 10;

pub(super) fn regr_add(y: &Datum, x: &Datum, s: &mut [i128], m: i128) {
    let (Some(y), Some(x)) = (fixed(y), fixed(x)) else {
        return;
    };
    s[0] += m;
    let (Some(y), Some(x)) = (y, x) else {
        s[1] += m;
        return;
    };
    s[2] = s[2].wrapping_add(x.wrapping_mul(m));
    s[3] = s[3].wrapping_add(y.wrapping_mul(m));
    add_wide(&mut s[4..6], product(x, x, m));
    add_wide(&mut s[6..8], product(y, y, m));
    add_wide(&mut s[8..10], product(x, y, m));
}

/// As DataFusion: slope and intercept are null below two pairs or when every x is the same; r²
/// also when every y is the same; the others below one pair.
pub(super) fn regr_finish(s: &[i128], stat: RegrStat) -> Datum {
    let n = s[0];
    if stat == RegrStat::Count {
        return Datum::Int(n as i64);
    }
    if n == 0 {
        return Datum::Null;
    }
    if s[1] != 0 {
        return Datum::Float(F64::new(f64::NAN));
    }
    let nf = n as f64;
    let (sx, sy) = (s[2], s[3]);
    let dxx = deviations_f64(n, sx, sx, wide(&s[4..6]));
    let dyy = deviations_f64(n, sy, sy, wide(&s[6..8]));
    let dxy = deviations_f64(n, sx, sy, wide(&s[8..10]));
    let (avg_x, avg_y) = (sx as f64 / SCALE / nf, sy as f64 / SCALE / nf);
    let line = n > 1 && dxx != 0.0;
    let v = match stat {
        RegrStat::Slope if line => dxy / dxx,
        RegrStat::Intercept if line => avg_y - dxy / dxx * avg_x,
        RegrStat::R2 if line && dyy != 0.0 => (dxy / dxx) * (dxy / dyy),
        RegrStat::AvgX => avg_x,
        RegrStat::AvgY => avg_y,
        RegrStat::Sxx => dxx / SCALE / SCALE / nf,
        RegrStat::Syy => dyy / SCALE / SCALE / nf,
        RegrStat::Sxy => dxy / SCALE / SCALE / nf,
        _ => return Datum::Null,
    };
    Datum::Float(F64::new(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> Datum {
        Datum::Float(F64::new(v))
    }

    fn float(d: Datum) -> f64 {
        match d {
            Datum::Float(f) => f.get(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn variance_is_exact_under_retraction_and_large_offsets() {
        let mut s = [0i128; VAR_SLOTS];
        // Values near 10^9 that differ by thousandths: a textbook sum-of-squares loses them all.
        let base = 1e9;
        for i in 0..1000 {
            var_add(&f(base + (i % 7) as f64 * 1e-3), &mut s, 1);
        }
        for i in 0..1000 {
            var_add(&f(base + (i % 7) as f64 * 1e-3), &mut s, -1);
        }
        assert_eq!(s, [0; VAR_SLOTS]);
        for v in [1.0, 2.0, 3.0, 4.0] {
            var_add(&f(base + v * 1e-3), &mut s, 1);
        }
        // The variance of the values as stored: each is 10^9 plus a difference that f64 holds to
        // about 10^-7, and that subtraction recovers exactly.
        let d: Vec<f64> = [1.0, 2.0, 3.0, 4.0]
            .iter()
            .map(|v| (base + v * 1e-3) - base)
            .collect();
        let mean = d.iter().sum::<f64>() / 4.0;
        let want = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        let var = float(var_finish(&s, false, false));
        assert!((var - want).abs() < 1e-15, "{var} against {want}");
        var_add(&f(f64::INFINITY), &mut s, 1);
        assert!(float(var_finish(&s, true, false)).is_nan());
        var_add(&f(f64::INFINITY), &mut s, -1);
        let sd = float(var_finish(&s, true, true));
        assert!((sd - (want * 4.0 / 3.0).sqrt()).abs() < 1e-12, "{sd}");
    }

    #[test]
    fn a_trend_over_epoch_seconds_is_exact() {
        // A disk filling at 2.5 bytes per second, sampled every 10 s at epoch seconds near
        // 1.8e9, as `regr_slope(used, extract(epoch from ts))` sees it.
        let mut s = [0i128; REGR_SLOTS];
        let t0 = 1_795_000_000.0;
        for i in 0..360 {
            let t = t0 + 10.0 * i as f64;
            regr_add(&f(4e11 + 2.5 * (t - t0)), &f(t), &mut s, 1);
        }
        assert_eq!(float(regr_finish(&s, RegrStat::Slope)), 2.5);
        let at_t0 = float(regr_finish(&s, RegrStat::Intercept)) + 2.5 * t0;
        assert!((at_t0 - 4e11).abs() < 1.0, "{at_t0}");
        assert_eq!(float(regr_finish(&s, RegrStat::R2)), 1.0);
        assert_eq!(regr_finish(&s, RegrStat::Count), Datum::Int(360));
        // The first half leaves the window; the slope of the rest is still exact.
        for i in 0..180 {
            let t = t0 + 10.0 * i as f64;
            regr_add(&f(4e11 + 2.5 * (t - t0)), &f(t), &mut s, -1);
        }
        assert_eq!(float(regr_finish(&s, RegrStat::Slope)), 2.5);
        // A null on either side leaves the pair out.
        regr_add(&Datum::Null, &f(t0), &mut s, 1);
        assert_eq!(regr_finish(&s, RegrStat::Count), Datum::Int(180));
    }

    #[test]
    fn one_pair_or_one_x_has_no_line() {
        let mut s = [0i128; REGR_SLOTS];
        regr_add(&f(1.0), &f(5.0), &mut s, 1);
        assert_eq!(regr_finish(&s, RegrStat::Slope), Datum::Null);
        assert_eq!(float(regr_finish(&s, RegrStat::AvgY)), 1.0);
        regr_add(&f(3.0), &f(5.0), &mut s, 1);
        assert_eq!(regr_finish(&s, RegrStat::Slope), Datum::Null);
        assert_eq!(float(regr_finish(&s, RegrStat::Syy)), 2.0);
    }
}

#[cfg(test)]
mod random {
    use super::*;

    #[test]
    fn matches_two_pass_over_random_pairs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f64 / 100.0
        };
        let pairs: Vec<(f64, i64)> = (0..40).map(|_| (next(), (next() as i64) % 10)).collect();
        let mut s = [0i128; REGR_SLOTS];
        for (v, n) in &pairs {
            regr_add(&Datum::Int(*n), &Datum::Float(F64::new(*v)), &mut s, 1);
        }
        let nf = pairs.len() as f64;
        let mx = pairs.iter().map(|p| p.0).sum::<f64>() / nf;
        let my = pairs.iter().map(|p| p.1 as f64).sum::<f64>() / nf;
        let sxx: f64 = pairs.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let syy: f64 = pairs.iter().map(|p| (p.1 as f64 - my).powi(2)).sum();
        let sxy: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
        let r2 = sxy * sxy / (sxx * syy);
        let got = float(regr_finish(&s, RegrStat::R2));
        assert!((got - r2).abs() < 1e-9, "{got} against {r2}");
        let got = float(regr_finish(&s, RegrStat::Slope));
        assert!(
            (got - sxy / sxx).abs() < 1e-9,
            "{got} against {}",
            sxy / sxx
        );
    }

    fn float(d: Datum) -> f64 {
        match d {
            Datum::Float(f) => f.get(),
            other => panic!("{other:?}"),
        }
    }
}
