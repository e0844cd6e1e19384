//! What a scenario becomes in the real world: which of its faults real
//! processes can play, and each component's configuration file, with every
//! scripted duration compressed by the run's factor (see
//! [`soilstream_scenarios::observe::TimeAxis`]) but never below what a real
//! broker and real clients need (a group session of seconds, a commit
//! interval of a fraction of one).

use soilstream::archive::config::ArchiveFileConfig;
use soilstream::gateway::config::{
    GatewayFileConfig, MetricsConfig, RegistryConfig, SourceConfig, SyncPolicy,
};
use soilstream::qaqc::config::QaqcFileConfig;
use soilstream::transport::kafka::KafkaClientConfig;
use soilstream::transport::kafka_group::KafkaGroupConfig;
use soilstream_scenarios::archive::ARCHIVE_GROUP;
use soilstream_scenarios::qaqc::QAQC_GROUP;
use soilstream_scenarios::scenario::{Scenario, Stage};
use soilstream_scenarios::timeline::{Action, TimedAction, expand};
use soilstream_scenarios::world::{PlantedBug, RAW_TOPIC, gateway_name, source_config, spool_config};
use std::path::Path;

/// librdkafka settings that notice a dead or silent broker within seconds
/// (the defaults wait 10-15 s), for every component's clients.
pub const FAST_FAILURE_DETECTION: &[(&str, &str)] = &[
    ("socket.timeout.ms", "3000"),
    ("request.timeout.ms", "2000"),
    ("socket.connection.setup.timeout.ms", "3000"),
    ("reconnect.backoff.max.ms", "500"),
    ("retry.backoff.max.ms", "500"),
];

/// Shortest consumer-group session a real group gets, ms.
pub const SESSION_TIMEOUT_MIN_MS: u64 = 6_000;

/// Planted bugs the real components can carry: those in their
/// configuration files (the gateway's spool and forwarder). qaqc's and the
/// archive's planted bugs are switched in code only (the simulator's).
pub const REAL_PLANTED_BUGS: [PlantedBug; 4] = [
    PlantedBug::AckBeforeSync,
    PlantedBug::CursorBeforeDelivery,
    PlantedBug::TruncateAtFirstBadCrc,
    PlantedBug::SkipSegmentSyncDir,
];

/// Where every component finds the services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The broker's bootstrap address (the fault proxy's).
    pub bootstrap_servers: String,
    /// The registry's URL.
    pub registry_url: String,
}

/// What the real world plays of a scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Axis ms per wall-clock ms.
    pub compression: u32,
    /// The scenario's actions in axis time.
    pub actions: Vec<TimedAction>,
}

/// `ms` of the scenario in wall-clock ms, at least `floor_ms`.
pub fn compressed_ms(ms: u64, compression: u32, floor_ms: u64) -> u64 {
    (ms / u64::from(compression.max(1))).max(floor_ms)
}

fn compressed_i64(ms: i64, compression: u32, floor_ms: i64) -> i64 {
    (ms / i64::from(compression.max(1))).max(floor_ms)
}

impl Endpoints {
    /// Points a component's client sections at the services: the broker
    /// with [`FAST_FAILURE_DETECTION`], the registry, `/metrics` on a free
    /// loopback port (announced in the log).
    fn connect(
        &self,
        kafka: &mut KafkaClientConfig,
        registry: &mut RegistryConfig,
        metrics: &mut MetricsConfig,
    ) {
        kafka.bootstrap_servers = self.bootstrap_servers.clone();
        for (key, value) in FAST_FAILURE_DETECTION {
            kafka.properties.insert((*key).to_owned(), (*value).to_owned());
        }
        registry.url = Some(self.registry_url.clone());
        metrics.listen = "127.0.0.1:0".into();
    }
}

impl Plan {
    /// Group membership for a scripted session of `session_timeout_ms`:
    /// compressed, at least [`SESSION_TIMEOUT_MIN_MS`], heartbeats six
    /// times per session.
    fn group(&self, session_timeout_ms: u64) -> KafkaGroupConfig {
        let session_ms = self.wall_ms(session_timeout_ms, SESSION_TIMEOUT_MIN_MS);
        KafkaGroupConfig {
            session_timeout_ms: session_ms,
            heartbeat_interval_ms: (session_ms / 6).max(250),
            ..KafkaGroupConfig::default()
        }
    }

    /// The plan of `scenario`, or every reason the real world cannot play it.
    pub fn new(scenario: &Scenario, compression: u32, planted: PlantedBug) -> Result<Self, Vec<String>> {
        let mut refusals = Vec::new();
        if compression == 0 {
            refusals.push("the time compression must be at least 1".to_owned());
        }
        if planted != PlantedBug::None && !REAL_PLANTED_BUGS.contains(&planted) {
            refusals.push(format!(
                "planted bug `{}` is switched in code only (the simulator's); the real components carry: {}",
                planted.name(),
                REAL_PLANTED_BUGS.map(|b| b.name()).join(", ")
            ));
        }
        let t = &scenario.topology;
        if t.clock_drift_ppm_max > 0.0 {
            refusals.push("clock drift: real gateways use the host's clock".to_owned());
        }
        let actions = expand(scenario);
        for timed in &actions {
            if let Some(reason) = unsupported(&timed.action) {
                refusals.push(format!("at {} s: {reason}", timed.at_ms / 1_000));
            }
        }
        refusals.dedup();
        if refusals.is_empty() {
            Ok(Self { compression, actions })
        } else {
            Err(refusals)
        }
    }

    /// `ms` of the scenario in wall-clock ms, at least `floor_ms`.
    pub fn wall_ms(&self, ms: u64, floor_ms: u64) -> u64 {
        compressed_ms(ms, self.compression, floor_ms)
    }

    /// The configuration of gateway `index`: the scenario's topology, the
    /// probe simulator every world gives it for `seed`, its spool in
    /// `spool_dir`, sampling compressed.
    pub fn gateway_config(
        &self,
        scenario: &Scenario,
        seed: u64,
        planted: PlantedBug,
        index: u32,
        spool_dir: &Path,
        endpoints: &Endpoints,
    ) -> GatewayFileConfig {
        let t = &scenario.topology;
        let name = gateway_name(index);
        let mut config = GatewayFileConfig::embedded_defaults();
        config.gateway.id = name.clone();
        config.gateway.log_interval_ms = 5_000;
        config.sampler.interval_ms = self.wall_ms(t.sample_interval_ms, 50);
        config.sampler.sync = if t.sync_interval_ms == 0 {
            SyncPolicy::EveryBatch
        } else {
            SyncPolicy::IntervalMs(self.wall_ms(t.sync_interval_ms, 10))
        };
        config.source = SourceConfig::Simulator(source_config(scenario, seed, &name));
        let mut spool = spool_config(scenario, planted);
        spool.dir = spool_dir.to_owned();
        config.spool = spool;
        config.forwarder.topic = RAW_TOPIC.into();
        config.forwarder.cursor_persist_interval_ms = 250;
        config.forwarder.retry_backoff_initial_ms = 100;
        config.forwarder.retry_backoff_max_ms = 1_000;
        config.forwarder.shutdown_grace_ms = 60_000;
        config.forwarder.planted_advance_cursor_before_delivery = planted == PlantedBug::CursorBeforeDelivery;
        endpoints.connect(&mut config.kafka, &mut config.registry, &mut config.metrics);
        config
    }

    /// The configuration of qaqc instance `instance`: the scenario's
    /// `[qaqc]` section, windows, flag spans and alerts compressed; the
    /// state horizon not (it must reach an SD card's day-before rows, which
    /// keep their calendar times).
    pub fn qaqc_config(
        &self,
        scenario: &Scenario,
        instance: u32,
        state_dir: &Path,
        endpoints: &Endpoints,
    ) -> QaqcFileConfig {
        let q = &scenario.qaqc;
        let c = self.compression;
        let mut config = QaqcFileConfig::embedded_defaults();
        config.qaqc.instance_id = Stage::Qaqc.host(instance);
        config.qaqc.group_id = QAQC_GROUP.into();
        config.qaqc.state_dir = state_dir.to_owned();
        config.qaqc.log_interval_ms = 5_000;
        config.qaqc.commit_interval_ms = 200;
        config.qaqc.timer_interval_ms = 200;
        config.qaqc.poll_wait_ms = 100;
        config.qaqc.checkpoint_interval_ms = self.wall_ms(q.checkpoint_interval_ms, 1_000);
        config.topics.raw = RAW_TOPIC.into();
        let w = &mut config.windows;
        w.size_ms = compressed_i64(w.size_ms, c, 1_000);
        w.idle_close_ms = compressed_i64(w.idle_close_ms, c, 2_000);
        w.historical_after_ms = compressed_i64(w.historical_after_ms, c, 1_000);
        if let Some(horizon) = q.state_horizon_ms {
            w.state_horizon_ms = horizon;
        }
        let f = &mut config.flags;
        f.spike_noise_window_ms = compressed_i64(f.spike_noise_window_ms, c, 1_000);
        f.stuck_min_span_ms = compressed_i64(f.stuck_min_span_ms, c, 1_000);
        let silent_ms = q.silent_after_ms.unwrap_or(config.alerts.silent.silent_after_ms);
        config.alerts.silent.silent_after_ms = self.wall_ms(silent_ms, 2_000);
        config.group = self.group(q.session_timeout_ms);
        endpoints.connect(&mut config.kafka, &mut config.registry, &mut config.metrics);
        config
    }

    /// The configuration of archive instance `instance`: the scenario's
    /// `[archive]` section, batch age compressed, files under `store_dir`.
    pub fn archive_config(
        &self,
        scenario: &Scenario,
        instance: u32,
        clean_topic: &str,
        store_dir: &Path,
        endpoints: &Endpoints,
    ) -> ArchiveFileConfig {
        let a = &scenario.archive;
        let mut config = ArchiveFileConfig::embedded_defaults();
        config.archive.instance_id = Stage::Archive.host(instance);
        config.archive.group_id = ARCHIVE_GROUP.into();
        config.archive.topic = clean_topic.to_owned();
        config.archive.poll_wait_ms = 100;
        config.archive.retry_initial_ms = 100;
        config.archive.retry_max_ms = 2_000;
        config.archive.log_interval_ms = 5_000;
        config.rotation.max_rows = a.max_rows;
        config.rotation.max_age_ms = self.wall_ms(a.max_age_ms, 500);
        config.rotation.max_open_dates = a.max_open_dates;
        config.store.url = format!("file://{}", store_dir.display());
        config.group = self.group(a.session_timeout_ms);
        endpoints.connect(&mut config.kafka, &mut config.registry, &mut config.metrics);
        config
    }
}

/// Why the real world cannot play `action`, if it cannot.
fn unsupported(action: &Action) -> Option<String> {
    let per_link = "per-gateway link faults: every real client reaches the broker through one fault proxy (the address the broker advertises)";
    match action {
        Action::BrokerCrash
        | Action::BrokerRestart
        | Action::PowerOff(_)
        | Action::Crash(_)
        | Action::Restart(_)
        | Action::RegistryCrash
        | Action::RegistryRestart
        | Action::StageCrash(..)
        | Action::StagePowerOff(..)
        | Action::StageStart(..)
        | Action::StageStop(..)
        | Action::BackfillStart(_)
        | Action::BackfillPowerOff(_)
        | Action::BackfillPowerOn(_) => None,
        Action::PowerOn(_, 0) => None,
        Action::PowerOn(_, _) => Some("a clock jump at power-on: real gateways use the host's clock".into()),
        Action::Partition(_)
        | Action::PartitionOneWay(..)
        | Action::Repair(_)
        | Action::Hold(_)
        | Action::Release(_)
        | Action::Latency(..) => Some(per_link.into()),
        Action::AckLoss(_) | Action::RequestErrors(_) => {
            Some("broker-side ack loss and request errors: Tansu has no such switch".into())
        }
        Action::DiskFull(..) | Action::IoErrors(..) | Action::ReadCorruption(..) | Action::BitFlips(..) => {
            Some("disk faults: the real gateways write to the host's file system".into())
        }
        Action::ClockJump(..) => Some("clock jumps: real gateways use the host's clock".into()),
        Action::RegistryPartition | Action::RegistryRepair => {
            Some("registry partitions: the real registry is reached directly on loopback".into())
        }
        Action::StagePartition(..) | Action::StageRepair(..) => {
            Some("stage partitions: qaqc and the archive reach the broker through the shared proxy".into())
        }
        other => Some(format!("{other:?} has no real-world counterpart yet")),
    }
}
