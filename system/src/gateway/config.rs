//! Gateway configuration: one TOML file, every section optional, defaults
//! embedded (`examples/gateway.toml` documents each key).

use crate::source::SimulatorConfig;
use crate::spool::SpoolConfig;
use crate::transport::kafka::KafkaClientConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default configuration file, embedded in the binary.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../examples/gateway.toml");

/// The whole gateway configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFileConfig {
    /// Identity of the gateway.
    pub gateway: GatewaySection,
    /// How and how often probes are sampled.
    #[serde(default)]
    pub sampler: SamplerConfig,
    /// Where measurements come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// The durable spool.
    #[serde(default = "default_spool")]
    pub spool: SpoolConfig,
    /// Draining the spool to the broker.
    #[serde(default)]
    pub forwarder: ForwarderConfig,
    /// The Kafka client (bootstrap servers and librdkafka pass-through properties).
    #[serde(default = "default_kafka")]
    pub kafka: KafkaClientConfig,
    /// The schema registry.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[gateway]`: identity and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Gateway identifier; part of every reading's identity.
    pub id: String,
    /// Interval between metric summary log lines, ms (0 disables them).
    #[serde(default = "default_log_interval_ms")]
    pub log_interval_ms: u64,
}

fn default_spool() -> SpoolConfig {
    toml::from_str("dir = \"soilstream-spool\"").expect("the default spool section parses")
}

fn default_kafka() -> KafkaClientConfig {
    KafkaClientConfig::new("127.0.0.1:9092")
}

fn default_log_interval_ms() -> u64 {
    60_000
}

/// When appended readings are made durable (group commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// fsync after every sampling round: each reading is acknowledged within
    /// one round.
    EveryBatch,
    /// fsync at most every this many ms: fewer fsyncs, readings wait up to
    /// this long to become durable (and are lost at a power cut until then).
    IntervalMs(u64),
}

/// `[sampler]`: sampling cadence and durability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Time between two sampling rounds, ms.
    pub interval_ms: u64,
    /// When appended readings are fsynced and acknowledged.
    pub sync: SyncPolicy,
    /// Where readings that fail validation against the schema are logged
    /// (JSON lines, with the reason).
    pub reject_log: PathBuf,
    /// The reject log is rotated once (to `.1`) past this size, bytes.
    pub reject_log_max_bytes: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            interval_ms: 60_000,
            sync: SyncPolicy::EveryBatch,
            reject_log: PathBuf::from("soilstream-rejects.jsonl"),
            reject_log_max_bytes: super::reject_log::REJECT_LOG_MAX_BYTES_DEFAULT,
        }
    }
}

/// `[source]`: where measurements come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// The deterministic probe simulator. An empty `sensor_prefix` becomes
    /// `{gateway id}-probe` so probe ids are unique across gateways.
    Simulator(SimulatorConfig),
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig::Simulator(SimulatorConfig {
            sensor_prefix: String::new(),
            ..SimulatorConfig::default()
        })
    }
}

/// `[forwarder]`: draining the spool to the raw topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwarderConfig {
    /// Topic readings are produced to.
    pub topic: String,
    /// Most records enqueued and not yet acknowledged at once (bounds memory).
    pub max_in_flight_records: usize,
    /// Most records read from the spool at once.
    pub read_batch_records: usize,
    /// How often the delivery cursor is persisted, ms.
    pub cursor_persist_interval_ms: u64,
    /// First backoff after a failure, ms (doubles up to the maximum).
    pub retry_backoff_initial_ms: u64,
    /// Longest backoff, ms.
    pub retry_backoff_max_ms: u64,
    /// On shutdown sampling stops at once; the forwarder keeps draining the
    /// spool for at most this long, ms. What is left stays spooled.
    pub shutdown_grace_ms: u64,
    /// Test-only: advance the delivery cursor when a record is enqueued rather
    /// than when its delivery report arrives. A planted bug the simulator's
    /// checker must catch; never set it in production.
    #[serde(default)]
    pub planted_advance_cursor_before_delivery: bool,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            topic: "soil-moisture-raw".into(),
            max_in_flight_records: 5_000,
            read_batch_records: 500,
            cursor_persist_interval_ms: 1_000,
            retry_backoff_initial_ms: 500,
            retry_backoff_max_ms: 30_000,
            shutdown_grace_ms: 5_000,
            planted_advance_cursor_before_delivery: false,
        }
    }
}

/// `[registry]`: where schema ids come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-compatible schema registry. Without one, the
    /// gateway uses an in-process registry (schema id 1), fine for a single
    /// gateway and consumers that decode with the shipped schema.
    pub url: Option<String>,
}

impl RegistryConfig {
    /// A copy fit for printing: credentials in the URL redacted.
    pub fn redacted(&self) -> Self {
        Self {
            url: self.url.as_deref().map(crate::redact::redact_url),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `/metrics` endpoint; empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

/// A configuration problem, with the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/mistyped keys.
    #[error("config {origin}: {message}")]
    Parse {
        /// File path or "embedded defaults".
        origin: String,
        /// What serde/toml reported (includes line and column).
        message: String,
    },
    /// A value is out of range.
    #[error("config {origin}: `{key}` {reason}")]
    Invalid {
        /// File path or "embedded defaults".
        origin: String,
        /// The offending key.
        key: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl GatewayFileConfig {
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
        Self::parse(DEFAULT_CONFIG_TOML, "embedded defaults").expect("embedded defaults are valid")
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
        let mut config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.fill_derived_defaults();
        config.validate(origin)?;
        Ok(config)
    }

    /// Fills defaults that depend on other keys (probe id prefix).
    pub fn fill_derived_defaults(&mut self) {
        let SourceConfig::Simulator(sim) = &mut self.source;
        if sim.sensor_prefix.is_empty() {
            sim.sensor_prefix = format!("{}-probe", self.gateway.id);
        }
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            reason: reason.to_owned(),
        };
        if let Err(e) = crate::model::check_id("gateway.id", &self.gateway.id) {
            return Err(invalid("gateway.id", e.reason));
        }
        if self.sampler.interval_ms == 0 {
            return Err(invalid("sampler.interval_ms", "must be at least 1"));
        }
        if self.sampler.reject_log.as_os_str().is_empty() || self.sampler.reject_log_max_bytes < 4096 {
            return Err(invalid(
                "sampler.reject_log",
                "must name a file, and reject_log_max_bytes must be at least 4096",
            ));
        }
        if let SyncPolicy::IntervalMs(0) = self.sampler.sync {
            return Err(invalid(
                "sampler.sync.interval_ms",
                "must be at least 1 (or use \"every_batch\")",
            ));
        }
        let SourceConfig::Simulator(sim) = &self.source;
        if sim.sensors == 0 || sim.sensors > 10_000 {
            return Err(invalid("source.sensors", "must be between 1 and 10000"));
        }
        if self.forwarder.topic.is_empty() {
            return Err(invalid("forwarder.topic", "must not be empty"));
        }
        if self.forwarder.max_in_flight_records == 0 || self.forwarder.read_batch_records == 0 {
            return Err(invalid(
                "forwarder.max_in_flight_records",
                "and read_batch_records must be at least 1",
            ));
        }
        if self.forwarder.retry_backoff_initial_ms == 0
            || self.forwarder.retry_backoff_initial_ms > self.forwarder.retry_backoff_max_ms
        {
            return Err(invalid(
                "forwarder.retry_backoff_initial_ms",
                "must be at least 1 and at most retry_backoff_max_ms",
            ));
        }
        if self.kafka.bootstrap_servers.is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_derive_the_probe_prefix() {
        let c = GatewayFileConfig::embedded_defaults();
        let SourceConfig::Simulator(sim) = &c.source;
        assert_eq!(sim.sensor_prefix, format!("{}-probe", c.gateway.id));
        assert_eq!(c.forwarder.topic, "soil-moisture-raw");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let err = GatewayFileConfig::parse("[gateway]\nid = \"g\"\n[spool]\nmax_bites = 3\n", "test.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("max_bites"), "{err}");
    }

    #[test]
    fn sync_policy_forms() {
        let c = GatewayFileConfig::parse(
            "[gateway]\nid = \"g\"\n[sampler]\nsync = { interval_ms = 250 }\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.sampler.sync, SyncPolicy::IntervalMs(250));
        let err = GatewayFileConfig::parse("[gateway]\nid = \"g\"\n[sampler]\ninterval_ms = 0\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sampler.interval_ms"), "{err}");
    }
}
