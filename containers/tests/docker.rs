//! The broker as a container (testcontainers): images built from local
//! binaries without a registry, acknowledged records across a SIGKILL and a
//! restart on the same volume, a network partition of the broker, a paused
//! broker, and nothing left behind.
//!
//! Where no Docker engine answers, every test prints
//! `soilstream_containers::docker::SKIP_MESSAGE` and returns (set
//! `SOILSTREAM_REQUIRE_DOCKER=1` to fail instead); the process suites
//! (`broker.rs`, `proxy_broker.rs`) cover the same invariants. Needs the
//! `tansu` binary the process fixtures use: its image is built from it.

mod common;

use common::*;
use futures::future::{MaybeDone, join_all, maybe_done};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use soilstream::transport::kafka::KafkaProducer;
use soilstream::transport::{LogProducer, RecordPosition};
use soilstream_containers::docker::SESSION_LABEL;
use soilstream_containers::{
    DockerAvailability, DockerEngine, DockerNetwork, TansuContainer, TansuContainerConfig, build_tansu_image,
};
use std::pin::Pin;
use std::time::{Duration, Instant};

const TOPIC: &str = "soil-moisture-raw";

/// The engine, or `None` after printing why the test is skipped.
fn engine_or_skip(test: &str) -> Option<DockerEngine> {
    init_tracing();
    DockerAvailability::detect()
        .engine_or_skip(test)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A network and a broker serving `TOPIC` with 3 partitions.
fn start_broker(engine: &DockerEngine) -> (DockerNetwork, TansuContainer) {
    let network = DockerNetwork::create(engine).unwrap_or_else(|e| panic!("creating the network: {e}"));
    let broker = TansuContainer::start(&network, TansuContainerConfig::default().topic(TOPIC, 3))
        .unwrap_or_else(|e| panic!("starting the broker container: {e}"));
    (network, broker)
}

/// Prints the broker's log if the test fails.
struct BrokerLogOnFailure<'a>(&'a TansuContainer);

impl Drop for BrokerLogOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== {} =====\n{}\n===== end =====",
                self.0.name(),
                self.0.log_tail(200)
            );
        }
    }
}

/// Whether the broker answers a metadata request from the host within
/// `timeout_ms`.
fn answers_metadata(broker: &TansuContainer, timeout_ms: u64) -> bool {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("socket.connection.setup.timeout.ms", "1000")
        .create()
        .expect("a metadata probe");
    probe
        .fetch_metadata(Some(TOPIC), Duration::from_millis(timeout_ms))
        .is_ok()
}

/// Produces `readings` and returns where each landed.
fn produce(
    producer: &KafkaProducer,
    readings: &[soilstream::model::Reading],
    timeout_ms: u64,
) -> Vec<RecordPosition> {
    block_on(deliver_all(producer, TOPIC, readings, timeout_ms))
}

/// Runs `future` on a fresh current-thread runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

fn done(test: &str, started: Instant) {
    eprintln!("{test}: passed in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn images_are_built_from_local_binaries_once_and_tagged_by_content() {
    let Some(engine) = engine_or_skip("images") else {
        return;
    };
    let started = Instant::now();
    let first = build_tansu_image(&engine).unwrap_or_else(|e| panic!("building the tansu image: {e}"));
    eprintln!("{first}: {}", if first.built_now() { "built" } else { "found" });
    assert_eq!(first.repository(), "soilstream-tansu");
    assert_eq!(first.tag().len(), 16, "{first}");
    assert!(first.tag().chars().all(|c| c.is_ascii_hexdigit()), "{first}");
    assert!(
        engine.has_image(&first.reference()).unwrap(),
        "{first} is in the engine"
    );
    let again = build_tansu_image(&engine).unwrap();
    assert_eq!(again.reference(), first.reference(), "same binary, same tag");
    assert!(!again.built_now(), "an existing tag is not built again");
    assert!(
        !engine.has_image("soilstream-tansu:0000000000000000").unwrap(),
        "an unknown tag is reported missing (and not pulled)"
    );
    done("images", started);
}

#[test]
fn acknowledged_records_survive_a_container_kill_and_restart_on_the_same_volume() {
    let Some(engine) = engine_or_skip("kill and restart") else {
        return;
    };
    let started = Instant::now();
    let (_network, broker) = start_broker(&engine);
    let _log = BrokerLogOnFailure(&broker);
    let config = fast(broker.client_config());
    let producer = block_on(async { KafkaProducer::new(&config) }).expect("producer");
    let first = readings(6, 20, 1);
    let positions = produce(&producer, &first, 30_000);
    let before = block_on(consume_all(&config, TOPIC, first.len(), 30_000, 300));
    assert_exactly_once_in_order(&before, &first);

    broker.kill().unwrap();
    assert!(!broker.is_running().unwrap(), "SIGKILL stopped the container");
    assert!(
        !answers_metadata(&broker, 1_000),
        "a killed broker does not answer"
    );
    broker.restart().unwrap();

    let after = block_on(consume_all(&config, TOPIC, first.len(), 30_000, 300));
    assert_exactly_once_in_order(&after, &first);
    for position in &positions {
        assert!(
            after
                .iter()
                .any(|r| r.partition == position.partition && r.offset == position.offset),
            "the record reported at {position:?} is still there"
        );
    }
    // The producer made before the kill reconnects on its own.
    let second = readings(6, 5, 21);
    produce(&producer, &second, 60_000);
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let records = block_on(consume_all(&config, TOPIC, all.len(), 30_000, 300));
    assert_exactly_once_in_order(&records, &all);
    let panics = broker.panics_in_log().unwrap();
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
    done("kill and restart", started);
}

#[test]
fn a_broker_disconnected_from_the_network_is_unreachable_until_reconnected() {
    let Some(engine) = engine_or_skip("broker partition") else {
        return;
    };
    let started = Instant::now();
    let (_network, broker) = start_broker(&engine);
    let _log = BrokerLogOnFailure(&broker);
    let config = fast(broker.client_config());
    let producer = block_on(async { KafkaProducer::new(&config) }).expect("producer");
    let before = readings(4, 10, 1);
    produce(&producer, &before, 30_000);

    broker.disconnect().unwrap();
    assert!(
        broker.is_running().unwrap(),
        "a partition does not stop the broker"
    );
    assert!(
        !answers_metadata(&broker, 2_000),
        "the host reaches a disconnected broker"
    );
    // Records sent during the partition wait in the producer...
    let during = readings(4, 10, 11);
    let mut pending: Vec<_> = during
        .iter()
        .map(|r| maybe_done(producer.enqueue(record_for(TOPIC, r)).expect("enqueue")))
        .collect();
    let all_reported = block_on(async {
        tokio::time::timeout(Duration::from_secs(3), join_all(pending.iter_mut().map(Pin::new))).await
    });
    assert!(
        all_reported.is_err(),
        "deliveries were reported during the partition"
    );
    let reported = pending.iter().filter(|d| matches!(d, MaybeDone::Done(_))).count();
    assert_eq!(reported, 0, "a delivery was reported during the partition");

    // ... and arrive once the broker is back, at the same address.
    broker.reconnect().unwrap();
    block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            join_all(pending.iter_mut().map(Pin::new)),
        )
        .await
    })
    .expect("deliveries reported within 60 s of the partition healing");
    for delivery in &mut pending {
        Pin::new(delivery)
            .take_output()
            .expect("a reported delivery")
            .expect("delivered after the partition healed");
    }
    assert!(answers_metadata(&broker, 5_000));
    let all: Vec<_> = before.iter().chain(&during).cloned().collect();
    let records = block_on(consume_all(&config, TOPIC, all.len(), 30_000, 300));
    assert_exactly_once_in_order(&records, &all);
    done("broker partition", started);
}

#[test]
fn a_paused_broker_answers_nothing_until_unpaused_and_a_stopped_one_restarts() {
    let Some(engine) = engine_or_skip("pause and stop") else {
        return;
    };
    let started = Instant::now();
    let (_network, broker) = start_broker(&engine);
    let _log = BrokerLogOnFailure(&broker);
    assert!(answers_metadata(&broker, 5_000));
    broker.pause().unwrap();
    assert!(broker.is_running().unwrap(), "a paused container still runs");
    assert!(!answers_metadata(&broker, 1_500), "a frozen broker answered");
    broker.unpause().unwrap();
    assert!(answers_metadata(&broker, 10_000), "the thawed broker answers");

    broker.stop().unwrap();
    assert!(!broker.is_running().unwrap(), "a stopped broker does not run");
    broker.restart().unwrap();
    assert!(broker.is_running().unwrap(), "a stopped broker restarts");
    let error = broker.restart().unwrap_err();
    assert!(
        error.to_string().contains("runs"),
        "restarting a running broker: {error}"
    );
    assert!(answers_metadata(&broker, 5_000), "the restarted broker answers");
    done("pause and stop", started);
}

#[test]
fn dropping_the_fixtures_removes_the_container_the_volume_and_the_network() {
    let Some(engine) = engine_or_skip("clean-up") else {
        return;
    };
    let started = Instant::now();
    let (network, broker) = start_broker(&engine);
    let session = network.session().to_string();
    let listed = |engine: &DockerEngine| {
        (
            engine.containers_labelled(SESSION_LABEL, &session).unwrap(),
            engine.volumes_labelled(SESSION_LABEL, &session).unwrap(),
            engine.networks_labelled(SESSION_LABEL, &session).unwrap(),
        )
    };
    let (containers, volumes, networks) = listed(&engine);
    assert_eq!(containers, vec![broker.name().to_string()]);
    assert_eq!(volumes, vec![broker.volume().to_string()]);
    assert_eq!(networks, vec![network.name().to_string()]);
    drop(broker);
    drop(network);
    let (containers, volumes, networks) = listed(&engine);
    assert!(
        containers.is_empty() && volumes.is_empty() && networks.is_empty(),
        "left behind: {containers:?} {volumes:?} {networks:?}"
    );
    done("clean-up", started);
}
