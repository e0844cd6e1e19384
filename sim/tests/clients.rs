//! Limits and error reporting of the simulated clients.

mod common;

use common::*;
use soilstream::transport::{
    ConsumeError, LogConsumer, LogProducer, OutboundRecord, ProduceError, StartOffset,
};
use soilstream_sim::broker::BrokerHost;
use soilstream_sim::{ConsumerConfig, SimConsumer, SimProducer};
use std::time::Duration;

fn record(topic: &str, value_bytes: usize) -> OutboundRecord {
    OutboundRecord {
        topic: topic.into(),
        key: b"sensor-1".to_vec(),
        partition: None,
        value: vec![7; value_bytes],
        timestamp_ms: EPOCH_MS as i64,
        headers: vec![],
    }
}

#[test]
fn the_producer_queue_is_bounded_and_reports_why_records_fail() {
    let config = WorldConfig::new(21);
    let mut sim = builder(config.seed).build();
    let broker = BrokerHost::new(broker_config(&config), config.seed).expect("config");
    sim.host(BROKER, broker.software());
    sim.client(GATEWAY, async move {
        let mut producer_config = producer_config();
        producer_config.max_queue_records = 3;
        producer_config.max_record_bytes = 1_000;
        let producer = SimProducer::new(producer_config)?;
        let too_large = producer.enqueue(record(TOPIC, 2_000));
        assert!(matches!(too_large, Err(ProduceError::Delivery(_))));
        let unknown = producer.enqueue(record("no-such-topic", 10))?;
        let first = producer.enqueue(record(TOPIC, 10))?;
        let second = producer.enqueue(record(TOPIC, 10))?;
        assert!(matches!(
            producer.enqueue(record(TOPIC, 10)),
            Err(ProduceError::QueueFull)
        ));
        assert_eq!(producer.unacked_records(), 3);
        assert!(matches!(unknown.await, Err(ProduceError::Delivery(_))));
        let first = first.await?;
        let second = second.await?;
        assert_eq!(second.offset, first.offset + 1);
        assert_eq!(producer.unacked_records(), 0);
        assert!(producer.stats().broker_up);
        // Room again.
        producer.enqueue(record(TOPIC, 10))?.await?;
        Ok(())
    });
    sim.run().expect("simulation");
}

#[test]
fn the_producer_retries_until_the_broker_starts() {
    let config = WorldConfig::new(22);
    let mut sim = builder(config.seed).build();
    let broker = BrokerHost::new(broker_config(&config), config.seed).expect("config");
    sim.host(BROKER, broker.software());
    sim.crash(BROKER);
    sim.client(GATEWAY, async move {
        let producer = SimProducer::new(producer_config())?;
        let delivery = producer.enqueue(record(TOPIC, 10))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!producer.stats().broker_up);
        let position = delivery.await?;
        assert_eq!(position.offset, 0);
        assert!(producer.stats().broker_up);
        Ok(())
    });
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if elapsed_ms == 1_000 {
            sim.bounce(BROKER);
        }
    });
    assert_eq!(broker.observer.starts(), 1);
}

#[test]
fn consumer_errors_are_reported_not_hidden() {
    let config = WorldConfig::new(23);
    let mut sim = builder(config.seed).build();
    let broker = BrokerHost::new(broker_config(&config), config.seed).expect("config");
    sim.host(BROKER, broker.software());
    sim.client(CHECKER, async move {
        let mut consumer = SimConsumer::new(ConsumerConfig::new(BROKER, PORT))?;
        assert_eq!(
            consumer.partition_count("no-such-topic").await,
            Err(ConsumeError::UnknownTopic("no-such-topic".into()))
        );
        assert_eq!(consumer.partition_count(TOPIC).await, Ok(config.partitions));
        assert_eq!(consumer.watermarks(TOPIC, 0).await, Ok((0, 0)));
        assert!(matches!(
            consumer.assign(TOPIC, &[(0, StartOffset::Committed)]),
            Err(ConsumeError::Other(_))
        ));
        assert!(matches!(
            consumer.assign(TOPIC, &[(0, StartOffset::End), (0, StartOffset::Beginning)]),
            Err(ConsumeError::Other(_))
        ));
        assert!(matches!(
            consumer.commit(TOPIC, &[(0, 1)]).await,
            Err(ConsumeError::Other(_))
        ));
        consumer.assign(TOPIC, &[(0, StartOffset::End)])?;
        assert!(consumer.poll(20).await?.is_empty());
        assert_eq!(consumer.position(0), Some(0));
        // The broker goes away (see the script): calls fail in bounded time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = now_ms();
        assert!(matches!(
            consumer.watermarks(TOPIC, 0).await,
            Err(ConsumeError::Unavailable(_))
        ));
        assert!(now_ms() - started <= 1_100);
        assert!(matches!(
            consumer.poll(20).await,
            Err(ConsumeError::Unavailable(_))
        ));
        Ok(())
    });
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if elapsed_ms == 150 {
            sim.partition(CHECKER, BROKER);
        }
    });
}

#[test]
fn garbage_on_the_wire_closes_that_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = WorldConfig::new(24);
    let mut sim = builder(config.seed).build();
    let broker = BrokerHost::new(broker_config(&config), config.seed).expect("config");
    sim.host(BROKER, broker.software());
    sim.client(CHECKER, async move {
        for garbage in [
            vec![0xff_u8; 64],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0, 0, 0, 9, 1, 2, 3, 4, 5],
        ] {
            let mut stream = turmoil::net::TcpStream::connect((BROKER, PORT)).await?;
            stream.write_all(&garbage).await?;
            let mut buf = [0_u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
            // Either the broker closes the stream, or it waits for the rest
            // of a frame that never comes; it never answers garbage.
            if let Ok(Ok(n)) = read {
                assert_eq!(n, 0, "the broker answered garbage");
            }
        }
        let consumer = SimConsumer::new(ConsumerConfig::new(BROKER, PORT))?;
        assert_eq!(consumer.partition_count(TOPIC).await, Ok(config.partitions));
        Ok(())
    });
    sim.run().expect("simulation");
    assert_eq!(broker.observer.starts(), 1, "the broker did not restart");
}
