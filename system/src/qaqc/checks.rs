//! Hard checks: what sends a raw record to quarantine instead of the clean
//! topic. Quarantine keeps the original bytes with a reason code and a
//! detail; nothing on input stops the processor.
//!
//! | reason | when |
//! |---|---|
//! | `undecodable` | not the Confluent wire format, or the body does not decode with its writer schema |
//! | `unknown_schema_id` | the registry has no schema with the record's id |
//! | `unreadable_schema` | the writer schema is not a reading schema qaqc can read |
//! | `invalid_identity` | empty or over-long gateway or sensor id, control characters |
//! | `key_mismatch` | the record key is not the sensor id (order and partitioning rest on it) |
//! | `identity_conflict` | an identity already seen, with different values |
//! | `non_finite` | a NaN or infinite value |
//! | `C01` | moisture below 0 m3/m3 (ISMN C01) |
//! | `C02` | moisture above `c02_max_vwc` (ISMN C02: 0.60 m3/m3) |
//! | `C03` | moisture above the saturation point `saturation_vwc` (ISMN C03) |
//! | `implausible_value` | temperature, EC, voltage or depth outside the configured physical ranges |
//! | `future_event_time` | event time more than `max_future_ms` ahead of the processor's clock |
//! | `event_time_before_min` | event time before `min_event_time_ms` (a clock reset to its epoch) |
//! | `too_late` | event time older than the sensor's event-time high-water minus the state horizon |

use crate::model::{Reading, check_id};
use serde::{Deserialize, Serialize};

/// Why a record went to quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QuarantineReason {
    /// Not decodable.
    Undecodable,
    /// Unknown schema id.
    UnknownSchemaId,
    /// A writer schema qaqc cannot read.
    UnreadableSchema,
    /// Bad identity fields.
    InvalidIdentity,
    /// Key is not the sensor id.
    KeyMismatch,
    /// Same identity, different values.
    IdentityConflict,
    /// NaN or infinity.
    NonFinite,
    /// Moisture below 0.
    C01,
    /// Moisture above the geophysical maximum.
    C02,
    /// Moisture above saturation.
    C03,
    /// Another value outside its physical range.
    ImplausibleValue,
    /// Event time in the future.
    FutureEventTime,
    /// Event time before the configured minimum.
    EventTimeBeforeMin,
    /// Older than the state horizon.
    TooLate,
}

impl QuarantineReason {
    /// Every reason.
    pub const ALL: [QuarantineReason; 14] = [
        QuarantineReason::Undecodable,
        QuarantineReason::UnknownSchemaId,
        QuarantineReason::UnreadableSchema,
        QuarantineReason::InvalidIdentity,
        QuarantineReason::KeyMismatch,
        QuarantineReason::IdentityConflict,
        QuarantineReason::NonFinite,
        QuarantineReason::C01,
        QuarantineReason::C02,
        QuarantineReason::C03,
        QuarantineReason::ImplausibleValue,
        QuarantineReason::FutureEventTime,
        QuarantineReason::EventTimeBeforeMin,
        QuarantineReason::TooLate,
    ];

    /// The code in the `qaqc.reason` header and in metrics.
    pub fn code(self) -> &'static str {
        match self {
            QuarantineReason::Undecodable => "undecodable",
            QuarantineReason::UnknownSchemaId => "unknown_schema_id",
            QuarantineReason::UnreadableSchema => "unreadable_schema",
            QuarantineReason::InvalidIdentity => "invalid_identity",
            QuarantineReason::KeyMismatch => "key_mismatch",
            QuarantineReason::IdentityConflict => "identity_conflict",
            QuarantineReason::NonFinite => "non_finite",
            QuarantineReason::C01 => "C01",
            QuarantineReason::C02 => "C02",
            QuarantineReason::C03 => "C03",
            QuarantineReason::ImplausibleValue => "implausible_value",
            QuarantineReason::FutureEventTime => "future_event_time",
            QuarantineReason::EventTimeBeforeMin => "event_time_before_min",
            QuarantineReason::TooLate => "too_late",
        }
    }

    /// Whether the record's identity counts as written (its repeats are
    /// repeats): true for readings refused for their values; false when the
    /// identity itself is unusable or already taken.
    pub fn carries_identity(self) -> bool {
        use QuarantineReason as R;
        matches!(
            self,
            R::NonFinite
                | R::C01
                | R::C02
                | R::C03
                | R::ImplausibleValue
                | R::FutureEventTime
                | R::EventTimeBeforeMin
                | R::TooLate
        )
    }

    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// Thresholds of the hard checks (`[checks]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// C02: highest plausible moisture, m3/m3.
    pub c02_max_vwc: f64,
    /// C03: the saturation point, m3/m3 (also the reference of `D10`);
    /// `None` skips C03 and D10, as flagit does without a saturation point.
    pub saturation_vwc: Option<f64>,
    /// Plausible soil temperature, °C.
    pub soil_temp_min_c: f64,
    /// Plausible soil temperature, °C.
    pub soil_temp_max_c: f64,
    /// Plausible bulk EC, dS/m.
    pub bulk_ec_max_ds_m: f64,
    /// Plausible supply voltage, V.
    pub battery_max_v: f64,
    /// Plausible probe depth, cm.
    pub depth_max_cm: i32,
    /// Event times more than this ahead of the processor's clock are refused, ms.
    pub max_future_ms: i64,
    /// Event times before this are refused, ms since the Unix epoch.
    pub min_event_time_ms: i64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            c02_max_vwc: 0.60,
            saturation_vwc: Some(0.50),
            soil_temp_min_c: -40.0,
            soil_temp_max_c: 80.0,
            bulk_ec_max_ds_m: 20.0,
            battery_max_v: 60.0,
            depth_max_cm: 2_000,
            max_future_ms: 5 * 60_000,
            // 2000-01-01T00:00:00Z
            min_event_time_ms: 946_684_800_000,
        }
    }
}

impl CheckConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.c02_max_vwc > 0.0 && self.c02_max_vwc <= 1.0) {
            return Err("checks.c02_max_vwc must be within (0, 1]".into());
        }
        if let Some(s) = self.saturation_vwc
            && !(s > 0.0 && s <= 1.0)
        {
            return Err("checks.saturation_vwc must be within (0, 1]".into());
        }
        if self.soil_temp_min_c.partial_cmp(&self.soil_temp_max_c) != Some(std::cmp::Ordering::Less) {
            return Err("checks.soil_temp_min_c must be below soil_temp_max_c".into());
        }
        if self.bulk_ec_max_ds_m.is_nan()
            || self.bulk_ec_max_ds_m <= 0.0
            || self.battery_max_v.is_nan()
            || self.battery_max_v <= 0.0
            || self.depth_max_cm <= 0
        {
            return Err("checks.bulk_ec_max_ds_m, battery_max_v and depth_max_cm must be positive".into());
        }
        if self.max_future_ms < 0 {
            return Err("checks.max_future_ms must not be negative".into());
        }
        Ok(())
    }

    /// The saturation point in vol%.
    pub fn saturation_pct(&self) -> Option<f64> {
        self.saturation_vwc.map(|s| s * 100.0)
    }
}

/// A failed hard check.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Reason code.
    pub reason: QuarantineReason,
    /// Detail for people.
    pub detail: String,
}

impl Rejection {
    /// A rejection.
    pub fn new(reason: QuarantineReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The checks that need no state: identity, finiteness, ranges, event time
/// against the processor's clock (`now_ms`). `too_late` and
/// `identity_conflict` need the sensor's state and are decided by the
/// processor.
pub fn hard_checks(
    reading: &Reading,
    key: Option<&[u8]>,
    now_ms: i64,
    config: &CheckConfig,
) -> Result<(), Rejection> {
    identity_checks(reading, key)?;
    value_checks(reading, now_ms, config)
}

/// The identity checks: ids well formed, key = sensor id. They come before
/// dedup (an identity must be usable to be deduplicated).
pub fn identity_checks(reading: &Reading, key: Option<&[u8]>) -> Result<(), Rejection> {
    use QuarantineReason as R;
    if let Err(e) = check_id("gateway_id", &reading.gateway_id).and(check_id("sensor_id", &reading.sensor_id))
    {
        return Err(Rejection::new(R::InvalidIdentity, e.to_string()));
    }
    if key != Some(reading.sensor_id.as_bytes()) {
        return Err(Rejection::new(
            R::KeyMismatch,
            format!(
                "record key {:?} is not the sensor id {:?}",
                key.map(String::from_utf8_lossy),
                reading.sensor_id
            ),
        ));
    }
    Ok(())
}

/// The value checks: finiteness, physical ranges, event time against the
/// processor's clock `now_ms`.
pub fn value_checks(reading: &Reading, now_ms: i64, config: &CheckConfig) -> Result<(), Rejection> {
    use QuarantineReason as R;
    let finite = [
        ("moisture_vwc", Some(reading.moisture_vwc)),
        ("soil_temp_c", reading.soil_temp_c),
        ("bulk_ec_ds_m", reading.bulk_ec_ds_m),
        ("battery_v", reading.battery_v),
    ];
    for (field, value) in finite {
        if let Some(v) = value
            && !v.is_finite()
        {
            return Err(Rejection::new(R::NonFinite, format!("{field} is {v}")));
        }
    }
    let m = reading.moisture_vwc;
    if m < 0.0 {
        return Err(Rejection::new(R::C01, format!("moisture {m} m3/m3 is below 0")));
    }
    if m > config.c02_max_vwc {
        return Err(Rejection::new(
            R::C02,
            format!("moisture {m} m3/m3 is above {} m3/m3", config.c02_max_vwc),
        ));
    }
    if let Some(saturation) = config.saturation_vwc
        && m > saturation
    {
        return Err(Rejection::new(
            R::C03,
            format!("moisture {m} m3/m3 is above the saturation point {saturation} m3/m3"),
        ));
    }
    if let Some(t) = reading.soil_temp_c
        && (t < config.soil_temp_min_c || t > config.soil_temp_max_c)
    {
        return Err(Rejection::new(
            R::ImplausibleValue,
            format!(
                "soil temperature {t} degC outside {}..={}",
                config.soil_temp_min_c, config.soil_temp_max_c
            ),
        ));
    }
    if let Some(ec) = reading.bulk_ec_ds_m
        && !(0.0..=config.bulk_ec_max_ds_m).contains(&ec)
    {
        return Err(Rejection::new(
            R::ImplausibleValue,
            format!("bulk EC {ec} dS/m outside 0..={}", config.bulk_ec_max_ds_m),
        ));
    }
    if let Some(v) = reading.battery_v
        && !(0.0..=config.battery_max_v).contains(&v)
    {
        return Err(Rejection::new(
            R::ImplausibleValue,
            format!("supply voltage {v} V outside 0..={}", config.battery_max_v),
        ));
    }
    if !(0..=config.depth_max_cm).contains(&reading.depth_cm) {
        return Err(Rejection::new(
            R::ImplausibleValue,
            format!(
                "depth {} cm outside 0..={}",
                reading.depth_cm, config.depth_max_cm
            ),
        ));
    }
    let ahead_ms = reading.event_time_ms.saturating_sub(now_ms);
    if ahead_ms > config.max_future_ms {
        return Err(Rejection::new(
            R::FutureEventTime,
            format!(
                "event time {} is {} s ahead of the processor clock (at most {} s allowed)",
                reading.event_time_ms,
                ahead_ms / 1_000,
                config.max_future_ms / 1_000
            ),
        ));
    }
    if reading.event_time_ms < config.min_event_time_ms {
        return Err(Rejection::new(
            R::EventTimeBeforeMin,
            format!(
                "event time {} is before {} (a clock reset?)",
                reading.event_time_ms, config.min_event_time_ms
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            gateway_id: "gw".into(),
            sensor_id: "s".into(),
            seq: 1,
            event_time_ms: 1_777_593_600_000,
            moisture_vwc: 0.25,
            soil_temp_c: Some(12.0),
            bulk_ec_ds_m: Some(0.5),
            depth_cm: 10,
            battery_v: Some(3.6),
            source_flag: None,
        }
    }

    fn reason(r: &Reading) -> Option<QuarantineReason> {
        hard_checks(
            r,
            Some(r.sensor_id.as_bytes()),
            1_777_593_600_000,
            &CheckConfig::default(),
        )
        .err()
        .map(|e| e.reason)
    }

    #[test]
    fn each_check_has_its_reason() {
        use QuarantineReason as R;
        assert_eq!(reason(&reading()), None);
        type Edit = Box<dyn Fn(&mut Reading)>;
        let cases: Vec<(Edit, R)> = vec![
            (Box::new(|r| r.moisture_vwc = -0.01), R::C01),
            (Box::new(|r| r.moisture_vwc = 0.61), R::C02),
            (Box::new(|r| r.moisture_vwc = 0.55), R::C03),
            (Box::new(|r| r.moisture_vwc = f64::NAN), R::NonFinite),
            (Box::new(|r| r.battery_v = Some(f64::INFINITY)), R::NonFinite),
            (Box::new(|r| r.soil_temp_c = Some(1e300)), R::ImplausibleValue),
            (Box::new(|r| r.depth_cm = i32::MAX), R::ImplausibleValue),
            (
                Box::new(|r| r.event_time_ms = 253_402_300_799_000),
                R::FutureEventTime,
            ),
            (Box::new(|r| r.event_time_ms = 0), R::EventTimeBeforeMin),
            (Box::new(|r| r.sensor_id = String::new()), R::InvalidIdentity),
        ];
        for (edit, expected) in cases {
            let mut r = reading();
            edit(&mut r);
            assert_eq!(reason(&r), Some(expected), "{r:?}");
        }
        let r = reading();
        assert_eq!(
            hard_checks(&r, Some(b"other"), 0, &CheckConfig::default())
                .unwrap_err()
                .reason,
            R::KeyMismatch
        );
        for reason in R::ALL {
            assert_eq!(R::from_code(reason.code()), Some(reason));
        }
    }
}
