//! [`SimProducer`]: an idempotent producer for the simulated broker.
//!
//! `enqueue` puts a record in a bounded queue and returns its delivery
//! future. A background task (`spawn_local`) owns everything else:
//!
//! 1. connects, gets a producer id (one per `SimProducer`: its session) and
//!    the partition counts of the topics it sees;
//! 2. routes each record to `partition_for_key(key, partition_count)`, the
//!    same partition as the Java client and librdkafka's `murmur2_random`;
//! 3. sends one produce request at a time holding at most one batch per
//!    partition; a batch keeps its sequence numbers and records until it is
//!    acknowledged, so a resend is deduplicated by the broker and order within
//!    a partition never changes;
//! 4. retries forever (capped exponential backoff, request timeouts,
//!    reconnecting after any I/O error or timeout) on transport failures and
//!    retriable broker errors;
//! 5. on a non-retriable error (a sequence gap after the broker lost
//!    acknowledged data, fencing, an unknown producer id) fails every pending
//!    record with `ProduceError::Fatal` and refuses new ones: the caller
//!    creates a new producer (a new session) and resends what is not
//!    acknowledged.

use super::connection::{CallError, Connection};
use super::{ClientConfigError, require_positive};
use crate::broker::MAX_PARTITIONS_PER_TOPIC;
use crate::protocol::{
    DEFAULT_MAX_FRAME_BYTES, ErrorCode, ProduceBatch, ProduceRequest, Request, Response, WireRecord,
};
use soilstream::transport::{
    DeliveryFuture, LogProducer, OutboundRecord, ProduceError, ProducerStats, RecordPosition,
    partition_for_key,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// Producer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Broker host name (turmoil DNS).
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// Most records enqueued and not yet reported (queued or in flight);
    /// beyond it `enqueue` fails with `QueueFull`.
    pub max_queue_records: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// About the most bytes in one batch (a single larger record still goes).
    pub max_batch_bytes: usize,
    /// About the most record bytes in one request (at least one batch goes).
    pub max_request_bytes: usize,
    /// Largest record accepted by `enqueue`.
    pub max_record_bytes: usize,
    /// After being woken with nothing in flight, wait this long to gather a
    /// batch.
    pub linger_ms: u64,
    /// A request without response after this long is abandoned (and the
    /// connection dropped).
    pub request_timeout_ms: u64,
    /// Connection attempts give up after this long.
    pub connect_timeout_ms: u64,
    /// First retry delay.
    pub retry_backoff_ms: u64,
    /// Retry delays double up to this.
    pub retry_backoff_max_ms: u64,
    /// Bound on a frame.
    pub max_frame_bytes: u32,
}

impl ProducerConfig {
    /// Defaults for a broker at `broker_host:broker_port`.
    pub fn new(broker_host: impl Into<String>, broker_port: u16) -> Self {
        Self {
            broker_host: broker_host.into(),
            broker_port,
            max_queue_records: 100_000,
            max_batch_records: 1_000,
            max_batch_bytes: 512 * 1024,
            max_request_bytes: 2 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            linger_ms: 5,
            request_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            retry_backoff_ms: 50,
            retry_backoff_max_ms: 1_000,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Checks limits and timeouts.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        require_positive(&[
            ("max_queue_records", self.max_queue_records as u64),
            ("max_batch_records", self.max_batch_records as u64),
            ("max_batch_bytes", self.max_batch_bytes as u64),
            ("max_request_bytes", self.max_request_bytes as u64),
            ("max_record_bytes", self.max_record_bytes as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("retry_backoff_ms", self.retry_backoff_ms),
        ])?;
        if self.retry_backoff_max_ms < self.retry_backoff_ms {
            return Err(ClientConfigError::Invalid(
                "retry_backoff_max_ms is below retry_backoff_ms".into(),
            ));
        }
        let largest_request = self.max_request_bytes.max(self.max_batch_bytes) + self.max_record_bytes;
        // Encoding overhead is small; keep a quarter of the frame for it.
        if largest_request as u64 > u64::from(self.max_frame_bytes) * 3 / 4 {
            return Err(ClientConfigError::Invalid(format!(
                "a request of up to {largest_request} bytes does not fit in frames of {}",
                self.max_frame_bytes
            )));
        }
        Ok(())
    }
}

type Reply = oneshot::Sender<Result<RecordPosition, ProduceError>>;

struct Pending {
    topic: String,
    /// Explicit partition, else the key's.
    partition: Option<i32>,
    record: WireRecord,
    size_bytes: usize,
    reply: Reply,
}

struct Shared {
    incoming: VecDeque<Pending>,
    /// Records enqueued and not yet reported.
    unacked: usize,
    stats: ProducerStats,
    fatal: Option<String>,
    closed: bool,
}

/// The `LogProducer` seam over turmoil TCP to the simulated broker.
pub struct SimProducer {
    config: Rc<ProducerConfig>,
    shared: Rc<RefCell<Shared>>,
    wake: Rc<Notify>,
}

impl SimProducer {
    /// Starts a producer session and its background task.
    ///
    /// # Panics
    /// Outside a turmoil host or client (the task is spawned with
    /// `tokio::task::spawn_local`).
    pub fn new(config: ProducerConfig) -> Result<Self, ClientConfigError> {
        config.validate()?;
        let config = Rc::new(config);
        let shared = Rc::new(RefCell::new(Shared {
            incoming: VecDeque::new(),
            unacked: 0,
            stats: ProducerStats::default(),
            fatal: None,
            closed: false,
        }));
        let wake = Rc::new(Notify::new());
        let worker = Worker {
            config: config.clone(),
            shared: shared.clone(),
            wake: wake.clone(),
            connection: None,
            producer: None,
            partition_counts: BTreeMap::new(),
            unknown_topics: BTreeSet::new(),
            partitions: BTreeMap::new(),
            consecutive_failures: 0,
            rotation: 0,
        };
        tokio::task::spawn_local(worker.run());
        Ok(Self { config, shared, wake })
    }

    /// Records enqueued and not yet reported.
    pub fn unacked_records(&self) -> usize {
        self.shared.borrow().unacked
    }

    /// The reason the producer became unusable, if it did.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared.borrow().fatal.clone()
    }
}

impl Drop for SimProducer {
    fn drop(&mut self) {
        self.shared.borrow_mut().closed = true;
        self.wake.notify_one();
    }
}

impl LogProducer for SimProducer {
    fn enqueue(&self, record: OutboundRecord) -> Result<DeliveryFuture, ProduceError> {
        let mut shared = self.shared.borrow_mut();
        if let Some(reason) = &shared.fatal {
            return Err(ProduceError::Fatal(reason.clone()));
        }
        let wire = WireRecord {
            key: Some(record.key),
            value: Some(record.value),
            timestamp_ms: record.timestamp_ms,
            headers: record.headers,
        };
        let size_bytes = wire.size_bytes();
        if size_bytes > self.config.max_record_bytes {
            return Err(ProduceError::Delivery(format!(
                "record of {size_bytes} bytes exceeds max_record_bytes ({})",
                self.config.max_record_bytes
            )));
        }
        if record.topic.is_empty() {
            return Err(ProduceError::Delivery("empty topic name".into()));
        }
        if shared.unacked >= self.config.max_queue_records {
            return Err(ProduceError::QueueFull);
        }
        if record.partition.is_some_and(|p| p < 0) {
            return Err(ProduceError::Delivery("negative partition".into()));
        }
        let (reply, delivered) = oneshot::channel();
        shared.incoming.push_back(Pending {
            topic: record.topic,
            partition: record.partition,
            record: wire,
            size_bytes,
            reply,
        });
        shared.unacked += 1;
        debug_assert!(shared.unacked <= self.config.max_queue_records);
        drop(shared);
        self.wake.notify_one();
        Ok(Box::pin(async move {
            delivered
                .await
                .unwrap_or_else(|_| Err(ProduceError::Fatal("producer stopped".into())))
        }))
    }

    fn stats(&self) -> ProducerStats {
        self.shared.borrow().stats
    }
}

struct Batch {
    base_sequence: u64,
    records: Vec<Pending>,
    attempts: u32,
}

#[derive(Default)]
struct PartitionQueue {
    waiting: VecDeque<Pending>,
    next_sequence: u64,
    /// The one batch of this partition that is, or was, in flight.
    batch: Option<Batch>,
}

enum CycleError {
    /// Transport failure: the connection was dropped; back off and retry.
    Reconnect(String),
    /// Retriable broker error: back off and retry.
    Backoff(String),
    /// The session cannot continue.
    Fatal(String),
}

struct Worker {
    config: Rc<ProducerConfig>,
    shared: Rc<RefCell<Shared>>,
    wake: Rc<Notify>,
    connection: Option<Connection>,
    producer: Option<(u64, u16)>,
    partition_counts: BTreeMap<String, u32>,
    unknown_topics: BTreeSet<String>,
    partitions: BTreeMap<(String, i32), PartitionQueue>,
    consecutive_failures: u32,
    rotation: usize,
}

impl Worker {
    async fn run(mut self) {
        loop {
            if self.shared.borrow().closed {
                self.fail_all(&ProduceError::Fatal("producer closed".into()));
                return;
            }
            if !self.has_work() {
                self.wake.notified().await;
                if self.config.linger_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.config.linger_ms)).await;
                }
                continue;
            }
            match self.cycle().await {
                Ok(()) => self.consecutive_failures = 0,
                Err(CycleError::Reconnect(reason)) | Err(CycleError::Backoff(reason)) => {
                    let delay_ms = self.backoff_ms();
                    tracing::debug!(%reason, delay_ms, "produce retry");
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                Err(CycleError::Fatal(reason)) => {
                    tracing::warn!(%reason, "producer session failed");
                    self.shared.borrow_mut().fatal = Some(reason.clone());
                    self.fail_all(&ProduceError::Fatal(reason));
                    return;
                }
            }
        }
    }

    fn backoff_ms(&mut self) -> u64 {
        let exponent = self.consecutive_failures.min(20);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.config
            .retry_backoff_ms
            .saturating_mul(1 << exponent)
            .min(self.config.retry_backoff_max_ms)
    }

    fn has_work(&self) -> bool {
        !self.shared.borrow().incoming.is_empty()
            || self
                .partitions
                .values()
                .any(|q| q.batch.is_some() || !q.waiting.is_empty())
    }

    fn set_broker_up(&self, up: bool) {
        self.shared.borrow_mut().stats.broker_up = up;
    }

    async fn call(&mut self, request: &Request) -> Result<Response, CycleError> {
        if self.connection.is_none() {
            let connection = Connection::connect(
                &self.config.broker_host,
                self.config.broker_port,
                self.config.connect_timeout_ms,
                self.config.max_frame_bytes,
            )
            .await
            .map_err(|error| {
                self.set_broker_up(false);
                CycleError::Reconnect(error.to_string())
            })?;
            self.connection = Some(connection);
        }
        let connection = self.connection.as_mut().expect("connected above");
        match connection.call(request, self.config.request_timeout_ms).await {
            Ok(Response::Error(code)) if code.is_retriable() => {
                self.set_broker_up(true);
                Err(CycleError::Backoff(code.to_string()))
            }
            Ok(Response::Error(code)) => {
                Err(CycleError::Fatal(format!("broker refused the request: {code}")))
            }
            Ok(response) => {
                self.set_broker_up(true);
                Ok(response)
            }
            Err(error) => {
                self.connection = None;
                self.set_broker_up(false);
                Err(CycleError::Reconnect(describe(&error)))
            }
        }
    }

    async fn cycle(&mut self) -> Result<(), CycleError> {
        if self.producer.is_none() {
            match self.call(&Request::InitProducerId).await? {
                Response::InitProducerId {
                    producer_id,
                    producer_epoch,
                } => {
                    tracing::debug!(producer_id, "producer session started");
                    self.producer = Some((producer_id, producer_epoch));
                }
                other => return Err(self.unexpected(&other)),
            }
        }
        self.refresh_metadata().await?;
        self.route_incoming();
        let Some((request, included)) = self.build_request() else {
            return Ok(());
        };
        let response = self.call(&Request::Produce(request)).await?;
        self.apply_response(response, &included)
    }

    fn unexpected(&mut self, response: &Response) -> CycleError {
        self.connection = None;
        CycleError::Reconnect(format!("unexpected response {response:?}"))
    }

    async fn refresh_metadata(&mut self) -> Result<(), CycleError> {
        let missing: BTreeSet<String> = self
            .shared
            .borrow()
            .incoming
            .iter()
            .filter(|p| {
                !self.partition_counts.contains_key(&p.topic) && !self.unknown_topics.contains(&p.topic)
            })
            .map(|p| p.topic.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let request = Request::Metadata {
            topics: missing.into_iter().collect(),
        };
        let Response::Metadata { topics } = self.call(&request).await? else {
            return Err(CycleError::Reconnect("unexpected response to metadata".into()));
        };
        for (topic, count) in topics {
            match count {
                Some(count) if (1..=MAX_PARTITIONS_PER_TOPIC).contains(&count) => {
                    self.partition_counts.insert(topic, count);
                }
                _ => {
                    self.unknown_topics.insert(topic);
                }
            }
        }
        Ok(())
    }

    /// Moves incoming records to their partitions (those of unknown topics
    /// fail; those whose topic has no metadata yet stay).
    fn route_incoming(&mut self) {
        let incoming = std::mem::take(&mut self.shared.borrow_mut().incoming);
        let mut keep = VecDeque::new();
        let mut failed = 0;
        for pending in incoming {
            if let Some(count) = self.partition_counts.get(&pending.topic) {
                let key = pending.record.key.as_deref().unwrap_or_default();
                let partition = pending
                    .partition
                    .unwrap_or_else(|| partition_for_key(key, *count));
                if partition as u32 >= *count {
                    let error = ProduceError::Delivery(format!(
                        "partition {partition} of `{}` does not exist ({count} partitions)",
                        pending.topic
                    ));
                    let _ = pending.reply.send(Err(error));
                    failed += 1;
                    continue;
                }
                self.partitions
                    .entry((pending.topic.clone(), partition))
                    .or_default()
                    .waiting
                    .push_back(pending);
            } else if self.unknown_topics.contains(&pending.topic) {
                let error = ProduceError::Delivery(format!("unknown topic `{}`", pending.topic));
                let _ = pending.reply.send(Err(error));
                failed += 1;
            } else {
                keep.push_back(pending);
            }
        }
        let mut shared = self.shared.borrow_mut();
        // Records enqueued meanwhile go after the ones kept.
        keep.extend(shared.incoming.drain(..));
        shared.incoming = keep;
        shared.unacked -= failed;
    }

    /// Forms batches and picks those that fit in one request, starting from
    /// a rotating partition so that none starves.
    fn build_request(&mut self) -> Option<(ProduceRequest, Vec<(String, i32)>)> {
        let (producer_id, producer_epoch) = self.producer?;
        let config = self.config.clone();
        let keys: Vec<(String, i32)> = self.partitions.keys().cloned().collect();
        if keys.is_empty() {
            return None;
        }
        let start = self.rotation % keys.len();
        self.rotation = self.rotation.wrapping_add(1);
        let mut batches = Vec::new();
        let mut included = Vec::new();
        let mut request_bytes = 0_usize;
        let mut resend = false;
        for key in keys[start..].iter().chain(keys[..start].iter()) {
            let queue = self.partitions.get_mut(key).expect("key listed above");
            if queue.batch.is_none() && !queue.waiting.is_empty() {
                let mut records = Vec::new();
                let mut bytes = 0_usize;
                while let Some(next) = queue.waiting.front() {
                    if records.len() >= config.max_batch_records
                        || (!records.is_empty() && bytes + next.size_bytes > config.max_batch_bytes)
                    {
                        break;
                    }
                    bytes += next.size_bytes;
                    records.push(queue.waiting.pop_front().expect("front exists"));
                }
                let count = records.len() as u64;
                queue.batch = Some(Batch {
                    base_sequence: queue.next_sequence,
                    records,
                    attempts: 0,
                });
                queue.next_sequence += count;
            }
            let Some(batch) = queue.batch.as_mut() else {
                continue;
            };
            let batch_bytes: usize = batch.records.iter().map(|p| p.size_bytes).sum();
            if !batches.is_empty() && request_bytes + batch_bytes > config.max_request_bytes {
                continue;
            }
            request_bytes += batch_bytes;
            resend |= batch.attempts > 0;
            batch.attempts += 1;
            batches.push(ProduceBatch {
                topic: key.0.clone(),
                partition: key.1,
                base_sequence: batch.base_sequence,
                records: batch.records.iter().map(|p| p.record.clone()).collect(),
            });
            included.push(key.clone());
        }
        if batches.is_empty() {
            return None;
        }
        if resend {
            self.shared.borrow_mut().stats.request_retries += 1;
        }
        Some((
            ProduceRequest {
                producer_id,
                producer_epoch,
                batches,
            },
            included,
        ))
    }

    fn apply_response(&mut self, response: Response, included: &[(String, i32)]) -> Result<(), CycleError> {
        let Response::Produce { results } = response else {
            return Err(self.unexpected(&response));
        };
        let mut retriable = None;
        for result in results {
            let key = (result.topic, result.partition);
            if !included.contains(&key) {
                tracing::warn!(
                    topic = key.0,
                    partition = key.1,
                    "result for a batch not sent; ignored"
                );
                continue;
            }
            let Some(queue) = self.partitions.get_mut(&key) else {
                continue;
            };
            match result.result {
                Ok(base_offset) => {
                    // A second answer for the same batch finds none: ignore it.
                    let Some(batch) = queue.batch.take() else {
                        tracing::warn!(topic = key.0, partition = key.1, "batch answered twice; ignored");
                        continue;
                    };
                    let count = batch.records.len();
                    for (index, pending) in batch.records.into_iter().enumerate() {
                        let position = RecordPosition {
                            partition: key.1,
                            offset: base_offset + index as i64,
                        };
                        let _ = pending.reply.send(Ok(position));
                    }
                    let mut shared = self.shared.borrow_mut();
                    debug_assert!(shared.unacked >= count);
                    shared.unacked -= count;
                }
                Err(code) if code.is_retriable() => retriable = Some(code),
                Err(code) => return Err(fatal_for(&key, code)),
            }
        }
        match retriable {
            Some(code) => Err(CycleError::Backoff(code.to_string())),
            None => Ok(()),
        }
    }

    fn fail_all(&mut self, error: &ProduceError) {
        let incoming = std::mem::take(&mut self.shared.borrow_mut().incoming);
        let queued = self.partitions.values_mut().flat_map(|queue| {
            let batch = queue.batch.take().map(|b| b.records).unwrap_or_default();
            batch
                .into_iter()
                .chain(queue.waiting.drain(..))
                .collect::<Vec<_>>()
        });
        for pending in incoming.into_iter().chain(queued.collect::<Vec<_>>()) {
            let _ = pending.reply.send(Err(error.clone()));
        }
        self.shared.borrow_mut().unacked = 0;
    }
}

fn fatal_for(key: &(String, i32), code: ErrorCode) -> CycleError {
    CycleError::Fatal(format!("{}/{}: {code}", key.0, key.1))
}

fn describe(error: &CallError) -> String {
    error.to_string()
}
