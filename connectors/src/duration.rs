//! Durations as every option and flag of tocsin writes them (docs/sql.md): `'30s'`, `'5m'`,
//! `'1h'`, `'2d'`, `'250ms'`, `'10 minutes'`, `'1 hour 30 minutes'`, `'1.5s'`; a bare number is
//! seconds. The one parser for all of them.

use std::time::Duration;

/// Parses a duration; the error says what is accepted.
pub fn parse(text: &str) -> crate::Result<Duration> {
    let bad = || {
        crate::Error::Options(format!(
            "invalid duration '{text}': use e.g. '30s', '500ms', '5m', '1h', '10 minutes'"
        ))
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = rest.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].to_ascii_lowercase();
        rest = rest[unit_len..].trim_start();
        let secs = match unit.as_str() {
            "ms" | "millisecond" | "milliseconds" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(n * secs).map_err(|_| bad())?;
    }
    Ok(total)
}

/// The duration of option `key`, which must be longer than zero.
pub fn positive(key: &str, text: &str) -> crate::Result<Duration> {
    let d = parse(text).map_err(|_| {
        crate::Error::Options(format!(
            "invalid {key} '{text}': use e.g. '30s', '500ms', '5m', '1h', '10 minutes'"
        ))
    })?;
    if d.is_zero() {
        return Err(crate::Error::Options(format!(
            "invalid {key} '{text}': must be longer than 0s"
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form() {
        let ms = |t: &str| parse(t).unwrap().as_millis();
        assert_eq!(ms("30s"), 30_000);
        assert_eq!(ms("5m"), 300_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("10 minutes"), 600_000);
        assert_eq!(ms("1 hour 30 minutes"), 5_400_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("2"), 2_000);
        assert_eq!(ms("0s"), 0);
        for bad in ["", "s", "ten seconds", "5 parsecs", "-1s", "1e400"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
