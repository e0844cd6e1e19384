//! `soilstream gateway` as a child process: started from a configuration
//! file the test writes, stopped with SIGTERM, killed with SIGKILL and
//! restarted on the same spool and ledger, its `/metrics` endpoint scraped
//! and its ledger file (durable readings) read.

use soilstream::gateway::config::{GatewayFileConfig, SourceConfig, SyncPolicy};
use soilstream::model::Reading;
use soilstream_containers::pipeline::component::SETTINGS_ENV_VARS;
use soilstream_containers::pipeline::metrics::{metrics_addr_in_log, scrape_text};
use soilstream_containers::{ChildProcess, ChildSpec, Termination, wait_until};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `soilstream` binary under test.
pub const SOILSTREAM: &str = env!("CARGO_BIN_EXE_soilstream");

/// Generous bound for anything that should take a few seconds, in ms.
pub const SECONDS_MS: u64 = 30_000;

/// Bound for a backlog to drain after the faults healed, in ms.
pub const DRAIN_TIMEOUT_MS: u64 = 60_000;

/// Wall-clock time in ms since the Unix epoch: the clock a gateway stamps
/// event times with (same host, or same kernel for a container).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// How long a gateway may take to open its spool and serve `/metrics`, in ms.
pub const GATEWAY_START_TIMEOUT_MS: u64 = 30_000;

/// How long a gateway may take to exit after SIGTERM, in ms: its shutdown
/// grace plus slack for a loaded machine.
pub const GATEWAY_EXIT_SLACK_MS: u64 = 30_000;

/// Interval between two checks of a condition on metrics or the ledger, in ms.
const POLL_INTERVAL_MS: u64 = 50;

/// librdkafka settings that notice a dead or silent link within seconds
/// (the defaults wait 10-15 s), so outage tests stay short.
const FAST_FAILURE_DETECTION: &[(&str, &str)] = &[
    ("socket.timeout.ms", "3000"),
    ("request.timeout.ms", "2000"),
    ("socket.connection.setup.timeout.ms", "3000"),
    ("reconnect.backoff.max.ms", "500"),
    ("retry.backoff.max.ms", "500"),
    ("statistics.interval.ms", "200"),
];

/// How a test gateway is configured (everything else: embedded defaults).
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// `[gateway] id`.
    pub gateway_id: String,
    /// `[kafka] bootstrap_servers`.
    pub bootstrap_servers: String,
    /// `[forwarder] topic`.
    pub topic: String,
    /// `[sampler] interval_ms`: one reading per sensor per interval.
    pub interval_ms: u64,
    /// `[source] sensors`.
    pub sensors: u32,
    /// `[source] seed`.
    pub seed: u64,
    /// `[forwarder] max_in_flight_records`.
    pub max_in_flight_records: usize,
    /// `[forwarder] cursor_persist_interval_ms`.
    pub cursor_persist_interval_ms: u64,
    /// `[forwarder] shutdown_grace_ms`.
    pub shutdown_grace_ms: u64,
    /// `[spool] segment_max_bytes` (with matching record and batch limits),
    /// for tests that want several segment files; `None` keeps the default.
    pub segment_max_bytes: Option<u64>,
    /// `[registry] url`; `None`: the in-process registry (schema id 1).
    pub registry_url: Option<String>,
}

impl GatewaySpec {
    /// Five probes sampled every 200 ms (25 readings/s), a fast retry
    /// backoff and a shutdown grace long enough to drain what a test spooled.
    pub fn new(gateway_id: &str, bootstrap_servers: &str, topic: &str) -> Self {
        Self {
            gateway_id: gateway_id.to_owned(),
            bootstrap_servers: bootstrap_servers.to_owned(),
            topic: topic.to_owned(),
            interval_ms: 200,
            sensors: 5,
            seed: 7,
            max_in_flight_records: 5_000,
            cursor_persist_interval_ms: 250,
            shutdown_grace_ms: 30_000,
            segment_max_bytes: None,
            registry_url: None,
        }
    }

    /// The configuration file for a gateway whose spool is `spool_dir`.
    pub fn config(&self, spool_dir: &Path) -> GatewayFileConfig {
        let mut config = GatewayFileConfig::embedded_defaults();
        config.gateway.id = self.gateway_id.clone();
        config.gateway.log_interval_ms = 1_000;
        config.sampler.interval_ms = self.interval_ms;
        config.sampler.sync = SyncPolicy::EveryBatch;
        let SourceConfig::Simulator(source) = &mut config.source;
        source.seed = self.seed;
        source.sensors = self.sensors;
        source.sensor_prefix = format!("{}-probe", self.gateway_id);
        config.spool.dir = spool_dir.to_owned();
        if let Some(segment_max_bytes) = self.segment_max_bytes {
            config.spool.segment_max_bytes = segment_max_bytes;
            config.spool.max_uncommitted_bytes = segment_max_bytes;
            config.spool.max_record_bytes = 1_024;
        }
        config.forwarder.topic = self.topic.clone();
        config.forwarder.max_in_flight_records = self.max_in_flight_records;
        config.forwarder.read_batch_records = self.max_in_flight_records.min(500);
        config.forwarder.cursor_persist_interval_ms = self.cursor_persist_interval_ms;
        config.forwarder.retry_backoff_initial_ms = 100;
        config.forwarder.retry_backoff_max_ms = 1_000;
        config.forwarder.shutdown_grace_ms = self.shutdown_grace_ms;
        config.kafka.bootstrap_servers = self.bootstrap_servers.clone();
        for (key, value) in FAST_FAILURE_DETECTION {
            config
                .kafka
                .properties
                .insert((*key).to_owned(), (*value).to_owned());
        }
        config.registry.url = self.registry_url.clone();
        // A free port, announced in the log.
        config.metrics.listen = "127.0.0.1:0".into();
        config
    }
}

/// The gateway's metrics, by sample name (labels included, as exposed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Parses the OpenMetrics text format.
    pub fn parse(text: &str) -> Self {
        Self(soilstream_containers::pipeline::metrics::Metrics::parse(text).0)
    }

    /// A sample's value; panics if the gateway does not expose it.
    pub fn get(&self, name: &str) -> f64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("the gateway exposes no metric `{name}`: {:?}", self.0))
    }

    /// `soilstream_spool_depth_records`: undelivered readings in the spool.
    pub fn spool_depth_records(&self) -> u64 {
        self.get("soilstream_spool_depth_records") as u64
    }

    /// `soilstream_readings_durable_total`.
    pub fn durable(&self) -> u64 {
        self.get("soilstream_readings_durable_total") as u64
    }

    /// `soilstream_readings_delivered_total`.
    pub fn delivered(&self) -> u64 {
        self.get("soilstream_readings_delivered_total") as u64
    }

    /// `soilstream_broker_up`.
    pub fn broker_up(&self) -> bool {
        self.get("soilstream_broker_up") > 0.0
    }

    /// `soilstream_spool_damaged_records_total`.
    pub fn damaged_records(&self) -> u64 {
        self.get("soilstream_spool_damaged_records_total") as u64
    }
}

/// A `soilstream gateway` process with its own directory (configuration,
/// spool, ledger, log).
#[derive(Debug)]
pub struct Gateway {
    child: ChildProcess,
    dir: PathBuf,
    metrics_addr: SocketAddr,
}

impl Gateway {
    /// Writes the configuration into `dir` and starts the gateway; returns
    /// once its metrics endpoint answers.
    pub fn start(dir: &Path, spec: &GatewaySpec) -> Self {
        std::fs::create_dir_all(dir).expect("create the gateway directory");
        let config_path = dir.join("gateway.toml");
        let config = toml::to_string_pretty(&spec.config(&dir.join("spool"))).expect("render config");
        std::fs::write(&config_path, config).expect("write the gateway config");
        let mut child_spec = ChildSpec::new(SOILSTREAM, dir.join("gateway.log"))
            .arg("gateway")
            .arg("--config")
            .arg(&config_path)
            .arg("--ledger")
            .arg(dir.join("ledger.jsonl"))
            .env("SOILSTREAM_LOG", "info");
        for var in SETTINGS_ENV_VARS {
            child_spec = child_spec.env_remove(var);
        }
        let child = ChildProcess::spawn(child_spec).expect("spawn soilstream gateway");
        let metrics_addr = await_metrics_addr(&child, dir);
        let mut gateway = Self {
            child,
            dir: dir.to_owned(),
            metrics_addr,
        };
        gateway.wait_for("the first /metrics answer", GATEWAY_START_TIMEOUT_MS, |_| true);
        gateway
    }

    /// Starts the gateway again (same configuration, spool and ledger) after
    /// it exited or was killed.
    pub fn restart(&mut self) {
        self.child.restart().expect("restart soilstream gateway");
        self.metrics_addr = await_metrics_addr(&self.child, &self.dir);
        self.wait_for(
            "the first /metrics answer after a restart",
            GATEWAY_START_TIMEOUT_MS,
            |_| true,
        );
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// The ledger file: one JSON line per reading acknowledged durable.
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.jsonl")
    }

    /// The log file (every incarnation).
    pub fn log_path(&self) -> PathBuf {
        self.child.log_path().to_owned()
    }

    /// Readings in the ledger file so far (complete lines).
    pub fn ledger_len(&self) -> u64 {
        std::fs::read(self.ledger_path())
            .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count() as u64)
            .unwrap_or(0)
    }

    /// The readings of the ledger file so far (complete lines), in the order
    /// they became durable.
    pub fn ledger_readings(&self) -> Vec<Reading> {
        let text = std::fs::read_to_string(self.ledger_path()).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad ledger line {line}: {e}")))
            .collect()
    }

    /// Scrapes `/metrics` once.
    pub fn metrics(&self) -> Result<Metrics, String> {
        scrape_text(self.metrics_addr).map(|text| Metrics::parse(&text))
    }

    /// Scrapes `/metrics` until `condition` holds and returns those metrics.
    /// Fails if the gateway exits or `timeout_ms` passes first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout_ms: u64,
        mut condition: impl FnMut(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(status) = self.child.exit_status() {
                panic!("the gateway exited ({status}) while the test waited for {what}");
            }
            let last = self.metrics();
            if let Ok(metrics) = &last
                && condition(metrics)
            {
                return last.expect("checked above");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout_ms} ms waiting for {what}; last metrics: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// Waits until the ledger lists at least `readings` durable readings.
    pub fn wait_for_ledger(&mut self, readings: u64, timeout_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while self.ledger_len() < readings {
            if let Some(status) = self.child.exit_status() {
                panic!("the gateway exited ({status}) before {readings} readings were durable");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout_ms} ms waiting for {readings} durable readings (have {})",
                self.ledger_len()
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// Waits until the spool is empty and every durable reading counted by
    /// this incarnation was delivered; returns those metrics.
    pub fn wait_until_drained(&mut self, timeout_ms: u64) -> Metrics {
        self.wait_for("the spool to drain", timeout_ms, |m| {
            m.spool_depth_records() == 0 && m.delivered() >= m.durable()
        })
    }

    /// SIGTERM; asserts the gateway exits 0 within its shutdown grace (plus
    /// slack) on its own.
    pub fn stop(&mut self, shutdown_grace_ms: u64) -> Termination {
        let termination = self
            .child
            .terminate(shutdown_grace_ms + GATEWAY_EXIT_SLACK_MS)
            .expect("SIGTERM the gateway");
        assert!(
            !termination.forced && termination.status.success(),
            "the gateway did not exit cleanly on SIGTERM: {termination:?}"
        );
        termination
    }

    /// SIGKILL: no chance to flush, persist or say goodbye.
    pub fn kill9(&mut self) {
        self.child.kill9().expect("SIGKILL the gateway");
    }
}

/// Waits for the metrics address the current incarnation logs.
fn await_metrics_addr(child: &ChildProcess, dir: &Path) -> SocketAddr {
    let mut found = None;
    let log_path = child.log_path().to_owned();
    let waited = wait_until("the gateway's metrics endpoint", GATEWAY_START_TIMEOUT_MS, || {
        found = metrics_addr_in_log(&log_path);
        found.is_some()
    });
    if let Err(error) = waited {
        panic!(
            "{error} (gateway in {}): log:\n{}",
            dir.display(),
            super::logs::tail(&log_path, 8_000)
        );
    }
    found.expect("found above")
}
