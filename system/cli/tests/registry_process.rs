//! The real `soilstream registry serve` process: durability across kill -9,
//! ids never reused, clean shutdown on SIGTERM and Ctrl-C, refusal to start
//! on a damaged log or on a data directory another server holds.

mod common;

use common::{RegistryProcess, numbered_schema};
use soilstream::codec::SOIL_READING_SCHEMA_V1;
use soilstream::registry::client::Method;
use soilstream::registry::log::{FRAME_HEADER_BYTES, LOG_HEADER};
use soilstream::registry::{CompatibilityLevel, RegistryError, SchemaRegistry};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "current_thread")]
async fn acknowledged_state_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("registry.stderr");

    let registry = RegistryProcess::start(&data, &log);
    let client = registry.client();
    assert_eq!(client.register("soil-value", SOIL_READING_SCHEMA_V1).await, Ok(1));
    assert_eq!(client.register("copy-value", SOIL_READING_SCHEMA_V1).await, Ok(1));
    client
        .set_compatibility(Some("numbers"), CompatibilityLevel::None)
        .await
        .unwrap();
    let mut ids = BTreeMap::new();
    for i in 0..5 {
        let schema = numbered_schema(&format!("n{i}"));
        ids.insert(schema.clone(), client.register("numbers", &schema).await.unwrap());
    }
    assert_eq!(ids.values().copied().collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
    // Soft-delete version 2 of `numbers`, hard-delete `copy-value`.
    let deleted = client
        .send(Method::DELETE, "/subjects/numbers/versions/2", None)
        .await
        .unwrap();
    assert_eq!(deleted.status.as_u16(), 200);
    for path in ["/subjects/copy-value", "/subjects/copy-value?permanent=true"] {
        assert_eq!(
            client
                .send(Method::DELETE, path, None)
                .await
                .unwrap()
                .status
                .as_u16(),
            200
        );
    }
    registry.kill_9();

    let registry = RegistryProcess::start(&data, &log);
    let client = registry.client();
    assert!(
        registry.stderr().contains("registry store open"),
        "{}",
        registry.stderr()
    );
    assert_eq!(client.schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
    for (schema, id) in &ids {
        assert_eq!(client.schema_by_id(*id).await.unwrap(), *schema);
    }
    let versions = client
        .send(Method::GET, "/subjects/numbers/versions", None)
        .await
        .unwrap();
    assert_eq!(&versions.body[..], b"[1,3,4,5]");
    let subjects = client.send(Method::GET, "/subjects", None).await.unwrap();
    assert_eq!(&subjects.body[..], br#"["numbers","soil-value"]"#);
    let config = client.send(Method::GET, "/config/numbers", None).await.unwrap();
    assert_eq!(&config.body[..], br#"{"compatibilityLevel":"NONE"}"#);
    // Ids are not reused: the next new schema gets 7, an old one its old id.
    assert_eq!(client.register("numbers", &numbered_schema("fresh")).await, Ok(7));
    assert_eq!(client.register("copy-value", SOIL_READING_SCHEMA_V1).await, Ok(1));
    registry.kill_9();
}

#[tokio::test(flavor = "current_thread")]
async fn registrations_in_flight_during_kill_9_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("registry.stderr");
    // schema -> (subject, id) of every acknowledged registration.
    let mut acknowledged: BTreeMap<String, (String, u32)> = BTreeMap::new();
    let mut next = 0usize;
    for (round, kill_after_ms) in [40u64, 90, 160].into_iter().enumerate() {
        let registry = RegistryProcess::start(&data, &log);
        let client = registry.client();
        if round == 0 {
            client
                .set_compatibility(None, CompatibilityLevel::None)
                .await
                .unwrap();
        }
        // Everything acknowledged before is there, under the same id.
        for (schema, (subject, id)) in &acknowledged {
            let found = client.lookup(subject, schema).await.unwrap();
            assert_eq!(
                found.map(|f| f.id),
                Some(*id),
                "round {round}: {subject} {schema}"
            );
        }
        // Kill the process from outside while registrations stream in.
        let pid = registry.pid();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(kill_after_ms));
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success());
        });
        let mut acked_this_round = 0;
        loop {
            let schema = numbered_schema(&format!("f{next}"));
            let subject = format!("s{}", next % 3);
            next += 1;
            match client.register(&subject, &schema).await {
                Ok(id) => {
                    acked_this_round += 1;
                    acknowledged.insert(schema, (subject, id));
                }
                Err(RegistryError::Unavailable(_)) => break,
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        killer.join().unwrap();
        registry.kill_9();
        assert!(
            acked_this_round > 0,
            "round {round}: the kill came before any registration"
        );
        eprintln!("round {round}: {acked_this_round} registrations acknowledged before kill -9");
    }
    // Ids are unique per schema, and the registry starts again after the
    // last kill with everything acknowledged.
    let mut schemas_by_id = BTreeMap::new();
    for (schema, (_, id)) in &acknowledged {
        assert!(
            schemas_by_id.insert(*id, schema.clone()).is_none(),
            "id {id} given twice"
        );
    }
    let registry = RegistryProcess::start(&data, &log);
    let client = registry.client();
    for (schema, (subject, id)) in &acknowledged {
        assert_eq!(
            client.lookup(subject, schema).await.unwrap().map(|f| f.id),
            Some(*id)
        );
    }
    let max_id = *schemas_by_id.keys().last().unwrap();
    let fresh = client
        .register("s0", &numbered_schema("after_the_storm"))
        .await
        .unwrap();
    assert!(fresh > max_id, "new id {fresh} not above {max_id}");
    registry.kill_9();
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_and_ctrl_c_shut_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("registry.stderr");
    for signal in ["TERM", "INT"] {
        let registry = RegistryProcess::start(&data, &log);
        assert_eq!(
            registry.client().register("s", SOIL_READING_SCHEMA_V1).await,
            Ok(1)
        );
        let status = registry.signal_and_wait(signal, Duration::from_secs(10));
        assert!(status.success(), "SIG{signal}: {status:?}");
        let stderr = common::read_to_string(&log);
        assert!(stderr.contains("registry stopped"), "SIG{signal}: {stderr}");
    }
}

#[test]
fn a_damaged_log_is_reported_and_the_registry_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("registry.stderr");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let registry = RegistryProcess::start(&data, &log);
        let client = registry.client();
        client
            .set_compatibility(None, CompatibilityLevel::None)
            .await
            .unwrap();
        for i in 0..3 {
            client
                .register("s", &numbered_schema(&format!("d{i}")))
                .await
                .unwrap();
        }
        registry.kill_9();
    });
    let path = data.join("registry.log");
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a bit inside the first record; three more follow it.
    bytes[LOG_HEADER.len() + FRAME_HEADER_BYTES + 2] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let stderr = serve_refused(&data);
    assert!(stderr.contains("is damaged at byte"), "{stderr}");
    assert!(stderr.contains("Refusing to start"), "{stderr}");
}

/// Runs `registry serve` on `data`, expecting it to refuse to start; returns
/// its stderr.
fn serve_refused(data: &std::path::Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_soilstream"))
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "it must not claim to listen");
    stderr
}

#[tokio::test(flavor = "current_thread")]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("registry.stderr");
    let registry = RegistryProcess::start(&data, &log);
    assert_eq!(
        registry.client().register("s", SOIL_READING_SCHEMA_V1).await,
        Ok(1)
    );
    let stderr = serve_refused(&data);
    assert!(
        stderr.contains("is in use by another process; stop the other registry or use another --data"),
        "{stderr}"
    );
    // The first server is unharmed.
    assert_eq!(
        registry.client().register("t", SOIL_READING_SCHEMA_V1).await,
        Ok(1)
    );
    registry.kill_9();
}
