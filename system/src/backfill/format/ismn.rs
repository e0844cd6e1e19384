//! ISMN `.stm` files (International Soil Moisture Network): one variable of
//! one sensor per file, times in UTC, soil moisture in m3/m3, fields
//! separated by any run of spaces or tabs. Two layouts:
//!
//! - **header line**: a first line `CSE network station lat lon elevation
//!   depth_from depth_to [sensor]`, then rows `yyyy/mm/dd HH:MM value
//!   ismn_flag [provider_flag]`;
//! - **CEOP**: no header; each row `yyyy/mm/dd HH:MM` (nominal) `yyyy/mm/dd
//!   HH:MM` (actual) `CSE network station lat lon elevation depth_from
//!   depth_to value ismn_flag [provider_flag]`. The actual time is the
//!   event time.
//!
//! The file name carries the variable, the depths and the sensor:
//! `CSE_NETWORK_STATION_sm_0.050000_0.050000_ThetaProbe-ML2X_19500101_20210131.stm`.
//! Only soil moisture (`sm`) files are readings; a temperature (`ts`) or
//! any other variable's file is refused with what to do instead.
//!
//! Each reading: sensor id `<network>.<station>.<sensor>.<from>-<to>cm`
//! (or the profile's `sensor_id`), depth the bottom of the measured layer
//! (`depth_to`, in cm), no temperature, and `source_flag` the ISMN quality
//! flag verbatim (`G`, `D03,D05`, `C01`, ...), followed after a space by the
//! provider's flag when there is one other than `M` (ISMN's "not given").

use super::CellRules;
use crate::backfill::row::{ParsedRow, RowError, excerpt};

/// The provider-flag value ISMN writes when the provider gave none.
const NO_PROVIDER_FLAG: &str = "M";

fn is_date(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 10
        && b[4] == b'/'
        && b[7] == b'/'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn is_time(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 5 && b[2] == b':' && b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit)
}

/// Whether a file looks like an ISMN `.stm` file: its name ends in `.stm`,
/// or its first line is a CEOP row or a station header line.
pub fn looks_like_ismn(first_line: &str, file_name: &str) -> bool {
    if file_name.to_ascii_lowercase().ends_with(".stm") {
        return true;
    }
    let tokens: Vec<&str> = first_line.split_whitespace().collect();
    if first_line.contains(',') {
        return false;
    }
    let ceop = tokens.len() >= 13
        && is_date(tokens[0])
        && is_time(tokens[1])
        && is_date(tokens[2])
        && is_time(tokens[3]);
    let header = (8..=9).contains(&tokens.len())
        && !is_date(tokens[0])
        && tokens[3..8].iter().all(|t| t.parse::<f64>().is_ok());
    ceop || header
}

/// What the file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NameParts {
    variable: String,
    sensor: Option<String>,
}

fn name_parts(file_name: &str) -> Option<NameParts> {
    let stem = file_name.strip_suffix(".stm").unwrap_or(file_name);
    let parts: Vec<&str> = stem.split('_').collect();
    // ..._<var>_<from>_<to>_<sensor...>_<start>_<end>
    let from_at = parts
        .windows(2)
        .position(|w| w[0].parse::<f64>().is_ok() && w[1].parse::<f64>().is_ok() && w[0].contains('.'))?;
    if from_at == 0 {
        return None;
    }
    let variable = parts[from_at - 1].to_owned();
    let (start, end) = (from_at + 2, parts.len().saturating_sub(2));
    let sensor = (start < end).then(|| parts[start..end].join("_"));
    Some(NameParts { variable, sensor })
}

/// The station facts of the file.
#[derive(Debug, Clone, PartialEq)]
struct Station {
    network: String,
    station: String,
    depth_from_m: f64,
    depth_to_m: f64,
}

/// Reads one ISMN file.
#[derive(Debug)]
pub struct IsmnDecoder {
    sensor_from_name: Option<String>,
    sensor_id_override: Option<String>,
    /// `None` until known: the header line, or the first CEOP row.
    layout: Option<Layout>,
    station: Option<Station>,
    sensor_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    HeaderLine,
    Ceop,
}

impl IsmnDecoder {
    /// A decoder for the file `file_name` (whose name says the variable).
    pub fn new(file_name: &str, profile: &crate::backfill::profile::Profile) -> Result<Self, String> {
        let parts = name_parts(file_name);
        if let Some(parts) = &parts
            && parts.variable != "sm"
        {
            let what = match parts.variable.as_str() {
                "ts" => "soil temperature",
                "su" => "soil suction",
                "p" => "precipitation",
                "ta" => "air temperature",
                _ => "not soil moisture",
            };
            return Err(format!(
                "this ISMN file holds `{}` ({what}); a reading needs soil moisture, so backfill the station's \
                 `_sm_` file of the same depth instead (a reading without moisture is not a reading)",
                parts.variable
            ));
        }
        Ok(Self {
            sensor_from_name: parts.and_then(|p| p.sensor),
            sensor_id_override: profile.sensor_id.clone(),
            layout: None,
            station: None,
            sensor_id: None,
        })
    }

    /// Whether the header line may still come.
    pub fn wants_header(&self) -> bool {
        self.layout.is_none()
    }

    fn set_station(&mut self, station: Station, sensor: Option<String>) -> Result<(), String> {
        let sensor = sensor
            .or_else(|| self.sensor_from_name.clone())
            .unwrap_or_else(|| "sensor".into());
        let cm = |m: f64| (m * 100.0).round() as i64;
        let id = match &self.sensor_id_override {
            Some(id) => id.clone(),
            None => format!(
                "{}.{}.{}.{}-{}cm",
                station.network,
                station.station,
                sensor,
                cm(station.depth_from_m),
                cm(station.depth_to_m)
            ),
        };
        crate::model::check_id("sensor_id", &id).map_err(|e| format!("sensor id `{id}`: {e}"))?;
        if !(0.0..=100.0).contains(&station.depth_to_m) || station.depth_from_m > station.depth_to_m {
            return Err(format!(
                "depths {} to {} m are not a layer below the surface",
                station.depth_from_m, station.depth_to_m
            ));
        }
        self.sensor_id = Some(id);
        self.station = Some(station);
        Ok(())
    }

    /// Feeds one non-blank line.
    pub fn line(
        &mut self,
        number: u64,
        text: &str,
        file: &str,
        rules: &CellRules,
        out: &mut Vec<Result<ParsedRow, RowError>>,
    ) -> Result<(), RowError> {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        if self.layout.is_none() {
            let header_error = |reason: String| RowError::new(file, number, "header", reason);
            if tokens.first().is_some_and(|t| is_date(t)) {
                self.layout = Some(Layout::Ceop);
            } else {
                if !(8..=9).contains(&tokens.len()) {
                    return Err(header_error(format!(
                        "an ISMN header line has 8 or 9 fields (CSE network station lat lon elevation \
                         depth_from depth_to [sensor]), this one {}: {}",
                        tokens.len(),
                        excerpt(text)
                    )));
                }
                let depth = |i: usize| {
                    tokens[i]
                        .parse::<f64>()
                        .map_err(|_| header_error(format!("depth {} is not a number", excerpt(tokens[i]))))
                };
                let station = Station {
                    network: tokens[1].to_owned(),
                    station: tokens[2].to_owned(),
                    depth_from_m: depth(6)?,
                    depth_to_m: depth(7)?,
                };
                let sensor = tokens.get(8).map(|s| s.trim_matches(['\'', '"']).to_owned());
                self.set_station(station, sensor).map_err(header_error)?;
                self.layout = Some(Layout::HeaderLine);
                return Ok(());
            }
        }
        let row_error = |column: &str, reason: String| RowError::new(file, number, column, reason);
        let (time_at, value_at) = match self.layout {
            Some(Layout::Ceop) => (2, 12),
            _ => (0, 2),
        };
        if tokens.len() < value_at + 2 || tokens.len() > value_at + 3 {
            out.push(Err(row_error(
                "row",
                format!(
                    "{} fields; an ISMN {} row has {} or {}",
                    tokens.len(),
                    if self.layout == Some(Layout::Ceop) {
                        "CEOP"
                    } else {
                        "data"
                    },
                    value_at + 2,
                    value_at + 3
                ),
            )));
            return Ok(());
        }
        if self.layout == Some(Layout::Ceop) {
            let parse = |i: usize| tokens[i].parse::<f64>();
            match (parse(10), parse(11)) {
                (Ok(from), Ok(to)) => {
                    let station = Station {
                        network: tokens[5].to_owned(),
                        station: tokens[6].to_owned(),
                        depth_from_m: from,
                        depth_to_m: to,
                    };
                    match &self.station {
                        None => {
                            if let Err(reason) = self.set_station(station, None) {
                                return Err(row_error("station", reason));
                            }
                        }
                        Some(known) if *known != station => {
                            out.push(Err(row_error(
                                "station",
                                format!(
                                    "this row is for {}/{} at {}-{} m, the file's first for {}/{} at {}-{} m: \
                                     one file holds one sensor",
                                    station.network,
                                    station.station,
                                    from,
                                    to,
                                    known.network,
                                    known.station,
                                    known.depth_from_m,
                                    known.depth_to_m
                                ),
                            )));
                            return Ok(());
                        }
                        Some(_) => {}
                    }
                }
                _ => {
                    out.push(Err(row_error("depth", "depths are not numbers".into())));
                    return Ok(());
                }
            }
        }
        let when = format!("{} {}", tokens[time_at], tokens[time_at + 1]);
        if !is_date(tokens[time_at]) || !is_time(tokens[time_at + 1]) {
            out.push(Err(row_error(
                "time",
                format!("not `yyyy/mm/dd HH:MM`: {}", excerpt(&when)),
            )));
            return Ok(());
        }
        let event_time_ms = match crate::backfill::profile::UtcOffset::UTC.naive_to_epoch_ms(&when) {
            Ok(ms) if ms >= crate::backfill::row::MIN_EVENT_TIME_MS => ms,
            Ok(_) => {
                out.push(Err(row_error(
                    "time",
                    format!("{} is not after 1970", excerpt(&when)),
                )));
                return Ok(());
            }
            Err(reason) => {
                out.push(Err(row_error("time", reason)));
                return Ok(());
            }
        };
        let moisture = match rules.moisture(tokens[value_at]) {
            Ok(m) => m,
            Err(reason) => {
                out.push(Err(row_error("value", reason)));
                return Ok(());
            }
        };
        let ismn_flag = tokens[value_at + 1];
        let source_flag = match tokens.get(value_at + 2) {
            Some(provider) if *provider != NO_PROVIDER_FLAG => format!("{ismn_flag} {provider}"),
            _ => ismn_flag.to_owned(),
        };
        let station = self.station.as_ref().expect("a station is known before any row");
        out.push(Ok(ParsedRow {
            line: number,
            group: 0,
            sensor_id: self.sensor_id.clone().expect("set with the station"),
            event_time_ms,
            moisture_vwc: moisture,
            soil_temp_c: None,
            bulk_ec_ds_m: None,
            depth_cm: (station.depth_to_m * 100.0).round() as i32,
            battery_v: None,
            source_flag: Some(source_flag),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_say_variable_and_sensor() {
        assert_eq!(
            name_parts("FR-Aqui_FR-Aqui_fraye_sm_0.050000_0.050000_ThetaProbe-ML2X_19500101_20210131.stm"),
            Some(NameParts {
                variable: "sm".into(),
                sensor: Some("ThetaProbe-ML2X".into())
            })
        );
        assert_eq!(
            name_parts("RSMN_RSMN_Adamclisi_sm_0.000000_0.050000_Meter-5TM_1_1_19500101_20260512.stm"),
            Some(NameParts {
                variable: "sm".into(),
                sensor: Some("Meter-5TM_1_1".into())
            })
        );
        assert_eq!(name_parts("readings.stm"), None);
        let refused = IsmnDecoder::new(
            "X_X_s_ts_0.050000_0.050000_Probe_20070101_20070131.stm",
            &Default::default(),
        )
        .unwrap_err();
        assert!(
            refused.contains("soil temperature") && refused.contains("_sm_"),
            "{refused}"
        );
    }

    #[test]
    fn detection_by_name_or_first_line() {
        assert!(looks_like_ismn("anything", "a.stm"));
        assert!(looks_like_ismn(
            "2007/01/01 01:00 2007/01/01 01:00 SMOSMANIA  SMOSMANIA  Narbonne  43.15  2.95  112.00  0.05  0.05  0.2140 U M",
            "x.txt"
        ));
        assert!(looks_like_ismn(
            "RSMN RSMN Adamclisi 44.08829 27.96591 158.0 0.0000 0.0500 'Meter-5TM'",
            "x"
        ));
        assert!(!looks_like_ismn("sensor_id,timestamp,moisture", "x.csv"));
    }
}
