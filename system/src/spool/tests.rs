//! Unit tests of the spool engine (open, append, commit, read, deliver,
//! full policies, planted bugs) on the crash-simulating disk and on the real
//! filesystem.

use super::*;
use crate::disk::memory::{CrashDisk, FaultOp, PPM};
use crate::disk::{Disk, StdDisk};
use crate::model::Reading;
use crate::model::tests::sample;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn dir() -> PathBuf {
    PathBuf::from("/gw/spool")
}

fn small_config(dir: &Path) -> SpoolConfig {
    let mut config = SpoolConfig::new(dir);
    config.segment_max_bytes = 4096;
    config.max_bytes = 1 << 20;
    config.max_record_bytes = 1024;
    config.max_uncommitted_bytes = 4096;
    config.seq_reservation_block = 16;
    config
}

fn open(disk: &CrashDisk, config: &SpoolConfig) -> (Spool, RecoveryReport) {
    Spool::open(Rc::new(disk.clone()), config.clone()).expect("the spool opens")
}

/// Appends `count` readings of `sensor` with seqs from `next_seq`.
fn append_readings(spool: &mut Spool, sensor: &str, count: u64) -> Vec<(u64, Reading)> {
    (0..count)
        .map(|_| {
            let seq = spool.next_seq(sensor).unwrap();
            let reading = sample(sensor, seq);
            let index = spool.append(&reading).unwrap();
            (index, reading)
        })
        .collect()
}

fn drain(spool: &mut Spool) -> Vec<SpooledRecord> {
    let mut all = Vec::new();
    loop {
        let batch = spool.read_next(7).unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn deliver_all(spool: &mut Spool) -> Vec<SpooledRecord> {
    let records = drain(spool);
    for record in &records {
        spool.mark_delivered(record.index);
    }
    spool.persist_cursor().unwrap();
    records
}

fn indexes(records: &[SpooledRecord]) -> Vec<u64> {
    records.iter().map(|r| r.index).collect()
}

#[test]
fn append_commit_read_deliver() {
    let disk = CrashDisk::new(1);
    let config = small_config(&dir());
    let (mut spool, report) = open(&disk, &config);
    assert_eq!(report.cursor.source, StateSource::Fresh);
    assert_eq!(report.seq_state.source, StateSource::Fresh);
    let appended = append_readings(&mut spool, "s1", 5);
    assert!(spool.has_uncommitted());
    assert!(spool.read_next(100).unwrap().is_empty(), "nothing durable yet");
    let committed = spool.commit().unwrap();
    assert!(!spool.has_uncommitted());
    assert_eq!(committed.len(), 5);
    assert_eq!(
        committed
            .records
            .iter()
            .map(|r| (r.index, r.reading.clone()))
            .collect::<Vec<_>>(),
        appended
    );
    let records = spool.read_next(3).unwrap();
    assert_eq!(indexes(&records), vec![1, 2, 3]);
    let codec = crate::codec::ReadingCodec::v1();
    assert_eq!(codec.decode_body(&records[0].body).unwrap(), records[0].reading);
    let stats = spool.stats();
    assert_eq!((stats.depth_records, stats.in_flight_records), (5, 3));
    assert_eq!(
        stats.oldest_undelivered_event_time_ms,
        Some(appended[0].1.event_time_ms)
    );
    // Out-of-order reports: the cursor waits for the gap.
    spool.mark_delivered(2);
    assert_eq!(spool.cursor(), 0);
    spool.mark_delivered(1);
    assert_eq!(spool.cursor(), 2);
    assert_eq!(
        spool.stats().oldest_undelivered_event_time_ms,
        Some(appended[2].1.event_time_ms)
    );
    spool.mark_delivered(42); // never read: ignored
    spool.persist_cursor().unwrap();
    assert_eq!(spool.persisted_cursor(), 2);
    let rest = spool.read_next(100).unwrap();
    assert_eq!(indexes(&rest), vec![4, 5]);
    for index in [3, 4, 5] {
        spool.mark_delivered(index);
    }
    spool.persist_cursor().unwrap();
    let stats = spool.stats();
    assert_eq!(
        (stats.depth_records, stats.delivered_total, stats.cursor_index),
        (0, 5, 5)
    );
    assert_eq!(stats.oldest_undelivered_event_time_ms, None);
}

#[test]
fn rewind_resends_only_undelivered() {
    let disk = CrashDisk::new(2);
    let (mut spool, _) = open(&disk, &small_config(&dir()));
    append_readings(&mut spool, "s1", 6);
    spool.commit().unwrap();
    assert_eq!(indexes(&spool.read_next(10).unwrap()), vec![1, 2, 3, 4, 5, 6]);
    spool.mark_delivered(1);
    spool.mark_delivered(4);
    spool.rewind_to_cursor();
    assert_eq!(indexes(&spool.read_next(10).unwrap()), vec![2, 3, 5, 6]);
    for index in [2, 3, 5, 6] {
        spool.mark_delivered(index);
    }
    assert_eq!(spool.cursor(), 6);
}

#[test]
fn reopen_resumes_after_the_persisted_cursor_and_deletes_delivered_segments() {
    let disk = CrashDisk::new(3);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    for _ in 0..10 {
        append_readings(&mut spool, "s1", 10);
        spool.commit().unwrap();
    }
    let segments_before = spool.stats().segments;
    assert!(segments_before >= 3, "{:?}", spool.stats());
    let read = spool.read_next(55).unwrap();
    for record in &read[..50] {
        spool.mark_delivered(record.index);
    }
    spool.persist_cursor().unwrap();
    let segments_after_delivery = spool.stats().segments;
    assert!(segments_after_delivery < segments_before);
    drop(spool);
    disk.crash();
    let (mut spool, report) = open(&disk, &config);
    assert_eq!(report.cursor.delivered_through_index, 50);
    assert_eq!(report.undelivered_records, 50);
    assert_eq!(report.damage.ranges_total, 0);
    let rest = drain(&mut spool);
    assert_eq!(indexes(&rest), (51..=100).collect::<Vec<_>>());
    // Sequence numbers continue above everything handed out.
    let seq = spool.next_seq("s1").unwrap();
    assert!(seq > 100);
}

#[test]
fn power_loss_keeps_every_acknowledged_record() {
    for seed in 0..30 {
        let disk = CrashDisk::new(seed);
        disk.set_block_size_bytes(64);
        let config = small_config(&dir());
        let (mut spool, _) = open(&disk, &config);
        let acked: Vec<u64> = (0..4)
            .flat_map(|_| {
                append_readings(&mut spool, "s1", 9);
                spool.commit().unwrap().records.into_iter().map(|r| r.index)
            })
            .collect();
        append_readings(&mut spool, "s2", 5); // never committed
        drop(spool);
        disk.crash();
        let (mut spool, report) = open(&disk, &config);
        assert_ne!(report.damage.verdict(), Verdict::Damaged, "seed {seed}: {report}");
        let recovered = indexes(&drain(&mut spool));
        assert_eq!(recovered, acked, "seed {seed}");
    }
}

#[test]
fn a_crash_mid_commit_leaves_a_reported_torn_tail_and_nothing_lost() {
    let mut torn_seen = false;
    for seed in 0..40 {
        let disk = CrashDisk::new(seed);
        disk.set_block_size_bytes(32);
        let config = small_config(&dir());
        let (mut spool, _) = open(&disk, &config);
        append_readings(&mut spool, "s1", 4);
        let acked = spool.commit().unwrap();
        append_readings(&mut spool, "s1", 4);
        // The write happens, the sync never does: power is cut in between.
        disk.fail_next(FaultOp::SyncData, COMMIT_ATTEMPTS_MAX);
        disk.fail_next(FaultOp::Create, COMMIT_ATTEMPTS_MAX);
        let error = spool.commit().unwrap_err();
        assert!(
            matches!(error, SpoolError::CommitFailed { ref unacknowledged, .. } if unacknowledged.len() == 4)
        );
        drop(spool);
        disk.crash();
        disk.heal();
        let (mut spool, report) = open(&disk, &config);
        let kinds: BTreeSet<DamageKind> = report.damage.ranges.iter().map(|r| r.kind).collect();
        assert!(
            kinds.iter().all(|k| k.is_crash_debris()),
            "seed {seed}: torn data after the synced point is crash debris: {report}"
        );
        torn_seen |= kinds.contains(&DamageKind::TornTail);
        let recovered = drain(&mut spool);
        let acked: Vec<u64> = acked.records.iter().map(|r| r.index).collect();
        assert_eq!(indexes(&recovered[..4]), acked, "seed {seed}");
        for record in &recovered {
            assert_eq!(
                record.reading,
                sample("s1", record.reading.seq),
                "intact, never altered"
            );
        }
    }
    assert!(torn_seen);
}

#[test]
fn failed_sync_re_appends_into_a_fresh_segment() {
    for seed in 0..20 {
        let disk = CrashDisk::new(seed);
        let config = small_config(&dir());
        let (mut spool, _) = open(&disk, &config);
        append_readings(&mut spool, "s1", 3);
        spool.commit().unwrap();
        append_readings(&mut spool, "s1", 3);
        disk.fail_next(FaultOp::SyncData, 1);
        let committed = spool.commit().expect("the retry succeeds");
        assert_eq!(
            committed.records.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        let stats = spool.stats();
        assert_eq!((stats.commit_failures_total, stats.segments), (1, 2));
        assert_eq!(indexes(&drain(&mut spool)), vec![1, 2, 3, 4, 5, 6]);
        drop(spool);
        disk.crash();
        let (mut spool, report) = open(&disk, &config);
        assert_eq!(
            indexes(&drain(&mut spool)),
            vec![1, 2, 3, 4, 5, 6],
            "seed {seed}: {report}"
        );
        assert!(
            report.damage.ranges.iter().all(|r| r.kind.is_crash_debris()),
            "{report}"
        );
    }
}

#[test]
fn persistent_sync_failure_acknowledges_nothing() {
    let disk = CrashDisk::new(4);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    append_readings(&mut spool, "s1", 2);
    disk.set_failure_rate_ppm(FaultOp::SyncData, PPM);
    let Err(SpoolError::CommitFailed {
        attempts,
        no_space,
        unacknowledged,
        ..
    }) = spool.commit()
    else {
        panic!("commit must fail");
    };
    assert_eq!(
        (attempts, no_space, unacknowledged.len()),
        (COMMIT_ATTEMPTS_MAX, false, 2)
    );
    assert!(!spool.has_uncommitted());
    assert!(spool.read_next(10).unwrap().is_empty());
    disk.heal();
    // The caller may append the same readings again: same seqs are allowed.
    for record in &unacknowledged {
        spool.append(&record.reading).unwrap();
    }
    let committed = spool.commit().unwrap();
    assert_eq!(committed.len(), 2);
    let stats = spool.stats();
    assert_eq!((stats.unacknowledged_total, stats.committed_total), (2, 2));
}

#[test]
fn seq_must_increase_and_records_are_bounded() {
    let disk = CrashDisk::new(5);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    spool.append(&sample("s1", 5)).unwrap();
    assert!(matches!(
        spool.append(&sample("s1", 5)),
        Err(SpoolError::SeqNotIncreasing { last_seq: 5, .. })
    ));
    spool.append(&sample("s2", 1)).unwrap();
    let mut huge = sample("s1", 6);
    huge.gateway_id = "g".repeat(200);
    assert!(matches!(
        spool.append(&huge),
        Err(SpoolError::InvalidReading { .. })
    ));
    let mut bad = sample("s1", 6);
    bad.moisture_vwc = f64::NAN;
    assert!(matches!(
        spool.append(&bad),
        Err(SpoolError::InvalidReading { .. })
    ));
    // The uncommitted batch is bounded.
    let mut seq = 10;
    let error = loop {
        match spool.append(&sample("s1", seq)) {
            Ok(_) => seq += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, SpoolError::BatchFull { .. }));
    spool.commit().unwrap();
    // A seq appended beyond the reservations is never handed out later.
    spool.append(&sample("s3", 1_000)).unwrap();
    spool.commit().unwrap();
    assert!(spool.next_seq("s3").unwrap() > 1_000);
}

#[test]
fn record_size_limit() {
    let disk = CrashDisk::new(5);
    let mut config = small_config(&dir());
    config.max_record_bytes = 256;
    let (mut spool, _) = open(&disk, &config);
    let mut reading = sample(&"s".repeat(100), 1);
    reading.gateway_id = "g".repeat(128);
    assert!(matches!(
        spool.append(&reading),
        Err(SpoolError::RecordTooLarge { .. })
    ));
}

#[test]
fn reject_new_when_full() {
    let disk = CrashDisk::new(6);
    let mut config = small_config(&dir());
    config.max_bytes = 8192;
    let (mut spool, _) = open(&disk, &config);
    let mut accepted = 0;
    let mut seq = 1;
    let full = loop {
        match spool.append(&sample("s1", seq)) {
            Ok(_) => {
                accepted += 1;
                seq += 1;
                if accepted % 10 == 0 {
                    spool.commit().unwrap();
                }
            }
            Err(error) => break error,
        }
    };
    assert!(full.is_full(), "{full}");
    spool.commit().unwrap();
    assert!(spool.stats().disk_bytes <= 8192);
    assert_eq!(spool.stats().rejected_full_total, 1);
    // Delivering frees room.
    deliver_all(&mut spool);
    spool.append(&sample("s1", seq)).unwrap();
    spool.commit().unwrap();
}

#[test]
fn drop_oldest_when_full_is_counted_and_described() {
    let disk = CrashDisk::new(7);
    let mut config = small_config(&dir());
    config.max_bytes = 8192;
    config.when_full = FullPolicy::DropOldest;
    let (mut spool, _) = open(&disk, &config);
    for _ in 0..20 {
        append_readings(&mut spool, "s1", 5);
        append_readings(&mut spool, "s2", 5);
        spool.commit().unwrap();
    }
    let stats = spool.stats();
    assert!(stats.disk_bytes <= 8192, "{stats:?}");
    assert!(stats.dropped_full_total > 0);
    let events = spool.take_drop_events();
    assert_eq!(events.len() as u64, stats.drop_events_total);
    let dropped: u64 = events.iter().map(|e| e.records).sum();
    assert_eq!(dropped, stats.dropped_full_total);
    assert_eq!(events[0].indexes.unwrap().first, 1);
    assert_eq!(events[0].sensors["s1"].first_seq, 1);
    let remaining = drain(&mut spool);
    assert_eq!(remaining.len() as u64 + dropped, 200);
    assert_eq!(remaining.last().unwrap().index, 200);
    assert!(remaining[0].index > events.last().unwrap().indexes.unwrap().last);
    // The cursor moved past the dropped records durably.
    drop(spool);
    disk.crash();
    let (spool, report) = open(&disk, &config);
    assert_eq!(report.undelivered_records, remaining.len() as u64);
    assert_eq!(spool.stats().depth_records, remaining.len() as u64);
}

#[test]
fn disk_enospc_follows_the_policy() {
    let disk = CrashDisk::new(8);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    append_readings(&mut spool, "s1", 20);
    spool.commit().unwrap();
    disk.set_capacity_bytes(Some(disk.used_bytes() + 300));
    append_readings(&mut spool, "s1", 20);
    let error = spool.commit().unwrap_err();
    assert!(error.is_full(), "{error}");
    assert_eq!(spool.stats().rejected_full_total, 20);
    // Nothing of the failed batch is readable; the earlier records are.
    assert_eq!(drain(&mut spool).len(), 20);
    disk.set_capacity_bytes(None);
    drop(spool);
    disk.crash();
    let (mut spool, report) = open(&disk, &config);
    assert_eq!(
        indexes(&drain(&mut spool)),
        (1..=20).collect::<Vec<_>>(),
        "{report}"
    );

    // Under DropOldest the oldest segment makes room and the batch lands.
    let disk = CrashDisk::new(9);
    let mut config = small_config(&dir());
    config.when_full = FullPolicy::DropOldest;
    let (mut spool, _) = open(&disk, &config);
    for _ in 0..3 {
        append_readings(&mut spool, "s1", 30);
        spool.commit().unwrap();
    }
    disk.set_capacity_bytes(Some(disk.used_bytes() + 500));
    append_readings(&mut spool, "s1", 10);
    let committed = spool.commit().unwrap();
    assert_eq!(committed.len(), 10);
    assert!(spool.stats().dropped_full_total > 0);
}

#[test]
fn runtime_damage_is_skipped_counted_and_never_returned() {
    let disk = CrashDisk::new(10);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    let appended = append_readings(&mut spool, "s1", 10);
    spool.commit().unwrap();
    let segment = disk
        .paths()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("seg-"))
        .unwrap();
    let bytes = disk.file_bytes(&segment).unwrap();
    disk.flip_bit(&segment, bytes.len() as u64 / 2, 4).unwrap();
    let records = drain(&mut spool);
    assert_eq!(records.len(), 9);
    for record in &records {
        assert_eq!(record.reading, appended[record.index as usize - 1].1);
    }
    let stats = spool.stats();
    assert_eq!((stats.damaged_ranges_total, stats.damaged_records_total), (1, 1));
    for record in &records {
        spool.mark_delivered(record.index);
    }
    assert_eq!(spool.cursor(), 10, "the cursor passes the damaged record");
    assert_eq!(spool.stats().depth_records, 0);
    // Reading again after a rewind does not count it twice.
    spool.rewind_to_cursor();
    assert!(drain(&mut spool).is_empty());
    assert_eq!(spool.stats().damaged_ranges_total, 1);
}

#[test]
fn damage_of_an_in_flight_record_does_not_block_the_cursor() {
    let disk = CrashDisk::new(11);
    let (mut spool, _) = open(&disk, &small_config(&dir()));
    append_readings(&mut spool, "s1", 6);
    spool.commit().unwrap();
    let first = spool.read_next(6).unwrap();
    assert_eq!(first.len(), 6);
    let segment = disk
        .paths()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("seg-"))
        .unwrap();
    let bytes = disk.file_bytes(&segment).unwrap();
    disk.flip_bit(&segment, bytes.len() as u64 / 2, 1).unwrap();
    spool.rewind_to_cursor();
    let again = spool.read_next(6).unwrap();
    assert_eq!(again.len(), 5);
    for record in &again {
        spool.mark_delivered(record.index);
    }
    assert_eq!(spool.cursor(), 6);
}

#[test]
fn transient_read_corruption_costs_nothing() {
    let disk = CrashDisk::new(12);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    for _ in 0..10 {
        append_readings(&mut spool, "s1", 20);
        spool.commit().unwrap();
    }
    disk.set_read_corruption_ppm(PPM / 50);
    let records = deliver_all(&mut spool);
    assert_eq!(indexes(&records), (1..=200).collect::<Vec<_>>());
    let stats = spool.stats();
    assert_eq!(stats.damaged_ranges_total, 0);
    assert!(stats.transient_read_retries_total > 0, "{stats:?}");
}

#[test]
fn in_flight_records_are_bounded() {
    let disk = CrashDisk::new(13);
    let mut config = small_config(&dir());
    config.max_in_flight_records = 4;
    let (mut spool, _) = open(&disk, &config);
    append_readings(&mut spool, "s1", 10);
    spool.commit().unwrap();
    assert_eq!(spool.read_next(10).unwrap().len(), 4);
    assert!(spool.read_next(10).unwrap().is_empty());
    spool.mark_delivered(1);
    spool.mark_delivered(2);
    assert_eq!(indexes(&spool.read_next(10).unwrap()), vec![5, 6]);
}

#[test]
fn seqs_survive_crashes_with_lost_readings() {
    let disk = CrashDisk::new(14);
    let config = small_config(&dir());
    let mut handed_out = Vec::new();
    for _ in 0..5 {
        let (mut spool, _) = open(&disk, &config);
        for _ in 0..7 {
            let seq = spool.next_seq("s1").unwrap();
            spool.append(&sample("s1", seq)).unwrap();
            handed_out.push(seq);
        }
        // Half the time the batch is lost with the power.
        if handed_out.len() % 2 == 0 {
            spool.commit().unwrap();
        }
        drop(spool);
        disk.crash();
    }
    assert!(handed_out.windows(2).all(|w| w[0] < w[1]), "{handed_out:?}");
}

#[test]
fn segments_roll_at_their_size() {
    let disk = CrashDisk::new(15);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    for _ in 0..30 {
        append_readings(&mut spool, "s1", 7);
        spool.commit().unwrap();
    }
    for path in disk.paths() {
        if path.to_string_lossy().contains("seg-") {
            assert!(disk.file_bytes(&path).unwrap().len() as u64 <= config.segment_max_bytes);
        }
    }
    assert_eq!(indexes(&drain(&mut spool)), (1..=210).collect::<Vec<_>>());
}

#[test]
fn inspect_and_verify_never_modify_a_damaged_spool() {
    let disk = CrashDisk::new(16);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    for sensor in ["s1", "s2"] {
        append_readings(&mut spool, sensor, 30);
        spool.commit().unwrap();
    }
    let read = spool.read_next(10).unwrap();
    for record in &read {
        spool.mark_delivered(record.index);
    }
    spool.persist_cursor().unwrap();
    append_readings(&mut spool, "s1", 3);
    drop(spool);
    let first_segment = disk
        .paths()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("seg-"))
        .unwrap();
    let flips = disk.flip_random_bits(&first_segment, 3);
    assert_eq!(flips.len(), 3);
    let snapshot: Vec<(PathBuf, Vec<u8>)> = disk
        .paths()
        .into_iter()
        .map(|p| {
            let bytes = disk.file_bytes(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let inspected = inspect(&disk, &dir()).unwrap();
    let verified = verify(&disk, &dir()).unwrap();
    let after: Vec<(PathBuf, Vec<u8>)> = disk
        .paths()
        .into_iter()
        .map(|p| {
            let bytes = disk.file_bytes(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert_eq!(snapshot, after, "read-only");
    assert_eq!(inspected.cursor.delivered_through_index, 10);
    assert!(inspected.records >= 57 && inspected.records <= 60);
    assert_eq!(inspected.sensors.len(), 2);
    assert!(inspected.to_string().contains("s2:"));
    let json = serde_json::to_value(&inspected).unwrap();
    assert!(json["sensors"]["s1"]["records"].as_u64().unwrap() >= 27);
    assert_eq!(verified.records_intact, inspected.records);
    assert!(verify(&disk, Path::new("/nope")).is_err());
}

#[test]
fn planted_ack_before_sync_loses_acknowledged_records() {
    let mut lost = false;
    for seed in 0..10 {
        let disk = CrashDisk::new(seed);
        let mut config = small_config(&dir());
        config.planted.ack_before_sync = true;
        let (mut spool, report) = open(&disk, &config);
        assert!(report.to_string().contains("PLANTED"));
        append_readings(&mut spool, "s1", 10);
        let acked = spool.commit().unwrap();
        drop(spool);
        disk.crash();
        let (mut spool, _) = open(&disk, &config);
        lost |= drain(&mut spool).len() < acked.len();
    }
    assert!(lost, "the planted bug must be observable");
}

#[test]
fn planted_skip_segment_sync_dir_loses_a_whole_segment() {
    let disk = CrashDisk::new(17);
    let mut config = small_config(&dir());
    config.planted.skip_segment_sync_dir = true;
    let (mut spool, _) = open(&disk, &config);
    append_readings(&mut spool, "s1", 10);
    let acked = spool.commit().unwrap();
    assert_eq!(acked.len(), 10);
    drop(spool);
    disk.crash();
    let (mut spool, _) = open(&disk, &config);
    assert!(drain(&mut spool).is_empty());
}

#[test]
fn planted_truncate_at_first_bad_crc_loses_intact_records() {
    let build = |planted: bool| {
        let disk = CrashDisk::new(18);
        let mut config = small_config(&dir());
        config.planted.truncate_at_first_bad_crc = planted;
        let (mut spool, _) = open(&disk, &config);
        append_readings(&mut spool, "s1", 20);
        spool.commit().unwrap();
        drop(spool);
        let segment = disk
            .paths()
            .into_iter()
            .find(|p| p.to_string_lossy().contains("seg-"))
            .unwrap();
        disk.flip_bit(&segment, 200, 0).unwrap();
        let (mut spool, _) = open(&disk, &config);
        drain(&mut spool).len()
    };
    assert_eq!(build(false), 19);
    assert!(build(true) < 19);
}

#[test]
fn damaged_state_files_never_prevent_opening() {
    let disk = CrashDisk::new(19);
    let config = small_config(&dir());
    let (mut spool, _) = open(&disk, &config);
    append_readings(&mut spool, "s1", 10);
    spool.commit().unwrap();
    deliver_all(&mut spool);
    let last_seq = spool.next_seq("s1").unwrap();
    drop(spool);
    for name in ["cursor-a.slot", "cursor-b.slot", "seqs-a.slot", "seqs-b.slot"] {
        disk.flip_bit(&dir().join(name), 9, 0).unwrap();
    }
    let (mut spool, report) = open(&disk, &config);
    assert!(report.state_degraded());
    assert_eq!(report.cursor.source, StateSource::Fallback);
    assert_eq!(report.seq_state.source, StateSource::Fallback);
    assert!(spool.next_seq("s1").unwrap() > last_seq);
    // The active segment was never deleted: a lost cursor means
    // redelivery (duplicates, removed downstream), never loss.
    assert_eq!(indexes(&drain(&mut spool)), (1..=10).collect::<Vec<_>>());
}

#[test]
fn foreign_files_are_left_alone_and_reported() {
    let disk = CrashDisk::new(20);
    disk.create_dir_all(&dir()).unwrap();
    let mut file = disk.create_new(&dir().join("notes.txt")).unwrap();
    file.append(b"hello").unwrap();
    let (_, report) = open(&disk, &small_config(&dir()));
    assert_eq!(report.unknown_files, vec!["notes.txt".to_string()]);
    assert_eq!(disk.file_bytes(&dir().join("notes.txt")).unwrap(), b"hello");
}

/// The acceptance scenario on the real filesystem: bytes flipped in the
/// middle of a spool directory are reported by `verify`, and draining still
/// yields every intact record.
#[test]
fn std_disk_flipped_bytes_in_the_middle() {
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let mut config = small_config(&spool_dir);
    config.segment_max_bytes = 8192;
    config.max_uncommitted_bytes = 8192;
    let disk: Rc<dyn Disk> = Rc::new(StdDisk);
    let (mut spool, _) = Spool::open(Rc::clone(&disk), config.clone()).unwrap();
    let mut appended = Vec::new();
    for _ in 0..12 {
        appended.extend(append_readings(&mut spool, "probe-a", 10));
        appended.extend(append_readings(&mut spool, "probe-b", 10));
        spool.commit().unwrap();
    }
    drop(spool);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3);
    let middle = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(middle).unwrap();
    let at = bytes.len() / 2;
    for byte in &mut bytes[at..at + 16] {
        *byte ^= 0xA5;
    }
    std::fs::write(middle, &bytes).unwrap();

    let verified = verify(disk.as_ref(), &spool_dir).unwrap();
    assert_eq!(verified.verdict, Verdict::Damaged, "{verified}");
    assert!(verified.damage.ranges_total >= 1);
    let range = &verified.damage.ranges[0];
    assert!(
        range.start_offset <= at as u64 && at as u64 + 16 <= range.end_offset,
        "{verified}"
    );
    let missing = range.missing_indexes.expect("intact records follow the damage");

    let (mut spool, report) = Spool::open(Rc::clone(&disk), config).unwrap();
    assert_eq!(report.damage.ranges_total, verified.damage.ranges_total);
    let drained = deliver_all(&mut spool);
    let expected: Vec<u64> = (1..=appended.len() as u64)
        .filter(|i| *i < missing.first || *i > missing.last)
        .collect();
    assert_eq!(indexes(&drained), expected);
    for record in &drained {
        assert_eq!(record.reading, appended[record.index as usize - 1].1);
    }
}
