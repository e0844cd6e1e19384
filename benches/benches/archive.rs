//! Archive throughput against the real broker, as a ratio to what bounds
//! it: a clean topic holding a backlog of readings is archived (1) by a
//! plain Parquet write of the same rows from memory (the records already
//! fetched; decode, batch by the same rotation, encode with the archive's
//! own encoder, write each file and `fdatasync` it, into a local
//! directory) and (2) by the archive itself (group membership, fetch,
//! decode, batch, intent, data files, marker, intent removal and group
//! commit, through `object_store` on a local directory with fsync), side
//! by side in one run on the same Tansu process and the same disk. The
//! archive is timed from its start until every row is in a committed file.
//!
//! `cargo bench -p soilstream-benches --bench archive`; `ARCHIVE_RECORDS`
//! (default 200 000) sets the backlog, `ARCHIVE_MAX_ROWS` (default 2 000) the
//! rows per batch. Runs on Tansu's memory engine (what the clients cost)
//! and its SQLite engine (a durable broker; at most
//! [`SQLITE_RECORDS_MAX`] records, see the qaqc bench for why). Without a
//! `tansu` binary it says how to install one and exits successfully.

use soilstream::archive::batch::OpenBatch;
use soilstream::archive::columns::ArchiveSchema;
use soilstream::archive::config::StoreConfig;
use soilstream::archive::kafka::kafka_parts;
use soilstream::archive::objstore::ObjectStoreArchive;
use soilstream::archive::protocol::NoCrash;
use soilstream::archive::{ArchiveMetrics, ArchiveSettings, run_archive};
use soilstream::codec::to_wire;
use soilstream::component::Shutdown;
use soilstream::qaqc::records::{CLEAN_SCHEMA, CleanReading, OutputCodecs};
use soilstream::registry::{InProcessRegistry, SchemaRegistry, value_subject};
use soilstream::transport::kafka::{KafkaClientConfig, KafkaProducer};
use soilstream::transport::kafka_group::KafkaGroupConfig;
use soilstream::transport::{ConsumedRecord, OutboundRecord, TimestampKind};
use soilstream_benches::{
    BENCH_SENSORS, bench_reading, produce_all, start_bench_broker, thousands, time_until_done,
};
use soilstream_containers::{TansuConfig, TansuStorage};
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

const DEFAULT_RECORDS: u64 = 200_000;
const DEFAULT_MAX_ROWS: u64 = 2_000;
const PARTITIONS: u32 = 4;
const CLEAN: &str = "soil-moisture-clean";
/// Largest backlog run on the SQLite engine.
const SQLITE_RECORDS_MAX: u64 = 8_000;
/// A run that has not finished after this long is a failure, ms.
const RUN_TIMEOUT_MS: u64 = 900_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn main() {
    if let Ok(filter) = std::env::var("SOILSTREAM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let max_rows = env_u64("ARCHIVE_MAX_ROWS", DEFAULT_MAX_ROWS);
    // Whole batches per partition: every batch is cut by rows, none waits
    // for its age.
    let round = |n: u64| n.div_ceil(max_rows * u64::from(PARTITIONS)) * max_rows * u64::from(PARTITIONS);
    let records = round(env_u64("ARCHIVE_RECORDS", DEFAULT_RECORDS));
    println!(
        "backlog {} clean readings over {} probes in {PARTITIONS} partitions, {} rows per batch",
        thousands(records as f64),
        BENCH_SENSORS.len(),
        thousands(max_rows as f64)
    );
    for storage in [TansuStorage::Memory, TansuStorage::Sqlite] {
        let records = match storage {
            TansuStorage::Sqlite => round(records.min(SQLITE_RECORDS_MAX)),
            TansuStorage::Memory => records,
        };
        let config = TansuConfig::default()
            .storage(storage)
            .topic(CLEAN.to_string(), PARTITIONS);
        let Some(broker) = start_bench_broker("archive", config) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        let kafka = broker.client_config();
        let dir = tempfile::tempdir().expect("tempdir");
        local.block_on(&runtime, fill_clean(&kafka, records));
        // What the topic holds, as a consumer would fetch it (round-robin:
        // record i is at partition i % PARTITIONS, offset i / PARTITIONS).
        let fetched: Vec<ConsumedRecord> = (0..records).map(clean_record).collect();
        let plain = plain_parquet(&fetched, max_rows, &dir.path().join("plain"));
        let archive = local.block_on(
            &runtime,
            archive(&kafka, records, max_rows, &dir.path().join("archive")),
        );
        let plain_rate = records as f64 / plain.as_secs_f64();
        let archive_rate = records as f64 / archive.as_secs_f64();
        println!(
            "Tansu 0.6.0, {} engine, {} readings:",
            storage.engine_url(),
            thousands(records as f64)
        );
        println!(
            "  plain parquet {} rows/s ({:.2} s); archive {} rows/s ({:.2} s); archive / plain parquet = {:.2}",
            thousands(plain_rate),
            plain.as_secs_f64(),
            thousands(archive_rate),
            archive.as_secs_f64(),
            archive_rate / plain_rate
        );
    }
}

/// What qaqc would have written for the benchmark reading `i`.
fn clean_reading(i: u64) -> CleanReading {
    let sensor = BENCH_SENSORS[(i % BENCH_SENSORS.len() as u64) as usize];
    let flags = if i.is_multiple_of(50) {
        vec!["D06".into()]
    } else {
        Vec::new()
    };
    CleanReading::of_reading(
        bench_reading(sensor, i / BENCH_SENSORS.len() as u64 + 1),
        flags,
        true,
        1,
    )
}

/// Clean record `i` of the backlog (schema id 1 = the clean schema), at
/// its round-robin place.
fn clean_record(i: u64) -> ConsumedRecord {
    thread_local! { static CODEC: soilstream::qaqc::records::RecordCodec<CleanReading> = OutputCodecs::default().clean; }
    let clean = clean_reading(i);
    let body = CODEC.with(|codec| codec.encode_body(&clean).expect("encodes"));
    ConsumedRecord {
        topic: CLEAN.into(),
        partition: (i % u64::from(PARTITIONS)) as i32,
        offset: (i / u64::from(PARTITIONS)) as i64,
        key: Some(clean.sensor_id.clone().into_bytes()),
        value: Some(to_wire(1, &body)),
        timestamp_ms: clean.event_time,
        timestamp_kind: TimestampKind::CreateTime,
        headers: Vec::new(),
    }
}

/// Writes the backlog to the clean topic, round-robin over the partitions.
async fn fill_clean(kafka: &KafkaClientConfig, records: u64) {
    let producer = KafkaProducer::new(kafka).expect("producer");
    let backlog = (0..records).map(clean_record).map(|r| OutboundRecord {
        topic: CLEAN.into(),
        key: r.key.unwrap_or_default(),
        partition: Some(r.partition),
        value: r.value.unwrap_or_default(),
        timestamp_ms: r.timestamp_ms,
        headers: Vec::new(),
    });
    produce_all(&producer, backlog).await;
}

/// The bound: the fetched records decoded, batched by the same rotation,
/// encoded and written (one file per batch and date, each synced).
fn plain_parquet(records: &[ConsumedRecord], max_rows: u64, dir: &Path) -> Duration {
    let started = Instant::now();
    let settings = ArchiveSettings::defaults();
    let schema =
        Rc::new(ArchiveSchema::new(1, CLEAN_SCHEMA, &settings.archive.event_time_field).expect("schema"));
    for partition in 0..PARTITIONS as i32 {
        let mut batch: Option<OpenBatch> = None;
        let rows = records.iter().filter(|r| r.partition == partition);
        for record in rows {
            let row = schema
                .row(
                    record.partition,
                    record.offset,
                    record.key.as_deref(),
                    record.value.as_deref().unwrap_or_default(),
                )
                .expect("a clean row");
            batch
                .get_or_insert_with(|| OpenBatch::new(record.offset, 0))
                .push(&schema, row);
            if batch.as_ref().is_some_and(|b| b.rows() >= max_rows) {
                write_batch(batch.take().expect("open"), partition, dir);
            }
        }
        if let Some(b) = batch {
            write_batch(b, partition, dir);
        }
    }
    started.elapsed()
}

fn write_batch(batch: OpenBatch, partition: i32, dir: &Path) {
    let plan = batch
        .plan(CLEAN, partition, 0, "bench-plain", None)
        .expect("encodes");
    for file in &plan.files {
        let path = dir.join(&file.entry.path);
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
        let mut out = std::fs::File::create(&path).expect("create");
        out.write_all(&file.bytes).expect("write");
        out.sync_data().expect("fdatasync");
    }
}

/// Runs the archive in this process until every row is committed.
async fn archive(kafka: &KafkaClientConfig, records: u64, max_rows: u64, dir: &Path) -> Duration {
    let registry = Rc::new(InProcessRegistry::new());
    let id = registry
        .register(&value_subject(CLEAN), CLEAN_SCHEMA)
        .await
        .expect("register");
    assert_eq!(id, 1, "the backlog was written with schema id 1");
    let mut settings = ArchiveSettings::defaults();
    settings.archive.group_id = "bench-archive".into();
    settings.archive.log_interval_ms = 0;
    settings.rotation.max_rows = max_rows;
    settings.rotation.max_age_ms = RUN_TIMEOUT_MS;
    let store = ObjectStoreArchive::open(&StoreConfig {
        url: format!("file://{}", dir.display()),
        ..StoreConfig::default()
    })
    .expect("the archive's directory");
    let metrics = ArchiveMetrics::new();
    let parts = kafka_parts(
        kafka,
        &settings.archive.group_id,
        KafkaGroupConfig::default(),
        Rc::new(store),
        registry,
        Rc::new(NoCrash),
        metrics.clone(),
        None,
    )
    .expect("archive parts");
    let (trigger, shutdown) = Shutdown::new();
    let started = Instant::now();
    let watch = time_until_done(
        started,
        RUN_TIMEOUT_MS,
        &trigger,
        || metrics.rows_written.get() >= records,
        || format!("the archive wrote {} rows", metrics.rows_written.get()),
    );
    let (result, elapsed) = tokio::join!(run_archive(settings, parts, shutdown), watch);
    result.expect("the archive ran");
    elapsed
}
