//! End-to-end Kafka round trips through `soilstream registry serve` and a
//! real broker (Tansu), with Confluent's Python client (`confluent-kafka`)
//! at the other end:
//!
//! - Python's `SerializingProducer` + `AvroSerializer` (schema v1, then v2)
//!   produces readings that `soilstream consume --registry` decodes;
//! - `soilstream gateway --registry-url` produces readings that Python's
//!   `DeserializingConsumer` + `AvroDeserializer` decodes.
//!
//! Errors of the registry API as the Python client sees them are covered by
//! `registry_python.rs`. The interpreter is `$SOILSTREAM_PYTHON` (default
//! `python3`) with the packages of `tests/python/requirements.txt`; a missing
//! package fails the test with an install hint.

mod common;

use common::RegistryProcess;
use common::broker::{RAW_PARTITIONS, RAW_TOPIC, block_on, read_topic, start_raw_broker, topic_record_count};
use common::gateway::{Gateway, GatewaySpec, SOILSTREAM};
use common::logs::LogsOnFailure;
use common::numbered_schema;
use common::python::{python, require_confluent_kafka, schemas_dir, tests_dir};
use serde_json::{Value, json};
use soilstream::codec::{ReadingCodec, SOIL_READING_SCHEMA_V1, from_wire};
use soilstream::model::{Reading, ReadingId};
use soilstream::registry::SchemaRegistry;
use soilstream::transport::partition_for_key;
use soilstream_containers::{ChildProcess, ChildSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// How long a Python client or `soilstream consume` may run, in ms.
const CLIENT_TIMEOUT_MS: u64 = 60_000;

/// `value` rounded to 3 decimals: its shortest decimal form has few digits,
/// which serde_json parses exactly (its default float parser may be 1 ulp
/// off on long mantissas such as `0.21100000000000002`).
fn milli(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

/// Readings of `sensors` probes, `per_sensor` each from `first_seq`.
fn readings(sensors: u32, per_sensor: u64, first_seq: u64) -> Vec<Reading> {
    let mut out = Vec::new();
    for seq in first_seq..first_seq + per_sensor {
        for s in 0..sensors {
            out.push(Reading {
                gateway_id: "gw-python".into(),
                sensor_id: format!("py-probe-{s:02}"),
                seq,
                event_time_ms: 1_714_536_000_000 + seq as i64 * 900_000 + i64::from(s),
                moisture_vwc: milli(0.2 + f64::from(s) / 100.0 + seq as f64 / 1_000.0),
                soil_temp_c: Some(milli(11.5 - seq as f64 / 8.0)),
                bulk_ec_ds_m: (s % 2 == 0).then_some(0.45),
                depth_cm: 10 + 20 * (s as i32 % 2),
                battery_v: (seq % 3 != 0).then_some(3.61),
                source_flag: None,
            });
        }
    }
    out
}

/// A reading from the JSON of `soilstream consume --json` or of the Python
/// consumer (soilstream's field names; other fields ignored).
fn reading_from_json(value: &Value) -> Reading {
    let field = |name: &str| {
        value
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` in {value}"))
    };
    Reading {
        gateway_id: field("gateway_id").as_str().expect("gateway_id").to_owned(),
        sensor_id: field("sensor_id").as_str().expect("sensor_id").to_owned(),
        seq: field("seq").as_u64().expect("seq"),
        event_time_ms: field("event_time_ms").as_i64().expect("event_time_ms"),
        moisture_vwc: field("moisture_vwc").as_f64().expect("moisture_vwc"),
        soil_temp_c: field("soil_temp_c").as_f64(),
        bulk_ec_ds_m: field("bulk_ec_ds_m").as_f64(),
        depth_cm: field("depth_cm").as_i64().expect("depth_cm") as i32,
        battery_v: field("battery_v").as_f64(),
        source_flag: value
            .get("source_flag")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// JSON lines printed on stdout.
fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line}: {e}")))
        .collect()
}

/// Runs `tests/python/kafka_roundtrip.py ARGS`; returns its JSON lines.
fn run_python(args: &[&str]) -> Vec<Value> {
    let output = Command::new(python())
        .arg(tests_dir().join("python/kafka_roundtrip.py"))
        .args(args)
        .args(["--timeout-s", &(CLIENT_TIMEOUT_MS / 1_000).to_string()])
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "kafka_roundtrip.py {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    json_lines(&output.stdout)
}

/// Python produces `readings` with the schema file `schema`; returns the
/// schema id in the values and checks each record's partition.
fn python_produce(bootstrap: &str, registry: &str, schema: &Path, readings: &[Value], dir: &Path) -> u64 {
    let input = dir.join(format!("readings-{}.jsonl", readings.len()));
    let text: String = readings.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let delivered = run_python(&[
        "produce",
        "--bootstrap",
        bootstrap,
        "--registry",
        registry,
        "--topic",
        RAW_TOPIC,
        "--schema",
        schema.to_str().unwrap(),
        "--readings",
        input.to_str().unwrap(),
    ]);
    assert_eq!(delivered.len(), readings.len(), "{delivered:?}");
    let ids: BTreeSet<u64> = delivered
        .iter()
        .map(|d| d["schema_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one schema id per batch: {ids:?}");
    for record in &delivered {
        // The Python client's murmur2_random partitioner agrees with ours.
        let sensor = record["sensor_id"].as_str().unwrap();
        assert_eq!(
            record["partition"].as_i64(),
            Some(i64::from(partition_for_key(sensor.as_bytes(), RAW_PARTITIONS))),
            "{record}"
        );
    }
    ids.into_iter().next().expect("one id")
}

/// `soilstream consume --registry URL --json` of the whole topic (stops
/// after `records` records, or 10 s without one); its JSON lines, every one
/// checked to be a decoded reading.
fn soilstream_consume(bootstrap: &str, registry: &str, records: usize, log: &Path) -> Vec<Value> {
    let spec = ChildSpec::new(SOILSTREAM, log)
        .args([
            "consume",
            "--brokers",
            bootstrap,
            "--topic",
            RAW_TOPIC,
            "--from-beginning",
        ])
        .args([
            "--max-records",
            &records.to_string(),
            "--idle-exit-ms",
            "10000",
            "--json",
        ])
        .args(["--registry", registry])
        .env("SOILSTREAM_LOG", "warn")
        .env_remove("SOILSTREAM_BROKERS")
        .env_remove("SOILSTREAM_REGISTRY_URL");
    let mut consume = ChildProcess::spawn(spec).expect("spawn soilstream consume");
    let Some(status) = consume.wait(CLIENT_TIMEOUT_MS) else {
        consume.kill9().expect("kill consume");
        panic!("soilstream consume did not exit within {CLIENT_TIMEOUT_MS} ms");
    };
    assert!(status.success(), "soilstream consume failed: {status}");
    let lines = json_lines(std::fs::read_to_string(log).expect("consume's output").as_bytes());
    for line in &lines {
        assert!(
            line.get("error").is_none() && line.get("reading").is_some(),
            "every record decodes: {line}"
        );
    }
    lines
}

#[test]
fn readings_serialized_by_python_decode_in_soilstream_consume() {
    let started = Instant::now();
    let python = python();
    require_confluent_kafka(&python);
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(&dir.path().join("registry"), &dir.path().join("registry.log"));
    let broker = start_raw_broker(false);
    let mut logs = LogsOnFailure::new();
    logs.watch("registry", dir.path().join("registry.log"))
        .watch("broker", broker.log_path())
        .watch("consume", dir.path().join("consume.log"));
    let bootstrap = broker.bootstrap_servers();

    // v1 readings, then v2 readings (the optional field set): Python registers
    // both under the topic's value subject.
    let v1 = readings(3, 4, 1);
    let v2 = readings(3, 4, 5);
    let as_json = |r: &Reading| serde_json::to_value(r).unwrap();
    let v1_json: Vec<Value> = v1.iter().map(as_json).collect();
    let v2_json: Vec<Value> = v2
        .iter()
        .map(|r| {
            let mut value = as_json(r);
            value["signal_rssi_dbm"] = json!(-60 - r.seq as i64);
            value
        })
        .collect();
    let v1_id = python_produce(
        &bootstrap,
        &registry.url,
        &schemas_dir().join("soil_reading.avsc"),
        &v1_json,
        dir.path(),
    );
    let v2_id = python_produce(
        &bootstrap,
        &registry.url,
        &schemas_dir().join("soil_reading_v2.avsc"),
        &v2_json,
        dir.path(),
    );
    assert_ne!(v1_id, v2_id, "v2 is a new schema");
    let total = v1.len() + v2.len();
    assert_eq!(topic_record_count(&broker, RAW_TOPIC), total as i64);

    let lines = soilstream_consume(&bootstrap, &registry.url, total, &dir.path().join("consume.log"));
    assert_eq!(lines.len(), total);
    let sent: BTreeMap<ReadingId, (&Reading, u64)> = v1
        .iter()
        .map(|r| (r.id(), (r, v1_id)))
        .chain(v2.iter().map(|r| (r.id(), (r, v2_id))))
        .collect();
    let mut seen = BTreeSet::new();
    for line in &lines {
        let decoded = reading_from_json(&line["reading"]);
        let (original, schema_id) = sent
            .get(&decoded.id())
            .unwrap_or_else(|| panic!("consume printed a reading Python did not send: {line}"));
        assert_eq!(&&decoded, original, "{line}");
        assert_eq!(line["schema_id"].as_u64(), Some(*schema_id), "{line}");
        assert_eq!(line["timestamp_type"], "CreateTime", "{line}");
        assert_eq!(
            line["timestamp_ms"].as_i64(),
            Some(original.event_time_ms),
            "{line}"
        );
        assert_eq!(line["flags"], json!([]), "{line}");
        seen.insert(decoded.id());
    }
    assert_eq!(seen.len(), total, "each reading once");
    registry.kill_9();
    eprintln!(
        "Python -> soilstream consume: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn readings_a_registry_backed_gateway_produced_decode_in_python() {
    let started = Instant::now();
    let python = python();
    require_confluent_kafka(&python);
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(&dir.path().join("registry"), &dir.path().join("registry.log"));
    // Take id 1 so the gateway's schema gets another id than the in-process
    // registry's fixed 1: records carrying it prove the service was used.
    let client = registry.client();
    let taken = block_on(client.register("unrelated-value", &numbered_schema("n")));
    assert_eq!(taken, Ok(1));
    let broker = start_raw_broker(false);
    let mut spec = GatewaySpec::new("gw-registry", &broker.bootstrap_servers(), RAW_TOPIC);
    spec.registry_url = Some(registry.url.clone());
    let mut gateway = Gateway::start(&dir.path().join("gateway"), &spec);
    let mut logs = LogsOnFailure::new();
    logs.watch("gateway", gateway.log_path())
        .watch("registry", dir.path().join("registry.log"))
        .watch("broker", broker.log_path())
        .watch("consume", dir.path().join("consume.log"));

    gateway.wait_for_ledger(50, 30_000);
    gateway.wait_for("50 deliveries", 30_000, |m| m.delivered() >= 50);
    gateway.stop(spec.shutdown_grace_ms);
    let ledger = gateway.ledger_readings();

    // The gateway wrote the id the service gave its (v1) schema.
    let (records, _) = read_topic(&broker, RAW_TOPIC);
    let ids: BTreeSet<u32> = records
        .iter()
        .map(|r| from_wire(r.value.as_deref().unwrap()).expect("wire format").0)
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = *ids.first().unwrap();
    assert_ne!(id, 1, "the schema id comes from the registry service");
    let served = block_on(client.schema_by_id(id)).expect("the registry serves the id");
    assert_eq!(
        ReadingCodec::from_schema_text(&served)
            .unwrap()
            .canonical_schema(),
        ReadingCodec::from_schema_text(SOIL_READING_SCHEMA_V1)
            .unwrap()
            .canonical_schema()
    );

    let decoded = run_python(&[
        "consume",
        "--bootstrap",
        &broker.bootstrap_servers(),
        "--registry",
        &registry.url,
        "--topic",
        RAW_TOPIC,
    ]);
    assert_eq!(decoded.len(), records.len(), "Python decoded every record");
    let mut in_python: BTreeMap<ReadingId, Reading> = BTreeMap::new();
    for line in &decoded {
        let reading = reading_from_json(&line["reading"]);
        assert_eq!(line["key"], reading.sensor_id.as_str(), "{line}");
        assert_eq!(line["create_time"], true, "{line}");
        assert_eq!(
            line["timestamp_ms"].as_i64(),
            Some(reading.event_time_ms),
            "{line}"
        );
        assert_eq!(
            line["headers"]["gateway_id"],
            reading.gateway_id.as_str(),
            "{line}"
        );
        assert_eq!(line["headers"]["seq"], reading.seq.to_string().as_str(), "{line}");
        assert!(
            in_python.insert(reading.id(), reading).is_none(),
            "one copy each: {line}"
        );
    }
    // After a clean stop the ledger lists every durable reading: Python
    // decoded exactly those, with their values.
    assert_eq!(in_python.len(), ledger.len());
    for reading in &ledger {
        assert_eq!(in_python.get(&reading.id()), Some(reading), "{:?}", reading.id());
    }
    // `soilstream consume` shows the same readings.
    let shown = soilstream_consume(
        &broker.bootstrap_servers(),
        &registry.url,
        records.len(),
        &dir.path().join("consume.log"),
    );
    let in_consume: BTreeMap<ReadingId, Reading> = shown
        .iter()
        .map(|line| {
            assert_eq!(line["schema_id"].as_u64(), Some(u64::from(id)), "{line}");
            let reading = reading_from_json(&line["reading"]);
            (reading.id(), reading)
        })
        .collect();
    assert_eq!(in_consume, in_python);
    registry.kill_9();
    eprintln!(
        "gateway -> Python: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
