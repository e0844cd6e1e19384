//! The idempotent producer retrying through the fault proxy in front of a
//! real broker: cut, blackhole and latency, then restore. Needs `tansu`.

mod common;

use common::*;
use futures::FutureExt;
use soilstream::transport::kafka::KafkaProducer;
use soilstream::transport::{DeliveryFuture, LogProducer};
use soilstream_containers::{TansuBroker, TansuConfig};
use std::time::{Duration, Instant};

const TOPIC: &str = "soil-moisture-raw";

fn proxied_broker() -> TansuBroker {
    start_broker(
        TansuConfig::default()
            .topic(TOPIC, 3)
            .topic("other", 1)
            .with_proxy(),
    )
}

/// Waits (driving nothing else) until `condition` holds, up to `timeout_ms`.
async fn eventually(what: &str, timeout_ms: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout_ms} ms waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that none of `pending` completes during an observation window.
async fn assert_none_delivered_for(pending: &mut [DeliveryFuture], window_ms: u64) {
    tokio::time::sleep(Duration::from_millis(window_ms)).await;
    for future in pending.iter_mut() {
        if let Some(result) = future.now_or_never() {
            panic!("a record completed through a faulty link: {result:?}");
        }
    }
}

#[tokio::test]
async fn cut_then_restore_delivers_everything_once_and_in_order() {
    let broker = proxied_broker();
    let proxy = broker.proxy().expect("proxy");
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let before = readings(4, 10, 1);
    deliver_all(&producer, TOPIC, &before, 30_000).await;
    assert!(proxy.stats().bytes_to_target > 0, "clients go through the proxy");

    proxy.cut().unwrap();
    let during = readings(4, 25, 11);
    let mut pending: Vec<_> = during
        .iter()
        .map(|r| producer.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    eventually("the producer to see the broker down", 15_000, || {
        !producer.stats().broker_up
    })
    .await;
    assert_none_delivered_for(&mut pending, 1_000).await;
    assert!(
        proxy.stats().refused_connections > 0,
        "the producer kept reconnecting"
    );

    proxy.restore();
    for result in await_deliveries(pending, 60_000).await {
        result.expect("delivered after restore");
    }
    eventually("the producer to see the broker up", 15_000, || {
        producer.stats().broker_up
    })
    .await;
    let all: Vec<_> = before.iter().chain(&during).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 500).await;
    assert_eq!(records.len(), all.len());
    assert_exactly_once_in_order(&records, &all);
    assert_broker_healthy(&broker);
}

#[tokio::test]
async fn blackhole_then_restore_delivers_everything_once_and_counts_retries() {
    let broker = proxied_broker();
    let proxy = broker.proxy().expect("proxy");
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let before = readings(3, 5, 1);
    deliver_all(&producer, TOPIC, &before, 30_000).await;
    let retries_before = producer.stats().request_retries;

    proxy.blackhole();
    let during = readings(3, 20, 6);
    let mut pending: Vec<_> = during
        .iter()
        .map(|r| producer.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    eventually("the blackhole to swallow produce requests", 10_000, || {
        proxy.stats().bytes_swallowed > 0
    })
    .await;
    // Longer than socket.timeout.ms (3 s): requests time out and are retried
    // into the blackhole, still nothing completes.
    assert_none_delivered_for(&mut pending, 4_000).await;

    proxy.restore();
    for result in await_deliveries(pending, 60_000).await {
        result.expect("delivered after restore");
    }
    eventually("retries to show in the statistics", 10_000, || {
        producer.stats().request_retries > retries_before
    })
    .await;
    let all: Vec<_> = before.iter().chain(&during).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 500).await;
    assert_eq!(records.len(), all.len());
    assert_exactly_once_in_order(&records, &all);
    assert_broker_healthy(&broker);
}

#[tokio::test]
async fn latency_slows_delivery_without_breaking_it() {
    let broker = proxied_broker();
    let proxy = broker.proxy().expect("proxy");
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let warm = readings(1, 1, 1);
    let futures = warm
        .iter()
        .map(|r| producer.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    await_deliveries(futures, 30_000).await;

    proxy.set_latency_ms(300, 200);
    let slow = readings(2, 5, 2);
    let started = Instant::now();
    deliver_all(&producer, TOPIC, &slow, 30_000).await;
    let slow_ms = started.elapsed().as_millis();
    assert!(
        slow_ms >= 500,
        "acks took {slow_ms} ms through 300+200 ms of latency"
    );

    proxy.restore();
    let fast = readings(2, 5, 7);
    let started = Instant::now();
    deliver_all(&producer, TOPIC, &fast, 30_000).await;
    let fast_ms = started.elapsed().as_millis();
    assert!(fast_ms < 500, "acks took {fast_ms} ms after restore");

    let all: Vec<_> = warm.iter().chain(&slow).chain(&fast).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 300).await;
    assert_exactly_once_in_order(&records, &all);
    assert_broker_healthy(&broker);
}

/// A broker killed behind the proxy and restarted on the same port: the
/// producer created before the crash delivers everything it holds.
#[tokio::test]
async fn broker_kill9_behind_the_proxy_loses_nothing_acknowledged() {
    let mut broker = proxied_broker();
    let config = fast_config(&broker);
    let producer = KafkaProducer::new(&config).unwrap();
    let before = readings(3, 10, 1);
    deliver_all(&producer, TOPIC, &before, 30_000).await;
    broker.kill9().unwrap();
    let during = readings(3, 10, 11);
    let mut pending: Vec<_> = during
        .iter()
        .map(|r| producer.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    assert_none_delivered_for(&mut pending, 500).await;
    broker.restart().unwrap();
    for result in await_deliveries(pending, 60_000).await {
        result.expect("delivered after the broker came back");
    }
    let all: Vec<_> = before.iter().chain(&during).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 500).await;
    assert_exactly_once_in_order(&records, &all);
    assert_broker_healthy(&broker);
}

/// `message.timeout.ms=0` (soilstream's default, which cannot be
/// overridden) keeps records waiting through an outage, where a finite
/// timeout fails them. The finite case uses rdkafka directly, as
/// `KafkaProducer` refuses the setting.
#[tokio::test]
async fn infinite_message_timeout_waits_where_a_finite_one_gives_up() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = proxied_broker();
    let proxy = broker.proxy().expect("proxy");
    let config = fast_config(&broker);
    let patient = KafkaProducer::new(&config).unwrap();
    let impatient: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "1500")
        .create()
        .unwrap();
    let send_impatient = |seq: u64| {
        let record = record_for("other", &reading("probe-00", seq));
        impatient
            .send_result(
                FutureRecord::<[u8], [u8]>::to("other")
                    .key(&record.key[..])
                    .payload(&record.value[..]),
            )
            .map_err(|(e, _)| e)
            .unwrap()
    };
    let warm = readings(2, 1, 1);
    deliver_all(&patient, TOPIC, &warm, 30_000).await;
    send_impatient(1)
        .await
        .unwrap()
        .expect("delivered before the outage");

    proxy.cut().unwrap();
    let during = readings(2, 5, 2);
    let mut waiting: Vec<_> = during
        .iter()
        .map(|r| patient.enqueue(record_for(TOPIC, r)).unwrap())
        .collect();
    let given_up = tokio::time::timeout(Duration::from_secs(15), send_impatient(2))
        .await
        .expect("a finite message timeout reports within seconds")
        .unwrap();
    let (error, _) = given_up.expect_err("a finite timeout fails the record during the outage");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
    );
    // Longer than the finite timeout has passed; the patient records wait on.
    assert_none_delivered_for(&mut waiting, 1_500).await;
    // Do not produce with the impatient producer again: librdkafka bumped its
    // idempotent epoch locally, which makes Tansu 0.6.0's SQLite engine panic.
    drop(impatient);
    proxy.restore();
    for result in await_deliveries(waiting, 60_000).await {
        result.expect("delivered after restore");
    }
    let all: Vec<_> = warm.iter().chain(&during).cloned().collect();
    let records = consume_all(&config, TOPIC, all.len(), 30_000, 300).await;
    assert_exactly_once_in_order(&records, &all);
    assert_broker_healthy(&broker);
}
