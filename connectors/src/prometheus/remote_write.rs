//! Prometheus remote write, 1.0 (`prometheus.WriteRequest`) and 2.0
//! (`io.prometheus.write.v2.Request`), decoded with prost into the metrics shape.
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
        let mut rows = Rows::new(schema);
        let mut left_out = Vec::new();
        if is_v2(payload.content_type) {
            let request = RequestV2::decode(payload.body.clone())
                .map_err(|e| PayloadError(format!("not a remote write 2.0 request: {e}")))?;
            decode_v2(&request, &payload.limits, &mut rows, &mut left_out)?;
        } else {
            let request = WriteRequest::decode(payload.body.clone())
                .map_err(|e| PayloadError(format!("not a remote write request: {e}")))?;
            decode_v1(&request, &payload.limits, &mut rows, &mut left_out)?;
        }
        let (batch, origins) = rows.finish();
        Ok(Decoded {
            batch,
            rows: origins,
            errors: left_out,
        })
    }
}

fn utf8<'a>(b: &'a Bytes, series: usize, what: &str) -> Result<&'a str, PayloadError> {
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
