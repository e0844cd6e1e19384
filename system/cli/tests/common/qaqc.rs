//! `soilstream qaqc` as a child process: started from a configuration file
//! the test writes (small windows and short timers, so a test sees windows
//! close and rebalances settle within seconds), stopped with SIGTERM, killed
//! with SIGKILL and restarted on the same state directory, its `/metrics`
//! endpoint scraped and its log read for what it owns; and the verdict every
//! qaqc suite ends with: the shared checker over the raw topic against the
//! gateways' ledgers, and the downstream checker over the five output topics.

use super::broker::{READ_STALL_TIMEOUT_MS, assert_every_durable_reading_delivered, block_on, check_raw};
use super::gateway::{Metrics, SOILSTREAM};
use soilstream::qaqc::{QaqcFileConfig, QaqcSettings};
use soilstream::transport::kafka::{KafkaClientConfig, KafkaConsumer};
use soilstream::transport::{ConsumedRecord, LogConsumer, read_topic_to_end};
use soilstream_containers::pipeline::component::SETTINGS_ENV_VARS;
use soilstream_containers::pipeline::kafka::BrokerQueries;
use soilstream_containers::pipeline::metrics::{METRICS_LOG_MARKER, metrics_addr_in_log, scrape_text};
use soilstream_containers::{ChildProcess, ChildSpec, START_BANNER, Termination, wait_until};
use soilstream_scenarios::checker::CheckReport;
use soilstream_scenarios::downstream::{DownstreamReport, DownstreamTopics, check_downstream};
use soilstream_scenarios::ledger::Ledger;
use soilstream_scenarios::runner::decode_raw;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The consumer group of the qaqc instances in these suites.
pub const QAQC_GROUP: &str = "soilstream-e2e-qaqc";

/// How long a qaqc process may take to create its topics, register its
/// schemas and serve `/metrics`, in ms.
pub const QAQC_START_TIMEOUT_MS: u64 = 30_000;

/// How long a qaqc process may take to exit after SIGTERM, in ms: its
/// bounded wait for outputs in flight (`revoke_wait_max_ms`), the group
/// leave and slack for a loaded machine.
pub const QAQC_EXIT_TIMEOUT_MS: u64 = 30_000;

/// Bound for qaqc to own its partitions after a start or a restart, in ms:
/// Tansu holds a join for up to a session timeout while a killed member's
/// session runs out, plus its 3 s pause for non-leaders, plus the rebuild.
pub const QAQC_ASSIGN_TIMEOUT_MS: u64 = 45_000;

/// Bound for qaqc to catch up with a raw topic that stopped growing, in ms:
/// the idle timeout that closes the last windows, the lag measurement
/// interval (10 s) and slack.
pub const QAQC_CATCH_UP_TIMEOUT_MS: u64 = 60_000;

/// `[windows] size_ms` in these suites: 10 s windows, so a run of seconds
/// closes several.
pub const WINDOW_SIZE_MS: i64 = 10_000;

/// `[windows] idle_close_ms`: a probe silent for 5 s of processor time gets
/// its open window written.
pub const IDLE_CLOSE_MS: i64 = 5_000;

/// `[alerts.silent] silent_after_ms`: longer than any test, so no probe is
/// reported silent while a test runs.
pub const SILENT_AFTER_MS: u64 = 60_000;

/// How long after a killed member's session timeout a restart waits, in
/// ms (see [`Qaqc::restart_once_its_session_expired`]).
pub const SESSION_EXPIRY_MARGIN_MS: u64 = 1_500;

/// Interval between two checks of a condition on metrics or offsets, in ms.
const POLL_INTERVAL_MS: u64 = 50;

/// Timeout of one committed-offsets request, in ms.
const OFFSETS_TIMEOUT_MS: u64 = 10_000;

/// How a test's qaqc instance is configured (everything else: the embedded
/// defaults of `examples/qaqc.toml`).
#[derive(Debug, Clone)]
pub struct QaqcSpec {
    /// `[qaqc] instance_id`.
    pub instance_id: String,
    /// `[qaqc] group_id`.
    pub group_id: String,
    /// `[kafka] bootstrap_servers`.
    pub bootstrap_servers: String,
    /// `[registry] url`: the raw records' writer schemas come from there (a
    /// qaqc without a registry cannot read what a registry-backed gateway
    /// wrote).
    pub registry_url: String,
    /// `[qaqc] max_in_flight_outputs`.
    pub max_in_flight_outputs: usize,
    /// More `[kafka.properties]` (librdkafka settings of qaqc's clients).
    pub kafka_properties: Vec<(String, String)>,
}

impl QaqcSpec {
    /// An instance of the suites' group on `bootstrap_servers`.
    pub fn new(instance_id: &str, bootstrap_servers: &str, registry_url: &str) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            group_id: QAQC_GROUP.to_owned(),
            bootstrap_servers: bootstrap_servers.to_owned(),
            registry_url: registry_url.to_owned(),
            max_in_flight_outputs: 20_000,
            kafka_properties: Vec::new(),
        }
    }

    /// The configuration file for an instance keeping its checkpoints in
    /// `state_dir` and serving `/metrics` on `metrics_listen`: 10 s windows
    /// closed after 5 s of silence, commits every 200 ms, checkpoints every
    /// 2 s, a 6 s session with heartbeats every 500 ms.
    pub fn config(&self, state_dir: &Path, metrics_listen: &str) -> QaqcFileConfig {
        let mut config = QaqcFileConfig::embedded_defaults();
        config.qaqc.instance_id = self.instance_id.clone();
        config.qaqc.group_id = self.group_id.clone();
        config.qaqc.state_dir = state_dir.to_owned();
        config.qaqc.log_interval_ms = 5_000;
        config.qaqc.commit_interval_ms = 200;
        config.qaqc.checkpoint_interval_ms = 2_000;
        config.qaqc.poll_wait_ms = 100;
        config.qaqc.max_in_flight_outputs = self.max_in_flight_outputs;
        config.windows.size_ms = WINDOW_SIZE_MS;
        config.windows.idle_close_ms = IDLE_CLOSE_MS;
        config.alerts.silent.silent_after_ms = SILENT_AFTER_MS;
        config.group.session_timeout_ms = 6_000;
        config.group.heartbeat_interval_ms = 500;
        config.kafka.bootstrap_servers = self.bootstrap_servers.clone();
        for (key, value) in &self.kafka_properties {
            config.kafka.properties.insert(key.clone(), value.clone());
        }
        config.registry.url = Some(self.registry_url.clone());
        config.metrics.listen = metrics_listen.to_owned();
        config
    }
}

/// A qaqc instance's metrics, by sample name (labels included, as exposed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QaqcScrape(pub Metrics);

impl QaqcScrape {
    /// A sample's value, 0 if the instance does not expose it (yet): a
    /// labelled family shows a label set only once it was used.
    pub fn value(&self, name: &str) -> f64 {
        self.0.0.get(name).copied().unwrap_or(0.0)
    }

    /// `soilstream_qaqc_records_in_total`: raw records consumed by this
    /// incarnation.
    pub fn records_in(&self) -> u64 {
        self.value("soilstream_qaqc_records_in_total") as u64
    }

    /// `soilstream_qaqc_records_out_total{topic}`.
    pub fn records_out(&self, topic: &str) -> u64 {
        self.value(&format!("soilstream_qaqc_records_out_total{{topic=\"{topic}\"}}")) as u64
    }

    /// `soilstream_qaqc_open_windows`: windows with readings not written yet.
    pub fn open_windows(&self) -> u64 {
        self.value("soilstream_qaqc_open_windows") as u64
    }

    /// `soilstream_qaqc_in_flight_outputs`: outputs not yet acknowledged.
    pub fn in_flight_outputs(&self) -> u64 {
        self.value("soilstream_qaqc_in_flight_outputs") as u64
    }

    /// `soilstream_qaqc_lag_records{partition}`, if measured yet (every
    /// 10 s, for the partitions owned then).
    pub fn lag_records(&self, partition: i32) -> Option<u64> {
        self.0
            .0
            .get(&format!(
                "soilstream_qaqc_lag_records{{partition=\"{partition}\"}}"
            ))
            .map(|v| *v as u64)
    }

    /// `soilstream_qaqc_rebuilds_total`: partition states rebuilt from the
    /// output topics by this incarnation.
    pub fn rebuilds(&self) -> u64 {
        self.value("soilstream_qaqc_rebuilds_total") as u64
    }

    /// `soilstream_qaqc_rebuild_records_read_total`.
    pub fn rebuild_records_read(&self) -> u64 {
        self.value("soilstream_qaqc_rebuild_records_read_total") as u64
    }

    /// `soilstream_qaqc_replayed_skipped_total`: raw records read again
    /// whose outputs already existed.
    pub fn replayed_skipped(&self) -> u64 {
        self.value("soilstream_qaqc_replayed_skipped_total") as u64
    }

    /// `soilstream_qaqc_late_window_revisions_total`.
    pub fn late_window_revisions(&self) -> u64 {
        self.value("soilstream_qaqc_late_window_revisions_total") as u64
    }

    /// `soilstream_qaqc_delivery_failures_total`.
    pub fn delivery_failures(&self) -> u64 {
        self.value("soilstream_qaqc_delivery_failures_total") as u64
    }

    /// `soilstream_qaqc_quarantined_total{reason}`.
    pub fn quarantined(&self, reason: &str) -> u64 {
        self.value(&format!(
            "soilstream_qaqc_quarantined_total{{reason=\"{reason}\"}}"
        )) as u64
    }

    /// The one-line summary printed by the tests.
    pub fn summary(&self) -> String {
        format!(
            "in={} clean={} aggregates={} open_windows={} in_flight={} rebuilds={} rebuild_read={} \
             replayed_skipped={} late_revisions={} delivery_failures={}",
            self.records_in(),
            self.records_out("soil-moisture-clean"),
            self.records_out("soil-moisture-aggregates"),
            self.open_windows(),
            self.in_flight_outputs(),
            self.rebuilds(),
            self.rebuild_records_read(),
            self.replayed_skipped(),
            self.late_window_revisions(),
            self.delivery_failures()
        )
    }
}

/// What the current incarnation's log says about its partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Partitions of the last assignment not revoked or lost since.
    pub assigned: BTreeSet<i32>,
    /// Of those, the partitions whose state was rebuilt (being processed).
    pub ready: BTreeSet<i32>,
    /// Assignments seen.
    pub assignments: u64,
    /// Rebuilds seen: `(partition, records read back)`.
    pub rebuilds: Vec<(i32, u64)>,
}

/// The integers of the first `key=[a, b, ...]` in `line`.
fn list_field(line: &str, key: &str) -> Option<Vec<i32>> {
    let start = line.find(&format!("{key}=["))? + key.len() + 2;
    let end = start + line[start..].find(']')?;
    Some(
        line[start..end]
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
    )
}

/// The integer of the first `key=N` in `line`.
fn int_field(line: &str, key: &str) -> Option<i64> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()?.parse().ok()
}

impl Ownership {
    /// Reads the qaqc log lines of one incarnation, in order.
    pub fn parse(log: &str) -> Self {
        let mut own = Self::default();
        for line in log.lines().filter(|l| l.contains("soilstream::qaqc::run")) {
            if line.contains("partitions assigned") {
                // Eager protocol: an assignment is the member's whole set.
                own.assigned = list_field(line, "partitions")
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                own.ready.clear();
                own.assignments += 1;
            } else if line.contains("partitions revoked") || line.contains("partitions lost") {
                for p in list_field(line, "partitions").unwrap_or_default() {
                    own.assigned.remove(&p);
                    own.ready.remove(&p);
                }
            } else if line.contains("an output delivery failed") {
                // Every owned partition is rebuilt again.
                own.ready.clear();
            } else if line.contains("partition state rebuilt")
                && let Some(p) = int_field(line, "partition")
            {
                let p = p as i32;
                own.rebuilds
                    .push((p, int_field(line, "records_read").unwrap_or(0) as u64));
                if own.assigned.contains(&p) {
                    own.ready.insert(p);
                }
            }
        }
        own
    }
}

/// A `soilstream qaqc` process with its own directory (configuration, state,
/// log).
#[derive(Debug)]
pub struct Qaqc {
    child: ChildProcess,
    dir: PathBuf,
    config_path: PathBuf,
    settings: QaqcSettings,
    group_session_timeout_ms: u64,
    metrics_addr: SocketAddr,
    killed_at: Option<Instant>,
}

impl Qaqc {
    /// Writes the configuration into `dir` (state in `dir/state`, metrics
    /// on a free port the log announces) and starts qaqc; returns once its
    /// metrics endpoint answers.
    pub fn start(dir: &Path, spec: &QaqcSpec) -> Self {
        std::fs::create_dir_all(dir).expect("create the qaqc directory");
        let config_path = dir.join("qaqc.toml");
        let config = spec.config(&dir.join("state"), "127.0.0.1:0");
        let text = toml::to_string_pretty(&config).expect("render the qaqc config");
        std::fs::write(&config_path, text).expect("write the qaqc config");
        // The checkers judge with the settings qaqc reads from this file.
        let loaded = QaqcFileConfig::load(&config_path).expect("the written configuration loads");
        let settings = loaded.settings();
        let mut child_spec = ChildSpec::new(SOILSTREAM, dir.join("qaqc.log"))
            .arg("qaqc")
            .arg("--config")
            .arg(&config_path)
            .env("SOILSTREAM_LOG", "info");
        for var in SETTINGS_ENV_VARS {
            child_spec = child_spec.env_remove(var);
        }
        let child = ChildProcess::spawn(child_spec).expect("spawn soilstream qaqc");
        let metrics_addr = await_metrics_addr(&child, dir);
        let mut qaqc = Self {
            child,
            dir: dir.to_owned(),
            config_path,
            settings,
            group_session_timeout_ms: loaded.group.session_timeout_ms,
            metrics_addr,
            killed_at: None,
        };
        qaqc.wait_for("the first /metrics answer", QAQC_START_TIMEOUT_MS, |_| true);
        qaqc
    }

    /// Starts qaqc again (same configuration and state directory) after it
    /// exited or was killed.
    pub fn restart(&mut self) {
        self.child.restart().expect("restart soilstream qaqc");
        self.metrics_addr = await_metrics_addr(&self.child, &self.dir);
        self.wait_for(
            "the first /metrics answer after a restart",
            QAQC_START_TIMEOUT_MS,
            |_| true,
        );
    }

    /// The settings qaqc runs with (read from its configuration file).
    pub fn settings(&self) -> &QaqcSettings {
        &self.settings
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The state directory (checkpoints).
    pub fn state_dir(&self) -> &Path {
        &self.settings.qaqc.state_dir
    }

    /// The log file (every incarnation).
    pub fn log_path(&self) -> PathBuf {
        self.child.log_path().to_owned()
    }

    /// The log of the current incarnation.
    pub fn current_log(&self) -> String {
        let log = std::fs::read_to_string(self.child.log_path()).unwrap_or_default();
        match log.rfind(START_BANNER) {
            Some(at) => log[at..].to_owned(),
            None => log,
        }
    }

    /// What the current incarnation owns, from its log.
    pub fn ownership(&self) -> Ownership {
        Ownership::parse(&self.current_log())
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Scrapes `/metrics` once.
    pub fn metrics(&self) -> Result<QaqcScrape, String> {
        scrape_text(self.metrics_addr).map(|text| QaqcScrape(Metrics::parse(&text)))
    }

    /// Scrapes `/metrics` until `condition` holds and returns those metrics.
    /// Fails if qaqc exits or `timeout_ms` passes first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout_ms: u64,
        mut condition: impl FnMut(&QaqcScrape) -> bool,
    ) -> QaqcScrape {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(status) = self.child.exit_status() {
                panic!("qaqc exited ({status}) while the test waited for {what}");
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

    /// Waits until the current incarnation has rebuilt and is processing
    /// exactly `partitions` (from its log); returns its ownership.
    pub fn wait_until_owning(&mut self, partitions: &BTreeSet<i32>, timeout_ms: u64) -> Ownership {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(status) = self.child.exit_status() {
                panic!("qaqc exited ({status}) while the test waited for it to own {partitions:?}");
            }
            let own = self.ownership();
            if own.ready == *partitions && own.assigned == *partitions {
                return own;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout_ms} ms waiting for {} to own {partitions:?}; it has {own:?}",
                self.settings.qaqc.instance_id
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// SIGTERM; asserts qaqc exits 0 on its own within
    /// [`QAQC_EXIT_TIMEOUT_MS`].
    pub fn stop(&mut self) -> Termination {
        let termination = self.child.terminate(QAQC_EXIT_TIMEOUT_MS).expect("SIGTERM qaqc");
        assert!(
            !termination.forced && termination.status.success(),
            "qaqc did not exit cleanly on SIGTERM: {termination:?}"
        );
        termination
    }

    /// SIGKILL: no commit, no checkpoint, no LeaveGroup.
    pub fn kill9(&mut self) {
        self.child.kill9().expect("SIGKILL qaqc");
        self.killed_at = Some(Instant::now());
    }

    /// Restarts a killed instance once the group coordinator has expired
    /// the killed member's session (`[group] session_timeout_ms` after the
    /// kill, plus [`SESSION_EXPIRY_MARGIN_MS`]), as an orchestrator with a
    /// restart delay would.
    ///
    /// On Tansu 0.6.0 a member that joins while a dead leader's session is
    /// still running is paused 3 s as a follower; if the dead leader's
    /// session expires between that JoinGroup and the follower's SyncGroup,
    /// the SyncGroup removes the leader and then accepts the follower's
    /// empty assignment as the group's (`Inner<Forming>::sync` checks
    /// `leader.is_some_and(|l| l != member)`, which passes once the leader
    /// is gone), so the group is formed with no partition assigned to
    /// anyone, for good. Joining after the expiry avoids that window.
    pub fn restart_once_its_session_expired(&mut self) {
        let killed_at = self.killed_at.expect("restarting an instance that was killed");
        let expired_at =
            killed_at + Duration::from_millis(self.group_session_timeout_ms + SESSION_EXPIRY_MARGIN_MS);
        // Not a sleep standing in for a condition: the scenario step is
        // "restarted after the session timeout".
        std::thread::sleep(expired_at.saturating_duration_since(Instant::now()));
        self.restart();
    }
}

/// Waits for the metrics address the current incarnation logs.
fn await_metrics_addr(child: &ChildProcess, dir: &Path) -> SocketAddr {
    let mut found = None;
    let log_path = child.log_path().to_owned();
    let waited = wait_until("qaqc's metrics endpoint", QAQC_START_TIMEOUT_MS, || {
        found = metrics_addr_in_log(&log_path);
        found.is_some()
    });
    if let Err(error) = waited {
        panic!(
            "{error} (qaqc in {}): log:\n{}",
            dir.display(),
            super::logs::tail(&log_path, 8_000)
        );
    }
    found.expect("found above")
}

/// The high watermark of every partition of `topic`.
pub fn high_watermarks(config: &KafkaClientConfig, topic: &str) -> BTreeMap<i32, i64> {
    block_on(async {
        let consumer = KafkaConsumer::new(config, "soilstream-e2e-counter").expect("create a consumer");
        let partitions = consumer.partition_count(topic).await.expect("partition count");
        let mut highs = BTreeMap::new();
        for partition in 0..partitions as i32 {
            let (_low, high) = consumer.watermarks(topic, partition).await.expect("watermarks");
            highs.insert(partition, high);
        }
        highs
    })
}

/// Asks the group coordinator for the offsets a group committed on a
/// topic, without joining the group (one client, reused across requests).
pub struct GroupOffsets {
    queries: BrokerQueries,
    topic: String,
}

impl GroupOffsets {
    /// A client for `group`'s offsets on `topic`.
    pub fn new(config: &KafkaClientConfig, group: &str, topic: &str) -> Result<Self, String> {
        Ok(Self {
            queries: BrokerQueries::new(&KafkaClientConfig::new(config.bootstrap_servers.clone()), group)?,
            topic: topic.to_owned(),
        })
    }

    /// The offsets committed on `partitions` (`None`: nothing committed).
    pub fn fetch(
        &self,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<BTreeMap<i32, Option<i64>>, String> {
        let wanted: BTreeSet<i32> = partitions.into_iter().collect();
        let count = wanted.last().map_or(0, |p| *p as u32 + 1);
        let committed = self.queries.committed(&self.topic, count, OFFSETS_TIMEOUT_MS)?;
        Ok(committed
            .into_iter()
            .filter(|(p, _)| wanted.contains(p))
            .collect())
    }

    /// The sum of the offsets committed on `partitions` (nothing: 0).
    pub fn total(&self, partitions: impl IntoIterator<Item = i32>) -> Result<i64, String> {
        Ok(self.fetch(partitions)?.values().map(|o| o.unwrap_or(0)).sum())
    }
}

/// The offsets `group` committed on `topic`'s `partitions` (`None`: nothing
/// committed), asked from the group coordinator without joining the group.
pub fn committed_offsets(
    config: &KafkaClientConfig,
    group: &str,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<BTreeMap<i32, Option<i64>>, String> {
    GroupOffsets::new(config, group, topic)?.fetch(partitions)
}

/// What waiting for qaqc to catch up asks of an instance: a process
/// ([`Qaqc`]) or a container.
pub trait QaqcInstance {
    /// Its name in messages.
    fn name(&self) -> String;
    /// Fails the test if the instance no longer runs.
    fn assert_running(&mut self);
    /// Scrapes `/metrics` once.
    fn scrape(&self) -> Result<QaqcScrape, String>;
    /// The partitions the current incarnation has rebuilt and processes.
    fn processing(&self) -> BTreeSet<i32>;
}

impl QaqcInstance for Qaqc {
    fn name(&self) -> String {
        self.settings.qaqc.instance_id.clone()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.exit_status() {
            panic!("{} exited ({status})", self.name());
        }
    }

    fn scrape(&self) -> Result<QaqcScrape, String> {
        self.metrics()
    }

    fn processing(&self) -> BTreeSet<i32> {
        self.ownership().ready
    }
}

/// Scrapes an instance's `/metrics` until `condition` holds and returns
/// those metrics; fails if the instance stops running or `timeout_ms`
/// passes first.
pub fn wait_for_instance(
    instance: &mut dyn QaqcInstance,
    what: &str,
    timeout_ms: u64,
    mut condition: impl FnMut(&QaqcScrape) -> bool,
) -> QaqcScrape {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        instance.assert_running();
        let last = instance.scrape();
        if let Ok(metrics) = &last
            && condition(metrics)
        {
            return last.expect("checked above");
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout_ms} ms waiting for {what} of {}; last metrics: {last:?}",
            instance.name()
        );
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// Waits until an instance's current incarnation processes exactly
/// `partitions`.
pub fn wait_until_processing(instance: &mut dyn QaqcInstance, partitions: &BTreeSet<i32>, timeout_ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        instance.assert_running();
        let processing = instance.processing();
        if processing == *partitions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout_ms} ms waiting for {} to process {partitions:?}; it processes {processing:?}",
            instance.name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the log of a process that may have started several times (a
/// container's) says about its last incarnation: the lines after the last
/// "metrics endpoint" line, which every start logs once.
pub fn ownership_of_last_start(log: &str) -> Ownership {
    let marker = METRICS_LOG_MARKER
        .split(" address=")
        .next()
        .unwrap_or(METRICS_LOG_MARKER);
    Ownership::parse(log.rfind(marker).map_or(log, |at| &log[at..]))
}

/// Waits until qaqc is done with a raw topic that no longer grows: `group`
/// committed every partition's high watermark (every raw record processed,
/// its outputs acknowledged), the instances together process every
/// partition, and each of them reports no open window, no output in flight
/// and, for the partitions it processes, a lag of 0. Returns the last
/// metrics of each instance.
pub fn wait_until_caught_up(
    instances: &mut [&mut dyn QaqcInstance],
    config: &KafkaClientConfig,
    raw_topic: &str,
    group: &str,
    timeout_ms: u64,
) -> Vec<QaqcScrape> {
    let highs = high_watermarks(config, raw_topic);
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let mut waiting_for = Vec::new();
        match committed_offsets(config, group, raw_topic, highs.keys().copied()) {
            Ok(committed) => {
                for (p, high) in &highs {
                    let got = committed.get(p).copied().flatten();
                    if got != Some(*high) && !(*high == 0 && got.is_none()) {
                        waiting_for.push(format!("partition {p} committed {got:?} of {high}"));
                    }
                }
            }
            Err(error) => waiting_for.push(error),
        }
        let mut scrapes = Vec::new();
        let mut processed = BTreeSet::new();
        for instance in instances.iter_mut() {
            instance.assert_running();
            let name = instance.name();
            let own = instance.processing();
            processed.extend(own.iter().copied());
            match instance.scrape() {
                Ok(m) => {
                    let lagging: Vec<String> = own
                        .iter()
                        .filter(|p| m.lag_records(**p) != Some(0))
                        .map(|p| format!("{p}: {:?}", m.lag_records(*p)))
                        .collect();
                    if m.open_windows() > 0 || m.in_flight_outputs() > 0 || !lagging.is_empty() {
                        waiting_for.push(format!(
                            "{name}: open_windows={} in_flight={} lag {lagging:?}",
                            m.open_windows(),
                            m.in_flight_outputs()
                        ));
                    }
                    scrapes.push(m);
                }
                Err(error) => waiting_for.push(format!("{name}: {error}")),
            }
        }
        let all: BTreeSet<i32> = highs.keys().copied().collect();
        if processed != all {
            waiting_for.push(format!("partitions processed: {processed:?} of {all:?}"));
        }
        if waiting_for.is_empty() {
            return scrapes;
        }
        assert!(
            Instant::now() < deadline,
            "qaqc did not catch up within {timeout_ms} ms; still waiting for: {waiting_for:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every record of `topic`, read to its end, in (partition, offset) order.
pub fn read_all(config: &KafkaClientConfig, topic: &str) -> Vec<ConsumedRecord> {
    block_on(async {
        let mut consumer =
            KafkaConsumer::new(config, "soilstream-e2e-checker").expect("create the checker's consumer");
        read_topic_to_end(&mut consumer, topic, READ_STALL_TIMEOUT_MS)
            .await
            .unwrap_or_else(|e| panic!("reading `{topic}` to its end: {e}"))
    })
}

/// The five output topics of `settings`, each read to its end.
pub fn read_downstream(config: &KafkaClientConfig, settings: &QaqcSettings) -> DownstreamTopics {
    let topics = &settings.topics;
    DownstreamTopics {
        clean: read_all(config, &topics.clean),
        quarantine: read_all(config, &topics.quarantine),
        flags: read_all(config, &topics.flags),
        aggregates: read_all(config, &topics.aggregates),
        alerts: read_all(config, &topics.alerts),
    }
}

/// What a qaqc run ends with: both checkers' reports and what they read.
#[derive(Debug)]
pub struct Verdict {
    /// The raw checker's report (against the ledger).
    pub raw: CheckReport,
    /// The downstream checker's report.
    pub downstream: DownstreamReport,
    /// The raw topic.
    pub raw_records: Vec<ConsumedRecord>,
    /// The output topics.
    pub topics: DownstreamTopics,
}

/// Reads the raw topic and the outputs (after every process stopped),
/// judges the raw topic against `ledger` with the shared checker (no loss,
/// every durable reading delivered with its values) and the outputs against
/// the raw topic with the downstream checker, using the `settings` qaqc ran
/// with; fails unless both are valid, printing the reports.
pub fn judge(config: &KafkaClientConfig, ledger: &Ledger, settings: &QaqcSettings) -> Verdict {
    let raw_topic = &settings.topics.raw;
    let raw_records = read_all(config, raw_topic);
    let partitions = high_watermarks(config, raw_topic).len() as u32;
    let raw = check_raw(ledger, &raw_records, partitions);
    assert_every_durable_reading_delivered(ledger, &raw_records, &raw);
    let topics = read_downstream(config, settings);
    let decode = |value: &[u8]| decode_raw(value);
    let downstream = check_downstream(&raw_records, &decode, &topics, partitions, settings);
    eprintln!(
        "downstream checker over {} raw record(s), {} clean, {} quarantined, {} flag revision(s), \
         {} aggregate(s), {} alert(s):\n{downstream}",
        raw_records.len(),
        topics.clean.len(),
        topics.quarantine.len(),
        topics.flags.len(),
        topics.aggregates.len(),
        topics.alerts.len()
    );
    assert!(
        downstream.valid,
        "the downstream checker failed the run:\n{downstream}"
    );
    assert_eq!(
        downstream.tally.raw_identities, raw.tally.delivered_unique,
        "both checkers count the same identities in the raw topic"
    );
    Verdict {
        raw,
        downstream,
        raw_records,
        topics,
    }
}
