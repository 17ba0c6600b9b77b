use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};
use bytes::Bytes;

use super::*;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Any::String(v.into())),
        }),
    }
}

fn decode(body: Vec<u8>, content_type: &str) -> Result<Decoded, PayloadError> {
    OtlpHttp.decode(
        &Payload {
            content_type,
            body: Bytes::from(body),
            limits: Limits::default(),
            now_ms: 99,
        },
        &crate::metrics::schema(),
    )
}

/// (metric, labels, value, ts) of every row.
fn table(b: &RecordBatch) -> Vec<(String, String, f64, i64)> {
    (0..b.num_rows())
        .map(|i| {
            (
                b.column(0).as_string::<i32>().value(i).to_string(),
                b.column(1).as_string::<i32>().value(i).to_string(),
                b.column(2).as_primitive::<Float64Type>().value(i),
                b.column(3)
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i),
            )
        })
        .collect()
}

fn request() -> ExportMetricsServiceRequest {
    let number = |v: NumberValue, t: u64, attrs: Vec<KeyValue>| NumberDataPoint {
        attributes: attrs,
        time_unix_nano: t,
        value: Some(v),
        flags: 0,
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "api"),
                    kv("service.instance.id", "i-1"),
                    kv("host.name", "web1"),
                ],
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "shop".into(),
                    version: String::new(),
                }),
                metrics: vec![
                    Metric {
                        name: "queue".into(),
                        unit: String::new(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![number(
                                NumberValue::AsDouble(2.5),
                                5_000_000,
                                vec![kv("host.name", "web2")],
                            )],
                        })),
                    },
                    Metric {
                        name: "requests".into(),
                        unit: "1".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: vec![
                                number(NumberValue::AsInt(7), 6_000_000, vec![]),
                                NumberDataPoint {
                                    attributes: vec![],
                                    time_unix_nano: 7_000_000,
                                    value: None,
                                    flags: FLAG_NO_RECORDED_VALUE,
                                },
                            ],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                    },
                    Metric {
                        name: "latency".into(),
                        unit: "ms".into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                attributes: vec![],
                                time_unix_nano: 0,
                                count: 6,
                                sum: Some(30.0),
                                bucket_counts: vec![1, 2, 3],
                                explicit_bounds: vec![0.5, 10.0],
                                flags: 0,
                            }],
                            aggregation_temporality: 2,
                        })),
                    },
                    Metric {
                        name: "sizes".into(),
                        unit: String::new(),
                        data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![Vec::new()],
                        })),
                    },
                ],
            }],
        }],
    }
}

const BASE: &str = r#""instance":"i-1","job":"api","otel_scope_name":"shop""#;

#[test]
fn points_become_rows_as_prometheus_would_name_them() {
    let d = decode(request().encode_to_vec(), "application/x-protobuf").unwrap();
    let rows = table(&d.batch);
    let l = |le: &str| {
        match le {
        "" => format!("{{\"host.name\":\"web1\",{BASE}}}"),
        le => format!(
            "{{\"host.name\":\"web1\",\"instance\":\"i-1\",\"job\":\"api\",\"le\":\"{le}\",\"otel_scope_name\":\"shop\"}}"
        ),
    }
    };
    assert_eq!(
        rows,
        vec![
            (
                "queue".into(),
                format!("{{\"host.name\":\"web2\",{BASE}}}"),
                2.5,
                5
            ),
            ("requests".into(), l(""), 7.0, 6),
            ("latency_bucket".into(), l("0.5"), 1.0, 99),
            ("latency_bucket".into(), l("10"), 3.0, 99),
            ("latency_bucket".into(), l("+Inf"), 6.0, 99),
            ("latency_sum".into(), l(""), 30.0, 99),
            ("latency_count".into(), l(""), 6.0, 99),
        ]
    );
    // The exponential histogram's point is rejected; the flagged point is left out silently.
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(
        d.errors[0].message.contains("exponential"),
        "{:?}",
        d.errors
    );
    assert_eq!(d.errors[0].row, 5);
}

#[test]
fn json_reads_the_same_as_protobuf() {
    let body = r#"{"resourceMetrics":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"api"}},
            {"key":"service.instance.id","value":{"stringValue":"i-1"}},
            {"key":"host.name","value":{"stringValue":"web1"}}]},
          "scopeMetrics":[{"scope":{"name":"shop"},"metrics":[
            {"name":"queue","gauge":{"dataPoints":[{"asDouble":2.5,"timeUnixNano":"5000000",
               "attributes":[{"key":"host.name","value":{"stringValue":"web2"}}]}]}},
            {"name":"requests","unit":"1","sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true,
               "dataPoints":[{"asInt":"7","timeUnixNano":6000000},{"flags":1,"timeUnixNano":"7000000"}]}},
            {"name":"latency","unit":"ms","histogram":{"aggregationTemporality":2,"dataPoints":[
               {"count":"6","sum":30,"bucketCounts":["1",2,"3"],"explicitBounds":[0.5,10]}]}},
            {"name":"sizes","exponentialHistogram":{"dataPoints":[{}]}}
          ]}]}]}"#;
    let from_json = decode(body.as_bytes().to_vec(), "application/json").unwrap();
    let from_proto = decode(request().encode_to_vec(), "application/x-protobuf").unwrap();
    assert_eq!(table(&from_json.batch), table(&from_proto.batch));
    assert_eq!(from_json.errors, from_proto.errors);
}

#[test]
fn summaries_give_quantile_rows() {
    let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"rpc","summary":{"dataPoints":[
        {"timeUnixNano":"1000000","count":"4","sum":8.5,"quantileValues":[{"quantile":0.5,"value":2},{"quantile":0.99,"value":"Infinity"}]}]}}]}]}]}"#;
    let d = decode(body.as_bytes().to_vec(), "application/json; charset=utf-8").unwrap();
    let rows = table(&d.batch);
    assert_eq!(
        rows[0],
        ("rpc".into(), r#"{"quantile":"0.5"}"#.into(), 2.0, 1)
    );
    assert_eq!(rows[1].2, f64::INFINITY);
    assert_eq!(rows[2], ("rpc_sum".into(), "{}".into(), 8.5, 1));
    assert_eq!(rows[3], ("rpc_count".into(), "{}".into(), 4.0, 1));
}

#[test]
fn broken_requests_are_refused_whole() {
    let body = request().encode_to_vec();
    let e = decode(body[..body.len() - 5].to_vec(), "application/x-protobuf").unwrap_err();
    assert!(e.0.contains("not an OTLP protobuf"), "{e}");
    let e = decode(b"{\"resourceMetrics\": 5}".to_vec(), "application/json").unwrap_err();
    assert!(e.0.contains("must be an array"), "{e}");
    let e = decode(b"{}".to_vec(), "text/plain").unwrap_err();
    assert!(
        e.0.contains("application/x-protobuf or application/json"),
        "{e}"
    );
    let mut many = request();
    let ScopeMetrics { metrics, .. } = &mut many.resource_metrics[0].scope_metrics[0];
    let Some(Data::Gauge(g)) = &mut metrics[0].data else {
        unreachable!()
    };
    g.data_points[0].attributes = (0..10_000).map(|i| kv(&format!("k{i}"), "v")).collect();
    let e = decode(many.encode_to_vec(), "application/x-protobuf").unwrap_err();
    assert!(
        e.0.contains("data point 1") && e.0.contains("labels"),
        "{e}"
    );
}

#[test]
fn answers_follow_the_specification() {
    let ok = ExportMetricsServiceResponse::decode(&answer(false, 0, "")[..]).unwrap();
    assert_eq!(ok.partial_success, None);
    let partial = ExportMetricsServiceResponse::decode(&answer(false, 2, "why")[..]).unwrap();
    assert_eq!(partial.partial_success.unwrap().rejected_data_points, 2);
    let json: serde_json::Value = serde_json::from_slice(&answer(true, 2, "why")).unwrap();
    assert_eq!(json["partialSuccess"]["rejectedDataPoints"], "2");
    assert_eq!(String::from_utf8(answer(true, 0, "")).unwrap(), "{}");
    let s = Status::decode(&status(false, 3, "bad")[..]).unwrap();
    assert_eq!((s.code, s.message.as_str()), (3, "bad"));
}
