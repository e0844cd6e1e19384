//! Spool configuration, its limits, and the test-only planted bugs.

use super::error::SpoolError;
use super::frame::{FRAME_HEADER_BYTES, PAYLOAD_HEADER_BYTES, RECORD_BYTES_LIMIT};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Smallest accepted `max_record_bytes`: room for the payload header and a
/// small Avro body.
pub const RECORD_BYTES_MIN: u32 = 256;

/// Largest accepted `segment_max_bytes` (1 GiB).
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 30;

/// Largest accepted `max_sensors`; bounds the sequence-reservation file.
pub const SENSORS_LIMIT: u32 = 65_536;

/// Largest accepted `max_in_flight_records`.
pub const IN_FLIGHT_RECORDS_LIMIT: u32 = 1 << 22;

/// Largest accepted `seq_reservation_block`.
pub const SEQ_RESERVATION_BLOCK_LIMIT: u64 = 1 << 32;

/// What the spool does when a new reading would take it past `max_bytes`
/// (or the disk itself is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the new reading: `append` (or `commit`, when the disk reports
    /// ENOSPC) returns a full error; counted in `rejected_full_total`.
    #[default]
    RejectNew,
    /// Delete the oldest segment(s), undelivered records included, advance
    /// the cursor past them, count them in `dropped_full_total` and log them.
    DropOldest,
}

/// Bugs that can be switched on to prove that the property tests and the
/// simulator's checker catch them. **Test-only**: never set in production;
/// all are off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlantedBugs {
    /// `commit` acknowledges records as durable without calling `sync_data`.
    pub ack_before_sync: bool,
    /// Recovery stops at the first bad frame of a segment instead of
    /// resynchronising and salvaging the intact records after it.
    pub truncate_at_first_bad_crc: bool,
    /// New segment files are created without `sync_dir`, so a power cut can
    /// lose the whole file with acknowledged records in it.
    pub skip_segment_sync_dir: bool,
}

impl PlantedBugs {
    /// Whether any planted bug is switched on.
    pub fn any(&self) -> bool {
        self.ack_before_sync || self.truncate_at_first_bad_crc || self.skip_segment_sync_dir
    }
}

/// How a spool is laid out and bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory holding the segments and state files (created if missing).
    pub dir: PathBuf,
    /// Disk budget over all segment files, in bytes.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    /// A segment is sealed and a new one started once it reaches this size,
    /// in bytes.
    #[serde(default = "defaults::segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// Behaviour when the budget (or the disk) is full.
    #[serde(default)]
    pub when_full: FullPolicy,
    /// How many sequence numbers are reserved durably at once per sensor.
    #[serde(default = "defaults::seq_reservation_block")]
    pub seq_reservation_block: u64,
    /// Largest record payload (header + Avro body), in bytes.
    #[serde(default = "defaults::max_record_bytes")]
    pub max_record_bytes: u32,
    /// Largest amount of appended, not yet committed frames, in bytes;
    /// `append` refuses more until `commit`.
    #[serde(default = "defaults::max_uncommitted_bytes")]
    pub max_uncommitted_bytes: u64,
    /// Largest number of records read and not yet covered by the cursor.
    #[serde(default = "defaults::max_in_flight_records")]
    pub max_in_flight_records: u32,
    /// Largest number of distinct sensors whose sequence numbers the spool
    /// reserves.
    #[serde(default = "defaults::max_sensors")]
    pub max_sensors: u32,
    /// Test-only planted bugs (all off by default).
    #[serde(default)]
    pub planted: PlantedBugs,
}

/// Default values of the optional configuration fields.
pub mod defaults {
    /// 1 GiB.
    pub fn max_bytes() -> u64 {
        1 << 30
    }
    /// 8 MiB.
    pub fn segment_max_bytes() -> u64 {
        8 << 20
    }
    /// 1024 sequence numbers.
    pub fn seq_reservation_block() -> u64 {
        1024
    }
    /// 16 KiB.
    pub fn max_record_bytes() -> u32 {
        16 << 10
    }
    /// 1 MiB.
    pub fn max_uncommitted_bytes() -> u64 {
        1 << 20
    }
    /// 65 536 records.
    pub fn max_in_flight_records() -> u32 {
        65_536
    }
    /// 4096 sensors.
    pub fn max_sensors() -> u32 {
        4096
    }
}

impl SpoolConfig {
    /// A configuration for `dir` with every other field at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: defaults::max_bytes(),
            segment_max_bytes: defaults::segment_max_bytes(),
            when_full: FullPolicy::default(),
            seq_reservation_block: defaults::seq_reservation_block(),
            max_record_bytes: defaults::max_record_bytes(),
            max_uncommitted_bytes: defaults::max_uncommitted_bytes(),
            max_in_flight_records: defaults::max_in_flight_records(),
            max_sensors: defaults::max_sensors(),
            planted: PlantedBugs::default(),
        }
    }

    /// Largest frame (header + payload) this configuration lets through, in bytes.
    pub fn max_frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + u64::from(self.max_record_bytes)
    }

    /// Checks that the fields are consistent and within the explicit limits.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let fail = |message: String| Err(SpoolError::Config(message));
        if self.dir.as_os_str().is_empty() {
            return fail("dir is empty".into());
        }
        if !(RECORD_BYTES_MIN..=RECORD_BYTES_LIMIT).contains(&self.max_record_bytes) {
            return fail(format!(
                "max_record_bytes {} outside {RECORD_BYTES_MIN}..={RECORD_BYTES_LIMIT}",
                self.max_record_bytes
            ));
        }
        assert!(RECORD_BYTES_MIN as usize > PAYLOAD_HEADER_BYTES);
        if self.segment_max_bytes < self.max_frame_bytes() || self.segment_max_bytes > SEGMENT_BYTES_LIMIT {
            return fail(format!(
                "segment_max_bytes {} outside {}..={SEGMENT_BYTES_LIMIT} (at least one largest frame)",
                self.segment_max_bytes,
                self.max_frame_bytes()
            ));
        }
        if self.max_uncommitted_bytes < self.max_frame_bytes()
            || self.max_uncommitted_bytes > self.segment_max_bytes
        {
            return fail(format!(
                "max_uncommitted_bytes {} outside {}..=segment_max_bytes ({})",
                self.max_uncommitted_bytes,
                self.max_frame_bytes(),
                self.segment_max_bytes
            ));
        }
        if self.max_bytes < self.segment_max_bytes {
            return fail(format!(
                "max_bytes {} is below segment_max_bytes {}",
                self.max_bytes, self.segment_max_bytes
            ));
        }
        if self.seq_reservation_block == 0 || self.seq_reservation_block > SEQ_RESERVATION_BLOCK_LIMIT {
            return fail(format!(
                "seq_reservation_block {} outside 1..={SEQ_RESERVATION_BLOCK_LIMIT}",
                self.seq_reservation_block
            ));
        }
        if self.max_in_flight_records == 0 || self.max_in_flight_records > IN_FLIGHT_RECORDS_LIMIT {
            return fail(format!(
                "max_in_flight_records {} outside 1..={IN_FLIGHT_RECORDS_LIMIT}",
                self.max_in_flight_records
            ));
        }
        if self.max_sensors == 0 || self.max_sensors > SENSORS_LIMIT {
            return fail(format!(
                "max_sensors {} outside 1..={SENSORS_LIMIT}",
                self.max_sensors
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_serde_fills_them() {
        SpoolConfig::new("/x").validate().unwrap();
        let parsed: SpoolConfig = serde_json::from_str(r#"{"dir": "/x"}"#).unwrap();
        assert_eq!(parsed, SpoolConfig::new("/x"));
        let parsed: SpoolConfig = serde_json::from_str(
            r#"{"dir": "/x", "when_full": "drop_oldest", "planted": {"ack_before_sync": true}}"#,
        )
        .unwrap();
        assert_eq!(parsed.when_full, FullPolicy::DropOldest);
        assert!(parsed.planted.ack_before_sync && parsed.planted.any());
        assert!(!PlantedBugs::default().any());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<SpoolConfig>(r#"{"dir": "/x", "max_byte": 1}"#).is_err());
        assert!(serde_json::from_str::<SpoolConfig>(r#"{"dir": "/x", "planted": {"oops": true}}"#).is_err());
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let mut config = SpoolConfig::new("/x");
        config.max_bytes = config.segment_max_bytes - 1;
        assert!(matches!(config.validate(), Err(SpoolError::Config(_))));
        let mut config = SpoolConfig::new("/x");
        config.max_record_bytes = RECORD_BYTES_LIMIT + 1;
        assert!(config.validate().is_err());
        let mut config = SpoolConfig::new("/x");
        config.max_uncommitted_bytes = config.segment_max_bytes + 1;
        assert!(config.validate().is_err());
        let mut config = SpoolConfig::new("/x");
        config.seq_reservation_block = 0;
        assert!(config.validate().is_err());
        let mut config = SpoolConfig::new("/x");
        config.segment_max_bytes = 100;
        assert!(config.validate().is_err());
    }
}
