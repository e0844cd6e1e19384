//! A mapping profile (`--profile FILE`, TOML): which columns of a field log
//! are which sensor, depth and quantity, the unit of each, the UTC offset of
//! naive timestamps, and the values that mean "missing".
//!
//! ```toml
//! format = "toa5"            # long-csv | toa5 | ismn | wide-csv; detected when absent
//! utc_offset = "-06:00"      # of naive timestamps (TOA5, wide tables)
//! missing = ["NAN", "-9999", "-6999", "-7999", ""]
//! timestamp_column = "TIMESTAMP"
//! sensor_prefix = "frf-village"   # sensor id = "<prefix>-<depth>cm" for detected groups
//! battery_column = "BattV_Min"
//! flag_column = "Status"          # verbatim into every reading's source_flag
//!
//! [units]                    # for columns whose unit is not stated otherwise
//! moisture = "m3/m3"         # m3/m3 | percent
//! temperature = "degC"       # degC | degF
//! ec = "dS/m"                # dS/m | mS/cm | uS/cm
//!
//! [[sensor]]                 # one per (sensor, depth) column group
//! sensor_id = "frf-village-vw"
//! depth_cm = 10
//! moisture = "VW_Avg"
//! temperature = "T107_C_Avg"
//! moisture_unit = "m3/m3"    # optional per group
//! ```
//!
//! Every accepted unit is listed by [`MoistureUnit`], [`TemperatureUnit`]
//! and [`EcUnit`]; values are converted to the schema's (m3/m3, °C, dS/m).
//!
//! Time: loggers keep standard time all year (a Campbell logger's clock does
//! not follow daylight saving), so a profile names a fixed UTC offset, never
//! a zone: `America/Chicago` would apply summer time the logger never did.

use serde::Deserialize;
use std::path::Path;

/// Longest profile file read, in bytes.
pub const PROFILE_MAX_BYTES: u64 = 1 << 20;

/// Most column groups a profile may name.
pub const PROFILE_MAX_SENSORS: usize = 512;

/// Values that mean "missing" when a profile does not list its own: Campbell
/// loggers write `NAN` (and `-7999` in FP2 fields), many exports `-9999` or
/// `-6999`, and an empty field is always missing.
pub const DEFAULT_MISSING_VALUES: [&str; 6] = ["NAN", "NaN", "-9999", "-6999", "-7999", ""];

/// Why a profile could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {path}: {reason}")]
pub struct ProfileError {
    /// The profile file.
    pub path: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// The unit a moisture column is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoistureUnit {
    /// Volumetric water content as a fraction, m3/m3 (`m3/m3`, `m^3/m^3`,
    /// `fraction`, `vwc`).
    CubicMetrePerCubicMetre,
    /// Volumetric water content in percent (`percent`, `%`, `vol%`,
    /// `%vwc`): divided by 100.
    Percent,
}

/// The unit a temperature column is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemperatureUnit {
    /// Degrees Celsius (`degC`, `C`, `°C`, `Deg C`, `celsius`).
    Celsius,
    /// Degrees Fahrenheit (`degF`, `F`, `°F`, `Deg F`, `fahrenheit`):
    /// (t − 32) × 5/9.
    Fahrenheit,
}

/// The unit an electrical conductivity column is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcUnit {
    /// Decisiemens per metre (`dS/m`), the schema's unit.
    DeciSiemensPerMetre,
    /// Millisiemens per centimetre (`mS/cm`): equal to dS/m.
    MilliSiemensPerCentimetre,
    /// Microsiemens per centimetre (`uS/cm`, `µS/cm`): divided by 1000.
    MicroSiemensPerCentimetre,
}

fn unit_key(text: &str) -> String {
    text.trim()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '^' && *c != '°' && *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl MoistureUnit {
    /// The unit a name stands for (see the variants for accepted names).
    pub fn parse(text: &str) -> Result<Self, String> {
        match unit_key(text).as_str() {
            "m3/m3" | "m3m-3" | "fraction" | "vwc" | "cm3/cm3" => Ok(Self::CubicMetrePerCubicMetre),
            "percent" | "%" | "vol%" | "%vwc" | "%vol" | "pct" => Ok(Self::Percent),
            _ => Err(format!(
                "unknown moisture unit `{text}` (accepted: m3/m3, m^3/m^3, fraction, percent, %, vol%)"
            )),
        }
    }

    /// `value` converted to m3/m3.
    pub fn to_schema(self, value: f64) -> f64 {
        match self {
            Self::CubicMetrePerCubicMetre => value,
            Self::Percent => value / 100.0,
        }
    }
}

impl TemperatureUnit {
    /// The unit a name stands for (see the variants for accepted names).
    pub fn parse(text: &str) -> Result<Self, String> {
        match unit_key(text).as_str() {
            "degc" | "c" | "celsius" | "degreesc" | "degreescelsius" => Ok(Self::Celsius),
            "degf" | "f" | "fahrenheit" | "degreesf" | "degreesfahrenheit" => Ok(Self::Fahrenheit),
            _ => Err(format!(
                "unknown temperature unit `{text}` (accepted: degC, C, °C, Deg C, degF, F, °F, Deg F)"
            )),
        }
    }

    /// `value` converted to °C.
    pub fn to_schema(self, value: f64) -> f64 {
        match self {
            Self::Celsius => value,
            Self::Fahrenheit => (value - 32.0) * 5.0 / 9.0,
        }
    }
}

impl EcUnit {
    /// The unit a name stands for (see the variants for accepted names).
    pub fn parse(text: &str) -> Result<Self, String> {
        match unit_key(text).as_str() {
            "ds/m" => Ok(Self::DeciSiemensPerMetre),
            "ms/cm" => Ok(Self::MilliSiemensPerCentimetre),
            "us/cm" | "µs/cm" | "μs/cm" => Ok(Self::MicroSiemensPerCentimetre),
            _ => Err(format!(
                "unknown EC unit `{text}` (accepted: dS/m, mS/cm, uS/cm, µS/cm)"
            )),
        }
    }

    /// `value` converted to dS/m.
    pub fn to_schema(self, value: f64) -> f64 {
        match self {
            Self::DeciSiemensPerMetre | Self::MilliSiemensPerCentimetre => value,
            Self::MicroSiemensPerCentimetre => value / 1000.0,
        }
    }
}

/// A fixed UTC offset for naive timestamps, in seconds east of UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset {
    /// Seconds east of UTC (−06:00 is −21600).
    pub seconds: i32,
}

impl UtcOffset {
    /// UTC itself.
    pub const UTC: UtcOffset = UtcOffset { seconds: 0 };

    /// Parses `+HH:MM`, `-HH:MM`, `+HH`, `UTC`, `Z` or `UTC+HH:MM`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let refuse = || {
            format!(
                "`{text}` is not a UTC offset: give one such as \"-06:00\", \"+01:00\" or \"UTC\" \
                 (loggers keep standard time all year, so a zone name with daylight saving would be wrong)"
            )
        };
        let rest = match trimmed {
            "UTC" | "utc" | "Z" | "z" | "GMT" => return Ok(Self::UTC),
            other => other
                .strip_prefix("UTC")
                .or_else(|| other.strip_prefix("utc"))
                .or_else(|| other.strip_prefix("GMT"))
                .unwrap_or(other),
        };
        let (sign, digits) = match rest.as_bytes().first() {
            Some(b'+') => (1, &rest[1..]),
            Some(b'-') => (-1, &rest[1..]),
            _ => return Err(refuse()),
        };
        let (hours, minutes) = match digits.split_once(':') {
            Some((h, m)) => (h, m),
            None if digits.len() == 4 => digits.split_at(2),
            None => (digits, "0"),
        };
        let hours: i32 = hours.parse().map_err(|_| refuse())?;
        let minutes: i32 = minutes.parse().map_err(|_| refuse())?;
        if !(0..=14).contains(&hours) || !(0..60).contains(&minutes) {
            return Err(refuse());
        }
        Ok(Self {
            seconds: sign * (hours * 3600 + minutes * 60),
        })
    }

    /// Milliseconds since the Unix epoch of a naive timestamp in this offset.
    /// Accepts `YYYY-MM-DD HH:MM[:SS[.fff]]`, the same with `T` or `/`
    /// between the date parts (`2014/11/02 00:00`).
    pub fn naive_to_epoch_ms(self, text: &str) -> Result<i64, String> {
        let trimmed = text.trim();
        let normalised: String = trimmed
            .chars()
            .enumerate()
            .map(|(i, c)| match (i, c) {
                (4 | 7, '/') => '-',
                (10, ' ') => 'T',
                (_, c) => c,
            })
            .collect();
        let datetime: jiff::civil::DateTime = normalised
            .parse()
            .map_err(|e| format!("not a date and time (YYYY-MM-DD HH:MM:SS) `{trimmed}`: {e}"))?;
        let offset = jiff::tz::Offset::from_seconds(self.seconds).map_err(|e| e.to_string())?;
        let timestamp = offset
            .to_timestamp(datetime)
            .map_err(|e| format!("`{trimmed}` is out of range: {e}"))?;
        Ok(timestamp.as_millisecond())
    }
}

/// Units of the three converted quantities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    /// Moisture.
    pub moisture: MoistureUnit,
    /// Temperature.
    pub temperature: TemperatureUnit,
    /// Electrical conductivity.
    pub ec: EcUnit,
}

impl Default for Units {
    fn default() -> Self {
        Self {
            moisture: MoistureUnit::CubicMetrePerCubicMetre,
            temperature: TemperatureUnit::Celsius,
            ec: EcUnit::DeciSiemensPerMetre,
        }
    }
}

/// One column group: the columns of one sensor at one depth.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorColumns {
    /// The sensor id its readings carry.
    pub sensor_id: String,
    /// Installation depth, cm.
    pub depth_cm: i32,
    /// Moisture column (required: a reading without moisture is not a reading).
    pub moisture: String,
    /// Temperature column.
    pub temperature: Option<String>,
    /// EC column.
    pub ec: Option<String>,
    /// Battery column (overrides the profile's).
    pub battery: Option<String>,
    /// Flag column (overrides the profile's).
    pub flag: Option<String>,
    /// Units stated in the profile for this group (`None`: from the file's
    /// units line, else the profile's defaults).
    pub moisture_unit: Option<MoistureUnit>,
    /// See `moisture_unit`.
    pub temperature_unit: Option<TemperatureUnit>,
    /// See `moisture_unit`.
    pub ec_unit: Option<EcUnit>,
}

/// A parsed, checked profile.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// Where it was read from (for messages).
    pub path: String,
    /// The format the profile is for, when it says.
    pub format: Option<String>,
    /// Offset of naive timestamps.
    pub utc_offset: Option<UtcOffset>,
    /// Values meaning "missing", compared after trimming.
    pub missing: Option<Vec<String>>,
    /// The timestamp column of a table.
    pub timestamp_column: Option<String>,
    /// Prefix of the sensor ids of detected column groups.
    pub sensor_prefix: Option<String>,
    /// Battery column for every group.
    pub battery_column: Option<String>,
    /// Flag column for every group.
    pub flag_column: Option<String>,
    /// Units stated in `[units]` (each `None` when not stated).
    pub moisture_unit: Option<MoistureUnit>,
    /// See `moisture_unit`.
    pub temperature_unit: Option<TemperatureUnit>,
    /// See `moisture_unit`.
    pub ec_unit: Option<EcUnit>,
    /// Explicit column groups (empty: detect them from the column names).
    pub sensors: Vec<SensorColumns>,
    /// The sensor id of an ISMN file's readings, when the default does not do.
    pub sensor_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    format: Option<String>,
    utc_offset: Option<String>,
    missing: Option<Vec<String>>,
    timestamp_column: Option<String>,
    sensor_prefix: Option<String>,
    sensor_id: Option<String>,
    battery_column: Option<String>,
    flag_column: Option<String>,
    units: Option<UnitsFile>,
    #[serde(default)]
    sensor: Vec<SensorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsFile {
    moisture: Option<String>,
    temperature: Option<String>,
    ec: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorFile {
    sensor_id: String,
    depth_cm: i32,
    moisture: String,
    temperature: Option<String>,
    ec: Option<String>,
    battery: Option<String>,
    flag: Option<String>,
    moisture_unit: Option<String>,
    temperature_unit: Option<String>,
    ec_unit: Option<String>,
}

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let label = path.display().to_string();
        let error = |reason: String| ProfileError {
            path: label.clone(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(format!("cannot read: {e}")))?
            .len();
        if size > PROFILE_MAX_BYTES {
            return Err(error(format!(
                "{size} bytes, more than the {PROFILE_MAX_BYTES} accepted"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        Self::parse(&text, &label)
    }

    /// Parses and checks a profile's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ProfileError> {
        let error = |reason: String| ProfileError {
            path: path.to_owned(),
            reason,
        };
        let file: ProfileFile = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        let units = file.units.unwrap_or(UnitsFile {
            moisture: None,
            temperature: None,
            ec: None,
        });
        let moisture_unit = units
            .moisture
            .as_deref()
            .map(MoistureUnit::parse)
            .transpose()
            .map_err(|e| error(format!("units.moisture: {e}")))?;
        let temperature_unit = units
            .temperature
            .as_deref()
            .map(TemperatureUnit::parse)
            .transpose()
            .map_err(|e| error(format!("units.temperature: {e}")))?;
        let ec_unit = units
            .ec
            .as_deref()
            .map(EcUnit::parse)
            .transpose()
            .map_err(|e| error(format!("units.ec: {e}")))?;
        let utc_offset = file
            .utc_offset
            .as_deref()
            .map(UtcOffset::parse)
            .transpose()
            .map_err(|e| error(format!("utc_offset: {e}")))?;
        if file.sensor.len() > PROFILE_MAX_SENSORS {
            return Err(error(format!(
                "{} [[sensor]] entries, more than the {PROFILE_MAX_SENSORS} accepted",
                file.sensor.len()
            )));
        }
        let mut sensors = Vec::with_capacity(file.sensor.len());
        for (index, sensor) in file.sensor.into_iter().enumerate() {
            let at =
                |reason: String| error(format!("sensor {} (`{}`): {reason}", index + 1, sensor.sensor_id));
            crate::model::check_id("sensor_id", &sensor.sensor_id).map_err(|e| at(e.to_string()))?;
            if !(0..=super::row::MAX_DEPTH_CM).contains(&sensor.depth_cm) {
                return Err(at(format!(
                    "depth_cm {} is outside 0..={}",
                    sensor.depth_cm,
                    super::row::MAX_DEPTH_CM
                )));
            }
            if sensors
                .iter()
                .any(|s: &SensorColumns| s.sensor_id == sensor.sensor_id)
            {
                return Err(at("sensor_id given twice: identities must be unique".into()));
            }
            sensors.push(SensorColumns {
                moisture_unit: sensor
                    .moisture_unit
                    .as_deref()
                    .map(MoistureUnit::parse)
                    .transpose()
                    .map_err(&at)?,
                temperature_unit: sensor
                    .temperature_unit
                    .as_deref()
                    .map(TemperatureUnit::parse)
                    .transpose()
                    .map_err(&at)?,
                ec_unit: sensor
                    .ec_unit
                    .as_deref()
                    .map(EcUnit::parse)
                    .transpose()
                    .map_err(&at)?,
                sensor_id: sensor.sensor_id,
                depth_cm: sensor.depth_cm,
                moisture: sensor.moisture,
                temperature: sensor.temperature,
                ec: sensor.ec,
                battery: sensor.battery,
                flag: sensor.flag,
            });
        }
        if let Some(id) = &file.sensor_id {
            crate::model::check_id("sensor_id", id).map_err(|e| error(format!("sensor_id: {e}")))?;
        }
        Ok(Self {
            path: path.to_owned(),
            format: file.format,
            utc_offset,
            missing: file.missing,
            timestamp_column: file.timestamp_column,
            sensor_prefix: file.sensor_prefix,
            battery_column: file.battery_column,
            flag_column: file.flag_column,
            moisture_unit,
            temperature_unit,
            ec_unit,
            sensors,
            sensor_id: file.sensor_id,
        })
    }

    /// Whether `value` (trimmed) means "missing" under this profile.
    pub fn is_missing(&self, value: &str) -> bool {
        let value = value.trim();
        match &self.missing {
            Some(list) => value.is_empty() || list.iter().any(|m| m.trim() == value),
            None => DEFAULT_MISSING_VALUES.contains(&value),
        }
    }

    /// The profile's default units, each falling back to the schema's.
    pub fn default_units(&self) -> Units {
        let schema = Units::default();
        Units {
            moisture: self.moisture_unit.unwrap_or(schema.moisture),
            temperature: self.temperature_unit.unwrap_or(schema.temperature),
            ec: self.ec_unit.unwrap_or(schema.ec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_to_the_schema() {
        assert_eq!(MoistureUnit::parse("%").unwrap().to_schema(31.0), 0.31);
        assert_eq!(MoistureUnit::parse("m^3/m^3").unwrap().to_schema(0.31), 0.31);
        let f = TemperatureUnit::parse("Deg F").unwrap();
        assert!((f.to_schema(50.0) - 10.0).abs() < 1e-12);
        assert_eq!(TemperatureUnit::parse("°C").unwrap(), TemperatureUnit::Celsius);
        assert_eq!(EcUnit::parse("uS/cm").unwrap().to_schema(450.0), 0.45);
        assert_eq!(EcUnit::parse("mS/cm").unwrap().to_schema(0.45), 0.45);
        assert!(MoistureUnit::parse("kg").unwrap_err().contains("accepted"));
    }

    #[test]
    fn offsets_and_naive_times() {
        assert_eq!(UtcOffset::parse("-06:00").unwrap().seconds, -21_600);
        assert_eq!(UtcOffset::parse("UTC+05:30").unwrap().seconds, 19_800);
        assert_eq!(UtcOffset::parse("+0100").unwrap().seconds, 3_600);
        assert_eq!(UtcOffset::parse("Z").unwrap(), UtcOffset::UTC);
        let refused = UtcOffset::parse("America/Chicago").unwrap_err();
        assert!(refused.contains("daylight saving"), "{refused}");
        let minus6 = UtcOffset::parse("-06:00").unwrap();
        // 2014-11-02 00:00 at -06:00 is 06:00 UTC.
        assert_eq!(
            minus6.naive_to_epoch_ms("2014-11-02 00:00:00").unwrap(),
            1_414_908_000_000
        );
        assert_eq!(
            UtcOffset::UTC.naive_to_epoch_ms("2007/01/01 01:00").unwrap(),
            1_167_613_200_000
        );
        assert_eq!(
            UtcOffset::UTC
                .naive_to_epoch_ms("2007-01-01T01:00:00.250")
                .unwrap(),
            1_167_613_200_250
        );
        assert!(UtcOffset::UTC.naive_to_epoch_ms("yesterday").is_err());
    }

    #[test]
    fn profile_parses_and_refuses_mistakes() {
        let profile = Profile::parse(
            r#"
            utc_offset = "-06:00"
            missing = ["NAN", "-7999"]
            [units]
            moisture = "percent"
            [[sensor]]
            sensor_id = "a-10"
            depth_cm = 10
            moisture = "VWC_10cm"
            temperature = "T_10cm"
            temperature_unit = "degF"
            "#,
            "p.toml",
        )
        .unwrap();
        assert_eq!(profile.default_units().moisture, MoistureUnit::Percent);
        assert_eq!(
            profile.sensors[0].temperature_unit,
            Some(TemperatureUnit::Fahrenheit)
        );
        assert!(profile.is_missing(" NAN "));
        assert!(profile.is_missing(""));
        assert!(!profile.is_missing("-9999"));
        assert!(Profile::default().is_missing("-9999"));

        let unknown = Profile::parse("utc_ofset = \"Z\"", "p.toml").unwrap_err();
        assert!(unknown.to_string().starts_with("profile p.toml: "), "{unknown}");
        let twice = Profile::parse(
            "[[sensor]]\nsensor_id=\"a\"\ndepth_cm=1\nmoisture=\"x\"\n[[sensor]]\nsensor_id=\"a\"\ndepth_cm=2\nmoisture=\"y\"\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(twice.reason.contains("given twice"), "{twice}");
        let unit = Profile::parse("[units]\nec = \"S\"", "p.toml").unwrap_err();
        assert!(unit.reason.contains("units.ec"), "{unit}");
    }
}
