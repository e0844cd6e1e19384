//! The downstream checker: judges qaqc's output topics against the raw topic
//! (itself judged against the ledger by [`crate::checker`]), in either world.
//!
//! | anomaly | meaning |
//! |---|---|
//! | `lost_downstream` | a reading of the raw topic is in neither clean nor quarantine |
//! | `duplicate_downstream` | an identity more than once across clean and quarantine, or a raw record quarantined twice |
//! | `unexpected_downstream` | an output identity or source position the raw topic does not have |
//! | `corrupt_downstream` | clean values, key, partition, timestamp or headers differ from the raw reading; quarantine bytes differ from the raw record |
//! | `misclassified` | a clean reading fails a hard check offline, or a quarantine reason does not hold |
//! | `nonmonotonic_downstream` | per gateway and sensor, clean `seq` not increasing in offset order |
//! | `window_mismatch` | a window's last revision differs from the oracle over the readings that belong in clean, or a window is missing or extra |
//! | `window_revision` | a window revision written twice or out of order |
//! | `flags_mismatch` | a reading's final flags (clean record, then revisions) differ from the rules applied to the oracle's series |
//! | `alert_mismatch` | the alerts of a sensor and lane differ from the machines run over the aggregates as written |
//! | `alert_sequence` | a silent-sensor alert raised twice without a clear, or episodes not increasing |
//!
//! Every one fails the run. The oracle's readings are the first copies of
//! the raw identities that a verified quarantine record does not hold.

use serde::Serialize;
use soilstream::codec::from_wire;
use soilstream::model::Reading;
use soilstream::qaqc::QaqcSettings;
use soilstream::qaqc::alerts::AlertKind;
use soilstream::qaqc::checks::{QuarantineReason, value_checks};
use soilstream::qaqc::oracle::{
    CleanPoint, Identity, expected_flags, expected_window_alerts, expected_windows, final_flags,
    final_windows,
};
use soilstream::qaqc::records::{
    AlertRecord, CleanReading, FlagRevision, HEADER_DECIDED_AT, HEADER_REASON, HEADER_SENSOR_WATERMARK,
    HEADER_SRC_OFFSET, HEADER_SRC_PARTITION, OutputCodecs, WindowAggregate, header_i64, header_str,
};
use soilstream::transport::{ConsumedRecord, partition_for_key};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Most examples kept per anomaly kind.
pub const EXAMPLES_MAX: usize = 10;

/// The kinds of downstream anomaly (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownstreamAnomaly {
    /// In raw, in neither clean nor quarantine.
    LostDownstream,
    /// Twice downstream.
    DuplicateDownstream,
    /// Downstream, not in raw.
    UnexpectedDownstream,
    /// Altered on the way.
    CorruptDownstream,
    /// Wrong side of the hard checks.
    Misclassified,
    /// Clean out of seq order.
    NonmonotonicDownstream,
    /// A window differs from the oracle.
    WindowMismatch,
    /// A window revision twice or out of order.
    WindowRevision,
    /// Final flags differ from the rules.
    FlagsMismatch,
    /// Alerts differ from the machines.
    AlertMismatch,
    /// Silent alerts out of sequence.
    AlertSequence,
}

impl DownstreamAnomaly {
    /// The name in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::LostDownstream => "lost_downstream",
            Self::DuplicateDownstream => "duplicate_downstream",
            Self::UnexpectedDownstream => "unexpected_downstream",
            Self::CorruptDownstream => "corrupt_downstream",
            Self::Misclassified => "misclassified",
            Self::NonmonotonicDownstream => "nonmonotonic_downstream",
            Self::WindowMismatch => "window_mismatch",
            Self::WindowRevision => "window_revision",
            Self::FlagsMismatch => "flags_mismatch",
            Self::AlertMismatch => "alert_mismatch",
            Self::AlertSequence => "alert_sequence",
        }
    }
}

/// Anomalies of one kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Examples {
    /// Occurrences.
    pub count: u64,
    /// The first few.
    pub examples: Vec<String>,
}

impl Examples {
    /// Counts one occurrence, keeping its example while fewer than
    /// [`EXAMPLES_MAX`] are kept.
    pub fn record(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(example());
        }
    }

    /// Writes `anomaly NAME: COUNT` and the examples, one per line.
    pub fn write(&self, f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
        writeln!(f, "anomaly {name}: {}", self.count)?;
        for example in &self.examples {
            writeln!(f, "  - {example}")?;
        }
        Ok(())
    }
}

/// What the downstream topics hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownstreamTally {
    /// Distinct identities in the raw topic.
    pub raw_identities: u64,
    /// Raw records that repeat an identity (dropped by dedup).
    pub raw_repeats: u64,
    /// Clean records.
    pub clean: u64,
    /// Quarantine records, by reason code.
    pub quarantined: BTreeMap<String, u64>,
    /// Flag revisions.
    pub flag_revisions: u64,
    /// Readings whose final flags are not empty.
    pub flagged_readings: u64,
    /// Windows (distinct sensor and start).
    pub windows: u64,
    /// Windows written more than once (corrected by late data or replays).
    pub windows_revised: u64,
    /// Windows whose last revision is historical.
    pub windows_historical: u64,
    /// Alert transitions, by alert name.
    pub alerts: BTreeMap<String, u64>,
    /// Historical alert transitions.
    pub alerts_historical: u64,
}

/// The downstream verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DownstreamReport {
    /// Whether no anomaly was found.
    pub valid: bool,
    /// What the topics hold.
    pub tally: DownstreamTally,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<DownstreamAnomaly, Examples>,
}

impl DownstreamReport {
    fn add(&mut self, kind: DownstreamAnomaly, example: impl FnOnce() -> String) {
        self.anomalies.entry(kind).or_default().record(example);
    }

    /// Occurrences of `kind`.
    pub fn count(&self, kind: DownstreamAnomaly) -> u64 {
        self.anomalies.get(&kind).map_or(0, |e| e.count)
    }
}

impl fmt::Display for DownstreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        writeln!(f, "downstream: {}", if self.valid { "VALID" } else { "INVALID" })?;
        let quarantined: Vec<String> = t.quarantined.iter().map(|(r, n)| format!("{r}={n}")).collect();
        writeln!(
            f,
            "qaqc: raw_identities={} raw_repeats={} clean={} quarantined={} [{}] flag_revisions={} flagged={}",
            t.raw_identities,
            t.raw_repeats,
            t.clean,
            t.quarantined.values().sum::<u64>(),
            quarantined.join(" "),
            t.flag_revisions,
            t.flagged_readings,
        )?;
        let alerts: Vec<String> = t.alerts.iter().map(|(a, n)| format!("{a}={n}")).collect();
        writeln!(
            f,
            "windows: {} revised={} historical={}; alerts: [{}] historical={}",
            t.windows,
            t.windows_revised,
            t.windows_historical,
            alerts.join(" "),
            t.alerts_historical
        )?;
        for (kind, e) in &self.anomalies {
            e.write(f, kind.name())?;
        }
        Ok(())
    }
}

/// The qaqc output topics, each read to its end, in (partition, offset)
/// order.
#[derive(Debug, Clone, Default)]
pub struct DownstreamTopics {
    /// `soil-moisture-clean`.
    pub clean: Vec<ConsumedRecord>,
    /// `soil-moisture-quarantine`.
    pub quarantine: Vec<ConsumedRecord>,
    /// `soil-moisture-flags`.
    pub flags: Vec<ConsumedRecord>,
    /// `soil-moisture-aggregates`.
    pub aggregates: Vec<ConsumedRecord>,
    /// `soil-alerts`.
    pub alerts: Vec<ConsumedRecord>,
}

/// Decodes a raw value into a reading (the caller's, with writer schemas).
pub type RawDecoder<'a> = &'a dyn Fn(&[u8]) -> Result<Reading, String>;

fn decode<T: serde::Serialize + serde::de::DeserializeOwned>(
    codec: &soilstream::qaqc::records::RecordCodec<T>,
    record: &ConsumedRecord,
) -> Result<T, String> {
    let value = record.value.as_deref().ok_or("no value")?;
    let (_, body) = from_wire(value).map_err(|e| e.to_string())?;
    codec.decode_body(body).map_err(|e| e.to_string())
}

fn place(record: &ConsumedRecord) -> String {
    format!("{}/{}@{}", record.topic, record.partition, record.offset)
}

/// Judges the downstream topics. `raw`: the raw topic read to its end in
/// (partition, offset) order; `settings`: the qaqc settings the run used.
pub fn check_downstream(
    raw: &[ConsumedRecord],
    decode_raw: RawDecoder<'_>,
    topics: &DownstreamTopics,
    partition_count: u32,
    settings: &QaqcSettings,
) -> DownstreamReport {
    use DownstreamAnomaly as A;
    let codecs = OutputCodecs::default();
    let mut report = DownstreamReport::default();

    // The raw topic: first copies by identity, and every record by position.
    let mut raw_by_position: BTreeMap<(i32, i64), (&ConsumedRecord, Option<Reading>)> = BTreeMap::new();
    let mut first_copies: BTreeMap<Identity, (Reading, (i32, i64))> = BTreeMap::new();
    for record in raw {
        let reading = record.value.as_deref().and_then(|v| decode_raw(v).ok());
        if let Some(r) = &reading {
            let id = (r.gateway_id.clone(), r.sensor_id.clone(), r.seq);
            match first_copies.entry(id) {
                std::collections::btree_map::Entry::Occupied(_) => report.tally.raw_repeats += 1,
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((r.clone(), (record.partition, record.offset)));
                }
            }
        }
        raw_by_position.insert((record.partition, record.offset), (record, reading));
    }
    report.tally.raw_identities = first_copies.len() as u64;

    let co_partitioned = |report: &mut DownstreamReport, record: &ConsumedRecord, key: &str| {
        let expected = partition_for_key(key.as_bytes(), partition_count);
        let src_partition = header_i64(&record.headers, HEADER_SRC_PARTITION);
        if record.partition != expected
            || record.key.as_deref() != Some(key.as_bytes())
            || src_partition != Some(i64::from(record.partition))
        {
            report.add(A::CorruptDownstream, || {
                format!(
                    "{}: key {key} belongs in partition {expected} (source partition header {src_partition:?})",
                    place(record)
                )
            });
        }
    };

    // Clean.
    let mut downstream: BTreeMap<Identity, Vec<String>> = BTreeMap::new();
    let mut clean_records: Vec<CleanReading> = Vec::new();
    let mut last_seq: BTreeMap<(String, String), i64> = BTreeMap::new();
    for record in &topics.clean {
        let clean = match decode(&codecs.clean, record) {
            Ok(c) => c,
            Err(e) => {
                report.add(A::CorruptDownstream, || {
                    format!("{}: undecodable clean record: {e}", place(record))
                });
                continue;
            }
        };
        report.tally.clean += 1;
        co_partitioned(&mut report, record, &clean.sensor_id);
        let id: Identity = (
            clean.gateway_id.clone(),
            clean.sensor_id.clone(),
            clean.seq.max(0) as u64,
        );
        downstream.entry(id.clone()).or_default().push(place(record));
        match first_copies.get(&id) {
            None => report.add(A::UnexpectedDownstream, || {
                format!("{}: {id:?} is not in the raw topic", place(record))
            }),
            Some((r, _)) => {
                let same = r.moisture_vwc * 100.0 == clean.moisture_pct
                    && r.soil_temp_c.map(f64::to_bits) == clean.soil_temp_c.map(f64::to_bits)
                    && r.source_flag == clean.source_flag
                    && r.bulk_ec_ds_m.map(f64::to_bits) == clean.bulk_ec_ds_m.map(f64::to_bits)
                    && r.battery_v.map(f64::to_bits) == clean.battery_v.map(f64::to_bits)
                    && r.depth_cm == clean.depth_cm
                    && r.event_time_ms == clean.event_time
                    && record.timestamp_ms == clean.event_time;
                if !same {
                    report.add(A::CorruptDownstream, || {
                        format!("{}: clean {clean:?} differs from raw {r:?}", place(record))
                    });
                }
                // A reading that fails a check that does not depend on the
                // processor's clock must not be clean.
                if let Err(rejection) = value_checks(r, i64::MAX / 2, &settings.checks)
                    && rejection.reason != QuarantineReason::FutureEventTime
                {
                    report.add(A::Misclassified, || {
                        format!(
                            "{}: clean but {} ({})",
                            place(record),
                            rejection.reason.code(),
                            rejection.detail
                        )
                    });
                }
            }
        }
        let key = (clean.gateway_id.clone(), clean.sensor_id.clone());
        if let Some(previous) = last_seq.get(&key)
            && clean.seq <= *previous
        {
            report.add(A::NonmonotonicDownstream, || {
                format!("{}: {key:?} seq {} after {previous}", place(record), clean.seq)
            });
        }
        last_seq.insert(key, clean.seq);
        clean_records.push(clean);
    }

    // Quarantine.
    let mut quarantined_positions: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut legitimately_quarantined: BTreeSet<Identity> = BTreeSet::new();
    for record in &topics.quarantine {
        let reason_code = header_str(&record.headers, HEADER_REASON).unwrap_or("");
        *report
            .tally
            .quarantined
            .entry(reason_code.to_string())
            .or_default() += 1;
        let Some(src) = header_i64(&record.headers, HEADER_SRC_OFFSET) else {
            report.add(A::CorruptDownstream, || {
                format!("{}: no source offset header", place(record))
            });
            continue;
        };
        let position = (record.partition, src);
        if !quarantined_positions.insert(position) {
            report.add(A::DuplicateDownstream, || {
                format!("{}: raw {position:?} quarantined again", place(record))
            });
        }
        let Some((raw_record, raw_reading)) = raw_by_position.get(&position) else {
            report.add(A::UnexpectedDownstream, || {
                format!("{}: source {position:?} is not in the raw topic", place(record))
            });
            continue;
        };
        if raw_record.value.as_deref().unwrap_or_default() != record.value.as_deref().unwrap_or_default()
            || raw_record.key.as_deref().unwrap_or_default() != record.key.as_deref().unwrap_or_default()
        {
            report.add(A::CorruptDownstream, || {
                format!(
                    "{}: bytes differ from the raw record at {position:?}",
                    place(record)
                )
            });
        }
        let Some(reason) = QuarantineReason::from_code(reason_code) else {
            report.add(A::CorruptDownstream, || {
                format!("{}: unknown reason `{reason_code}`", place(record))
            });
            continue;
        };
        let Some(reading) = raw_reading else {
            if !matches!(
                reason,
                QuarantineReason::Undecodable
                    | QuarantineReason::UnknownSchemaId
                    | QuarantineReason::UnreadableSchema
            ) {
                report.add(A::Misclassified, || {
                    format!(
                        "{}: undecodable raw record quarantined as {reason_code}",
                        place(record)
                    )
                });
            }
            continue;
        };
        let id: Identity = (reading.gateway_id.clone(), reading.sensor_id.clone(), reading.seq);
        let holds = match reason {
            QuarantineReason::FutureEventTime => header_i64(&record.headers, HEADER_DECIDED_AT)
                .is_some_and(|decided| reading.event_time_ms - decided > settings.checks.max_future_ms),
            QuarantineReason::TooLate => {
                header_i64(&record.headers, HEADER_SENSOR_WATERMARK).is_some_and(|w| {
                    reading.event_time_ms < w - settings.windows.state_horizon_ms
                        && first_copies
                            .values()
                            .any(|(r, _)| r.sensor_id == reading.sensor_id && r.event_time_ms == w)
                })
            }
            QuarantineReason::IdentityConflict => first_copies
                .get(&id)
                .is_some_and(|(first, first_at)| *first_at != position && !first.same_values(reading)),
            QuarantineReason::KeyMismatch => raw_record.key.as_deref() != Some(reading.sensor_id.as_bytes()),
            QuarantineReason::InvalidIdentity => {
                soilstream::qaqc::checks::identity_checks(reading, Some(reading.sensor_id.as_bytes()))
                    .is_err()
            }
            QuarantineReason::Undecodable
            | QuarantineReason::UnknownSchemaId
            | QuarantineReason::UnreadableSchema => false,
            _ => value_checks(reading, i64::MAX / 2, &settings.checks)
                .err()
                .is_some_and(|r| r.reason == reason),
        };
        if !holds {
            report.add(A::Misclassified, || {
                format!(
                    "{}: {id:?} quarantined as {reason_code}, which does not hold",
                    place(record)
                )
            });
        }
        // A record refused for its values holds its identity; one refused
        // for its identity (key, ids) accounts for the identity only if it
        // is the identity's first copy (later ones are repeats).
        let first_copy = first_copies.get(&id).is_some_and(|(_, at)| *at == position);
        if reason.carries_identity() || (first_copy && reason != QuarantineReason::IdentityConflict) {
            downstream.entry(id.clone()).or_default().push(place(record));
            if holds {
                legitimately_quarantined.insert(id);
            }
        }
    }

    // Exactly once.
    for (id, (_, position)) in &first_copies {
        match downstream.get(id).map(Vec::len) {
            None => report.add(A::LostDownstream, || {
                format!("{id:?} (raw {position:?}) is in neither clean nor quarantine")
            }),
            Some(1) => {}
            Some(n) => report.add(A::DuplicateDownstream, || {
                format!("{id:?} is {n} times downstream: {:?}", downstream.get(id))
            }),
        }
    }

    // The oracle's readings: first copies not legitimately quarantined.
    let points: Vec<CleanPoint> = first_copies
        .iter()
        .filter(|(id, _)| !legitimately_quarantined.contains(*id))
        .filter(|(_, (r, _))| {
            soilstream::qaqc::checks::identity_checks(r, Some(r.sensor_id.as_bytes())).is_ok()
                && value_checks(r, i64::MAX / 2, &settings.checks)
                    .err()
                    .is_none_or(|e| e.reason == QuarantineReason::FutureEventTime)
        })
        .map(|(_, (r, _))| CleanPoint::of_reading(r))
        .collect();

    // Windows.
    let mut aggregates: Vec<(i32, WindowAggregate)> = Vec::new();
    for record in &topics.aggregates {
        match decode(&codecs.aggregates, record) {
            Ok(a) => {
                co_partitioned(&mut report, record, &a.sensor_id);
                aggregates.push((record.partition, a));
            }
            Err(e) => report.add(A::CorruptDownstream, || {
                format!("{}: undecodable aggregate: {e}", place(record))
            }),
        }
    }
    let (windows, revision_anomalies) = final_windows(aggregates.iter().map(|(_, a)| a));
    for e in revision_anomalies
        .duplicated
        .iter()
        .chain(&revision_anomalies.out_of_order)
    {
        report.add(A::WindowRevision, || e.clone());
    }
    let expected = expected_windows(&points, settings.windows.size_ms);
    report.tally.windows = windows.len() as u64;
    report.tally.windows_revised = windows.values().filter(|(revision, _)| *revision > 1).count() as u64;
    let last_historical: BTreeMap<(String, i64), bool> = aggregates
        .iter()
        .map(|(_, a)| ((a.sensor_id.clone(), a.window_start), a.historical))
        .collect();
    report.tally.windows_historical = last_historical.values().filter(|h| **h).count() as u64;
    for (key, want) in &expected {
        match windows.get(key) {
            Some((_, got)) if got == want => {}
            Some((revision, got)) => report.add(A::WindowMismatch, || {
                format!("window {key:?} revision {revision}: {got:?}, oracle {want:?}")
            }),
            None => report.add(A::WindowMismatch, || {
                format!("window {key:?} missing, oracle {want:?}")
            }),
        }
    }
    for key in windows.keys().filter(|k| !expected.contains_key(*k)) {
        report.add(A::WindowMismatch, || {
            format!("window {key:?} has no reading in the oracle")
        });
    }

    // Flags.
    let mut revisions: Vec<FlagRevision> = Vec::new();
    for record in &topics.flags {
        match decode(&codecs.flags, record) {
            Ok(f) => {
                co_partitioned(&mut report, record, &f.sensor_id);
                revisions.push(f);
            }
            Err(e) => report.add(A::CorruptDownstream, || {
                format!("{}: undecodable flag revision: {e}", place(record))
            }),
        }
    }
    report.tally.flag_revisions = revisions.len() as u64;
    let (flags_now, flag_anomalies) = final_flags(&clean_records, &revisions);
    for e in flag_anomalies
        .duplicated
        .iter()
        .chain(&flag_anomalies.out_of_order)
    {
        report.add(A::FlagsMismatch, || e.clone());
    }
    let want_flags = expected_flags(&points, settings);
    report.tally.flagged_readings = flags_now.values().filter(|(_, f)| !f.is_empty()).count() as u64;
    for (id, (revision, got)) in &flags_now {
        match want_flags.get(id) {
            Some(want) if want == got => {}
            Some(want) => report.add(A::FlagsMismatch, || {
                format!("{id:?}: flags {got} (revision {revision}), rules say {want}")
            }),
            None => {} // not in the oracle: reported as misclassified or unexpected above
        }
    }

    // Alerts: per partition, the machines over the aggregates in offset order.
    let mut alerts: Vec<(i32, AlertRecord)> = Vec::new();
    for record in &topics.alerts {
        match decode(&codecs.alerts, record) {
            Ok(a) => {
                co_partitioned(&mut report, record, &a.sensor_id);
                *report.tally.alerts.entry(a.alert.clone()).or_default() += 1;
                if a.historical {
                    report.tally.alerts_historical += 1;
                }
                alerts.push((record.partition, a));
            }
            Err(e) => report.add(A::CorruptDownstream, || {
                format!("{}: undecodable alert: {e}", place(record))
            }),
        }
    }
    type Lane = (String, String, bool);
    let mut got: BTreeMap<Lane, Vec<(String, i64)>> = BTreeMap::new();
    for (_, a) in alerts
        .iter()
        .filter(|(_, a)| a.alert != AlertKind::SensorSilent.name())
    {
        got.entry((a.sensor_id.clone(), a.alert.clone(), a.historical))
            .or_default()
            .push((a.transition.clone(), a.episode));
    }
    let mut want: BTreeMap<Lane, Vec<(String, i64)>> = BTreeMap::new();
    for partition in 0..partition_count as i32 {
        let written = aggregates.iter().filter(|(p, _)| *p == partition).map(|(_, a)| a);
        for (sensor, events) in expected_window_alerts(written, settings) {
            for e in events {
                want.entry((sensor.clone(), e.kind.name().to_string(), e.historical))
                    .or_default()
                    .push((e.transition.name().to_string(), e.episode as i64));
            }
        }
    }
    for lane in got.keys().chain(want.keys()).collect::<BTreeSet<_>>() {
        let (g, w) = (got.get(lane), want.get(lane));
        if g != w {
            report.add(A::AlertMismatch, || {
                format!("alerts of {lane:?}: written {g:?}, the machines over the aggregates give {w:?}")
            });
        }
    }
    let mut silent: BTreeMap<String, (bool, i64)> = BTreeMap::new();
    for (_, a) in alerts
        .iter()
        .filter(|(_, a)| a.alert == AlertKind::SensorSilent.name())
    {
        let (raised, episode) = silent.entry(a.sensor_id.clone()).or_insert((false, 0));
        let ok = match a.transition.as_str() {
            "raise" => !*raised && a.episode == *episode + 1,
            "clear" => *raised && a.episode == *episode,
            _ => false,
        };
        if !ok {
            report.add(A::AlertSequence, || {
                format!(
                    "sensor_silent of {}: {} episode {} after {} episode {episode}",
                    a.sensor_id,
                    a.transition,
                    a.episode,
                    if *raised { "raise" } else { "clear" }
                )
            });
        }
        *raised = a.transition == "raise";
        *episode = a.episode;
    }

    report.valid = report.anomalies.is_empty();
    report
}

/// The decodable records of an aggregates topic with their window start
/// (ms since the Unix epoch) and revision, for reports.
pub fn window_revisions(aggregates: &[ConsumedRecord]) -> Vec<(&ConsumedRecord, i64, i32)> {
    let codecs = OutputCodecs::default();
    aggregates
        .iter()
        .filter_map(|record| {
            let a: WindowAggregate = decode(&codecs.aggregates, record).ok()?;
            Some((record, a.window_start, a.revision))
        })
        .collect()
}
