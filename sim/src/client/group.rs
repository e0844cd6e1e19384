//! [`SimGroupConsumer`]: a member of a consumer group of the simulated
//! broker, the `GroupConsumer` seam over turmoil TCP.
//!
//! Everything happens inside the caller's calls (no background task):
//! `poll` hands out queued group events first, then joins (when the member
//! has no generation), heartbeats (when `heartbeat_interval_ms` has passed)
//! or fetches the sought partitions. What the broker answers maps to the
//! contract of [`soilstream::transport::group`]:
//!
//! - `Joined` -> [`GroupEvent::Assigned`]; the partitions are unsought and
//!   deliver nothing until [`GroupConsumer::seek`].
//! - a heartbeat answered `RebalanceInProgress` -> [`GroupEvent::Revoked`]:
//!   the partitions stay owned (the broker still accepts commits of the old
//!   generation) until the next `poll`, which releases them and re-joins
//!   with the same member id.
//! - `UnknownMemberId` (session expired, broker restarted) or
//!   `IllegalGeneration` -> [`GroupEvent::Lost`], then a re-join (with a
//!   fresh id after `UnknownMemberId`); a commit refused so is
//!   `ConsumeError::Fenced`, and `Lost` is queued for the next `poll`.
//! - no heartbeat succeeded for longer than the session timeout (the broker
//!   unreachable) -> [`GroupEvent::Lost`]: the coordinator has expired this
//!   member (measured from the *sending* of the last answered heartbeat, so
//!   the client gives up no later than the broker does). The old member id
//!   is left with a best-effort LeaveGroup and a fresh one is asked for.
//!
//! Transport failures are `ConsumeError::Unavailable` and drop the
//! connection (the next call opens a new one). While in a generation, no
//! request outlasts the session: a member cut off from the broker reports
//! `Lost` at the first poll past it, and refuses commits (`Fenced`) from then
//! on. A `poll` may be dropped part-way (a `select!`): only its connection is
//! lost, state changes happen when answers arrive. With
//! [`GroupConsumer::set_fetching`]`(false)` polls keep the membership alive
//! (heartbeats, group events) without fetching.

use super::connection::Connection;
use super::{ClientConfigError, require_positive};
use crate::broker::{MAX_GROUP_ID_BYTES, MAX_MEMBER_ID_BYTES, MAX_PARTITIONS_PER_TOPIC};
use crate::protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorCode, FetchRequest, JoinOutcome, Request, Response};
use futures::future::LocalBoxFuture;
use soilstream::transport::group::CommittedOffsets;
use soilstream::transport::{ConsumeError, ConsumedRecord, GroupConsumer, GroupEvent, TimestampKind};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Most group events queued for the next polls (there are at most a few).
const MAX_QUEUED_EVENTS: usize = 16;
/// JoinGroup attempts in one poll (a refused stale id is retried fresh).
const MAX_JOIN_ATTEMPTS: usize = 2;

/// Group consumer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConsumerConfig {
    /// Broker host name (turmoil DNS).
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// The consumer group (1..=255 bytes).
    pub group_id: String,
    /// The coordinator removes this member when it hears nothing of it for
    /// this long; the member reports its partitions lost after this long
    /// without an answered heartbeat.
    pub session_timeout_ms: u64,
    /// A heartbeat is sent when this long has passed since the last one.
    pub heartbeat_interval_ms: u64,
    /// How long a rebalance waits for this member to re-join.
    pub rebalance_timeout_ms: u64,
    /// While a rebalance is pending, JoinGroup is re-sent after this long
    /// (bounded by the poll's wait).
    pub join_retry_ms: u64,
    /// Requests without response after this long (plus a fetch's wait)
    /// fail with `Unavailable`.
    pub request_timeout_ms: u64,
    /// Connection attempts give up after this long.
    pub connect_timeout_ms: u64,
    /// Most records returned by one poll.
    pub max_poll_records: u32,
    /// About the most bytes fetched by one poll.
    pub fetch_max_bytes: u32,
    /// Bound on a frame.
    pub max_frame_bytes: u32,
}

impl GroupConsumerConfig {
    /// Defaults for a member of `group_id` at `broker_host:broker_port`:
    /// session 30 s, heartbeat 3 s, rebalance 60 s, join retry 500 ms,
    /// request and connect timeouts 1 s, 1000 records and 1 MiB per poll.
    pub fn new(broker_host: impl Into<String>, broker_port: u16, group_id: impl Into<String>) -> Self {
        Self {
            broker_host: broker_host.into(),
            broker_port,
            group_id: group_id.into(),
            session_timeout_ms: 30_000,
            heartbeat_interval_ms: 3_000,
            rebalance_timeout_ms: 60_000,
            join_retry_ms: 500,
            request_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            max_poll_records: 1_000,
            fetch_max_bytes: 1024 * 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Checks limits and that the timeouts fit together: a heartbeat is due
    /// well within a session (`heartbeat_interval_ms < session_timeout_ms /
    /// 2`), one heartbeat attempt (connect + request) fits in a session after
    /// its interval, and a member told of a rebalance can re-join within the
    /// rebalance timeout.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        require_positive(&[
            ("session_timeout_ms", self.session_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("rebalance_timeout_ms", self.rebalance_timeout_ms),
            ("join_retry_ms", self.join_retry_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("max_poll_records", u64::from(self.max_poll_records)),
            ("fetch_max_bytes", u64::from(self.fetch_max_bytes)),
            ("max_frame_bytes", u64::from(self.max_frame_bytes)),
        ])?;
        if self.group_id.is_empty() || self.group_id.len() > MAX_GROUP_ID_BYTES {
            return Err(ClientConfigError::Invalid(format!(
                "group_id must be 1..={MAX_GROUP_ID_BYTES} bytes"
            )));
        }
        if self.heartbeat_interval_ms >= self.session_timeout_ms / 2 {
            return Err(ClientConfigError::Invalid(format!(
                "heartbeat_interval_ms ({}) must be below half of session_timeout_ms ({})",
                self.heartbeat_interval_ms, self.session_timeout_ms
            )));
        }
        let attempt_ms = self.connect_timeout_ms.saturating_add(self.request_timeout_ms);
        if self.heartbeat_interval_ms.saturating_add(attempt_ms) >= self.session_timeout_ms {
            return Err(ClientConfigError::Invalid(format!(
                "heartbeat_interval_ms + connect_timeout_ms + request_timeout_ms ({}) must be below \
                 session_timeout_ms ({})",
                self.heartbeat_interval_ms.saturating_add(attempt_ms),
                self.session_timeout_ms
            )));
        }
        if self.join_retry_ms.saturating_add(attempt_ms) >= self.session_timeout_ms {
            return Err(ClientConfigError::Invalid(format!(
                "join_retry_ms + connect_timeout_ms + request_timeout_ms must be below session_timeout_ms ({})",
                self.session_timeout_ms
            )));
        }
        let rejoin_ms = self
            .heartbeat_interval_ms
            .saturating_add(self.join_retry_ms)
            .saturating_add(attempt_ms);
        if rejoin_ms >= self.rebalance_timeout_ms {
            return Err(ClientConfigError::Invalid(format!(
                "heartbeat_interval_ms + join_retry_ms + connect_timeout_ms + request_timeout_ms ({rejoin_ms}) \
                 must be below rebalance_timeout_ms ({})",
                self.rebalance_timeout_ms
            )));
        }
        Ok(())
    }
}

/// This member's current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Membership {
    generation: u64,
    /// Sending time of the last heartbeat (or join) the broker answered.
    last_answered_sent_at: Instant,
    /// When the next heartbeat is due (in the past after an unanswered
    /// one: retried at the next poll).
    next_heartbeat_at: Instant,
    /// A heartbeat was answered `RebalanceInProgress`: the next poll
    /// releases the partitions and re-joins.
    revoked: bool,
}

/// The `GroupConsumer` seam over turmoil TCP to the simulated broker's group
/// coordinator.
pub struct SimGroupConsumer {
    config: GroupConsumerConfig,
    connection: RefCell<Option<Connection>>,
    topic: Option<String>,
    member_id: Option<String>,
    /// A member id given up locally (session lost while unreachable), to
    /// leave before joining afresh.
    abandoned_member_id: Option<String>,
    membership: Option<Membership>,
    /// Owned partitions and their positions (`None`: not sought yet).
    owned: BTreeMap<i32, Option<i64>>,
    events: VecDeque<GroupEvent>,
    /// `false`: polls keep the membership alive but fetch nothing.
    fetching: bool,
    rotation: usize,
}

fn unavailable(reason: impl std::fmt::Display) -> ConsumeError {
    ConsumeError::Unavailable(reason.to_string())
}

fn from_code(topic: &str, code: ErrorCode) -> ConsumeError {
    match code {
        ErrorCode::UnknownTopicOrPartition => ConsumeError::UnknownTopic(topic.to_string()),
        ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration => ConsumeError::Fenced(code.to_string()),
        code if code.is_retriable() => ConsumeError::Unavailable(code.to_string()),
        code => ConsumeError::Other(code.to_string()),
    }
}

fn unexpected(response: &Response) -> ConsumeError {
    ConsumeError::Other(format!("unexpected response {response:?}"))
}

fn ms_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u64::MAX)
}

impl SimGroupConsumer {
    /// A member of `config.group_id`; it connects on first use. Use it inside
    /// a turmoil host or client.
    pub fn new(config: GroupConsumerConfig) -> Result<Self, ClientConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            connection: RefCell::new(None),
            topic: None,
            member_id: None,
            abandoned_member_id: None,
            membership: None,
            owned: BTreeMap::new(),
            events: VecDeque::new(),
            fetching: true,
            rotation: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GroupConsumerConfig {
        &self.config
    }

    /// The member id the coordinator gave this member, if any.
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }

    /// The generation this member's partitions belong to, if it is in one.
    pub fn generation(&self) -> Option<u64> {
        self.membership.map(|m| m.generation)
    }

    /// The position (next offset to read) of an owned, sought partition.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.owned.get(&partition).copied().flatten()
    }

    /// One request; while this member is in a generation, it gives up when
    /// the session would end (plus one ms, to be past it), so that a member
    /// cut off from the broker learns on time that its partitions are lost.
    async fn call(&self, request: &Request, timeout_ms: u64) -> Result<Response, ConsumeError> {
        let mut connect_timeout_ms = self.config.connect_timeout_ms;
        let mut timeout_ms = timeout_ms;
        if let Some(membership) = &self.membership {
            let session_end =
                membership.last_answered_sent_at + Duration::from_millis(self.config.session_timeout_ms);
            let left_ms = ms_between(Instant::now(), session_end).saturating_add(1);
            connect_timeout_ms = connect_timeout_ms.min(left_ms);
            timeout_ms = timeout_ms.min(left_ms);
        }
        self.call_bounded(request, timeout_ms, connect_timeout_ms).await
    }

    async fn call_bounded(
        &self,
        request: &Request,
        timeout_ms: u64,
        connect_timeout_ms: u64,
    ) -> Result<Response, ConsumeError> {
        let existing = self.connection.borrow_mut().take();
        let mut connection = match existing {
            Some(connection) => connection,
            None => Connection::connect(
                &self.config.broker_host,
                self.config.broker_port,
                connect_timeout_ms,
                self.config.max_frame_bytes,
            )
            .await
            .map_err(unavailable)?,
        };
        let response = connection.call(request, timeout_ms).await.map_err(unavailable)?;
        *self.connection.borrow_mut() = Some(connection);
        Ok(response)
    }

    fn queue(&mut self, event: GroupEvent) {
        assert!(
            self.events.len() < MAX_QUEUED_EVENTS,
            "group events are handed out by every poll"
        );
        self.events.push_back(event);
    }

    /// Ends the membership: the partitions are gone. `forget_id`: the member
    /// id is no longer known to the coordinator.
    fn lose(&mut self, forget_id: bool) -> GroupEvent {
        let lost: Vec<i32> = self.owned.keys().copied().collect();
        self.owned.clear();
        self.membership = None;
        if forget_id {
            self.member_id = None;
        }
        GroupEvent::Lost(lost)
    }

    async fn sleep_ms(&self, ms: u64) {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    async fn poll_inner(&mut self, max_wait_ms: u64) -> Result<GroupEvent, ConsumeError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        let Some(topic) = self.topic.clone() else {
            self.sleep_ms(max_wait_ms).await;
            return Ok(GroupEvent::Records(Vec::new()));
        };
        if self.membership.is_some_and(|m| m.revoked) {
            // The revoked partitions are released now; re-join with the
            // same member id.
            self.owned.clear();
            self.membership = None;
        }
        let Some(membership) = self.membership else {
            return self.join(&topic, max_wait_ms).await;
        };
        if self.session_over(&membership) {
            return Ok(self.session_lost());
        }
        if Instant::now() >= membership.next_heartbeat_at
            && let Some(event) = self.heartbeat(&topic, membership.generation).await?
        {
            return Ok(event);
        }
        self.fetch(&topic, max_wait_ms).await
    }

    /// Whether no heartbeat was answered for longer than the session timeout
    /// (counted from the sending of the last answered one).
    fn session_over(&self, membership: &Membership) -> bool {
        ms_between(membership.last_answered_sent_at, Instant::now()) > self.config.session_timeout_ms
    }

    /// No heartbeat was answered for a whole session: the coordinator has
    /// removed this member.
    fn session_lost(&mut self) -> GroupEvent {
        tracing::info!(member = ?self.member_id, "no heartbeat answered for a session; partitions lost");
        self.abandoned_member_id = self.member_id.take();
        self.lose(true)
    }

    /// Sends a heartbeat; `Some(event)` ends the poll with it.
    async fn heartbeat(&mut self, topic: &str, generation: u64) -> Result<Option<GroupEvent>, ConsumeError> {
        let member_id = self
            .member_id
            .clone()
            .expect("a member of a generation has an id");
        let sent_at = Instant::now();
        let request = Request::Heartbeat {
            group: self.config.group_id.clone(),
            member_id,
            generation,
        };
        let outcome = match self.call(&request, self.config.request_timeout_ms).await {
            Ok(Response::Heartbeat { result }) => result,
            Ok(Response::Error(code)) => Err(code),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => return self.heartbeat_unanswered(error),
        };
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let answered = |consumer: &mut Self| {
            if let Some(membership) = consumer.membership.as_mut() {
                membership.last_answered_sent_at = sent_at;
                membership.next_heartbeat_at = sent_at + interval;
            }
        };
        match outcome {
            Ok(()) => {
                answered(self);
                Ok(None)
            }
            Err(ErrorCode::RebalanceInProgress) => {
                answered(self);
                if let Some(membership) = self.membership.as_mut() {
                    membership.revoked = true;
                }
                Ok(Some(GroupEvent::Revoked(self.owned())))
            }
            Err(ErrorCode::UnknownMemberId) => Ok(Some(self.lose(true))),
            Err(ErrorCode::IllegalGeneration) => Ok(Some(self.lose(false))),
            Err(code) if code.is_retriable() => self.heartbeat_unanswered(from_code(topic, code)),
            Err(code) => Err(from_code(topic, code)),
        }
    }

    /// A heartbeat got no answer: it stays due (retried at the next poll),
    /// and the session is lost once heartbeats went unanswered for longer
    /// than the session timeout.
    fn heartbeat_unanswered(&mut self, error: ConsumeError) -> Result<Option<GroupEvent>, ConsumeError> {
        let Some(membership) = self.membership else {
            return Err(error);
        };
        if self.session_over(&membership) {
            return Ok(Some(self.session_lost()));
        }
        Err(error)
    }

    async fn join(&mut self, topic: &str, max_wait_ms: u64) -> Result<GroupEvent, ConsumeError> {
        if let Some(abandoned) = self.abandoned_member_id.take() {
            // Best effort: lets the others rebalance at once if the
            // coordinator still counts the old id.
            let request = Request::LeaveGroup {
                group: self.config.group_id.clone(),
                member_id: abandoned,
            };
            if let Err(error) = self.call(&request, self.config.request_timeout_ms).await {
                tracing::debug!(%error, "leaving with an abandoned member id failed");
            }
        }
        for _ in 0..MAX_JOIN_ATTEMPTS {
            let sent_at = Instant::now();
            let request = Request::JoinGroup {
                group: self.config.group_id.clone(),
                topic: topic.to_string(),
                member_id: self.member_id.clone(),
                session_timeout_ms: self.config.session_timeout_ms,
                rebalance_timeout_ms: self.config.rebalance_timeout_ms,
            };
            let result = match self.call(&request, self.config.request_timeout_ms).await? {
                Response::JoinGroup { result } => result,
                Response::Error(code) => Err(code),
                other => return Err(unexpected(&other)),
            };
            if let Ok(JoinOutcome::Pending { member_id } | JoinOutcome::Joined { member_id, .. }) = &result
                && (member_id.is_empty() || member_id.len() > MAX_MEMBER_ID_BYTES)
            {
                return Err(ConsumeError::Other(format!(
                    "the coordinator issued an invalid member id of {} bytes",
                    member_id.len()
                )));
            }
            match result {
                Ok(JoinOutcome::Pending { member_id }) => {
                    self.member_id = Some(member_id);
                    break;
                }
                Ok(JoinOutcome::Joined {
                    member_id,
                    generation,
                    mut partitions,
                }) => {
                    partitions.sort_unstable();
                    partitions.dedup();
                    if partitions.len() > MAX_PARTITIONS_PER_TOPIC as usize {
                        return Err(ConsumeError::Other(format!(
                            "assigned {} partitions, more than a topic has",
                            partitions.len()
                        )));
                    }
                    debug_assert!(self.owned.is_empty(), "nothing is owned between generations");
                    self.member_id = Some(member_id);
                    self.membership = Some(Membership {
                        generation,
                        last_answered_sent_at: sent_at,
                        next_heartbeat_at: sent_at + Duration::from_millis(self.config.heartbeat_interval_ms),
                        revoked: false,
                    });
                    self.owned = partitions.iter().map(|p| (*p, None)).collect();
                    tracing::debug!(member = ?self.member_id, generation, ?partitions, "assigned");
                    return Ok(GroupEvent::Assigned {
                        generation,
                        partitions,
                    });
                }
                Err(ErrorCode::UnknownMemberId) => {
                    // The coordinator forgot this id (expired, restarted):
                    // join afresh.
                    self.member_id = None;
                }
                Err(code) => return Err(from_code(topic, code)),
            }
        }
        self.sleep_ms(self.config.join_retry_ms.min(max_wait_ms)).await;
        Ok(GroupEvent::Records(Vec::new()))
    }

    async fn fetch(&mut self, topic: &str, max_wait_ms: u64) -> Result<GroupEvent, ConsumeError> {
        let membership = self.membership.expect("fetching needs a generation");
        let until_heartbeat_ms = ms_between(Instant::now(), membership.next_heartbeat_at);
        let wait_ms = max_wait_ms.min(until_heartbeat_ms);
        let mut partitions: Vec<(String, i32, i64)> = self
            .owned
            .iter()
            .filter_map(|(partition, position)| position.map(|p| (topic.to_string(), *partition, p)))
            .collect();
        if partitions.is_empty() || !self.fetching {
            self.sleep_ms(wait_ms).await;
            return Ok(GroupEvent::Records(Vec::new()));
        }
        // Rotate so that a busy partition does not starve the others.
        let start = self.rotation % partitions.len();
        self.rotation = self.rotation.wrapping_add(1);
        partitions.rotate_left(start);
        let request = Request::Fetch(FetchRequest {
            partitions,
            max_wait_ms: wait_ms,
            max_records: self.config.max_poll_records,
            max_bytes: self.config.fetch_max_bytes,
        });
        let timeout_ms = wait_ms.saturating_add(self.config.request_timeout_ms);
        let results = match self.call(&request, timeout_ms).await? {
            Response::Fetch { results } => results,
            Response::Error(code) => return Err(from_code(topic, code)),
            other => return Err(unexpected(&other)),
        };
        let mut out = Vec::new();
        for result in results {
            let Some(position) = self.owned.get_mut(&result.partition) else {
                continue;
            };
            match result.result {
                Ok(fetched) => {
                    if Some(fetched.base_offset) != *position {
                        // The position moved (a seek) meanwhile: stale.
                        continue;
                    }
                    let count = fetched.records.len() as i64;
                    for (index, record) in fetched.records.into_iter().enumerate() {
                        out.push(ConsumedRecord {
                            topic: topic.to_string(),
                            partition: result.partition,
                            offset: fetched.base_offset + index as i64,
                            key: record.key,
                            value: record.value,
                            timestamp_ms: record.timestamp_ms,
                            timestamp_kind: TimestampKind::CreateTime,
                            headers: record.headers,
                        });
                    }
                    *position = Some(fetched.base_offset + count);
                }
                Err(ErrorCode::OffsetOutOfRange) => {
                    // A processor must not skip silently: report it.
                    tracing::warn!(partition = result.partition, ?position, "position out of range");
                    return Err(ConsumeError::Other(format!(
                        "offset {} out of range on partition {} of `{topic}`",
                        position.map_or_else(|| "?".to_string(), |p| p.to_string()),
                        result.partition
                    )));
                }
                Err(code) if code.is_retriable() => {}
                Err(code) => return Err(from_code(topic, code)),
            }
        }
        Ok(GroupEvent::Records(out))
    }

    async fn committed_inner(&mut self, partitions: &[i32]) -> Result<CommittedOffsets, ConsumeError> {
        let topic = self
            .topic
            .clone()
            .ok_or_else(|| ConsumeError::Other("committed needs a subscription".into()))?;
        if partitions.len() > MAX_PARTITIONS_PER_TOPIC as usize {
            return Err(ConsumeError::Other(format!(
                "at most {MAX_PARTITIONS_PER_TOPIC} partitions at once"
            )));
        }
        let request = Request::OffsetFetch {
            group: self.config.group_id.clone(),
            topic: topic.clone(),
            partitions: partitions.to_vec(),
        };
        match self.call(&request, self.config.request_timeout_ms).await? {
            Response::OffsetFetch { result } => result.map_err(|code| from_code(&topic, code)),
            Response::Error(code) => Err(from_code(&topic, code)),
            other => Err(unexpected(&other)),
        }
    }

    async fn commit_inner(&mut self, next_offsets: &[(i32, i64)]) -> Result<(), ConsumeError> {
        let topic = self
            .topic
            .clone()
            .ok_or_else(|| ConsumeError::Other("commit needs a subscription".into()))?;
        let (Some(membership), Some(member_id)) = (self.membership, self.member_id.clone()) else {
            return Err(ConsumeError::Fenced(
                "this member is not in a generation (lost, or not assigned yet)".into(),
            ));
        };
        if self.session_over(&membership) {
            // The coordinator has expired this member (or is about to).
            let lost = self.session_lost();
            self.queue(lost);
            return Err(ConsumeError::Fenced(format!(
                "no heartbeat answered for {} ms: generation {} is over",
                self.config.session_timeout_ms, membership.generation
            )));
        }
        if let Some((partition, _)) = next_offsets.iter().find(|(p, _)| !self.owned.contains_key(p)) {
            return Err(ConsumeError::Fenced(format!(
                "partition {partition} is not owned in generation {}",
                membership.generation
            )));
        }
        if let Some((partition, offset)) = next_offsets.iter().find(|(_, o)| *o < 0) {
            return Err(ConsumeError::Other(format!(
                "negative offset {offset} for partition {partition}"
            )));
        }
        let request = Request::GroupOffsetCommit {
            group: self.config.group_id.clone(),
            member_id,
            generation: membership.generation,
            topic: topic.clone(),
            offsets: next_offsets.to_vec(),
        };
        let result = match self.call(&request, self.config.request_timeout_ms).await? {
            Response::OffsetCommit { result } => result,
            Response::Error(code) => Err(code),
            other => return Err(unexpected(&other)),
        };
        match result {
            Ok(()) => Ok(()),
            Err(code @ (ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration)) => {
                // The generation is over: the partitions are gone.
                let lost = self.lose(code == ErrorCode::UnknownMemberId);
                self.queue(lost);
                Err(ConsumeError::Fenced(format!(
                    "commit of generation {} refused: {code}",
                    membership.generation
                )))
            }
            Err(code) => Err(from_code(&topic, code)),
        }
    }

    async fn leave_inner(&mut self) {
        let member_id = self.member_id.take().or_else(|| self.abandoned_member_id.take());
        self.abandoned_member_id = None;
        self.membership = None;
        self.owned.clear();
        self.events.clear();
        self.topic = None;
        if let Some(member_id) = member_id {
            let request = Request::LeaveGroup {
                group: self.config.group_id.clone(),
                member_id,
            };
            match self.call(&request, self.config.request_timeout_ms).await {
                Ok(Response::LeaveGroup { result: Ok(()) }) => {}
                Ok(other) => tracing::debug!(?other, "leave refused"),
                Err(error) => tracing::debug!(%error, "leave not delivered"),
            }
        }
    }
}

impl GroupConsumer for SimGroupConsumer {
    fn subscribe(&mut self, topic: &str) -> Result<(), ConsumeError> {
        if topic.is_empty() || topic.len() > crate::broker::MAX_TOPIC_NAME_BYTES {
            return Err(ConsumeError::Other(format!("invalid topic name `{topic}`")));
        }
        match &self.topic {
            Some(current) if current != topic => Err(ConsumeError::Other(format!(
                "already subscribed to `{current}`: leave first"
            ))),
            _ => {
                self.topic = Some(topic.to_string());
                Ok(())
            }
        }
    }

    fn poll(&mut self, max_wait_ms: u64) -> LocalBoxFuture<'_, Result<GroupEvent, ConsumeError>> {
        Box::pin(self.poll_inner(max_wait_ms))
    }

    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), ConsumeError> {
        if offset < 0 {
            return Err(ConsumeError::Other(format!(
                "negative offset {offset} for partition {partition}"
            )));
        }
        match self.owned.get_mut(&partition) {
            Some(position) => {
                *position = Some(offset);
                Ok(())
            }
            None => Err(ConsumeError::Other(format!(
                "partition {partition} is not owned by this member"
            ))),
        }
    }

    fn committed(
        &mut self,
        partitions: &[i32],
    ) -> LocalBoxFuture<'_, Result<CommittedOffsets, ConsumeError>> {
        let partitions = partitions.to_vec();
        Box::pin(async move { self.committed_inner(&partitions).await })
    }

    fn commit(&mut self, next_offsets: &[(i32, i64)]) -> LocalBoxFuture<'_, Result<(), ConsumeError>> {
        let next_offsets = next_offsets.to_vec();
        Box::pin(async move { self.commit_inner(&next_offsets).await })
    }

    fn leave(&mut self) -> LocalBoxFuture<'_, ()> {
        Box::pin(self.leave_inner())
    }

    fn owned(&self) -> Vec<i32> {
        self.owned.keys().copied().collect()
    }

    fn set_fetching(&mut self, enabled: bool) {
        self.fetching = enabled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_timeouts_must_fit_together() {
        let config = GroupConsumerConfig::new("broker", 9092, "processors");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.session_timeout_ms, 30_000);
        assert_eq!(config.heartbeat_interval_ms, 3_000);
        assert_eq!(config.rebalance_timeout_ms, 60_000);
        assert_eq!(config.join_retry_ms, 500);

        let mut slow_heartbeat = config.clone();
        slow_heartbeat.heartbeat_interval_ms = 15_000;
        assert!(slow_heartbeat.validate().is_err(), "heartbeat < session / 2");

        let mut short_session = config.clone();
        short_session.session_timeout_ms = 7_000;
        short_session.request_timeout_ms = 3_000;
        short_session.connect_timeout_ms = 3_000;
        assert!(
            short_session.validate().is_err(),
            "an attempt must fit in a session"
        );

        let mut short_rebalance = config.clone();
        short_rebalance.rebalance_timeout_ms = 4_000;
        assert!(
            short_rebalance.validate().is_err(),
            "re-joining must fit in a rebalance"
        );

        let mut no_group = config.clone();
        no_group.group_id = String::new();
        assert!(no_group.validate().is_err());
        let mut long_group = config.clone();
        long_group.group_id = "g".repeat(MAX_GROUP_ID_BYTES + 1);
        assert!(long_group.validate().is_err());

        let mut zero = config;
        zero.join_retry_ms = 0;
        assert!(zero.validate().is_err());
    }

    #[test]
    fn seek_and_commit_need_owned_partitions() {
        let mut consumer =
            SimGroupConsumer::new(GroupConsumerConfig::new("broker", 9092, "processors")).expect("valid");
        assert!(consumer.owned().is_empty());
        assert!(matches!(consumer.seek(0, 5), Err(ConsumeError::Other(_))));
        consumer.subscribe("raw").expect("subscribe");
        consumer.subscribe("raw").expect("again: the same topic");
        assert!(matches!(consumer.subscribe("other"), Err(ConsumeError::Other(_))));
        assert!(matches!(consumer.subscribe(""), Err(ConsumeError::Other(_))));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // Without a generation a commit is fenced without asking the broker.
        let commit = runtime.block_on(consumer.commit(&[(0, 1)]));
        assert!(matches!(commit, Err(ConsumeError::Fenced(_))), "{commit:?}");
        assert_eq!(consumer.generation(), None);
        assert_eq!(consumer.member_id(), None);
    }
}
