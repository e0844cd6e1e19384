//! The field-log formats the backfill reads, detected from the file or
//! chosen with `--format`:
//!
//! | format | what writes it | layout |
//! |---|---|---|
//! | `long-csv` | our own SD-card log, many exports | header row; one row per reading with `sensor_id`, `timestamp`, `moisture`, ... ([`super::row`]) |
//! | `wide-csv` | logger exports | header row; one row per timestamp, a column per (quantity, depth): `VWC_10cm, T_10cm, EC_10cm, ...` ([`table`]) |
//! | `toa5` | Campbell Scientific loggers (`.dat`) | four header lines (file info, field names, units, processing), then one row per timestamp ([`table`]) |
//! | `ismn` | International Soil Moisture Network (`.stm`) | one variable per file; a header line or the CEOP layout ([`ismn`]) |
//!
//! Every format turns a physical line into zero or more [`ParsedRow`]s (a
//! wide row holds one reading per column group), each with its line number
//! and group index: the reading's `seq` is the line number, so identities
//! are the same on every run and resume of the same file, and strictly
//! increasing per sensor in file order. Units are converted to the schema's
//! (m3/m3, °C, dS/m) by the rules of a [`Profile`]; a missing value is
//! absent, never zero; a reading without moisture is reported, not sent.

pub mod ismn;
pub mod table;

use super::lines::Fields;
use super::profile::{Profile, Units, UtcOffset};
use super::row::{
    LogHeader, MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS, ParsedRow, RowError, excerpt, parse_event_time_ms,
};
use std::path::Path;

/// A field-log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One reading per row, columns named ([`super::row`]).
    LongCsv,
    /// One row per timestamp, a column per quantity and depth.
    WideCsv,
    /// Campbell Scientific TOA5.
    Toa5,
    /// ISMN `.stm` (header-line and CEOP variants).
    Ismn,
}

impl LogFormat {
    /// Every format, in the order detection tries them.
    pub const ALL: [LogFormat; 4] = [
        LogFormat::Toa5,
        LogFormat::Ismn,
        LogFormat::LongCsv,
        LogFormat::WideCsv,
    ];

    /// The name `--format` and profiles use.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::LongCsv => "long-csv",
            LogFormat::WideCsv => "wide-csv",
            LogFormat::Toa5 => "toa5",
            LogFormat::Ismn => "ismn",
        }
    }

    /// The format a name stands for.
    pub fn parse(name: &str) -> Result<Self, String> {
        let key = name.trim().to_ascii_lowercase().replace('_', "-");
        match key.as_str() {
            "long-csv" | "csv" | "long" => Ok(LogFormat::LongCsv),
            "wide-csv" | "wide" => Ok(LogFormat::WideCsv),
            "toa5" | "dat" => Ok(LogFormat::Toa5),
            "ismn" | "stm" => Ok(LogFormat::Ismn),
            _ => Err(format!(
                "unknown format `{name}` (formats: {})",
                LogFormat::ALL.map(LogFormat::name).join(", ")
            )),
        }
    }

    /// The format of a file whose first non-blank line is `first_line`.
    pub fn detect(first_line: &str, file_name: &str, profile: &Profile) -> Result<Self, String> {
        let line = first_line.trim_start_matches('\u{feff}').trim();
        if line.starts_with("\"TOA5\"") || line.starts_with("TOA5,") {
            return Ok(LogFormat::Toa5);
        }
        if ismn::looks_like_ismn(line, file_name) {
            return Ok(LogFormat::Ismn);
        }
        let mut fields = Fields::new();
        if fields.split(line).is_ok() && fields.len() > 1 {
            let names: Vec<&str> = (0..fields.len()).filter_map(|i| fields.get(i)).collect();
            let long = LogHeader::long_log_evidence(&names);
            if long == 2 {
                return Ok(LogFormat::LongCsv);
            }
            if !profile.sensors.is_empty() || table::detected_groups(&names) > 0 {
                return Ok(LogFormat::WideCsv);
            }
            if long == 1 {
                // Let the long layout name the columns it misses.
                return Ok(LogFormat::LongCsv);
            }
        }
        Err(format!(
            "the format is not recognised from its first line {}; tried: toa5 (first field \"TOA5\"), \
             ismn (.stm: a station header line or CEOP rows `yyyy/mm/dd HH:MM ...`), long-csv (a header \
             naming sensor_id, timestamp and moisture), wide-csv (a header with a timestamp column and \
             columns such as VWC_10cm, T_10cm); choose one with --format and name the columns with --profile",
            excerpt(line)
        ))
    }
}

/// How cells become values: missing markers, units, the offset of naive
/// timestamps, the depth of rows that give none.
#[derive(Debug, Clone)]
pub struct CellRules {
    /// The profile (missing values, units, columns).
    pub profile: Profile,
    /// The offset of naive timestamps (`--utc-offset` over the profile's).
    pub utc_offset: Option<UtcOffset>,
    /// Depth for rows without one, cm.
    pub default_depth_cm: Option<i32>,
}

impl CellRules {
    /// Units for columns that do not state their own.
    pub fn units(&self) -> Units {
        self.profile.default_units()
    }

    /// A number, or `None` when the cell holds a missing marker.
    pub fn number(&self, text: &str) -> Result<Option<f64>, String> {
        let text = text.trim_matches([' ', '\t']);
        if self.profile.is_missing(text) {
            return Ok(None);
        }
        let value: f64 = text
            .parse()
            .map_err(|_| format!("not a number: {}", excerpt(text)))?;
        if !value.is_finite() {
            return Err(format!(
                "not a finite number: {} (list it under `missing` in the profile if it means missing)",
                excerpt(text)
            ));
        }
        Ok(Some(value))
    }

    /// The moisture of a reading: a missing value is an error, because a
    /// reading without moisture is not a reading.
    pub fn moisture(&self, text: &str) -> Result<f64, String> {
        self.number(text)?.ok_or_else(|| {
            format!(
                "no moisture ({}): a reading without moisture is not a reading; reported, not sent",
                if text.trim().is_empty() {
                    "empty".to_owned()
                } else {
                    format!("missing value {}", excerpt(text.trim()))
                }
            )
        })
    }

    /// An event time: epoch ms, RFC 3339 with an offset, or a naive date and
    /// time in the rules' UTC offset.
    pub fn event_time_ms(&self, text: &str) -> Result<i64, String> {
        let text = text.trim_matches([' ', '\t']);
        let with_offset = parse_event_time_ms(text);
        if with_offset.is_ok() || text.is_empty() {
            return with_offset;
        }
        let Some(offset) = self.utc_offset else {
            return with_offset.map_err(|reason| {
                format!(
                    "{reason}; if the log writes local time without an offset, say which with \
                     --utc-offset or `utc_offset` in the profile (\"+00:00\" if the logger keeps UTC)"
                )
            });
        };
        let ms = offset.naive_to_epoch_ms(text)?;
        if !(MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ms) {
            return Err(format!("{} is outside 1970..9999", excerpt(text)));
        }
        Ok(ms)
    }
}

/// Turns the lines of one log into readings, whatever its format.
#[derive(Debug)]
pub struct LogDecoder {
    file_label: String,
    file_name: String,
    forced: Option<LogFormat>,
    rules: CellRules,
    state: State,
}

#[derive(Debug)]
enum State {
    /// No line seen yet: the format is not known.
    Undetected,
    Long(Option<LogHeader>),
    Table(table::TableDecoder),
    Ismn(ismn::IsmnDecoder),
}

impl LogDecoder {
    /// A decoder for the log at `path` (named `file_label` in messages); the
    /// format is `forced`, the profile's, or detected from the first line.
    pub fn new(
        path: &Path,
        file_label: &str,
        forced: Option<LogFormat>,
        rules: CellRules,
    ) -> Result<Self, RowError> {
        let forced = match (forced, rules.profile.format.as_deref()) {
            (Some(format), _) => Some(format),
            (None, Some(name)) => {
                Some(LogFormat::parse(name).map_err(|e| RowError::new(file_label, 0, "profile", e))?)
            }
            (None, None) => None,
        };
        Ok(Self {
            file_label: file_label.to_owned(),
            file_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            forced,
            rules,
            state: State::Undetected,
        })
    }

    /// The format, once the first line has been seen.
    pub fn format(&self) -> Option<LogFormat> {
        match &self.state {
            State::Undetected => None,
            State::Long(_) => Some(LogFormat::LongCsv),
            State::Table(table) => Some(table.format()),
            State::Ismn(_) => Some(LogFormat::Ismn),
        }
    }

    /// Whether the next non-blank line is (part of) the header.
    pub fn wants_header(&self) -> bool {
        match &self.state {
            State::Undetected => true,
            State::Long(header) => header.is_none(),
            State::Table(table) => table.wants_header(),
            State::Ismn(ismn) => ismn.wants_header(),
        }
    }

    /// Feeds one non-blank line. A header line returns no readings; an
    /// error in a header stops the run.
    pub fn line(
        &mut self,
        number: u64,
        text: &str,
        fields: &mut Fields,
        out: &mut Vec<Result<ParsedRow, RowError>>,
    ) -> Result<(), RowError> {
        if matches!(self.state, State::Undetected) {
            let format = match self.forced {
                Some(format) => format,
                None => LogFormat::detect(text, &self.file_name, &self.rules.profile)
                    .map_err(|e| RowError::new(&self.file_label, number, "format", e))?,
            };
            tracing::info!(file = %self.file_label, format = format.name(), "log format");
            self.state = match format {
                LogFormat::LongCsv => State::Long(None),
                LogFormat::WideCsv | LogFormat::Toa5 => State::Table(table::TableDecoder::new(format)),
                LogFormat::Ismn => State::Ismn(
                    ismn::IsmnDecoder::new(&self.file_name, &self.rules.profile)
                        .map_err(|e| RowError::new(&self.file_label, number, "file name", e))?,
                ),
            };
        }
        let file = self.file_label.as_str();
        match &mut self.state {
            State::Undetected => unreachable!("detected above"),
            State::Long(header) => {
                let split = |fields: &mut Fields, column: &str| {
                    fields
                        .split(text)
                        .map_err(|e| RowError::new(file, number, column, e.to_string()))
                };
                match header {
                    None => {
                        split(fields, "header")?;
                        *header = Some(LogHeader::parse(fields, file, number)?);
                    }
                    Some(header) => {
                        if let Err(e) = split(fields, "row") {
                            out.push(Err(e));
                            return Ok(());
                        }
                        out.push(header.parse_row_with(fields, file, number, &self.rules));
                    }
                }
                Ok(())
            }
            State::Table(table) => table.line(number, text, fields, file, &self.rules, out),
            State::Ismn(ismn) => ismn.line(number, text, file, &self.rules, out),
        }
    }

    /// The column of this log a reading field (`moisture_vwc`, ...) came from.
    pub fn column_of(&self, field: &str, group: u32) -> String {
        match &self.state {
            State::Long(Some(header)) => header.column_of_field(field).to_owned(),
            State::Table(table) => table.column_of(field, group),
            _ => field.to_owned(),
        }
    }
}

/// Every reading and every bad row of the log in `bytes`, without sending
/// anything (what `soilstream backfill --dry-run` shows). A header error
/// stops it.
pub fn decode_all(
    bytes: &[u8],
    path: &Path,
    forced: Option<LogFormat>,
    rules: CellRules,
) -> Result<(LogFormat, Vec<ParsedRow>, Vec<RowError>), RowError> {
    let label = path.display().to_string();
    let mut decoder = LogDecoder::new(path, &label, forced, rules)?;
    let mut reader = super::lines::LineReader::new(bytes);
    let mut fields = Fields::new();
    let (mut rows, mut errors, mut out) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(line) = reader
        .next_line()
        .map_err(|e| RowError::new(&label, 0, "file", e.to_string()))?
    {
        if line.is_blank() {
            continue;
        }
        let number = line.number;
        let text = match std::str::from_utf8(line.bytes) {
            Ok(text) if !line.truncated => text.strip_prefix('\u{feff}').unwrap_or(text),
            _ => {
                errors.push(RowError::new(&label, number, "row", "unreadable line"));
                continue;
            }
        };
        out.clear();
        decoder.line(number, text, &mut fields, &mut out)?;
        for item in out.drain(..) {
            match item {
                Ok(row) => rows.push(row),
                Err(e) => errors.push(e),
            }
        }
    }
    let format = decoder
        .format()
        .ok_or_else(|| RowError::new(&label, 1, "header", "no header row: the file is empty or blank"))?;
    if decoder.wants_header() {
        return Err(RowError::new(
            &label,
            1,
            "header",
            "the file ends inside its header",
        ));
    }
    Ok((format, rows, errors))
}

#[cfg(test)]
mod tests;
