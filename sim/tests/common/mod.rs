//! A small world for the integration tests: a broker host, a gateway client
//! producing readings and a checker client reading them all back.

#![allow(dead_code)]

use soilstream::transport::{
    ConsumedRecord, LogConsumer, LogProducer, OutboundRecord, ProduceError, ProducerStats, RecordPosition,
    StartOffset, partition_for_key,
};
use soilstream_sim::broker::{BrokerConfig, BrokerHost, FlushPolicy, TopicConfig};
use soilstream_sim::digest::Digest;
use soilstream_sim::{ConsumerConfig, ProducerConfig, SimConsumer, SimProducer};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

pub const TOPIC: &str = "soil-moisture-raw";
pub const BROKER: &str = "broker";
pub const GATEWAY: &str = "gateway";
pub const CHECKER: &str = "checker";
pub const PORT: u16 = 9092;
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub seed: u64,
    pub partitions: u32,
    pub sensors: u32,
    pub readings_per_sensor: u32,
    pub interval_ms: u64,
    pub flush: FlushPolicy,
}

impl WorldConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            partitions: 4,
            sensors: 12,
            readings_per_sensor: 40,
            interval_ms: 25,
            flush: FlushPolicy::EveryBatch,
        }
    }

    pub fn expected_readings(&self) -> usize {
        (self.sensors * self.readings_per_sensor) as usize
    }
}

/// (sensor, seq)
pub type Reading = (u32, u32);

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Ledger {
    pub acked: Vec<(Reading, Result<RecordPosition, ProduceError>)>,
    pub producer_stats: Option<ProducerStats>,
    pub producer_done: bool,
    pub consumed: Vec<ConsumedRecord>,
    pub high_watermarks: Vec<i64>,
    pub checker_done_ms: u64,
}

pub fn key_of(sensor: u32) -> Vec<u8> {
    format!("sensor-{sensor:03}").into_bytes()
}

pub fn value_of((sensor, seq): Reading) -> Vec<u8> {
    format!("{sensor}:{seq}").into_bytes()
}

pub fn parse_value(value: &[u8]) -> Reading {
    let text = std::str::from_utf8(value).expect("utf-8 value");
    let (sensor, seq) = text.split_once(':').expect("sensor:seq");
    (sensor.parse().expect("sensor"), seq.parse().expect("seq"))
}

pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// A builder whose crashes lose unsynced writes whole or keep whole 512-byte
/// blocks of them (torn writes).
pub fn builder(seed: u64) -> turmoil::Builder {
    let mut builder = builder_atomic_writes(seed);
    builder.fs().block_size(512);
    builder
}

/// A builder whose crashes lose every unsynced write whole.
pub fn builder_atomic_writes(seed: u64) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .simulation_duration(Duration::from_secs(600));
    builder
}

pub fn broker_config(world: &WorldConfig) -> BrokerConfig {
    let mut config = BrokerConfig::new(vec![TopicConfig {
        name: TOPIC.into(),
        partitions: world.partitions,
    }]);
    config.port = PORT;
    config.flush = world.flush;
    config.segment_max_bytes = 4 * 1024; // exercise segment rolls
    config
}

pub fn producer_config() -> ProducerConfig {
    let mut config = ProducerConfig::new(BROKER, PORT);
    config.request_timeout_ms = 300;
    config.connect_timeout_ms = 300;
    config.retry_backoff_ms = 20;
    config.retry_backoff_max_ms = 200;
    config.max_batch_records = 8;
    config
}

/// Registers the broker host and both clients.
pub fn world<'a>(world: &WorldConfig) -> (turmoil::Sim<'a>, BrokerHost, Rc<RefCell<Ledger>>) {
    let mut sim = builder(world.seed).build();
    let broker = BrokerHost::new(broker_config(world), world.seed).expect("valid broker config");
    sim.host(BROKER, broker.software());
    let ledger = Rc::new(RefCell::new(Ledger::default()));
    sim.client(GATEWAY, gateway(world.clone(), ledger.clone()));
    sim.client(CHECKER, checker(world.clone(), ledger.clone()));
    (sim, broker, ledger)
}

async fn gateway(world: WorldConfig, ledger: Rc<RefCell<Ledger>>) -> turmoil::Result {
    let producer = SimProducer::new(producer_config())?;
    let mut pending = Vec::new();
    for seq in 0..world.readings_per_sensor {
        for sensor in 0..world.sensors {
            let record = OutboundRecord {
                topic: TOPIC.into(),
                key: key_of(sensor),
                partition: None,
                value: value_of((sensor, seq)),
                timestamp_ms: (EPOCH_MS + u64::from(seq) * 60_000) as i64,
                headers: vec![("seq".into(), seq.to_be_bytes().to_vec())],
            };
            pending.push(((sensor, seq), producer.enqueue(record)?));
        }
        tokio::time::sleep(Duration::from_millis(world.interval_ms)).await;
    }
    for (reading, delivery) in pending {
        let result = delivery.await;
        ledger.borrow_mut().acked.push((reading, result));
    }
    let mut ledger = ledger.borrow_mut();
    ledger.producer_stats = Some(producer.stats());
    ledger.producer_done = true;
    Ok(())
}

async fn retry<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut op: impl FnMut() -> F,
) -> T {
    loop {
        match op().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::debug!(?error, "checker retry");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn checker(world: WorldConfig, ledger: Rc<RefCell<Ledger>>) -> turmoil::Result {
    while !ledger.borrow().producer_done {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut consumer = SimConsumer::new(ConsumerConfig::new(BROKER, PORT))?;
    let partitions = retry(|| consumer.partition_count(TOPIC)).await;
    assert_eq!(partitions, world.partitions);
    let mut high_watermarks = Vec::new();
    for partition in 0..partitions as i32 {
        let (low, high) = retry(|| consumer.watermarks(TOPIC, partition)).await;
        assert_eq!(low, 0);
        high_watermarks.push(high);
    }
    let starts: Vec<(i32, StartOffset)> = (0..partitions as i32)
        .map(|p| (p, StartOffset::Beginning))
        .collect();
    consumer.assign(TOPIC, &starts)?;
    let mut consumed = Vec::new();
    loop {
        let caught_up = (0..partitions as i32).all(|p| {
            consumer
                .position(p)
                .is_some_and(|pos| pos >= high_watermarks[p as usize])
        });
        if caught_up {
            break;
        }
        match consumer.poll(100).await {
            Ok(records) => consumed.extend(records),
            Err(error) => {
                tracing::debug!(?error, "poll failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut ledger = ledger.borrow_mut();
    ledger.consumed = consumed;
    ledger.high_watermarks = high_watermarks;
    ledger.checker_done_ms = now_ms();
    Ok(())
}

/// Steps the simulation until every client is done, calling `script` with
/// the simulated time (ms) after each step.
pub fn run_scripted(sim: &mut turmoil::Sim<'_>, mut script: impl FnMut(&mut turmoil::Sim<'_>, u64)) {
    loop {
        let done = sim.step().expect("simulation step");
        if done {
            return;
        }
        let elapsed_ms = sim.elapsed().as_millis() as u64;
        script(sim, elapsed_ms);
    }
}

/// The invariants every test relies on: each acknowledged reading is in the
/// log exactly once, at its acknowledged position, on its key's partition,
/// and per-partition offsets and per-sensor sequences are in order.
pub fn check_exactly_once_in_order(world: &WorldConfig, ledger: &Ledger) {
    assert_eq!(ledger.acked.len(), world.expected_readings());
    let mut by_position = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut next_offset = vec![0_i64; world.partitions as usize];
    let mut last_seq: BTreeMap<u32, u32> = BTreeMap::new();
    for record in &ledger.consumed {
        let partition = record.partition as usize;
        assert_eq!(record.offset, next_offset[partition], "offsets are consecutive");
        next_offset[partition] += 1;
        let reading = parse_value(record.value.as_deref().expect("value"));
        assert!(seen.insert(reading), "duplicate {reading:?}");
        assert_eq!(record.key.as_deref(), Some(key_of(reading.0).as_slice()));
        assert_eq!(
            record.partition,
            partition_for_key(&key_of(reading.0), world.partitions)
        );
        assert_eq!(
            record.timestamp_ms,
            (EPOCH_MS + u64::from(reading.1) * 60_000) as i64
        );
        assert_eq!(record.header("seq"), Some(reading.1.to_be_bytes().as_slice()));
        if let Some(previous) = last_seq.insert(reading.0, reading.1) {
            assert!(
                previous < reading.1,
                "sensor {} went from {previous} to {}",
                reading.0,
                reading.1
            );
        }
        by_position.insert((record.partition, record.offset), reading);
    }
    assert_eq!(
        next_offset, ledger.high_watermarks,
        "read up to the high watermarks"
    );
    for (reading, result) in &ledger.acked {
        let position = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{reading:?} not delivered: {e}"));
        assert_eq!(
            by_position.get(&(position.partition, position.offset)),
            Some(reading)
        );
    }
    assert_eq!(seen.len(), world.expected_readings(), "every reading once");
}

/// A digest of what the clients saw, the broker's state and when the run
/// ended.
pub fn run_digest(ledger: &Ledger, broker: &BrokerHost) -> u64 {
    let mut digest = Digest::new();
    for ((sensor, seq), result) in &ledger.acked {
        digest.u64(u64::from(*sensor)).u64(u64::from(*seq));
        match result {
            Ok(position) => digest.i64(i64::from(position.partition)).i64(position.offset),
            Err(error) => digest.field(error.to_string().as_bytes()),
        };
    }
    for record in &ledger.consumed {
        digest
            .i64(i64::from(record.partition))
            .i64(record.offset)
            .field(record.value.as_deref().unwrap_or_default());
    }
    digest.u64(ledger.checker_done_ms);
    digest.u64(broker.observer.state_digest().unwrap_or(0));
    digest.finish()
}
