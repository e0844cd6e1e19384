//! End-to-end in containers with qaqc: the Tansu broker, a `soilstream
//! gateway` and `soilstream qaqc` each in a container (testcontainers) on a
//! network of their own, qaqc from the same image as the gateway (this
//! build's binary); the schema registry a host process listening on the
//! network's gateway address, where the containers reach it. qaqc's
//! container is killed with SIGKILL mid-stream and started again on the same
//! state directory; then the raw checker judges the raw topic against the
//! gateway's ledger and the downstream checker the five output topics, with
//! the settings of the TOML file qaqc ran with.
//!
//! Where no Docker engine answers, the test prints
//! `soilstream_containers::docker::SKIP_MESSAGE` and returns (set
//! `SOILSTREAM_REQUIRE_DOCKER=1` to fail instead): `e2e_qaqc.rs` covers the
//! same invariants with processes. As there, the killed instance is started
//! again only once its group session has expired (Tansu 0.6.0 can form the
//! group with no assignment when a member joins in the last seconds of a
//! dead leader's session: see `common::qaqc::Qaqc::restart_once_its_session_expired`).

mod common;

use common::RegistryProcess;
use common::broker::RAW_TOPIC;
use common::gateway::{DRAIN_TIMEOUT_MS, GatewaySpec, Metrics, SECONDS_MS, SOILSTREAM};
use common::qaqc::{
    QAQC_ASSIGN_TIMEOUT_MS, QAQC_CATCH_UP_TIMEOUT_MS, QAQC_EXIT_TIMEOUT_MS, QAQC_GROUP, QaqcInstance,
    QaqcScrape, QaqcSpec, SESSION_EXPIRY_MARGIN_MS, judge, ownership_of_last_start, wait_for_instance,
    wait_until_caught_up, wait_until_processing,
};
use soilstream::qaqc::QaqcFileConfig;
use soilstream_containers::docker::ContainerLogs;
use soilstream_containers::{
    DockerAvailability, DockerNetwork, GatewayContainer, GatewayContainerConfig, QaqcContainer,
    QaqcContainerConfig, TansuContainer, TansuContainerConfig, build_soilstream_image, build_tansu_image,
};
use soilstream_scenarios::ledger::Ledger;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Partitions of the raw topic.
const PARTITIONS: u32 = 3;

/// Lines of each container's log printed when the test fails.
const FAILURE_LOG_LINES: usize = 150;

/// Interval between two checks of the ledger, in ms.
const POLL_INTERVAL_MS: u64 = 50;

/// Prints the containers' logs and the registry's when the test fails.
/// Declared after the fixtures, so it prints before they are removed.
struct LogsOnFailure {
    containers: Vec<ContainerLogs>,
    /// Held for its own drop, which prints the file logs.
    _files: common::logs::LogsOnFailure,
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for logs in &self.containers {
            let text = logs
                .tail(FAILURE_LOG_LINES)
                .unwrap_or_else(|e| format!("<cannot read the logs: {e}>"));
            eprintln!(
                "\n===== {}: last {FAILURE_LOG_LINES} lines =====\n{text}\n===== end of {} =====",
                logs.container(),
                logs.container()
            );
        }
        // The file logs print when `_files` drops, right after this.
    }
}

/// qaqc's container as the catch-up wait sees it: metrics from its
/// published port, ownership from its log.
struct QaqcInContainer(QaqcContainer);

impl QaqcInstance for QaqcInContainer {
    fn name(&self) -> String {
        self.0.name().to_owned()
    }

    fn assert_running(&mut self) {
        let running = self.0.is_running();
        assert!(
            matches!(running, Ok(true)),
            "{} is not running ({running:?}); log:\n{}",
            self.0.name(),
            self.0.log_tail(FAILURE_LOG_LINES)
        );
    }

    fn scrape(&self) -> Result<QaqcScrape, String> {
        self.0
            .scrape_metrics()
            .map(|text| QaqcScrape(Metrics::parse(&text)))
            .map_err(|e| e.to_string())
    }

    fn processing(&self) -> BTreeSet<i32> {
        let log = self.0.logs().all().unwrap_or_default();
        ownership_of_last_start(&log).ready
    }
}

/// Readings in a ledger file so far (complete lines).
fn ledger_len(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count() as u64)
        .unwrap_or(0)
}

/// Waits until the ledger lists at least `readings` durable readings.
fn wait_for_ledger(gateway: &GatewayContainer, readings: u64, timeout_ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    while ledger_len(&gateway.ledger_path()) < readings {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout_ms} ms waiting for {readings} durable readings (have {}); \
             gateway running: {:?}",
            ledger_len(&gateway.ledger_path()),
            gateway.is_running()
        );
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// Waits until the gateway's spool is empty and everything this
/// incarnation made durable was delivered.
fn wait_until_drained(gateway: &GatewayContainer, timeout_ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let metrics = gateway
            .scrape_metrics()
            .map(|text| Metrics::parse(&text))
            .map_err(|e| e.to_string());
        if let Ok(m) = &metrics
            && m.spool_depth_records() == 0
            && m.delivered() >= m.durable()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's spool did not drain within {timeout_ms} ms; last metrics: {metrics:?}"
        );
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

#[test]
fn qaqc_in_a_container_killed_and_started_again_loses_or_repeats_nothing() {
    let test = "qaqc container end-to-end";
    let Some(engine) = DockerAvailability::detect()
        .engine_or_skip(test)
        .unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let started = Instant::now();
    let lap = |phase: &str| eprintln!("{test}: {phase} at {:.1} s", started.elapsed().as_secs_f64());
    let all: BTreeSet<i32> = (0..PARTITIONS as i32).collect();

    let tansu_image = build_tansu_image(&engine).unwrap_or_else(|e| panic!("building the tansu image: {e}"));
    let soilstream_image = build_soilstream_image(&engine, Path::new(SOILSTREAM))
        .unwrap_or_else(|e| panic!("building the soilstream image: {e}"));
    lap(&format!("images {tansu_image} and {soilstream_image} ready"));
    let network = DockerNetwork::create(&engine).unwrap_or_else(|e| panic!("creating the network: {e}"));
    let broker = TansuContainer::start(
        &network,
        TansuContainerConfig::default()
            .topic(RAW_TOPIC, PARTITIONS)
            .image(tansu_image),
    )
    .unwrap_or_else(|e| panic!("starting the broker container: {e}"));
    let bootstrap = broker.bootstrap_servers();
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The host side of the network: reachable from the containers.
    let registry = RegistryProcess::start_on(
        &format!("{}:0", network.gateway_ip()),
        &dir.path().join("registry"),
        &dir.path().join("registry.log"),
    );

    let mut spec = GatewaySpec::new("gw-docker-qaqc", &bootstrap, RAW_TOPIC);
    spec.interval_ms = 1_000;
    spec.sensors = 5;
    spec.registry_url = Some(registry.url.clone());
    let gateway_toml = toml::to_string_pretty(&spec.config(Path::new("/gw/spool"))).expect("render");
    let gateway = GatewayContainer::start(
        &network,
        GatewayContainerConfig::new(soilstream_image.clone(), gateway_toml, bootstrap.as_str()),
    )
    .unwrap_or_else(|e| panic!("starting the gateway container: {e}"));

    let qaqc_spec = QaqcSpec::new("qaqc-docker", &bootstrap, &registry.url);
    let qaqc_toml = toml::to_string_pretty(&qaqc_spec.config(Path::new("/qaqc/state"), "0.0.0.0:9899"))
        .expect("render the qaqc config");
    let file_config = QaqcFileConfig::parse(&qaqc_toml, "qaqc.toml").expect("the qaqc config parses");
    let settings = file_config.settings();
    let mut qaqc_config = QaqcContainerConfig::new(soilstream_image, qaqc_toml, bootstrap.as_str());
    qaqc_config.registry_url = Some(registry.url.clone());
    let mut qaqc = QaqcInContainer(
        QaqcContainer::start(&network, qaqc_config)
            .unwrap_or_else(|e| panic!("starting the qaqc container: {e}")),
    );
    let mut files = common::logs::LogsOnFailure::new();
    files.watch("registry", dir.path().join("registry.log"));
    let _logs = LogsOnFailure {
        containers: vec![broker.logs(), gateway.logs(), qaqc.0.logs()],
        _files: files,
    };
    lap(&format!(
        "broker at {bootstrap}, registry at {}, gateway and qaqc running",
        registry.url
    ));

    wait_until_processing(&mut qaqc, &all, QAQC_ASSIGN_TIMEOUT_MS);
    wait_for_ledger(&gateway, 25, SECONDS_MS);
    wait_for_instance(&mut qaqc, "clean readings of 5 s of flow", SECONDS_MS, |m| {
        m.records_out("soil-moisture-clean") >= 20
    });

    // qaqc's container is killed mid-stream and started again on the same
    // state directory once its session has expired.
    qaqc.0.kill().unwrap_or_else(|e| panic!("killing qaqc: {e}"));
    let killed_at = ledger_len(&gateway.ledger_path());
    std::thread::sleep(Duration::from_millis(
        file_config.group.session_timeout_ms + SESSION_EXPIRY_MARGIN_MS,
    ));
    qaqc.0
        .restart()
        .unwrap_or_else(|e| panic!("starting qaqc again: {e}"));
    wait_until_processing(&mut qaqc, &all, QAQC_ASSIGN_TIMEOUT_MS);
    let rebuilt = wait_for_instance(&mut qaqc, "the rebuilds", SECONDS_MS, |m| {
        m.rebuilds() >= u64::from(PARTITIONS)
    });
    lap(&format!("qaqc killed and started again: {}", rebuilt.summary()));
    wait_for_ledger(&gateway, killed_at + 25, SECONDS_MS);
    wait_for_instance(&mut qaqc, "clean readings after the restart", SECONDS_MS, |m| {
        m.records_out("soil-moisture-clean") >= 20
    });

    wait_until_drained(&gateway, DRAIN_TIMEOUT_MS);
    let grace_s = u32::try_from(spec.shutdown_grace_ms / 1_000).unwrap_or(u32::MAX) + 30;
    let exit = gateway.stop(grace_s).unwrap();
    assert!(
        exit.exit_code == 0 && !exit.forced,
        "the gateway did not exit cleanly on SIGTERM: {exit:?}"
    );
    let caught_up = wait_until_caught_up(
        &mut [&mut qaqc],
        &broker.client_config(),
        RAW_TOPIC,
        QAQC_GROUP,
        QAQC_CATCH_UP_TIMEOUT_MS,
    );
    lap(&format!("qaqc caught up: {}", caught_up[0].summary()));
    let exit = qaqc
        .0
        .stop(u32::try_from(QAQC_EXIT_TIMEOUT_MS / 1_000).unwrap_or(u32::MAX))
        .unwrap();
    assert!(
        exit.exit_code == 0 && !exit.forced,
        "qaqc did not exit cleanly on SIGTERM: {exit:?}"
    );

    let mut ledger = Ledger::new(false);
    let loaded = ledger
        .load_jsonl(&gateway.ledger_path())
        .unwrap_or_else(|e| panic!("loading the ledger: {e}"));
    assert!(loaded > 0, "the ledger lists no reading");
    let verdict = judge(&broker.client_config(), &ledger, &settings);
    assert!(verdict.downstream.tally.clean > 0, "{}", verdict.downstream);
    assert!(verdict.downstream.tally.windows > 0, "{}", verdict.downstream);
    let panics = broker.panics_in_log().expect("the broker's log");
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
    eprintln!("{test}: passed in {:.1} s", started.elapsed().as_secs_f64());
}
