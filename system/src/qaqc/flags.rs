//! Soft quality flags: the ISMN automated flags that apply to soilstream's
//! fields (Dorigo et al. 2013, "Global automated quality control of in situ
//! soil moisture data from the International Soil Moisture Network", VZJ
//! 12(3); reference implementation TUW-GEO/flagit, whose thresholds are in
//! vol%, as here) plus three of our own. A flagged reading stays in the clean
//! topic: "we do not erase data, we flag".
//!
//! Every rule is a pure function of a sensor's series (its clean readings in
//! event-time order, moisture in vol%) and an index, so the stream processor
//! and the offline checker apply the very same rules: the processor
//! re-evaluates the readings whose neighbourhood changed (a new reading, a
//! late one inserted by a backfill) and emits a revision when a reading's
//! flags change; the checker evaluates the whole series once.
//!
//! Derivatives follow flagit: a Savitzky-Golay filter with window 3 and
//! polynomial order 2 reproduces the samples, so
//! `θ′(i) = (θ(i+1) − θ(i−1)) / 2` and `θ″(i) = θ(i+1) − 2θ(i) + θ(i−1)`,
//! per sample. A condition whose neighbours have not arrived yet is false,
//! which is what makes look-ahead flags provisional.
//!
//! | code | rule (all conditions must hold) |
//! |---|---|
//! | `D01` | soil temperature < `d01_soil_temp_max_c` (frozen soil reads low) |
//! | `D06` | spike: θ(i)/θ(i−1) outside 1 ± `spike_raise_factor`; i is a local maximum or minimum; 0.8 < abs(θ″(i−1)/θ″(i+1)) < 1.2; the variance of θ over t ± `spike_noise_window_ms` (i excluded) divided by its mean < `spike_noise_max` |
//! | `D07` / `D08` | break down / up between i−1 and i: abs(Δθ)/θ(i−1) > `break_rel_min`; abs(Δθ) > `break_abs_min_pct`; abs(θ′(i)) > `break_first_der_factor` × mean abs(θ′) over i ± `break_first_der_half_points`; abs(abs(θ″(i−1)/θ″(i)) − 1) ≤ `break_second_der_tolerance`; θ″(i) ≠ 0 and abs(θ″(i)/θ″(i+2)) > `break_second_der_ratio`; the sign of θ′(i) says which. Also `D07`: a drop to exactly 0 from above 5 vol% |
//! | `D09` | low constant after a break: a `D07` at k ≤ i ≤ k + 12 whose 13 readings k..k+12 have variance/mean < `d09_rel_variance_max` |
//! | `D10` | saturated plateau: the readings within t ± `d10_half_window_ms` span at least `d10_min_span_ms`, have variance ≤ `d10_variance_max` and a mean > `d10_saturation_fraction` × the saturation point |
//! | `STUCK` | the reading and every reading of the last `stuck_min_span_ms` carry identical moisture and temperature, at least `stuck_min_readings` of them |
//! | `BATTERY_LOW` | supply voltage < `battery_low_v` |
//!
//! Where we depart from flagit, and why: `D10` compares with a configured
//! saturation point instead of the highest value of two years of history
//! (bounded state), and has no rise/drop shape test; `D09` covers the 13
//! readings after the break (flagit extends it while the variance stays
//! low); `D02`–`D05` need air temperature, GLDAS or precipitation data the
//! readings do not carry.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A set of soft flags (bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlagSet(u16);

/// One soft flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// Soil temperature below 0 °C.
    D01,
    /// Spike.
    D06,
    /// Break down.
    D07,
    /// Break up.
    D08,
    /// Low constant values after a break down.
    D09,
    /// Saturated plateau.
    D10,
    /// Identical values for a configured span.
    Stuck,
    /// Supply voltage low.
    BatteryLow,
}

impl Flag {
    /// Every flag, in code order.
    pub const ALL: [Flag; 8] = [
        Flag::D01,
        Flag::D06,
        Flag::D07,
        Flag::D08,
        Flag::D09,
        Flag::D10,
        Flag::Stuck,
        Flag::BatteryLow,
    ];

    /// The code as written in records and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Flag::D01 => "D01",
            Flag::D06 => "D06",
            Flag::D07 => "D07",
            Flag::D08 => "D08",
            Flag::D09 => "D09",
            Flag::D10 => "D10",
            Flag::Stuck => "STUCK",
            Flag::BatteryLow => "BATTERY_LOW",
        }
    }

    /// The flag with this code.
    pub fn from_code(code: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.code() == code)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl FlagSet {
    /// No flag.
    pub const EMPTY: FlagSet = FlagSet(0);

    /// Whether `flag` is set.
    pub fn contains(self, flag: Flag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// Sets `flag`.
    pub fn insert(&mut self, flag: Flag) {
        self.0 |= flag.bit();
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags set, in code order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        Flag::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// The codes, in code order.
    pub fn codes(self) -> Vec<String> {
        self.iter().map(|f| f.code().to_string()).collect()
    }

    /// Parses codes; unknown codes are errors naming them.
    pub fn from_codes<S: AsRef<str>>(codes: &[S]) -> Result<FlagSet, String> {
        let mut set = FlagSet::EMPTY;
        for code in codes {
            let flag =
                Flag::from_code(code.as_ref()).ok_or_else(|| format!("unknown flag `{}`", code.as_ref()))?;
            set.insert(flag);
        }
        Ok(set)
    }
}

impl fmt::Display for FlagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let codes = self.codes();
        f.write_str(&codes.join(","))
    }
}

/// Thresholds of the soft flags (`[flags]` in the qaqc configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagConfig {
    /// `D01`: soil temperature below this, °C.
    pub d01_soil_temp_max_c: f64,
    /// `D06`: ratio to the previous reading outside 1 ± this.
    pub spike_raise_factor: f64,
    /// `D06`: half width of the noise window, ms.
    pub spike_noise_window_ms: i64,
    /// `D06`: variance / mean over the noise window below this.
    pub spike_noise_max: f64,
    /// `D07`/`D08`: relative change above this.
    pub break_rel_min: f64,
    /// `D07`/`D08`: absolute change above this, vol%.
    pub break_abs_min_pct: f64,
    /// `D07`/`D08`: first derivative above this many times its mean.
    pub break_first_der_factor: f64,
    /// `D07`/`D08`: half width of the first-derivative window, readings.
    pub break_first_der_half_points: usize,
    /// `D07`/`D08`: tolerance of abs(θ″(i−1)/θ″(i)) around 1.
    pub break_second_der_tolerance: f64,
    /// `D07`/`D08`: abs(θ″(i)/θ″(i+2)) above this.
    pub break_second_der_ratio: f64,
    /// `D09`: variance / mean of the 13 readings after a break below this.
    pub d09_rel_variance_max: f64,
    /// `D10`: half width of the plateau window, ms.
    pub d10_half_window_ms: i64,
    /// `D10`: the window's readings must span at least this, ms.
    pub d10_min_span_ms: i64,
    /// `D10`: variance over the window at most this, vol%².
    pub d10_variance_max: f64,
    /// `D10`: mean above this fraction of the saturation point.
    pub d10_saturation_fraction: f64,
    /// `STUCK`: identical values over at least this span, ms.
    pub stuck_min_span_ms: i64,
    /// `STUCK`: and at least this many readings.
    pub stuck_min_readings: usize,
    /// `BATTERY_LOW`: supply voltage below this, V.
    pub battery_low_v: f64,
}

impl Default for FlagConfig {
    fn default() -> Self {
        Self {
            d01_soil_temp_max_c: 0.0,
            spike_raise_factor: 0.15,
            spike_noise_window_ms: 12 * 3_600_000,
            spike_noise_max: 1.0,
            break_rel_min: 0.1,
            break_abs_min_pct: 1.0,
            break_first_der_factor: 10.0,
            break_first_der_half_points: 12,
            break_second_der_tolerance: 0.01,
            break_second_der_ratio: 10.0,
            d09_rel_variance_max: 0.001,
            d10_half_window_ms: 6 * 3_600_000,
            d10_min_span_ms: 11 * 3_600_000,
            d10_variance_max: 0.05,
            d10_saturation_fraction: 0.95,
            stuck_min_span_ms: 30 * 60_000,
            stuck_min_readings: 5,
            battery_low_v: 3.3,
        }
    }
}

/// Readings after the break that `D09` covers (13 in all, with the break).
pub const D09_POINTS: usize = 13;

impl FlagConfig {
    /// Checks ranges; `saturation_pct` is the saturation point in vol%.
    pub fn validate(&self) -> Result<(), String> {
        let positive_ms = [
            ("spike_noise_window_ms", self.spike_noise_window_ms),
            ("d10_half_window_ms", self.d10_half_window_ms),
            ("d10_min_span_ms", self.d10_min_span_ms),
            ("stuck_min_span_ms", self.stuck_min_span_ms),
        ];
        for (key, value) in positive_ms {
            if value <= 0 || value > 7 * 86_400_000 {
                return Err(format!("flags.{key} must be 1 ms to 7 days"));
            }
        }
        if self.d10_min_span_ms > 2 * self.d10_half_window_ms {
            return Err("flags.d10_min_span_ms must not exceed twice d10_half_window_ms".into());
        }
        if !(1..=1_000).contains(&self.break_first_der_half_points) {
            return Err("flags.break_first_der_half_points must be 1..=1000".into());
        }
        if !(2..=100_000).contains(&self.stuck_min_readings) {
            return Err("flags.stuck_min_readings must be 2..=100000".into());
        }
        let finite = [
            self.d01_soil_temp_max_c,
            self.spike_raise_factor,
            self.spike_noise_max,
            self.break_rel_min,
            self.break_abs_min_pct,
            self.break_first_der_factor,
            self.break_second_der_tolerance,
            self.break_second_der_ratio,
            self.d09_rel_variance_max,
            self.d10_variance_max,
            self.d10_saturation_fraction,
            self.battery_low_v,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err("flags thresholds must be finite numbers".into());
        }
        Ok(())
    }

    /// How far (in time) a reading's flags depend on its neighbours: a
    /// change at time t can change the flags of readings within t ± this.
    pub fn radius_ms(&self) -> i64 {
        self.spike_noise_window_ms
            .max(self.d10_half_window_ms)
            .max(self.stuck_min_span_ms)
    }

    /// How far (in readings) a reading's flags depend on its neighbours.
    pub fn radius_points(&self) -> usize {
        // D09 at i depends on a break up to 12 readings back, whose
        // first-derivative window reaches half_points further, plus the
        // three-point stencils of the derivatives.
        (D09_POINTS - 1) + self.break_first_der_half_points + 3
    }

    /// Readings after a reading needed before its flags are final (unless
    /// late data lands in its neighbourhood).
    pub fn lookahead_points(&self) -> usize {
        self.radius_points()
    }

    /// Time after a reading needed before its flags are final.
    pub fn lookahead_ms(&self) -> i64 {
        self.spike_noise_window_ms.max(self.d10_half_window_ms)
    }
}

/// One sensor's clean readings in event-time order, as the rules see them.
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'a> {
    /// Event times, ms, non-decreasing.
    pub times_ms: &'a [i64],
    /// Moisture, vol%.
    pub moisture_pct: &'a [f64],
    /// Soil temperature, °C.
    pub soil_temp_c: &'a [Option<f64>],
    /// Supply voltage, V.
    pub battery_v: &'a [Option<f64>],
}

impl SeriesView<'_> {
    /// Number of readings.
    pub fn len(&self) -> usize {
        self.times_ms.len()
    }

    /// Whether there is no reading.
    pub fn is_empty(&self) -> bool {
        self.times_ms.is_empty()
    }

    fn check(&self) {
        debug_assert_eq!(self.times_ms.len(), self.moisture_pct.len());
        debug_assert_eq!(self.times_ms.len(), self.soil_temp_c.len());
        debug_assert_eq!(self.times_ms.len(), self.battery_v.len());
        debug_assert!(self.times_ms.windows(2).all(|w| w[0] <= w[1]));
    }

    /// First index with time >= `t`.
    fn lower_bound(&self, t: i64) -> usize {
        self.times_ms.partition_point(|&x| x < t)
    }

    /// One past the last index with time <= `t`.
    fn upper_bound(&self, t: i64) -> usize {
        self.times_ms.partition_point(|&x| x <= t)
    }

    fn dd(&self, j: usize) -> f64 {
        let m = self.moisture_pct;
        m[j + 1] - 2.0 * m[j] + m[j - 1]
    }

    fn d(&self, j: usize) -> f64 {
        let m = self.moisture_pct;
        (m[j + 1] - m[j - 1]) / 2.0
    }
}

/// Population variance and mean of `values` (two passes, in order).
fn mean_variance(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    let mut count = 0usize;
    let mut sum = 0.0;
    for v in values.clone() {
        count += 1;
        sum += v;
    }
    if count == 0 {
        return None;
    }
    let mean = sum / count as f64;
    let squares: f64 = values.map(|v| (v - mean) * (v - mean)).sum();
    Some((mean, squares / count as f64))
}

/// The flags of reading `i` of `series`. `saturation_pct`: the saturation
/// point in vol% (`D10`; `None` disables it).
pub fn flags_at(
    series: SeriesView<'_>,
    i: usize,
    config: &FlagConfig,
    saturation_pct: Option<f64>,
) -> FlagSet {
    series.check();
    assert!(i < series.len(), "index {i} outside a series of {}", series.len());
    let mut flags = FlagSet::EMPTY;
    if series.soil_temp_c[i].is_some_and(|t| t < config.d01_soil_temp_max_c) {
        flags.insert(Flag::D01);
    }
    if series.battery_v[i].is_some_and(|v| v < config.battery_low_v) {
        flags.insert(Flag::BatteryLow);
    }
    if is_stuck(series, i, config) {
        flags.insert(Flag::Stuck);
    }
    if is_spike(series, i, config) {
        flags.insert(Flag::D06);
    }
    match break_at(series, i, config) {
        Some(Flag::D07) => flags.insert(Flag::D07),
        Some(Flag::D08) => flags.insert(Flag::D08),
        _ => {}
    }
    if is_low_constant_after_break(series, i, config) {
        flags.insert(Flag::D09);
    }
    if let Some(saturation) = saturation_pct
        && is_saturated_plateau(series, i, config, saturation)
    {
        flags.insert(Flag::D10);
    }
    flags
}

/// Whether a change further away than [`FlagConfig::radius_points`]
/// readings (but within [`FlagConfig::radius_ms`]) can change reading `i`'s
/// flags. Only the rules with a time window reach that far (`D06`'s noise
/// window, `D10`'s plateau window, `STUCK`'s look-back span), and each first
/// needs a shape around `i` that such a change cannot alter: a spike shape,
/// a value near the saturation level, a repeat of the previous reading. A
/// reading without any of them keeps its flags.
pub fn far_candidate(s: SeriesView<'_>, i: usize, config: &FlagConfig, saturation_pct: Option<f64>) -> bool {
    let n = s.len();
    let m = s.moisture_pct;
    if i >= 1
        && m[i].to_bits() == m[i - 1].to_bits()
        && s.soil_temp_c[i].map(f64::to_bits) == s.soil_temp_c[i - 1].map(f64::to_bits)
    {
        return true;
    }
    if i >= 2 && i + 2 < n && m[i - 1] > 0.0 {
        let ratio = m[i] / m[i - 1];
        let jump = ratio > 1.0 + config.spike_raise_factor || ratio < 1.0 - config.spike_raise_factor;
        let extreme = (m[i] > m[i - 1] && m[i] > m[i + 1]) || (m[i] < m[i - 1] && m[i] < m[i + 1]);
        if jump && extreme {
            return true;
        }
    }
    if let Some(saturation) = saturation_pct {
        // The plateau window holds at most n readings.
        let level = config.d10_saturation_fraction * saturation;
        if m[i] >= level - (config.d10_variance_max * n as f64).sqrt() {
            return true;
        }
    }
    false
}

/// Whether every rule of reading `i` has the neighbours it needs.
pub fn lookahead_complete(series: SeriesView<'_>, i: usize, config: &FlagConfig) -> bool {
    let n = series.len();
    n - 1 - i >= config.lookahead_points()
        && series.times_ms[n - 1].saturating_sub(series.times_ms[i]) >= config.lookahead_ms()
}

fn is_stuck(s: SeriesView<'_>, i: usize, config: &FlagConfig) -> bool {
    let same = |j: usize| {
        s.moisture_pct[j].to_bits() == s.moisture_pct[i].to_bits()
            && s.soil_temp_c[j].map(f64::to_bits) == s.soil_temp_c[i].map(f64::to_bits)
    };
    if i == 0 || !same(i - 1) {
        return false;
    }
    let t = s.times_ms[i];
    let mut count = 1usize;
    let mut j = i;
    while j > 0 {
        j -= 1;
        if !same(j) {
            return false;
        }
        count += 1;
        if t - s.times_ms[j] >= config.stuck_min_span_ms {
            return count >= config.stuck_min_readings;
        }
    }
    false
}

fn is_spike(s: SeriesView<'_>, i: usize, config: &FlagConfig) -> bool {
    let n = s.len();
    if i < 2 || i + 2 >= n {
        return false;
    }
    let m = s.moisture_pct;
    let previous = m[i - 1];
    if previous <= 0.0 {
        return false;
    }
    let ratio = m[i] / previous;
    if !(ratio > 1.0 + config.spike_raise_factor || ratio < 1.0 - config.spike_raise_factor) {
        return false;
    }
    let extreme = (m[i] > m[i - 1] && m[i] > m[i + 1]) || (m[i] < m[i - 1] && m[i] < m[i + 1]);
    if !extreme {
        return false;
    }
    let dd_next = s.dd(i + 1);
    if dd_next == 0.0 {
        return false;
    }
    let second_ratio = (s.dd(i - 1) / dd_next).abs();
    if !(second_ratio > 0.8 && second_ratio < 1.2) {
        return false;
    }
    let t = s.times_ms[i];
    let lo = s.lower_bound(t.saturating_sub(config.spike_noise_window_ms));
    let hi = s.upper_bound(t.saturating_add(config.spike_noise_window_ms));
    let window = (lo..hi).filter(|&j| j != i).map(|j| m[j]);
    match mean_variance(window) {
        Some((mean, variance)) if mean > 0.0 => variance / mean < config.spike_noise_max,
        _ => false,
    }
}

/// `Some(D07)` or `Some(D08)` for a break between readings `i − 1` and `i`.
pub fn break_at(s: SeriesView<'_>, i: usize, config: &FlagConfig) -> Option<Flag> {
    let n = s.len();
    if i < 2 || i + 3 >= n {
        return None;
    }
    let m = s.moisture_pct;
    let (a, b) = (m[i - 1], m[i]);
    if a == 0.0 {
        return None;
    }
    if b == 0.0 && a > 5.0 {
        return Some(Flag::D07);
    }
    let delta = b - a;
    if (delta / a).abs() <= config.break_rel_min || delta.abs() <= config.break_abs_min_pct {
        return None;
    }
    let d_i = s.d(i);
    let half = config.break_first_der_half_points;
    let lo = i.saturating_sub(half).max(1);
    let hi = (i + half).min(n - 2);
    let count = hi + 1 - lo;
    let mean_abs: f64 = (lo..=hi).map(|j| s.d(j).abs()).sum::<f64>() / count as f64;
    if d_i.abs() <= config.break_first_der_factor * mean_abs {
        return None;
    }
    let dd_i = s.dd(i);
    if dd_i == 0.0 {
        return None;
    }
    if ((s.dd(i - 1) / dd_i).abs() - 1.0).abs() > config.break_second_der_tolerance {
        return None;
    }
    let dd_after = s.dd(i + 2);
    let ratio = if dd_after == 0.0 {
        f64::INFINITY
    } else {
        (dd_i / dd_after).abs()
    };
    if ratio <= config.break_second_der_ratio {
        return None;
    }
    Some(if d_i < 0.0 { Flag::D07 } else { Flag::D08 })
}

fn is_low_constant_after_break(s: SeriesView<'_>, i: usize, config: &FlagConfig) -> bool {
    let n = s.len();
    let m = s.moisture_pct;
    let first = i.saturating_sub(D09_POINTS - 1).max(1);
    (first..=i).any(|k| {
        // A break needs a step of more than the absolute minimum (or a drop
        // to exactly 0): test that before the whole rule.
        let step = (m[k] - m[k - 1]).abs() > config.break_abs_min_pct || (m[k] == 0.0 && m[k - 1] > 5.0);
        step && k + D09_POINTS <= n
            && break_at(s, k, config) == Some(Flag::D07)
            && match mean_variance(s.moisture_pct[k..k + D09_POINTS].iter().copied()) {
                Some((mean, variance)) if mean > 0.0 => variance / mean < config.d09_rel_variance_max,
                Some((_, variance)) => variance == 0.0,
                None => false,
            }
    })
}

fn is_saturated_plateau(s: SeriesView<'_>, i: usize, config: &FlagConfig, saturation_pct: f64) -> bool {
    let level = config.d10_saturation_fraction * saturation_pct;
    // The window holds at most every reading: a first bound without
    // searching the window's ends (see the one below).
    if s.moisture_pct[i] < level - (config.d10_variance_max * s.len() as f64).sqrt() {
        return false;
    }
    let t = s.times_ms[i];
    let lo = s.lower_bound(t.saturating_sub(config.d10_half_window_ms));
    let hi = s.upper_bound(t.saturating_add(config.d10_half_window_ms));
    if hi <= lo || s.times_ms[hi - 1] - s.times_ms[lo] < config.d10_min_span_ms {
        return false;
    }
    // A reading more than sqrt(variance_max * count) below the level cannot
    // be part of a window whose mean is above it and whose variance is
    // within the bound: skip the window sum.
    let count = (hi - lo) as f64;
    if s.moisture_pct[i] < level - (config.d10_variance_max * count).sqrt() {
        return false;
    }
    match mean_variance(s.moisture_pct[lo..hi].iter().copied()) {
        Some((mean, variance)) => variance <= config.d10_variance_max && mean > level,
        None => false,
    }
}

/// The flags of every reading of `series` (the offline evaluation).
pub fn flags_of_series(
    series: SeriesView<'_>,
    config: &FlagConfig,
    saturation_pct: Option<f64>,
) -> Vec<FlagSet> {
    (0..series.len())
        .map(|i| flags_at(series, i, config, saturation_pct))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Series {
        times: Vec<i64>,
        moisture: Vec<f64>,
        temp: Vec<Option<f64>>,
        battery: Vec<Option<f64>>,
    }

    impl Series {
        /// One reading a minute with these moisture values, 15 °C, 3.6 V.
        fn minutely(moisture: &[f64]) -> Self {
            Self {
                times: (0..moisture.len() as i64).map(|i| i * 60_000).collect(),
                moisture: moisture.to_vec(),
                temp: moisture
                    .iter()
                    .enumerate()
                    .map(|(i, _)| Some(15.0 + i as f64 * 0.01))
                    .collect(),
                battery: vec![Some(3.6); moisture.len()],
            }
        }

        fn view(&self) -> SeriesView<'_> {
            SeriesView {
                times_ms: &self.times,
                moisture_pct: &self.moisture,
                soil_temp_c: &self.temp,
                battery_v: &self.battery,
            }
        }

        fn flagged(&self, flag: Flag) -> Vec<usize> {
            flags_of_series(self.view(), &FlagConfig::default(), Some(45.0))
                .iter()
                .enumerate()
                .filter(|(_, f)| f.contains(flag))
                .map(|(i, _)| i)
                .collect()
        }
    }

    /// A slowly drying series with a little deterministic wobble.
    fn drying(len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| 25.0 - i as f64 * 0.001 + if i % 2 == 0 { 0.01 } else { -0.01 })
            .collect()
    }

    #[test]
    fn codes_round_trip() {
        let mut set = FlagSet::EMPTY;
        set.insert(Flag::D06);
        set.insert(Flag::Stuck);
        assert_eq!(set.codes(), ["D06", "STUCK"]);
        assert_eq!(FlagSet::from_codes(&set.codes()).unwrap(), set);
        assert!(FlagSet::from_codes(&["D99"]).is_err());
        assert_eq!(set.to_string(), "D06,STUCK");
    }

    #[test]
    fn a_one_sample_spike_is_d06_once_its_neighbours_arrived() {
        let mut m = drying(60);
        m[30] += 12.0;
        let s = Series::minutely(&m);
        assert_eq!(s.flagged(Flag::D06), [30]);
        // Provisional: without the two readings after it the rule cannot hold.
        let cut = Series::minutely(&m[..32]);
        assert!(cut.flagged(Flag::D06).is_empty());
        let enough = Series::minutely(&m[..33]);
        assert_eq!(enough.flagged(Flag::D06), [30]);
    }

    #[test]
    fn a_plateau_step_is_not_a_spike_and_a_noisy_series_hides_spikes() {
        let mut m = drying(60);
        for v in &mut m[30..] {
            *v += 12.0;
        }
        assert!(Series::minutely(&m).flagged(Flag::D06).is_empty());
        // Variance/mean of the surroundings above 1: no spike.
        let mut noisy: Vec<f64> = (0..60).map(|i| if i % 2 == 0 { 10.0 } else { 18.0 }).collect();
        noisy[31] = 40.0;
        assert!(Series::minutely(&noisy).flagged(Flag::D06).is_empty());
    }

    #[test]
    fn a_clean_step_down_is_a_break_d07_and_up_d08() {
        let mut down = vec![25.0; 40];
        for v in &mut down[20..] {
            *v = 20.0;
        }
        assert_eq!(Series::minutely(&down).flagged(Flag::D07), [20]);
        let up: Vec<f64> = down.iter().map(|v| 45.0 - v).collect();
        assert_eq!(Series::minutely(&up).flagged(Flag::D08), [20]);
        // A small step (below 1 vol%) is no break.
        let mut small = vec![25.0; 40];
        for v in &mut small[20..] {
            *v = 24.5;
        }
        assert!(Series::minutely(&small).flagged(Flag::D07).is_empty());
    }

    #[test]
    fn a_drop_to_zero_is_d07_and_low_constant_after_it_is_d09() {
        let mut m = vec![25.0; 50];
        for v in &mut m[20..] {
            *v = 0.0;
        }
        let s = Series::minutely(&m);
        assert_eq!(s.flagged(Flag::D07), [20]);
        assert_eq!(s.flagged(Flag::D09), (20..33).collect::<Vec<_>>());
    }

    #[test]
    fn a_long_flat_run_near_saturation_is_d10() {
        // 24 h at 44.5 vol% with a sampling every 10 min, saturation 45.
        let n = 24 * 6;
        let mut s = Series::minutely(&vec![44.5; n]);
        s.times = (0..n as i64).map(|i| i * 600_000).collect();
        // Not stuck: the temperature moves.
        let d10 = s.flagged(Flag::D10);
        // Readings whose window spans at least 11 h: 5 h from either end.
        assert_eq!(d10, (30..=n - 31).collect::<Vec<_>>());
        // Below 95 % of saturation: no plateau.
        let mut low = Series::minutely(&vec![40.0; n]);
        low.times = s.times.clone();
        assert!(low.flagged(Flag::D10).is_empty());
    }

    #[test]
    fn identical_values_for_the_span_are_stuck_from_then_on() {
        let mut s = Series::minutely(&drying(80));
        for i in 40..75 {
            s.moisture[i] = 21.5;
            s.temp[i] = Some(13.25);
        }
        // 30 min of identical readings: the reading 30 min after the first
        // identical one is the first flagged.
        assert_eq!(s.flagged(Flag::Stuck), (70..75).collect::<Vec<_>>());
    }

    #[test]
    fn frozen_soil_and_low_battery() {
        let mut s = Series::minutely(&drying(10));
        s.temp[3] = Some(-0.5);
        // No temperature: D01 has nothing to judge.
        s.temp[4] = None;
        s.battery[5] = Some(3.1);
        s.battery[6] = None;
        assert_eq!(s.flagged(Flag::D01), [3]);
        assert_eq!(s.flagged(Flag::BatteryLow), [5]);
    }

    #[test]
    fn radius_covers_every_rule() {
        let c = FlagConfig::default();
        assert_eq!(c.radius_ms(), 12 * 3_600_000);
        assert!(c.radius_points() >= D09_POINTS + c.break_first_der_half_points);
        assert!(c.validate().is_ok());
        let bad = FlagConfig {
            d10_min_span_ms: c.d10_half_window_ms * 3,
            ..c
        };
        assert!(bad.validate().is_err());
    }
}
