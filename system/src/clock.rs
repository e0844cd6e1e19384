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

/// The UTC calendar date `(year, month, day)` of the day `days_since_epoch`
/// days after 1970-01-01 (proleptic Gregorian, total over every `i64` a
/// millisecond timestamp can give: no panic, no range limit).
pub fn civil_date_utc(days_since_epoch: i64) -> (i64, i64, i64) {
    // Howard Hinnant's days-to-civil algorithm, eras from 0000-03-01.
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}
