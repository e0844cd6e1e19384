//! qaqc configuration: one TOML file, every section optional, defaults
//! embedded (`examples/qaqc.toml` documents each key). The same conventions
//! as the gateway's: file < environment < flags, unknown keys are errors
//! naming the file and line.

use super::alerts::AlertConfig;
use super::checks::CheckConfig;
use super::flags::FlagConfig;
use crate::gateway::config::{ConfigError, MetricsConfig, RegistryConfig};
use crate::transport::kafka::{KafkaClientConfig, validate_topic_name};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default configuration file, embedded in the binary.
pub const DEFAULT_QAQC_CONFIG_TOML: &str = include_str!("../../../examples/qaqc.toml");

/// The whole qaqc configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaqcFileConfig {
    /// Instance, group, state directory, pacing.
    #[serde(default)]
    pub qaqc: QaqcSection,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicNames,
    /// Event-time windows.
    #[serde(default)]
    pub windows: WindowConfig,
    /// Explicit bounds on state.
    #[serde(default)]
    pub limits: StateLimits,
    /// Hard checks (quarantine).
    #[serde(default)]
    pub checks: CheckConfig,
    /// Soft flags.
    #[serde(default)]
    pub flags: FlagConfig,
    /// Alert rules.
    #[serde(default)]
    pub alerts: AlertConfig,
    /// Consumer-group membership timing (the real world's group consumer).
    #[serde(default)]
    pub group: crate::transport::kafka_group::KafkaGroupConfig,
    /// The Kafka client.
    #[serde(default = "default_kafka")]
    pub kafka: KafkaClientConfig,
    /// The schema registry.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// The metrics endpoint.
    #[serde(default = "default_metrics")]
    pub metrics: MetricsConfig,
}

fn default_kafka() -> KafkaClientConfig {
    KafkaClientConfig::new("127.0.0.1:9092")
}

fn default_metrics() -> MetricsConfig {
    MetricsConfig {
        listen: "127.0.0.1:9899".into(),
    }
}

/// `[qaqc]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QaqcSection {
    /// Name of this instance in logs and metrics.
    pub instance_id: String,
    /// Consumer group shared by every qaqc instance.
    pub group_id: String,
    /// Where local checkpoints live (one file per owned partition).
    pub state_dir: PathBuf,
    /// Interval between metric summary log lines, ms (0: none).
    pub log_interval_ms: u64,
    /// Input offsets are committed at most this often, ms.
    pub commit_interval_ms: u64,
    /// A local checkpoint is written at most this often per partition, ms
    /// (0: never; state is then always rebuilt from the output topics).
    pub checkpoint_interval_ms: u64,
    /// Timers (idle windows, silent sensors) run this often, ms.
    pub timer_interval_ms: u64,
    /// Longest wait of one poll, ms.
    pub poll_wait_ms: u64,
    /// Outputs enqueued and not yet acknowledged before input is paused.
    pub max_in_flight_outputs: usize,
    /// How long a revocation waits for in-flight outputs before the
    /// partitions are released anyway (their state is dropped), ms.
    pub revoke_wait_max_ms: u64,
    /// Reading an output partition back gives up after no progress for this long, ms.
    pub rebuild_stall_timeout_ms: u64,
}

impl Default for QaqcSection {
    fn default() -> Self {
        Self {
            instance_id: "qaqc-local".into(),
            group_id: "soilstream-qaqc".into(),
            state_dir: PathBuf::from("soilstream-qaqc-state"),
            log_interval_ms: 60_000,
            commit_interval_ms: 1_000,
            checkpoint_interval_ms: 60_000,
            timer_interval_ms: 1_000,
            poll_wait_ms: 200,
            max_in_flight_outputs: 5_000,
            revoke_wait_max_ms: 10_000,
            rebuild_stall_timeout_ms: 120_000,
        }
    }
}

/// `[topics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    /// Input: raw readings.
    pub raw: String,
    /// Clean readings.
    pub clean: String,
    /// Quarantined records.
    pub quarantine: String,
    /// Window aggregates.
    pub aggregates: String,
    /// Alerts.
    pub alerts: String,
    /// Flag revisions.
    pub flags: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            raw: "soil-moisture-raw".into(),
            clean: "soil-moisture-clean".into(),
            quarantine: "soil-moisture-quarantine".into(),
            aggregates: "soil-moisture-aggregates".into(),
            alerts: "soil-alerts".into(),
            flags: "soil-moisture-flags".into(),
        }
    }
}

impl TopicNames {
    /// The output topics.
    pub fn outputs(&self) -> [&str; 5] {
        [
            &self.clean,
            &self.quarantine,
            &self.aggregates,
            &self.alerts,
            &self.flags,
        ]
    }
}

/// `[windows]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Tumbling window size, ms.
    pub size_ms: i64,
    /// A sensor with no reading for this long (processor clock) gets its
    /// open windows emitted, ms.
    pub idle_close_ms: i64,
    /// Readings older than the sensor's high-water minus this are refused
    /// (`too_late`); state older than that is dropped, ms.
    pub state_horizon_ms: i64,
    /// A window ending more than this before the sensor's high-water when it
    /// is emitted is historical, ms.
    pub historical_after_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size_ms: 300_000,
            idle_close_ms: 600_000,
            state_horizon_ms: 3 * 86_400_000,
            historical_after_ms: 3_600_000,
        }
    }
}

/// `[limits]`: explicit bounds on state; each is counted when hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateLimits {
    /// Sensors with state per partition; beyond, the least recently active
    /// sensor's series and windows are dropped (its dedup high-water stays).
    pub max_sensors_per_partition: usize,
    /// Identities whose dedup high-water is kept per partition.
    pub max_dedup_entries_per_partition: usize,
    /// Readings kept per sensor (oldest dropped first).
    pub max_points_per_sensor: usize,
    /// Windows kept per sensor (oldest dropped first).
    pub max_windows_per_sensor: usize,
    /// Quarantined identities remembered per partition (to tell a repeat of
    /// a quarantined reading from a conflicting one).
    pub max_quarantined_identities_per_partition: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_sensors_per_partition: 20_000,
            max_dedup_entries_per_partition: 1_000_000,
            max_points_per_sensor: 50_000,
            max_windows_per_sensor: 10_000,
            max_quarantined_identities_per_partition: 65_536,
        }
    }
}

/// Bugs planted on purpose so the harness can prove it catches them. Never
/// set outside tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedQaqcBugs {
    /// Commit input offsets as soon as a record is processed, before its
    /// outputs are acknowledged.
    pub commit_before_ack: bool,
    /// Do not rebuild the dedup high-waters from the outputs on assignment.
    pub skip_dedup_rebuild: bool,
    /// Close windows by the processor's clock and never revise them.
    pub windows_on_arrival_time: bool,
    /// Drop readings more than an hour behind the partition's newest event
    /// time (per-partition stream time, as mainstream engines do).
    pub drop_late_readings: bool,
}

/// What a qaqc instance is configured with (the world-independent part).
#[derive(Debug, Clone, PartialEq)]
pub struct QaqcSettings {
    /// `[qaqc]`.
    pub qaqc: QaqcSection,
    /// `[topics]`.
    pub topics: TopicNames,
    /// `[windows]`.
    pub windows: WindowConfig,
    /// `[limits]`.
    pub limits: StateLimits,
    /// `[checks]`.
    pub checks: CheckConfig,
    /// `[flags]`.
    pub flags: FlagConfig,
    /// `[alerts]`.
    pub alerts: AlertConfig,
    /// Test-only bugs.
    pub planted: PlantedQaqcBugs,
}

impl QaqcSettings {
    /// Settings with every default.
    pub fn defaults() -> Self {
        QaqcFileConfig::embedded_defaults().settings()
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), String> {
        let q = &self.qaqc;
        crate::model::check_id("qaqc.instance_id", &q.instance_id)
            .map_err(|e| format!("qaqc.instance_id {}", e.reason))?;
        crate::model::check_id("qaqc.group_id", &q.group_id)
            .map_err(|e| format!("qaqc.group_id {}", e.reason))?;
        for (key, value) in [
            ("commit_interval_ms", q.commit_interval_ms),
            ("timer_interval_ms", q.timer_interval_ms),
            ("poll_wait_ms", q.poll_wait_ms),
            ("revoke_wait_max_ms", q.revoke_wait_max_ms),
            ("rebuild_stall_timeout_ms", q.rebuild_stall_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("qaqc.{key} must be at least 1"));
            }
        }
        if !(1..=10_000_000).contains(&q.max_in_flight_outputs) {
            return Err("qaqc.max_in_flight_outputs must be 1..=10000000".into());
        }
        let mut names: Vec<&str> = self.topics.outputs().to_vec();
        names.push(&self.topics.raw);
        for name in &names {
            validate_topic_name(name).map_err(|e| format!("topics: {e}"))?;
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != names.len() {
            return Err("topics: every topic needs its own name".into());
        }
        let w = &self.windows;
        if w.size_ms < 1_000 || w.size_ms > 86_400_000 {
            return Err("windows.size_ms must be 1 s to 1 day".into());
        }
        if w.idle_close_ms <= 0 || w.historical_after_ms < 0 {
            return Err("windows.idle_close_ms must be positive and historical_after_ms not negative".into());
        }
        if w.state_horizon_ms < w.size_ms || w.state_horizon_ms > 90 * 86_400_000 {
            return Err("windows.state_horizon_ms must be one window to 90 days".into());
        }
        let l = &self.limits;
        for (key, value) in [
            ("max_sensors_per_partition", l.max_sensors_per_partition),
            (
                "max_dedup_entries_per_partition",
                l.max_dedup_entries_per_partition,
            ),
            ("max_points_per_sensor", l.max_points_per_sensor),
            ("max_windows_per_sensor", l.max_windows_per_sensor),
            (
                "max_quarantined_identities_per_partition",
                l.max_quarantined_identities_per_partition,
            ),
        ] {
            if value == 0 {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        if l.max_points_per_sensor < 4 * self.flags.radius_points() {
            return Err(format!(
                "limits.max_points_per_sensor must be at least {} (four times the flag rules' reach)",
                4 * self.flags.radius_points()
            ));
        }
        self.checks.validate()?;
        self.flags.validate()?;
        self.alerts.validate()?;
        Ok(())
    }
}

impl QaqcFileConfig {
    /// The configuration as TOML with every secret redacted (librdkafka
    /// credentials, user information in URLs): what `--print-config` shows.
    pub fn to_redacted_toml(&self) -> String {
        let mut printable = self.clone();
        printable.kafka = self.kafka.redacted();
        printable.registry = self.registry.redacted();
        crate::redact::printable_toml(&printable)
    }

    /// The embedded defaults.
    pub fn embedded_defaults() -> Self {
        Self::parse(DEFAULT_QAQC_CONFIG_TOML, "embedded defaults").expect("embedded qaqc defaults are valid")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.settings()
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                origin: origin.to_owned(),
                key: "qaqc",
                reason,
            })?;
        self.group.validate().map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: "group",
            reason: e.to_string(),
        })?;
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key: "kafka.bootstrap_servers",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The world-independent settings.
    pub fn settings(&self) -> QaqcSettings {
        QaqcSettings {
            qaqc: self.qaqc.clone(),
            topics: self.topics.clone(),
            windows: self.windows.clone(),
            limits: self.limits.clone(),
            checks: self.checks.clone(),
            flags: self.flags.clone(),
            alerts: self.alerts.clone(),
            planted: PlantedQaqcBugs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_match_the_code_defaults() {
        let c = QaqcFileConfig::embedded_defaults();
        assert_eq!(c.qaqc, QaqcSection::default());
        assert_eq!(c.topics, TopicNames::default());
        assert_eq!(c.windows, WindowConfig::default());
        assert_eq!(c.limits, StateLimits::default());
        assert_eq!(c.checks, CheckConfig::default());
        assert_eq!(c.flags, FlagConfig::default());
        assert_eq!(c.alerts, AlertConfig::default());
        assert_eq!(c.metrics.listen, "127.0.0.1:9899");
        assert_eq!(
            c.group,
            crate::transport::kafka_group::KafkaGroupConfig::default()
        );
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = QaqcFileConfig::parse("[windows]\nsize_msec = 3\n", "q.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("q.toml") && err.contains("size_msec"), "{err}");
        let err = QaqcFileConfig::parse("[windows]\nsize_ms = 10\n", "q.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("windows.size_ms"), "{err}");
        let err = QaqcFileConfig::parse("[topics]\nclean = \"soil-moisture-raw\"\n", "q.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("its own name"), "{err}");
    }
}
