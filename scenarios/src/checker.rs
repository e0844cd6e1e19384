//! The checker: judges a topic against the ledger, in either world.
//!
//! Anomalies follow Jepsen's Kafka queue checker, extended with durability
//! and event time:
//!
//! | anomaly | meaning | fails the run |
//! |---|---|---|
//! | `lost` | acknowledged durable, never in the topic, not explained by reported damage or drops | yes |
//! | `unexpected` | in the topic, never sampled by any gateway | yes |
//! | `corrupt` | undecodable, or values/headers differ from what was sampled | yes |
//! | `nonmonotonic` | per sensor, a first copy with a lower `seq` after a higher one (offset order) | yes |
//! | `inconsistent_offset` | a delivery report named an offset that holds another reading or nothing | yes |
//! | `timestamp_mismatch` | Kafka timestamp is not the event time (or not CreateTime) | yes |
//! | `wrong_partition` | a sensor's record is not in the partition its key hashes to | yes |
//! | `seq_reused` | two different readings sampled with one identity | yes |
//! | `duplicate` | an identity more than once in the topic | only if the options say so |
//!
//! Allowed losses are counted, never silent: readings lost before they were
//! durable (power cut), readings rejected (full spool, invalid, disk error),
//! readings dropped by the drop-oldest policy, records destroyed by reported
//! spool damage.

use crate::ledger::{Fate, Ledger, RejectReasonKey};
use serde::Serialize;
use soilstream::gateway::{HEADER_GATEWAY_ID, HEADER_SEQ};
use soilstream::model::{Reading, ReadingId};
use soilstream::transport::{ConsumedRecord, TimestampKind, partition_for_key};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Most examples kept per anomaly kind.
pub const EXAMPLES_PER_ANOMALY_MAX: usize = 10;

/// The kinds of anomaly (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Durable, never delivered.
    Lost,
    /// Delivered, never sampled.
    Unexpected,
    /// Undecodable or altered.
    Corrupt,
    /// Per-sensor order broken.
    Nonmonotonic,
    /// A reported offset holds something else.
    InconsistentOffset,
    /// Kafka timestamp differs from the event time.
    TimestampMismatch,
    /// Record in the wrong partition for its key.
    WrongPartition,
    /// One identity, two readings.
    SeqReused,
    /// More than one copy of an identity.
    Duplicate,
}

impl AnomalyKind {
    /// The Jepsen-style name.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Unexpected => "unexpected",
            AnomalyKind::Corrupt => "corrupt",
            AnomalyKind::Nonmonotonic => "nonmonotonic",
            AnomalyKind::InconsistentOffset => "inconsistent_offset",
            AnomalyKind::TimestampMismatch => "timestamp_mismatch",
            AnomalyKind::WrongPartition => "wrong_partition",
            AnomalyKind::SeqReused => "seq_reused",
            AnomalyKind::Duplicate => "duplicate",
        }
    }
}

/// How strict to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Whether duplicates fail the check (true for deduplicated topics, false
    /// for the raw topic where they are only counted).
    pub duplicates_fail: bool,
}

/// The anomalies of one kind: how many, and a few examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AnomalyList {
    /// Number of occurrences.
    pub count: u64,
    /// Up to [`EXAMPLES_PER_ANOMALY_MAX`] descriptions.
    pub examples: Vec<String>,
}

/// Counts of what happened to the readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Readings sampled (0 when the ledger only knows durable readings).
    pub sampled: u64,
    /// Readings acknowledged durable.
    pub durable: u64,
    /// Records in the topic.
    pub records_in_topic: u64,
    /// Distinct identities in the topic.
    pub delivered_unique: u64,
    /// Extra copies in the topic (records minus distinct identities).
    pub duplicates: u64,
    /// Sampled, not durable at a crash or power cut, and never delivered.
    pub lost_before_durable: u64,
    /// Delivered although never acknowledged durable (in flight at a crash).
    pub delivered_unacknowledged: u64,
    /// Rejected because the spool was full.
    pub rejected_spool_full: u64,
    /// Rejected as invalid.
    pub rejected_invalid: u64,
    /// Rejected after a disk error.
    pub rejected_io: u64,
    /// Durable readings missing and explained by reported spool damage or
    /// reported drop-oldest drops.
    pub lost_to_reported_damage_or_drop: u64,
    /// Sampled, never durable, no crash: the run ended before a commit.
    pub never_committed: u64,
}

/// The verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Whether no failing anomaly was found.
    pub valid: bool,
    /// What happened to the readings.
    pub tally: Tally,
    /// Anomalies by kind (only kinds that occurred).
    pub anomalies: BTreeMap<AnomalyKind, AnomalyList>,
}

impl CheckReport {
    fn add(&mut self, kind: AnomalyKind, example: impl FnOnce() -> String) {
        let list = self.anomalies.entry(kind).or_default();
        list.count += 1;
        if list.examples.len() < EXAMPLES_PER_ANOMALY_MAX {
            list.examples.push(example());
        }
    }

    /// Occurrences of `kind`.
    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.anomalies.get(&kind).map_or(0, |l| l.count)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        writeln!(f, "verdict: {}", if self.valid { "VALID" } else { "INVALID" })?;
        writeln!(
            f,
            "readings: sampled={} durable={} in_topic={} unique={} duplicates={} lost_before_durable={} \
             delivered_unacknowledged={} rejected(full/invalid/io)={}/{}/{} lost_to_reported_damage_or_drop={} never_committed={}",
            t.sampled,
            t.durable,
            t.records_in_topic,
            t.delivered_unique,
            t.duplicates,
            t.lost_before_durable,
            t.delivered_unacknowledged,
            t.rejected_spool_full,
            t.rejected_invalid,
            t.rejected_io,
            t.lost_to_reported_damage_or_drop,
            t.never_committed,
        )?;
        for (kind, list) in &self.anomalies {
            writeln!(f, "anomaly {}: {}", kind.name(), list.count)?;
            for example in &list.examples {
                writeln!(f, "  - {example}")?;
            }
        }
        Ok(())
    }
}

/// Decodes a record value into a reading, or says why it cannot.
pub type Decoder<'a> = &'a dyn Fn(&[u8]) -> Result<Reading, String>;

/// Judges the records of a keyed readings topic (in (partition, offset)
/// order, as read to the end after the system drained) against the ledger.
pub fn check_topic(
    ledger: &Ledger,
    records: &[ConsumedRecord],
    partition_count: u32,
    decode: Decoder<'_>,
    options: CheckOptions,
) -> CheckReport {
    assert!(partition_count > 0, "a topic has at least one partition");
    debug_assert!(
        records
            .windows(2)
            .all(|w| (w[0].partition, w[0].offset) < (w[1].partition, w[1].offset)),
        "records come in (partition, offset) order"
    );
    let mut report = CheckReport::default();
    let mut copies: BTreeMap<ReadingId, u64> = BTreeMap::new();
    let mut at_offset: BTreeMap<(i32, i64), Reading> = BTreeMap::new();
    // (gateway, sensor) -> highest seq among first copies so far.
    let mut highest_first_seq: BTreeMap<(String, String), u64> = BTreeMap::new();

    for record in records {
        let place = format!("partition {} offset {}", record.partition, record.offset);
        let Some(value) = record.value.as_deref() else {
            report.add(AnomalyKind::Corrupt, || {
                format!("{place}: record without a value")
            });
            continue;
        };
        let reading = match decode(value) {
            Ok(r) => r,
            Err(reason) => {
                report.add(AnomalyKind::Corrupt, || format!("{place}: {reason}"));
                continue;
            }
        };
        report.tally.records_in_topic += 1;
        let expected_partition = partition_for_key(reading.sensor_id.as_bytes(), partition_count);
        if record.partition != expected_partition
            || record.key.as_deref() != Some(reading.sensor_id.as_bytes())
        {
            report.add(AnomalyKind::WrongPartition, || {
                format!(
                    "{place}: sensor {} belongs in partition {expected_partition} with its id as key",
                    reading.sensor_id
                )
            });
        }
        if record.timestamp_kind != TimestampKind::CreateTime || record.timestamp_ms != reading.event_time_ms
        {
            report.add(AnomalyKind::TimestampMismatch, || {
                format!(
                    "{place}: timestamp {} ({:?}) but event time {}",
                    record.timestamp_ms, record.timestamp_kind, reading.event_time_ms
                )
            });
        }
        let seq_header = record
            .header(HEADER_SEQ)
            .and_then(|v| std::str::from_utf8(v).ok());
        let gateway_header = record
            .header(HEADER_GATEWAY_ID)
            .and_then(|v| std::str::from_utf8(v).ok());
        if seq_header != Some(reading.seq.to_string().as_str())
            || gateway_header != Some(reading.gateway_id.as_str())
        {
            report.add(AnomalyKind::Corrupt, || {
                format!(
                    "{place}: headers gateway_id={gateway_header:?} seq={seq_header:?} disagree with the value ({} seq {})",
                    reading.gateway_id, reading.seq
                )
            });
        }
        match ledger.entries().get(&reading.id()) {
            Some(entry) if !entry.reading.same_values(&reading) => {
                report.add(AnomalyKind::Corrupt, || {
                    format!(
                        "{place}: {:?} differs from what was sampled: {:?}",
                        reading, entry.reading
                    )
                });
            }
            Some(_) => {}
            None if ledger.knows_sampled => {
                report.add(AnomalyKind::Unexpected, || {
                    format!("{place}: {:?} was never sampled", reading.id())
                });
            }
            None => {} // real world: fsynced but not yet in the ledger file at a kill
        }
        let count = copies.entry(reading.id()).or_default();
        *count += 1;
        if *count == 1 {
            let key = (reading.gateway_id.clone(), reading.sensor_id.clone());
            match highest_first_seq.get(&key) {
                Some(&highest) if reading.seq <= highest => {
                    report.add(AnomalyKind::Nonmonotonic, || {
                        format!(
                            "{place}: sensor {} seq {} after seq {highest}",
                            reading.sensor_id, reading.seq
                        )
                    });
                }
                _ => {
                    highest_first_seq.insert(key, reading.seq);
                }
            }
        }
        at_offset.insert((record.partition, record.offset), reading);
    }

    report.tally.delivered_unique = copies.len() as u64;
    report.tally.duplicates = report.tally.records_in_topic - report.tally.delivered_unique;
    for (id, &count) in &copies {
        if count > 1 {
            report.add(AnomalyKind::Duplicate, || format!("{id:?} appears {count} times"));
        }
    }

    for (a, b) in ledger.reused_identities() {
        report.add(AnomalyKind::SeqReused, || {
            format!("{:?} sampled as {a:?} and as {b:?}", a.id())
        });
    }

    // Durable readings that never arrived, per gateway, before excuses.
    let mut missing_durable: BTreeMap<String, Vec<ReadingId>> = BTreeMap::new();
    for (id, entry) in ledger.entries() {
        let delivered = copies.contains_key(id);
        if ledger.knows_sampled {
            report.tally.sampled += 1;
        }
        match entry.fate {
            Fate::Durable => {
                report.tally.durable += 1;
                if !delivered {
                    missing_durable
                        .entry(id.gateway_id.clone())
                        .or_default()
                        .push(id.clone());
                }
            }
            Fate::LostBeforeDurable if !delivered => report.tally.lost_before_durable += 1,
            Fate::Rejected(reason) if !delivered => match reason {
                RejectReasonKey::SpoolFull => report.tally.rejected_spool_full += 1,
                RejectReasonKey::Invalid => report.tally.rejected_invalid += 1,
                RejectReasonKey::Io => report.tally.rejected_io += 1,
            },
            Fate::Sampled if !delivered => report.tally.never_committed += 1,
            Fate::Sampled | Fate::LostBeforeDurable | Fate::Rejected(_) => {
                report.tally.delivered_unacknowledged += 1;
            }
        }
        for position in &entry.delivered_at {
            match at_offset.get(&(position.partition, position.offset)) {
                Some(found) if found.same_values(&entry.reading) => {}
                found => report.add(AnomalyKind::InconsistentOffset, || {
                    format!(
                        "{id:?} was acknowledged at partition {} offset {}, which holds {:?}",
                        position.partition,
                        position.offset,
                        found.map(|r| r.id())
                    )
                }),
            }
        }
    }
    for (gateway, missing) in missing_durable {
        let excused = ledger.damage_reports().get(&gateway).copied().unwrap_or(0)
            + ledger.reported_losses().get(&gateway).copied().unwrap_or(0);
        let excused_here = (missing.len() as u64).min(excused);
        report.tally.lost_to_reported_damage_or_drop += excused_here;
        for id in missing.iter().skip(excused_here as usize) {
            report.add(AnomalyKind::Lost, || {
                format!("{id:?} was acknowledged durable and never delivered")
            });
        }
    }

    let failing: BTreeSet<AnomalyKind> = report
        .anomalies
        .keys()
        .copied()
        .filter(|k| *k != AnomalyKind::Duplicate || options.duplicates_fail)
        .collect();
    report.valid = failing.is_empty();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use soilstream::codec::{ReadingCodec, from_wire, to_wire};
    use soilstream::transport::RecordPosition;

    fn reading(sensor: &str, seq: u64) -> Reading {
        Reading {
            gateway_id: "gw".into(),
            sensor_id: sensor.into(),
            seq,
            event_time_ms: 1_000 + seq as i64,
            moisture_vwc: 0.2,
            soil_temp_c: Some(10.0),
            bulk_ec_ds_m: None,
            depth_cm: 10,
            battery_v: None,
            source_flag: None,
        }
    }

    fn record(r: &Reading, partitions: u32, offset: i64) -> ConsumedRecord {
        let body = ReadingCodec::v1().encode_body(r).unwrap();
        ConsumedRecord {
            topic: "t".into(),
            partition: partition_for_key(r.sensor_id.as_bytes(), partitions),
            offset,
            key: Some(r.sensor_id.as_bytes().to_vec()),
            value: Some(to_wire(1, &body)),
            timestamp_ms: r.event_time_ms,
            timestamp_kind: TimestampKind::CreateTime,
            headers: vec![
                (HEADER_GATEWAY_ID.into(), r.gateway_id.as_bytes().to_vec()),
                (HEADER_SEQ.into(), r.seq.to_string().into_bytes()),
            ],
        }
    }

    fn decode(value: &[u8]) -> Result<Reading, String> {
        let (_, body) = from_wire(value).map_err(|e| e.to_string())?;
        ReadingCodec::v1().decode_body(body).map_err(|e| e.to_string())
    }

    fn check(ledger: &Ledger, records: &[ConsumedRecord]) -> CheckReport {
        let mut sorted = records.to_vec();
        sorted.sort_by_key(|r| (r.partition, r.offset));
        check_topic(ledger, &sorted, 1, &decode, CheckOptions::default())
    }

    #[test]
    fn clean_run_is_valid() {
        let mut ledger = Ledger::new(true);
        let rs: Vec<_> = (1..=3).map(|s| reading("a", s)).collect();
        rs.iter().for_each(|r| ledger.sampled(r));
        ledger.durable(&rs);
        let records: Vec<_> = rs
            .iter()
            .enumerate()
            .map(|(i, r)| record(r, 1, i as i64))
            .collect();
        let report = check(&ledger, &records);
        assert!(report.valid, "{report}");
        assert_eq!(report.tally.durable, 3);
        assert_eq!(report.tally.delivered_unique, 3);
    }

    #[test]
    fn each_anomaly_is_flagged() {
        let mut ledger = Ledger::new(true);
        let rs: Vec<_> = (1..=4).map(|s| reading("a", s)).collect();
        rs.iter().for_each(|r| ledger.sampled(r));
        ledger.durable(&rs);
        ledger.delivered(
            &rs[0],
            RecordPosition {
                partition: 0,
                offset: 7,
            },
        );
        let mut altered = rs[2].clone();
        altered.moisture_vwc = 0.9;
        let mut late_ts = record(&rs[0], 1, 2);
        late_ts.timestamp_ms += 1;
        let stranger = reading("b", 1);
        let records = vec![
            record(&rs[1], 1, 0),    // seq 2 first
            record(&rs[0], 1, 1),    // seq 1 after: nonmonotonic
            late_ts,                 // duplicate of seq 1 with a wrong timestamp
            record(&altered, 1, 3),  // corrupt
            record(&stranger, 1, 4), // unexpected
        ];
        // rs[3] (seq 4) never delivered: lost. rs[0] reported at offset 7: inconsistent.
        let report = check(&ledger, &records);
        assert!(!report.valid);
        for kind in [
            AnomalyKind::Nonmonotonic,
            AnomalyKind::TimestampMismatch,
            AnomalyKind::Corrupt,
            AnomalyKind::Unexpected,
            AnomalyKind::Lost,
            AnomalyKind::InconsistentOffset,
            AnomalyKind::Duplicate,
        ] {
            assert!(report.count(kind) > 0, "{kind:?} not flagged:\n{report}");
        }
    }

    #[test]
    fn allowed_losses_are_counted_not_failed() {
        let mut ledger = Ledger::new(true);
        let rs: Vec<_> = (1..=3).map(|s| reading("a", s)).collect();
        rs.iter().for_each(|r| ledger.sampled(r));
        ledger.durable(&rs[..1]);
        ledger.gateway_crashed("gw"); // rs[1], rs[2] lost before durable
        let report = check(&ledger, &[record(&rs[0], 1, 0)]);
        assert!(report.valid, "{report}");
        assert_eq!(report.tally.lost_before_durable, 2);
    }

    #[test]
    fn reported_damage_excuses_exactly_its_count() {
        let mut ledger = Ledger::new(true);
        let rs: Vec<_> = (1..=3).map(|s| reading("a", s)).collect();
        ledger.durable(&rs);
        ledger.damage_reported("gw", 1);
        let report = check(&ledger, &[record(&rs[0], 1, 0)]);
        assert_eq!(report.tally.lost_to_reported_damage_or_drop, 1);
        assert_eq!(report.count(AnomalyKind::Lost), 1);
    }

    #[test]
    fn duplicates_fail_only_when_asked() {
        let mut ledger = Ledger::new(true);
        let r = reading("a", 1);
        ledger.durable(std::slice::from_ref(&r));
        let records = vec![record(&r, 1, 0), record(&r, 1, 1)];
        assert!(check(&ledger, &records).valid);
        let strict = check_topic(
            &ledger,
            &records,
            1,
            &decode,
            CheckOptions {
                duplicates_fail: true,
            },
        );
        assert!(!strict.valid);
    }
}
