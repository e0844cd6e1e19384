//! The seam against a real Kafka-protocol broker, with rdkafka (librdkafka).
//!
//! # Producer
//!
//! [`KafkaProducer`] wraps rdkafka's `FutureProducer`, configured so the
//! guarantees of the seam hold (see [`PRODUCER_DEFAULTS`]):
//!
//! - `acks=all` and `enable.idempotence=true`: a delivery report means the
//!   record is in the log, and retries inside one producer session never
//!   duplicate or reorder records of a partition;
//! - `partitioner=murmur2_random`: the partition of a keyed record is
//!   [`partition_for_key`](super::partition_for_key), as in the Java client
//!   and the simulator;
//! - `message.timeout.ms=0`: librdkafka never gives up on a queued record on
//!   its own. A record enqueued while the broker is away waits, is retried
//!   with backoff after every reconnect, and is delivered once the broker is
//!   back; its delivery future stays pending meanwhile. (librdkafka documents
//!   0 as infinite; it stores an infinite deadline per message, and the
//!   timeout of one produce request is then `socket.timeout.ms`, after which
//!   the request is retried.) Callers that want a deadline wrap the future in
//!   their own timeout. The setting cannot be overridden: a finite timeout
//!   fails records with `MessageTimedOut` during an outage and makes
//!   librdkafka bump the idempotent producer's epoch locally; the next
//!   produce of that session makes Tansu 0.6.0's SQLite engine panic (its
//!   idempotence check expects one row), after which the broker answers every
//!   produce with UNKNOWN_SERVER_ERROR until restarted;
//! - a bounded local queue (`queue.buffering.max.messages`): when it is full,
//!   [`LogProducer::enqueue`] fails at once with [`ProduceError::QueueFull`].
//!
//! Producer counters come from librdkafka's statistics callback
//! (`statistics.interval.ms`): `request_retries` sums, over brokers,
//! `txretries` (requests resent after a retriable error) and `req_timeouts`
//! (requests that timed out on a dead or silent connection; librdkafka does
//! not count their records' resend in `txretries`, as a blackhole test shows,
//! but with an infinite message timeout every one of them is resent).
//! `broker_up` is true while a broker connection is in state `UP`, set false
//! at once by an "all brokers down" error and true at once by a successful
//! delivery.
//!
//! # Consumer
//!
//! [`KafkaConsumer`] wraps rdkafka's `StreamConsumer` with explicit
//! assignment (no group membership, no rebalances), `enable.auto.commit=false`
//! (offsets are committed only by [`LogConsumer::commit`]) and a low
//! `fetch.wait.max.ms` (a Tansu fetch waits about half of it even when data is
//! ready). Polling is asynchronous (woken by librdkafka's queue callback);
//! metadata, watermark and commit requests, which block in librdkafka, run on
//! tokio's blocking pool so they never stall the runtime thread. Replace a
//! consumer's assignment once, then only add to it
//! ([`KafkaConsumer::add_partitions`]): librdkafka 2.12.1 aborts the process
//! when assignments are replaced in quick succession.
//!
//! # Pass-through properties
//!
//! [`KafkaClientConfig::properties`] is applied after the defaults and so
//! overrides them: TLS and SASL (`security.protocol`, `ssl.*`, `sasl.*`),
//! timeouts, buffer sizes. Properties the seam's guarantees rest on cannot be
//! overridden ([`PRODUCER_PROTECTED_PROPERTIES`],
//! [`CONSUMER_PROTECTED_PROPERTIES`]).

use super::{
    ConsumeError, ConsumedRecord, DeliveryFuture, LogConsumer, LogProducer, OutboundRecord, ProduceError,
    ProducerStats, RecordPosition, StartOffset, TimestampKind,
};
use futures::future::{FutureExt, LocalBoxFuture};
use futures::stream::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a client reaches the broker: shared by producer, consumer and admin.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaClientConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub bootstrap_servers: String,
    /// librdkafka properties applied after soilstream's defaults (TLS, SASL,
    /// timeouts, buffer sizes). See the module docs for what cannot be set.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaClientConfig {
    /// A configuration with `bootstrap_servers` and no extra properties.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) one pass-through property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// A copy fit for printing: values of secret-looking properties
    /// (passwords, keys, secrets, JAAS configs, tokens) are `<redacted>`.
    pub fn redacted(&self) -> Self {
        Self {
            bootstrap_servers: crate::redact::redact_url(&self.bootstrap_servers),
            properties: self
                .properties
                .iter()
                .map(|(k, v)| {
                    let shown = if is_secret_property(k) {
                        REDACTED.to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), shown)
                })
                .collect(),
        }
    }

    /// `text` with the value of every secret property replaced by
    /// `<redacted>` (librdkafka's configuration errors quote the value).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (key, value) in &self.properties {
            if is_secret_property(key) && !value.is_empty() {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }

    /// A setup error from an rdkafka error, scrubbed of secrets.
    pub(crate) fn setup_error(&self, error: impl fmt::Display) -> KafkaSetupError {
        KafkaSetupError::Config(self.scrub(&error.to_string()))
    }

    /// Builds an rdkafka configuration: `defaults`, then the bootstrap
    /// servers, then the pass-through properties, refusing any of `protected`.
    pub(super) fn client_config(
        &self,
        defaults: &[(&str, &str)],
        protected: &[&str],
    ) -> Result<ClientConfig, KafkaSetupError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(KafkaSetupError::Config("bootstrap_servers is empty".into()));
        }
        let mut config = ClientConfig::new();
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        config.set("bootstrap.servers", self.bootstrap_servers.as_str());
        for (key, value) in &self.properties {
            let key = key.trim();
            if protected.contains(&key) {
                return Err(KafkaSetupError::ProtectedProperty(key.to_string()));
            }
            config.set(key, value.as_str());
        }
        config.set_log_level(librdkafka_log_level());
        Ok(config)
    }
}

impl fmt::Debug for KafkaClientConfig {
    /// Values of secret-looking properties (passwords, keys, secrets, JAAS
    /// configs) are redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaClientConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &properties)
            .finish()
    }
}

use crate::redact::{REDACTED, is_secret_property};

/// Why a Kafka client or topic could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KafkaSetupError {
    /// A pass-through property tried to change a setting the seam's
    /// guarantees rest on.
    #[error("property `{0}` is set by soilstream and cannot be overridden")]
    ProtectedProperty(String),
    /// librdkafka rejected the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Config(String),
    /// A topic name that Kafka does not allow.
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The consumer must be created inside a tokio runtime.
    #[error("a Kafka consumer must be created inside a tokio runtime")]
    NoRuntime,
    /// Creating or checking a topic failed.
    #[error("topic `{topic}`: {reason}")]
    Topic {
        /// Topic name.
        topic: String,
        /// What went wrong.
        reason: String,
    },
    /// An admin request failed as a whole (broker unreachable, timeout).
    #[error("admin request failed: {0}")]
    Admin(String),
}

/// Longest topic name Kafka accepts, in bytes.
pub const TOPIC_NAME_MAX_BYTES: usize = 249;

/// Checks a topic name against Kafka's rules (1-249 characters of ASCII
/// letters, digits, `.`, `_` and `-`; not `.` or `..`).
pub fn validate_topic_name(name: &str) -> Result<(), KafkaSetupError> {
    let invalid = |reason| KafkaSetupError::InvalidTopicName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > TOPIC_NAME_MAX_BYTES {
        return Err(invalid("longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(invalid("`.` and `..` are not allowed"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only ASCII letters, digits, `.`, `_` and `-` are allowed",
        ));
    }
    Ok(())
}

/// librdkafka producer settings soilstream applies before the pass-through
/// properties.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("partitioner", "murmur2_random"),
    // Never time a record out locally: retry until the broker is back.
    ("message.timeout.ms", "0"),
    ("message.send.max.retries", "2147483647"),
    ("max.in.flight.requests.per.connection", "5"),
    ("queue.buffering.max.messages", "10000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("linger.ms", "5"),
    ("retry.backoff.ms", "100"),
    ("retry.backoff.max.ms", "2000"),
    ("reconnect.backoff.ms", "100"),
    ("reconnect.backoff.max.ms", "5000"),
    // Broker-side ack timeout, and the client-side timeout of one request
    // (after which it is retried on a new connection).
    ("request.timeout.ms", "10000"),
    ("socket.timeout.ms", "15000"),
    ("socket.connection.setup.timeout.ms", "10000"),
    ("socket.keepalive.enable", "true"),
    ("statistics.interval.ms", "1000"),
];

/// Producer properties the pass-through map may not set.
pub const PRODUCER_PROTECTED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "partitioner",
    "transactional.id",
    // A finite timeout fails records the forwarder still holds, and makes
    // librdkafka bump the idempotent epoch locally, which Tansu 0.6.0's SQLite
    // engine does not survive (a panic in its idempotence check).
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// librdkafka consumer settings soilstream applies before the pass-through
/// properties.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
    ("allow.auto.create.topics", "false"),
    // `StartOffset::Committed` falls back to the beginning.
    ("auto.offset.reset", "earliest"),
    // Tansu waits about half of this even when data is ready.
    ("fetch.wait.max.ms", "20"),
    // No transactions are used; do not depend on the broker's LSO handling.
    ("isolation.level", "read_uncommitted"),
    ("reconnect.backoff.ms", "100"),
    ("reconnect.backoff.max.ms", "5000"),
    // librdkafka's default. Tansu 0.6.0 (SQLite) answers a fetch over a
    // partition of records with headers in time that grows with the square
    // of its size (about 18 s for 10 000 readings here); a fetch cut off by
    // this timeout is resent from the same offset, so a shorter one would
    // never get past such a partition. Raise it for bigger partitions.
    ("socket.timeout.ms", "60000"),
    ("socket.connection.setup.timeout.ms", "10000"),
    ("socket.keepalive.enable", "true"),
];

/// Consumer properties the pass-through map may not set.
pub const CONSUMER_PROTECTED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.partition.eof",
];

/// Timeout of blocking metadata, watermark and commit requests, in ms.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Most records one [`LogConsumer::poll`] returns.
pub const POLL_MAX_RECORDS: usize = 1_000;

fn librdkafka_log_level() -> RDKafkaLogLevel {
    use tracing::Level;
    if tracing::enabled!(target: "librdkafka", Level::TRACE) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", Level::DEBUG) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", Level::INFO) {
        RDKafkaLogLevel::Notice
    } else {
        RDKafkaLogLevel::Warning
    }
}

/// Forwards librdkafka's log lines to `tracing` (target `librdkafka`).
pub(super) fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice => tracing::info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Info => tracing::debug!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::trace!(target: "librdkafka", facility, "{message}"),
    }
}

fn is_broker_down_error(error: &KafkaError) -> bool {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown))
}

/// Connection-level errors librdkafka recovers from on its own and already
/// reports through its log callback: logged at debug to avoid doubles.
pub(super) fn is_transient_connection_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

pub(super) fn log_client_error(error: &KafkaError, reason: &str) {
    if is_transient_connection_error(error) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    } else {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

/// Client context of admin clients and the consumer: logs only.
#[derive(Debug, Clone, Copy, Default)]
struct LoggingContext;

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn stats(&self, _statistics: Statistics) {}

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for LoggingContext {}

/// Counters the producer's context updates from librdkafka callbacks.
#[derive(Debug, Default)]
struct ProducerCounters {
    request_retries: AtomicU64,
    broker_up: AtomicBool,
    /// Last `txretries + req_timeouts` seen per broker, so a broker that
    /// disappears from the statistics (a decommissioned bootstrap broker)
    /// keeps its contribution.
    txretries_by_broker: Mutex<BTreeMap<String, u64>>,
}

impl ProducerCounters {
    fn record_statistics(&self, statistics: &Statistics) {
        let mut up = false;
        let mut added = 0u64;
        match self.txretries_by_broker.lock() {
            Ok(mut seen) => {
                for (name, broker) in &statistics.brokers {
                    if broker.source == "internal" {
                        continue;
                    }
                    tracing::trace!(
                        broker = %name,
                        state = %broker.state,
                        txretries = broker.txretries,
                        req_timeouts = broker.req_timeouts,
                        txerrs = broker.txerrs,
                        disconnects = broker.disconnects.unwrap_or(0),
                        "producer broker statistics"
                    );
                    if broker.state == "UP" {
                        up = true;
                    }
                    let retried = broker.txretries.saturating_add(broker.req_timeouts);
                    let previous = seen.insert(name.clone(), retried).unwrap_or(0);
                    added += retried.saturating_sub(previous);
                }
            }
            Err(_) => return,
        }
        self.request_retries.fetch_add(added, Ordering::Relaxed);
        self.broker_up.store(up, Ordering::Relaxed);
    }
}

/// Client context of the producer: logs, statistics and errors.
struct ProducerClientContext {
    counters: Arc<ProducerCounters>,
}

impl ClientContext for ProducerClientContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.counters.record_statistics(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_broker_down_error(&error) && self.counters.broker_up.swap(false, Ordering::Relaxed) {
            tracing::warn!(target: "librdkafka", %error, "producer lost every broker connection: {reason}");
            return;
        }
        log_client_error(&error, reason);
    }
}

/// A [`LogProducer`] backed by rdkafka's idempotent `FutureProducer`.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer<ProducerClientContext>,
    counters: Arc<ProducerCounters>,
}

impl fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// Creates a producer. It connects in the background; enqueuing works
    /// before the broker is reachable.
    pub fn new(config: &KafkaClientConfig) -> Result<Self, KafkaSetupError> {
        let client_config = config.client_config(PRODUCER_DEFAULTS, PRODUCER_PROTECTED_PROPERTIES)?;
        let counters = Arc::new(ProducerCounters::default());
        let context = ProducerClientContext {
            counters: counters.clone(),
        };
        let producer = client_config
            .create_with_context(context)
            .map_err(|e| config.setup_error(e))?;
        Ok(Self { producer, counters })
    }

    /// Records enqueued or in flight, not yet reported delivered or failed.
    pub fn in_flight_count(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits up to `timeout_ms` for every enqueued record's delivery report.
    /// Runs on the blocking pool (needs a tokio runtime).
    pub async fn flush(&self, timeout_ms: u64) -> Result<(), ProduceError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_millis(timeout_ms)))
            .await
            .map_err(|e| ProduceError::Delivery(format!("flush task failed: {e}")))?
            .map_err(|e| ProduceError::Delivery(format!("flush: {e}")))
    }

    fn fatal_error(&self) -> Option<String> {
        fatal_error_of(&self.producer)
    }
}

fn fatal_error_of(producer: &FutureProducer<ProducerClientContext>) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code}: {reason}"))
}

fn map_delivery_error(error: &KafkaError, producer: &FutureProducer<ProducerClientContext>) -> ProduceError {
    if let Some(fatal) = fatal_error_of(producer) {
        return ProduceError::Fatal(fatal);
    }
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
        Some(code) if is_producer_state_error(code) => ProduceError::Fatal(format!(
            "{error}: the broker rejects this producer's idempotence state; create a new producer"
        )),
        _ => ProduceError::Delivery(error.to_string()),
    }
}

/// Errors after which this producer session cannot deliver any more: the
/// broker rejects its producer id, epoch or sequence numbers. Tansu 0.6.0
/// answers every produce with UNKNOWN_SERVER_ERROR (-1) once librdkafka has
/// bumped the epoch locally after a message timeout, so `Unknown` is among
/// them (a new producer gets a new producer id and works).
fn is_producer_state_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::Unknown
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::ProducerFenced
    )
}

impl LogProducer for KafkaProducer {
    fn enqueue(&self, record: OutboundRecord) -> Result<DeliveryFuture, ProduceError> {
        if let Some(fatal) = self.fatal_error() {
            return Err(ProduceError::Fatal(fatal));
        }
        validate_topic_name(&record.topic).map_err(|e| ProduceError::Delivery(e.to_string()))?;
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_slice()),
            });
        }
        let mut future_record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic)
            .payload(record.value.as_slice())
            .timestamp(record.timestamp_ms)
            .headers(headers);
        // An empty key is sent as a null key (random partition).
        if !record.key.is_empty() {
            future_record = future_record.key(record.key.as_slice());
        }
        if let Some(partition) = record.partition {
            if partition < 0 {
                return Err(ProduceError::Delivery(format!("negative partition {partition}")));
            }
            future_record = future_record.partition(partition);
        }
        let delivery = self
            .producer
            .send_result(future_record)
            .map_err(|(error, _)| map_delivery_error(&error, &self.producer))?;
        let producer = self.producer.clone();
        let counters = self.counters.clone();
        Ok(async move {
            match delivery.await {
                Ok(Ok(delivered)) => {
                    counters.broker_up.store(true, Ordering::Relaxed);
                    Ok(RecordPosition {
                        partition: delivered.partition,
                        offset: delivered.offset,
                    })
                }
                Ok(Err((error, _message))) => Err(map_delivery_error(&error, &producer)),
                Err(_canceled) => Err(ProduceError::Fatal("the producer was dropped".into())),
            }
        }
        .boxed_local())
    }

    fn stats(&self) -> ProducerStats {
        ProducerStats {
            request_retries: self.counters.request_retries.load(Ordering::Relaxed),
            broker_up: self.counters.broker_up.load(Ordering::Relaxed),
        }
    }
}

/// A [`LogConsumer`] backed by rdkafka's `StreamConsumer` with explicit
/// partition assignment.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<LoggingContext>>,
    assigned_topic: Option<String>,
    /// An error met after records were already collected by a poll; reported
    /// by the next poll so that neither is lost.
    pending_error: Option<ConsumeError>,
    request_timeout_ms: u64,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("assigned_topic", &self.assigned_topic)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Creates a consumer whose commits go to consumer group `group_id`. The
    /// consumer never joins the group (it is assigned partitions explicitly);
    /// the group only holds committed offsets. Must be called inside a tokio
    /// runtime.
    pub fn new(config: &KafkaClientConfig, group_id: &str) -> Result<Self, KafkaSetupError> {
        if group_id.is_empty() {
            return Err(KafkaSetupError::Config("group id is empty".into()));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KafkaSetupError::NoRuntime);
        }
        let mut client_config = config.client_config(CONSUMER_DEFAULTS, CONSUMER_PROTECTED_PROPERTIES)?;
        client_config.set("group.id", group_id);
        let consumer: StreamConsumer<LoggingContext> = client_config
            .create_with_context(LoggingContext)
            .map_err(|e| config.setup_error(e))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            assigned_topic: None,
            pending_error: None,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
        })
    }

    /// Sets the timeout of metadata, watermark and commit requests, in ms.
    pub fn set_request_timeout_ms(&mut self, timeout_ms: u64) {
        self.request_timeout_ms = timeout_ms;
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Adds partitions of `topic` to the assignment, read from these
    /// positions, leaving the assigned ones as they are (librdkafka's
    /// incremental assign). Fails if one is assigned already or the
    /// assignment is of another topic.
    ///
    /// Unlike [`LogConsumer::assign`], this never stops a partition, which
    /// matters with librdkafka 2.12.1: an assignment that removes a partition
    /// whose stop, asked for by the previous assignment change, is still in
    /// progress aborts the process (`rd_kafka_assignment_partition_stopped:
    /// Assertion rktp->rktp_started failed`; confluentinc/librdkafka#5573,
    /// fixed after 2.15). Replace an assignment at most once per consumer, or
    /// add to it.
    pub fn add_partitions(&mut self, topic: &str, starts: &[(i32, StartOffset)]) -> Result<(), ConsumeError> {
        if let Some(assigned) = &self.assigned_topic
            && assigned != topic
        {
            return Err(ConsumeError::Other(format!(
                "cannot add partitions of `{topic}` to an assignment of `{assigned}`"
            )));
        }
        let list = start_list(topic, starts)?;
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| map_consume_error(&e, Some(topic)))?;
        self.assigned_topic = Some(topic.to_string());
        Ok(())
    }

    /// Runs a blocking librdkafka call on tokio's blocking pool.
    async fn blocking<T, F>(&self, call: F) -> Result<T, ConsumeError>
    where
        T: Send + 'static,
        F: FnOnce(&StreamConsumer<LoggingContext>) -> Result<T, ConsumeError> + Send + 'static,
    {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || call(&consumer))
            .await
            .map_err(|e| ConsumeError::Other(format!("blocking task failed: {e}")))?
    }
}

pub(super) fn topic_error(topic: &str) -> impl Fn(KafkaSetupError) -> ConsumeError + '_ {
    move |e| match e {
        KafkaSetupError::InvalidTopicName { .. } => ConsumeError::UnknownTopic(topic.to_string()),
        other => ConsumeError::Other(other.to_string()),
    }
}

pub(super) fn map_consume_error(error: &KafkaError, topic: Option<&str>) -> ConsumeError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            ConsumeError::UnknownTopic(topic.unwrap_or("?").to_string())
        }
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::Resolve,
        ) => ConsumeError::Unavailable(error.to_string()),
        _ => ConsumeError::Other(error.to_string()),
    }
}

fn to_consumed_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    let (timestamp_ms, timestamp_kind) = match message.timestamp() {
        Timestamp::CreateTime(ms) => (ms, TimestampKind::CreateTime),
        Timestamp::LogAppendTime(ms) => (ms, TimestampKind::LogAppendTime),
        Timestamp::NotAvailable => (-1, TimestampKind::NotAvailable),
    };
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp_ms,
        timestamp_kind,
        headers,
    }
}

/// The partition list of an assignment: `starts` of `topic`.
fn start_list(topic: &str, starts: &[(i32, StartOffset)]) -> Result<TopicPartitionList, ConsumeError> {
    validate_topic_name(topic).map_err(topic_error(topic))?;
    let mut list = TopicPartitionList::with_capacity(starts.len());
    for &(partition, start) in starts {
        if partition < 0 {
            return Err(ConsumeError::Other(format!("negative partition {partition}")));
        }
        let offset = match start {
            StartOffset::Beginning => Offset::Beginning,
            StartOffset::End => Offset::End,
            StartOffset::Committed => Offset::Stored,
            StartOffset::Offset(n) if n >= 0 => Offset::Offset(n),
            StartOffset::Offset(n) => {
                return Err(ConsumeError::Other(format!("negative start offset {n}")));
            }
        };
        list.add_partition_offset(topic, partition, offset)
            .map_err(|e| ConsumeError::Other(e.to_string()))?;
    }
    Ok(list)
}

impl LogConsumer for KafkaConsumer {
    fn partition_count(&self, topic: &str) -> LocalBoxFuture<'_, Result<u32, ConsumeError>> {
        let topic = topic.to_string();
        async move {
            validate_topic_name(&topic).map_err(topic_error(&topic))?;
            let timeout = self.timeout();
            let name = topic.clone();
            let count = self
                .blocking(move |consumer| {
                    let metadata = consumer
                        .fetch_metadata(Some(&name), timeout)
                        .map_err(|e| map_consume_error(&e, Some(&name)))?;
                    let Some(found) = metadata.topics().iter().find(|t| t.name() == name) else {
                        return Err(ConsumeError::UnknownTopic(name));
                    };
                    if let Some(error) = found.error() {
                        let code = RDKafkaErrorCode::from(error);
                        return Err(map_consume_error(&KafkaError::MetadataFetch(code), Some(&name)));
                    }
                    Ok(found.partitions().len())
                })
                .await?;
            match u32::try_from(count) {
                Ok(0) => Err(ConsumeError::UnknownTopic(topic)),
                Ok(n) => Ok(n),
                Err(_) => Err(ConsumeError::Other(format!("{count} partitions"))),
            }
        }
        .boxed_local()
    }

    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> LocalBoxFuture<'_, Result<(i64, i64), ConsumeError>> {
        let topic = topic.to_string();
        async move {
            validate_topic_name(&topic).map_err(topic_error(&topic))?;
            let timeout = self.timeout();
            self.blocking(move |consumer| {
                consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(|e| map_consume_error(&e, Some(&topic)))
            })
            .await
        }
        .boxed_local()
    }

    fn assign(&mut self, topic: &str, starts: &[(i32, StartOffset)]) -> Result<(), ConsumeError> {
        let list = start_list(topic, starts)?;
        self.consumer
            .assign(&list)
            .map_err(|e| map_consume_error(&e, Some(topic)))?;
        self.assigned_topic = Some(topic.to_string());
        self.pending_error = None;
        Ok(())
    }

    fn poll(&mut self, max_wait_ms: u64) -> LocalBoxFuture<'_, Result<Vec<ConsumedRecord>, ConsumeError>> {
        async move {
            if let Some(error) = self.pending_error.take() {
                return Err(error);
            }
            let consumer = self.consumer.clone();
            let topic = self.assigned_topic.clone();
            let mut stream = consumer.stream();
            let mut records = Vec::new();
            let first = tokio::time::timeout(Duration::from_millis(max_wait_ms), stream.next()).await;
            match first {
                Err(_elapsed) => return Ok(records),
                Ok(None) => return Err(ConsumeError::Other("the consumer stream ended".into())),
                Ok(Some(Err(error))) => return Err(map_consume_error(&error, topic.as_deref())),
                Ok(Some(Ok(message))) => records.push(to_consumed_record(&message)),
            }
            while records.len() < POLL_MAX_RECORDS {
                match stream.next().now_or_never() {
                    Some(Some(Ok(message))) => records.push(to_consumed_record(&message)),
                    Some(Some(Err(error))) => {
                        self.pending_error = Some(map_consume_error(&error, topic.as_deref()));
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            Ok(records)
        }
        .boxed_local()
    }

    fn commit(
        &mut self,
        topic: &str,
        next_offsets: &[(i32, i64)],
    ) -> LocalBoxFuture<'_, Result<(), ConsumeError>> {
        let topic = topic.to_string();
        let next_offsets = next_offsets.to_vec();
        async move {
            validate_topic_name(&topic).map_err(topic_error(&topic))?;
            if next_offsets.is_empty() {
                return Ok(());
            }
            let mut list = TopicPartitionList::with_capacity(next_offsets.len());
            for (partition, offset) in next_offsets {
                if partition < 0 || offset < 0 {
                    return Err(ConsumeError::Other(format!(
                        "cannot commit offset {offset} of partition {partition}"
                    )));
                }
                list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| ConsumeError::Other(e.to_string()))?;
            }
            self.blocking(move |consumer| {
                consumer
                    .commit(&list, CommitMode::Sync)
                    .map_err(|e| map_consume_error(&e, Some(&topic)))
            })
            .await
        }
        .boxed_local()
    }
}

/// Replication factor requested for new topics: -1 asks for the broker's
/// default (`default.replication.factor`).
const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// The `retention.ms` of `topic`, as the broker reports it (DescribeConfigs);
/// `None` when the broker reports no value (Tansu 0.6.0 reports none).
pub async fn topic_retention_ms(
    config: &KafkaClientConfig,
    topic: &str,
) -> Result<Option<i64>, KafkaSetupError> {
    validate_topic_name(topic)?;
    let client_config = config.client_config(&[], &["bootstrap.servers", "metadata.broker.list"])?;
    let admin: AdminClient<LoggingContext> = client_config
        .create_with_context(LoggingContext)
        .map_err(|e| config.setup_error(e))?;
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|e| KafkaSetupError::Admin(e.to_string()))?;
    let Some(result) = results.into_iter().next() else {
        return Ok(None);
    };
    let resource = result.map_err(|code| KafkaSetupError::Topic {
        topic: topic.to_string(),
        reason: code.to_string(),
    })?;
    let Some(value) = resource.get("retention.ms").and_then(|e| e.value.clone()) else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<i64>()
        .map(Some)
        .map_err(|_| KafkaSetupError::Topic {
            topic: topic.to_string(),
            reason: format!("retention.ms is not a number: {value:?}"),
        })
}

/// Creates the topics that do not exist yet, with `partitions` each, and
/// checks that the ones that exist have that many partitions (Kafka brokers
/// without CreatePartitions, like Tansu, cannot fix a mismatch, and keyed
/// partitioning depends on the count). Topics are never created implicitly by
/// the broker, so call this before producing.
pub async fn ensure_topics(
    bootstrap_servers: &str,
    properties: &BTreeMap<String, String>,
    topics: &[(&str, u32)],
) -> Result<(), KafkaSetupError> {
    if topics.is_empty() {
        return Ok(());
    }
    let config = KafkaClientConfig {
        bootstrap_servers: bootstrap_servers.to_string(),
        properties: properties.clone(),
    };
    let mut new_topics = Vec::with_capacity(topics.len());
    for &(name, partitions) in topics {
        validate_topic_name(name)?;
        let count =
            i32::try_from(partitions)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| KafkaSetupError::Topic {
                    topic: name.to_string(),
                    reason: format!("invalid partition count {partitions}"),
                })?;
        new_topics.push(NewTopic::new(
            name,
            count,
            TopicReplication::Fixed(BROKER_DEFAULT_REPLICATION),
        ));
    }
    let client_config = config.client_config(&[], &["bootstrap.servers", "metadata.broker.list"])?;
    let admin: AdminClient<LoggingContext> = client_config
        .create_with_context(LoggingContext)
        .map_err(|e| config.setup_error(e))?;
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|e| KafkaSetupError::Admin(e.to_string()))?;
    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
            Err((name, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic: name,
                    reason: code.to_string(),
                });
            }
        }
    }
    if existing.is_empty() {
        return Ok(());
    }
    let admin = Arc::new(admin);
    let expected: BTreeMap<String, u32> = topics.iter().map(|&(n, p)| (n.to_string(), p)).collect();
    tokio::task::spawn_blocking(move || {
        for name in existing {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| KafkaSetupError::Admin(e.to_string()))?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map(|t| t.partitions().len());
            let want = expected.get(&name).copied().unwrap_or(0);
            match found {
                Some(n) if n == want as usize => {}
                Some(n) => {
                    return Err(KafkaSetupError::Topic {
                        topic: name,
                        reason: format!("exists with {n} partitions, expected {want}"),
                    });
                }
                None => {
                    return Err(KafkaSetupError::Topic {
                        topic: name,
                        reason: "reported as existing but absent from metadata".into(),
                    });
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| KafkaSetupError::Admin(format!("metadata task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_unknown_fields() {
        let text = r#"
            bootstrap_servers = "127.0.0.1:9092"
            [properties]
            "security.protocol" = "SASL_SSL"
            "sasl.password" = "hunter2"
        "#;
        let config: KafkaClientConfig = toml::from_str(text).unwrap();
        assert_eq!(config.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.properties["security.protocol"], "SASL_SSL");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("SASL_SSL"), "{debug}");
        assert!(toml::from_str::<KafkaClientConfig>("bootstrap_servers = \"x\"\nbogus = 1").is_err());
    }

    #[test]
    fn protected_properties_are_refused() {
        for key in [
            "acks",
            "enable.idempotence",
            "partitioner",
            "message.timeout.ms",
            "delivery.timeout.ms",
        ] {
            let config = KafkaClientConfig::new("127.0.0.1:1").with_property(key, "1");
            let error = KafkaProducer::new(&config).unwrap_err();
            assert_eq!(error, KafkaSetupError::ProtectedProperty(key.into()));
        }
        let config = KafkaClientConfig::new("127.0.0.1:1").with_property("linger.ms", "50");
        assert!(KafkaProducer::new(&config).is_ok());
    }

    #[test]
    fn invalid_properties_are_config_errors() {
        let config = KafkaClientConfig::new("127.0.0.1:1").with_property("no.such.property", "1");
        assert!(matches!(
            KafkaProducer::new(&config),
            Err(KafkaSetupError::Config(_))
        ));
        let config = KafkaClientConfig::new("  ");
        assert!(matches!(
            KafkaProducer::new(&config),
            Err(KafkaSetupError::Config(_))
        ));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("soil-moisture-raw").is_ok());
        assert!(validate_topic_name("a.b_c-1").is_ok());
        for bad in ["", ".", "..", "has space", "nul\0byte", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn consumer_needs_a_runtime() {
        let config = KafkaClientConfig::new("127.0.0.1:1");
        assert_eq!(
            KafkaConsumer::new(&config, "g").unwrap_err(),
            KafkaSetupError::NoRuntime
        );
    }

    #[test]
    fn enqueue_while_unreachable_waits_and_bad_topics_fail_fast() {
        let config = KafkaClientConfig::new("127.0.0.1:1");
        let producer = KafkaProducer::new(&config).unwrap();
        let record = OutboundRecord {
            topic: "t".into(),
            key: b"k".to_vec(),
            partition: None,
            value: b"v".to_vec(),
            timestamp_ms: 1,
            headers: vec![("h".into(), b"1".to_vec())],
        };
        let mut pending = producer.enqueue(record.clone()).unwrap();
        assert!((&mut pending).now_or_never().is_none());
        assert!(producer.in_flight_count() >= 1);
        assert!(!producer.stats().broker_up);
        let bad = OutboundRecord {
            topic: "bad topic".into(),
            ..record
        };
        assert!(matches!(producer.enqueue(bad), Err(ProduceError::Delivery(_))));
    }

    #[test]
    fn queue_full_is_reported_at_enqueue() {
        let config = KafkaClientConfig::new("127.0.0.1:1").with_property("queue.buffering.max.messages", "2");
        let producer = KafkaProducer::new(&config).unwrap();
        let record = OutboundRecord {
            topic: "t".into(),
            key: b"k".to_vec(),
            partition: None,
            value: b"v".to_vec(),
            timestamp_ms: 1,
            headers: vec![],
        };
        let _a = producer.enqueue(record.clone()).unwrap();
        let _b = producer.enqueue(record.clone()).unwrap();
        assert!(matches!(producer.enqueue(record), Err(ProduceError::QueueFull)));
    }

    #[test]
    fn statistics_sum_retries_across_brokers_and_detect_up() {
        let counters = ProducerCounters::default();
        // (name, state, txretries, req_timeouts)
        let stats = |entries: &[(&str, &str, u64, u64)]| {
            let mut statistics = Statistics::default();
            for (name, state, retries, timeouts) in entries {
                let broker = rdkafka::statistics::Broker {
                    name: name.to_string(),
                    source: "learned".into(),
                    state: state.to_string(),
                    txretries: *retries,
                    req_timeouts: *timeouts,
                    ..Default::default()
                };
                statistics.brokers.insert(name.to_string(), broker);
            }
            let internal = rdkafka::statistics::Broker {
                source: "internal".into(),
                state: "UP".into(),
                txretries: 100,
                ..Default::default()
            };
            statistics.brokers.insert(":0/internal".into(), internal);
            statistics
        };
        counters.record_statistics(&stats(&[("a", "UP", 2, 1), ("b", "DOWN", 1, 0)]));
        assert_eq!(counters.request_retries.load(Ordering::Relaxed), 4);
        assert!(counters.broker_up.load(Ordering::Relaxed));
        // Broker `a` disappears: its retries stay counted.
        counters.record_statistics(&stats(&[("b", "CONNECT", 4, 2)]));
        assert_eq!(counters.request_retries.load(Ordering::Relaxed), 9);
        assert!(!counters.broker_up.load(Ordering::Relaxed));
    }
}
