//! The registry service and its client inside turmoil: the same server code
//! on a simulated listener, the same client over a simulated connector, and
//! registry outages (crash, partition) as scripted faults.
//!
//! `SimListener` and `SimConnector` are what the simulator needs to run the
//! registry as a host; they are a dozen lines each.

use soilstream::codec::{SOIL_READING_SCHEMA_V1, SOIL_READING_SCHEMA_V2};
use soilstream::disk::StdDisk;
use soilstream::registry::{
    ApiLimits, Connector, HttpRegistryClient, HttpRegistryClientConfig, RegistryError, SchemaRegistry,
    StoreLimits, open_router, serve,
};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

const PORT: u16 = 8081;

/// turmoil's TCP listener as an axum listener.
struct SimListener(turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// turmoil's TCP streams as the client's connector.
struct SimConnector;

impl Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;

    fn connect<'a>(
        &'a self,
        authority: &'a str,
    ) -> futures::future::LocalBoxFuture<'a, std::io::Result<Self::Stream>> {
        Box::pin(async move {
            let (host, port) = authority
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| std::io::Error::other(format!("bad authority {authority}")))?;
            turmoil::net::TcpStream::connect((host, port)).await
        })
    }
}

fn sim(duration: Duration) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(duration)
        .build()
}

fn registry_host(sim: &mut turmoil::Sim<'_>, dir: PathBuf) {
    sim.host("registry", move || {
        let dir = dir.clone();
        async move {
            let (router, _) = open_router(StdDisk, &dir, StoreLimits::default(), ApiLimits::default())?;
            let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
            serve(SimListener(listener), router, std::future::pending()).await?;
            Ok(())
        }
    });
}

fn client() -> HttpRegistryClient<SimConnector> {
    let config = HttpRegistryClientConfig {
        request_timeout: Duration::from_secs(1),
        ..HttpRegistryClientConfig::default()
    };
    HttpRegistryClient::new(SimConnector, &format!("http://registry:{PORT}"), config).unwrap()
}

#[test]
fn a_crashed_registry_is_unavailable_then_recovers_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = sim(Duration::from_secs(120));
    registry_host(&mut sim, dir.path().to_owned());
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
        // A fresh client (no cache) reads v1 from the restarted registry.
        assert_eq!(client().schema_by_id(1).await.unwrap(), SOIL_READING_SCHEMA_V1);
        client_phase.set(2);
        Ok(())
    });
    let mut crashed_at = None;
    let mut bounced = false;
    while !sim.step().unwrap() {
        if phase.get() == 1 && crashed_at.is_none() {
            sim.crash("registry");
            crashed_at = Some(sim.elapsed());
        }
        if let Some(at) = crashed_at
            && !bounced
            && sim.elapsed() > at + Duration::from_secs(5)
        {
            sim.bounce("registry");
            bounced = true;
        }
    }
    assert!(bounced);
    eprintln!("simulated {:?}", sim.elapsed());
    assert_eq!(phase.get(), 2);
}

#[test]
fn partitions_and_held_messages_are_unavailable_until_healed() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = sim(Duration::from_secs(60));
    registry_host(&mut sim, dir.path().to_owned());
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
        turmoil::partition("consumer", "registry");
        assert!(matches!(
            reader.schema_by_id(id).await,
            Err(RegistryError::Unavailable(_))
        ));
        turmoil::repair("consumer", "registry");
        // Messages held: the request times out (in simulated time).
        turmoil::hold("consumer", "registry");
        let started = tokio::time::Instant::now();
        match reader.schema_by_id(id).await {
            Err(RegistryError::Unavailable(message)) => {
                assert!(message.contains("within 1000 ms"), "{message}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_secs(1));
        turmoil::release("consumer", "registry");
        assert_eq!(reader.schema_by_id(id).await.unwrap(), SOIL_READING_SCHEMA_V1);
        Ok(())
    });
    sim.run().unwrap();
}
