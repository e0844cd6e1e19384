//! The records qaqc writes, their Avro schemas (`schemas/`), their codecs
//! and the headers every output carries.
//!
//! Every output record has key = sensor id, timestamp = event time (for a
//! window: its last millisecond), an explicit partition equal to the source
//! partition (outputs are co-partitioned with the input), and the headers
//! [`HEADER_SRC_PARTITION`] and [`HEADER_SRC_OFFSET`]: the raw record that
//! produced it, or the last raw record processed before a timer produced it.

use crate::codec::CodecError;
use crate::model::Reading;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// Schema of `soil-moisture-clean` values.
pub const CLEAN_SCHEMA: &str = include_str!("../../../schemas/soil_reading_clean.avsc");
/// Schema of flag revisions (`soil-moisture-flags`).
pub const FLAG_REVISION_SCHEMA: &str = include_str!("../../../schemas/soil_flag_revision.avsc");
/// Schema of `soil-moisture-aggregates` values.
pub const AGGREGATE_SCHEMA: &str = include_str!("../../../schemas/soil_window_aggregate.avsc");
/// Schema of `soil-alerts` values.
pub const ALERT_SCHEMA: &str = include_str!("../../../schemas/soil_alert.avsc");

/// Header: partition of the raw record behind an output (decimal).
pub const HEADER_SRC_PARTITION: &str = "qaqc.src.partition";
/// Header: offset of the raw record behind an output (decimal).
pub const HEADER_SRC_OFFSET: &str = "qaqc.src.offset";
/// Header of quarantine records: the reason code.
pub const HEADER_REASON: &str = "qaqc.reason";
/// Header of quarantine records: what exactly is wrong, for people.
pub const HEADER_DETAIL: &str = "qaqc.detail";
/// Header of quarantine records: the processor clock at the decision, ms.
pub const HEADER_DECIDED_AT: &str = "qaqc.decided_at_ms";
/// Header of `too_late` quarantine records: the sensor's newest event time
/// the reading was judged against, ms.
pub const HEADER_SENSOR_WATERMARK: &str = "qaqc.sensor_watermark_ms";
/// Header of clean and quarantine records: digest of the reading's values
/// (hex), which dedup compares repeats of an identity with.
pub const HEADER_PAYLOAD_DIGEST: &str = "qaqc.payload_digest";

/// A clean reading (`schemas/soil_reading_clean.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanReading {
    /// Identity: gateway.
    pub gateway_id: String,
    /// Identity: probe; the key.
    pub sensor_id: String,
    /// Identity: sequence number.
    pub seq: i64,
    /// Event time, ms.
    pub event_time: i64,
    /// Moisture, vol%.
    pub moisture_pct: f64,
    /// Soil temperature, °C (`None`: the source recorded none).
    pub soil_temp_c: Option<f64>,
    /// Bulk EC, dS/m.
    pub bulk_ec_ds_m: Option<f64>,
    /// Depth, cm.
    pub depth_cm: i32,
    /// Supply voltage, V.
    pub battery_v: Option<f64>,
    /// Soft flag codes.
    pub flags: Vec<String>,
    /// Whether the flags had their look-ahead.
    pub lookahead_complete: bool,
    /// Schema id of the raw record.
    pub source_schema_id: i32,
    /// The provider's quality flag, verbatim from the raw reading.
    #[serde(default)]
    pub source_flag: Option<String>,
}

impl CleanReading {
    /// The clean record of `reading`: moisture in percent, with its flags,
    /// whether their look-ahead was complete, and the raw record's schema id.
    pub fn of_reading(
        reading: Reading,
        flags: Vec<String>,
        lookahead_complete: bool,
        source_schema_id: u32,
    ) -> Self {
        CleanReading {
            gateway_id: reading.gateway_id,
            sensor_id: reading.sensor_id,
            seq: reading.seq as i64,
            event_time: reading.event_time_ms,
            moisture_pct: reading.moisture_vwc * 100.0,
            soil_temp_c: reading.soil_temp_c,
            bulk_ec_ds_m: reading.bulk_ec_ds_m,
            depth_cm: reading.depth_cm,
            battery_v: reading.battery_v,
            flags,
            lookahead_complete,
            source_schema_id: source_schema_id as i32,
            source_flag: reading.source_flag,
        }
    }
}

/// A flag revision (`schemas/soil_flag_revision.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagRevision {
    /// Identity: gateway.
    pub gateway_id: String,
    /// Identity: probe; the key.
    pub sensor_id: String,
    /// Identity: sequence number.
    pub seq: i64,
    /// Event time of the reading, ms.
    pub event_time: i64,
    /// The complete flag set now.
    pub flags: Vec<String>,
    /// Revision, from 1.
    pub revision: i32,
    /// Whether the flags had their look-ahead.
    pub lookahead_complete: bool,
}

/// A window aggregate (`schemas/soil_window_aggregate.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    /// Probe; the key.
    pub sensor_id: String,
    /// Depth, cm.
    pub depth_cm: i32,
    /// Start, ms (inclusive).
    pub window_start: i64,
    /// End, ms (exclusive).
    pub window_end: i64,
    /// Revision, from 1.
    pub revision: i32,
    /// Readings.
    pub count: i32,
    /// Mean moisture, vol%.
    pub moisture_pct_mean: f64,
    /// Lowest moisture, vol%.
    pub moisture_pct_min: f64,
    /// Highest moisture, vol%.
    pub moisture_pct_max: f64,
    /// Mean temperature, °C, over the readings that carry one.
    pub soil_temp_c_mean: Option<f64>,
    /// Lowest temperature, °C.
    pub soil_temp_c_min: Option<f64>,
    /// Highest temperature, °C.
    pub soil_temp_c_max: Option<f64>,
    /// Mean bulk EC, dS/m.
    pub bulk_ec_ds_m_mean: Option<f64>,
    /// The sensor's high-water at emission, ms.
    pub sensor_watermark: i64,
    /// Emitted from historical data.
    pub historical: bool,
}

/// An alert (`schemas/soil_alert.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Kind name.
    pub alert: String,
    /// `raise` or `clear`.
    pub transition: String,
    /// Probe; the key.
    pub sensor_id: String,
    /// Gateway of the probe's latest reading.
    pub gateway_id: String,
    /// Depth, cm.
    pub depth_cm: i32,
    /// Episode, from 1.
    pub episode: i64,
    /// Decided from historical data.
    pub historical: bool,
    /// Event time referred to, ms.
    pub event_time: i64,
    /// Deciding value.
    pub value: f64,
    /// Threshold.
    pub threshold: f64,
    /// Explanation.
    pub detail: String,
}

/// Encodes values of type `T` with one schema and decodes values written
/// with any compatible writer schema (Avro resolution, through serde).
#[derive(Debug, Clone)]
pub struct RecordCodec<T> {
    schema: Schema,
    schema_text: &'static str,
    _record: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> RecordCodec<T> {
    /// A codec for the shipped schema `schema_text`.
    ///
    /// # Panics
    /// If the shipped schema does not parse (a build defect).
    pub fn shipped(schema_text: &'static str) -> Self {
        let schema = Schema::parse_str(schema_text).expect("a shipped schema parses");
        Self {
            schema,
            schema_text,
            _record: PhantomData,
        }
    }

    /// The schema text (what is registered).
    pub fn schema_text(&self) -> &'static str {
        self.schema_text
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Encodes a value as an Avro body, driven by the schema (serde straight
    /// to bytes; a value that does not fit the schema is an error).
    pub fn encode_body(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(128);
        apache_avro::write_avro_datum_ref(&self.schema, value, &mut out)
            .map_err(|e| CodecError::Invalid(e.to_string()))?;
        Ok(out)
    }

    /// Decodes a body written with this codec's schema.
    pub fn decode_body(&self, body: &[u8]) -> Result<T, CodecError> {
        self.decode_with(&self.schema, None, body)
    }

    /// Decodes a body written with `writer`, resolved to this schema.
    pub fn decode_body_written_with(&self, writer: &Schema, body: &[u8]) -> Result<T, CodecError> {
        self.decode_with(writer, Some(&self.schema), body)
    }

    fn decode_with(&self, writer: &Schema, reader: Option<&Schema>, body: &[u8]) -> Result<T, CodecError> {
        let mut cursor = body;
        let value = apache_avro::from_avro_datum(writer, &mut cursor, reader)
            .map_err(|e| CodecError::Undecodable(e.to_string()))?;
        if !cursor.is_empty() {
            return Err(CodecError::Undecodable(format!(
                "{} trailing bytes after the record",
                cursor.len()
            )));
        }
        apache_avro::from_value(&value).map_err(|e| CodecError::Undecodable(e.to_string()))
    }
}

/// The four output codecs.
#[derive(Debug, Clone)]
pub struct OutputCodecs {
    /// Clean readings.
    pub clean: RecordCodec<CleanReading>,
    /// Flag revisions.
    pub flags: RecordCodec<FlagRevision>,
    /// Window aggregates.
    pub aggregates: RecordCodec<WindowAggregate>,
    /// Alerts.
    pub alerts: RecordCodec<AlertRecord>,
}

impl Default for OutputCodecs {
    fn default() -> Self {
        Self {
            clean: RecordCodec::shipped(CLEAN_SCHEMA),
            flags: RecordCodec::shipped(FLAG_REVISION_SCHEMA),
            aggregates: RecordCodec::shipped(AGGREGATE_SCHEMA),
            alerts: RecordCodec::shipped(ALERT_SCHEMA),
        }
    }
}

/// A header's value as a decimal integer.
pub fn header_i64(headers: &[(String, Vec<u8>)], name: &str) -> Option<i64> {
    let value = headers.iter().find(|(k, _)| k == name)?;
    std::str::from_utf8(&value.1).ok()?.parse().ok()
}

/// A header's value as UTF-8.
pub fn header_str<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    let value = headers.iter().find(|(k, _)| k == name)?;
    std::str::from_utf8(&value.1).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> CleanReading {
        CleanReading {
            gateway_id: "gw".into(),
            sensor_id: "gw-probe-000".into(),
            seq: 12,
            event_time: 1_777_593_600_000,
            moisture_pct: 23.45,
            soil_temp_c: Some(11.5),
            bulk_ec_ds_m: Some(0.56),
            depth_cm: 30,
            battery_v: None,
            flags: vec!["D06".into(), "STUCK".into()],
            lookahead_complete: false,
            source_schema_id: 3,
            source_flag: Some("D03,D05".into()),
        }
    }

    #[test]
    fn every_output_round_trips_through_its_schema() {
        let codecs = OutputCodecs::default();
        let c = clean();
        assert_eq!(
            codecs
                .clean
                .decode_body(&codecs.clean.encode_body(&c).unwrap())
                .unwrap(),
            c
        );
        let f = FlagRevision {
            gateway_id: "gw".into(),
            sensor_id: "s".into(),
            seq: 1,
            event_time: 5,
            flags: vec![],
            revision: 2,
            lookahead_complete: true,
        };
        assert_eq!(
            codecs
                .flags
                .decode_body(&codecs.flags.encode_body(&f).unwrap())
                .unwrap(),
            f
        );
        let a = WindowAggregate {
            sensor_id: "s".into(),
            depth_cm: 10,
            window_start: 0,
            window_end: 300_000,
            revision: 1,
            count: 5,
            moisture_pct_mean: 20.0,
            moisture_pct_min: 19.0,
            moisture_pct_max: 21.0,
            soil_temp_c_mean: Some(10.0),
            soil_temp_c_min: Some(9.0),
            soil_temp_c_max: None,
            bulk_ec_ds_m_mean: None,
            sensor_watermark: 300_000,
            historical: false,
        };
        assert_eq!(
            codecs
                .aggregates
                .decode_body(&codecs.aggregates.encode_body(&a).unwrap())
                .unwrap(),
            a
        );
        let alert = AlertRecord {
            alert: "irrigation_needed".into(),
            transition: "raise".into(),
            sensor_id: "s".into(),
            gateway_id: "gw".into(),
            depth_cm: 10,
            episode: 1,
            historical: true,
            event_time: 300_000,
            value: 14.0,
            threshold: 16.0,
            detail: "dry".into(),
        };
        assert_eq!(
            codecs
                .alerts
                .decode_body(&codecs.alerts.encode_body(&alert).unwrap())
                .unwrap(),
            alert
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codecs = OutputCodecs::default();
        let body = codecs.clean.encode_body(&clean()).unwrap();
        for cut in 0..body.len() {
            let _ = codecs.clean.decode_body(&body[..cut]);
        }
        assert!(codecs.clean.decode_body(&[0xff; 9]).is_err());
    }

    #[test]
    fn headers_parse() {
        let headers = vec![
            (HEADER_SRC_OFFSET.to_string(), b"42".to_vec()),
            (HEADER_REASON.to_string(), b"C01".to_vec()),
        ];
        assert_eq!(header_i64(&headers, HEADER_SRC_OFFSET), Some(42));
        assert_eq!(header_str(&headers, HEADER_REASON), Some("C01"));
        assert_eq!(header_i64(&headers, HEADER_REASON), None);
    }
}
