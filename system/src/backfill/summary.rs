//! What a backfill did, for people (Display) and programs (JSON).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Counts of event-time warnings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningCounts {
    /// Rows whose event time is older than the topic's retention: the broker
    /// may delete them soon after they land (if the topic deletes by time).
    pub older_than_retention: u64,
    /// Rows whose event time is later than now plus the tolerance.
    pub in_future: u64,
}

/// The outcome of a backfill run.
///
/// Row counts, the event-time span and the warnings describe the whole file
/// (good rows on lines already done included); `rows_produced` and
/// `delivery_retries` describe this run. Every data row is exactly one of
/// produced, skipped as already done, or rejected once a run completes:
/// `rows_read == rows_produced + rows_skipped_done + rows_rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillSummary {
    /// The log file, as given.
    pub file: String,
    /// Topic written to.
    pub topic: String,
    /// Gateway id of the produced records.
    pub gateway_id: String,
    /// Whether the whole file was settled (false in a partial summary of a
    /// failed run).
    pub completed: bool,
    /// Data rows read (blank lines and the header excluded).
    pub rows_read: u64,
    /// Rows acknowledged by the broker in this run.
    pub rows_produced: u64,
    /// Rows settled by an earlier run (on lines up to the checkpoint), not sent again.
    pub rows_skipped_done: u64,
    /// Bad rows (written to the rejects file).
    pub rows_rejected: u64,
    /// Sends repeated after a failed delivery.
    pub delivery_retries: u64,
    /// The line this run resumed after (0 for a run from the start).
    pub resumed_after_line: u64,
    /// Every row on lines up to this one is settled (the checkpoint's value).
    pub acked_through_line: u64,
    /// Earliest event time of a good row, ms since the Unix epoch.
    pub event_time_min_ms: Option<i64>,
    /// Latest event time of a good row, ms since the Unix epoch.
    pub event_time_max_ms: Option<i64>,
    /// Earliest event time, RFC 3339 (UTC).
    pub event_time_min: Option<String>,
    /// Latest event time, RFC 3339 (UTC).
    pub event_time_max: Option<String>,
    /// Event-time warnings.
    pub warnings: WarningCounts,
    /// The rejects file, if any row was rejected.
    pub rejects_path: Option<String>,
    /// The checkpoint file.
    pub checkpoint_path: String,
    /// Wall time of the run in ms.
    pub elapsed_ms: u64,
}

/// RFC 3339 (UTC, `Z`) form of an event time.
pub fn format_event_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

impl fmt::Display for BackfillSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.completed { "complete" } else { "INCOMPLETE" };
        writeln!(
            f,
            "backfill of {} into {} as gateway {}: {state}",
            self.file, self.topic, self.gateway_id
        )?;
        writeln!(f, "  rows read:               {}", self.rows_read)?;
        writeln!(f, "  produced (acknowledged): {}", self.rows_produced)?;
        writeln!(
            f,
            "  skipped, already done:   {} (resumed after line {})",
            self.rows_skipped_done, self.resumed_after_line
        )?;
        match &self.rejects_path {
            Some(path) => writeln!(
                f,
                "  rejected:                {} (see {path})",
                self.rows_rejected
            )?,
            None => writeln!(f, "  rejected:                {}", self.rows_rejected)?,
        }
        match (&self.event_time_min, &self.event_time_max) {
            (Some(min), Some(max)) => writeln!(f, "  event time span:         {min} .. {max}")?,
            _ => writeln!(f, "  event time span:         (no rows)")?,
        }
        writeln!(
            f,
            "  warnings:                {} older than retention, {} in the future",
            self.warnings.older_than_retention, self.warnings.in_future
        )?;
        writeln!(f, "  delivery retries:        {}", self.delivery_retries)?;
        writeln!(
            f,
            "  checkpoint:              {} (settled through line {})",
            self.checkpoint_path, self.acked_through_line
        )?;
        write!(
            f,
            "  elapsed:                 {:.3} s",
            self.elapsed_ms as f64 / 1000.0
        )
    }
}
