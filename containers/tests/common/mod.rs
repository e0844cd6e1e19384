//! Helpers shared by the suites that run against a real broker.

#![allow(dead_code)] // each test crate uses a different subset

use futures::future::join_all;
use soilstream::codec::{ReadingCodec, to_wire};
use soilstream::model::Reading;
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer};
use soilstream::transport::{
    ConsumedRecord, DeliveryFuture, LogConsumer, LogProducer, OutboundRecord, ProduceError, RecordPosition,
    StartOffset,
};
use soilstream_containers::{FixtureError, TansuBroker, TansuConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Schema id written into test values (no registry involved here).
pub const SCHEMA_ID: u32 = 1;

/// Starts a broker or fails the test with instructions (never skips).
pub fn start_broker(config: TansuConfig) -> TansuBroker {
    init_tracing();
    match TansuBroker::start(config) {
        Ok(broker) => broker,
        Err(error @ FixtureError::TansuMissing { .. }) => {
            panic!("these tests need the Tansu broker: {error}")
        }
        Err(error) => panic!("could not start the Tansu broker: {error}"),
    }
}

/// Fails the test if the broker logged a panic (Tansu keeps running after a
/// panic in a request handler, answering errors from then on).
pub fn assert_broker_healthy(broker: &TansuBroker) {
    let panics = broker.panics_in_log();
    assert!(
        panics.is_empty(),
        "the broker panicked: {panics:?}\n{}",
        broker.log_tail(4_000)
    );
}

/// Logs to the test output when `SOILSTREAM_LOG` is set (e.g. `debug`).
pub fn init_tracing() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SOILSTREAM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// The broker's client settings, made [`fast`].
pub fn fast_config(broker: &TansuBroker) -> KafkaClientConfig {
    fast(broker.client_config())
}

/// Client settings that notice dead connections within seconds, so fault
/// tests stay short.
pub fn fast(config: KafkaClientConfig) -> KafkaClientConfig {
    config
        .with_property("socket.timeout.ms", "3000")
        .with_property("request.timeout.ms", "2000")
        .with_property("socket.connection.setup.timeout.ms", "3000")
        .with_property("reconnect.backoff.max.ms", "500")
        .with_property("retry.backoff.max.ms", "500")
        .with_property("statistics.interval.ms", "200")
}

/// A plausible reading of `sensor` number `seq`, event time one minute apart.
pub fn reading(sensor: &str, seq: u64) -> Reading {
    Reading {
        gateway_id: "gw-real".into(),
        sensor_id: sensor.into(),
        seq,
        event_time_ms: 1_700_000_000_000 + seq as i64 * 60_000,
        moisture_vwc: 0.20 + (seq % 10) as f64 / 100.0,
        soil_temp_c: Some(12.5),
        bulk_ec_ds_m: Some(0.3),
        depth_cm: 20,
        battery_v: Some(3.6),
        source_flag: None,
    }
}

/// The record a gateway sends for `reading`.
pub fn record_for(topic: &str, reading: &Reading) -> OutboundRecord {
    let body = ReadingCodec::v1()
        .encode_body(reading)
        .expect("test readings encode");
    OutboundRecord {
        topic: topic.into(),
        key: reading.sensor_id.clone().into_bytes(),
        partition: None,
        value: to_wire(SCHEMA_ID, &body),
        timestamp_ms: reading.event_time_ms,
        headers: vec![
            ("gateway_id".into(), reading.gateway_id.clone().into_bytes()),
            ("seq".into(), reading.seq.to_string().into_bytes()),
        ],
    }
}

/// Readings of `sensors` sensors, `per_sensor` each, interleaved by seq,
/// starting at `first_seq`.
pub fn readings(sensors: usize, per_sensor: u64, first_seq: u64) -> Vec<Reading> {
    let mut out = Vec::new();
    for seq in first_seq..first_seq + per_sensor {
        for s in 0..sensors {
            out.push(reading(&format!("probe-{s:02}"), seq));
        }
    }
    out
}

/// Awaits every delivery future, failing the test after `timeout_ms`.
pub async fn await_deliveries(
    futures: Vec<DeliveryFuture>,
    timeout_ms: u64,
) -> Vec<Result<RecordPosition, ProduceError>> {
    tokio::time::timeout(Duration::from_millis(timeout_ms), join_all(futures))
        .await
        .unwrap_or_else(|_| panic!("deliveries not reported within {timeout_ms} ms"))
}

/// Enqueues `readings` to `topic` and awaits every delivery report,
/// failing the test on an error or after `timeout_ms`; returns where each
/// record landed, in order.
pub async fn deliver_all(
    producer: &dyn LogProducer,
    topic: &str,
    readings: &[Reading],
    timeout_ms: u64,
) -> Vec<RecordPosition> {
    let futures = readings
        .iter()
        .map(|r| {
            producer
                .enqueue(record_for(topic, r))
                .unwrap_or_else(|e| panic!("enqueuing {}/{}: {e}", r.sensor_id, r.seq))
        })
        .collect();
    await_deliveries(futures, timeout_ms)
        .await
        .into_iter()
        .zip(readings)
        .map(|(result, r)| result.unwrap_or_else(|e| panic!("delivering {}/{}: {e}", r.sensor_id, r.seq)))
        .collect()
}

/// Reads every partition of `topic` from the beginning until `expected`
/// records arrived (or `timeout_ms` passed: then returns what it has). Goes
/// on reading for `settle_ms` after that, so extra copies are seen too.
pub async fn consume_all(
    config: &KafkaClientConfig,
    topic: &str,
    expected: usize,
    timeout_ms: u64,
    settle_ms: u64,
) -> Vec<ConsumedRecord> {
    let mut consumer = KafkaConsumer::new(config, "soilstream-test-reader").expect("consumer");
    let partitions = consumer.partition_count(topic).await.expect("partition count");
    let starts: Vec<(i32, StartOffset)> = (0..partitions as i32)
        .map(|p| (p, StartOffset::Beginning))
        .collect();
    consumer.assign(topic, &starts).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut settle_deadline = None;
    loop {
        let now = Instant::now();
        if now >= deadline || settle_deadline.is_some_and(|d| now >= d) {
            break;
        }
        match consumer.poll(100).await {
            Ok(batch) => records.extend(batch),
            Err(error) => tracing::warn!(%error, "poll"),
        }
        if records.len() >= expected && settle_deadline.is_none() {
            settle_deadline = Some(Instant::now() + Duration::from_millis(settle_ms));
        }
    }
    records
}

/// Checks that `records` hold each of `readings` exactly once, with
/// timestamp = event time (CreateTime), headers and value intact, and each
/// sensor's readings in seq order by offset.
pub fn assert_exactly_once_in_order(records: &[ConsumedRecord], readings: &[Reading]) {
    let codec = ReadingCodec::v1();
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<&ConsumedRecord>> = BTreeMap::new();
    for record in records {
        let value = record.value.as_deref().expect("value");
        let (schema_id, body) = soilstream::codec::from_wire(value).expect("wire format");
        assert_eq!(schema_id, SCHEMA_ID);
        let decoded = codec.decode_body(body).expect("decodes");
        assert_eq!(
            record.timestamp_ms, decoded.event_time_ms,
            "timestamp = event time"
        );
        assert_eq!(
            record.timestamp_kind,
            soilstream::transport::TimestampKind::CreateTime
        );
        assert_eq!(record.key.as_deref(), Some(decoded.sensor_id.as_bytes()));
        assert_eq!(record.header("gateway_id"), Some(decoded.gateway_id.as_bytes()));
        assert_eq!(record.header("seq"), Some(decoded.seq.to_string().as_bytes()));
        *seen.entry((decoded.sensor_id.clone(), decoded.seq)).or_default() += 1;
        by_partition.entry(record.partition).or_default().push(record);
        let expected = readings
            .iter()
            .find(|r| r.sensor_id == decoded.sensor_id && r.seq == decoded.seq)
            .unwrap_or_else(|| panic!("unexpected reading {decoded:?}"));
        assert_eq!(&decoded, expected, "values intact");
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    let missing: Vec<_> = readings
        .iter()
        .filter(|r| !seen.contains_key(&(r.sensor_id.clone(), r.seq)))
        .map(|r| (r.sensor_id.clone(), r.seq))
        .collect();
    assert!(
        missing.is_empty(),
        "missing {} readings, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    for (partition, mut list) in by_partition {
        list.sort_by_key(|r| r.offset);
        let mut last_seq: BTreeMap<&[u8], u64> = BTreeMap::new();
        for record in list {
            let seq: u64 = std::str::from_utf8(record.header("seq").unwrap_or_default())
                .unwrap_or_default()
                .parse()
                .expect("seq header");
            let key = record.key.as_deref().unwrap_or_default();
            if let Some(previous) = last_seq.insert(key, seq) {
                assert!(
                    seq > previous,
                    "partition {partition}: seq {seq} after {previous} for {key:?}"
                );
            }
        }
    }
}
