//! The `SensorSource` seam: where a gateway's sampler gets measurements.
//!
//! A source answers "what do the probes read now?" for a given event time.
//! The sampler stamps the time from the gateway [`crate::clock::Clock`] and
//! the spool assigns the per-sensor `seq`, so a source only knows physics.

mod simulator;

pub use simulator::{SensorSimulator, SimulatorConfig};

/// What one probe measured at one instant (identity is added by the gateway).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Probe identifier.
    pub sensor_id: String,
    /// Volumetric water content in m3/m3.
    pub moisture_vwc: f64,
    /// Soil temperature in degrees Celsius.
    pub soil_temp_c: f64,
    /// Bulk electrical conductivity in dS/m, if measured.
    pub bulk_ec_ds_m: Option<f64>,
    /// Installation depth in cm.
    pub depth_cm: i32,
    /// Supply voltage in volts, if reported.
    pub battery_v: Option<f64>,
}

/// A set of probes that can be sampled.
pub trait SensorSource {
    /// Identifiers of the probes, in sampling order.
    fn sensor_ids(&self) -> Vec<String>;
    /// Samples every probe at `event_time_ms`. Calls come with non-decreasing
    /// times in normal operation, but a source must tolerate a clock that
    /// jumped backwards (after a reboot without RTC battery).
    fn sample(&mut self, event_time_ms: i64) -> Vec<Measurement>;
}
