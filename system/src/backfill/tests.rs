//! Tests of the backfill driver against an in-memory producer.
//!
//! Every test runs on a current-thread runtime with paused tokio time: the
//! producer's delays and the rate limiter advance virtual time only, so the
//! tests are fast and deterministic.

use super::checkpoint::Checkpoint;
use super::files::REJECTS_HEADER;
use super::*;
use crate::clock::FixedClock;
use crate::codec::{ReadingCodec, from_wire};
use crate::disk::StdDisk;
use crate::registry::{InProcessRegistry, SchemaRegistry};
use crate::transport::{
    DeliveryFuture, LogProducer, OutboundRecord, ProduceError, ProducerStats, RecordPosition,
};
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tokio::time::{Duration, Instant};

/// 2024-06-01T00:00:00Z: "now" for tests whose rows lie in May 2024.
const NOW_MS: i64 = 1_717_200_000_000;

const GATEWAY: &str = "gw-test-sd";

/// What the in-memory producer does with one enqueued record.
#[derive(Debug, Clone)]
enum Plan {
    /// Acknowledge after a delay.
    Ack(Duration),
    /// Fail the delivery after a delay.
    Fail(Duration, ProduceError),
    /// Never resolve the delivery (a broker that stopped answering).
    Hang,
    /// Refuse to enqueue: queue full.
    QueueFull,
    /// Refuse to enqueue: the producer is unusable.
    Fatal,
}

#[derive(Default)]
struct Log {
    /// Acknowledged records, in acknowledgement order.
    acked: RefCell<Vec<OutboundRecord>>,
    /// Whether acknowledged records are kept (off for the big streaming test).
    keep: Cell<bool>,
    acked_count: Cell<u64>,
    enqueued: Cell<u64>,
    outstanding: Cell<u64>,
    max_outstanding: Cell<u64>,
}

type Planner = Box<dyn Fn(u64, &OutboundRecord, &Log) -> Plan>;

/// A `LogProducer` in memory whose every delivery follows a plan.
struct TestProducer {
    log: Rc<Log>,
    planner: Planner,
}

impl TestProducer {
    fn new(planner: impl Fn(u64, &OutboundRecord, &Log) -> Plan + 'static) -> Self {
        let log = Rc::new(Log::default());
        log.keep.set(true);
        Self {
            log,
            planner: Box::new(planner),
        }
    }

    fn acking() -> Self {
        Self::new(|_, _, _| Plan::Ack(Duration::ZERO))
    }

    /// Acknowledges out of order: delays cycle through 0-6 ms.
    fn shuffling() -> Self {
        Self::new(|index, _, _| Plan::Ack(Duration::from_millis((index * 5) % 7)))
    }

    fn acked(&self) -> Vec<OutboundRecord> {
        self.log.acked.borrow().clone()
    }
}

impl LogProducer for TestProducer {
    fn enqueue(&self, record: OutboundRecord) -> Result<DeliveryFuture, ProduceError> {
        let index = self.log.enqueued.get();
        let plan = (self.planner)(index, &record, &self.log);
        match plan {
            Plan::QueueFull => return Err(ProduceError::QueueFull),
            Plan::Fatal => return Err(ProduceError::Fatal("test producer closed".into())),
            _ => {}
        }
        self.log.enqueued.set(index + 1);
        let outstanding = self.log.outstanding.get() + 1;
        self.log.outstanding.set(outstanding);
        self.log
            .max_outstanding
            .set(self.log.max_outstanding.get().max(outstanding));
        let log = Rc::clone(&self.log);
        Ok(async move {
            let (delay, outcome) = match plan {
                Plan::Ack(delay) => (delay, Ok(())),
                Plan::Fail(delay, error) => (delay, Err(error)),
                _ => {
                    futures::future::pending::<()>().await;
                    unreachable!("pending never resolves")
                }
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            log.outstanding.set(log.outstanding.get() - 1);
            outcome?;
            let offset = log.acked_count.get();
            log.acked_count.set(offset + 1);
            if log.keep.get() {
                log.acked.borrow_mut().push(record);
            }
            Ok(RecordPosition {
                partition: 0,
                offset: offset as i64,
            })
        }
        .boxed_local())
    }

    fn stats(&self) -> ProducerStats {
        ProducerStats {
            request_retries: 0,
            broker_up: true,
        }
    }
}

/// A registry that is unavailable for its first `outage` calls.
struct FlakyRegistry {
    inner: InProcessRegistry,
    outage: Cell<u32>,
}

impl SchemaRegistry for FlakyRegistry {
    fn register<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> LocalBoxFuture<'a, Result<u32, RegistryError>> {
        if self.outage.get() > 0 {
            self.outage.set(self.outage.get() - 1);
            return async { Err(RegistryError::Unavailable("connection refused".into())) }.boxed_local();
        }
        self.inner.register(subject, schema)
    }

    fn schema_by_id(&self, id: u32) -> LocalBoxFuture<'_, Result<String, RegistryError>> {
        self.inner.schema_by_id(id)
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Options for `csv` with the checkpoint and rejects files in `dir` (so the
/// examples directory stays clean).
fn options_in(dir: &Path, csv: &Path) -> BackfillOptions {
    let mut options = BackfillOptions::new(csv, GATEWAY);
    options.checkpoint_path = Some(dir.join("run.checkpoint"));
    options.rejects_path = Some(dir.join("run.rejects.csv"));
    options
}

async fn run(options: &BackfillOptions, producer: &TestProducer) -> Result<BackfillSummary, BackfillError> {
    run_backfill(
        options.clone(),
        Rc::new(StdDisk),
        producer,
        &InProcessRegistry::new(),
        &FixedClock(NOW_MS),
        &NoProgress,
    )
    .await
}

/// A log with `rows` rows over four sensors, one per minute per sensor from
/// 2024-05-01T00:00:00Z, alternating RFC 3339 and epoch-ms timestamps.
fn generated_log(dir: &Path, rows: u64) -> PathBuf {
    let path = dir.join("generated.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(
        out,
        "sensor_id,timestamp,moisture,temperature,ec,depth_cm,battery_v"
    )
    .unwrap();
    let start_ms = 1_714_521_600_000_i64;
    for i in 0..rows {
        let t = start_ms + (i / 4) as i64 * 60_000;
        let moisture = 0.2 + (i % 100) as f64 / 1000.0;
        if i % 2 == 0 {
            let ts = jiff::Timestamp::from_millisecond(t).unwrap();
            writeln!(out, "s{},{ts},{moisture:.3},14.5,0.4,30,3.6", i % 4).unwrap();
        } else {
            writeln!(out, "s{},{t},{moisture:.3},14.5,,30,", i % 4).unwrap();
        }
    }
    out.flush().unwrap();
    path
}

/// Identity -> record, failing on an identity acknowledged with two values.
fn by_identity(records: &[OutboundRecord]) -> BTreeMap<(String, String, u64), OutboundRecord> {
    let mut map = BTreeMap::new();
    for record in records {
        let key = identity(record);
        if let Some(previous) = map.insert(key.clone(), record.clone()) {
            assert_eq!(&previous, record, "identity {key:?} with two different records");
        }
    }
    map
}

fn header<'a>(record: &'a OutboundRecord, name: &str) -> &'a [u8] {
    let mut values = record.headers.iter().filter(|(k, _)| k == name);
    let value = values.next().map(|(_, v)| v.as_slice()).expect("header present");
    assert!(values.next().is_none(), "one {name} header");
    value
}

fn identity(record: &OutboundRecord) -> (String, String, u64) {
    let gateway = String::from_utf8(header(record, HEADER_GATEWAY_ID).to_vec()).unwrap();
    let seq: u64 = std::str::from_utf8(header(record, HEADER_SEQ))
        .unwrap()
        .parse()
        .unwrap();
    (gateway, String::from_utf8(record.key.clone()).unwrap(), seq)
}

fn decode(record: &OutboundRecord) -> crate::model::Reading {
    let (schema_id, body) = from_wire(&record.value).unwrap();
    assert_eq!(
        schema_id, 2,
        "the backfill registers v1 first (id 1), then v3 (id 2), and writes v3"
    );
    ReadingCodec::v3().decode_body(body).unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn example_log_backfills_100_records_with_the_csv_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let csv = example("sdcard-log.csv");
    let producer = TestProducer::shuffling();
    let summary = run(&options_in(dir.path(), &csv), &producer).await.unwrap();

    // Expected values straight from the file, parsed here independently.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut expected = BTreeMap::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let t: jiff::Timestamp = cols[1].parse().unwrap();
        let seq = index as u64 + 1;
        expected.insert(
            (GATEWAY.to_owned(), cols[0].to_owned(), seq),
            (
                t.as_millisecond(),
                cols[2].parse::<f64>().unwrap(),
                cols[5].parse::<i32>().unwrap(),
            ),
        );
    }
    assert_eq!(expected.len(), 100);

    let acked = producer.acked();
    assert_eq!(acked.len(), 100);
    let records = by_identity(&acked);
    assert_eq!(records.len(), 100);
    for (id, record) in &records {
        let (event_time_ms, moisture, depth) = expected[id];
        assert_eq!(
            record.timestamp_ms, event_time_ms,
            "{id:?}: Kafka timestamp = CSV time"
        );
        assert_eq!(record.topic, DEFAULT_TOPIC);
        let reading = decode(record);
        assert_eq!(reading.id().gateway_id, id.0);
        assert_eq!((reading.sensor_id.as_str(), reading.seq), (id.1.as_str(), id.2));
        assert_eq!(reading.event_time_ms, event_time_ms);
        assert_eq!((reading.moisture_vwc, reading.depth_cm), (moisture, depth));
    }
    assert_eq!(summary.rows_read, 100);
    assert_eq!(summary.rows_produced, 100);
    assert_eq!(summary.rows_rejected, 0);
    assert_eq!(summary.rows_skipped_done, 0);
    assert!(summary.completed);
    assert_eq!(summary.acked_through_line, 101);
    assert_eq!(summary.event_time_min.as_deref(), Some("2024-05-01T04:00:00Z"));
    assert_eq!(summary.event_time_max.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert_eq!(summary.rejects_path, None);
    assert!(
        !dir.path().join("run.rejects.csv").exists(),
        "no rejects, no file"
    );
    let checkpoint = Checkpoint::decode(&std::fs::read(dir.path().join("run.checkpoint")).unwrap()).unwrap();
    assert_eq!(checkpoint.acked_through_line, 101);
    assert_eq!(checkpoint.gateway_id, GATEWAY);

    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["rows_produced"], 100);
    assert_eq!(json["warnings"]["in_future"], 0);
    let shown = summary.to_string();
    assert!(shown.contains("produced (acknowledged): 100"), "{shown}");
    assert!(
        shown.contains("2024-05-01T04:00:00Z .. 2024-05-01T10:00:00Z"),
        "{shown}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn identities_and_values_are_the_same_on_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let csv = example("sdcard-log.csv");
    let mut options = options_in(dir.path(), &csv);
    let first = TestProducer::acking();
    run(&options, &first).await.unwrap();
    options.restart = true;
    let second = TestProducer::shuffling();
    run(&options, &second).await.unwrap();
    assert_eq!(by_identity(&first.acked()), by_identity(&second.acked()));
    // seq is the physical line: strictly increasing per sensor in file order.
    let mut last_seq: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for record in first.acked() {
        let seq = identity(&record).2;
        if let Some(previous) = last_seq.insert(record.key.clone(), seq) {
            assert!(seq > previous);
        }
    }
}

/// A power cut of the machine running the backfill, on a disk that loses
/// whatever was not synced: the checkpoint that survives is durable and
/// settles only acknowledged lines, and the next run on the same disk
/// resumes after it. Every file goes through the `Disk` seam. Several disk
/// seeds, since a crash keeps or loses each unsynced write at random.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_power_cut_mid_run_leaves_a_durable_checkpoint_on_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let csv_bytes = std::fs::read(generated_log(dir.path(), 300)).unwrap();
    for seed in 0..8 {
        power_cut_mid_run(seed, &csv_bytes).await;
    }
}

async fn power_cut_mid_run(seed: u64, csv_bytes: &[u8]) {
    use crate::disk::Disk;
    use crate::disk::memory::CrashDisk;
    let disk = CrashDisk::new(seed);
    let card = Path::new("/card");
    disk.create_dir_all(card).unwrap();
    let csv = card.join("log.csv");
    {
        let mut file = disk.create_new(&csv).unwrap();
        file.append(csv_bytes).unwrap();
        file.sync_data().unwrap();
    }
    disk.sync_dir(card).unwrap();
    let mut options = BackfillOptions::new(&csv, GATEWAY);
    options.checkpoint_every_rows = 10;
    options.max_in_flight_rows = 40;
    let registry = InProcessRegistry::new();
    let run_on_disk = |producer| {
        run_backfill(
            options.clone(),
            Rc::new(disk.clone()),
            producer,
            &registry,
            &FixedClock(NOW_MS),
            &NoProgress,
        )
    };

    let stalling = TestProducer::new(|index, _, _| {
        if index < 150 {
            Plan::Ack(Duration::from_millis((index * 5) % 7))
        } else {
            Plan::Hang
        }
    });
    let killed = tokio::time::timeout(
        Duration::from_secs(60),
        run_on_disk(&stalling as &dyn LogProducer),
    )
    .await;
    assert!(killed.is_err(), "the run was still waiting for acks");
    disk.crash();
    let checkpoint_bytes = disk
        .file_bytes(&options.effective_checkpoint_path())
        .expect("a checkpoint survived the power cut");
    let settled = Checkpoint::decode(&checkpoint_bytes).unwrap().acked_through_line;
    let first: BTreeSet<u64> = stalling.acked().iter().map(|r| identity(r).2).collect();
    assert!((120..=151).contains(&settled), "settled through line {settled}");
    assert!((2..=settled).all(|line| first.contains(&line)));

    let healthy = TestProducer::acking();
    let summary = run_on_disk(&healthy as &dyn LogProducer).await.unwrap();
    assert_eq!(summary.resumed_after_line, settled);
    let second: BTreeSet<u64> = healthy.acked().iter().map(|r| identity(r).2).collect();
    assert_eq!(second, ((settled + 1)..=301).collect::<BTreeSet<_>>());
    assert_eq!(summary.rows_produced, 301 - settled);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_completed_file_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = options_in(dir.path(), &example("sdcard-log.csv"));
    run(&options, &TestProducer::acking()).await.unwrap();
    let again = TestProducer::acking();
    let summary = run(&options, &again).await.unwrap();
    assert_eq!(again.log.enqueued.get(), 0);
    assert_eq!(
        (
            summary.rows_read,
            summary.rows_skipped_done,
            summary.rows_produced
        ),
        (100, 100, 0)
    );
    assert_eq!(summary.resumed_after_line, 101);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_killed_run_resumes_after_the_acknowledged_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 500);
    let mut options = options_in(dir.path(), &csv);
    options.checkpoint_every_rows = 10;
    options.max_in_flight_rows = 40;

    // Run 1: out-of-order acks, then the broker stops answering at the 230th
    // record; the run is killed (its future dropped) a minute later.
    let stalling = TestProducer::new(|index, _, _| {
        if index < 230 {
            Plan::Ack(Duration::from_millis((index * 7) % 11))
        } else {
            Plan::Hang
        }
    });
    let killed = tokio::time::timeout(Duration::from_secs(60), run(&options, &stalling)).await;
    assert!(killed.is_err(), "the run was still waiting for acks");
    let checkpoint =
        Checkpoint::decode(&std::fs::read(options.effective_checkpoint_path()).unwrap()).unwrap();
    let settled = checkpoint.acked_through_line;
    let first = stalling.acked();
    assert_eq!(first.len(), 230);
    let first_seqs: BTreeSet<u64> = first.iter().map(|r| identity(r).2).collect();
    assert!((200..=231).contains(&settled), "settled through line {settled}");
    for line in 2..=settled {
        assert!(
            first_seqs.contains(&line),
            "line {line} is settled but was not acknowledged"
        );
    }

    // Run 2 sends exactly the lines after the checkpoint.
    let healthy = TestProducer::shuffling();
    let summary = run(&options, &healthy).await.unwrap();
    let second = healthy.acked();
    let second_seqs: BTreeSet<u64> = second.iter().map(|r| identity(r).2).collect();
    assert_eq!(second_seqs, ((settled + 1)..=501).collect::<BTreeSet<_>>());
    assert_eq!(summary.rows_skipped_done, settled - 1);
    assert_eq!(summary.rows_produced, 501 - settled);
    assert_eq!(summary.resumed_after_line, settled);

    // Together: every row once at least, and no identity with two values.
    let mut all = first;
    all.extend(second);
    let union = by_identity(&all);
    assert_eq!(union.len(), 500);
    let mut fresh = options.clone();
    fresh.restart = true;
    fresh.checkpoint_path = Some(dir.path().join("fresh.checkpoint"));
    let reference = TestProducer::acking();
    run(&fresh, &reference).await.unwrap();
    assert_eq!(
        by_identity(&reference.acked()),
        union,
        "same identities, same values"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_checkpoint_for_other_content_or_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    std::fs::copy(example("sdcard-log.csv"), &csv).unwrap();
    let options = options_in(dir.path(), &csv);
    run(&options, &TestProducer::acking()).await.unwrap();

    // Same size, one value changed.
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replacen("0.312", "0.313", 1)).unwrap();
    let producer = TestProducer::acking();
    let error = run(&options, &producer).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, BackfillError::CheckpointMismatch { .. }),
        "{message}"
    );
    assert!(message.contains("different file content"), "{message}");
    assert!(message.contains("--restart"), "{message}");
    assert_eq!(producer.log.enqueued.get(), 0, "nothing sent");

    let mut other_gateway = options.clone();
    other_gateway.gateway_id = "gw-other".into();
    std::fs::write(&csv, &text).unwrap();
    let error = run(&other_gateway, &producer).await.unwrap_err();
    assert!(error.to_string().contains("gateway id `gw-test-sd`"), "{error}");

    let mut restart = options.clone();
    restart.restart = true;
    let summary = run(&restart, &producer).await.unwrap();
    assert_eq!(summary.rows_produced, 100);

    std::fs::write(options.effective_checkpoint_path(), b"{\"format_version\":1,").unwrap();
    let error = run(&options, &producer).await.unwrap_err();
    assert!(
        matches!(error, BackfillError::CheckpointUnreadable { .. }),
        "{error}"
    );
}

const BROKEN_REJECTS: [(u64, &str, &str); 4] = [
    (
        4,
        "timestamp",
        "not an RFC 3339 time with offset nor integer epoch milliseconds: \"2024-05-01T06:15:00\"",
    ),
    (6, "moisture", "not a number: \"ERR\""),
    (8, "depth_cm", "missing: row has 5 fields, header has 7"),
    (10, "sensor_id", "empty"),
];

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bad_rows_are_skipped_and_written_to_the_rejects_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = example("sdcard-log-broken.csv");
    let options = options_in(dir.path(), &csv);
    let producer = TestProducer::acking();
    let summary = run(&options, &producer).await.unwrap();
    assert_eq!(
        (summary.rows_read, summary.rows_produced, summary.rows_rejected),
        (10, 6, 4)
    );
    let seqs: BTreeSet<u64> = producer.acked().iter().map(|r| identity(r).2).collect();
    assert_eq!(seqs, BTreeSet::from([2, 3, 5, 9, 11, 12]));
    assert_eq!(summary.acked_through_line, 12);

    let rejects_path = options.effective_rejects_path();
    assert_eq!(summary.rejects_path, Some(rejects_path.display().to_string()));
    let rejects = std::fs::read_to_string(&rejects_path).unwrap();
    let original_text = std::fs::read_to_string(&csv).unwrap();
    let original: Vec<&str> = original_text.lines().collect();
    let mut lines = rejects.lines();
    assert_eq!(lines.next(), Some(REJECTS_HEADER));
    for (line, column, reason_start) in BROKEN_REJECTS {
        let row = lines.next().unwrap();
        let mut fields = super::lines::Fields::new();
        fields.split(row).unwrap();
        assert_eq!(fields.get(0).unwrap(), line.to_string());
        assert_eq!(fields.get(1).unwrap(), column);
        assert!(fields.get(2).unwrap().starts_with(reason_start), "{row}");
        assert_eq!(fields.get(3).unwrap(), original[line as usize - 1]);
    }
    assert_eq!(lines.next(), None);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn strict_mode_stops_at_the_first_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let csv = example("sdcard-log-broken.csv");
    let mut options = options_in(dir.path(), &csv);
    options.strict = true;
    let producer = TestProducer::acking();
    let error = run(&options, &producer).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "stopped at the first bad row (strict mode): {}:4: timestamp: not an RFC 3339 time",
            csv.display()
        )),
        "{message}"
    );
    let BackfillError::StrictReject { error: row, summary } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(row.line, 4);
    assert!(!summary.completed);
    assert_eq!((summary.rows_read, summary.rows_rejected), (3, 1));
    let seqs: BTreeSet<u64> = producer.acked().iter().map(|r| identity(r).2).collect();
    assert!(seqs.iter().all(|s| *s < 4), "nothing after the bad row: {seqs:?}");
    assert_eq!(error.partial_summary(), Some(summary.as_ref()));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn row_errors_name_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("odd.csv");
    let long = "x".repeat(lines::MAX_LINE_BYTES + 10);
    let mut content = b"\xef\xbb\xbfProbe,Time,VWC,Temp\n".to_vec();
    content.extend_from_slice(b"p1,2024-05-01T06:00:00+02:00,0.3,14\n");
    content.extend_from_slice(format!("p1,{long},0.3,14\n").as_bytes());
    content.extend_from_slice(b"p1,1714536000000,0.3,\xff\n");
    content.extend_from_slice(b"p1,1714536000000,\"0.3,14\n");
    content.extend_from_slice(b"p\x01,1714536000000,0.3,14\n");
    content.extend_from_slice(b"p1,1714536000000,0.3,14");
    std::fs::write(&csv, content).unwrap();
    let mut options = options_in(dir.path(), &csv);
    options.default_depth_cm = Some(20);
    let producer = TestProducer::acking();
    let summary = run(&options, &producer).await.unwrap();
    assert_eq!((summary.rows_produced, summary.rows_rejected), (2, 4));
    let rejects = std::fs::read_to_string(options.effective_rejects_path()).unwrap();
    let reasons: Vec<String> = rejects
        .lines()
        .skip(1)
        .map(|row| {
            let mut fields = lines::Fields::new();
            fields.split(row).unwrap();
            format!(
                "{}: {}: {}",
                fields.get(0).unwrap(),
                fields.get(1).unwrap(),
                fields.get(2).unwrap()
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "3: row: line longer than 16384 bytes",
            "4: row: not valid UTF-8 (at byte 21)",
            "5: row: unterminated quoted field (quoted fields cannot span lines)",
            "6: Probe: contains control characters",
        ]
    );
    let depths: Vec<i32> = producer.acked().iter().map(|r| decode(r).depth_cm).collect();
    assert_eq!(depths, [20, 20], "default depth");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn header_problems_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    let producer = TestProducer::acking();
    for (content, expected) in [
        (
            "sensor_id,moisture,temperature\np,0.3,14\n",
            ":1: timestamp: missing required column",
        ),
        ("\n\n", ":1: header: no header row: the file is empty or blank"),
        ("", ":1: header: no header row"),
        (
            "\np1,2024-05-01T06:00:00+02:00,0.3,14\n",
            ":2: format: the format is not recognised from its first line \"p1,2024-05-01T06:00:00+02:00,0.3,14\"; \
             tried: toa5 (first field \"TOA5\"), ismn",
        ),
    ] {
        std::fs::write(&csv, content).unwrap();
        let mut options = options_in(dir.path(), &csv);
        options.restart = true;
        let error = run(&options, &producer).await.unwrap_err();
        assert!(matches!(error, BackfillError::Header(_)), "{error}");
        assert!(error.to_string().contains(expected), "{error} !~ {expected}");
    }
    assert_eq!(producer.log.enqueued.get(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn max_rate_paces_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 200);
    let mut options = options_in(dir.path(), &csv);
    options.max_rate_rows_per_s = Some(50);
    let started = Instant::now();
    let summary = run(&options, &TestProducer::acking()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(summary.rows_produced, 200);
    // A burst of 5, then 195 rows at 50 rows/s.
    assert!(
        elapsed >= Duration::from_millis(3_880) && elapsed <= Duration::from_millis(3_920),
        "{elapsed:?}"
    );

    let mut unlimited = options.clone();
    unlimited.max_rate_rows_per_s = None;
    unlimited.restart = true;
    let started = Instant::now();
    run(&unlimited, &TestProducer::acking()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(10));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn old_and_future_event_times_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("times.csv");
    let day_ms = 86_400_000;
    let rows = [
        NOW_MS - 10 * day_ms,       // older than 7 days
        NOW_MS - 7 * day_ms + 1000, // inside retention
        NOW_MS - 3_600_000,
        NOW_MS + 60_000,    // within the 5-minute tolerance
        NOW_MS + 3_600_000, // future
        NOW_MS + 2 * day_ms,
    ];
    let mut content = String::from("sensor_id,timestamp,moisture,temperature,depth_cm\n");
    for t in rows {
        content.push_str(&format!("p1,{t},0.3,14,30\n"));
    }
    std::fs::write(&csv, content).unwrap();
    let mut options = options_in(dir.path(), &csv);
    options.retention_ms = Some(7 * day_ms);
    let producer = TestProducer::acking();
    let summary = run(&options, &producer).await.unwrap();
    assert_eq!(summary.rows_produced, 6, "warnings do not stop rows");
    assert_eq!(
        summary.warnings,
        WarningCounts {
            older_than_retention: 1,
            in_future: 2
        }
    );
    assert!(
        summary
            .to_string()
            .contains("1 older than retention, 2 in the future")
    );

    let mut no_retention = options.clone();
    no_retention.retention_ms = None;
    no_retention.restart = true;
    let summary = run(&no_retention, &producer).await.unwrap();
    assert_eq!(summary.warnings.older_than_retention, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failed_deliveries_are_resent() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 100);
    let options = options_in(dir.path(), &csv);
    let failed_once = Rc::new(RefCell::new(BTreeSet::new()));
    let failed = Rc::clone(&failed_once);
    let producer = TestProducer::new(move |_, record, _| {
        let seq = identity(record).2;
        if seq.is_multiple_of(7) && failed.borrow_mut().insert(seq) {
            Plan::Fail(
                Duration::from_millis(3),
                ProduceError::Delivery("timed out".into()),
            )
        } else {
            Plan::Ack(Duration::from_millis(seq % 5))
        }
    });
    let summary = run(&options, &producer).await.unwrap();
    assert_eq!(summary.rows_produced, 100);
    assert_eq!(summary.delivery_retries, failed_once.borrow().len() as u64);
    assert_eq!(summary.delivery_retries, 14);
    assert_eq!(by_identity(&producer.acked()).len(), 100);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unusable_producer_stops_the_run_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 100);
    let mut options = options_in(dir.path(), &csv);
    options.checkpoint_every_rows = 1_000;
    let producer = TestProducer::new(|index, _, _| {
        if index < 50 {
            Plan::Ack(Duration::ZERO)
        } else {
            Plan::Fatal
        }
    });
    let error = run(&options, &producer).await.unwrap_err();
    let BackfillError::Delivery { line, summary, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*line, 52, "the 51st row, on line 52");
    assert_eq!(summary.rows_produced, 50);
    assert_eq!(
        summary.acked_through_line, 51,
        "checkpoint written on the way out"
    );
    let resumed = TestProducer::acking();
    let summary = run(&options, &resumed).await.unwrap();
    assert_eq!((summary.rows_skipped_done, summary.rows_produced), (50, 50));

    let mut limited = options.clone();
    limited.restart = true;
    limited.max_delivery_attempts = 3;
    let always_failing =
        TestProducer::new(|_, _, _| Plan::Fail(Duration::ZERO, ProduceError::Delivery("broker down".into())));
    let error = run(&limited, &always_failing).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("delivery of the row on line 2 failed: delivery failed: broker down"),
        "{error}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_producer_queue_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 100);
    let options = options_in(dir.path(), &csv);
    let producer = TestProducer::new(|_, _, log| {
        if log.outstanding.get() >= 3 {
            Plan::QueueFull
        } else {
            Plan::Ack(Duration::from_millis(2))
        }
    });
    let summary = run(&options, &producer).await.unwrap();
    assert_eq!(summary.rows_produced, 100);
    assert_eq!(producer.log.max_outstanding.get(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registry_outages_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let options = options_in(dir.path(), &example("sdcard-log.csv"));
    let registry = FlakyRegistry {
        inner: InProcessRegistry::new(),
        outage: Cell::new(3),
    };
    let producer = TestProducer::acking();
    let summary = run_backfill(
        options.clone(),
        Rc::new(StdDisk),
        &producer,
        &registry,
        &FixedClock(NOW_MS),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(summary.rows_produced, 100);
    assert!(
        registry
            .inner
            .schema_by_id(1)
            .await
            .is_ok_and(|s| s == crate::codec::SOIL_READING_SCHEMA_V1)
    );
    let down = FlakyRegistry {
        inner: InProcessRegistry::new(),
        outage: Cell::new(u32::MAX),
    };
    let mut restart = options;
    restart.restart = true;
    restart.registry_wait_ms = 90_000;
    let started = Instant::now();
    let error = run_backfill(
        restart,
        Rc::new(StdDisk),
        &producer,
        &down,
        &FixedClock(NOW_MS),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, BackfillError::Registry(RegistryError::Unavailable(_))),
        "{error}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(90_000) && waited < Duration::from_millis(91_000),
        "gave up after {waited:?}, not after the 90 s asked for"
    );
    assert!(error.to_string().contains("--registry-wait-ms"), "{error}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_file_modified_during_the_run_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 20);
    let options = options_in(dir.path(), &csv);
    let appended = Cell::new(false);
    let path = csv.clone();
    let producer = TestProducer::new(move |_, _, _| {
        if !appended.replace(true) {
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            writeln!(file, "s9,1714536000000,0.3,14,,30,").unwrap();
        }
        Plan::Ack(Duration::ZERO)
    });
    let error = run(&options, &producer).await.unwrap_err();
    assert!(matches!(error, BackfillError::FileChanged { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("changed while it was being backfilled"),
        "{error}"
    );
}

#[test]
fn options_are_validated() {
    let good = BackfillOptions::new("log.csv", "gw-1");
    assert!(good.validate().is_ok());
    assert_eq!(
        good.effective_checkpoint_path(),
        PathBuf::from("log.csv.checkpoint")
    );
    assert_eq!(
        good.effective_rejects_path(),
        PathBuf::from("log.csv.rejects.csv")
    );
    type Change = fn(&mut BackfillOptions);
    let cases: [(&str, Change); 8] = [
        ("gateway id \"\": empty", |o| o.gateway_id.clear()),
        ("topic \"raw topic\"", |o| o.topic = "raw topic".into()),
        ("default depth -1 cm", |o| o.default_depth_cm = Some(-1)),
        ("max rate", |o| o.max_rate_rows_per_s = Some(0)),
        ("max in-flight rows 0", |o| o.max_in_flight_rows = 0),
        ("retention 0 ms", |o| o.retention_ms = Some(0)),
        ("must not be the log itself", |o| {
            o.checkpoint_path = Some("log.csv".into())
        }),
        ("must differ", |o| {
            o.rejects_path = Some("log.csv.checkpoint".into())
        }),
    ];
    for (expected, change) in cases {
        let mut options = good.clone();
        change(&mut options);
        let error = options.validate().unwrap_err().to_string();
        assert!(error.contains(expected), "{error} !~ {expected}");
    }
}

/// Streams the generated log `csv` through a window of 64 rows to a
/// producer that acknowledges out of order and keeps no records.
async fn stream_generated(dir: &Path, csv: &Path) -> (BackfillSummary, TestProducer) {
    let mut options = options_in(dir, csv);
    options.max_in_flight_rows = 64;
    options.checkpoint_every_rows = 10_000;
    let producer = TestProducer::new(|index, _, _| Plan::Ack(Duration::from_micros(index % 97)));
    producer.log.keep.set(false);
    let summary = run(&options, &producer).await.unwrap();
    (summary, producer)
}

/// A large file streams through a bounded window: never more than
/// `max_in_flight_rows` rows are unacknowledged, and nothing else grows with
/// the file (the line buffer is bounded by construction, see `lines::tests`;
/// the memory test below measures it on 10^6 rows).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_large_file_streams_through_a_bounded_window() {
    let dir = tempfile::tempdir().unwrap();
    let csv = generated_log(dir.path(), 100_000);
    let (summary, producer) = stream_generated(dir.path(), &csv).await;
    assert_eq!(summary.rows_produced, 100_000);
    assert_eq!(producer.log.acked_count.get(), 100_000);
    assert_eq!(producer.log.max_outstanding.get(), 64);
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Peak memory of a 10^6-row backfill stays far below the file's size.
/// Measures the whole process's peak RSS, so it must run alone:
/// `cargo test -p soilstream --lib backfill::tests::memory -- --ignored`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
#[ignore = "10^6 rows (about 10 s in debug) and a process-wide RSS measurement: run alone with --ignored"]
async fn memory_stays_bounded_on_a_million_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 1_000_000;
    let csv = generated_log(dir.path(), rows);
    let file_kib = std::fs::metadata(&csv).unwrap().len() / 1024;
    // Reset the peak ("VmHWM") to the current RSS (Linux 4.0+).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let baseline_kib = status_kib("VmRSS:");
    let (summary, producer) = stream_generated(dir.path(), &csv).await;
    let growth_kib = status_kib("VmHWM:").saturating_sub(baseline_kib);
    assert_eq!(summary.rows_produced, rows);
    assert_eq!(producer.log.max_outstanding.get(), 64);
    eprintln!("file {file_kib} KiB, peak RSS growth {growth_kib} KiB");
    assert!(
        growth_kib < 16 * 1024 && growth_kib < file_kib / 4,
        "peak RSS grew by {growth_kib} KiB on a {file_kib} KiB file"
    );
}
