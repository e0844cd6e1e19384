//! From a judged run to a [`Report`]: the verdicts, the evidence and the
//! series the charts draw. The same code serves every world: it reads a
//! [`RunResult`] (the checkers' verdicts and the run's
//! [`Observations`](soilstream_scenarios::observe::Observations)) and the
//! scenario it played.

use crate::format::{clock, count, duration, maybe_duration};
use crate::model::*;
use soilstream_scenarios::checker::AnomalyKind;
use soilstream_scenarios::observe::{Observations, ObservedTopic, Origin, RawPoint, Sample};
use soilstream_scenarios::runner::RunResult;
use soilstream_scenarios::scenario::{Fault, Scenario};
use soilstream_scenarios::world::PlantedBug;
use std::collections::{BTreeMap, BTreeSet};

/// Most sensors drawn in the completeness map.
pub const COMPLETENESS_ROWS_MAX: usize = 64;
/// Columns of the binned charts, about.
const BINS_WANTED: u64 = 120;
/// Rows of the binned scatters, about.
const SCATTER_ROWS_WANTED: u64 = 240;
/// Live lag that counts as "back on the diagonal", ms.
const BACK_ON_DIAGONAL_LAG_MS: u64 = 300_000;
/// Examples kept per anomaly in the report.
pub const EXAMPLES_PER_ANOMALY: usize = 5;

/// Longest verdict reason, characters (the anomaly list has the rest).
const REASON_CHARS_MAX: usize = 240;

/// `text` cut to `max_chars` characters, marked when cut.
fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{} ... (see Anomalies)", &text[..at]),
        None => text.to_owned(),
    }
}

/// How the run was made (what the run result does not know).
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The world that ran.
    pub world: WorldKind,
    /// The command that reproduces the report.
    pub command: String,
    /// Wall-clock fields (real worlds only; `None` keeps a simulated report
    /// byte-identical across runs).
    pub wall_clock: Option<WallClock>,
}

/// Builds the report of `run`, a run of `scenario`.
pub fn build_report(scenario: &Scenario, run: &RunResult, context: &RunContext) -> Report {
    let obs = &run.observations;
    let end_ms = obs
        .samples
        .last()
        .map_or(run.simulated_ms, |s| s.at_ms)
        .max(run.simulated_ms)
        .max(1);
    let bin_ms = nice_step(end_ms.div_ceil(BINS_WANTED).max(obs.interval_ms));
    let series = series(scenario, run, end_ms, bin_ms);
    let lag_live = lag_percentiles(&obs.raw, Origin::Live);
    let lag_backfill = lag_percentiles(&obs.raw, Origin::Backfill);
    let faults = fault_rows(scenario, run);
    let demo_steps = demo_steps(scenario, run, &faults);
    let invariants = invariants(scenario, run);
    let anomalies = anomalies(run);
    let ledger = ledger(run);
    let decisions = decisions(scenario, run, &faults, &lag_live);
    let mut verdict = Verdict::Pass;
    let mut verdict_reasons = Vec::new();
    for failure in &run.failures {
        verdict = Verdict::Fail;
        verdict_reasons.push(shorten(failure, REASON_CHARS_MAX));
    }
    for row in invariants.iter().filter(|r| r.verdict == Verdict::Fail) {
        verdict = Verdict::Fail;
        if run.failures.is_empty() {
            verdict_reasons.push(format!("{}: {} (bound {})", row.name, row.measured, row.bound));
        }
    }
    for step in demo_steps.iter().filter(|s| s.passed == Some(false)) {
        verdict = Verdict::Fail;
        verdict_reasons.push(format!(
            "step {} ({}) not shown: {}",
            step.number, step.title, step.evidence
        ));
    }
    for fault in faults.iter().filter(|f| !f.covered) {
        verdict = verdict.and(Verdict::Unknown);
        verdict_reasons.push(format!(
            "fault #{} ({} on {}) had no visible effect: {}",
            fault.number, fault.kind, fault.target, fault.effect
        ));
    }
    if obs.raw.is_empty() {
        verdict = verdict.and(Verdict::Unknown);
        verdict_reasons.push("the raw topic held nothing to judge".into());
    }
    if verdict == Verdict::Pass {
        verdict_reasons.push(format!(
            "every invariant held and each of the {} faults was seen to take effect",
            faults.len()
        ));
    }
    let reflection = reflection(run, &faults, &invariants, verdict);
    Report {
        format_version: RUN_JSON_VERSION,
        identity: Identity {
            scenario: scenario.name.clone(),
            description: scenario.description.trim().to_owned(),
            world: context.world,
            seed: run.seed,
            planted_bug: match run.planted {
                PlantedBug::None => None,
                bug => Some(bug.name().to_owned()),
            },
            command: context.command.clone(),
            run_ms: run.simulated_ms,
            epoch: rfc3339(obs.epoch_ms),
            digest: format!("{:016x}", run.digest),
            sample_interval_ms: obs.interval_ms,
        },
        verdict,
        verdict_reasons,
        demo_steps,
        faults,
        ledger,
        invariants,
        lag_live,
        lag_backfill,
        anomalies,
        decisions,
        reflection,
        series,
        wall_clock: context.wall_clock.clone(),
    }
}

/// A time in ms since the Unix epoch as RFC 3339 (UTC).
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| format!("{ms} ms since the Unix epoch"), |t| t.to_string())
}

/// The smallest of 1, 2, 5 × 10^k s (or a multiple of an hour) at least `ms`.
fn nice_step(ms: u64) -> u64 {
    const STEPS_MS: [u64; 14] = [
        1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
        3_600_000, 7_200_000,
    ];
    STEPS_MS
        .iter()
        .copied()
        .find(|s| *s >= ms)
        .unwrap_or_else(|| ms.div_ceil(3_600_000) * 3_600_000)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], per_mille: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (per_mille * sorted.len() as u64).div_ceil(1_000).max(1);
    sorted[(rank as usize - 1).min(sorted.len() - 1)]
}

fn lag_ms(point: &RawPoint) -> Option<u64> {
    let at = point.appended_at_ms? as i64;
    Some((at - point.event_ms).max(0) as u64)
}

fn lag_percentiles(raw: &[RawPoint], origin: Origin) -> LagPercentiles {
    let mut lags: Vec<u64> = raw
        .iter()
        .filter(|p| p.first_copy && p.origin == origin)
        .filter_map(lag_ms)
        .collect();
    lags.sort_unstable();
    LagPercentiles {
        records: lags.len() as u64,
        p50_ms: percentile(&lags, 500),
        p95_ms: percentile(&lags, 950),
        p99_ms: percentile(&lags, 990),
        max_ms: lags.last().copied().unwrap_or(0),
    }
}

/// The value of a step function given by samples at `at_ms` (the last
/// sample at or before it; 0 before the first).
fn at_time(samples: &[Sample], at_ms: u64, value: impl Fn(&Sample) -> i64) -> i64 {
    let index = samples.partition_point(|s| s.at_ms <= at_ms);
    index.checked_sub(1).map_or(0, |i| value(&samples[i]))
}

fn series(scenario: &Scenario, run: &RunResult, end_ms: u64, bin_ms: u64) -> Series {
    let obs = &run.observations;
    let bands = bands(scenario, run);
    let spool_depth = obs
        .samples
        .iter()
        .map(|s| (s.at_ms, s.spool_depth_records.clone()))
        .collect();

    // Event time against append time, binned.
    let (y_min, y_max) = obs.raw.iter().fold((0_i64, end_ms as i64), |(lo, hi), p| {
        (lo.min(p.event_ms), hi.max(p.event_ms))
    });
    let event_bin_ms = nice_step(((y_max - y_min).max(1) as u64).div_ceil(SCATTER_ROWS_WANTED));
    let mut cells: BTreeMap<(u64, i64, u8), u64> = BTreeMap::new();
    for p in &obs.raw {
        let Some(at) = p.appended_at_ms else { continue };
        let series = u8::from(p.origin == Origin::Backfill);
        let key = (
            at / bin_ms * bin_ms,
            p.event_ms.div_euclid(event_bin_ms as i64) * event_bin_ms as i64,
            series,
        );
        *cells.entry(key).or_default() += 1;
    }
    let event_vs_append = scatter(cells);

    // Lag per bin.
    let mut lag_groups: BTreeMap<(u64, u8), Vec<u64>> = BTreeMap::new();
    for p in obs.raw.iter().filter(|p| p.first_copy) {
        if let (Some(at), Some(lag)) = (p.appended_at_ms, lag_ms(p)) {
            let series = u8::from(p.origin == Origin::Backfill);
            lag_groups
                .entry((at / bin_ms * bin_ms, series))
                .or_default()
                .push(lag);
        }
    }
    let lag = lag_groups
        .into_iter()
        .map(|((at_ms, series), mut lags)| {
            lags.sort_unstable();
            LagBin {
                at_ms,
                series,
                p50_ms: percentile(&lags, 500),
                p95_ms: percentile(&lags, 950),
                max_ms: *lags.last().expect("a group holds a lag"),
            }
        })
        .collect();

    // Throughput per bin.
    let clean = obs.topic_index(ObservedTopic::Clean);
    let total = |at: u64, which: &dyn Fn(&Sample) -> i64| at_time(&obs.samples, at, which);
    let raw_total = |s: &Sample| s.topic_total(ObservedTopic::Raw.index());
    let clean_total = |s: &Sample| clean.map_or(0, |c| s.topic_total(c));
    let archived_total = |s: &Sample| s.archived_total();
    let mut throughput = Vec::new();
    let mut at = 0;
    while at < end_ms {
        let next = at + bin_ms;
        // What the bin added: the count at its end less the count before it.
        let added = |which: &dyn Fn(&Sample) -> i64| {
            let before = if at == 0 { 0 } else { total(at - 1, which) };
            (total(next.min(end_ms), which) - before).max(0) as u64
        };
        let lo = obs.sampled_at_ms.partition_point(|t| *t < at);
        let hi = obs.sampled_at_ms.partition_point(|t| *t < next);
        throughput.push(ThroughputBin {
            at_ms: at,
            sampled: (hi - lo) as u64,
            delivered: added(&raw_total),
            clean: added(&clean_total),
            archived: added(&archived_total),
        });
        at = next;
    }

    // Completeness.
    let completeness: Vec<CompletenessRow> = obs
        .completeness
        .iter()
        .take(COMPLETENESS_ROWS_MAX)
        .map(|(sensor, hours)| CompletenessRow {
            sensor: sensor.clone(),
            hours: hours
                .iter()
                .map(|(hour, cell)| {
                    let class = if cell.unexplained_loss > 0 {
                        Completeness::Lost
                    } else if cell.reported_loss > 0 {
                        Completeness::ReportedLoss
                    } else if cell.allowed_loss > 0 {
                        Completeness::AllowedLoss
                    } else {
                        Completeness::Complete
                    };
                    (*hour, class)
                })
                .collect(),
        })
        .collect();
    let completeness_rows_omitted = obs.completeness.len().saturating_sub(COMPLETENESS_ROWS_MAX) as u64;

    // Backfill progress: rows appended so far, at every sample it changed.
    let mut appended: Vec<u64> = obs
        .raw
        .iter()
        .filter(|p| p.first_copy && p.origin == Origin::Backfill)
        .filter_map(|p| p.appended_at_ms)
        .collect();
    appended.sort_unstable();
    let mut backfill_progress = Vec::new();
    if !appended.is_empty() {
        let mut last = u64::MAX;
        for s in &obs.samples {
            let n = appended.partition_point(|t| *t <= s.at_ms) as u64;
            if n != last {
                backfill_progress.push((s.at_ms, n));
                last = n;
            }
        }
    }

    // Windows revised by later data.
    let mut revised: BTreeMap<(u64, i64, u8), u64> = BTreeMap::new();
    for w in &obs.revised_windows {
        let Some(at) = w.appended_at_ms else { continue };
        let key = (
            at / bin_ms * bin_ms,
            w.window_start_ms.div_euclid(event_bin_ms as i64) * event_bin_ms as i64,
            0,
        );
        *revised.entry(key).or_default() += 1;
    }

    Series {
        end_ms,
        bin_ms,
        bands,
        gateways: obs.gateways.clone(),
        spool_depth,
        event_vs_append,
        event_bin_ms,
        lag,
        throughput,
        completeness,
        completeness_rows_omitted,
        backfill_progress,
        backfill_rows: obs.backfill_rows,
        revised_windows: scatter(revised),
    }
}

fn scatter(cells: BTreeMap<(u64, i64, u8), u64>) -> Vec<ScatterCell> {
    cells
        .into_iter()
        .map(|((x_ms, y_ms, series), count)| ScatterCell {
            x_ms,
            y_ms,
            series,
            count,
        })
        .collect()
}

/// The scenario's `kind` of a fault.
fn kind_name(fault: &Fault) -> String {
    serde_json::to_value(fault)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "fault".to_owned())
}

/// The colour family of a fault kind.
fn family(kind: &str) -> &'static str {
    match kind {
        "broker_crash" | "ack_loss" | "request_errors" => "broker",
        "network_outage" | "one_way_outage" | "hold" | "latency_spike" | "flapping_link" => "network",
        "power_loss" | "crash" | "reboot_loop" => "power",
        "disk_full" | "io_errors" | "read_corruption" | "bit_flips" => "disk",
        "clock_jump" => "clock",
        "registry_outage" | "store_outage" => "service",
        "hostile_records" => "input",
        "sd_card_backfill" => "backfill",
        _ => "stage",
    }
}

fn bands(scenario: &Scenario, run: &RunResult) -> Vec<Band> {
    let mut bands: Vec<Band> = scenario
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let kind = kind_name(f);
            Band {
                label: format!("#{} {}", i + 1, kind),
                family: family(&kind).to_owned(),
                start_ms: f.start_s() * 1_000,
                end_ms: f.end_s() * 1_000,
            }
        })
        .collect();
    for (i, b) in scenario.backfills.iter().enumerate() {
        let start_ms = b.at_s * 1_000;
        let end_ms = run
            .backfills
            .get(i)
            .and_then(|r| r.duration_ms)
            .map_or(start_ms, |d| start_ms + d);
        bands.push(Band {
            label: format!("#{} sd_card_backfill", scenario.faults.len() + i + 1),
            family: "backfill".to_owned(),
            start_ms,
            end_ms,
        });
    }
    bands
}

/// What a fault's effect is measured by.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// The spool depth of one gateway.
    Spool(usize),
    /// The spool depth of every gateway.
    Spools,
    /// Raw records not yet judged by qaqc.
    QaqcLag,
    /// Clean records not yet archived.
    ArchiveLag,
    /// Records quarantined.
    Quarantined,
    /// Nothing measurable: the fault was applied to the world.
    Applied,
}

impl Effect {
    fn of(fault: &Fault) -> Effect {
        use Fault as F;
        match fault {
            F::NetworkOutage { gateway, .. }
            | F::OneWayOutage { gateway, .. }
            | F::Hold { gateway, .. }
            | F::FlappingLink { gateway, .. }
            | F::PowerLoss { gateway, .. }
            | F::Crash { gateway, .. }
            | F::RebootLoop { gateway, .. } => Effect::Spool(*gateway as usize),
            F::BrokerCrash { .. } | F::AckLoss { .. } | F::RequestErrors { .. } => Effect::Spools,
            F::QaqcCrash { .. } | F::QaqcPowerLoss { .. } | F::QaqcOutage { .. } | F::QaqcStop { .. } => {
                Effect::QaqcLag
            }
            F::ArchiveCrash { .. }
            | F::ArchivePowerLoss { .. }
            | F::ArchiveOutage { .. }
            | F::ArchiveStop { .. }
            | F::StoreOutage { .. } => Effect::ArchiveLag,
            F::HostileRecords { .. } => Effect::Quarantined,
            _ => Effect::Applied,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Effect::Spool(_) | Effect::Spools => "readings spooled",
            Effect::QaqcLag => "raw records not yet judged",
            Effect::ArchiveLag => "clean records not yet archived",
            Effect::Quarantined => "records quarantined",
            Effect::Applied => "",
        }
    }

    fn value(self, obs: &Observations, s: &Sample) -> Option<i64> {
        let clean = obs.topic_index(ObservedTopic::Clean);
        let quarantine = obs.topic_index(ObservedTopic::Quarantine);
        Some(match self {
            Effect::Spool(g) => *s.spool_depth_records.get(g)? as i64,
            Effect::Spools => s.spool_depth_total() as i64,
            Effect::QaqcLag => (s.topic_total(ObservedTopic::Raw.index())
                - s.topic_total(clean?)
                - s.topic_total(quarantine?))
            .max(0),
            Effect::ArchiveLag => (s.topic_total(clean?) - s.archived_total()).max(0),
            Effect::Quarantined => s.topic_total(quarantine?),
            Effect::Applied => return None,
        })
    }
}

/// Backlog built over `[start, end]` and the time after `end` until it was
/// gone (back at or below the level before the fault), by one measure.
fn backlog(obs: &Observations, effect: Effect, start_ms: u64, end_ms: u64) -> Option<(u64, Option<u64>)> {
    let samples = &obs.samples;
    let value = |s: &Sample| effect.value(obs, s);
    let first = samples.partition_point(|s| s.at_ms < start_ms);
    let at_start = value(samples.get(first).or(samples.last())?)?;
    // The level before the fault: the largest of the ten samples before it.
    let before = samples[first.saturating_sub(10)..first]
        .iter()
        .filter_map(value)
        .chain([at_start])
        .max()
        .unwrap_or(at_start);
    let during_end = samples.partition_point(|s| s.at_ms <= end_ms);
    let drained_index = samples[during_end.min(samples.len())..]
        .iter()
        .position(|s| value(s).is_some_and(|v| v <= before))
        .map(|i| i + during_end);
    let peak_until = drained_index.unwrap_or(samples.len());
    let peak = samples[first..peak_until.max(first)]
        .iter()
        .filter_map(value)
        .max()
        .unwrap_or(at_start);
    let built = (peak - at_start).max(0) as u64;
    let drained_after = drained_index.map(|i| samples[i].at_ms.saturating_sub(end_ms));
    Some((built, drained_after))
}

/// Boots of gateway `g` from `start_ms` until shortly after `end_ms` (ten
/// samples, for the reboot to be seen).
fn gateway_reboots(obs: &Observations, g: usize, start_ms: u64, end_ms: u64) -> u32 {
    let boots_at = |s: &Sample| s.gateway_boots.get(g).copied().unwrap_or(0);
    let first = obs.samples.partition_point(|s| s.at_ms < start_ms);
    let last = (obs.samples.partition_point(|s| s.at_ms <= end_ms) + 10).min(obs.samples.len());
    let before = first.checked_sub(1).map_or(0, |i| boots_at(&obs.samples[i]));
    let after = last.checked_sub(1).map_or(before, |i| boots_at(&obs.samples[i]));
    after.saturating_sub(before)
}

fn fault_target(fault: &Fault, run: &RunResult) -> String {
    if let Some(g) = fault.gateway() {
        return run
            .observations
            .gateways
            .get(g as usize)
            .cloned()
            .unwrap_or_else(|| format!("gw-{g}"));
    }
    if let Some((stage, i)) = fault.stage_instance() {
        return stage.host(i);
    }
    match fault {
        Fault::BrokerCrash { .. } | Fault::AckLoss { .. } | Fault::RequestErrors { .. } => "broker".into(),
        Fault::RegistryOutage { .. } => "registry".into(),
        Fault::StoreOutage { .. } => "object store".into(),
        Fault::HostileRecords { .. } => "raw topic".into(),
        _ => "world".into(),
    }
}

fn fault_rows(scenario: &Scenario, run: &RunResult) -> Vec<FaultRow> {
    let obs = &run.observations;
    let mut rows = Vec::new();
    for (i, fault) in scenario.faults.iter().enumerate() {
        let kind = kind_name(fault);
        let start_ms = fault.start_s() * 1_000;
        let end_ms = fault.end_s() * 1_000;
        let effect = Effect::of(fault);
        let measured = backlog(obs, effect, start_ms, end_ms);
        let reboots = match fault {
            Fault::PowerLoss { gateway, .. }
            | Fault::Crash { gateway, .. }
            | Fault::RebootLoop { gateway, .. } => {
                Some(gateway_reboots(obs, *gateway as usize, start_ms, end_ms))
            }
            _ => None,
        };
        let (covered, text, built, drained) = match (fault, measured) {
            (_, Some((built, drained))) if reboots.is_some() => {
                let reboots = reboots.unwrap_or(0);
                (
                    reboots > 0,
                    format!(
                        "the gateway went down and booted again {reboots} time(s); {} {} built up, gone {} after it healed",
                        count(built),
                        effect.unit(),
                        maybe_duration(drained)
                    ),
                    built,
                    drained,
                )
            }
            (Fault::ArchiveCrashAt { point, .. }, _) => {
                let crashes = run
                    .events
                    .iter()
                    .filter(|(at, e)| *at >= start_ms && *at <= end_ms && e.contains(" crashed at "))
                    .count();
                (
                    crashes > 0,
                    format!("the archive crashed at {point:?} {crashes} time(s) in the window"),
                    crashes as u64,
                    None,
                )
            }
            (_, Some((built, drained))) => (
                built > 0,
                format!(
                    "{} {} built up; gone {} after it healed",
                    count(built),
                    effect.unit(),
                    maybe_duration(drained)
                ),
                built,
                drained,
            ),
            (_, None) => (
                start_ms <= run.simulated_ms,
                format!(
                    "applied at {} (no direct measure of its effect)",
                    clock(start_ms as i64)
                ),
                0,
                None,
            ),
        };
        rows.push(FaultRow {
            number: i as u32 + 1,
            kind,
            target: fault_target(fault, run),
            start_ms,
            end_ms,
            effect: text,
            covered,
            backlog: built,
            backlog_of: effect.unit().to_owned(),
            drained_after_ms: drained,
        });
    }
    for (i, b) in scenario.backfills.iter().enumerate() {
        let report = run.backfills.get(i);
        let start_ms = b.at_s * 1_000;
        let delivered = report.map_or(0, |r| r.delivered_unique);
        let end_ms = report
            .and_then(|r| r.duration_ms)
            .map_or(start_ms, |d| start_ms + d);
        rows.push(FaultRow {
            number: (scenario.faults.len() + i) as u32 + 1,
            kind: "sd_card_backfill".into(),
            target: b.gateway_id(),
            start_ms,
            end_ms,
            effect: format!(
                "{} of {} rows delivered ({} landed behind live data) in {}",
                count(delivered),
                count(report.map_or(0, |r| r.rows - r.bad_rows)),
                count(report.map_or(0, |r| r.late_records)),
                maybe_duration(report.and_then(|r| r.duration_ms))
            ),
            covered: delivered > 0,
            backlog: report.map_or(0, |r| r.rows),
            backlog_of: "rows on the card".into(),
            drained_after_ms: report.and_then(|r| r.duration_ms).map(|_| 0),
        });
    }
    rows
}

fn anomaly_count(run: &RunResult, kind: AnomalyKind) -> u64 {
    run.check.count(kind)
}

fn first_copies_in(obs: &Observations, origin: Origin, from_ms: u64, to_ms: u64) -> Vec<&RawPoint> {
    obs.raw
        .iter()
        .filter(|p| p.first_copy && p.origin == origin)
        .filter(|p| p.appended_at_ms.is_some_and(|at| at >= from_ms && at < to_ms))
        .collect()
}

fn demo_steps(scenario: &Scenario, run: &RunResult, faults: &[FaultRow]) -> Vec<DemoStep> {
    let obs = &run.observations;
    let end_ms = obs.samples.last().map_or(0, |s| s.at_ms);
    let first_fault_ms = scenario
        .faults
        .iter()
        .map(|f| f.start_s() * 1_000)
        .min()
        .unwrap_or(end_ms);
    let clean = obs.topic_index(ObservedTopic::Clean);
    let mut steps = Vec::new();

    // 1. Steady flow end to end.
    let delivered = at_time(&obs.samples, first_fault_ms, |s| {
        s.topic_total(ObservedTopic::Raw.index())
    });
    let cleaned = clean.map(|c| at_time(&obs.samples, first_fault_ms, |s| s.topic_total(c)));
    let archived = run
        .archive
        .is_some()
        .then(|| at_time(&obs.samples, first_fault_ms, |s| s.archived_total()));
    let mut evidence = format!(
        "before the first fault ({}): {} raw records",
        clock(first_fault_ms as i64),
        count(delivered.max(0) as u64)
    );
    if let Some(c) = cleaned {
        evidence.push_str(&format!(", {} clean", count(c.max(0) as u64)));
    }
    if let Some(a) = archived {
        evidence.push_str(&format!(", {} archived", count(a.max(0) as u64)));
    }
    steps.push(DemoStep {
        number: 1,
        title: "Steady flow end to end".into(),
        passed: Some(delivered > 0 && cleaned.is_none_or(|c| c > 0) && archived.is_none_or(|a| a > 0)),
        evidence,
        link: "chart-throughput".into(),
    });

    // 2 and 3. The broker stops; the gateways spool; history first.
    let broker_fault = scenario
        .faults
        .iter()
        .zip(faults)
        .find(|(f, _)| matches!(f, Fault::BrokerCrash { .. }));
    match broker_fault {
        Some((fault, row)) => {
            let (start_ms, end_ms) = (fault.start_s() * 1_000, fault.end_s() * 1_000);
            let lo = obs.sampled_at_ms.partition_point(|t| *t < start_ms);
            let hi = obs.sampled_at_ms.partition_point(|t| *t < end_ms);
            let sampled_during = (hi - lo) as u64;
            steps.push(DemoStep {
                number: 2,
                title: "The broker stops and the gateways keep spooling".into(),
                passed: Some(row.covered && sampled_during > 0 && anomaly_count(run, AnomalyKind::Lost) == 0),
                evidence: format!(
                    "broker down {} to {}: {} readings sampled meanwhile, spools grew by {}, lost: {}",
                    clock(start_ms as i64),
                    clock(end_ms as i64),
                    count(sampled_during),
                    count(row.backlog),
                    anomaly_count(run, AnomalyKind::Lost)
                ),
                link: "chart-spool".into(),
            });
            let catch_up_end = end_ms + row.drained_after_ms.unwrap_or(0) + 2 * obs.interval_ms;
            let after = first_copies_in(obs, Origin::Live, end_ms, catch_up_end);
            let history: Vec<&&RawPoint> = after.iter().filter(|p| p.event_ms < end_ms as i64).collect();
            let oldest_ms = history.iter().filter_map(|p| lag_ms(p)).max().unwrap_or(0);
            let mut later: Vec<u64> = first_copies_in(obs, Origin::Live, catch_up_end, u64::MAX)
                .iter()
                .filter_map(|p| lag_ms(p))
                .collect();
            later.sort_unstable();
            let later_p95 = percentile(&later, 950);
            let mismatches = anomaly_count(run, AnomalyKind::TimestampMismatch);
            let back = !later.is_empty() && later_p95 <= BACK_ON_DIAGONAL_LAG_MS + obs.interval_ms;
            steps.push(DemoStep {
                number: 3,
                title: "The broker returns: history first with its event times, then live".into(),
                passed: Some(!history.is_empty() && mismatches == 0 && back),
                evidence: format!(
                    "{} readings of the outage appended within {} of its end, the oldest {} late, each stamped with its event time (timestamp mismatches: {mismatches}); live lag p95 after that: {}",
                    count(history.len() as u64),
                    duration(catch_up_end - end_ms),
                    duration(oldest_ms),
                    if later.is_empty() { "no live data".to_owned() } else { duration(later_p95) }
                ),
                link: "chart-event-time".into(),
            });
        }
        None => {
            for (number, title) in [
                (2, "The broker stops and the gateways keep spooling"),
                (
                    3,
                    "The broker returns: history first with its event times, then live",
                ),
            ] {
                steps.push(DemoStep {
                    number,
                    title: title.into(),
                    passed: None,
                    evidence: "this scenario does not stop the broker".into(),
                    link: "faults".into(),
                });
            }
        }
    }

    // 4. SD-card backfill behind live data.
    if run.backfills.is_empty() {
        steps.push(DemoStep {
            number: 4,
            title: "An SD-card log is backfilled behind live data".into(),
            passed: None,
            evidence: "this scenario has no backfill".into(),
            link: "faults".into(),
        });
    } else {
        let good: u64 = run.backfills.iter().map(|b| b.rows - b.bad_rows).sum();
        let delivered: u64 = run.backfills.iter().map(|b| b.delivered_unique).sum();
        let late: u64 = run.backfills.iter().map(|b| b.late_records).sum();
        let live_during: u64 = run.backfills.iter().map(|b| b.live_readings_during).sum();
        let delay = run.backfills.iter().filter_map(|b| b.live_delay_max_ms).max();
        let bound_ok = scenario
            .expect
            .max_live_delay_during_backfill_s
            .is_none_or(|s| delay.is_none_or(|d| d <= s * 1_000));
        let span_h = scenario
            .backfills
            .iter()
            .map(|b| (b.log_to_s - b.log_from_s) as f64 / 3_600.0)
            .fold(0.0, f64::max);
        steps.push(DemoStep {
            number: 4,
            title: "An SD-card log is backfilled behind live data".into(),
            passed: Some(delivered == good && late > 0 && live_during > 0 && bound_ok),
            evidence: format!(
                "{} of {} rows of a {span_h:.1} h log delivered, {} behind newer live data; {} live readings kept flowing meanwhile, the slowest delivered in {}",
                count(delivered),
                count(good),
                count(late),
                count(live_during),
                maybe_duration(delay)
            ),
            link: "chart-backfill".into(),
        });
    }

    // 5. The system drains.
    let final_depth = obs.samples.last().map_or(0, |s| s.spool_depth_total());
    let liveness_failures = run.failures.iter().filter(|f| f.contains("liveness")).count();
    let mut evidence = format!(
        "spools empty {} after the last fault healed (bound {}), {} spooled at the end",
        maybe_duration(run.drain_ms),
        duration(scenario.expect.drain_within_s * 1_000),
        count(final_depth)
    );
    let mut passed = run.drain_ms.is_some() && final_depth == 0 && liveness_failures == 0;
    if let Some(d) = &run.downstream {
        let judged = d.tally.clean + d.tally.quarantined.values().sum::<u64>();
        evidence.push_str(&format!(
            "; qaqc judged {} of {} raw identities",
            count(judged),
            count(d.tally.raw_identities)
        ));
        passed &= d.valid;
    }
    if let Some(a) = &run.archive {
        evidence.push_str(&format!(
            "; the archive holds {} rows of {} clean records",
            count(a.tally.rows),
            count(a.tally.clean_records)
        ));
        passed &= a.valid;
    }
    steps.push(DemoStep {
        number: 5,
        title: "The system drains: every reading delivered, judged and archived once".into(),
        passed: Some(passed),
        evidence,
        link: "ledger".into(),
    });
    steps
}

fn invariant(name: &str, measured: u64, bound: u64) -> InvariantRow {
    InvariantRow {
        name: name.into(),
        measured: count(measured),
        bound: format!("<= {}", count(bound)),
        verdict: if measured <= bound {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
    }
}

fn invariants(scenario: &Scenario, run: &RunResult) -> Vec<InvariantRow> {
    use AnomalyKind as K;
    let t = &run.check.tally;
    let e = &scenario.expect;
    let c = |k| anomaly_count(run, k);
    let mut rows = vec![
        invariant("No durable reading lost (raw topic)", c(K::Lost), 0),
        invariant("Per-sensor order in the raw topic", c(K::Nonmonotonic), 0),
        invariant("Record timestamp = event time", c(K::TimestampMismatch), 0),
        invariant(
            "Nothing unexpected, corrupt, misplaced or reused",
            c(K::Unexpected)
                + c(K::Corrupt)
                + c(K::InconsistentOffset)
                + c(K::WrongPartition)
                + c(K::SeqReused),
            0,
        ),
        invariant(
            "Readings lost before durable (power cuts; allowed, counted)",
            t.lost_before_durable,
            e.max_lost_before_durable,
        ),
        invariant(
            "Readings rejected (full spool, invalid, disk errors; counted)",
            t.rejected_spool_full + t.rejected_invalid + t.rejected_io,
            e.max_rejected_or_dropped,
        ),
        invariant(
            "Durable readings lost to reported damage or drops",
            t.lost_to_reported_damage_or_drop,
            e.max_lost_to_reported_damage + e.max_rejected_or_dropped,
        ),
    ];
    rows.push(InvariantRow {
        name: "Liveness: spools drained after the last fault healed".into(),
        measured: maybe_duration(run.drain_ms),
        bound: format!("<= {}", duration(e.drain_within_s * 1_000)),
        verdict: if run.drain_ms.is_some_and(|d| d <= e.drain_within_s * 1_000) {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
    });
    if !run.backfills.is_empty() {
        let good: u64 = run.backfills.iter().map(|b| b.rows - b.bad_rows).sum();
        let delivered: u64 = run.backfills.iter().map(|b| b.delivered_unique).sum();
        rows.push(InvariantRow {
            name: "Every good SD-card row delivered with its event time".into(),
            measured: format!("{} of {}", count(delivered), count(good)),
            bound: "all".into(),
            verdict: if delivered == good {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
        });
    }
    if let Some(d) = &run.downstream {
        use soilstream_scenarios::downstream::DownstreamAnomaly as D;
        let exactly_once = [
            D::LostDownstream,
            D::DuplicateDownstream,
            D::UnexpectedDownstream,
            D::CorruptDownstream,
            D::Misclassified,
        ]
        .iter()
        .map(|k| d.count(*k))
        .sum();
        let oracle = [
            D::NonmonotonicDownstream,
            D::WindowMismatch,
            D::WindowRevision,
            D::FlagsMismatch,
            D::AlertMismatch,
            D::AlertSequence,
        ]
        .iter()
        .map(|k| d.count(*k))
        .sum();
        rows.push(invariant(
            "qaqc: every raw reading exactly once in clean or quarantine",
            exactly_once,
            0,
        ));
        rows.push(invariant(
            "qaqc: windows, flags and alerts equal the offline oracle",
            oracle,
            0,
        ));
    }
    if let Some(a) = &run.archive {
        rows.push(invariant(
            "Archive: every clean record in exactly one committed file",
            a.anomalies.values().map(|e| e.count).sum(),
            0,
        ));
    }
    let other = other_failures(run);
    rows.push(InvariantRow {
        name: "Every other expectation of the scenario (stage liveness, crash points, minimum counts)".into(),
        measured: format!("{} failed", other.len()),
        bound: "none failed".into(),
        verdict: if other.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
    });
    rows
}

/// The names of every anomaly kind of every checker.
fn anomaly_names(run: &RunResult) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = run.check.anomalies.keys().map(|k| k.name().to_owned()).collect();
    if let Some(d) = &run.downstream {
        names.extend(d.anomalies.keys().map(|k| k.name().to_owned()));
    }
    if let Some(a) = &run.archive {
        names.extend(a.anomalies.keys().map(|k| k.name().to_owned()));
    }
    names
}

/// The failures that are not a checker's anomaly line (`COUNT NAME: ...`).
fn other_failures(run: &RunResult) -> Vec<String> {
    let names = anomaly_names(run);
    run.failures
        .iter()
        .filter(|f| {
            let mut words = f.splitn(3, ' ');
            let is_count = words.next().is_some_and(|w| w.parse::<u64>().is_ok());
            let name = words.next().map(|w| w.trim_end_matches(':'));
            !(is_count && name.is_some_and(|n| names.contains(n)))
        })
        .cloned()
        .collect()
}

fn anomalies(run: &RunResult) -> Vec<AnomalyRow> {
    let cap = |examples: &[String]| examples.iter().take(EXAMPLES_PER_ANOMALY).cloned().collect();
    let mut rows: Vec<AnomalyRow> = run
        .check
        .anomalies
        .iter()
        .map(|(kind, list)| AnomalyRow {
            checker: "raw".into(),
            kind: kind.name().into(),
            count: list.count,
            allowed: *kind == AnomalyKind::Duplicate,
            examples: cap(&list.examples),
        })
        .collect();
    if let Some(d) = &run.downstream {
        rows.extend(d.anomalies.iter().map(|(kind, e)| AnomalyRow {
            checker: "downstream".into(),
            kind: kind.name().into(),
            count: e.count,
            allowed: false,
            examples: cap(&e.examples),
        }));
    }
    if let Some(a) = &run.archive {
        rows.extend(a.anomalies.iter().map(|(kind, e)| AnomalyRow {
            checker: "archive".into(),
            kind: kind.name().into(),
            count: e.count,
            allowed: false,
            examples: cap(&e.examples),
        }));
    }
    let other = other_failures(run);
    if !other.is_empty() {
        rows.push(AnomalyRow {
            checker: "run".into(),
            kind: "expectation".into(),
            count: other.len() as u64,
            allowed: false,
            examples: cap(&other),
        });
    }
    rows
}

fn ledger(run: &RunResult) -> Vec<LedgerRow> {
    let t = &run.check.tally;
    let obs = &run.observations;
    let row = |name: &str, count: u64, note: &str| LedgerRow {
        name: name.into(),
        count,
        note: note.into(),
    };
    let mut rows = vec![
        row(
            "sampled",
            obs.sampled_at_ms.len() as u64,
            "readings the live gateways' probes produced",
        ),
        row(
            "read from SD cards",
            obs.backfill_rows,
            "good rows of the backfilled logs",
        ),
        row(
            "durable",
            t.durable,
            "acknowledged by a spool (fdatasync) or on a card",
        ),
        row(
            "delivered",
            t.delivered_unique,
            "distinct identities in the raw topic",
        ),
        row(
            "duplicates in raw",
            t.duplicates,
            "extra copies (allowed: at-least-once into raw)",
        ),
    ];
    if let Some(d) = &run.downstream {
        rows.push(row("clean", d.tally.clean, "readings qaqc passed, with flags"));
        for (reason, n) in &d.tally.quarantined {
            rows.push(row(
                &format!("quarantined: {reason}"),
                *n,
                "refused by a hard check",
            ));
        }
        rows.push(row(
            "duplicates removed",
            d.tally.raw_repeats,
            "raw repeats qaqc dropped by identity",
        ));
        rows.push(row(
            "windows revised",
            d.tally.windows_revised,
            "windows corrected by late data",
        ));
    }
    if let Some(a) = &run.archive {
        rows.push(row("archived", a.tally.rows, "rows in committed Parquet files"));
    }
    rows.extend([
        row(
            "lost before durable",
            t.lost_before_durable,
            "not yet synced at a power cut (allowed, counted)",
        ),
        row(
            "rejected",
            t.rejected_spool_full + t.rejected_invalid + t.rejected_io,
            "refused by a full spool, validation or the disk (counted)",
        ),
        row(
            "lost to reported damage or drops",
            t.lost_to_reported_damage_or_drop,
            "reported by the spool (bounded by the scenario)",
        ),
        row(
            "lost",
            run.check.count(AnomalyKind::Lost),
            "durable and never delivered (must be 0)",
        ),
    ]);
    rows
}

fn decisions(
    scenario: &Scenario,
    run: &RunResult,
    faults: &[FaultRow],
    lag: &LagPercentiles,
) -> Vec<Decision> {
    let t = &run.check.tally;
    let biggest = faults
        .iter()
        .filter(|f| f.backlog_of == "readings spooled")
        .max_by_key(|f| f.backlog);
    let mut out = vec![
        Decision {
            decision: "A reading is acknowledged only once its spool segment is synced (fdatasync); \
                       the spool deletes only after the broker's delivery report"
                .into(),
            evidence: format!(
                "{}; {} durable readings, lost: {}",
                biggest.map_or("no fault built a backlog".to_owned(), |f| format!(
                    "fault #{} built a backlog of {} readings on disk",
                    f.number,
                    count(f.backlog)
                )),
                count(t.durable),
                run.check.count(AnomalyKind::Lost)
            ),
        },
        Decision {
            decision: "The record timestamp is the event time (CreateTime), and the identity \
                       (gateway, probe, seq) is assigned at sampling"
                .into(),
            evidence: format!(
                "live delivery lag p50 {} / max {}, yet timestamp mismatches: {}",
                duration(lag.p50_ms),
                duration(lag.max_ms),
                run.check.count(AnomalyKind::TimestampMismatch)
            ),
        },
        Decision {
            decision: "The key is the probe id, so one sensor's readings share a partition and its order"
                .into(),
            evidence: format!(
                "{} raw records in {} partitions, nonmonotonic: {}",
                count(t.records_in_topic),
                scenario.topology.partitions,
                run.check.count(AnomalyKind::Nonmonotonic)
            ),
        },
    ];
    if let Some(d) = &run.downstream {
        out.push(Decision {
            decision: "At-least-once into raw, exactly once downstream: qaqc drops repeats by identity \
                       and commits its input offsets only after its outputs"
                .into(),
            evidence: format!(
                "{} duplicates in raw, {} dropped by qaqc, {} boots of qaqc; exactly-once anomalies: {}",
                count(t.duplicates),
                count(d.tally.raw_repeats),
                run.qaqc_activity.boots,
                d.anomalies
                    .iter()
                    .filter(|(k, _)| {
                        use soilstream_scenarios::downstream::DownstreamAnomaly as D;
                        matches!(
                            k,
                            D::LostDownstream | D::DuplicateDownstream | D::UnexpectedDownstream
                        )
                    })
                    .map(|(_, e)| e.count)
                    .sum::<u64>()
            ),
        });
        out.push(Decision {
            decision: "Lateness is judged per sensor, not per partition: a day-old backfill is late data \
                       to correct windows with, not data to drop"
                .into(),
            evidence: format!(
                "{} windows revised by late data, {} written as historical, quarantined too_late: {}",
                count(d.tally.windows_revised),
                count(d.tally.windows_historical),
                count(d.tally.quarantined.get("too_late").copied().unwrap_or(0))
            ),
        });
    }
    if let Some(a) = &run.archive {
        let p = &run.archive_activity.progress;
        out.push(Decision {
            decision: "The archive's commit point is a marker object written create-if-absent after the \
                       batch's intent and data files; recovery removes what no marker covers"
                .into(),
            evidence: format!(
                "{} batches committed, {} recoveries, {} attempts aborted; {} files, orphans: {}, anomalies: {}",
                count(p.batches_committed),
                count(p.recoveries),
                count(a.tally.aborted_attempts),
                count(a.tally.files),
                count(a.tally.orphan_files),
                a.anomalies.values().map(|e| e.count).sum::<u64>()
            ),
        });
    }
    if !run.backfills.is_empty() {
        let delay = run.backfills.iter().filter_map(|b| b.live_delay_max_ms).max();
        let rate = scenario
            .backfills
            .iter()
            .filter_map(|b| b.max_rate_rows_per_s)
            .max();
        out.push(Decision {
            decision: "Backfills are rate-limited and use the same identity, schema and producer as live \
                       data, so they queue behind it instead of starving it"
                .into(),
            evidence: format!(
                "rate limit {}; slowest live reading during the backfill delivered in {}",
                rate.map_or("none".to_owned(), |r| format!("{r} rows/s")),
                maybe_duration(delay)
            ),
        });
    }
    out
}

fn reflection(
    run: &RunResult,
    faults: &[FaultRow],
    invariants: &[InvariantRow],
    verdict: Verdict,
) -> Reflection {
    let mut went_well = Vec::new();
    let held = invariants.iter().filter(|r| r.verdict == Verdict::Pass).count();
    went_well.push(format!("{held} of {} invariants held", invariants.len()));
    for f in faults
        .iter()
        .filter(|f| f.covered && f.drained_after_ms.is_some() && f.backlog > 0)
    {
        went_well.push(format!(
            "fault #{} ({}): {} {} recovered {} after it healed",
            f.number,
            f.kind,
            count(f.backlog),
            f.backlog_of,
            maybe_duration(f.drained_after_ms)
        ));
    }
    let mut went_wrong: Vec<String> = run.failures.iter().take(10).cloned().collect();
    if run.failures.len() > 10 {
        went_wrong.push(format!("... and {} more failures", run.failures.len() - 10));
    }
    for f in faults.iter().filter(|f| !f.covered) {
        went_wrong.push(format!("fault #{} ({}) had no visible effect", f.number, f.kind));
    }
    if went_wrong.is_empty() && verdict == Verdict::Pass {
        went_wrong.push("nothing this run measured".into());
    }
    Reflection {
        went_well,
        went_wrong,
        not_modelled: [
            "one broker with no replication: a broker that loses its disk loses what it acknowledged",
            "flash-storage wear, SD-card write amplification and file systems other than the simulated disk's \
             block model (torn writes at block granularity, unsynced data lost)",
            "radio links below TCP: LoRaWAN duty cycles and packet-level loss are modelled as partitions, \
             holds and latency",
            "clock drift between syncs (only jumps are scripted) and the real cost of CPU, memory and power \
             on the gateway",
            "TLS, authentication and hostile networks",
        ]
        .map(str::to_owned)
        .to_vec(),
        deployment_must_add: [
            "a replicated broker (replication factor 3, min.insync.replicas 2) and acks=all, as the gateway \
             already asks",
            "alerts on spool depth, delivery lag and qaqc / archive lag (the metrics exist), sized to the \
             disk each gateway has",
            "a time source on every gateway (NTP or GPS) and a check of clock jumps",
            "TLS and credentials for the broker, the registry and the object store",
            "a retention and lifecycle policy for the raw topic and the archive bucket",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 500), 50);
        assert_eq!(percentile(&v, 950), 95);
        assert_eq!(percentile(&v, 1_000), 100);
        assert_eq!(percentile(&[7], 500), 7);
        assert_eq!(percentile(&[], 500), 0);
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(1), 1_000);
        assert_eq!(nice_step(61_000), 120_000);
        assert_eq!(nice_step(10_000_000), 10_800_000);
    }
}
