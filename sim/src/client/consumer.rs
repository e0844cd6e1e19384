//! [`SimConsumer`]: reads the simulated broker by explicit assignment.
//!
//! Each operation is one attempt: it (re)connects if needed, sends one
//! request with a timeout, and maps a transport failure to
//! `ConsumeError::Unavailable` (the connection is dropped; the next call
//! opens a new one). Start positions other than explicit offsets are
//! resolved at the next `poll`.

use super::connection::Connection;
use super::{ClientConfigError, require_positive};
use crate::broker::MAX_PARTITIONS_PER_TOPIC;
use crate::protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorCode, FetchRequest, Request, Response};
use futures::future::LocalBoxFuture;
use soilstream::transport::{ConsumeError, ConsumedRecord, LogConsumer, StartOffset, TimestampKind};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

/// What to do when the position is outside the log (the broker lost records
/// the consumer had already read, or an explicit offset is too large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// Restart from the first offset.
    Earliest,
    /// Skip to the end.
    Latest,
    /// Report `ConsumeError::Other` from `poll`.
    Fail,
}

/// Consumer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Broker host name (turmoil DNS).
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// Consumer group, for `StartOffset::Committed` and `commit`.
    pub group_id: Option<String>,
    /// Requests without response after this long (plus the poll's wait)
    /// fail with `Unavailable`.
    pub request_timeout_ms: u64,
    /// Connection attempts give up after this long.
    pub connect_timeout_ms: u64,
    /// Most records returned by one poll.
    pub max_poll_records: u32,
    /// About the most bytes fetched by one poll.
    pub fetch_max_bytes: u32,
    /// Behaviour when the position is out of range.
    pub offset_reset: OffsetReset,
    /// Bound on a frame.
    pub max_frame_bytes: u32,
}

impl ConsumerConfig {
    /// Defaults for a broker at `broker_host:broker_port`, without a group.
    pub fn new(broker_host: impl Into<String>, broker_port: u16) -> Self {
        Self {
            broker_host: broker_host.into(),
            broker_port,
            group_id: None,
            request_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            max_poll_records: 1_000,
            fetch_max_bytes: 1024 * 1024,
            offset_reset: OffsetReset::Earliest,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Checks limits and timeouts.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        require_positive(&[
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("max_poll_records", u64::from(self.max_poll_records)),
            ("fetch_max_bytes", u64::from(self.fetch_max_bytes)),
        ])?;
        if self.group_id.as_deref() == Some("") {
            return Err(ClientConfigError::Invalid("group_id must not be empty".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Assigned {
    partition: i32,
    start: StartOffset,
    /// Next offset to fetch, once resolved.
    position: Option<i64>,
}

/// The `LogConsumer` seam over turmoil TCP to the simulated broker.
pub struct SimConsumer {
    config: ConsumerConfig,
    connection: RefCell<Option<Connection>>,
    topic: Option<String>,
    assigned: Vec<Assigned>,
    rotation: usize,
}

fn unavailable(reason: impl std::fmt::Display) -> ConsumeError {
    ConsumeError::Unavailable(reason.to_string())
}

fn from_code(topic: &str, code: ErrorCode) -> ConsumeError {
    match code {
        ErrorCode::UnknownTopicOrPartition => ConsumeError::UnknownTopic(topic.to_string()),
        code if code.is_retriable() => ConsumeError::Unavailable(code.to_string()),
        code => ConsumeError::Other(code.to_string()),
    }
}

impl SimConsumer {
    /// A consumer; it connects on first use. Use it inside a turmoil host
    /// or client.
    pub fn new(config: ConsumerConfig) -> Result<Self, ClientConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            connection: RefCell::new(None),
            topic: None,
            assigned: Vec::new(),
            rotation: 0,
        })
    }

    /// The position (next offset to read) of an assigned partition, once
    /// resolved.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| a.partition == partition)
            .and_then(|a| a.position)
    }

    async fn call(&self, request: &Request, timeout_ms: u64) -> Result<Response, ConsumeError> {
        let existing = self.connection.borrow_mut().take();
        let mut connection = match existing {
            Some(connection) => connection,
            None => Connection::connect(
                &self.config.broker_host,
                self.config.broker_port,
                self.config.connect_timeout_ms,
                self.config.max_frame_bytes,
            )
            .await
            .map_err(unavailable)?,
        };
        let response = connection.call(request, timeout_ms).await.map_err(unavailable)?;
        *self.connection.borrow_mut() = Some(connection);
        Ok(response)
    }

    async fn list_offsets(&self, topic: &str, partition: i32) -> Result<(i64, i64), ConsumeError> {
        let request = Request::ListOffsets {
            topic: topic.to_string(),
            partition,
        };
        match self.call(&request, self.config.request_timeout_ms).await? {
            Response::ListOffsets { result } => result.map_err(|code| from_code(topic, code)),
            Response::Error(code) => Err(from_code(topic, code)),
            other => Err(ConsumeError::Other(format!("unexpected response {other:?}"))),
        }
    }

    async fn resolve_positions(&mut self, topic: &str) -> Result<(), ConsumeError> {
        let committed_wanted: Vec<i32> = self
            .assigned
            .iter()
            .filter(|a| a.position.is_none() && a.start == StartOffset::Committed)
            .map(|a| a.partition)
            .collect();
        if !committed_wanted.is_empty() {
            let group = self
                .config
                .group_id
                .clone()
                .ok_or_else(|| ConsumeError::Other("StartOffset::Committed needs a group_id".into()))?;
            let request = Request::OffsetFetch {
                group,
                topic: topic.to_string(),
                partitions: committed_wanted,
            };
            let committed = match self.call(&request, self.config.request_timeout_ms).await? {
                Response::OffsetFetch { result } => result.map_err(|code| from_code(topic, code))?,
                Response::Error(code) => return Err(from_code(topic, code)),
                other => return Err(ConsumeError::Other(format!("unexpected response {other:?}"))),
            };
            for (partition, offset) in committed {
                if let Some(assigned) = self.assigned.iter_mut().find(|a| a.partition == partition) {
                    match offset {
                        Some(offset) => assigned.position = Some(offset),
                        None => assigned.start = StartOffset::Beginning,
                    }
                }
            }
        }
        for index in 0..self.assigned.len() {
            let assigned = self.assigned[index].clone();
            if assigned.position.is_some() {
                continue;
            }
            let position = match assigned.start {
                StartOffset::Offset(offset) => offset,
                StartOffset::Beginning => self.list_offsets(topic, assigned.partition).await?.0,
                StartOffset::End => self.list_offsets(topic, assigned.partition).await?.1,
                StartOffset::Committed => continue, // no answer for it: asked again next poll
            };
            self.assigned[index].position = Some(position);
        }
        Ok(())
    }

    async fn poll_inner(&mut self, max_wait_ms: u64) -> Result<Vec<ConsumedRecord>, ConsumeError> {
        let Some(topic) = self.topic.clone() else {
            tokio::time::sleep(Duration::from_millis(max_wait_ms)).await;
            return Ok(Vec::new());
        };
        self.resolve_positions(&topic).await?;
        let mut partitions: Vec<(String, i32, i64)> = self
            .assigned
            .iter()
            .filter_map(|a| a.position.map(|p| (topic.clone(), a.partition, p)))
            .collect();
        if partitions.is_empty() {
            tokio::time::sleep(Duration::from_millis(max_wait_ms)).await;
            return Ok(Vec::new());
        }
        // Rotate so that a busy partition does not starve the others.
        let start = self.rotation % partitions.len();
        self.rotation = self.rotation.wrapping_add(1);
        partitions.rotate_left(start);
        let request = Request::Fetch(FetchRequest {
            partitions,
            max_wait_ms,
            max_records: self.config.max_poll_records,
            max_bytes: self.config.fetch_max_bytes,
        });
        let timeout_ms = max_wait_ms.saturating_add(self.config.request_timeout_ms);
        let results = match self.call(&request, timeout_ms).await? {
            Response::Fetch { results } => results,
            Response::Error(code) => return Err(from_code(&topic, code)),
            other => return Err(ConsumeError::Other(format!("unexpected response {other:?}"))),
        };
        let mut out = Vec::new();
        for result in results {
            let Some(assigned) = self.assigned.iter_mut().find(|a| a.partition == result.partition) else {
                continue;
            };
            match result.result {
                Ok(fetched) => {
                    if Some(fetched.base_offset) != assigned.position {
                        // The assignment moved on meanwhile: drop the stale records.
                        continue;
                    }
                    let count = fetched.records.len() as i64;
                    for (index, record) in fetched.records.into_iter().enumerate() {
                        out.push(ConsumedRecord {
                            topic: topic.clone(),
                            partition: result.partition,
                            offset: fetched.base_offset + index as i64,
                            key: record.key,
                            value: record.value,
                            timestamp_ms: record.timestamp_ms,
                            timestamp_kind: TimestampKind::CreateTime,
                            headers: record.headers,
                        });
                    }
                    assigned.position = Some(fetched.base_offset + count);
                }
                Err(ErrorCode::OffsetOutOfRange) => {
                    tracing::warn!(partition = result.partition, position = ?assigned.position, policy = ?self.config.offset_reset, "position out of range");
                    match self.config.offset_reset {
                        OffsetReset::Earliest => assigned.start = StartOffset::Beginning,
                        OffsetReset::Latest => assigned.start = StartOffset::End,
                        OffsetReset::Fail => {
                            return Err(ConsumeError::Other(format!(
                                "offset {:?} out of range on partition {}",
                                assigned.position, result.partition
                            )));
                        }
                    }
                    assigned.position = None;
                }
                Err(code) if code.is_retriable() => {}
                Err(code) => return Err(from_code(&topic, code)),
            }
        }
        Ok(out)
    }

    async fn commit_inner(&mut self, topic: &str, next_offsets: &[(i32, i64)]) -> Result<(), ConsumeError> {
        let group = self
            .config
            .group_id
            .clone()
            .ok_or_else(|| ConsumeError::Other("commit needs a group_id".into()))?;
        let request = Request::OffsetCommit {
            group,
            topic: topic.to_string(),
            offsets: next_offsets.to_vec(),
        };
        match self.call(&request, self.config.request_timeout_ms).await? {
            Response::OffsetCommit { result } => result.map_err(|code| from_code(topic, code)),
            Response::Error(code) => Err(from_code(topic, code)),
            other => Err(ConsumeError::Other(format!("unexpected response {other:?}"))),
        }
    }
}

impl LogConsumer for SimConsumer {
    fn partition_count(&self, topic: &str) -> LocalBoxFuture<'_, Result<u32, ConsumeError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let request = Request::Metadata {
                topics: vec![topic.clone()],
            };
            match self.call(&request, self.config.request_timeout_ms).await? {
                Response::Metadata { topics } => match topics.first() {
                    Some((name, Some(count))) if *name == topic => Ok(*count),
                    _ => Err(ConsumeError::UnknownTopic(topic)),
                },
                Response::Error(code) => Err(from_code(&topic, code)),
                other => Err(ConsumeError::Other(format!("unexpected response {other:?}"))),
            }
        })
    }

    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> LocalBoxFuture<'_, Result<(i64, i64), ConsumeError>> {
        let topic = topic.to_string();
        Box::pin(async move { self.list_offsets(&topic, partition).await })
    }

    fn assign(&mut self, topic: &str, starts: &[(i32, StartOffset)]) -> Result<(), ConsumeError> {
        if starts.len() > MAX_PARTITIONS_PER_TOPIC as usize {
            return Err(ConsumeError::Other(format!(
                "at most {MAX_PARTITIONS_PER_TOPIC} partitions can be assigned"
            )));
        }
        let mut seen = BTreeSet::new();
        for (partition, start) in starts {
            if !seen.insert(*partition) {
                return Err(ConsumeError::Other(format!(
                    "partition {partition} assigned twice"
                )));
            }
            if *start == StartOffset::Committed && self.config.group_id.is_none() {
                return Err(ConsumeError::Other(
                    "StartOffset::Committed needs a group_id".into(),
                ));
            }
        }
        self.topic = (!starts.is_empty()).then(|| topic.to_string());
        self.assigned = starts
            .iter()
            .map(|(partition, start)| Assigned {
                partition: *partition,
                start: *start,
                position: None,
            })
            .collect();
        Ok(())
    }

    fn poll(&mut self, max_wait_ms: u64) -> LocalBoxFuture<'_, Result<Vec<ConsumedRecord>, ConsumeError>> {
        Box::pin(self.poll_inner(max_wait_ms))
    }

    fn commit(
        &mut self,
        topic: &str,
        next_offsets: &[(i32, i64)],
    ) -> LocalBoxFuture<'_, Result<(), ConsumeError>> {
        let topic = topic.to_string();
        let next_offsets = next_offsets.to_vec();
        Box::pin(async move { self.commit_inner(&topic, &next_offsets).await })
    }
}
