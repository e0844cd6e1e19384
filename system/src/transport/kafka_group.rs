//! [`GroupConsumer`] against a real broker: librdkafka's consumer group
//! membership (eager protocol) with explicit-offset reading.
//!
//! # Two consumers
//!
//! A [`KafkaGroupConsumer`] holds two librdkafka consumers:
//!
//! - the **member**, a `BaseConsumer` subscribed to the topic with
//!   `group.id`, `partition.assignment.strategy=range` (eager),
//!   `enable.auto.commit=false` and the timing of [`KafkaGroupConfig`]. It
//!   joins the group, heartbeats, receives assignments and revocations and
//!   commits offsets (with the group generation it is in), but never delivers
//!   records: every partition it is assigned is paused at once. It is polled
//!   on a dedicated thread owned by the `KafkaGroupConsumer`;
//! - the **data** consumer, the assign-based [`KafkaConsumer`]: it reads the
//!   [`seek`](GroupConsumer::seek)-ed partitions from explicit offsets. A
//!   newly sought partition is added to it
//!   ([`KafkaConsumer::add_partitions`]); seeking a sought partition again
//!   replaces it by a new data consumer reading every sought partition from
//!   its tracked next offset, and a rebalance drops it. (Re-assigning one
//!   librdkafka 2.12.1 consumer quickly, as four seeks in a row do, aborts
//!   the process: see [`KafkaConsumer::add_partitions`].) The next offset of
//!   every sought partition is tracked from the records delivered, so the
//!   replacement neither skips nor repeats a record; records of partitions
//!   that are not owned and sought, or below the tracked position, are
//!   dropped.
//!
//! # Revocation: the caller finishes before the group moves on
//!
//! librdkafka runs rebalance callbacks on the thread that polls the member
//! and rejoins the group as soon as the callback returns. On a revocation
//! (eager: every partition) the member's callback hands
//! [`GroupEvent::Revoked`] to the caller and then **blocks** until the
//! caller's next [`poll`](GroupConsumer::poll) (or [`leave`](GroupConsumer::leave),
//! or the drop of the consumer), at most [`KafkaGroupConfig::revoke_wait_max_ms`]
//! (an expiry is logged as an error: the partitions are then released while
//! the caller's work for them may be unfinished). Meanwhile the member keeps
//! heartbeating (librdkafka does so in this state) and still holds the
//! partitions, and [`commit`](GroupConsumer::commit)s are served by the member
//! thread from inside the callback, with the generation being revoked. Only
//! then does librdkafka rejoin, so no other member can be given the
//! partitions before the caller has finished with them, on a broker that
//! waits for every member to rejoin before it completes a rebalance (as Kafka
//! does, up to the rebalance timeout, which librdkafka sets to
//! `max.poll.interval.ms`).
//!
//! When librdkafka reports the assignment as lost (session expired, fenced,
//! `max.poll.interval.ms` exceeded) the callback hands over
//! [`GroupEvent::Lost`] and does not wait.
//!
//! The member thread polls the member continuously, so `max.poll.interval.ms`
//! measures only how long a revocation is held back, not how often the caller
//! polls: a caller that stops polling keeps its partitions as long as the
//! process lives (liveness of the caller is the caller's business).
//!
//! # Generation
//!
//! rust-rdkafka 0.39 does not expose the group generation: librdkafka's
//! `rd_kafka_consumer_group_metadata` is opaque there, and reading it would
//! take unsafe FFI, which the workspace denies. The `generation` of
//! [`GroupEvent::Assigned`] is therefore a local counter: the number of
//! assignments this member has received (1 for the first). It increases with
//! every rebalance this member takes part in, which is what a caller compares,
//! but it is not the broker's generation id and differs between members.
//! Commits do carry the broker's generation: librdkafka sends its current
//! generation id and member id with every OffsetCommit.
//!
//! # Commits
//!
//! [`commit`](GroupConsumer::commit) refuses, without asking the broker,
//! partitions this member does not own (never assigned, lost, or revoked and
//! released by a later poll) with [`ConsumeError::Fenced`], and so does the
//! member thread for partitions librdkafka no longer assigns to it (lost
//! before the caller polled, or released because `revoke_wait_max_ms`
//! passed). The broker's
//! ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS and
//! FENCED_INSTANCE_ID answers map to [`ConsumeError::Fenced`] too.
//!
//! # Leaving and dropping
//!
//! [`leave`](GroupConsumer::leave) stops the member thread, which closes the
//! member: librdkafka sends LeaveGroup, so the others rebalance at once, and
//! `leave` waits for that (at most [`LEAVE_WAIT_MAX_MS`]). Dropping the
//! consumer without `leave` asks the thread to stop and returns at once
//! (unblocking a revocation it holds back); the thread closes the member in
//! the background, which also sends LeaveGroup if the process lives long
//! enough. A process that is killed sends nothing: the coordinator expels
//! the member after `session.timeout.ms` without a heartbeat.
//!
//! # Against Tansu 0.6.0
//!
//! Observed with the suite in `soilstream-containers/tests/group.rs`
//! (4 partitions, session timeout 6 s, heartbeat 500 ms, librdkafka debug
//! logs of the group protocol):
//!
//! - A first member is assigned everything about 60 ms after it subscribes.
//! - A second member joins: the first one's next heartbeat answer is
//!   REBALANCE_IN_PROGRESS (its `Revoked` came 0.5 s after the join). While
//!   it holds the revocation back, Tansu gives the newcomer nothing (its
//!   SyncGroup is answered REBALANCE_IN_PROGRESS and it rejoins; checked for
//!   4 s), so the contract holds. Once the first member polls it rejoins; as
//!   the group's leader it is assigned within milliseconds, the newcomer 1.5
//!   to 3 s later (Tansu holds a non-leader's JoinGroup for 3 s).
//! - Often, not always, an extra rebalance follows a few seconds later: the
//!   newcomer's late rejoin opens another generation; members are revoked
//!   and assigned the same partitions again (range over the same members).
//!   Callers see a `Revoked`/`Assigned` pair with unchanged partitions.
//! - A LeaveGroup rebalances the others at once (the remaining member had
//!   everything about 0.5 s after the leave). `leave` took 0.1 s, or 3 s when
//!   a JoinGroup of the member was pending (Tansu's pause), which librdkafka
//!   waits for before it leaves.
//! - Commits take 1 to 3 ms; commits made between `Revoked` and the next
//!   poll are stored. Tansu does not check generations on OffsetCommit, so
//!   [`ConsumeError::Fenced`] comes from the local ownership check only.
//! - **A killed member's partitions are never reassigned.** About one
//!   session timeout after the kill (5.97 to 6.0 s for 6 s) the survivor's
//!   heartbeat is answered REBALANCE_IN_PROGRESS and it is revoked, but
//!   Tansu removes the expired member inside its heartbeat handler without
//!   re-forming the group: the survivor's JoinGroup (held 3 s when the dead
//!   member was the leader) returns the old generation and the old leader,
//!   and SyncGroup in that state hands back the stored assignment. The
//!   survivor gets its own partitions again; the dead member's stay
//!   unassigned (seen for the dead member as leader and as follower) until
//!   the membership changes: a member that joins (a restarted process) makes
//!   Tansu re-form the group, and every partition is assigned within 3 to
//!   6 s, resuming from the committed offsets. Deployments on Tansu 0.6.0
//!   must restart killed members (or have the survivors rejoin).
//! - A revocation held back past `revoke_wait_max_ms` (a caller that does
//!   not poll) is released with an error logged; the group then completes
//!   the rebalance without waiting for the caller.
//!
//! Must be created inside a tokio runtime (the data consumer needs one); the
//! member thread is a plain `std` thread.

use super::group::{CommittedOffsets, GroupConsumer, GroupEvent};
use super::kafka::{
    CONSUMER_DEFAULTS, CONSUMER_PROTECTED_PROPERTIES, KafkaClientConfig, KafkaConsumer, KafkaSetupError,
    REQUEST_TIMEOUT_MS, forward_log, is_transient_connection_error, log_client_error, map_consume_error,
    topic_error, validate_topic_name,
};
use super::{ConsumeError, ConsumedRecord, LogConsumer, StartOffset};
use futures::future::{FutureExt, LocalBoxFuture};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Shortest `session.timeout.ms` accepted, in ms.
pub const SESSION_TIMEOUT_MIN_MS: u64 = 1_000;
/// Longest `session.timeout.ms` accepted (librdkafka's limit), in ms.
pub const SESSION_TIMEOUT_MAX_MS: u64 = 3_600_000;
/// Longest `max.poll.interval.ms` accepted (librdkafka's limit), in ms.
pub const MAX_POLL_INTERVAL_MAX_MS: u64 = 86_400_000;
/// Time kept free between the end of the longest revocation wait and
/// `max.poll.interval.ms` (after which librdkafka would give the partitions
/// up itself), in ms.
pub const REVOKE_WAIT_MARGIN_MS: u64 = 5_000;
/// Longest time [`GroupConsumer::leave`] waits for the member to close
/// (LeaveGroup sent), in ms.
pub const LEAVE_WAIT_MAX_MS: u64 = 30_000;

/// Longest one poll of the member waits for an event before the member
/// thread looks at its commands again, in ms (the added latency of a
/// commit). librdkafka's log lines are consumed inside the poll; a
/// rebalance, a record or an error ends it early.
const MEMBER_POLL_MS: u64 = 10;
/// Most commands the member thread serves between two polls of the member.
const MEMBER_COMMANDS_PER_TURN_MAX: usize = 16;
/// Capacity of the queue of group events from the member thread. Events are
/// few (a revocation waits for the caller; at most one assignment follows
/// it); errors beyond it are dropped and logged.
const MEMBER_EVENT_QUEUE_MAX: usize = 64;
/// Capacity of the queue of commands to the member thread.
const MEMBER_COMMAND_QUEUE_MAX: usize = 64;
/// Added to the request timeout when waiting for the member thread's answer,
/// in ms.
const REPLY_MARGIN_MS: u64 = 5_000;

/// Group membership timing of a [`KafkaGroupConsumer`]; see
/// [`KafkaGroupConfig::validate`] for the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaGroupConfig {
    /// `session.timeout.ms`: how long the coordinator waits for a heartbeat
    /// before it expels the member; a killed member's partitions move to the
    /// others after this.
    pub session_timeout_ms: u64,
    /// `heartbeat.interval.ms`: how often the member heartbeats (also how
    /// soon it learns that a rebalance started). Below the session timeout;
    /// a third of it or less is usual.
    pub heartbeat_interval_ms: u64,
    /// `max.poll.interval.ms`: librdkafka's limit on the time between two
    /// polls of the member (here: on how long a revocation is held back), and
    /// the rebalance timeout the member announces when it joins (how long
    /// the coordinator waits for members to rejoin).
    pub max_poll_interval_ms: u64,
    /// Longest time a revocation is held back waiting for the caller's next
    /// poll; at most `max_poll_interval_ms - REVOKE_WAIT_MARGIN_MS`.
    pub revoke_wait_max_ms: u64,
}

impl Default for KafkaGroupConfig {
    fn default() -> Self {
        Self {
            session_timeout_ms: 30_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            revoke_wait_max_ms: 120_000,
        }
    }
}

impl KafkaGroupConfig {
    /// Checks the limits: `session_timeout_ms` within
    /// [`SESSION_TIMEOUT_MIN_MS`]..=[`SESSION_TIMEOUT_MAX_MS`];
    /// `heartbeat_interval_ms` at least 1 and below `session_timeout_ms`;
    /// `max_poll_interval_ms` at least `session_timeout_ms` (librdkafka's
    /// rule) and at most [`MAX_POLL_INTERVAL_MAX_MS`]; `revoke_wait_max_ms`
    /// at least 1 and at most `max_poll_interval_ms -`
    /// [`REVOKE_WAIT_MARGIN_MS`].
    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        let invalid = |message: String| Err(KafkaSetupError::Config(message));
        if !(SESSION_TIMEOUT_MIN_MS..=SESSION_TIMEOUT_MAX_MS).contains(&self.session_timeout_ms) {
            return invalid(format!(
                "session_timeout_ms is {}; it must be within {SESSION_TIMEOUT_MIN_MS}..={SESSION_TIMEOUT_MAX_MS}",
                self.session_timeout_ms
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms {
            return invalid(format!(
                "heartbeat_interval_ms is {}; it must be at least 1 and below session_timeout_ms ({})",
                self.heartbeat_interval_ms, self.session_timeout_ms
            ));
        }
        if self.max_poll_interval_ms < self.session_timeout_ms
            || self.max_poll_interval_ms > MAX_POLL_INTERVAL_MAX_MS
        {
            return invalid(format!(
                "max_poll_interval_ms is {}; it must be at least session_timeout_ms ({}) and at most \
                 {MAX_POLL_INTERVAL_MAX_MS}",
                self.max_poll_interval_ms, self.session_timeout_ms
            ));
        }
        let revoke_wait_limit_ms = self.max_poll_interval_ms.saturating_sub(REVOKE_WAIT_MARGIN_MS);
        if self.revoke_wait_max_ms == 0 || self.revoke_wait_max_ms > revoke_wait_limit_ms {
            return invalid(format!(
                "revoke_wait_max_ms is {}; it must be at least 1 and at most max_poll_interval_ms - \
                 {REVOKE_WAIT_MARGIN_MS} ({revoke_wait_limit_ms})",
                self.revoke_wait_max_ms
            ));
        }
        Ok(())
    }
}

/// librdkafka settings of the member that soilstream sets (on top of
/// [`CONSUMER_DEFAULTS`]; the timing comes from [`KafkaGroupConfig`]).
pub const GROUP_MEMBER_SETTINGS: &[(&str, &str)] = &[
    // Eager protocol: every member gives up everything on a rebalance.
    ("partition.assignment.strategy", "range"),
    // The classic JoinGroup/SyncGroup protocol (Tansu 0.6.0 has no KIP-848).
    ("group.protocol", "classic"),
];

/// Properties the pass-through map of a [`KafkaGroupConsumer`] may not set,
/// besides [`CONSUMER_PROTECTED_PROPERTIES`].
pub const GROUP_MEMBER_PROTECTED_PROPERTIES: &[&str] = &[
    "partition.assignment.strategy",
    "group.protocol",
    "group.remote.assignor",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    // Static membership changes what leaving means (no LeaveGroup on close)
    // and makes Tansu 0.6.0 pause every join for 3 s.
    "group.instance.id",
];

/// What the member thread tells the async side.
#[derive(Debug)]
enum MemberEvent {
    Assigned {
        generation: u64,
        partitions: Vec<i32>,
    },
    /// `seq`: the number of the revocation, acknowledged by
    /// [`MemberCommand::RevokeDone`].
    Revoked {
        partitions: Vec<i32>,
        seq: u64,
    },
    Lost(Vec<i32>),
    Error(ConsumeError),
}

/// What the async side asks of the member thread.
enum MemberCommand {
    Commit {
        offsets: TopicPartitionList,
        reply: oneshot::Sender<Result<(), ConsumeError>>,
    },
    Committed {
        partitions: Vec<i32>,
        reply: oneshot::Sender<Result<CommittedOffsets, ConsumeError>>,
    },
    /// The caller polled after revocation `seq`: let librdkafka rejoin.
    RevokeDone(u64),
    /// Close the member and end the thread.
    Stop,
}

/// The member's librdkafka context: rebalance callbacks and the commands
/// served on the member thread.
struct MemberContext {
    group_id: String,
    topic: OnceLock<String>,
    events: mpsc::Sender<MemberEvent>,
    commands: Mutex<std_mpsc::Receiver<MemberCommand>>,
    stop: Arc<AtomicBool>,
    revoke_wait_max_ms: u64,
    request_timeout_ms: u64,
    /// Assignments received: the local generation.
    assignments: AtomicU64,
    /// Revocations handed to the caller.
    revocations: AtomicU64,
    /// Highest revocation the caller is done with.
    revocations_done: AtomicU64,
    /// The partitions librdkafka assigned, as last reported.
    assigned: Mutex<Vec<i32>>,
}

impl MemberContext {
    fn topic(&self) -> Option<&str> {
        self.topic.get().map(String::as_str)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for the next command.
    fn next_command(&self, timeout: Duration) -> Option<MemberCommand> {
        let receiver = self
            .commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match receiver.recv_timeout(timeout) {
            Ok(command) => Some(command),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                self.stop.store(true, Ordering::Release);
                None
            }
        }
    }

    /// The next command, if one is queued.
    fn queued_command(&self) -> Option<MemberCommand> {
        let receiver = self
            .commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match receiver.try_recv() {
            Ok(command) => Some(command),
            Err(std_mpsc::TryRecvError::Empty) => None,
            Err(std_mpsc::TryRecvError::Disconnected) => {
                self.stop.store(true, Ordering::Release);
                None
            }
        }
    }

    /// Serves one command on the member thread (from the loop or from inside
    /// a rebalance callback).
    fn serve(&self, consumer: &BaseConsumer<MemberContext>, command: MemberCommand) {
        match command {
            MemberCommand::Commit { offsets, reply } => {
                let started = Instant::now();
                let result = match self.unassigned_of(&offsets) {
                    Some(partition) => Err(ConsumeError::Fenced(format!(
                        "partition {partition} is no longer assigned to this member (lost, or released after \
                         revoke_wait_max_ms)"
                    ))),
                    None => consumer
                        .commit(&offsets, CommitMode::Sync)
                        .map_err(|e| map_commit_error(&e, self.topic())),
                };
                tracing::debug!(
                    group = %self.group_id,
                    partitions = offsets.count(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "group commit"
                );
                let _ = reply.send(result);
            }
            MemberCommand::Committed { partitions, reply } => {
                let _ = reply.send(self.committed(consumer, &partitions));
            }
            MemberCommand::RevokeDone(seq) => {
                self.revocations_done.fetch_max(seq, Ordering::AcqRel);
            }
            MemberCommand::Stop => self.stop.store(true, Ordering::Release),
        }
    }

    fn committed(
        &self,
        consumer: &BaseConsumer<MemberContext>,
        partitions: &[i32],
    ) -> Result<CommittedOffsets, ConsumeError> {
        let topic = self
            .topic()
            .ok_or_else(|| ConsumeError::Other("the member is not subscribed".into()))?;
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for &partition in partitions {
            list.add_partition(topic, partition);
        }
        let list = consumer
            .committed_offsets(list, Duration::from_millis(self.request_timeout_ms))
            .map_err(|e| map_consume_error(&e, Some(topic)))?;
        let mut out = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let offset = match list.find_partition(topic, partition) {
                Some(elem) => {
                    elem.error().map_err(|e| map_consume_error(&e, Some(topic)))?;
                    match elem.offset() {
                        Offset::Offset(n) if n >= 0 => Some(n),
                        _ => None,
                    }
                }
                None => None,
            };
            out.push((partition, offset));
        }
        Ok(out)
    }

    /// Hands an event to the async side; waits while its queue is full
    /// (never inside a runtime, never while stopping).
    fn send(&self, event: MemberEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                if self.stopping() || tokio::runtime::Handle::try_current().is_ok() {
                    tracing::error!(group = %self.group_id, ?event, "group event queue is full; event dropped");
                } else {
                    let _ = self.events.blocking_send(event);
                }
            }
        }
    }

    /// Blocks the rebalance callback until the caller is done with
    /// revocation `seq` (its next poll), the consumer stops, or the wait
    /// limit passes. Commands are served meanwhile.
    fn wait_for_revoke_done(&self, consumer: &BaseConsumer<MemberContext>, seq: u64) {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.revoke_wait_max_ms);
        loop {
            if self.revocations_done.load(Ordering::Acquire) >= seq {
                tracing::debug!(
                    group = %self.group_id,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "revocation released by the caller; rejoining"
                );
                return;
            }
            if self.stopping() {
                tracing::debug!(group = %self.group_id, "revocation released: the consumer stops");
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(
                    group = %self.group_id,
                    revoke_wait_max_ms = self.revoke_wait_max_ms,
                    "the caller did not poll within revoke_wait_max_ms after a revocation: releasing the \
                     partitions now, its work for them may be unfinished"
                );
                return;
            }
            if let Some(command) = self.next_command(deadline - now) {
                self.serve(consumer, command);
            }
        }
    }

    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<i32> {
        let mut partitions: Vec<i32> = list
            .elements()
            .iter()
            .filter(|elem| {
                let ours = self.topic().is_none_or(|topic| elem.topic() == topic);
                if !ours {
                    tracing::warn!(group = %self.group_id, topic = elem.topic(), "rebalance names another topic");
                }
                ours
            })
            .map(|elem| elem.partition())
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }

    /// A partition of `offsets` that librdkafka no longer assigns to this
    /// member, if any.
    fn unassigned_of(&self, offsets: &TopicPartitionList) -> Option<i32> {
        let assigned = self
            .assigned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        offsets
            .elements()
            .iter()
            .map(|elem| elem.partition())
            .find(|partition| !assigned.contains(partition))
    }

    fn set_assigned(&self, partitions: Vec<i32>) -> Vec<i32> {
        let mut assigned = self
            .assigned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *assigned, partitions)
    }

    fn report_error(&self, error: &KafkaError) {
        if is_transient_connection_error(error) {
            tracing::debug!(group = %self.group_id, %error, "group member: transient error");
            return;
        }
        tracing::warn!(group = %self.group_id, %error, "group member error");
        let mapped = map_consume_error(error, self.topic());
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(MemberEvent::Error(mapped)) {
            tracing::warn!(group = %self.group_id, "group event queue is full; error not reported to the caller");
        }
    }
}

impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for MemberContext {
    /// Revocations: hand them over and hold the rebalance back until the
    /// caller is done (runs before librdkafka unassigns).
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = self.partitions_of(list);
        if self.stopping() || partitions.is_empty() {
            tracing::debug!(group = %self.group_id, ?partitions, "revocation while closing or of nothing");
            self.set_assigned(Vec::new());
            return;
        }
        if consumer.assignment_lost() {
            // Refuse commits at once: others may own the partitions already.
            self.set_assigned(Vec::new());
            tracing::warn!(group = %self.group_id, ?partitions, "assignment lost");
            self.send(MemberEvent::Lost(partitions));
            return;
        }
        let seq = self.revocations.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(group = %self.group_id, ?partitions, seq, "partitions revoked; waiting for the caller");
        self.send(MemberEvent::Revoked { partitions, seq });
        // Commits for the revoked partitions are served while waiting.
        self.wait_for_revoke_done(consumer, seq);
        self.set_assigned(Vec::new());
    }

    /// Assignments: pause everything (the member never fetches) and hand
    /// them over.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(group = %self.group_id, %error, "pausing the member's partitions failed");
                }
                let partitions = self.partitions_of(list);
                self.set_assigned(partitions.clone());
                if self.stopping() {
                    return;
                }
                let generation = self.assignments.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(group = %self.group_id, generation, ?partitions, "partitions assigned");
                self.send(MemberEvent::Assigned {
                    generation,
                    partitions,
                });
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                // rust-rdkafka unassigns everything after a rebalance error.
                tracing::error!(group = %self.group_id, %error, "rebalance error; the assignment is dropped");
                let lost = self.set_assigned(Vec::new());
                if !lost.is_empty() && !self.stopping() {
                    self.send(MemberEvent::Lost(lost));
                }
            }
        }
    }
}

/// Maps a commit failure; generation and membership errors are
/// [`ConsumeError::Fenced`].
fn map_commit_error(error: &KafkaError, topic: Option<&str>) -> ConsumeError {
    match error.rdkafka_error_code() {
        Some(
            code @ (RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::FencedMemberEpoch
            | RDKafkaErrorCode::StaleMemberEpoch
            | RDKafkaErrorCode::AssignmentLost),
        ) => ConsumeError::Fenced(format!("the broker refused the commit: {code}")),
        _ => map_consume_error(error, topic),
    }
}

/// The member thread: serves commands and polls the member until asked to
/// stop, then closes it (LeaveGroup).
fn run_member(consumer: BaseConsumer<MemberContext>, exited: oneshot::Sender<u64>) {
    let context = consumer.context().clone();
    let poll_wait = Duration::from_millis(MEMBER_POLL_MS);
    while !context.stopping() {
        match consumer.poll(poll_wait) {
            Some(Ok(message)) => {
                use rdkafka::message::Message;
                tracing::trace!(
                    group = %context.group_id,
                    partition = message.partition(),
                    offset = message.offset(),
                    "the member fetched a record (partitions are paused); dropped"
                );
            }
            Some(Err(error)) => context.report_error(&error),
            None => {}
        }
        for _ in 0..MEMBER_COMMANDS_PER_TURN_MAX {
            if context.stopping() {
                break;
            }
            let Some(command) = context.queued_command() else {
                break;
            };
            context.serve(&consumer, command);
        }
    }
    let started = Instant::now();
    // librdkafka's close: revokes (the callback returns at once), commits
    // nothing (auto commit is off), sends LeaveGroup.
    drop(consumer);
    let close_ms = started.elapsed().as_millis() as u64;
    tracing::info!(group = %context.group_id, close_ms, "group member closed");
    let _ = exited.send(close_ms);
}

/// The running member thread.
struct MemberHandle {
    commands: std_mpsc::SyncSender<MemberCommand>,
    stop: Arc<AtomicBool>,
    exited: Option<oneshot::Receiver<u64>>,
}

impl MemberHandle {
    fn send(&self, command: MemberCommand) -> Result<(), ConsumeError> {
        self.commands.try_send(command).map_err(|error| match error {
            std_mpsc::TrySendError::Full(_) => {
                ConsumeError::Unavailable("the group member's command queue is full".into())
            }
            std_mpsc::TrySendError::Disconnected(_) => ConsumeError::Other("the group member stopped".into()),
        })
    }

    /// Asks the thread to stop (it closes the member); returns at once.
    fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.commands.try_send(MemberCommand::Stop);
    }
}

/// A [`GroupConsumer`] backed by librdkafka: a group member for membership
/// and commits, the assign-based [`KafkaConsumer`] for records. See the
/// module docs.
pub struct KafkaGroupConsumer {
    group_id: String,
    group_config: KafkaGroupConfig,
    /// The member before [`GroupConsumer::subscribe`] starts its thread.
    idle_member: Option<BaseConsumer<MemberContext>>,
    member: Option<MemberHandle>,
    /// Where a new member thread's commands go (taken by subscribe).
    command_sender: Option<std_mpsc::SyncSender<MemberCommand>>,
    stop: Arc<AtomicBool>,
    events: mpsc::Receiver<MemberEvent>,
    /// How data consumers reach the broker.
    client_config: KafkaClientConfig,
    /// The data consumer of the sought partitions (none before the first
    /// seek of an assignment).
    data: Option<KafkaConsumer>,
    /// Whether records are fetched (`set_fetching`); the membership is kept
    /// either way.
    fetching: bool,
    topic: Option<String>,
    owned: BTreeSet<i32>,
    /// Next offset to deliver of every sought partition: exactly the
    /// partitions of the data consumer.
    positions: BTreeMap<i32, i64>,
    /// A revocation handed out and not yet finished by a poll.
    pending_revoke: Option<u64>,
    left: bool,
    request_timeout_ms: u64,
}

impl fmt::Debug for KafkaGroupConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaGroupConsumer")
            .field("group_id", &self.group_id)
            .field("group_config", &self.group_config)
            .field("topic", &self.topic)
            .field("owned", &self.owned)
            .field("positions", &self.positions)
            .field("pending_revoke", &self.pending_revoke)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl KafkaGroupConsumer {
    /// Creates a member of consumer group `group_id` (not yet joined: see
    /// [`GroupConsumer::subscribe`]). `config.properties` may not set
    /// [`CONSUMER_PROTECTED_PROPERTIES`] or
    /// [`GROUP_MEMBER_PROTECTED_PROPERTIES`]. Must be called inside a tokio
    /// runtime.
    pub fn new(
        config: &KafkaClientConfig,
        group_id: &str,
        group_config: KafkaGroupConfig,
    ) -> Result<Self, KafkaSetupError> {
        if group_id.trim().is_empty() {
            return Err(KafkaSetupError::Config("group id is empty".into()));
        }
        group_config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KafkaSetupError::NoRuntime);
        }
        let protected: Vec<&str> = CONSUMER_PROTECTED_PROPERTIES
            .iter()
            .chain(GROUP_MEMBER_PROTECTED_PROPERTIES)
            .copied()
            .collect();
        let mut client_config = config.client_config(CONSUMER_DEFAULTS, &protected)?;
        for (key, value) in GROUP_MEMBER_SETTINGS {
            client_config.set(*key, *value);
        }
        client_config
            .set("group.id", group_id)
            .set("session.timeout.ms", group_config.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                group_config.heartbeat_interval_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                group_config.max_poll_interval_ms.to_string(),
            );

        let (event_sender, events) = mpsc::channel(MEMBER_EVENT_QUEUE_MAX);
        let (command_sender, command_receiver) = std_mpsc::sync_channel(MEMBER_COMMAND_QUEUE_MAX);
        let stop = Arc::new(AtomicBool::new(false));
        let context = MemberContext {
            group_id: group_id.to_string(),
            topic: OnceLock::new(),
            events: event_sender,
            commands: Mutex::new(command_receiver),
            stop: stop.clone(),
            revoke_wait_max_ms: group_config.revoke_wait_max_ms,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            assignments: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
            revocations_done: AtomicU64::new(0),
            assigned: Mutex::new(Vec::new()),
        };
        let member: BaseConsumer<MemberContext> = client_config
            .create_with_context(context)
            .map_err(|e| config.setup_error(e))?;
        // Checks that data consumers can be created with this configuration.
        let data = KafkaConsumer::new(config, group_id)?;
        Ok(Self {
            group_id: group_id.to_string(),
            group_config,
            idle_member: Some(member),
            member: None,
            command_sender: Some(command_sender),
            stop,
            events,
            client_config: config.clone(),
            data: Some(data),
            fetching: true,
            topic: None,
            owned: BTreeSet::new(),
            positions: BTreeMap::new(),
            pending_revoke: None,
            left: false,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
        })
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The membership timing.
    pub fn group_config(&self) -> KafkaGroupConfig {
        self.group_config
    }

    fn subscribed_topic(&self) -> Result<&str, ConsumeError> {
        if self.left {
            return Err(ConsumeError::Other("this member left its group".into()));
        }
        self.topic
            .as_deref()
            .ok_or_else(|| ConsumeError::Other("not subscribed: call subscribe first".into()))
    }

    /// A new data consumer, with nothing assigned.
    fn new_data_consumer(&self) -> Result<KafkaConsumer, ConsumeError> {
        KafkaConsumer::new(&self.client_config, &self.group_id)
            .map_err(|e| ConsumeError::Other(format!("creating the data consumer: {e}")))
    }

    /// Drops the data consumer; its close (which waits for its fetchers to
    /// stop) runs on the blocking pool.
    fn retire_data(&mut self) {
        let Some(old) = self.data.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || drop(old));
            }
            Err(_) => drop(old),
        }
    }

    /// Replaces the data consumer by one reading every sought partition from
    /// its next offset. A data consumer's partitions are only ever added to,
    /// never removed or moved (see [`KafkaConsumer::add_partitions`] for the
    /// librdkafka bug this avoids).
    fn restart_data(&mut self) -> Result<(), ConsumeError> {
        self.retire_data();
        if self.positions.is_empty() {
            return Ok(());
        }
        let topic = self.subscribed_topic()?.to_string();
        let starts: Vec<(i32, StartOffset)> = self
            .positions
            .iter()
            .map(|(&partition, &offset)| (partition, StartOffset::Offset(offset)))
            .collect();
        let mut data = self.new_data_consumer()?;
        data.add_partitions(&topic, &starts)?;
        self.data = Some(data);
        Ok(())
    }

    /// Adds one newly sought partition to the data consumer.
    fn add_to_data(&mut self, partition: i32, offset: i64) -> Result<(), ConsumeError> {
        let topic = self.subscribed_topic()?.to_string();
        let mut data = match self.data.take() {
            Some(data) => data,
            None => self.new_data_consumer()?,
        };
        let added = data.add_partitions(&topic, &[(partition, StartOffset::Offset(offset))]);
        self.data = Some(data);
        added
    }

    /// Forgets every owned partition and stops reading.
    fn release_all(&mut self) {
        self.owned.clear();
        if !self.positions.is_empty() {
            self.positions.clear();
            self.retire_data();
        }
    }

    /// The caller polled again after a revocation: the partitions are gone,
    /// and librdkafka may rejoin.
    fn finish_revoke(&mut self) {
        let Some(seq) = self.pending_revoke.take() else {
            return;
        };
        self.release_all();
        if let Some(member) = &self.member
            && let Err(error) = member.send(MemberCommand::RevokeDone(seq))
        {
            tracing::warn!(group = %self.group_id, %error, "could not release the revocation");
        }
    }

    fn on_member_event(&mut self, event: MemberEvent) -> Result<GroupEvent, ConsumeError> {
        match event {
            MemberEvent::Assigned {
                generation,
                partitions,
            } => {
                // Assigned partitions deliver nothing until sought.
                self.release_all();
                self.owned = partitions.iter().copied().collect();
                Ok(GroupEvent::Assigned {
                    generation,
                    partitions,
                })
            }
            MemberEvent::Revoked { partitions, seq } => {
                // Still owned until the next poll.
                self.pending_revoke = Some(seq);
                Ok(GroupEvent::Revoked(partitions))
            }
            MemberEvent::Lost(partitions) => {
                self.release_all();
                Ok(GroupEvent::Lost(partitions))
            }
            MemberEvent::Error(error) => Err(error),
        }
    }

    /// Keeps the records of owned, sought partitions at or after their
    /// tracked position, and advances the positions.
    fn accept(&mut self, records: Vec<ConsumedRecord>) -> Vec<ConsumedRecord> {
        let topic = self.topic.clone().unwrap_or_default();
        let mut accepted = Vec::with_capacity(records.len());
        for record in records {
            let wanted = record.topic == topic && self.owned.contains(&record.partition);
            match self.positions.get_mut(&record.partition) {
                Some(next) if wanted && record.offset >= *next => {
                    if record.offset > *next {
                        tracing::debug!(
                            partition = record.partition,
                            expected = *next,
                            offset = record.offset,
                            "offsets skipped (deleted or compacted records)"
                        );
                    }
                    *next = record.offset + 1;
                    accepted.push(record);
                }
                _ => tracing::trace!(
                    partition = record.partition,
                    offset = record.offset,
                    "record of an unsought partition or below its position; dropped"
                ),
            }
        }
        accepted
    }

    /// Sends a command that answers and waits for the answer.
    async fn ask<T>(
        &self,
        what: &str,
        command: impl FnOnce(oneshot::Sender<Result<T, ConsumeError>>) -> MemberCommand,
    ) -> Result<T, ConsumeError> {
        self.subscribed_topic()?;
        let member = self
            .member
            .as_ref()
            .ok_or_else(|| ConsumeError::Other("the group member is not running".into()))?;
        let (reply, answer) = oneshot::channel();
        member.send(command(reply))?;
        let wait_ms = self.request_timeout_ms + REPLY_MARGIN_MS;
        match tokio::time::timeout(Duration::from_millis(wait_ms), answer).await {
            Err(_elapsed) => Err(ConsumeError::Unavailable(format!(
                "{what}: no answer from the group member within {wait_ms} ms"
            ))),
            Ok(Err(_closed)) => Err(ConsumeError::Other(format!("{what}: the group member stopped"))),
            Ok(Ok(result)) => result,
        }
    }
}

impl GroupConsumer for KafkaGroupConsumer {
    fn subscribe(&mut self, topic: &str) -> Result<(), ConsumeError> {
        validate_topic_name(topic).map_err(topic_error(topic))?;
        if self.left {
            return Err(ConsumeError::Other("this member left its group".into()));
        }
        if let Some(current) = &self.topic {
            if current == topic {
                return Ok(());
            }
            return Err(ConsumeError::Other(format!(
                "already subscribed to `{current}`; a member consumes one topic"
            )));
        }
        let (Some(member), Some(commands)) = (self.idle_member.take(), self.command_sender.take()) else {
            return Err(ConsumeError::Other("the group member is gone".into()));
        };
        if let Err(error) = member.subscribe(&[topic]) {
            self.idle_member = Some(member);
            self.command_sender = Some(commands);
            return Err(map_consume_error(&error, Some(topic)));
        }
        let _ = member.context().topic.set(topic.to_string());
        let (exited_sender, exited) = oneshot::channel();
        std::thread::Builder::new()
            .name("kafka-group".into())
            .spawn(move || run_member(member, exited_sender))
            .map_err(|e| ConsumeError::Other(format!("starting the group member thread: {e}")))?;
        self.member = Some(MemberHandle {
            commands,
            stop: self.stop.clone(),
            exited: Some(exited),
        });
        self.topic = Some(topic.to_string());
        tracing::info!(group = %self.group_id, topic, "joining the consumer group");
        Ok(())
    }

    fn poll(&mut self, max_wait_ms: u64) -> LocalBoxFuture<'_, Result<GroupEvent, ConsumeError>> {
        async move {
            self.subscribed_topic()?;
            self.finish_revoke();
            match self.events.try_recv() {
                Ok(event) => return self.on_member_event(event),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(ConsumeError::Other("the group member stopped".into()));
                }
            }
            let wait = Duration::from_millis(max_wait_ms);
            if self.positions.is_empty() || self.data.is_none() || !self.fetching {
                return match tokio::time::timeout(wait, self.events.recv()).await {
                    Err(_elapsed) => Ok(GroupEvent::Records(Vec::new())),
                    Ok(Some(event)) => self.on_member_event(event),
                    Ok(None) => Err(ConsumeError::Other("the group member stopped".into())),
                };
            }
            enum Outcome {
                Event(Option<MemberEvent>),
                Records(Result<Vec<ConsumedRecord>, ConsumeError>),
            }
            let outcome = {
                let events = &mut self.events;
                let Some(data) = self.data.as_mut() else {
                    return Ok(GroupEvent::Records(Vec::new()));
                };
                tokio::select! {
                    biased;
                    event = events.recv() => Outcome::Event(event),
                    // Cancel-safe: the data consumer's poll awaits only
                    // before it takes its first record.
                    records = data.poll(max_wait_ms) => Outcome::Records(records),
                }
            };
            match outcome {
                Outcome::Event(Some(event)) => self.on_member_event(event),
                Outcome::Event(None) => Err(ConsumeError::Other("the group member stopped".into())),
                Outcome::Records(records) => Ok(GroupEvent::Records(self.accept(records?))),
            }
        }
        .boxed_local()
    }

    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), ConsumeError> {
        self.subscribed_topic()?;
        if !self.owned.contains(&partition) {
            return Err(ConsumeError::Other(format!(
                "cannot seek partition {partition}: not owned by this member (owned: {:?})",
                self.owned
            )));
        }
        if offset < 0 {
            return Err(ConsumeError::Other(format!("negative offset {offset}")));
        }
        match self.positions.insert(partition, offset) {
            None => {
                let added = self.add_to_data(partition, offset);
                if added.is_err() {
                    self.positions.remove(&partition);
                }
                added
            }
            Some(previous) if previous == offset => Ok(()),
            // Moving a partition's position: a new data consumer.
            Some(_) => self.restart_data(),
        }
    }

    fn committed(
        &mut self,
        partitions: &[i32],
    ) -> LocalBoxFuture<'_, Result<CommittedOffsets, ConsumeError>> {
        let partitions = partitions.to_vec();
        async move {
            if let Some(&negative) = partitions.iter().find(|p| **p < 0) {
                return Err(ConsumeError::Other(format!("negative partition {negative}")));
            }
            if partitions.is_empty() {
                return Ok(Vec::new());
            }
            let unique: Vec<i32> = partitions
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let found = self
                .ask("reading committed offsets", |reply| MemberCommand::Committed {
                    partitions: unique,
                    reply,
                })
                .await?;
            let by_partition: BTreeMap<i32, Option<i64>> = found.into_iter().collect();
            Ok(partitions
                .iter()
                .map(|p| (*p, by_partition.get(p).copied().flatten()))
                .collect())
        }
        .boxed_local()
    }

    fn commit(&mut self, next_offsets: &[(i32, i64)]) -> LocalBoxFuture<'_, Result<(), ConsumeError>> {
        let next_offsets = next_offsets.to_vec();
        async move {
            let topic = self.subscribed_topic()?.to_string();
            if next_offsets.is_empty() {
                return Ok(());
            }
            let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
            for (partition, offset) in next_offsets {
                if !self.owned.contains(&partition) {
                    return Err(ConsumeError::Fenced(format!(
                        "partition {partition} is not owned by this member (owned: {:?})",
                        self.owned
                    )));
                }
                if offset < 0 {
                    return Err(ConsumeError::Other(format!(
                        "cannot commit offset {offset} of partition {partition}"
                    )));
                }
                offsets.insert(partition, offset);
            }
            let mut list = TopicPartitionList::with_capacity(offsets.len());
            for (partition, offset) in offsets {
                list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| ConsumeError::Other(e.to_string()))?;
            }
            self.ask("committing offsets", |reply| MemberCommand::Commit {
                offsets: list,
                reply,
            })
            .await
        }
        .boxed_local()
    }

    fn leave(&mut self) -> LocalBoxFuture<'_, ()> {
        async move {
            self.left = true;
            self.pending_revoke = None;
            self.owned.clear();
            self.positions.clear();
            self.retire_data();
            let Some(mut member) = self.member.take() else {
                return;
            };
            member.request_stop();
            let Some(exited) = member.exited.take() else {
                return;
            };
            let started = Instant::now();
            match tokio::time::timeout(Duration::from_millis(LEAVE_WAIT_MAX_MS), exited).await {
                Ok(Ok(close_ms)) => tracing::info!(
                    group = %self.group_id,
                    close_ms,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "left the consumer group"
                ),
                Ok(Err(_)) => {
                    tracing::warn!(group = %self.group_id, "the group member thread ended abnormally")
                }
                Err(_) => tracing::warn!(
                    group = %self.group_id,
                    LEAVE_WAIT_MAX_MS,
                    "the group member did not close in time; it goes on closing in the background"
                ),
            }
        }
        .boxed_local()
    }

    fn owned(&self) -> Vec<i32> {
        self.owned.iter().copied().collect()
    }

    fn set_fetching(&mut self, enabled: bool) {
        // Records librdkafka prefetched meanwhile stay queued in the data
        // consumer and are delivered, in order, once fetching resumes.
        self.fetching = enabled;
    }
}

impl Drop for KafkaGroupConsumer {
    fn drop(&mut self) {
        if let Some(member) = &self.member {
            tracing::debug!(group = %self.group_id, "dropped without leave: the member closes in the background");
            member.request_stop();
        }
        self.retire_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaClientConfig {
        KafkaClientConfig::new("127.0.0.1:1")
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let defaults = KafkaGroupConfig::default();
        defaults.validate().unwrap();
        assert_eq!(defaults.session_timeout_ms, 30_000);
        assert_eq!(defaults.heartbeat_interval_ms, 3_000);
        assert_eq!(defaults.max_poll_interval_ms, 300_000);
        assert_eq!(defaults.revoke_wait_max_ms, 120_000);
        let parsed: KafkaGroupConfig = toml::from_str("session_timeout_ms = 6000").unwrap();
        assert_eq!(
            parsed,
            KafkaGroupConfig {
                session_timeout_ms: 6_000,
                ..defaults
            }
        );
        assert!(toml::from_str::<KafkaGroupConfig>("bogus = 1").is_err());
    }

    #[test]
    fn invalid_timing_is_refused() {
        let base = KafkaGroupConfig::default();
        let cases = [
            KafkaGroupConfig {
                session_timeout_ms: 999,
                heartbeat_interval_ms: 100,
                ..base
            },
            KafkaGroupConfig {
                session_timeout_ms: SESSION_TIMEOUT_MAX_MS + 1,
                max_poll_interval_ms: SESSION_TIMEOUT_MAX_MS + 1,
                ..base
            },
            KafkaGroupConfig {
                heartbeat_interval_ms: 0,
                ..base
            },
            KafkaGroupConfig {
                heartbeat_interval_ms: base.session_timeout_ms,
                ..base
            },
            KafkaGroupConfig {
                max_poll_interval_ms: base.session_timeout_ms - 1,
                revoke_wait_max_ms: 1,
                ..base
            },
            KafkaGroupConfig {
                max_poll_interval_ms: MAX_POLL_INTERVAL_MAX_MS + 1,
                ..base
            },
            KafkaGroupConfig {
                revoke_wait_max_ms: 0,
                ..base
            },
            KafkaGroupConfig {
                revoke_wait_max_ms: base.max_poll_interval_ms - REVOKE_WAIT_MARGIN_MS + 1,
                ..base
            },
        ];
        for case in cases {
            assert!(
                matches!(case.validate(), Err(KafkaSetupError::Config(_))),
                "{case:?}"
            );
        }
        let tight = KafkaGroupConfig {
            session_timeout_ms: 6_000,
            heartbeat_interval_ms: 500,
            max_poll_interval_ms: 6_000,
            revoke_wait_max_ms: 1_000,
        };
        tight.validate().unwrap();
    }

    #[tokio::test]
    async fn protected_properties_are_refused() {
        let keys = CONSUMER_PROTECTED_PROPERTIES
            .iter()
            .chain(GROUP_MEMBER_PROTECTED_PROPERTIES);
        for key in keys {
            let config = config().with_property(*key, "1");
            let error = KafkaGroupConsumer::new(&config, "g", KafkaGroupConfig::default()).unwrap_err();
            assert_eq!(error, KafkaSetupError::ProtectedProperty(key.to_string()));
        }
        let config = config().with_property("fetch.wait.max.ms", "10");
        assert!(KafkaGroupConsumer::new(&config, "g", KafkaGroupConfig::default()).is_ok());
    }

    #[test]
    fn setup_errors() {
        assert_eq!(
            KafkaGroupConsumer::new(&config(), "g", KafkaGroupConfig::default()).unwrap_err(),
            KafkaSetupError::NoRuntime
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(matches!(
                KafkaGroupConsumer::new(&config(), " ", KafkaGroupConfig::default()),
                Err(KafkaSetupError::Config(_))
            ));
            let bad = KafkaGroupConfig {
                revoke_wait_max_ms: 0,
                ..KafkaGroupConfig::default()
            };
            assert!(matches!(
                KafkaGroupConsumer::new(&config(), "g", bad),
                Err(KafkaSetupError::Config(_))
            ));
        });
    }

    /// Without a broker: the calls that need no answer from it behave, and
    /// leave and drop return promptly.
    #[tokio::test]
    async fn without_a_broker_misuse_is_refused_and_stopping_is_prompt() {
        let mut consumer = KafkaGroupConsumer::new(&config(), "g", KafkaGroupConfig::default()).unwrap();
        assert!(matches!(consumer.poll(0).await, Err(ConsumeError::Other(_))));
        assert!(matches!(
            consumer.commit(&[(0, 1)]).await,
            Err(ConsumeError::Other(_))
        ));
        assert!(matches!(
            consumer.subscribe("bad topic"),
            Err(ConsumeError::UnknownTopic(_))
        ));
        consumer.subscribe("t").unwrap();
        consumer.subscribe("t").unwrap();
        assert!(consumer.subscribe("u").is_err());
        assert!(consumer.owned().is_empty());
        assert!(consumer.seek(0, 0).is_err(), "partition 0 is not owned");
        assert!(matches!(
            consumer.commit(&[(0, 1)]).await,
            Err(ConsumeError::Fenced(_))
        ));
        assert_eq!(consumer.commit(&[]).await, Ok(()));
        assert_eq!(consumer.poll(50).await.unwrap(), GroupEvent::Records(Vec::new()));
        let started = Instant::now();
        consumer.leave().await;
        let leave_ms = started.elapsed().as_millis();
        assert!(
            leave_ms < u128::from(LEAVE_WAIT_MAX_MS),
            "leave took {leave_ms} ms"
        );
        assert!(consumer.poll(0).await.is_err());
        assert!(consumer.subscribe("t").is_err());

        let mut dropped = KafkaGroupConsumer::new(&config(), "g", KafkaGroupConfig::default()).unwrap();
        dropped.subscribe("t").unwrap();
        let started = Instant::now();
        drop(dropped);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
