//! The `--max-rate` limiter: a token bucket on tokio time, so that it runs on
//! the simulator's clock as well as the real one.
//!
//! It is kept as a "theoretical arrival time" (the GCRA form of a token
//! bucket): each row moves the time at which the bucket is empty forward by
//! one interval (`1 s / rate`); a row may go when that time is at most one
//! burst ahead of now. The burst is a tenth of a second's worth of rows (at
//! least one), so a backfill never sends more than `rate / 10 + 1` rows
//! faster than the rate allows.

use tokio::time::{Duration, Instant};

/// Rate limit for rows.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    interval: Duration,
    burst_tolerance: Duration,
    empty_at: Instant,
}

impl TokenBucket {
    /// Rows in one burst at `rows_per_s`: a tenth of a second's worth, at least 1.
    pub fn burst_rows(rows_per_s: u32) -> u32 {
        (rows_per_s / 10).max(1)
    }

    /// A full bucket for `rows_per_s` (at least 1) rows per second.
    pub fn new(rows_per_s: u32, now: Instant) -> Self {
        assert!(rows_per_s > 0, "a rate limit is positive");
        let interval = Duration::from_secs(1) / rows_per_s;
        let burst_tolerance = interval * (Self::burst_rows(rows_per_s) - 1);
        Self {
            interval,
            burst_tolerance,
            empty_at: now,
        }
    }

    /// Takes a token for one row if there is one; otherwise the instant at
    /// which there will be.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        let earliest = self.empty_at.checked_sub(self.burst_tolerance).unwrap_or(now);
        if now < earliest {
            return Err(earliest);
        }
        self.empty_at = self.empty_at.max(now) + self.interval;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start);
        assert_eq!(TokenBucket::burst_rows(100), 10);
        for _ in 0..10 {
            assert_eq!(bucket.try_take(start), Ok(()));
        }
        let next = bucket.try_take(start).unwrap_err();
        assert_eq!(next - start, Duration::from_millis(10));
        assert_eq!(bucket.try_take(next), Ok(()));
        assert!(bucket.try_take(next).is_err());
        // After a long pause only one burst is available, not the backlog.
        let later = next + Duration::from_secs(60);
        let mut taken = 0;
        while bucket.try_take(later).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 10);
    }

    #[test]
    fn slow_rates_have_a_burst_of_one() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, start);
        assert_eq!(bucket.try_take(start), Ok(()));
        assert_eq!(bucket.try_take(start), Err(start + Duration::from_millis(500)));
    }
}
