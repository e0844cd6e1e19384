//! The reading: what a soil probe measured, when, and its identity.
//!
//! Identity is `(gateway_id, sensor_id, seq)`. `seq` is strictly increasing per
//! sensor and never reused, even across reboots (see the spool's sequence
//! reservations); gaps are allowed. `event_time_ms` is when the reading was
//! measured, by the gateway clock, in milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

/// Upper bound on the length of a gateway or sensor identifier, in bytes.
pub const ID_MAX_BYTES: usize = 128;

/// Upper bound on the length of a provider's quality flag, in bytes (ISMN's
/// longest combinations, such as `D01,D02,D03,D04,D05`, take 19).
pub const SOURCE_FLAG_MAX_BYTES: usize = 64;

/// One measurement of one soil probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Field gateway that sampled the probe.
    pub gateway_id: String,
    /// Probe identifier, unique across the network; also the Kafka key.
    pub sensor_id: String,
    /// Per-sensor sequence number (strictly increasing, never reused).
    pub seq: u64,
    /// Measurement time in ms since the Unix epoch (gateway clock).
    pub event_time_ms: i64,
    /// Volumetric water content in m3/m3; 0.0-1.0 for a physically valid reading.
    pub moisture_vwc: f64,
    /// Soil temperature in degrees Celsius; `None` when the source did not
    /// record one (a field log's missing value: never invented).
    pub soil_temp_c: Option<f64>,
    /// Bulk electrical conductivity in dS/m, if the probe measures it.
    pub bulk_ec_ds_m: Option<f64>,
    /// Installation depth below the surface in cm.
    pub depth_cm: i32,
    /// Supply voltage of the probe or logger in volts, if reported.
    pub battery_v: Option<f64>,
    /// The data provider's own quality flag, verbatim (an ISMN flag such as
    /// `D03,D05`, a logger status column); `None` when the source has none.
    /// Carried to the clean topic and the archive so QA/QC's flags can be
    /// compared with the provider's.
    #[serde(default)]
    pub source_flag: Option<String>,
}

/// The identity of a reading: unique across the whole network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadingId {
    /// Gateway that produced the reading.
    pub gateway_id: String,
    /// Probe identifier.
    pub sensor_id: String,
    /// Per-sensor sequence number.
    pub seq: u64,
}

impl Reading {
    /// The identity of this reading.
    pub fn id(&self) -> ReadingId {
        ReadingId {
            gateway_id: self.gateway_id.clone(),
            sensor_id: self.sensor_id.clone(),
            seq: self.seq,
        }
    }

    /// Whether `other` carries exactly the same identity and values, floats
    /// compared bit for bit (so a NaN equals the same NaN, unlike `==`).
    pub fn same_values(&self, other: &Reading) -> bool {
        fn bits(v: Option<f64>) -> Option<u64> {
            v.map(f64::to_bits)
        }
        self.gateway_id == other.gateway_id
            && self.sensor_id == other.sensor_id
            && self.seq == other.seq
            && self.event_time_ms == other.event_time_ms
            && self.moisture_vwc.to_bits() == other.moisture_vwc.to_bits()
            && bits(self.soil_temp_c) == bits(other.soil_temp_c)
            && bits(self.bulk_ec_ds_m) == bits(other.bulk_ec_ds_m)
            && self.depth_cm == other.depth_cm
            && bits(self.battery_v) == bits(other.battery_v)
            && self.source_flag == other.source_flag
    }

    /// Checks the structural rules every reading must satisfy before it may
    /// enter a spool or a topic. Physical plausibility (moisture range, stuck
    /// values, spikes) is the QA/QC stage's business, not this one: an
    /// out-of-range moisture is still a faithful record of what the probe said.
    pub fn check_structure(&self) -> Result<(), InvalidReading> {
        check_id("gateway_id", &self.gateway_id)?;
        check_id("sensor_id", &self.sensor_id)?;
        if !self.moisture_vwc.is_finite() {
            return Err(InvalidReading::new("moisture_vwc", "not a finite number"));
        }
        if let Some(t) = self.soil_temp_c
            && !t.is_finite()
        {
            return Err(InvalidReading::new("soil_temp_c", "not a finite number"));
        }
        if let Some(ec) = self.bulk_ec_ds_m
            && !ec.is_finite()
        {
            return Err(InvalidReading::new("bulk_ec_ds_m", "not a finite number"));
        }
        if let Some(v) = self.battery_v
            && !v.is_finite()
        {
            return Err(InvalidReading::new("battery_v", "not a finite number"));
        }
        if let Some(flag) = &self.source_flag {
            if flag.len() > SOURCE_FLAG_MAX_BYTES {
                return Err(InvalidReading::new("source_flag", "longer than 64 bytes"));
            }
            if flag.chars().any(|c| c.is_control()) {
                return Err(InvalidReading::new("source_flag", "contains control characters"));
            }
        }
        if self.seq > i64::MAX as u64 {
            return Err(InvalidReading::new("seq", "does not fit an Avro long"));
        }
        Ok(())
    }
}

/// Checks an identifier (gateway or sensor id) against the rules every
/// reading's identity must satisfy: 1 to [`ID_MAX_BYTES`] bytes, no control
/// characters. `field` names it in the error.
pub fn check_id(field: &'static str, value: &str) -> Result<(), InvalidReading> {
    if value.is_empty() {
        return Err(InvalidReading::new(field, "empty"));
    }
    if value.len() > ID_MAX_BYTES {
        return Err(InvalidReading::new(field, "longer than 128 bytes"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(InvalidReading::new(field, "contains control characters"));
    }
    Ok(())
}

/// A reading that breaks a structural rule, with the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct InvalidReading {
    /// Name of the offending field (as in the Avro schema).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl InvalidReading {
    fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible reading for tests.
    pub fn sample(sensor: &str, seq: u64) -> Reading {
        Reading {
            gateway_id: "gw-test".into(),
            sensor_id: sensor.into(),
            seq,
            event_time_ms: 1_700_000_000_000 + seq as i64 * 60_000,
            moisture_vwc: 0.31,
            soil_temp_c: Some(14.5),
            bulk_ec_ds_m: Some(0.42),
            depth_cm: 30,
            battery_v: None,
            source_flag: None,
        }
    }

    #[test]
    fn same_values_compares_floats_bitwise() {
        let mut a = sample("s", 1);
        a.moisture_vwc = f64::NAN;
        assert!(a.same_values(&a.clone()));
        assert_ne!(a, a.clone());
        let mut b = a.clone();
        b.soil_temp_c = b.soil_temp_c.map(|t| t + 0.01);
        assert!(!a.same_values(&b));
    }

    #[test]
    fn structure_rules() {
        assert!(sample("s1", 1).check_structure().is_ok());
        let mut r = sample("", 1);
        assert_eq!(r.check_structure().unwrap_err().field, "sensor_id");
        r = sample("s1", 1);
        r.moisture_vwc = f64::NAN;
        assert_eq!(r.check_structure().unwrap_err().field, "moisture_vwc");
        r = sample("s1", u64::MAX);
        assert_eq!(r.check_structure().unwrap_err().field, "seq");
        // Out of physical range is still structurally fine (QA/QC decides).
        r = sample("s1", 2);
        r.moisture_vwc = 1.7;
        assert!(r.check_structure().is_ok());
    }
}
