//! Scenarios as data: a TOML file describes the world (topology), how long it
//! runs, the fault timeline and what must hold at the end.
//!
//! ```toml
//! name = "network-outage-2h"
//! description = "One gateway loses its uplink for two hours."
//! duration_s = 21600
//! tick_ms = 1000
//!
//! [topology]
//! gateways = 1
//! sensors_per_gateway = 20
//! sample_interval_ms = 60000
//! partitions = 3
//!
//! [expect]
//! drain_within_s = 1800
//!
//! [[fault]]
//! kind = "network_outage"
//! gateway = 0
//! at_s = 3600
//! duration_s = 7200
//!
//! [[fault]]
//! kind = "registry_outage"   # the schema registry host goes away
//! at_s = 0
//! duration_s = 1800
//! mode = "crash"             # or "partition" (the default)
//!
//! [[backfill]]               # an SD-card log backfilled while live data flows
//! gateway = 0                # whose probes the log covers
//! at_s = 14400               # when the backfill starts
//! log_from_s = 3600          # the log covers event times [log_from_s, log_to_s)
//! log_to_s = 10800
//! max_rate_rows_per_s = 50   # `--max-rate`
//! ```
//!
//! Every world has a schema registry host (`registry`, the registry service
//! on a simulated disk); gateways and backfills register the reading schema
//! there and the checker fetches writer schemas from it by id.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Upper bound on simulated duration, s (30 days).
pub const DURATION_MAX_S: u64 = 30 * 86_400;
/// Upper bound on gateways in one world.
pub const GATEWAYS_MAX: u32 = 64;
/// Upper bound on sensors per gateway.
pub const SENSORS_PER_GATEWAY_MAX: u32 = 1_000;
/// Upper bound on the rows of one backfilled SD-card log.
pub const BACKFILL_ROWS_MAX: u64 = 1_000_000;

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (used in summaries and reports).
    pub name: String,
    /// What the scenario exercises.
    #[serde(default)]
    pub description: String,
    /// Simulated time the system runs with faults, s; then faults are healed
    /// and the system drains.
    pub duration_s: u64,
    /// Simulator tick, ms: the resolution of simulated time (and of network
    /// latency). Larger ticks run faster; see README "Simulator speed".
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// The world.
    pub topology: Topology,
    /// What must hold at the end.
    #[serde(default)]
    pub expect: Expectations,
    /// The fault timeline.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    /// SD-card logs backfilled during the run (`[[backfill]]`).
    #[serde(default, rename = "backfill")]
    pub backfills: Vec<Backfill>,
    /// The QA/QC stage (`[qaqc]`).
    #[serde(default)]
    pub qaqc: QaqcStage,
    /// The archive stage (`[archive]`) and its object store host.
    #[serde(default)]
    pub archive: ArchiveStage,
}

/// The downstream stages whose instances a scenario scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// `qaqc-{i}` hosts.
    Qaqc,
    /// `archive-{i}` hosts.
    Archive,
}

impl Stage {
    /// The stage's name (`[qaqc]`, `[archive]`, host names).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Qaqc => "qaqc",
            Stage::Archive => "archive",
        }
    }

    /// The host name of instance `instance`.
    pub fn host(self, instance: u32) -> String {
        format!("{}-{instance}", self.name())
    }
}

/// Upper bound on archive instances in one world.
pub const ARCHIVE_INSTANCES_MAX: u32 = 8;

/// The archive stage of a world: `instances` archive hosts (`archive-0`,
/// ...) in one consumer group on the clean topic, writing Parquet through
/// the world's object store host (`objstore`, files on its simulated disk).
/// The archive checker judges the store against the clean topic. Needs the
/// QA/QC stage (it reads its output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveStage {
    /// Number of archive hosts (0: no archive stage).
    #[serde(default)]
    pub instances: u32,
    /// When each host first starts, s (default: all at 0).
    #[serde(default)]
    pub start_at_s: Vec<u64>,
    /// Consumer-group session timeout, ms.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Most records one poll returns.
    #[serde(default = "default_qaqc_max_poll_records")]
    pub max_poll_records: u32,
    /// Rows per batch (`[rotation] max_rows`).
    #[serde(default = "default_archive_max_rows")]
    pub max_rows: u64,
    /// A batch is cut this long after its first record, ms.
    #[serde(default = "default_archive_max_age_ms")]
    pub max_age_ms: u64,
    /// Distinct event dates one batch may hold.
    #[serde(default = "default_archive_max_open_dates")]
    pub max_open_dates: usize,
    /// Minimum number of rebalances the instances must have seen.
    #[serde(default)]
    pub min_rebalances: u64,
    /// Minimum number of abort markers the store must hold at the end
    /// (uncommitted attempts fenced by recoveries): proves crashes really
    /// landed in the middle of a batch.
    #[serde(default)]
    pub min_attempts_aborted: u64,
    /// Minimum number of event-date directories the archive must hold.
    #[serde(default)]
    pub min_event_dates: u64,
}

fn default_archive_max_rows() -> u64 {
    500
}
fn default_archive_max_age_ms() -> u64 {
    300_000
}
fn default_archive_max_open_dates() -> usize {
    4
}

impl Default for ArchiveStage {
    fn default() -> Self {
        Self {
            instances: 0,
            start_at_s: Vec::new(),
            session_timeout_ms: default_session_timeout_ms(),
            max_poll_records: default_qaqc_max_poll_records(),
            max_rows: default_archive_max_rows(),
            max_age_ms: default_archive_max_age_ms(),
            max_open_dates: default_archive_max_open_dates(),
            min_rebalances: 0,
            min_attempts_aborted: 0,
            min_event_dates: 0,
        }
    }
}

/// Upper bound on qaqc instances in one world.
pub const QAQC_INSTANCES_MAX: u32 = 16;

/// The QA/QC stage of a world: `instances` qaqc hosts (`qaqc-0`, ...) in
/// one consumer group on the raw topic, each on its own simulated disk and
/// clock. The downstream checker judges their output topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaqcStage {
    /// Number of qaqc hosts (0: no QA/QC stage).
    #[serde(default = "default_qaqc_instances")]
    pub instances: u32,
    /// When each host first starts, s (default: all at 0). Shorter than
    /// `instances`: the others start at 0.
    #[serde(default)]
    pub start_at_s: Vec<u64>,
    /// Local checkpoints every this many ms (0: none; state is always
    /// rebuilt from the outputs).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Consumer-group session timeout, ms.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Sensor-silent alerts after this long without a reading, ms.
    #[serde(default)]
    pub silent_after_ms: Option<u64>,
    /// State horizon (`too_late` beyond it), ms.
    #[serde(default)]
    pub state_horizon_ms: Option<i64>,
    /// Most records one poll of a qaqc host returns (a small value makes a
    /// backlog take long to process, so crashes land in the middle of it).
    #[serde(default = "default_qaqc_max_poll_records")]
    pub max_poll_records: u32,
    /// Minimum number of windows that must end up revised (corrected by
    /// late data): proves a scenario really exercised corrections.
    #[serde(default)]
    pub min_revised_windows: u64,
    /// Minimum number of rebalances the instances must have seen.
    #[serde(default)]
    pub min_rebalances: u64,
}

fn default_qaqc_instances() -> u32 {
    1
}
fn default_checkpoint_interval_ms() -> u64 {
    3_600_000
}
fn default_session_timeout_ms() -> u64 {
    30_000
}
fn default_qaqc_max_poll_records() -> u32 {
    1_000
}

impl Default for QaqcStage {
    fn default() -> Self {
        Self {
            instances: default_qaqc_instances(),
            start_at_s: Vec::new(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            max_poll_records: default_qaqc_max_poll_records(),
            silent_after_ms: None,
            state_horizon_ms: None,
            min_revised_windows: 0,
            min_rebalances: 0,
        }
    }
}

/// An SD-card log backfilled with the backfill tool (`run_backfill`) while
/// the live system runs.
///
/// The log holds what the probes of gateway `gateway` measured (their own
/// logger kept sampling while the gateway was down), one row per probe every
/// `log_interval_ms` with event times in `[log_from_s, log_to_s)` of the
/// scenario, generated from the seed. At `at_s` a backfill host named
/// `gw-{gateway}-sd` (also the backfill's gateway id) copies the log onto its
/// disk and backfills it into the raw topic, rate-limited, through the
/// registry and the broker. Row `n` of the file (line `n`, the header being
/// line 1) has identity (`gw-{gateway}-sd`, probe id, `n`).
///
/// The run does not end before the backfill does; one still running
/// `expect.drain_within_s` after the drain deadline (the later of
/// `duration_s` and the last fault's end plus `drain_within_s`) fails
/// liveness. Its rows are checked like durable readings (each must reach the
/// raw topic with its event time as the record timestamp, in per-probe
/// order within its own gateway id), plus what `[expect]` says about
/// backfills (`min_late_backfill_records`, `max_live_delay_during_backfill_s`)
/// and that the tool rejected exactly the `bad_rows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    /// Gateway index whose probes the log covers.
    pub gateway: u32,
    /// When the backfill starts, s.
    pub at_s: u64,
    /// First event time in the log, s from the start (negative: the log
    /// began before the run, as the card of a station offline for days).
    pub log_from_s: i64,
    /// End of the log's event times (exclusive), s from the start; at most `at_s`.
    pub log_to_s: i64,
    /// Time between two rows of one probe, ms (default: the topology's
    /// sampling interval).
    #[serde(default)]
    pub log_interval_ms: Option<u64>,
    /// The backfill's `--max-rate`, rows per second (default: unlimited).
    #[serde(default)]
    pub max_rate_rows_per_s: Option<u32>,
    /// Rows written garbled (as a failing logger does); the backfill must
    /// reject exactly these, and deliver every other row.
    #[serde(default)]
    pub bad_rows: u64,
    /// The backfill host loses power this many s after `at_s` (the run is
    /// killed halfway) and comes back `down_s` later: the backfill resumes
    /// from its checkpoint.
    #[serde(default)]
    pub crash_after_s: Option<u64>,
    /// Downtime after `crash_after_s`, s.
    #[serde(default = "default_backfill_down_s")]
    pub down_s: u64,
    /// The card's layout: `long-csv` (default) or `toa5` (a Campbell table,
    /// read with the profile the card carries).
    #[serde(default)]
    pub card_format: crate::sdcard::CardFormat,
}

fn default_backfill_down_s() -> u64 {
    60
}

impl Backfill {
    /// The gateway id of the backfilled records, also the backfill host's name.
    pub fn gateway_id(&self) -> String {
        format!("gw-{}-sd", self.gateway)
    }

    /// Time between two rows of one probe, ms.
    pub fn interval_ms(&self, topology: &Topology) -> u64 {
        self.log_interval_ms.unwrap_or(topology.sample_interval_ms)
    }

    /// Sampling rounds in the log (each has one row per probe).
    pub fn rounds(&self, topology: &Topology) -> u64 {
        let span_ms = (self.log_to_s.saturating_sub(self.log_from_s)).max(0) as u64 * 1_000;
        span_ms.div_ceil(self.interval_ms(topology).max(1))
    }

    /// Data rows in the log (bad ones included).
    pub fn rows(&self, topology: &Topology) -> u64 {
        self.rounds(topology) * u64::from(topology.sensors_per_gateway)
    }

    /// When the backfill host is back after its crash, s (if it crashes).
    pub fn restart_at_s(&self) -> Option<u64> {
        self.crash_after_s.map(|after| self.at_s + after + self.down_s)
    }
}

fn default_tick_ms() -> u64 {
    1_000
}

/// The simulated world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Number of gateways (`gw-0`, `gw-1`, ...).
    pub gateways: u32,
    /// Probes per gateway.
    pub sensors_per_gateway: u32,
    /// Sampling interval, ms.
    #[serde(default = "default_sample_interval_ms")]
    pub sample_interval_ms: u64,
    /// Partitions of the raw topic.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Gateway sync policy: 0 = every batch, otherwise at most every N ms.
    #[serde(default)]
    pub sync_interval_ms: u64,
    /// Spool disk budget per gateway, bytes.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Spool segment size, bytes.
    #[serde(default = "default_segment_max_bytes")]
    pub spool_segment_max_bytes: u64,
    /// What a full spool does: "reject_new" or "drop_oldest".
    #[serde(default = "default_when_full")]
    pub when_full: String,
    /// Torn-write granularity of the simulated disks, bytes (0 = atomic writes).
    #[serde(default = "default_disk_block_size")]
    pub disk_block_size: u64,
    /// Broker log flush: 0 = fsync before every ack, otherwise every N ms
    /// (acked data can then be lost at a broker power cut).
    #[serde(default)]
    pub broker_flush_interval_ms: u64,
    /// Network latency between hosts, ms (at most the tick).
    #[serde(default)]
    pub latency_ms: u64,
    /// Gateway clock drift, ppm (each gateway gets a seeded value in ±this).
    #[serde(default)]
    pub clock_drift_ppm_max: f64,
    /// Probability per sample that a probe returns garbage (NaN moisture):
    /// such readings are rejected by validation and counted.
    #[serde(default)]
    pub garbage_reading_probability: f64,
}

fn default_sample_interval_ms() -> u64 {
    60_000
}
fn default_partitions() -> u32 {
    3
}
fn default_spool_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_segment_max_bytes() -> u64 {
    1024 * 1024
}
fn default_when_full() -> String {
    "reject_new".into()
}
fn default_disk_block_size() -> u64 {
    512
}

/// What must hold at the end of the run (beyond the checker's invariants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// After the last fault heals, every spool must be empty within this, s.
    #[serde(default = "default_drain_within_s")]
    pub drain_within_s: u64,
    /// Most readings that may be lost before becoming durable (power cuts).
    #[serde(default)]
    pub max_lost_before_durable: u64,
    /// Most readings that may be rejected or dropped (disk full).
    #[serde(default)]
    pub max_rejected_or_dropped: u64,
    /// Most durable readings that may be lost to reported spool damage.
    #[serde(default)]
    pub max_lost_to_reported_damage: u64,
    /// Fewest backfilled records that must land late: after a live record
    /// of the same probe with a later event time, in the same partition.
    /// Proves a backfill scenario really interleaved old and live data.
    #[serde(default)]
    pub min_late_backfill_records: u64,
    /// Longest a live reading made durable while a backfill ran may wait
    /// for its delivery report, s (unchecked when absent): `--max-rate`
    /// keeps the live stream flowing.
    #[serde(default)]
    pub max_live_delay_during_backfill_s: Option<u64>,
}

fn default_drain_within_s() -> u64 {
    3_600
}

impl Default for Expectations {
    fn default() -> Self {
        Self {
            drain_within_s: default_drain_within_s(),
            max_lost_before_durable: 0,
            max_rejected_or_dropped: 0,
            max_lost_to_reported_damage: 0,
            min_late_backfill_records: 0,
            max_live_delay_during_backfill_s: None,
        }
    }
}

/// How a service host (the schema registry, the object store) goes away
/// in a [`Fault::RegistryOutage`] or [`Fault::StoreOutage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// The host is cut off from its clients (connections fail); it keeps
    /// running.
    #[default]
    Partition,
    /// The host crashes (unsynced disk writes lost, or torn) and restarts
    /// from its durable state when the outage ends.
    Crash,
}

/// One scripted fault. Times are simulated seconds from the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Two-way network partition between a gateway and the broker.
    NetworkOutage {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
    },
    /// One-way partition: messages from the gateway to the broker are lost
    /// (or the other way with `to_gateway = true`).
    OneWayOutage {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Drop broker-to-gateway messages instead.
        #[serde(default)]
        to_gateway: bool,
    },
    /// Messages between a gateway and the broker are held, then released
    /// together (delay and reordering across connections).
    Hold {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
    },
    /// Extra latency on a gateway's link.
    LatencySpike {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Latency, ms.
        latency_ms: u64,
    },
    /// The link flaps: down for `down_s`, up for `up_s`, `cycles` times.
    FlappingLink {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Down time per cycle, s.
        down_s: u64,
        /// Up time per cycle, s.
        up_s: u64,
        /// Number of cycles.
        cycles: u32,
    },
    /// Power cut: partition, crash (unsynced data lost, torn writes), power
    /// back after `duration_s` (reboot), optionally with the clock jumped.
    PowerLoss {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Time without power, s.
        duration_s: u64,
        /// Clock jump at reboot, ms (negative = back).
        #[serde(default)]
        clock_jump_ms: i64,
    },
    /// Clean process crash (sockets close) and restart after `duration_s`.
    Crash {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// Repeated power cuts during recovery: `cycles` times up for `up_s`,
    /// down for `down_s`.
    RebootLoop {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Up time per cycle, s.
        up_s: u64,
        /// Down time per cycle, s.
        down_s: u64,
        /// Number of cycles.
        cycles: u32,
    },
    /// The broker crashes (losing its unsynced tail) and restarts.
    BrokerCrash {
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// The broker drops acks after successful writes (producers retry).
    AckLoss {
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Probability per response.
        probability: f64,
    },
    /// The broker answers requests with retriable errors.
    RequestErrors {
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Probability per request.
        probability: f64,
    },
    /// A gateway's disk is full (capacity limited to what is used now plus
    /// `headroom_bytes`).
    DiskFull {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Bytes still writable.
        #[serde(default)]
        headroom_bytes: u64,
    },
    /// I/O errors on a gateway's disk.
    IoErrors {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Probability per operation.
        probability: f64,
    },
    /// Silent read corruption on a gateway's disk.
    ReadCorruption {
        /// Gateway index.
        gateway: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Probability per read.
        probability: f64,
    },
    /// Flip bits in a gateway's spool files (on-disk damage).
    BitFlips {
        /// Gateway index.
        gateway: u32,
        /// When, s.
        at_s: u64,
        /// Number of bits flipped.
        flips: u32,
    },
    /// The gateway clock jumps.
    ClockJump {
        /// Gateway index.
        gateway: u32,
        /// When, s.
        at_s: u64,
        /// Jump, ms (negative = back).
        jump_ms: i64,
    },
    /// A qaqc host crashes (clean: sockets close) and restarts.
    QaqcCrash {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// A qaqc host loses power: partitioned, crashed with unsynced writes
    /// lost and torn (its checkpoints), back after `duration_s`.
    QaqcPowerLoss {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// A qaqc host is cut off from the broker and the registry (its group
    /// session expires; it must stop producing), then reconnected.
    QaqcOutage {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
    },
    /// A qaqc host stops cleanly (leaves the group) and starts again after
    /// `duration_s`.
    QaqcStop {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// An archive host crashes (clean: sockets close) and restarts.
    ArchiveCrash {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// An archive host loses power: cut off first (its requests in flight
    /// get no answer), then crashed, back after `duration_s`.
    ArchivePowerLoss {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// An archive host is cut off from the broker, the registry and the
    /// object store (its group session expires while it may still be
    /// writing: a zombie the markers must fence), then reconnected.
    ArchiveOutage {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
    },
    /// An archive host crashes at a point of its commit protocol (the
    /// simulator's `SOILSTREAM_ARCHIVE_CRASH_AT`): armed at `at_s`, it
    /// crashes the next time it reaches `point`, and restarts at
    /// `at_s + duration_s`. Not reaching the point in that window fails
    /// the run (the scenario did not test what it says).
    ArchiveCrashAt {
        /// Instance index.
        instance: u32,
        /// A crash point name (`after-data-files`, ...; see
        /// `docs/archive.md`).
        point: String,
        /// When it is armed, s.
        at_s: u64,
        /// Window: the crash must happen before `at_s + duration_s`, the
        /// restart is then.
        duration_s: u64,
    },
    /// An archive host stops cleanly (leaves the group) and starts again.
    ArchiveStop {
        /// Instance index.
        instance: u32,
        /// Start, s.
        at_s: u64,
        /// Downtime, s.
        duration_s: u64,
    },
    /// The object store host is unavailable: cut off from the archive
    /// hosts (the default) or power cut (unsynced objects lost or torn)
    /// and restarted.
    StoreOutage {
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Partition (default) or crash and restart.
        #[serde(default)]
        mode: OutageMode,
    },
    /// A hostile producer writes `count` bad records to the raw topic
    /// (garbage bytes, unknown schema ids, NaN, huge values, year 9999,
    /// negative moisture, wrong keys, bad identities); each must land in
    /// quarantine with its reason, and nothing else may change.
    HostileRecords {
        /// When, s.
        at_s: u64,
        /// Records written (cycling through the kinds).
        count: u32,
    },
    /// The schema registry is unavailable: producers keep spooling and
    /// retry registration with backoff.
    RegistryOutage {
        /// Start, s.
        at_s: u64,
        /// Length, s.
        duration_s: u64,
        /// Partition (default) or crash and restart.
        #[serde(default)]
        mode: OutageMode,
    },
}

impl Fault {
    /// The gateway the fault hits, if it hits one.
    pub fn gateway(&self) -> Option<u32> {
        match self {
            Fault::NetworkOutage { gateway, .. }
            | Fault::OneWayOutage { gateway, .. }
            | Fault::Hold { gateway, .. }
            | Fault::LatencySpike { gateway, .. }
            | Fault::FlappingLink { gateway, .. }
            | Fault::PowerLoss { gateway, .. }
            | Fault::Crash { gateway, .. }
            | Fault::RebootLoop { gateway, .. }
            | Fault::DiskFull { gateway, .. }
            | Fault::IoErrors { gateway, .. }
            | Fault::ReadCorruption { gateway, .. }
            | Fault::BitFlips { gateway, .. }
            | Fault::ClockJump { gateway, .. } => Some(*gateway),
            Fault::BrokerCrash { .. }
            | Fault::AckLoss { .. }
            | Fault::RequestErrors { .. }
            | Fault::RegistryOutage { .. }
            | Fault::QaqcCrash { .. }
            | Fault::QaqcPowerLoss { .. }
            | Fault::QaqcOutage { .. }
            | Fault::QaqcStop { .. }
            | Fault::ArchiveCrash { .. }
            | Fault::ArchivePowerLoss { .. }
            | Fault::ArchiveOutage { .. }
            | Fault::ArchiveStop { .. }
            | Fault::ArchiveCrashAt { .. }
            | Fault::StoreOutage { .. }
            | Fault::HostileRecords { .. } => None,
        }
    }

    /// The stage instance the fault hits, if it hits one.
    pub fn stage_instance(&self) -> Option<(Stage, u32)> {
        match self {
            Fault::QaqcCrash { instance, .. }
            | Fault::QaqcPowerLoss { instance, .. }
            | Fault::QaqcOutage { instance, .. }
            | Fault::QaqcStop { instance, .. } => Some((Stage::Qaqc, *instance)),
            Fault::ArchiveCrash { instance, .. }
            | Fault::ArchivePowerLoss { instance, .. }
            | Fault::ArchiveOutage { instance, .. }
            | Fault::ArchiveStop { instance, .. }
            | Fault::ArchiveCrashAt { instance, .. } => Some((Stage::Archive, *instance)),
            _ => None,
        }
    }

    /// Start, s.
    pub fn start_s(&self) -> u64 {
        match self {
            Fault::NetworkOutage { at_s, .. }
            | Fault::OneWayOutage { at_s, .. }
            | Fault::Hold { at_s, .. }
            | Fault::LatencySpike { at_s, .. }
            | Fault::FlappingLink { at_s, .. }
            | Fault::PowerLoss { at_s, .. }
            | Fault::Crash { at_s, .. }
            | Fault::RebootLoop { at_s, .. }
            | Fault::BrokerCrash { at_s, .. }
            | Fault::AckLoss { at_s, .. }
            | Fault::RequestErrors { at_s, .. }
            | Fault::DiskFull { at_s, .. }
            | Fault::IoErrors { at_s, .. }
            | Fault::ReadCorruption { at_s, .. }
            | Fault::BitFlips { at_s, .. }
            | Fault::ClockJump { at_s, .. }
            | Fault::RegistryOutage { at_s, .. }
            | Fault::QaqcCrash { at_s, .. }
            | Fault::QaqcPowerLoss { at_s, .. }
            | Fault::QaqcOutage { at_s, .. }
            | Fault::QaqcStop { at_s, .. }
            | Fault::ArchiveCrash { at_s, .. }
            | Fault::ArchivePowerLoss { at_s, .. }
            | Fault::ArchiveOutage { at_s, .. }
            | Fault::ArchiveStop { at_s, .. }
            | Fault::ArchiveCrashAt { at_s, .. }
            | Fault::StoreOutage { at_s, .. }
            | Fault::HostileRecords { at_s, .. } => *at_s,
        }
    }

    /// When the fault is over (healed), s.
    pub fn end_s(&self) -> u64 {
        match self {
            Fault::NetworkOutage { at_s, duration_s, .. }
            | Fault::OneWayOutage { at_s, duration_s, .. }
            | Fault::Hold { at_s, duration_s, .. }
            | Fault::LatencySpike { at_s, duration_s, .. }
            | Fault::PowerLoss { at_s, duration_s, .. }
            | Fault::Crash { at_s, duration_s, .. }
            | Fault::BrokerCrash { at_s, duration_s }
            | Fault::AckLoss { at_s, duration_s, .. }
            | Fault::RequestErrors { at_s, duration_s, .. }
            | Fault::DiskFull { at_s, duration_s, .. }
            | Fault::IoErrors { at_s, duration_s, .. }
            | Fault::ReadCorruption { at_s, duration_s, .. }
            | Fault::RegistryOutage { at_s, duration_s, .. }
            | Fault::QaqcCrash { at_s, duration_s, .. }
            | Fault::QaqcPowerLoss { at_s, duration_s, .. }
            | Fault::QaqcOutage { at_s, duration_s, .. }
            | Fault::QaqcStop { at_s, duration_s, .. }
            | Fault::ArchiveCrash { at_s, duration_s, .. }
            | Fault::ArchivePowerLoss { at_s, duration_s, .. }
            | Fault::ArchiveOutage { at_s, duration_s, .. }
            | Fault::ArchiveStop { at_s, duration_s, .. }
            | Fault::ArchiveCrashAt { at_s, duration_s, .. }
            | Fault::StoreOutage { at_s, duration_s, .. } => at_s + duration_s,
            Fault::FlappingLink {
                at_s,
                down_s,
                up_s,
                cycles,
                ..
            }
            | Fault::RebootLoop {
                at_s,
                up_s,
                down_s,
                cycles,
                ..
            } => at_s + u64::from(*cycles) * (down_s + up_s),
            Fault::BitFlips { at_s, .. }
            | Fault::ClockJump { at_s, .. }
            | Fault::HostileRecords { at_s, .. } => *at_s,
        }
    }
}

/// A scenario file that cannot be used, with the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys (the message has the line).
    #[error("scenario {origin}: {message}")]
    Parse {
        /// Path.
        origin: String,
        /// Parser message.
        message: String,
    },
    /// A value is out of range.
    #[error("scenario {origin}: {problem}")]
    Invalid {
        /// Path.
        origin: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// The capstone scenario, `scenarios/capstone.toml`, embedded in the
/// binary (`soilstream capstone` runs it with nothing else on disk).
pub const CAPSTONE_TOML: &str = include_str!("../capstone.toml");

impl Scenario {
    /// The embedded capstone scenario ([`CAPSTONE_TOML`]).
    pub fn capstone() -> Self {
        Self::parse(CAPSTONE_TOML, "scenarios/capstone.toml (embedded)")
            .expect("the shipped capstone scenario is valid")
    }

    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        scenario.validate().map_err(|problem| ScenarioError::Invalid {
            origin: origin.to_owned(),
            problem,
        })?;
        Ok(scenario)
    }

    /// Checks ranges and that faults fit the topology and the duration.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.topology;
        if self.duration_s == 0 || self.duration_s > DURATION_MAX_S {
            return Err(format!("duration_s must be 1..={DURATION_MAX_S}"));
        }
        if self.tick_ms == 0 || self.tick_ms > 60_000 {
            return Err("tick_ms must be 1..=60000".into());
        }
        if t.gateways == 0 || t.gateways > GATEWAYS_MAX {
            return Err(format!("topology.gateways must be 1..={GATEWAYS_MAX}"));
        }
        if t.sensors_per_gateway == 0 || t.sensors_per_gateway > SENSORS_PER_GATEWAY_MAX {
            return Err(format!(
                "topology.sensors_per_gateway must be 1..={SENSORS_PER_GATEWAY_MAX}"
            ));
        }
        if t.sample_interval_ms < self.tick_ms {
            return Err("topology.sample_interval_ms must be at least tick_ms".into());
        }
        if t.partitions == 0 || t.partitions > 64 {
            return Err("topology.partitions must be 1..=64".into());
        }
        if t.latency_ms > self.tick_ms {
            return Err("topology.latency_ms must not exceed tick_ms".into());
        }
        if !(0.0..=1.0).contains(&t.garbage_reading_probability) {
            return Err("topology.garbage_reading_probability must be within 0..=1".into());
        }
        if !matches!(t.when_full.as_str(), "reject_new" | "drop_oldest") {
            return Err("topology.when_full must be \"reject_new\" or \"drop_oldest\"".into());
        }
        if t.spool_segment_max_bytes == 0 || t.spool_segment_max_bytes > t.spool_max_bytes {
            return Err("topology.spool_segment_max_bytes must be 1..=spool_max_bytes".into());
        }
        let q = &self.qaqc;
        if q.instances > QAQC_INSTANCES_MAX {
            return Err(format!("qaqc.instances must be 0..={QAQC_INSTANCES_MAX}"));
        }
        if q.start_at_s.len() > q.instances as usize || q.start_at_s.iter().any(|s| *s >= self.duration_s) {
            return Err("qaqc.start_at_s: at most one time per instance, each before duration_s".into());
        }
        if q.max_poll_records == 0 || q.max_poll_records > 100_000 {
            return Err("qaqc.max_poll_records must be 1..=100000".into());
        }
        if q.session_timeout_ms < 10 * self.tick_ms || q.session_timeout_ms > 600_000 {
            return Err("qaqc.session_timeout_ms must be at least 10 ticks and at most 600000".into());
        }
        let a = &self.archive;
        if a.instances > ARCHIVE_INSTANCES_MAX {
            return Err(format!("archive.instances must be 0..={ARCHIVE_INSTANCES_MAX}"));
        }
        if a.instances > 0 && q.instances == 0 {
            return Err("the archive stage reads qaqc's clean topic: set qaqc.instances too".into());
        }
        if a.start_at_s.len() > a.instances as usize || a.start_at_s.iter().any(|s| *s >= self.duration_s) {
            return Err("archive.start_at_s: at most one time per instance, each before duration_s".into());
        }
        if a.max_poll_records == 0 || a.max_poll_records > 100_000 {
            return Err("archive.max_poll_records must be 1..=100000".into());
        }
        if a.session_timeout_ms < 10 * self.tick_ms || a.session_timeout_ms > 600_000 {
            return Err("archive.session_timeout_ms must be at least 10 ticks and at most 600000".into());
        }
        if a.max_rows == 0 || a.max_age_ms < self.tick_ms || a.max_open_dates == 0 {
            return Err(
                "archive.max_rows and max_open_dates must be positive, max_age_ms at least one tick".into(),
            );
        }
        for (index, fault) in self.faults.iter().enumerate() {
            let at = format!("fault #{} ({fault:?})", index + 1);
            if let Some((stage, i)) = fault.stage_instance() {
                let instances = match stage {
                    Stage::Qaqc => q.instances,
                    Stage::Archive => self.archive.instances,
                };
                if i >= instances {
                    return Err(format!(
                        "{at}: {} instance {i} does not exist ({}.instances = {instances})",
                        stage.name(),
                        stage.name()
                    ));
                }
            }
            if let Fault::ArchiveCrashAt { point, .. } = fault
                && soilstream::archive::protocol::CrashPoint::from_name(point).is_none()
            {
                let names: Vec<&str> = soilstream::archive::protocol::CrashPoint::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect();
                return Err(format!(
                    "{at}: `{point}` is not a crash point; one of {}",
                    names.join(", ")
                ));
            }
            if matches!(fault, Fault::StoreOutage { .. }) && self.archive.instances == 0 {
                return Err(format!("{at}: a store outage needs the archive stage"));
            }
            if let Fault::HostileRecords { count, .. } = fault {
                if q.instances == 0 {
                    return Err(format!("{at}: hostile records need the qaqc stage"));
                }
                if *count == 0 || *count > 10_000 {
                    return Err(format!("{at}: count must be 1..=10000"));
                }
            }
            if let Some(g) = fault.gateway()
                && g >= t.gateways
            {
                return Err(format!(
                    "{at}: gateway {g} does not exist (gateways = {})",
                    t.gateways
                ));
            }
            if fault.end_s() > self.duration_s {
                return Err(format!(
                    "{at}: ends at {} s, after duration_s = {}",
                    fault.end_s(),
                    self.duration_s
                ));
            }
            let probability = match fault {
                Fault::AckLoss { probability, .. }
                | Fault::RequestErrors { probability, .. }
                | Fault::IoErrors { probability, .. }
                | Fault::ReadCorruption { probability, .. } => Some(*probability),
                _ => None,
            };
            if let Some(p) = probability
                && !(0.0..=1.0).contains(&p)
            {
                return Err(format!("{at}: probability must be within 0..=1"));
            }
        }
        let mut backfilled = std::collections::BTreeSet::new();
        for (index, backfill) in self.backfills.iter().enumerate() {
            let at = format!("backfill #{} (gateway {})", index + 1, backfill.gateway);
            if backfill.gateway >= t.gateways {
                return Err(format!(
                    "{at}: gateway {} does not exist (gateways = {})",
                    backfill.gateway, t.gateways
                ));
            }
            if !backfilled.insert(backfill.gateway) {
                return Err(format!(
                    "{at}: one backfill per gateway (a second log would reuse the identities of the first)"
                ));
            }
            if backfill.at_s >= self.duration_s {
                return Err(format!("{at}: at_s must be before duration_s"));
            }
            if backfill.log_from_s >= backfill.log_to_s || backfill.log_to_s > backfill.at_s as i64 {
                return Err(format!(
                    "{at}: the log must cover log_from_s < log_to_s <= at_s (it was written before the backfill)"
                ));
            }
            if backfill.interval_ms(t) < 1_000 {
                return Err(format!("{at}: log_interval_ms must be at least 1000"));
            }
            let rows = backfill.rows(t);
            if rows > BACKFILL_ROWS_MAX {
                return Err(format!(
                    "{at}: the log would have {rows} rows, more than {BACKFILL_ROWS_MAX}"
                ));
            }
            if backfill.bad_rows > rows {
                return Err(format!("{at}: bad_rows exceeds the log's {rows} rows"));
            }
            if backfill.max_rate_rows_per_s == Some(0) {
                return Err(format!("{at}: max_rate_rows_per_s must be at least 1"));
            }
            if let Some(restart_s) = backfill.restart_at_s() {
                if backfill.down_s == 0 {
                    return Err(format!("{at}: down_s must be at least 1"));
                }
                if restart_s > self.duration_s {
                    return Err(format!(
                        "{at}: restarts at {restart_s} s, after duration_s = {}",
                        self.duration_s
                    ));
                }
            }
        }
        Ok(())
    }

    /// When the last fault heals, s (0 without faults).
    pub fn faults_healed_at_s(&self) -> u64 {
        self.faults.iter().map(Fault::end_s).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "t"
duration_s = 100
[topology]
gateways = 2
sensors_per_gateway = 3
[[fault]]
kind = "power_loss"
gateway = 1
at_s = 10
duration_s = 20
clock_jump_ms = -5000
"#;

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::parse(EXAMPLE, "t.toml").unwrap();
        assert_eq!(s.tick_ms, 1_000);
        assert_eq!(s.topology.partitions, 3);
        assert_eq!(s.faults_healed_at_s(), 30);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let err = Scenario::parse(&EXAMPLE.replace("gateway = 1", "gateway = 5"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.toml") && err.contains("gateway 5 does not exist"),
            "{err}"
        );
        let err = Scenario::parse(
            &EXAMPLE.replace("kind = \"power_loss\"", "kind = \"meteor\""),
            "y.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("y.toml") && err.contains("meteor"), "{err}");
    }

    const BACKFILL: &str = r#"
name = "b"
duration_s = 1000
[topology]
gateways = 2
sensors_per_gateway = 3
sample_interval_ms = 60000
[[fault]]
kind = "registry_outage"
at_s = 10
duration_s = 20
[[backfill]]
gateway = 1
at_s = 600
log_from_s = 0
log_to_s = 600
max_rate_rows_per_s = 5
bad_rows = 2
"#;

    #[test]
    fn registry_outages_and_backfills_parse() {
        let s = Scenario::parse(BACKFILL, "b.toml").unwrap();
        assert_eq!(
            s.faults[0],
            Fault::RegistryOutage {
                at_s: 10,
                duration_s: 20,
                mode: OutageMode::Partition
            }
        );
        assert_eq!(s.faults[0].gateway(), None);
        assert_eq!(s.faults_healed_at_s(), 30);
        let b = &s.backfills[0];
        assert_eq!(b.gateway_id(), "gw-1-sd");
        assert_eq!((b.rounds(&s.topology), b.rows(&s.topology)), (10, 30));
        assert_eq!(b.restart_at_s(), None);
    }

    #[test]
    fn bad_backfills_are_refused_with_the_reason() {
        let cases = [
            (
                "log_to_s = 600",
                "log_to_s = 700",
                "log_from_s < log_to_s <= at_s",
            ),
            ("gateway = 1", "gateway = 2", "gateway 2 does not exist"),
            (
                "bad_rows = 2",
                "bad_rows = 31",
                "bad_rows exceeds the log's 30 rows",
            ),
            ("max_rate_rows_per_s = 5", "max_rate_rows_per_s = 0", "at least 1"),
            (
                "at_s = 600",
                "at_s = 600\ncrash_after_s = 390",
                "restarts at 1050 s",
            ),
            ("bad_rows = 2", "bad_rows = 2\nrows = 9", "unknown field `rows`"),
        ];
        for (from, to, expected) in cases {
            let text = BACKFILL.replace(from, to);
            let err = Scenario::parse(&text, "b.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "{to}: {err}");
        }
        let twice =
            format!("{BACKFILL}\n[[backfill]]\ngateway = 1\nat_s = 700\nlog_from_s = 0\nlog_to_s = 60\n");
        let err = Scenario::parse(&twice, "b.toml").unwrap_err().to_string();
        assert!(err.contains("one backfill per gateway"), "{err}");
    }
}
