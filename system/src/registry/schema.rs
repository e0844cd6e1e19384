//! Avro schema text as the registry service handles it: parsed, validated and
//! reduced to an identity key.
//!
//! Two registrations are "the same schema" (same id, no new version) when their
//! identity keys are equal. The key is the schema's JSON with formatting,
//! object-key order and the `{"type": "<primitive>"}` spelling of primitives
//! normalised away; everything else (field order, names, namespaces, defaults,
//! docs, logical types, custom properties) is kept. Avro's Parsing Canonical
//! Form is not used for identity because it drops defaults and logical types,
//! which change how data resolves: two schemas differing only there must get
//! different ids.

use apache_avro::Schema;
use apache_avro::schema::ResolvedSchema;
use serde_json::Value;
use std::fmt::Write as _;

/// Largest schema text the registry accepts, in bytes.
pub const SCHEMA_TEXT_MAX_BYTES: usize = 512 * 1024;

/// Why a schema text is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The text is empty.
    #[error("empty schema")]
    Empty,
    /// The text is larger than [`SCHEMA_TEXT_MAX_BYTES`].
    #[error("schema text is {size_bytes} bytes, more than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// Size of the offending text, bytes.
        size_bytes: usize,
        /// The limit, bytes.
        limit_bytes: usize,
    },
    /// The text is not JSON.
    #[error("schema is not valid JSON: {0}")]
    NotJson(String),
    /// The JSON is not a valid Avro schema.
    #[error("invalid Avro schema: {0}")]
    InvalidAvro(String),
}

/// A schema that parsed as Avro, with its identity key.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    text: String,
    key: String,
    avro: Schema,
}

impl ParsedSchema {
    /// Parses and validates `text` (Avro schema JSON, defaults included).
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        if text.trim().is_empty() {
            return Err(SchemaError::Empty);
        }
        if text.len() > SCHEMA_TEXT_MAX_BYTES {
            return Err(SchemaError::TooLarge {
                size_bytes: text.len(),
                limit_bytes: SCHEMA_TEXT_MAX_BYTES,
            });
        }
        let json = parse_json(text)?;
        let avro = parse_avro(&json)?;
        let mut key = String::with_capacity(text.len());
        write_identity_key(&normalise(json), &mut key);
        Ok(Self {
            text: text.to_owned(),
            key,
            avro,
        })
    }

    /// The text as submitted.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The identity key: equal keys mean the same schema.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The parsed Avro schema.
    pub fn avro(&self) -> &Schema {
        &self.avro
    }
}

/// The identity key of a schema text, from its JSON alone (no Avro
/// validation): what replay uses to rebuild the id-by-schema index, so that a
/// stored schema keeps its id whatever Avro library version reads the log.
pub fn identity_key(text: &str) -> Result<String, SchemaError> {
    let json = parse_json(text)?;
    let mut key = String::with_capacity(text.len());
    write_identity_key(&normalise(json), &mut key);
    Ok(key)
}

fn parse_json(text: &str) -> Result<Value, SchemaError> {
    // serde_json bounds nesting depth (128), so neither this nor the Avro
    // parser can be driven into unbounded recursion.
    serde_json::from_str(text).map_err(|e| SchemaError::NotJson(e.to_string()))
}

/// Parses an Avro schema from JSON and checks that every named reference
/// resolves. apache-avro is third-party code fed with network input: a panic
/// inside it is turned into an error instead of taking the service down.
fn parse_avro(json: &Value) -> Result<Schema, SchemaError> {
    let outcome = std::panic::catch_unwind(|| {
        let schema = Schema::parse(json).map_err(|e| SchemaError::InvalidAvro(e.to_string()))?;
        ResolvedSchema::try_from(&schema).map_err(|e| SchemaError::InvalidAvro(e.to_string()))?;
        Ok(schema)
    });
    match outcome {
        Ok(result) => result,
        Err(_) => Err(SchemaError::InvalidAvro(
            "the Avro schema parser failed on this input".to_owned(),
        )),
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Rewrites `{"type": "int"}` (and the other primitives, with no other keys)
/// to `"int"`, recursively.
fn normalise(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(t)) = map.get("type")
                && PRIMITIVES.contains(&t.as_str())
            {
                return Value::String(t.clone());
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, normalise(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        other => other,
    }
}

/// Writes compact JSON with object keys sorted bytewise, whatever order the
/// map type keeps them in.
fn write_identity_key(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_identity_key(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_identity_key(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_json_string(s, out),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn write_json_string(s: &str, out: &mut String) {
    // Serialising a &str to JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SOIL_READING_SCHEMA_V1;

    #[test]
    fn formatting_and_key_order_do_not_change_identity() {
        let a = ParsedSchema::parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#)
            .unwrap();
        let b = ParsedSchema::parse(
            "{ \"fields\" : [ {\"type\": {\"type\":\"int\"}, \"name\":\"a\"} ],\n \"name\":\"R\", \"type\":\"record\" }",
        )
        .unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.text(), b.text());
        assert_eq!(identity_key(b.text()).unwrap(), a.key());
    }

    #[test]
    fn defaults_logical_types_and_field_order_change_identity() {
        let base = ParsedSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"int"}]}"#,
        )
        .unwrap();
        let reordered = ParsedSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"b","type":"int"},{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
        let with_default = ParsedSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"int","default":0}]}"#,
        )
        .unwrap();
        let logical = ParsedSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"b","type":"int"}]}"#,
        )
        .unwrap();
        let keys = [base.key(), reordered.key(), with_default.key(), logical.key()];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn rejects_what_is_not_avro() {
        assert_eq!(ParsedSchema::parse("  ").unwrap_err(), SchemaError::Empty);
        assert!(matches!(
            ParsedSchema::parse("{nope"),
            Err(SchemaError::NotJson(_))
        ));
        assert!(matches!(
            ParsedSchema::parse(r#"{"type":"recrod","name":"R","fields":[]}"#),
            Err(SchemaError::InvalidAvro(_))
        ));
        // A default that does not match the field type.
        assert!(matches!(
            ParsedSchema::parse(
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#
            ),
            Err(SchemaError::InvalidAvro(_))
        ));
        // A reference to a type that is never defined.
        assert!(matches!(
            ParsedSchema::parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Missing"}]}"#),
            Err(SchemaError::InvalidAvro(_))
        ));
        let huge = format!("\"{}\"", "x".repeat(SCHEMA_TEXT_MAX_BYTES));
        assert!(matches!(
            ParsedSchema::parse(&huge),
            Err(SchemaError::TooLarge { .. })
        ));
        let deep = format!("{}\"int\"{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(ParsedSchema::parse(&deep), Err(SchemaError::NotJson(_))));
    }

    #[test]
    fn the_shipped_schema_parses() {
        let parsed = ParsedSchema::parse(SOIL_READING_SCHEMA_V1).unwrap();
        assert!(parsed.key().starts_with('{'));
        assert!(parsed.key().contains("\"timestamp-millis\""));
    }
}
