//! Prometheus remote write, 1.0 (`prometheus.WriteRequest`) and 2.0
//! (`io.prometheus.write.v2.Request`), decoded into the metrics shape: 1.0 read straight from
//! the request's bytes (its prost messages are the reference the tests hold that reading to, and
//! what the load generator encodes with), 2.0 with prost.
//!
//! Every float sample becomes a row: `metric` from `__name__`, `labels` the other labels, `ts`
//! the sample's millisecond timestamp. A staleness marker (the NaN Prometheus writes when a
//! series ends) is not a value and is left out; other NaNs and ±Inf are stored as they are.
//! Native histograms are not read: each series' histograms are listed as left out. A payload
//! that is not the protocol, has a label that is not UTF-8, a series without a name or over the
//! label limits, is refused whole.

use bytes::Bytes;
use prost::Message;

use crate::metrics::{Limits, Rows, NAME_LABEL};
use crate::push::{Decoded, PayloadError, RowError};
use crate::source::{Payload, Protocol};

/// The bits of the NaN Prometheus writes as a staleness marker.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// remote write 1.0's `WriteRequest` (metadata is not read).
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Native histograms, kept undecoded: they are counted, not read.
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub histograms: Vec<Bytes>,
}

/// A label; name and value are read as bytes (slices of the request) and checked as UTF-8.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// remote write 2.0's `Request`: labels are pairs of references into `symbols`.
#[derive(Clone, PartialEq, Message)]
pub struct RequestV2 {
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub symbols: Vec<Bytes>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeriesV2>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeriesV2 {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub histograms: Vec<Bytes>,
}

/// The `Content-Type` of remote write 2.0.
pub const V2_TYPE: &str = "io.prometheus.write.v2.request";

/// Whether a `Content-Type` (lower case) asks for remote write 2.0.
pub fn is_v2(content_type: &str) -> bool {
    content_type
        .split(';')
        .skip(1)
        .any(|p| p.trim().strip_prefix("proto=") == Some(V2_TYPE))
}

pub struct RemoteWrite;

impl Protocol for RemoteWrite {
    fn decode(
        &self,
        payload: &Payload<'_>,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Decoded, PayloadError> {
        let mime = payload.content_type.split(';').next().unwrap_or("").trim();
        if !mime.is_empty() && mime != "application/x-protobuf" {
            return Err(PayloadError(format!(
                "remote write is sent as application/x-protobuf (snappy-compressed), not '{mime}'"
            )));
        }
        let mut left_out = Vec::new();
        let rows = if is_v2(payload.content_type) {
            let request = RequestV2::decode(payload.body.clone())
                .map_err(|e| PayloadError(format!("not a remote write 2.0 request: {e}")))?;
            let n = request.timeseries.iter().map(|t| t.samples.len()).sum();
            let mut rows = Rows::with_capacity(schema, n);
            decode_v2(&request, &payload.limits, &mut rows, &mut left_out)?;
            rows
        } else {
            // About one sample a series, and a series takes 60 bytes or more.
            let mut rows = Rows::with_capacity(schema, payload.body.len() / 60);
            walk_v1(&payload.body, &payload.limits, &mut rows, &mut left_out)?;
            rows
        };
        let (batch, origins) = rows.finish();
        Ok(Decoded {
            batch,
            rows: origins,
            errors: left_out,
        })
    }
}

fn utf8<'a>(b: &'a [u8], series: usize, what: &str) -> Result<&'a str, PayloadError> {
    std::str::from_utf8(b)
        .map_err(|_| PayloadError(format!("series {series}: a label {what} is not UTF-8")))
}

/// Adds one series' samples (labels sorted by name) to the rows.
fn series(
    n: usize,
    labels: &mut [(&str, &str)],
    samples: &[Sample],
    histograms: usize,
    limits: &Limits,
    rows: &mut Rows,
    left_out: &mut Vec<RowError>,
) -> Result<(), PayloadError> {
    limits
        .check(labels.iter().copied())
        .map_err(|e| PayloadError(format!("series {n}: {e}")))?;
    crate::metrics::sort_labels(labels, |l| l.0);
    let name = labels
        .iter()
        .find(|(k, _)| *k == NAME_LABEL)
        .map(|(_, v)| *v)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| PayloadError(format!("series {n} has no __name__ label")))?;
    if histograms > 0 {
        left_out.push(RowError {
            row: n,
            message: format!(
                "series {n} ({name}): {histograms} native histogram samples are not read"
            ),
        });
    }
    if samples.is_empty() {
        return Ok(());
    }
    rows.series(name, labels.iter().copied());
    for s in samples {
        if s.value.to_bits() == STALE_NAN {
            continue;
        }
        rows.sample(s.value, s.timestamp, n);
    }
    Ok(())
}

/// Protobuf's wire format, read over a slice: what remote write 1.0 needs of it.
struct Wire<'a> {
    b: &'a [u8],
    i: usize,
}

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

impl<'a> Wire<'a> {
    fn new(b: &'a [u8]) -> Self {
        Wire { b, i: 0 }
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.b.get(self.i) else {
                return Err("truncated varint");
            };
            self.i += 1;
            if shift == 63 && byte > 1 {
                return Err("varint overflows 64 bits");
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes")
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), &'static str> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err("key out of range");
        }
        let field = (k >> 3) as u32;
        if field == 0 {
            return Err("field number 0");
        }
        match (k & 7) as u8 {
            w @ 0..=5 => Ok((field, w)),
            _ => Err("invalid wire type"),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.i.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or("a length past the end of the message")?;
        let out = &self.b[self.i..end];
        self.i = end;
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "length out of range")?)
    }

    fn fixed64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// Skips a field of wire type `wire` whose key was read (a group to its end).
    fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Result<(), &'static str> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP => {
                if depth > 100 {
                    return Err("groups nested too deep");
                }
                loop {
                    let (f, w) = self.key()?;
                    if w == END_GROUP {
                        return if f == field {
                            Ok(())
                        } else {
                            Err("unexpected end group tag")
                        };
                    }
                    self.skip(f, w, depth + 1)?;
                }
            }
            _ => Err("unexpected end group tag"),
        }
    }

    /// A field known to be `want`: its wire type checked.
    fn expect(&self, wire: u8, want: u8) -> Result<(), &'static str> {
        if wire == want {
            Ok(())
        } else {
            Err("invalid wire type for a known field")
        }
    }
}

/// A `Label` message: name and value.
fn wire_label(b: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let mut w = Wire::new(b);
    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
    while !w.done() {
        match w.key()? {
            (1, t) => {
                w.expect(t, LEN)?;
                name = w.bytes()?;
            }
            (2, t) => {
                w.expect(t, LEN)?;
                value = w.bytes()?;
            }
            (f, t) => w.skip(f, t, 0)?,
        }
    }
    Ok((name, value))
}

/// A `Sample` message.
fn wire_sample(b: &[u8]) -> Result<Sample, &'static str> {
    let mut w = Wire::new(b);
    let mut s = Sample::default();
    while !w.done() {
        match w.key()? {
            (1, t) => {
                w.expect(t, FIXED64)?;
                s.value = f64::from_bits(w.fixed64()?);
            }
            (2, t) => {
                w.expect(t, VARINT)?;
                s.timestamp = w.varint()? as i64;
            }
            (f, t) => w.skip(f, t, 0)?,
        }
    }
    Ok(s)
}

/// Reads a remote write 1.0 `WriteRequest` straight from its bytes into the rows: labels are
/// slices of the body, and nothing is built per series but the rows (decoding it with prost
/// made each label two reference-counted handles on the body). prost's decoding of the same
/// message is the reference the tests hold this to.
fn walk_v1(
    body: &[u8],
    limits: &Limits,
    rows: &mut Rows,
    left_out: &mut Vec<RowError>,
) -> Result<(), PayloadError> {
    let mut w = Wire::new(body);
    let bad = |at: usize, e: &str| {
        PayloadError(format!(
            "not a remote write request: {e} (in the message at byte {at})"
        ))
    };
    let mut labels: Vec<(&str, &str)> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut n = 0;
    while !w.done() {
        let at = w.i;
        let (field, wire) = w.key().map_err(|e| bad(at, e))?;
        if field != 1 {
            w.skip(field, wire, 0).map_err(|e| bad(at, e))?;
            continue;
        }
        w.expect(wire, LEN).map_err(|e| bad(at, e))?;
        let series_at = w.i;
        let ts = w.bytes().map_err(|e| bad(at, e))?;
        n += 1;
        labels.clear();
        samples.clear();
        let mut histograms = 0;
        let mut t = Wire::new(ts);
        while !t.done() {
            let at = series_at + t.i;
            let (f, wire) = t.key().map_err(|e| bad(at, e))?;
            match f {
                1 => {
                    t.expect(wire, LEN).map_err(|e| bad(at, e))?;
                    let (k, v) = t.bytes().and_then(wire_label).map_err(|e| bad(at, e))?;
                    labels.push((utf8(k, n, "name")?, utf8(v, n, "value")?));
                }
                2 => {
                    t.expect(wire, LEN).map_err(|e| bad(at, e))?;
                    samples.push(t.bytes().and_then(wire_sample).map_err(|e| bad(at, e))?);
                }
                4 => {
                    t.expect(wire, LEN).map_err(|e| bad(at, e))?;
                    t.bytes().map_err(|e| bad(at, e))?;
                    histograms += 1;
                }
                f => t.skip(f, wire, 0).map_err(|e| bad(at, e))?,
            }
        }
        series(n, &mut labels, &samples, histograms, limits, rows, left_out)?;
    }
    Ok(())
}

/// remote write 1.0 decoded with prost: the reference [`walk_v1`] is held to.
#[cfg(test)]
fn decode_v1(
    request: &WriteRequest,
    limits: &Limits,
    rows: &mut Rows,
    left_out: &mut Vec<RowError>,
) -> Result<(), PayloadError> {
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for (i, ts) in request.timeseries.iter().enumerate() {
        let n = i + 1;
        labels.clear();
        for l in &ts.labels {
            labels.push((utf8(&l.name, n, "name")?, utf8(&l.value, n, "value")?));
        }
        series(
            n,
            &mut labels,
            &ts.samples,
            ts.histograms.len(),
            limits,
            rows,
            left_out,
        )?;
    }
    Ok(())
}

fn decode_v2(
    request: &RequestV2,
    limits: &Limits,
    rows: &mut Rows,
    left_out: &mut Vec<RowError>,
) -> Result<(), PayloadError> {
    let symbols = request
        .symbols
        .iter()
        .enumerate()
        .map(|(i, s)| {
            std::str::from_utf8(s).map_err(|_| PayloadError(format!("symbol {i} is not UTF-8")))
        })
        .collect::<Result<Vec<&str>, _>>()?;
    if symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(PayloadError(
            "the first symbol of a remote write 2.0 request must be the empty string".into(),
        ));
    }
    let symbol = |r: u32, n: usize| {
        symbols.get(r as usize).copied().ok_or_else(|| {
            PayloadError(format!(
                "series {n}: label reference {r} is past the {} symbols",
                symbols.len()
            ))
        })
    };
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for (i, ts) in request.timeseries.iter().enumerate() {
        let n = i + 1;
        if ts.labels_refs.len() % 2 != 0 {
            return Err(PayloadError(format!(
                "series {n}: label references come in (name, value) pairs, and there are {}",
                ts.labels_refs.len()
            )));
        }
        labels.clear();
        for pair in ts.labels_refs.chunks_exact(2) {
            labels.push((symbol(pair[0], n)?, symbol(pair[1], n)?));
        }
        series(
            n,
            &mut labels,
            &ts.samples,
            ts.histograms.len(),
            limits,
            rows,
            left_out,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, TimestampMillisecondType};

    fn label(k: &str, v: &str) -> Label {
        Label {
            name: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    fn payload(body: Vec<u8>, content_type: &str) -> Result<Decoded, PayloadError> {
        RemoteWrite.decode(
            &Payload {
                content_type,
                body: Bytes::from(body),
                limits: Limits::default(),
                now_ms: 0,
            },
            &crate::metrics::schema(),
        )
    }

    /// Random requests, whole, cut short or with a byte changed: read straight from their bytes
    /// they give what prost's decoding gives, or both are refused.
    #[test]
    fn reading_the_bytes_agrees_with_prost() {
        use rand::{Rng, SeedableRng};
        type Read = Result<(arrow::array::RecordBatch, Vec<usize>, Vec<RowError>), String>;
        let schema = crate::metrics::schema();
        let limits = Limits::default();
        let by_prost = |body: &[u8]| -> Read {
            let request = WriteRequest::decode(body).map_err(|e| e.to_string())?;
            let (mut rows, mut left) = (Rows::new(&schema), Vec::new());
            decode_v1(&request, &limits, &mut rows, &mut left).map_err(|e| e.0)?;
            let (batch, origins) = rows.finish();
            Ok((batch, origins, left))
        };
        let by_bytes = |body: &[u8]| -> Read {
            let (mut rows, mut left) = (Rows::new(&schema), Vec::new());
            walk_v1(body, &limits, &mut rows, &mut left).map_err(|e| e.0)?;
            let (batch, origins) = rows.finish();
            Ok((batch, origins, left))
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (mut same, mut refused) = (0, 0);
        for round in 0..6000 {
            let request = WriteRequest {
                timeseries: (0..rng.gen_range(0..4))
                    .map(|_| TimeSeries {
                        labels: (0..rng.gen_range(0..4))
                            .map(|_| {
                                let k = ["__name__", "job", "a", "zz"][rng.gen_range(0..4)];
                                let v: Vec<u8> = (0..rng.gen_range(0..6))
                                    .map(|_| [b'x', b'y', b'1', 0xff][rng.gen_range(0..4)])
                                    .collect();
                                Label {
                                    name: Bytes::from_static(k.as_bytes()),
                                    value: Bytes::from(v),
                                }
                            })
                            .collect(),
                        samples: (0..rng.gen_range(0..3))
                            .map(|_| Sample {
                                value: [1.5, -0.0, f64::INFINITY, f64::from_bits(STALE_NAN)]
                                    [rng.gen_range(0..4)],
                                timestamp: rng.gen_range(-5..2_000_000_000_000),
                            })
                            .collect(),
                        histograms: (0..rng.gen_range(0..2))
                            .map(|_| Bytes::from_static(b"\x08\x01"))
                            .collect(),
                    })
                    .collect(),
            };
            let mut body = request.encode_to_vec();
            match round % 3 {
                0 => {}
                1 => body.truncate(rng.gen_range(0..=body.len())),
                _ if !body.is_empty() => {
                    let i = rng.gen_range(0..body.len());
                    body[i] = rng.gen();
                }
                _ => {}
            }
            match (by_prost(&body), by_bytes(&body)) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{body:?}");
                    same += 1;
                }
                (Err(_), Err(_)) => refused += 1,
                (a, b) => panic!("{body:?}: prost {a:?}, from the bytes {b:?}"),
            }
        }
        assert!(same > 1000 && refused > 1000, "{same} {refused}");
    }

    #[test]
    fn samples_become_rows_and_stale_markers_do_not() {
        let request = WriteRequest {
            timeseries: vec![
                TimeSeries {
                    labels: vec![
                        label("job", "node"),
                        label(NAME_LABEL, "up"),
                        label("instance", "a"),
                    ],
                    samples: vec![
                        Sample {
                            value: 1.0,
                            timestamp: 1000,
                        },
                        Sample {
                            value: f64::from_bits(STALE_NAN),
                            timestamp: 2000,
                        },
                        Sample {
                            value: f64::INFINITY,
                            timestamp: 3000,
                        },
                    ],
                    histograms: vec![],
                },
                TimeSeries {
                    labels: vec![label(NAME_LABEL, "h")],
                    samples: vec![],
                    histograms: vec![Bytes::from_static(b"")],
                },
            ],
        };
        let d = payload(request.encode_to_vec(), "application/x-protobuf").unwrap();
        let b = &d.batch;
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(0).as_string::<i32>().value(0), "up");
        assert_eq!(
            b.column(1).as_string::<i32>().value(0),
            r#"{"instance":"a","job":"node"}"#
        );
        assert_eq!(
            b.column(2).as_primitive::<Float64Type>().value(1),
            f64::INFINITY
        );
        assert_eq!(
            b.column(3)
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec(),
            vec![1000, 3000]
        );
        assert_eq!(d.rows, vec![1, 1]);
        assert_eq!(d.errors.len(), 1);
        assert!(
            d.errors[0].message.contains("native histogram"),
            "{:?}",
            d.errors
        );
    }

    #[test]
    fn version_2_reads_labels_from_symbols() {
        let request = RequestV2 {
            symbols: ["", NAME_LABEL, "up", "job", "node"]
                .iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
            timeseries: vec![TimeSeriesV2 {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![Sample {
                    value: 0.5,
                    timestamp: 7,
                }],
                histograms: vec![],
            }],
        };
        let ct = "application/x-protobuf;proto=io.prometheus.write.v2.Request".to_lowercase();
        let d = payload(request.encode_to_vec(), &ct).unwrap();
        assert_eq!(d.batch.num_rows(), 1);
        assert_eq!(
            d.batch.column(1).as_string::<i32>().value(0),
            r#"{"job":"node"}"#
        );
        let mut bad = request.clone();
        bad.timeseries[0].labels_refs = vec![1, 9];
        let e = payload(bad.encode_to_vec(), &ct).unwrap_err();
        assert!(e.0.contains("past the 5 symbols"), "{e}");
    }

    #[test]
    fn hostile_payloads_are_refused_whole() {
        let truncated = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![label(NAME_LABEL, "up")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                histograms: vec![],
            }],
        }
        .encode_to_vec();
        let e = payload(
            truncated[..truncated.len() - 3].to_vec(),
            "application/x-protobuf",
        )
        .unwrap_err();
        assert!(e.0.contains("not a remote write request"), "{e}");
        let not_utf8 = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: Bytes::from_static(NAME_LABEL.as_bytes()),
                    value: Bytes::from_static(b"\xff\xfe"),
                }],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                histograms: vec![],
            }],
        };
        let e = payload(not_utf8.encode_to_vec(), "application/x-protobuf").unwrap_err();
        assert!(e.0.contains("not UTF-8"), "{e}");
        let many = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: (0..10_000).map(|i| label(&format!("l{i}"), "v")).collect(),
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                histograms: vec![],
            }],
        };
        let e = payload(many.encode_to_vec(), "application/x-protobuf").unwrap_err();
        assert!(e.0.contains("10000 labels"), "{e}");
        let nameless = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![label("job", "x")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                histograms: vec![],
            }],
        };
        let e = payload(nameless.encode_to_vec(), "application/x-protobuf").unwrap_err();
        assert!(e.0.contains("no __name__"), "{e}");
        let e = payload(vec![], "application/json").unwrap_err();
        assert!(e.0.contains("application/x-protobuf"), "{e}");
    }
}
