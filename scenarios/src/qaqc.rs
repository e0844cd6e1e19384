//! The QA/QC stage inside the simulated world: `qaqc-{i}` hosts running the
//! unchanged [`run_qaqc`] in one consumer group on the raw topic, each on
//! its own simulated disk and clock, and what the runner watches of them.
//!
//! A host's software is `run_qaqc` with: the simulated broker's group
//! coordinator ([`SimGroupConsumer`]), a [`SimConsumer`] to read its outputs
//! back, a [`SimProducer`] per session, the registry host over simulated
//! TCP, a [`SimDisk`] for checkpoints and an exact [`SimClock`]. Crashes,
//! power cuts, outages and clean stops are scripted by the runner.

use crate::scenario::{Scenario, Stage};
use crate::stage::StageHost;
use crate::world::{PlantedBug, RAW_TOPIC, consumer_config, producer_config, registry_client};
use soilstream::gateway::ProducerFactory;
use soilstream::qaqc::run::{QaqcObserver, QaqcStatus};
use soilstream::qaqc::{PlantedQaqcBugs, QaqcMetrics, QaqcParts, QaqcSettings, run_qaqc};
use soilstream::transport::LogProducer;
use soilstream_sim::digest::derive_seed;
use soilstream_sim::{ClockControl, DiskFaults, SimClock, SimDisk, SimProducer};
use std::cell::RefCell;
use std::rc::Rc;

/// The consumer group of the qaqc hosts.
pub const QAQC_GROUP: &str = "soilstream-qaqc";
/// Where a qaqc host keeps its checkpoints.
pub const QAQC_STATE_DIR: &str = "/qaqc-state";

/// What the runner knows of one qaqc host.
pub struct QaqcHandles {
    /// The host's name and lifecycle handles.
    pub host: StageHost,
    /// Fault layer of its disk.
    pub disk_faults: DiskFaults,
    /// Its metrics (shared across restarts).
    pub metrics: QaqcMetrics,
    /// Its last reported status (empty while down).
    pub status: Rc<RefCell<QaqcStatus>>,
}

/// Records the status a qaqc host reports.
struct StatusObserver {
    status: Rc<RefCell<QaqcStatus>>,
}

impl QaqcObserver for StatusObserver {
    fn on_status(&self, status: &QaqcStatus) {
        *self.status.borrow_mut() = status.clone();
    }
}

/// The qaqc settings a world's hosts run with: defaults, the scenario's
/// `[qaqc]` section, timing scaled with the tick, planted bugs.
pub fn settings(scenario: &Scenario, instance: u32, planted: PlantedBug) -> QaqcSettings {
    let tick = scenario.tick_ms;
    let q = &scenario.qaqc;
    let mut s = QaqcSettings::defaults();
    s.qaqc.instance_id = format!("qaqc-{instance}");
    s.qaqc.group_id = QAQC_GROUP.into();
    s.qaqc.state_dir = QAQC_STATE_DIR.into();
    s.qaqc.log_interval_ms = 0;
    s.qaqc.commit_interval_ms = s.qaqc.commit_interval_ms.max(tick);
    s.qaqc.timer_interval_ms = s.qaqc.timer_interval_ms.max(tick);
    s.qaqc.poll_wait_ms = (2 * tick).max(s.qaqc.poll_wait_ms);
    s.qaqc.checkpoint_interval_ms = q.checkpoint_interval_ms;
    s.qaqc.revoke_wait_max_ms = (q.session_timeout_ms / 2).max(10 * tick);
    s.qaqc.rebuild_stall_timeout_ms = (300 * tick).max(60_000);
    s.topics.raw = RAW_TOPIC.into();
    if let Some(silent) = q.silent_after_ms {
        s.alerts.silent.silent_after_ms = silent;
    }
    if let Some(horizon) = q.state_horizon_ms {
        s.windows.state_horizon_ms = horizon;
    }
    s.planted = PlantedQaqcBugs {
        commit_before_ack: planted == PlantedBug::QaqcCommitBeforeAck,
        skip_dedup_rebuild: planted == PlantedBug::QaqcDedupNotRebuilt,
        windows_on_arrival_time: planted == PlantedBug::QaqcWindowsOnArrivalTime,
        drop_late_readings: planted == PlantedBug::QaqcLateReadingsDropped,
    };
    s
}

/// The handles of the world's qaqc hosts (not yet added to the simulation).
pub fn handles(scenario: &Scenario, seed: u64) -> Vec<QaqcHandles> {
    (0..scenario.qaqc.instances)
        .map(|i| {
            let name = Stage::Qaqc.host(i);
            let start_at_ms = scenario.qaqc.start_at_s.get(i as usize).copied().unwrap_or(0) * 1_000;
            QaqcHandles {
                disk_faults: DiskFaults::new(derive_seed(seed, &format!("{name}/disk"))),
                host: StageHost::new(name, start_at_ms),
                metrics: QaqcMetrics::new(),
                status: Rc::new(RefCell::new(QaqcStatus::default())),
            }
        })
        .collect()
}

/// Adds the host of `handles` to the simulation (it boots at once).
pub fn start_host(
    sim: &mut turmoil::Sim<'_>,
    handles: &QaqcHandles,
    scenario: &Scenario,
    instance: u32,
    planted: PlantedBug,
    epoch_ms: i64,
) {
    let tick = scenario.tick_ms;
    let settings = settings(scenario, instance, planted);
    let group_config = crate::stage::group_config(
        QAQC_GROUP,
        scenario.qaqc.session_timeout_ms,
        scenario.qaqc.max_poll_records,
        tick,
    );
    let consumer = consumer_config(tick);
    let producer = producer_config(tick);
    let disk_faults = handles.disk_faults.clone();
    let metrics = handles.metrics.clone();
    let status = handles.status.clone();
    let boot = handles.host.boot_handles();
    handles.host.started.set(true);
    sim.host(handles.host.name.as_str(), move || {
        let settings = settings.clone();
        let group_config = group_config.clone();
        let consumer = consumer.clone();
        let producer = producer.clone();
        let disk_faults = disk_faults.clone();
        let metrics = metrics.clone();
        let status = status.clone();
        let boot = boot.clone();
        Box::pin(async move {
            *status.borrow_mut() = QaqcStatus::default();
            let Some(shutdown) = boot.begin() else {
                return Ok(());
            };
            let Some(group) = boot.group(group_config) else {
                return Ok(());
            };
            let reader_factory = crate::stage::consumer_factory(consumer);
            let producer_factory: ProducerFactory = Box::new(move || {
                SimProducer::new(producer.clone())
                    .map(|p| Rc::new(p) as Rc<dyn LogProducer>)
                    .map_err(|e| soilstream::transport::ProduceError::Fatal(e.to_string()))
            });
            let observer: Rc<dyn QaqcObserver> = Rc::new(StatusObserver {
                status: status.clone(),
            });
            let parts = QaqcParts {
                disk: Rc::new(SimDisk::new(disk_faults)),
                clock: Rc::new(SimClock::new(ClockControl::exact(epoch_ms))),
                registry: Rc::new(registry_client(tick)),
                group: Box::new(group),
                reader_factory,
                producer_factory,
                observer,
                metrics,
            };
            if let Err(e) = run_qaqc(settings, parts, shutdown).await {
                boot.failed(e);
            }
            *status.borrow_mut() = QaqcStatus::default();
            Ok(())
        }) as futures::future::LocalBoxFuture<'static, turmoil::Result>
    });
}

/// Whether the QA/QC stage has caught up with the raw topic: every raw
/// partition is owned by a running host, read to `raw_high_watermarks`,
/// committed there, with nothing in flight and no window or alert left to
/// write.
pub fn caught_up(sim: &mut turmoil::Sim<'_>, qaqc: &[QaqcHandles], raw_high_watermarks: &[i64]) -> bool {
    if qaqc.is_empty() {
        return true;
    }
    raw_high_watermarks.iter().enumerate().all(|(partition, high)| {
        qaqc.iter().any(|h| {
            h.host.started.get()
                && sim.is_host_running(h.host.name.as_str())
                && h.status
                    .borrow()
                    .partitions
                    .get(&(partition as i32))
                    .is_some_and(|p| {
                        p.position >= *high
                            && p.committed.is_some_and(|c| c >= *high)
                            && p.pending_outputs == 0
                            && p.state.dirty_windows == 0
                            && p.state.pending_alerts == 0
                    })
        })
    })
}
