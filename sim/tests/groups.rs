//! Consumer groups over turmoil TCP: `SimGroupConsumer` members of one group
//! against the simulated broker's coordinator, with joins, crashes,
//! partitions and stalls.

mod common;

use common::*;
use soilstream::transport::{ConsumeError, GroupConsumer, GroupEvent, LogProducer, OutboundRecord};
use soilstream_sim::broker::BrokerHost;
use soilstream_sim::digest::Digest;
use soilstream_sim::{GroupConsumerConfig, SimGroupConsumer, SimProducer};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

const GROUP: &str = "processors";
const SESSION_MS: u64 = 1_500;
const POLL_MS: u64 = 100;

/// What a member saw or did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Assigned {
        generation: u64,
        partitions: Vec<i32>,
    },
    /// Where the assigned partitions resume (the group's committed offsets).
    Sought(Vec<(i32, i64)>),
    Revoked(Vec<i32>),
    Lost(Vec<i32>),
    /// A commit and its outcome (`Fenced`, `Unavailable`, ...).
    Commit {
        offsets: Vec<(i32, i64)>,
        result: Result<(), String>,
    },
}

#[derive(Debug, Default)]
struct Ledger {
    /// (partition, offset) of every acknowledged record.
    produced: BTreeSet<(i32, i64)>,
    producer_done: bool,
    /// (member, partition, offset) in consumption order.
    consumed: Vec<(&'static str, i32, i64)>,
    /// (time ms, member, what).
    trace: Vec<(u64, &'static str, Seen)>,
}

impl Ledger {
    fn complete(&self) -> bool {
        if !self.producer_done {
            return false;
        }
        let consumed: BTreeSet<(i32, i64)> = self.consumed.iter().map(|(_, p, o)| (*p, *o)).collect();
        self.produced.is_subset(&consumed)
    }

    fn events_of(&self, member: &str) -> Vec<(u64, Seen)> {
        self.trace
            .iter()
            .filter(|(_, m, _)| *m == member)
            .map(|(t, _, s)| (*t, s.clone()))
            .collect()
    }

    fn assignments_of(&self, member: &str) -> Vec<(u64, u64, Vec<i32>)> {
        self.events_of(member)
            .into_iter()
            .filter_map(|(t, seen)| match seen {
                Seen::Assigned {
                    generation,
                    partitions,
                } => Some((t, generation, partitions)),
                _ => None,
            })
            .collect()
    }

    /// Times each (partition, offset) was consumed.
    fn consumption_counts(&self) -> BTreeMap<(i32, i64), usize> {
        let mut counts = BTreeMap::new();
        for (_, partition, offset) in &self.consumed {
            *counts.entry((*partition, *offset)).or_default() += 1;
        }
        counts
    }

    fn digest(&self) -> u64 {
        let mut digest = Digest::new();
        for (t, member, seen) in &self.trace {
            digest
                .u64(*t)
                .field(member.as_bytes())
                .field(format!("{seen:?}").as_bytes());
        }
        for (member, partition, offset) in &self.consumed {
            digest
                .field(member.as_bytes())
                .i64(i64::from(*partition))
                .i64(*offset);
        }
        digest.finish()
    }
}

/// How one member behaves.
#[derive(Debug, Clone, Copy)]
struct Member {
    name: &'static str,
    /// Joins this long after the start.
    start_ms: u64,
    /// Runs as a host (so that it can be crashed) instead of a client.
    host: bool,
    /// Stops polling at `.0` for `.1` ms, then commits its positions.
    stall: Option<(u64, u64)>,
    /// Keeps polling without fetching from `.0` for `.1` ms.
    pause_fetching: Option<(u64, u64)>,
}

impl Member {
    fn client(name: &'static str) -> Self {
        Self {
            name,
            start_ms: 0,
            host: false,
            stall: None,
            pause_fetching: None,
        }
    }
}

/// What the script does to the world at a time.
#[derive(Debug, Clone, Copy)]
enum Action {
    Crash(&'static str),
    Partition(&'static str),
    Repair(&'static str),
    Bounce(&'static str),
}

struct Run {
    ledger: Ledger,
    broker_digest: u64,
    stats: soilstream_sim::broker::GroupStats,
}

fn member_config() -> GroupConsumerConfig {
    let mut config = GroupConsumerConfig::new(BROKER, PORT, GROUP);
    config.session_timeout_ms = SESSION_MS;
    config.heartbeat_interval_ms = 100;
    config.rebalance_timeout_ms = 3_000;
    config.join_retry_ms = 50;
    config.request_timeout_ms = 300;
    config.connect_timeout_ms = 300;
    config.max_poll_records = 20;
    config
}

async fn produce(
    ledger: Rc<RefCell<Ledger>>,
    partitions: u32,
    per_partition: u32,
    interval_ms: u64,
) -> turmoil::Result {
    let producer = SimProducer::new(producer_config())?;
    let mut pending = Vec::new();
    for index in 0..per_partition {
        for partition in 0..partitions as i32 {
            let record = OutboundRecord {
                topic: TOPIC.into(),
                key: format!("key-{partition}").into_bytes(),
                partition: Some(partition),
                value: format!("{partition}:{index}").into_bytes(),
                timestamp_ms: EPOCH_MS as i64 + i64::from(index),
                headers: vec![],
            };
            pending.push(producer.enqueue(record)?);
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
    for delivery in pending {
        let position = delivery.await?;
        ledger
            .borrow_mut()
            .produced
            .insert((position.partition, position.offset));
    }
    ledger.borrow_mut().producer_done = true;
    Ok(())
}

fn record(ledger: &Rc<RefCell<Ledger>>, member: &'static str, seen: Seen) {
    ledger.borrow_mut().trace.push((now_ms(), member, seen));
}

fn describe(result: Result<(), ConsumeError>) -> Result<(), String> {
    result.map_err(|error| match error {
        ConsumeError::Fenced(_) => "Fenced".to_string(),
        ConsumeError::Unavailable(_) => "Unavailable".to_string(),
        other => format!("{other}"),
    })
}

async fn commit(
    consumer: &mut SimGroupConsumer,
    ledger: &Rc<RefCell<Ledger>>,
    member: &'static str,
    offsets: Vec<(i32, i64)>,
) {
    let result = describe(consumer.commit(&offsets).await);
    record(ledger, member, Seen::Commit { offsets, result });
}

/// A processor: seeks assigned partitions to the committed offsets, commits
/// after every batch and when partitions are revoked, drops lost ones (and
/// checks that a commit for them is fenced).
async fn run_member(member: Member, ledger: Rc<RefCell<Ledger>>) -> turmoil::Result {
    tokio::time::sleep(Duration::from_millis(member.start_ms)).await;
    let mut consumer = SimGroupConsumer::new(member_config())?;
    consumer.subscribe(TOPIC)?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut stalled = false;
    while !ledger.borrow().complete() {
        if let Some((at_ms, for_ms)) = member.stall
            && !stalled
            && now_ms() >= at_ms
        {
            stalled = true;
            tokio::time::sleep(Duration::from_millis(for_ms)).await;
            let offsets: Vec<(i32, i64)> = next.iter().map(|(p, o)| (*p, *o)).collect();
            commit(&mut consumer, &ledger, member.name, offsets).await;
        }
        if let Some((from_ms, for_ms)) = member.pause_fetching {
            let now = now_ms();
            consumer.set_fetching(!(from_ms..from_ms + for_ms).contains(&now));
        }
        let event = match consumer.poll(POLL_MS).await {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(member = member.name, %error, "poll failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match event {
            GroupEvent::Assigned {
                generation,
                partitions,
            } => {
                assert_eq!(consumer.owned(), partitions);
                record(
                    &ledger,
                    member.name,
                    Seen::Assigned {
                        generation,
                        partitions: partitions.clone(),
                    },
                );
                let mut committed = None;
                for _ in 0..20 {
                    match consumer.committed(&partitions).await {
                        Ok(offsets) => {
                            committed = Some(offsets);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                let Some(committed) = committed else {
                    continue; // unsought; lost soon
                };
                let mut sought = Vec::new();
                for (partition, offset) in committed {
                    let offset = offset.unwrap_or(0);
                    consumer.seek(partition, offset)?;
                    next.insert(partition, offset);
                    sought.push((partition, offset));
                }
                record(&ledger, member.name, Seen::Sought(sought));
            }
            GroupEvent::Revoked(partitions) => {
                record(&ledger, member.name, Seen::Revoked(partitions.clone()));
                let offsets: Vec<(i32, i64)> = partitions
                    .iter()
                    .filter_map(|p| next.get(p).map(|o| (*p, *o)))
                    .collect();
                commit(&mut consumer, &ledger, member.name, offsets).await;
                next.clear();
            }
            GroupEvent::Lost(partitions) => {
                record(&ledger, member.name, Seen::Lost(partitions.clone()));
                assert!(consumer.owned().is_empty());
                let offsets: Vec<(i32, i64)> = partitions
                    .iter()
                    .filter_map(|p| next.get(p).map(|o| (*p, *o)))
                    .collect();
                commit(&mut consumer, &ledger, member.name, offsets).await;
                next.clear();
            }
            GroupEvent::Records(records) => {
                if records.is_empty() {
                    continue;
                }
                let owned = consumer.owned();
                let mut batch: BTreeMap<i32, i64> = BTreeMap::new();
                {
                    let mut ledger = ledger.borrow_mut();
                    for r in &records {
                        assert!(owned.contains(&r.partition), "records only from owned partitions");
                        assert_eq!(Some(&r.offset), next.get(&r.partition), "in order, from the seek");
                        next.insert(r.partition, r.offset + 1);
                        batch.insert(r.partition, r.offset + 1);
                        ledger.consumed.push((member.name, r.partition, r.offset));
                    }
                }
                commit(&mut consumer, &ledger, member.name, batch.into_iter().collect()).await;
            }
        }
    }
    consumer.leave().await;
    Ok(())
}

/// Runs a world of a producer and `members`, scripted by `actions`.
fn run(seed: u64, members: &[Member], per_partition: u32, actions: &[(u64, Action)]) -> Run {
    let world = WorldConfig::new(seed);
    let mut sim = builder(world.seed).build();
    let broker = BrokerHost::new(broker_config(&world), world.seed).expect("valid broker config");
    sim.host(BROKER, broker.software());
    let ledger = Rc::new(RefCell::new(Ledger::default()));
    sim.client(
        GATEWAY,
        produce(ledger.clone(), world.partitions, per_partition, 20),
    );
    for member in members.iter().copied() {
        let ledger = ledger.clone();
        if member.host {
            sim.host(member.name, move || run_member(member, ledger.clone()));
        } else {
            sim.client(member.name, run_member(member, ledger));
        }
    }
    let mut next_action = 0;
    run_scripted(&mut sim, |sim, elapsed_ms| {
        while let Some((at_ms, action)) = actions.get(next_action)
            && elapsed_ms >= *at_ms
        {
            match action {
                Action::Crash(host) => sim.crash(*host),
                Action::Partition(host) => sim.partition(*host, BROKER),
                Action::Repair(host) => sim.repair(*host, BROKER),
                Action::Bounce(host) => sim.bounce(*host),
            }
            next_action += 1;
        }
    });
    assert_eq!(next_action, actions.len(), "every action ran");
    let ledger = Rc::try_unwrap(ledger)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| std::mem::take(&mut *shared.borrow_mut()));
    assert!(ledger.complete(), "every record was consumed");
    // GROUP_TRACE=1 prints what the members saw (commits that succeeded aside).
    if std::env::var_os("GROUP_TRACE").is_some() {
        for (t, m, s) in &ledger.trace {
            if !matches!(s, Seen::Commit { result: Ok(()), .. }) {
                eprintln!("{t} {m} {s:?}");
            }
        }
        eprintln!("stats {:?}", broker.observer.group_stats());
    }
    Run {
        ledger,
        broker_digest: broker.observer.state_digest().expect("broker up"),
        stats: broker.observer.group_stats().expect("broker up"),
    }
}

/// The partitions of each member in `generation` (from its Assigned event).
fn generation_assignment(ledger: &Ledger, members: &[&str], generation: u64) -> BTreeMap<String, Vec<i32>> {
    let mut assignment = BTreeMap::new();
    for member in members {
        for (_, g, partitions) in ledger.assignments_of(member) {
            if g == generation {
                assignment.insert(member.to_string(), partitions);
            }
        }
    }
    assignment
}

fn assert_disjoint_cover(assignment: &BTreeMap<String, Vec<i32>>, partitions: u32) {
    let mut all: Vec<i32> = assignment.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..partitions as i32).collect::<Vec<_>>(),
        "disjoint and complete: {assignment:?}"
    );
}

/// Every commit made after a Lost (or after a fenced commit) is fenced.
fn assert_commits_after_loss_fenced(ledger: &Ledger, member: &str) {
    let events = ledger.events_of(member);
    for (index, (_, seen)) in events.iter().enumerate() {
        if let Seen::Lost(_) = seen {
            match events.get(index + 1) {
                Some((_, Seen::Commit { result, .. })) => {
                    assert_eq!(result, &Err("Fenced".to_string()), "{member}: commit after Lost")
                }
                other => panic!("{member}: expected the probe commit after Lost, got {other:?}"),
            }
        }
    }
}

#[test]
fn two_members_share_the_partitions_and_read_every_record_once() {
    let members = [Member::client("member-a"), Member::client("member-b")];
    let run = run(31, &members, 40, &[]);
    let ledger = &run.ledger;
    let counts = ledger.consumption_counts();
    assert!(counts.values().all(|n| *n == 1), "every record once: {counts:?}");
    assert_eq!(counts.len(), ledger.produced.len());
    // The last generation both were in splits the partitions between them.
    let last_shared = ledger
        .assignments_of("member-a")
        .iter()
        .map(|(_, g, _)| *g)
        .filter(|g| ledger.assignments_of("member-b").iter().any(|(_, gb, _)| gb == g))
        .max()
        .expect("a generation with both members");
    let assignment = generation_assignment(ledger, &["member-a", "member-b"], last_shared);
    assert_eq!(assignment.len(), 2);
    assert!(assignment.values().all(|p| p.len() == 2), "{assignment:?}");
    assert_disjoint_cover(&assignment, 4);
    for member in ["member-a", "member-b"] {
        assert!(
            ledger.consumed.iter().any(|(m, _, _)| *m == member),
            "{member} read records"
        );
    }
    assert!(run.stats.rebalances_completed >= 1, "{:?}", run.stats);
    assert_eq!(run.stats.commits_fenced, 0, "{:?}", run.stats);
}

#[test]
fn a_third_member_revokes_then_reassigns_with_commits_accepted_in_between() {
    let mut third = Member::client("member-c");
    third.start_ms = 1_000;
    let members = [Member::client("member-a"), Member::client("member-b"), third];
    let run = run(32, &members, 100, &[]);
    let ledger = &run.ledger;
    let (c_time, c_generation, c_partitions) = ledger.assignments_of("member-c")[0].clone();
    assert!(c_time >= third.start_ms);
    for member in ["member-a", "member-b"] {
        let events = ledger.events_of(member);
        // The generation each had when the third arrived.
        let (_, old_generation, old_partitions) = ledger
            .assignments_of(member)
            .into_iter()
            .rfind(|(t, _, _)| *t < third.start_ms)
            .expect("assigned before the third joined");
        assert!(old_generation < c_generation);
        // Then: Revoked(all it owned), its commit accepted, Assigned anew.
        let revoked_index = events
            .iter()
            .position(|(t, s)| *t >= third.start_ms && matches!(s, Seen::Revoked(_)))
            .expect("revoked after the third arrived");
        assert!(
            events[..revoked_index]
                .iter()
                .all(|(t, s)| *t < third.start_ms || matches!(s, Seen::Commit { .. })),
            "{member}: nothing but commits of batches between: {events:?}"
        );
        let after: Vec<&Seen> = events[revoked_index..].iter().map(|(_, s)| s).collect();
        assert_eq!(
            after[0],
            &Seen::Revoked(old_partitions.clone()),
            "{member}: {after:?}"
        );
        match after[1] {
            Seen::Commit { result, offsets } => {
                assert_eq!(
                    result,
                    &Ok(()),
                    "{member}: the revoked partitions' commit is accepted"
                );
                assert!(offsets.iter().all(|(p, _)| old_partitions.contains(p)));
            }
            other => panic!("{member}: expected the commit, got {other:?}"),
        }
        match after[2] {
            Seen::Assigned { generation, .. } => assert_eq!(*generation, c_generation, "{member}"),
            other => panic!("{member}: expected Assigned, got {other:?}"),
        }
    }
    let assignment = generation_assignment(ledger, &["member-a", "member-b", "member-c"], c_generation);
    assert_eq!(assignment.len(), 3);
    assert_eq!(assignment["member-c"], c_partitions);
    assert_disjoint_cover(&assignment, 4);
    let counts = ledger.consumption_counts();
    assert!(
        counts.values().all(|n| *n == 1),
        "commits at revocation and seeks to them: every record once"
    );
    assert!(ledger.consumed.iter().any(|(m, _, _)| *m == "member-c"));
}

#[test]
fn a_crashed_member_is_expired_and_the_survivor_resumes_from_its_commits() {
    let survivor = Member::client("member-a");
    let mut crashing = Member::client("member-b");
    crashing.host = true;
    let crash_ms = 1_000;
    let run = run(
        33,
        &[survivor, crashing],
        120,
        &[(crash_ms, Action::Crash("member-b"))],
    );
    let ledger = &run.ledger;
    let b_assignments = ledger.assignments_of("member-b");
    let (_, b_generation, b_partitions) = b_assignments.last().expect("b was assigned").clone();
    assert!(!b_partitions.is_empty());
    let (a_time, a_generation, a_partitions) = ledger
        .assignments_of("member-a")
        .last()
        .expect("a was assigned")
        .clone();
    assert!(a_generation > b_generation);
    assert_eq!(a_partitions, vec![0, 1, 2, 3], "the survivor gets everything");
    // b's last request reached the broker at most one heartbeat interval
    // before the crash.
    assert!(
        a_time + member_config().heartbeat_interval_ms >= crash_ms + SESSION_MS,
        "only after the session timeout: at {a_time}"
    );
    assert!(run.stats.members_expired >= 1, "{:?}", run.stats);
    // b's last accepted commit per partition.
    let mut b_committed: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, seen) in ledger.events_of("member-b") {
        if let Seen::Commit {
            offsets,
            result: Ok(()),
        } = seen
        {
            b_committed.extend(offsets);
        }
    }
    let sought = ledger
        .events_of("member-a")
        .into_iter()
        .filter(|(t, _)| *t >= a_time)
        .find_map(|(_, s)| match s {
            Seen::Sought(offsets) => Some(offsets),
            _ => None,
        })
        .expect("the survivor sought its partitions");
    // What b read per partition (next offset).
    let mut b_read: BTreeMap<i32, i64> = BTreeMap::new();
    for (member, partition, offset) in &ledger.consumed {
        if *member == "member-b" {
            b_read.insert(*partition, offset + 1);
        }
    }
    for (partition, offset) in &sought {
        if !b_partitions.contains(partition) {
            continue;
        }
        // The commit in flight at the crash may or may not have landed.
        let acknowledged = b_committed.get(partition).copied().unwrap_or(0);
        let read = b_read.get(partition).copied().unwrap_or(0);
        assert!(
            (acknowledged..=read).contains(offset),
            "partition {partition} resumes at b's commit: {offset} within {acknowledged}..={read}"
        );
        let first_read = ledger
            .consumed
            .iter()
            .find(|(m, p, o)| *m == "member-a" && p == partition && *o >= *offset)
            .map(|(_, _, o)| *o);
        assert_eq!(first_read, Some(*offset), "the survivor reads on from the commit");
    }
    // Only what b read after its last commit is read twice.
    for ((partition, offset), count) in ledger.consumption_counts() {
        if count > 1 {
            assert_eq!(count, 2);
            assert!(b_partitions.contains(&partition));
            assert!(offset >= b_committed.get(&partition).copied().unwrap_or(0));
        }
    }
}

#[test]
fn a_partitioned_member_loses_its_partitions_and_its_commits_are_fenced() {
    let partition_ms = 1_000;
    let repair_ms = 4_000;
    let members = [Member::client("member-a"), Member::client("member-b")];
    let run = run(
        34,
        &members,
        200,
        &[
            (partition_ms, Action::Partition("member-b")),
            (repair_ms, Action::Repair("member-b")),
        ],
    );
    let ledger = &run.ledger;
    let b_events = ledger.events_of("member-b");
    let (_, _, b_partitions) = ledger
        .assignments_of("member-b")
        .into_iter()
        .rfind(|(t, _, _)| *t < partition_ms)
        .expect("b assigned before the partition");
    let (lost_ms, lost) = b_events
        .iter()
        .find_map(|(t, s)| match s {
            Seen::Lost(p) => Some((*t, p.clone())),
            _ => None,
        })
        .expect("b lost its partitions");
    assert_eq!(lost, b_partitions);
    let heartbeat_ms = member_config().heartbeat_interval_ms;
    assert!(
        (partition_ms + SESSION_MS - heartbeat_ms..repair_ms).contains(&lost_ms),
        "lost after a session without answers: {lost_ms}"
    );
    assert_commits_after_loss_fenced(ledger, "member-b");
    // Meanwhile the other member took everything over, and b came back
    // later as a new member of a newer generation.
    let (_, a_generation, a_partitions) = ledger
        .assignments_of("member-a")
        .into_iter()
        .find(|(t, _, p)| *t > partition_ms && p.len() == 4)
        .expect("a took over");
    let back = ledger
        .assignments_of("member-b")
        .into_iter()
        .find(|(t, _, _)| *t > repair_ms);
    if let Some((_, generation, _)) = back {
        assert!(generation > a_generation);
    }
    assert_eq!(a_partitions, vec![0, 1, 2, 3]);
}

#[test]
fn a_stalled_member_is_fenced_after_its_session_then_rejoins_fresh() {
    let mut stalling = Member::client("member-b");
    stalling.stall = Some((1_000, 3 * SESSION_MS));
    let members = [Member::client("member-a"), stalling];
    let run = run(35, &members, 350, &[]);
    let ledger = &run.ledger;
    let b_events = ledger.events_of("member-b");
    let (stall_commit_index, _) = b_events
        .iter()
        .enumerate()
        .find(|(_, (t, s))| *t >= 1_000 + 3 * SESSION_MS && matches!(s, Seen::Commit { .. }))
        .expect("the commit after the stall");
    match &b_events[stall_commit_index].1 {
        Seen::Commit { result, .. } => {
            assert_eq!(result, &Err("Fenced".to_string()), "the session is over")
        }
        _ => unreachable!(),
    }
    assert!(
        matches!(b_events[stall_commit_index + 1].1, Seen::Lost(_)),
        "the fenced commit makes the next poll report Lost: {b_events:?}"
    );
    assert_commits_after_loss_fenced(ledger, "member-b");
    assert!(run.stats.members_expired >= 1, "{:?}", run.stats);
    // The other member had taken everything over before b woke up.
    let took_over = ledger
        .assignments_of("member-a")
        .into_iter()
        .any(|(t, _, p)| p.len() == 4 && t < b_events[stall_commit_index].0);
    assert!(took_over);
    let rejoined = ledger
        .assignments_of("member-b")
        .into_iter()
        .any(|(t, _, _)| t > b_events[stall_commit_index].0);
    assert!(rejoined, "b joined again: {b_events:?}");
}

#[test]
fn a_member_that_stops_fetching_keeps_its_membership() {
    let mut pausing = Member::client("member-b");
    let (pause_ms, pause_for_ms) = (500, 3 * SESSION_MS);
    pausing.pause_fetching = Some((pause_ms, pause_for_ms));
    let members = [Member::client("member-a"), pausing];
    let run = run(38, &members, 150, &[]);
    let ledger = &run.ledger;
    let events = ledger.events_of("member-b");
    let pause = pause_ms..pause_ms + pause_for_ms;
    assert!(
        !events
            .iter()
            .any(|(t, s)| pause.contains(t) && matches!(s, Seen::Lost(_) | Seen::Revoked(_))),
        "the membership stayed: {events:?}"
    );
    // Nothing read while paused (batch commits mark reads), then more.
    assert!(
        !events.iter().any(|(t, s)| *t > pause_ms + POLL_MS + 50
            && pause.contains(t)
            && matches!(s, Seen::Commit { .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(t, s)| *t >= pause.end && matches!(s, Seen::Commit { .. })),
        "{events:?}"
    );
    assert_eq!(run.stats.members_expired, 0);
    assert!(ledger.consumption_counts().values().all(|n| *n == 1));
}

#[test]
fn a_broker_restart_fences_every_member_which_rejoins_and_resumes_from_the_commits() {
    let members = [Member::client("member-a"), Member::client("member-b")];
    let crash_ms = 1_000;
    let run = run(
        37,
        &members,
        150,
        &[
            (crash_ms, Action::Crash(BROKER)),
            (crash_ms + 400, Action::Bounce(BROKER)),
        ],
    );
    let ledger = &run.ledger;
    for member in ["member-a", "member-b"] {
        let events = ledger.events_of(member);
        let before = ledger
            .assignments_of(member)
            .into_iter()
            .rfind(|(t, _, _)| *t < crash_ms)
            .expect("assigned before the crash");
        // The restarted coordinator knows nobody: the member learns it from
        // a heartbeat (Lost) or a commit (Fenced, then Lost).
        let (lost_ms, lost) = events
            .iter()
            .find_map(|(t, s)| match s {
                Seen::Lost(p) if *t > crash_ms => Some((*t, p.clone())),
                _ => None,
            })
            .expect("lost after the restart");
        assert_eq!(lost, before.2, "{member}");
        assert_commits_after_loss_fenced(ledger, member);
        let (_, generation, _) = ledger
            .assignments_of(member)
            .into_iter()
            .find(|(t, _, _)| *t > lost_ms)
            .expect("assigned again");
        assert!(generation >= 1, "generations restart with the coordinator");
    }
    // Offsets are durable: only records read after the last accepted commit
    // before the crash are read twice.
    let counts = ledger.consumption_counts();
    assert!(counts.values().all(|n| *n <= 2), "{counts:?}");
    assert!(
        run.stats.members_joined >= 2,
        "fresh ids after the restart: {:?}",
        run.stats
    );
}

#[test]
fn the_same_seed_gives_the_same_assignment_trace() {
    let mut third = Member::client("member-c");
    third.start_ms = 700;
    let members = [Member::client("member-a"), Member::client("member-b"), third];
    let actions = [
        (1_500, Action::Partition("member-b")),
        (3_500, Action::Repair("member-b")),
    ];
    let first = run(36, &members, 200, &actions);
    let second = run(36, &members, 200, &actions);
    assert_eq!(first.ledger.trace, second.ledger.trace);
    assert_eq!(first.ledger.digest(), second.ledger.digest());
    assert_eq!(first.broker_digest, second.broker_digest);
    assert_eq!(first.stats, second.stats);
}
