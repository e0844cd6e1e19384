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
use super::lines::{Fields, MAX_LINE_BYTES};
use super::progress::{BackfillProgress, ProgressSnapshot};
use super::rate::TokenBucket;
use super::row::{Column, LogHeader, RowError};
use super::summary::{BackfillSummary, WarningCounts, format_event_time};
use super::{BackfillError, BackfillOptions, HEADER_GATEWAY_ID, HEADER_SEQ};
use crate::clock::Clock;
use crate::codec::{ReadingCodec, SOIL_READING_SCHEMA_V1, to_wire};
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
    let schema_id = register_schema(registry, &options.topic, options.registry_wait_ms).await?;
    let reader = files.open_log()?;
    let mut run = Run::new(
        options,
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

async fn register_schema(
    registry: &dyn SchemaRegistry,
    topic: &str,
    wait_ms: u64,
) -> Result<u32, BackfillError> {
    let subject = value_subject(topic);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut backoff = REGISTRY_FIRST_BACKOFF;
    let mut attempt: u32 = 1;
    loop {
        match registry.register(&subject, SOIL_READING_SCHEMA_V1).await {
            Ok(id) => return Ok(id),
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

type Delivery = LocalBoxFuture<'static, (u64, Result<RecordPosition, ProduceError>)>;

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
    header: Option<LogHeader>,
    rejects: RejectsWriter,
    bucket: Option<TokenBucket>,
    queue_full_backoff: Duration,
    pending: BTreeMap<u64, Pending>,
    in_flight: FuturesUnordered<Delivery>,
    /// Pending lines waiting to be resent (never also in flight).
    resend: BTreeSet<u64>,
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
    fn new(
        options: BackfillOptions,
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
            codec: ReadingCodec::v1(),
            started,
            reader,
            line_buffer: Vec::with_capacity(MAX_LINE_BYTES),
            fields: Fields::new(),
            header: None,
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
            Some((line, _)) => line - 1,
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
            while let Some(Some((line, result))) = self.in_flight.next().now_or_never() {
                self.settle(line, result)?;
            }
            self.checkpoint_if_due()?;
            if let Some(&line) = self.resend.first() {
                let resend_at = self.pending[&line].resend_at;
                if Instant::now() < resend_at {
                    self.wait_until(resend_at).await?;
                } else {
                    self.resend.remove(&line);
                    self.send(line, producer).await?;
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
                Some((line, result)) => self.settle(line, result)?,
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

    /// Reads one line and handles it: header, blank, skipped, rejected or sent.
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
        if self.header.is_none() {
            let header = self
                .parse_header(number, truncated)
                .map_err(BackfillError::Header)?;
            self.header = Some(header);
            self.handled_through_line = number;
            return Ok(());
        }
        self.rows_read += 1;
        let (reading, body) = match self.parse_row(number, truncated) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.reject(&error)?;
                self.handled_through_line = number;
                if self.options.strict {
                    return Err(Stop::Strict(error));
                }
                return Ok(());
            }
        };
        self.check_event_time(&reading, clock.now_ms());
        if number <= self.resume_after_line {
            self.rows_skipped_done += 1;
            self.handled_through_line = number;
            return Ok(());
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
        let previous = self.pending.insert(
            number,
            Pending {
                record,
                failures: 0,
                resend_at: Instant::now(),
            },
        );
        assert!(previous.is_none(), "line {number} read twice");
        self.send(number, producer).await?;
        self.handled_through_line = number;
        Ok(())
    }

    fn parse_header(&mut self, number: u64, truncated: bool) -> Result<LogHeader, RowError> {
        let error = |reason: String| RowError::new(&self.file_label, number, "header", reason);
        if truncated {
            return Err(error(format!("line longer than {MAX_LINE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&self.line_buffer)
            .map_err(|e| error(format!("not valid UTF-8 (at byte {})", e.valid_up_to())))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        self.fields.split(text).map_err(|e| error(e.to_string()))?;
        LogHeader::parse(&self.fields, &self.file_label, number)
    }

    /// Parses and validates a data row into a reading and its Avro body.
    fn parse_row(&mut self, number: u64, truncated: bool) -> Result<(Reading, Vec<u8>), RowError> {
        let file = &self.file_label;
        let row_error = |reason: String| RowError::new(file, number, "row", reason);
        if truncated {
            return Err(row_error(format!("line longer than {MAX_LINE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&self.line_buffer)
            .map_err(|e| row_error(format!("not valid UTF-8 (at byte {})", e.valid_up_to())))?;
        self.fields.split(text).map_err(|e| row_error(e.to_string()))?;
        let header = self.header.as_ref().expect("rows come after the header");
        let row = header.parse_row(&self.fields, file, number, self.options.default_depth_cm)?;
        let reading = Reading {
            gateway_id: self.options.gateway_id.clone(),
            sensor_id: row.sensor_id,
            seq: number,
            event_time_ms: row.event_time_ms,
            moisture_vwc: row.moisture_vwc,
            soil_temp_c: row.soil_temp_c,
            bulk_ec_ds_m: row.bulk_ec_ds_m,
            depth_cm: row.depth_cm,
            battery_v: row.battery_v,
        };
        if let Err(invalid) = reading.check_structure() {
            let column = match invalid.field {
                "sensor_id" => header.name_of(Column::SensorId),
                "moisture_vwc" => header.name_of(Column::Moisture),
                "soil_temp_c" => header.name_of(Column::Temperature),
                "bulk_ec_ds_m" => header.name_of(Column::Ec),
                "battery_v" => header.name_of(Column::BatteryV),
                _ => "row",
            };
            return Err(RowError::new(file, number, column, invalid.reason));
        }
        let body = self
            .codec
            .encode_body(&reading)
            .map_err(|e| row_error(e.to_string()))?;
        Ok((reading, body))
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

    /// Enqueues the pending row on `line`, after the rate limit allows it,
    /// backing off while the producer's queue is full.
    async fn send(&mut self, line: u64, producer: &dyn LogProducer) -> Result<(), Stop> {
        assert!(
            !self.resend.contains(&line),
            "a row is sent or queued for resend, not both"
        );
        while let Some(bucket) = self.bucket.as_mut() {
            match bucket.try_take(Instant::now()) {
                Ok(()) => break,
                Err(ready_at) => self.wait_until(ready_at).await?,
            }
        }
        loop {
            let record = self.pending[&line].record.clone();
            match producer.enqueue(record) {
                Ok(delivery) => {
                    self.queue_full_backoff = QUEUE_FULL_FIRST_BACKOFF;
                    self.in_flight
                        .push(async move { (line, delivery.await) }.boxed_local());
                    return Ok(());
                }
                Err(ProduceError::QueueFull) => {
                    let deadline = Instant::now() + self.queue_full_backoff;
                    self.queue_full_backoff = (self.queue_full_backoff * 2).min(QUEUE_FULL_MAX_BACKOFF);
                    self.wait_until(deadline).await?;
                }
                Err(error) => return self.delivery_failed(line, error),
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
            if let Some((line, result)) = completed {
                self.settle(line, result)?;
            }
        }
        Ok(())
    }

    fn settle(&mut self, line: u64, result: Result<RecordPosition, ProduceError>) -> Result<(), Stop> {
        match result {
            Ok(_position) => {
                let settled = self.pending.remove(&line);
                assert!(
                    settled.is_some(),
                    "a delivery report for line {line}, which is not pending"
                );
                self.rows_produced += 1;
                self.acked_since_checkpoint += 1;
                Ok(())
            }
            Err(error) => self.delivery_failed(line, error),
        }
    }

    /// Queues the row on `line` for a resend after a backoff, or stops the
    /// run when the producer is unusable or the attempts are used up.
    fn delivery_failed(&mut self, line: u64, error: ProduceError) -> Result<(), Stop> {
        if matches!(error, ProduceError::Fatal(_)) {
            return Err(Stop::Delivery { line, error });
        }
        let max_attempts = self.options.max_delivery_attempts;
        let pending = self.pending.get_mut(&line).expect("a failed row is pending");
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
        let queued = self.resend.insert(line);
        assert!(queued, "line {line} queued for resend twice");
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
        if self.header.is_none() {
            return Err(BackfillError::Header(RowError::new(
                &self.file_label,
                1,
                "header",
                "no header row: the file is empty or blank",
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
