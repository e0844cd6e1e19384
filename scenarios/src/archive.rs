//! The archive stage inside the simulated world: `archive-{i}` hosts
//! running the unchanged [`run_archive`] in one consumer group on the clean
//! topic, writing through the world's object store host
//! ([`soilstream_sim::StoreHost`], files on its own simulated disk), and
//! what the runner watches of them.
//!
//! A host's software is `run_archive` with: the simulated broker's group
//! coordinator ([`SimGroupConsumer`]), a [`SimConsumer`] for the lag gauge,
//! a [`SimStoreClient`] to the store host over simulated TCP, the registry
//! host, and an exact [`SimClock`]. Crashes, power cuts, outages and clean
//! stops are scripted by the runner like qaqc's ([`crate::stage`]).

use crate::scenario::{Scenario, Stage};
use crate::stage::StageHost;
use crate::world::{PlantedBug, STORE_HOST, STORE_PORT, consumer_config, registry_client};
use futures::future::LocalBoxFuture;
use soilstream::archive::layout::Manifest;
use soilstream::archive::protocol::{CrashHook, CrashPoint, Recovery};
use soilstream::archive::{
    ArchiveMetrics, ArchiveObserver, ArchiveParts, ArchiveSettings, PlantedArchiveBugs, run_archive,
};
use soilstream_sim::{ClockControl, SimClock, SimStoreClient, StoreClientConfig};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// The consumer group of the archive hosts.
pub const ARCHIVE_GROUP: &str = "soilstream-archive";

/// What every archive host did, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveProgress {
    /// Per clean partition, the next offset the store's markers make
    /// durable (the highest any instance recovered or committed).
    pub archived_next: BTreeMap<i32, i64>,
    /// Batches committed.
    pub batches_committed: u64,
    /// Partition recoveries.
    pub recoveries: u64,
    /// Uncommitted attempts that recoveries aborted.
    pub attempts_aborted: u64,
    /// Data files of uncommitted attempts that recoveries removed.
    pub files_removed: u64,
    /// Batches that lost to another writer's marker.
    pub fenced: u64,
}

impl ArchiveProgress {
    fn archived(&mut self, partition: i32, next: i64) {
        let slot = self.archived_next.entry(partition).or_insert(next);
        *slot = (*slot).max(next);
    }
}

/// The state of a host's crash hook, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashArm {
    /// The point the hook crashes at next, if armed.
    pub armed: Option<CrashPoint>,
    /// Set when the hook reached the armed point (the protocol is stopped
    /// there); the runner crashes the host and clears it.
    pub fired: Option<(CrashPoint, i32)>,
    /// Crash points reached, in order, with the partition.
    pub crashes: Vec<(CrashPoint, i32)>,
}

/// The simulator's crash hook: at the armed point the protocol stops (the
/// future never resolves) and the runner crashes the host at once, so
/// nothing after the point reaches the store, as with the real world's
/// `abort()`.
struct SimCrashHook {
    arm: Rc<RefCell<CrashArm>>,
}

impl CrashHook for SimCrashHook {
    fn reached(&self, partition: i32, point: CrashPoint) -> LocalBoxFuture<'_, ()> {
        let mut arm = self.arm.borrow_mut();
        if arm.armed == Some(point) {
            arm.armed = None;
            arm.fired = Some((point, partition));
            arm.crashes.push((point, partition));
            return Box::pin(std::future::pending());
        }
        Box::pin(async {})
    }
}

/// What the runner knows of one archive host.
pub struct ArchiveHandles {
    /// The host's name and lifecycle handles.
    pub host: StageHost,
    /// Its crash hook's state.
    pub crash: Rc<RefCell<CrashArm>>,
    /// Its metrics (shared across restarts).
    pub metrics: ArchiveMetrics,
    /// Progress of the whole stage (shared by every host).
    pub progress: Rc<RefCell<ArchiveProgress>>,
}

/// Records what an archive host reports into the stage's progress.
struct ProgressObserver {
    progress: Rc<RefCell<ArchiveProgress>>,
}

impl ArchiveObserver for ProgressObserver {
    fn on_recovered(&self, partition: i32, recovery: &Recovery) {
        let mut p = self.progress.borrow_mut();
        p.recoveries += 1;
        p.attempts_aborted += recovery.attempts_aborted;
        p.files_removed += recovery.files_removed;
        if let Some(next) = recovery.next_offset {
            p.archived(partition, next);
        }
    }

    fn on_committed(&self, manifest: &Manifest) {
        let mut p = self.progress.borrow_mut();
        p.batches_committed += 1;
        p.archived(manifest.partition, manifest.last + 1);
    }

    fn on_fenced(&self, _partition: i32, _position: i64) {
        self.progress.borrow_mut().fenced += 1;
    }
}

/// The archive settings a world's hosts run with: defaults, the scenario's
/// `[archive]` section, timing scaled with the tick, planted bugs.
pub fn settings(scenario: &Scenario, instance: u32, planted: PlantedBug) -> ArchiveSettings {
    let tick = scenario.tick_ms;
    let stage = &scenario.archive;
    let mut s = ArchiveSettings::defaults();
    s.archive.instance_id = Stage::Archive.host(instance);
    s.archive.group_id = ARCHIVE_GROUP.into();
    s.archive.topic = crate::qaqc::settings(scenario, 0, PlantedBug::None).topics.clean;
    s.archive.poll_wait_ms = s.archive.poll_wait_ms.max(2 * tick);
    s.archive.retry_initial_ms = s.archive.retry_initial_ms.max(tick);
    s.archive.retry_max_ms = s.archive.retry_max_ms.max(30 * tick);
    s.archive.log_interval_ms = 0;
    s.rotation.max_rows = stage.max_rows;
    s.rotation.max_age_ms = stage.max_age_ms;
    s.rotation.max_open_dates = stage.max_open_dates;
    s.planted = PlantedArchiveBugs {
        commit_offsets_before_marker: planted == PlantedBug::ArchiveOffsetsBeforeMarker,
        wall_clock_file_names: planted == PlantedBug::ArchiveWallClockFileNames,
        recovery_keeps_uncommitted: planted == PlantedBug::ArchiveRecoveryKeepsUncommitted,
    };
    s
}

/// The store client an archive host (or the checker) uses: timeouts
/// scale with the tick like the broker clients'.
pub fn store_client(tick_ms: u64) -> SimStoreClient {
    let mut config = StoreClientConfig::new(STORE_HOST);
    config.port = STORE_PORT;
    config.connect_timeout_ms = config.connect_timeout_ms.max(10 * tick_ms);
    config.request_timeout_ms = config.request_timeout_ms.max(10 * tick_ms);
    SimStoreClient::new(config)
}

/// The handles of the world's archive hosts (not yet added to the
/// simulation).
pub fn handles(scenario: &Scenario) -> Vec<ArchiveHandles> {
    let progress = Rc::new(RefCell::new(ArchiveProgress::default()));
    (0..scenario.archive.instances)
        .map(|i| {
            let start_at_ms = scenario.archive.start_at_s.get(i as usize).copied().unwrap_or(0) * 1_000;
            ArchiveHandles {
                host: StageHost::new(Stage::Archive.host(i), start_at_ms),
                crash: Rc::new(RefCell::new(CrashArm::default())),
                metrics: ArchiveMetrics::new(),
                progress: progress.clone(),
            }
        })
        .collect()
}

/// Adds the host of `handles` to the simulation (it boots at once).
pub fn start_host(
    sim: &mut turmoil::Sim<'_>,
    handles: &ArchiveHandles,
    scenario: &Scenario,
    instance: u32,
    planted: PlantedBug,
    epoch_ms: i64,
) {
    let tick = scenario.tick_ms;
    let settings = settings(scenario, instance, planted);
    let stage = &scenario.archive;
    let group_config = crate::stage::group_config(
        ARCHIVE_GROUP,
        stage.session_timeout_ms,
        stage.max_poll_records,
        tick,
    );
    let consumer = consumer_config(tick);
    let metrics = handles.metrics.clone();
    let progress = handles.progress.clone();
    let arm = handles.crash.clone();
    let boot = handles.host.boot_handles();
    handles.host.started.set(true);
    sim.host(handles.host.name.as_str(), move || {
        let settings = settings.clone();
        let group_config = group_config.clone();
        let consumer = consumer.clone();
        let metrics = metrics.clone();
        let progress = progress.clone();
        let arm = arm.clone();
        let boot = boot.clone();
        Box::pin(async move {
            let Some(shutdown) = boot.begin() else {
                return Ok(());
            };
            let Some(group) = boot.group(group_config) else {
                return Ok(());
            };
            let reader_factory = crate::stage::consumer_factory(consumer);
            let parts = ArchiveParts {
                store: Rc::new(store_client(tick)),
                clock: Rc::new(SimClock::new(ClockControl::exact(epoch_ms))),
                registry: Rc::new(registry_client(tick)),
                group: Box::new(group),
                reader_factory: Some(reader_factory),
                crash: Rc::new(SimCrashHook { arm }),
                observer: Rc::new(ProgressObserver { progress }),
                metrics,
            };
            if let Err(e) = run_archive(settings, parts, shutdown).await {
                boot.failed(e);
            }
            Ok(())
        }) as futures::future::LocalBoxFuture<'static, turmoil::Result>
    });
}

/// Whether the archive has caught up with the clean topic: the store's
/// markers cover every offset below `clean_high_watermarks`.
pub fn caught_up(archive: &[ArchiveHandles], clean_high_watermarks: &[i64]) -> bool {
    let Some(first) = archive.first() else {
        return true;
    };
    let progress = first.progress.borrow();
    clean_high_watermarks.iter().enumerate().all(|(partition, high)| {
        *high == 0
            || progress
                .archived_next
                .get(&(partition as i32))
                .is_some_and(|next| next >= high)
    })
}
