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
//! Rows chosen from the seed (about one in [`MISSING_TEMPERATURE_ONE_IN`])
//! have no temperature: the temperature probe failed and the logger wrote
//! `NAN`, as Campbell loggers do. Their readings carry no temperature: the
//! backfill must not invent one.
//!
//! A card is written in one of two layouts ([`CardFormat`]): our long CSV
//! (one row per probe and round), or a Campbell Scientific TOA5 table (four
//! header lines, then one line per round with a `VWC_i, T_i, EC_i, BattV_i`
//! column group per probe, `"NAN"` for a missing value, naive UTC times with
//! milliseconds), which the backfill reads with the mapping profile the log
//! carries ([`SdCardLog::profile`]). In a TOA5 card a garbled line (an empty
//! timestamp, a line cut short) rejects every reading on it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use soilstream::model::Reading;
use soilstream::source::{SensorSimulator, SensorSource, SimulatorConfig};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The header row of a generated log.
pub const SD_CARD_HEADER: &str = "sensor_id,timestamp,moisture_vwc,soil_temp_c,ec,depth_cm,battery_v";

/// About one row in this many has a missing (`NAN`) temperature.
pub const MISSING_TEMPERATURE_ONE_IN: u32 = 32;

/// The layout of a generated card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardFormat {
    /// soilstream's long CSV.
    #[default]
    LongCsv,
    /// A Campbell Scientific TOA5 table, one line per round.
    Toa5,
}

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
    /// Rows to garble (at most the number of rows; lines of a TOA5 card).
    pub bad_rows: u64,
    /// The layout.
    pub format: CardFormat,
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
    /// The backfill's mapping profile (TOML) for a TOA5 card: one
    /// `[[sensor]]` per probe, naive times in UTC.
    pub profile: Option<String>,
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
    if spec.format == CardFormat::Toa5 {
        return generate_toa5(spec, event_time);
    }
    let rows = spec.rounds * u64::from(spec.sensors);
    let bad_rows = pick_bad_rows(spec.seed, rows, spec.bad_rows.min(rows));
    let mut simulator = card_simulator(spec);
    let mut csv = String::with_capacity((rows as usize + 1) * 72);
    csv.push_str(SD_CARD_HEADER);
    csv.push('\n');
    let mut readings = Vec::with_capacity((rows - bad_rows.len() as u64) as usize);
    let mut bad_lines = Vec::with_capacity(bad_rows.len());
    let mut row: u64 = 0;
    let mut missing = ChaCha8Rng::seed_from_u64(spec.seed);
    missing.set_stream(2);
    for round in 0..spec.rounds {
        let event_time_ms = event_time(spec.from_ms + (round * spec.interval_ms) as i64);
        for measurement in simulator.sample(event_time_ms) {
            // Line 1 is the header.
            let line = row + 2;
            let reading = card_reading(spec, measurement, line, event_time_ms, &mut missing);
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
        profile: None,
    }
}

/// The probes whose values a card holds.
fn card_simulator(spec: &SdCardSpec) -> SensorSimulator {
    SensorSimulator::new(SimulatorConfig {
        seed: spec.seed,
        sensors: spec.sensors,
        sensor_prefix: spec.sensor_prefix.clone(),
        ..SimulatorConfig::default()
    })
}

/// The reading a card's `line` holds for `measurement`: about one in
/// [`MISSING_TEMPERATURE_ONE_IN`] without its temperature (drawn from
/// `missing`).
fn card_reading(
    spec: &SdCardSpec,
    measurement: soilstream::source::Measurement,
    line: u64,
    event_time_ms: i64,
    missing: &mut ChaCha8Rng,
) -> Reading {
    Reading {
        gateway_id: spec.gateway_id.clone(),
        sensor_id: measurement.sensor_id,
        seq: line,
        event_time_ms,
        moisture_vwc: measurement.moisture_vwc,
        soil_temp_c: (missing.random_range(0..MISSING_TEMPERATURE_ONE_IN) != 0)
            .then_some(measurement.soil_temp_c),
        bulk_ec_ds_m: measurement.bulk_ec_ds_m,
        depth_cm: measurement.depth_cm,
        battery_v: measurement.battery_v,
        source_flag: None,
    }
}

/// Lines before the first data line of a TOA5 card.
const TOA5_HEADER_LINES: u64 = 4;

fn toa5_cell(value: Option<f64>) -> String {
    value.map_or_else(|| "\"NAN\"".to_owned(), |v| v.to_string())
}

fn generate_toa5(spec: &SdCardSpec, event_time: impl Fn(i64) -> i64) -> SdCardLog {
    let bad_rounds = pick_bad_rows(spec.seed, spec.rounds, spec.bad_rows.min(spec.rounds));
    let mut simulator = card_simulator(spec);
    let mut missing = ChaCha8Rng::seed_from_u64(spec.seed);
    missing.set_stream(2);
    let probes = spec.sensors as usize;
    let mut text = String::with_capacity((spec.rounds as usize + 4) * (24 + probes * 32));
    let _ = writeln!(
        text,
        "\"TOA5\",\"{}\",\"CR1000X\",\"1\",\"CR1000X.Std.04\",\"CPU:soilstream-sim.CR1X\",\"1\",\"Table1\"",
        spec.gateway_id
    );
    let group = |i: usize, cells: [&str; 4]| {
        cells
            .map(|c| format!("\"{c}\""))
            .join(",")
            .replace("{i}", &i.to_string())
    };
    let groups = |cells: [&str; 4]| (0..probes).map(|i| group(i, cells)).collect::<Vec<_>>().join(",");
    let _ = writeln!(
        text,
        "\"TIMESTAMP\",\"RECORD\",{}",
        groups(["VWC_{i}", "T_{i}", "EC_{i}", "BattV_{i}"])
    );
    let _ = writeln!(
        text,
        "\"TS\",\"RN\",{}",
        groups(["m^3/m^3", "Deg C", "dS/m", "Volts"])
    );
    let _ = writeln!(text, "\"\",\"\",{}", groups(["Avg", "Avg", "Avg", "Smp"]));
    let mut readings = Vec::with_capacity((spec.rounds * u64::from(spec.sensors)) as usize);
    let mut bad_lines = Vec::with_capacity(bad_rounds.len());
    let mut depths: Vec<(String, i32)> = Vec::with_capacity(probes);
    for round in 0..spec.rounds {
        let line = TOA5_HEADER_LINES + 1 + round;
        let event_time_ms = event_time(spec.from_ms + (round * spec.interval_ms) as i64);
        let stamp = jiff::Timestamp::from_millisecond(event_time_ms)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let mut cells = Vec::with_capacity(probes * 4);
        let mut round_readings = Vec::with_capacity(probes);
        for (index, measurement) in simulator.sample(event_time_ms).into_iter().enumerate() {
            if depths.len() < probes {
                depths.push((measurement.sensor_id.clone(), measurement.depth_cm));
            }
            assert_eq!(
                depths[index],
                (measurement.sensor_id.clone(), measurement.depth_cm),
                "a probe keeps its id and depth: the profile names them once"
            );
            let reading = card_reading(spec, measurement, line, event_time_ms, &mut missing);
            cells.push(reading.moisture_vwc.to_string());
            cells.push(toa5_cell(reading.soil_temp_c));
            cells.push(toa5_cell(reading.bulk_ec_ds_m));
            cells.push(toa5_cell(reading.battery_v));
            round_readings.push(reading);
        }
        if bad_rounds.contains(&round) {
            if bad_lines.len() % 2 == 0 {
                // The logger's clock was not set.
                let _ = writeln!(text, "\"\",{round},{}", cells.join(","));
            } else {
                // Power failed mid-write: the line is cut short.
                let _ = writeln!(text, "\"{stamp}\",{round},{}", cells[..1].join(","));
            }
            bad_lines.push(line);
        } else {
            let _ = writeln!(text, "\"{stamp}\",{round},{}", cells.join(","));
            readings.extend(round_readings);
        }
    }
    let mut profile = String::from("format = \"toa5\"\nutc_offset = \"+00:00\"\n");
    for (i, (sensor_id, depth_cm)) in depths.iter().enumerate() {
        let _ = write!(
            profile,
            "\n[[sensor]]\nsensor_id = \"{sensor_id}\"\ndepth_cm = {depth_cm}\nmoisture = \"VWC_{i}\"\n\
             temperature = \"T_{i}\"\nec = \"EC_{i}\"\nbattery = \"BattV_{i}\"\n"
        );
    }
    SdCardLog {
        csv: text.into_bytes(),
        readings,
        bad_lines,
        profile: Some(profile),
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

/// A temperature cell: the value, or the logger's `NAN` when the probe gave none.
fn temperature(value: Option<f64>) -> String {
    value.map_or_else(|| "NAN".to_owned(), |v| v.to_string())
}

fn write_row(csv: &mut String, r: &Reading) {
    let _ = writeln!(
        csv,
        "{},{},{},{},{},{},{}",
        r.sensor_id,
        r.event_time_ms,
        r.moisture_vwc,
        temperature(r.soil_temp_c),
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
            temperature(r.soil_temp_c),
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
            temperature(r.soil_temp_c),
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
            format: CardFormat::LongCsv,
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
    fn a_toa5_card_decodes_with_its_profile_to_exactly_its_readings() {
        use soilstream::backfill::format::{CellRules, decode_all};
        use soilstream::backfill::profile::Profile;
        let toa5 = SdCardSpec {
            format: CardFormat::Toa5,
            ..spec(6)
        };
        let log = generate(&toa5);
        assert_eq!(log.bad_lines.len(), 6);
        assert_eq!(log.readings.len(), (50 - 6) * 3);
        assert!(
            log.readings.iter().any(|r| r.soil_temp_c.is_none()),
            "NAN temperatures"
        );
        let profile = Profile::parse(log.profile.as_deref().unwrap(), "card.toml").unwrap();
        let rules = CellRules {
            utc_offset: profile.utc_offset,
            profile,
            default_depth_cm: None,
        };
        let (_, rows, errors) = decode_all(&log.csv, std::path::Path::new("card.dat"), None, rules).unwrap();
        let error_lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(error_lines, log.bad_lines);
        assert_eq!(rows.len(), log.readings.len());
        for (row, reading) in rows.iter().zip(&log.readings) {
            let decoded = Reading {
                gateway_id: reading.gateway_id.clone(),
                sensor_id: row.sensor_id.clone(),
                seq: row.line,
                event_time_ms: row.event_time_ms,
                moisture_vwc: row.moisture_vwc,
                soil_temp_c: row.soil_temp_c,
                bulk_ec_ds_m: row.bulk_ec_ds_m,
                depth_cm: row.depth_cm,
                battery_v: row.battery_v,
                source_flag: row.source_flag.clone(),
            };
            assert!(decoded.same_values(reading), "{decoded:?} != {reading:?}");
        }
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
            assert_eq!(
                row.soil_temp_c.map(f64::to_bits),
                reading.soil_temp_c.map(f64::to_bits)
            );
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
