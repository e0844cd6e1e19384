//! Tumbling event-time windows per sensor, with revisions.
//!
//! A window `[start, start + size)` of a sensor holds the count, mean,
//! minimum and maximum of moisture (vol%) and soil temperature of the
//! sensor's clean readings whose event time falls in it. Sums are kept in
//! fixed point (nano-units in an `i128`), so a window's values do not depend
//! on the order its readings arrived in: a backfill landing behind live data
//! gives exactly the aggregates an offline pass over the ledger gives.
//!
//! A window is emitted when it closes, not on every record: when the
//! sensor's event-time high-water passes its end, or when the sensor has
//! been idle (no reading arrived) for the idle timeout on the processor's
//! clock. A reading that lands in a window already emitted makes it dirty,
//! and it is emitted again with the next revision and the corrected values.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fixed-point scale of window sums: 1e-9 of the unit.
pub const NANO: f64 = 1e9;

/// A value in fixed point.
pub fn to_nano(value: f64) -> i128 {
    (value * NANO).round() as i128
}

/// The aggregates of one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowAcc {
    /// Readings in the window.
    pub count: u32,
    /// Sum of moisture, nano-vol%.
    pub moisture_sum_nano: i128,
    /// Lowest moisture, vol%.
    pub moisture_min_pct: f64,
    /// Highest moisture, vol%.
    pub moisture_max_pct: f64,
    /// Readings with a soil temperature.
    pub temp_count: u32,
    /// Sum of soil temperature, nano-°C.
    pub temp_sum_nano: i128,
    /// Lowest soil temperature, °C.
    pub temp_min_c: f64,
    /// Highest soil temperature, °C.
    pub temp_max_c: f64,
    /// Readings with a bulk EC value.
    pub ec_count: u32,
    /// Sum of bulk EC, nano-dS/m.
    pub ec_sum_nano: i128,
}

impl Default for WindowAcc {
    fn default() -> Self {
        Self {
            count: 0,
            moisture_sum_nano: 0,
            moisture_min_pct: f64::INFINITY,
            moisture_max_pct: f64::NEG_INFINITY,
            temp_count: 0,
            temp_sum_nano: 0,
            temp_min_c: f64::INFINITY,
            temp_max_c: f64::NEG_INFINITY,
            ec_count: 0,
            ec_sum_nano: 0,
        }
    }
}

impl WindowAcc {
    /// Adds one reading (finite values only: hard checks quarantine others).
    pub fn add(&mut self, moisture_pct: f64, soil_temp_c: Option<f64>, bulk_ec_ds_m: Option<f64>) {
        debug_assert!(moisture_pct.is_finite());
        if let Some(ec) = bulk_ec_ds_m {
            debug_assert!(ec.is_finite());
            self.ec_count += 1;
            self.ec_sum_nano += to_nano(ec);
        }
        self.count += 1;
        self.moisture_sum_nano += to_nano(moisture_pct);
        self.moisture_min_pct = self.moisture_min_pct.min(moisture_pct);
        self.moisture_max_pct = self.moisture_max_pct.max(moisture_pct);
        if let Some(t) = soil_temp_c {
            debug_assert!(t.is_finite());
            self.temp_count += 1;
            self.temp_sum_nano += to_nano(t);
            self.temp_min_c = self.temp_min_c.min(t);
            self.temp_max_c = self.temp_max_c.max(t);
        }
    }

    /// Mean moisture, vol% (0 for an empty window).
    pub fn moisture_mean_pct(&self) -> f64 {
        mean(self.moisture_sum_nano, self.count)
    }

    /// Mean soil temperature over the readings that carry one, °C.
    pub fn temp_mean_c(&self) -> Option<f64> {
        (self.temp_count > 0).then(|| mean(self.temp_sum_nano, self.temp_count))
    }

    /// The values as written.
    pub fn values(&self) -> WindowValues {
        WindowValues {
            count: self.count,
            moisture_mean_pct: self.moisture_mean_pct(),
            moisture_min_pct: self.moisture_min_pct,
            moisture_max_pct: self.moisture_max_pct,
            temp_mean_c: self.temp_mean_c(),
            temp_min_c: (self.temp_count > 0).then_some(self.temp_min_c),
            temp_max_c: (self.temp_count > 0).then_some(self.temp_max_c),
            ec_mean_ds_m: self.ec_mean_ds_m(),
        }
    }

    /// Mean bulk EC over the readings that carry one, dS/m.
    pub fn ec_mean_ds_m(&self) -> Option<f64> {
        (self.ec_count > 0).then(|| mean(self.ec_sum_nano, self.ec_count))
    }
}

fn mean(sum_nano: i128, count: u32) -> f64 {
    if count == 0 {
        return 0.0;
    }
    (sum_nano / i128::from(count)) as f64 / NANO
}

/// A window's aggregates in the form they are written (means rounded from
/// the fixed-point sums): what "changed since the last revision" compares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowValues {
    /// Readings.
    pub count: u32,
    /// Mean moisture, vol%.
    pub moisture_mean_pct: f64,
    /// Lowest moisture, vol%.
    pub moisture_min_pct: f64,
    /// Highest moisture, vol%.
    pub moisture_max_pct: f64,
    /// Mean temperature, °C (`None`: no reading carries one).
    pub temp_mean_c: Option<f64>,
    /// Lowest temperature, °C.
    pub temp_min_c: Option<f64>,
    /// Highest temperature, °C.
    pub temp_max_c: Option<f64>,
    /// Mean bulk EC, dS/m.
    pub ec_mean_ds_m: Option<f64>,
}

impl WindowValues {
    /// The values a written aggregate carries.
    pub fn of_record(record: &super::records::WindowAggregate) -> Self {
        Self {
            count: record.count.max(0) as u32,
            moisture_mean_pct: record.moisture_pct_mean,
            moisture_min_pct: record.moisture_pct_min,
            moisture_max_pct: record.moisture_pct_max,
            temp_mean_c: record.soil_temp_c_mean,
            temp_min_c: record.soil_temp_c_min,
            temp_max_c: record.soil_temp_c_max,
            ec_mean_ds_m: record.bulk_ec_ds_m_mean,
        }
    }
}

/// What was last emitted for a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmittedWindow {
    /// Revision, from 1.
    pub revision: u32,
    /// The values emitted.
    pub values: WindowValues,
}

/// One window of a sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSlot {
    /// Aggregates of the readings in it now.
    pub acc: WindowAcc,
    /// Probe depth, cm (of the latest reading added).
    pub depth_cm: i32,
    /// What was last emitted, if anything.
    pub emitted: Option<EmittedWindow>,
}

impl WindowSlot {
    /// Whether the aggregates differ from what was last emitted.
    pub fn is_dirty(&self) -> bool {
        self.acc.count > 0 && self.emitted.is_none_or(|e| e.values != self.acc.values())
    }
}

/// A sensor's windows, by start time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorWindows {
    slots: BTreeMap<i64, WindowSlot>,
    /// Starts of the windows that may be dirty (a superset: checked again
    /// when used), so finding due windows never scans every window.
    maybe_dirty: std::collections::BTreeSet<i64>,
}

/// The start of the window of size `size_ms` holding `event_time_ms`.
pub fn window_start(event_time_ms: i64, size_ms: i64) -> i64 {
    assert!(size_ms > 0);
    event_time_ms.div_euclid(size_ms) * size_ms
}

impl SensorWindows {
    /// Adds a reading to its window; returns the window's start.
    pub fn add(
        &mut self,
        event_time_ms: i64,
        size_ms: i64,
        depth_cm: i32,
        moisture_pct: f64,
        temp_c: Option<f64>,
        bulk_ec_ds_m: Option<f64>,
    ) -> i64 {
        let start = window_start(event_time_ms, size_ms);
        let slot = self.slots.entry(start).or_insert_with(|| WindowSlot {
            acc: WindowAcc::default(),
            depth_cm,
            emitted: None,
        });
        slot.acc.add(moisture_pct, temp_c, bulk_ec_ds_m);
        slot.depth_cm = depth_cm;
        self.maybe_dirty.insert(start);
        start
    }

    /// Records an emitted revision (live, or read back from the topic).
    /// An older revision than the one known is ignored.
    pub fn record_emitted(&mut self, start: i64, depth_cm: i32, emitted: EmittedWindow) {
        let slot = self.slots.entry(start).or_insert_with(|| WindowSlot {
            acc: WindowAcc::default(),
            depth_cm,
            emitted: None,
        });
        if slot.emitted.is_none_or(|e| e.revision < emitted.revision) {
            slot.emitted = Some(emitted);
        }
        if slot.is_dirty() {
            self.maybe_dirty.insert(start);
        } else {
            self.maybe_dirty.remove(&start);
        }
    }

    /// The window starting at `start`.
    pub fn get(&self, start: i64) -> Option<&WindowSlot> {
        self.slots.get(&start)
    }

    /// Windows, by start.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &WindowSlot)> {
        self.slots.iter().map(|(s, w)| (*s, w))
    }

    /// Starts of dirty windows ending at or before `closed_until_ms` (all
    /// dirty windows if `None`).
    pub fn due(&self, size_ms: i64, closed_until_ms: Option<i64>) -> Vec<i64> {
        let candidates = match closed_until_ms {
            // Windows ending at or before t start at or before t - size.
            Some(t) => self.maybe_dirty.range(..=t.saturating_sub(size_ms)),
            None => self.maybe_dirty.range(..),
        };
        candidates
            .copied()
            .filter(|start| self.slots.get(start).is_some_and(WindowSlot::is_dirty))
            .collect()
    }

    /// Windows with readings not emitted yet.
    pub fn dirty_count(&self) -> usize {
        self.maybe_dirty
            .iter()
            .filter(|start| self.slots.get(start).is_some_and(WindowSlot::is_dirty))
            .count()
    }

    /// Number of windows kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no window is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Drops windows that end before `before_ms`; returns how many.
    pub fn evict_before(&mut self, before_ms: i64, size_ms: i64) -> usize {
        let cut = before_ms - size_ms;
        let keep = self.slots.split_off(&cut);
        let dropped = self.slots.len();
        self.slots = keep;
        self.maybe_dirty = self.maybe_dirty.split_off(&cut);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_do_not_depend_on_arrival_order() {
        let values = [
            (21.123456789, 10.5),
            (0.1 + 0.2, -3.25),
            (44.999, 7.0),
            (13.0, 12.125),
        ];
        let mut forward = WindowAcc::default();
        let mut backward = WindowAcc::default();
        values
            .iter()
            .for_each(|(m, t)| forward.add(*m, Some(*t), Some(0.1)));
        values
            .iter()
            .rev()
            .for_each(|(m, t)| backward.add(*m, Some(*t), Some(0.1)));
        assert_eq!(forward, backward);
        assert_eq!(forward.count, 4);
        assert_eq!(forward.moisture_min_pct, 0.1 + 0.2);
        assert_eq!(forward.moisture_max_pct, 44.999);
        assert!((forward.moisture_mean_pct() - 19.855614197).abs() < 1e-9);
    }

    #[test]
    fn windows_are_dirty_until_emitted_and_again_after_late_data() {
        let size = 300_000;
        let mut w = SensorWindows::default();
        assert_eq!(window_start(-1, size), -size);
        let start = w.add(1_000, size, 10, 20.0, Some(10.0), None);
        assert_eq!(start, 0);
        assert_eq!(w.due(size, Some(299_999)), Vec::<i64>::new());
        assert_eq!(w.due(size, Some(300_000)), vec![0]);
        let values = w.get(0).unwrap().acc.values();
        w.record_emitted(0, 10, EmittedWindow { revision: 1, values });
        assert!(w.due(size, None).is_empty());
        w.add(2_000, size, 10, 22.0, None, None);
        assert_eq!(w.due(size, None), vec![0]);
        // An older revision read back late does not win.
        w.record_emitted(0, 10, EmittedWindow { revision: 0, values });
        assert_eq!(w.get(0).unwrap().emitted.unwrap().revision, 1);
        w.add(900_000, size, 10, 22.0, Some(10.0), None);
        assert_eq!(w.evict_before(600_000, size), 1);
        assert_eq!(w.len(), 1);
    }
}
