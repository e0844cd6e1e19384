//! Hooks through which a gateway reports what happened to each reading.
//!
//! The system itself needs none of this; checkers do. The simulator records
//! every event in its ledger; real-world tests ask the gateway to append
//! durable readings to a JSON-lines ledger file ([`JsonlLedger`]).

use crate::metrics::RejectReason;
use crate::model::Reading;
use crate::transport::RecordPosition;
use std::cell::RefCell;
use std::io::Write;

/// Receives the life events of readings. Every method defaults to nothing.
pub trait GatewayObserver {
    /// A reading was taken from the source and given its identity.
    fn on_sampled(&self, _reading: &Reading) {}
    /// These readings were acknowledged durable (the spool's fsync returned).
    fn on_durable(&self, _readings: &[Reading]) {}
    /// A reading did not enter the spool.
    fn on_rejected(&self, _reading: &Reading, _reason: RejectReason) {}
    /// The broker acknowledged a reading at this position.
    fn on_delivered(&self, _reading: &Reading, _position: RecordPosition) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl GatewayObserver for NoObserver {}

/// Appends every durable reading, as one JSON object per line, to a file.
///
/// Lines are written after the spool's fsync returned, so the file lists
/// readings the gateway acknowledged durable; a reading fsynced just before
/// a kill may be missing from it (it is then "indeterminate", never lost).
pub struct JsonlLedger {
    file: RefCell<std::fs::File>,
}

impl JsonlLedger {
    /// Opens (appending) or creates the ledger file.
    ///
    /// A last line without its newline (the previous run was killed while
    /// writing it) is cut off first: appending after it would glue the next
    /// reading onto it and make the whole file unreadable. The reading it
    /// held stays out of the ledger, which is allowed (see the type's docs).
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let complete_bytes = complete_lines_bytes(&mut file)?;
        if complete_bytes < file.metadata()?.len() {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = complete_bytes,
                "ledger file ends in a torn line; cutting it off"
            );
            file.set_len(complete_bytes)?;
        }
        Ok(Self {
            file: RefCell::new(file),
        })
    }
}

/// Length of the file up to and including its last newline (0 if it has
/// none), found by reading backwards in small chunks.
fn complete_lines_bytes(file: &mut std::fs::File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK_BYTES: u64 = 4096;
    let mut end = file.metadata()?.len();
    let mut chunk = vec![0u8; CHUNK_BYTES as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK_BYTES);
        let buf = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        if let Some(at) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl GatewayObserver for JsonlLedger {
    fn on_durable(&self, readings: &[Reading]) {
        let mut out = Vec::with_capacity(readings.len() * 200);
        for r in readings {
            serde_json::to_writer(&mut out, r).expect("a reading serialises to JSON");
            out.push(b'\n');
        }
        if let Err(e) = self.file.borrow_mut().write_all(&out) {
            tracing::error!(error = %e, "cannot append to the ledger file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seq: u64) -> Reading {
        Reading {
            gateway_id: "gw".into(),
            sensor_id: "probe".into(),
            seq,
            event_time_ms: 1_700_000_000_000 + seq as i64,
            moisture_vwc: 0.25,
            soil_temp_c: Some(12.0),
            bulk_ec_ds_m: None,
            depth_cm: 10,
            battery_v: None,
            source_flag: None,
        }
    }

    fn lines(path: &std::path::Path) -> Vec<Reading> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn reopening_cuts_a_torn_last_line_and_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        JsonlLedger::open(&path)
            .unwrap()
            .on_durable(&[reading(1), reading(2)]);
        // A kill in the middle of the next write.
        let whole = serde_json::to_string(&reading(3)).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        drop(file);

        JsonlLedger::open(&path).unwrap().on_durable(&[reading(4)]);
        assert_eq!(lines(&path), [reading(1), reading(2), reading(4)]);
    }

    #[test]
    fn a_file_of_only_a_torn_line_becomes_empty_and_a_clean_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        // Longer than one backwards-read chunk, with no newline at all.
        std::fs::write(&path, "x".repeat(10_000)).unwrap();
        JsonlLedger::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

        JsonlLedger::open(&path).unwrap().on_durable(&[reading(1)]);
        let before = std::fs::read(&path).unwrap();
        JsonlLedger::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
