//! Why a spool operation failed.

use crate::model::Reading;
use serde::Serialize;
use std::io;
use std::path::PathBuf;

/// A record the spool had accepted but could not make durable; handed back
/// by a failed [`super::Spool::commit`] so the caller decides what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnacknowledgedRecord {
    /// Spool index the record had been given (it will not be reused).
    pub index: u64,
    /// The reading.
    pub reading: Reading,
}

/// Errors of the spool. Damage found on disk is never an error: it is
/// reported (see [`super::RecoveryReport`]) and the intact records are kept.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The configuration is inconsistent or out of the explicit limits.
    #[error("invalid spool configuration: {0}")]
    Config(String),
    /// A disk operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the spool was doing.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The reading cannot be stored (structure or Avro encoding).
    #[error("reading {sensor_id}/{seq} cannot be spooled: {reason}")]
    InvalidReading {
        /// Sensor of the reading.
        sensor_id: String,
        /// Its sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A sensor identifier handed to `next_seq` is not a valid identifier.
    #[error("invalid sensor id {sensor_id:?}: {reason}")]
    InvalidSensorId {
        /// The identifier.
        sensor_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The encoded record is larger than `max_record_bytes`.
    #[error("record of {payload_bytes} bytes exceeds max_record_bytes {max_record_bytes}")]
    RecordTooLarge {
        /// Payload size (header + Avro body), in bytes.
        payload_bytes: u64,
        /// The configured limit, in bytes.
        max_record_bytes: u32,
    },
    /// `seq` must increase strictly per sensor.
    #[error("seq {seq} of sensor {sensor_id} does not follow {last_seq}")]
    SeqNotIncreasing {
        /// The sensor.
        sensor_id: String,
        /// The offending sequence number.
        seq: u64,
        /// The last sequence number appended for that sensor.
        last_seq: u64,
    },
    /// Too many distinct sensors for the sequence reservation state.
    #[error("more than max_sensors ({max_sensors}) distinct sensors")]
    TooManySensors {
        /// The configured limit.
        max_sensors: u32,
    },
    /// The disk budget is exhausted and the policy refuses new readings.
    #[error("spool full: {needed_bytes} bytes needed, budget max_bytes is {max_bytes}")]
    Full {
        /// Bytes the segments would need with this record.
        needed_bytes: u64,
        /// The configured budget.
        max_bytes: u64,
    },
    /// Too much appended and not committed: call `commit` first.
    #[error("uncommitted batch would exceed max_uncommitted_bytes ({max_uncommitted_bytes}): commit first")]
    BatchFull {
        /// The configured limit, in bytes.
        max_uncommitted_bytes: u64,
    },
    /// The batch could not be made durable; nothing of it is acknowledged.
    /// The records are handed back (and are no longer pending).
    #[error(
        "commit failed after {attempts} attempt(s){}: {source}; {} record(s) not acknowledged",
        if *no_space { " (disk full)" } else { "" },
        unacknowledged.len()
    )]
    CommitFailed {
        /// Write-and-sync attempts made.
        attempts: u32,
        /// The disk reported ENOSPC (counted as rejected by the full policy).
        no_space: bool,
        /// The last error.
        #[source]
        source: io::Error,
        /// The records that are not durable.
        unacknowledged: Vec<UnacknowledgedRecord>,
    },
}

impl SpoolError {
    /// Wraps an I/O error with what was being done and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether this error means the spool (or its disk) is full.
    pub fn is_full(&self) -> bool {
        match self {
            SpoolError::Full { .. } => true,
            SpoolError::CommitFailed { no_space, .. } => *no_space,
            SpoolError::Io { source, .. } => is_no_space(source),
            _ => false,
        }
    }
}

/// Whether an I/O error is ENOSPC.
pub fn is_no_space(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull || error.raw_os_error() == Some(28)
}
