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
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: RefCell::new(file),
        })
    }
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
