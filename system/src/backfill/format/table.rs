//! Wide tables: one row per timestamp, a column per (quantity, depth). Read
//! from a plain CSV with one header row (`wide-csv`) or from a Campbell
//! Scientific TOA5 file (`toa5`):
//!
//! ```text
//! "TOA5","station","CR1000","serial","OS","program","signature","table"   file info
//! "TIMESTAMP","RECORD","BattV_Min","VWC_10cm","T_10cm",...                 field names
//! "TS","RN","Volts","m^3/m^3","Deg C",...                                  units
//! "","","Min","Avg","Avg",...                                              processing
//! "2019-06-01 00:00:00",0,13.2,0.231,14.5,...
//! ```
//!
//! TOA5 timestamps are the logger's clock without an offset (the profile's
//! `utc_offset` or `--utc-offset` says which), `"NAN"` is a missing value.
//!
//! **Column groups.** A profile's `[[sensor]]` entries name each group's
//! columns. Without them, groups are found from the column names: a quantity
//! prefix and a depth, `VWC_10cm`, `T_10cm`, `EC_10cm`, `SoilTemp_30cm_Avg`
//! (moisture: `vwc`, `vw`, `swc`, `sm`, `wc`, `theta`, `moisture`,
//! `soil_moisture`; temperature: `t`, `ts`, `temp`, `soil_temp`, `soiltemp`,
//! `tsoil`, `soil_t`; EC: `ec`, `bulk_ec`, `bec`; depth: a number with `cm`,
//! `mm` or `m`); the sensor id is `<sensor_prefix>-<depth>cm`, the prefix
//! from the profile or, for TOA5, the station name. A column whose name
//! starts with `batt` is every group's battery. Units come from the group,
//! else from the TOA5 units line, else from the profile's `[units]`, else
//! the schema's.

use super::{CellRules, LogFormat};
use crate::backfill::lines::Fields;
use crate::backfill::profile::{EcUnit, MoistureUnit, SensorColumns, TemperatureUnit};
use crate::backfill::row::{ParsedRow, RowError, excerpt};

/// Names a table's timestamp column may have (normalised), when the profile
/// does not name it.
const TIMESTAMP_NAMES: [&str; 6] = ["timestamp", "datetime", "date_time", "time", "ts", "event_time"];

/// The header lines of a TOA5 file.
const TOA5_HEADER_LINES: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Quantity {
    Moisture,
    Temperature,
    Ec,
}

/// One column group resolved to field indices.
#[derive(Debug, Clone)]
struct Group {
    sensor_id: String,
    depth_cm: i32,
    moisture: usize,
    temperature: Option<usize>,
    ec: Option<usize>,
    battery: Option<usize>,
    flag: Option<usize>,
    moisture_unit: MoistureUnit,
    temperature_unit: TemperatureUnit,
    ec_unit: EcUnit,
}

/// Reads a wide CSV or a TOA5 file.
#[derive(Debug)]
pub struct TableDecoder {
    format: LogFormat,
    header_lines_seen: u8,
    station: Option<String>,
    names: Vec<String>,
    units: Vec<String>,
    timestamp: usize,
    groups: Vec<Group>,
}

fn normalise(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .chars()
        .map(|c| match c {
            ' ' | '-' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Splits a detected column name into its quantity and depth in cm.
fn quantity_and_depth(name: &str) -> Option<(Quantity, i32)> {
    let name = normalise(name);
    let parts: Vec<&str> = name.split('_').filter(|p| !p.is_empty()).collect();
    let depth_at = parts.iter().position(|p| depth_cm_of(p).is_some())?;
    let depth = depth_cm_of(parts[depth_at])?;
    let prefix = parts[..depth_at].join("_");
    let quantity = match prefix.as_str() {
        "vwc" | "vw" | "swc" | "sm" | "wc" | "theta" | "moisture" | "soil_moisture" => Quantity::Moisture,
        "t" | "ts" | "temp" | "soil_temp" | "soiltemp" | "tsoil" | "soil_t" | "soil_temperature" => {
            Quantity::Temperature
        }
        "ec" | "bulk_ec" | "bec" => Quantity::Ec,
        _ => return None,
    };
    // Anything after the depth must be a processing suffix.
    let rest_ok = parts[depth_at + 1..]
        .iter()
        .all(|p| matches!(*p, "avg" | "smp" | "mean" | "spl" | "inst"));
    rest_ok.then_some((quantity, depth))
}

fn depth_cm_of(part: &str) -> Option<i32> {
    let (number, scale) = if let Some(n) = part.strip_suffix("cm") {
        (n, 1.0)
    } else if let Some(n) = part.strip_suffix("mm") {
        (n, 0.1)
    } else if let Some(n) = part.strip_suffix('m') {
        (n, 100.0)
    } else {
        return None;
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'p') {
        return None;
    }
    let value: f64 = number.replace('p', ".").parse().ok()?;
    let cm = (value * scale).round();
    (0.0..=f64::from(crate::backfill::row::MAX_DEPTH_CM))
        .contains(&cm)
        .then_some(cm as i32)
}

/// How many column groups the names hold (for format detection).
pub fn detected_groups(names: &[&str]) -> usize {
    let has_timestamp = names
        .iter()
        .any(|n| TIMESTAMP_NAMES.contains(&normalise(n).as_str()));
    if !has_timestamp {
        return 0;
    }
    names
        .iter()
        .filter(|n| matches!(quantity_and_depth(n), Some((Quantity::Moisture, _))))
        .count()
}

impl TableDecoder {
    /// A decoder for `format` (`WideCsv` or `Toa5`).
    pub fn new(format: LogFormat) -> Self {
        debug_assert!(matches!(format, LogFormat::WideCsv | LogFormat::Toa5));
        Self {
            format,
            header_lines_seen: 0,
            station: None,
            names: Vec::new(),
            units: Vec::new(),
            timestamp: 0,
            groups: Vec::new(),
        }
    }

    /// `WideCsv` or `Toa5`.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Whether header lines are still to come.
    pub fn wants_header(&self) -> bool {
        let needed = match self.format {
            LogFormat::Toa5 => TOA5_HEADER_LINES,
            _ => 1,
        };
        self.header_lines_seen < needed
    }

    /// The column a reading field of `group` came from.
    pub fn column_of(&self, field: &str, group: u32) -> String {
        let Some(g) = self.groups.get(group as usize) else {
            return field.to_owned();
        };
        let index = match field {
            "moisture_vwc" => Some(g.moisture),
            "soil_temp_c" => g.temperature,
            "bulk_ec_ds_m" => g.ec,
            "battery_v" => g.battery,
            "source_flag" => g.flag,
            "event_time" => Some(self.timestamp),
            _ => None,
        };
        index.map_or_else(|| field.to_owned(), |i| self.names[i].clone())
    }

    /// Feeds one non-blank line.
    pub fn line(
        &mut self,
        number: u64,
        text: &str,
        fields: &mut Fields,
        file: &str,
        rules: &CellRules,
        out: &mut Vec<Result<ParsedRow, RowError>>,
    ) -> Result<(), RowError> {
        let header_error = |reason: String| RowError::new(file, number, "header", reason);
        if self.wants_header() {
            fields.split(text).map_err(|e| header_error(e.to_string()))?;
            let cells: Vec<String> = (0..fields.len())
                .map(|i| fields.get(i).unwrap_or_default().trim().to_owned())
                .collect();
            self.header_lines_seen += 1;
            match (self.format, self.header_lines_seen) {
                (LogFormat::Toa5, 1) => {
                    if cells.first().map(String::as_str) != Some("TOA5") {
                        return Err(header_error(format!(
                            "a TOA5 file starts with \"TOA5\", this one with {}",
                            excerpt(cells.first().map_or("", String::as_str))
                        )));
                    }
                    self.station = cells.get(1).filter(|s| !s.is_empty()).cloned();
                }
                (LogFormat::Toa5, 2) | (_, 1) => self.names = cells,
                (LogFormat::Toa5, 3) => {
                    if cells.len() != self.names.len() {
                        return Err(header_error(format!(
                            "the units line has {} fields, the field names line {}",
                            cells.len(),
                            self.names.len()
                        )));
                    }
                    self.units = cells;
                }
                _ => {}
            }
            if !self.wants_header() {
                self.resolve_columns(rules).map_err(header_error)?;
            }
            return Ok(());
        }
        let row_error = |column: &str, reason: String| RowError::new(file, number, column, reason);
        if let Err(e) = fields.split(text) {
            out.push(Err(row_error("row", e.to_string())));
            return Ok(());
        }
        if fields.len() != self.names.len() {
            out.push(Err(row_error(
                "row",
                format!("row has {} fields, the header {}", fields.len(), self.names.len()),
            )));
            return Ok(());
        }
        let cell = |i: usize| fields.get(i).unwrap_or_default().trim_matches([' ', '\t']);
        let event_time_ms = match rules.event_time_ms(cell(self.timestamp)) {
            Ok(ms) => ms,
            Err(reason) => {
                out.push(Err(row_error(&self.names[self.timestamp], reason)));
                return Ok(());
            }
        };
        for (index, group) in self.groups.iter().enumerate() {
            let name = |i: usize| self.names[i].as_str();
            let parsed = (|| -> Result<ParsedRow, RowError> {
                let moisture = rules
                    .moisture(cell(group.moisture))
                    .map_err(|r| row_error(name(group.moisture), r))?;
                let optional = |column: Option<usize>| -> Result<Option<f64>, RowError> {
                    match column {
                        None => Ok(None),
                        Some(i) => rules.number(cell(i)).map_err(|r| row_error(name(i), r)),
                    }
                };
                let flag = group
                    .flag
                    .map(cell)
                    .filter(|f| !f.is_empty() && !rules.profile.is_missing(f))
                    .map(str::to_owned);
                Ok(ParsedRow {
                    line: number,
                    group: index as u32,
                    sensor_id: group.sensor_id.clone(),
                    event_time_ms,
                    moisture_vwc: group.moisture_unit.to_schema(moisture),
                    soil_temp_c: optional(group.temperature)?.map(|t| group.temperature_unit.to_schema(t)),
                    bulk_ec_ds_m: optional(group.ec)?.map(|ec| group.ec_unit.to_schema(ec)),
                    depth_cm: group.depth_cm,
                    battery_v: optional(group.battery)?,
                    source_flag: flag,
                })
            })();
            out.push(parsed);
        }
        Ok(())
    }

    fn index_of(&self, name: &str) -> Result<usize, String> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "column `{name}` is not in the header (columns: {})",
                self.names.join(", ")
            )
        })
    }

    fn unit_line(&self, index: usize) -> Option<&str> {
        self.units
            .get(index)
            .map(String::as_str)
            .filter(|u| !u.is_empty())
    }

    fn resolve_columns(&mut self, rules: &CellRules) -> Result<(), String> {
        let profile = &rules.profile;
        self.timestamp = match &profile.timestamp_column {
            Some(name) => self.index_of(name)?,
            None => self
                .names
                .iter()
                .position(|n| TIMESTAMP_NAMES.contains(&normalise(n).as_str()))
                .ok_or_else(|| {
                    format!(
                        "no timestamp column (looked for {}); name it with `timestamp_column` in the profile",
                        TIMESTAMP_NAMES.join(", ")
                    )
                })?,
        };
        if self.format == LogFormat::Toa5 && rules.utc_offset.is_none() {
            return Err(
                "TOA5 timestamps are the logger's clock without a UTC offset: say which with --utc-offset \
                 or `utc_offset` in the profile (\"+00:00\" if the logger keeps UTC)"
                    .into(),
            );
        }
        let shared_battery = match &profile.battery_column {
            Some(name) => Some(self.index_of(name)?),
            None => self.names.iter().position(|n| normalise(n).starts_with("batt")),
        };
        let shared_flag = profile
            .flag_column
            .as_deref()
            .map(|n| self.index_of(n))
            .transpose()?;
        let specs: Vec<SensorColumns> = if profile.sensors.is_empty() {
            self.detect_groups(profile.sensor_prefix.clone())?
        } else {
            profile.sensors.clone()
        };
        let defaults = rules.units();
        let mut groups = Vec::with_capacity(specs.len());
        for spec in specs {
            let at = |reason: String| format!("sensor `{}`: {reason}", spec.sensor_id);
            let moisture = self.index_of(&spec.moisture).map_err(at)?;
            let temperature = spec
                .temperature
                .as_deref()
                .map(|n| self.index_of(n))
                .transpose()
                .map_err(at)?;
            let ec = spec
                .ec
                .as_deref()
                .map(|n| self.index_of(n))
                .transpose()
                .map_err(at)?;
            let battery = match &spec.battery {
                Some(n) => Some(self.index_of(n).map_err(at)?),
                None => shared_battery,
            };
            let flag = match &spec.flag {
                Some(n) => Some(self.index_of(n).map_err(at)?),
                None => shared_flag,
            };
            let from_line = |index: Option<usize>| index.and_then(|i| self.unit_line(i));
            let moisture_unit = match (spec.moisture_unit, from_line(Some(moisture))) {
                (Some(unit), _) => unit,
                (None, Some(text)) => MoistureUnit::parse(text).map_err(|e| {
                    at(format!(
                        "column `{}`: the units line says {e}; state `moisture_unit` in the profile",
                        self.names[moisture]
                    ))
                })?,
                (None, None) => defaults.moisture,
            };
            let temperature_unit = match (spec.temperature_unit, from_line(temperature)) {
                (Some(unit), _) => unit,
                (None, Some(text)) => TemperatureUnit::parse(text).map_err(|e| {
                    at(format!(
                        "the units line says {e}; state `temperature_unit` in the profile"
                    ))
                })?,
                (None, None) => defaults.temperature,
            };
            let ec_unit = match (spec.ec_unit, from_line(ec)) {
                (Some(unit), _) => unit,
                (None, Some(text)) => EcUnit::parse(text)
                    .map_err(|e| at(format!("the units line says {e}; state `ec_unit` in the profile")))?,
                (None, None) => defaults.ec,
            };
            groups.push(Group {
                sensor_id: spec.sensor_id,
                depth_cm: spec.depth_cm,
                moisture,
                temperature,
                ec,
                battery,
                flag,
                moisture_unit,
                temperature_unit,
                ec_unit,
            });
        }
        if groups.is_empty() {
            return Err(
                "no column group: no column is named like VWC_10cm, and the profile names no [[sensor]]"
                    .into(),
            );
        }
        self.groups = groups;
        Ok(())
    }

    /// Column groups found from the names: one per depth that has a
    /// moisture column.
    fn detect_groups(&self, prefix: Option<String>) -> Result<Vec<SensorColumns>, String> {
        let mut by_depth: std::collections::BTreeMap<i32, [Option<String>; 3]> =
            std::collections::BTreeMap::new();
        for name in &self.names {
            if let Some((quantity, depth)) = quantity_and_depth(name) {
                let slot = &mut by_depth.entry(depth).or_default()[quantity as usize];
                if let Some(previous) = slot {
                    return Err(format!(
                        "columns `{previous}` and `{name}` both look like the same quantity at {depth} cm; \
                         name the groups with [[sensor]] entries in a profile"
                    ));
                }
                *slot = Some(name.clone());
            }
        }
        let prefix = prefix.or_else(|| self.station.clone()).ok_or_else(|| {
            "the readings need sensor ids: set `sensor_prefix` (ids become <prefix>-<depth>cm) or name \
             [[sensor]] entries in a profile"
                .to_owned()
        })?;
        let mut groups = Vec::new();
        for (depth, [moisture, temperature, ec]) in by_depth {
            let Some(moisture) = moisture else {
                tracing::info!(depth_cm = depth, "a column group without moisture is ignored");
                continue;
            };
            let sensor_id = format!("{prefix}-{depth}cm");
            crate::model::check_id("sensor_id", &sensor_id)
                .map_err(|e| format!("sensor id `{sensor_id}`: {e}"))?;
            groups.push(SensorColumns {
                sensor_id,
                depth_cm: depth,
                moisture,
                temperature,
                ec,
                battery: None,
                flag: None,
                moisture_unit: None,
                temperature_unit: None,
                ec_unit: None,
            });
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_give_quantity_and_depth() {
        assert_eq!(quantity_and_depth("VWC_10cm"), Some((Quantity::Moisture, 10)));
        assert_eq!(
            quantity_and_depth("T_30cm_Avg"),
            Some((Quantity::Temperature, 30))
        );
        assert_eq!(quantity_and_depth("EC-100mm"), Some((Quantity::Ec, 10)));
        assert_eq!(
            quantity_and_depth("SM_0.5m"),
            None,
            "a dot splits the number: not a depth"
        );
        assert_eq!(
            quantity_and_depth("soil_temp_5cm"),
            Some((Quantity::Temperature, 5))
        );
        assert_eq!(quantity_and_depth("VW_Avg"), None);
        assert_eq!(quantity_and_depth("AirTC_Avg"), None);
        assert_eq!(quantity_and_depth("VWC_10cm_max"), None);
        assert_eq!(
            detected_groups(&["TIMESTAMP", "VWC_10cm", "VWC_30cm", "T_10cm"]),
            2
        );
        assert_eq!(detected_groups(&["VWC_10cm"]), 0, "no timestamp column");
    }
}
