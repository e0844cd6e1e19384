//! The group side of the `LogConsumer` seam: a member of a consumer group,
//! given partitions by the group's coordinator and told when they move.
//!
//! Implementations: [`KafkaGroupConsumer`](super::kafka_group::KafkaGroupConsumer)
//! (librdkafka's group membership against a real broker) and the simulated
//! broker's group coordinator (in `soilstream-sim`). Both follow the eager
//! protocol: on every rebalance each member gives up all its partitions, then
//! receives its new assignment.
//!
//! The contract a stream processor builds its exactly-once protocol on:
//!
//! 1. [`GroupEvent::Assigned`] partitions deliver nothing until the caller
//!    [`seek`](GroupConsumer::seek)s them: the caller rebuilds its state for a
//!    partition first and then says where to resume.
//! 2. [`GroupEvent::Revoked`] partitions are still owned until the next
//!    [`poll`](GroupConsumer::poll): nobody else has them yet, commits for
//!    them are accepted. The caller finishes its work for them (waits for its
//!    outputs to be acknowledged, commits) before it polls again.
//! 3. [`GroupEvent::Lost`] partitions are already gone (the session expired
//!    or the generation was fenced): another member may own them now. The
//!    caller drops its work for them and must not commit.
//! 4. Records come only from sought partitions, in offset order per
//!    partition, starting at the sought offset.
//! 5. A commit from a member whose generation is over fails with
//!    [`ConsumeError::Fenced`] (where the broker checks generations).

use super::{ConsumeError, ConsumedRecord};
use futures::future::LocalBoxFuture;

/// Committed next offsets per partition (`None`: nothing committed).
pub type CommittedOffsets = Vec<(i32, Option<i64>)>;

/// What one [`GroupConsumer::poll`] brings.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEvent {
    /// These partitions are now this member's (in this generation); they
    /// deliver nothing until sought.
    Assigned {
        /// Generation of the group the assignment belongs to.
        generation: u64,
        /// The partitions, ascending.
        partitions: Vec<i32>,
    },
    /// These partitions are about to be released; still owned until the
    /// next poll.
    Revoked(Vec<i32>),
    /// These partitions were lost; others may own them already.
    Lost(Vec<i32>),
    /// Records of sought partitions (possibly none: the wait ended).
    Records(Vec<ConsumedRecord>),
}

/// A member of one consumer group consuming one topic.
pub trait GroupConsumer {
    /// Starts membership of the group (given at construction) for `topic`.
    /// Assignments arrive through [`GroupConsumer::poll`].
    fn subscribe(&mut self, topic: &str) -> Result<(), ConsumeError>;
    /// Waits up to `max_wait_ms` for the next event (group changes first).
    fn poll(&mut self, max_wait_ms: u64) -> LocalBoxFuture<'_, Result<GroupEvent, ConsumeError>>;
    /// Sets where an assigned partition resumes and starts delivering it.
    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), ConsumeError>;
    /// The group's committed next offsets of these partitions (`None`: none).
    fn committed(&mut self, partitions: &[i32])
    -> LocalBoxFuture<'_, Result<CommittedOffsets, ConsumeError>>;
    /// Commits next offsets of owned partitions, fenced by this member's
    /// generation.
    fn commit(&mut self, next_offsets: &[(i32, i64)]) -> LocalBoxFuture<'_, Result<(), ConsumeError>>;
    /// Leaves the group (a clean stop): the others rebalance at once.
    fn leave(&mut self) -> LocalBoxFuture<'_, ()>;
    /// The partitions owned now, ascending.
    fn owned(&self) -> Vec<i32>;
    /// Stops (`false`) or resumes (`true`) fetching records while the
    /// membership is kept alive (polls still heartbeat and report group
    /// changes): back-pressure while outputs wait for acknowledgements.
    fn set_fetching(&mut self, enabled: bool);
}
