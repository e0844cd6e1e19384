//! Encoding of readings: Avro binary bodies per `schemas/soil_reading.avsc`,
//! wrapped in the Confluent wire format (magic byte 0, 4-byte big-endian
//! schema id, Avro body) for Kafka values.
//!
//! The encoder is driven by the schema, not by hand-written byte layouts: a
//! reading becomes an Avro record value, which apache-avro resolves against
//! the writer schema (filling defaults of fields a newer schema added) and
//! validates before a single byte is written. Decoding resolves the writer
//! schema to the codec's reader schema with Avro's resolution rules, so v1
//! readers decode v2 data and the other way round.

use crate::model::Reading;
use apache_avro::Schema;
use apache_avro::types::Value;
use std::sync::Once;

/// The reading schema the system writes with, version 1, as shipped in
/// `schemas/soil_reading.avsc`.
pub const SOIL_READING_SCHEMA_V1: &str = include_str!("../../schemas/soil_reading.avsc");

/// Version 2 of the reading schema, as shipped in
/// `schemas/soil_reading_v2.avsc`: version 1 plus the optional
/// `signal_rssi_dbm` (default null). Backward and forward compatible with
/// version 1.
pub const SOIL_READING_SCHEMA_V2: &str = include_str!("../../schemas/soil_reading_v2.avsc");

/// Version 3 of the reading schema, as shipped in
/// `schemas/soil_reading_v3.avsc`: version 2 with `soil_temp_c` optional
/// (`["null", "double"]`, default null) and the provider's `source_flag`
/// (optional string). Backward compatible with versions 1 and 2 (a v3
/// reader reads their data), not forward: a v1 or v2 reader fails, with a
/// typed error naming `soil_temp_c`, on a v3 reading that has no
/// temperature. Consumers therefore move to v3 before any producer writes
/// it (Confluent's BACKWARD upgrade order).
pub const SOIL_READING_SCHEMA_V3: &str = include_str!("../../schemas/soil_reading_v3.avsc");

/// The schema consumers read with: the newest version, which reads data
/// written with every earlier one.
pub const SOIL_READING_READER_SCHEMA: &str = SOIL_READING_SCHEMA_V3;

/// The Confluent wire-format magic byte.
pub const WIRE_MAGIC: u8 = 0;

/// Length of the Confluent wire-format header (magic byte + schema id), bytes.
pub const WIRE_HEADER_BYTES: usize = 5;

/// Largest allocation apache-avro may make while decoding one datum, in bytes.
/// Bodies come from the network and from disk: a corrupt length prefix must
/// fail to decode, not exhaust memory.
pub const AVRO_DECODE_MAX_ALLOCATION_BYTES: usize = 1 << 20;

/// Why a reading could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The schema text is not a valid Avro schema.
    #[error("invalid Avro schema: {0}")]
    Schema(String),
    /// The schema is valid Avro but not a record the reading maps onto.
    #[error("schema is not a soil reading record: {0}")]
    NotAReadingSchema(String),
    /// The reading does not validate against the writer schema.
    #[error("reading does not validate against the schema: {0}")]
    Invalid(String),
    /// The Avro body could not be decoded with the writer schema.
    #[error("undecodable Avro body: {0}")]
    Undecodable(String),
    /// The decoded record lacks a field or has one of the wrong type.
    #[error("decoded record field `{field}`: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The value is not in the Confluent wire format.
    #[error("not Confluent wire format: {0}")]
    Wire(String),
}

fn limit_avro_allocations() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        apache_avro::util::max_allocation_bytes(AVRO_DECODE_MAX_ALLOCATION_BYTES);
    });
}

/// Encodes readings into Avro bodies with one writer schema and decodes
/// bodies written with any compatible writer schema into readings.
#[derive(Debug, Clone)]
pub struct ReadingCodec {
    schema: Schema,
    /// Whether the schema's `soil_temp_c` is a plain double (versions 1 and
    /// 2): a reading without a temperature cannot be written with it.
    temperature_required: bool,
}

impl ReadingCodec {
    /// The codec for the shipped v1 schema (what the gateway's spool stores
    /// and the gateway sends).
    pub fn v1() -> Self {
        Self::from_schema_text(SOIL_READING_SCHEMA_V1).expect("the shipped v1 schema parses")
    }

    /// The codec for the shipped v3 schema (what the backfill writes).
    pub fn v3() -> Self {
        Self::from_schema_text(SOIL_READING_SCHEMA_V3).expect("the shipped v3 schema parses")
    }

    /// The codec consumers decode with ([`SOIL_READING_READER_SCHEMA`]).
    pub fn reader() -> Self {
        Self::v3()
    }

    /// A codec whose writer (and reader) schema is `text`.
    pub fn from_schema_text(text: &str) -> Result<Self, CodecError> {
        limit_avro_allocations();
        let schema = Schema::parse_str(text).map_err(|e| CodecError::Schema(e.to_string()))?;
        let temperature_required = match &schema {
            Schema::Record(record) => {
                for required in ["gateway_id", "sensor_id", "seq", "event_time"] {
                    if !record.lookup.contains_key(required) {
                        return Err(CodecError::NotAReadingSchema(format!("no field `{required}`")));
                    }
                }
                record
                    .fields
                    .iter()
                    .find(|field| field.name == "soil_temp_c")
                    .is_some_and(|field| !matches!(field.schema, Schema::Union(_)))
            }
            other => {
                return Err(CodecError::NotAReadingSchema(format!(
                    "top level is {other:?}, expected a record"
                )));
            }
        };
        Ok(Self {
            schema,
            temperature_required,
        })
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The schema in Avro's canonical form (what registries compare).
    pub fn canonical_schema(&self) -> String {
        self.schema.canonical_form()
    }

    /// Encodes a reading as an Avro binary body, validating it against the
    /// schema first. Fields the schema has and the reading does not are
    /// filled from the schema defaults.
    pub fn encode_body(&self, reading: &Reading) -> Result<Vec<u8>, CodecError> {
        reading
            .check_structure()
            .map_err(|e| CodecError::Invalid(e.to_string()))?;
        if self.temperature_required && reading.soil_temp_c.is_none() {
            return Err(CodecError::Invalid(
                "field `soil_temp_c`: no value, and this schema version requires one (version 3 makes it optional)".into(),
            ));
        }
        let value = reading_to_value(reading)
            .resolve(&self.schema)
            .map_err(|e| CodecError::Invalid(e.to_string()))?;
        apache_avro::to_avro_datum(&self.schema, value).map_err(|e| CodecError::Invalid(e.to_string()))
    }

    /// Decodes an Avro body written with this codec's own schema (no
    /// resolution needed).
    pub fn decode_body(&self, body: &[u8]) -> Result<Reading, CodecError> {
        self.decode_with(&self.schema, None, body)
    }

    /// Decodes an Avro body written with `writer`, resolving it to this
    /// codec's schema (Avro schema resolution).
    pub fn decode_body_written_with(&self, writer: &Schema, body: &[u8]) -> Result<Reading, CodecError> {
        self.decode_with(writer, Some(&self.schema), body)
    }

    fn decode_with(
        &self,
        writer: &Schema,
        reader: Option<&Schema>,
        body: &[u8],
    ) -> Result<Reading, CodecError> {
        let mut cursor = body;
        let value = apache_avro::from_avro_datum(writer, &mut cursor, reader)
            .map_err(|e| CodecError::Undecodable(e.to_string()))?;
        if !cursor.is_empty() {
            return Err(CodecError::Undecodable(format!(
                "{} trailing bytes after the record",
                cursor.len()
            )));
        }
        value_to_reading(value)
    }
}

/// Wraps an Avro body in the Confluent wire format.
pub fn to_wire(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WIRE_HEADER_BYTES + body.len());
    out.push(WIRE_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a Confluent wire-format value into its schema id and Avro body.
pub fn from_wire(value: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    if value.len() < WIRE_HEADER_BYTES {
        return Err(CodecError::Wire(format!(
            "{} bytes, shorter than the 5-byte header",
            value.len()
        )));
    }
    if value[0] != WIRE_MAGIC {
        return Err(CodecError::Wire(format!("unknown magic byte {}", value[0])));
    }
    let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    Ok((id, &value[WIRE_HEADER_BYTES..]))
}

fn optional_double(value: Option<f64>) -> Value {
    match value {
        Some(v) => Value::Union(1, Box::new(Value::Double(v))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn reading_to_value(r: &Reading) -> Value {
    Value::Record(vec![
        ("gateway_id".into(), Value::String(r.gateway_id.clone())),
        ("sensor_id".into(), Value::String(r.sensor_id.clone())),
        ("seq".into(), Value::Long(r.seq as i64)),
        ("event_time".into(), Value::TimestampMillis(r.event_time_ms)),
        ("moisture_vwc".into(), Value::Double(r.moisture_vwc)),
        (
            "soil_temp_c".into(),
            r.soil_temp_c.map_or(Value::Null, Value::Double),
        ),
        ("bulk_ec_ds_m".into(), optional_double(r.bulk_ec_ds_m)),
        ("depth_cm".into(), Value::Int(r.depth_cm)),
        ("battery_v".into(), optional_double(r.battery_v)),
        (
            "source_flag".into(),
            r.source_flag.clone().map_or(Value::Null, Value::String),
        ),
    ])
}

fn field_error(field: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError::Field {
        field,
        reason: reason.into(),
    }
}

fn take_string(field: &'static str, value: Option<Value>) -> Result<String, CodecError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(field_error(field, format!("expected string, got {other:?}"))),
        None => Err(field_error(field, "missing")),
    }
}

fn take_long(field: &'static str, value: Option<Value>) -> Result<i64, CodecError> {
    match value {
        Some(Value::Long(v)) | Some(Value::TimestampMillis(v)) => Ok(v),
        Some(Value::Int(v)) => Ok(i64::from(v)),
        Some(other) => Err(field_error(field, format!("expected long, got {other:?}"))),
        None => Err(field_error(field, "missing")),
    }
}

fn take_double(field: &'static str, value: Option<Value>) -> Result<f64, CodecError> {
    match value {
        Some(Value::Double(v)) => Ok(v),
        Some(Value::Float(v)) => Ok(f64::from(v)),
        Some(other) => Err(field_error(field, format!("expected double, got {other:?}"))),
        None => Err(field_error(field, "missing")),
    }
}

fn take_optional_double(field: &'static str, value: Option<Value>) -> Result<Option<f64>, CodecError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Union(_, inner)) => match *inner {
            Value::Null => Ok(None),
            other => take_double(field, Some(other)).map(Some),
        },
        Some(other) => take_double(field, Some(other)).map(Some),
    }
}

fn take_optional_string(field: &'static str, value: Option<Value>) -> Result<Option<String>, CodecError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Union(_, inner)) => match *inner {
            Value::Null => Ok(None),
            other => take_string(field, Some(other)).map(Some),
        },
        Some(other) => take_string(field, Some(other)).map(Some),
    }
}

fn value_to_reading(value: Value) -> Result<Reading, CodecError> {
    let Value::Record(fields) = value else {
        return Err(field_error("<record>", "decoded value is not a record"));
    };
    let mut gateway_id = None;
    let mut sensor_id = None;
    let mut seq = None;
    let mut event_time = None;
    let mut moisture = None;
    let mut temp = None;
    let mut ec = None;
    let mut depth = None;
    let mut battery = None;
    let mut source_flag = None;
    for (name, v) in fields {
        match name.as_str() {
            "gateway_id" => gateway_id = Some(v),
            "sensor_id" => sensor_id = Some(v),
            "seq" => seq = Some(v),
            "event_time" => event_time = Some(v),
            "moisture_vwc" => moisture = Some(v),
            "soil_temp_c" => temp = Some(v),
            "bulk_ec_ds_m" => ec = Some(v),
            "depth_cm" => depth = Some(v),
            "battery_v" => battery = Some(v),
            "source_flag" => source_flag = Some(v),
            _ => {} // fields added by later schema versions
        }
    }
    let seq = take_long("seq", seq)?;
    if seq < 0 {
        return Err(field_error("seq", format!("negative ({seq})")));
    }
    let depth_cm = match depth {
        Some(Value::Int(d)) => d,
        None => 0,
        Some(other) => return Err(field_error("depth_cm", format!("expected int, got {other:?}"))),
    };
    Ok(Reading {
        gateway_id: take_string("gateway_id", gateway_id)?,
        sensor_id: take_string("sensor_id", sensor_id)?,
        seq: seq as u64,
        event_time_ms: take_long("event_time", event_time)?,
        moisture_vwc: take_double("moisture_vwc", moisture)?,
        soil_temp_c: take_optional_double("soil_temp_c", temp)?,
        bulk_ec_ds_m: take_optional_double("bulk_ec_ds_m", ec)?,
        depth_cm,
        battery_v: take_optional_double("battery_v", battery)?,
        source_flag: take_optional_string("source_flag", source_flag)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample;

    #[test]
    fn body_round_trip() {
        let codec = ReadingCodec::v1();
        let r = sample("probe-7", 42);
        let body = codec.encode_body(&r).unwrap();
        assert_eq!(codec.decode_body(&body).unwrap(), r);
    }

    #[test]
    fn wire_round_trip_and_errors() {
        let wire = to_wire(7, b"abc");
        assert_eq!(wire, vec![0, 0, 0, 0, 7, b'a', b'b', b'c']);
        assert_eq!(from_wire(&wire).unwrap(), (7, &b"abc"[..]));
        assert!(matches!(from_wire(&[1, 0, 0, 0, 1]), Err(CodecError::Wire(_))));
        assert!(matches!(from_wire(&[0, 0]), Err(CodecError::Wire(_))));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let codec = ReadingCodec::v1();
        let body = codec.encode_body(&sample("p", 1)).unwrap();
        let original = sample("p", 1);
        for cut in 0..body.len() {
            // apache-avro reads a missing trailing nullable union as null, so
            // a cut may decode, but never into a different reading.
            if let Ok(decoded) = codec.decode_body(&body[..cut]) {
                assert_eq!(decoded, original, "cut {cut}");
            }
        }
        assert!(codec.decode_body(&body[..body.len() / 2]).is_err());
        let huge_len = [0xfe, 0xff, 0xff, 0xff, 0x0f];
        assert!(codec.decode_body(&huge_len).is_err());
    }

    #[test]
    fn invalid_readings_are_rejected_before_encoding() {
        let codec = ReadingCodec::v1();
        let mut r = sample("p", 1);
        r.soil_temp_c = Some(f64::INFINITY);
        assert!(matches!(codec.encode_body(&r), Err(CodecError::Invalid(_))));
    }
}
