//! Progress reporting: the backfill tells a [`BackfillProgress`] how far it
//! is; the caller decides how to show it (a progress bar on a terminal,
//! [`LogProgress`] lines otherwise, [`NoProgress`] in tests and simulations).

use std::cell::Cell;
use tokio::time::{Duration, Instant};

/// How far a backfill is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Bytes of the log read so far (read-ahead included).
    pub bytes_read: u64,
    /// Size of the log in bytes.
    pub file_size_bytes: u64,
    /// Data rows read so far (good and bad, blank lines excluded).
    pub rows_read: u64,
    /// Rows acknowledged by the broker in this run.
    pub rows_produced: u64,
    /// Rows already acknowledged in an earlier run (not sent again).
    pub rows_skipped_done: u64,
    /// Bad rows.
    pub rows_rejected: u64,
    /// Rows sent and not yet acknowledged.
    pub rows_in_flight: usize,
}

impl ProgressSnapshot {
    /// Fraction of the file read, 0.0 to 1.0.
    pub fn fraction_read(&self) -> f64 {
        if self.file_size_bytes == 0 {
            1.0
        } else {
            (self.bytes_read as f64 / self.file_size_bytes as f64).min(1.0)
        }
    }
}

/// Receives progress updates. Called from the backfill's task; updates come
/// every few hundred rows, so implementations may do a little work each time.
pub trait BackfillProgress {
    /// The backfill starts reading a log of `file_size_bytes` bytes.
    fn begin(&self, file_size_bytes: u64);
    /// Progress so far.
    fn update(&self, snapshot: &ProgressSnapshot);
    /// The backfill stopped (finished or failed) at `snapshot`.
    fn end(&self, snapshot: &ProgressSnapshot);
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl BackfillProgress for NoProgress {
    fn begin(&self, _file_size_bytes: u64) {}
    fn update(&self, _snapshot: &ProgressSnapshot) {}
    fn end(&self, _snapshot: &ProgressSnapshot) {}
}

/// Logs a line with `tracing` at most once per interval: percentage of the
/// file read, rows, rows per second and the estimated time left (from the
/// bytes read).
#[derive(Debug)]
pub struct LogProgress {
    interval: Duration,
    started: Cell<Option<Instant>>,
    last_logged: Cell<Option<Instant>>,
}

/// Default interval between [`LogProgress`] lines.
pub const DEFAULT_LOG_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

impl LogProgress {
    /// Logs at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: Cell::new(None),
            last_logged: Cell::new(None),
        }
    }

    fn log(&self, snapshot: &ProgressSnapshot, now: Instant) {
        let elapsed_s = self
            .started
            .get()
            .map_or(0.0, |started| (now - started).as_secs_f64());
        let rows_done = snapshot.rows_produced + snapshot.rows_rejected + snapshot.rows_skipped_done;
        let rows_per_s = if elapsed_s > 0.0 {
            rows_done as f64 / elapsed_s
        } else {
            0.0
        };
        let fraction = snapshot.fraction_read();
        let eta_s = if fraction > 0.0 && fraction < 1.0 {
            elapsed_s * (1.0 - fraction) / fraction
        } else {
            0.0
        };
        tracing::info!(
            percent_read = format_args!("{:.1}", fraction * 100.0),
            rows_read = snapshot.rows_read,
            produced = snapshot.rows_produced,
            skipped_done = snapshot.rows_skipped_done,
            rejected = snapshot.rows_rejected,
            in_flight = snapshot.rows_in_flight,
            rows_per_s = format_args!("{rows_per_s:.0}"),
            eta_s = format_args!("{eta_s:.0}"),
            "backfill progress"
        );
    }
}

impl Default for LogProgress {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_PROGRESS_INTERVAL)
    }
}

impl BackfillProgress for LogProgress {
    fn begin(&self, file_size_bytes: u64) {
        let now = Instant::now();
        self.started.set(Some(now));
        self.last_logged.set(Some(now));
        tracing::info!(file_size_bytes, "backfill started");
    }

    fn update(&self, snapshot: &ProgressSnapshot) {
        let now = Instant::now();
        let due = self
            .last_logged
            .get()
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if due {
            self.last_logged.set(Some(now));
            self.log(snapshot, now);
        }
    }

    fn end(&self, snapshot: &ProgressSnapshot) {
        self.log(snapshot, Instant::now());
    }
}
