//! Alerts: state machines over a sensor's emitted windows (irrigation
//! needed, leaching risk) and over arrival time (sensor silent).
//!
//! The window alerts are a pure function of the sequence of window
//! revisions the processor emitted for the sensor, in emission order: the
//! processor runs the machine when it emits a window, the checker runs the
//! same machine over the aggregates topic and expects exactly the alerts
//! topic. Each machine has two lanes: windows emitted close to the sensor's
//! event-time high-water drive the live lane; windows emitted from
//! backfilled or late data (`historical` windows) drive the historical lane,
//! whose alerts are marked historical, so nobody irrigates because of last
//! week. A lane ignores a window older than the last one it counted (it
//! arrived out of order within the lane) except a revision of that last one.
//!
//! Each episode is raised once and cleared once.
//!
//! - `irrigation_needed` (per probe): raise after `windows_to_raise`
//!   consecutive windows (adjacent starts; a gap restarts the count) whose
//!   mean moisture is below the refill point for the probe's depth; clear at
//!   the first window at or above refill point + `hysteresis_pct`.
//! - `leaching_risk` (per deep probe): at a probe at least `min_depth_cm`
//!   deep, raise when a window's mean moisture is at least
//!   `moisture_rise_pct` above the lowest window mean of the previous
//!   `front_window_ms` and its mean EC at least `ec_rise_ds_m` above the
//!   lowest EC mean of that span (a wetting front carrying solutes below the
//!   root zone); clear when the mean has fallen `moisture_fall_pct` below
//!   the episode's peak (the front passed). Decided at the deep probe and
//!   keyed by its id: the raw topic is keyed by probe id, so the other
//!   depths of the gateway are on other partitions (see docs/qaqc.md).
//! - `sensor_silent` (per probe, arrival time): raise when no reading of the
//!   probe arrived for `silent_after_ms` on the processor's clock while the
//!   processor owns its partition; clear at its next reading.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Kinds of alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    /// Moisture below the refill point: irrigate.
    IrrigationNeeded,
    /// A wetting front with an EC rise at a deep probe.
    LeachingRisk,
    /// No reading arrived for a while.
    SensorSilent,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 3] = [
        AlertKind::IrrigationNeeded,
        AlertKind::LeachingRisk,
        AlertKind::SensorSilent,
    ];

    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::IrrigationNeeded => "irrigation_needed",
            AlertKind::LeachingRisk => "leaching_risk",
            AlertKind::SensorSilent => "sensor_silent",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Raise or clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Transition {
    /// The episode starts.
    Raise,
    /// The episode ends.
    Clear,
}

impl Transition {
    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            Transition::Raise => "raise",
            Transition::Clear => "clear",
        }
    }

    /// The transition with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "raise" => Some(Transition::Raise),
            "clear" => Some(Transition::Clear),
            _ => None,
        }
    }
}

/// An alert decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// What.
    pub kind: AlertKind,
    /// Raise or clear.
    pub transition: Transition,
    /// Episode number (per sensor, kind and lane), from 1.
    pub episode: u64,
    /// Decided from historical data.
    pub historical: bool,
    /// Event time the alert refers to, ms.
    pub event_time_ms: i64,
    /// Deciding value.
    pub value: f64,
    /// Threshold compared with.
    pub threshold: f64,
    /// Explanation.
    pub detail: String,
}

/// A refill point: moisture below which a probe down to `depth_cm_max`
/// needs irrigation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefillPoint {
    /// Applies to probes at most this deep, cm.
    pub depth_cm_max: i32,
    /// Refill point, vol%.
    pub moisture_pct: f64,
}

/// `[alerts.irrigation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IrrigationConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Consecutive dry windows before raising.
    pub windows_to_raise: u32,
    /// Clear at refill point + this, vol%.
    pub hysteresis_pct: f64,
    /// Refill points by depth (the first whose `depth_cm_max` covers the
    /// probe applies; deeper probes use the last).
    pub refill: Vec<RefillPoint>,
}

impl Default for IrrigationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            windows_to_raise: 6,
            hysteresis_pct: 2.0,
            refill: vec![
                RefillPoint {
                    depth_cm_max: 20,
                    moisture_pct: 16.0,
                },
                RefillPoint {
                    depth_cm_max: 45,
                    moisture_pct: 17.0,
                },
                RefillPoint {
                    depth_cm_max: 1_000,
                    moisture_pct: 18.0,
                },
            ],
        }
    }
}

impl IrrigationConfig {
    /// The refill point of a probe at `depth_cm`.
    pub fn refill_pct(&self, depth_cm: i32) -> f64 {
        self.refill
            .iter()
            .find(|r| depth_cm <= r.depth_cm_max)
            .or(self.refill.last())
            .map_or(0.0, |r| r.moisture_pct)
    }

    fn validate(&self) -> Result<(), String> {
        if self.windows_to_raise == 0 || self.windows_to_raise > 10_000 {
            return Err("alerts.irrigation.windows_to_raise must be 1..=10000".into());
        }
        if !self.hysteresis_pct.is_finite() || self.hysteresis_pct < 0.0 {
            return Err("alerts.irrigation.hysteresis_pct must be >= 0".into());
        }
        if self.enabled && self.refill.is_empty() {
            return Err("alerts.irrigation.refill needs at least one refill point".into());
        }
        if self.refill.iter().any(|r| !r.moisture_pct.is_finite()) {
            return Err("alerts.irrigation.refill moisture_pct must be finite".into());
        }
        Ok(())
    }
}

/// `[alerts.leaching]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeachingConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Probes at least this deep are below the root zone, cm.
    pub min_depth_cm: i32,
    /// Span of earlier windows the rise is measured against, ms.
    pub front_window_ms: i64,
    /// Rise of mean moisture, vol%.
    pub moisture_rise_pct: f64,
    /// Rise of mean EC, dS/m.
    pub ec_rise_ds_m: f64,
    /// Clear when the mean falls this far below the episode's peak, vol%.
    pub moisture_fall_pct: f64,
}

impl Default for LeachingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_depth_cm: 50,
            front_window_ms: 6 * 3_600_000,
            moisture_rise_pct: 3.0,
            ec_rise_ds_m: 0.05,
            moisture_fall_pct: 1.0,
        }
    }
}

impl LeachingConfig {
    fn validate(&self) -> Result<(), String> {
        if self.front_window_ms <= 0 || self.front_window_ms > 7 * 86_400_000 {
            return Err("alerts.leaching.front_window_ms must be 1 ms to 7 days".into());
        }
        for (key, v) in [
            ("moisture_rise_pct", self.moisture_rise_pct),
            ("ec_rise_ds_m", self.ec_rise_ds_m),
            ("moisture_fall_pct", self.moisture_fall_pct),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(format!("alerts.leaching.{key} must be > 0"));
            }
        }
        Ok(())
    }
}

/// `[alerts.silent]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SilentConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Raise after this long without a reading, ms (processor clock).
    pub silent_after_ms: u64,
}

impl Default for SilentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            silent_after_ms: 30 * 60_000,
        }
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Irrigation needed.
    pub irrigation: IrrigationConfig,
    /// Leaching risk.
    pub leaching: LeachingConfig,
    /// Sensor silent.
    pub silent: SilentConfig,
}

impl AlertConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        self.irrigation.validate()?;
        self.leaching.validate()?;
        if self.silent.silent_after_ms == 0 {
            return Err("alerts.silent.silent_after_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// A window emission, as the window machines see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowEmission {
    /// Window start, ms.
    pub start_ms: i64,
    /// Window end, ms.
    pub end_ms: i64,
    /// Probe depth, cm.
    pub depth_cm: i32,
    /// Mean moisture, vol%.
    pub moisture_mean_pct: f64,
    /// Mean EC, dS/m, if the probe measures it.
    pub ec_mean_ds_m: Option<f64>,
    /// Emitted from historical data.
    pub historical: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct IrrigationLane {
    last_start_ms: Option<i64>,
    dry_run: u32,
    dry_run_before_last: u32,
    raised: bool,
    episodes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LeachingLane {
    /// (start, moisture mean, EC mean) of recent windows, by start.
    recent: VecDeque<(i64, f64, f64)>,
    raised: bool,
    peak_pct: f64,
    episodes: u64,
}

/// Most recent windows a leaching lane keeps (bounds memory whatever the
/// front window and window size).
pub const LEACHING_RECENT_WINDOWS_MAX: usize = 4_096;

/// The window alert machines of one sensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowAlertState {
    irrigation: [IrrigationLane; 2],
    leaching: [LeachingLane; 2],
}

fn lane(historical: bool) -> usize {
    usize::from(historical)
}

impl WindowAlertState {
    /// Runs the machines over one window emission; returns the decisions.
    pub fn step(&mut self, window: &WindowEmission, size_ms: i64, config: &AlertConfig) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        if config.irrigation.enabled {
            events.extend(self.step_irrigation(window, size_ms, &config.irrigation));
        }
        if config.leaching.enabled && window.depth_cm >= config.leaching.min_depth_cm {
            events.extend(self.step_leaching(window, &config.leaching));
        }
        events
    }

    fn step_irrigation(
        &mut self,
        w: &WindowEmission,
        size_ms: i64,
        config: &IrrigationConfig,
    ) -> Option<AlertEvent> {
        let lane = &mut self.irrigation[lane(w.historical)];
        let refill = config.refill_pct(w.depth_cm);
        let dry = w.moisture_mean_pct < refill;
        let wet = w.moisture_mean_pct >= refill + config.hysteresis_pct;
        let before = match lane.last_start_ms {
            Some(last) if w.start_ms == last => lane.dry_run_before_last,
            Some(last) if w.start_ms < last => return None,
            Some(last) if w.start_ms == last + size_ms => lane.dry_run,
            _ => 0,
        };
        let run = if dry { before + 1 } else { 0 };
        lane.dry_run_before_last = before;
        lane.dry_run = run;
        lane.last_start_ms = Some(w.start_ms);
        let event = |transition, episode, threshold, detail: String| AlertEvent {
            kind: AlertKind::IrrigationNeeded,
            transition,
            episode,
            historical: w.historical,
            event_time_ms: w.end_ms,
            value: w.moisture_mean_pct,
            threshold,
            detail,
        };
        if !lane.raised && run >= config.windows_to_raise {
            lane.raised = true;
            lane.episodes += 1;
            return Some(event(
                Transition::Raise,
                lane.episodes,
                refill,
                format!(
                    "{run} consecutive windows below the refill point of {refill} vol% at {} cm",
                    w.depth_cm
                ),
            ));
        }
        if lane.raised && wet {
            lane.raised = false;
            let threshold = refill + config.hysteresis_pct;
            return Some(event(
                Transition::Clear,
                lane.episodes,
                threshold,
                format!("window mean at or above {threshold} vol%"),
            ));
        }
        None
    }

    fn step_leaching(&mut self, w: &WindowEmission, config: &LeachingConfig) -> Option<AlertEvent> {
        let lane = &mut self.leaching[lane(w.historical)];
        let ec = w.ec_mean_ds_m?;
        if let Some(&(last, _, _)) = lane.recent.back() {
            if w.start_ms < last {
                return None;
            }
            if w.start_ms == last {
                lane.recent.pop_back();
            }
        }
        while lane
            .recent
            .front()
            .is_some_and(|(start, _, _)| *start < w.start_ms - config.front_window_ms)
        {
            lane.recent.pop_front();
        }
        let lowest_moisture = lane.recent.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let lowest_ec = lane.recent.iter().map(|r| r.2).fold(f64::INFINITY, f64::min);
        lane.recent.push_back((w.start_ms, w.moisture_mean_pct, ec));
        if lane.recent.len() > LEACHING_RECENT_WINDOWS_MAX {
            lane.recent.pop_front();
        }
        let event = |transition, episode, value, threshold, detail: String| AlertEvent {
            kind: AlertKind::LeachingRisk,
            transition,
            episode,
            historical: w.historical,
            event_time_ms: w.end_ms,
            value,
            threshold,
            detail,
        };
        if !lane.raised {
            let rise = w.moisture_mean_pct - lowest_moisture;
            let ec_rise = ec - lowest_ec;
            if rise >= config.moisture_rise_pct && ec_rise >= config.ec_rise_ds_m {
                lane.raised = true;
                lane.peak_pct = w.moisture_mean_pct;
                lane.episodes += 1;
                return Some(event(
                    Transition::Raise,
                    lane.episodes,
                    w.moisture_mean_pct,
                    lowest_moisture + config.moisture_rise_pct,
                    format!(
                        "wetting front at {} cm: moisture +{rise:.2} vol% and EC +{ec_rise:.3} dS/m within {} min",
                        w.depth_cm,
                        config.front_window_ms / 60_000
                    ),
                ));
            }
            return None;
        }
        lane.peak_pct = lane.peak_pct.max(w.moisture_mean_pct);
        let threshold = lane.peak_pct - config.moisture_fall_pct;
        if w.moisture_mean_pct <= threshold {
            lane.raised = false;
            return Some(event(
                Transition::Clear,
                lane.episodes,
                w.moisture_mean_pct,
                threshold,
                format!(
                    "front passed: mean {:.2} vol% below the peak of {:.2}",
                    w.moisture_mean_pct, lane.peak_pct
                ),
            ));
        }
        None
    }
}

/// The silent-sensor machine of one sensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SilentState {
    /// When the sensor's last reading arrived (processor clock), ms.
    pub last_arrival_ms: i64,
    /// Whether an episode is open.
    pub raised: bool,
    /// Episodes so far.
    pub episodes: u64,
}

impl SilentState {
    /// A reading arrived at `now_ms`; clears an open episode.
    pub fn arrived(&mut self, now_ms: i64, event_time_ms: i64) -> Option<AlertEvent> {
        let silence_ms = now_ms - self.last_arrival_ms;
        self.last_arrival_ms = now_ms;
        if !self.raised {
            return None;
        }
        self.raised = false;
        Some(AlertEvent {
            kind: AlertKind::SensorSilent,
            transition: Transition::Clear,
            episode: self.episodes,
            historical: false,
            event_time_ms,
            value: silence_ms as f64,
            threshold: 0.0,
            detail: format!("readings again after {} s", silence_ms / 1_000),
        })
    }

    /// Checks the silence at `now_ms`; raises a new episode when due.
    pub fn check(
        &mut self,
        now_ms: i64,
        last_event_time_ms: i64,
        config: &SilentConfig,
    ) -> Option<AlertEvent> {
        let silence_ms = now_ms - self.last_arrival_ms;
        if self.raised || silence_ms < config.silent_after_ms as i64 {
            return None;
        }
        self.raised = true;
        self.episodes += 1;
        Some(AlertEvent {
            kind: AlertKind::SensorSilent,
            transition: Transition::Raise,
            episode: self.episodes,
            historical: false,
            event_time_ms: last_event_time_ms,
            value: silence_ms as f64,
            threshold: config.silent_after_ms as f64,
            detail: format!("no reading for {} s", silence_ms / 1_000),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: i64 = 300_000;

    fn window(index: i64, mean: f64, historical: bool) -> WindowEmission {
        WindowEmission {
            start_ms: index * SIZE,
            end_ms: (index + 1) * SIZE,
            depth_cm: 10,
            moisture_mean_pct: mean,
            ec_mean_ds_m: Some(0.3),
            historical,
        }
    }

    fn run(windows: &[WindowEmission]) -> Vec<(Transition, u64, bool, i64)> {
        let mut state = WindowAlertState::default();
        let config = AlertConfig::default();
        windows
            .iter()
            .flat_map(|w| state.step(w, SIZE, &config))
            .map(|e| (e.transition, e.episode, e.historical, e.event_time_ms / SIZE))
            .collect()
    }

    #[test]
    fn irrigation_raises_after_consecutive_dry_windows_and_clears_with_hysteresis() {
        let mut ws: Vec<_> = (0..5).map(|i| window(i, 15.0, false)).collect();
        // A gap restarts the count.
        ws.extend((6..12).map(|i| window(i, 15.0, false)));
        // Between refill and refill + hysteresis: stays raised.
        ws.push(window(12, 17.0, false));
        ws.push(window(13, 18.5, false));
        ws.extend((14..20).map(|i| window(i, 15.5, false)));
        assert_eq!(
            run(&ws),
            [
                (Transition::Raise, 1, false, 12),
                (Transition::Clear, 1, false, 14),
                (Transition::Raise, 2, false, 20)
            ]
        );
    }

    #[test]
    fn historical_windows_have_their_own_lane_and_are_marked() {
        let mut ws: Vec<_> = (100..106).map(|i| window(i, 15.0, false)).collect();
        ws.extend((0..6).map(|i| window(i, 15.0, true)));
        // An out-of-order live window is ignored; a revision of the last counts.
        ws.push(window(50, 30.0, false));
        ws.push(window(105, 30.0, false));
        assert_eq!(
            run(&ws),
            [
                (Transition::Raise, 1, false, 106),
                (Transition::Raise, 1, true, 6),
                (Transition::Clear, 1, false, 106)
            ]
        );
    }

    #[test]
    fn leaching_needs_a_deep_probe_a_rise_and_an_ec_rise() {
        let config = AlertConfig::default();
        let mut state = WindowAlertState::default();
        let deep = |i: i64, m: f64, ec: f64| WindowEmission {
            depth_cm: 60,
            ec_mean_ds_m: Some(ec),
            ..window(i, m, false)
        };
        let mut events = Vec::new();
        for (i, (m, ec)) in [
            (20.0, 0.4),
            (20.0, 0.4),
            (24.0, 0.42),
            (24.0, 0.5),
            (24.5, 0.5),
            (23.0, 0.5),
        ]
        .into_iter()
        .enumerate()
        {
            events.extend(state.step(&deep(i as i64, m, ec), SIZE, &config));
        }
        let kinds: Vec<_> = events
            .iter()
            .filter(|e| e.kind == AlertKind::LeachingRisk)
            .map(|e| (e.transition, e.event_time_ms / SIZE))
            .collect();
        assert_eq!(kinds, [(Transition::Raise, 4), (Transition::Clear, 6)]);
        // A shallow probe never gets it.
        let mut shallow = WindowAlertState::default();
        let none: Vec<_> = [(20.0, 0.4), (25.0, 0.6)]
            .into_iter()
            .enumerate()
            .flat_map(|(i, (m, ec))| {
                shallow.step(
                    &WindowEmission {
                        ec_mean_ds_m: Some(ec),
                        ..window(i as i64, m, false)
                    },
                    SIZE,
                    &config,
                )
            })
            .filter(|e| e.kind == AlertKind::LeachingRisk)
            .collect();
        assert!(none.is_empty());
    }

    #[test]
    fn silent_raises_once_and_clears_on_the_next_reading() {
        let config = SilentConfig::default();
        let mut s = SilentState {
            last_arrival_ms: 0,
            ..SilentState::default()
        };
        assert!(s.check(1_000, 5, &config).is_none());
        let raise = s.check(1_800_000, 5, &config).unwrap();
        assert_eq!((raise.transition, raise.episode), (Transition::Raise, 1));
        assert!(s.check(3_600_000, 5, &config).is_none());
        let clear = s.arrived(3_700_000, 99).unwrap();
        assert_eq!((clear.transition, clear.episode), (Transition::Clear, 1));
        assert!(s.arrived(3_760_000, 100).is_none());
    }
}
