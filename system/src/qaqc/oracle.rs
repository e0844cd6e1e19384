//! What qaqc's derived outputs must end up as, computed offline from the
//! readings, in one pass: the checkers of both worlds and the property tests
//! compare the output topics with these.
//!
//! - [`expected_windows`]: each window's final values from the clean
//!   readings, whatever order they arrived in;
//! - [`expected_flags`]: each reading's final flags by the rules over its
//!   sensor's complete series;
//! - [`expected_window_alerts`]: the window alerts the machines derive from
//!   the aggregates as emitted (partition order);
//! - [`final_windows`] and [`final_flags`]: what the output topics say now
//!   (the highest revision wins), with the anomalies in them.

use super::alerts::{AlertEvent, WindowAlertState, WindowEmission};
use super::config::QaqcSettings;
use super::flags::{FlagSet, SeriesView, flags_of_series};
use super::records::{CleanReading, FlagRevision, WindowAggregate};
use super::window::{WindowAcc, WindowValues, window_start};
use std::collections::BTreeMap;

/// A reading's identity: (gateway id, sensor id, seq).
pub type Identity = (String, String, u64);

/// What the windows need of a clean reading.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanPoint {
    /// Identity.
    pub identity: Identity,
    /// Event time, ms.
    pub event_time_ms: i64,
    /// Moisture, vol%.
    pub moisture_pct: f64,
    /// Soil temperature, °C.
    pub soil_temp_c: Option<f64>,
    /// Bulk EC, dS/m.
    pub bulk_ec_ds_m: Option<f64>,
    /// Supply voltage, V.
    pub battery_v: Option<f64>,
}

impl CleanPoint {
    /// The point of a clean record.
    pub fn of_clean(clean: &CleanReading) -> Self {
        Self {
            identity: (
                clean.gateway_id.clone(),
                clean.sensor_id.clone(),
                clean.seq.max(0) as u64,
            ),
            event_time_ms: clean.event_time,
            moisture_pct: clean.moisture_pct,
            soil_temp_c: clean.soil_temp_c,
            bulk_ec_ds_m: clean.bulk_ec_ds_m,
            battery_v: clean.battery_v,
        }
    }

    /// The point of a raw reading that passed every check.
    pub fn of_reading(r: &crate::model::Reading) -> Self {
        Self {
            identity: (r.gateway_id.clone(), r.sensor_id.clone(), r.seq),
            event_time_ms: r.event_time_ms,
            moisture_pct: r.moisture_vwc * 100.0,
            soil_temp_c: r.soil_temp_c,
            bulk_ec_ds_m: r.bulk_ec_ds_m,
            battery_v: r.battery_v,
        }
    }
}

/// The final values of every window, by (sensor, window start).
pub fn expected_windows<'a>(
    points: impl IntoIterator<Item = &'a CleanPoint>,
    size_ms: i64,
) -> BTreeMap<(String, i64), WindowValues> {
    let mut accs: BTreeMap<(String, i64), WindowAcc> = BTreeMap::new();
    for p in points {
        let start = window_start(p.event_time_ms, size_ms);
        accs.entry((p.identity.1.clone(), start)).or_default().add(
            p.moisture_pct,
            p.soil_temp_c,
            p.bulk_ec_ds_m,
        );
    }
    accs.into_iter().map(|(k, acc)| (k, acc.values())).collect()
}

/// The final flags of every reading: the rules over each sensor's series
/// (readings ordered by event time, gateway id, seq).
pub fn expected_flags<'a>(
    points: impl IntoIterator<Item = &'a CleanPoint>,
    settings: &QaqcSettings,
) -> BTreeMap<Identity, FlagSet> {
    let mut by_sensor: BTreeMap<String, Vec<&CleanPoint>> = BTreeMap::new();
    for p in points {
        by_sensor.entry(p.identity.1.clone()).or_default().push(p);
    }
    let saturation = settings.checks.saturation_pct();
    let mut out = BTreeMap::new();
    for (_, mut series) in by_sensor {
        series.sort_by(|a, b| {
            (a.event_time_ms, &a.identity.0, a.identity.2).cmp(&(
                b.event_time_ms,
                &b.identity.0,
                b.identity.2,
            ))
        });
        let times: Vec<i64> = series.iter().map(|p| p.event_time_ms).collect();
        let moisture: Vec<f64> = series.iter().map(|p| p.moisture_pct).collect();
        let temp: Vec<Option<f64>> = series.iter().map(|p| p.soil_temp_c).collect();
        let battery: Vec<Option<f64>> = series.iter().map(|p| p.battery_v).collect();
        let view = SeriesView {
            times_ms: &times,
            moisture_pct: &moisture,
            soil_temp_c: &temp,
            battery_v: &battery,
        };
        for (p, flags) in series
            .iter()
            .zip(flags_of_series(view, &settings.flags, saturation))
        {
            out.insert(p.identity.clone(), flags);
        }
    }
    out
}

/// The window alerts the machines derive from `aggregates` (in the order
/// they were written, i.e. offset order within a partition), by sensor.
pub fn expected_window_alerts<'a>(
    aggregates: impl IntoIterator<Item = &'a WindowAggregate>,
    settings: &QaqcSettings,
) -> BTreeMap<String, Vec<AlertEvent>> {
    let mut machines: BTreeMap<String, WindowAlertState> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<AlertEvent>> = BTreeMap::new();
    for a in aggregates {
        let emission = WindowEmission {
            start_ms: a.window_start,
            end_ms: a.window_end,
            depth_cm: a.depth_cm,
            moisture_mean_pct: a.moisture_pct_mean,
            ec_mean_ds_m: a.bulk_ec_ds_m_mean,
            historical: a.historical,
        };
        let events = machines.entry(a.sensor_id.clone()).or_default().step(
            &emission,
            settings.windows.size_ms,
            &settings.alerts,
        );
        out.entry(a.sensor_id.clone()).or_default().extend(events);
    }
    out
}

/// What went wrong in a stream of revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionAnomalies {
    /// The same revision written twice (exactly-once broken).
    pub duplicated: Vec<String>,
    /// A revision not above the previous one of its key (in offset order).
    pub out_of_order: Vec<String>,
}

/// Each window's latest revision and values, by (sensor, window start).
pub type FinalWindows = BTreeMap<(String, i64), (i32, WindowValues)>;

/// The final values of each window in an aggregates stream (offset order):
/// the highest revision wins.
pub fn final_windows<'a>(
    aggregates: impl IntoIterator<Item = &'a WindowAggregate>,
) -> (FinalWindows, RevisionAnomalies) {
    let mut out: FinalWindows = BTreeMap::new();
    let mut anomalies = RevisionAnomalies::default();
    for a in aggregates {
        let key = (a.sensor_id.clone(), a.window_start);
        let values = WindowValues::of_record(a);
        match out.get(&key) {
            Some((revision, _)) if *revision == a.revision => anomalies.duplicated.push(format!(
                "window {} of {} revision {}",
                a.window_start, a.sensor_id, a.revision
            )),
            Some((revision, _)) if *revision > a.revision => anomalies.out_of_order.push(format!(
                "window {} of {}: revision {} after {}",
                a.window_start, a.sensor_id, a.revision, revision
            )),
            _ => {
                out.insert(key, (a.revision, values));
            }
        }
    }
    (out, anomalies)
}

/// The final flags of each reading: its clean record's, then its flag
/// revisions' (offset order; the highest revision wins).
pub fn final_flags<'a>(
    clean: impl IntoIterator<Item = &'a CleanReading>,
    revisions: impl IntoIterator<Item = &'a FlagRevision>,
) -> (BTreeMap<Identity, (i32, FlagSet)>, RevisionAnomalies) {
    let mut out: BTreeMap<Identity, (i32, FlagSet)> = BTreeMap::new();
    let mut anomalies = RevisionAnomalies::default();
    for c in clean {
        let identity = (c.gateway_id.clone(), c.sensor_id.clone(), c.seq.max(0) as u64);
        out.insert(identity, (0, FlagSet::from_codes(&c.flags).unwrap_or_default()));
    }
    for r in revisions {
        let identity = (r.gateway_id.clone(), r.sensor_id.clone(), r.seq.max(0) as u64);
        let flags = FlagSet::from_codes(&r.flags).unwrap_or_default();
        match out.get(&identity) {
            Some((revision, _)) if *revision == r.revision => anomalies
                .duplicated
                .push(format!("flags of {identity:?} revision {}", r.revision)),
            Some((revision, _)) if *revision > r.revision => anomalies.out_of_order.push(format!(
                "flags of {identity:?}: revision {} after {}",
                r.revision, revision
            )),
            Some(_) => {
                out.insert(identity, (r.revision, flags));
            }
            None => anomalies
                .out_of_order
                .push(format!("flag revision of {identity:?} without a clean record")),
        }
    }
    (out, anomalies)
}
