//! The qaqc component: group membership, per-partition rebuild, processing,
//! produce, commit. Shaped like the gateway: [`run_qaqc`] takes the
//! world-independent [`QaqcSettings`], the world-specific [`QaqcParts`] and a
//! [`Shutdown`]; the CLI wires rdkafka, the simulator wires turmoil hosts.
//!
//! The exactly-once protocol per input partition (docs/qaqc.md):
//!
//! 1. On assignment the partition's state is rebuilt from its outputs (the
//!    same partition of every output topic), outputs the state says are
//!    missing are written (reconciliation), and input resumes at the
//!    group's committed offset. Records re-read whose outputs exist are
//!    recognised (dedup by identity, quarantined offsets) and skipped.
//! 2. Every output carries the source partition and offset; the input
//!    offset committed for a partition is the lowest source offset of its
//!    outputs not yet acknowledged (or the position, when none is pending).
//! 3. On revocation the in-flight outputs are awaited (bounded), the
//!    partitions committed, and their state dropped; on loss the state is
//!    dropped without committing. A failed delivery drops and rebuilds every
//!    owned partition with a new producer session.

use super::checks::{QuarantineReason, Rejection};
use super::config::QaqcSettings;
use super::metrics::QaqcMetrics;
use super::records::{
    HEADER_DETAIL, HEADER_PAYLOAD_DIGEST, HEADER_REASON, HEADER_SRC_OFFSET, HEADER_SRC_PARTITION,
    OutputCodecs,
};
use super::state::{Ctx, Decoded, Output, OutputBody, PartitionState, PartitionStatus, payload_digest};
use crate::clock::Clock;
use crate::codec::{ReadingCodec, from_wire, to_wire};
use crate::component::{Backoff, Shutdown, retry_until_shutdown};
use crate::decode::{DecodeError, ReadingDecoder};
use crate::disk::Disk;
use crate::gateway::{HEADER_GATEWAY_ID, HEADER_SEQ, ProducerFactory};
use crate::registry::{RegistryError, SchemaRegistry, value_subject};
use crate::transport::{
    ConsumeError, ConsumedRecord, DeliveryFuture, GroupConsumer, GroupEvent, LogConsumer, LogProducer,
    OutboundRecord, PartitionReader, ProduceError, RecordPosition,
};
use apache_avro::Schema;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use tokio::time::{Duration, Instant, sleep};

/// Builds the plain (assign-based) consumers qaqc reads its outputs back with.
pub type ReaderFactory = crate::transport::ConsumerFactory;

/// What one owned partition looks like, for the harness and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnedPartitionStatus {
    /// Next raw offset to read.
    pub position: i64,
    /// Last offset committed by this instance (next to read), if any.
    pub committed: Option<i64>,
    /// Outputs enqueued and not acknowledged.
    pub pending_outputs: u64,
    /// State sizes.
    pub state: PartitionStatus,
}

/// What a qaqc instance looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QaqcStatus {
    /// Owned partitions that finished their rebuild.
    pub partitions: BTreeMap<i32, OwnedPartitionStatus>,
    /// Whether the instance is waiting for the registry or a producer.
    pub blocked: bool,
}

/// Hooks through which qaqc reports what it does (harness, tests). Every
/// method defaults to nothing.
pub trait QaqcObserver {
    /// Partitions were assigned.
    fn on_assigned(&self, _partitions: &[i32]) {}
    /// A partition's state was rebuilt from `records_read` output records.
    fn on_rebuilt(&self, _partition: i32, _records_read: u64, _outputs_reconciled: u64) {}
    /// Partitions were revoked (clean hand-over) or lost.
    fn on_released(&self, _partitions: &[i32], _lost: bool) {}
    /// The status after a step of the main loop.
    fn on_status(&self, _status: &QaqcStatus) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoQaqcObserver;

impl QaqcObserver for NoQaqcObserver {}

/// The world-specific parts a qaqc instance runs with.
pub struct QaqcParts {
    /// Where checkpoints live.
    pub disk: Rc<dyn Disk>,
    /// The processor's clock (future event times, idle windows, silence).
    pub clock: Rc<dyn Clock>,
    /// Writer schemas of raw records; registration of the output schemas.
    pub registry: Rc<dyn SchemaRegistry>,
    /// Membership of the qaqc group on the raw topic.
    pub group: Box<dyn GroupConsumer>,
    /// Plain consumers for reading outputs back.
    pub reader_factory: ReaderFactory,
    /// Creates the producer (again after a failed delivery).
    pub producer_factory: ProducerFactory,
    /// Receives progress events.
    pub observer: Rc<dyn QaqcObserver>,
    /// Metrics to update.
    pub metrics: QaqcMetrics,
}

/// Why qaqc stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum QaqcError {
    /// The settings are invalid.
    #[error("invalid qaqc settings: {0}")]
    Settings(String),
    /// Input and outputs are not co-partitioned.
    #[error(
        "topic `{topic}` has {found} partitions but the raw topic `{raw}` has {expected}: outputs must be \
         co-partitioned with the input; recreate `{topic}` with {expected} partitions"
    )]
    NotCoPartitioned {
        /// The output topic.
        topic: String,
        /// Its partition count.
        found: u32,
        /// The raw topic.
        raw: String,
        /// The raw topic's partition count.
        expected: u32,
    },
    /// A topic does not exist.
    #[error("topic `{0}` does not exist; create it (soilstream qaqc creates missing output topics at start)")]
    MissingTopic(String),
    /// The consumer group could not be joined.
    #[error("cannot subscribe to `{topic}`: {reason}")]
    Subscribe {
        /// Raw topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QaqcReport {
    /// Partitions assigned over the run.
    pub assignments: u64,
    /// Rebuilds done.
    pub rebuilds: u64,
}

/// Schema ids of the four output schemas.
#[derive(Debug, Clone, Copy)]
struct SchemaIds {
    clean: u32,
    flags: u32,
    aggregates: u32,
    alerts: u32,
}

/// A delivery report: partition, ownership epoch, source offset, the
/// aggregate's write sequence number if it is one, the output topic, the
/// result.
type Delivered = (
    i32,
    u64,
    i64,
    Option<u64>,
    Rc<str>,
    Result<RecordPosition, ProduceError>,
);
type Delivery = LocalBoxFuture<'static, Delivered>;

struct Owned {
    state: PartitionState,
    /// Next raw offset to read.
    position: i64,
    committed: Option<i64>,
    /// src offset -> outputs not acknowledged.
    pending: BTreeMap<i64, u32>,
    /// Ownership epoch: deliveries of an older epoch are ignored.
    epoch: u64,
    /// Aggregates written and not yet handed to the alert machines, in
    /// write order, with whether they were acknowledged.
    aggregates_in_flight: std::collections::VecDeque<(u64, super::records::WindowAggregate, bool)>,
    next_aggregate_seq: u64,
    /// For each output topic, the offset after its last acknowledged record
    /// (what a checkpoint records).
    output_offsets: BTreeMap<String, i64>,
    last_checkpoint: Instant,
}

impl Owned {
    fn committable(&self, planted_commit_before_ack: bool) -> i64 {
        if planted_commit_before_ack {
            return self.position;
        }
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.position)
            .min(self.position)
    }

    fn pending_outputs(&self) -> u64 {
        self.pending.values().map(|c| u64::from(*c)).sum()
    }
}

/// The parts the main loop itself works with.
struct EngineParts {
    clock: Rc<dyn Clock>,
    group: Box<dyn GroupConsumer>,
    producer_factory: ProducerFactory,
    observer: Rc<dyn QaqcObserver>,
    metrics: QaqcMetrics,
}

/// A rebuild running in the background.
struct Rebuilding {
    token: u64,
    task: tokio::task::JoinHandle<()>,
}

/// A finished background rebuild.
struct RebuildDone {
    partition: i32,
    token: u64,
    rebuilt: Rebuilt,
}

struct Engine {
    settings: QaqcSettings,
    parts: EngineParts,
    rebuilder: Rc<Rebuilder>,
    ids: SchemaIds,
    producer: Rc<dyn LogProducer>,
    owned: BTreeMap<i32, Owned>,
    /// Assigned partitions whose committed offset is still to be asked.
    awaiting_committed: Vec<i32>,
    rebuilding: BTreeMap<i32, Rebuilding>,
    rebuilt_tx: tokio::sync::mpsc::UnboundedSender<RebuildDone>,
    rebuilt_rx: tokio::sync::mpsc::UnboundedReceiver<RebuildDone>,
    next_token: u64,
    in_flight: FuturesUnordered<Delivery>,
    /// Outputs decided and not yet handed to the producer (its queue was
    /// full), in order, with their partition and ownership epoch.
    unsent: std::collections::VecDeque<(i32, u64, Output)>,
    next_epoch: u64,
    delivery_failed: Option<ProduceError>,
    report: QaqcReport,
    /// Reads the raw topic's watermarks for the lag metric.
    lag_reader: Option<Box<dyn LogConsumer>>,
}

/// How often the lag per partition is measured, ms.
const LAG_INTERVAL_MS: u64 = 10_000;

/// Runs qaqc until `shutdown` fires.
pub async fn run_qaqc(
    settings: QaqcSettings,
    parts: QaqcParts,
    mut shutdown: Shutdown,
) -> Result<QaqcReport, QaqcError> {
    settings.validate().map_err(QaqcError::Settings)?;
    let mut backoff = Backoff::new(500, 30_000);
    let codecs = OutputCodecs::default();
    let registry = parts.registry.clone();
    let topics = settings.topics.clone();
    let register = |topic: &str, schema: &'static str| {
        let registry = registry.clone();
        let subject = value_subject(topic);
        async move { registry.register(&subject, schema).await }
    };
    let mut ids = [0u32; 4];
    for (slot, (topic, schema)) in ids.iter_mut().zip([
        (&topics.clean, codecs.clean.schema_text()),
        (&topics.flags, codecs.flags.schema_text()),
        (&topics.aggregates, codecs.aggregates.schema_text()),
        (&topics.alerts, codecs.alerts.schema_text()),
    ]) {
        let Some(id) = retry_until_shutdown("schema registration", &mut backoff, &mut shutdown, || {
            register(topic, schema)
        })
        .await
        else {
            return Ok(QaqcReport::default());
        };
        *slot = id;
    }
    let ids = SchemaIds {
        clean: ids[0],
        flags: ids[1],
        aggregates: ids[2],
        alerts: ids[3],
    };
    tracing::info!(?ids, "output schemas registered");
    if !check_co_partitioning(&settings, &parts, &mut shutdown, &mut backoff).await? {
        return Ok(QaqcReport::default());
    }
    let Some(producer) = retry_until_shutdown("producer creation", &mut backoff, &mut shutdown, || {
        std::future::ready((parts.producer_factory)())
    })
    .await
    else {
        return Ok(QaqcReport::default());
    };
    let QaqcParts {
        disk,
        clock,
        registry,
        mut group,
        reader_factory,
        producer_factory,
        observer,
        metrics,
    } = parts;
    group
        .subscribe(&settings.topics.raw)
        .map_err(|e| QaqcError::Subscribe {
            topic: settings.topics.raw.clone(),
            reason: e.to_string(),
        })?;
    let decoder = ReadingDecoder::with_registry(registry.clone(), ReadingCodec::reader());
    let rebuilder = Rc::new(Rebuilder {
        settings: settings.clone(),
        ids,
        reader_factory,
        registry,
        disk,
        clock: clock.clone(),
        metrics: metrics.clone(),
        codecs,
        decoder,
        writers: RefCell::new(BTreeMap::new()),
    });
    let (rebuilt_tx, rebuilt_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut engine = Engine {
        settings,
        parts: EngineParts {
            clock,
            group,
            producer_factory,
            observer,
            metrics,
        },
        rebuilder,
        ids,
        producer,
        owned: BTreeMap::new(),
        awaiting_committed: Vec::new(),
        rebuilding: BTreeMap::new(),
        rebuilt_tx,
        rebuilt_rx,
        next_token: 1,
        in_flight: FuturesUnordered::new(),
        unsent: std::collections::VecDeque::new(),
        next_epoch: 1,
        delivery_failed: None,
        report: QaqcReport::default(),
        lag_reader: None,
    };
    tracing::info!(instance = %engine.settings.qaqc.instance_id, group = %engine.settings.qaqc.group_id, "qaqc running");
    engine.run(&mut shutdown).await;
    tracing::info!(instance = %engine.settings.qaqc.instance_id, "qaqc stopped");
    Ok(engine.report)
}

/// Checks that every output topic has the raw topic's partition count;
/// `Ok(false)` if shutdown came first.
async fn check_co_partitioning(
    settings: &QaqcSettings,
    parts: &QaqcParts,
    shutdown: &mut Shutdown,
    backoff: &mut Backoff,
) -> Result<bool, QaqcError> {
    let topics = &settings.topics;
    loop {
        let attempt: Result<(), ConsumeError> = async {
            let reader = (parts.reader_factory)()?;
            let expected = reader.partition_count(&topics.raw).await?;
            for topic in topics.outputs() {
                let found = reader.partition_count(topic).await?;
                if found != expected {
                    return Err(ConsumeError::Other(format!("{topic}:{found}:{expected}")));
                }
            }
            Ok(())
        }
        .await;
        match attempt {
            Ok(()) => return Ok(true),
            Err(ConsumeError::UnknownTopic(topic)) => return Err(QaqcError::MissingTopic(topic)),
            Err(ConsumeError::Other(text)) if text.split(':').count() == 3 => {
                let mut it = text.split(':');
                let topic = it.next().unwrap_or_default().to_string();
                let found = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                let expected = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                return Err(QaqcError::NotCoPartitioned {
                    topic,
                    found,
                    raw: topics.raw.clone(),
                    expected,
                });
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot check the topics; retrying");
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => return Ok(false),
                    _ = sleep(delay) => {}
                }
            }
        }
    }
}

fn decode_error_to_rejection(error: &DecodeError) -> Rejection {
    let reason = match error {
        DecodeError::Wire(_) | DecodeError::Undecodable { .. } => QuarantineReason::Undecodable,
        DecodeError::UnknownSchemaId(_) => QuarantineReason::UnknownSchemaId,
        DecodeError::BadWriterSchema { .. } => QuarantineReason::UnreadableSchema,
        DecodeError::RegistryUnavailable { .. } => QuarantineReason::Undecodable,
    };
    Rejection::new(reason, error.to_string())
}

fn decode_as<T: serde::Serialize + serde::de::DeserializeOwned>(
    codec: &super::records::RecordCodec<T>,
    writer: Option<&Schema>,
    body: &[u8],
) -> Result<T, crate::codec::CodecError> {
    match writer {
        Some(writer) => codec.decode_body_written_with(writer, body),
        None => codec.decode_body(body),
    }
}

/// What rebuilding a partition needs, shared with the background task that
/// does it (the member keeps polling, so its session lives on while large
/// partitions are read back).
struct Rebuilder {
    settings: QaqcSettings,
    ids: SchemaIds,
    reader_factory: ReaderFactory,
    registry: Rc<dyn SchemaRegistry>,
    disk: Rc<dyn Disk>,
    clock: Rc<dyn Clock>,
    metrics: QaqcMetrics,
    codecs: OutputCodecs,
    decoder: ReadingDecoder,
    writers: RefCell<BTreeMap<u32, Option<Schema>>>,
}

/// A rebuilt partition: state, records read, resume offset, output offsets.
type Rebuilt = (PartitionState, u64, i64, BTreeMap<String, i64>);

impl Rebuilder {
    /// Rebuilds until it succeeds (backing off after failures).
    async fn rebuild_until_done(self: Rc<Self>, partition: i32, resume: i64) -> Rebuilt {
        let mut backoff = Backoff::new(500, 30_000);
        loop {
            match self.rebuild(partition, resume).await {
                Ok(rebuilt) => return rebuilt,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(partition, %error, retry_in_ms = delay.as_millis() as u64, "rebuild failed; retrying");
                    sleep(delay).await;
                }
            }
        }
    }

    async fn writer_schema(&self, id: u32) -> Result<Option<Schema>, ConsumeError> {
        if let Some(schema) = self.writers.borrow().get(&id) {
            return Ok(schema.clone());
        }
        let schema = match self.registry.schema_by_id(id).await {
            Ok(text) => Schema::parse_str(&text).ok(),
            Err(RegistryError::SchemaNotFound(_)) => None,
            Err(e) => return Err(ConsumeError::Unavailable(e.to_string())),
        };
        self.writers.borrow_mut().insert(id, schema.clone());
        Ok(schema)
    }

    /// Rebuilds a partition's state: from its checkpoint when one is valid,
    /// then from every output partition's records after it (or all of them).
    /// Returns the state, the records read, the resume offset and the
    /// output offsets the state reflects.
    async fn rebuild(
        &self,
        partition: i32,
        resume: i64,
    ) -> Result<(PartitionState, u64, i64, BTreeMap<String, i64>), ConsumeError> {
        let settings = &self.settings;
        let topics = &settings.topics;
        let stall = settings.qaqc.rebuild_stall_timeout_ms;
        let mut reader = (self.reader_factory)()?;
        let checkpoint = self.usable_checkpoint(partition, reader.as_mut()).await?;
        let (mut state, mut output_offsets) = match checkpoint {
            Some(c) => (c.state, c.output_offsets),
            None => (PartitionState::new(partition), BTreeMap::new()),
        };
        state.committed(resume);
        state.set_resume_offset(resume);
        let mut read = 0u64;
        let now_ms = self.clock.now_ms();
        let metrics = &self.metrics;
        let ctx = Ctx {
            settings,
            now_ms,
            metrics,
        };
        // Order matters: alerts before aggregates (the ledger counts written
        // transitions before the machines replay), clean before flags.
        for topic in [
            &topics.quarantine,
            &topics.clean,
            &topics.flags,
            &topics.alerts,
            &topics.aggregates,
        ] {
            let from = output_offsets.get(topic.as_str()).copied().unwrap_or(0);
            let mut part_reader =
                PartitionReader::start(reader.as_mut(), topic, partition, from, stall).await?;
            let end = part_reader.end_offset();
            while let Some(batch) = part_reader.next_batch().await? {
                for record in batch {
                    read += 1;
                    self.fold(&mut state, topic, &record, &ctx).await?;
                }
            }
            output_offsets.insert(topic.to_string(), end.max(from));
        }
        state.committed(resume);
        Ok((state, read, resume, output_offsets))
    }

    /// The partition's checkpoint, if it is intact, written with these
    /// settings and not ahead of any output partition.
    async fn usable_checkpoint(
        &self,
        partition: i32,
        reader: &mut dyn LogConsumer,
    ) -> Result<Option<super::checkpoint::Checkpoint>, ConsumeError> {
        let settings = &self.settings;
        if settings.qaqc.checkpoint_interval_ms == 0 {
            return Ok(None);
        }
        let loaded = super::checkpoint::load(self.disk.as_ref(), &settings.qaqc.state_dir, partition);
        let checkpoint = match loaded {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(error) => {
                tracing::warn!(partition, %error, "checkpoint not usable; rebuilding from the outputs");
                return Ok(None);
            }
        };
        if checkpoint.settings_digest != super::checkpoint::settings_digest(settings) {
            tracing::info!(
                partition,
                "checkpoint written with other settings; rebuilding from the outputs"
            );
            return Ok(None);
        }
        for topic in settings.topics.outputs() {
            let recorded = checkpoint.output_offsets.get(topic).copied().unwrap_or(0);
            let (_, high) = reader.watermarks(topic, partition).await?;
            if high < recorded {
                tracing::warn!(
                    partition,
                    topic,
                    recorded,
                    high,
                    "checkpoint is ahead of the topic (data lost by the broker?); rebuilding from the outputs"
                );
                return Ok(None);
            }
        }
        Ok(Some(checkpoint))
    }

    async fn fold(
        &self,
        state: &mut PartitionState,
        topic: &str,
        record: &ConsumedRecord,
        ctx: &Ctx<'_>,
    ) -> Result<(), ConsumeError> {
        let topics = &self.settings.topics;
        if topic == topics.quarantine {
            let identity = match self.decoder.decode(record.value.as_deref()).await {
                Ok((_, reading)) => {
                    let digest = payload_digest(&reading);
                    Some((reading, digest))
                }
                Err(DecodeError::RegistryUnavailable { reason, .. }) => {
                    return Err(ConsumeError::Unavailable(reason));
                }
                Err(_) => None,
            };
            state.fold_quarantine(record, identity, ctx);
            return Ok(());
        }
        let Some(value) = record.value.as_deref() else {
            return Ok(());
        };
        let Ok((id, body)) = from_wire(value) else {
            tracing::warn!(
                topic,
                partition = record.partition,
                offset = record.offset,
                "undecodable output record ignored"
            );
            return Ok(());
        };
        let own_id = if topic == topics.clean {
            self.ids.clean
        } else if topic == topics.flags {
            self.ids.flags
        } else if topic == topics.alerts {
            self.ids.alerts
        } else {
            self.ids.aggregates
        };
        // Records written with this instance's own schema decode without
        // fetching and resolving a writer schema.
        let writer = if id == own_id {
            None
        } else {
            match self.writer_schema(id).await? {
                Some(writer) => Some(writer),
                None => {
                    tracing::warn!(
                        topic,
                        offset = record.offset,
                        id,
                        "output record with an unknown schema id ignored"
                    );
                    return Ok(());
                }
            }
        };
        let warn = |e: crate::codec::CodecError| {
            tracing::warn!(topic, partition = record.partition, offset = record.offset, error = %e, "output record does not decode; ignored");
        };
        if topic == topics.clean {
            match decode_as(&self.codecs.clean, writer.as_ref(), body) {
                Ok(clean) => {
                    let digest = super::records::header_str(&record.headers, HEADER_PAYLOAD_DIGEST)
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                    let src = super::records::header_i64(&record.headers, HEADER_SRC_OFFSET);
                    state.fold_clean(&clean, digest, src, ctx);
                }
                Err(e) => warn(e),
            }
        } else if topic == topics.flags {
            match decode_as(&self.codecs.flags, writer.as_ref(), body) {
                Ok(revision) => state.fold_flag_revision(&revision),
                Err(e) => warn(e),
            }
        } else if topic == topics.alerts {
            match decode_as(&self.codecs.alerts, writer.as_ref(), body) {
                Ok(alert) => state.fold_alert(&alert, ctx),
                Err(e) => warn(e),
            }
        } else if topic == topics.aggregates {
            match decode_as(&self.codecs.aggregates, writer.as_ref(), body) {
                Ok(aggregate) => state.fold_aggregate(&aggregate, ctx),
                Err(e) => warn(e),
            }
        }
        Ok(())
    }
}

impl Engine {
    async fn run(&mut self, shutdown: &mut Shutdown) {
        let q = self.settings.qaqc.clone();
        let mut next_commit = Instant::now() + Duration::from_millis(q.commit_interval_ms);
        let mut next_timer = Instant::now() + Duration::from_millis(q.timer_interval_ms);
        let mut next_log = Instant::now() + Duration::from_millis(q.log_interval_ms.max(1));
        let mut next_lag = Instant::now() + Duration::from_millis(LAG_INTERVAL_MS);
        let mut backoff = Backoff::new(q.poll_wait_ms.max(1), 30_000);
        loop {
            if shutdown.is_triggered() {
                break;
            }
            self.harvest();
            if let Some(error) = self.delivery_failed.take() {
                self.recover(error, shutdown).await;
                continue;
            }
            self.flush_unsent();
            let in_flight = self.in_flight.len() + self.unsent.len();
            if in_flight >= q.max_in_flight_outputs || !self.unsent.is_empty() {
                // Input paused: wait for acknowledgements (bounded, so the
                // group membership is still kept up by the next poll).
                let wait = Duration::from_millis(q.poll_wait_ms);
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => break,
                    done = self.in_flight.next() => if let Some(done) = done { self.delivered(done) },
                    _ = sleep(wait) => {}
                }
                self.flush_unsent();
                if self.in_flight.len() + self.unsent.len() >= q.max_in_flight_outputs
                    || !self.unsent.is_empty()
                {
                    // Keep the membership alive without taking more input.
                    self.parts.group.set_fetching(false);
                } else {
                    self.parts.group.set_fetching(true);
                }
            } else {
                self.parts.group.set_fetching(true);
            }
            let event = tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                event = self.parts.group.poll(q.poll_wait_ms) => event,
            };
            match event {
                Ok(GroupEvent::Records(records)) => {
                    backoff.reset();
                    if !records.is_empty() {
                        self.process(records).await;
                    }
                }
                Ok(GroupEvent::Assigned {
                    generation,
                    partitions,
                }) => {
                    tracing::info!(generation, ?partitions, "partitions assigned");
                    self.parts.metrics.rebalances.inc();
                    self.report.assignments += partitions.len() as u64;
                    self.parts.observer.on_assigned(&partitions);
                    self.cancel_rebuilds(&partitions);
                    self.awaiting_committed.extend(partitions);
                }
                Ok(GroupEvent::Revoked(partitions)) => {
                    tracing::info!(?partitions, "partitions revoked");
                    self.parts.metrics.rebalances.inc();
                    self.cancel_rebuilds(&partitions);
                    self.release(&partitions, false).await;
                }
                Ok(GroupEvent::Lost(partitions)) => {
                    tracing::warn!(?partitions, "partitions lost (session expired or fenced)");
                    self.parts.metrics.rebalances.inc();
                    self.cancel_rebuilds(&partitions);
                    self.release(&partitions, true).await;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "poll failed");
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => break,
                        _ = sleep(delay) => {}
                    }
                }
            }
            self.harvest();
            self.install_rebuilt();
            self.start_rebuilds().await;
            let now = Instant::now();
            if now >= next_timer {
                next_timer = now + Duration::from_millis(q.timer_interval_ms);
                self.timers();
            }
            if now >= next_commit {
                next_commit = now + Duration::from_millis(q.commit_interval_ms);
                self.commit_all().await;
                self.checkpoints();
            }
            if now >= next_lag {
                next_lag = now + Duration::from_millis(LAG_INTERVAL_MS);
                self.measure_lag().await;
            }
            if q.log_interval_ms > 0 && now >= next_log {
                next_log = now + Duration::from_millis(q.log_interval_ms);
                tracing::info!(metrics = %self.parts.metrics.summary(), "qaqc status");
            }
            self.publish_status();
        }
        // Shutdown: wait for what is in flight (bounded), commit, leave.
        let deadline = Instant::now() + Duration::from_millis(q.revoke_wait_max_ms);
        while (!self.in_flight.is_empty() || !self.unsent.is_empty()) && Instant::now() < deadline {
            self.flush_unsent();
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some(done)) => self.delivered(done),
                _ => break,
            }
        }
        if self.delivery_failed.is_none() {
            self.commit_all().await;
        }
        let rebuilding: Vec<i32> = self.rebuilding.keys().copied().collect();
        self.cancel_rebuilds(&rebuilding);
        self.parts.group.leave().await;
        self.owned.clear();
        self.publish_status();
    }

    fn publish_status(&self) {
        let status = QaqcStatus {
            partitions: self
                .owned
                .iter()
                .map(|(p, o)| {
                    (
                        *p,
                        OwnedPartitionStatus {
                            position: o.position,
                            committed: o.committed,
                            pending_outputs: o.pending_outputs(),
                            state: o.state.status(),
                        },
                    )
                })
                .collect(),
            blocked: false,
        };
        let open: usize = status.partitions.values().map(|p| p.state.dirty_windows).sum();
        let sensors: usize = status.partitions.values().map(|p| p.state.sensors).sum();
        self.parts.metrics.open_windows.set(open as i64);
        self.parts.metrics.sensors.set(sensors as i64);
        self.parts.observer.on_status(&status);
    }

    /// Collects the delivery reports that are ready.
    fn harvest(&mut self) {
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            self.delivered(done);
        }
        self.parts
            .metrics
            .in_flight_outputs
            .set((self.in_flight.len() + self.unsent.len()) as i64);
    }

    fn delivered(&mut self, (partition, epoch, src, aggregate_seq, topic, result): Delivered) {
        let Some(owned) = self.owned.get_mut(&partition).filter(|o| o.epoch == epoch) else {
            return; // a partition no longer (or not in this epoch) owned
        };
        decrement(&mut owned.pending, src);
        let position = match result {
            Ok(position) => position,
            Err(error) => {
                self.parts.metrics.delivery_failures.inc();
                if self.delivery_failed.is_none() {
                    self.delivery_failed = Some(error);
                }
                return;
            }
        };
        let next = owned.output_offsets.entry(topic.to_string()).or_insert(0);
        *next = (*next).max(position.offset + 1);
        let Some(seq) = aggregate_seq else {
            return;
        };
        if let Some(entry) = owned.aggregates_in_flight.iter_mut().find(|(s, _, _)| *s == seq) {
            entry.2 = true;
        }
        // Hand acknowledged aggregates to the alert machines in write order.
        let mut acknowledged = Vec::new();
        while owned
            .aggregates_in_flight
            .front()
            .is_some_and(|(_, _, acked)| *acked)
        {
            let (_, aggregate, _) = owned.aggregates_in_flight.pop_front().expect("checked");
            acknowledged.push(aggregate);
        }
        if acknowledged.is_empty() {
            return;
        }
        let now_ms = self.parts.clock.now_ms();
        let ctx = Ctx {
            settings: &self.settings,
            now_ms,
            metrics: &self.parts.metrics,
        };
        let outputs: Vec<Output> = acknowledged
            .iter()
            .flat_map(|aggregate| owned.state.aggregate_acknowledged(aggregate, &ctx))
            .collect();
        self.enqueue(partition, outputs);
    }

    /// A delivery failed: outputs may be missing anywhere. New producer
    /// session; every owned partition is rebuilt from what is durable.
    async fn recover(&mut self, error: ProduceError, shutdown: &mut Shutdown) {
        tracing::warn!(%error, "an output delivery failed; rebuilding every owned partition with a new producer");
        let mut backoff = Backoff::new(500, 30_000);
        let factory = &self.parts.producer_factory;
        let Some(producer) = retry_until_shutdown("producer creation", &mut backoff, shutdown, || {
            std::future::ready(factory())
        })
        .await
        else {
            return;
        };
        self.producer = producer;
        self.unsent.clear();
        let partitions: Vec<i32> = self.owned.keys().copied().collect();
        self.owned.clear();
        self.awaiting_committed.extend(partitions);
    }

    /// Asks for the committed offsets of the partitions waiting for them and
    /// starts their rebuilds in the background.
    async fn start_rebuilds(&mut self) {
        if self.awaiting_committed.is_empty() {
            return;
        }
        let partitions = self.awaiting_committed.clone();
        let committed = match self.parts.group.committed(&partitions).await {
            Ok(committed) => committed,
            Err(error) => {
                tracing::debug!(%error, "cannot read committed offsets yet; retrying");
                return;
            }
        };
        self.awaiting_committed.clear();
        for partition in partitions {
            let resume = committed
                .iter()
                .find(|(p, _)| *p == partition)
                .and_then(|(_, offset)| *offset)
                .unwrap_or(0);
            let token = self.next_token;
            self.next_token += 1;
            let rebuilder = self.rebuilder.clone();
            let done = self.rebuilt_tx.clone();
            let task = tokio::task::spawn_local(async move {
                let rebuilt = rebuilder.rebuild_until_done(partition, resume).await;
                let _ = done.send(RebuildDone {
                    partition,
                    token,
                    rebuilt,
                });
            });
            if let Some(old) = self.rebuilding.insert(partition, Rebuilding { token, task }) {
                old.task.abort();
            }
        }
    }

    /// Installs the rebuilds that finished: reconciles, writes what the
    /// outputs lack, and starts reading the partition.
    fn install_rebuilt(&mut self) {
        while let Ok(done) = self.rebuilt_rx.try_recv() {
            let current = self.rebuilding.get(&done.partition).map(|r| r.token);
            if current != Some(done.token) {
                continue; // revoked or restarted meanwhile
            }
            self.rebuilding.remove(&done.partition);
            let partition = done.partition;
            let (mut state, records_read, resume, output_offsets) = done.rebuilt;
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            if self.settings.planted.skip_dedup_rebuild {
                state.forget_dedup();
            }
            let now_ms = self.parts.clock.now_ms();
            let ctx = Ctx {
                settings: &self.settings,
                now_ms,
                metrics: &self.parts.metrics,
            };
            let outputs = state.reconcile(resume, &ctx);
            let reconciled = outputs.len() as u64;
            self.owned.insert(
                partition,
                Owned {
                    state,
                    position: resume,
                    committed: None,
                    pending: BTreeMap::new(),
                    epoch,
                    aggregates_in_flight: std::collections::VecDeque::new(),
                    next_aggregate_seq: 0,
                    output_offsets,
                    last_checkpoint: Instant::now(),
                },
            );
            self.enqueue(partition, outputs);
            if let Err(error) = self.parts.group.seek(partition, resume) {
                tracing::warn!(partition, %error, "cannot seek; dropping the partition until the next assignment");
                self.owned.remove(&partition);
                continue;
            }
            self.parts.metrics.rebuilds.inc();
            self.parts.metrics.rebuild_records_read.inc_by(records_read);
            self.report.rebuilds += 1;
            self.parts
                .observer
                .on_rebuilt(partition, records_read, reconciled);
            tracing::info!(
                partition,
                records_read,
                reconciled,
                resume,
                "partition state rebuilt"
            );
        }
    }

    /// Sets the lag metric of every owned partition: raw high watermark
    /// minus the position.
    async fn measure_lag(&mut self) {
        if self.lag_reader.is_none() {
            match (self.rebuilder.reader_factory)() {
                Ok(reader) => self.lag_reader = Some(reader),
                Err(error) => {
                    tracing::debug!(%error, "cannot create the lag reader");
                    return;
                }
            }
        }
        let Some(reader) = self.lag_reader.as_ref() else {
            return;
        };
        let positions: Vec<(i32, i64)> = self.owned.iter().map(|(p, o)| (*p, o.position)).collect();
        for (partition, position) in positions {
            match reader.watermarks(&self.settings.topics.raw, partition).await {
                Ok((_, high)) => self.parts.metrics.set_lag(partition, (high - position).max(0)),
                Err(error) => {
                    tracing::debug!(partition, %error, "cannot measure the lag");
                    return;
                }
            }
        }
    }

    /// Stops the rebuilds of `partitions` (revoked or lost meanwhile).
    fn cancel_rebuilds(&mut self, partitions: &[i32]) {
        self.awaiting_committed.retain(|p| !partitions.contains(p));
        for p in partitions {
            if let Some(r) = self.rebuilding.remove(p) {
                r.task.abort();
            }
        }
    }

    /// Writes a checkpoint of every partition whose outputs are all
    /// acknowledged and whose last checkpoint is older than the interval.
    fn checkpoints(&mut self) {
        let interval_ms = self.settings.qaqc.checkpoint_interval_ms;
        if interval_ms == 0 {
            return;
        }
        let now = Instant::now();
        let digest = super::checkpoint::settings_digest(&self.settings);
        for (partition, owned) in self.owned.iter_mut() {
            let due = now.duration_since(owned.last_checkpoint) >= Duration::from_millis(interval_ms);
            if !due || !owned.pending.is_empty() || !owned.aggregates_in_flight.is_empty() {
                continue;
            }
            owned.last_checkpoint = now;
            let checkpoint = super::checkpoint::CheckpointRef {
                partition: *partition,
                settings_digest: digest,
                output_offsets: &owned.output_offsets,
                state: &owned.state,
            };
            match super::checkpoint::save(
                self.rebuilder.disk.as_ref(),
                &self.settings.qaqc.state_dir,
                &checkpoint,
            ) {
                Ok(bytes) => {
                    self.parts.metrics.checkpoints_written.inc();
                    tracing::debug!(partition, bytes, "checkpoint written");
                }
                Err(error) => tracing::warn!(partition, %error, "cannot write a checkpoint"),
            }
        }
    }

    /// Revocation (`lost = false`): wait for the partitions' outputs
    /// (bounded), commit, drop. Loss: drop at once.
    async fn release(&mut self, partitions: &[i32], lost: bool) {
        if !lost {
            let deadline = Instant::now() + Duration::from_millis(self.settings.qaqc.revoke_wait_max_ms);
            loop {
                let pending: u64 = partitions
                    .iter()
                    .filter_map(|p| self.owned.get(p))
                    .map(Owned::pending_outputs)
                    .sum();
                if pending == 0 || self.delivery_failed.is_some() {
                    break;
                }
                self.flush_unsent();
                match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                    Ok(Some(done)) => self.delivered(done),
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(
                            pending,
                            "revocation: outputs still unacknowledged; releasing without them"
                        );
                        break;
                    }
                }
            }
            if self.delivery_failed.is_none() {
                let offsets: Vec<(i32, i64)> = partitions
                    .iter()
                    .filter_map(|p| {
                        self.owned
                            .get(p)
                            .map(|o| (*p, o.committable(self.settings.planted.commit_before_ack)))
                    })
                    .collect();
                if !offsets.is_empty()
                    && let Err(error) = self.parts.group.commit(&offsets).await
                {
                    self.parts.metrics.commit_failures.inc();
                    tracing::warn!(%error, "commit on revocation failed");
                }
            }
        }
        for p in partitions {
            self.owned.remove(p);
            self.parts.metrics.clear_lag(*p);
        }
        self.parts.observer.on_released(partitions, lost);
    }

    async fn commit_all(&mut self) {
        let planted = self.settings.planted.commit_before_ack;
        let offsets: Vec<(i32, i64)> = self
            .owned
            .iter()
            .map(|(p, o)| (*p, o.committable(planted)))
            .filter(|(p, offset)| {
                self.owned
                    .get(p)
                    .is_some_and(|o| o.committed.is_none_or(|c| c < *offset))
            })
            .collect();
        if offsets.is_empty() {
            return;
        }
        match self.parts.group.commit(&offsets).await {
            Ok(()) => {
                for (p, offset) in offsets {
                    if let Some(owned) = self.owned.get_mut(&p) {
                        owned.committed = Some(offset);
                        owned.state.committed(offset);
                    }
                }
            }
            Err(error) => {
                self.parts.metrics.commit_failures.inc();
                tracing::debug!(%error, "commit failed");
            }
        }
    }

    fn timers(&mut self) {
        let now_ms = self.parts.clock.now_ms();
        let partitions: Vec<i32> = self.owned.keys().copied().collect();
        for partition in partitions {
            let outputs = {
                let owned = self.owned.get_mut(&partition).expect("listed");
                let ctx = Ctx {
                    settings: &self.settings,
                    now_ms,
                    metrics: &self.parts.metrics,
                };
                owned.state.on_timer(&ctx)
            };
            self.enqueue(partition, outputs);
        }
    }

    /// Decodes and processes polled records, partition by partition.
    async fn process(&mut self, records: Vec<ConsumedRecord>) {
        let mut by_partition: BTreeMap<i32, Vec<ConsumedRecord>> = BTreeMap::new();
        for record in records {
            by_partition.entry(record.partition).or_default().push(record);
        }
        for (partition, records) in by_partition {
            let Some(owned) = self.owned.get(&partition) else {
                continue;
            };
            let mut expected = owned.position;
            let mut batch = Vec::with_capacity(records.len());
            let mut retry_from = None;
            for record in records {
                if record.offset < expected {
                    continue; // a repeat from a re-seek
                }
                let decoded = match self.rebuilder.decoder.decode(record.value.as_deref()).await {
                    Ok((schema_id, reading)) => Decoded::Reading { reading, schema_id },
                    Err(DecodeError::RegistryUnavailable { .. }) => {
                        // Not the record's fault: read it again later.
                        retry_from = Some(record.offset);
                        break;
                    }
                    Err(error) => Decoded::Failed(decode_error_to_rejection(&error)),
                };
                expected = record.offset + 1;
                batch.push((record, decoded));
            }
            let now_ms = self.parts.clock.now_ms();
            let outputs = {
                let owned = self.owned.get_mut(&partition).expect("checked above");
                owned.position = expected;
                let ctx = Ctx {
                    settings: &self.settings,
                    now_ms,
                    metrics: &self.parts.metrics,
                };
                owned.state.process_batch(batch, &ctx)
            };
            self.enqueue(partition, outputs);
            if let Some(offset) = retry_from {
                tracing::warn!(partition, offset, "registry unavailable; reading again from here");
                if let Err(error) = self.parts.group.seek(partition, offset) {
                    tracing::warn!(partition, %error, "cannot seek back");
                }
                sleep(Duration::from_millis(self.settings.qaqc.poll_wait_ms.max(500))).await;
            }
        }
    }

    /// Encodes and enqueues outputs of `partition`.
    /// Queues outputs of `partition` for the producer, in order; they count
    /// as pending (holding back the commit of their source offsets) from now
    /// on.
    fn enqueue(&mut self, partition: i32, outputs: Vec<Output>) {
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        let epoch = owned.epoch;
        for output in outputs {
            *owned.pending.entry(output.src_offset).or_default() += 1;
            self.unsent.push_back((partition, epoch, output));
        }
        self.flush_unsent();
    }

    /// Hands queued outputs to the producer until it is full (its bounded
    /// queue: back-pressure, retried later) or fails.
    fn flush_unsent(&mut self) {
        while let Some((partition, epoch, _)) = self.unsent.front() {
            let (partition, epoch) = (*partition, *epoch);
            if self.owned.get(&partition).is_none_or(|o| o.epoch != epoch) {
                self.unsent.pop_front(); // the partition moved on meanwhile
                continue;
            }
            let output = self.unsent.front().expect("checked").2.clone();
            let src = output.src_offset;
            let aggregate = match &output.body {
                OutputBody::Aggregate(aggregate) => Some(aggregate.clone()),
                _ => None,
            };
            let (topic, record) = match self.encode(partition, output) {
                Ok(encoded) => encoded,
                Err(error) => {
                    // Our own records always encode; a failure is a defect.
                    tracing::error!(partition, src, %error, "cannot encode an output; dropped");
                    self.unsent.pop_front();
                    if let Some(owned) = self.owned.get_mut(&partition) {
                        decrement(&mut owned.pending, src);
                    }
                    continue;
                }
            };
            match self.producer.enqueue(record) {
                Ok(delivery) => {
                    self.unsent.pop_front();
                    let owned = self.owned.get_mut(&partition).expect("checked above");
                    self.parts.metrics.count_out(&topic);
                    let aggregate_seq = aggregate.map(|aggregate| {
                        let seq = owned.next_aggregate_seq;
                        owned.next_aggregate_seq += 1;
                        owned.aggregates_in_flight.push_back((seq, aggregate, false));
                        seq
                    });
                    let topic: Rc<str> = Rc::from(topic.as_str());
                    self.in_flight
                        .push(track(partition, epoch, src, aggregate_seq, topic, delivery));
                }
                Err(ProduceError::QueueFull) => break,
                Err(error) => {
                    self.parts.metrics.delivery_failures.inc();
                    if self.delivery_failed.is_none() {
                        self.delivery_failed = Some(error);
                    }
                    break;
                }
            }
        }
        self.parts
            .metrics
            .in_flight_outputs
            .set((self.in_flight.len() + self.unsent.len()) as i64);
    }

    fn encode(
        &self,
        partition: i32,
        output: Output,
    ) -> Result<(String, OutboundRecord), crate::codec::CodecError> {
        let topics = &self.settings.topics;
        let mut headers = vec![
            (
                HEADER_SRC_PARTITION.to_string(),
                partition.to_string().into_bytes(),
            ),
            (
                HEADER_SRC_OFFSET.to_string(),
                output.src_offset.to_string().into_bytes(),
            ),
        ];
        let (topic, key, value, timestamp_ms) = match output.body {
            OutputBody::Clean(clean, digest) => {
                headers.push((
                    HEADER_GATEWAY_ID.to_string(),
                    clean.gateway_id.clone().into_bytes(),
                ));
                headers.push((HEADER_SEQ.to_string(), clean.seq.to_string().into_bytes()));
                headers.push((
                    HEADER_PAYLOAD_DIGEST.to_string(),
                    format!("{digest:016x}").into_bytes(),
                ));
                let body = self.rebuilder.codecs.clean.encode_body(&clean)?;
                (
                    topics.clean.clone(),
                    clean.sensor_id.into_bytes(),
                    to_wire(self.ids.clean, &body),
                    clean.event_time,
                )
            }
            OutputBody::Quarantine(q) => {
                let mut all = q.raw_headers;
                all.extend(headers);
                all.push((HEADER_REASON.to_string(), q.reason.code().as_bytes().to_vec()));
                all.push((HEADER_DETAIL.to_string(), q.detail.into_bytes()));
                all.push((
                    super::records::HEADER_DECIDED_AT.to_string(),
                    q.decided_at_ms.to_string().into_bytes(),
                ));
                if let Some(watermark) = q.sensor_watermark_ms {
                    all.push((
                        super::records::HEADER_SENSOR_WATERMARK.to_string(),
                        watermark.to_string().into_bytes(),
                    ));
                }
                if let Some((_, _, _, digest)) = q.identity {
                    all.push((
                        HEADER_PAYLOAD_DIGEST.to_string(),
                        format!("{digest:016x}").into_bytes(),
                    ));
                }
                headers = all;
                (
                    topics.quarantine.clone(),
                    q.key.unwrap_or_default(),
                    q.value.unwrap_or_default(),
                    q.timestamp_ms.max(0),
                )
            }
            OutputBody::Flags(revision) => {
                headers.push((
                    HEADER_GATEWAY_ID.to_string(),
                    revision.gateway_id.clone().into_bytes(),
                ));
                headers.push((HEADER_SEQ.to_string(), revision.seq.to_string().into_bytes()));
                let body = self.rebuilder.codecs.flags.encode_body(&revision)?;
                (
                    topics.flags.clone(),
                    revision.sensor_id.into_bytes(),
                    to_wire(self.ids.flags, &body),
                    revision.event_time,
                )
            }
            OutputBody::Aggregate(aggregate) => {
                let body = self.rebuilder.codecs.aggregates.encode_body(&aggregate)?;
                (
                    topics.aggregates.clone(),
                    aggregate.sensor_id.clone().into_bytes(),
                    to_wire(self.ids.aggregates, &body),
                    aggregate.window_end - 1,
                )
            }
            OutputBody::Alert(alert) => {
                let body = self.rebuilder.codecs.alerts.encode_body(&alert)?;
                (
                    topics.alerts.clone(),
                    alert.sensor_id.clone().into_bytes(),
                    to_wire(self.ids.alerts, &body),
                    alert.event_time,
                )
            }
        };
        Ok((
            topic.clone(),
            OutboundRecord {
                topic,
                key,
                partition: Some(partition),
                value,
                timestamp_ms,
                headers,
            },
        ))
    }
}

fn decrement(pending: &mut BTreeMap<i64, u32>, src: i64) {
    if let Some(count) = pending.get_mut(&src) {
        *count -= 1;
        if *count == 0 {
            pending.remove(&src);
        }
    }
}

fn track(
    partition: i32,
    epoch: u64,
    src: i64,
    aggregate_seq: Option<u64>,
    topic: Rc<str>,
    delivery: DeliveryFuture,
) -> Delivery {
    Box::pin(async move { (partition, epoch, src, aggregate_seq, topic, delivery.await) })
}
