//! Property tests of spool recovery on the crash-simulating disk.
//!
//! Random interleavings of appends (several sensors), commits, reads,
//! deliveries (mark_delivered + persist_cursor), rewinds, power cuts (torn
//! writes, unsynced data lost, directory entries lost), process crashes,
//! injected EIO and ENOSPC, transient read corruption and bit flips. A model
//! of what was acknowledged and delivered checks, after every reopen:
//!
//! - every record acknowledged durable and not reported delivered is
//!   recovered, intact and in order, unless the full policy
//!   dropped it (reported in drop events) or a bit flip damaged it (each flip
//!   costs at most one record, and damage is then reported);
//! - no record is ever returned altered, invented, or before it was durable;
//! - `seq`s are never reused across crashes;
//! - recovery never panics and always reopens.
//!
//! `PROPTEST_CASES` raises the number of cases (default: a few seconds'
//! worth). Failing cases are persisted in `proptest-regressions/`.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestRng, TestRunner};
use soilstream::disk::memory::{CrashDisk, FaultOp, PPM};
use soilstream::model::Reading;
use soilstream::spool::{FullPolicy, PlantedBugs, Spool, SpoolConfig, SpoolError, SpooledRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;

const DEFAULT_CASES: u32 = 400;
const SENSORS: [&str; 4] = ["probe-a", "probe-b", "probe-c", "probe-d"];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn proptest_config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/spool_recovery.txt"
        )))),
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Appends `count` readings of one sensor (seq from `next_seq`).
    Append { sensor: usize, count: u8 },
    /// Group commit.
    Commit,
    /// Reads up to `max` records and checks them, without delivering.
    Read { max: u8 },
    /// Reads up to `max`, reports all but maybe one (in reverse order when
    /// `reverse`), then persists the cursor.
    Deliver { max: u8, reverse: bool, hold_one: bool },
    /// Delivery failure: re-read from the cursor.
    Rewind,
    /// Power cut, then reopen.
    PowerLoss,
    /// Process crash (page cache survives), then reopen.
    ProcessCrash,
    /// Bit flips in stored bytes of the spool directory.
    FlipBits { count: u8 },
    /// The next `sync_data` fails (EIO), whoever does it.
    FailNextSync,
    /// The next `sync_dir` fails (EIO).
    FailNextDirSync,
    /// Commit while every sync fails: nothing may be acknowledged.
    CommitWithBrokenDisk,
    /// The disk has only `headroom` more bytes (ENOSPC past it).
    FillDisk { headroom: u16 },
    /// The disk has room again.
    FreeDisk,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SENSORS.len(), 1u8..8).prop_map(|(sensor, count)| Op::Append { sensor, count }),
        5 => Just(Op::Commit),
        1 => (1u8..20).prop_map(|max| Op::Read { max }),
        4 => (1u8..30, any::<bool>(), any::<bool>())
            .prop_map(|(max, reverse, hold_one)| Op::Deliver { max, reverse, hold_one }),
        1 => Just(Op::Rewind),
        2 => Just(Op::PowerLoss),
        1 => Just(Op::ProcessCrash),
        1 => (1u8..3).prop_map(|count| Op::FlipBits { count }),
        1 => Just(Op::FailNextSync),
        1 => Just(Op::FailNextDirSync),
        1 => Just(Op::CommitWithBrokenDisk),
        1 => (0u16..3000).prop_map(|headroom| Op::FillDisk { headroom }),
        1 => Just(Op::FreeDisk),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    block_size_bytes: u64,
    budget: Option<(u64, FullPolicy)>,
    read_corruption: bool,
    ops: Vec<Op>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop_oneof![Just(1u64), Just(16), Just(512), Just(4096)],
        prop_oneof![
            3 => Just(None),
            1 => (4096u64..16384, prop_oneof![Just(FullPolicy::RejectNew), Just(FullPolicy::DropOldest)])
                .prop_map(Some),
        ],
        any::<bool>(),
        proptest::collection::vec(op_strategy(), 1..120),
    )
        .prop_map(|(seed, block_size_bytes, budget, read_corruption, ops)| Case {
            seed,
            block_size_bytes,
            budget,
            read_corruption,
            ops,
        })
}

fn reading(sensor: &str, seq: u64) -> Reading {
    Reading {
        gateway_id: "gw-prop".into(),
        sensor_id: sensor.into(),
        seq,
        event_time_ms: 1_700_000_000_000 + (seq % 1_000_000) as i64 * 60_000,
        moisture_vwc: 0.2 + (seq % 50) as f64 / 1000.0,
        soil_temp_c: Some(12.0 + (seq % 7) as f64),
        bulk_ec_ds_m: seq.is_multiple_of(3).then_some(0.5),
        depth_cm: 30,
        battery_v: seq.is_multiple_of(2).then_some(3.55),
        source_flag: None,
    }
}

fn spool_config(case: &Case, planted: PlantedBugs) -> SpoolConfig {
    let mut config = SpoolConfig::new("/gateway/spool");
    config.segment_max_bytes = 2048;
    config.max_record_bytes = 512;
    config.max_uncommitted_bytes = 2048;
    config.seq_reservation_block = 4;
    config.max_in_flight_records = 100_000;
    if let Some((max_bytes, policy)) = case.budget {
        config.max_bytes = max_bytes;
        config.when_full = policy;
    }
    config.planted = planted;
    config
}

/// What the test knows to be true, independently of the spool.
#[derive(Default)]
struct Model {
    /// Every reading ever appended, by spool index (latest on reuse).
    appended: BTreeMap<u64, Reading>,
    /// Indexes acknowledged durable by a commit.
    acked: BTreeSet<u64>,
    /// Indexes the spool handed out at the last reopen (durable then).
    recovered: BTreeSet<u64>,
    /// Indexes the test reported delivered (`mark_delivered`): they may
    /// come back after a crash (redelivery) or be gone.
    marked: BTreeSet<u64>,
    /// Indexes dropped by the full policy (from drop events).
    dropped: BTreeSet<u64>,
    /// Acknowledged indexes missing after a reopen (blamed on bit flips).
    lost_to_damage: BTreeSet<u64>,
    /// Bit flips injected so far.
    flips: u64,
    /// Damaged ranges the spool reported while running (its statistics)
    /// in sessions that ended since the last reopen.
    runtime_damage_reported: u64,
    /// Largest seq handed out per sensor.
    seqs: BTreeMap<String, u64>,
}

type Checked = Result<(), String>;

fn check(condition: bool, message: impl FnOnce() -> String) -> Checked {
    if condition { Ok(()) } else { Err(message()) }
}

impl Model {
    fn check_records(&self, records: &[SpooledRecord], context: &str) -> Checked {
        let mut previous: Option<u64> = None;
        for record in records {
            check(previous.is_none_or(|p| record.index > p), || {
                format!(
                    "{context}: index {} after {previous:?}: out of order",
                    record.index
                )
            })?;
            previous = Some(record.index);
            let expected = self.appended.get(&record.index);
            check(expected == Some(&record.reading), || {
                format!(
                    "{context}: record {} is {:?}, appended {:?}",
                    record.index, record.reading, expected
                )
            })?;
            check(
                self.acked.contains(&record.index) || self.recovered.contains(&record.index),
                || format!("{context}: record {} returned but never durable", record.index),
            )?;
        }
        Ok(())
    }

    fn note_drops(&mut self, spool: &mut Spool) {
        for event in spool.take_drop_events() {
            if let Some(range) = event.indexes {
                self.dropped.extend(range.first..=range.last);
            }
        }
    }
}

struct Run {
    disk: CrashDisk,
    config: SpoolConfig,
    spool: Option<Spool>,
    model: Model,
    read_corruption: bool,
}

impl Run {
    fn spool(&mut self) -> &mut Spool {
        self.spool.as_mut().expect("the spool is open")
    }

    /// Opens the spool and checks everything recovered against the model.
    fn reopen(&mut self) -> Checked {
        self.disk.heal();
        if self.read_corruption {
            self.disk.set_read_corruption_ppm(PPM / 1000);
        }
        let (mut spool, report) = Spool::open(Rc::new(self.disk.clone()), self.config.clone())
            .map_err(|e| format!("the spool must always reopen: {e}"))?;
        let opened = spool.stats();

        let mut drained = Vec::new();
        loop {
            let batch = spool
                .read_next(500)
                .map_err(|e| format!("read after reopen: {e}"))?;
            if batch.is_empty() {
                break;
            }
            drained.extend(batch);
        }
        let model = &mut self.model;
        model.recovered = drained.iter().map(|r| r.index).collect();
        model.check_records(&drained, "after reopen")?;
        // Every record counted at open is drained, or reported damaged when
        // read (a flipped bit can read back intact once, by a transient
        // read error flipping it back, and damaged later). Damage met while
        // reading next to known damage may be counted generously.
        let lost_while_draining = spool.stats().damaged_records_total - opened.damaged_records_total;
        let drained_count = drained.len() as u64;
        let accounted = drained_count <= opened.depth_records
            && drained_count + lost_while_draining >= opened.depth_records
            && (lost_while_draining > 0 || drained_count == opened.depth_records);
        check(accounted, || {
            let drained: Vec<u64> = drained.iter().map(|r| r.index).collect();
            format!(
                "depth_records {} but drained {drained:?} ({lost_while_draining} damaged)\n{report}",
                opened.depth_records
            )
        })?;
        let mut per_sensor: BTreeMap<&str, u64> = BTreeMap::new();
        for record in &drained {
            let last = per_sensor.insert(&record.reading.sensor_id, record.reading.seq);
            check(last.is_none_or(|last| record.reading.seq > last), || {
                format!(
                    "seq order broken for {} at index {}",
                    record.reading.sensor_id, record.index
                )
            })?;
        }
        let expected: BTreeSet<u64> = model
            .acked
            .iter()
            .copied()
            .filter(|i| !model.marked.contains(i) && !model.dropped.contains(i))
            .collect();
        let missing: BTreeSet<u64> = expected
            .difference(&model.recovered)
            .copied()
            .filter(|i| !model.lost_to_damage.contains(i))
            .collect();
        if !missing.is_empty() {
            // Damage met while reading may have been passed (and its segment
            // deleted) before this reopen: then the running spool reported it.
            check(
                report.damage.ranges_total > 0 || model.runtime_damage_reported > 0,
                || format!("acknowledged records {missing:?} missing and no damage reported\n{report}"),
            )?;
        }
        model.runtime_damage_reported = 0;
        model.lost_to_damage.extend(&missing);
        check(model.lost_to_damage.len() as u64 <= model.flips, || {
            format!(
                "{} acknowledged records lost ({:?}) for {} bit flips: recovery lost intact records\n{report}",
                model.lost_to_damage.len(),
                model.lost_to_damage,
                model.flips
            )
        })?;
        spool.rewind_to_cursor();
        self.spool = Some(spool);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Checked {
        match op {
            Op::Append { sensor, count } => {
                let sensor = SENSORS[*sensor];
                for _ in 0..*count {
                    let seq = match self.spool().next_seq(sensor) {
                        Ok(seq) => seq,
                        Err(_) => continue, // injected EIO on the reservation
                    };
                    let previous = self.model.seqs.insert(sensor.to_string(), seq);
                    check(previous.is_none_or(|p| seq > p), || {
                        format!("seq {seq} of {sensor} reused (had handed out {previous:?})")
                    })?;
                    let reading = reading(sensor, seq);
                    match self.spool().append(&reading) {
                        Ok(index) => {
                            let model = &mut self.model;
                            check(
                                !model.acked.contains(&index)
                                    || model.marked.contains(&index)
                                    || model.lost_to_damage.contains(&index)
                                    || model.dropped.contains(&index),
                                || format!("index {index} reused while an acknowledged record holds it"),
                            )?;
                            model.acked.remove(&index);
                            model.marked.remove(&index);
                            model.recovered.remove(&index);
                            model.appended.insert(index, reading);
                        }
                        Err(SpoolError::BatchFull { .. } | SpoolError::Full { .. }) => {}
                        Err(SpoolError::Io { .. }) => {} // injected EIO on a reservation
                        Err(error) => return Err(format!("append: {error}")),
                    }
                    self.model.note_drops(self.spool.as_mut().expect("open"));
                }
            }
            Op::Commit => self.commit()?,
            Op::CommitWithBrokenDisk => {
                let pending = self.spool().has_uncommitted();
                self.disk.set_failure_rate_ppm(FaultOp::SyncData, PPM);
                let result = self.spool().commit();
                self.disk.set_failure_rate_ppm(FaultOp::SyncData, 0);
                match result {
                    Ok(committed) => check(committed.is_empty() && !pending, || {
                        "a commit acknowledged records while every sync failed".to_string()
                    })?,
                    Err(SpoolError::CommitFailed { .. }) => {}
                    Err(error) => return Err(format!("commit: {error}")),
                }
                self.model.note_drops(self.spool.as_mut().expect("open"));
            }
            Op::Read { max } => {
                let records = self
                    .spool()
                    .read_next(*max as usize)
                    .map_err(|e| format!("read: {e}"))?;
                self.model.check_records(&records, "read")?;
            }
            Op::Deliver {
                max,
                reverse,
                hold_one,
            } => {
                let records = match self.spool().read_next(*max as usize) {
                    Ok(records) => records,
                    Err(_) => return Ok(()), // injected EIO
                };
                self.model.check_records(&records, "deliver")?;
                let mut indexes: Vec<u64> = records.iter().map(|r| r.index).collect();
                if *hold_one && indexes.len() > 1 {
                    indexes.remove(indexes.len() / 2);
                }
                if *reverse {
                    indexes.reverse();
                }
                for index in indexes {
                    self.spool().mark_delivered(index);
                    self.model.marked.insert(index);
                }
                if self.spool().persist_cursor().is_ok() {
                    self.model.note_drops(self.spool.as_mut().expect("open"));
                }
            }
            Op::Rewind => self.spool().rewind_to_cursor(),
            Op::PowerLoss => {
                self.close();
                self.disk.crash();
                self.reopen()?;
            }
            Op::ProcessCrash => {
                self.close();
                self.disk.crash_process();
                self.reopen()?;
            }
            Op::FlipBits { count } => {
                let flips = self.disk.flip_random_bits(&self.config.dir, u32::from(*count));
                self.model.flips += flips.len() as u64;
            }
            Op::FailNextSync => self.disk.fail_next(FaultOp::SyncData, 1),
            Op::FailNextDirSync => self.disk.fail_next(FaultOp::SyncDir, 1),
            Op::FillDisk { headroom } => {
                let used = self.disk.used_bytes();
                self.disk.set_capacity_bytes(Some(used + u64::from(*headroom)));
            }
            Op::FreeDisk => self.disk.set_capacity_bytes(None),
        }
        Ok(())
    }

    /// Drops the running spool (as a crash does), noting what it reported.
    fn close(&mut self) {
        if let Some(spool) = self.spool.take() {
            self.model.runtime_damage_reported += spool.stats().damaged_ranges_total;
        }
    }

    fn commit(&mut self) -> Checked {
        match self.spool().commit() {
            Ok(committed) => {
                let model = &mut self.model;
                for record in committed.records {
                    let appended = model.appended.get(&record.index);
                    check(appended == Some(&record.reading), || {
                        format!("committed {} is not what was appended", record.index)
                    })?;
                    model.acked.insert(record.index);
                }
            }
            Err(SpoolError::CommitFailed { .. }) => {}
            Err(error) => return Err(format!("commit: {error}")),
        }
        self.model.note_drops(self.spool.as_mut().expect("open"));
        Ok(())
    }
}

/// Runs one case; `Err` describes the first broken property.
fn run_case(case: &Case, planted: PlantedBugs) -> Checked {
    let disk = CrashDisk::new(case.seed);
    disk.set_block_size_bytes(case.block_size_bytes);
    let mut run = Run {
        disk,
        config: spool_config(case, planted),
        spool: None,
        model: Model::default(),
        read_corruption: case.read_corruption,
    };
    run.reopen()?;
    for (step, op) in case.ops.iter().enumerate() {
        run.step(op).map_err(|e| format!("step {step} {op:?}: {e}"))?;
    }
    // Finally: a power cut, and everything acknowledged must be there.
    run.step(&Op::PowerLoss)
        .map_err(|e| format!("final power loss: {e}"))?;
    run.step(&Op::ProcessCrash)
        .map_err(|e| format!("final process crash: {e}"))
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn recovery_keeps_every_acknowledged_record(case in case_strategy()) {
        if let Err(failure) = run_case(&case, PlantedBugs::default()) {
            return Err(TestCaseError::fail(failure));
        }
    }
}

/// Each planted bug must make the same checker fail on some generated case:
/// proof that the properties above can fail.
fn planted_bug_is_caught(planted: PlantedBugs) {
    let mut runner = TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = case_strategy();
    for attempt in 0..300 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(&case, planted)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => {
                eprintln!("{planted:?} caught on case {attempt}: {failure}");
                return;
            }
            Err(_) => {
                eprintln!("{planted:?} caught on case {attempt} (assertion)");
                return;
            }
        }
    }
    panic!("the checker never caught the planted bug {planted:?}");
}

#[test]
fn planted_ack_before_sync_is_caught() {
    planted_bug_is_caught(PlantedBugs {
        ack_before_sync: true,
        ..PlantedBugs::default()
    });
}

#[test]
fn planted_skip_segment_sync_dir_is_caught() {
    planted_bug_is_caught(PlantedBugs {
        skip_segment_sync_dir: true,
        ..PlantedBugs::default()
    });
}

#[test]
fn planted_truncate_at_first_bad_crc_is_caught() {
    planted_bug_is_caught(PlantedBugs {
        truncate_at_first_bad_crc: true,
        ..PlantedBugs::default()
    });
}

#[test]
fn regressions_directory_is_where_failures_land() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions"));
    assert!(
        dir.is_dir(),
        "{} must exist (committed with a README)",
        dir.display()
    );
}
