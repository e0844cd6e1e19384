//! The report's one data model. `report.md`, `report.html` and `run.json`
//! are all rendered from a [`Report`]; nothing is computed while rendering
//! except layout.
//!
//! Every number is an integer (ms, counts) or formatted by the renderers
//! with a fixed precision; every map is a `BTreeMap` or a sorted `Vec`, so
//! the same run gives the same bytes.

use serde::Serialize;
use std::collections::BTreeMap;

/// Version of the `run.json` layout.
pub const RUN_JSON_VERSION: u32 = 1;

/// The three-valued verdict (as Jepsen's `valid?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Every invariant held and every fault was seen to happen.
    Pass,
    /// Nothing failed, but something the verdict rests on did not happen (a
    /// fault without effect, a step not exercised): no evidence either way.
    Unknown,
    /// An invariant or an expectation failed.
    Fail,
}

impl Verdict {
    /// `PASS`, `UNKNOWN` or `FAIL`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Unknown => "UNKNOWN",
            Verdict::Fail => "FAIL",
        }
    }

    /// The worse of two verdicts.
    pub fn and(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

/// Which world ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorldKind {
    /// The deterministic simulator.
    Sim,
    /// Real processes on loopback.
    Real,
    /// Containers.
    Docker,
}

impl WorldKind {
    /// `sim`, `real` or `docker`.
    pub fn name(self) -> &'static str {
        match self {
            WorldKind::Sim => "sim",
            WorldKind::Real => "real",
            WorldKind::Docker => "docker",
        }
    }
}

/// What run this is and how to run it again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// The world.
    pub world: WorldKind,
    /// The seed.
    pub seed: u64,
    /// The planted bug, if any.
    pub planted_bug: Option<String>,
    /// The command that reproduces this report.
    pub command: String,
    /// Simulated (or, in a real world, elapsed) time of the run, ms.
    pub run_ms: u64,
    /// Start of the run's time axis (the simulated epoch).
    pub epoch: String,
    /// Digest of the run's outcome (equal for equal seeds).
    pub digest: String,
    /// Interval at which the world was sampled, ms (the resolution of
    /// append times and of every time series).
    pub sample_interval_ms: u64,
}

/// Fields that depend on the wall clock (real worlds only); kept out of
/// everything else so the rest stays comparable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WallClock {
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// How long it took, ms.
    pub elapsed_ms: u64,
    /// Scenario ms per wall-clock ms (the real world plays the script
    /// faster than written).
    pub time_compression: u32,
    /// Where the processes' directories and logs are (or were).
    pub work_dir: String,
}

/// One of the course's demonstration steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoStep {
    /// 1 to 5.
    pub number: u32,
    /// What the step shows.
    pub title: String,
    /// Ticked, crossed, or not exercised by this scenario (`None`).
    pub passed: Option<bool>,
    /// What this run measured.
    pub evidence: String,
    /// The id of the chart or table that shows it.
    pub link: String,
}

/// One fault of the timeline, with the proof that it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRow {
    /// 1-based.
    pub number: u32,
    /// Fault kind (the scenario's `kind`), or `sd_card_backfill`.
    pub kind: String,
    /// What it hit.
    pub target: String,
    /// Start, ms since the start.
    pub start_ms: u64,
    /// End (healed), ms since the start.
    pub end_ms: u64,
    /// What the run measured that shows the fault had an effect.
    pub effect: String,
    /// Whether that effect was seen (a fault that did nothing makes the
    /// verdict UNKNOWN).
    pub covered: bool,
    /// The backlog the fault built, in the unit of `backlog_of`.
    pub backlog: u64,
    /// What the backlog counts (spooled readings, raw records not yet
    /// judged by qaqc, clean records not yet archived, rows).
    pub backlog_of: String,
    /// How long after the fault healed the backlog was gone, ms (`None`:
    /// never, within the run).
    pub drained_after_ms: Option<u64>,
}

/// One row of the ledger table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRow {
    /// What is counted.
    pub name: String,
    /// How many.
    pub count: u64,
    /// What it means.
    pub note: String,
}

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvariantRow {
    /// The invariant.
    pub name: String,
    /// What the run measured.
    pub measured: String,
    /// The bound.
    pub bound: String,
    /// Its verdict.
    pub verdict: Verdict,
}

/// Delivery-lag percentiles of one origin, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LagPercentiles {
    /// Records measured.
    pub records: u64,
    /// Median.
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
}

/// Anomalies of one kind, with capped examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRow {
    /// Which checker found it: `raw`, `downstream`, `archive` or `run`.
    pub checker: String,
    /// The anomaly's name.
    pub kind: String,
    /// How many.
    pub count: u64,
    /// Whether the design allows it (duplicates in the raw topic).
    pub allowed: bool,
    /// The first few.
    pub examples: Vec<String>,
}

/// A design decision and what this run shows of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The decision.
    pub decision: String,
    /// Its evidence in this run.
    pub evidence: String,
}

/// The reflection closing the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reflection {
    /// What went well (measured).
    pub went_well: Vec<String>,
    /// What went wrong (failures, uncovered faults).
    pub went_wrong: Vec<String>,
    /// What the simulation does not model.
    pub not_modelled: Vec<String>,
    /// What a real deployment must add.
    pub deployment_must_add: Vec<String>,
}

/// A fault drawn as a shaded band on every time chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Band {
    /// Label (`#n kind`).
    pub label: String,
    /// Colour family: `broker`, `network`, `power`, `disk`, `clock`,
    /// `stage`, `service`, `backfill`, `input`.
    pub family: String,
    /// Start, ms since the start.
    pub start_ms: u64,
    /// End, ms (equal to the start for an instant fault).
    pub end_ms: u64,
}

/// One occupied cell of a binned scatter (event time against append time,
/// corrected windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ScatterCell {
    /// Column start, ms since the start (x).
    pub x_ms: u64,
    /// Row start, ms since the start (y; negative: before the run).
    pub y_ms: i64,
    /// 0: live, 1: backfill.
    pub series: u8,
    /// Points in the cell.
    pub count: u64,
}

/// Per time bin, lag percentiles of the records appended in it, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LagBin {
    /// Bin start, ms since the start.
    pub at_ms: u64,
    /// 0: live, 1: backfill.
    pub series: u8,
    /// Median lag.
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// Largest.
    pub max_ms: u64,
}

/// Per time bin, how many readings each stage handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ThroughputBin {
    /// Bin start, ms since the start.
    pub at_ms: u64,
    /// Live readings sampled.
    pub sampled: u64,
    /// Raw records appended (copies and backfill included).
    pub delivered: u64,
    /// Clean records appended.
    pub clean: u64,
    /// Clean records archived (committed).
    pub archived: u64,
}

/// One row (a sensor) of the completeness map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompletenessRow {
    /// `gateway/probe`.
    pub sensor: String,
    /// Per hour of event time since the start: the cell's class.
    pub hours: BTreeMap<i64, Completeness>,
}

/// What became of one sensor's readings of one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Completeness {
    /// Every reading delivered.
    Complete,
    /// Some lost where the design allows it, counted (not durable at a power
    /// cut, refused by a full spool or validation).
    AllowedLoss,
    /// Some lost to damage or drops the gateway reported (bounded).
    ReportedLoss,
    /// Some durable readings lost with nothing reported.
    Lost,
}

/// Everything the charts draw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The shared time axis: 0 to this, ms.
    pub end_ms: u64,
    /// Bin width of binned series, ms.
    pub bin_ms: u64,
    /// Faults as bands.
    pub bands: Vec<Band>,
    /// Gateways, in `spool_depth` order.
    pub gateways: Vec<String>,
    /// (time ms, depth per gateway).
    pub spool_depth: Vec<(u64, Vec<u64>)>,
    /// Event time against append time.
    pub event_vs_append: Vec<ScatterCell>,
    /// Row height of `event_vs_append`, ms.
    pub event_bin_ms: u64,
    /// Lag percentiles per bin.
    pub lag: Vec<LagBin>,
    /// Throughput per bin.
    pub throughput: Vec<ThroughputBin>,
    /// Completeness per sensor per hour.
    pub completeness: Vec<CompletenessRow>,
    /// Sensors left out of the map (beyond its row limit).
    pub completeness_rows_omitted: u64,
    /// (time ms, backfill rows appended so far).
    pub backfill_progress: Vec<(u64, u64)>,
    /// Good rows of every SD-card log.
    pub backfill_rows: u64,
    /// Window revisions: x = append time, y = window start.
    pub revised_windows: Vec<ScatterCell>,
}

/// The report of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Layout version of `run.json`.
    pub format_version: u32,
    /// What run this is.
    pub identity: Identity,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in one line each.
    pub verdict_reasons: Vec<String>,
    /// The course's five demonstration steps.
    pub demo_steps: Vec<DemoStep>,
    /// The fault timeline, with coverage and liveness per fault.
    pub faults: Vec<FaultRow>,
    /// The ledger.
    pub ledger: Vec<LedgerRow>,
    /// The verdict per invariant.
    pub invariants: Vec<InvariantRow>,
    /// Delivery lag of live readings.
    pub lag_live: LagPercentiles,
    /// Delivery lag of backfilled readings.
    pub lag_backfill: LagPercentiles,
    /// The anomalies.
    pub anomalies: Vec<AnomalyRow>,
    /// Design decisions with their evidence.
    pub decisions: Vec<Decision>,
    /// The reflection.
    pub reflection: Reflection,
    /// What the charts draw.
    pub series: Series,
    /// Wall-clock fields (real worlds only).
    pub wall_clock: Option<WallClock>,
}
