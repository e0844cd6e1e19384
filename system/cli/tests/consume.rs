//! `soilstream consume` against a real broker (needs the `tansu` binary).

use soilstream::codec::{ReadingCodec, to_wire};
use soilstream::model::Reading;
use soilstream::transport::kafka::KafkaProducer;
use soilstream::transport::{LogProducer, OutboundRecord};
use soilstream_containers::{ChildProcess, ChildSpec, FixtureError, TansuBroker, TansuConfig};

const TOPIC: &str = "soil-moisture-raw";

fn start_broker() -> TansuBroker {
    match TansuBroker::start(TansuConfig::default().topic(TOPIC, 2)) {
        Ok(broker) => broker,
        Err(error @ FixtureError::TansuMissing { .. }) => panic!("this test needs the Tansu broker: {error}"),
        Err(error) => panic!("could not start the Tansu broker: {error}"),
    }
}

fn reading(seq: u64) -> Reading {
    Reading {
        gateway_id: "gw-cli".into(),
        sensor_id: format!("probe-{}", seq % 3),
        seq,
        event_time_ms: 1_700_000_000_000 + seq as i64 * 60_000,
        moisture_vwc: 0.25,
        soil_temp_c: Some(11.0),
        bulk_ec_ds_m: None,
        depth_cm: 10,
        battery_v: Some(3.3),
        source_flag: None,
    }
}

fn record(reading: &Reading, timestamp_ms: i64, value: Vec<u8>) -> OutboundRecord {
    OutboundRecord {
        topic: TOPIC.into(),
        key: reading.sensor_id.clone().into_bytes(),
        partition: None,
        value,
        timestamp_ms,
        headers: vec![
            ("gateway_id".into(), reading.gateway_id.clone().into_bytes()),
            ("seq".into(), reading.seq.to_string().into_bytes()),
        ],
    }
}

/// Produces 6 good readings, one with a timestamp that is not its event
/// time, one with an unknown magic byte and one with a broken Avro body.
async fn produce_fixture(broker: &TansuBroker) {
    let producer = KafkaProducer::new(&broker.client_config()).unwrap();
    let codec = ReadingCodec::v1();
    let mut futures = Vec::new();
    for seq in 1..=6 {
        let r = reading(seq);
        let value = to_wire(1, &codec.encode_body(&r).unwrap());
        futures.push(producer.enqueue(record(&r, r.event_time_ms, value)).unwrap());
    }
    let skewed = reading(7);
    let value = to_wire(1, &codec.encode_body(&skewed).unwrap());
    futures.push(
        producer
            .enqueue(record(&skewed, skewed.event_time_ms + 2_500, value))
            .unwrap(),
    );
    futures.push(
        producer
            .enqueue(record(&reading(8), 0, vec![9, 0, 0, 0, 1, 2, 3]))
            .unwrap(),
    );
    futures.push(
        producer
            .enqueue(record(&reading(9), 0, to_wire(1, &[0xff, 0xff, 0xff, 0xff])))
            .unwrap(),
    );
    for result in futures::future::join_all(futures).await {
        result.expect("delivered");
    }
}

/// Runs `soilstream consume ARGS` to completion and returns its output
/// (stdout and stderr interleaved) and whether it succeeded.
fn run_consume(dir: &std::path::Path, name: &str, args: &[&str]) -> (String, bool) {
    let spec = ChildSpec::new(env!("CARGO_BIN_EXE_soilstream"), dir.join(format!("{name}.log")))
        .arg("consume")
        .args(args.iter().copied())
        .env("SOILSTREAM_LOG", "warn");
    let mut child = ChildProcess::spawn(spec).unwrap();
    let status = child.wait(60_000);
    let output = child.log_tail(1 << 20);
    let Some(status) = status else {
        child.kill9().unwrap();
        panic!("consume did not exit:\n{output}");
    };
    (output, status.success())
}

#[tokio::test]
async fn consume_prints_decoded_readings_flags_skew_and_survives_bad_records() {
    let broker = start_broker();
    produce_fixture(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let brokers = broker.bootstrap_servers();

    let (output, ok) = run_consume(
        dir.path(),
        "json",
        &[
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--from-beginning",
            "--idle-exit-ms",
            "3000",
            "--json",
        ],
    );
    assert!(ok, "{output}");
    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 9, "{output}");
    let decoded: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("reading").is_some()).collect();
    assert_eq!(decoded.len(), 7);
    for line in &decoded {
        assert_eq!(line["schema_id"], 1);
        assert_eq!(line["timestamp_type"], "CreateTime");
        let seq = line["reading"]["seq"].as_u64().unwrap();
        let skew = line["timestamp_minus_event_time_ms"].as_i64().unwrap();
        assert_eq!(skew, if seq == 7 { 2_500 } else { 0 }, "{line}");
        assert_eq!(line["flags"].as_array().unwrap().is_empty(), seq != 7, "{line}");
        assert_eq!(line["headers"][1]["value"], seq.to_string());
    }
    let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(errors.len(), 2);
    assert!(
        errors
            .iter()
            .any(|e| e["error"].as_str().unwrap().contains("magic byte 9"))
    );
    assert!(
        errors
            .iter()
            .all(|e| e["partition"].is_i64() && e["offset"].is_i64())
    );
    assert!(
        output.contains("consumed 9 record(s)") && output.contains("2 undecodable"),
        "{output}"
    );

    let (output, ok) = run_consume(
        dir.path(),
        "text",
        &[
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--from-beginning",
            "--max-records",
            "9",
        ],
    );
    assert!(ok, "{output}");
    assert_eq!(output.matches("UNDECODABLE").count(), 2, "{output}");
    assert_eq!(output.matches("event_time=").count(), 7, "{output}");
    assert!(
        output.contains("! kafka timestamp differs from event time by +2500 ms"),
        "{output}"
    );
    assert!(output.contains("headers: gateway_id=gw-cli seq="), "{output}");

    let (output, ok) = run_consume(
        dir.path(),
        "missing",
        &[
            "--brokers",
            &brokers,
            "--topic",
            "no-such-topic",
            "--idle-exit-ms",
            "100",
        ],
    );
    assert!(!ok, "an unknown topic is an error:\n{output}");
    assert!(output.contains("no-such-topic"), "{output}");
}
