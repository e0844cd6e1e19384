//! The verdict of a run, world-agnostic: what every world hands over once
//! its processes stopped ([`Evidence`]: the ledger, the topics as read, the
//! archive checker's report, what the stages and backfills did) and the one
//! function that judges it ([`judge`]).
//!
//! The simulator's runner and the real world's runner
//! (`soilstream_containers::pipeline`) both call [`judge`]: the same
//! checkers, the same expectations, the same failure texts, whatever ran.

use crate::archived::ArchiveCheckReport;
use crate::backfill::{self, BackfillReport, BackfillRun};
use crate::checker::{AnomalyKind, CheckOptions, CheckReport, check_topic};
use crate::downstream::{DownstreamReport, DownstreamTopics, check_downstream};
use crate::hostile::HostileRecord;
use crate::ledger::Ledger;
use crate::runner::{ArchiveActivity, QaqcActivity};
use crate::scenario::Scenario;
use soilstream::model::Reading;
use soilstream::qaqc::config::QaqcSettings;
use soilstream::transport::ConsumedRecord;
use std::collections::{BTreeMap, BTreeSet};

/// Everything a run leaves to judge.
pub struct Evidence<'a> {
    /// The scenario that ran.
    pub scenario: &'a Scenario,
    /// What the gateways sampled and made durable, and the backfills' rows.
    pub ledger: &'a Ledger,
    /// The raw topic in (partition, offset) order, hostile records included.
    pub records: &'a [ConsumedRecord],
    /// `records[i]` decoded with its writer schema.
    pub decoded: &'a [Result<Reading, String>],
    /// Records a hostile writer put on the raw topic (not the gateways').
    pub hostile: &'a [HostileRecord],
    /// The qaqc output topics, in a world with qaqc.
    pub downstream_topics: Option<&'a DownstreamTopics>,
    /// The settings qaqc ran with (the downstream checker's rules).
    pub qaqc_settings: &'a QaqcSettings,
    /// What the qaqc instances did.
    pub qaqc_activity: &'a QaqcActivity,
    /// The archive checker's report, in a world with an archive.
    pub archive: Option<&'a ArchiveCheckReport>,
    /// What the archive instances did.
    pub archive_activity: &'a ArchiveActivity,
    /// Every backfill that started.
    pub backfills: &'a [BackfillRun<'a>],
    /// What the registry reported as failed.
    pub registry_failures: &'a [String],
    /// Event dates the archive must hold at least (the scenario's
    /// `[archive] min_event_dates`, or fewer where a world's calendar gives
    /// fewer: see the real world's notes).
    pub archive_min_event_dates: u64,
}

/// The verdict.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The raw checker's report.
    pub check: CheckReport,
    /// The downstream checker's report (with qaqc).
    pub downstream: Option<DownstreamReport>,
    /// One report per backfill.
    pub backfills: Vec<BackfillReport>,
    /// Every invariant or expectation that failed, in a fixed order.
    pub failures: Vec<String>,
}

/// Judges `evidence`: the raw checker against the ledger, the downstream
/// checker against the raw topic, the archive checker's anomalies, the
/// scenario's expectations and the backfills.
pub fn judge(evidence: &Evidence<'_>) -> Judgement {
    let scenario = evidence.scenario;
    let records = evidence.records;
    let mut failures = Vec::new();
    // The checkers decode by value; equal values decode alike.
    let by_value: BTreeMap<&[u8], &Result<Reading, String>> = records
        .iter()
        .zip(evidence.decoded)
        .filter_map(|(record, result)| Some((record.value.as_deref()?, result)))
        .collect();
    let decode = |value: &[u8]| -> Result<Reading, String> {
        by_value
            .get(value)
            .map_or_else(|| Err("not decoded".to_owned()), |result| (*result).clone())
    };

    // Hostile records are not the gateways': the raw checker does not see
    // them; the downstream checker does.
    let hostile_positions: BTreeSet<(i32, i64)> = evidence
        .hostile
        .iter()
        .map(|h| (h.position.partition, h.position.offset))
        .collect();
    let gateway_records: Vec<ConsumedRecord> = records
        .iter()
        .filter(|r| !hostile_positions.contains(&(r.partition, r.offset)))
        .cloned()
        .collect();
    let check = check_topic(
        evidence.ledger,
        &gateway_records,
        scenario.topology.partitions,
        &decode,
        CheckOptions::default(),
    );
    let downstream = evidence.downstream_topics.map(|topics| {
        check_downstream(
            records,
            &decode,
            topics,
            scenario.topology.partitions,
            evidence.qaqc_settings,
        )
    });
    if let (Some(report), Some(topics)) = (&downstream, evidence.downstream_topics) {
        failures.extend(
            report
                .anomalies
                .iter()
                .map(|(kind, list)| anomaly_line(kind.name(), list.count, &list.examples)),
        );
        failures.extend(judge_hostile(evidence.hostile, &topics.quarantine));
        if report.tally.windows_revised < scenario.qaqc.min_revised_windows {
            failures.push(format!(
                "{} windows revised by late data, expected at least {}",
                report.tally.windows_revised, scenario.qaqc.min_revised_windows
            ));
        }
    }
    if evidence.qaqc_activity.rebalances < scenario.qaqc.min_rebalances {
        failures.push(format!(
            "the qaqc hosts saw {} rebalances, expected at least {}",
            evidence.qaqc_activity.rebalances, scenario.qaqc.min_rebalances
        ));
    }
    if let Some(report) = evidence.archive {
        failures.extend(
            report
                .anomalies
                .iter()
                .map(|(kind, list)| anomaly_line(kind.name(), list.count, &list.examples)),
        );
        let a = &scenario.archive;
        if evidence.archive_activity.rebalances < a.min_rebalances {
            failures.push(format!(
                "the archive hosts saw {} rebalances, expected at least {}",
                evidence.archive_activity.rebalances, a.min_rebalances
            ));
        }
        if report.tally.aborted_attempts < a.min_attempts_aborted {
            failures.push(format!(
                "the store holds {} abort markers, expected at least {} (crashes did not land mid-batch)",
                report.tally.aborted_attempts, a.min_attempts_aborted
            ));
        }
        if (report.tally.rows_per_date.len() as u64) < evidence.archive_min_event_dates {
            failures.push(format!(
                "the archive holds {} event dates, expected at least {}",
                report.tally.rows_per_date.len(),
                evidence.archive_min_event_dates
            ));
        }
    }
    let (backfills, backfill_failures) = backfill::judge(
        scenario,
        evidence.backfills,
        evidence.ledger,
        records,
        evidence.decoded,
    );
    for failure in evidence.registry_failures {
        failures.push(format!("registry: {failure}"));
    }
    if !check.valid {
        for (kind, list) in &check.anomalies {
            if *kind != AnomalyKind::Duplicate {
                failures.push(anomaly_line(kind.name(), list.count, &list.examples));
            }
        }
    }
    let t = &check.tally;
    let e = &scenario.expect;
    if t.lost_before_durable > e.max_lost_before_durable {
        failures.push(format!(
            "{} readings lost before durable, expected at most {}",
            t.lost_before_durable, e.max_lost_before_durable
        ));
    }
    let rejected = t.rejected_spool_full + t.rejected_invalid + t.rejected_io;
    if rejected > e.max_rejected_or_dropped {
        failures.push(format!(
            "{rejected} readings rejected, expected at most {}",
            e.max_rejected_or_dropped
        ));
    }
    if t.lost_to_reported_damage_or_drop > e.max_lost_to_reported_damage + e.max_rejected_or_dropped {
        failures.push(format!(
            "{} durable readings lost to reported damage or drops, expected at most {}",
            t.lost_to_reported_damage_or_drop,
            e.max_lost_to_reported_damage + e.max_rejected_or_dropped
        ));
    }
    if t.never_committed > 0 {
        failures.push(format!(
            "{} readings neither durable nor lost at a crash (sampler lost track)",
            t.never_committed
        ));
    }
    failures.extend(backfill_failures);
    Judgement {
        check,
        downstream,
        backfills,
        failures,
    }
}

/// One checker anomaly as a failure: its count, its name, its examples.
fn anomaly_line(name: &str, count: u64, examples: &[String]) -> String {
    format!("{count} {name}: {}", examples.join("; "))
}

/// Each hostile record must be in quarantine, at its source position, with
/// the reason its kind calls for.
fn judge_hostile(hostile: &[HostileRecord], quarantine: &[ConsumedRecord]) -> Vec<String> {
    use soilstream::qaqc::records::{HEADER_REASON, HEADER_SRC_OFFSET, header_i64, header_str};
    let by_source: BTreeMap<(i32, i64), &str> = quarantine
        .iter()
        .filter_map(|r| {
            let src = header_i64(&r.headers, HEADER_SRC_OFFSET)?;
            Some((
                (r.partition, src),
                header_str(&r.headers, HEADER_REASON).unwrap_or(""),
            ))
        })
        .collect();
    hostile
        .iter()
        .filter_map(|h| {
            let got = by_source.get(&(h.position.partition, h.position.offset));
            (got != Some(&h.expected.code())).then(|| {
                format!(
                    "hostile record ({}) at partition {} offset {}: expected quarantine as {}, got {:?}",
                    h.what,
                    h.position.partition,
                    h.position.offset,
                    h.expected.code(),
                    got
                )
            })
        })
        .collect()
}
