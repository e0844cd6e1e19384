//! One sensor's clean readings in event-time order: what the flag rules
//! look at, what dedup compares repeats against, and what was emitted for
//! each reading's flags.
//!
//! Readings are ordered by `(event_time_ms, gateway_id, seq)` (a backfill
//! of a probe's SD card carries another gateway id than the live stream of
//! the same probe, so two readings may share an event time). Columns are
//! kept apart (structure of arrays) so the rules read plain slices.

use super::flags::{FlagConfig, FlagSet, SeriesView, far_candidate, flags_at, lookahead_complete};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// What a reading contributes to its sensor's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Gateway id of the reading's identity.
    pub gateway_id: String,
    /// Sequence number of the reading's identity.
    pub seq: u64,
    /// Moisture, vol%.
    pub moisture_pct: f64,
    /// Soil temperature, °C.
    pub soil_temp_c: Option<f64>,
    /// Supply voltage, V.
    pub battery_v: Option<f64>,
    /// Digest of the reading's values (dedup compares repeats with it).
    pub payload_digest: u64,
}

/// What was last emitted for a reading's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedFlags {
    /// The flags.
    pub flags: FlagSet,
    /// Whether they were computed with the full look-ahead.
    pub lookahead_complete: bool,
    /// 0 for the clean record, then 1, 2, ... for flag revisions.
    pub revision: u32,
}

/// A sensor's series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorSeries {
    times_ms: Vec<i64>,
    moisture_pct: Vec<f64>,
    soil_temp_c: Vec<Option<f64>>,
    battery_v: Vec<Option<f64>>,
    gateway_ids: Vec<String>,
    seqs: Vec<u64>,
    digests: Vec<u64>,
    emitted: Vec<Option<EmittedFlags>>,
}

/// A reading's flags as the rules give them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentFlags {
    /// Index in the series.
    pub index: usize,
    /// The flags.
    pub flags: FlagSet,
    /// Whether the look-ahead is complete.
    pub lookahead_complete: bool,
}

impl SensorSeries {
    /// Number of readings.
    pub fn len(&self) -> usize {
        self.times_ms.len()
    }

    /// Whether the series is empty.
    pub fn is_empty(&self) -> bool {
        self.times_ms.is_empty()
    }

    /// The view the rules read.
    pub fn view(&self) -> SeriesView<'_> {
        SeriesView {
            times_ms: &self.times_ms,
            moisture_pct: &self.moisture_pct,
            soil_temp_c: &self.soil_temp_c,
            battery_v: &self.battery_v,
        }
    }

    fn position(&self, event_time_ms: i64, gateway_id: &str, seq: u64) -> Result<usize, usize> {
        let key = (event_time_ms, gateway_id, seq);
        let mut lo = self.times_ms.partition_point(|&t| t < event_time_ms);
        let hi = self.times_ms.partition_point(|&t| t <= event_time_ms);
        while lo < hi {
            let here = (self.times_ms[lo], self.gateway_ids[lo].as_str(), self.seqs[lo]);
            match here.cmp(&key) {
                std::cmp::Ordering::Less => lo += 1,
                std::cmp::Ordering::Equal => return Ok(lo),
                std::cmp::Ordering::Greater => return Err(lo),
            }
        }
        Err(lo)
    }

    /// Inserts a reading at its place; returns its index, or `None` if a
    /// reading with its identity and event time is there already.
    pub fn insert(&mut self, point: Point) -> Option<usize> {
        let index = match self.position(point.event_time_ms, &point.gateway_id, point.seq) {
            Ok(_) => return None,
            Err(index) => index,
        };
        self.times_ms.insert(index, point.event_time_ms);
        self.moisture_pct.insert(index, point.moisture_pct);
        self.soil_temp_c.insert(index, point.soil_temp_c);
        self.battery_v.insert(index, point.battery_v);
        self.gateway_ids.insert(index, point.gateway_id);
        self.seqs.insert(index, point.seq);
        self.digests.insert(index, point.payload_digest);
        self.emitted.insert(index, None);
        Some(index)
    }

    /// The index of the reading with this identity and event time.
    pub fn find(&self, event_time_ms: i64, gateway_id: &str, seq: u64) -> Option<usize> {
        self.position(event_time_ms, gateway_id, seq).ok()
    }

    /// The payload digest of the reading with this identity, if it is in
    /// the series (a linear scan: used for repeats only).
    pub fn digest_of(&self, gateway_id: &str, seq: u64) -> Option<u64> {
        (0..self.len())
            .rev()
            .find(|&i| self.seqs[i] == seq && self.gateway_ids[i] == gateway_id)
            .map(|i| self.digests[i])
    }

    /// Event time of reading `index`.
    pub fn time_ms(&self, index: usize) -> i64 {
        self.times_ms[index]
    }

    /// Identity parts of reading `index`: gateway id and seq.
    pub fn identity(&self, index: usize) -> (&str, u64) {
        (&self.gateway_ids[index], self.seqs[index])
    }

    /// What was last emitted for reading `index`'s flags.
    pub fn emitted(&self, index: usize) -> Option<EmittedFlags> {
        self.emitted[index]
    }

    /// Records what was emitted for reading `index`'s flags.
    pub fn set_emitted(&mut self, index: usize, emitted: EmittedFlags) {
        self.emitted[index] = Some(emitted);
    }

    /// Removes every reading older than `before_ms`; returns how many.
    pub fn evict_before(&mut self, before_ms: i64) -> usize {
        let cut = self.times_ms.partition_point(|&t| t < before_ms);
        if cut == 0 {
            return 0;
        }
        self.times_ms.drain(..cut);
        self.moisture_pct.drain(..cut);
        self.soil_temp_c.drain(..cut);
        self.battery_v.drain(..cut);
        self.gateway_ids.drain(..cut);
        self.seqs.drain(..cut);
        self.digests.drain(..cut);
        self.emitted.drain(..cut);
        cut
    }

    /// The readings whose flags a change at `index` (an insertion) may
    /// change: those within the rules' radius in time or in readings. The
    /// time reach extends from the following reading too, because a rule
    /// that looks back "the last N minutes" also reads the one reading
    /// just before that span.
    pub fn affected_by(&self, index: usize, config: &FlagConfig) -> Range<usize> {
        let n = self.len();
        assert!(index < n);
        let radius_ms = config.radius_ms();
        let radius_points = config.radius_points();
        let t = self.times_ms[index];
        let next_t = self.times_ms.get(index + 1).copied().unwrap_or(t);
        let lo_time = self
            .times_ms
            .partition_point(|&x| x < t.saturating_sub(radius_ms));
        let hi_time = self
            .times_ms
            .partition_point(|&x| x <= next_t.saturating_add(radius_ms));
        let lo = lo_time.min(index.saturating_sub(radius_points));
        let hi = hi_time.max((index + radius_points + 1).min(n));
        lo..hi
    }

    /// The flags, as the rules give them now, of every reading whose flags
    /// insertions at `changed` (indices after all of them were inserted) may
    /// have changed. Readings within the rules' reach in readings are always
    /// evaluated; those only within their reach in time only when
    /// [`far_candidate`] says a change can reach them (the others keep their
    /// flags and are left out).
    pub fn changed_flags(
        &self,
        changed: &[usize],
        config: &FlagConfig,
        saturation_pct: Option<f64>,
    ) -> Vec<CurrentFlags> {
        let n = self.len();
        let reach = config.radius_points();
        let near = merge_ranges(
            changed
                .iter()
                .map(|&j| j.saturating_sub(reach)..(j + reach + 1).min(n))
                .collect(),
        );
        let far = merge_ranges(changed.iter().map(|&j| self.affected_by(j, config)).collect());
        let view = self.view();
        let mut out = Vec::new();
        let mut near_iter = near.iter().peekable();
        for range in far {
            for index in range {
                while near_iter.peek().is_some_and(|r| r.end <= index) {
                    near_iter.next();
                }
                let is_near = near_iter.peek().is_some_and(|r| r.contains(&index));
                if is_near || far_candidate(view, index, config, saturation_pct) {
                    out.push(CurrentFlags {
                        index,
                        flags: flags_at(view, index, config, saturation_pct),
                        lookahead_complete: lookahead_complete(view, index, config),
                    });
                }
            }
        }
        out
    }

    /// The flags of the readings in `range`, as the rules give them now.
    pub fn current_flags(
        &self,
        range: Range<usize>,
        config: &FlagConfig,
        saturation_pct: Option<f64>,
    ) -> Vec<CurrentFlags> {
        let view = self.view();
        range
            .map(|index| CurrentFlags {
                index,
                flags: flags_at(view, index, config, saturation_pct),
                lookahead_complete: lookahead_complete(view, index, config),
            })
            .collect()
    }
}

/// Sorted, non-overlapping cover of `ranges`.
pub fn merge_ranges(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qaqc::flags::flags_of_series;
    use proptest::prelude::*;

    fn point(t: i64, gw: &str, seq: u64, moisture: f64) -> Point {
        Point {
            event_time_ms: t,
            gateway_id: gw.into(),
            seq,
            moisture_pct: moisture,
            soil_temp_c: Some(12.0 + (seq % 7) as f64 * 0.1),
            battery_v: Some(3.6),
            payload_digest: seq,
        }
    }

    #[test]
    fn insert_orders_by_time_then_identity_and_refuses_twins() {
        let mut s = SensorSeries::default();
        assert_eq!(s.insert(point(60, "gw", 2, 20.0)), Some(0));
        assert_eq!(s.insert(point(0, "gw", 1, 20.0)), Some(0));
        assert_eq!(s.insert(point(60, "gw-sd", 9, 20.0)), Some(2));
        assert_eq!(s.insert(point(60, "gw", 2, 21.0)), None);
        assert_eq!(s.identity(1), ("gw", 2));
        assert_eq!(s.find(60, "gw-sd", 9), Some(2));
        assert_eq!(s.digest_of("gw", 2), Some(2));
        assert_eq!(s.evict_before(30), 1);
        assert_eq!(s.len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Re-evaluating only the readings `affected_by` an insertion gives
        /// the same flags as evaluating the whole series again.
        #[test]
        fn affected_range_covers_every_change(
            values in prop::collection::vec((0i64..4, 0u8..6), 40..160),
            insert_at in 0usize..1000,
            late_value in 0u8..6,
        ) {
            let config = FlagConfig {
                spike_noise_window_ms: 20 * 60_000,
                d10_half_window_ms: 10 * 60_000,
                d10_min_span_ms: 15 * 60_000,
                stuck_min_span_ms: 5 * 60_000,
                stuck_min_readings: 3,
                ..FlagConfig::default()
            };
            let level = |v: u8| [0.0, 10.0, 20.0, 44.0, 44.5, 25.0][v as usize];
            let mut s = SensorSeries::default();
            let mut t = 0i64;
            for (seq, (gap, v)) in values.iter().enumerate() {
                t += 60_000 * (1 + gap * gap);
                s.insert(point(t, "gw", seq as u64, level(*v)));
            }
            let before = flags_of_series(s.view(), &config, Some(45.0));
            let at = (insert_at as i64 * 7_919) % (t + 60_000);
            let index = s.insert(point(at, "gw-sd", 1_000_000, level(late_value))).unwrap();
            let after = flags_of_series(s.view(), &config, Some(45.0));
            let range = s.affected_by(index, &config);
            let evaluated: std::collections::BTreeMap<usize, FlagSet> = s
                .changed_flags(&[index], &config, Some(45.0))
                .into_iter()
                .map(|c| (c.index, c.flags))
                .collect();
            for i in 0..s.len() {
                if let Some(flags) = evaluated.get(&i) {
                    prop_assert_eq!(*flags, after[i]);
                }
                let old = if i < index { before[i] } else if i > index { before[i - 1] } else { continue };
                if after[i] != old {
                    prop_assert!(range.contains(&i), "reading {i} changed outside {range:?} (inserted at {index})");
                    prop_assert!(evaluated.contains_key(&i), "reading {i} changed but was not re-evaluated");
                }
            }
        }
    }
}
