//! Archive configuration: one TOML file, every section optional, defaults
//! embedded (`examples/archive.toml` documents each key); the same shape and
//! conventions as the gateway's and qaqc's.

use super::batch::RotationLimits;
use crate::gateway::config::{ConfigError, MetricsConfig, RegistryConfig};
use crate::transport::kafka::{KafkaClientConfig, validate_topic_name};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The default configuration file, embedded in the binary.
pub const DEFAULT_ARCHIVE_CONFIG_TOML: &str = include_str!("../../../examples/archive.toml");

pub use crate::redact::REDACTED;

/// The whole archive configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveFileConfig {
    /// Instance, group, topic, fields, pacing.
    #[serde(default)]
    pub archive: ArchiveSection,
    /// When batches are cut.
    #[serde(default)]
    pub rotation: RotationSection,
    /// Where files go.
    #[serde(default)]
    pub store: StoreConfig,
    /// Consumer-group membership timing (the real world's group consumer).
    #[serde(default)]
    pub group: crate::transport::kafka_group::KafkaGroupConfig,
    /// The Kafka client.
    #[serde(default = "default_kafka")]
    pub kafka: KafkaClientConfig,
    /// The schema registry (writer schemas by id).
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
        listen: "127.0.0.1:9897".into(),
    }
}

/// `[archive]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// Name of this instance in logs, metrics and manifests.
    pub instance_id: String,
    /// Consumer group shared by every archive instance.
    pub group_id: String,
    /// The topic archived.
    pub topic: String,
    /// The field holding the event time (the date directory).
    pub event_time_field: String,
    /// The fields that identify a reading (checked unique by `verify`).
    pub identity_fields: Vec<String>,
    /// Longest wait of one poll, ms.
    pub poll_wait_ms: u64,
    /// First retry delay after a store or registry failure, ms.
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
    /// Interval between summary log lines, ms (0: none).
    pub log_interval_ms: u64,
}

impl Default for ArchiveSection {
    fn default() -> Self {
        Self {
            instance_id: "archive-local".into(),
            group_id: "soilstream-archive".into(),
            topic: "soil-moisture-clean".into(),
            event_time_field: "event_time".into(),
            identity_fields: vec!["gateway_id".into(), "sensor_id".into(), "seq".into()],
            poll_wait_ms: 200,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
            log_interval_ms: 60_000,
        }
    }
}

/// `[rotation]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationSection {
    /// Rows per batch.
    pub max_rows: u64,
    /// Approximate bytes a batch holds in memory.
    pub max_bytes: u64,
    /// A batch is cut this long after its first record, ms.
    pub max_age_ms: u64,
    /// Distinct event dates one batch may hold.
    pub max_open_dates: usize,
    /// Files with fewer rows are counted as small.
    pub small_file_rows: u64,
}

impl Default for RotationSection {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            max_bytes: 64 << 20,
            max_age_ms: 60_000,
            max_open_dates: 8,
            small_file_rows: 1_000,
        }
    }
}

impl RotationSection {
    /// The limits.
    pub fn limits(&self) -> RotationLimits {
        RotationLimits {
            max_rows: self.max_rows,
            max_bytes: self.max_bytes,
            max_age_ms: self.max_age_ms,
            max_open_dates: self.max_open_dates,
            small_file_rows: self.small_file_rows,
        }
    }
}

/// `[store]`: a local directory (`file://DIR`, relative paths from the
/// working directory) or an S3 bucket (`s3://BUCKET[/PREFIX]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file://DIR` or `s3://BUCKET[/PREFIX]`.
    pub url: String,
    /// S3 endpoint (any S3-compatible service), e.g. `http://127.0.0.1:9000`;
    /// unset: AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// S3 region; unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// S3 access key id; unset: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// S3 secret access key (never printed or logged); unset:
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (test servers on loopback).
    pub allow_http: bool,
    /// Request timeout, ms.
    pub request_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "file://soilstream-archive".into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            request_timeout_ms: 30_000,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| REDACTED),
            )
            .field("allow_http", &self.allow_http)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

impl StoreConfig {
    /// A copy fit for printing: the secret replaced by `<redacted>`.
    pub fn redacted(&self) -> StoreConfig {
        StoreConfig {
            secret_access_key: self.secret_access_key.as_ref().map(|_| REDACTED.to_string()),
            ..self.clone()
        }
    }

    /// Checks the URL's scheme.
    pub fn validate(&self) -> Result<(), String> {
        match self.url.split_once("://") {
            Some(("file", dir)) if !dir.is_empty() => Ok(()),
            Some(("s3", bucket)) if !bucket.is_empty() && !bucket.starts_with('/') => Ok(()),
            _ => Err(format!(
                "`{}` is not `file://DIR` or `s3://BUCKET[/PREFIX]`",
                self.url
            )),
        }
    }
}

/// Bugs planted on purpose so the harness can prove it catches them. Never
/// set outside tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedArchiveBugs {
    /// Commit the group offset before the batch's marker and resume from
    /// the group offset (the Connect sink's classic duplicate/loss window).
    pub commit_offsets_before_marker: bool,
    /// Name the date directory after the archive's clock, not the event time.
    pub wall_clock_file_names: bool,
    /// Recovery keeps the files of uncommitted batches.
    pub recovery_keeps_uncommitted: bool,
}

/// What an archive instance is configured with (the world-independent part).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveSettings {
    /// `[archive]`.
    pub archive: ArchiveSection,
    /// `[rotation]`.
    pub rotation: RotationLimits,
    /// Test-only bugs.
    pub planted: PlantedArchiveBugs,
}

impl ArchiveSettings {
    /// Settings with every default.
    pub fn defaults() -> Self {
        ArchiveFileConfig::embedded_defaults().settings()
    }

    /// Checks ranges and names.
    pub fn validate(&self) -> Result<(), String> {
        let a = &self.archive;
        crate::model::check_id("archive.instance_id", &a.instance_id)
            .map_err(|e| format!("archive.instance_id {}", e.reason))?;
        crate::model::check_id("archive.group_id", &a.group_id)
            .map_err(|e| format!("archive.group_id {}", e.reason))?;
        validate_topic_name(&a.topic).map_err(|e| format!("archive.topic: {e}"))?;
        if a.topic.starts_with('_') {
            return Err("archive.topic must not start with `_` (the manifests' directory)".into());
        }
        if a.event_time_field.is_empty() {
            return Err("archive.event_time_field must name a field".into());
        }
        if a.poll_wait_ms == 0 || a.retry_initial_ms == 0 || a.retry_initial_ms > a.retry_max_ms {
            return Err("archive.poll_wait_ms and retry_initial_ms must be positive, retry_initial_ms <= retry_max_ms".into());
        }
        self.rotation.validate().map_err(|e| format!("rotation: {e}"))
    }
}

impl ArchiveFileConfig {
    /// The embedded defaults.
    pub fn embedded_defaults() -> Self {
        Self::parse(DEFAULT_ARCHIVE_CONFIG_TOML, "embedded defaults")
            .expect("embedded archive defaults are valid")
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
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            reason,
        };
        self.settings()
            .validate()
            .map_err(|reason| invalid("archive", reason))?;
        self.store
            .validate()
            .map_err(|reason| invalid("store.url", reason))?;
        self.group
            .validate()
            .map_err(|e| invalid("group", e.to_string()))?;
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "must not be empty".into()));
        }
        Ok(())
    }

    /// The world-independent settings.
    pub fn settings(&self) -> ArchiveSettings {
        ArchiveSettings {
            archive: self.archive.clone(),
            rotation: self.rotation.limits(),
            planted: PlantedArchiveBugs::default(),
        }
    }

    /// The configuration as TOML with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut printable = self.clone();
        printable.store = self.store.redacted();
        printable.kafka = self.kafka.redacted();
        printable.registry = self.registry.redacted();
        crate::redact::printable_toml(&printable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_match_the_code_defaults() {
        let c = ArchiveFileConfig::embedded_defaults();
        assert_eq!(c.archive, ArchiveSection::default());
        assert_eq!(c.rotation, RotationSection::default());
        assert_eq!(c.store, StoreConfig::default());
        assert_eq!(c.metrics.listen, "127.0.0.1:9897");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = ArchiveFileConfig::parse("[rotation]\nmax_rowz = 3\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.toml") && err.contains("max_rowz"), "{err}");
        let err = ArchiveFileConfig::parse("[store]\nurl = \"ftp://x\"\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.url"), "{err}");
        let err = ArchiveFileConfig::parse("[rotation]\nmax_open_dates = 0\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rotation"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let c = ArchiveFileConfig::parse(
            "[store]\nurl = \"s3://b\"\nsecret_access_key = \"hunter2-s3\"\n[kafka]\nbootstrap_servers = \"x:1\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2-kafka\"\n",
            "a.toml",
        )
        .unwrap();
        let printed = format!("{}{:?}{:?}", c.to_redacted_toml(), c.store, c.store.redacted());
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains(REDACTED));
    }
}
