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
    /// How long a row is kept on disk after its `ts`, for ad hoc queries (`None`: not kept).
    pub history: Option<Duration>,
    /// How often a collecting connector (`HOST`, `SNMP`) samples (default 10s); `None` for
    /// pushed sources.
    pub interval: Option<Duration>,
    /// The connector's own options (`targets`, `table`, `listen`, ...), checked by the connector.
    pub connector: Options,
}

/// A duration as options are written: `90 days`, `1 hour`, `30s`.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, n) in [("day", 86_400), ("hour", 3_600), ("minute", 60)] {
        if s.is_multiple_of(n) {
            let k = s / n;
            return format!("{k} {unit}{}", if k == 1 { "" } else { "s" });
        }
    }
    format!("{s}s")
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
        let history = take(&mut options, "history")
            .map(|h| parse_duration(&h))
            .transpose()?;
        if let Some(h) = history {
            if h <= retain {
                return Err(SqlError::plan(format!(
                    "history ({}) must be longer than retain ({}): the in-memory window already keeps that much",
                    crate::options::show_duration(h),
                    crate::options::show_duration(retain)
                )));
            }
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
        let mut known: Vec<&str> = vec!["format", "retain", "history"];
        if collecting {
            known.push("interval");
        }
        known.extend(own);
        reject_rest(&options, &format!("a {connector} source"), &known)?;
        Ok(SourceOptions {
            format,
            retain,
            history,
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
    /// Rules whose firing alerts hold back this rule's notifications when they share the values
    /// of the labels the two rules have in common ("host down" inhibits "service down").
    pub inhibit: Vec<String>,
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
            inhibit: take(&mut options, "inhibit").map(list).unwrap_or_default(),
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
                "inhibit",
            ],
        )?;
        Ok(out)
    }
}

/// One label matcher, as Alertmanager writes them: `label=value`, `label!=value`,
/// `label=~regex`, `label!~regex`; the value may be quoted (`"..."`, JSON escapes). A label the
/// alert does not have has the empty value (Alertmanager's rule), and regexes match the whole
/// value. Silences and the Alertmanager API's `filter` use this one matcher.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub label: String,
    pub value: String,
    pub op: MatchOp,
    regex: Option<regex::Regex>,
}

/// How a [`Matcher`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.value == other.value && self.op == other.op
    }
}

impl Matcher {
    /// Parses one matcher; the error says what is wrong with it.
    pub fn parse(text: &str) -> std::result::Result<Matcher, String> {
        let t = text.trim();
        let bad = |why: &str| format!("invalid matcher '{text}': {why}");
        if t.starts_with('{') || t.ends_with('}') {
            return Err(bad("unexpected brace; give the matchers without {}"));
        }
        let op_at = t
            .find(['=', '!'])
            .ok_or_else(|| bad("use label=value, label!=value, label=~regex or label!~regex"))?;
        let label = t[..op_at].trim().to_lowercase();
        let rest = &t[op_at..];
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(bad(
                "use label=value, label!=value, label=~regex or label!~regex",
            ));
        };
        if label.is_empty() {
            return Err(bad("no label"));
        }
        let rest = rest.trim();
        let value = if rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"') {
            serde_json::from_str::<String>(rest).map_err(|_| bad("invalid quoted value"))?
        } else {
            rest.to_string()
        };
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| bad(&e.to_string()))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            label,
            value,
            op,
            regex,
        })
    }

    /// Parses comma-separated matchers; commas inside quoted values do not separate.
    pub fn parse_list(text: &str) -> std::result::Result<Vec<Matcher>, String> {
        let mut out = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    out.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(&text[start..]);
        out.into_iter()
            .filter(|p| !p.trim().is_empty())
            .map(Matcher::parse)
            .collect()
    }

    /// Whether a label's value (`None`: the alert has no such label) matches.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match (&self.regex, self.op) {
            (Some(r), MatchOp::Regex) => r.is_match(v),
            (Some(r), _) => !r.is_match(v),
            (None, MatchOp::NotEqual) => v != self.value,
            (None, _) => v == self.value,
        }
    }

    /// `=` or `=~`: it selects alerts rather than excluding them.
    pub fn is_positive(&self) -> bool {
        matches!(self.op, MatchOp::Equal | MatchOp::Regex)
    }

    pub fn is_regex(&self) -> bool {
        matches!(self.op, MatchOp::Regex | MatchOp::NotRegex)
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = !self.value.is_empty()
            && self
                .value
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.:/@".contains(c));
        if plain {
            write!(f, "{}{}{}", self.label, self.op.as_str(), self.value)
        } else {
            let quoted = serde_json::to_string(&self.value).map_err(|_| std::fmt::Error)?;
            write!(f, "{}{}{quoted}", self.label, self.op.as_str())
        }
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
        let matchers = Matcher::parse_list(&text).map_err(SqlError::plan)?;
        if !matchers.iter().any(Matcher::is_positive) {
            return Err(SqlError::plan(
                "a silence needs at least one label=value matcher (or label=~regex), so that it cannot silence everything by accident",
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
        self.matchers
            .iter()
            .all(|m| m.matches_value(label(&m.label).as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_matcher_language() {
        let (s, recorded) = Silence::parse(
            vec![
                (
                    "matchers".into(),
                    r#"rule=hot, host=~"web-[0-9]+", zone!="eu, west", dc!~"lab.*""#.into(),
                ),
                ("until".into(), "1h".into()),
            ],
            0,
        )
        .unwrap();
        assert_eq!(
            s.matchers.len(),
            4,
            "a comma inside quotes does not separate"
        );
        let alert = |host: &str, zone: Option<&str>| {
            let (host, zone) = (host.to_string(), zone.map(str::to_string));
            move |name: &str| match name {
                "rule" => Some("hot".to_string()),
                "host" => Some(host.clone()),
                "zone" => zone.clone(),
                _ => None,
            }
        };
        assert!(s.matches(&alert("web-12", Some("us"))));
        assert!(
            !s.matches(&alert("web-1x", None)),
            "regexes match the whole value"
        );
        assert!(!s.matches(&alert("web-1", Some("eu, west"))));
        // A missing label has the empty value: `dc!~"lab.*"` holds, `dc=""` would too.
        assert!(s.matches(&alert("web-1", None)));
        assert!(Matcher::parse(r#"dc="""#).unwrap().matches_value(None));
        assert!(!Matcher::parse("dc=x").unwrap().matches_value(None));
        // Recorded as it parses back.
        let again = Silence::parse(recorded, 0).unwrap().0;
        assert_eq!(again.matchers, s.matchers);
        for bad in ["host", "=x", "{host=a}", "host=~\"(\""] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
        let e = Silence::parse(
            vec![
                ("matchers".into(), "host!=a".into()),
                ("until".into(), "1h".into()),
            ],
            0,
        )
        .unwrap_err();
        assert!(e.message.contains("at least one"), "{}", e.message);
    }

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
