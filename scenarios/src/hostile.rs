//! A hostile producer inside the simulated world: a `hostile-{n}` client that
//! writes bad records straight to the raw topic, bypassing every gateway
//! check, so the harness can prove qaqc quarantines each with its reason
//! and never stops on input.

use crate::world::{RAW_TOPIC, producer_config, registry_client};
use apache_avro::Schema;
use apache_avro::types::Value;
use soilstream::codec::{SOIL_READING_SCHEMA_V1, to_wire};
use soilstream::qaqc::checks::QuarantineReason;
use soilstream::registry::{SchemaRegistry, value_subject};
use soilstream::transport::{LogProducer, OutboundRecord, RecordPosition};
use soilstream_sim::SimProducer;
use std::cell::RefCell;
use std::rc::Rc;

/// Gateway id of hostile readings.
pub const HOSTILE_GATEWAY: &str = "hostile";

/// One hostile record written, and the quarantine reason it must get.
#[derive(Debug, Clone, PartialEq)]
pub struct HostileRecord {
    /// Where it landed.
    pub position: RecordPosition,
    /// The reason qaqc must give.
    pub expected: QuarantineReason,
    /// What it is, for failure messages.
    pub what: &'static str,
}

/// The kinds written, in turn.
const KINDS: [(&str, QuarantineReason); 12] = [
    ("garbage bytes", QuarantineReason::Undecodable),
    ("unknown schema id", QuarantineReason::UnknownSchemaId),
    ("NaN moisture", QuarantineReason::NonFinite),
    ("soil temperature 1e300", QuarantineReason::ImplausibleValue),
    ("event time in year 9999", QuarantineReason::FutureEventTime),
    ("negative moisture", QuarantineReason::C01),
    ("moisture 0.75", QuarantineReason::C02),
    ("moisture above saturation", QuarantineReason::C03),
    ("key is not the sensor id", QuarantineReason::KeyMismatch),
    (
        "control character in the sensor id",
        QuarantineReason::InvalidIdentity,
    ),
    ("truncated Avro body", QuarantineReason::Undecodable),
    ("depth of 2^31 - 1 cm", QuarantineReason::ImplausibleValue),
];

fn optional(v: Option<f64>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(Value::Double(v))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

#[allow(clippy::too_many_arguments)]
fn body(
    schema: &Schema,
    sensor: &str,
    seq: i64,
    event_time_ms: i64,
    moisture: f64,
    temp: f64,
    depth_cm: i32,
) -> Vec<u8> {
    let value = Value::Record(vec![
        ("gateway_id".into(), Value::String(HOSTILE_GATEWAY.into())),
        ("sensor_id".into(), Value::String(sensor.into())),
        ("seq".into(), Value::Long(seq)),
        ("event_time".into(), Value::TimestampMillis(event_time_ms)),
        ("moisture_vwc".into(), Value::Double(moisture)),
        ("soil_temp_c".into(), Value::Double(temp)),
        ("bulk_ec_ds_m".into(), optional(Some(0.4))),
        ("depth_cm".into(), Value::Int(depth_cm)),
        ("battery_v".into(), optional(None)),
    ]);
    apache_avro::to_avro_datum(schema, value).expect("the hostile record matches the schema's shape")
}

/// Writes `count` hostile records at simulated wall time `now_ms`; returns
/// them with their positions. Runs inside a turmoil client.
pub async fn write(
    count: u32,
    first_seq: u64,
    now_ms: i64,
    tick_ms: u64,
    written: Rc<RefCell<Vec<HostileRecord>>>,
) -> Result<(), String> {
    let schema = Schema::parse_str(SOIL_READING_SCHEMA_V1).map_err(|e| e.to_string())?;
    let registry = registry_client(tick_ms);
    let mut schema_id = None;
    for _ in 0..60 {
        match registry
            .register(&value_subject(RAW_TOPIC), SOIL_READING_SCHEMA_V1)
            .await
        {
            Ok(id) => {
                schema_id = Some(id);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(tick_ms.max(1_000))).await,
        }
    }
    let schema_id = schema_id.ok_or("the registry stayed unreachable")?;
    let producer = SimProducer::new(producer_config(tick_ms)).map_err(|e| e.to_string())?;
    let mut pending = Vec::new();
    for i in 0..count {
        let seq = first_seq + u64::from(i);
        let (what, expected) = KINDS[i as usize % KINDS.len()];
        let sensor = format!("hostile-probe-{}", i % 5);
        let good = |m: f64, t: f64, e: i64, d: i32| body(&schema, &sensor, seq as i64, e, m, t, d);
        let (key, value, timestamp_ms) = match i as usize % KINDS.len() {
            0 => (sensor.clone(), b"\xff\x00garbage".to_vec(), now_ms),
            1 => (
                sensor.clone(),
                to_wire(999_999, &good(0.2, 10.0, now_ms, 10)),
                now_ms,
            ),
            2 => (
                sensor.clone(),
                to_wire(schema_id, &good(f64::NAN, 10.0, now_ms, 10)),
                now_ms,
            ),
            3 => (
                sensor.clone(),
                to_wire(schema_id, &good(0.2, 1e300, now_ms, 10)),
                now_ms,
            ),
            4 => {
                let year_9999 = 253_402_300_799_000;
                (
                    sensor.clone(),
                    to_wire(schema_id, &good(0.2, 10.0, year_9999, 10)),
                    year_9999,
                )
            }
            5 => (
                sensor.clone(),
                to_wire(schema_id, &good(-0.2, 10.0, now_ms, 10)),
                now_ms,
            ),
            6 => (
                sensor.clone(),
                to_wire(schema_id, &good(0.75, 10.0, now_ms, 10)),
                now_ms,
            ),
            7 => (
                sensor.clone(),
                to_wire(schema_id, &good(0.55, 10.0, now_ms, 10)),
                now_ms,
            ),
            8 => (
                "not-the-sensor".to_string(),
                to_wire(schema_id, &good(0.2, 10.0, now_ms, 10)),
                now_ms,
            ),
            9 => {
                let bad = format!("hostile\u{7}{}", i % 5);
                let value = to_wire(schema_id, &body(&schema, &bad, seq as i64, now_ms, 0.2, 10.0, 10));
                (bad, value, now_ms)
            }
            10 => {
                let full = good(0.2, 10.0, now_ms, 10);
                (
                    sensor.clone(),
                    to_wire(schema_id, &full[..full.len() / 3]),
                    now_ms,
                )
            }
            _ => (
                sensor.clone(),
                to_wire(schema_id, &good(0.2, 10.0, now_ms, i32::MAX)),
                now_ms,
            ),
        };
        let record = OutboundRecord {
            topic: RAW_TOPIC.into(),
            key: key.into_bytes(),
            partition: None,
            value,
            timestamp_ms,
            headers: vec![],
        };
        let delivery = producer.enqueue(record).map_err(|e| e.to_string())?;
        pending.push((what, expected, delivery));
    }
    for (what, expected, delivery) in pending {
        let position = delivery.await.map_err(|e| e.to_string())?;
        written.borrow_mut().push(HostileRecord {
            position,
            expected,
            what,
        });
    }
    Ok(())
}
