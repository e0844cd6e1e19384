//! Confluent's Python client (`confluent-kafka`: `SchemaRegistryClient`,
//! `AvroSerializer`, `AvroDeserializer`) against the real `soilstream
//! registry serve` process, in both directions: Python decodes a value that
//! soilstream's codec produced, and soilstream decodes values Python's
//! serializer produced.
//!
//! The interpreter is `$SOILSTREAM_PYTHON` (default `python3`); it needs the
//! packages in `tests/python/requirements.txt`.

mod common;

use common::RegistryProcess;
use common::python::{python, require_confluent_kafka, schemas_dir, tests_dir};
use serde_json::{Value, json};
use soilstream::codec::{ReadingCodec, SOIL_READING_SCHEMA_V1, SOIL_READING_SCHEMA_V2, from_wire, to_wire};
use soilstream::model::Reading;
use soilstream::registry::{SchemaRegistry, value_subject};
use std::process::Command;

const TOPIC: &str = "soil-moisture-raw";

fn reading() -> Reading {
    Reading {
        gateway_id: "gw-east".into(),
        sensor_id: "probe-3".into(),
        seq: 90_210,
        event_time_ms: 1_718_123_456_789,
        moisture_vwc: 0.3125,
        soil_temp_c: Some(-1.75),
        bulk_ec_ds_m: None,
        depth_cm: 10,
        battery_v: Some(3.3),
        source_flag: None,
    }
}

/// The reading as the Avro record's fields, as Python sees them.
fn reading_json(r: &Reading) -> Value {
    json!({
        "gateway_id": r.gateway_id,
        "sensor_id": r.sensor_id,
        "seq": r.seq,
        "event_time": r.event_time_ms,
        "moisture_vwc": r.moisture_vwc,
        "soil_temp_c": r.soil_temp_c,
        "bulk_ec_ds_m": r.bulk_ec_ds_m,
        "depth_cm": r.depth_cm,
        "battery_v": r.battery_v,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn confluent_python_client_interoperates() {
    let python = python();
    require_confluent_kafka(&python);
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(&dir.path().join("data"), &dir.path().join("registry.stderr"));
    let client = registry.client();

    // soilstream registers v1 and produces a value.
    let id = client
        .register(&value_subject(TOPIC), SOIL_READING_SCHEMA_V1)
        .await
        .unwrap();
    let original = reading();
    let value = to_wire(id, &ReadingCodec::v1().encode_body(&original).unwrap());

    let output = Command::new(&python)
        .arg(tests_dir().join("python/registry_client.py"))
        .args(["--url", &registry.url, "--topic", TOPIC])
        .arg("--schema-v1")
        .arg(schemas_dir().join("soil_reading.avsc"))
        .arg("--schema-v2")
        .arg(schemas_dir().join("soil_reading_v2.avsc"))
        .args(["--soilstream-id", &id.to_string()])
        .args(["--soilstream-value-hex", &hex(&value)])
        .args(["--soilstream-reading-json", &reading_json(&original).to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "Python client checks failed ({}):\n{}\nregistry log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        registry.stderr()
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "unexpected Python output ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    eprintln!("Python checks passed: {}", report["checks"]);
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(6), "{report}");

    // The value Python's AvroSerializer produced (v2, with the new field set)
    // decodes with soilstream's v1 and v2 codecs, the writer schema fetched by
    // the id in the value.
    let python_value = unhex(report["python_value_hex"].as_str().unwrap());
    let (python_id, body) = from_wire(&python_value).unwrap();
    assert_eq!(u64::from(python_id), report["python_schema_id"].as_u64().unwrap());
    assert_ne!(python_id, id, "v2 got its own id");
    let writer_text = client.schema_by_id(python_id).await.unwrap();
    let writer = ReadingCodec::from_schema_text(&writer_text).unwrap();
    let v2 = ReadingCodec::from_schema_text(SOIL_READING_SCHEMA_V2).unwrap();
    assert_eq!(
        writer.canonical_schema(),
        v2.canonical_schema(),
        "Python registered v2"
    );
    let python_reading = &report["python_reading"];
    let expected = Reading {
        seq: python_reading["seq"].as_u64().unwrap(),
        battery_v: python_reading["battery_v"].as_f64(),
        ..original
    };
    assert_eq!(python_reading["signal_rssi_dbm"], json!(-67));
    assert_eq!(
        ReadingCodec::v1()
            .decode_body_written_with(writer.schema(), body)
            .unwrap(),
        expected
    );
    assert_eq!(
        v2.decode_body_written_with(writer.schema(), body).unwrap(),
        expected
    );
    registry.kill_9();
}
