//! The `Clock` seam: the gateway's wall clock, which stamps event times.
//!
//! Waiting is not part of this seam: components sleep with `tokio::time`,
//! which turmoil drives in the simulator and the OS drives in the real world.
//! What differs between worlds is the *wall* clock: a field gateway without an
//! RTC battery may come back from a power cut with its clock reset, offset or
//! drifting, and readings must carry the time that clock showed.

/// A source of wall-clock time for stamping readings.
pub trait Clock {
    /// Wall-clock time now, in ms since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that always shows the same time: for tests and replays.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}
