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
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Upper bound on simulated duration, s (30 days).
pub const DURATION_MAX_S: u64 = 30 * 86_400;
/// Upper bound on gateways in one world.
pub const GATEWAYS_MAX: u32 = 64;
/// Upper bound on sensors per gateway.
pub const SENSORS_PER_GATEWAY_MAX: u32 = 1_000;

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
        }
    }
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
            Fault::BrokerCrash { .. } | Fault::AckLoss { .. } | Fault::RequestErrors { .. } => None,
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
            | Fault::ClockJump { at_s, .. } => *at_s,
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
            | Fault::ReadCorruption { at_s, duration_s, .. } => at_s + duration_s,
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
            Fault::BitFlips { at_s, .. } | Fault::ClockJump { at_s, .. } => *at_s,
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

impl Scenario {
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
        for (index, fault) in self.faults.iter().enumerate() {
            let at = format!("fault #{} ({fault:?})", index + 1);
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
}
