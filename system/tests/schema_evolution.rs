//! Schema evolution of the reading schema, through the registry service:
//! v2 adds an optional field with a default; registering it under BACKWARD
//! succeeds, v1 readers decode v2 data and v2 readers decode v1 data, and
//! incompatible changes are rejected with a message naming the field. v3
//! makes the temperature optional and adds the provider's flag: BACKWARD
//! (v3 reads every older version's data), not FORWARD, and an old (v1)
//! consumer still reads every v3 reading that has a temperature.

use apache_avro::Schema;
use apache_avro::types::Value;
use soilstream::codec::{
    CodecError, ReadingCodec, SOIL_READING_SCHEMA_V1, SOIL_READING_SCHEMA_V2, SOIL_READING_SCHEMA_V3,
    from_wire, to_wire,
};
use soilstream::disk::StdDisk;
use soilstream::model::Reading;
use soilstream::registry::{
    ApiLimits, CompatibilityLevel, HttpRegistryClient, HttpRegistryClientConfig, RegistryError,
    SchemaRegistry, StoreLimits, TcpConnector, open_router, serve, value_subject,
};
use tokio::sync::oneshot;

const TOPIC: &str = "soil-moisture-raw";

fn reading() -> Reading {
    Reading {
        gateway_id: "gw-north".into(),
        sensor_id: "probe-17".into(),
        seq: 4711,
        event_time_ms: 1_717_000_000_000,
        moisture_vwc: 0.287,
        soil_temp_c: Some(12.25),
        bulk_ec_ds_m: Some(0.61),
        depth_cm: 45,
        battery_v: None,
        source_flag: None,
    }
}

/// Starts a registry on 127.0.0.1:0 over `dir`; returns its URL and the
/// shutdown trigger.
async fn start(dir: &std::path::Path) -> (String, oneshot::Sender<()>) {
    let (router, _) = open_router(StdDisk, dir, StoreLimits::default(), ApiLimits::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, async move {
        let _ = rx.await;
    }));
    (url, tx)
}

fn client(url: &str) -> HttpRegistryClient<TcpConnector> {
    HttpRegistryClient::new(TcpConnector, url, HttpRegistryClientConfig::default()).unwrap()
}

/// A v2 body carrying a link metric, built as an Avro record so that the
/// new field has a non-default value.
fn v2_body_with_rssi(r: &Reading, rssi_dbm: i32) -> Vec<u8> {
    let v2 = Schema::parse_str(SOIL_READING_SCHEMA_V2).unwrap();
    let optional = |v: Option<f64>| match v {
        Some(v) => Value::Union(1, Box::new(Value::Double(v))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let record = Value::Record(vec![
        ("gateway_id".into(), Value::String(r.gateway_id.clone())),
        ("sensor_id".into(), Value::String(r.sensor_id.clone())),
        ("seq".into(), Value::Long(r.seq as i64)),
        ("event_time".into(), Value::TimestampMillis(r.event_time_ms)),
        ("moisture_vwc".into(), Value::Double(r.moisture_vwc)),
        (
            "soil_temp_c".into(),
            Value::Double(r.soil_temp_c.expect("the sample has a temperature")),
        ),
        ("bulk_ec_ds_m".into(), optional(r.bulk_ec_ds_m)),
        ("depth_cm".into(), Value::Int(r.depth_cm)),
        ("battery_v".into(), optional(r.battery_v)),
        (
            "signal_rssi_dbm".into(),
            Value::Union(1, Box::new(Value::Int(rssi_dbm))),
        ),
    ]);
    apache_avro::to_avro_datum(&v2, record).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn v2_registers_under_backward_and_both_generations_read_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop) = start(dir.path()).await;
    let producer = client(&url);
    let subject = value_subject(TOPIC);

    let v1_id = producer.register(&subject, SOIL_READING_SCHEMA_V1).await.unwrap();
    let check = producer
        .check_compatibility(&subject, SOIL_READING_SCHEMA_V2, None)
        .await
        .unwrap();
    assert!(check.is_compatible, "{check:?}");
    let v2_id = producer.register(&subject, SOIL_READING_SCHEMA_V2).await.unwrap();
    assert_eq!((v1_id, v2_id), (1, 2));
    // v2 is also forward compatible: old consumers keep working.
    producer
        .set_compatibility(Some(&subject), CompatibilityLevel::FullTransitive)
        .await
        .unwrap();
    assert!(
        producer
            .check_compatibility(&subject, SOIL_READING_SCHEMA_V2, Some(1))
            .await
            .unwrap()
            .is_compatible
    );

    let v1 = ReadingCodec::v1();
    let v2 = ReadingCodec::from_schema_text(SOIL_READING_SCHEMA_V2).unwrap();
    let original = reading();

    // A v2 producer's value, decoded by a v1 consumer that fetches the
    // writer schema by the id in the value.
    let v2_value = to_wire(v2_id, &v2_body_with_rssi(&original, -71));
    let consumer = client(&url);
    let (id, body) = from_wire(&v2_value).unwrap();
    let writer = Schema::parse_str(&consumer.schema_by_id(id).await.unwrap()).unwrap();
    assert_eq!(v1.decode_body_written_with(&writer, body).unwrap(), original);
    // The new field really is in the data: a v2 reader sees it.
    let resolved = apache_avro::from_avro_datum(&writer, &mut &body[..], Some(v2.schema())).unwrap();
    let Value::Record(fields) = resolved else {
        panic!("not a record")
    };
    assert!(fields.contains(&(
        "signal_rssi_dbm".to_owned(),
        Value::Union(1, Box::new(Value::Int(-71)))
    )));

    // A v1 producer's value, decoded by a v2 consumer: the new field takes
    // its default.
    let v1_value = to_wire(v1_id, &v1.encode_body(&original).unwrap());
    let (id, body) = from_wire(&v1_value).unwrap();
    let writer = Schema::parse_str(&consumer.schema_by_id(id).await.unwrap()).unwrap();
    assert_eq!(v2.decode_body_written_with(&writer, body).unwrap(), original);
    let resolved = apache_avro::from_avro_datum(&writer, &mut &body[..], Some(v2.schema())).unwrap();
    let Value::Record(fields) = resolved else {
        panic!("not a record")
    };
    assert!(fields.contains(&(
        "signal_rssi_dbm".to_owned(),
        Value::Union(0, Box::new(Value::Null))
    )));

    // The v2 codec writes v2 data (the new field from its default) that v1 reads.
    let body = v2.encode_body(&original).unwrap();
    assert_eq!(v1.decode_body_written_with(v2.schema(), &body).unwrap(), original);
    let _ = stop.send(());
}

#[tokio::test(flavor = "current_thread")]
async fn incompatible_reading_schemas_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop) = start(dir.path()).await;
    let registry = client(&url);
    let subject = value_subject(TOPIC);
    registry.register(&subject, SOIL_READING_SCHEMA_V1).await.unwrap();

    let expect_rejection = |result: Result<u32, RegistryError>, needle: &str| match result {
        Err(RegistryError::Incompatible(message)) => {
            assert!(message.contains(needle), "`{needle}` not in: {message}")
        }
        other => panic!("expected a rejection naming `{needle}`, got {other:?}"),
    };

    // A type change.
    let moisture_as_string = SOIL_READING_SCHEMA_V1.replace(
        r#"{"name": "moisture_vwc", "type": "double""#,
        r#"{"name": "moisture_vwc", "type": "string""#,
    );
    assert_ne!(moisture_as_string, SOIL_READING_SCHEMA_V1);
    expect_rejection(
        registry.register(&subject, &moisture_as_string).await,
        "field `moisture_vwc`: type changed from double to string",
    );

    // A new field without a default (BACKWARD: the new schema cannot read
    // old data).
    let required_rssi =
        SOIL_READING_SCHEMA_V2.replace(r#""type": ["null", "int"], "default": null"#, r#""type": "int""#);
    assert_ne!(required_rssi, SOIL_READING_SCHEMA_V2);
    expect_rejection(
        registry.register(&subject, &required_rssi).await,
        "field `signal_rssi_dbm` added without default",
    );

    // A removed field without a default (FORWARD/FULL: old readers need it).
    registry
        .set_compatibility(Some(&subject), CompatibilityLevel::Full)
        .await
        .unwrap();
    let without_depth = SOIL_READING_SCHEMA_V1.replace(
        r#"    {"name": "depth_cm", "type": "int", "doc": "Installation depth of the probe below the surface, in cm."},
"#,
        "",
    );
    assert_ne!(without_depth, SOIL_READING_SCHEMA_V1);
    expect_rejection(
        registry.register(&subject, &without_depth).await,
        "field `depth_cm` removed without default",
    );
    // Nothing was registered by the rejected attempts.
    assert_eq!(registry.latest_version(&subject).await.unwrap().version, 1);
    let _ = stop.send(());
}

#[tokio::test(flavor = "current_thread")]
async fn v3_is_backward_compatible_and_old_consumers_read_readings_with_a_temperature() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop) = start(dir.path()).await;
    let registry = client(&url);
    let subject = value_subject(TOPIC);
    let v1_id = registry.register(&subject, SOIL_READING_SCHEMA_V1).await.unwrap();
    let v2_id = registry.register(&subject, SOIL_READING_SCHEMA_V2).await.unwrap();

    // FORWARD_TRANSITIVE refuses it: a v1 reader cannot take a null temperature.
    registry
        .set_compatibility(Some(&subject), CompatibilityLevel::ForwardTransitive)
        .await
        .unwrap();
    match registry.register(&subject, SOIL_READING_SCHEMA_V3).await {
        Err(RegistryError::Incompatible(message)) => {
            assert!(message.contains("soil_temp_c"), "{message}")
        }
        other => panic!("expected FORWARD to refuse v3, got {other:?}"),
    }
    // BACKWARD_TRANSITIVE (every older version's data readable) accepts it.
    registry
        .set_compatibility(Some(&subject), CompatibilityLevel::BackwardTransitive)
        .await
        .unwrap();
    let v3_id = registry.register(&subject, SOIL_READING_SCHEMA_V3).await.unwrap();
    assert_eq!((v1_id, v2_id, v3_id), (1, 2, 3));

    let (v1, v3) = (ReadingCodec::v1(), ReadingCodec::v3());
    let writer_of = |id: u32| {
        let registry = client(&url);
        async move { Schema::parse_str(&registry.schema_by_id(id).await.unwrap()).unwrap() }
    };

    // A v3 reader (qaqc, the archive, consume) reads v1 and v2 data.
    let with_temperature = reading();
    let v1_body = v1.encode_body(&with_temperature).unwrap();
    assert_eq!(
        v3.decode_body_written_with(&writer_of(v1_id).await, &v1_body)
            .unwrap(),
        with_temperature
    );
    let v2_body = v2_body_with_rssi(&with_temperature, -60);
    assert_eq!(
        v3.decode_body_written_with(&writer_of(v2_id).await, &v2_body)
            .unwrap(),
        with_temperature
    );

    // An old consumer (v1 reader) reads a v3 reading that has a temperature,
    // the provider's flag dropped as a field it does not know.
    let flagged = Reading {
        source_flag: Some("D03,D05".into()),
        ..reading()
    };
    let v3_writer = writer_of(v3_id).await;
    let body = v3.encode_body(&flagged).unwrap();
    assert_eq!(v3.decode_body_written_with(&v3_writer, &body).unwrap(), flagged);
    assert_eq!(
        v1.decode_body_written_with(&v3_writer, &body).unwrap(),
        with_temperature
    );

    // A v3 reading without a temperature: v3 readers get None, a v1 reader a
    // typed error (never a made-up value), and v1 refuses to write one.
    let without = Reading {
        soil_temp_c: None,
        ..reading()
    };
    let body = v3.encode_body(&without).unwrap();
    assert_eq!(v3.decode_body_written_with(&v3_writer, &body).unwrap(), without);
    assert!(matches!(
        v1.decode_body_written_with(&v3_writer, &body),
        Err(CodecError::Undecodable(_))
    ));
    let refused = v1.encode_body(&without).unwrap_err().to_string();
    assert!(refused.contains("soil_temp_c"), "{refused}");
    let _ = stop.send(());
}
