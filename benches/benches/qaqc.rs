//! qaqc throughput against the real broker, as a ratio to what bounds it: a
//! raw topic holding a backlog of readings is processed (1) by a plain
//! consume-and-produce passthrough (an rdkafka consumer re-producing every
//! record to another topic with the same idempotent producer settings) and
//! (2) by qaqc itself (group membership, decoding, dedup, checks, flags,
//! windows, alerts, outputs to five topics, commits after acknowledgement),
//! side by side on the same Tansu process. Both are timed from their start
//! until every input has been consumed and every output acknowledged.
//!
//! `cargo bench -p soilstream-benches --bench qaqc`; `QAQC_RECORDS` (default
//! 20 000) sets the backlog. Runs on Tansu's memory engine (what the clients
//! cost) and its SQLite engine (a durable broker), where the backlog is at
//! most [`SQLITE_RECORDS_MAX`]: Tansu 0.6.0's SQLite engine answers a fetch
//! over a partition of records with headers in time that grows with the
//! square of its size, and with 20 000 records its group coordinator stops
//! answering heartbeats in time (members are expelled, rebuilds re-read ever
//! larger outputs). Without a `tansu` binary it says how to install one and
//! exits successfully.

use soilstream::codec::{ReadingCodec, SOIL_READING_SCHEMA_V1, to_wire};
use soilstream::component::Shutdown;
use soilstream::gateway::{HEADER_GATEWAY_ID, HEADER_SEQ};
use soilstream::qaqc::kafka::kafka_parts;
use soilstream::qaqc::{QaqcMetrics, QaqcSettings, run_qaqc};
use soilstream::registry::{InProcessRegistry, SchemaRegistry, value_subject};
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer, KafkaProducer};
use soilstream::transport::kafka_group::KafkaGroupConfig;
use soilstream::transport::{LogConsumer, LogProducer, OutboundRecord, ProduceError, StartOffset};
use soilstream_benches::{
    BENCH_SENSORS, bench_reading, produce_all, start_bench_broker, thousands, time_until_done,
};
use soilstream_containers::{TansuConfig, TansuStorage};
use std::rc::Rc;
use std::time::{Duration, Instant};

const DEFAULT_RECORDS: u64 = 20_000;
const PARTITIONS: u32 = 4;
const RAW: &str = "soil-moisture-raw";
const PASSTHROUGH: &str = "passthrough";
/// Largest backlog run on the SQLite engine (see the module docs).
const SQLITE_RECORDS_MAX: u64 = 8_000;
/// A run that has not finished after this long is a failure, ms.
const RUN_TIMEOUT_MS: u64 = 900_000;

fn main() {
    if let Ok(filter) = std::env::var("SOILSTREAM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let records: u64 = std::env::var("QAQC_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_RECORDS);
    let settings = QaqcSettings::defaults();
    println!(
        "backlog {} readings over {} probes in {PARTITIONS} partitions",
        thousands(records as f64),
        BENCH_SENSORS.len()
    );
    for storage in [TansuStorage::Memory, TansuStorage::Sqlite] {
        let records = match storage {
            TansuStorage::Sqlite => records.min(SQLITE_RECORDS_MAX),
            TansuStorage::Memory => records,
        };
        let mut config = TansuConfig::default()
            .storage(storage)
            .topic(RAW.to_string(), PARTITIONS)
            .topic(PASSTHROUGH.to_string(), PARTITIONS);
        for topic in settings.topics.outputs() {
            config = config.topic(topic.to_string(), PARTITIONS);
        }
        let Some(broker) = start_bench_broker("qaqc", config) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        let kafka = broker.client_config();
        local.block_on(&runtime, fill_raw(&kafka, records));
        let passthrough = local.block_on(&runtime, passthrough(&kafka, records));
        let qaqc = local.block_on(&runtime, qaqc(&kafka, records, settings.clone()));
        let passthrough_rate = records as f64 / passthrough.as_secs_f64();
        let qaqc_rate = records as f64 / qaqc.as_secs_f64();
        println!(
            "Tansu 0.6.0, {} engine, {} readings:",
            storage.engine_url(),
            thousands(records as f64)
        );
        println!(
            "  passthrough {} records/s ({:.2} s); qaqc {} records/s ({:.2} s); qaqc / passthrough = {:.2}",
            thousands(passthrough_rate),
            passthrough.as_secs_f64(),
            thousands(qaqc_rate),
            qaqc.as_secs_f64(),
            qaqc_rate / passthrough_rate
        );
    }
}

fn producer(kafka: &KafkaClientConfig) -> KafkaProducer {
    KafkaProducer::new(kafka).expect("producer")
}

/// Writes the backlog to the raw topic (schema id 1 = the shipped v1).
async fn fill_raw(kafka: &KafkaClientConfig, records: u64) {
    let codec = ReadingCodec::v1();
    let backlog = (0..records).map(|i| {
        let sensor = BENCH_SENSORS[(i % BENCH_SENSORS.len() as u64) as usize];
        let reading = bench_reading(sensor, i / BENCH_SENSORS.len() as u64 + 1);
        let value = to_wire(1, &codec.encode_body(&reading).expect("encodes"));
        OutboundRecord {
            topic: RAW.into(),
            key: sensor.as_bytes().to_vec(),
            partition: None,
            value,
            timestamp_ms: reading.event_time_ms,
            headers: vec![
                (HEADER_GATEWAY_ID.into(), reading.gateway_id.clone().into_bytes()),
                (HEADER_SEQ.into(), reading.seq.to_string().into_bytes()),
            ],
        }
    });
    produce_all(&producer(kafka), backlog).await;
}

/// Consumes the raw topic and re-produces every record: the bound.
async fn passthrough(kafka: &KafkaClientConfig, records: u64) -> Duration {
    let started = Instant::now();
    let mut consumer = KafkaConsumer::new(kafka, "bench-passthrough").expect("consumer");
    let starts: Vec<(i32, StartOffset)> = (0..PARTITIONS as i32)
        .map(|p| (p, StartOffset::Beginning))
        .collect();
    consumer.assign(RAW, &starts).expect("assign");
    let producer = producer(kafka);
    let mut consumed = 0u64;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut acknowledged = 0u64;
    use futures::StreamExt;
    while acknowledged < records {
        assert!(
            started.elapsed() < Duration::from_millis(RUN_TIMEOUT_MS),
            "passthrough timed out"
        );
        if consumed < records {
            for r in consumer.poll(50).await.expect("poll") {
                consumed += 1;
                let record = OutboundRecord {
                    topic: PASSTHROUGH.into(),
                    key: r.key.unwrap_or_default(),
                    partition: Some(r.partition),
                    value: r.value.unwrap_or_default(),
                    timestamp_ms: r.timestamp_ms,
                    headers: r.headers,
                };
                loop {
                    match producer.enqueue(record.clone()) {
                        Ok(delivery) => {
                            pending.push(delivery);
                            break;
                        }
                        Err(ProduceError::QueueFull) => {
                            if let Some(done) = pending.next().await {
                                done.expect("delivered");
                                acknowledged += 1;
                            }
                        }
                        Err(e) => panic!("passthrough produce: {e}"),
                    }
                }
            }
        }
        while let Some(Some(done)) = futures::FutureExt::now_or_never(pending.next()) {
            done.expect("delivered");
            acknowledged += 1;
        }
        if consumed >= records
            && acknowledged < records
            && let Some(done) = pending.next().await
        {
            done.expect("delivered");
            acknowledged += 1;
        }
    }
    started.elapsed()
}

/// Runs qaqc in this process until it consumed the backlog and every output
/// is acknowledged.
async fn qaqc(kafka: &KafkaClientConfig, records: u64, mut settings: QaqcSettings) -> Duration {
    let registry = Rc::new(InProcessRegistry::new());
    // The backlog was written with schema id 1: the shipped v1 schema.
    let id = registry
        .register(&value_subject(RAW), SOIL_READING_SCHEMA_V1)
        .await
        .expect("register");
    assert_eq!(id, 1);
    let state_dir = tempfile::tempdir().expect("tempdir");
    settings.qaqc.state_dir = state_dir.path().to_path_buf();
    settings.qaqc.log_interval_ms = 0;
    settings.qaqc.checkpoint_interval_ms = 0;
    settings.qaqc.group_id = "bench-qaqc".into();
    let metrics = QaqcMetrics::new();
    let parts = kafka_parts(
        kafka,
        &settings.qaqc.group_id,
        KafkaGroupConfig::default(),
        registry,
        metrics.clone(),
        None,
    )
    .expect("qaqc parts");
    let (trigger, shutdown) = Shutdown::new();
    let started = Instant::now();
    let watch = time_until_done(
        started,
        RUN_TIMEOUT_MS,
        &trigger,
        || metrics.records_in.get() >= records && metrics.in_flight_outputs.get() == 0,
        || format!("qaqc: {}", metrics.summary()),
    );
    let (result, elapsed) = tokio::join!(run_qaqc(settings, parts, shutdown), watch);
    result.expect("qaqc ran");
    elapsed
}
