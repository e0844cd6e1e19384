//! A deterministic soil-probe simulator, seeded with ChaCha8.
//!
//! Physics, kept simple but shaped like field data:
//! - moisture relaxes exponentially towards a dry baseline (evapotranspiration
//!   and drainage), jumps up after rain events (a Poisson process), and never
//!   exceeds saturation;
//! - temperature follows a diurnal sine whose amplitude shrinks and whose phase
//!   lags with depth;
//! - bulk EC rises with moisture;
//! - faults happen at configured rates: out-of-range values, stuck probes that
//!   repeat their last reading, and one-sample spikes.
//!
//! Each probe has its own RNG stream derived from the seed and its index, so
//! adding a probe does not change the others.

use super::{Measurement, SensorSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const MS_PER_HOUR: f64 = 3_600_000.0;
const MS_PER_DAY: f64 = 86_400_000.0;
/// Saturation moisture of the simulated loam, m3/m3.
const SATURATION_VWC: f64 = 0.45;

/// Settings of the simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Number of probes.
    pub sensors: u32,
    /// Prefix of probe ids: `{prefix}-{index:03}`.
    pub sensor_prefix: String,
    /// Mean rain events per day.
    pub rain_events_per_day: f64,
    /// Probability per sample that a probe reports an out-of-range value.
    pub out_of_range_probability: f64,
    /// Probability per sample that a probe gets stuck for a while.
    pub stuck_probability: f64,
    /// Probability per sample of a one-sample spike.
    pub spike_probability: f64,
    /// Probability per sample that the probe returns garbage (a NaN
    /// moisture): such readings fail validation and go to the reject log.
    pub garbage_probability: f64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            sensors: 4,
            sensor_prefix: "probe".into(),
            rain_events_per_day: 0.6,
            out_of_range_probability: 0.002,
            stuck_probability: 0.001,
            spike_probability: 0.002,
            garbage_probability: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
struct ProbeState {
    id: String,
    rng: ChaCha8Rng,
    depth_cm: i32,
    dry_baseline_vwc: f64,
    drying_time_constant_h: f64,
    moisture_vwc: f64,
    mean_temp_c: f64,
    last_time_ms: Option<i64>,
    stuck_samples_left: u32,
    last_output: Option<Measurement>,
}

/// A deterministic simulator of a set of soil probes.
#[derive(Debug, Clone)]
pub struct SensorSimulator {
    config: SimulatorConfig,
    probes: Vec<ProbeState>,
}

impl SensorSimulator {
    /// A simulator with `config`; probe ids are `{prefix}-{index:03}`.
    pub fn new(config: SimulatorConfig) -> Self {
        let probes = (0..config.sensors)
            .map(|index| {
                let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
                rng.set_stream(u64::from(index) + 1);
                let depth_cm = [10, 30, 60][index as usize % 3];
                let dry_baseline_vwc = rng.random_range(0.10..0.18);
                ProbeState {
                    id: format!("{}-{index:03}", config.sensor_prefix),
                    depth_cm,
                    dry_baseline_vwc,
                    drying_time_constant_h: rng.random_range(36.0..96.0),
                    moisture_vwc: dry_baseline_vwc + rng.random_range(0.05..0.15),
                    mean_temp_c: rng.random_range(11.0..16.0),
                    last_time_ms: None,
                    stuck_samples_left: 0,
                    last_output: None,
                    rng,
                }
            })
            .collect();
        Self { config, probes }
    }
}

impl ProbeState {
    fn advance(&mut self, config: &SimulatorConfig, event_time_ms: i64) -> Measurement {
        // Physics only moves forward; a clock that jumped back re-samples the
        // current state.
        let dt_ms = match self.last_time_ms {
            Some(last) if event_time_ms > last => (event_time_ms - last) as f64,
            _ => 0.0,
        };
        self.last_time_ms = Some(self.last_time_ms.map_or(event_time_ms, |l| l.max(event_time_ms)));
        let dt_h = dt_ms / MS_PER_HOUR;
        // Exponential drying towards the baseline.
        let decay = (-dt_h / self.drying_time_constant_h).exp();
        self.moisture_vwc = self.dry_baseline_vwc + (self.moisture_vwc - self.dry_baseline_vwc) * decay;
        // Rain: Poisson events over dt; shallow probes respond more.
        let expected_events = config.rain_events_per_day * dt_ms / MS_PER_DAY;
        if expected_events > 0.0
            && self
                .rng
                .random_bool((1.0 - (-expected_events).exp()).clamp(0.0, 1.0))
        {
            let response = 60.0 / f64::from(self.depth_cm + 30);
            let jump = self.rng.random_range(0.04..0.14) * response;
            self.moisture_vwc = (self.moisture_vwc + jump).min(SATURATION_VWC);
        }
        let day_fraction = (event_time_ms as f64).rem_euclid(MS_PER_DAY) / MS_PER_DAY;
        let damping = (-f64::from(self.depth_cm) / 25.0).exp();
        let lag = f64::from(self.depth_cm) / 200.0;
        let diurnal = (std::f64::consts::TAU * (day_fraction - 0.375 - lag)).sin();
        let soil_temp_c = self.mean_temp_c + 9.0 * damping * diurnal + self.rng.random_range(-0.05..0.05);
        let moisture_vwc = self.moisture_vwc + self.rng.random_range(-0.002..0.002);
        let ec = 0.05 + 2.2 * moisture_vwc.max(0.0);
        let battery_v = 3.6 - self.rng.random_range(0.0..0.05);
        let mut m = Measurement {
            sensor_id: self.id.clone(),
            moisture_vwc: round_to(moisture_vwc, 4),
            soil_temp_c: round_to(soil_temp_c, 2),
            bulk_ec_ds_m: Some(round_to(ec, 3)),
            depth_cm: self.depth_cm,
            battery_v: Some(round_to(battery_v, 3)),
        };
        // Faults.
        if self.stuck_samples_left > 0 {
            self.stuck_samples_left -= 1;
            if let Some(last) = &self.last_output {
                return last.clone();
            }
        } else if self.rng.random_bool(config.stuck_probability) {
            self.stuck_samples_left = self.rng.random_range(5..60);
        }
        if config.garbage_probability > 0.0 && self.rng.random_bool(config.garbage_probability) {
            m.moisture_vwc = f64::NAN;
        } else if self.rng.random_bool(config.out_of_range_probability) {
            m.moisture_vwc = if self.rng.random_bool(0.5) { -0.12 } else { 1.37 };
        } else if self.rng.random_bool(config.spike_probability) {
            m.moisture_vwc = round_to(m.moisture_vwc + self.rng.random_range(0.2..0.4), 4);
            m.soil_temp_c = round_to(m.soil_temp_c + self.rng.random_range(15.0..30.0), 2);
        }
        self.last_output = Some(m.clone());
        m
    }
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

impl SensorSource for SensorSimulator {
    fn sensor_ids(&self) -> Vec<String> {
        self.probes.iter().map(|p| p.id.clone()).collect()
    }

    fn sample(&mut self, event_time_ms: i64) -> Vec<Measurement> {
        let config = &self.config;
        self.probes
            .iter_mut()
            .map(|p| p.advance(config, event_time_ms))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, samples: usize) -> Vec<Measurement> {
        let mut sim = SensorSimulator::new(SimulatorConfig {
            seed,
            sensors: 3,
            ..SimulatorConfig::default()
        });
        (0..samples)
            .flat_map(|i| sim.sample(1_700_000_000_000 + i as i64 * 60_000))
            .collect()
    }

    #[test]
    fn deterministic_per_seed() {
        assert_eq!(run(7, 500), run(7, 500));
        assert_ne!(run(7, 500), run(8, 500));
    }

    #[test]
    fn plausible_values_dominate() {
        let all = run(3, 5_000);
        let valid = all
            .iter()
            .filter(|m| (0.0..=SATURATION_VWC).contains(&m.moisture_vwc))
            .count();
        assert!(valid as f64 / all.len() as f64 > 0.97);
        assert!(all.iter().all(|m| m.soil_temp_c > -20.0 && m.soil_temp_c < 80.0));
    }

    #[test]
    fn faults_occur_when_configured() {
        let mut sim = SensorSimulator::new(SimulatorConfig {
            seed: 1,
            sensors: 1,
            out_of_range_probability: 0.5,
            ..SimulatorConfig::default()
        });
        let out = (0..200)
            .flat_map(|i| sim.sample(i * 60_000))
            .filter(|m| !(0.0..=1.0).contains(&m.moisture_vwc))
            .count();
        assert!(out > 50);
    }

    #[test]
    fn clock_jumping_back_does_not_panic() {
        let mut sim = SensorSimulator::new(SimulatorConfig::default());
        sim.sample(10_000_000);
        let again = sim.sample(0);
        assert_eq!(again.len(), 4);
    }
}
