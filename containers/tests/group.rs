//! `KafkaGroupConsumer` against a real Tansu broker: a single member reads
//! everything; a second member joins (revocation held back until the first
//! one polls, commits in between stored, assignments disjoint and complete);
//! a member killed with SIGKILL (a child process) leaves its partitions to
//! the survivor after the session timeout, which resumes from the committed
//! offsets. Needs the `tansu` binary (see `TANSU_INSTALL_HINT`).
//!
//! The tests run one at a time (rebalance timings on a two-core machine are
//! what they check); each prints its measured timings.

mod common;

use common::*;
use soilstream::transport::kafka::{KafkaClientConfig, KafkaProducer};
use soilstream::transport::kafka_group::{KafkaGroupConfig, KafkaGroupConsumer};
use soilstream::transport::{ConsumeError, GroupConsumer, GroupEvent, LogProducer, OutboundRecord};
use soilstream_containers::{ChildProcess, ChildSpec, TansuConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TOPIC: &str = "soil-moisture-qc-input";
const PARTITIONS: i32 = 4;
/// Records produced per partition.
const PER_PARTITION: i64 = 10;
/// Poll wait of the test loops, in ms.
const POLL_MS: u64 = 100;
/// Longest wait for one group change (a join, a rebalance), in ms. Tansu
/// 0.6.0 holds a non-leader's rejoin for 3 s.
const GROUP_CHANGE_MAX_MS: u64 = 25_000;

/// The child process of `a_killed_member_...` reads its settings here:
/// `bootstrap|topic|group`.
const CHILD_ENV: &str = "SOILSTREAM_GROUP_TEST_CHILD";

/// Set to a librdkafka `debug` list (e.g. `cgrp`) to log the clients'
/// group protocol (with `SOILSTREAM_LOG=librdkafka=trace`).
const RDKAFKA_DEBUG_ENV: &str = "SOILSTREAM_RDKAFKA_DEBUG";

/// The broker's fast client settings, plus librdkafka debugging if asked.
fn client_config(bootstrap: &str) -> KafkaClientConfig {
    let config = fast(KafkaClientConfig::new(bootstrap));
    match std::env::var(RDKAFKA_DEBUG_ENV) {
        Ok(contexts) if !contexts.is_empty() => config.with_property("debug", contexts),
        _ => config,
    }
}

/// Serialises the tests of this binary.
static SERIAL: Mutex<()> = Mutex::new(());

fn run_serial<F: Future<Output = ()>>(test: F) {
    let _guard = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test);
}

/// Membership timing for tests: a killed member is noticed within seconds.
fn group_config() -> KafkaGroupConfig {
    KafkaGroupConfig {
        session_timeout_ms: 6_000,
        heartbeat_interval_ms: 500,
        max_poll_interval_ms: 30_000,
        revoke_wait_max_ms: 20_000,
    }
}

/// Produces `PER_PARTITION` readings to every partition (sensor
/// `probe-p{partition}`, seq 0..), so partition `p` holds seq `n` at offset
/// `n`.
async fn produce_all(config: &KafkaClientConfig) {
    let producer = KafkaProducer::new(config).expect("producer");
    let mut deliveries = Vec::new();
    for partition in 0..PARTITIONS {
        for seq in 0..PER_PARTITION as u64 {
            let record = OutboundRecord {
                partition: Some(partition),
                ..record_for(TOPIC, &reading(&format!("probe-p{partition}"), seq))
            };
            deliveries.push((partition, seq, producer.enqueue(record).expect("enqueue")));
        }
    }
    let (keys, futures): (Vec<_>, Vec<_>) = deliveries.into_iter().map(|(p, s, f)| ((p, s), f)).unzip();
    for ((partition, seq), result) in keys.into_iter().zip(await_deliveries(futures, 30_000).await) {
        let position = result.unwrap_or_else(|e| panic!("delivering {partition}/{seq}: {e}"));
        assert_eq!(
            (position.partition, position.offset),
            (partition, seq as i64),
            "a fresh partition takes records at offsets 0.."
        );
    }
}

/// A group member under test, with what it was given.
struct Member {
    name: &'static str,
    consumer: KafkaGroupConsumer,
    /// Offsets delivered per partition since the last assignment, in
    /// delivery order.
    delivered: BTreeMap<i32, Vec<i64>>,
    /// Where each partition of the last assignment was sought to.
    starts: BTreeMap<i32, i64>,
    /// Generation of the last assignment.
    generation: u64,
    /// When the last group event came.
    last_event: Instant,
    /// Group events seen, with the time since `epoch`.
    timeline: Vec<(u128, String)>,
    epoch: Instant,
}

impl Member {
    fn join(config: &KafkaClientConfig, group: &str, name: &'static str, epoch: Instant) -> Self {
        Self::join_with(config, group, name, epoch, group_config())
    }

    fn join_with(
        config: &KafkaClientConfig,
        group: &str,
        name: &'static str,
        epoch: Instant,
        timing: KafkaGroupConfig,
    ) -> Self {
        let mut consumer = KafkaGroupConsumer::new(config, group, timing).expect("group consumer");
        consumer.subscribe(TOPIC).expect("subscribe");
        Self {
            name,
            consumer,
            delivered: BTreeMap::new(),
            starts: BTreeMap::new(),
            generation: 0,
            last_event: Instant::now(),
            timeline: Vec::new(),
            epoch,
        }
    }

    /// Checks one batch of records: seq header = offset, sensor of the
    /// partition; collects the offsets.
    fn take_records(&mut self, records: Vec<soilstream::transport::ConsumedRecord>) {
        for record in records {
            assert_eq!(record.topic, TOPIC);
            let key = format!("probe-p{}", record.partition);
            assert_eq!(record.key.as_deref(), Some(key.as_bytes()), "{}", self.name);
            assert_eq!(
                record.header("seq"),
                Some(record.offset.to_string().as_bytes()),
                "{}: the record at offset {} of partition {}",
                self.name,
                record.offset,
                record.partition
            );
            self.delivered
                .entry(record.partition)
                .or_default()
                .push(record.offset);
        }
    }

    fn note(&mut self, event: &GroupEvent) {
        let at_ms = self.epoch.elapsed().as_millis();
        eprintln!("{at_ms:>6} ms {}: {event:?}", self.name);
        self.timeline.push((at_ms, format!("{event:?}")));
        self.last_event = Instant::now();
    }

    /// One poll: records are collected; a group event is noted and
    /// returned, not acted upon.
    async fn poll_once(&mut self, wait_ms: u64) -> Option<GroupEvent> {
        match self.consumer.poll(wait_ms).await {
            Ok(GroupEvent::Records(records)) => {
                self.take_records(records);
                None
            }
            Ok(event) => {
                self.note(&event);
                Some(event)
            }
            Err(error) => {
                eprintln!("{}: poll error: {error}", self.name);
                None
            }
        }
    }

    /// One poll, acting on group events as a stream processor does: on an
    /// assignment, seek every partition to its committed offset; a
    /// revocation needs nothing (nothing is in flight), the next poll
    /// releases it. A loss fails the test.
    async fn step(&mut self, wait_ms: u64) -> Option<GroupEvent> {
        let event = self.poll_once(wait_ms).await?;
        match &event {
            GroupEvent::Assigned { generation, .. } => {
                self.generation = *generation;
                self.delivered.clear();
                self.starts = self.seek_to_committed().await;
            }
            GroupEvent::Revoked(_) => {}
            GroupEvent::Lost(partitions) => panic!("{}: lost {partitions:?}", self.name),
            GroupEvent::Records(_) => {}
        }
        Some(event)
    }

    /// Polls until a group event, collecting records meanwhile; fails after
    /// `timeout_ms`.
    async fn next_group_event(&mut self, timeout_ms: u64) -> GroupEvent {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: no group event within {timeout_ms} ms",
                self.name
            );
            if let Some(event) = self.poll_once(POLL_MS).await {
                return event;
            }
        }
    }

    /// Waits for an assignment; returns the generation and partitions.
    async fn assigned(&mut self, timeout_ms: u64) -> (u64, Vec<i32>) {
        match self.next_group_event(timeout_ms).await {
            GroupEvent::Assigned {
                generation,
                partitions,
            } => (generation, partitions),
            other => panic!("{}: expected an assignment, got {other:?}", self.name),
        }
    }

    /// Polls for `duration_ms`, expecting nothing but records.
    async fn only_records_for(&mut self, duration_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(duration_ms);
        while Instant::now() < deadline {
            if let Some(event) = self.poll_once(POLL_MS).await {
                panic!("{}: unexpected {event:?}", self.name);
            }
        }
    }

    /// Seeks every owned partition to its committed offset (or 0) and
    /// returns where each starts.
    async fn seek_to_committed(&mut self) -> BTreeMap<i32, i64> {
        let owned = self.consumer.owned();
        let committed = self.consumer.committed(&owned).await.expect("committed offsets");
        let mut starts = BTreeMap::new();
        for (partition, offset) in committed {
            let start = offset.unwrap_or(0);
            self.consumer.seek(partition, start).expect("seek");
            starts.insert(partition, start);
        }
        starts
    }

    /// Whether every partition in `starts` was delivered to its end.
    fn read_to_end(&self) -> bool {
        self.starts.iter().all(|(p, start)| {
            *start >= PER_PARTITION
                || self
                    .delivered
                    .get(p)
                    .and_then(|o| o.last())
                    .is_some_and(|last| last + 1 >= PER_PARTITION)
        })
    }

    /// Polls until every partition in `ends` was delivered up to its end
    /// offset (exclusive), then `settle_ms` more for extra copies.
    async fn read_until(&mut self, ends: &BTreeMap<i32, i64>, timeout_ms: u64, settle_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let done = |delivered: &BTreeMap<i32, Vec<i64>>| {
            ends.iter().all(|(p, end)| {
                *end == 0
                    || delivered
                        .get(p)
                        .and_then(|o| o.last())
                        .is_some_and(|last| last + 1 >= *end)
            })
        };
        while !done(&self.delivered) {
            assert!(
                Instant::now() < deadline,
                "{}: not everything read within {timeout_ms} ms: {:?}",
                self.name,
                self.delivered
            );
            if let Some(event) = self.poll_once(POLL_MS).await {
                panic!("{}: unexpected {event:?} while reading", self.name);
            }
        }
        self.only_records_for(settle_ms).await;
    }
}

/// No partition is owned by two members (a revoked partition counts as
/// owned until its member polls again).
fn assert_disjoint(members: &[&mut Member]) {
    let mut owner: BTreeMap<i32, &str> = BTreeMap::new();
    for member in members {
        for partition in member.consumer.owned() {
            if let Some(other) = owner.insert(partition, member.name) {
                panic!(
                    "partition {partition} is owned by {other} and {} at once",
                    member.name
                );
            }
        }
    }
}

/// Drives `members` in turn (short polls, [`Member::step`]) until `done`
/// holds and no member saw a group event for `quiet_ms` (Tansu 0.6.0
/// follows a membership change with an extra rebalance a few seconds
/// later); checks [`assert_disjoint`] after every poll. Fails after
/// `timeout_ms`.
async fn settle(
    members: &mut [&mut Member],
    quiet_ms: u64,
    timeout_ms: u64,
    done: impl Fn(&[&mut Member]) -> bool,
) {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(timeout_ms);
    loop {
        for member in members.iter_mut() {
            member.step(20).await;
        }
        assert_disjoint(members);
        let quiet = members
            .iter()
            .all(|m| m.last_event.elapsed() >= Duration::from_millis(quiet_ms));
        if quiet && done(members) {
            eprintln!("settled after {} ms", started.elapsed().as_millis());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle within {timeout_ms} ms: {:?}",
            members
                .iter()
                .map(|m| (m.name, m.consumer.owned(), m.timeline.clone()))
                .collect::<Vec<_>>()
        );
    }
}

/// Every partition owned by exactly one of `members`, each read to its end.
fn complete(members: &[&mut Member]) -> bool {
    let mut owned: Vec<i32> = members.iter().flat_map(|m| m.consumer.owned()).collect();
    owned.sort_unstable();
    owned == all_partitions() && members.iter().all(|m| m.read_to_end())
}

fn all_partitions() -> Vec<i32> {
    (0..PARTITIONS).collect()
}

/// Asserts that `delivered` holds exactly `from..PER_PARTITION` per
/// partition of `from`, in order.
fn assert_delivered_from(name: &str, delivered: &BTreeMap<i32, Vec<i64>>, from: &BTreeMap<i32, i64>) {
    for (partition, start) in from {
        let expected: Vec<i64> = (*start..PER_PARTITION).collect();
        let got = delivered.get(partition).cloned().unwrap_or_default();
        assert_eq!(
            got, expected,
            "{name}: offsets delivered of partition {partition}"
        );
    }
    let extra: Vec<&i32> = delivered.keys().filter(|p| !from.contains_key(p)).collect();
    assert!(
        extra.is_empty(),
        "{name}: records of unsought partitions {extra:?}"
    );
}

#[test]
fn a_single_member_gets_every_partition_and_reads_each_record_once_in_order() {
    run_serial(async {
        let broker = start_broker(TansuConfig::default().topic(TOPIC, PARTITIONS as u32));
        let config = client_config(&broker.bootstrap_servers());
        produce_all(&config).await;

        let epoch = Instant::now();
        let mut member = Member::join(&config, "single", "m1", epoch);
        let (generation, partitions) = member.assigned(GROUP_CHANGE_MAX_MS).await;
        eprintln!("first assignment after {} ms", epoch.elapsed().as_millis());
        assert_eq!(generation, 1);
        assert_eq!(partitions, all_partitions());
        assert_eq!(member.consumer.owned(), all_partitions());

        // Nothing is delivered before a seek.
        member.only_records_for(500).await;
        assert!(member.delivered.is_empty(), "{:?}", member.delivered);

        let starts = member.seek_to_committed().await;
        assert_eq!(starts, all_partitions().into_iter().map(|p| (p, 0)).collect());
        let ends = all_partitions().into_iter().map(|p| (p, PER_PARTITION)).collect();
        member.read_until(&ends, 30_000, 500).await;
        assert_delivered_from("m1", &member.delivered, &starts);

        // A seek back re-delivers from there, once.
        member.consumer.seek(2, 7).expect("seek back");
        member.delivered.clear();
        member
            .read_until(&BTreeMap::from([(2, PER_PARTITION)]), 30_000, 500)
            .await;
        assert_delivered_from("m1", &member.delivered, &BTreeMap::from([(2, 7)]));

        member.consumer.commit(&[(0, 10), (1, 4)]).await.expect("commit");
        assert_eq!(
            member.consumer.committed(&[1, 0, 3]).await.expect("committed"),
            vec![(1, Some(4)), (0, Some(10)), (3, None)]
        );
        member.consumer.leave().await;
        assert!(member.consumer.owned().is_empty());
        assert_broker_healthy(&broker);
    });
}

#[test]
fn a_joining_member_waits_for_the_revoked_one_and_commits_in_between_are_stored() {
    run_serial(async {
        let broker = start_broker(TansuConfig::default().topic(TOPIC, PARTITIONS as u32));
        let config = client_config(&broker.bootstrap_servers());
        produce_all(&config).await;

        let epoch = Instant::now();
        let mut first = Member::join(&config, "pair", "m1", epoch);
        let (generation, partitions) = first.assigned(GROUP_CHANGE_MAX_MS).await;
        assert_eq!((generation, partitions), (1, all_partitions()));
        first.seek_to_committed().await;
        let ends: BTreeMap<i32, i64> = all_partitions().into_iter().map(|p| (p, PER_PARTITION)).collect();
        first.read_until(&ends, 30_000, 0).await;
        first
            .consumer
            .commit(&[(0, 2), (1, 2), (2, 2), (3, 2)])
            .await
            .expect("commit");

        let joined_at = Instant::now();
        let mut second = Member::join(&config, "pair", "m2", epoch);
        let revoked = first.next_group_event(GROUP_CHANGE_MAX_MS).await;
        let revoked_ms = joined_at.elapsed().as_millis();
        assert_eq!(revoked, GroupEvent::Revoked(all_partitions()));
        assert_eq!(
            first.consumer.owned(),
            all_partitions(),
            "still owned until the next poll"
        );

        // The revocation is held back: the newcomer gets nothing while the
        // first member has not polled again.
        let hold_ms = 4_000;
        let hold_until = Instant::now() + Duration::from_millis(hold_ms);
        while Instant::now() < hold_until {
            if let Some(event) = second.poll_once(POLL_MS).await {
                panic!("m2 got {event:?} while m1 still holds every partition");
            }
        }

        // Commits between Revoked and the next poll are accepted and stored.
        let window_commit = [(0, 5), (1, 6), (2, 7), (3, 8)];
        first
            .consumer
            .commit(&window_commit)
            .await
            .expect("commit after Revoked");
        let stored: Vec<(i32, Option<i64>)> = window_commit.iter().map(|(p, o)| (*p, Some(*o))).collect();
        assert_eq!(
            first
                .consumer
                .committed(&all_partitions())
                .await
                .expect("committed"),
            stored
        );
        assert_eq!(
            second
                .consumer
                .committed(&all_partitions())
                .await
                .expect("committed"),
            stored
        );

        // m1 polls again: the group rebalances; each member seeks its
        // partitions to the committed offsets and reads to the end.
        let released_ms = epoch.elapsed().as_millis();
        settle(&mut [&mut first, &mut second], 5_000, 45_000, complete).await;
        eprintln!(
            "m1 revoked {revoked_ms} ms after m2 joined and held {hold_ms} ms; released at {released_ms} ms \
             (times since the start): m1 {:?}, m2 {:?}",
            first.timeline, second.timeline
        );
        assert!(first.generation >= 2 && second.generation >= 1);
        let committed: BTreeMap<i32, i64> = window_commit.into_iter().collect();
        for member in [&first, &second] {
            assert!(!member.starts.is_empty() && member.starts.len() < PARTITIONS as usize);
            for (partition, start) in &member.starts {
                assert_eq!(
                    committed[partition], *start,
                    "{}: partition {partition}",
                    member.name
                );
            }
            assert_delivered_from(member.name, &member.delivered, &member.starts);
        }

        // A partition that moved away cannot be committed by its old owner.
        let moved = second.consumer.owned()[0];
        assert!(matches!(
            first.consumer.commit(&[(moved, 10)]).await,
            Err(ConsumeError::Fenced(_))
        ));
        assert!(first.consumer.seek(moved, 0).is_err());

        // A clean leave: the other member gets everything.
        let left_at = Instant::now();
        first.consumer.leave().await;
        let leave_ms = left_at.elapsed().as_millis();
        assert!(first.consumer.owned().is_empty());
        settle(&mut [&mut second], 3_000, 30_000, |m| {
            m[0].consumer.owned() == all_partitions() && m[0].read_to_end()
        })
        .await;
        eprintln!(
            "m1's leave took {leave_ms} ms; m2 settled on every partition {} ms after it began (3 s of it \
             quiet): {:?}",
            left_at.elapsed().as_millis(),
            second.timeline
        );
        assert_eq!(second.starts, committed);
        assert_delivered_from("m2", &second.delivered, &second.starts);
        second.consumer.leave().await;
        assert_broker_healthy(&broker);
    });
}

#[test]
fn a_revocation_is_held_back_at_most_revoke_wait_max_ms() {
    run_serial(async {
        let broker = start_broker(TansuConfig::default().topic(TOPIC, PARTITIONS as u32));
        let config = client_config(&broker.bootstrap_servers());
        produce_all(&config).await;

        let epoch = Instant::now();
        let impatient = KafkaGroupConfig {
            revoke_wait_max_ms: 3_000,
            ..group_config()
        };
        let mut first = Member::join_with(&config, "stuck", "m1", epoch, impatient);
        let (_, partitions) = first.assigned(GROUP_CHANGE_MAX_MS).await;
        assert_eq!(partitions, all_partitions());
        let mut second = Member::join(&config, "stuck", "m2", epoch);
        let revoked = first.next_group_event(GROUP_CHANGE_MAX_MS).await;
        assert_eq!(revoked, GroupEvent::Revoked(all_partitions()));
        let revoked_at = Instant::now();

        // m1 does not poll: after revoke_wait_max_ms the rebalance goes on
        // without it.
        let (_, theirs) = second.assigned(GROUP_CHANGE_MAX_MS).await;
        let waited_ms = revoked_at.elapsed().as_millis();
        eprintln!("m2 assigned {theirs:?} {waited_ms} ms after m1's revocation");
        assert!(
            waited_ms + 500 >= u128::from(impatient.revoke_wait_max_ms),
            "m2 was assigned after {waited_ms} ms, while m1 still held the revocation"
        );
        assert!(
            !theirs.is_empty() && theirs.len() < PARTITIONS as usize,
            "{theirs:?}"
        );
        // m1 has not polled, so it still lists every partition, but the
        // member thread knows they were released: a commit of one that m2
        // has now is refused.
        assert_eq!(first.consumer.owned(), all_partitions());
        assert!(matches!(
            first.consumer.commit(&[(theirs[0], 9)]).await,
            Err(ConsumeError::Fenced(_))
        ));

        // m1 polls at last: its revoked partitions are released and it
        // takes its share.
        settle(&mut [&mut first, &mut second], 5_000, 45_000, complete).await;
        first.consumer.leave().await;
        second.consumer.leave().await;
        assert_broker_healthy(&broker);
    });
}

/// Offset the child commits for `partition` (it "processed" that much).
fn child_commit(partition: i32) -> i64 {
    3 + i64::from(partition)
}

#[test]
fn a_killed_member_is_expelled_after_the_session_timeout_and_the_survivor_resumes_from_its_commits() {
    run_serial(async {
        let broker = start_broker(TansuConfig::default().topic(TOPIC, PARTITIONS as u32));
        let config = client_config(&broker.bootstrap_servers());
        produce_all(&config).await;
        let group = "killed";

        let log_dir = tempfile::tempdir().expect("log dir");
        let log_path = log_dir.path().join("child.log");
        let exe = std::env::current_exe().expect("test binary");
        let spec = ChildSpec::new(exe, &log_path)
            .args([
                "group_member_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{TOPIC}|{group}", broker.bootstrap_servers()),
            );
        let epoch = Instant::now();
        let mut child = ChildProcess::spawn(spec).expect("child member");
        let deadline = Instant::now() + Duration::from_millis(GROUP_CHANGE_MAX_MS);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("CHILD COMMITTED") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not commit within {GROUP_CHANGE_MAX_MS} ms:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("the child committed after {} ms", epoch.elapsed().as_millis());

        let mut survivor = Member::join(&config, group, "survivor", epoch);
        settle(&mut [&mut survivor], 5_000, 45_000, |m| {
            let owned = m[0].consumer.owned();
            !owned.is_empty() && owned.len() < PARTITIONS as usize && m[0].read_to_end()
        })
        .await;
        let mine = survivor.consumer.owned();
        for (partition, start) in &survivor.starts {
            assert_eq!(
                *start,
                child_commit(*partition),
                "the child's commit of {partition}"
            );
        }
        assert_delivered_from("survivor", &survivor.delivered, &survivor.starts);
        let processed: Vec<(i32, i64)> = mine.iter().map(|p| (*p, PER_PARTITION)).collect();
        survivor.consumer.commit(&processed).await.expect("commit");

        child.kill9().expect("kill the child");
        let killed_ms = epoch.elapsed().as_millis();
        let session_ms = group_config().session_timeout_ms;
        // The coordinator notices the missing heartbeats after the session
        // timeout and makes the survivor rejoin.
        let revoked = survivor.next_group_event(session_ms + GROUP_CHANGE_MAX_MS).await;
        let revoked_after_ms = epoch.elapsed().as_millis() - killed_ms;
        assert_eq!(revoked, GroupEvent::Revoked(mine.clone()));
        assert!(
            revoked_after_ms + 1_000 >= u128::from(session_ms),
            "the survivor was revoked {revoked_after_ms} ms after the kill, before the session could expire"
        );
        settle(&mut [&mut survivor], 3_000, 30_000, |m| {
            !m[0].consumer.owned().is_empty() && m[0].read_to_end()
        })
        .await;
        let after_expiry = survivor.consumer.owned();
        eprintln!(
            "child killed at {killed_ms} ms; survivor revoked {revoked_after_ms} ms later, then owns \
             {after_expiry:?}: {:?}",
            survivor.timeline
        );
        // Where each partition resumes: the survivor's own commits, the
        // killed member's commits.
        let expected: BTreeMap<i32, i64> = all_partitions()
            .into_iter()
            .map(|p| {
                let start = if mine.contains(&p) {
                    PER_PARTITION
                } else {
                    child_commit(p)
                };
                (p, start)
            })
            .collect();
        let check_resume = |member: &Member| {
            for (partition, start) in &member.starts {
                assert_eq!(
                    *start, expected[partition],
                    "{} resumes partition {partition} from its committed offset",
                    member.name
                );
            }
            assert_delivered_from(member.name, &member.delivered, &member.starts);
        };
        if after_expiry == all_partitions() {
            // A broker that re-forms the group without the expelled member.
            check_resume(&survivor);
        } else {
            // Tansu 0.6.0 removes the expelled member but does not re-form
            // the group: the survivor is given its old assignment again, in
            // the old generation, and the killed member's partitions stay
            // unassigned until the membership changes.
            assert_eq!(after_expiry, mine, "Tansu 0.6.0 hands back the old assignment");
            // A replacement joins, as a restarted process would: the group
            // re-forms without the killed member.
            let mut replacement = Member::join(&config, group, "replacement", epoch);
            let joined_ms = epoch.elapsed().as_millis();
            settle(&mut [&mut survivor, &mut replacement], 5_000, 45_000, complete).await;
            eprintln!(
                "replacement joined at {joined_ms} ms: survivor {:?}, replacement {:?}",
                survivor.timeline, replacement.timeline
            );
            check_resume(&survivor);
            check_resume(&replacement);
            replacement.consumer.leave().await;
        }
        survivor.consumer.leave().await;
        assert_broker_healthy(&broker);
    });
}

/// The member that `a_killed_member_...` kills: run by that test as a child
/// process (ignored otherwise). Commits [`child_commit`] for every partition
/// of its first assignment, seeks to the committed offsets on every
/// assignment, and logs its group events on stdout.
#[test]
#[ignore = "a child process of a_killed_member_is_expelled_after_the_session_timeout_..."]
fn group_member_child() {
    let Ok(settings) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_ENV} is not set: nothing to do");
        return;
    };
    let parts: Vec<&str> = settings.split('|').collect();
    let [bootstrap, topic, group] = parts.as_slice() else {
        panic!("{CHILD_ENV}={settings:?}: expected bootstrap|topic|group");
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            init_tracing();
            let config = client_config(bootstrap);
            let mut consumer =
                KafkaGroupConsumer::new(&config, group, group_config()).expect("group consumer");
            consumer.subscribe(topic).expect("subscribe");
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut committed_once = false;
            while Instant::now() < deadline {
                match consumer.poll(POLL_MS).await {
                    Ok(GroupEvent::Assigned {
                        generation,
                        partitions,
                    }) => {
                        println!("CHILD ASSIGNED generation {generation} {partitions:?}");
                        if !committed_once {
                            let offsets: Vec<(i32, i64)> =
                                partitions.iter().map(|p| (*p, child_commit(*p))).collect();
                            consumer.commit(&offsets).await.expect("child commit");
                            committed_once = true;
                            println!("CHILD COMMITTED {offsets:?}");
                        }
                        let committed = consumer.committed(&partitions).await.expect("committed");
                        for (partition, offset) in committed {
                            consumer.seek(partition, offset.unwrap_or(0)).expect("seek");
                        }
                    }
                    Ok(GroupEvent::Records(_)) => {}
                    Ok(event) => println!("CHILD {event:?}"),
                    Err(error) => println!("CHILD poll error: {error}"),
                }
            }
        });
}
