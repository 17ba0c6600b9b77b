//! The Prometheus exposition formats a scrape reads: text format 0.0.4 and OpenMetrics 1.0.
//!
//! One parser for both. A sample line is `name{label="value",...} value [timestamp]`; the name
//! may also be a quoted string inside the braces (`{"my.metric",label="v"}`). Label values
//! undo the escapes `\\`, `\"` and `\n`. Values are floats, including `NaN`, `+Inf` and `-Inf`.
//! The timestamp is milliseconds in the text format and seconds (with a fraction) in
//! OpenMetrics. Comments (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) and blank lines are skipped, and
//! so is an OpenMetrics exemplar (` # {...} value` after the sample).

use std::borrow::Cow;

/// The two formats, told apart by the response's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `text/plain; version=0.0.4`: timestamps in milliseconds.
    Text,
    /// `application/openmetrics-text`: timestamps in seconds.
    OpenMetrics,
}

impl Flavor {
    pub fn from_content_type(content_type: &str) -> Flavor {
        if content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/openmetrics-text")
        {
            Flavor::OpenMetrics
        } else {
            Flavor::Text
        }
    }
}

/// One sample: its name, labels (as written, not sorted), value and own timestamp (ms).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: Cow<'a, str>,
    pub labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub value: f64,
    pub ts_ms: Option<i64>,
}

/// A line that is not a sample, with its 1-based number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Reads every sample of an exposition; the first line that is not one is an error (as
/// Prometheus fails a scrape whose body it cannot read).
pub fn parse(text: &str, flavor: Flavor) -> Result<Vec<Sample<'_>>, ParseError> {
    let mut out = Vec::new();
    each(text, flavor, |s| {
        out.push(s.clone());
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` with every sample of an exposition in turn, reusing one sample's memory for all;
/// the first line that is not a sample, or that `f` refuses, is the error.
pub fn each<'a>(
    text: &'a str,
    flavor: Flavor,
    mut f: impl FnMut(&Sample<'a>) -> Result<(), String>,
) -> Result<(), ParseError> {
    let mut s = Sample {
        name: Cow::Borrowed(""),
        labels: Vec::new(),
        value: 0.0,
        ts_ms: None,
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        sample(line, flavor, &mut s)
            .and_then(|()| f(&s))
            .map_err(|message| ParseError {
                line: i + 1,
                message,
            })?;
    }
    Ok(())
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// A cursor over one line.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn name(&mut self, what: &str) -> Result<&'a str, String> {
        let start = self.i;
        match self.peek() {
            Some(c) if is_name_start(c) => self.i += 1,
            _ => return Err(format!("expected a {what} at column {}", self.i + 1)),
        }
        while self.peek().is_some_and(is_name_char) {
            self.i += 1;
        }
        Ok(&self.s[start..self.i])
    }

    /// A quoted string, escapes undone.
    fn quoted(&mut self) -> Result<Cow<'a, str>, String> {
        if self.peek() != Some(b'"') {
            return Err(format!("expected '\"' at column {}", self.i + 1));
        }
        self.i += 1;
        let start = self.i;
        let bytes = self.s.as_bytes();
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            match bytes.get(self.i) {
                None => return Err("a label value is not closed".into()),
                Some(b'"') => {
                    let value = match owned {
                        Some(mut o) => {
                            o.push_str(&self.s[run..self.i]);
                            Cow::Owned(o)
                        }
                        None => Cow::Borrowed(&self.s[start..self.i]),
                    };
                    self.i += 1;
                    return Ok(value);
                }
                Some(b'\\') => {
                    let o = owned.get_or_insert_with(String::new);
                    o.push_str(&self.s[run..self.i]);
                    match bytes.get(self.i + 1) {
                        Some(b'n') => o.push('\n'),
                        Some(b'\\') => o.push('\\'),
                        Some(b'"') => o.push('"'),
                        Some(_) => o.push('\\'),
                        None => return Err("a label value is not closed".into()),
                    }
                    if !matches!(bytes.get(self.i + 1), Some(b'n' | b'\\' | b'"')) {
                        self.i += 1;
                    } else {
                        self.i += 2;
                    }
                    run = self.i;
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// The next token up to a space, tab or the end.
    fn token(&mut self) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(|c| c != b' ' && c != b'\t') {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
}

/// A float as Prometheus writes and reads one.
pub fn float(t: &str) -> Option<f64> {
    match t {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

/// Reads one line into `out`.
fn sample<'a>(line: &'a str, flavor: Flavor, out: &mut Sample<'a>) -> Result<(), String> {
    let mut c = Cursor { s: line, i: 0 };
    let mut name: Option<Cow<'_, str>> = None;
    if c.peek() != Some(b'{') {
        name = Some(Cow::Borrowed(c.name("metric name")?));
    }
    let labels = &mut out.labels;
    labels.clear();
    c.spaces();
    if c.peek() == Some(b'{') {
        c.i += 1;
        loop {
            c.spaces();
            match c.peek() {
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                None => return Err("the label set is not closed".into()),
                _ => {}
            }
            let key: Cow<'_, str> = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                Cow::Borrowed(c.name("label name")?)
            };
            c.spaces();
            if c.peek() == Some(b'=') {
                c.i += 1;
                c.spaces();
                let value = c.quoted()?;
                labels.push((key, value));
            } else if name.is_none() {
                // `{"my.metric", ...}`: a quoted name.
                name = Some(key);
            } else {
                return Err(format!("expected '=' at column {}", c.i + 1));
            }
            c.spaces();
            match c.peek() {
                Some(b',') => c.i += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at column {}", c.i + 1)),
            }
        }
    }
    let name = name.ok_or("a sample without a metric name")?;
    c.spaces();
    let v = c.token();
    let value = float(v).ok_or_else(|| {
        if v.is_empty() {
            "a sample without a value".to_string()
        } else {
            format!("'{v}' is not a number")
        }
    })?;
    c.spaces();
    let mut ts_ms = None;
    if c.peek().is_some_and(|b| b != b'#') {
        let t = c.token();
        ts_ms = Some(match flavor {
            Flavor::Text => t
                .parse::<i64>()
                .map_err(|_| format!("'{t}' is not a timestamp in milliseconds"))?,
            Flavor::OpenMetrics => {
                let secs: f64 = t
                    .parse()
                    .map_err(|_| format!("'{t}' is not a timestamp in seconds"))?;
                (secs * 1000.0).round() as i64
            }
        });
        c.spaces();
    }
    // What is left may only be an exemplar.
    if c.peek().is_some_and(|b| b != b'#') {
        return Err(format!("unexpected '{}' after the sample", &line[c.i..]));
    }
    out.name = name;
    out.value = value;
    out.ts_ms = ts_ms;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str, flavor: Flavor) -> Sample<'_> {
        let mut s = parse(line, flavor).unwrap();
        assert_eq!(s.len(), 1, "{line:?}");
        s.remove(0)
    }

    #[test]
    fn reads_the_text_format() {
        let text = "# HELP node_load1 1m load average.\n# TYPE node_load1 gauge\nnode_load1 0.21\n\
                    node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 8.5e+03\n\
                    http_requests_total{method=\"post\",code=\"200\",} 1027 1395066363000\n\
                    msg{text=\"a \\\"quote\\\", a \\\\ and\\na newline\"} -Inf\n\n";
        let samples = parse(text, Flavor::Text).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].name, "node_load1");
        assert_eq!(samples[0].value, 0.21);
        assert_eq!(samples[1].labels[1], ("mode".into(), "idle".into()));
        assert_eq!(samples[1].value, 8500.0);
        assert_eq!(samples[2].ts_ms, Some(1395066363000));
        assert_eq!(samples[2].labels.len(), 2);
        assert_eq!(samples[3].labels[0].1, "a \"quote\", a \\ and\na newline");
        assert_eq!(samples[3].value, f64::NEG_INFINITY);
    }

    #[test]
    fn reads_openmetrics() {
        let s = one(
            "foo_bucket{le=\"0.01\"} 0 1520879607.789 # {id=\"abc\"} 0.005 1520879607.7",
            Flavor::OpenMetrics,
        );
        assert_eq!(s.ts_ms, Some(1_520_879_607_789));
        assert_eq!(s.labels, vec![("le".into(), "0.01".into())]);
        let s = one("{\"my.metric\", \"a.b\"=\"x\"} NaN", Flavor::OpenMetrics);
        assert_eq!(s.name, "my.metric");
        assert_eq!(s.labels, vec![("a.b".into(), "x".into())]);
        assert!(s.value.is_nan());
        assert_eq!(
            Flavor::from_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Flavor::OpenMetrics
        );
    }

    #[test]
    fn says_where_a_line_is_wrong() {
        for (text, says) in [
            ("ok 1\n3x 1\n", "line 2: expected a metric name"),
            ("m{a=\"b} 1\n", "line 1: a label value is not closed"),
            ("m{a=b} 1\n", "line 1: expected '\"'"),
            ("m hot\n", "line 1: 'hot' is not a number"),
            ("m 1 soon\n", "line 1: 'soon' is not a timestamp"),
            ("m\n", "line 1: a sample without a value"),
            ("m 1 2 3\n", "line 1: unexpected '3'"),
        ] {
            let e = parse(text, Flavor::Text).unwrap_err().to_string();
            assert!(e.starts_with(says), "{text:?}: {e}");
        }
    }

    /// Writes samples the way exporters do, then reads them back.
    #[test]
    fn what_is_written_reads_back() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "ab_:Z09 \"\\\n,{}=#é".chars().collect();
        for _ in 0..2000 {
            let name = format!("m_{}", rng.gen_range(0..1000));
            let n = rng.gen_range(0..4);
            let labels: Vec<(String, String)> = (0..n)
                .map(|i| {
                    let len = rng.gen_range(0..12);
                    let v: String = (0..len)
                        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                        .collect();
                    (format!("l{i}"), v)
                })
                .collect();
            let value: f64 = match rng.gen_range(0..5) {
                0 => f64::INFINITY,
                1 => rng.gen_range(-1e6..1e6),
                2 => rng.gen_range(0..100) as f64,
                3 => rng.gen::<f64>() * 1e-9,
                _ => -0.5,
            };
            let ts: Option<i64> = rng
                .gen_bool(0.5)
                .then(|| rng.gen_range(0..2_000_000_000_000));
            let mut line = name.clone();
            if !labels.is_empty() {
                line.push('{');
                for (k, v) in &labels {
                    let escaped = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    line.push_str(&format!("{k}=\"{escaped}\","));
                }
                line.push('}');
            }
            let shown = if value == f64::INFINITY {
                "+Inf".to_string()
            } else {
                format!("{value:e}")
            };
            line.push_str(&format!(" {shown}"));
            if let Some(t) = ts {
                line.push_str(&format!(" {t}"));
            }
            let s = parse(&line, Flavor::Text).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(s.len(), 1, "{line:?}");
            assert_eq!(s[0].name, name);
            assert_eq!(s[0].value, value, "{line:?}");
            assert_eq!(s[0].ts_ms, ts);
            let got: Vec<(String, String)> = s[0]
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, labels, "{line:?}");
        }
    }
}
