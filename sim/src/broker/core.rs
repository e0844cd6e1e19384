//! [`BrokerCore`]: the broker as a plain state machine over the Disk seam.
//!
//! Requests in, responses out, no sockets and no clock of its own (callers
//! pass the time), so it is unit-testable without turmoil. Storage failures
//! never panic and never acknowledge: the failing partition (or the state
//! file) is taken offline, requests touching it get the retriable
//! `StorageError`, and it is reopened (recovered from disk) on a later request
//! once `storage_retry_ms` has passed.
//!
//! Consumer groups are coordinated by the `groups` module: membership is in
//! memory, member ids come from the durable id counter of the broker state,
//! group commits are stored like plain ones.

use super::groups::{Coordinator, GroupLimits, GroupStats, GroupView, JoinRequest};
use super::partition::{AppendError, PartitionLimits, PartitionLog};
use super::state_log::StateLog;
use super::{BrokerConfig, FlushPolicy};
use crate::digest::Digest;
use crate::protocol::{
    ErrorCode, FetchRequest, FetchResult, FetchedRecords, JoinOutcome, ProduceRequest, ProduceResult,
    Request, Response,
};
use soilstream::disk::Disk;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;

/// Counters of what the broker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Batches appended.
    pub batches_appended: u64,
    /// Records appended.
    pub records_appended: u64,
    /// Resent batches acknowledged again without appending.
    pub batches_deduplicated: u64,
    /// Batches refused (sequence gaps, fencing, bad requests).
    pub batches_rejected: u64,
    /// Storage operations that failed.
    pub storage_errors: u64,
    /// Partitions (and the state file) opened, including reopens.
    pub opens: u64,
    /// Records found on disk by those opens.
    pub records_recovered: u64,
    /// Bytes of torn or damaged tails ignored by those opens.
    pub tail_bytes_dropped: u64,
}

enum Slot<T> {
    Online(T),
    Offline { retry_at_ms: u64 },
}

/// The broker's state machine.
pub struct BrokerCore {
    config: BrokerConfig,
    disk: Rc<dyn Disk>,
    topics: BTreeMap<String, u32>,
    partitions: BTreeMap<(String, i32), Slot<PartitionLog>>,
    state: Slot<StateLog>,
    limits: PartitionLimits,
    stats: BrokerStats,
    groups: Coordinator,
}

impl BrokerCore {
    /// Opens the broker: recovers every partition and the broker state from
    /// `disk`. Parts whose storage fails stay offline and are retried later.
    ///
    /// # Panics
    /// If `config` is invalid ([`BrokerConfig::validate`]).
    pub fn open(config: BrokerConfig, disk: Rc<dyn Disk>, now_ms: u64) -> Self {
        config.validate().expect("broker configuration must be valid");
        let limits = PartitionLimits {
            segment_max_bytes: config.segment_max_bytes,
            max_entry_bytes: config.max_frame_bytes as usize,
            max_producers: config.max_producers_per_partition,
            flush: config.flush,
        };
        let topics: BTreeMap<String, u32> = config
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions))
            .collect();
        let mut partitions = BTreeMap::new();
        for (name, count) in &topics {
            for partition in 0..*count as i32 {
                partitions.insert((name.clone(), partition), Slot::Offline { retry_at_ms: 0 });
            }
        }
        let groups = Coordinator::new(GroupLimits {
            max_groups: config.max_groups,
            max_members_per_group: config.max_members_per_group,
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
            max_rebalance_timeout_ms: config.group_max_rebalance_timeout_ms,
        });
        let mut core = Self {
            config,
            disk,
            topics,
            partitions,
            state: Slot::Offline { retry_at_ms: 0 },
            limits,
            stats: BrokerStats::default(),
            groups,
        };
        if let Err(error) = core.disk.create_dir_all(&core.config.data_dir) {
            tracing::warn!(%error, "cannot create the broker data directory");
        }
        core.ensure_state(now_ms);
        let keys: Vec<(String, i32)> = core.partitions.keys().cloned().collect();
        for (topic, partition) in keys {
            core.ensure_partition(&topic, partition, now_ms);
        }
        core
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> BrokerStats {
        self.stats
    }

    /// Counters of the consumer-group coordinator.
    pub fn group_stats(&self) -> GroupStats {
        self.groups.stats()
    }

    /// A picture of a consumer group, if it has members.
    pub fn group(&self, group: &str) -> Option<GroupView> {
        self.groups.view(group)
    }

    /// Pictures of every consumer group with members, by id.
    pub fn groups(&self) -> Vec<GroupView> {
        self.groups.views()
    }

    /// Partitions currently offline (storage failed, not yet reopened).
    pub fn offline_partitions(&self) -> Vec<(String, i32)> {
        self.partitions
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Offline { .. }))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Whether the state file (producer ids, group offsets) is offline.
    pub fn state_offline(&self) -> bool {
        matches!(self.state, Slot::Offline { .. })
    }

    /// High watermark of a partition, if it exists and is online.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        match self.partitions.get(&(topic.to_string(), partition))? {
            Slot::Online(log) => Some(log.high_watermark()),
            Slot::Offline { .. } => None,
        }
    }

    /// High watermarks of every online partition.
    pub fn high_watermarks(&self) -> BTreeMap<(String, i32), i64> {
        self.partitions
            .iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Online(log) => Some((key.clone(), log.high_watermark())),
                Slot::Offline { .. } => None,
            })
            .collect()
    }

    /// Producers remembered for dedup on a partition, if online.
    pub fn producer_count(&self, topic: &str, partition: i32) -> Option<usize> {
        match self.partitions.get(&(topic.to_string(), partition))? {
            Slot::Online(log) => Some(log.producer_count()),
            Slot::Offline { .. } => None,
        }
    }

    /// A digest of everything the broker holds: every partition's records and
    /// producer state, producer ids issued, group offsets and (when any group
    /// has members) the groups' generations, members and assignments.
    /// Offline parts contribute a marker.
    pub fn state_digest(&self) -> u64 {
        let mut digest = Digest::new();
        for ((topic, partition), slot) in &self.partitions {
            digest.field(topic.as_bytes()).i64(i64::from(*partition));
            match slot {
                Slot::Online(log) => log.digest_into(&mut digest),
                Slot::Offline { .. } => {
                    digest.u64(u64::MAX);
                }
            }
        }
        match &self.state {
            Slot::Online(state) => {
                let state = state.state();
                digest.u64(state.next_producer_id);
                for ((group, topic, partition), offset) in &state.group_offsets {
                    digest
                        .field(group.as_bytes())
                        .field(topic.as_bytes())
                        .i64(i64::from(*partition))
                        .i64(*offset);
                }
            }
            Slot::Offline { .. } => {
                digest.u64(u64::MAX);
            }
        }
        // Without groups the digest is what it was before groups existed.
        if !self.groups.is_empty() {
            self.groups.digest_into(&mut digest);
        }
        digest.finish()
    }

    /// Periodic work: expires group sessions and ends overdue rebalances
    /// ([`BrokerCore::tick_groups`]), and syncs dirty partitions under
    /// [`FlushPolicy::IntervalMs`].
    pub fn on_tick(&mut self, now_ms: u64) {
        self.tick_groups(now_ms);
        self.flush_due(now_ms);
    }

    /// Expires consumer-group sessions and ends overdue rebalances.
    pub fn tick_groups(&mut self, now_ms: u64) {
        self.groups.tick(now_ms);
    }

    fn flush_due(&mut self, now_ms: u64) {
        if !matches!(self.config.flush, FlushPolicy::IntervalMs(_)) {
            return;
        }
        let retry_at_ms = now_ms + self.config.storage_retry_ms;
        for ((topic, partition), slot) in self.partitions.iter_mut() {
            if let Slot::Online(log) = slot
                && let Err(error) = log.flush_if_due(now_ms)
            {
                tracing::warn!(topic, partition, %error, "periodic flush failed; partition offline");
                self.stats.storage_errors += 1;
                *slot = Slot::Offline { retry_at_ms };
            }
        }
    }

    /// Handles one request.
    pub fn handle(&mut self, request: Request, now_ms: u64) -> Response {
        match request {
            Request::Metadata { topics } => Response::Metadata {
                topics: topics
                    .into_iter()
                    .map(|name| {
                        let count = self.topics.get(&name).copied();
                        (name, count)
                    })
                    .collect(),
            },
            Request::InitProducerId => self.init_producer_id(now_ms),
            Request::Produce(produce) => self.produce(produce, now_ms),
            Request::Fetch(fetch) => self.fetch(fetch, now_ms),
            Request::ListOffsets { topic, partition } => Response::ListOffsets {
                result: self
                    .online_partition(&topic, partition, now_ms)
                    .map(|log| (0, log.high_watermark())),
            },
            Request::OffsetCommit {
                group,
                topic,
                offsets,
            } => Response::OffsetCommit {
                result: self.commit_offsets(&group, &topic, &offsets, now_ms),
            },
            Request::OffsetFetch {
                group,
                topic,
                partitions,
            } => Response::OffsetFetch {
                result: self.fetch_offsets(&group, &topic, &partitions, now_ms),
            },
            Request::JoinGroup {
                group,
                topic,
                member_id,
                session_timeout_ms,
                rebalance_timeout_ms,
            } => Response::JoinGroup {
                result: self.join_group(
                    &group,
                    &topic,
                    member_id.as_deref(),
                    session_timeout_ms,
                    rebalance_timeout_ms,
                    now_ms,
                ),
            },
            Request::Heartbeat {
                group,
                member_id,
                generation,
            } => Response::Heartbeat {
                result: self.groups.heartbeat(&group, &member_id, generation, now_ms),
            },
            Request::LeaveGroup { group, member_id } => Response::LeaveGroup {
                result: self.groups.leave(&group, &member_id, now_ms),
            },
            Request::GroupOffsetCommit {
                group,
                member_id,
                generation,
                topic,
                offsets,
            } => Response::OffsetCommit {
                result: self
                    .groups
                    .check_commit(&group, &member_id, generation, &topic, now_ms)
                    .and_then(|()| self.commit_offsets(&group, &topic, &offsets, now_ms)),
            },
        }
    }

    fn join_group(
        &mut self,
        group: &str,
        topic: &str,
        member_id: Option<&str>,
        session_timeout_ms: u64,
        rebalance_timeout_ms: u64,
        now_ms: u64,
    ) -> Result<JoinOutcome, ErrorCode> {
        let partitions = *self.topics.get(topic).ok_or(ErrorCode::UnknownTopicOrPartition)?;
        if member_id.is_none() {
            self.ensure_state(now_ms);
        }
        let request = JoinRequest {
            group,
            topic,
            partitions,
            member_id,
            session_timeout_ms,
            rebalance_timeout_ms,
        };
        let retry_at_ms = now_ms + self.config.storage_retry_ms;
        let Self {
            groups,
            state,
            disk,
            stats,
            ..
        } = self;
        groups.join(request, now_ms, || {
            issue_durable_id(state, disk.as_ref(), stats, retry_at_ms)
        })
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config.data_dir.join(format!("{topic}-{partition}"))
    }

    fn ensure_partition(&mut self, topic: &str, partition: i32, now_ms: u64) {
        let key = (topic.to_string(), partition);
        match self.partitions.get(&key) {
            Some(Slot::Offline { retry_at_ms }) if *retry_at_ms <= now_ms => {}
            _ => return,
        }
        let dir = self.partition_dir(topic, partition);
        let slot = match PartitionLog::open(self.disk.as_ref(), &dir, self.limits, now_ms) {
            Ok((log, report)) => {
                tracing::info!(topic, partition, ?report, "partition opened");
                self.stats.opens += 1;
                self.stats.records_recovered += report.records as u64;
                self.stats.tail_bytes_dropped += report.tail_bytes_dropped;
                Slot::Online(log)
            }
            Err(error) => {
                tracing::warn!(topic, partition, %error, "cannot open partition");
                self.stats.storage_errors += 1;
                Slot::Offline {
                    retry_at_ms: now_ms + self.config.storage_retry_ms,
                }
            }
        };
        self.partitions.insert(key, slot);
    }

    fn ensure_state(&mut self, now_ms: u64) {
        match self.state {
            Slot::Offline { retry_at_ms } if retry_at_ms <= now_ms => {}
            _ => return,
        }
        self.state = match StateLog::open(
            self.disk.as_ref(),
            &self.config.data_dir,
            self.config.state_log_max_bytes,
        ) {
            Ok(state) => {
                self.stats.opens += 1;
                Slot::Online(state)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open the broker state");
                self.stats.storage_errors += 1;
                Slot::Offline {
                    retry_at_ms: now_ms + self.config.storage_retry_ms,
                }
            }
        };
    }

    fn online_partition(
        &mut self,
        topic: &str,
        partition: i32,
        now_ms: u64,
    ) -> Result<&mut PartitionLog, ErrorCode> {
        if !self.partitions.contains_key(&(topic.to_string(), partition)) {
            return Err(ErrorCode::UnknownTopicOrPartition);
        }
        self.ensure_partition(topic, partition, now_ms);
        match self.partitions.get_mut(&(topic.to_string(), partition)) {
            Some(Slot::Online(log)) => Ok(log),
            _ => Err(ErrorCode::StorageError),
        }
    }

    fn take_offline(&mut self, topic: &str, partition: i32, now_ms: u64) {
        self.stats.storage_errors += 1;
        self.partitions.insert(
            (topic.to_string(), partition),
            Slot::Offline {
                retry_at_ms: now_ms + self.config.storage_retry_ms,
            },
        );
    }

    fn init_producer_id(&mut self, now_ms: u64) -> Response {
        self.ensure_state(now_ms);
        let retry_at_ms = now_ms + self.config.storage_retry_ms;
        match issue_durable_id(&mut self.state, self.disk.as_ref(), &mut self.stats, retry_at_ms) {
            Ok(producer_id) => {
                tracing::debug!(producer_id, "producer id issued");
                Response::InitProducerId {
                    producer_id,
                    producer_epoch: 0,
                }
            }
            Err(code) => Response::Error(code),
        }
    }

    fn produce(&mut self, request: ProduceRequest, now_ms: u64) -> Response {
        self.ensure_state(now_ms);
        let issued_below = match &self.state {
            Slot::Online(state) => state.state().next_producer_id,
            Slot::Offline { .. } => return Response::Error(ErrorCode::StorageError),
        };
        let producer_known = request.producer_id < issued_below;
        let mut seen = BTreeSet::new();
        let mut results = Vec::with_capacity(request.batches.len());
        for batch in request.batches {
            let topic = batch.topic;
            let partition = batch.partition;
            let result = if !seen.insert((topic.clone(), partition))
                || batch.records.is_empty()
                || batch.records.len() > self.config.max_batch_records
                || batch
                    .records
                    .iter()
                    .any(|r| r.size_bytes() > self.config.max_record_bytes)
            {
                Err(ErrorCode::InvalidRequest)
            } else if !producer_known {
                Err(ErrorCode::UnknownProducerId)
            } else {
                self.append(
                    &topic,
                    partition,
                    request.producer_id,
                    request.producer_epoch,
                    batch.base_sequence,
                    batch.records,
                    now_ms,
                )
            };
            if result.is_err() {
                self.stats.batches_rejected += 1;
            }
            results.push(ProduceResult {
                topic,
                partition,
                result,
            });
        }
        Response::Produce { results }
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        topic: &str,
        partition: i32,
        producer_id: u64,
        producer_epoch: u16,
        base_sequence: u64,
        records: Vec<crate::protocol::WireRecord>,
        now_ms: u64,
    ) -> Result<i64, ErrorCode> {
        let count = records.len() as u64;
        let disk = self.disk.clone();
        let log = self.online_partition(topic, partition, now_ms)?;
        match log.append(disk.as_ref(), producer_id, producer_epoch, base_sequence, records) {
            Ok(appended) => {
                if appended.duplicate {
                    tracing::debug!(
                        topic,
                        partition,
                        producer_id,
                        base_sequence,
                        "duplicate batch acknowledged again"
                    );
                    self.stats.batches_deduplicated += 1;
                } else {
                    self.stats.batches_appended += 1;
                    self.stats.records_appended += count;
                }
                Ok(appended.base_offset)
            }
            Err(AppendError::Rejected(code)) => {
                tracing::debug!(
                    topic,
                    partition,
                    producer_id,
                    base_sequence,
                    ?code,
                    "batch rejected"
                );
                Err(code)
            }
            Err(AppendError::Storage(error)) => {
                tracing::warn!(topic, partition, %error, "append failed; partition offline");
                self.take_offline(topic, partition, now_ms);
                Err(ErrorCode::StorageError)
            }
        }
    }

    fn fetch(&mut self, request: FetchRequest, now_ms: u64) -> Response {
        let mut records_left = request.max_records.min(self.config.fetch_max_records) as usize;
        let mut bytes_left = request.max_bytes.min(self.config.fetch_max_bytes) as usize;
        let mut results = Vec::with_capacity(request.partitions.len());
        let mut seen = BTreeSet::new();
        for (topic, partition, offset) in request.partitions {
            let result = if !seen.insert((topic.clone(), partition)) {
                Err(ErrorCode::InvalidRequest)
            } else {
                self.online_partition(&topic, partition, now_ms).and_then(|log| {
                    let high_watermark = log.high_watermark();
                    let records = if records_left == 0 {
                        // Budget spent: report the position only.
                        if offset < 0 || offset > high_watermark {
                            return Err(ErrorCode::OffsetOutOfRange);
                        }
                        Vec::new()
                    } else {
                        log.fetch(offset, records_left, bytes_left)?
                    };
                    Ok(FetchedRecords {
                        base_offset: offset,
                        records,
                        high_watermark,
                    })
                })
            };
            if let Ok(fetched) = &result {
                records_left -= fetched.records.len();
                let bytes: usize = fetched.records.iter().map(|r| r.size_bytes()).sum();
                bytes_left = bytes_left.saturating_sub(bytes);
                if bytes_left == 0 {
                    records_left = 0;
                }
            }
            results.push(FetchResult {
                topic,
                partition,
                result,
            });
        }
        Response::Fetch { results }
    }

    fn check_partitions(&self, topic: &str, partitions: impl Iterator<Item = i32>) -> Result<(), ErrorCode> {
        let count = *self.topics.get(topic).ok_or(ErrorCode::UnknownTopicOrPartition)?;
        for partition in partitions {
            if partition < 0 || partition as u32 >= count {
                return Err(ErrorCode::UnknownTopicOrPartition);
            }
        }
        Ok(())
    }

    fn commit_offsets(
        &mut self,
        group: &str,
        topic: &str,
        offsets: &[(i32, i64)],
        now_ms: u64,
    ) -> Result<(), ErrorCode> {
        self.check_partitions(topic, offsets.iter().map(|(p, _)| *p))?;
        if group.is_empty() || offsets.iter().any(|(_, offset)| *offset < 0) {
            return Err(ErrorCode::InvalidRequest);
        }
        self.ensure_state(now_ms);
        let Slot::Online(state) = &mut self.state else {
            return Err(ErrorCode::StorageError);
        };
        match state.commit_offsets(self.disk.as_ref(), group, topic, offsets) {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, "cannot persist group offsets; broker state offline");
                self.stats.storage_errors += 1;
                self.state = Slot::Offline {
                    retry_at_ms: now_ms + self.config.storage_retry_ms,
                };
                Err(ErrorCode::StorageError)
            }
        }
    }

    fn fetch_offsets(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[i32],
        now_ms: u64,
    ) -> Result<Vec<(i32, Option<i64>)>, ErrorCode> {
        self.check_partitions(topic, partitions.iter().copied())?;
        self.ensure_state(now_ms);
        let Slot::Online(state) = &self.state else {
            return Err(ErrorCode::StorageError);
        };
        let offsets = &state.state().group_offsets;
        Ok(partitions
            .iter()
            .map(|p| {
                let key = (group.to_string(), topic.to_string(), *p);
                (*p, offsets.get(&key).copied())
            })
            .collect())
    }
}

/// Issues a fresh id from the state's durable counter (producer ids and
/// member ids share it: never reissued, even across restarts); a failed
/// write takes the state offline until `retry_at_ms`.
fn issue_durable_id(
    state: &mut Slot<StateLog>,
    disk: &dyn Disk,
    stats: &mut BrokerStats,
    retry_at_ms: u64,
) -> Result<u64, ErrorCode> {
    let Slot::Online(log) = state else {
        return Err(ErrorCode::StorageError);
    };
    match log.issue_producer_id(disk) {
        Ok(id) => Ok(id),
        Err(error) => {
            tracing::warn!(%error, "cannot persist an issued id; broker state offline");
            stats.storage_errors += 1;
            *state = Slot::Offline { retry_at_ms };
            Err(ErrorCode::StorageError)
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
