//! The header row and the data rows of an SD-card log.
//!
//! Columns are found by name in the header row (required), so their order
//! does not matter and extra columns are ignored. Names are compared after
//! trimming, lower-casing and turning spaces and `-` into `_`; each column
//! accepts a few aliases that loggers commonly write:
//!
//! | column | required | accepted names | unit / form |
//! |---|---|---|---|
//! | sensor id | yes | `sensor_id`, `sensor`, `probe_id`, `probe`, `sensorid` | text, 1-128 bytes |
//! | timestamp | yes | `timestamp`, `time`, `datetime`, `event_time`, `event_time_ms`, `ts`, `epoch_ms` | RFC 3339 with offset, or integer ms since the Unix epoch |
//! | moisture | yes | `moisture`, `moisture_vwc`, `vwc`, `soil_moisture`, `theta` | m3/m3 |
//! | temperature | no (absent when empty or missing) | `temperature`, `soil_temp_c`, `temp_c`, `temp`, `soil_temperature` | °C |
//! | EC | no | `ec`, `bulk_ec_ds_m`, `ec_ds_m`, `bulk_ec` | dS/m |
//! | depth | no (default from the options) | `depth_cm`, `depth` | integer cm, 0-10000 |
//! | battery | no | `battery_v`, `battery`, `vbat`, `batt_v` | V |
//! | provider flag | no | `source_flag`, `flag`, `quality_flag`, `qc_flag` | text, verbatim |
//!
//! Values are trimmed of surrounding spaces and tabs. An empty optional value,
//! or one of the profile's missing markers (`NAN`, `-9999`, ... by default),
//! means "not reported"; a missing moisture rejects the row. Units are the
//! profile's (`[units]`), m3/m3, °C and dS/m by default; with a profile's
//! `utc_offset`, naive timestamps (`2024-05-01 06:00:00`) are accepted too. RFC 3339 times with sub-millisecond digits are
//! truncated to the millisecond. Event times must lie after the Unix epoch
//! (a Kafka record timestamp of 0 or less means "none" to clients) and before
//! the year 10000.

use super::format::CellRules;
use super::lines::Fields;
use super::profile::Profile;
use std::fmt;

/// Largest installation depth accepted, in cm.
pub const MAX_DEPTH_CM: i32 = 10_000;

/// Earliest accepted event time, ms since the Unix epoch: Kafka clients treat
/// a timestamp of 0 as "stamp it now" and negative ones as invalid.
pub const MIN_EVENT_TIME_MS: i64 = 1;

/// Latest accepted event time, ms since the Unix epoch (9999-12-31T23:59:59.999Z).
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Longest excerpt of an offending value quoted in an error message, in characters.
const VALUE_EXCERPT_CHARS: usize = 40;

/// A column the backfill understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// Probe identifier.
    SensorId,
    /// Event time.
    Timestamp,
    /// Volumetric water content, m3/m3.
    Moisture,
    /// Soil temperature, °C.
    Temperature,
    /// Bulk electrical conductivity, dS/m.
    Ec,
    /// Installation depth, cm.
    DepthCm,
    /// Supply voltage, V.
    BatteryV,
    /// The provider's quality flag.
    Flag,
}

impl Column {
    /// Every column, in the documented order.
    pub const ALL: [Column; 8] = [
        Column::SensorId,
        Column::Timestamp,
        Column::Moisture,
        Column::Temperature,
        Column::Ec,
        Column::DepthCm,
        Column::BatteryV,
        Column::Flag,
    ];

    /// Accepted header names (normalised); the first is the canonical one.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Column::SensorId => &["sensor_id", "sensor", "probe_id", "probe", "sensorid"],
            Column::Timestamp => &[
                "timestamp",
                "time",
                "datetime",
                "event_time",
                "event_time_ms",
                "ts",
                "epoch_ms",
            ],
            Column::Moisture => &["moisture", "moisture_vwc", "vwc", "soil_moisture", "theta"],
            Column::Temperature => &["temperature", "soil_temp_c", "temp_c", "temp", "soil_temperature"],
            Column::Ec => &["ec", "bulk_ec_ds_m", "ec_ds_m", "bulk_ec"],
            Column::DepthCm => &["depth_cm", "depth"],
            Column::BatteryV => &["battery_v", "battery", "vbat", "batt_v"],
            Column::Flag => &["source_flag", "flag", "quality_flag", "qc_flag"],
        }
    }

    /// The canonical header name.
    pub fn canonical_name(self) -> &'static str {
        self.names()[0]
    }

    /// Whether a log must have this column.
    pub fn is_required(self) -> bool {
        matches!(self, Column::SensorId | Column::Timestamp | Column::Moisture)
    }

    fn index(self) -> usize {
        Column::ALL
            .iter()
            .position(|c| *c == self)
            .expect("every column is in ALL")
    }

    /// The column a (raw) header name stands for, if any.
    pub fn from_header_name(name: &str) -> Option<Column> {
        let normalised = normalise_name(name);
        Column::ALL
            .into_iter()
            .find(|c| c.names().contains(&normalised.as_str()))
    }
}

fn normalise_name(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A bad row (or header): where it is and what is wrong, shown as
/// `file:line: column: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {column}: {reason}")]
pub struct RowError {
    /// The log file, as given.
    pub file: String,
    /// Physical line number, from 1.
    pub line: u64,
    /// The column at fault as named in the header, or `row` / `header` when
    /// the fault is not in one column.
    pub column: String,
    /// What is wrong.
    pub reason: String,
}

impl RowError {
    /// A new error.
    pub fn new(file: &str, line: u64, column: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column: column.into(),
            reason: reason.into(),
        }
    }
}

/// The columns of a log, from its header row.
#[derive(Debug, Clone)]
pub struct LogHeader {
    /// Header names as written (trimmed), one per field.
    names: Vec<String>,
    /// Field index of each known column, indexed like [`Column::ALL`].
    positions: [Option<usize>; 8],
}

impl LogHeader {
    /// Reads the header row. `file` and `line` are for error messages.
    pub fn parse(fields: &Fields, file: &str, line: u64) -> Result<Self, RowError> {
        let mut positions = [None; 8];
        let mut names = Vec::with_capacity(fields.len());
        for index in 0..fields.len() {
            let raw = fields.get(index).unwrap_or_default();
            let name = raw.trim().trim_start_matches('\u{feff}').trim().to_owned();
            if let Some(column) = Column::from_header_name(&name) {
                let slot = &mut positions[column.index()];
                if let Some(previous) = *slot {
                    let previous_name: &String = &names[previous];
                    return Err(RowError::new(
                        file,
                        line,
                        name.clone(),
                        format!("column given twice (as `{previous_name}` and `{name}`)"),
                    ));
                }
                *slot = Some(index);
            } else {
                tracing::info!(file, column = %name, "ignoring unknown column");
            }
            names.push(name);
        }
        if positions.iter().all(Option::is_none) {
            return Err(RowError::new(
                file,
                line,
                "header",
                format!(
                    "no known column name; the first line must be a header naming at least {}",
                    required_names()
                ),
            ));
        }
        for column in Column::ALL {
            if column.is_required() && positions[column.index()].is_none() {
                return Err(RowError::new(
                    file,
                    line,
                    column.canonical_name(),
                    format!(
                        "missing required column (accepted names: {})",
                        column.names().join(", ")
                    ),
                ));
            }
        }
        Ok(Self { names, positions })
    }

    /// How strongly header names (as written) say "long log": 2 when they
    /// name a sensor id column (one reading per row), 1 when they name any
    /// other column of the long layout, 0 when none.
    pub fn long_log_evidence(names: &[&str]) -> u8 {
        let columns: Vec<Column> = names.iter().filter_map(|n| Column::from_header_name(n)).collect();
        if columns.contains(&Column::SensorId) {
            2
        } else {
            u8::from(!columns.is_empty())
        }
    }

    /// The header name of the column a reading field came from.
    pub fn column_of_field(&self, field: &str) -> &str {
        let column = match field {
            "sensor_id" => Column::SensorId,
            "event_time" => Column::Timestamp,
            "moisture_vwc" => Column::Moisture,
            "soil_temp_c" => Column::Temperature,
            "bulk_ec_ds_m" => Column::Ec,
            "depth_cm" => Column::DepthCm,
            "battery_v" => Column::BatteryV,
            "source_flag" => Column::Flag,
            _ => return "row",
        };
        self.name_of(column)
    }

    /// Number of fields every row must have.
    pub fn field_count(&self) -> usize {
        self.names.len()
    }

    /// Whether the log has `column`.
    pub fn has(&self, column: Column) -> bool {
        self.positions[column.index()].is_some()
    }

    /// The name `column` has in this log's header (its canonical name if the
    /// log lacks it).
    pub fn name_of(&self, column: Column) -> &str {
        match self.positions[column.index()] {
            Some(index) => &self.names[index],
            None => column.canonical_name(),
        }
    }

    /// Parses one data row with the default rules (no profile).
    /// `default_depth_cm` stands in for a missing or empty depth.
    pub fn parse_row(
        &self,
        fields: &Fields,
        file: &str,
        line: u64,
        default_depth_cm: Option<i32>,
    ) -> Result<ParsedRow, RowError> {
        let rules = CellRules {
            profile: Profile::default(),
            utc_offset: None,
            default_depth_cm,
        };
        self.parse_row_with(fields, file, line, &rules)
    }

    /// Parses one data row: missing markers, units and the offset of naive
    /// timestamps by `rules`.
    pub fn parse_row_with(
        &self,
        fields: &Fields,
        file: &str,
        line: u64,
        rules: &CellRules,
    ) -> Result<ParsedRow, RowError> {
        if fields.len() != self.field_count() {
            let column = if fields.len() < self.field_count() {
                self.names[fields.len()].clone()
            } else {
                "row".to_owned()
            };
            let what = if fields.len() < self.field_count() {
                "missing"
            } else {
                "extra fields"
            };
            return Err(RowError::new(
                file,
                line,
                column,
                format!(
                    "{what}: row has {} fields, header has {}",
                    fields.len(),
                    self.field_count()
                ),
            ));
        }
        let cell = |column: Column| -> Option<&str> {
            self.positions[column.index()]
                .map(|i| fields.get(i).unwrap_or_default().trim_matches([' ', '\t']))
        };
        let error = |column: Column, reason: String| RowError::new(file, line, self.name_of(column), reason);
        let optional = |column: Column| -> Result<Option<f64>, RowError> {
            match cell(column) {
                None => Ok(None),
                Some(text) => rules.number(text).map_err(|r| error(column, r)),
            }
        };
        let units = rules.units();

        let sensor_id = cell(Column::SensorId).unwrap_or_default();
        if sensor_id.is_empty() {
            return Err(error(Column::SensorId, "empty".into()));
        }
        let event_time_ms = rules
            .event_time_ms(cell(Column::Timestamp).unwrap_or_default())
            .map_err(|reason| error(Column::Timestamp, reason))?;
        let moisture_vwc = rules
            .moisture(cell(Column::Moisture).unwrap_or_default())
            .map_err(|r| error(Column::Moisture, r))?;
        let soil_temp_c = optional(Column::Temperature)?;
        let bulk_ec_ds_m = optional(Column::Ec)?;
        let battery_v = optional(Column::BatteryV)?;
        let depth_cm = match cell(Column::DepthCm).filter(|v| !v.is_empty()) {
            Some(text) => parse_depth_cm(text).map_err(|r| error(Column::DepthCm, r))?,
            None => rules.default_depth_cm.ok_or_else(|| {
                error(
                    Column::DepthCm,
                    "no depth: the column is empty or absent and no default depth is set (--depth-cm)".into(),
                )
            })?,
        };
        let source_flag = cell(Column::Flag)
            .filter(|f| !f.is_empty() && !rules.profile.is_missing(f))
            .map(str::to_owned);
        Ok(ParsedRow {
            line,
            group: 0,
            sensor_id: sensor_id.to_owned(),
            event_time_ms,
            moisture_vwc: units.moisture.to_schema(moisture_vwc),
            soil_temp_c: soil_temp_c.map(|t| units.temperature.to_schema(t)),
            bulk_ec_ds_m: bulk_ec_ds_m.map(|ec| units.ec.to_schema(ec)),
            depth_cm,
            battery_v,
            source_flag,
        })
    }
}

fn required_names() -> String {
    Column::ALL
        .iter()
        .filter(|c| c.is_required())
        .map(|c| c.canonical_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of one data row.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRow {
    /// Physical line number.
    pub line: u64,
    /// Which column group of the line (0 for one reading per line).
    pub group: u32,
    /// Probe identifier.
    pub sensor_id: String,
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Volumetric water content, m3/m3.
    pub moisture_vwc: f64,
    /// Soil temperature, °C, when the log has one.
    pub soil_temp_c: Option<f64>,
    /// Bulk electrical conductivity, dS/m.
    pub bulk_ec_ds_m: Option<f64>,
    /// Installation depth, cm.
    pub depth_cm: i32,
    /// Supply voltage, V.
    pub battery_v: Option<f64>,
    /// The provider's quality flag, verbatim.
    pub source_flag: Option<String>,
}

/// Shows `value` in an error message: quoted, escaped, shortened.
pub(crate) fn excerpt(value: &str) -> String {
    if value.chars().count() <= VALUE_EXCERPT_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(VALUE_EXCERPT_CHARS).collect();
        format!("{head:?}...")
    }
}

/// Parses an event time: integer ms since the Unix epoch, or an RFC 3339
/// timestamp with an offset (`Z` or `±hh:mm`).
pub fn parse_event_time_ms(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Err("empty".into());
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let ms = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>()
            .map_err(|_| format!("epoch milliseconds out of range: {}", excerpt(text)))?
    } else {
        let timestamp: jiff::Timestamp = text.parse().map_err(|e| {
            format!(
                "not an RFC 3339 time with offset nor integer epoch milliseconds: {} ({e})",
                excerpt(text)
            )
        })?;
        timestamp.as_millisecond()
    };
    if ms < MIN_EVENT_TIME_MS {
        return Err(format!(
            "{} is not after the Unix epoch (Kafka record timestamps must be positive)",
            excerpt(text)
        ));
    }
    if ms > MAX_EVENT_TIME_MS {
        return Err(format!("{} is after the year 9999", excerpt(text)));
    }
    Ok(ms)
}

fn parse_depth_cm(text: &str) -> Result<i32, String> {
    let depth: i32 = text
        .parse()
        .map_err(|_| format!("not an integer number of cm: {}", excerpt(text)))?;
    if !(0..=MAX_DEPTH_CM).contains(&depth) {
        return Err(format!("{depth} cm is outside 0..={MAX_DEPTH_CM}"));
    }
    Ok(depth)
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.canonical_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "log.csv";

    fn fields(line: &str) -> Fields {
        let mut fields = Fields::new();
        fields.split(line).unwrap();
        fields
    }

    fn header(line: &str) -> Result<LogHeader, RowError> {
        LogHeader::parse(&fields(line), FILE, 1)
    }

    fn row(header_line: &str, line: &str) -> Result<ParsedRow, RowError> {
        header(header_line)
            .unwrap()
            .parse_row(&fields(line), FILE, 7, Some(30))
    }

    fn row_error(header_line: &str, line: &str) -> String {
        row(header_line, line).unwrap_err().to_string()
    }

    const HEADER: &str = "sensor_id,timestamp,moisture,temperature,ec,depth_cm,battery_v";

    #[test]
    fn rfc3339_with_offsets_and_epoch_ms() {
        let utc = 1_714_536_000_000; // 2024-05-01T04:00:00Z
        assert_eq!(parse_event_time_ms("2024-05-01T06:00:00+02:00"), Ok(utc));
        assert_eq!(parse_event_time_ms("2024-05-01T04:00:00Z"), Ok(utc));
        assert_eq!(parse_event_time_ms("2024-04-30T23:30:00-04:30"), Ok(utc));
        assert_eq!(parse_event_time_ms("2024-05-01T04:00:00.123Z"), Ok(utc + 123));
        assert_eq!(parse_event_time_ms("2024-05-01T04:00:00.123999Z"), Ok(utc + 123));
        assert_eq!(parse_event_time_ms("1714536000000"), Ok(utc));
        assert_eq!(parse_event_time_ms("1"), Ok(1));
    }

    #[test]
    fn bad_event_times() {
        let no_offset = parse_event_time_ms("2024-05-01T06:00:00").unwrap_err();
        assert!(
            no_offset.starts_with(
                "not an RFC 3339 time with offset nor integer epoch milliseconds: \"2024-05-01T06:00:00\" ("
            ),
            "{no_offset}"
        );
        assert!(parse_event_time_ms("2024-13-01T00:00:00Z").is_err());
        assert!(parse_event_time_ms("yesterday").is_err());
        assert_eq!(parse_event_time_ms(""), Err("empty".to_owned()));
        assert_eq!(
            parse_event_time_ms("0"),
            Err("\"0\" is not after the Unix epoch (Kafka record timestamps must be positive)".to_owned())
        );
        assert!(parse_event_time_ms("-5").is_err());
        assert!(parse_event_time_ms("1969-12-31T23:59:59Z").is_err());
        assert_eq!(
            parse_event_time_ms("99999999999999999999"),
            Err("epoch milliseconds out of range: \"99999999999999999999\"".to_owned())
        );
        assert_eq!(
            parse_event_time_ms("253402300800000"),
            Err("\"253402300800000\" is after the year 9999".to_owned())
        );
    }

    #[test]
    fn full_row() {
        let parsed = row(
            HEADER,
            "probe-1, 2024-05-01T06:00:00+02:00 ,0.312,14.5,0.42,10,3.61",
        )
        .unwrap();
        assert_eq!(
            parsed,
            ParsedRow {
                line: 7,
                group: 0,
                sensor_id: "probe-1".into(),
                event_time_ms: 1_714_536_000_000,
                moisture_vwc: 0.312,
                soil_temp_c: Some(14.5),
                bulk_ec_ds_m: Some(0.42),
                depth_cm: 10,
                battery_v: Some(3.61),
                source_flag: None,
            }
        );
    }

    #[test]
    fn optional_columns_and_default_depth() {
        let parsed = row(HEADER, "p,1714536000000,0.3,14,,,").unwrap();
        assert_eq!(parsed.bulk_ec_ds_m, None);
        assert_eq!(parsed.battery_v, None);
        assert_eq!(parsed.depth_cm, 30, "default depth");
        let minimal = header("sensor_id,timestamp,moisture,temperature").unwrap();
        let parsed = minimal
            .parse_row(&fields("p,1714536000000,0.3,14"), FILE, 2, Some(45))
            .unwrap();
        assert_eq!((parsed.depth_cm, parsed.bulk_ec_ds_m), (45, None));
        assert_eq!(
            minimal
                .parse_row(&fields("p,1714536000000,0.3,14"), FILE, 2, None)
                .unwrap_err()
                .to_string(),
            "log.csv:2: depth_cm: no depth: the column is empty or absent and no default depth is set (--depth-cm)"
        );
    }

    #[test]
    fn aliases_case_and_order() {
        let h = header("\u{feff}Time, VWC ,Probe ID,Soil-Temperature,Depth,VBat,notes").unwrap();
        assert_eq!(h.name_of(Column::SensorId), "Probe ID");
        assert_eq!(h.name_of(Column::Moisture), "VWC");
        assert!(!h.has(Column::Ec));
        let parsed = h
            .parse_row(
                &fields("2024-05-01T04:00:00Z,0.25,s9,12.0,60,3.3,\"dug up, replaced\""),
                FILE,
                3,
                None,
            )
            .unwrap();
        assert_eq!(parsed.sensor_id, "s9");
        assert_eq!(parsed.moisture_vwc, 0.25);
        assert_eq!(parsed.soil_temp_c, Some(12.0));
        assert_eq!(parsed.depth_cm, 60);
        assert_eq!(parsed.battery_v, Some(3.3));
        for column in Column::ALL {
            for name in column.names() {
                assert_eq!(Column::from_header_name(name), Some(column), "{name}");
            }
        }
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            header("sensor_id,moisture,temperature").unwrap_err().to_string(),
            "log.csv:1: timestamp: missing required column (accepted names: timestamp, time, datetime, \
             event_time, event_time_ms, ts, epoch_ms)"
        );
        assert_eq!(
            header("sensor_id,timestamp,moisture,vwc,temperature")
                .unwrap_err()
                .to_string(),
            "log.csv:1: vwc: column given twice (as `moisture` and `vwc`)"
        );
        assert_eq!(
            header("p1,2024-05-01T04:00:00Z,0.3,14").unwrap_err().to_string(),
            "log.csv:1: header: no known column name; the first line must be a header naming at least \
             sensor_id, timestamp, moisture"
        );
    }

    #[test]
    fn every_row_error_form() {
        let cases = [
            (",1714536000000,0.3,14,,,", "log.csv:7: sensor_id: empty"),
            (
                "p,yesterday,0.3,14,,,",
                "log.csv:7: timestamp: not an RFC 3339 time with offset nor integer epoch milliseconds: \
                 \"yesterday\"",
            ),
            ("p,,0.3,14,,,", "log.csv:7: timestamp: empty"),
            (
                "p,1714536000000,wet,14,,,",
                "log.csv:7: moisture: not a number: \"wet\"",
            ),
            (
                "p,1714536000000,inf,14,,,",
                "log.csv:7: moisture: not a finite number: \"inf\"",
            ),
            (
                "p,1714536000000,,14,,,",
                "log.csv:7: moisture: no moisture (empty): a reading without moisture is not a reading",
            ),
            (
                "p,1714536000000,0.3,hot,,,",
                "log.csv:7: temperature: not a number: \"hot\"",
            ),
            ("p,1714536000000,0.3,14,x,,", "log.csv:7: ec: not a number: \"x\""),
            (
                "p,1714536000000,0.3,14,,deep,",
                "log.csv:7: depth_cm: not an integer number of cm: \"deep\"",
            ),
            (
                "p,1714536000000,0.3,14,,-5,",
                "log.csv:7: depth_cm: -5 cm is outside 0..=10000",
            ),
            (
                "p,1714536000000,0.3,14,,,inf",
                "log.csv:7: battery_v: not a finite number: \"inf\"",
            ),
            (
                "p,1714536000000,0.3,14,,",
                "log.csv:7: battery_v: missing: row has 6 fields, header has 7",
            ),
            (
                "p,1714536000000,0.3",
                "log.csv:7: temperature: missing: row has 3 fields, header has 7",
            ),
            (
                "p,1714536000000,0.3,14,,,,",
                "log.csv:7: row: extra fields: row has 8 fields, header has 7",
            ),
        ];
        for (line, expected) in cases {
            let message = row_error(HEADER, line);
            assert!(message.starts_with(expected), "{line}: {message} !~ {expected}");
        }
        let long = "x".repeat(100);
        let message = row_error(HEADER, &format!("p,1714536000000,{long},14,,,"));
        assert_eq!(
            message,
            format!(
                "log.csv:7: moisture: not a number: \"{}\"...",
                "x".repeat(VALUE_EXCERPT_CHARS)
            )
        );
    }
}
