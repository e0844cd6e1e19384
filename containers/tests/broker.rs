//! The Tansu fixture and the rdkafka transport against it: lifecycle,
//! durability across kill -9, timestamps, headers, partitioning, commits,
//! pause/resume. Needs the `tansu` binary (see `TANSU_INSTALL_HINT`).

mod common;

use common::*;
use futures::FutureExt;
use soilstream::transport::kafka::{KafkaConsumer, KafkaProducer, ensure_topics};
use soilstream::transport::{LogConsumer, LogProducer, OutboundRecord, StartOffset, partition_for_key};
use soilstream_containers::{TansuConfig, TansuStorage};
use std::collections::BTreeMap;
use std::time::Duration;

const TOPIC: &str = "soil-moisture-raw";

#[tokio::test]
async fn acked_records_survive_kill9_and_the_same_producer_resumes_after_restart() {
    let mut broker = start_broker(TansuConfig::default().topic(TOPIC, 3));
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let first = readings(8, 25, 1);
    let positions = deliver_all(&producer, TOPIC, &first, 30_000).await;
    assert!(producer.stats().broker_up);

    let before = consume_all(&config, TOPIC, first.len(), 30_000, 300).await;
    assert_exactly_once_in_order(&before, &first);
    // Each delivery report names where the record really is.
    for (reading, position) in first.iter().zip(&positions) {
        let record = before
            .iter()
            .find(|c| c.partition == position.partition && c.offset == position.offset)
            .expect("record at the reported position");
        assert_eq!(record.header("seq"), Some(reading.seq.to_string().as_bytes()));
        assert_eq!(record.key.as_deref(), Some(reading.sensor_id.as_bytes()));
    }

    broker.kill9().unwrap();
    assert!(!broker.is_running());
    broker.restart().unwrap();

    let after = consume_all(&config, TOPIC, first.len(), 30_000, 300).await;
    assert_exactly_once_in_order(&after, &first);
    let offsets = |records: &[soilstream::transport::ConsumedRecord]| {
        let mut v: Vec<_> = records.iter().map(|r| (r.partition, r.offset)).collect();
        v.sort();
        v
    };
    assert_eq!(
        offsets(&after),
        offsets(&before),
        "same records at the same offsets"
    );

    // The producer created before the crash reconnects on its own.
    let second = readings(8, 5, 26);
    deliver_all(&producer, TOPIC, &second, 60_000).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 300).await;
    assert_exactly_once_in_order(&records, &all);

    let consumer = KafkaConsumer::new(&config, "watermark-reader").unwrap();
    let mut total = 0;
    for partition in 0..3 {
        let (low, high) = consumer.watermarks(TOPIC, partition).await.unwrap();
        assert_eq!(low, 0);
        total += high - low;
    }
    assert_eq!(total as usize, all.len());
    assert_broker_healthy(&broker);
}

#[tokio::test]
async fn sigterm_stop_and_restart_keep_data_and_port() {
    let mut broker = start_broker(TansuConfig::default().topic(TOPIC, 2));
    let config = fast_config(&broker);
    let addr = broker.broker_addr();
    let producer = KafkaProducer::new(&config).unwrap();
    let batch = readings(2, 10, 1);
    deliver_all(&producer, TOPIC, &batch, 30_000).await;
    let termination = broker.stop().unwrap();
    eprintln!("tansu stop: {termination:?}");
    assert!(!broker.is_running());
    assert!(broker.pause().is_err(), "a stopped broker cannot be paused");
    broker.restart().unwrap();
    assert_eq!(broker.broker_addr(), addr);
    assert!(
        broker.restart().is_err(),
        "restarting a running broker is refused"
    );
    let records = consume_all(&config, TOPIC, batch.len(), 30_000, 200).await;
    assert_exactly_once_in_order(&records, &batch);
    assert_broker_healthy(&broker);
}

/// The memory engine serves the same clients; a restart brings its topics
/// back empty (what the storage option documents), and they take records
/// again.
#[tokio::test]
async fn a_memory_broker_restarts_with_its_topics_empty() {
    let mut broker = start_broker(
        TansuConfig::default()
            .topic(TOPIC, 2)
            .storage(TansuStorage::Memory),
    );
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let batch = readings(2, 10, 1);
    deliver_all(&producer, TOPIC, &batch, 30_000).await;
    let records = consume_all(&config, TOPIC, batch.len(), 30_000, 200).await;
    assert_exactly_once_in_order(&records, &batch);
    assert!(
        !broker.data_dir().join("tansu.db").exists(),
        "the memory engine writes no database"
    );

    broker.kill9().unwrap();
    broker.restart().unwrap();
    let consumer = KafkaConsumer::new(&config, "memory-watermarks").unwrap();
    for partition in 0..2 {
        assert_eq!(
            consumer.watermarks(TOPIC, partition).await.unwrap(),
            (0, 0),
            "partition {partition} after a restart of a memory broker"
        );
    }
    let fresh = KafkaProducer::new(&config).unwrap();
    let again = readings(2, 3, 1);
    deliver_all(&fresh, TOPIC, &again, 30_000).await;
    let records = consume_all(&config, TOPIC, again.len(), 30_000, 200).await;
    assert_exactly_once_in_order(&records, &again);
    assert_broker_healthy(&broker);
}

/// The partition rdkafka's `murmur2_random` picks equals
/// `partition_for_key`, so the simulator and the real world agree.
#[tokio::test]
async fn rdkafka_partitioner_matches_partition_for_key() {
    let counts = [1u32, 3, 7, 12];
    let mut config = TansuConfig::default();
    for n in counts {
        config = config.topic(format!("keys-{n}"), n);
    }
    let broker = start_broker(config);
    let producer = KafkaProducer::new(&fast_config(&broker)).unwrap();
    let mut keys: Vec<Vec<u8>> = (0..150).map(|i| format!("probe-{i}").into_bytes()).collect();
    keys.push("sonde-äöü-🌱".as_bytes().to_vec());
    keys.push(vec![0xff, 0x00, 0x7f]);
    keys.push(vec![b'k'; 300]);
    let mut expected = Vec::new();
    let mut futures = Vec::new();
    for n in counts {
        for key in &keys {
            let record = OutboundRecord {
                topic: format!("keys-{n}"),
                key: key.clone(),
                partition: None,
                value: b"v".to_vec(),
                timestamp_ms: 1_700_000_000_000,
                headers: vec![],
            };
            futures.push(producer.enqueue(record).unwrap());
            expected.push(partition_for_key(key, n));
        }
    }
    let results = await_deliveries(futures, 30_000).await;
    let mut distinct = BTreeMap::new();
    for (result, want) in results.into_iter().zip(expected) {
        let position = result.unwrap();
        assert_eq!(position.partition, want);
        distinct.insert(want, ());
    }
    assert!(
        distinct.len() >= 12,
        "keys spread over every partition of keys-12"
    );
    assert_broker_healthy(&broker);
}

#[tokio::test]
async fn committed_offsets_are_where_a_group_resumes() {
    let broker = start_broker(TansuConfig::default().topic(TOPIC, 1));
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let batch = readings(1, 10, 1);
    deliver_all(&producer, TOPIC, &batch, 30_000).await;
    let mut consumer = KafkaConsumer::new(&config, "resume-group").unwrap();
    consumer.assign(TOPIC, &[(0, StartOffset::Committed)]).unwrap();
    let first = poll_until(&mut consumer, 1).await;
    assert_eq!(first[0].offset, 0, "no commit yet: from the beginning");
    consumer.commit(TOPIC, &[(0, 6)]).await.unwrap();
    drop(consumer);
    let mut resumed = KafkaConsumer::new(&config, "resume-group").unwrap();
    resumed.assign(TOPIC, &[(0, StartOffset::Committed)]).unwrap();
    let records = poll_until(&mut resumed, 4).await;
    assert_eq!(records[0].offset, 6);
    assert_eq!(records.last().map(|r| r.offset), Some(9));
    let mut explicit = KafkaConsumer::new(&config, "other-group").unwrap();
    explicit.assign(TOPIC, &[(0, StartOffset::Offset(8))]).unwrap();
    assert_eq!(poll_until(&mut explicit, 2).await[0].offset, 8);
    assert_broker_healthy(&broker);
}

async fn poll_until(consumer: &mut KafkaConsumer, n: usize) -> Vec<soilstream::transport::ConsumedRecord> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records",
            out.len()
        );
        out.extend(consumer.poll(200).await.unwrap());
    }
    out
}

#[tokio::test]
async fn unknown_topics_and_existing_topics_are_reported() {
    let broker = start_broker(TansuConfig::default().topic(TOPIC, 2));
    let config = fast_config(&broker);
    let consumer = KafkaConsumer::new(&config, "g").unwrap();
    assert_eq!(consumer.partition_count(TOPIC).await, Ok(2));
    assert!(matches!(
        consumer.partition_count("no-such-topic").await,
        Err(soilstream::transport::ConsumeError::UnknownTopic(_))
    ));
    // Existing with the same count: fine; with another count: an error.
    ensure_topics(
        &config.bootstrap_servers,
        &config.properties,
        &[(TOPIC, 2), ("fresh", 4)],
    )
    .await
    .unwrap();
    assert_eq!(consumer.partition_count("fresh").await, Ok(4));
    let mismatch = ensure_topics(&config.bootstrap_servers, &config.properties, &[(TOPIC, 5)]).await;
    assert!(mismatch.unwrap_err().to_string().contains("expected 5"));
    assert_broker_healthy(&broker);
}

#[tokio::test]
async fn a_paused_broker_delays_delivery_and_resume_completes_it() {
    let mut broker = start_broker(TansuConfig::default().topic(TOPIC, 2));
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let warm = readings(2, 1, 1);
    let futures = warm
        .iter()
        .map(|r| producer.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    await_deliveries(futures, 30_000).await;

    broker.pause().unwrap();
    let paused = readings(2, 10, 2);
    let mut pending: Vec<_> = paused
        .iter()
        .map(|r| producer.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    // Observation window: nothing may be acknowledged while frozen.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for future in &mut pending {
        assert!(future.now_or_never().is_none(), "acknowledged by a paused broker");
    }
    broker.resume().unwrap();
    for result in await_deliveries(pending, 60_000).await {
        result.expect("delivered after resume");
    }
    let all: Vec<_> = warm.iter().chain(&paused).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 300).await;
    assert_exactly_once_in_order(&records, &all);
    assert_broker_healthy(&broker);
}
