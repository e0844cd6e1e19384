//! [`SimClock`]: a gateway's wall clock inside the simulation.
//!
//! True time is turmoil's simulated time since the Unix epoch (the builder's
//! `epoch`, which scenarios always set explicitly, plus elapsed simulated
//! time). A gateway's clock shows
//!
//! ```text
//! wall = true + offset_ms + (true - drift_anchor) * drift_ppm / 1_000_000
//! ```
//!
//! where the drift accumulates from `drift_anchor`, the true time at which the
//! current drift rate was set. [`ClockControl`] is the shared handle the
//! scenario runner scripts: a fixed offset, a drift rate, and jumps (forward
//! or back, or to an absolute reading) such as a gateway without an RTC
//! battery coming back from a power cut at its build date. Integer arithmetic
//! only, so a seed replays the same readings.

use soilstream::clock::Clock;
use std::cell::RefCell;
use std::rc::Rc;

/// Parts per million.
const PPM: i128 = 1_000_000;
/// Drift rates beyond ±10 % are not a clock, they are a bug in the scenario.
pub const MAX_DRIFT_PPM: i64 = 100_000;

/// A snapshot of a clock's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettings {
    /// Fixed offset from true time, in ms (includes every jump so far).
    pub offset_ms: i64,
    /// Drift rate in parts per million (positive: the clock runs fast).
    pub drift_ppm: i64,
    /// True time (ms since the Unix epoch) from which the drift accumulates.
    pub drift_anchor_ms: i64,
    /// Number of jumps applied so far.
    pub jumps: u64,
}

impl ClockSettings {
    /// The reading of a clock with these settings at true time `true_ms`.
    pub fn wall_ms_at(&self, true_ms: i64) -> i64 {
        let drift_ms =
            (i128::from(true_ms) - i128::from(self.drift_anchor_ms)) * i128::from(self.drift_ppm) / PPM;
        let wall = i128::from(true_ms) + i128::from(self.offset_ms) + drift_ms;
        wall.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// Shared handle to one gateway's clock settings.
///
/// Clones share the settings: keep one in the scenario runner and give
/// [`SimClock`]s built from clones to the gateway's software; the settings
/// survive host crashes and restarts, as the scenario decides.
#[derive(Debug, Clone)]
pub struct ClockControl {
    settings: Rc<RefCell<ClockSettings>>,
}

impl ClockControl {
    /// A clock `offset_ms` ahead of true time (negative: behind), drifting at
    /// `drift_ppm` from true time `start_true_ms` (usually the simulation's
    /// epoch).
    ///
    /// # Panics
    /// If `|drift_ppm| > MAX_DRIFT_PPM`.
    pub fn new(start_true_ms: i64, offset_ms: i64, drift_ppm: i64) -> Self {
        assert!(
            drift_ppm.abs() <= MAX_DRIFT_PPM,
            "drift of {drift_ppm} ppm is not a clock"
        );
        Self {
            settings: Rc::new(RefCell::new(ClockSettings {
                offset_ms,
                drift_ppm,
                drift_anchor_ms: start_true_ms,
                jumps: 0,
            })),
        }
    }

    /// A correct clock: no offset, no drift.
    pub fn exact(start_true_ms: i64) -> Self {
        Self::new(start_true_ms, 0, 0)
    }

    /// The current settings.
    pub fn settings(&self) -> ClockSettings {
        *self.settings.borrow()
    }

    /// The clock's reading at true time `true_ms`.
    pub fn wall_ms_at(&self, true_ms: i64) -> i64 {
        self.settings.borrow().wall_ms_at(true_ms)
    }

    /// Moves the clock by `delta_ms` (negative: back in time).
    pub fn jump_ms(&self, delta_ms: i64) {
        let mut settings = self.settings.borrow_mut();
        settings.offset_ms = settings.offset_ms.saturating_add(delta_ms);
        settings.jumps += 1;
        tracing::info!(delta_ms, offset_ms = settings.offset_ms, "clock jump");
    }

    /// Sets the clock so that it reads `wall_ms` at true time `now_true_ms`
    /// (a gateway without RTC battery booting at its build date), keeping the
    /// drift rate, which now accumulates from `now_true_ms`.
    pub fn set_wall_ms(&self, wall_ms: i64, now_true_ms: i64) {
        let mut settings = self.settings.borrow_mut();
        settings.drift_anchor_ms = now_true_ms;
        settings.offset_ms = wall_ms.saturating_sub(now_true_ms);
        settings.jumps += 1;
        debug_assert_eq!(settings.wall_ms_at(now_true_ms), wall_ms);
        tracing::info!(wall_ms, now_true_ms, "clock set");
    }

    /// Changes the drift rate from true time `now_true_ms` on, without a jump:
    /// the drift accumulated so far is folded into the offset.
    ///
    /// # Panics
    /// If `|drift_ppm| > MAX_DRIFT_PPM`.
    pub fn set_drift_ppm(&self, drift_ppm: i64, now_true_ms: i64) {
        assert!(
            drift_ppm.abs() <= MAX_DRIFT_PPM,
            "drift of {drift_ppm} ppm is not a clock"
        );
        let mut settings = self.settings.borrow_mut();
        let before = settings.wall_ms_at(now_true_ms);
        settings.offset_ms = before.saturating_sub(now_true_ms);
        settings.drift_anchor_ms = now_true_ms;
        settings.drift_ppm = drift_ppm;
        debug_assert_eq!(settings.wall_ms_at(now_true_ms), before);
    }
}

/// True simulated time now, in ms since the Unix epoch, as seen by the
/// running turmoil host; `None` outside a host.
pub fn true_now_ms() -> Option<i64> {
    turmoil::since_epoch().map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// The [`Clock`] seam for a simulated gateway.
#[derive(Debug, Clone)]
pub struct SimClock {
    control: ClockControl,
}

impl SimClock {
    /// A clock whose settings are scripted through `control`.
    pub fn new(control: ClockControl) -> Self {
        Self { control }
    }

    /// The settings handle.
    pub fn control(&self) -> &ClockControl {
        &self.control
    }
}

impl Clock for SimClock {
    /// # Panics
    /// Outside a turmoil host (there is no simulated time to read).
    fn now_ms(&self) -> i64 {
        let true_ms = true_now_ms().expect("SimClock must be read from inside a turmoil host");
        self.control.wall_ms_at(true_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const START_MS: i64 = 1_700_000_000_000;

    #[test]
    fn offset_and_drift_accumulate_from_the_anchor() {
        let clock = ClockControl::new(START_MS, 500, 100);
        assert_eq!(clock.wall_ms_at(START_MS), START_MS + 500);
        // 100 ppm over 10_000 s = 1 s fast.
        assert_eq!(
            clock.wall_ms_at(START_MS + 10_000_000),
            START_MS + 10_000_000 + 500 + 1_000
        );
        let slow = ClockControl::new(START_MS, 0, -50);
        assert_eq!(
            slow.wall_ms_at(START_MS + 20_000_000),
            START_MS + 20_000_000 - 1_000
        );
    }

    #[test]
    fn jumps_and_resets_move_the_reading() {
        let clock = ClockControl::new(START_MS, 0, 100);
        let t = START_MS + 3_600_000;
        let before = clock.wall_ms_at(t);
        clock.jump_ms(-86_400_000);
        assert_eq!(clock.wall_ms_at(t), before - 86_400_000);
        // Power loss without RTC battery: the clock restarts at its build date.
        let build_date_ms = 946_684_800_000;
        clock.set_wall_ms(build_date_ms, t);
        assert_eq!(clock.wall_ms_at(t), build_date_ms);
        assert_eq!(clock.wall_ms_at(t + 1_000_000), build_date_ms + 1_000_000 + 100);
        assert_eq!(clock.settings().jumps, 2);
    }

    #[test]
    fn changing_the_drift_does_not_jump() {
        let clock = ClockControl::new(START_MS, 0, 1_000);
        let t = START_MS + 1_000_000;
        let before = clock.wall_ms_at(t);
        clock.set_drift_ppm(-1_000, t);
        assert_eq!(clock.wall_ms_at(t), before);
        assert_eq!(clock.wall_ms_at(t + 1_000_000), before + 1_000_000 - 1_000);
    }

    #[test]
    fn reads_simulated_time_inside_a_host() {
        let mut sim = turmoil::Builder::new()
            .epoch(UNIX_EPOCH + Duration::from_millis(START_MS as u64))
            .tick_duration(Duration::from_millis(10))
            .build();
        let control = ClockControl::new(START_MS, 250, 0);
        let runner = control.clone();
        sim.client("gw", async move {
            let clock = SimClock::new(control);
            assert_eq!(clock.now_ms(), START_MS + 250);
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(clock.now_ms(), START_MS + 5_000 + 250);
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(clock.now_ms(), START_MS + 10_000 + 250 - 60_000);
            Ok(())
        });
        while sim.elapsed() < Duration::from_secs(7) {
            sim.step().expect("step");
        }
        runner.jump_ms(-60_000);
        sim.run().expect("simulation");
    }
}
