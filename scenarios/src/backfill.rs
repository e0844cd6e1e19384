//! Backfills inside the simulated world, and what the runner checks about
//! them.
//!
//! A `[[backfill]]` of a scenario becomes a host named after the backfill's
//! gateway id (`gw-{n}-sd`), added to the world when the backfill starts. On
//! its first boot it copies the SD-card log ([`crate::sdcard`]) onto its
//! simulated disk (synced, as an operator's copy would be), then runs the
//! unchanged backfill tool, [`run_backfill`], on that disk: schema from the
//! registry host over simulated TCP, records to the broker through a
//! [`SimProducer`], `--max-rate` paced on simulated time, checkpoint and
//! rejects files on the simulated disk. A power cut of the host kills the
//! run; the next boot finds the log and the checkpoint on the disk and
//! resumes.
//!
//! The readings of the good rows go into the ledger as sampled and durable
//! (the card holds them) when the backfill starts; the checker then demands
//! each of them in the raw topic like any durable reading. [`judge`] adds
//! what is particular to backfills: the rows the tool rejected are exactly
//! the garbled ones, how many records landed late (after a live record of
//! the same probe with a later event time, in the same partition), and how
//! long live readings waited for delivery while the backfill ran.

use crate::ledger::Ledger;
use crate::scenario::Scenario;
use crate::sdcard::{SdCardLog, SdCardSpec, generate};
use crate::world::{EPOCH_MS, PlantedBug, RAW_TOPIC, World, producer_config, registry_client};
use serde::Serialize;
use soilstream::backfill::{BackfillOptions, BackfillSummary, NoProgress, run_backfill};
use soilstream::disk::Disk;
use soilstream::model::Reading;
use soilstream::transport::ConsumedRecord;
use soilstream_sim::digest::derive_seed;
use soilstream_sim::{ClockControl, DiskFaults, SimClock, SimDisk, SimProducer};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Directory of the SD-card copy on a backfill host.
pub const SD_CARD_DIR: &str = "/sdcard";

/// What a backfill host did, kept across its restarts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackfillStatus {
    /// Starts so far.
    pub boots: u32,
    /// How the last complete run ended (`None` while running or killed).
    pub outcome: Option<Result<BackfillSummary, String>>,
    /// Simulated time the run ended, ms.
    pub finished_at_ms: Option<u64>,
}

/// The handles of one started backfill.
pub struct BackfillHandles {
    /// Index of the backfill in the scenario's `[[backfill]]` list.
    pub index: usize,
    /// Host name, also the records' gateway id (`gw-{n}-sd`).
    pub name: String,
    /// Gateway id of the live gateway whose probes the log covers.
    pub live_gateway_id: String,
    /// The generated log.
    pub log: Rc<SdCardLog>,
    /// Fault layer of the host's disk.
    pub disk_faults: DiskFaults,
    /// What the host did.
    pub status: Rc<RefCell<BackfillStatus>>,
    /// Simulated time the backfill started, ms.
    pub started_at_ms: u64,
}

impl BackfillHandles {
    /// Whether the backfill ran to an end (success or error).
    pub fn is_finished(&self) -> bool {
        self.status.borrow().outcome.is_some()
    }

    /// What [`judge`] needs to know of it.
    pub fn run(&self) -> BackfillRun<'_> {
        BackfillRun {
            name: &self.name,
            live_gateway_id: &self.live_gateway_id,
            log: &self.log,
            status: self.status.borrow().clone(),
            started_at_ms: self.started_at_ms,
        }
    }
}

/// One backfill as any world ran it: what [`judge`] reads (the simulator's
/// [`BackfillHandles::run`], or a real `soilstream backfill` process).
#[derive(Debug, Clone)]
pub struct BackfillRun<'a> {
    /// The records' gateway id (`gw-{n}-sd`).
    pub name: &'a str,
    /// Gateway id of the live gateway whose probes the log covers.
    pub live_gateway_id: &'a str,
    /// The log it backfilled.
    pub log: &'a SdCardLog,
    /// Boots and outcome.
    pub status: BackfillStatus,
    /// When it started, ms on the run's time axis.
    pub started_at_ms: u64,
}

/// Path of the log on the backfill host.
fn csv_path(name: &str) -> PathBuf {
    Path::new(SD_CARD_DIR).join(format!("{name}.csv"))
}

/// Generates backfill `index`'s log for `seed`.
pub fn sd_card_log(scenario: &Scenario, seed: u64, index: usize) -> SdCardLog {
    generate(&sd_card_spec(scenario, seed, index, EPOCH_MS))
}

/// What backfill `index`'s log holds for `seed`, its event times scripted
/// from `epoch_ms` (the world's time 0).
pub fn sd_card_spec(scenario: &Scenario, seed: u64, index: usize, epoch_ms: i64) -> SdCardSpec {
    let backfill = &scenario.backfills[index];
    let t = &scenario.topology;
    let live = format!("gw-{}", backfill.gateway);
    SdCardSpec {
        seed: derive_seed(seed, &format!("{live}/sd-card")),
        gateway_id: backfill.gateway_id(),
        sensor_prefix: format!("{live}-probe"),
        sensors: t.sensors_per_gateway,
        from_ms: epoch_ms + backfill.log_from_s * 1_000,
        rounds: backfill.rounds(t),
        interval_ms: backfill.interval_ms(t),
        bad_rows: backfill.bad_rows,
        format: backfill.card_format,
    }
}

/// Starts backfill `index` at simulated time `now_ms`: generates its log,
/// enters the good rows in the ledger as durable, and adds its host to the
/// world.
pub fn start(world: &mut World<'_>, scenario: &Scenario, seed: u64, index: usize, now_ms: u64) {
    let backfill = &scenario.backfills[index];
    let name = backfill.gateway_id();
    let log = Rc::new(sd_card_log(scenario, seed, index));
    world.ledger.borrow_mut().durable(&log.readings);
    let handles = BackfillHandles {
        index,
        name: name.clone(),
        live_gateway_id: format!("gw-{}", backfill.gateway),
        log: log.clone(),
        disk_faults: DiskFaults::new(derive_seed(seed, &format!("{name}/disk"))),
        status: Rc::new(RefCell::new(BackfillStatus::default())),
        started_at_ms: now_ms,
    };
    let producer_config = producer_config(scenario.tick_ms);
    let tick_ms = scenario.tick_ms;
    let max_rate_rows_per_s = backfill.max_rate_rows_per_s;
    let missing_as_zero = world.planted == PlantedBug::BackfillMissingAsZero;
    let software = {
        let disk_faults = handles.disk_faults.clone();
        let status = handles.status.clone();
        let name = name.clone();
        move || {
            let disk_faults = disk_faults.clone();
            let status = status.clone();
            let log = log.clone();
            let name = name.clone();
            let producer_config = producer_config.clone();
            Box::pin(async move {
                {
                    let mut status = status.borrow_mut();
                    status.boots += 1;
                    // A run killed by a power cut never ended; a new one starts.
                    status.outcome = None;
                    status.finished_at_ms = None;
                }
                let disk: Rc<dyn Disk> = Rc::new(SimDisk::new(disk_faults));
                let path = csv_path(&name);
                let outcome = match copy_log(disk.as_ref(), &path, &log.csv) {
                    Err(e) => Err(format!("cannot copy the SD-card log to {}: {e}", path.display())),
                    Ok(()) => match SimProducer::new(producer_config) {
                        Err(e) => Err(format!("cannot create the producer: {e}")),
                        Ok(producer) => {
                            let mut options = BackfillOptions::new(path, name.as_str());
                            options.topic = RAW_TOPIC.into();
                            options.max_rate_rows_per_s = max_rate_rows_per_s;
                            options.planted.missing_temperature_as_zero = missing_as_zero;
                            if let Some(text) = &log.profile {
                                match soilstream::backfill::profile::Profile::parse(
                                    text,
                                    "sd-card-profile.toml",
                                ) {
                                    Ok(profile) => options.profile = Some(profile),
                                    Err(e) => {
                                        tracing::error!(backfill = %name, error = %e, "the card's profile")
                                    }
                                }
                            }
                            let clock = SimClock::new(ClockControl::new(EPOCH_MS, 0, 0));
                            run_backfill(
                                options,
                                disk,
                                &producer,
                                &registry_client(tick_ms),
                                &clock,
                                &NoProgress,
                            )
                            .await
                            .map_err(|e| e.to_string())
                        }
                    },
                };
                if let Err(error) = &outcome {
                    tracing::error!(backfill = %name, %error, "backfill failed");
                }
                let mut status = status.borrow_mut();
                status.outcome = Some(outcome);
                status.finished_at_ms = turmoil::sim_elapsed().map(|d| d.as_millis() as u64);
                Ok(())
            }) as futures::future::LocalBoxFuture<'static, turmoil::Result>
        }
    };
    world.sim.host(name.as_str(), software);
    world.backfills.push(handles);
}

/// Puts the log on the host's disk unless it is there already (a restart):
/// written beside it, synced, renamed into place, directory synced.
fn copy_log(disk: &dyn Disk, path: &Path, csv: &[u8]) -> io::Result<()> {
    if disk.exists(path)? {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new(SD_CARD_DIR));
    disk.create_dir_all(dir)?;
    let mut temp = path.as_os_str().to_owned();
    temp.push(".copying");
    let temp = PathBuf::from(temp);
    {
        let mut file = disk.create_truncate(&temp)?;
        file.append(csv)?;
        file.sync_data()?;
    }
    disk.rename(&temp, path)?;
    disk.sync_dir(dir)
}

/// What the runner found about one backfill.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackfillReport {
    /// Host name and gateway id of the records.
    pub name: String,
    /// Data rows in the log.
    pub rows: u64,
    /// Garbled rows in the log.
    pub bad_rows: u64,
    /// Boots of the backfill host (more than one after a power cut).
    pub boots: u32,
    /// Rows the last run produced, skipped as already done, and rejected.
    pub produced: u64,
    /// Rows the last run skipped (settled before a restart).
    pub skipped_done: u64,
    /// Rows the last run rejected.
    pub rejected: u64,
    /// Distinct backfilled identities in the topic.
    pub delivered_unique: u64,
    /// Backfilled records that landed after a live record of the same probe
    /// with a later event time, in the same partition.
    pub late_records: u64,
    /// Live readings (of every gateway) made durable while the backfill ran.
    pub live_readings_during: u64,
    /// Longest wait of those for their first delivery report, ms.
    pub live_delay_max_ms: Option<u64>,
    /// How long the backfill ran, ms (simulated).
    pub duration_ms: Option<u64>,
}

impl fmt::Display for BackfillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backfill {}: rows={} bad={} boots={} produced={} skipped_done={} rejected={} delivered={} \
             late={} live_during={} live_delay_max={} took={}",
            self.name,
            self.rows,
            self.bad_rows,
            self.boots,
            self.produced,
            self.skipped_done,
            self.rejected,
            self.delivered_unique,
            self.late_records,
            self.live_readings_during,
            self.live_delay_max_ms
                .map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            self.duration_ms
                .map_or("never".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
        )
    }
}

/// Judges the started backfills against the decoded topic (`records` in
/// (partition, offset) order with `decoded[i]` the decoding of
/// `records[i]`) and the ledger. Returns a report per backfill and the
/// failures found.
pub fn judge(
    scenario: &Scenario,
    backfills: &[BackfillRun<'_>],
    ledger: &Ledger,
    records: &[ConsumedRecord],
    decoded: &[Result<Reading, String>],
) -> (Vec<BackfillReport>, Vec<String>) {
    debug_assert_eq!(records.len(), decoded.len());
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    let backfill_ids: BTreeSet<&str> = backfills.iter().map(|b| b.name).collect();
    for handles in backfills {
        let status = &handles.status;
        let mut report = BackfillReport {
            name: handles.name.to_owned(),
            rows: (handles.log.readings.len() + handles.log.bad_lines.len()) as u64,
            bad_rows: handles.log.bad_lines.len() as u64,
            boots: status.boots,
            duration_ms: status
                .finished_at_ms
                .map(|end| end.saturating_sub(handles.started_at_ms)),
            ..BackfillReport::default()
        };
        match &status.outcome {
            Some(Ok(summary)) => {
                report.produced = summary.rows_produced;
                report.skipped_done = summary.rows_skipped_done;
                report.rejected = summary.rows_rejected;
                if summary.rows_rejected != report.bad_rows {
                    failures.push(format!(
                        "{}: the backfill rejected {} rows, the log has {} garbled rows",
                        handles.name, summary.rows_rejected, report.bad_rows
                    ));
                }
            }
            Some(Err(error)) => failures.push(format!("{}: backfill failed: {error}", handles.name)),
            None => failures.push(format!("{}: backfill did not finish", handles.name)),
        }

        // Late arrivals, per partition and probe, in offset order.
        let probes: BTreeSet<&str> = handles
            .log
            .readings
            .iter()
            .map(|r| r.sensor_id.as_str())
            .collect();
        let mut newest_live_ms: BTreeMap<(i32, &str), i64> = BTreeMap::new();
        let mut delivered: BTreeSet<(&str, u64)> = BTreeSet::new();
        for (record, reading) in records.iter().zip(decoded) {
            let Ok(reading) = reading else { continue };
            if !probes.contains(reading.sensor_id.as_str()) {
                continue;
            }
            let key = (record.partition, reading.sensor_id.as_str());
            if reading.gateway_id == handles.live_gateway_id {
                let newest = newest_live_ms.entry(key).or_insert(reading.event_time_ms);
                *newest = (*newest).max(reading.event_time_ms);
            } else if reading.gateway_id == handles.name
                && delivered.insert((reading.sensor_id.as_str(), reading.seq))
                && newest_live_ms
                    .get(&key)
                    .is_some_and(|&newest| reading.event_time_ms < newest)
            {
                report.late_records += 1;
            }
        }
        report.delivered_unique = delivered.len() as u64;

        // The live stream while the backfill ran.
        let until_ms = status.finished_at_ms.unwrap_or(u64::MAX);
        for entry in ledger.entries().values() {
            if backfill_ids.contains(entry.reading.gateway_id.as_str()) {
                continue;
            }
            let Some(durable_ms) = entry.durable_at_ms else {
                continue;
            };
            if durable_ms < handles.started_at_ms || durable_ms > until_ms {
                continue;
            }
            report.live_readings_during += 1;
            // Never delivered is the checker's `lost`; count it as waiting
            // until the end of the run here.
            let delay_ms = entry
                .first_delivered_at_ms
                .unwrap_or(ledger.now_ms())
                .saturating_sub(durable_ms);
            report.live_delay_max_ms = Some(report.live_delay_max_ms.unwrap_or(0).max(delay_ms));
        }
        if let Some(bound_s) = scenario.expect.max_live_delay_during_backfill_s
            && let Some(delay_ms) = report.live_delay_max_ms
            && delay_ms > bound_s * 1_000
        {
            failures.push(format!(
                "{}: a live reading waited {:.1} s for delivery during the backfill, bound {bound_s} s",
                handles.name,
                delay_ms as f64 / 1000.0
            ));
        }
        reports.push(report);
    }
    let late: u64 = reports.iter().map(|r| r.late_records).sum();
    if late < scenario.expect.min_late_backfill_records {
        failures.push(format!(
            "{late} backfilled records landed behind newer live records, expected at least {}",
            scenario.expect.min_late_backfill_records
        ));
    }
    (reports, failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use soilstream::transport::{RecordPosition, TimestampKind};

    fn reading(gateway: &str, seq: u64, event_time_ms: i64) -> Reading {
        Reading {
            gateway_id: gateway.into(),
            sensor_id: "gw-1-probe-000".into(),
            seq,
            event_time_ms,
            moisture_vwc: 0.2,
            soil_temp_c: Some(12.0),
            bulk_ec_ds_m: None,
            depth_cm: 10,
            battery_v: None,
            source_flag: None,
        }
    }

    fn record(offset: i64) -> ConsumedRecord {
        ConsumedRecord {
            topic: RAW_TOPIC.into(),
            partition: 0,
            offset,
            key: None,
            value: None,
            timestamp_ms: 0,
            timestamp_kind: TimestampKind::CreateTime,
            headers: Vec::new(),
        }
    }

    fn summary(rows_rejected: u64) -> BackfillSummary {
        BackfillSummary {
            file: "/sdcard/gw-1-sd.csv".into(),
            topic: RAW_TOPIC.into(),
            gateway_id: "gw-1-sd".into(),
            completed: true,
            rows_read: 3,
            rows_produced: 3 - rows_rejected,
            rows_skipped_done: 0,
            rows_rejected,
            delivery_retries: 0,
            resumed_after_line: 0,
            acked_through_line: 4,
            event_time_min_ms: None,
            event_time_max_ms: None,
            event_time_min: None,
            event_time_max: None,
            warnings: Default::default(),
            rejects_path: None,
            checkpoint_path: "/sdcard/gw-1-sd.csv.checkpoint".into(),
            elapsed_ms: 0,
        }
    }

    fn scenario(expect: &str) -> Scenario {
        Scenario::parse(
            &format!(
                "name = \"t\"\nduration_s = 100\n[topology]\ngateways = 2\nsensors_per_gateway = 1\n\
                 [expect]\n{expect}\n[[backfill]]\ngateway = 1\nat_s = 50\nlog_from_s = 0\nlog_to_s = 50\n"
            ),
            "t",
        )
        .unwrap()
    }

    /// A log of lines 2 and 3 (good) and 4 (garbled); the topic holds line 2
    /// before any live record, a live record, then line 3 twice.
    fn world(
        rows_rejected: u64,
    ) -> (
        BackfillHandles,
        Ledger,
        Vec<ConsumedRecord>,
        Vec<Result<Reading, String>>,
    ) {
        let old_a = reading("gw-1-sd", 2, 100);
        let old_b = reading("gw-1-sd", 3, 200);
        let live = reading("gw-1", 7, 300);
        let handles = BackfillHandles {
            index: 0,
            name: "gw-1-sd".into(),
            live_gateway_id: "gw-1".into(),
            log: Rc::new(SdCardLog {
                csv: Vec::new(),
                readings: vec![old_a.clone(), old_b.clone()],
                bad_lines: vec![4],
                profile: None,
            }),
            disk_faults: DiskFaults::new(1),
            status: Rc::new(RefCell::new(BackfillStatus {
                boots: 1,
                outcome: Some(Ok(summary(rows_rejected))),
                finished_at_ms: Some(2_000),
            })),
            started_at_ms: 900,
        };
        let mut ledger = Ledger::new(true);
        ledger.set_now_ms(1_000);
        ledger.durable(std::slice::from_ref(&live));
        ledger.set_now_ms(1_500);
        ledger.delivered(
            &live,
            RecordPosition {
                partition: 0,
                offset: 1,
            },
        );
        let records = (0..4).map(record).collect();
        let decoded = vec![Ok(old_a), Ok(live), Ok(old_b.clone()), Ok(old_b)];
        (handles, ledger, records, decoded)
    }

    #[test]
    fn late_records_live_delay_and_rejects_are_measured() {
        let (handles, ledger, records, decoded) = world(1);
        let (reports, failures) = judge(
            &scenario("min_late_backfill_records = 1\nmax_live_delay_during_backfill_s = 1"),
            &[handles.run()],
            &ledger,
            &records,
            &decoded,
        );
        assert!(failures.is_empty(), "{failures:?}");
        let report = &reports[0];
        assert_eq!((report.rows, report.bad_rows, report.rejected), (3, 1, 1));
        assert_eq!(report.delivered_unique, 2);
        assert_eq!(
            report.late_records, 1,
            "only line 3 came after a newer live record"
        );
        assert_eq!(report.live_readings_during, 1);
        assert_eq!(report.live_delay_max_ms, Some(500));
        assert_eq!(report.duration_ms, Some(1_100));
    }

    #[test]
    fn each_backfill_expectation_fails_when_broken() {
        let (handles, ledger, records, decoded) = world(0);
        let (_, failures) = judge(
            &scenario("min_late_backfill_records = 2\nmax_live_delay_during_backfill_s = 0"),
            &[handles.run()],
            &ledger,
            &records,
            &decoded,
        );
        let text = failures.join("\n");
        assert_eq!(failures.len(), 3, "{text}");
        assert!(text.contains("rejected 0 rows, the log has 1 garbled"), "{text}");
        assert!(text.contains("waited 0.5 s"), "{text}");
        assert!(text.contains("1 backfilled records landed behind"), "{text}");

        *handles.status.borrow_mut() = BackfillStatus::default();
        let (_, failures) = judge(&scenario(""), &[handles.run()], &ledger, &records, &decoded);
        assert_eq!(failures, vec!["gw-1-sd: backfill did not finish".to_owned()]);
    }
}
