//! Producer -> simulated broker -> consumer over turmoil TCP, with faults.

mod common;

use common::*;
use soilstream::transport::{LogConsumer, LogProducer, OutboundRecord, ProduceError, StartOffset};
use soilstream_sim::broker::{BrokerHost, FlushPolicy};
use soilstream_sim::{ConsumerConfig, SimConsumer, SimProducer};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

#[test]
fn readings_reach_the_consumer_once_in_order_on_their_partitions() {
    let config = WorldConfig::new(1);
    let (mut sim, broker, ledger) = world(&config);
    sim.run().expect("simulation");
    let ledger = ledger.borrow();
    check_exactly_once_in_order(&config, &ledger);
    assert!(
        ledger.high_watermarks.iter().all(|hw| *hw > 0),
        "every partition used: {:?}",
        ledger.high_watermarks
    );
    let stats = broker.observer.with_core(|core| core.stats()).expect("broker up");
    assert_eq!(stats.records_appended, config.expected_readings() as u64);
    assert_eq!(stats.batches_deduplicated, 0);
    assert_eq!(ledger.producer_stats.expect("stats").request_retries, 0);
}

#[test]
fn lost_acks_are_retried_and_deduplicated() {
    let config = WorldConfig::new(2);
    let (mut sim, broker, ledger) = world(&config);
    broker
        .faults
        .update(|f| f.drop_ack_probability = 0.3)
        .expect("valid");
    sim.run().expect("simulation");
    let ledger = ledger.borrow();
    check_exactly_once_in_order(&config, &ledger);
    let dropped = broker.faults.stats().acks_dropped;
    let stats = broker.observer.with_core(|core| core.stats()).expect("broker up");
    assert!(dropped >= 2, "acks dropped: {dropped}");
    // Every batch of a request whose ack was lost is resent and deduplicated.
    assert!(
        stats.batches_deduplicated >= dropped,
        "resends were deduplicated: {stats:?}"
    );
    assert!(ledger.producer_stats.expect("stats").request_retries >= dropped);
    assert_eq!(
        stats.records_appended,
        config.expected_readings() as u64,
        "nothing appended twice"
    );
}

#[test]
fn request_errors_during_a_window_delay_but_lose_nothing() {
    let config = WorldConfig::new(3);
    let (mut sim, broker, ledger) = world(&config);
    broker
        .faults
        .update(|f| {
            f.error_window_ms = Some((200, 700));
            f.error_probability = 0.05;
        })
        .expect("valid");
    sim.run().expect("simulation");
    check_exactly_once_in_order(&config, &ledger.borrow());
    assert!(
        broker.faults.stats().errors_injected >= 3,
        "{:?}",
        broker.faults.stats()
    );
}

#[test]
fn a_broker_crash_mid_stream_loses_nothing_acknowledged() {
    let config = WorldConfig::new(4);
    let (mut sim, broker, ledger) = world(&config);
    let mut crashed = false;
    let mut restarted = false;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if !crashed && elapsed_ms >= 400 {
            sim.crash(BROKER);
            crashed = true;
        }
        if crashed && !restarted && elapsed_ms >= 900 {
            sim.bounce(BROKER);
            restarted = true;
        }
    });
    assert!(restarted);
    let ledger = ledger.borrow();
    check_exactly_once_in_order(&config, &ledger);
    assert_eq!(broker.observer.starts(), 2);
    let stats = broker.observer.with_core(|core| core.stats()).expect("broker up");
    assert!(
        stats.records_recovered > 0,
        "the restarted broker recovered its log: {stats:?}"
    );
    let producer = ledger.producer_stats.expect("stats");
    assert!(producer.request_retries > 0);
    assert!(producer.broker_up);
}

#[test]
fn a_partitioned_gateway_delivers_everything_in_order_after_repair() {
    let config = WorldConfig::new(5);
    let (mut sim, _broker, ledger) = world(&config);
    let mut phase = 0;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if phase == 0 && elapsed_ms >= 300 {
            sim.partition(GATEWAY, BROKER);
            phase = 1;
        } else if phase == 1 && elapsed_ms >= 2_300 {
            sim.repair(GATEWAY, BROKER);
            phase = 2;
        }
    });
    assert_eq!(phase, 2);
    let ledger = ledger.borrow();
    check_exactly_once_in_order(&config, &ledger);
    assert!(ledger.producer_stats.expect("stats").request_retries > 0);
}

#[test]
fn a_one_way_partition_loses_acks_but_not_records() {
    let config = WorldConfig::new(6);
    let (mut sim, broker, ledger) = world(&config);
    let mut phase = 0;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if phase == 0 && elapsed_ms >= 300 {
            // Requests arrive, responses do not.
            sim.partition_oneway(BROKER, GATEWAY);
            phase = 1;
        } else if phase == 1 && elapsed_ms >= 1_500 {
            sim.repair_oneway(BROKER, GATEWAY);
            phase = 2;
        }
    });
    check_exactly_once_in_order(&config, &ledger.borrow());
    let stats = broker.observer.with_core(|core| core.stats()).expect("broker up");
    assert!(stats.batches_deduplicated > 0, "{stats:?}");
}

#[test]
fn broker_disk_errors_are_never_acknowledged_and_lose_nothing() {
    let config = WorldConfig::new(9);
    let (mut sim, broker, ledger) = world(&config);
    let mut phase = 0;
    run_scripted(&mut sim, |_, elapsed_ms| {
        if phase == 0 && elapsed_ms >= 100 {
            broker
                .disk_faults
                .update(|d| {
                    d.write_error_probability = 0.1;
                    d.sync_error_probability = 0.1;
                })
                .expect("valid");
            phase = 1;
        } else if phase == 1 && elapsed_ms >= 1_500 {
            broker.disk_faults.heal();
            phase = 2;
        }
    });
    assert_eq!(phase, 2);
    check_exactly_once_in_order(&config, &ledger.borrow());
    let disk = broker.disk_faults.stats();
    assert!(disk.write_errors + disk.sync_errors >= 3, "{disk:?}");
    let stats = broker.observer.with_core(|core| core.stats()).expect("broker up");
    assert!(stats.storage_errors >= 3, "{stats:?}");
    assert!(
        stats.opens > u64::from(config.partitions) + 1,
        "failed partitions were reopened: {stats:?}"
    );
}

#[test]
fn a_stalled_broker_catches_up_without_duplicates() {
    let config = WorldConfig::new(10);
    let (mut sim, broker, ledger) = world(&config);
    let mut phase = 0;
    run_scripted(&mut sim, |_, elapsed_ms| {
        if phase == 0 && elapsed_ms >= 200 {
            // Longer than the producer's request timeout.
            broker
                .faults
                .update(|f| f.response_delay_ms = 500)
                .expect("valid");
            phase = 1;
        } else if phase == 1 && elapsed_ms >= 1_200 {
            broker.faults.heal();
            phase = 2;
        }
    });
    assert_eq!(phase, 2);
    let ledger = ledger.borrow();
    check_exactly_once_in_order(&config, &ledger);
    assert!(broker.faults.stats().requests_delayed > 0);
    assert!(ledger.producer_stats.expect("stats").request_retries > 0);
}

fn digest_of_faulty_run(seed: u64) -> u64 {
    let config = WorldConfig::new(seed);
    let (mut sim, broker, ledger) = world(&config);
    broker
        .faults
        .update(|f| {
            f.drop_ack_probability = 0.2;
            f.error_probability = 0.05;
        })
        .expect("valid");
    let mut crashed = false;
    let mut restarted = false;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if !crashed && elapsed_ms >= 350 {
            sim.crash(BROKER);
            crashed = true;
        }
        if crashed && !restarted && elapsed_ms >= 600 {
            sim.bounce(BROKER);
            restarted = true;
        }
    });
    let ledger = ledger.borrow();
    check_exactly_once_in_order(&config, &ledger);
    run_digest(&ledger, &broker)
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let first = digest_of_faulty_run(11);
    assert_eq!(first, digest_of_faulty_run(11));
    assert_ne!(first, digest_of_faulty_run(12), "the seed drives the run");
}

#[test]
fn never_flushing_loses_the_acknowledged_tail_on_a_broker_crash() {
    let mut config = WorldConfig::new(7);
    config.flush = FlushPolicy::Never;
    // Unsynced writes vanish whole: the acknowledged record is certainly lost.
    let mut sim = builder_atomic_writes(config.seed).build();
    let broker = BrokerHost::new(broker_config(&config), config.seed).expect("config");
    sim.host(BROKER, broker.software());
    let outcome = Rc::new(RefCell::new(Vec::new()));
    let seen = outcome.clone();
    sim.client(GATEWAY, async move {
        let record = |value: &str| OutboundRecord {
            topic: TOPIC.into(),
            key: b"sensor-1".to_vec(),
            partition: None,
            value: value.as_bytes().to_vec(),
            timestamp_ms: EPOCH_MS as i64,
            headers: vec![],
        };
        let producer = SimProducer::new(producer_config())?;
        let first = producer.enqueue(record("acked"))?.await;
        seen.borrow_mut().push(format!("first {first:?}"));
        // The broker loses power now (see the script) and comes back.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let second = producer.enqueue(record("after"))?.await;
        assert!(matches!(second, Err(ProduceError::Fatal(_))), "{second:?}");
        assert!(matches!(
            producer.enqueue(record("refused")),
            Err(ProduceError::Fatal(_))
        ));
        // A new session works.
        let fresh = SimProducer::new(producer_config())?;
        let third = fresh.enqueue(record("fresh"))?.await?;
        seen.borrow_mut().push(format!("third {}", third.offset));

        let mut consumer = SimConsumer::new(ConsumerConfig::new(BROKER, PORT))?;
        let partition = third.partition;
        consumer.assign(TOPIC, &[(partition, StartOffset::Beginning)])?;
        let records = consumer.poll(100).await?;
        let values: Vec<Vec<u8>> = records.into_iter().filter_map(|r| r.value).collect();
        assert_eq!(
            values,
            vec![b"fresh".to_vec()],
            "the acknowledged record was lost with the unsynced tail"
        );
        Ok(())
    });
    let mut crashed = false;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if !crashed && !outcome.borrow().is_empty() {
            sim.crash(BROKER);
            crashed = true;
        }
        if crashed && elapsed_ms >= 500 && !sim.is_host_running(BROKER) {
            sim.bounce(BROKER);
        }
    });
    let outcome = outcome.borrow();
    assert!(outcome[0].starts_with("first Ok"), "{outcome:?}");
    assert_eq!(outcome[1], "third 0");
}

#[test]
fn committed_group_offsets_survive_a_broker_restart() {
    let config = WorldConfig::new(8);
    let mut sim = builder(config.seed).build();
    let broker = BrokerHost::new(broker_config(&config), config.seed).expect("config");
    sim.host(BROKER, broker.software());
    let phase = Rc::new(RefCell::new(0));
    let client_phase = phase.clone();
    sim.client(CHECKER, async move {
        let producer = SimProducer::new(producer_config())?;
        let mut deliveries = Vec::new();
        for seq in 0..10_u32 {
            let record = OutboundRecord {
                topic: TOPIC.into(),
                key: key_of(3),
                partition: None,
                value: value_of((3, seq)),
                timestamp_ms: EPOCH_MS as i64,
                headers: vec![],
            };
            deliveries.push(producer.enqueue(record)?);
        }
        let mut partition = 0;
        for delivery in deliveries {
            partition = delivery.await?.partition;
        }
        let mut group_config = ConsumerConfig::new(BROKER, PORT);
        group_config.group_id = Some("archive".into());
        let mut consumer = SimConsumer::new(group_config.clone())?;
        consumer.assign(TOPIC, &[(partition, StartOffset::Committed)])?;
        let mut read = Vec::new();
        while read.len() < 4 {
            read.extend(consumer.poll(50).await?);
        }
        let next = read[3].offset + 1;
        consumer.commit(TOPIC, &[(partition, next)]).await?;
        *client_phase.borrow_mut() = 1;
        // The broker restarts here (see the script).
        while *client_phase.borrow() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut resumed = SimConsumer::new(group_config)?;
        resumed.assign(TOPIC, &[(partition, StartOffset::Committed)])?;
        let records = loop {
            match resumed.poll(50).await {
                Ok(records) if !records.is_empty() => break records,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert_eq!(records[0].offset, next, "resumed at the committed offset");
        Ok(())
    });
    run_scripted(&mut sim, |sim, _| {
        if *phase.borrow() == 1 {
            sim.crash(BROKER);
            sim.bounce(BROKER);
            *phase.borrow_mut() = 2;
        }
    });
    assert_eq!(*phase.borrow(), 2);
    assert_eq!(broker.observer.starts(), 2);
}

/// The fault-heavy run (lost acks, request errors, a broker crash with torn
/// writes) over many seeds. Not part of the default suite:
/// `SIM_SWEEP_SEEDS=500 cargo test -p soilstream-sim --test broker_world -- --ignored`.
#[test]
#[ignore = "seed sweep: run explicitly"]
fn seed_sweep_of_the_faulty_run() {
    let seeds: u64 = std::env::var("SIM_SWEEP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 0..seeds {
        let digest = std::panic::catch_unwind(|| digest_of_faulty_run(seed));
        assert!(digest.is_ok(), "faulty run with seed {seed} failed");
        let chaos = std::panic::catch_unwind(|| chaos_run(seed));
        assert!(chaos.is_ok(), "chaos run with seed {seed} failed");
    }
}

/// Every fault at once, at times drawn from the seed: lost acks, request
/// errors, broker disk errors, a client partition and a broker crash.
fn chaos_run(seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let config = WorldConfig::new(seed);
    let (mut sim, broker, ledger) = world(&config);
    broker
        .faults
        .update(|f| {
            f.drop_ack_probability = 0.1;
            f.error_probability = 0.05;
        })
        .expect("valid");
    broker
        .disk_faults
        .update(|d| {
            d.write_error_probability = 0.02;
            d.sync_error_probability = 0.02;
        })
        .expect("valid");
    let crash_ms = rng.random_range(50..1_200_u64);
    let bounce_ms = crash_ms + rng.random_range(1..800_u64);
    let partition_ms = rng.random_range(50..1_200_u64);
    let repair_ms = partition_ms + rng.random_range(1..1_500_u64);
    let heal_ms = 2_500;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        if elapsed_ms == crash_ms {
            sim.crash(BROKER);
        }
        if elapsed_ms == bounce_ms {
            sim.bounce(BROKER);
        }
        if elapsed_ms == partition_ms {
            sim.partition(GATEWAY, BROKER);
        }
        if elapsed_ms == repair_ms {
            sim.repair(GATEWAY, BROKER);
        }
        if elapsed_ms == heal_ms {
            broker.faults.heal();
            broker.disk_faults.heal();
        }
    });
    check_exactly_once_in_order(&config, &ledger.borrow());
}
