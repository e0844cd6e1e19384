//! The backfill driver: reads rows, sends records, settles deliveries and
//! keeps the checkpoint.
//!
//! One task does everything, so the order of events depends only on the
//! order in which the producer's delivery futures complete and on tokio time
//! (deterministic in the simulator). Rows are dispatched in line order. A
//! row is *pending* from the moment it is read until the broker acknowledged
//! it; pending rows are either in flight or waiting to be resent after a
//! failed delivery (resends go first, in line order, before any new row).
//! The settled prefix — what the checkpoint records — is everything before
//! the lowest pending line.

use super::checkpoint::{CHECKPOINT_FORMAT_VERSION, Checkpoint, Fingerprint};
use super::files::{BackfillFiles, LogReader, RejectsWriter};
use super::format::LogDecoder;
use super::lines::{Fields, MAX_LINE_BYTES};
use super::progress::{BackfillProgress, ProgressSnapshot};
use super::rate::TokenBucket;
use super::row::{ParsedRow, RowError};
use super::summary::{BackfillSummary, WarningCounts, format_event_time};
use super::{BackfillError, BackfillOptions, HEADER_GATEWAY_ID, HEADER_SEQ};
use crate::clock::Clock;
use crate::codec::{ReadingCodec, SOIL_READING_SCHEMA_V1, SOIL_READING_SCHEMA_V3, to_wire};
use crate::disk::Disk;
use crate::model::Reading;
use crate::registry::{RegistryError, SchemaRegistry, value_subject};
use crate::transport::{LogProducer, OutboundRecord, ProduceError, RecordPosition};
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use tokio::time::{Duration, Instant};

/// First wait between registration attempts; doubles up to the maximum.
const REGISTRY_FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between registration attempts.
const REGISTRY_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a full producer queue; doubles up to the maximum.
const QUEUE_FULL_FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait after a full producer queue.
const QUEUE_FULL_MAX_BACKOFF: Duration = Duration::from_millis(500);
/// First wait before resending a row whose delivery failed; doubles per attempt.
const RESEND_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before resending a row.
const RESEND_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Rows read between progress updates.
const PROGRESS_EVERY_ROWS: u64 = 256;
/// Bad rows and event-time warnings logged individually (per kind); the
/// rest are only counted.
const MAX_LOGGED_PER_KIND: u64 = 5;

/// Backfills `options.csv_path` into `options.topic`.
///
/// Registers the v1 reading schema under the topic's value subject (retrying
/// while the registry is unavailable), resumes after the checkpoint unless
/// `options.restart`, and returns the summary once every row is settled and
/// the final checkpoint is written. A failure after rows were read carries a
/// partial summary ([`BackfillError::partial_summary`]); the checkpoint is
/// written (best effort) before returning it.
///
/// Dropping the returned future (a kill) loses nothing: the last checkpoint
/// written is a settled prefix, and a new run resumes after it.
///
/// Files (the log, the checkpoint, the rejects) are on `disk`: `StdDisk`
/// for a real file, the simulated disk inside the simulator.
///
/// Runs on the caller's task (the producer seam is not `Send`); file I/O is
/// blocking (through the [`Disk`] seam) on that task.
pub async fn run_backfill(
    options: BackfillOptions,
    disk: Rc<dyn Disk>,
    producer: &dyn LogProducer,
    registry: &dyn SchemaRegistry,
    clock: &dyn Clock,
    progress: &dyn BackfillProgress,
) -> Result<BackfillSummary, BackfillError> {
    options.validate()?;
    let started = Instant::now();
    let files = BackfillFiles::new(
        disk,
        options.csv_path.clone(),
        options.effective_checkpoint_path(),
        options.effective_rejects_path(),
    );
    let fingerprint = files.fingerprint()?;
    let resume_after_line = if options.restart {
        0
    } else {
        match files.read_checkpoint()? {
            None => 0,
            Some(checkpoint) => {
                checkpoint
                    .check_resumable(
                        &fingerprint,
                        &options.gateway_id,
                        &options.topic,
                        options.default_depth_cm,
                        options.decoding_digest().as_deref(),
                    )
                    .map_err(|reason| BackfillError::CheckpointMismatch {
                        path: files.checkpoint_path().display().to_string(),
                        reason,
                    })?;
                checkpoint.acked_through_line
            }
        }
    };
    if resume_after_line > 0 {
        tracing::info!(
            file = %files.csv_path().display(),
            resume_after_line,
            "resuming from checkpoint"
        );
    }
    let decoder = LogDecoder::new(
        &options.csv_path,
        &options.csv_path.display().to_string(),
        options.format,
        options.cell_rules(),
    )
    .map_err(BackfillError::Header)?;
    let schema_id = register_schema(registry, &options.topic, options.registry_wait_ms).await?;
    let reader = files.open_log()?;
    let mut run = Run::new(
        options,
        decoder,
        files,
        fingerprint,
        schema_id,
        reader,
        resume_after_line,
        started,
    );
    progress.begin(run.fingerprint.size_bytes);
    let result = match run.produce_all(producer, clock, progress).await {
        Ok(()) => run.finish(),
        Err(stop) => Err(run.fail(stop)),
    };
    progress.end(&run.snapshot());
    result
}

/// The schemas the backfill registers, in order; it writes with the last.
///
/// The gateway writes version 1 (its spool holds v1 bodies); the backfill
/// writes version 3 (optional temperature, the provider's flag). Version 3
/// reads version 1 (BACKWARD) but not the other way round, so a subject
/// whose first version were v3 would refuse every gateway's v1 afterwards.
/// Registering v1 first (a no-op when it is there already) keeps the
/// subject's history in upgrade order whichever program reaches a fresh
/// registry first.
const SCHEMAS_IN_REGISTRATION_ORDER: [&str; 2] = [SOIL_READING_SCHEMA_V1, SOIL_READING_SCHEMA_V3];

async fn register_schema(
    registry: &dyn SchemaRegistry,
    topic: &str,
    wait_ms: u64,
) -> Result<u32, BackfillError> {
    let subject = value_subject(topic);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut backoff = REGISTRY_FIRST_BACKOFF;
    let mut attempt: u32 = 1;
    let mut schema_id = None;
    for schema in SCHEMAS_IN_REGISTRATION_ORDER {
        loop {
            match registry.register(&subject, schema).await {
                Ok(id) => {
                    schema_id = Some(id);
                    break;
                }
                Err(RegistryError::Unavailable(reason)) if Instant::now() < deadline => {
                    let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    tracing::warn!(
                        %subject,
                        attempt,
                        %reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "schema registry unavailable; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(REGISTRY_MAX_BACKOFF);
                    attempt = attempt.saturating_add(1);
                }
                Err(RegistryError::Unavailable(reason)) => {
                    return Err(BackfillError::Registry(RegistryError::Unavailable(format!(
                        "{reason} (retried for {wait_ms} ms over {attempt} attempts; \
                         --registry-wait-ms waits longer)"
                    ))));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(schema_id.expect("at least one schema is registered"))
}

/// Why production stopped early.
enum Stop {
    Strict(RowError),
    Delivery { line: u64, error: ProduceError },
    Other(BackfillError),
}

impl From<BackfillError> for Stop {
    fn from(error: BackfillError) -> Self {
        Stop::Other(error)
    }
}

/// A row read and not yet acknowledged.
struct Pending {
    record: OutboundRecord,
    /// Failed deliveries so far.
    failures: u32,
    /// When it may be resent (meaningful while it waits for a resend).
    resend_at: Instant,
}

/// A row's place: its physical line and its column group on that line.
type RowKey = (u64, u32);

type Delivery = LocalBoxFuture<'static, (RowKey, Result<RecordPosition, ProduceError>)>;

struct Run {
    options: BackfillOptions,
    file_label: String,
    files: BackfillFiles,
    fingerprint: Fingerprint,
    schema_id: u32,
    codec: ReadingCodec,
    started: Instant,
    reader: LogReader,
    line_buffer: Vec<u8>,
    fields: Fields,
    decoder: LogDecoder,
    /// The readings (or errors) of the line being handled.
    decoded: Vec<Result<ParsedRow, RowError>>,
    rejects: RejectsWriter,
    bucket: Option<TokenBucket>,
    queue_full_backoff: Duration,
    pending: BTreeMap<RowKey, Pending>,
    in_flight: FuturesUnordered<Delivery>,
    /// Pending rows waiting to be resent (never also in flight).
    resend: BTreeSet<RowKey>,
    input_done: bool,
    resume_after_line: u64,
    /// Every line up to this one has been read and is settled or pending.
    handled_through_line: u64,
    checkpointed_line: u64,
    acked_since_checkpoint: u64,
    rows_read: u64,
    rows_produced: u64,
    rows_skipped_done: u64,
    delivery_retries: u64,
    event_time_min_ms: Option<i64>,
    event_time_max_ms: Option<i64>,
    warnings: WarningCounts,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    fn new(
        options: BackfillOptions,
        decoder: LogDecoder,
        files: BackfillFiles,
        fingerprint: Fingerprint,
        schema_id: u32,
        reader: LogReader,
        resume_after_line: u64,
        started: Instant,
    ) -> Self {
        let bucket = options
            .max_rate_rows_per_s
            .map(|rate| TokenBucket::new(rate, Instant::now()));
        Self {
            file_label: options.csv_path.display().to_string(),
            rejects: files.rejects(),
            options,
            files,
            fingerprint,
            schema_id,
            codec: ReadingCodec::v3(),
            started,
            reader,
            line_buffer: Vec::with_capacity(MAX_LINE_BYTES),
            fields: Fields::new(),
            decoder,
            decoded: Vec::new(),
            bucket,
            queue_full_backoff: QUEUE_FULL_FIRST_BACKOFF,
            pending: BTreeMap::new(),
            in_flight: FuturesUnordered::new(),
            resend: BTreeSet::new(),
            input_done: false,
            resume_after_line,
            handled_through_line: 0,
            checkpointed_line: resume_after_line,
            acked_since_checkpoint: 0,
            rows_read: 0,
            rows_produced: 0,
            rows_skipped_done: 0,
            delivery_retries: 0,
            event_time_min_ms: None,
            event_time_max_ms: None,
            warnings: WarningCounts::default(),
        }
    }

    /// Every line before the lowest pending one is settled.
    fn settled_through_line(&self) -> u64 {
        match self.pending.first_key_value() {
            Some(((line, _), _)) => line - 1,
            None => self.handled_through_line,
        }
    }

    fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_read: self.reader.get_ref().get_ref().bytes_read(),
            file_size_bytes: self.fingerprint.size_bytes,
            rows_read: self.rows_read,
            rows_produced: self.rows_produced,
            rows_skipped_done: self.rows_skipped_done,
            rows_rejected: self.rejects.rows(),
            rows_in_flight: self.pending.len(),
        }
    }

    async fn produce_all(
        &mut self,
        producer: &dyn LogProducer,
        clock: &dyn Clock,
        progress: &dyn BackfillProgress,
    ) -> Result<(), Stop> {
        let mut last_progress_rows = 0;
        loop {
            while let Some(Some((key, result))) = self.in_flight.next().now_or_never() {
                self.settle(key, result)?;
            }
            self.checkpoint_if_due()?;
            if let Some(&key) = self.resend.first() {
                let resend_at = self.pending[&key].resend_at;
                if Instant::now() < resend_at {
                    self.wait_until(resend_at).await?;
                } else {
                    self.resend.remove(&key);
                    self.send(key, producer).await?;
                }
                continue;
            }
            if !self.input_done && self.pending.len() < self.options.max_in_flight_rows {
                self.read_next(producer, clock).await?;
                if self.rows_read >= last_progress_rows + PROGRESS_EVERY_ROWS {
                    last_progress_rows = self.rows_read;
                    progress.update(&self.snapshot());
                }
                continue;
            }
            match self.in_flight.next().await {
                Some((key, result)) => self.settle(key, result)?,
                None => {
                    assert!(self.resend.is_empty(), "resends are handled before waiting");
                    assert!(
                        self.pending.is_empty(),
                        "pending rows are in flight or queued for resend"
                    );
                    assert!(self.input_done, "reading stops only at the window or the end");
                    return Ok(());
                }
            }
        }
    }

    /// Reads one line and handles it: header, blank, skipped, rejected or
    /// sent (a wide line holds several readings: each is a row).
    async fn read_next(&mut self, producer: &dyn LogProducer, clock: &dyn Clock) -> Result<(), Stop> {
        let read = self.reader.next_line().map_err(|source| BackfillError::Io {
            op: "read",
            path: self.file_label.clone(),
            source,
        })?;
        let Some(line) = read else {
            self.input_done = true;
            return Ok(());
        };
        let (number, truncated, blank) = (line.number, line.truncated, line.is_blank());
        self.line_buffer.clear();
        self.line_buffer.extend_from_slice(line.bytes);
        if blank {
            self.handled_through_line = number;
            return Ok(());
        }
        let in_header = self.decoder.wants_header();
        let what = if in_header { "header" } else { "row" };
        let text = match decode_text(&self.line_buffer, truncated) {
            Ok(text) => text,
            Err(reason) => {
                let error = RowError::new(&self.file_label, number, what, reason);
                if in_header {
                    return Err(BackfillError::Header(error).into());
                }
                self.decoded.clear();
                self.decoded.push(Err(error));
                return self.dispatch(number, producer, clock).await;
            }
        };
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        let fed = self.decoder.line(number, text, &mut self.fields, &mut decoded);
        self.decoded = decoded;
        if let Err(error) = fed {
            return Err(BackfillError::Header(error).into());
        }
        self.dispatch(number, producer, clock).await
    }

    /// Rejects, skips or sends every reading decoded from line `number`.
    async fn dispatch(
        &mut self,
        number: u64,
        producer: &dyn LogProducer,
        clock: &dyn Clock,
    ) -> Result<(), Stop> {
        let decoded = std::mem::take(&mut self.decoded);
        for item in decoded {
            self.rows_read += 1;
            let (group, reading, body) = match item.and_then(|row| self.encode(row)) {
                Ok(encoded) => encoded,
                Err(error) => {
                    self.reject(&error)?;
                    if self.options.strict {
                        self.handled_through_line = number;
                        return Err(Stop::Strict(error));
                    }
                    continue;
                }
            };
            self.check_event_time(&reading, clock.now_ms());
            if number <= self.resume_after_line {
                self.rows_skipped_done += 1;
                continue;
            }
            let record = OutboundRecord {
                topic: self.options.topic.clone(),
                key: reading.sensor_id.into_bytes(),
                partition: None,
                value: to_wire(self.schema_id, &body),
                timestamp_ms: reading.event_time_ms,
                headers: vec![
                    (HEADER_GATEWAY_ID.to_owned(), reading.gateway_id.into_bytes()),
                    (HEADER_SEQ.to_owned(), reading.seq.to_string().into_bytes()),
                ],
            };
            let key = (number, group);
            let previous = self.pending.insert(
                key,
                Pending {
                    record,
                    failures: 0,
                    resend_at: Instant::now(),
                },
            );
            assert!(previous.is_none(), "row {key:?} read twice");
            self.send(key, producer).await?;
        }
        self.handled_through_line = number;
        Ok(())
    }

    /// Validates a decoded row into a reading and its Avro body.
    fn encode(&self, row: ParsedRow) -> Result<(u32, Reading, Vec<u8>), RowError> {
        let (number, group) = (row.line, row.group);
        let planted_zero = self.options.planted.missing_temperature_as_zero && row.soil_temp_c.is_none();
        let reading = Reading {
            gateway_id: self.options.gateway_id.clone(),
            sensor_id: row.sensor_id,
            seq: number,
            event_time_ms: row.event_time_ms,
            moisture_vwc: row.moisture_vwc,
            soil_temp_c: if planted_zero { Some(0.0) } else { row.soil_temp_c },
            bulk_ec_ds_m: row.bulk_ec_ds_m,
            depth_cm: row.depth_cm,
            battery_v: row.battery_v,
            source_flag: row.source_flag,
        };
        if let Err(invalid) = reading.check_structure() {
            let column = self.decoder.column_of(invalid.field, group);
            return Err(RowError::new(&self.file_label, number, column, invalid.reason));
        }
        let body = self
            .codec
            .encode_body(&reading)
            .map_err(|e| RowError::new(&self.file_label, number, "row", e.to_string()))?;
        Ok((group, reading, body))
    }

    fn reject(&mut self, error: &RowError) -> Result<(), BackfillError> {
        if self.rejects.rows() < MAX_LOGGED_PER_KIND {
            tracing::warn!("bad row: {error}");
        } else if self.rejects.rows() == MAX_LOGGED_PER_KIND {
            tracing::warn!(
                "more bad rows; see {} for all of them",
                self.rejects.path().display()
            );
        }
        self.rejects
            .write(error.line, &error.column, &error.reason, &self.line_buffer)
    }

    fn check_event_time(&mut self, reading: &Reading, now_ms: i64) {
        let t = reading.event_time_ms;
        self.event_time_min_ms = Some(self.event_time_min_ms.map_or(t, |m| m.min(t)));
        self.event_time_max_ms = Some(self.event_time_max_ms.map_or(t, |m| m.max(t)));
        if let Some(retention_ms) = self.options.retention_ms
            && t < now_ms.saturating_sub(retention_ms)
        {
            self.warnings.older_than_retention += 1;
            if self.warnings.older_than_retention <= MAX_LOGGED_PER_KIND {
                tracing::warn!(
                    line = reading.seq,
                    sensor_id = %reading.sensor_id,
                    event_time = %format_event_time(t),
                    retention_ms,
                    "event time is older than the topic's retention: the broker may delete the record \
                     soon after it lands"
                );
            }
        }
        if t > now_ms.saturating_add(self.options.future_tolerance_ms) {
            self.warnings.in_future += 1;
            if self.warnings.in_future <= MAX_LOGGED_PER_KIND {
                tracing::warn!(
                    line = reading.seq,
                    sensor_id = %reading.sensor_id,
                    event_time = %format_event_time(t),
                    now = %format_event_time(now_ms),
                    "event time is in the future (logger clock wrong?)"
                );
            }
        }
    }

    /// Enqueues the pending row `key`, after the rate limit allows it,
    /// backing off while the producer's queue is full.
    async fn send(&mut self, key: RowKey, producer: &dyn LogProducer) -> Result<(), Stop> {
        assert!(
            !self.resend.contains(&key),
            "a row is sent or queued for resend, not both"
        );
        while let Some(bucket) = self.bucket.as_mut() {
            match bucket.try_take(Instant::now()) {
                Ok(()) => break,
                Err(ready_at) => self.wait_until(ready_at).await?,
            }
        }
        loop {
            let record = self.pending[&key].record.clone();
            match producer.enqueue(record) {
                Ok(delivery) => {
                    self.queue_full_backoff = QUEUE_FULL_FIRST_BACKOFF;
                    self.in_flight
                        .push(async move { (key, delivery.await) }.boxed_local());
                    return Ok(());
                }
                Err(ProduceError::QueueFull) => {
                    let deadline = Instant::now() + self.queue_full_backoff;
                    self.queue_full_backoff = (self.queue_full_backoff * 2).min(QUEUE_FULL_MAX_BACKOFF);
                    self.wait_until(deadline).await?;
                }
                Err(error) => return self.delivery_failed(key, error),
            }
        }
    }

    /// Waits until `deadline`, settling deliveries that complete meanwhile.
    async fn wait_until(&mut self, deadline: Instant) -> Result<(), Stop> {
        while Instant::now() < deadline {
            if self.in_flight.is_empty() {
                tokio::time::sleep_until(deadline).await;
                return Ok(());
            }
            let completed = tokio::select! {
                biased;
                completed = self.in_flight.next() => completed,
                () = tokio::time::sleep_until(deadline) => None,
            };
            if let Some((key, result)) = completed {
                self.settle(key, result)?;
            }
        }
        Ok(())
    }

    fn settle(&mut self, key: RowKey, result: Result<RecordPosition, ProduceError>) -> Result<(), Stop> {
        match result {
            Ok(_position) => {
                let settled = self.pending.remove(&key);
                assert!(
                    settled.is_some(),
                    "a delivery report for row {key:?}, which is not pending"
                );
                self.rows_produced += 1;
                self.acked_since_checkpoint += 1;
                Ok(())
            }
            Err(error) => self.delivery_failed(key, error),
        }
    }

    /// Queues the row `key` for a resend after a backoff, or stops the run
    /// when the producer is unusable or the attempts are used up.
    fn delivery_failed(&mut self, key: RowKey, error: ProduceError) -> Result<(), Stop> {
        let line = key.0;
        if matches!(error, ProduceError::Fatal(_)) {
            return Err(Stop::Delivery { line, error });
        }
        let max_attempts = self.options.max_delivery_attempts;
        let pending = self.pending.get_mut(&key).expect("a failed row is pending");
        pending.failures += 1;
        if pending.failures >= max_attempts {
            return Err(Stop::Delivery { line, error });
        }
        let backoff = RESEND_FIRST_BACKOFF
            .saturating_mul(1 << (pending.failures - 1).min(16))
            .min(RESEND_MAX_BACKOFF);
        pending.resend_at = Instant::now() + backoff;
        tracing::warn!(line, failures = pending.failures, %error, "delivery failed; resending");
        self.delivery_retries += 1;
        let queued = self.resend.insert(key);
        assert!(queued, "row {key:?} queued for resend twice");
        Ok(())
    }

    fn checkpoint_if_due(&mut self) -> Result<(), BackfillError> {
        if self.acked_since_checkpoint >= self.options.checkpoint_every_rows
            && self.settled_through_line() > self.checkpointed_line
        {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    fn write_checkpoint(&mut self) -> Result<(), BackfillError> {
        let line = self.settled_through_line();
        assert!(line >= self.checkpointed_line, "the settled prefix never shrinks");
        self.files.write_checkpoint(&Checkpoint {
            format_version: CHECKPOINT_FORMAT_VERSION,
            file: self.fingerprint.clone(),
            gateway_id: self.options.gateway_id.clone(),
            topic: self.options.topic.clone(),
            default_depth_cm: self.options.default_depth_cm,
            decoding: self.options.decoding_digest(),
            acked_through_line: line,
        })?;
        self.checkpointed_line = line;
        self.acked_since_checkpoint = 0;
        Ok(())
    }

    fn summary(&self, completed: bool) -> BackfillSummary {
        BackfillSummary {
            file: self.file_label.clone(),
            topic: self.options.topic.clone(),
            gateway_id: self.options.gateway_id.clone(),
            completed,
            rows_read: self.rows_read,
            rows_produced: self.rows_produced,
            rows_skipped_done: self.rows_skipped_done,
            rows_rejected: self.rejects.rows(),
            delivery_retries: self.delivery_retries,
            resumed_after_line: self.resume_after_line,
            acked_through_line: self.checkpointed_line,
            event_time_min_ms: self.event_time_min_ms,
            event_time_max_ms: self.event_time_max_ms,
            event_time_min: self.event_time_min_ms.map(format_event_time),
            event_time_max: self.event_time_max_ms.map(format_event_time),
            warnings: self.warnings,
            rejects_path: (self.rejects.rows() > 0).then(|| self.rejects.path().display().to_string()),
            checkpoint_path: self.files.checkpoint_path().display().to_string(),
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn log_warning_totals(&self) {
        if self.warnings.older_than_retention > MAX_LOGGED_PER_KIND {
            tracing::warn!(
                rows = self.warnings.older_than_retention,
                "rows with event times older than the topic's retention"
            );
        }
        if self.warnings.in_future > MAX_LOGGED_PER_KIND {
            tracing::warn!(
                rows = self.warnings.in_future,
                "rows with event times in the future"
            );
        }
    }

    /// Every row is settled: checks the file did not change, writes the
    /// final checkpoint and the summary.
    fn finish(&mut self) -> Result<BackfillSummary, BackfillError> {
        let last_line = self.reader.line_number();
        assert_eq!(
            self.settled_through_line(),
            last_line,
            "all lines settled at the end"
        );
        let hashing = self.reader.get_ref().get_ref();
        let end = Fingerprint {
            size_bytes: hashing.bytes_read(),
            sha256: hashing.sha256_hex(),
        };
        if end != self.fingerprint {
            // No checkpoint: the rows sent came partly from other content.
            return Err(BackfillError::FileChanged {
                path: self.file_label.clone(),
                reason: format!(
                    "{} at the start, {} at the end",
                    self.fingerprint.short(),
                    end.short()
                ),
                summary: Box::new(self.summary(false)),
            });
        }
        if self.decoder.wants_header() {
            let what = match self.decoder.format() {
                Some(format) => format!(
                    "the {} header is incomplete: the file ends inside it",
                    format.name()
                ),
                None => "no header row: the file is empty or blank".to_owned(),
            };
            return Err(BackfillError::Header(RowError::new(
                &self.file_label,
                1,
                "header",
                what,
            )));
        }
        if self.resume_after_line > last_line {
            return Err(BackfillError::CheckpointUnreadable {
                path: self.files.checkpoint_path().display().to_string(),
                reason: format!(
                    "it settles lines up to {} but the file has {last_line} lines",
                    self.resume_after_line
                ),
            });
        }
        self.rejects.finish()?;
        self.write_checkpoint()?;
        self.log_warning_totals();
        let summary = self.summary(true);
        assert_eq!(
            summary.rows_read,
            summary.rows_produced + summary.rows_skipped_done + summary.rows_rejected,
            "every row is produced, skipped or rejected"
        );
        tracing::info!(
            rows_read = summary.rows_read,
            produced = summary.rows_produced,
            skipped_done = summary.rows_skipped_done,
            rejected = summary.rows_rejected,
            "backfill complete"
        );
        Ok(summary)
    }

    /// Stops early: writes what is settled to the checkpoint (best effort)
    /// and turns `stop` into the error to return.
    fn fail(&mut self, stop: Stop) -> BackfillError {
        if let Err(e) = self.rejects.finish() {
            tracing::error!("{e}");
        }
        if self.settled_through_line() > self.checkpointed_line
            && let Err(e) = self.write_checkpoint()
        {
            tracing::error!("could not save the checkpoint: {e}");
        }
        self.log_warning_totals();
        let summary = Box::new(self.summary(false));
        match stop {
            Stop::Strict(error) => BackfillError::StrictReject { error, summary },
            Stop::Delivery { line, error } => BackfillError::Delivery { line, error, summary },
            Stop::Other(error) => error,
        }
    }
}

/// The text of a line, or why it cannot be read.
fn decode_text(bytes: &[u8], truncated: bool) -> Result<&str, String> {
    if truncated {
        return Err(format!("line longer than {MAX_LINE_BYTES} bytes"));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}
