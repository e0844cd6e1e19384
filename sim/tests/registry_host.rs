//! The registry service and its client inside turmoil: the same server code
//! on a simulated listener and a simulated disk ([`RegistryHost`]), the same
//! client over a simulated connector ([`SimConnector`]), and registry
//! outages (crash, partition, held messages) as scripted faults.

use soilstream::codec::{SOIL_READING_SCHEMA_V1, SOIL_READING_SCHEMA_V2};
use soilstream::registry::{HttpRegistryClient, HttpRegistryClientConfig, RegistryError, SchemaRegistry};
use soilstream_sim::{RegistryHost, RegistryHostConfig, SimConnector};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

const REGISTRY: &str = "registry";

fn sim(duration: Duration) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(duration)
        .rng_seed(11)
        .build()
}

fn registry_host(sim: &mut turmoil::Sim<'_>) -> RegistryHost {
    let host = RegistryHost::new(RegistryHostConfig::default(), 5);
    sim.host(REGISTRY, host.software());
    host
}

fn client() -> HttpRegistryClient<SimConnector> {
    let config = HttpRegistryClientConfig {
        request_timeout: Duration::from_secs(1),
        ..HttpRegistryClientConfig::default()
    };
    let url = format!("http://{REGISTRY}:{}", RegistryHostConfig::default().port);
    HttpRegistryClient::new(SimConnector, &url, config).unwrap()
}

#[test]
fn a_crashed_registry_is_unavailable_then_recovers_with_its_state() {
    let mut sim = sim(Duration::from_secs(120));
    let host = registry_host(&mut sim);
    // 0: starting, 1: v1 registered, 2: done.
    let phase = Rc::new(Cell::new(0u8));
    let client_phase = phase.clone();
    sim.client("gateway", async move {
        let registry = client();
        let v1 = loop {
            match registry.register("soil-value", SOIL_READING_SCHEMA_V1).await {
                Ok(id) => break id,
                Err(RegistryError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(v1, 1);
        client_phase.set(1);
        // Retry with backoff through the outage, as producers do.
        let mut unavailable = 0;
        let mut backoff = Duration::from_millis(100);
        let v2 = loop {
            match registry.register("soil-value", SOIL_READING_SCHEMA_V2).await {
                Ok(id) => break id,
                Err(RegistryError::Unavailable(_)) => {
                    unavailable += 1;
                    // The cached schema keeps resolving meanwhile.
                    assert_eq!(registry.schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(v2, 2);
        assert!(unavailable > 0, "the outage was not seen");
        // A fresh client (no cache) reads v1 from the restarted registry:
        // the registration survived the crash on the simulated disk.
        assert_eq!(client().schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
        client_phase.set(2);
        Ok(())
    });
    let mut crashed_at = None;
    let mut bounced = false;
    while !sim.step().unwrap() {
        if phase.get() == 1 && crashed_at.is_none() {
            sim.crash(REGISTRY);
            crashed_at = Some(sim.elapsed());
        }
        if let Some(at) = crashed_at
            && !bounced
            && sim.elapsed() > at + Duration::from_secs(5)
        {
            sim.bounce(REGISTRY);
            bounced = true;
        }
    }
    assert!(bounced);
    assert_eq!(phase.get(), 2);
    let status = host.status();
    assert_eq!(status.boots, 2, "{status:?}");
    assert!(status.failures.is_empty(), "{status:?}");
    let reopened = status.last_open.expect("the second start opened the store");
    assert!(!reopened.created, "the store was replayed, not created anew");
    assert_eq!(reopened.schemas, 1, "v1 survived the crash");
}

#[test]
fn partitions_and_held_messages_are_unavailable_until_healed() {
    let mut sim = sim(Duration::from_secs(60));
    registry_host(&mut sim);
    sim.client("consumer", async move {
        let registry = client();
        // Wait for the registry host to listen.
        let id = loop {
            match registry.register("s", SOIL_READING_SCHEMA_V1).await {
                Ok(id) => break id,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let reader = client();
        // Cut off: connections fail at once.
        turmoil::partition("consumer", REGISTRY);
        assert!(matches!(
            reader.schema_by_id(id).await,
            Err(RegistryError::Unavailable(_))
        ));
        turmoil::repair("consumer", REGISTRY);
        // Messages held: the request times out (in simulated time).
        turmoil::hold("consumer", REGISTRY);
        let started = tokio::time::Instant::now();
        match reader.schema_by_id(id).await {
            Err(RegistryError::Unavailable(message)) => {
                assert!(message.contains("within 1000 ms"), "{message}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_secs(1));
        turmoil::release("consumer", REGISTRY);
        assert_eq!(reader.schema_by_id(id).await.unwrap(), SOIL_READING_SCHEMA_V1);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn an_unopenable_store_keeps_the_host_down_and_is_reported() {
    let mut sim = sim(Duration::from_secs(30));
    let host = RegistryHost::new(
        RegistryHostConfig {
            // Simulated paths must be absolute: the store cannot open.
            data_dir: "relative/registry".into(),
            ..RegistryHostConfig::default()
        },
        5,
    );
    sim.host(REGISTRY, host.software());
    sim.client("consumer", async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(
            client().schema_by_id(1).await,
            Err(RegistryError::Unavailable(_))
        ));
        Ok(())
    });
    sim.run().unwrap();
    let status = host.status();
    assert_eq!(status.boots, 1);
    assert_eq!(status.failures.len(), 1, "{status:?}");
    assert!(status.failures[0].contains("absolute"), "{status:?}");
}
