//! The consumer-group coordinator: membership, rebalances and generations,
//! driven by [`BrokerCore`](super::BrokerCore) (requests and `on_tick`).
//!
//! A group is keyed by its id and consumes one topic. It is either
//! **Stable** (generation `g`, every member holding its block of partitions
//! of `g`) or **Rebalancing** (until a deadline). The eager protocol:
//!
//! 1. A new member (JoinGroup without a member id) gets a durable unique id
//!    (`member-{n}`, `n` from the broker state's never-reissued id counter,
//!    so ids stay unique across broker restarts) and the answer `Pending`;
//!    it must re-send JoinGroup with that id.
//! 2. Any membership change (a new member, a leave, a session expiry, a
//!    known member re-joining while Stable with different timeouts) starts a
//!    rebalance: the deadline is now + the largest rebalance timeout of the
//!    members, and every member must re-send JoinGroup. Heartbeats are
//!    answered `RebalanceInProgress` meanwhile.
//! 3. When every current member has re-joined, or at the deadline (removing
//!    those that did not), the generation is incremented once and the
//!    partitions assigned (range assignor: members sorted by id, contiguous
//!    blocks, earlier members get the extra partitions, members beyond the
//!    partition count get none). The group is Stable again; the members'
//!    JoinGroups now answer `Joined` with the new generation.
//!
//! The generation moves at the end of a rebalance, not at its start: during
//! the rebalance the old generation is still current, so a member told
//! `RebalanceInProgress` can still commit for its (revoked, not yet
//! reassigned) partitions. Once the new generation exists, commits of the
//! old one are refused with `IllegalGeneration`, and those of removed
//! members with `UnknownMemberId`.
//!
//! A member whose last JoinGroup, Heartbeat or commit is older than its
//! session timeout is removed (evaluated on every request to its group and
//! on every tick). Membership lives in memory only: after a broker restart
//! every group is empty and members learn it from `UnknownMemberId`.
//! Everything is bounded: groups, members per group, id lengths, timeouts.

use crate::digest::Digest;
use crate::protocol::{ErrorCode, JoinOutcome};
use std::collections::BTreeMap;

/// Longest group id accepted.
pub const MAX_GROUP_ID_BYTES: usize = 255;
/// Longest member id accepted (issued ids are much shorter).
pub const MAX_MEMBER_ID_BYTES: usize = 64;

/// The coordinator's limits (from the broker configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupLimits {
    /// Most groups with members.
    pub max_groups: usize,
    /// Most members per group.
    pub max_members_per_group: usize,
    /// Shortest session timeout accepted.
    pub min_session_timeout_ms: u64,
    /// Longest session timeout accepted.
    pub max_session_timeout_ms: u64,
    /// Longest rebalance timeout accepted.
    pub max_rebalance_timeout_ms: u64,
}

/// Counters of what the coordinator did (since the broker started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// New members admitted (member ids issued).
    pub members_joined: u64,
    /// Rebalances started.
    pub rebalances_started: u64,
    /// Rebalances completed (new generations).
    pub rebalances_completed: u64,
    /// Members that left with LeaveGroup.
    pub members_left: u64,
    /// Members removed because their session timed out.
    pub members_expired: u64,
    /// Members removed because they did not re-join before a rebalance's
    /// deadline.
    pub members_dropped_at_deadline: u64,
    /// Group commits refused (`UnknownMemberId` or `IllegalGeneration`).
    pub commits_fenced: u64,
}

/// A read-only picture of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Group id.
    pub group: String,
    /// The topic it consumes.
    pub topic: String,
    /// The current generation (0 before the first rebalance completed).
    pub generation: u64,
    /// Whether a rebalance is in progress.
    pub rebalancing: bool,
    /// Current member ids, ascending.
    pub members: Vec<String>,
    /// Partitions per member in the current generation, members ascending
    /// (members that joined since have no entry).
    pub assignment: Vec<(String, Vec<i32>)>,
}

/// A JoinGroup, as the coordinator sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JoinRequest<'a> {
    /// Group id.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// The topic's partition count.
    pub partitions: u32,
    /// The member's id, `None` for a new member.
    pub member_id: Option<&'a str>,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    last_seen_ms: u64,
    /// Re-joined during the current rebalance.
    joined: bool,
    /// The generation whose assignment includes this member.
    generation: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stable,
    Rebalancing { deadline_ms: u64 },
}

#[derive(Debug, Clone)]
struct Group {
    topic: String,
    partitions: u32,
    generation: u64,
    phase: Phase,
    members: BTreeMap<String, Member>,
    /// Partitions per member of the current generation (entries of removed
    /// members are dropped at once).
    assignment: BTreeMap<String, Vec<i32>>,
}

impl Group {
    fn new(topic: &str, partitions: u32) -> Self {
        Self {
            topic: topic.to_string(),
            partitions,
            generation: 0,
            phase: Phase::Stable,
            members: BTreeMap::new(),
            assignment: BTreeMap::new(),
        }
    }

    fn joined_outcome(&self, member_id: &str) -> JoinOutcome {
        debug_assert!(matches!(self.phase, Phase::Stable));
        JoinOutcome::Joined {
            member_id: member_id.to_string(),
            generation: self.generation,
            partitions: self.assignment.get(member_id).cloned().unwrap_or_default(),
        }
    }

    /// Starts a rebalance if the group is Stable; an ongoing one keeps its
    /// deadline.
    fn start_rebalance(&mut self, now_ms: u64, stats: &mut GroupStats) {
        if self.phase != Phase::Stable {
            return;
        }
        let timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.phase = Phase::Rebalancing {
            deadline_ms: now_ms.saturating_add(timeout_ms),
        };
        for member in self.members.values_mut() {
            member.joined = false;
        }
        stats.rebalances_started += 1;
    }

    /// Removes members whose session timed out; a removal starts a
    /// rebalance.
    fn expire(&mut self, now_ms: u64, stats: &mut GroupStats) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms)
            .map(|(id, _)| id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            tracing::debug!(member = %id, "member session expired");
            self.members.remove(id);
            self.assignment.remove(id);
            stats.members_expired += 1;
        }
        if !self.members.is_empty() {
            self.start_rebalance(now_ms, stats);
        }
    }

    /// Completes a rebalance once every member re-joined, or at its
    /// deadline without those that did not.
    fn advance(&mut self, now_ms: u64, stats: &mut GroupStats) {
        let Phase::Rebalancing { deadline_ms } = self.phase else {
            return;
        };
        let all_joined = self.members.values().all(|m| m.joined);
        if !all_joined && now_ms < deadline_ms {
            return;
        }
        if !all_joined {
            let late: Vec<String> = self
                .members
                .iter()
                .filter(|(_, m)| !m.joined)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &late {
                tracing::debug!(member = %id, "member did not re-join before the rebalance deadline");
                self.members.remove(id);
                self.assignment.remove(id);
                stats.members_dropped_at_deadline += 1;
            }
        }
        if self.members.is_empty() {
            return; // the coordinator drops the group
        }
        self.complete(stats);
    }

    fn complete(&mut self, stats: &mut GroupStats) {
        self.generation += 1;
        let ids: Vec<&String> = self.members.keys().collect();
        self.assignment = range_assign(&ids, self.partitions);
        for member in self.members.values_mut() {
            member.generation = Some(self.generation);
            member.joined = false;
        }
        self.phase = Phase::Stable;
        stats.rebalances_completed += 1;
        tracing::debug!(generation = self.generation, assignment = ?self.assignment, "rebalance completed");
        debug_assert_eq!(
            self.assignment.values().map(Vec::len).sum::<usize>(),
            self.partitions as usize
        );
    }

    fn digest_into(&self, digest: &mut Digest) {
        digest
            .field(self.topic.as_bytes())
            .u64(u64::from(self.partitions))
            .u64(self.generation);
        match self.phase {
            Phase::Stable => digest.u64(0),
            Phase::Rebalancing { deadline_ms } => digest.u64(1).u64(deadline_ms),
        };
        digest.u64(self.members.len() as u64);
        for (id, member) in &self.members {
            digest
                .field(id.as_bytes())
                .u64(member.session_timeout_ms)
                .u64(member.rebalance_timeout_ms)
                .u64(member.last_seen_ms)
                .u64(u64::from(member.joined))
                .u64(member.generation.unwrap_or(u64::MAX));
        }
        digest.u64(self.assignment.len() as u64);
        for (id, partitions) in &self.assignment {
            digest.field(id.as_bytes()).u64(partitions.len() as u64);
            for partition in partitions {
                digest.i64(i64::from(*partition));
            }
        }
    }
}

/// The range assignor: members in the given (ascending) order each get a
/// contiguous block; the first `partitions % members` get one extra.
fn range_assign(members: &[&String], partitions: u32) -> BTreeMap<String, Vec<i32>> {
    assert!(!members.is_empty(), "a rebalance completes with members");
    let total = partitions as usize;
    let base = total / members.len();
    let extra = total % members.len();
    let mut next = 0_usize;
    let mut assignment = BTreeMap::new();
    for (index, id) in members.iter().enumerate() {
        let count = base + usize::from(index < extra);
        let block: Vec<i32> = (next..next + count).map(|p| p as i32).collect();
        next += count;
        assignment.insert((*id).clone(), block);
    }
    assert_eq!(next, total, "every partition is assigned exactly once");
    assignment
}

/// Every group of the broker.
#[derive(Debug)]
pub(crate) struct Coordinator {
    limits: GroupLimits,
    groups: BTreeMap<String, Group>,
    stats: GroupStats,
}

impl Coordinator {
    /// No groups.
    pub(crate) fn new(limits: GroupLimits) -> Self {
        assert!(limits.max_groups > 0 && limits.max_members_per_group > 0);
        assert!(limits.min_session_timeout_ms <= limits.max_session_timeout_ms);
        Self {
            limits,
            groups: BTreeMap::new(),
            stats: GroupStats::default(),
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> GroupStats {
        self.stats
    }

    /// Whether no group has members.
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// A picture of one group, if it has members.
    pub(crate) fn view(&self, group: &str) -> Option<GroupView> {
        self.groups.get(group).map(|g| view_of(group, g))
    }

    /// Pictures of every group, by id.
    pub(crate) fn views(&self) -> Vec<GroupView> {
        self.groups.iter().map(|(id, g)| view_of(id, g)).collect()
    }

    /// Adds every group's state to `digest`.
    pub(crate) fn digest_into(&self, digest: &mut Digest) {
        digest.u64(self.groups.len() as u64);
        for (id, group) in &self.groups {
            digest.field(id.as_bytes());
            group.digest_into(digest);
        }
    }

    /// Expires sessions and ends overdue rebalances of every group.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            self.refresh(&id, now_ms);
        }
    }

    /// A JoinGroup; `issue_id` durably issues a fresh number for a new
    /// member's id (called at most once, after every check passed).
    pub(crate) fn join(
        &mut self,
        request: JoinRequest<'_>,
        now_ms: u64,
        issue_id: impl FnOnce() -> Result<u64, ErrorCode>,
    ) -> Result<JoinOutcome, ErrorCode> {
        check_group_id(request.group)?;
        if let Some(id) = request.member_id {
            check_member_id(id)?;
        }
        let session_ok = (self.limits.min_session_timeout_ms..=self.limits.max_session_timeout_ms)
            .contains(&request.session_timeout_ms);
        let rebalance_ok = (1..=self.limits.max_rebalance_timeout_ms).contains(&request.rebalance_timeout_ms);
        if !session_ok || !rebalance_ok || request.partitions == 0 {
            return Err(ErrorCode::InvalidRequest);
        }
        self.refresh(request.group, now_ms);
        match request.member_id {
            None => self.join_new(request, now_ms, issue_id),
            Some(member_id) => self.rejoin(request, member_id, now_ms),
        }
    }

    fn join_new(
        &mut self,
        request: JoinRequest<'_>,
        now_ms: u64,
        issue_id: impl FnOnce() -> Result<u64, ErrorCode>,
    ) -> Result<JoinOutcome, ErrorCode> {
        match self.groups.get(request.group) {
            Some(group) => {
                if group.topic != request.topic || group.members.len() >= self.limits.max_members_per_group {
                    return Err(ErrorCode::InvalidRequest);
                }
            }
            None => {
                if self.groups.len() >= self.limits.max_groups {
                    return Err(ErrorCode::InvalidRequest);
                }
            }
        }
        let member_id = format!("member-{}", issue_id()?);
        assert!(member_id.len() <= MAX_MEMBER_ID_BYTES);
        let group = self
            .groups
            .entry(request.group.to_string())
            .or_insert_with(|| Group::new(request.topic, request.partitions));
        let previous = group.members.insert(
            member_id.clone(),
            Member {
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                last_seen_ms: now_ms,
                joined: false,
                generation: None,
            },
        );
        assert!(previous.is_none(), "member ids are never reissued: {member_id}");
        self.stats.members_joined += 1;
        group.start_rebalance(now_ms, &mut self.stats);
        tracing::debug!(group = request.group, member = %member_id, "new member");
        Ok(JoinOutcome::Pending { member_id })
    }

    fn rejoin(
        &mut self,
        request: JoinRequest<'_>,
        member_id: &str,
        now_ms: u64,
    ) -> Result<JoinOutcome, ErrorCode> {
        let group = self
            .groups
            .get_mut(request.group)
            .ok_or(ErrorCode::UnknownMemberId)?;
        if group.topic != request.topic {
            return Err(ErrorCode::InvalidRequest);
        }
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(ErrorCode::UnknownMemberId)?;
        member.last_seen_ms = now_ms;
        let changed = member.session_timeout_ms != request.session_timeout_ms
            || member.rebalance_timeout_ms != request.rebalance_timeout_ms;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        if group.phase == Phase::Stable {
            assert_eq!(
                member.generation,
                Some(group.generation),
                "a Stable group's members are all in its generation"
            );
            if !changed {
                // Its view is current (a lost answer, a re-join after a
                // refused heartbeat): the same generation again.
                return Ok(group.joined_outcome(member_id));
            }
            group.start_rebalance(now_ms, &mut self.stats);
        }
        group
            .members
            .get_mut(member_id)
            .expect("the member was just found")
            .joined = true;
        group.advance(now_ms, &mut self.stats);
        let in_generation = group.members.get(member_id).and_then(|m| m.generation) == Some(group.generation);
        if group.phase == Phase::Stable && in_generation {
            Ok(group.joined_outcome(member_id))
        } else {
            Ok(JoinOutcome::Pending {
                member_id: member_id.to_string(),
            })
        }
    }

    /// A Heartbeat.
    pub(crate) fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: u64,
        now_ms: u64,
    ) -> Result<(), ErrorCode> {
        check_group_id(group_id)?;
        check_member_id(member_id)?;
        self.refresh(group_id, now_ms);
        let group = self.groups.get_mut(group_id).ok_or(ErrorCode::UnknownMemberId)?;
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(ErrorCode::UnknownMemberId)?;
        member.last_seen_ms = now_ms;
        if group.phase != Phase::Stable {
            return Err(ErrorCode::RebalanceInProgress);
        }
        if generation != group.generation || member.generation != Some(generation) {
            return Err(ErrorCode::IllegalGeneration);
        }
        Ok(())
    }

    /// A LeaveGroup: the member is removed and the others rebalance.
    pub(crate) fn leave(&mut self, group_id: &str, member_id: &str, now_ms: u64) -> Result<(), ErrorCode> {
        check_group_id(group_id)?;
        check_member_id(member_id)?;
        self.refresh(group_id, now_ms);
        let group = self.groups.get_mut(group_id).ok_or(ErrorCode::UnknownMemberId)?;
        group
            .members
            .remove(member_id)
            .ok_or(ErrorCode::UnknownMemberId)?;
        group.assignment.remove(member_id);
        self.stats.members_left += 1;
        tracing::debug!(group = group_id, member = member_id, "member left");
        if group.members.is_empty() {
            self.groups.remove(group_id);
        } else {
            group.start_rebalance(now_ms, &mut self.stats);
            group.advance(now_ms, &mut self.stats);
        }
        Ok(())
    }

    /// Whether a member of `generation` may commit offsets of `topic` for
    /// the group now (it also counts as a heartbeat).
    pub(crate) fn check_commit(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: u64,
        topic: &str,
        now_ms: u64,
    ) -> Result<(), ErrorCode> {
        check_group_id(group_id)?;
        check_member_id(member_id)?;
        self.refresh(group_id, now_ms);
        let result = match self.groups.get_mut(group_id) {
            None => Err(ErrorCode::UnknownMemberId),
            Some(group) => match group.members.get_mut(member_id) {
                None => Err(ErrorCode::UnknownMemberId),
                Some(member) => {
                    member.last_seen_ms = now_ms;
                    if generation != group.generation || member.generation != Some(generation) {
                        Err(ErrorCode::IllegalGeneration)
                    } else if group.topic != topic {
                        Err(ErrorCode::InvalidRequest)
                    } else {
                        Ok(())
                    }
                }
            },
        };
        if matches!(
            result,
            Err(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration)
        ) {
            self.stats.commits_fenced += 1;
        }
        result
    }

    /// Expires sessions and an overdue rebalance of one group; drops the
    /// group once it has no members.
    fn refresh(&mut self, group_id: &str, now_ms: u64) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        group.expire(now_ms, &mut self.stats);
        group.advance(now_ms, &mut self.stats);
        if group.members.is_empty() {
            tracing::debug!(group = group_id, "group has no members left");
            self.groups.remove(group_id);
        }
    }
}

fn view_of(id: &str, group: &Group) -> GroupView {
    GroupView {
        group: id.to_string(),
        topic: group.topic.clone(),
        generation: group.generation,
        rebalancing: group.phase != Phase::Stable,
        members: group.members.keys().cloned().collect(),
        assignment: group
            .assignment
            .iter()
            .map(|(id, partitions)| (id.clone(), partitions.clone()))
            .collect(),
    }
}

fn check_group_id(group: &str) -> Result<(), ErrorCode> {
    if group.is_empty() || group.len() > MAX_GROUP_ID_BYTES {
        return Err(ErrorCode::InvalidRequest);
    }
    Ok(())
}

fn check_member_id(member_id: &str) -> Result<(), ErrorCode> {
    if member_id.is_empty() || member_id.len() > MAX_MEMBER_ID_BYTES {
        return Err(ErrorCode::InvalidRequest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_assignor_gives_contiguous_blocks_extras_first() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let refs: Vec<&String> = ids.iter().collect();
        let assignment = range_assign(&refs, 8);
        assert_eq!(assignment["a"], vec![0, 1, 2]);
        assert_eq!(assignment["b"], vec![3, 4, 5]);
        assert_eq!(assignment["c"], vec![6, 7]);
        let assignment = range_assign(&refs, 2);
        assert_eq!(assignment["a"], vec![0]);
        assert_eq!(assignment["b"], vec![1]);
        assert_eq!(
            assignment["c"],
            Vec::<i32>::new(),
            "beyond the partition count: none"
        );
    }
}
