//! The one shape of metrics from Prometheus and OpenTelemetry: `(metric TEXT, labels TEXT,
//! value DOUBLE, ts TIMESTAMP)`, where `labels` is a JSON object of every label but `__name__`,
//! keys sorted, so equal label sets are equal strings. A source may declare TEXT columns before
//! those four: a column named after a label receives that label's value (docs/ingest.md).
//!
//! [`Rows`] builds batches in that shape from series (a metric name and its labels) and their
//! samples, the labels' JSON written once per series.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::source::ts_type;
use arrow::record_batch::RecordBatch;

/// The columns every metrics source ends with.
pub const COLUMNS: [&str; 4] = ["metric", "labels", "value", "ts"];

/// The label that holds a Prometheus series' metric name.
pub const NAME_LABEL: &str = "__name__";

/// The four columns of the metrics shape.
pub fn fields() -> Vec<Field> {
    vec![
        Field::new("metric", DataType::Utf8, true),
        Field::new("labels", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
        Field::new("ts", ts_type(), true),
    ]
}

/// The schema without declared columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(fields()))
}

/// Checks a source's declared label columns (each TEXT, none named like the four) and answers
/// the whole schema: the declared columns, then the four.
pub fn with_labels(declared: &[Field]) -> crate::Result<SchemaRef> {
    let mut all = Vec::with_capacity(declared.len() + 4);
    for f in declared {
        if COLUMNS.contains(&f.name().as_str()) {
            return Err(format!(
                "column \"{}\" is one of the metrics columns every such source has (metric, labels, value, ts): leave it out of the list",
                f.name()
            )
            .into());
        }
        if f.data_type() != &DataType::Utf8 {
            return Err(format!(
                "column \"{}\" is filled from a label, and labels are text: declare it TEXT (cast it in a query)",
                f.name()
            )
            .into());
        }
        all.push(f.clone());
    }
    all.extend(fields());
    Ok(Arc::new(Schema::new(all)))
}

/// Limits on what one series may carry (a hostile or broken sender is refused, not stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Labels of one series, `__name__` included.
    pub max_labels: usize,
    /// Bytes of one label name or value.
    pub max_label_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_labels: 128,
            max_label_bytes: 4096,
        }
    }
}

impl Limits {
    /// Checks one series' labels, as (name, value) pairs.
    pub fn check<'a>(
        &self,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        if labels.len() > self.max_labels {
            return Err(format!(
                "{} labels, more than the limit of {} (--max-labels)",
                labels.len(),
                self.max_labels
            ));
        }
        for (k, v) in labels {
            if k.is_empty() {
                return Err("a label with an empty name".into());
            }
            if k.len() > self.max_label_bytes || v.len() > self.max_label_bytes {
                let what = if k.len() > self.max_label_bytes {
                    "name"
                } else {
                    "value"
                };
                return Err(format!(
                    "label {}: its {what} is longer than the limit of {} bytes (--max-label-length)",
                    short(k),
                    self.max_label_bytes
                ));
            }
        }
        Ok(())
    }
}

/// A label name for a message, cut to 64 bytes.
fn short(s: &str) -> String {
    if s.len() <= 64 {
        return format!("\"{s}\"");
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("\"{}...\"", &s[..end])
}

/// Writes labels as a JSON object with sorted keys, leaving out `__name__`. `labels` must be
/// sorted by name (see [`sort_labels`]).
pub fn labels_json<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>, out: &mut String) {
    out.clear();
    out.push('{');
    let mut first = true;
    for (k, v) in labels {
        if k == NAME_LABEL {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        json_string(k, out);
        out.push(':');
        json_string(v, out);
    }
    out.push('}');
}

/// Sorts (name, value) pairs by name unless they already are, as senders usually send them.
pub fn sort_labels<T, F: Fn(&T) -> &str>(labels: &mut [T], name: F) {
    if !labels.windows(2).all(|w| name(&w[0]) <= name(&w[1])) {
        labels.sort_by(|a, b| name(a).cmp(name(b)));
    }
}

/// Appends `s` as a JSON string.
pub fn json_string(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    // Most label names and values need no escape: one pass without branches says so.
    let plain = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Builds a batch in a metrics source's schema.
pub struct Rows {
    schema: SchemaRef,
    /// The declared label columns, by name, in schema order.
    declared: Vec<(String, StringBuilder)>,
    metric: StringBuilder,
    labels: StringBuilder,
    value: Float64Builder,
    ts: TimestampMillisecondBuilder,
    /// The current series: its labels' JSON and the declared columns' values.
    json: String,
    values: Vec<Option<String>>,
    name: String,
    /// For each row, the number of the series or point it came from (1-based).
    pub origins: Vec<usize>,
}

impl Rows {
    /// Rows in `schema`: declared TEXT columns, then the four.
    pub fn new(schema: &SchemaRef) -> Rows {
        Rows::with_capacity(schema, 0)
    }

    /// Rows with room for about `rows` rows, so that a batch of a known size is built without
    /// growing (and copying) its columns as it goes.
    pub fn with_capacity(schema: &SchemaRef, rows: usize) -> Rows {
        let n = schema.fields().len().saturating_sub(COLUMNS.len());
        Rows {
            schema: schema.clone(),
            declared: schema.fields()[..n]
                .iter()
                .map(|f| {
                    (
                        f.name().clone(),
                        StringBuilder::with_capacity(rows, rows * 16),
                    )
                })
                .collect(),
            metric: StringBuilder::with_capacity(rows, rows * 24),
            labels: StringBuilder::with_capacity(rows, rows * 64),
            value: Float64Builder::with_capacity(rows),
            ts: TimestampMillisecondBuilder::with_capacity(rows),
            json: String::new(),
            values: vec![None; n],
            name: String::new(),
            origins: Vec::with_capacity(rows),
        }
    }

    /// Starts a series: its metric name and its labels sorted by name (`__name__` may be among
    /// them; it is left out of the JSON).
    pub fn series<'a>(&mut self, metric: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) {
        self.name.clear();
        self.name.push_str(metric);
        for v in &mut self.values {
            *v = None;
        }
        let declared = &self.declared;
        let values = &mut self.values;
        let tracked = labels.inspect(|(k, v)| {
            if let Some(i) = declared.iter().position(|(d, _)| d == k) {
                values[i] = Some((*v).to_string());
            }
        });
        labels_json(tracked, &mut self.json);
    }

    /// A sample of the current series.
    pub fn sample(&mut self, value: f64, ts_ms: i64, origin: usize) {
        for ((_, b), v) in self.declared.iter_mut().zip(&self.values) {
            b.append_option(v.as_deref());
        }
        self.metric.append_value(&self.name);
        self.labels.append_value(&self.json);
        self.value.append_value(value);
        self.ts.append_value(ts_ms);
        self.origins.push(origin);
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The batch built so far, and each row's origin.
    pub fn finish(mut self) -> (RecordBatch, Vec<usize>) {
        let mut columns: Vec<ArrayRef> = self
            .declared
            .iter_mut()
            .map(|(_, b)| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.metric.finish()));
        columns.push(Arc::new(self.labels.finish()));
        columns.push(Arc::new(self.value.finish()));
        let tz = match self.schema.fields().last().map(|f| f.data_type()) {
            Some(DataType::Timestamp(_, tz)) => tz.clone(),
            _ => None,
        };
        columns.push(Arc::new(self.ts.finish().with_timezone_opt(tz)));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .expect("the metrics columns match their schema");
        (batch, self.origins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    #[test]
    fn labels_are_a_sorted_json_object_without_the_name() {
        let mut labels = vec![
            ("job", "node"),
            (NAME_LABEL, "up"),
            ("instance", "a:9100"),
            ("q", "say \"hi\"\n\u{1}"),
        ];
        sort_labels(&mut labels, |l| l.0);
        let mut out = String::new();
        labels_json(labels.iter().copied(), &mut out);
        assert_eq!(
            out,
            r#"{"instance":"a:9100","job":"node","q":"say \"hi\"\n\u0001"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["q"], "say \"hi\"\n\u{1}");
    }

    #[test]
    fn labels_json_is_what_serde_json_writes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let text = |rng: &mut rand::rngs::StdRng, min: usize| -> String {
            (0..rng.gen_range(min..8))
                .map(|_| char::from_u32(rng.gen_range(0..0x300)).unwrap_or('x'))
                .collect()
        };
        for _ in 0..2000 {
            let mut map = std::collections::BTreeMap::new();
            for _ in 0..rng.gen_range(0..5) {
                let k = text(&mut rng, 1);
                let v = text(&mut rng, 0);
                map.insert(k, v);
            }
            let mut out = String::new();
            labels_json(map.iter().map(|(k, v)| (k.as_str(), v.as_str())), &mut out);
            assert_eq!(out, serde_json::to_string(&map).unwrap());
        }
    }

    #[test]
    fn declared_columns_take_their_labels() {
        let schema =
            with_labels(&[Field::new("instance", DataType::Utf8, true)]).expect("a schema");
        let mut rows = Rows::new(&schema);
        rows.series("up", [("instance", "a"), ("job", "j")].into_iter());
        rows.sample(1.0, 10, 1);
        rows.series("up", [("job", "j")].into_iter());
        rows.sample(0.0, 20, 2);
        let (batch, origins) = rows.finish();
        assert_eq!(origins, vec![1, 2]);
        let instance = batch.column(0).as_string::<i32>();
        assert_eq!(instance.value(0), "a");
        assert!(instance.is_null(1));
        assert_eq!(
            batch.column(2).as_string::<i32>().value(1),
            r#"{"job":"j"}"#
        );
    }

    #[test]
    fn declared_columns_are_text_and_not_the_four() {
        let e = with_labels(&[Field::new("value", DataType::Utf8, true)]).unwrap_err();
        assert!(e.to_string().contains("leave it out"), "{e}");
        let e = with_labels(&[Field::new("le", DataType::Float64, true)]).unwrap_err();
        assert!(e.to_string().contains("declare it TEXT"), "{e}");
    }

    #[test]
    fn limits_refuse_too_many_or_too_long_labels() {
        let l = Limits::default();
        let many: Vec<(String, String)> = (0..200).map(|i| (format!("l{i}"), "v".into())).collect();
        let e = l
            .check(many.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_err();
        assert!(e.contains("200 labels"), "{e}");
        let long = "x".repeat(5000);
        let e = l.check([("a", long.as_str())].into_iter()).unwrap_err();
        assert!(e.contains("its value is longer"), "{e}");
        assert!(l.check([("a", "b")].into_iter()).is_ok());
    }
}
