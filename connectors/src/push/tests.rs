use std::sync::Arc;

use arrow::array::{
    AsArray, Float64Array, Int32Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};

use super::*;

const NOW: i64 = 1_795_255_200_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("cpu", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn hosts(b: &RecordBatch) -> Vec<String> {
    b.column(0)
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or("NULL").to_string())
        .collect()
}

fn ts(b: &RecordBatch) -> Vec<i64> {
    b.column(3)
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec()
}

#[test]
fn json_array_with_bad_rows_keeps_the_good_ones() {
    let payload = br#"[
        {"host": "a", "cpu": 1.5, "ts": "2026-11-21T10:00:00.000Z"},
        {"host": "b", "cpu": "hot"},
        {"host": "c", "cpu": 3, "n": 7, "ts": 1795255100000, "extra": true},
        [1, 2],
        {"host": "e", "n": 1.5}
    ]"#;
    let d = decode(Format::Json, payload, &schema(), NOW).unwrap();
    assert_eq!(hosts(&d.batch), ["a", "c", "e"]);
    assert_eq!(d.rows, [1, 3, 5]);
    assert_eq!(ts(&d.batch), [1_795_255_200_000, 1_795_255_100_000, NOW]);
    // arrow-json reads a fractional number into a BIGINT column truncated toward zero.
    assert_eq!(d.batch.column(2).as_primitive::<Int64Type>().value(2), 1);
    let bad: Vec<usize> = d.errors.iter().map(|e| e.row).collect();
    assert_eq!(bad, [2, 4]);
    assert!(d.errors[0].message.contains("cpu"), "{:?}", d.errors[0]);
}

#[test]
fn ndjson_numbers_rows_by_line_and_stamps_missing_ts() {
    let payload =
        b"{\"host\": \"a\", \"cpu\": 1}\n\n{\"host\": \"b\", \"cpu\": 2}\n{oops\n{\"host\": 5}\n";
    let d = decode(Format::Ndjson, payload, &schema(), NOW).unwrap();
    assert_eq!(hosts(&d.batch), ["a", "b", "5"]);
    assert_eq!(d.rows, [1, 3, 5]);
    assert_eq!(ts(&d.batch), [NOW; 3]);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].row, 4);
    let cpu = d.batch.column(1).as_primitive::<Float64Type>();
    assert_eq!(cpu.value(1), 2.0);
    assert!(cpu.is_null(2));
}

#[test]
fn json_that_is_not_rows_is_a_payload_error() {
    assert!(decode(Format::Json, b"42", &schema(), NOW).is_err());
    assert!(decode(Format::Json, b"[{\"host\": ", &schema(), NOW).is_err());
    let d = decode(Format::Json, b"  ", &schema(), NOW).unwrap();
    assert_eq!(d.batch.num_rows(), 0);
    // A lone object (or several, one per line) under application/json.
    let d = decode(Format::Json, b"{\"host\": \"a\"}", &schema(), NOW).unwrap();
    assert_eq!(hosts(&d.batch), ["a"]);
}

#[test]
fn influx_maps_tags_fields_and_timestamp_by_name() {
    let payload = "# comment\n\
        cpu,host=a cpu=1.5,n=3i 1795255100000000000\n\
        cpu,host=b,dc=x cpu=2i\n\
        cpu,host=c cpu=\"hot\"\n\
        cpu,host=d n=2.5\n\
        not a line\n\
        cpu,host=e cpu=4 1795255100000\n";
    let d = decode(
        Format::Influx(Precision::Nanoseconds),
        payload.as_bytes(),
        &schema(),
        NOW,
    )
    .unwrap();
    assert_eq!(hosts(&d.batch), ["a", "b", "e"]);
    assert_eq!(d.rows, [2, 3, 7]);
    // The last line's timestamp is read in nanoseconds: 1795255100000 ns is 1970.
    assert_eq!(ts(&d.batch), [1_795_255_100_000, NOW, 1_795_255]);
    let cpu = d.batch.column(1).as_primitive::<Float64Type>();
    assert_eq!((cpu.value(0), cpu.value(1)), (1.5, 2.0));
    assert_eq!(d.batch.column(2).as_primitive::<Int64Type>().value(0), 3);
    let bad: Vec<usize> = d.errors.iter().map(|e| e.row).collect();
    assert_eq!(bad, [4, 5, 6]);
    assert!(
        d.errors[0].message.contains("field \"cpu\""),
        "{:?}",
        d.errors[0]
    );
    assert!(
        d.errors[1].message.contains("field \"n\""),
        "{:?}",
        d.errors[1]
    );

    let ms = decode(
        Format::Influx(Precision::Milliseconds),
        b"cpu,host=a cpu=1 1795255100000",
        &schema(),
        NOW,
    )
    .unwrap();
    assert_eq!(ts(&ms.batch), [1_795_255_100_000]);
}

#[test]
fn arrow_ipc_columns_are_matched_by_name_and_cast() {
    let sent = Arc::new(Schema::new(vec![
        Field::new("cpu", DataType::Float64, false),
        Field::new("n", DataType::Int32, false),
        Field::new("host", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
    ]));
    let batch = RecordBatch::try_new(
        sent.clone(),
        vec![
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(TimestampNanosecondArray::from(vec![
                Some(1_795_255_100_000_000_000),
                None,
            ])),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    write_arrow_stream(&mut buf, &[batch.clone(), batch]).unwrap();
    let d = decode(Format::Arrow, &buf, &schema(), NOW).unwrap();
    assert_eq!(hosts(&d.batch), ["a", "b", "a", "b"]);
    assert_eq!(d.rows, [1, 2, 3, 4]);
    assert_eq!(
        ts(&d.batch),
        [1_795_255_100_000, NOW, 1_795_255_100_000, NOW]
    );
    assert!(decode(Format::Arrow, b"garbage", &schema(), NOW).is_err());
    assert!(decode(Format::Arrow, &buf[..buf.len() / 2], &schema(), NOW).is_err());
    // Compressed batches could declare any size: refused before anything is decompressed.
    let options = arrow::ipc::writer::IpcWriteOptions::default()
        .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
        .unwrap();
    let mut zipped = Vec::new();
    {
        let mut w =
            arrow::ipc::writer::StreamWriter::try_new_with_options(&mut zipped, &sent, options)
                .unwrap();
        w.write(&d_source(&sent)).unwrap();
        w.finish().unwrap();
    }
    let e = decode(Format::Arrow, &zipped, &schema(), NOW).unwrap_err();
    assert!(e.0.contains("compressed"), "{}", e.0);
}

/// A two-row batch of the schema `arrow_ipc_columns_are_matched_by_name_and_cast` sends.
fn d_source(sent: &Arc<Schema>) -> RecordBatch {
    RecordBatch::try_new(
        sent.clone(),
        vec![
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(TimestampNanosecondArray::from(vec![None, None])),
        ],
    )
    .unwrap()
}

#[test]
fn content_types() {
    assert_eq!(
        Format::from_content_type("application/json; charset=utf-8"),
        Some(Format::Json)
    );
    assert_eq!(
        Format::from_content_type("application/x-ndjson"),
        Some(Format::Ndjson)
    );
    assert_eq!(
        Format::from_content_type("text/plain"),
        Some(Format::Influx(Precision::Nanoseconds))
    );
    assert_eq!(
        Format::from_content_type("application/vnd.apache.arrow.stream"),
        Some(Format::Arrow)
    );
    assert_eq!(Format::from_content_type("image/png"), None);
}
