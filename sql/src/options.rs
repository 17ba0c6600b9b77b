//! `WITH (...)` options of sources and rules: parsed, validated, with explicit defaults.
//! Unknown keys are rejected, so a typo never silently falls back to a default.

use std::time::Duration;
use tocsin_connectors::source::SourceConnector;

use crate::error::{Result, SqlError};
use crate::parser::Options;

/// Parses `'30s'`, `'5m'`, `'1h'`, `'2d'`, `'250ms'`, `'10 minutes'`, `'1 hour 30 minutes'`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    Ok(tocsin_connectors::duration::parse(text)?)
}

fn take(options: &mut Options, key: &str) -> Option<String> {
    let i = options.iter().position(|(k, _)| k == key)?;
    Some(options.remove(i).1)
}

fn reject_rest(options: &Options, what: &str, known: &[&str]) -> Result<()> {
    if let Some((k, _)) = options.first() {
        return Err(SqlError::plan(format!(
            "unknown option '{k}' for {what}; known options: {}",
            known.join(", ")
        )));
    }
    Ok(())
}

/// Options of a source. Every source takes pushed rows; `format` and `interval` depend on the
/// connector, and a connector may take options of its own ([`SourceConnector::options`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceOptions {
    /// Default payload format when a request does not say: `json` (default), `ndjson`, `influx`, `arrow`.
    pub format: String,
    /// How long a row stays in the source after its `ts` (default 5 minutes).
    pub retain: Duration,
    /// How often a collecting connector (`HOST`, `SNMP`) samples (default 10s); `None` for
    /// pushed sources.
    pub interval: Option<Duration>,
    /// The connector's own options (`targets`, `table`, `listen`, ...), checked by the connector.
    pub connector: Options,
}

pub const DEFAULT_RETAIN: Duration = Duration::from_secs(300);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

impl SourceOptions {
    /// Parses the options of a source of the given connector.
    pub fn parse(mut options: Options, kind: &dyn SourceConnector) -> Result<Self> {
        let connector = kind.name();
        let collecting = kind.collecting();
        let format = take(&mut options, "format")
            .unwrap_or_else(|| "json".into())
            .to_lowercase();
        if !["json", "ndjson", "influx", "arrow"].contains(&format.as_str()) {
            return Err(SqlError::plan(format!(
                "unknown format '{format}': use json, ndjson, influx or arrow"
            )));
        }
        let retain = take(&mut options, "retain")
            .map(|r| parse_duration(&r))
            .transpose()?
            .unwrap_or(DEFAULT_RETAIN);
        if retain.is_zero() {
            return Err(SqlError::plan("retain must be longer than 0s"));
        }
        let interval = if collecting {
            let i = take(&mut options, "interval")
                .map(|r| parse_duration(&r))
                .transpose()?
                .unwrap_or(DEFAULT_INTERVAL);
            if i < Duration::from_millis(200) {
                return Err(SqlError::plan("interval must be at least 200ms"));
            }
            Some(i)
        } else {
            None
        };
        let own: &[&str] = kind.options();
        let mut connector_options = Vec::new();
        for key in own {
            if let Some(v) = take(&mut options, key) {
                connector_options.push((key.to_string(), v));
            }
        }
        let mut known: Vec<&str> = vec!["format", "retain"];
        if collecting {
            known.push("interval");
        }
        known.extend(own);
        reject_rest(&options, &format!("a {connector} source"), &known)?;
        Ok(SourceOptions {
            format,
            retain,
            interval,
            connector: connector_options,
        })
    }
}

/// Options of an alert rule (see docs/sql.md, "Rules").
#[derive(Clone, Debug, PartialEq)]
pub struct RuleOptions {
    /// How long a row must stay before the alert fires (default 0s: at once).
    pub r#for: Duration,
    /// How long a firing alert stays firing after its row is gone (default 0s).
    pub keep_firing_for: Duration,
    /// Free text, default `warning`.
    pub severity: String,
    /// Templates with `{{column}}` placeholders.
    pub summary: Option<String>,
    pub description: Option<String>,
    /// Columns that identify an alert instance; default: the GROUP BY columns, else the text columns.
    pub labels: Option<Vec<String>>,
    /// Sinks that receive notifications.
    pub sinks: Vec<String>,
    /// How often a firing alert is notified again (default 4h).
    pub repeat: Duration,
}

impl RuleOptions {
    pub fn parse(mut options: Options) -> Result<Self> {
        let dur = |o: &mut Options, k: &str, d: Duration| -> Result<Duration> {
            take(o, k)
                .map(|v| parse_duration(&v))
                .transpose()
                .map(|v| v.unwrap_or(d))
        };
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let out = RuleOptions {
            r#for: dur(&mut options, "for", Duration::ZERO)?,
            keep_firing_for: dur(&mut options, "keep_firing_for", Duration::ZERO)?,
            severity: take(&mut options, "severity").unwrap_or_else(|| "warning".into()),
            summary: take(&mut options, "summary"),
            description: take(&mut options, "description"),
            labels: take(&mut options, "labels").map(list),
            sinks: take(&mut options, "sink").map(list).unwrap_or_default(),
            repeat: dur(&mut options, "repeat", Duration::from_secs(4 * 3600))?,
        };
        if out.repeat < Duration::from_secs(1) {
            return Err(SqlError::plan("repeat must be at least 1s"));
        }
        reject_rest(
            &options,
            "a rule",
            &[
                "for",
                "keep_firing_for",
                "severity",
                "summary",
                "description",
                "labels",
                "sink",
                "repeat",
            ],
        )?;
        Ok(out)
    }
}

/// One matcher of a silence: `label=value` or `label!=value`. `rule` and `severity` match the
/// alert's rule and severity; any other name matches the alert's label of that name.
#[derive(Clone, Debug, PartialEq)]
pub struct Matcher {
    pub label: String,
    pub value: String,
    pub negate: bool,
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.negate { "!=" } else { "=" };
        write!(f, "{}{op}{}", self.label, self.value)
    }
}

/// A silence: alerts matching every matcher between `starts_ms` and `until_ms` notify nobody.
#[derive(Clone, Debug, PartialEq)]
pub struct Silence {
    pub matchers: Vec<Matcher>,
    pub starts_ms: i64,
    pub until_ms: i64,
    pub comment: String,
}

/// A point in time given as `'2h'` (from `now_ms`) or as an RFC 3339 timestamp.
fn parse_instant(text: &str, now_ms: i64, what: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.timestamp_millis());
    }
    let d = parse_duration(text).map_err(|_| {
        SqlError::plan(format!(
            "invalid {what} '{text}': use a duration from now ('2h', '30 minutes') or an RFC 3339 time ('2026-11-22T18:00:00Z')"
        ))
    })?;
    Ok(now_ms.saturating_add(d.as_millis() as i64))
}

/// RFC 3339 in UTC with milliseconds, as tocsin prints times.
use tocsin_engine::fmt_ms;

impl Silence {
    /// Parses `matchers`, `until`, `starts` (default now) and `comment`; times given as durations
    /// are taken from `now_ms`. Also returns the options with absolute times, to record the
    /// silence so that replaying it gives the same silence.
    pub fn parse(mut options: Options, now_ms: i64) -> Result<(Silence, Options)> {
        let text = take(&mut options, "matchers").ok_or_else(|| {
            SqlError::plan("a silence needs matchers, e.g. matchers = 'rule=hot_cpu,host=db1'")
        })?;
        let mut matchers = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (label, value, negate) = if let Some((l, v)) = part.split_once("!=") {
                (l, v, true)
            } else if let Some((l, v)) = part.split_once('=') {
                (l, v, false)
            } else {
                return Err(SqlError::plan(format!(
                    "invalid matcher '{part}': use label=value or label!=value"
                )));
            };
            let label = label.trim().to_lowercase();
            if label.is_empty() {
                return Err(SqlError::plan(format!(
                    "invalid matcher '{part}': no label"
                )));
            }
            let value = value.trim().trim_matches('"').to_string();
            matchers.push(Matcher {
                label,
                value,
                negate,
            });
        }
        if !matchers.iter().any(|m| !m.negate) {
            return Err(SqlError::plan(
                "a silence needs at least one label=value matcher, so that it cannot silence everything by accident",
            ));
        }
        let starts_ms = take(&mut options, "starts")
            .map(|t| parse_instant(&t, now_ms, "starts"))
            .transpose()?
            .unwrap_or(now_ms);
        let until = take(&mut options, "until")
            .ok_or_else(|| SqlError::plan("a silence needs until, e.g. until = '2h'"))?;
        let until_ms = parse_instant(&until, now_ms, "until")?;
        if until_ms <= starts_ms {
            return Err(SqlError::plan("a silence's until must be after its start"));
        }
        let comment = take(&mut options, "comment").unwrap_or_default();
        reject_rest(
            &options,
            "a silence",
            &["matchers", "until", "starts", "comment"],
        )?;
        let silence = Silence {
            matchers,
            starts_ms,
            until_ms,
            comment,
        };
        let recorded = vec![
            ("matchers".to_string(), silence.matchers_text()),
            ("starts".to_string(), fmt_ms(silence.starts_ms)),
            ("until".to_string(), fmt_ms(silence.until_ms)),
            ("comment".to_string(), silence.comment.clone()),
        ];
        Ok((silence, recorded))
    }

    pub fn matchers_text(&self) -> String {
        let m: Vec<String> = self.matchers.iter().map(ToString::to_string).collect();
        m.join(",")
    }

    /// Whether the silence is in force at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.until_ms
    }

    /// Whether an alert with these labels (`rule` and `severity` included) matches every matcher.
    pub fn matches(&self, label: &dyn Fn(&str) -> Option<String>) -> bool {
        self.matchers.iter().all(|m| {
            let v = label(&m.label);
            (v.as_deref() == Some(m.value.as_str())) != m.negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("10 minutes").unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn unknown_rule_options_are_rejected() {
        let e = RuleOptions::parse(vec![("fro".into(), "30s".into())]).unwrap_err();
        assert!(e.message.contains("unknown option 'fro'"), "{e}");
        let o = RuleOptions::parse(vec![
            ("for".into(), "30s".into()),
            ("sink".into(), "a, b".into()),
        ])
        .unwrap();
        assert_eq!(o.r#for, Duration::from_secs(30));
        assert_eq!(o.sinks, vec!["a", "b"]);
        assert_eq!(o.repeat, Duration::from_secs(14400));
        let e = RuleOptions::parse(vec![("repeat".into(), "0s".into())]).unwrap_err();
        assert!(e.message.contains("repeat must be at least 1s"), "{e}");
    }

    #[test]
    fn silences_resolve_times_and_match_labels() {
        let now = 1_700_000_000_000;
        let (s, recorded) = Silence::parse(
            vec![
                ("matchers".into(), "rule=hot_cpu, host!=db2".into()),
                ("until".into(), "2h".into()),
            ],
            now,
        )
        .unwrap();
        assert_eq!(s.until_ms, now + 7_200_000);
        assert!(s.active(now) && !s.active(now + 7_200_000));
        // Replaying the recorded options gives the same silence later on.
        let (again, _) = Silence::parse(recorded, now + 60_000).unwrap();
        assert_eq!(again, s);
        let labels = |host: &'static str| {
            move |l: &str| match l {
                "rule" => Some("hot_cpu".to_string()),
                "host" => Some(host.to_string()),
                _ => None,
            }
        };
        assert!(s.matches(&labels("db1")));
        assert!(!s.matches(&labels("db2")));
        assert!(Silence::parse(
            vec![
                ("matchers".into(), "host!=a".into()),
                ("until".into(), "1h".into())
            ],
            now
        )
        .is_err());
        assert!(Silence::parse(
            vec![
                ("matchers".into(), "rule=a".into()),
                ("until".into(), "later".into())
            ],
            now
        )
        .is_err());
    }
}
