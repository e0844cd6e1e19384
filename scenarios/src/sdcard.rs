//! SD-card logs for backfill scenarios, generated from the seed.
//!
//! A probe logger keeps sampling while its gateway is down and writes one
//! CSV row per probe and sampling round to its SD card. [`generate`] writes
//! such a log for a window of event times, with the values of a
//! [`SensorSimulator`] seeded for the card (so the log is the same for the
//! same seed and differs from the live gateway's own stream), and returns
//! the readings the backfill must deliver: one per good row, with the
//! identity the backfill gives it (the backfill's gateway id, the probe id,
//! `seq` = the row's line number).
//!
//! Numbers are written with Rust's shortest round-trip formatting, so the
//! backfill parses back exactly the values the ledger holds; event times are
//! integer epoch milliseconds. Rows chosen from the seed can be garbled the
//! ways failing loggers garble them (an error code for a value, an empty
//! timestamp, a line cut short); the backfill must reject exactly those.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use soilstream::model::Reading;
use soilstream::source::{SensorSimulator, SensorSource, SimulatorConfig};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The header row of a generated log.
pub const SD_CARD_HEADER: &str = "sensor_id,timestamp,moisture_vwc,soil_temp_c,ec,depth_cm,battery_v";

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SdCardSpec {
    /// Seed of the values and of the choice of garbled rows.
    pub seed: u64,
    /// Gateway id the backfill gives the rows.
    pub gateway_id: String,
    /// Probe id prefix (the live gateway's, so probe ids match).
    pub sensor_prefix: String,
    /// Probes.
    pub sensors: u32,
    /// Event time of the first round, ms since the Unix epoch.
    pub from_ms: i64,
    /// Sampling rounds.
    pub rounds: u64,
    /// Time between rounds, ms.
    pub interval_ms: u64,
    /// Rows to garble (at most the number of rows).
    pub bad_rows: u64,
}

/// A generated log.
#[derive(Debug, Clone, PartialEq)]
pub struct SdCardLog {
    /// The file's bytes.
    pub csv: Vec<u8>,
    /// One reading per good row, in file order.
    pub readings: Vec<Reading>,
    /// Line numbers of the garbled rows, ascending.
    pub bad_lines: Vec<u64>,
}

/// Generates the log described by `spec`.
pub fn generate(spec: &SdCardSpec) -> SdCardLog {
    generate_mapped(spec, |event_time_ms| event_time_ms)
}

/// Generates the log described by `spec`, each round's event time passed
/// through `event_time` first (the real world compresses a scenario's run:
/// see [`crate::observe::TimeAxis`]). Values, identities and garbled rows
/// are those of [`generate`]; only the timestamps differ.
pub fn generate_mapped(spec: &SdCardSpec, event_time: impl Fn(i64) -> i64) -> SdCardLog {
    let rows = spec.rounds * u64::from(spec.sensors);
    let bad_rows = pick_bad_rows(spec.seed, rows, spec.bad_rows.min(rows));
    let mut simulator = SensorSimulator::new(SimulatorConfig {
        seed: spec.seed,
        sensors: spec.sensors,
        sensor_prefix: spec.sensor_prefix.clone(),
        ..SimulatorConfig::default()
    });
    let mut csv = String::with_capacity((rows as usize + 1) * 72);
    csv.push_str(SD_CARD_HEADER);
    csv.push('\n');
    let mut readings = Vec::with_capacity((rows - bad_rows.len() as u64) as usize);
    let mut bad_lines = Vec::with_capacity(bad_rows.len());
    let mut row: u64 = 0;
    for round in 0..spec.rounds {
        let event_time_ms = event_time(spec.from_ms + (round * spec.interval_ms) as i64);
        for measurement in simulator.sample(event_time_ms) {
            // Line 1 is the header.
            let line = row + 2;
            let reading = Reading {
                gateway_id: spec.gateway_id.clone(),
                sensor_id: measurement.sensor_id,
                seq: line,
                event_time_ms,
                moisture_vwc: measurement.moisture_vwc,
                soil_temp_c: measurement.soil_temp_c,
                bulk_ec_ds_m: measurement.bulk_ec_ds_m,
                depth_cm: measurement.depth_cm,
                battery_v: measurement.battery_v,
            };
            if bad_rows.contains(&row) {
                write_garbled_row(&mut csv, &reading, bad_lines.len());
                bad_lines.push(line);
            } else {
                write_row(&mut csv, &reading);
                readings.push(reading);
            }
            row += 1;
        }
    }
    SdCardLog {
        csv: csv.into_bytes(),
        readings,
        bad_lines,
    }
}

/// `count` distinct row indexes below `rows`, chosen from `seed` (Floyd's
/// algorithm: exactly `count` draws, whatever the density).
fn pick_bad_rows(seed: u64, rows: u64, count: u64) -> BTreeSet<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    let mut picked = BTreeSet::new();
    for j in rows - count..rows {
        let candidate = rng.random_range(0..=j);
        if !picked.insert(candidate) {
            picked.insert(j);
        }
    }
    picked
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(String::new, |v| v.to_string())
}

fn write_row(csv: &mut String, r: &Reading) {
    let _ = writeln!(
        csv,
        "{},{},{},{},{},{},{}",
        r.sensor_id,
        r.event_time_ms,
        r.moisture_vwc,
        r.soil_temp_c,
        optional(r.bulk_ec_ds_m),
        r.depth_cm,
        optional(r.battery_v)
    );
}

/// Writes the `nth` garbled row, cycling through the ways loggers fail.
fn write_garbled_row(csv: &mut String, r: &Reading, nth: usize) {
    let _ = match nth % 3 {
        // The probe answered with an error code instead of a value.
        0 => writeln!(
            csv,
            "{},{},ERR,{},{},{},{}",
            r.sensor_id,
            r.event_time_ms,
            r.soil_temp_c,
            optional(r.bulk_ec_ds_m),
            r.depth_cm,
            optional(r.battery_v)
        ),
        // The logger's clock was not set.
        1 => writeln!(
            csv,
            "{},,{},{},{},{},{}",
            r.sensor_id,
            r.moisture_vwc,
            r.soil_temp_c,
            optional(r.bulk_ec_ds_m),
            r.depth_cm,
            optional(r.battery_v)
        ),
        // Power failed mid-write: the line is cut short.
        _ => writeln!(csv, "{},{}", r.sensor_id, r.event_time_ms),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bad_rows: u64) -> SdCardSpec {
        SdCardSpec {
            seed: 42,
            gateway_id: "gw-1-sd".into(),
            sensor_prefix: "gw-1-probe".into(),
            sensors: 3,
            from_ms: 1_777_600_000_000,
            rounds: 50,
            interval_ms: 60_000,
            bad_rows,
        }
    }

    #[test]
    fn rows_cover_the_window_with_line_numbers_as_seq() {
        let log = generate(&spec(0));
        assert_eq!(log.readings.len(), 150);
        let text = String::from_utf8(log.csv.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 151);
        assert_eq!(lines[0], SD_CARD_HEADER);
        for reading in &log.readings {
            let line = lines[(reading.seq - 1) as usize];
            assert!(line.starts_with(&format!("{},{},", reading.sensor_id, reading.event_time_ms)));
        }
        let last = log.readings.last().unwrap();
        assert_eq!(last.event_time_ms, 1_777_600_000_000 + 49 * 60_000);
        assert_eq!(generate(&spec(0)), log, "the same spec gives the same log");
    }

    #[test]
    fn exactly_the_asked_rows_are_garbled() {
        let log = generate(&spec(7));
        assert_eq!(log.bad_lines.len(), 7);
        assert_eq!(log.readings.len(), 143);
        let good: BTreeSet<u64> = log.readings.iter().map(|r| r.seq).collect();
        assert!(log.bad_lines.iter().all(|line| !good.contains(line)));
        let all = generate(&spec(150));
        assert!(all.readings.is_empty());
        assert_eq!(all.bad_lines, (2..=151).collect::<Vec<u64>>());
    }

    #[test]
    fn the_backfill_parser_reads_back_exactly_the_ledger_values() {
        use soilstream::backfill::lines::Fields;
        use soilstream::backfill::row::LogHeader;
        let log = generate(&spec(9));
        let text = String::from_utf8(log.csv.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut fields = Fields::new();
        fields.split(lines[0]).unwrap();
        let header = LogHeader::parse(&fields, "sd.csv", 1).unwrap();
        for reading in &log.readings {
            fields.split(lines[(reading.seq - 1) as usize]).unwrap();
            let row = header.parse_row(&fields, "sd.csv", reading.seq, None).unwrap();
            assert_eq!(row.sensor_id, reading.sensor_id);
            assert_eq!(row.event_time_ms, reading.event_time_ms);
            assert_eq!(row.moisture_vwc.to_bits(), reading.moisture_vwc.to_bits());
            assert_eq!(row.soil_temp_c.to_bits(), reading.soil_temp_c.to_bits());
            assert_eq!(row.bulk_ec_ds_m, reading.bulk_ec_ds_m);
            assert_eq!(row.depth_cm, reading.depth_cm);
            assert_eq!(row.battery_v, reading.battery_v);
        }
        for &line in &log.bad_lines {
            let parsed = fields
                .split(lines[(line - 1) as usize])
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    header
                        .parse_row(&fields, "sd.csv", line, None)
                        .map_err(|e| e.to_string())
                });
            assert!(parsed.is_err(), "line {line} parsed");
        }
    }
}
