//! End-to-end in containers: the real `soilstream gateway` and the Tansu
//! broker each in a container (testcontainers) on a network of their own;
//! the gateway cut off the network and reconnected, the broker killed with
//! SIGKILL and restarted on the same volume, the gateway killed and
//! restarted on the same spool; then the shared checker judges the raw topic
//! against the gateway's ledger.
//!
//! Where no Docker engine answers, the test prints
//! `soilstream_containers::docker::SKIP_MESSAGE` and returns (set
//! `SOILSTREAM_REQUIRE_DOCKER=1` to fail instead): `e2e_gateway.rs` covers
//! the same invariants with processes and the fault proxy. The images are
//! built from the `tansu` binary and this build's `soilstream` binary (see
//! `soilstream_containers::docker`).

mod common;

use common::broker::{
    RAW_PARTITIONS, RAW_TOPIC, assert_every_durable_reading_delivered, check_raw, first_copies, load_ledger,
    print_duplicates, read_topic_with, topic_record_count_with,
};
use common::gateway::{DRAIN_TIMEOUT_MS, GatewaySpec, Metrics, SECONDS_MS, SOILSTREAM, now_ms};
use soilstream_containers::docker::ContainerLogs;
use soilstream_containers::{
    DockerAvailability, DockerNetwork, GatewayContainer, GatewayContainerConfig, TansuContainer,
    TansuContainerConfig, build_soilstream_image, build_tansu_image,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Interval between two checks of the ledger or the metrics, in ms.
const POLL_INTERVAL_MS: u64 = 50;

/// Lines of each container's log printed when the test fails.
const FAILURE_LOG_LINES: usize = 150;

/// Prints the containers' logs when the test fails. Declared after the
/// fixtures, so it prints before they are removed.
struct LogsOnFailure(Vec<ContainerLogs>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for logs in &self.0 {
            let text = logs
                .tail(FAILURE_LOG_LINES)
                .unwrap_or_else(|e| format!("<cannot read the logs: {e}>"));
            eprintln!(
                "\n===== {}: last {FAILURE_LOG_LINES} lines =====\n{text}\n===== end of {} =====",
                logs.container(),
                logs.container()
            );
        }
    }
}

/// The gateway container as the test drives it: its ledger file and its
/// metrics.
struct Gateway {
    container: GatewayContainer,
}

impl Gateway {
    /// Readings in the ledger so far (complete lines).
    fn ledger_len(&self) -> u64 {
        std::fs::read(self.container.ledger_path())
            .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count() as u64)
            .unwrap_or(0)
    }

    /// Waits until the ledger lists at least `readings` durable readings.
    fn wait_for_ledger(&self, readings: u64, timeout_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while self.ledger_len() < readings {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout_ms} ms waiting for {readings} durable readings (have {}); \
                 gateway running: {:?}",
                self.ledger_len(),
                self.container.is_running()
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// Scrapes `/metrics` once.
    fn metrics(&self) -> Result<Metrics, String> {
        self.container
            .scrape_metrics()
            .map(|text| Metrics::parse(&text))
            .map_err(|e| e.to_string())
    }

    /// Scrapes `/metrics` until `condition` holds; returns those metrics.
    fn wait_for(&self, what: &str, timeout_ms: u64, mut condition: impl FnMut(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let last = self.metrics();
            if let Ok(metrics) = &last
                && condition(metrics)
            {
                return last.expect("checked above");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout_ms} ms waiting for {what}; last metrics: {last:?}; gateway running: {:?}",
                self.container.is_running()
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// Waits until this incarnation's spool is empty and everything it
    /// made durable was delivered.
    fn wait_until_drained(&self, timeout_ms: u64) -> Metrics {
        self.wait_for("the spool to drain", timeout_ms, |m| {
            m.spool_depth_records() == 0 && m.delivered() >= m.durable()
        })
    }
}

/// Per sensor, the places (partition, offset) of the readings sampled
/// during the partition and of those sampled after it healed.
#[derive(Debug, Default)]
struct PartitionSplit {
    during: Vec<(i32, i64)>,
    after: Vec<(i32, i64)>,
}

#[test]
fn containers_survive_a_gateway_partition_a_broker_kill_and_a_gateway_kill_losing_nothing() {
    let test = "container end-to-end";
    let Some(engine) = DockerAvailability::detect()
        .engine_or_skip(test)
        .unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let started = Instant::now();
    let lap = |phase: &str| eprintln!("{test}: {phase} at {:.1} s", started.elapsed().as_secs_f64());

    let tansu_image = build_tansu_image(&engine).unwrap_or_else(|e| panic!("building the tansu image: {e}"));
    let gateway_image = build_soilstream_image(&engine, Path::new(SOILSTREAM))
        .unwrap_or_else(|e| panic!("building the soilstream image: {e}"));
    lap(&format!("images {tansu_image} and {gateway_image} ready"));
    let network = DockerNetwork::create(&engine).unwrap_or_else(|e| panic!("creating the network: {e}"));
    let broker = TansuContainer::start(
        &network,
        TansuContainerConfig::default()
            .topic(RAW_TOPIC, RAW_PARTITIONS)
            .image(tansu_image),
    )
    .unwrap_or_else(|e| panic!("starting the broker container: {e}"));
    let bootstrap = broker.bootstrap_servers();
    let spec = GatewaySpec::new("gw-docker", &bootstrap, RAW_TOPIC);
    let config = toml::to_string_pretty(&spec.config(Path::new("/gw/spool"))).expect("render the config");
    let gateway = Gateway {
        container: GatewayContainer::start(
            &network,
            GatewayContainerConfig::new(gateway_image, config, bootstrap.as_str()),
        )
        .unwrap_or_else(|e| panic!("starting the gateway container: {e}")),
    };
    let _logs = LogsOnFailure(vec![broker.logs(), gateway.container.logs()]);
    lap(&format!("broker at {bootstrap} and gateway running"));

    // Steady flow: five probes every 200 ms.
    gateway.wait_for_ledger(25, SECONDS_MS);
    gateway.wait_for("25 deliveries", SECONDS_MS, |m| m.delivered() >= 25);

    // A partition: the gateway loses the network, keeps sampling into its
    // spool, and nothing of it reaches the broker.
    let partition_started_ms = now_ms();
    gateway.container.disconnect().unwrap();
    // A request on the wire at the cut may still have landed: settle first.
    std::thread::sleep(Duration::from_secs(1));
    let in_topic_at_cut = topic_record_count_with(&broker.client_config(), RAW_TOPIC);
    let cut_at = gateway.ledger_len();
    gateway.wait_for_ledger(cut_at + 50, SECONDS_MS);
    assert!(
        gateway.metrics().is_err(),
        "the metrics port of a disconnected gateway answered"
    );
    let in_topic_after = topic_record_count_with(&broker.client_config(), RAW_TOPIC);
    assert_eq!(
        in_topic_after, in_topic_at_cut,
        "records reached the broker from a gateway cut off the network"
    );
    let partition_ended_ms = now_ms();
    gateway.container.reconnect().unwrap();
    let healed_ms = now_ms();
    lap("partition healed");
    gateway.wait_for("the gateway to reach the broker again", SECONDS_MS, |m| {
        m.broker_up()
    });
    let healed_at = gateway.ledger_len();
    gateway.wait_for_ledger(healed_at + 25, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    lap("backlog of the partition drained");

    // The broker's container is killed and comes back on the same volume.
    broker.kill().unwrap();
    gateway.wait_for("the gateway to see the broker down", SECONDS_MS, |m| {
        !m.broker_up()
    });
    let killed_at = gateway.ledger_len();
    gateway.wait_for_ledger(killed_at + 25, SECONDS_MS);
    let while_down = gateway.metrics().expect("metrics while the broker is down");
    assert!(
        while_down.spool_depth_records() >= 20,
        "readings waited in the spool: {while_down:?}"
    );
    broker.restart().unwrap();
    let restarted_at = gateway.ledger_len();
    gateway.wait_for_ledger(restarted_at + 25, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    lap("broker killed, restarted, backlog drained");

    // The gateway's container is killed and restarted on the same spool.
    gateway.container.kill().unwrap();
    let gateway_killed_at = gateway.ledger_len();
    gateway.container.restart().unwrap();
    gateway.wait_for_ledger(gateway_killed_at + 25, SECONDS_MS);
    gateway.wait_until_drained(DRAIN_TIMEOUT_MS);
    let grace_s = u32::try_from(spec.shutdown_grace_ms / 1_000).unwrap_or(u32::MAX) + 30;
    let exit = gateway.container.stop(grace_s).unwrap();
    assert!(
        exit.exit_code == 0 && !exit.forced,
        "the gateway did not exit cleanly on SIGTERM: {exit:?}"
    );
    lap("gateway killed, restarted, stopped");

    // The checker over the raw topic, against the ledger.
    let ledger = load_ledger(&gateway.container.ledger_path());
    let (records, partitions) = read_topic_with(&broker.client_config(), RAW_TOPIC);
    let report = check_raw(&ledger, &records, partitions);
    let in_topic = assert_every_durable_reading_delivered(&ledger, &records, &report);
    print_duplicates(&report);
    let ledger_ids: BTreeSet<_> = ledger.entries().keys().cloned().collect();
    assert!(ledger_ids.is_subset(&in_topic));
    let sensors: BTreeSet<&str> = ledger.entries().keys().map(|id| id.sensor_id.as_str()).collect();
    assert_eq!(sensors.len(), spec.sensors as usize, "every probe was sampled");

    // Per sensor, every reading sampled during the partition precedes, in
    // offset order, every reading sampled after it healed: the backlog went
    // first.
    let first = first_copies(&records);
    let mut per_sensor: BTreeMap<&str, PartitionSplit> = BTreeMap::new();
    for (id, entry) in ledger.entries() {
        let (place, _) = &first[id];
        let t = entry.reading.event_time_ms;
        let split = per_sensor.entry(id.sensor_id.as_str()).or_default();
        if (partition_started_ms..partition_ended_ms).contains(&t) {
            split.during.push(*place);
        } else if t >= healed_ms {
            split.after.push(*place);
        }
    }
    for (sensor, PartitionSplit { during, after }) in &per_sensor {
        assert!(
            !during.is_empty() && !after.is_empty(),
            "{sensor}: {} reading(s) sampled during the partition, {} after it",
            during.len(),
            after.len()
        );
        let partitions: BTreeSet<i32> = during.iter().chain(after).map(|(p, _)| *p).collect();
        assert_eq!(partitions.len(), 1, "{sensor} stays in one partition");
        let last_during = during.iter().map(|(_, o)| *o).max().expect("non-empty");
        let first_after = after.iter().map(|(_, o)| *o).min().expect("non-empty");
        assert!(
            last_during < first_after,
            "{sensor}: a reading sampled during the partition (offset {last_during}) follows one sampled \
             after it (offset {first_after})"
        );
    }
    let panics = broker.panics_in_log().expect("the broker's log");
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
    eprintln!("{test}: passed in {:.1} s", started.elapsed().as_secs_f64());
}
