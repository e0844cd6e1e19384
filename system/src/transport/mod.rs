//! The `LogProducer` / `LogConsumer` seam: what the system needs from a
//! Kafka-protocol log, independent of how it is reached.
//!
//! Implementations: rdkafka against a real broker ([`kafka`]) and a client of
//! the simulated broker over turmoil TCP (in `soilstream-sim`). Both give the
//! same guarantees, which the forwarder and the checker rely on:
//!
//! - a record's delivery future resolves only after the broker acknowledged it
//!   with `acks=all`, or when delivery has definitively failed;
//! - within one producer session and one partition, records are appended in
//!   the order they were enqueued (idempotent producer, retries never reorder);
//! - the partition of a keyed record is [`partition_for_key`], identical to
//!   the Java client's and librdkafka's `murmur2_random` partitioner.

use futures::future::LocalBoxFuture;

pub mod group;
pub mod kafka;
pub mod kafka_group;

pub use group::{CommittedOffsets, GroupConsumer, GroupEvent};

/// A record to append to a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRecord {
    /// Topic name.
    pub topic: String,
    /// Record key (the sensor id for readings).
    pub key: Vec<u8>,
    /// The partition to append to; `None`: the key's partition
    /// ([`partition_for_key`]). Stream processors set it to keep their
    /// outputs co-partitioned with their input whatever the key.
    pub partition: Option<i32>,
    /// Record value (Confluent wire format for readings).
    pub value: Vec<u8>,
    /// Record timestamp (CreateTime), ms since the Unix epoch: the event time.
    pub timestamp_ms: i64,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProduceError {
    /// The local send queue is full: back off and try again.
    #[error("producer queue is full")]
    QueueFull,
    /// Delivery failed; the record may or may not be in the log. Resend it.
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// The producer can no longer be used (fatal idempotence error, closed);
    /// create a new one and resend everything not yet acknowledged.
    #[error("producer is unusable: {0}")]
    Fatal(String),
}

/// The delivery report of one enqueued record.
pub type DeliveryFuture = LocalBoxFuture<'static, Result<RecordPosition, ProduceError>>;

/// Counters a producer exposes for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Produce requests retried by the client (transport-level retries).
    pub request_retries: u64,
    /// Whether the client currently has a usable connection to the broker.
    pub broker_up: bool,
}

/// Appends records to a log.
pub trait LogProducer {
    /// Queues `record` for delivery and returns its delivery report future.
    /// Fails immediately with [`ProduceError::QueueFull`] when the client's
    /// bounded queue is full.
    fn enqueue(&self, record: OutboundRecord) -> Result<DeliveryFuture, ProduceError>;
    /// Counters for metrics.
    fn stats(&self) -> ProducerStats;
}

/// How the broker stamped a record's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    /// Set by the producer (the event time, for readings).
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
    /// No timestamp.
    NotAvailable,
}

/// A record read from a log.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedRecord {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value, if any.
    pub value: Option<Vec<u8>>,
    /// Record timestamp in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Who set the timestamp.
    pub timestamp_kind: TimestampKind,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConsumedRecord {
    /// The first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    /// The oldest retained record.
    Beginning,
    /// After the newest record (only new records).
    End,
    /// A specific offset.
    Offset(i64),
    /// The consumer group's committed offset, or the beginning if none.
    Committed,
}

/// Why a consumer operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConsumeError {
    /// The topic does not exist.
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// The broker could not be reached in time; retry.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// This member's group generation is over (a rebalance moved on): its
    /// commit was refused. Rejoin and rebuild.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Any other failure reported by the client.
    #[error("consumer error: {0}")]
    Other(String),
}

/// Builds plain (assign-based) consumers on demand: what a component that
/// reads topics besides its group's gets from its world.
pub type ConsumerFactory = Box<dyn Fn() -> Result<Box<dyn LogConsumer>, ConsumeError>>;

/// Reads records from a log, by explicit partition assignment.
pub trait LogConsumer {
    /// Number of partitions of `topic`.
    fn partition_count(&self, topic: &str) -> LocalBoxFuture<'_, Result<u32, ConsumeError>>;
    /// Low and high watermarks of a partition: the first retained offset and
    /// the offset the next appended record will get.
    fn watermarks(&self, topic: &str, partition: i32)
    -> LocalBoxFuture<'_, Result<(i64, i64), ConsumeError>>;
    /// Replaces the assignment: read these partitions of `topic` from these
    /// positions.
    fn assign(&mut self, topic: &str, starts: &[(i32, StartOffset)]) -> Result<(), ConsumeError>;
    /// Waits up to `max_wait_ms` for records of the assigned partitions and
    /// returns what arrived (possibly nothing), in offset order per partition.
    fn poll(&mut self, max_wait_ms: u64) -> LocalBoxFuture<'_, Result<Vec<ConsumedRecord>, ConsumeError>>;
    /// Commits, for the consumer group, the next offset to read per partition.
    fn commit(
        &mut self,
        topic: &str,
        next_offsets: &[(i32, i64)],
    ) -> LocalBoxFuture<'_, Result<(), ConsumeError>>;
}

/// Seed of the Java client's murmur2 partitioner.
const KAFKA_MURMUR2_SEED: u32 = 0x9747_b28c;

/// The partition a keyed record goes to: `(murmur2(key) & 0x7fffffff) % n`,
/// identical to the Java client's default partitioner and librdkafka's
/// `murmur2_random` for non-empty keys.
pub fn partition_for_key(key: &[u8], partition_count: u32) -> i32 {
    assert!(partition_count > 0, "a topic has at least one partition");
    let hash = murmur2::murmur2(key, KAFKA_MURMUR2_SEED) & 0x7fff_ffff;
    (hash % partition_count) as i32
}

/// Most records [`read_topic_to_end`] returns, to bound memory.
pub const READ_TO_END_MAX_RECORDS: usize = 10_000_000;

/// Reads every partition of `topic` from its low watermark up to the high
/// watermark observed at the start, and returns the records in (partition,
/// offset) order. Gives up with [`ConsumeError::Unavailable`] when no progress
/// is made for `stall_timeout_ms`.
pub async fn read_topic_to_end(
    consumer: &mut dyn LogConsumer,
    topic: &str,
    stall_timeout_ms: u64,
) -> Result<Vec<ConsumedRecord>, ConsumeError> {
    let partitions = consumer.partition_count(topic).await?;
    let mut targets = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions as i32 {
        let (_low, high) = consumer.watermarks(topic, partition).await?;
        targets.push((partition, high));
    }
    let starts: Vec<(i32, StartOffset)> = targets
        .iter()
        .filter(|(_, high)| *high > 0)
        .map(|(p, _)| (*p, StartOffset::Beginning))
        .collect();
    let mut records = Vec::new();
    if starts.is_empty() {
        return Ok(records);
    }
    consumer.assign(topic, &starts)?;
    let mut next_offset: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    let done = |next: &std::collections::BTreeMap<i32, i64>| {
        targets
            .iter()
            .all(|(p, high)| *high == 0 || next.get(p).is_some_and(|n| n >= high))
    };
    let mut waited_ms = 0;
    const POLL_MS: u64 = 100;
    while !done(&next_offset) {
        let batch = consumer.poll(POLL_MS).await?;
        if batch.is_empty() {
            waited_ms += POLL_MS;
            if waited_ms >= stall_timeout_ms {
                let progress: Vec<String> = targets
                    .iter()
                    .filter(|(_, high)| *high > 0)
                    .map(|(p, high)| {
                        format!(
                            "partition {p} at {} of {high}",
                            next_offset.get(p).copied().unwrap_or(0)
                        )
                    })
                    .collect();
                return Err(ConsumeError::Unavailable(format!(
                    "reading `{topic}` to its end made no progress for {stall_timeout_ms} ms ({})",
                    progress.join(", ")
                )));
            }
            continue;
        }
        waited_ms = 0;
        for record in batch {
            let high = targets
                .iter()
                .find(|(p, _)| *p == record.partition)
                .map_or(0, |(_, h)| *h);
            if record.offset < high {
                next_offset.insert(record.partition, record.offset + 1);
                records.push(record);
            }
        }
        if records.len() > READ_TO_END_MAX_RECORDS {
            return Err(ConsumeError::Other(format!(
                "`{topic}` holds more than {READ_TO_END_MAX_RECORDS} records"
            )));
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// Reads one partition from an offset up to the high watermark observed when
/// it starts, in batches, with a bounded wait for progress: how stream
/// processors read their own outputs back.
pub struct PartitionReader<'a> {
    consumer: &'a mut dyn LogConsumer,
    topic: String,
    partition: i32,
    next_offset: i64,
    end_offset: i64,
    stall_timeout_ms: u64,
}

impl<'a> PartitionReader<'a> {
    /// Assigns `consumer` to `partition` of `topic` from `from_offset` (or
    /// the low watermark, if that is later) up to the current high watermark.
    pub async fn start(
        consumer: &'a mut dyn LogConsumer,
        topic: &str,
        partition: i32,
        from_offset: i64,
        stall_timeout_ms: u64,
    ) -> Result<PartitionReader<'a>, ConsumeError> {
        let (low, high) = consumer.watermarks(topic, partition).await?;
        let next_offset = from_offset.max(low);
        if next_offset < high {
            consumer.assign(topic, &[(partition, StartOffset::Offset(next_offset))])?;
        }
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            partition,
            next_offset,
            end_offset: high,
            stall_timeout_ms,
        })
    }

    /// The offset the reader stops at (exclusive).
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }

    /// The next batch, in offset order; `None` once the end is reached.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<ConsumedRecord>>, ConsumeError> {
        const POLL_MS: u64 = 100;
        let mut waited_ms = 0;
        while self.next_offset < self.end_offset {
            let batch = self.consumer.poll(POLL_MS).await?;
            let mut records: Vec<ConsumedRecord> = batch
                .into_iter()
                .filter(|r| {
                    r.partition == self.partition
                        && r.offset >= self.next_offset
                        && r.offset < self.end_offset
                })
                .collect();
            if records.is_empty() {
                waited_ms += POLL_MS;
                if waited_ms >= self.stall_timeout_ms {
                    return Err(ConsumeError::Unavailable(format!(
                        "reading `{}` partition {} made no progress for {} ms (at offset {} of {})",
                        self.topic, self.partition, self.stall_timeout_ms, self.next_offset, self.end_offset
                    )));
                }
                continue;
            }
            records.sort_by_key(|r| r.offset);
            records.dedup_by_key(|r| r.offset);
            self.next_offset = records.last().map_or(self.next_offset, |r| r.offset + 1);
            return Ok(Some(records));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors of the Java client's `Utils.murmur2`.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2::murmur2(key, KAFKA_MURMUR2_SEED) as i32,
                expected,
                "{key:?}"
            );
        }
    }

    #[test]
    fn partition_is_positive_modulo() {
        for n in 1..16 {
            let p = partition_for_key(b"foobar", n);
            assert!((0..n as i32).contains(&p));
        }
        assert_eq!(partition_for_key(b"foobar", 1), 0);
    }
}
