//! The real broker (Tansu) and the shared checker over its raw topic.

use soilstream::model::{Reading, ReadingId};
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer};
use soilstream::transport::{ConsumedRecord, LogConsumer, read_topic_to_end};
use soilstream_containers::{FixtureError, TansuBroker, TansuConfig};
use soilstream_scenarios::checker::{AnomalyKind, CheckOptions, CheckReport, check_topic};
use soilstream_scenarios::ledger::Ledger;
use soilstream_scenarios::runner::decode_raw;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The raw readings topic.
pub const RAW_TOPIC: &str = "soil-moisture-raw";

/// Partitions of the raw topic in these suites (more than one, so the
/// checker's partition check means something).
pub const RAW_PARTITIONS: u32 = 3;

/// How long reading a topic to its end may go without progress, in ms.
pub const READ_STALL_TIMEOUT_MS: u64 = 20_000;

/// Starts a broker or fails the test with install instructions (never skips).
pub fn start_broker(config: TansuConfig) -> TansuBroker {
    match TansuBroker::start(config) {
        Ok(broker) => broker,
        Err(error @ FixtureError::TansuMissing { .. }) => panic!("this test needs the Tansu broker: {error}"),
        Err(error) => panic!("could not start the Tansu broker: {error}"),
    }
}

/// A broker serving the raw topic, optionally behind a fault proxy.
pub fn start_raw_broker(with_proxy: bool) -> TansuBroker {
    let config = TansuConfig::default().topic(RAW_TOPIC, RAW_PARTITIONS);
    start_broker(if with_proxy { config.with_proxy() } else { config })
}

/// Runs `future` on a fresh current-thread runtime (the suites' tests are
/// synchronous: the process fixtures block).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Every record of `topic`, read to the high watermarks seen at the start,
/// in (partition, offset) order, and the topic's partition count.
pub fn read_topic(broker: &TansuBroker, topic: &str) -> (Vec<ConsumedRecord>, u32) {
    read_topic_with(&broker.client_config(), topic)
}

/// [`read_topic`] for any broker, e.g. one in a container.
pub fn read_topic_with(config: &KafkaClientConfig, topic: &str) -> (Vec<ConsumedRecord>, u32) {
    block_on(async {
        let mut consumer =
            KafkaConsumer::new(config, "soilstream-e2e-checker").expect("create the checker's consumer");
        let partitions = consumer.partition_count(topic).await.expect("partition count");
        let records = read_topic_to_end(&mut consumer, topic, READ_STALL_TIMEOUT_MS)
            .await
            .unwrap_or_else(|e| panic!("reading `{topic}` to its end: {e}"));
        (records, partitions)
    })
}

/// Records in `topic` now (sum of the partitions' high watermarks; nothing
/// is ever deleted in these suites).
pub fn topic_record_count(broker: &TansuBroker, topic: &str) -> i64 {
    topic_record_count_with(&broker.client_config(), topic)
}

/// [`topic_record_count`] for any broker, e.g. one in a container.
pub fn topic_record_count_with(config: &KafkaClientConfig, topic: &str) -> i64 {
    block_on(async {
        let consumer = KafkaConsumer::new(config, "soilstream-e2e-counter").expect("create a consumer");
        let partitions = consumer.partition_count(topic).await.expect("partition count");
        let mut total = 0;
        for partition in 0..partitions as i32 {
            let (_low, high) = consumer.watermarks(topic, partition).await.expect("watermarks");
            total += high;
        }
        total
    })
}

/// The readings a gateway acknowledged durable, from its ledger file.
pub fn load_ledger(path: &Path) -> Ledger {
    let mut ledger = Ledger::new(false);
    let loaded = ledger
        .load_jsonl(path)
        .unwrap_or_else(|e| panic!("loading the ledger: {e}"));
    assert!(loaded > 0, "the ledger {} lists no reading", path.display());
    ledger
}

/// Runs the shared checker over the raw topic (duplicates counted, not
/// failed) and prints its report.
pub fn check_raw(ledger: &Ledger, records: &[ConsumedRecord], partitions: u32) -> CheckReport {
    let report = check_topic(ledger, records, partitions, &decode_raw, CheckOptions::default());
    eprintln!("checker report over {} record(s):\n{report}", records.len());
    report
}

/// The first copy of every identity in the topic: its place (partition,
/// offset) and the reading, in (partition, offset) order of `records`.
pub fn first_copies(records: &[ConsumedRecord]) -> BTreeMap<ReadingId, ((i32, i64), Reading)> {
    let mut first = BTreeMap::new();
    for record in records {
        let value = record.value.as_deref().expect("every record has a value");
        let reading = decode_raw(value)
            .unwrap_or_else(|e| panic!("partition {} offset {}: {e}", record.partition, record.offset));
        first
            .entry(reading.id())
            .or_insert(((record.partition, record.offset), reading));
    }
    first
}

/// Asserts what every end-to-end test ends with: the checker found nothing
/// that fails (no loss, corruption, reordering, timestamp or partition
/// error) and, checked again here independently of its tallies, every
/// reading of the ledger is in the topic with the ledger's values and its
/// event time as the record timestamp. Returns the identities in the topic.
pub fn assert_every_durable_reading_delivered(
    ledger: &Ledger,
    records: &[ConsumedRecord],
    report: &CheckReport,
) -> BTreeSet<ReadingId> {
    assert!(report.valid, "the checker failed the run:\n{report}");
    assert_eq!(report.count(AnomalyKind::Lost), 0, "{report}");
    assert_eq!(
        report.tally.durable,
        ledger.entries().len() as u64,
        "every ledger reading is durable:\n{report}"
    );
    let mut in_topic: BTreeMap<ReadingId, Vec<(Reading, i64)>> = BTreeMap::new();
    for record in records {
        let reading = decode_raw(record.value.as_deref().expect("a value")).expect("decodes");
        in_topic
            .entry(reading.id())
            .or_default()
            .push((reading, record.timestamp_ms));
    }
    let mut missing = Vec::new();
    for (id, entry) in ledger.entries() {
        match in_topic.get(id) {
            None => missing.push(id.clone()),
            Some(copies) => {
                for (reading, timestamp_ms) in copies {
                    assert_eq!(reading, &entry.reading, "values of {id:?}");
                    assert_eq!(*timestamp_ms, entry.reading.event_time_ms, "timestamp of {id:?}");
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} durable reading(s) not in the topic, e.g. {:?}\n{report}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    in_topic.into_keys().collect()
}

/// Prints the duplicates the checker counted (raw-topic duplicates are
/// expected after a gateway crash and removed downstream).
pub fn print_duplicates(report: &CheckReport) {
    let duplicates = report.anomalies.get(&AnomalyKind::Duplicate);
    eprintln!(
        "duplicates in the raw topic: {} extra record(s) over {} identit(ies){}",
        report.tally.duplicates,
        duplicates.map_or(0, |d| d.count),
        duplicates.map_or(String::new(), |d| format!(
            ", e.g.:\n  {}",
            d.examples.join("\n  ")
        ))
    );
}
