//! Decoding reading values read from a topic: Confluent wire format, writer
//! schema fetched from the registry by id (and cached), resolved to the
//! reader's schema with Avro's rules.
//!
//! A consumer meets values it cannot decode (unknown magic byte, unknown
//! schema id, a body that does not match its schema); each is a
//! [`DecodeError`] naming the reason, for the caller to report with the
//! record's partition and offset and carry on. Nothing here panics on input.

use crate::codec::{CodecError, ReadingCodec, from_wire};
use crate::model::Reading;
use crate::registry::{RegistryError, SchemaRegistry};
use apache_avro::Schema;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Decodes a body written with one of the shipped schemas soilstream
/// producers write, without knowing which: v1 (the gateway) when it decodes
/// as v1 with no byte left over and encodes back to exactly the same bytes
/// (when it can be encoded at all), else v3 (the backfill) under the same
/// rule. For consumers without a registry (`consume` without `--registry`,
/// the real-world checkers). A v3 body does not pass as v1: the union branch
/// before its temperature shifts the double by a byte, which puts the
/// double's sign-and-exponent byte where v1 expects the EC union's branch
/// index (0 or 2); a soil temperature's top byte is 0x3F, 0x40, 0xBF or 0xC0.
pub fn decode_shipped_body(body: &[u8]) -> Result<Reading, CodecError> {
    // Building a codec parses its schema: do it once per thread, not per value.
    thread_local! {
        static CODECS: [ReadingCodec; 2] = [ReadingCodec::v1(), ReadingCodec::v3()];
    }
    CODECS.with(|codecs| {
        let mut first_error = None;
        for codec in codecs {
            match codec.decode_body(body) {
                Ok(reading) if codec.encode_body(&reading).map_or(true, |again| again == body) => {
                    return Ok(reading);
                }
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .unwrap_or_else(|| CodecError::Undecodable("no shipped schema decodes it byte for byte".into())))
    })
}

/// Most writer schemas cached.
pub const WRITER_SCHEMAS_CACHED_MAX: usize = 1_024;

/// Why a value could not be decoded into a reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not the Confluent wire format (no value, short, unknown magic byte).
    #[error("{0}")]
    Wire(String),
    /// The registry has no schema with this id.
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    /// The registry could not be asked; the value may decode later.
    #[error("schema id {id}: registry unavailable: {reason}")]
    RegistryUnavailable {
        /// The schema id.
        id: u32,
        /// What the registry client said.
        reason: String,
    },
    /// The writer schema is not a usable reading schema.
    #[error("schema id {id}: {reason}")]
    BadWriterSchema {
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// The body does not decode with its writer schema.
    #[error("schema id {id}: {reason}")]
    Undecodable {
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
}

/// Decodes reading values, with or without a registry.
pub struct ReadingDecoder {
    reader: ReadingCodec,
    registry: Option<Rc<dyn SchemaRegistry>>,
    /// Writer schemas by id, with whether each is the reader's own schema
    /// (then bodies decode without resolution).
    writers: RefCell<BTreeMap<u32, Result<WriterSchema, DecodeError>>>,
}

/// A writer schema, and whether it is the reader's own.
type WriterSchema = (Schema, bool);

impl ReadingDecoder {
    /// Decodes values without a registry: whatever the schema id, a body
    /// written with one of the shipped schemas soilstream producers write
    /// (v1 by the gateway, v3 by the backfill), told apart by
    /// [`decode_shipped_body`].
    pub fn without_registry() -> Self {
        Self {
            reader: ReadingCodec::reader(),
            registry: None,
            writers: RefCell::new(BTreeMap::new()),
        }
    }

    /// Fetches writer schemas by id from `registry`; decodes into `reader`.
    pub fn with_registry(registry: Rc<dyn SchemaRegistry>, reader: ReadingCodec) -> Self {
        Self {
            reader,
            registry: Some(registry),
            writers: RefCell::new(BTreeMap::new()),
        }
    }

    /// Decodes one record value into its schema id and reading.
    pub async fn decode(&self, value: Option<&[u8]>) -> Result<(u32, Reading), DecodeError> {
        let value = value.ok_or_else(|| DecodeError::Wire("no value (tombstone)".into()))?;
        let (id, body) = from_wire(value).map_err(|e| DecodeError::Wire(e.to_string()))?;
        let Some(registry) = &self.registry else {
            return Ok((id, decode_shipped_body(body).map_err(|e| undecodable(id, e))?));
        };
        let cached = self.writers.borrow().get(&id).cloned();
        let writer = match cached {
            Some(writer) => writer?,
            None => {
                let fetched = match registry.schema_by_id(id).await {
                    Ok(text) => Schema::parse_str(&text)
                        .map(|schema| {
                            let same = schema.canonical_form() == self.reader.canonical_schema();
                            (schema, same)
                        })
                        .map_err(|e| DecodeError::BadWriterSchema {
                            id,
                            reason: e.to_string(),
                        }),
                    Err(RegistryError::SchemaNotFound(_)) => Err(DecodeError::UnknownSchemaId(id)),
                    Err(e) => {
                        // Not cached: the registry may answer next time.
                        return Err(DecodeError::RegistryUnavailable {
                            id,
                            reason: e.to_string(),
                        });
                    }
                };
                let mut writers = self.writers.borrow_mut();
                if writers.len() >= WRITER_SCHEMAS_CACHED_MAX {
                    writers.pop_first();
                }
                writers.insert(id, fetched.clone());
                fetched?
            }
        };
        let (writer, same) = writer;
        let decoded = if same {
            self.reader.decode_body(body)
        } else {
            self.reader.decode_body_written_with(&writer, body)
        };
        let reading = decoded.map_err(|e| undecodable(id, e))?;
        Ok((id, reading))
    }
}

fn undecodable(id: u32, error: CodecError) -> DecodeError {
    DecodeError::Undecodable {
        id,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{SOIL_READING_SCHEMA_V2, to_wire};
    use crate::registry::InProcessRegistry;

    fn reading() -> Reading {
        Reading {
            gateway_id: "g".into(),
            sensor_id: "s".into(),
            seq: 3,
            event_time_ms: 1_000,
            moisture_vwc: 0.2,
            soil_temp_c: Some(9.5),
            bulk_ec_ds_m: None,
            depth_cm: 10,
            battery_v: Some(3.5),
            source_flag: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn decodes_v2_data_with_a_v1_reader_via_the_registry() {
        let registry = Rc::new(InProcessRegistry::new());
        let v2_id = registry
            .register("t-value", SOIL_READING_SCHEMA_V2)
            .await
            .unwrap();
        let v2 = ReadingCodec::from_schema_text(SOIL_READING_SCHEMA_V2).unwrap();
        let value = to_wire(v2_id, &v2.encode_body(&reading()).unwrap());
        let decoder = ReadingDecoder::with_registry(registry, ReadingCodec::v1());
        assert_eq!(decoder.decode(Some(&value)).await.unwrap(), (v2_id, reading()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_values_are_errors_with_reasons() {
        let registry = Rc::new(InProcessRegistry::new());
        let decoder = ReadingDecoder::with_registry(registry, ReadingCodec::v1());
        assert!(matches!(decoder.decode(None).await, Err(DecodeError::Wire(_))));
        assert!(matches!(
            decoder.decode(Some(&[7, 0, 0, 0, 1, 2])).await,
            Err(DecodeError::Wire(_))
        ));
        assert_eq!(
            decoder.decode(Some(&to_wire(42, b"xx"))).await,
            Err(DecodeError::UnknownSchemaId(42))
        );
        let plain = ReadingDecoder::without_registry();
        assert!(matches!(
            plain.decode(Some(&to_wire(1, &[0xff; 3]))).await,
            Err(DecodeError::Undecodable { id: 1, .. })
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_a_registry_v1_and_v3_bodies_are_told_apart_whatever_the_id() {
        let plain = ReadingDecoder::without_registry();
        let v1 = to_wire(7, &ReadingCodec::v1().encode_body(&reading()).unwrap());
        assert_eq!(plain.decode(Some(&v1)).await.unwrap(), (7, reading()));
        for soil_temp_c in [None, Some(0.0), Some(-12.5), Some(0.5), Some(35.0)] {
            let flagged = Reading {
                soil_temp_c,
                source_flag: Some("G".into()),
                ..reading()
            };
            let v3 = to_wire(2, &ReadingCodec::v3().encode_body(&flagged).unwrap());
            assert_eq!(plain.decode(Some(&v3)).await.unwrap(), (2, flagged));
            let unflagged = Reading {
                soil_temp_c,
                ..reading()
            };
            let v3 = ReadingCodec::v3().encode_body(&unflagged).unwrap();
            assert_eq!(decode_shipped_body(&v3).unwrap(), unflagged);
        }
    }
}
