//! What the real world asks the broker directly, without joining any group:
//! high watermarks, the offsets a group committed, and whole topics read to
//! their end for the checkers.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer};
use soilstream::transport::{ConsumedRecord, read_topic_to_end};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long reading a topic to its end may go without progress, ms.
pub const READ_STALL_TIMEOUT_MS: u64 = 20_000;

/// Runs `future` on a fresh current-thread runtime (the real world's
/// fixtures are synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a tokio runtime: {e}"))?;
    Ok(runtime.block_on(future))
}

/// A plain librdkafka client for one broker: watermarks and committed
/// offsets on request, each bounded by a timeout.
pub struct BrokerQueries {
    consumer: BaseConsumer,
    bootstrap_servers: String,
}

impl BrokerQueries {
    /// A client of `config`'s brokers that asks on behalf of `group` (it
    /// never joins it: committed offsets are fetched, nothing is committed).
    pub fn new(config: &KafkaClientConfig, group: &str) -> Result<Self, String> {
        let mut client = rdkafka::ClientConfig::new();
        client
            .set("bootstrap.servers", config.bootstrap_servers.as_str())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("socket.timeout.ms", "3000")
            .set("reconnect.backoff.max.ms", "500");
        for (key, value) in &config.properties {
            client.set(key.as_str(), value.as_str());
        }
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| format!("creating a client of {}: {e}", config.bootstrap_servers))?;
        Ok(Self {
            consumer,
            bootstrap_servers: config.bootstrap_servers.clone(),
        })
    }

    /// The high watermark of partitions `0..partitions` of `topic`, or why
    /// not (for instance the broker is down), each asked within `timeout_ms`.
    pub fn high_watermarks(&self, topic: &str, partitions: u32, timeout_ms: u64) -> Result<Vec<i64>, String> {
        (0..partitions as i32)
            .map(|partition| {
                self.consumer
                    .fetch_watermarks(topic, partition, Duration::from_millis(timeout_ms))
                    .map(|(_low, high)| high)
                    .map_err(|e| format!("{topic}/{partition} on {}: {e}", self.bootstrap_servers))
            })
            .collect()
    }

    /// The offsets this client's group committed on partitions
    /// `0..partitions` of `topic` (`None`: nothing committed).
    pub fn committed(
        &self,
        topic: &str,
        partitions: u32,
        timeout_ms: u64,
    ) -> Result<BTreeMap<i32, Option<i64>>, String> {
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            list.add_partition(topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(list, Timeout::After(Duration::from_millis(timeout_ms)))
            .map_err(|e| format!("fetching committed offsets on {topic}: {e}"))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), offset)
            })
            .collect())
    }
}

/// Every record of `topic`, read to the high watermarks seen at the start,
/// in (partition, offset) order.
pub fn read_topic(config: &KafkaClientConfig, topic: &str) -> Result<Vec<ConsumedRecord>, String> {
    block_on(async {
        let mut consumer = KafkaConsumer::new(config, "soilstream-checker")
            .map_err(|e| format!("creating the checker's consumer: {e}"))?;
        read_topic_to_end(&mut consumer, topic, READ_STALL_TIMEOUT_MS)
            .await
            .map_err(|e| format!("reading `{topic}` to its end: {e}"))
    })?
}
