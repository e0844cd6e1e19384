//! Backfill: ingest an SD-card log (CSV) into the raw topic with each
//! record's original event time.
//!
//! A field gateway that was offline keeps logging to its SD card; the
//! operator copies the log off and runs `soilstream backfill`. Each good row
//! becomes one record exactly like the gateway's own (key = sensor id, value
//! = Confluent wire format of the Avro v1 body, record timestamp = event
//! time, headers [`HEADER_GATEWAY_ID`] and [`HEADER_SEQ`]), so downstream
//! treats it the same.
//!
//! - **Identity.** The gateway id comes from the options; `seq` is the row's
//!   physical line number in the file: strictly increasing per sensor in file
//!   order and the same on every run of the same file, so a repeated run
//!   produces the same identities and downstream dedup removes the repeats.
//!   Use a gateway id of its own for a backfill (for example `gw-07-sd`): the
//!   live gateway numbers its readings from its own sequence, and two sources
//!   under one gateway id could give one identity two different readings.
//! - **Bad rows** give `file:line: column: reason`. By default they are
//!   skipped and written to a rejects file ([`files::REJECTS_HEADER`]); in
//!   strict mode the run stops at the first one.
//! - **Resumable.** A checkpoint ([`checkpoint`]) records the file's content
//!   fingerprint and the contiguous prefix of settled lines; a killed run
//!   resumes after it.
//! - **Paced and bounded.** A token bucket ([`rate`]) caps rows per second on
//!   tokio time; at most `max_in_flight_rows` rows are unacknowledged at
//!   once; the file is streamed line by line with a bounded line length
//!   ([`lines::MAX_LINE_BYTES`]), so memory does not grow with the file.
//! - **Warnings** for event times older than the topic's retention or in the
//!   future, logged and counted in the [`BackfillSummary`].
//!
//! The entry point is [`run_backfill`]. It reaches the broker, the schema
//! registry and the wall clock only through the seams ([`LogProducer`],
//! [`SchemaRegistry`], [`Clock`]); files go through [`files::BackfillFiles`]
//! on the [`Disk`] seam, so the simulator runs the same backfill on its
//! simulated disk (power cuts included) as the CLI runs on `std::fs`.
//!
//! [`LogProducer`]: crate::transport::LogProducer
//! [`SchemaRegistry`]: crate::registry::SchemaRegistry
//! [`Clock`]: crate::clock::Clock
//! [`Disk`]: crate::disk::Disk

pub mod checkpoint;
pub mod files;
pub mod format;
pub mod lines;
pub mod profile;
pub mod progress;
pub mod rate;
pub mod row;
mod run;
pub mod summary;

#[cfg(test)]
mod tests;

pub use progress::{BackfillProgress, LogProgress, NoProgress, ProgressSnapshot};
pub use row::RowError;
pub use run::run_backfill;
pub use summary::{BackfillSummary, WarningCounts};

use crate::registry::RegistryError;
use crate::transport::ProduceError;
use std::path::PathBuf;

/// Record header carrying the gateway id (UTF-8), as the gateway writes it.
pub const HEADER_GATEWAY_ID: &str = "gateway_id";

/// Record header carrying `seq` in decimal ASCII, as the gateway writes it.
pub const HEADER_SEQ: &str = "seq";

/// The raw readings topic.
pub const DEFAULT_TOPIC: &str = "soil-moisture-raw";

/// Default bound on unacknowledged rows.
pub const DEFAULT_MAX_IN_FLIGHT_ROWS: usize = 1_000;

/// Largest accepted bound on unacknowledged rows.
pub const MAX_IN_FLIGHT_ROWS_LIMIT: usize = 100_000;

/// Default number of newly acknowledged rows between checkpoint writes.
pub const DEFAULT_CHECKPOINT_EVERY_ROWS: u64 = 1_000;

/// Default tolerance for event times ahead of the wall clock, in ms
/// (gateway clocks drift; a few minutes ahead is not suspicious).
pub const DEFAULT_FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Default number of delivery attempts per row before the run fails.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 10;

/// Default time the run waits for an unavailable schema registry before it
/// fails, in ms (a registry restart or a short outage passes unnoticed).
pub const DEFAULT_REGISTRY_WAIT_MS: u64 = 10 * 60 * 1000;

/// Longest accepted topic name (Kafka's limit).
const TOPIC_MAX_CHARS: usize = 249;

/// What to backfill and how.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillOptions {
    /// The SD-card log (CSV with a header row).
    pub csv_path: PathBuf,
    /// Gateway id of the produced records.
    pub gateway_id: String,
    /// Topic to produce to.
    pub topic: String,
    /// Depth for rows without one, in cm; rows without a depth are rejected
    /// when this is `None`.
    pub default_depth_cm: Option<i32>,
    /// Stop at the first bad row instead of skipping it.
    pub strict: bool,
    /// Rejects file; `None` means `<csv>.rejects.csv`.
    pub rejects_path: Option<PathBuf>,
    /// Checkpoint file; `None` means `<csv>.checkpoint`.
    pub checkpoint_path: Option<PathBuf>,
    /// Ignore an existing checkpoint and start from the first row.
    pub restart: bool,
    /// Cap on rows sent per second (`None`: as fast as the producer takes them).
    pub max_rate_rows_per_s: Option<u32>,
    /// Bound on rows sent and not yet acknowledged.
    pub max_in_flight_rows: usize,
    /// Write the checkpoint after this many newly acknowledged rows.
    pub checkpoint_every_rows: u64,
    /// The topic's retention, in ms, if known: older event times are warned about.
    pub retention_ms: Option<i64>,
    /// Event times later than now plus this, in ms, are warned about.
    pub future_tolerance_ms: i64,
    /// Delivery attempts per row before the run fails.
    pub max_delivery_attempts: u32,
    /// How long to keep retrying an unavailable schema registry at start
    /// before the run fails, in ms.
    pub registry_wait_ms: u64,
    /// The log's format (`None`: the profile's, else detected from the file).
    pub format: Option<format::LogFormat>,
    /// The mapping profile (`None`: the defaults: detected columns, m3/m3,
    /// °C, dS/m, the default missing markers).
    pub profile: Option<profile::Profile>,
    /// The UTC offset of naive timestamps (over the profile's).
    pub utc_offset: Option<profile::UtcOffset>,
    /// Bugs planted on purpose for the simulator's checker to catch; all
    /// off outside the harness.
    pub planted: PlantedBackfillBugs,
}

/// Backfill bugs the harness plants to prove its checker catches them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBackfillBugs {
    /// Send a missing temperature as 0 °C (invent a value).
    pub missing_temperature_as_zero: bool,
}

impl BackfillOptions {
    /// Options with the defaults for everything but the file and gateway id.
    pub fn new(csv_path: impl Into<PathBuf>, gateway_id: impl Into<String>) -> Self {
        Self {
            csv_path: csv_path.into(),
            gateway_id: gateway_id.into(),
            topic: DEFAULT_TOPIC.to_owned(),
            default_depth_cm: None,
            strict: false,
            rejects_path: None,
            checkpoint_path: None,
            restart: false,
            max_rate_rows_per_s: None,
            max_in_flight_rows: DEFAULT_MAX_IN_FLIGHT_ROWS,
            checkpoint_every_rows: DEFAULT_CHECKPOINT_EVERY_ROWS,
            retention_ms: None,
            future_tolerance_ms: DEFAULT_FUTURE_TOLERANCE_MS,
            max_delivery_attempts: DEFAULT_MAX_DELIVERY_ATTEMPTS,
            registry_wait_ms: DEFAULT_REGISTRY_WAIT_MS,
            format: None,
            profile: None,
            utc_offset: None,
            planted: PlantedBackfillBugs::default(),
        }
    }

    fn path_with_suffix(&self, suffix: &str) -> PathBuf {
        let mut name = self.csv_path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// The rejects file: the explicit one or `<csv>.rejects.csv`.
    pub fn effective_rejects_path(&self) -> PathBuf {
        self.rejects_path
            .clone()
            .unwrap_or_else(|| self.path_with_suffix(".rejects.csv"))
    }

    /// The checkpoint file: the explicit one or `<csv>.checkpoint`.
    pub fn effective_checkpoint_path(&self) -> PathBuf {
        self.checkpoint_path
            .clone()
            .unwrap_or_else(|| self.path_with_suffix(".checkpoint"))
    }

    /// A digest of how cells are decoded (format, profile, UTC offset), for
    /// the checkpoint; `None` with none of them given.
    pub fn decoding_digest(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        if self.format.is_none() && self.profile.is_none() && self.utc_offset.is_none() {
            return None;
        }
        let mut profile = self.profile.clone();
        if let Some(p) = profile.as_mut() {
            // Where the profile lives does not change what it decodes.
            p.path.clear();
        }
        let described = format!(
            "{:?}|{:?}|{:?}",
            self.format.map(|f| f.name()),
            profile,
            self.utc_offset
        );
        let digest = Sha256::digest(described.as_bytes());
        Some(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// How this run turns cells into values.
    pub fn cell_rules(&self) -> format::CellRules {
        let profile = self.profile.clone().unwrap_or_default();
        format::CellRules {
            utc_offset: self.utc_offset.or(profile.utc_offset),
            profile,
            default_depth_cm: self.default_depth_cm,
        }
    }

    /// Checks every option; the first problem found, if any.
    pub fn validate(&self) -> Result<(), BackfillError> {
        let invalid = |message: String| Err(BackfillError::InvalidOptions(message));
        if let Err(e) = crate::model::check_id("gateway_id", &self.gateway_id) {
            return invalid(format!("gateway id {:?}: {}", self.gateway_id, e.reason));
        }
        if self.topic.is_empty()
            || self.topic.chars().count() > TOPIC_MAX_CHARS
            || self.topic == "."
            || self.topic == ".."
            || !self
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return invalid(format!(
                "topic {:?}: not a Kafka topic name (1-{TOPIC_MAX_CHARS} of A-Z a-z 0-9 . _ -)",
                self.topic
            ));
        }
        if let Some(depth) = self.default_depth_cm
            && !(0..=row::MAX_DEPTH_CM).contains(&depth)
        {
            return invalid(format!(
                "default depth {depth} cm is outside 0..={}",
                row::MAX_DEPTH_CM
            ));
        }
        if self.max_rate_rows_per_s == Some(0) {
            return invalid("max rate must be at least 1 row/s".into());
        }
        if !(1..=MAX_IN_FLIGHT_ROWS_LIMIT).contains(&self.max_in_flight_rows) {
            return invalid(format!(
                "max in-flight rows {} is outside 1..={MAX_IN_FLIGHT_ROWS_LIMIT}",
                self.max_in_flight_rows
            ));
        }
        if self.checkpoint_every_rows == 0 {
            return invalid("checkpoint interval must be at least 1 row".into());
        }
        if let Some(retention_ms) = self.retention_ms
            && retention_ms <= 0
        {
            return invalid(format!("retention {retention_ms} ms must be positive"));
        }
        if self.future_tolerance_ms < 0 {
            return invalid(format!(
                "future tolerance {} ms must not be negative",
                self.future_tolerance_ms
            ));
        }
        if self.max_delivery_attempts == 0 {
            return invalid("max delivery attempts must be at least 1".into());
        }
        if self.effective_checkpoint_path() == self.csv_path || self.effective_rejects_path() == self.csv_path
        {
            return invalid("the checkpoint and rejects files must not be the log itself".into());
        }
        if self.effective_checkpoint_path() == self.effective_rejects_path() {
            return invalid("the checkpoint and rejects files must differ".into());
        }
        Ok(())
    }
}

/// Why a backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// An option is out of range.
    #[error("invalid backfill options: {0}")]
    InvalidOptions(String),
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The header row is missing or unusable.
    #[error("{0}")]
    Header(RowError),
    /// The checkpoint file exists but cannot be read.
    #[error("checkpoint {path} is unreadable ({reason}); delete it, or pass --restart to ignore it")]
    CheckpointUnreadable {
        /// The checkpoint file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint belongs to a different file or other parameters.
    #[error(
        "refusing to resume from checkpoint {path}: {reason}; pass --restart to ignore it and \
         backfill from the first row"
    )]
    CheckpointMismatch {
        /// The checkpoint file.
        path: String,
        /// What differs.
        reason: String,
    },
    /// The schema could not be registered.
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    /// Strict mode met a bad row.
    #[error("stopped at the first bad row (strict mode): {error}")]
    StrictReject {
        /// The bad row.
        error: RowError,
        /// What the run did before stopping.
        summary: Box<BackfillSummary>,
    },
    /// A row could not be delivered (fatal producer error, or too many attempts).
    #[error("delivery of the row on line {line} failed: {error}")]
    Delivery {
        /// Physical line of the row.
        line: u64,
        /// The last producer error.
        error: ProduceError,
        /// What the run did before stopping.
        summary: Box<BackfillSummary>,
    },
    /// The log's content at the end of the run differs from its fingerprint
    /// at the start: the file was modified during the run.
    #[error("{path} changed while it was being backfilled ({reason}); run again")]
    FileChanged {
        /// The log file.
        path: String,
        /// What differs.
        reason: String,
        /// What the run did before stopping.
        summary: Box<BackfillSummary>,
    },
}

impl BackfillError {
    /// The summary of the work done before a run that had started failed.
    pub fn partial_summary(&self) -> Option<&BackfillSummary> {
        match self {
            BackfillError::StrictReject { summary, .. }
            | BackfillError::Delivery { summary, .. }
            | BackfillError::FileChanged { summary, .. } => Some(summary),
            _ => None,
        }
    }
}
