//! Building the simulated world of a scenario: a broker host, a schema
//! registry host and gateway hosts on turmoil, with the handles the runner
//! uses to script faults and to watch progress. Backfill hosts join the
//! world when their backfill starts ([`crate::backfill`]).

use crate::archive::ArchiveHandles;
use crate::backfill::BackfillHandles;
use crate::hostile::HostileRecord;
use crate::ledger::{Ledger, LedgerObserver};
use crate::qaqc::QaqcHandles;
use crate::scenario::Scenario;
use soilstream::gateway::config::{ForwarderConfig, SamplerConfig, SyncPolicy};
use soilstream::gateway::{
    GatewayParts, GatewaySettings, ProducerFactory, Shutdown, ShutdownTrigger, run_gateway,
};
use soilstream::metrics::GatewayMetrics;
use soilstream::registry::{HttpRegistryClient, HttpRegistryClientConfig};
use soilstream::source::{SensorSimulator, SimulatorConfig};
use soilstream::spool::{FullPolicy, PlantedBugs, SpoolConfig};
use soilstream::transport::LogProducer;
use soilstream_sim::broker::{BrokerConfig, BrokerHost, FlushPolicy, TopicConfig};
use soilstream_sim::digest::derive_seed;
use soilstream_sim::{
    ClockControl, DiskFaults, ProducerConfig, RegistryHost, RegistryHostConfig, SimClock, SimConnector,
    SimDisk, SimProducer, StoreHost, StoreHostConfig,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the broker host.
pub const BROKER_HOST: &str = "broker";
/// Port of the simulated broker.
pub const BROKER_PORT: u16 = 9092;
/// Name of the schema registry host.
pub const REGISTRY_HOST: &str = "registry";
/// Port of the schema registry.
pub const REGISTRY_PORT: u16 = soilstream_sim::registry::REGISTRY_DEFAULT_PORT;
/// Name of the object store host (worlds with an archive stage).
pub const STORE_HOST: &str = "objstore";
/// Port of the object store.
pub const STORE_PORT: u16 = soilstream_sim::store::STORE_DEFAULT_PORT;
/// The raw topic.
pub const RAW_TOPIC: &str = "soil-moisture-raw";
/// Start of simulated time: 2026-05-01T00:00:00Z, ms since the Unix epoch.
/// Fixed, so runs never depend on the wall clock.
pub const EPOCH_MS: i64 = 1_777_593_600_000;

/// Bugs planted on purpose to prove the checker catches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum PlantedBug {
    /// No bug.
    #[default]
    None,
    /// The spool acknowledges readings durable before `sync_data`.
    AckBeforeSync,
    /// The forwarder advances the cursor before the delivery report.
    CursorBeforeDelivery,
    /// Recovery truncates a segment at its first bad CRC instead of resyncing.
    TruncateAtFirstBadCrc,
    /// New segment files are created without `sync_dir`.
    SkipSegmentSyncDir,
    /// qaqc commits input offsets before its outputs are acknowledged.
    QaqcCommitBeforeAck,
    /// qaqc does not rebuild its dedup state from the outputs after a restart.
    QaqcDedupNotRebuilt,
    /// qaqc closes windows by arrival (processor) time and never revises them.
    QaqcWindowsOnArrivalTime,
    /// qaqc drops readings an hour behind the partition's newest event time.
    QaqcLateReadingsDropped,
    /// The archive commits group offsets before its marker and resumes
    /// from them, not from the markers.
    ArchiveOffsetsBeforeMarker,
    /// The archive names date directories from its wall clock.
    ArchiveWallClockFileNames,
    /// Archive recovery keeps the files of uncommitted batches.
    ArchiveRecoveryKeepsUncommitted,
    /// The backfill sends a missing (`NAN`) temperature as 0 °C.
    BackfillMissingAsZero,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 12] = [
        PlantedBug::AckBeforeSync,
        PlantedBug::CursorBeforeDelivery,
        PlantedBug::TruncateAtFirstBadCrc,
        PlantedBug::SkipSegmentSyncDir,
        PlantedBug::QaqcCommitBeforeAck,
        PlantedBug::QaqcDedupNotRebuilt,
        PlantedBug::QaqcWindowsOnArrivalTime,
        PlantedBug::QaqcLateReadingsDropped,
        PlantedBug::ArchiveOffsetsBeforeMarker,
        PlantedBug::ArchiveWallClockFileNames,
        PlantedBug::ArchiveRecoveryKeepsUncommitted,
        PlantedBug::BackfillMissingAsZero,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::None => "none",
            PlantedBug::AckBeforeSync => "ack-before-sync",
            PlantedBug::CursorBeforeDelivery => "cursor-before-delivery",
            PlantedBug::TruncateAtFirstBadCrc => "truncate-at-first-bad-crc",
            PlantedBug::SkipSegmentSyncDir => "skip-segment-sync-dir",
            PlantedBug::QaqcCommitBeforeAck => "qaqc-commit-before-ack",
            PlantedBug::QaqcDedupNotRebuilt => "qaqc-dedup-not-rebuilt",
            PlantedBug::QaqcWindowsOnArrivalTime => "qaqc-windows-on-arrival-time",
            PlantedBug::QaqcLateReadingsDropped => "qaqc-late-readings-dropped",
            PlantedBug::ArchiveOffsetsBeforeMarker => "archive-offsets-before-marker",
            PlantedBug::ArchiveWallClockFileNames => "archive-wall-clock-file-names",
            PlantedBug::ArchiveRecoveryKeepsUncommitted => "archive-recovery-keeps-uncommitted",
            PlantedBug::BackfillMissingAsZero => "backfill-missing-as-zero",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        std::iter::once(PlantedBug::None)
            .chain(PlantedBug::ALL)
            .find(|b| b.name() == name)
    }
}

/// The handles of one gateway host.
pub struct GatewayHandles {
    /// Host name (`gw-{index}`), also the gateway id.
    pub name: String,
    /// Fault layer of its disk.
    pub disk_faults: DiskFaults,
    /// Its wall clock.
    pub clock: ClockControl,
    /// Its metrics (shared across reboots).
    pub metrics: GatewayMetrics,
    /// The shutdown trigger of the running boot, if any.
    pub shutdown: Rc<RefCell<Option<ShutdownTrigger>>>,
    /// Set when the runner wants the gateway to stay stopped.
    pub stopping: Rc<Cell<bool>>,
    /// Spools that failed to open (invariant 7), with the error.
    pub open_failures: Rc<RefCell<Vec<String>>>,
    /// Boots so far.
    pub boots: Rc<Cell<u32>>,
}

/// A world ready to run.
pub struct World<'a> {
    /// The turmoil simulation.
    pub sim: turmoil::Sim<'a>,
    /// The broker's handles.
    pub broker: BrokerHost,
    /// The schema registry's handles.
    pub registry: RegistryHost,
    /// Whether the registry is cut off from the other hosts now (a
    /// partition-mode registry outage); backfill hosts that join meanwhile
    /// are cut off too.
    pub registry_cut_off: bool,
    /// One entry per gateway.
    pub gateways: Vec<GatewayHandles>,
    /// Backfills started so far, in start order.
    pub backfills: Vec<BackfillHandles>,
    /// The qaqc hosts.
    pub qaqc: Vec<QaqcHandles>,
    /// The archive hosts.
    pub archive: Vec<ArchiveHandles>,
    /// The object store host, when the world has an archive stage.
    pub store: Option<StoreHost>,
    /// Whether the store is cut off from the archive hosts now (a
    /// partition-mode store outage).
    pub store_cut_off: bool,
    /// Hostile records written so far.
    pub hostile: Rc<RefCell<Vec<HostileRecord>>>,
    /// Hostile writers that failed, with the error.
    pub hostile_failures: Rc<RefCell<Vec<String>>>,
    /// Hostile writers started so far.
    pub hostile_writers: u32,
    /// The shared ledger.
    pub ledger: Rc<RefCell<Ledger>>,
    /// The bug planted in this run (components that live outside the hosts
    /// built here, such as a backfill, read it when they start).
    pub planted: PlantedBug,
}

impl World<'_> {
    /// Names of the hosts that talk to the registry: gateways and started
    /// backfills.
    pub fn registry_clients(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| g.name.clone())
            .chain(self.backfills.iter().map(|b| b.name.clone()))
            .chain(
                self.qaqc
                    .iter()
                    .map(|q| &q.host)
                    .chain(self.archive.iter().map(|a| &a.host))
                    .filter(|h| h.started.get())
                    .map(|h| h.name.clone()),
            )
            .collect()
    }
}

/// The probe simulator of gateway `name` for `seed` (every world's
/// gateways sample the same values for the same seed).
pub fn source_config(scenario: &Scenario, seed: u64, name: &str) -> SimulatorConfig {
    let t = &scenario.topology;
    SimulatorConfig {
        seed: derive_seed(seed, &format!("{name}/source")),
        sensors: t.sensors_per_gateway,
        sensor_prefix: format!("{name}-probe"),
        garbage_probability: t.garbage_reading_probability,
        ..SimulatorConfig::default()
    }
}

/// Gateway `index`'s name and id (`gw-{index}`).
pub fn gateway_name(index: u32) -> String {
    format!("gw-{index}")
}

/// The spool settings of every gateway of `scenario` (limits, full policy,
/// planted spool bugs), its directory `/spool`.
pub fn spool_config(scenario: &Scenario, planted: PlantedBug) -> SpoolConfig {
    let t = &scenario.topology;
    let mut config: SpoolConfig = toml::from_str("dir = \"/spool\"").expect("minimal spool config");
    config.max_bytes = t.spool_max_bytes;
    config.segment_max_bytes = t.spool_segment_max_bytes;
    config.max_uncommitted_bytes = config.max_uncommitted_bytes.min(t.spool_segment_max_bytes);
    config.when_full = if t.when_full == "drop_oldest" {
        FullPolicy::DropOldest
    } else {
        FullPolicy::RejectNew
    };
    config.planted = PlantedBugs {
        ack_before_sync: planted == PlantedBug::AckBeforeSync,
        truncate_at_first_bad_crc: planted == PlantedBug::TruncateAtFirstBadCrc,
        skip_segment_sync_dir: planted == PlantedBug::SkipSegmentSyncDir,
    };
    config
}

/// Timeouts of the simulated clients scale with the tick: a round trip
/// takes at least two ticks.
pub fn producer_config(tick_ms: u64) -> ProducerConfig {
    let mut config = ProducerConfig::new(BROKER_HOST, BROKER_PORT);
    config.request_timeout_ms = config.request_timeout_ms.max(tick_ms * 10);
    config.connect_timeout_ms = config.connect_timeout_ms.max(tick_ms * 10);
    config.retry_backoff_ms = config.retry_backoff_ms.max(tick_ms);
    config.retry_backoff_max_ms = config.retry_backoff_max_ms.max(tick_ms * 30);
    config.linger_ms = config.linger_ms.max(tick_ms);
    config
}

/// Consumer timeouts for a tick.
pub fn consumer_config(tick_ms: u64) -> soilstream_sim::ConsumerConfig {
    let mut config = soilstream_sim::ConsumerConfig::new(BROKER_HOST, BROKER_PORT);
    config.request_timeout_ms = config.request_timeout_ms.max(tick_ms * 10);
    config.connect_timeout_ms = config.connect_timeout_ms.max(tick_ms * 10);
    config
}

/// The registry's URL inside the world.
pub fn registry_url() -> String {
    format!("http://{REGISTRY_HOST}:{REGISTRY_PORT}")
}

/// A client of the world's registry over simulated TCP; its request timeout
/// scales with the tick like the broker clients'.
pub fn registry_client(tick_ms: u64) -> HttpRegistryClient<SimConnector> {
    let defaults = HttpRegistryClientConfig::default();
    let config = HttpRegistryClientConfig {
        request_timeout: defaults.request_timeout.max(Duration::from_millis(tick_ms * 10)),
        ..defaults
    };
    HttpRegistryClient::new(SimConnector, &registry_url(), config).expect("the world's registry URL is valid")
}

/// Builds the world of `scenario` for `seed`.
pub fn build<'a>(scenario: &Scenario, seed: u64, planted: PlantedBug) -> World<'a> {
    let t = &scenario.topology;
    let mut builder = turmoil::Builder::new();
    builder
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS as u64))
        .tick_duration(Duration::from_millis(scenario.tick_ms))
        .simulation_duration(Duration::from_secs(crate::scenario::DURATION_MAX_S * 2))
        .min_message_latency(Duration::from_millis(t.latency_ms))
        .max_message_latency(Duration::from_millis(t.latency_ms))
        .rng_seed(derive_seed(seed, "turmoil"))
        .enable_random_order();
    if t.disk_block_size > 0 {
        builder.fs().block_size(t.disk_block_size);
    }
    let mut sim = builder.build();

    let mut topics = vec![TopicConfig {
        name: RAW_TOPIC.into(),
        partitions: t.partitions,
    }];
    if scenario.qaqc.instances > 0 {
        let names = crate::qaqc::settings(scenario, 0, planted).topics;
        for name in names.outputs() {
            topics.push(TopicConfig {
                name: name.to_string(),
                partitions: t.partitions,
            });
        }
    }
    let mut broker_config = BrokerConfig::new(topics);
    broker_config.port = BROKER_PORT;
    broker_config.flush = if t.broker_flush_interval_ms == 0 {
        FlushPolicy::EveryBatch
    } else {
        FlushPolicy::IntervalMs(t.broker_flush_interval_ms)
    };
    broker_config.idle_timeout_ms = broker_config.idle_timeout_ms.max(scenario.tick_ms * 100);
    let broker = BrokerHost::new(broker_config, derive_seed(seed, "broker")).expect("valid broker config");
    sim.host(BROKER_HOST, broker.software());
    let registry = RegistryHost::new(
        RegistryHostConfig {
            port: REGISTRY_PORT,
            ..RegistryHostConfig::default()
        },
        derive_seed(seed, "registry/disk"),
    );
    sim.host(REGISTRY_HOST, registry.software());

    let ledger = Rc::new(RefCell::new(Ledger::new(true)));
    let mut gateways = Vec::new();
    for index in 0..t.gateways {
        let name = gateway_name(index);
        let label = |what: &str| derive_seed(seed, &format!("{name}/{what}"));
        let drift_ppm = if t.clock_drift_ppm_max > 0.0 {
            let span = (t.clock_drift_ppm_max * 2.0) as u64 + 1;
            (label("drift") % span) as i64 - t.clock_drift_ppm_max as i64
        } else {
            0
        };
        let handles = GatewayHandles {
            name: name.clone(),
            disk_faults: DiskFaults::new(label("disk")),
            clock: ClockControl::new(EPOCH_MS, 0, drift_ppm),
            metrics: GatewayMetrics::new(),
            shutdown: Rc::new(RefCell::new(None)),
            stopping: Rc::new(Cell::new(false)),
            open_failures: Rc::new(RefCell::new(Vec::new())),
            boots: Rc::new(Cell::new(0)),
        };
        let settings = GatewaySettings {
            gateway_id: name.clone(),
            sampler: SamplerConfig {
                interval_ms: t.sample_interval_ms,
                sync: if t.sync_interval_ms == 0 {
                    SyncPolicy::EveryBatch
                } else {
                    SyncPolicy::IntervalMs(t.sync_interval_ms)
                },
                reject_log: "/rejects.jsonl".into(),
                ..SamplerConfig::default()
            },
            spool: spool_config(scenario, planted),
            forwarder: ForwarderConfig {
                topic: RAW_TOPIC.into(),
                cursor_persist_interval_ms: scenario.tick_ms.max(1_000),
                retry_backoff_initial_ms: scenario.tick_ms.max(500),
                retry_backoff_max_ms: (scenario.tick_ms * 30).max(30_000),
                shutdown_grace_ms: (scenario.tick_ms * 600).max(600_000),
                planted_advance_cursor_before_delivery: planted == PlantedBug::CursorBeforeDelivery,
                ..ForwarderConfig::default()
            },
            log_interval_ms: 0,
        };
        let source_config = source_config(scenario, seed, &name);
        let producer_config = producer_config(scenario.tick_ms);
        let tick_ms = scenario.tick_ms;
        let software = {
            let disk_faults = handles.disk_faults.clone();
            let clock = handles.clock.clone();
            let metrics = handles.metrics.clone();
            let shutdown_slot = handles.shutdown.clone();
            let stopping = handles.stopping.clone();
            let open_failures = handles.open_failures.clone();
            let boots = handles.boots.clone();
            let ledger = ledger.clone();
            move || {
                let settings = settings.clone();
                let producer_config = producer_config.clone();
                let factory: ProducerFactory = Box::new(move || {
                    SimProducer::new(producer_config.clone())
                        .map(|p| Rc::new(p) as Rc<dyn LogProducer>)
                        .map_err(|e| soilstream::transport::ProduceError::Fatal(e.to_string()))
                });
                let parts = GatewayParts {
                    disk: Rc::new(SimDisk::new(disk_faults.clone())),
                    clock: Rc::new(SimClock::new(clock.clone())),
                    source: Box::new(SensorSimulator::new(source_config.clone())),
                    registry: Rc::new(registry_client(tick_ms)),
                    producer_factory: factory,
                    observer: Rc::new(LedgerObserver::new(ledger.clone())),
                    metrics: metrics.clone(),
                };
                let shutdown_slot = shutdown_slot.clone();
                let stopping = stopping.clone();
                let open_failures = open_failures.clone();
                let boots = boots.clone();
                Box::pin(async move {
                    if stopping.get() {
                        return Ok(());
                    }
                    boots.set(boots.get() + 1);
                    let (trigger, shutdown) = Shutdown::new();
                    *shutdown_slot.borrow_mut() = Some(trigger);
                    if let Err(e) = run_gateway(settings, parts, shutdown).await {
                        open_failures.borrow_mut().push(e.to_string());
                    }
                    Ok(())
                }) as futures::future::LocalBoxFuture<'static, turmoil::Result>
            }
        };
        sim.host(name.as_str(), software);
        gateways.push(handles);
    }
    let qaqc = crate::qaqc::handles(scenario, seed);
    for (i, handles) in qaqc.iter().enumerate() {
        if handles.host.start_at_ms == 0 {
            crate::qaqc::start_host(&mut sim, handles, scenario, i as u32, planted, EPOCH_MS);
        }
    }
    let store = (scenario.archive.instances > 0).then(|| {
        let store = StoreHost::new(
            StoreHostConfig {
                port: STORE_PORT,
                ..StoreHostConfig::default()
            },
            derive_seed(seed, "objstore/disk"),
        );
        sim.host(STORE_HOST, store.software());
        store
    });
    let archive = crate::archive::handles(scenario);
    for (i, handles) in archive.iter().enumerate() {
        if handles.host.start_at_ms == 0 {
            crate::archive::start_host(&mut sim, handles, scenario, i as u32, planted, EPOCH_MS);
        }
    }
    World {
        sim,
        broker,
        registry,
        registry_cut_off: false,
        gateways,
        backfills: Vec::new(),
        qaqc,
        archive,
        store,
        store_cut_off: false,
        hostile: Rc::new(RefCell::new(Vec::new())),
        hostile_failures: Rc::new(RefCell::new(Vec::new())),
        hostile_writers: 0,
        ledger,
        planted,
    }
}

/// Simulated wall time of the world's epoch plus `elapsed`.
pub fn since_epoch_ms(elapsed: Duration) -> i64 {
    EPOCH_MS + elapsed.as_millis() as i64
}

/// Helper for the epoch as a `SystemTime` (documentation and reports).
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(EPOCH_MS as u64)
}
