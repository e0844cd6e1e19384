//! A simulated broker with the Kafka semantics the system depends on.
//!
//! - Topics come from the configuration ([`TopicConfig`]), with a fixed number
//!   of partitions; records keep key, value, CreateTime timestamp and headers.
//! - Each partition is a log of CRC-framed batches in segment files on a
//!   [`Disk`](soilstream::disk::Disk) (the broker host's [`SimDisk`](crate::SimDisk)).
//!   A produce is acknowledged after the append is durable as the
//!   [`FlushPolicy`] says; after a crash the broker rebuilds its state from
//!   what the disk kept, dropping a torn tail.
//! - Idempotent producers: InitProducerId issues a new producer id per
//!   session (ids are persisted, never reissued); per (producer, partition)
//!   sequence numbers dedupe a resent batch (acknowledged again with its
//!   original offsets) and reject gaps. The producer state is rebuilt from the
//!   batches in the log, so dedup survives restarts.
//! - Fetch from an offset (bounded), watermarks, partition counts, and durable
//!   consumer-group offsets.
//! - Consumer groups (`groups`): a coordinator with the eager protocol
//!   (JoinGroup / Heartbeat / LeaveGroup, range assignment, generations that
//!   fence stale commits), membership in memory only.
//! - Injected faults ([`BrokerFaults`]): lost acks, request errors, slowness.
//!
//! [`BrokerCore`] is a plain state machine (request in, response out) over
//! the Disk seam, unit-tested without turmoil; [`server`] puts it on a turmoil
//! host behind a TCP listener ([`BrokerHost`]).

mod core;
mod faults;
mod groups;
mod observer;
mod partition;
mod producer_state;
pub mod server;
mod state_log;
mod storage;

pub use self::core::{BrokerCore, BrokerStats};
pub use faults::{BrokerFaultConfig, BrokerFaultError, BrokerFaultStats, BrokerFaults, RequestPlan};
pub use groups::{GroupStats, GroupView, MAX_GROUP_ID_BYTES, MAX_MEMBER_ID_BYTES};
pub use observer::BrokerObserver;
pub use server::BrokerHost;

use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
use std::path::PathBuf;

/// Longest topic name accepted (Kafka's limit).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;
/// Most partitions per topic accepted.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 1024;

/// When appended batches are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// `fdatasync` after every append, before the acknowledgement: nothing
    /// acknowledged is lost by a crash.
    EveryBatch,
    /// Acknowledge at once and sync dirty partitions every `n` ms (Kafka's
    /// `log.flush.interval.ms`): a crash can lose up to `n` ms of acknowledged
    /// records.
    IntervalMs(u64),
    /// Never sync the log (the OS decides: turmoil's `sync_probability`): a
    /// crash can lose any acknowledged record not yet written back.
    Never,
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Name: 1..=249 bytes of `[a-zA-Z0-9._-]`.
    pub name: String,
    /// Number of partitions: 1..=[`MAX_PARTITIONS_PER_TOPIC`].
    pub partitions: u32,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Bad topic name.
    #[error("invalid topic name `{0}`")]
    TopicName(String),
    /// Topic listed twice.
    #[error("topic `{0}` is configured twice")]
    DuplicateTopic(String),
    /// Bad partition count.
    #[error("topic `{name}` has {partitions} partitions, expected 1..={MAX_PARTITIONS_PER_TOPIC}")]
    Partitions {
        /// Topic.
        name: String,
        /// Refused count.
        partitions: u32,
    },
    /// A limit is zero or inconsistent with another.
    #[error("invalid limit: {0}")]
    Limit(String),
    /// The data directory is not absolute.
    #[error("data_dir must be absolute")]
    DataDir,
}

/// Broker configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Directory holding the partition logs and the broker state.
    pub data_dir: PathBuf,
    /// Topics.
    pub topics: Vec<TopicConfig>,
    /// When appends are made durable.
    pub flush: FlushPolicy,
    /// TCP port to listen on.
    pub port: u16,
    /// A segment file is rolled once it holds this many bytes.
    pub segment_max_bytes: u64,
    /// Bound on a frame (request or response).
    pub max_frame_bytes: u32,
    /// Largest record accepted (key + value + headers, approximately).
    pub max_record_bytes: usize,
    /// Most records in one produced batch.
    pub max_batch_records: usize,
    /// Most records returned by one fetch.
    pub fetch_max_records: u32,
    /// About the most bytes returned by one fetch.
    pub fetch_max_bytes: u32,
    /// Longest a fetch may wait for records.
    pub fetch_max_wait_ms: u64,
    /// A connection idle this long is closed (default 10 minutes, Kafka's
    /// `connections.max.idle.ms`).
    pub idle_timeout_ms: u64,
    /// Most concurrent connections; more are refused (closed at once).
    pub max_connections: usize,
    /// Producers remembered per partition for dedup (least recently
    /// appending forgotten first).
    pub max_producers_per_partition: usize,
    /// The broker state file is compacted once it exceeds this size.
    pub state_log_max_bytes: u64,
    /// Delay before the server retries opening storage that failed.
    pub storage_retry_ms: u64,
    /// Most consumer groups with members at once; a JoinGroup that would
    /// create one more is refused (`InvalidRequest`).
    pub max_groups: usize,
    /// Most members of one group; a new member beyond it is refused
    /// (`InvalidRequest`).
    pub max_members_per_group: usize,
    /// Shortest session timeout a member may ask for.
    pub group_min_session_timeout_ms: u64,
    /// Longest session timeout a member may ask for.
    pub group_max_session_timeout_ms: u64,
    /// Longest rebalance timeout a member may ask for.
    pub group_max_rebalance_timeout_ms: u64,
    /// The server expires sessions and ends overdue rebalances this often
    /// (they are also evaluated on every group request).
    pub group_tick_ms: u64,
}

impl BrokerConfig {
    /// A configuration with the given topics and default limits, the
    /// `EveryBatch` policy, port 9092 and data under `/broker`.
    pub fn new(topics: Vec<TopicConfig>) -> Self {
        Self {
            data_dir: PathBuf::from("/broker"),
            topics,
            flush: FlushPolicy::EveryBatch,
            port: 9092,
            segment_max_bytes: 1024 * 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_record_bytes: 1024 * 1024,
            max_batch_records: 10_000,
            fetch_max_records: 5_000,
            fetch_max_bytes: 4 * 1024 * 1024,
            fetch_max_wait_ms: 5_000,
            idle_timeout_ms: 600_000,
            max_connections: 256,
            max_producers_per_partition: 1024,
            state_log_max_bytes: 256 * 1024,
            storage_retry_ms: 100,
            max_groups: 1024,
            max_members_per_group: 1024,
            group_min_session_timeout_ms: 100,
            group_max_session_timeout_ms: 1_800_000,
            group_max_rebalance_timeout_ms: 600_000,
            group_tick_ms: 1_000,
        }
    }

    /// Checks names, counts and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.data_dir.is_absolute() {
            return Err(ConfigError::DataDir);
        }
        let mut seen = std::collections::BTreeSet::new();
        for topic in &self.topics {
            let valid_name = !topic.name.is_empty()
                && topic.name.len() <= MAX_TOPIC_NAME_BYTES
                && topic.name != "."
                && topic.name != ".."
                && topic
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
            if !valid_name {
                return Err(ConfigError::TopicName(topic.name.clone()));
            }
            if !seen.insert(topic.name.as_str()) {
                return Err(ConfigError::DuplicateTopic(topic.name.clone()));
            }
            if topic.partitions == 0 || topic.partitions > MAX_PARTITIONS_PER_TOPIC {
                return Err(ConfigError::Partitions {
                    name: topic.name.clone(),
                    partitions: topic.partitions,
                });
            }
        }
        let positive = [
            ("segment_max_bytes", self.segment_max_bytes),
            ("max_record_bytes", self.max_record_bytes as u64),
            ("max_batch_records", self.max_batch_records as u64),
            ("fetch_max_records", u64::from(self.fetch_max_records)),
            ("fetch_max_bytes", u64::from(self.fetch_max_bytes)),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_connections", self.max_connections as u64),
            (
                "max_producers_per_partition",
                self.max_producers_per_partition as u64,
            ),
            ("state_log_max_bytes", self.state_log_max_bytes),
            ("storage_retry_ms", self.storage_retry_ms),
            ("max_groups", self.max_groups as u64),
            ("max_members_per_group", self.max_members_per_group as u64),
            ("group_min_session_timeout_ms", self.group_min_session_timeout_ms),
            (
                "group_max_rebalance_timeout_ms",
                self.group_max_rebalance_timeout_ms,
            ),
            ("group_tick_ms", self.group_tick_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Limit(format!("{name} must be positive")));
            }
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            return Err(ConfigError::Limit(format!(
                "group_min_session_timeout_ms ({}) exceeds group_max_session_timeout_ms ({})",
                self.group_min_session_timeout_ms, self.group_max_session_timeout_ms
            )));
        }
        if let FlushPolicy::IntervalMs(0) = self.flush {
            return Err(ConfigError::Limit("flush interval must be positive".into()));
        }
        // A fetch response holds up to fetch_max_bytes plus one record and
        // per-record overhead; it must fit in a frame.
        let response_bound = u64::from(self.fetch_max_bytes)
            + self.max_record_bytes as u64
            + u64::from(self.fetch_max_records) * 32
            + 64 * 1024;
        if response_bound > u64::from(self.max_frame_bytes) {
            return Err(ConfigError::Limit(format!(
                "fetch_max_bytes + max_record_bytes + overhead ({response_bound}) exceed max_frame_bytes ({})",
                self.max_frame_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_configs_are_refused() {
        let good = BrokerConfig::new(vec![TopicConfig {
            name: "soil-moisture-raw".into(),
            partitions: 8,
        }]);
        assert_eq!(good.validate(), Ok(()));

        let mut bad_name = good.clone();
        bad_name.topics[0].name = "a/b".into();
        assert!(matches!(bad_name.validate(), Err(ConfigError::TopicName(_))));

        let mut twice = good.clone();
        twice.topics.push(twice.topics[0].clone());
        assert!(matches!(twice.validate(), Err(ConfigError::DuplicateTopic(_))));

        let mut no_partitions = good.clone();
        no_partitions.topics[0].partitions = 0;
        assert!(matches!(
            no_partitions.validate(),
            Err(ConfigError::Partitions { .. })
        ));

        let mut huge_fetch = good.clone();
        huge_fetch.fetch_max_bytes = huge_fetch.max_frame_bytes;
        assert!(matches!(huge_fetch.validate(), Err(ConfigError::Limit(_))));

        let mut zero_interval = good.clone();
        zero_interval.flush = FlushPolicy::IntervalMs(0);
        assert!(matches!(zero_interval.validate(), Err(ConfigError::Limit(_))));

        let mut session_range = good.clone();
        session_range.group_max_session_timeout_ms = session_range.group_min_session_timeout_ms - 1;
        assert!(matches!(session_range.validate(), Err(ConfigError::Limit(_))));

        let mut relative = good;
        relative.data_dir = PathBuf::from("broker");
        assert_eq!(relative.validate(), Err(ConfigError::DataDir));
    }
}
